//! From the file's mirror to a [`RouteProfile`]: every section checked, every problem
//! collected (with the rule or section it is in) and reported together.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use regex::{Regex, RegexSet};

use super::extract::{SpaceExtractor, SpaceName, UserNameSource, UserNames};
use super::file::{
    IdentifierFile, IdentifiersFile, ListingFile, LookupFile, ProfileFile, RouteFile,
    UserNameSourceFile, default_lookup_ttl,
};
use super::identifiers::{Identifier, Identifiers, JsonIdentifier, Kind, Needs, default_space_key};
use super::{Action, ContentLookup, Family, ProfileError, Rewrites, RouteProfile, RouteRule};

/// Tomcat 11's default `maxParameterCount` (9 and 10.1 allow 10,000 and silently drop the
/// rest; 11 refuses beyond 1,000): at or below every wiki's own limit.
const DEFAULT_MAX_PARAMETERS: usize = 1000;
/// Tomcat's default `maxHttpHeaderSize` is 8 KiB for the whole request line and headers.
const DEFAULT_MAX_QUERY_BYTES: usize = 8192;

/// The names a rule's regexes may capture.
const CAPTURE_NAMES: [&str; 4] = ["space", "content", "user", "tiny_link"];

/// Problems found so far in one profile file.
struct Problems<'p> {
    file: &'p Path,
    found: Vec<ProfileError>,
}

impl Problems<'_> {
    fn push(&mut self, message: String) {
        self.found.push(ProfileError {
            file: self.file.to_path_buf(),
            message,
        });
    }
}

impl RouteProfile {
    pub fn load(path: &Path) -> Result<RouteProfile, Vec<ProfileError>> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            vec![ProfileError {
                file: path.to_path_buf(),
                message: format!("cannot read route profile: {e}"),
            }]
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<RouteProfile, Vec<ProfileError>> {
        let file: ProfileFile = toml::from_str(text).map_err(|e| {
            vec![ProfileError {
                file: path.to_path_buf(),
                message: e.to_string().trim_end().to_string(),
            }]
        })?;
        let mut problems = Problems {
            file: path,
            found: Vec::new(),
        };
        let ttl = Duration::from_secs(
            file.content_lookup
                .as_ref()
                .map_or(default_lookup_ttl(), |c| c.cache_ttl_secs),
        );
        let lookups = file
            .lookup
            .iter()
            .map(|(name, l)| {
                let at = format!("lookup.{name}");
                lookup(&at, Some(Arc::from(name.as_str())), l, ttl, &mut problems)
            })
            .collect();
        let lookup_names: Vec<&String> = file.lookup.keys().collect();
        let identifiers = identifiers(file.identifiers.as_ref(), &lookup_names, &mut problems);
        let forwards = file
            .forwards
            .iter()
            .enumerate()
            .filter_map(|(i, f)| match compile_anchored(f) {
                Ok(re) if re.capture_names().flatten().any(|n| n == "path") => Some(re),
                Ok(_) => {
                    problems.push(format!("forwards #{}: needs a `path` capture", i + 1));
                    None
                }
                Err(e) => {
                    problems.push(format!("forwards #{}: {e}", i + 1));
                    None
                }
            })
            .collect();
        let mut captured_query_params = BTreeSet::new();
        let rules: Vec<RouteRule> = file
            .route
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                rule(
                    i,
                    r,
                    &lookup_names,
                    &mut captured_query_params,
                    &mut problems,
                )
            })
            .collect();
        let content_lookup = file
            .content_lookup
            .as_ref()
            .map(|c| lookup("content_lookup", None, &c.lookup(), ttl, &mut problems));
        let user_link_names = user_link_names(&file.user_link_name, &mut problems);
        let php_query_names = query_names(file.query_names.as_deref(), &mut problems);
        let user_names = user_names(file.user_names.as_deref(), &mut problems);
        let (listing_space, listing_arrays) = listing(file.listing, &mut problems);
        let user_links = user_links(file.user_link_selector.as_deref(), &mut problems);
        if let Some(home) = &file.space_home
            && (!home.starts_with('/') || !home.contains("{space}"))
        {
            problems.push(format!(
                "space_home: `{home}` must be a path starting with / that contains {{space}}"
            ));
        }
        if listing_space.is_empty() && rules.iter().any(|r| r.rewrites.filter_spaces) {
            problems.push(
                "routes with the `filter_spaces` rewrite need a [listing] section saying where items name their space".into(),
            );
        }
        if content_lookup.is_none()
            && rules
                .iter()
                .any(|r| r.family == Family::Content && r.lookup.is_none())
        {
            problems.push("routes of family `content` need a [content_lookup] section".into());
        }
        let path_set = regex::RegexSetBuilder::new(rules.iter().map(|r| r.path.as_str()))
            .size_limit(64 << 20)
            .build()
            .unwrap_or_else(|e| {
                problems.push(format!("route paths: {e}"));
                RegexSet::empty()
            });
        if !problems.found.is_empty() {
            return Err(problems.found);
        }
        Ok(RouteProfile {
            source: path.to_path_buf(),
            rules,
            path_set,
            captured_query_params,
            content_lookup,
            lookups,
            user_links,
            space_home: file.space_home,
            user_link_names: Arc::from(user_link_names),
            json_user_keys: file.json_user_keys,
            php_query_names,
            user_names,
            identifiers: Arc::new(identifiers),
            max_parameters: file.max_parameters.unwrap_or(DEFAULT_MAX_PARAMETERS),
            max_query_bytes: file.max_query_bytes.unwrap_or(DEFAULT_MAX_QUERY_BYTES),
            forwards,
            listing_space,
            listing_arrays,
            unmatched_name: Arc::from("unmatched"),
        })
    }
}

/// One `[[route]]`, the `index`-th of the file.
fn rule(
    index: usize,
    r: RouteFile,
    lookup_names: &[&String],
    captured_query_params: &mut BTreeSet<String>,
    problems: &mut Problems<'_>,
) -> RouteRule {
    let at = format!("route #{} ({})", index + 1, r.name);
    let family = Family::parse(&r.family).unwrap_or_else(|| {
        problems.push(format!("{at}: unknown family `{}`", r.family));
        Family::Other
    });
    let path = compile_anchored(&r.path).unwrap_or_else(|e| {
        problems.push(format!("{at}: path regex: {e}"));
        never_matches()
    });
    check_capture_names(&path, &at, problems);
    let mut query = Vec::new();
    for (param, pattern) in r.query {
        match compile_anchored(&pattern) {
            Ok(re) => {
                check_capture_names(&re, &at, problems);
                captured_query_params.insert(param.clone());
                query.push((param, re));
            }
            Err(e) => problems.push(format!("{at}: query `{param}` regex: {e}")),
        }
    }
    let methods = r.methods.map(|ms| {
        ms.iter()
            .filter_map(
                |m| match Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                    Ok(m) => Some(m),
                    Err(_) => {
                        problems.push(format!("{at}: `{m}` is not an HTTP method"));
                        None
                    }
                },
            )
            .collect()
    });
    let action = r.action.as_deref().and_then(|a| {
        let parsed = Action::parse(a);
        if parsed.is_none() {
            problems.push(format!("{at}: unknown action `{a}`"));
        }
        parsed
    });
    let mut rewrites = Rewrites::default();
    for w in &r.rewrite {
        match w.as_str() {
            "tag_users" => rewrites.tag_users = true,
            "filter_spaces" => rewrites.filter_spaces = true,
            "banner" => rewrites.banner = true,
            other => problems.push(format!("{at}: unknown rewrite `{other}`")),
        }
    }
    let max_body_bytes = r.max_body_bytes.and_then(|n| {
        let n = usize::try_from(n).ok();
        if n.is_none() {
            problems.push(format!("{at}: max_body_bytes is too large"));
        }
        n
    });
    let lookup = r.lookup.as_deref().and_then(|name| {
        let found = lookup_names.iter().position(|k| *k == name);
        if found.is_none() {
            problems.push(format!("{at}: no [lookup.{name}] section"));
        }
        found
    });
    if lookup.is_some() && family != Family::Content {
        problems.push(format!("{at}: `lookup` is for routes of family `content`"));
    }
    let json_identifiers = r.json_identifiers.as_ref().map(|pointers| {
        pointers
            .iter()
            .filter_map(|(pointer, what)| {
                json_identifier(&at, pointer, what, lookup_names, problems)
            })
            .collect()
    });
    let guest_scope = r.guest_scope.as_ref().and_then(|g| {
        if g.language != "cql" {
            problems.push(format!(
                "{at}: guest_scope.language: `{}` is not `cql`",
                g.language
            ));
            return None;
        }
        if !rewrites.filter_spaces {
            problems.push(format!(
                "{at}: guest_scope needs the `filter_spaces` rewrite (what the scope cannot express is still filtered)"
            ));
        }
        Some(g.param.clone())
    });
    RouteRule {
        name: Arc::from(r.name.as_str()),
        family,
        path,
        methods,
        query,
        action,
        public: r.public,
        owned_download: r.owned_download,
        requires_identifier: r.requires_identifier,
        rewrites,
        max_body_bytes,
        lookup,
        json_identifiers,
        guest_scope,
    }
}

/// `kind:needs`, e.g. `content:edit`, `space:route`.
fn kind_and_needs(at: &str, what: &str, problems: &mut Problems<'_>) -> Option<(Kind, Needs)> {
    let (kind, needs) = what.split_once(':').unwrap_or((what, "route"));
    let kind = match kind {
        "content" => Kind::Content,
        "space" => Kind::Space,
        "user" => Kind::User,
        other => {
            problems.push(format!(
                "{at}: `{other}` is none of `content`, `space`, `user`"
            ));
            return None;
        }
    };
    Some((kind, self::needs(at, needs, problems)?))
}

fn needs(at: &str, needs: &str, problems: &mut Problems<'_>) -> Option<Needs> {
    if needs == "route" {
        return Some(Needs::Route);
    }
    match Action::parse(needs) {
        Some(a) => Some(Needs::Action(a)),
        None => {
            problems.push(format!(
                "{at}: `{needs}` is neither `route` nor a permission"
            ));
            None
        }
    }
}

/// `kind:needs`, optionally `@lookup` (a content id another lookup resolves).
fn json_identifier(
    at: &str,
    pointer: &str,
    what: &str,
    lookup_names: &[&String],
    problems: &mut Problems<'_>,
) -> Option<JsonIdentifier> {
    let at = format!("{at}: json_identifiers.\"{pointer}\"");
    let Some(rest) = pointer.strip_prefix('/') else {
        problems.push(format!("{at}: not a JSON pointer like `/space/key`"));
        return None;
    };
    let (what, lookup) = match what.split_once('@') {
        Some((what, name)) => {
            let found = lookup_names.iter().position(|k| *k == name);
            if found.is_none() {
                problems.push(format!("{at}: no [lookup.{name}] section"));
            }
            (what, found)
        }
        None => (what, None),
    };
    let (kind, needs) = kind_and_needs(&at, what, problems)?;
    Some(JsonIdentifier {
        pointer: rest
            .split('/')
            .map(|s| s.replace("~1", "/").replace("~0", "~"))
            .collect(),
        kind,
        needs,
        lookup,
    })
}

/// `[identifiers]`.
fn identifiers(
    file: Option<&IdentifiersFile>,
    lookup_names: &[&String],
    problems: &mut Problems<'_>,
) -> Identifiers {
    let Some(file) = file else {
        return Identifiers::default();
    };
    let space_key = match file.space_key.as_deref().map(compile_anchored) {
        None => default_space_key(),
        Some(Ok(re)) => re,
        Some(Err(e)) => {
            problems.push(format!("identifiers.space_key: {e}"));
            default_space_key()
        }
    };
    let mut declared = Vec::new();
    let mut seen = BTreeSet::new();
    for (kind, section, entries) in [
        (Kind::Content, "content", &file.content),
        (Kind::Space, "space", &file.space),
        (Kind::User, "user", &file.user),
    ] {
        for (name, spec) in entries {
            let at = format!("identifiers.{section}.{name}");
            let folded = if file.case_insensitive_names {
                name.to_ascii_lowercase()
            } else {
                name.clone()
            };
            if !seen.insert(folded) {
                problems.push(format!("{at}: declared twice"));
                continue;
            }
            let (needs_text, lookup_name) = match spec {
                IdentifierFile::Needs(n) => (n.as_str(), None),
                IdentifierFile::Table { needs, lookup } => (needs.as_str(), lookup.as_deref()),
            };
            let Some(needs) = needs(&at, needs_text, problems) else {
                continue;
            };
            let lookup = lookup_name.and_then(|l| {
                let found = lookup_names.iter().position(|k| *k == l);
                if found.is_none() {
                    problems.push(format!("{at}: no [lookup.{l}] section"));
                }
                found
            });
            if lookup.is_some() && kind != Kind::Content {
                problems.push(format!("{at}: `lookup` is for content identifiers"));
            }
            declared.push(Identifier {
                name: name.clone(),
                kind,
                needs,
                lookup,
            });
        }
    }
    Identifiers::new(declared, file.case_insensitive_names, space_key)
}

/// `[content_lookup]` or one `[lookup.NAME]` (which shares the former's cache TTL).
fn lookup(
    at: &str,
    name: Option<Arc<str>>,
    l: &LookupFile,
    cache_ttl: Duration,
    problems: &mut Problems<'_>,
) -> ContentLookup {
    if !l.path.starts_with('/') || !l.path.contains("{content}") {
        problems.push(format!(
            "{at}.path: must start with `/` and contain `{{content}}`"
        ));
    }
    if !l.space_pointer.starts_with('/') {
        problems.push(format!(
            "{at}.space_pointer: must be a JSON pointer like `/space/key`"
        ));
    }
    let pattern = l
        .space_pattern
        .as_deref()
        .and_then(|p| match Regex::new(p) {
            Ok(re) => Some(re),
            Err(e) => {
                problems.push(format!("{at}.space_pattern: {e}"));
                None
            }
        });
    ContentLookup {
        name,
        path_template: l.path.clone(),
        space_pointer: l.space_pointer.clone(),
        space_name: SpaceName { pattern },
        cache_ttl,
    }
}

/// `[[user_link_name]]`: where a user link names its user, tried in order.
fn user_link_names(
    sources: &[UserNameSourceFile],
    problems: &mut Problems<'_>,
) -> Vec<UserNameSource> {
    let mut names = Vec::new();
    for (i, source) in sources.iter().enumerate() {
        match Regex::new(&source.pattern) {
            Ok(re) => names.push(UserNameSource {
                attribute: source.attribute.clone(),
                pattern: re,
            }),
            Err(e) => problems.push(format!("user_link_name #{}: pattern: {e}", i + 1)),
        }
    }
    names
}

/// `query_names`: whether parameter names are read as PHP reads them.
fn query_names(value: Option<&str>, problems: &mut Problems<'_>) -> bool {
    match value {
        None | Some("plain") => false,
        Some("php") => true,
        Some(other) => {
            problems.push(format!(
                "query_names: `{other}` is neither `plain` nor `php`"
            ));
            false
        }
    }
}

/// `user_names`: how the wiki compares user names.
fn user_names(value: Option<&str>, problems: &mut Problems<'_>) -> UserNames {
    match value {
        None | Some("exact") => UserNames::Exact,
        Some("case_insensitive") => UserNames::CaseInsensitive,
        Some("mediawiki") => UserNames::MediaWiki,
        Some(other) => {
            problems.push(format!(
                "user_names: `{other}` is none of `exact`, `case_insensitive`, `mediawiki`"
            ));
            UserNames::Exact
        }
    }
}

/// `[listing]`: where items name their space, and where the listing arrays are.
fn listing(
    listing: Option<ListingFile>,
    problems: &mut Problems<'_>,
) -> (Vec<SpaceExtractor>, Vec<Vec<String>>) {
    let (sources, pointers) = listing.map(|l| (l.space, l.arrays)).unwrap_or_default();
    let mut arrays = Vec::new();
    for pointer in pointers {
        match SpaceExtractor::new(&pointer, None) {
            Some(x) if !pointer.ends_with('/') => arrays.push(x.pointer),
            _ => problems.push(format!(
                "listing.arrays: `{pointer}` is not a JSON pointer like `/query/search`"
            )),
        }
    }
    let mut space = Vec::new();
    for (i, source) in sources.into_iter().enumerate() {
        let at = format!("listing.space #{}", i + 1);
        let pattern = match source.pattern.as_deref().map(Regex::new).transpose() {
            Ok(p) => p,
            Err(e) => {
                problems.push(format!("{at}: pattern: {e}"));
                None
            }
        };
        match SpaceExtractor::new(&source.pointer, pattern) {
            Some(x) => space.push(x),
            None => problems.push(format!(
                "{at}: `{}` is not a JSON pointer like `/space/key`",
                source.pointer
            )),
        }
    }
    (space, arrays)
}

/// `user_link_selector`: the elements of HTML pages that link to a user.
fn user_links(selector: Option<&str>, problems: &mut Problems<'_>) -> Option<lol_html::Selector> {
    match selector.map(str::parse::<lol_html::Selector>) {
        Some(Ok(s)) => Some(s),
        Some(Err(e)) => {
            problems.push(format!("user_link_selector: {e}"));
            None
        }
        None => None,
    }
}

fn compile_anchored(pattern: &str) -> Result<Regex, regex::Error> {
    // Patterns are written anchored (`^/display/...`); a pattern without `^` would match
    // anywhere in the path, which is never what a rule author means for a security gate.
    if pattern.starts_with('^') {
        Regex::new(pattern)
    } else {
        Regex::new(&format!("^(?:{pattern})"))
    }
}

fn never_matches() -> Regex {
    Regex::new(r"[^\s\S]").unwrap_or_else(|_| unreachable!("constant regex"))
}

fn check_capture_names(re: &Regex, at: &str, problems: &mut Problems<'_>) {
    for name in re.capture_names().flatten() {
        if !CAPTURE_NAMES.contains(&name) {
            problems.push(format!(
                "{at}: capture `{name}` is not one of space, content, user, tiny_link"
            ));
        }
    }
}
