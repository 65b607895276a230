//! Guest access as a set of facts at one instant — which guest or guest group holds which
//! permissions in which space, who is a guest, who belongs to which guest group — and the
//! events that turn one set into another. Change notifications and the write API's answers
//! are both diffs of two such sets: between two revisions, or between two instants of one
//! revision when something expires.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::directory::{Directory, Grant};

/// One fact about guest access.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fact {
    /// A space grant to a guest group or a single user.
    Grant { space: String, grantee: Grantee },
    /// A guest in a guest group (and so in every space granted to the group).
    Membership { user: String, group: String },
    /// A directory user who is a guest.
    Guest { user: String },
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Grantee {
    Group(String),
    User(String),
}

impl Grantee {
    fn json(&self) -> Value {
        match self {
            Grantee::Group(g) => json!({"type": "group", "name": g}),
            Grantee::User(u) => json!({"type": "user", "name": u}),
        }
    }

    fn describe(&self) -> String {
        match self {
            Grantee::Group(g) => format!("guest group {g}"),
            Grantee::User(u) => format!("guest {u}"),
        }
    }
}

/// What a fact carries: permissions (grants only) and when it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terms {
    pub permissions: BTreeSet<&'static str>,
    pub expires: Option<OffsetDateTime>,
}

pub type AccessTable = BTreeMap<Fact, Terms>;

fn terms(grant: &Grant) -> Terms {
    Terms {
        permissions: grant.permissions.iter().map(|p| p.as_str()).collect(),
        expires: grant.expires,
    }
}

fn earliest(a: Option<OffsetDateTime>, b: Option<OffsetDateTime>) -> Option<OffsetDateTime> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The facts that hold at `now`: expired grants, memberships and guests are left out.
pub fn table(directory: &Directory, now: OffsetDateTime) -> AccessTable {
    let live = |t: &Option<OffsetDateTime>| t.is_none_or(|t| now < t);
    let mut facts = AccessTable::new();
    for (space, grants) in &directory.spaces {
        for (group, grant) in &grants.groups {
            if grant.active_at(now) {
                facts.insert(
                    Fact::Grant {
                        space: space.clone(),
                        grantee: Grantee::Group(group.clone()),
                    },
                    terms(grant),
                );
            }
        }
        for (user, grant) in &grants.users {
            // A guest whose own access has ended keeps none of their grants.
            let user_expires = directory.users.get(user).and_then(|u| u.expires);
            if grant.active_at(now) && live(&user_expires) {
                let mut t = terms(grant);
                t.expires = earliest(t.expires, user_expires);
                facts.insert(
                    Fact::Grant {
                        space: space.clone(),
                        grantee: Grantee::User(user.clone()),
                    },
                    t,
                );
            }
        }
    }
    for (name, user) in &directory.users {
        if !directory.is_guest(&user.groups) || !live(&user.expires) {
            continue;
        }
        facts.insert(
            Fact::Guest { user: name.clone() },
            Terms {
                permissions: BTreeSet::new(),
                expires: user.expires,
            },
        );
        for group in &user.groups {
            let expires = earliest(user.membership_expires.get(&**group).copied(), user.expires);
            if live(&expires) {
                facts.insert(
                    Fact::Membership {
                        user: name.clone(),
                        group: group.to_string(),
                    },
                    Terms {
                        permissions: BTreeSet::new(),
                        expires,
                    },
                );
            }
        }
    }
    facts
}

/// Why the access table changed: a new revision, or time passing within one.
#[derive(Debug, Clone, Copy)]
pub struct Change<'a> {
    pub revision: &'a str,
    pub previous_revision: &'a str,
    pub now: OffsetDateTime,
}

fn rfc3339(t: Option<OffsetDateTime>) -> Value {
    t.and_then(|t| t.format(&Rfc3339).ok())
        .map(Value::from)
        .unwrap_or(Value::Null)
}

fn list(p: &BTreeSet<&'static str>) -> Value {
    Value::from(p.iter().map(|s| Value::from(*s)).collect::<Vec<_>>())
}

/// Every guest-access change from `before` to `after`, as notification events (JSON objects,
/// documented in docs/OPERATIONS.md), in a stable order.
pub fn diff(
    before: &AccessTable,
    after: &AccessTable,
    directory: &Directory,
    change: Change<'_>,
) -> Vec<Value> {
    let mut events = Vec::new();
    let space_name = |space: &str| {
        directory
            .spaces
            .get(space)
            .and_then(|s| s.name.clone())
            .map(Value::from)
            .unwrap_or(Value::Null)
    };
    let spaces_of_group = |group: &str| -> Value {
        directory
            .spaces
            .iter()
            .filter(|(_, s)| s.groups.get(group).is_some_and(|g| g.active_at(change.now)))
            .map(|(k, _)| Value::from(k.as_str()))
            .collect::<Vec<_>>()
            .into()
    };
    let keys: BTreeSet<&Fact> = before.keys().chain(after.keys()).collect();
    for fact in keys {
        let (old, new) = (before.get(fact), after.get(fact));
        // (event suffix, words for `text`)
        let ended = |t: &Terms, removed: &'static str| {
            if t.expires.is_some_and(|e| e <= change.now) {
                ("expired", "expired")
            } else if removed == "removed" {
                ("removed", "was removed")
            } else {
                ("revoked", "was revoked")
            }
        };
        let mut event = match (fact, old, new) {
            (Fact::Grant { space, grantee }, None, Some(n)) => json!({
                "event": "access_granted",
                "space": space, "space_name": space_name(space), "principal": grantee.json(),
                "permissions": list(&n.permissions), "expires": rfc3339(n.expires),
                "text": format!("{} can now {} in space {space}", grantee.describe(),
                    n.permissions.iter().copied().collect::<Vec<_>>().join(", ")),
            }),
            (Fact::Grant { space, grantee }, Some(o), None) => {
                let (how, words) = ended(o, "revoked");
                json!({
                    "event": format!("access_{how}"),
                    "space": space, "space_name": space_name(space), "principal": grantee.json(),
                    "previous_permissions": list(&o.permissions), "expires": rfc3339(o.expires),
                    "text": format!("{}'s access to space {space} {words}", grantee.describe()),
                })
            }
            (Fact::Grant { space, grantee }, Some(o), Some(n)) if o != n => {
                let kind = if o.permissions == n.permissions {
                    "expiry_changed"
                } else if n.permissions.is_superset(&o.permissions) {
                    "permissions_widened"
                } else if n.permissions.is_subset(&o.permissions) {
                    "permissions_narrowed"
                } else {
                    "permissions_changed"
                };
                json!({
                    "event": kind,
                    "space": space, "space_name": space_name(space), "principal": grantee.json(),
                    "permissions": list(&n.permissions), "previous_permissions": list(&o.permissions),
                    "expires": rfc3339(n.expires), "previous_expires": rfc3339(o.expires),
                    "text": format!("{} now holds {} in space {space} ({})", grantee.describe(),
                        n.permissions.iter().copied().collect::<Vec<_>>().join(", "), kind.replace('_', " ")),
                })
            }
            (Fact::Membership { user, group }, None, Some(n)) => json!({
                "event": "guest_joined_group",
                "user": user, "group": group, "spaces": spaces_of_group(group),
                "expires": rfc3339(n.expires),
                "text": format!("guest {user} joined guest group {group}"),
            }),
            (Fact::Membership { user, group }, Some(o), None) => {
                let (how, words) = ended(o, "revoked");
                json!({
                    "event": format!("membership_{how}"),
                    "user": user, "group": group, "expires": rfc3339(o.expires),
                    "text": format!("guest {user}'s membership of {group} {words}"),
                })
            }
            (Fact::Membership { user, group }, Some(o), Some(n)) if o != n => json!({
                "event": "expiry_changed",
                "user": user, "group": group,
                "expires": rfc3339(n.expires), "previous_expires": rfc3339(o.expires),
                "text": format!("guest {user}'s membership of {group} now ends {}",
                    rfc3339(n.expires).as_str().unwrap_or("never")),
            }),
            (Fact::Guest { user }, None, Some(n)) => json!({
                "event": "guest_added",
                "user": user, "expires": rfc3339(n.expires),
                "groups": directory.users.get(user).map(|u| u.groups.iter().map(|g| g.to_string()).collect::<Vec<_>>()),
                "text": format!("guest {user} was added"),
            }),
            (Fact::Guest { user }, Some(o), None) => {
                let (how, words) = ended(o, "removed");
                json!({
                    "event": format!("guest_{how}"),
                    "user": user, "expires": rfc3339(o.expires),
                    "text": format!("guest {user} {words}"),
                })
            }
            (Fact::Guest { user }, Some(o), Some(n)) if o != n => json!({
                "event": "expiry_changed",
                "user": user,
                "expires": rfc3339(n.expires), "previous_expires": rfc3339(o.expires),
                "text": format!("guest {user}'s access now ends {}",
                    rfc3339(n.expires).as_str().unwrap_or("never")),
            }),
            _ => continue,
        };
        // The same change seen by several replicas gets the same id, so a receiver can
        // drop duplicates.
        let basis = format!(
            "{}|{fact:?}|{}|{event}",
            change.revision, change.previous_revision
        );
        let id: String = crate::identity::sha256(basis.as_bytes())[..12]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if let Value::Object(map) = &mut event {
            map.retain(|_, v| !v.is_null());
            map.insert("id".into(), id.into());
            map.insert("timestamp".into(), rfc3339(Some(change.now)));
            map.insert("revision".into(), change.revision.into());
            if change.previous_revision != change.revision {
                map.insert("previous_revision".into(), change.previous_revision.into());
            }
        }
        events.push(event);
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn dir(text: &str) -> Directory {
        Directory::parse(Path::new("d.json"), text).expect("valid")
    }

    fn at(s: &str) -> OffsetDateTime {
        OffsetDateTime::parse(s, &Rfc3339).expect("time")
    }

    const BASE: &str = r#"{"groups": {"g": {"guest": true}, "staff": {"guest": false}},
        "users": {"gary": {"groups": ["g"]}, "alice": {"groups": ["staff"]}},
        "spaces": {"ENG": {"guests": {"groups": {"g": ["view"]}}}}}"#;

    fn kinds(events: &[Value]) -> Vec<String> {
        events
            .iter()
            .map(|e| {
                format!(
                    "{} {}",
                    e["event"].as_str().unwrap_or(""),
                    e["text"].as_str().unwrap_or("")
                )
            })
            .collect()
    }

    #[test]
    fn revision_changes_become_events() {
        let now = at("2026-01-01T00:00:00Z");
        let a = dir(BASE);
        let b = dir(
            r#"{"groups": {"g": {"guest": true}, "staff": {"guest": false}},
            "users": {"gary": {"groups": ["g"]}, "alice": {"groups": ["staff"]}, "gwen": {"groups": ["g"]}},
            "spaces": {"ENG": {"guests": {"groups": {"g": ["view", "comment"]}}},
                       "HR": {"guests": {"users": {"gary": {"permissions": ["view"], "expires": "2027-01-01T00:00:00Z"}}}}}}"#,
        );
        let change = Change {
            revision: "b",
            previous_revision: "a",
            now,
        };
        let events = diff(&table(&a, now), &table(&b, now), &b, change);
        let k = kinds(&events);
        assert_eq!(
            k,
            vec![
                "permissions_widened guest group g now holds comment, view in space ENG (permissions widened)",
                "access_granted guest gary can now view in space HR",
                "guest_joined_group guest gwen joined guest group g",
                "guest_added guest gwen was added",
            ],
            "{events:#?}"
        );
        assert_eq!(events[1]["expires"], "2027-01-01T00:00:00Z");
        assert_eq!(events[0]["previous_permissions"], json!(["view"]));
        assert_eq!(events[2]["spaces"], json!(["ENG"]));
        // Reverting is a revocation and a narrowing, and the regular user never appears.
        let back = diff(&table(&b, now), &table(&a, now), &a, change);
        assert_eq!(
            kinds(&back),
            vec![
                "permissions_narrowed guest group g now holds view in space ENG (permissions narrowed)",
                "access_revoked guest gary's access to space HR was revoked",
                "membership_revoked guest gwen's membership of g was revoked",
                "guest_removed guest gwen was removed",
            ]
        );
        assert!(diff(&table(&a, now), &table(&a, now), &a, change).is_empty());
    }

    #[test]
    fn time_passing_expires_grants_memberships_and_guests() {
        let d = dir(r#"{"groups": {"g": {"guest": true}, "h": {"guest": true}},
            "users": {"gary": {"groups": ["g", {"group": "h", "expires": "2026-03-01T00:00:00Z"}]},
                      "vera": {"groups": ["g"], "expires": "2026-02-01T00:00:00Z"}},
            "spaces": {"ENG": {"guests": {"groups": {"g": {"permissions": ["view"], "expires": "2026-04-01T00:00:00Z"}},
                                           "users": {"vera": ["view", "edit"]}}}}}"#);
        let same = |now| Change {
            revision: "r",
            previous_revision: "r",
            now,
        };
        let jan = table(&d, at("2026-01-01T00:00:00Z"));
        let feb = at("2026-02-01T00:00:00Z");
        let k = kinds(&diff(&jan, &table(&d, feb), &d, same(feb)));
        assert_eq!(
            k,
            vec![
                "access_expired guest vera's access to space ENG expired",
                "membership_expired guest vera's membership of g expired",
                "guest_expired guest vera expired",
            ]
        );
        let mar = at("2026-03-01T00:00:00Z");
        let k = kinds(&diff(&table(&d, feb), &table(&d, mar), &d, same(mar)));
        assert_eq!(
            k,
            vec!["membership_expired guest gary's membership of h expired"]
        );
        let apr = at("2026-04-01T00:00:00Z");
        let events = diff(&table(&d, mar), &table(&d, apr), &d, same(apr));
        assert_eq!(
            kinds(&events),
            vec!["access_expired guest group g's access to space ENG expired"]
        );
        assert!(events[0].get("previous_revision").is_none());
        assert_eq!(events[0]["id"].as_str().map(str::len), Some(24));
    }
}
