//! MediaWiki. Core has no per-namespace read permission: what a guest account can do beyond
//! the gateway's judgement comes from its user groups (site-wide rights) and from
//! transclusion, which `examples/mediawiki/GuestgateHardening.php` stops. Shapes relied on
//! (MediaWiki 1.39 action API, `formatversion=2`; checked against the real wiki in
//! `tests/it/mediawiki.rs`):
//! - `meta=userinfo`: `{"query": {"userinfo": {"id", "name", "anon": true?}}}`
//!   (`ApiQueryUserInfo`);
//! - `list=users&ususers=A|B&usprop=groups|implicitgroups|rights`: `{"query": {"users":
//!   [{"name", "groups", "implicitgroups", "rights"} | {"name", "missing": true}]}}`
//!   (`ApiQueryUsers`);
//! - `meta=siteinfo&siprop=namespaces|extensions`: namespaces by id with `name`,
//!   `canonical` and `nonincludable: true` for those in `$wgNonincludableNamespaces`;
//!   extensions with their `name` (`ApiQuerySiteinfo`);
//! - `meta=tokens&type=userrights`, then `action=userrights` (POST `user`, `remove`,
//!   `token`): `{"userrights": {"user", "removed": [..]}}` or `{"error": {"code", "info"}}`
//!   (`ApiUserrights`).

use std::collections::BTreeSet;

use bytes::Bytes;
use http::Method;
use serde_json::Value;

use super::wiki::{WikiClient, encode, json_of};
use super::{AuditError, Change, Expected, Finding, Fix};
use crate::routes::Action;

/// Groups every account is in by itself.
const IMPLICIT_GROUPS: [&str; 3] = ["*", "user", "autoconfirmed"];

/// Site-wide rights a guest account must not hold: each reaches past the namespaces the
/// gateway judges (the site's interface and scripts, other users, deleted or suppressed
/// revisions, imports) or acts on pages in bulk. `delete` is allowed to a guest with a
/// `delete` grant somewhere.
const SITE_RIGHTS: [&str; 24] = [
    "userrights",
    "editinterface",
    "editsitecss",
    "editsitejs",
    "editsitejson",
    "editusercss",
    "edituserjs",
    "edituserjson",
    "import",
    "importupload",
    "block",
    "undelete",
    "deletedhistory",
    "deletedtext",
    "browsearchive",
    "suppressrevision",
    "viewsuppressed",
    "siteadmin",
    "protect",
    "editprotected",
    "bigdelete",
    "deleterevision",
    "mergehistory",
    "delete",
];

/// The hardening's name in `siprop=extensions` (GuestgateHardening.php registers it).
const HARDENING: &str = "GuestgateHardening";

async fn api(client: &WikiClient, what: &str, query: &str) -> Result<Value, AuditError> {
    let json = client
        .get_json(
            what,
            &format!("/api.php?{query}&format=json&formatversion=2"),
        )
        .await?;
    api_error(what, &json)?;
    Ok(json)
}

fn api_error(what: &str, json: &Value) -> Result<(), AuditError> {
    if let Some(error) = json.get("error") {
        let info = error
            .get("info")
            .and_then(Value::as_str)
            .unwrap_or("no reason given");
        let code = error.get("code").and_then(Value::as_str).unwrap_or("");
        return Err(AuditError::Refused {
            what: what.to_string(),
            why: format!("{code}: {info}"),
        });
    }
    Ok(())
}

fn strings(v: Option<&Value>) -> BTreeSet<String> {
    v.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}

pub async fn audit(
    client: &WikiClient,
    expected: &Expected,
) -> Result<(Vec<Finding>, Vec<String>), AuditError> {
    let me = api(
        client,
        "the service account (meta=userinfo)",
        "action=query&meta=userinfo",
    )
    .await?;
    if me.pointer("/query/userinfo/anon").and_then(Value::as_bool) == Some(true) {
        return Err(AuditError::Credentials(
            "MediaWiki answers as to an anonymous user; set audit.service_user (with upstream.user_header) or upstream.service_authorization_env to an account that may read user groups (and, for --apply, change them)".into(),
        ));
    }
    let mut findings = Vec::new();

    // Guest accounts' groups and rights.
    let names: Vec<&String> = expected.guest_users.keys().collect();
    for chunk in names.chunks(50) {
        let list = chunk
            .iter()
            .map(|n| n.as_str())
            .collect::<Vec<_>>()
            .join("|");
        let json = api(
            client,
            "the guest accounts (list=users)",
            &format!(
                "action=query&list=users&usprop=groups%7Cimplicitgroups%7Crights&ususers={}",
                encode(&list)
            ),
        )
        .await?;
        for user in json
            .pointer("/query/users")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(name) = user.get("name").and_then(Value::as_str) else {
                continue;
            };
            if user.get("missing").is_some() || user.get("invalid").is_some() {
                findings.push(Finding {
                    excess: false,
                    what: format!("guest user {name} has no account on the wiki"),
                    fix: Fix::Manual(format!(
                        "create {name}'s account (or let the header login create it on first use)"
                    )),
                });
                continue;
            }
            let groups = strings(user.get("groups"));
            // Groups the wiki puts every account in, or promotes it to by itself
            // ($wgAutopromote: `autoconfirmed`, `emailconfirmed`, …), are no one's choice.
            let implicit = strings(user.get("implicitgroups"));
            let mut from_groups = false;
            for group in &groups {
                if IMPLICIT_GROUPS.contains(&group.as_str())
                    || implicit.contains(group)
                    || expected.guest_group(group).is_some()
                {
                    continue;
                }
                from_groups = true;
                findings.push(Finding {
                    excess: true,
                    what: format!(
                        "guest user {name} is in the wiki group {group}, whose site-wide rights reach past the namespaces granted"
                    ),
                    fix: Fix::Change(Change::LeaveGroup {
                        user: name.to_string(),
                        group: group.clone(),
                    }),
                });
            }
            if from_groups {
                continue;
            }
            // Rights every account holds ($wgGroupPermissions['user'] or ['*']).
            let deletes = expected
                .grants
                .values()
                .flat_map(|s| s.iter())
                .any(|(_, a)| a.contains(&Action::Delete));
            let rights = strings(user.get("rights"));
            let site: Vec<&str> = SITE_RIGHTS
                .iter()
                .copied()
                .filter(|r| rights.contains(*r) && !(deletes && *r == "delete"))
                .collect();
            if !site.is_empty() {
                findings.push(Finding {
                    excess: true,
                    what: format!(
                        "guest user {name} holds the site-wide rights {} through the groups every account is in",
                        site.join(", ")
                    ),
                    fix: Fix::Manual(
                        "remove them from $wgGroupPermissions['user'] and ['*'] in LocalSettings.php (give them to a group regular users are in)".into(),
                    ),
                });
            }
        }
    }

    // The hardening: every space namespace (and its talk namespace) non-includable.
    let site = api(
        client,
        "the namespaces (meta=siteinfo)",
        "action=query&meta=siteinfo&siprop=namespaces%7Cextensions",
    )
    .await?;
    let extensions: BTreeSet<String> = site
        .pointer("/query/extensions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| e.get("name").and_then(Value::as_str).map(str::to_string))
        .collect();
    if !extensions.contains(HARDENING) {
        findings.push(Finding {
            excess: true,
            what: format!(
                "{HARDENING} is not loaded: a granted page can transclude any namespace's pages and special pages, and redirects lead guests out of their namespaces"
            ),
            fix: Fix::Manual(
                "require examples/mediawiki/GuestgateHardening.php in LocalSettings.php and call GuestgateHardening::apply with the space namespaces (docs/WIKI-PERMISSIONS.md)".into(),
            ),
        });
    }
    let namespaces: Vec<&Value> = site
        .pointer("/query/namespaces")
        .and_then(Value::as_object)
        .map(|m| m.values().collect())
        .unwrap_or_default();
    let id_of = |key: &str| {
        namespaces.iter().find_map(|ns| {
            let named = |field: &str| {
                ns.get(field)
                    .and_then(Value::as_str)
                    .is_some_and(|n| n.eq_ignore_ascii_case(key))
            };
            (named("canonical") || named("name"))
                .then(|| ns.get("id").and_then(Value::as_i64))
                .flatten()
        })
    };
    let includable = |id: i64| {
        namespaces.iter().any(|ns| {
            ns.get("id").and_then(Value::as_i64) == Some(id)
                && ns.get("nonincludable").and_then(Value::as_bool) != Some(true)
        })
    };
    let mut leaky = Vec::new();
    for (space, granted) in &expected.grants {
        if granted.is_empty() {
            continue;
        }
        match id_of(space) {
            None => findings.push(Finding {
                excess: false,
                what: format!(
                    "space {space} is granted to guests but the wiki has no namespace {space}"
                ),
                fix: Fix::Manual(
                    "define the namespace in LocalSettings.php, or correct the key".into(),
                ),
            }),
            Some(id) => {
                if includable(id) || includable(id + 1) {
                    leaky.push(space.clone());
                }
            }
        }
    }
    // Namespaces of other spaces the wiki knows: a granted page could transclude them.
    for ns in &namespaces {
        let id = ns.get("id").and_then(Value::as_i64).unwrap_or(-1);
        let name = ns.get("canonical").and_then(Value::as_str).unwrap_or("");
        let is_space = id >= 100 && id % 2 == 0 && !name.is_empty();
        if is_space
            && !expected.grants.contains_key(&name.to_uppercase())
            && (includable(id) || includable(id + 1))
        {
            leaky.push(name.to_uppercase());
        }
    }
    leaky.sort();
    leaky.dedup();
    if !leaky.is_empty() {
        findings.push(Finding {
            excess: true,
            what: format!(
                "the namespaces of {} can be transcluded into a granted page (not in $wgNonincludableNamespaces)",
                leaky.join(", ")
            ),
            fix: Fix::Manual(
                "pass those namespaces to GuestgateHardening::apply in LocalSettings.php".into(),
            ),
        });
    }
    Ok((findings, Vec::new()))
}

pub async fn apply(client: &WikiClient, change: &Change) -> Result<(), AuditError> {
    let Change::LeaveGroup { user, group } = change else {
        return Err(AuditError::Setup(format!(
            "MediaWiki has no per-namespace permissions to change: {change}"
        )));
    };
    let tokens = api(
        client,
        "a user-rights token (meta=tokens)",
        "action=query&meta=tokens&type=userrights",
    )
    .await?;
    let token = tokens
        .pointer("/query/tokens/userrightstoken")
        .and_then(Value::as_str)
        .ok_or_else(|| AuditError::Unexpected {
            what: "meta=tokens".into(),
            why: "no userrightstoken".into(),
        })?;
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("action", "userrights")
        .append_pair("user", user)
        .append_pair("remove", group)
        .append_pair("reason", "guestgate audit --apply")
        .append_pair("token", token)
        .append_pair("format", "json")
        .append_pair("formatversion", "2")
        .finish();
    let what = format!("action=userrights ({change})");
    let fetched = client
        .send(
            Method::POST,
            "/api.php",
            Some("application/x-www-form-urlencoded"),
            Bytes::from(body),
        )
        .await?;
    let json = json_of(&what, fetched)?;
    api_error(&what, &json)?;
    let removed = strings(json.pointer("/userrights/removed"));
    if !removed.contains(group) {
        return Err(AuditError::Unexpected {
            what,
            why: format!("the wiki did not say it removed {group}: {json}"),
        });
    }
    Ok(())
}
