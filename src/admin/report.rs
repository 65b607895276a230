//! The guest report of `GET /guests`: guest groups and the users with guest grants or only
//! guest groups, with what each reaches, as JSON (the "Guest access" page renders it).

use std::collections::{BTreeMap, BTreeSet};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::directory::{Directory, Grant};

/// Where a guest can go now: their own grants and those of the groups they are (still) a
/// member of, one entry per space.
fn effective(
    d: &Directory,
    name: &str,
    user: Option<&crate::directory::User>,
) -> serde_json::Value {
    let now = OffsetDateTime::now_utc();
    let groups: Vec<std::sync::Arc<str>> = user
        .map(|u| {
            u.groups
                .iter()
                .filter(|g| u.membership_expires.get(&***g).is_none_or(|end| now < *end))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    d.reach(name, &groups, now)
        .into_iter()
        .map(|r| {
            serde_json::json!({
                "space": r.space,
                "permissions": r.permissions.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
                "expires": r.expires.and_then(|t| t.format(&Rfc3339).ok()),
            })
        })
        .collect()
}

/// Guest groups and the users with guest grants or only guest groups, with what each
/// reaches, for `/guests`.
pub fn guests(directory: &Directory) -> serde_json::Value {
    let d = directory;
    let fmt = |t: &Option<OffsetDateTime>| t.and_then(|t| t.format(&Rfc3339).ok());
    let grant_json = |space: &str, g: &Grant| {
        serde_json::json!({
            "space": space,
            "permissions": g.permissions.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
            "expires": fmt(&g.expires),
        })
    };
    let mut groups = serde_json::Map::new();
    for (name, entry) in &d.groups {
        if !entry.guest {
            continue;
        }
        let reach: Vec<_> = d
            .spaces
            .iter()
            .filter_map(|(k, s)| s.groups.get(name).map(|g| grant_json(k, g)))
            .collect();
        let mut members: Vec<&str> = d
            .users
            .iter()
            .filter(|(_, u)| u.groups.iter().any(|g| **g == **name))
            .map(|(n, _)| n.as_str())
            .collect();
        members.sort_unstable();
        groups.insert(
            name.clone(),
            serde_json::json!({ "members": members, "spaces": reach }),
        );
    }
    let mut guest_names: BTreeSet<&str> = d
        .users
        .iter()
        .filter(|(_, u)| d.is_guest(&u.groups))
        .map(|(n, _)| n.as_str())
        .collect();
    for s in d.spaces.values() {
        guest_names.extend(s.users.keys().map(String::as_str));
    }
    let mut users = serde_json::Map::new();
    for name in guest_names {
        let user = d.users.get(name);
        let groups_of: Vec<&str> = user
            .map(|u| u.groups.iter().map(|g| &**g).collect())
            .unwrap_or_default();
        let reach: Vec<_> = d
            .spaces
            .iter()
            .filter_map(|(k, s)| s.users.get(name).map(|g| grant_json(k, g)))
            .collect();
        let memberships: Vec<_> = groups_of
            .iter()
            .map(|g| {
                serde_json::json!({
                    "group": g,
                    "expires": user.and_then(|u| fmt(&u.membership_expires.get(*g).copied())),
                })
            })
            .collect();
        users.insert(
            name.to_string(),
            serde_json::json!({
                "display_name": user.and_then(|u| u.display_name.clone()),
                "email": user.and_then(|u| u.email.clone()),
                "groups": groups_of,
                "memberships": memberships,
                "expires": user.and_then(|u| fmt(&u.expires)),
                // The guest's own grants (not those of their groups); `spaces` is the
                // same list under its first name, kept for existing readers.
                "own_grants": reach.clone(),
                "spaces": reach,
                "effective_spaces": effective(d, name, user),
            }),
        );
    }
    let spaces: serde_json::Map<String, serde_json::Value> = d
        .shared_spaces()
        .map(|(k, s)| {
            let side = |m: &BTreeMap<String, Grant>| -> serde_json::Map<String, serde_json::Value> {
                m.iter()
                    .map(|(n, g)| {
                        (
                            n.clone(),
                            serde_json::json!({
                                "permissions": g.permissions.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
                                "expires": fmt(&g.expires),
                            }),
                        )
                    })
                    .collect()
            };
            (
                k.clone(),
                serde_json::json!({"name": s.name, "groups": side(&s.groups), "users": side(&s.users)}),
            )
        })
        .collect();
    serde_json::json!({"guest_groups": groups, "guests": users, "spaces": spaces})
}
