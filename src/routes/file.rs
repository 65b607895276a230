//! The route profile file as written: a serde mirror of its TOML, validated in
//! `validate.rs` into the types of `routes`.

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ProfileFile {
    #[serde(default)]
    pub(super) user_link_selector: Option<String>,
    #[serde(default)]
    pub(super) space_home: Option<String>,
    #[serde(default)]
    pub(super) user_link_name: Vec<UserNameSourceFile>,
    #[serde(default)]
    pub(super) json_user_keys: Vec<String>,
    #[serde(default)]
    pub(super) query_names: Option<String>,
    #[serde(default)]
    pub(super) user_names: Option<String>,
    #[serde(default)]
    pub(super) identifiers: Option<IdentifiersFile>,
    #[serde(default)]
    pub(super) max_parameters: Option<usize>,
    #[serde(default)]
    pub(super) max_query_bytes: Option<usize>,
    #[serde(default)]
    pub(super) forwards: Vec<String>,
    #[serde(default)]
    pub(super) content_lookup: Option<ContentLookupFile>,
    #[serde(default)]
    pub(super) lookup: std::collections::BTreeMap<String, LookupFile>,
    #[serde(default)]
    pub(super) listing: Option<ListingFile>,
    #[serde(default)]
    pub(super) route: Vec<RouteFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListingFile {
    pub(super) space: Vec<SpaceSourceFile>,
    /// JSON pointers of the arrays to filter (default: `/results`).
    #[serde(default)]
    pub(super) arrays: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SpaceSourceFile {
    pub(super) pointer: String,
    #[serde(default)]
    pub(super) pattern: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ContentLookupFile {
    pub(super) path: String,
    pub(super) space_pointer: String,
    #[serde(default)]
    pub(super) space_pattern: Option<String>,
    #[serde(default = "default_lookup_ttl")]
    pub(super) cache_ttl_secs: u64,
}

/// `[lookup.NAME]`: like `[content_lookup]`, sharing its cache (and TTL).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LookupFile {
    pub(super) path: String,
    pub(super) space_pointer: String,
    #[serde(default)]
    pub(super) space_pattern: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UserNameSourceFile {
    pub(super) attribute: String,
    pub(super) pattern: String,
}

impl ContentLookupFile {
    /// The lookup itself, without the cache lifetime only this section sets.
    pub(super) fn lookup(&self) -> LookupFile {
        LookupFile {
            path: self.path.clone(),
            space_pointer: self.space_pointer.clone(),
            space_pattern: self.space_pattern.clone(),
        }
    }
}

pub(super) fn default_lookup_ttl() -> u64 {
    300
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RouteFile {
    pub(super) name: String,
    pub(super) family: String,
    pub(super) path: String,
    #[serde(default)]
    pub(super) methods: Option<Vec<String>>,
    #[serde(default)]
    pub(super) query: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub(super) action: Option<String>,
    #[serde(default)]
    pub(super) public: bool,
    #[serde(default)]
    pub(super) owned_download: bool,
    #[serde(default)]
    pub(super) requires_identifier: bool,
    #[serde(default)]
    pub(super) rewrite: Vec<String>,
    #[serde(default)]
    pub(super) max_body_bytes: Option<u64>,
    #[serde(default)]
    pub(super) lookup: Option<String>,
    #[serde(default)]
    pub(super) json_identifiers: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default)]
    pub(super) guest_scope: Option<GuestScopeFile>,
}

/// `guest_scope`: a query parameter holding a search the wiki runs, narrowed for guests.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GuestScopeFile {
    pub(super) param: String,
    pub(super) language: String,
}

/// `[identifiers]`: the parameters that name content, a space or a user.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct IdentifiersFile {
    #[serde(default)]
    pub(super) case_insensitive_names: bool,
    #[serde(default)]
    pub(super) space_key: Option<String>,
    #[serde(default)]
    pub(super) content: std::collections::BTreeMap<String, IdentifierFile>,
    #[serde(default)]
    pub(super) space: std::collections::BTreeMap<String, IdentifierFile>,
    #[serde(default)]
    pub(super) user: std::collections::BTreeMap<String, IdentifierFile>,
}

/// One identifier: what it needs (`"route"` or a permission), or a table with a lookup.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum IdentifierFile {
    Needs(String),
    Table {
        needs: String,
        #[serde(default)]
        lookup: Option<String>,
    },
}
