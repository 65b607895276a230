//! The canonicaliser on arbitrary paths: it must never panic, and whatever it accepts must
//! be canonical (a fixed point with no ambiguous spelling left).
#![no_main]

use guestgate::pipeline::canonical::canonicalize;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Request targets always start with `/` (or are refused before this); fuzz both.
    for path in [text.to_string(), format!("/{text}")] {
        let Ok(canonical) = canonicalize(&path) else {
            continue;
        };
        assert!(canonical.starts_with('/'), "{path:?} -> {canonical:?}");
        for bad in ["//", "/./", "/../", ";", "\\"] {
            assert!(!canonical.contains(bad), "{path:?} -> {canonical:?}");
        }
        assert!(!canonical.ends_with("/.") && !canonical.ends_with("/.."));
        assert!(
            canonical.bytes().all(|b| b.is_ascii_graphic()),
            "{canonical:?}"
        );
        assert_eq!(canonicalize(&canonical).as_deref(), Ok(canonical.as_str()));
    }
});
