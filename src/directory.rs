//! The data document (docs/CONFIGURATION.md, "Data document"): groups, users and the spaces shared with guests.
//!
//! It is parsed into typed form once per snapshot. The typed form answers the questions the
//! Rust side asks (a user's effective groups, whether someone is a guest before a content
//! lookup, which spaces carry a banner, what `/guests` lists); the same document, with space
//! keys upper-cased, is what the Rego policy sees as `data`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::config::UnknownUsers;
use crate::routes::Action;
use crate::routes::extract::UserNames;

/// A problem in the data document.
pub type DataError = crate::files::FileError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupEntry {
    #[serde(default)]
    pub guest: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserFile {
    #[serde(default)]
    groups: Vec<MembershipFile>,
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    expires: Option<String>,
}

/// A group membership: the group's name, or `{"group": ..., "expires": ...}` for a guest
/// group membership that ends.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum MembershipFile {
    Name(String),
    Expiring {
        group: String,
        #[serde(default)]
        expires: Option<String>,
    },
}

impl MembershipFile {
    pub(crate) fn group(&self) -> &str {
        match self {
            MembershipFile::Name(g) | MembershipFile::Expiring { group: g, .. } => g,
        }
    }

    /// The membership as the data document writes it.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        match self {
            MembershipFile::Name(g)
            | MembershipFile::Expiring {
                group: g,
                expires: None,
            } => serde_json::Value::from(g.as_str()),
            MembershipFile::Expiring {
                group,
                expires: Some(e),
            } => serde_json::json!({"group": group, "expires": e}),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum GrantFile {
    List(Vec<String>),
    Object {
        permissions: Vec<String>,
        #[serde(default)]
        expires: Option<String>,
    },
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GuestGrantsFile {
    #[serde(default)]
    groups: BTreeMap<String, GrantFile>,
    #[serde(default)]
    users: BTreeMap<String, GrantFile>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpaceFile {
    #[serde(default)]
    guests: GuestGrantsFile,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct DataFile {
    /// How many changes the admin write API has made (it counts them here).
    #[serde(default)]
    generation: u64,
    #[serde(default)]
    groups: BTreeMap<String, GroupEntry>,
    #[serde(default)]
    users: BTreeMap<String, UserFile>,
    #[serde(default)]
    spaces: BTreeMap<String, SpaceFile>,
}

/// A directory user.
#[derive(Debug, Clone)]
pub struct User {
    /// Every group named in the directory, lapsed memberships included: a guest whose guest
    /// group membership ends stays a guest (with fewer grants), never turns regular.
    pub groups: Vec<Arc<str>>,
    /// Guest group memberships that end, by group.
    pub membership_expires: BTreeMap<String, OffsetDateTime>,
    pub display_name: Option<String>,
    pub email: Option<String>,
    pub expires: Option<OffsetDateTime>,
    /// [`Directory::is_guest`] of `groups`, worked out at load: a response is tagged by
    /// looking up every user it names.
    pub guest: bool,
}

/// One grant of permissions in a space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub permissions: Vec<Action>,
    pub expires: Option<OffsetDateTime>,
}

impl Grant {
    pub fn active_at(&self, now: OffsetDateTime) -> bool {
        self.expires.is_none_or(|e| now < e)
    }
}

/// The guest grants of one space.
#[derive(Debug, Clone, Default)]
pub struct SpaceGrants {
    pub name: Option<String>,
    pub groups: BTreeMap<String, Grant>,
    pub users: BTreeMap<String, Grant>,
}

/// The directory's facts about one caller, as the policy input carries them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallerFacts {
    /// At least one of the caller's groups is a declared regular group: the only way to be
    /// a regular user (docs/CONFIGURATION.md, "Data document").
    pub regular: bool,
    /// The guest rule over the caller's effective groups: no regular group, and at least
    /// one declared guest group — or no declared group at all under
    /// `identity.unknown_users = "guest"`.
    pub guest: bool,
    /// The user's own `expires` has passed: their guest access has ended.
    pub expired: bool,
    /// What the active grants give in the route's space — the user's own grant and those of
    /// groups whose membership has not lapsed — in the order view, edit, comment, attach,
    /// delete, export, without duplicates; empty once the user has expired or when the route
    /// names no space.
    pub permissions: Vec<Action>,
}

/// The typed data document of one snapshot.
#[derive(Debug)]
pub struct Directory {
    pub groups: BTreeMap<String, GroupEntry>,
    // Hashed with foldhash's keyed quality variant, seeded per process: several times
    // faster than SipHash on short keys, and collisions cannot be aimed without the seed.
    pub users: HashMap<String, User, foldhash::quality::RandomState>,
    /// Keyed by upper-cased space key.
    pub spaces: BTreeMap<String, SpaceGrants>,
    /// Every expiry instant in the document, sorted: a cached decision must not outlive the
    /// next one.
    pub expiries: Vec<OffsetDateTime>,
    /// Every expiry with where it stands (`spaces.ENG.guests.users.gina`), for `check`.
    pub expiry_items: Vec<(OffsetDateTime, String)>,
    /// The document as the policy sees it under `data`.
    pub rego_data: regorus::Value,
    /// How the wiki compares user names; every name in the document and every lookup
    /// goes through [`UserNames::canonical`].
    pub user_names: UserNames,
    /// The write API's count of changes (`generation` in the document): each write makes a
    /// revision of its own, so the access events of two writes never share an id, even
    /// when the second restores what the first changed.
    pub generation: u64,
    /// What becomes of a user with no declared group.
    pub unknown_users: UnknownUsers,
}

/// [`Directory::standing`], before the directory is built.
fn standing_among(declared: &BTreeMap<String, GroupEntry>, groups: &[Arc<str>]) -> Standing {
    let mut guest = false;
    for g in groups {
        match declared.get(&**g) {
            Some(entry) if !entry.guest => return Standing::Regular,
            Some(_) => guest = true,
            None => {}
        }
    }
    if guest {
        Standing::Guest
    } else {
        Standing::Unclassified
    }
}

/// [`Directory::is_guest`], before the directory is built.
fn judged_guest(
    declared: &BTreeMap<String, GroupEntry>,
    unknown_users: UnknownUsers,
    groups: &[Arc<str>],
) -> bool {
    match standing_among(declared, groups) {
        Standing::Guest => true,
        Standing::Regular => false,
        Standing::Unclassified => unknown_users == UnknownUsers::Guest,
    }
}

/// Where a caller stands by the guest rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// At least one declared regular group (permissions are additive).
    Regular,
    /// Declared guest groups only.
    Guest,
    /// No declared group at all: unknown names, undeclared groups, no groups.
    Unclassified,
}

/// One space a guest reaches now (the guest home lists them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reach {
    pub space: String,
    pub name: Option<String>,
    /// The union of the active grants' permissions, in `Action` order.
    pub permissions: Vec<Action>,
    /// When the last of those grants ends; `None` when one of them never does.
    pub expires: Option<OffsetDateTime>,
}

impl Directory {
    /// The spaces `user` reaches at `now` through their own grants or those of `groups`
    /// (their effective groups), as the data document states them. What the policy makes
    /// of them decides each request; this is what a guest is shown.
    pub fn reach(&self, user: &str, groups: &[Arc<str>], now: OffsetDateTime) -> Vec<Reach> {
        let user = self.user_names.canonical(user);
        let mut reach = Vec::new();
        for (key, space) in &self.spaces {
            let grants = space
                .users
                .get(user.as_ref())
                .into_iter()
                .chain(groups.iter().filter_map(|g| space.groups.get(&**g)))
                .filter(|g| g.active_at(now));
            let mut permissions = std::collections::BTreeSet::new();
            let mut expires = Some(OffsetDateTime::UNIX_EPOCH);
            let mut any = false;
            for grant in grants {
                any = true;
                permissions.extend(grant.permissions.iter().copied());
                expires = match (expires, grant.expires) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    _ => None,
                };
            }
            if any {
                reach.push(Reach {
                    space: key.clone(),
                    name: space.name.clone(),
                    permissions: permissions.into_iter().collect(),
                    expires,
                });
            }
        }
        reach
    }

    pub fn load(path: &Path) -> Result<Directory, Vec<DataError>> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            vec![DataError {
                file: path.to_path_buf(),
                message: format!("cannot read data document: {e}"),
            }]
        })?;
        Self::parse(path, &text)
    }

    /// Parses a document whose user names match as written, with unclassified users denied.
    pub fn parse(path: &Path, text: &str) -> Result<Directory, Vec<DataError>> {
        Self::parse_with(path, text, UserNames::Exact, UnknownUsers::Deny)
    }

    /// Parses a document for a wiki that compares user names by `user_names`.
    pub fn parse_with(
        path: &Path,
        text: &str,
        user_names: UserNames,
        unknown_users: UnknownUsers,
    ) -> Result<Directory, Vec<DataError>> {
        let err = |message: String| DataError {
            file: path.to_path_buf(),
            message,
        };
        let mut json: serde_json::Value =
            serde_json::from_str(text).map_err(|e| vec![err(format!("invalid JSON: {e}"))])?;
        if !json.is_object() {
            return Err(vec![err("the data document must be a JSON object".into())]);
        }
        let file: DataFile = serde_json::from_value(json.clone())
            .map_err(|e| vec![err(format!("malformed data document: {e}"))])?;

        let mut errors = Vec::new();
        let mut expiries = ExpiryParser {
            file: path.to_path_buf(),
            seen: Vec::new(),
        };
        let mut users = HashMap::with_capacity_and_hasher(
            file.users.len(),
            foldhash::quality::RandomState::default(),
        );
        for (written, u) in &file.users {
            let name = &user_names.canonical(written).into_owned();
            if users.contains_key(name) {
                errors.push(err(format!(
                    "users: `{written}` and another entry are the same user to the wiki (`{name}`)"
                )));
            }
            let expires = expiries.parse(&format!("users.{name}"), &u.expires, &mut errors);
            let mut groups = Vec::with_capacity(u.groups.len());
            let mut membership_expires = BTreeMap::new();
            for m in &u.groups {
                match m {
                    MembershipFile::Name(g) => groups.push(Arc::from(g.as_str())),
                    MembershipFile::Expiring { group, expires } => {
                        let at = format!("users.{name}.groups.{group}");
                        if !file.groups.get(group).is_some_and(|g| g.guest) {
                            errors.push(err(format!(
                                "{at}: only guest group memberships can expire; `{group}` is a regular group (the wiki, not guestgate, grants what regular groups reach)"
                            )));
                        }
                        if let Some(t) = expiries.parse(&at, expires, &mut errors) {
                            // A group listed twice: the membership ends with its earliest
                            // expiry, as an administrator who ended either entry meant.
                            membership_expires
                                .entry(group.clone())
                                .and_modify(|end: &mut OffsetDateTime| *end = (*end).min(t))
                                .or_insert(t);
                        }
                        groups.push(Arc::from(group.as_str()));
                    }
                }
            }
            users.insert(
                name.clone(),
                User {
                    groups,
                    membership_expires,
                    display_name: u.display_name.clone(),
                    email: u.email.clone(),
                    expires,
                    guest: false,
                },
            );
        }

        let mut spaces = BTreeMap::new();
        for (key, space) in &file.spaces {
            let upper = key.to_uppercase();
            let at = format!("spaces.{key}");
            let mut grants = SpaceGrants {
                name: space.name.clone(),
                ..SpaceGrants::default()
            };
            for (group, grant) in &space.guests.groups {
                let at = format!("{at}.guests.groups.{group}");
                match file.groups.get(group) {
                    Some(g) if g.guest => {}
                    Some(_) => errors.push(err(format!(
                        "{at}: `{group}` is a regular group; guest grants go to guest groups"
                    ))),
                    None => errors.push(err(format!(
                        "{at}: `{group}` is not in `groups` (declare it with \"guest\": true)"
                    ))),
                }
                if let Some(g) = typed_grant(&at, grant, &mut errors, &mut expiries) {
                    grants.groups.insert(group.clone(), g);
                }
            }
            for (written, grant) in &space.guests.users {
                let at = format!("{at}.guests.users.{written}");
                let user = user_names.canonical(written).into_owned();
                if let Some(g) = typed_grant(&at, grant, &mut errors, &mut expiries)
                    && grants.users.insert(user.clone(), g).is_some()
                {
                    errors.push(err(format!(
                        "{at}: another entry is the same user to the wiki (`{user}`)"
                    )));
                }
            }
            if spaces.insert(upper.clone(), grants).is_some() {
                errors.push(err(format!(
                    "spaces: `{key}` appears twice (space keys compare case-insensitively)"
                )));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }

        // The policy looks spaces up by the upper-cased key the classifier produces.
        if let Some(serde_json::Value::Object(spaces_json)) = json.get_mut("spaces") {
            let upper: serde_json::Map<String, serde_json::Value> = std::mem::take(spaces_json)
                .into_iter()
                .map(|(k, v)| (k.to_uppercase(), v))
                .collect();
            *spaces_json = upper;
        }
        // And users by the wiki's spelling of their names, as the input names them.
        if user_names != UserNames::Exact {
            canonical_keys(json.get_mut("users"), user_names);
            if let Some(serde_json::Value::Object(spaces_json)) = json.get_mut("spaces") {
                for space in spaces_json.values_mut() {
                    canonical_keys(space.pointer_mut("/guests/users"), user_names);
                }
            }
        }
        let rego_data: regorus::Value =
            serde_json::from_value(json).map_err(|e| vec![err(format!("data document: {e}"))])?;
        let mut expiry_items = expiries.seen;
        expiry_items.sort();
        let expiries = expiry_items.iter().map(|(t, _)| *t).collect();
        for user in users.values_mut() {
            user.guest = judged_guest(&file.groups, unknown_users, &user.groups);
        }
        Ok(Directory {
            groups: file.groups,
            users,
            spaces,
            expiries,
            expiry_items,
            rego_data,
            user_names,
            unknown_users,
            generation: file.generation,
        })
    }

    /// A user's groups: the directory's ∪ the token's, sorted and without duplicates.
    /// Groups the document does not declare (and empty names) are left out: a token that
    /// names `offline_access` or `""` says nothing about who the user is to the wiki.
    /// `user` is the wiki's spelling of the name ([`UserNames::canonical`]).
    pub fn effective_groups(&self, user: &str, token_groups: &[Arc<str>]) -> Vec<Arc<str>> {
        let mut groups: Vec<Arc<str>> = token_groups
            .iter()
            .filter(|g| self.groups.contains_key(&***g))
            .cloned()
            .collect();
        if let Some(u) = self.users.get(user) {
            groups.extend(
                u.groups
                    .iter()
                    .filter(|g| self.groups.contains_key(&***g))
                    .cloned(),
            );
        }
        groups.sort();
        groups.dedup();
        groups
    }

    /// The guest rule (docs/CONFIGURATION.md, "Data document"): one declared regular group
    /// makes a user regular; declared guest groups only make a guest; nothing else places a
    /// user at all.
    pub fn standing(&self, groups: &[Arc<str>]) -> Standing {
        standing_among(&self.groups, groups)
    }

    /// Whether these groups are judged as a guest's: by the guest rule, or for want of any
    /// declared group under `identity.unknown_users = "guest"`. The policy decides; the
    /// gateway uses this to know when a request needs more facts (a content id's space)
    /// before the policy can decide, and whom to tag.
    pub fn is_guest(&self, groups: &[Arc<str>]) -> bool {
        judged_guest(&self.groups, self.unknown_users, groups)
    }

    /// What the directory says of a caller at `now`, for the policy input (docs/POLICIES.md:
    /// `input.user.guest`, `expired`, `permissions`). Computed here, by direct lookups on the
    /// typed document, because the same reasoning in Rego (an `every` over the groups, a
    /// walk over each group's grant and membership) cost three times the whole rest of an
    /// uncached decision. Its cost depends on the caller's own groups, never on the size of
    /// the directory.
    ///
    /// `groups` are the effective groups (directory ∪ token); `space` is the route's.
    pub fn facts(
        &self,
        user: Option<&str>,
        groups: &[Arc<str>],
        space: Option<&str>,
        now: OffsetDateTime,
    ) -> CallerFacts {
        let entry = user.and_then(|u| self.users.get(u));
        let expired = entry
            .and_then(|u| u.expires)
            .is_some_and(|expires| now >= expires);
        let mut facts = CallerFacts {
            regular: self.standing(groups) == Standing::Regular,
            guest: self.is_guest(groups),
            expired,
            permissions: Vec::new(),
        };
        let Some(grants) = space.filter(|_| !expired).and_then(|s| self.space(s)) else {
            return facts;
        };
        let mut held = |grant: &Grant| {
            if grant.active_at(now) {
                // Loading refuses `admin` in a guest grant; never pass one on regardless.
                let grantable = grant.permissions.iter().filter(|p| **p != Action::Admin);
                facts.permissions.extend(grantable);
            }
        };
        for group in groups {
            // A membership the directory ended takes that group's grants away, even when the
            // token still names the group: the expiry is the administrator's decision.
            let lapsed = entry
                .and_then(|u| u.membership_expires.get(&**group))
                .is_some_and(|end| now >= *end);
            if !lapsed && let Some(grant) = grants.groups.get(&**group) {
                held(grant);
            }
        }
        if let Some(grant) = user.and_then(|u| grants.users.get(u)) {
            held(grant);
        }
        facts.permissions.sort_unstable();
        facts.permissions.dedup();
        facts
    }

    /// A space's guest grants, by key in any case.
    fn space(&self, key: &str) -> Option<&SpaceGrants> {
        if key.bytes().any(|b| b.is_ascii_lowercase()) || !key.is_ascii() {
            self.spaces.get(&key.to_uppercase())
        } else {
            self.spaces.get(key)
        }
    }

    /// Spaces with at least one guest grant (active now or later).
    pub fn shared_spaces(&self) -> impl Iterator<Item = (&String, &SpaceGrants)> {
        self.spaces
            .iter()
            .filter(|(_, g)| !g.groups.is_empty() || !g.users.is_empty())
    }

    /// Expiries at or before `now`: grants, memberships and guests that no longer count.
    pub fn expired_at(
        &self,
        now: OffsetDateTime,
    ) -> impl Iterator<Item = &(OffsetDateTime, String)> {
        self.expiry_items.iter().take_while(move |(t, _)| *t <= now)
    }

    /// Expiries Rego's `time.parse_rfc3339_ns` cannot read: it counts nanoseconds since
    /// 1970 in a signed 64-bit integer, so only instants from 1677-09-21 to 2262-04-11 fit.
    pub fn expiries_out_of_nanosecond_range(
        &self,
    ) -> impl Iterator<Item = &(OffsetDateTime, String)> {
        self.expiry_items.iter().filter(|(t, _)| {
            t.unix_timestamp_nanos() > i128::from(i64::MAX)
                || t.unix_timestamp_nanos() < i128::from(i64::MIN)
        })
    }

    /// The first expiry strictly after `now`, if any.
    pub fn next_expiry_after(&self, now: OffsetDateTime) -> Option<OffsetDateTime> {
        let i = self.expiries.partition_point(|e| *e <= now);
        self.expiries.get(i).copied()
    }
}

/// Re-keys a JSON object by the wiki's spelling of user names.
fn canonical_keys(object: Option<&mut serde_json::Value>, names: UserNames) {
    if let Some(serde_json::Value::Object(map)) = object {
        let renamed: serde_json::Map<String, serde_json::Value> = std::mem::take(map)
            .into_iter()
            .map(|(k, v)| (names.canonical(&k).into_owned(), v))
            .collect();
        *map = renamed;
    }
}

/// Parses `expires` values, remembering every instant seen.
struct ExpiryParser {
    file: PathBuf,
    seen: Vec<(OffsetDateTime, String)>,
}

impl ExpiryParser {
    fn parse(
        &mut self,
        at: &str,
        value: &Option<String>,
        errors: &mut Vec<DataError>,
    ) -> Option<OffsetDateTime> {
        let s = value.as_deref()?;
        match OffsetDateTime::parse(s, &Rfc3339) {
            Ok(t) => {
                self.seen.push((t, at.to_string()));
                Some(t)
            }
            Err(e) => {
                errors.push(DataError {
                    file: self.file.clone(),
                    message: format!("{at}.expires: `{s}` is not an RFC 3339 time ({e})"),
                });
                None
            }
        }
    }
}

fn typed_grant(
    at: &str,
    grant: &GrantFile,
    errors: &mut Vec<DataError>,
    expiries: &mut ExpiryParser,
) -> Option<Grant> {
    let (names, expires) = match grant {
        GrantFile::List(p) => (p, &None),
        GrantFile::Object {
            permissions,
            expires,
        } => (permissions, expires),
    };
    let mut permissions = Vec::with_capacity(names.len());
    let before = errors.len();
    for p in names {
        let message = match Action::parse(p) {
            Some(Action::Admin) => format!("{at}: `admin` can never be granted to guests"),
            Some(a) => {
                permissions.push(a);
                continue;
            }
            None => format!(
                "{at}: unknown permission `{p}` (one of view, edit, comment, attach, delete, export)"
            ),
        };
        errors.push(DataError {
            file: expiries.file.clone(),
            message,
        });
    }
    let expires = expiries.parse(at, expires, errors);
    (errors.len() == before).then_some(Grant {
        permissions,
        expires,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATA: &str = r#"{
      "groups": {"staff": {"guest": false}, "acme-guests": {"guest": true}},
      "users": {"gary": {"groups": ["acme-guests"]}, "mia": {"groups": ["acme-guests", "staff"]}},
      "spaces": {"eng": {"guests": {"groups": {"acme-guests": ["view"]},
                                     "users": {"gina": {"permissions": ["view", "edit"], "expires": "2030-01-01T00:00:00Z"}}}}}
    }"#;

    #[test]
    fn guest_rule_and_union() {
        let d = Directory::parse(Path::new("d.json"), DATA).expect("valid");
        let gary = d.effective_groups("gary", &[]);
        assert!(d.is_guest(&gary));
        let mia = d.effective_groups("mia", &[]);
        assert!(!d.is_guest(&mia), "one regular group makes a user regular");
        let with_token = d.effective_groups("gary", &[Arc::from("staff")]);
        assert!(!d.is_guest(&with_token));
        assert!(!d.is_guest(&[]));
        assert!(d.spaces.contains_key("ENG"));
        assert_eq!(d.expiries.len(), 1);
    }

    #[test]
    fn rejects_admin_unknown_and_regular_group_grants() {
        let bad = r#"{"groups": {"staff": {"guest": false}, "g": {"guest": true}},
          "spaces": {"ENG": {"guests": {"groups": {"staff": ["view"], "g": ["admin", "fly"], "nobody": ["view"]},
                                         "users": {"x": {"permissions": ["view"], "expires": "tomorrow"}}}}}}"#;
        let errs = Directory::parse(Path::new("d.json"), bad).expect_err("invalid");
        let text: Vec<String> = errs.iter().map(|e| e.message.clone()).collect();
        assert!(
            text.iter()
                .any(|m| m.contains("`admin` can never be granted")),
            "{text:?}"
        );
        assert!(
            text.iter().any(|m| m.contains("unknown permission `fly`")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|m| m.contains("`staff` is a regular group")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|m| m.contains("`nobody` is not in `groups`")),
            "{text:?}"
        );
        assert!(
            text.iter().any(|m| m.contains("not an RFC 3339 time")),
            "{text:?}"
        );
        let syntax =
            Directory::parse(Path::new("d.json"), "{\n\"groups\": [}").expect_err("bad json");
        assert!(
            syntax[0].message.contains("line 2"),
            "{}",
            syntax[0].message
        );
    }

    // ---- the facts the policy decides on (input.user.guest, expired, permissions)

    const FACTS_DATA: &str = r#"{
      "groups": {"staff": {"guest": false}, "acme-guests": {"guest": true}, "beta-guests": {"guest": true}},
      "users": {
        "gone": {"groups": ["acme-guests"], "expires": "2001-01-01T00:00:00Z"},
        "tess": {"groups": ["acme-guests"]},
        "vera": {"groups": ["acme-guests"], "expires": "2030-06-01T12:00:00Z"},
        "bob": {"groups": [{"group": "beta-guests", "expires": "2030-06-01T12:00:00Z"}]}
      },
      "spaces": {
        "ENG": {"guests": {"groups": {"acme-guests": ["view", "comment"]}, "users": {"gina": ["view", "edit"]}}},
        "HR": {"guests": {"groups": {"beta-guests": ["view"]}}},
        "OLD": {"guests": {"groups": {"acme-guests": {"permissions": ["view"], "expires": "2001-01-01T00:00:00Z"}}}},
        "TMP": {"guests": {"groups": {"beta-guests": ["view"]},
                           "users": {"tess": {"permissions": ["view", "edit"], "expires": "2030-06-01T12:00:00Z"}}}},
        "GRP": {"guests": {"groups": {"acme-guests": {"permissions": ["view"], "expires": "2030-06-01T12:00:00Z"}}}}
      }
    }"#;

    fn at(instant: &str) -> OffsetDateTime {
        OffsetDateTime::parse(instant, &Rfc3339).expect("instant")
    }

    const JUST_BEFORE: &str = "2030-06-01T11:59:59.999999999Z";
    const AT_EXPIRY: &str = "2030-06-01T12:00:00Z";

    /// The facts for `user` (with `token` groups) on `space` at `instant`.
    fn facts(user: &str, token: &[&str], space: Option<&str>, instant: &str) -> CallerFacts {
        let d = Directory::parse(Path::new("d.json"), FACTS_DATA).expect("valid");
        let token: Vec<Arc<str>> = token.iter().map(|g| Arc::from(*g)).collect();
        let groups = d.effective_groups(user, &token);
        d.facts(Some(user), &groups, space, at(instant))
    }

    fn permissions(f: &CallerFacts) -> Vec<&'static str> {
        f.permissions.iter().map(|p| p.as_str()).collect()
    }

    const NOW: &str = "2026-12-01T00:00:00Z";

    #[test]
    fn facts_follow_the_guest_rule() {
        let gary = facts("gary", &["acme-guests"], None, NOW);
        assert!(gary.guest && !gary.regular);
        let mia = facts("mia", &["acme-guests", "staff"], None, NOW);
        assert!(
            mia.regular && !mia.guest,
            "one regular group makes a user regular"
        );
        let x = facts("x", &["acme-guests", "not-in-directory", ""], None, NOW);
        assert!(
            x.guest && !x.regular,
            "undeclared and empty groups are ignored, never regular"
        );
        for (user, token) in [
            ("nobody", &[][..]),
            ("nobody", &["offline_access"][..]),
            ("nobody", &[""][..]),
        ] {
            let f = facts(user, token, Some("ENG"), NOW);
            assert!(
                !f.guest && !f.regular,
                "{user} {token:?}: no declared group places nobody"
            );
        }
    }

    #[test]
    fn unknown_users_can_be_judged_as_guests() {
        let d = Directory::parse_with(
            Path::new("d.json"),
            FACTS_DATA,
            UserNames::Exact,
            UnknownUsers::Guest,
        )
        .expect("valid");
        let groups = d.effective_groups("nobody", &[Arc::from("offline_access")]);
        assert!(groups.is_empty());
        let f = d.facts(Some("nobody"), &groups, Some("ENG"), at(NOW));
        assert!(f.guest && !f.regular && f.permissions.is_empty());
    }

    #[test]
    fn names_match_as_the_wiki_matches_them() {
        let d = Directory::parse_with(
            Path::new("d.json"),
            FACTS_DATA,
            UserNames::CaseInsensitive,
            UnknownUsers::Deny,
        )
        .expect("valid");
        assert!(d.users.contains_key("tess"));
        let cased = FACTS_DATA.replace("\"tess\"", "\"Tess\"");
        let d = Directory::parse_with(
            Path::new("d.json"),
            &cased,
            UserNames::CaseInsensitive,
            UnknownUsers::Deny,
        )
        .expect("valid");
        assert_eq!(
            d.effective_groups("tess", &[]).len(),
            1,
            "the directory's Tess is the wiki's tess"
        );
        let twice = r#"{"groups": {"g": {"guest": true}},
            "users": {"Gary": {"groups": ["g"]}, "gary": {"groups": ["g"]}}}"#;
        let errs = Directory::parse_with(
            Path::new("d.json"),
            twice,
            UserNames::CaseInsensitive,
            UnknownUsers::Deny,
        )
        .expect_err("one user twice");
        assert!(errs[0].message.contains("same user"), "{errs:?}");
    }

    #[test]
    fn facts_hold_the_grants_of_the_users_own_groups_and_their_own() {
        let gary = facts("gary", &["acme-guests"], Some("ENG"), NOW);
        assert_eq!(permissions(&gary), ["view", "comment"]);
        let gina = facts("gina", &["acme-guests"], Some("ENG"), NOW);
        assert_eq!(
            permissions(&gina),
            ["view", "edit", "comment"],
            "a user grant adds to the group's"
        );
        assert!(
            facts("gina", &["acme-guests"], Some("HR"), NOW)
                .permissions
                .is_empty(),
            "grants of other guest groups never count"
        );
        assert_eq!(
            permissions(&facts("gary", &["acme-guests"], Some("eng"), NOW)),
            ["view", "comment"],
            "space keys compare case-insensitively"
        );
        assert!(
            facts("gary", &["acme-guests"], None, NOW)
                .permissions
                .is_empty()
        );
        assert!(
            facts("gary", &["acme-guests"], Some("NOPE"), NOW)
                .permissions
                .is_empty()
        );
    }

    #[test]
    fn facts_drop_expired_grants_and_users() {
        assert!(
            facts("gary", &["acme-guests"], Some("OLD"), NOW)
                .permissions
                .is_empty()
        );
        let gone = facts("gone", &[], Some("ENG"), NOW);
        assert!(gone.guest && gone.expired);
        assert!(
            gone.permissions.is_empty(),
            "nothing is granted once expired"
        );
    }

    /// The instant an expiry names is the first one at which it no longer counts.
    #[test]
    fn facts_at_the_expiry_boundary() {
        let tess = |instant| facts("tess", &[], Some("TMP"), instant);
        assert_eq!(permissions(&tess(JUST_BEFORE)), ["view", "edit"]);
        assert!(tess(AT_EXPIRY).permissions.is_empty(), "user grant expired");

        let group = |instant| facts("tess", &[], Some("GRP"), instant);
        assert_eq!(permissions(&group(JUST_BEFORE)), ["view"]);
        assert!(
            group(AT_EXPIRY).permissions.is_empty(),
            "group grant expired"
        );

        let vera = |instant| facts("vera", &[], Some("ENG"), instant);
        assert!(!vera(JUST_BEFORE).expired);
        assert_eq!(permissions(&vera(JUST_BEFORE)), ["view", "comment"]);
        assert!(vera(AT_EXPIRY).expired);
        assert!(vera(AT_EXPIRY).permissions.is_empty());

        let bob = |instant| facts("bob", &[], Some("TMP"), instant);
        assert_eq!(permissions(&bob(JUST_BEFORE)), ["view"]);
        assert!(bob(AT_EXPIRY).permissions.is_empty(), "membership lapsed");
    }

    #[test]
    fn a_lapsed_membership_keeps_a_guest_and_the_token_does_not_revive_it() {
        let later = "2031-01-01T00:00:00Z";
        let bob = facts("bob", &[], Some("TMP"), later);
        assert!(bob.guest, "a lapsed guest never becomes a regular user");
        assert!(bob.permissions.is_empty());
        let with_token = facts("bob", &["beta-guests"], Some("TMP"), AT_EXPIRY);
        assert!(with_token.permissions.is_empty());
        assert!(with_token.guest);
    }
}
