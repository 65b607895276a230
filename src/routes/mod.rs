//! Route profiles (docs/CONFIGURATION.md, "Route profile"): which requests touch which family, space, content and user.
//!
//! A profile file is parsed and validated once per snapshot into a [`RouteProfile`]; the
//! request path only runs [`RouteProfile::classify`], one `RegexSet` pass over the
//! canonical path plus the captures of the single rule that wins.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use regex::{Regex, RegexSet};

pub mod extract;
mod file;
pub mod identifiers;
mod validate;

/// What part of the wiki a request touches (docs/CONFIGURATION.md, "Route profile").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    Space,
    Content,
    Search,
    PeopleDirectory,
    UserSearch,
    UserPicker,
    Mentions,
    SiteAnalytics,
    SpaceAnalytics,
    PageAnalytics,
    TeamCalendars,
    Questions,
    Apps,
    Admin,
    SpaceAdmin,
    SpaceExport,
    Feeds,
    Collab,
    Static,
    Auth,
    UserProfile,
    Other,
}

impl Family {
    pub const ALL: [Family; 22] = [
        Family::Space,
        Family::Content,
        Family::Search,
        Family::PeopleDirectory,
        Family::UserSearch,
        Family::UserPicker,
        Family::Mentions,
        Family::SiteAnalytics,
        Family::SpaceAnalytics,
        Family::PageAnalytics,
        Family::TeamCalendars,
        Family::Questions,
        Family::Apps,
        Family::Admin,
        Family::SpaceAdmin,
        Family::SpaceExport,
        Family::Feeds,
        Family::Collab,
        Family::Static,
        Family::Auth,
        Family::UserProfile,
        Family::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Family::Space => "space",
            Family::Content => "content",
            Family::Search => "search",
            Family::PeopleDirectory => "people_directory",
            Family::UserSearch => "user_search",
            Family::UserPicker => "user_picker",
            Family::Mentions => "mentions",
            Family::SiteAnalytics => "site_analytics",
            Family::SpaceAnalytics => "space_analytics",
            Family::PageAnalytics => "page_analytics",
            Family::TeamCalendars => "team_calendars",
            Family::Questions => "questions",
            Family::Apps => "apps",
            Family::Admin => "admin",
            Family::SpaceAdmin => "space_admin",
            Family::SpaceExport => "space_export",
            Family::Feeds => "feeds",
            Family::Collab => "collab",
            Family::Static => "static",
            Family::Auth => "auth",
            Family::UserProfile => "user_profile",
            Family::Other => "other",
        }
    }

    fn parse(s: &str) -> Option<Family> {
        Family::ALL.into_iter().find(|f| f.as_str() == s)
    }
}

/// What a request does to what it touches; guests need the matching permission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    View,
    Edit,
    Comment,
    Attach,
    Delete,
    Export,
    Admin,
}

impl Action {
    pub const ALL: [Action; 7] = [
        Action::View,
        Action::Edit,
        Action::Comment,
        Action::Attach,
        Action::Delete,
        Action::Export,
        Action::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::View => "view",
            Action::Edit => "edit",
            Action::Comment => "comment",
            Action::Attach => "attach",
            Action::Delete => "delete",
            Action::Export => "export",
            Action::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// The action of a route that names none. Methods outside HTTP's usual set (WebDAV,
    /// TRACE, …) count as `admin`, which no guest grant can hold, so they fail closed.
    pub fn from_method(method: &Method) -> Action {
        match *method {
            Method::GET | Method::HEAD | Method::OPTIONS => Action::View,
            Method::POST | Method::PUT | Method::PATCH => Action::Edit,
            Method::DELETE => Action::Delete,
            _ => Action::Admin,
        }
    }
}

/// The response rewrites a route asks for (docs/REWRITING.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rewrites {
    pub tag_users: bool,
    pub filter_spaces: bool,
    pub banner: bool,
}

/// How the space of a content id is found (docs/REWRITING.md).
#[derive(Debug, Clone)]
pub struct ContentLookup {
    /// `None` for the profile's `[content_lookup]`; the name of a `[lookup.NAME]` otherwise
    /// (it keeps the ids of different lookups apart in the cache).
    pub name: Option<Arc<str>>,
    /// Path and query with `{content}` where the id goes.
    pub path_template: String,
    /// JSON pointer to the space key in the lookup's answer.
    pub space_pointer: String,
    /// How the key is read from the pointed value, as for `[listing]` (MediaWiki answers
    /// a title, `ENG:Home`, not a key). No match: unresolved, which denies guests.
    pub space_name: extract::SpaceName,
    pub cache_ttl: Duration,
}

impl ContentLookup {
    pub fn path_for(&self, content: &str) -> String {
        self.path_template.replace("{content}", content)
    }

    /// The cache key of an id: the id itself for `[content_lookup]`, prefixed with the
    /// lookup's name otherwise (a page id and a revision id may be the same number).
    pub fn cache_key<'c>(&self, content: &'c str) -> std::borrow::Cow<'c, str> {
        // One key per id as the wiki reads it: `0101` is page 101 to `Long.parseLong`.
        let canonical = match content.trim_start_matches('0') {
            "" if !content.is_empty() => "0",
            trimmed if content.bytes().all(|b| b.is_ascii_digit()) => trimmed,
            _ => content,
        };
        match &self.name {
            None => canonical.into(),
            Some(name) => format!("{name}\u{0}{canonical}").into(),
        }
    }

    /// The space key named by the value at `space_pointer`, upper-cased.
    pub fn space_of(&self, value: &str) -> Option<String> {
        self.space_name.key_in(value)
    }
}

/// One `[[route]]` rule, compiled.
#[derive(Debug)]
pub struct RouteRule {
    pub name: Arc<str>,
    pub family: Family,
    pub path: Regex,
    pub methods: Option<Vec<Method>>,
    pub query: Vec<(String, Regex)>,
    pub action: Option<Action>,
    pub public: bool,
    /// A file the wiki made for one user (an export's `/download/temp/…`): only the user
    /// whose export request the wiki redirected there may fetch it (`owned_download`).
    pub owned_download: bool,
    /// The request acts on something only its body names (`requires_identifier`): a
    /// guest's request that names nothing — no capture, no identifier in query or body —
    /// is refused instead of passed unjudged.
    pub requires_identifier: bool,
    pub rewrites: Rewrites,
    /// Largest request body this rule accepts; `None`: `server.max_body_bytes`.
    pub max_body_bytes: Option<usize>,
    /// Index into [`RouteProfile::lookups`] of the rule's `lookup`; `None`: `[content_lookup]`.
    pub lookup: Option<usize>,
    /// Where a request body names identifiers (`json_identifiers`). `None`: the rule does
    /// not say, and a guest's write with a JSON body is refused.
    pub json_identifiers: Option<Vec<identifiers::JsonIdentifier>>,
    /// The query parameter holding a CQL search, narrowed to a guest's spaces before the
    /// wiki runs it (`guest_scope`).
    pub guest_scope: Option<String>,
}

/// The route of one request: what the profile says it touches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub name: Arc<str>,
    pub family: Family,
    /// Upper-cased: space keys compare case-insensitively.
    pub space: Option<Box<str>>,
    pub content: Option<Box<str>>,
    pub user: Option<Box<str>>,
    pub action: Action,
    pub public: bool,
    pub rewrites: Rewrites,
    /// The rule's request body limit, if it sets one (else `server.max_body_bytes`).
    pub max_body_bytes: Option<usize>,
    /// Guests' listings on this route will be filtered to their spaces (the route asks for
    /// `filter_spaces` and JSON rewriting is on). The policy may allow search only then.
    pub filtered: bool,
    /// Which lookup resolves `content` (index into [`RouteProfile::lookups`]); `None`: the
    /// profile's `[content_lookup]`.
    pub lookup: Option<usize>,
    /// The rule that matched (index into [`RouteProfile::rules`]); `None`: none did.
    pub rule: Option<usize>,
    /// Why the request names something no one can act on (a tiny-link key that decodes to
    /// no page id): the gateway answers 400 with this reason, to everyone.
    pub malformed: Option<&'static str>,
}

/// A compiled route profile.
#[derive(Debug)]
pub struct RouteProfile {
    pub source: PathBuf,
    pub rules: Vec<RouteRule>,
    pub(crate) path_set: RegexSet,
    /// Every query parameter some rule captures; a request repeating one is refused, since
    /// the gateway and the wiki could each pick a different occurrence.
    pub captured_query_params: BTreeSet<String>,
    pub content_lookup: Option<ContentLookup>,
    /// Named lookups (`[lookup.NAME]`), for routes whose ids another endpoint resolves.
    pub lookups: Vec<ContentLookup>,
    /// The elements of HTML pages that link to a user (tag_users).
    pub user_links: Option<lol_html::Selector>,
    /// The wiki path of a space's home page, `{space}` standing for its key
    /// (`space_home`): the guest home links each granted space there.
    pub space_home: Option<String>,
    /// Where a user link names its user when neither `data-username` nor a Confluence
    /// profile URL does (`user_link_name`), tried in order.
    pub user_link_names: Arc<[extract::UserNameSource]>,
    /// Object keys whose string value names a user (`json_user_keys`): such an object gets
    /// `isExternalCollaborator` like a Confluence user object.
    pub json_user_keys: Vec<String>,
    /// Query parameter names are read as PHP reads them (`query_names = "php"`).
    pub php_query_names: bool,
    /// How the wiki compares user names (`user_names`).
    pub user_names: extract::UserNames,
    /// The parameters that name content, a space or a user (`[identifiers]`).
    pub identifiers: Arc<identifiers::Identifiers>,
    /// Most parameters (query and form body together) a request may carry
    /// (`max_parameters`): beyond the wiki's own limit, parameters the gateway judged
    /// would never reach it (Tomcat ignores those past `maxParameterCount`).
    pub max_parameters: usize,
    /// Longest query string a request may carry (`max_query_bytes`).
    pub max_query_bytes: usize,
    /// Paths the wiki forwards internally to another path (`forwards`): each a regex
    /// whose `path` capture is what the wiki serves. Classified as that path.
    pub forwards: Vec<Regex>,
    /// How a listing item names its space (filter_spaces), tried in order.
    pub listing_space: Vec<extract::SpaceExtractor>,
    /// Where listings are (`[listing] arrays`), each a path of object keys; empty: the
    /// top-level `results` array.
    pub listing_arrays: Vec<Vec<String>>,
    pub(crate) unmatched_name: Arc<str>,
}

/// A problem in a route profile, with the file and where in it.
pub type ProfileError = crate::files::FileError;

impl RouteProfile {
    /// Finds the first rule that matches the canonical path, method and query parameters.
    /// A request no rule matches has family `other` (which guests are denied by default).
    pub fn classify(&self, method: &Method, path: &str, query: &[(String, String)]) -> Route {
        let candidates = self.path_set.matches(path);
        for index in candidates.iter() {
            let rule = &self.rules[index];
            if let Some(methods) = &rule.methods
                && !methods.contains(method)
            {
                continue;
            }
            let mut query_values = Vec::with_capacity(rule.query.len());
            let all_present =
                rule.query
                    .iter()
                    .all(|(name, re)| match query.iter().find(|(k, _)| k == name) {
                        Some((_, v)) if re.is_match(v) => {
                            query_values.push((re, v.as_str()));
                            true
                        }
                        _ => false,
                    });
            if !all_present {
                continue;
            }
            let mut route = Route {
                name: rule.name.clone(),
                family: rule.family,
                space: None,
                content: None,
                user: None,
                action: rule.action.unwrap_or_else(|| Action::from_method(method)),
                public: rule.public,
                rewrites: rule.rewrites,
                max_body_bytes: rule.max_body_bytes,
                filtered: false,
                lookup: rule.lookup,
                rule: Some(index),
                malformed: None,
            };
            // A rule with no group captures nothing: the set's match is all it needs.
            if rule.path.captures_len() > 1
                && let Some(caps) = rule.path.captures(path)
            {
                take_captures(&rule.path, &caps, &mut route);
            }
            for (re, value) in query_values {
                if let Some(caps) = re.captures(value) {
                    take_captures(re, &caps, &mut route);
                }
            }
            return route;
        }
        Route {
            name: self.unmatched_name.clone(),
            family: Family::Other,
            space: None,
            content: None,
            user: None,
            action: Action::from_method(method),
            public: false,
            rewrites: Rewrites::default(),
            max_body_bytes: None,
            filtered: false,
            lookup: None,
            rule: None,
            malformed: None,
        }
    }

    /// The lookup that resolves a route's content id: the rule's `lookup`, or
    /// `[content_lookup]`.
    pub fn lookup_for(&self, route: &Route) -> Option<&ContentLookup> {
        match route.lookup {
            Some(i) => self.lookups.get(i),
            None => self.content_lookup.as_ref(),
        }
    }
}

fn take_captures(re: &Regex, caps: &regex::Captures<'_>, route: &mut Route) {
    // By position, as the names are listed: `Captures::name` hashes each name to find it.
    for (index, name) in re.capture_names().enumerate() {
        let (Some(name), Some(m)) = (name, caps.get(index)) else {
            continue;
        };
        if m.as_str().is_empty() {
            continue;
        }
        if name == "tiny_link" {
            if route.content.is_none() {
                match decode_tiny_link(m.as_str()) {
                    Some(id) => route.content = Some(id.to_string().into_boxed_str()),
                    None => route.malformed = Some("malformed_tiny_link"),
                }
            }
            continue;
        }
        let slot = match name {
            "space" => &mut route.space,
            "content" => &mut route.content,
            "user" => &mut route.user,
            _ => continue,
        };
        if slot.is_none() {
            *slot = Some(if name == "space" {
                m.as_str().to_uppercase().into_boxed_str()
            } else {
                m.as_str().into()
            });
        }
    }
}

/// The content id of a Confluence tiny link key (`/x/<key>`, what the Share button sends).
/// Confluence writes the id as little-endian bytes, base64-encodes them, drops `=` padding
/// and trailing `A`s (zero bits), and writes `/` as `-` and `+` as `_` (Atlassian KB 956713432,
/// "How to programmatically generate the tiny link of a Confluence page").
///
/// Only ids below 2³² are accepted: decoders of this format read the bytes as a 32-bit or
/// a 64-bit number, and only for such ids do both readings name the same page — a larger
/// one could be judged as one page while the wiki serves another. `None` for any other key
/// (guests are refused it).
pub fn decode_tiny_link(key: &str) -> Option<u64> {
    if key.is_empty() || key.len() > 12 {
        return None;
    }
    let mut bits: u128 = 0;
    let mut count = 0u32;
    let mut bytes = Vec::with_capacity(9);
    for c in key
        .bytes()
        .chain(std::iter::repeat_n(b'A', (4 - key.len() % 4) % 4))
    {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'_' => 62,
            b'-' => 63,
            _ => return None,
        };
        bits = (bits << 6) | u128::from(value);
        count += 6;
        if count >= 8 {
            count -= 8;
            bytes.push((bits >> count) as u8);
            bits &= (1u128 << count) - 1;
        }
    }
    // Beyond 4 bytes, only zero bits (the encoding's padding) may remain.
    if bytes.iter().skip(4).any(|b| *b != 0) {
        return None;
    }
    let mut le = [0u8; 4];
    for (slot, b) in le.iter_mut().zip(&bytes) {
        *slot = *b;
    }
    let id = u64::from(u32::from_le_bytes(le));
    (id != 0).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Keys made as Confluence makes them (little-endian bytes, base64, `=` and trailing
    /// `A`s dropped, `/`→`-`, `+`→`_`), for ids of every byte length.
    #[test]
    fn tiny_link_keys_decode_to_their_content_ids() {
        use base64::Engine as _;
        for id in [1u64, 101, 98_305, 65_538, 1_234_567_890, 4_294_967_295] {
            let encoded = base64::engine::general_purpose::STANDARD.encode(id.to_le_bytes());
            let key = encoded
                .trim_end_matches('=')
                .trim_end_matches('A')
                .replace('/', "-")
                .replace('+', "_");
            assert_eq!(decode_tiny_link(&key), Some(id), "{id} as {key}");
        }
        // 98305 is 0x018001: bytes 01 80 01, base64 `AYAB`.
        assert_eq!(decode_tiny_link("AYAB"), Some(98_305));
        // 2³² (`AAAAAAE`) and larger are refused: read as 32 bits it would be page 0.
        for bad in [
            "",
            "!!",
            "a b",
            "AAAA",
            "AAAAAAE",
            "__________8",
            "AAAAAAAAAAAAA",
        ] {
            assert_eq!(decode_tiny_link(bad), None, "{bad:?}");
        }
    }

    const PROFILE: &str = r#"
[content_lookup]
path = "/rest/api/content/{content}?expand=space"
space_pointer = "/space/key"

[[route]]
name = "login"
family = "auth"
path = "^/login\\.action$"
public = true

[[route]]
name = "space pages"
family = "space"
path = "^/display/(?P<space>[^/]+)"

[[route]]
name = "viewpage by id"
family = "content"
path = "^/pages/viewpage\\.action$"
query = { pageId = "^(?P<content>[0-9]+)$" }

[[route]]
name = "viewpage by key"
family = "space"
path = "^/pages/viewpage\\.action$"
query = { spaceKey = "^(?P<space>.+)$" }
methods = ["GET"]
"#;

    fn profile() -> RouteProfile {
        RouteProfile::parse(Path::new("t.toml"), PROFILE).expect("profile parses")
    }

    #[test]
    fn first_match_wins_with_captures() {
        let p = profile();
        let r = p.classify(&Method::GET, "/display/eng/Home", &[]);
        assert_eq!(r.family, Family::Space);
        assert_eq!(r.space.as_deref(), Some("ENG"));
        assert_eq!(r.action, Action::View);
        let q = vec![("pageId".to_string(), "123".to_string())];
        let r = p.classify(&Method::GET, "/pages/viewpage.action", &q);
        assert_eq!(r.family, Family::Content);
        assert_eq!(r.content.as_deref(), Some("123"));
        let q = vec![("spaceKey".to_string(), "hr".to_string())];
        let r = p.classify(&Method::GET, "/pages/viewpage.action", &q);
        assert_eq!(r.space.as_deref(), Some("HR"));
        let r = p.classify(&Method::POST, "/pages/viewpage.action", &q);
        assert_eq!(r.family, Family::Other);
        assert_eq!(r.action, Action::Edit);
        assert!(p.classify(&Method::GET, "/login.action", &[]).public);
        assert_eq!(p.captured_query_params.len(), 2);
    }

    #[test]
    fn a_rule_may_set_its_own_body_limit() {
        let text = "[[route]]\nname = \"uploads\"\nfamily = \"space\"\npath = \"^/upload$\"\nmax_body_bytes = 1073741824\n";
        let p = RouteProfile::parse(Path::new("p.toml"), text).expect("profile parses");
        let r = p.classify(&Method::POST, "/upload", &[]);
        assert_eq!(r.max_body_bytes, Some(1 << 30));
        assert_eq!(
            p.classify(&Method::POST, "/other", &[]).max_body_bytes,
            None
        );
        assert_eq!(
            profile()
                .classify(&Method::GET, "/display/X", &[])
                .max_body_bytes,
            None
        );
    }

    #[test]
    fn named_lookups_patterns_and_php_names() {
        let text = r#"
query_names = "php"
json_user_keys = ["user"]
user_link_name = [{ attribute = "title", pattern = '^User:(?P<user>.+)$' }]
[content_lookup]
path = "/api.php?pageids={content}"
space_pointer = "/query/pages/0/title"
space_pattern = '^(?P<space>[A-Za-z]+)(?:_talk)?:'
[lookup.revision]
path = "/api.php?revids={content}"
space_pointer = "/query/pages/0/title"
space_pattern = '^(?P<space>[A-Za-z]+):'
[listing]
space = [{ pointer = "/title", pattern = '^(?P<space>[A-Za-z]+):' }]
arrays = ["/query/search"]
[[route]]
name = "by page id"
family = "content"
path = '^/index\.php$'
query = { curid = '^(?P<content>[0-9]+)$' }
[[route]]
name = "by revision"
family = "content"
path = '^/index\.php$'
query = { oldid = '^(?P<content>[0-9]+)$' }
lookup = "revision"
"#;
        let p = RouteProfile::parse(Path::new("m.toml"), text).expect("profile parses");
        assert!(p.php_query_names);
        assert_eq!(
            p.listing_arrays,
            vec![vec!["query".to_string(), "search".to_string()]]
        );
        let q = vec![("oldid".to_string(), "7".to_string())];
        let r = p.classify(&Method::GET, "/index.php", &q);
        let revision = p.lookup_for(&r).expect("lookup");
        assert_eq!(revision.path_for("7"), "/api.php?revids=7");
        assert_ne!(revision.cache_key("7"), "7");
        let q = vec![("curid".to_string(), "7".to_string())];
        let page = p
            .lookup_for(&p.classify(&Method::GET, "/index.php", &q))
            .expect("lookup");
        assert_eq!(page.cache_key("7"), "7");
        assert_eq!(page.space_of("eng_talk:Home").as_deref(), Some("ENG"));
        assert_eq!(page.space_of("Main Page"), None);

        let bad = "[lookup.x]\npath = \"/x\"\nspace_pointer = \"y\"\nspace_pattern = \"(\"\n[[route]]\nname = \"r\"\nfamily = \"space\"\npath = \"^/\"\nlookup = \"nope\"\n";
        let errs = RouteProfile::parse(Path::new("m.toml"), bad).expect_err("invalid");
        let text: Vec<String> = errs.iter().map(|e| e.message.clone()).collect();
        assert_eq!(errs.len(), 4, "{text:?}");
    }

    #[test]
    fn errors_name_the_route() {
        let bad = "[[route]]\nname = \"x\"\nfamily = \"nope\"\npath = \"^/(?P<who>x)\"\naction = \"fly\"\nrewrite = [\"shout\"]\n";
        let errs = RouteProfile::parse(Path::new("p.toml"), bad).expect_err("invalid");
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(errs.len(), 4, "{text:?}");
        assert!(text[0].contains("route #1 (x): unknown family `nope`"));
        let unknown_key = RouteProfile::parse(
            Path::new("p.toml"),
            "[[route]]\nname=\"x\"\nfamily=\"space\"\npath=\"^/\"\nbogus=1\n",
        )
        .expect_err("unknown key");
        assert!(
            unknown_key[0].message.contains("line"),
            "{}",
            unknown_key[0].message
        );
    }
}
