//! Property tests for the canonical path (docs/CONFIGURATION.md, "Request targets") against the shipped Confluence
//! profile: whatever spelling of a path Tomcat would read as one resource, the gateway must
//! read as one route. A few hundred cases per property keep the CI run short; the fuzz
//! targets in `fuzz/` search much further.
#![allow(clippy::unwrap_used)]

use std::sync::OnceLock;

use guestgate::http::canonical::{MAX_PATH_BYTES, canonicalize};
use guestgate::routes::{Route, RouteProfile};
use http::Method;
use proptest::prelude::*;

fn profile() -> &'static RouteProfile {
    static PROFILE: OnceLock<RouteProfile> = OnceLock::new();
    PROFILE.get_or_init(|| {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/routes/confluence.toml");
        RouteProfile::load(&path).unwrap_or_else(|e| panic!("shipped profile: {e:?}"))
    })
}

/// The route a canonical path gets, for GET and POST, with a page id in the query.
fn routes_of(canonical: &str) -> (Route, Route) {
    let query = vec![("pageId".to_string(), "123".to_string())];
    (
        profile().classify(&Method::GET, canonical, &query),
        profile().classify(&Method::POST, canonical, &query),
    )
}

/// Segments the shipped profile cares about, and some it does not.
const WORDS: &[&str] = &[
    "display",
    "ENG",
    "hr",
    "admin",
    "rest",
    "api",
    "content",
    "123",
    "space",
    "search",
    "user",
    "pages",
    "viewpage.action",
    "users",
    "people",
    "browsepeople.action",
    "s",
    "login.action",
    "plugins",
    "servlet",
    "upm",
    "spaces",
    "synchrony",
    "download",
    "attachments",
    "confanalytics",
    "1.0",
    "calendar",
    "x~y",
    "a-b_c",
];

/// One clean segment: a word of the profile or a random run of unreserved characters.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::sample::select(WORDS).prop_map(str::to_string),
        1 => "[A-Za-z0-9._~-]{1,8}".prop_filter("not a dot segment", |s| s != "." && s != ".."),
    ]
}

/// A clean canonical path: `/` and segments, maybe a trailing slash.
fn clean_path() -> impl Strategy<Value = String> {
    (proptest::collection::vec(segment(), 0..7), any::<bool>()).prop_map(|(segs, trailing)| {
        let mut p = String::new();
        for s in &segs {
            p.push('/');
            p.push_str(s);
        }
        if p.is_empty() || trailing {
            p.push('/');
        }
        p
    })
}

/// Percent-encodes the unreserved characters of `s` where `mask` says so, in either case
/// of hex digit, as a client (or an attacker) may.
fn encode_some(s: &str, mask: &[bool], upper: bool) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        let unreserved = c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~');
        if unreserved && mask.get(i % mask.len().max(1)).copied().unwrap_or(false) {
            if upper {
                out.push_str(&format!("%{:02X}", c as u32));
            } else {
                out.push_str(&format!("%{:02x}", c as u32));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// What Tomcat reads as the same resource: `;params` on any segment, `//`, `./` segments,
/// `name/..` detours, and encoded unreserved characters.
#[derive(Debug, Clone)]
enum Detour {
    Params(String),
    DoubleSlash,
    Dot,
    UpAgain(String),
    Encode(bool),
}

fn detour() -> impl Strategy<Value = Detour> {
    prop_oneof![
        "[a-z0-9=]{0,10}".prop_map(Detour::Params),
        Just(Detour::DoubleSlash),
        Just(Detour::Dot),
        segment().prop_map(Detour::UpAgain),
        any::<bool>().prop_map(Detour::Encode),
    ]
}

/// Rewrites a clean path with one detour per segment (where `detours` has one).
fn disguise(clean: &str, detours: &[Detour]) -> String {
    let trailing = clean.len() > 1 && clean.ends_with('/');
    let segments: Vec<&str> = clean.split('/').filter(|s| !s.is_empty()).collect();
    let mut out = String::new();
    for (i, seg) in segments.iter().enumerate() {
        match detours.get(i) {
            Some(Detour::Params(p)) => out.push_str(&format!("/{seg};{p}")),
            Some(Detour::DoubleSlash) => out.push_str(&format!("//{seg}")),
            Some(Detour::Dot) => out.push_str(&format!("/./{seg}")),
            Some(Detour::UpAgain(other)) => out.push_str(&format!("/{other};x/..;y/{seg}")),
            Some(Detour::Encode(upper)) => {
                out.push('/');
                out.push_str(&encode_some(seg, &[true], *upper));
            }
            None => {
                out.push('/');
                out.push_str(seg);
            }
        }
    }
    if out.is_empty() || trailing {
        out.push('/');
    }
    out
}

/// Raw material for hostile paths: separators, dots, parameters, escapes of every kind.
fn hostile_path() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("/".to_string()),
        Just("//".to_string()),
        Just(".".to_string()),
        Just("..".to_string()),
        Just(";".to_string()),
        Just(";x=1".to_string()),
        Just("%2e".to_string()),
        Just("%2E".to_string()),
        Just("%2f".to_string()),
        Just("%5c".to_string()),
        Just("%3b".to_string()),
        Just("%25".to_string()),
        Just("%41".to_string()),
        Just("%7e".to_string()),
        Just("%c3%a9".to_string()),
        Just("%ff".to_string()),
        Just("%0a".to_string()),
        Just("%".to_string()),
        Just("\\".to_string()),
        "%[0-9a-fA-F]{2}",
        segment(),
    ];
    proptest::collection::vec(token, 0..16).prop_map(|ts| format!("/{}", ts.concat()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn canonical_form_is_a_fixed_point(path in hostile_path()) {
        if let Ok(once) = canonicalize(&path) {
            prop_assert_eq!(canonicalize(&once), Ok(once.clone()), "from {}", path);
        }
    }

    #[test]
    fn canonical_form_has_no_ambiguous_spelling(path in hostile_path()) {
        if let Ok(c) = canonicalize(&path) {
            prop_assert!(c.starts_with('/'), "{} from {}", c, path);
            for bad in ["//", "/./", "/../", ";", "\\"] {
                prop_assert!(!c.contains(bad), "{} contains {} (from {})", c, bad, path);
            }
            prop_assert!(!c.ends_with("/.") && !c.ends_with("/.."), "{} from {}", c, path);
            // Only escapes of reserved or non-ASCII bytes survive, in upper case.
            let bytes = c.as_bytes();
            for (i, _) in c.match_indices('%') {
                let hex = &c[i + 1..i + 3];
                prop_assert!(hex.chars().all(|h| h.is_ascii_digit() || h.is_ascii_uppercase()), "{}", c);
                let v = u8::from_str_radix(hex, 16).unwrap();
                prop_assert!(!(v.is_ascii_alphanumeric() || b"-._~".contains(&v)), "{} keeps %{}", c, hex);
                prop_assert!(bytes.len() >= i + 3);
            }
        }
    }

    #[test]
    fn encoding_unreserved_characters_never_changes_the_route(
        clean in clean_path(),
        mask in proptest::collection::vec(any::<bool>(), 1..8),
        upper in any::<bool>(),
    ) {
        let canonical = canonicalize(&clean).unwrap();
        let encoded = encode_some(&clean, &mask, upper);
        let from_encoded = canonicalize(&encoded).unwrap();
        prop_assert_eq!(&from_encoded, &canonical, "{} vs {}", encoded, clean);
        prop_assert_eq!(routes_of(&from_encoded), routes_of(&canonical));
    }

    #[test]
    fn spellings_tomcat_treats_alike_classify_alike(
        clean in clean_path(),
        detours in proptest::collection::vec(detour(), 0..7),
    ) {
        let canonical = canonicalize(&clean).unwrap();
        let disguised = disguise(&clean, &detours);
        let from_disguised = canonicalize(&disguised)
            .unwrap_or_else(|e| panic!("{disguised} refused ({e}), {clean} is fine"));
        prop_assert_eq!(&from_disguised, &canonical, "{} vs {}", disguised, clean);
        prop_assert_eq!(routes_of(&from_disguised), routes_of(&canonical));
    }

    #[test]
    fn every_input_is_answered_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let path = format!("/{}", String::from_utf8_lossy(&bytes));
        let _ = canonicalize(&path);
    }
}

#[test]
fn paths_above_the_limit_are_refused_before_any_work() {
    let long = format!("/{}", "a/".repeat(MAX_PATH_BYTES));
    assert!(canonicalize(&long).is_err());
}
