//! Confluence Server / Data Center. Sources of the shapes relied on (Confluence 8.7.2 as
//! decompiled in GitHub `ngannk-fptu/Decompiled-Files`; Atlassian's REST documentation):
//! - `GET /rest/api/user/current`: `{"type": "known" | "anonymous", "username", …}`
//!   (`UserResource.getCurrent`). A wrong or expired personal access token is not refused
//!   but makes the caller anonymous (CONFSERVER-98199), hence the check first.
//! - `GET /rest/api/space?start=&limit=`: `{"results": [{"key", …}], "size", "limit",
//!   "_links": {"next"}}` (`SpaceResource.spaces`, `PageResponseSerializer`); `next` may
//!   outlive the end (CONFSERVER-95396), so paging also stops on a short page.
//! - `GET /rest/api/group/{group}/member` and `GET /rest/api/user/memberof?username=`:
//!   `{"results": [{"username"} | {"name"}], "size", "limit"}` (`GroupResource`,
//!   `UserResource.getGroups`).
//! - JSON-RPC `POST /rpc/json-rpc/confluenceservice-v2/<method>` with the parameters as a
//!   JSON array (the remote API's "light" mode, Atlassian's "Confluence JSON-RPC APIs"):
//!   `getSpacePermissionSets [key]` → `[{"type", "spacePermissions": [{"type", "userName",
//!   "groupName"}]}]` (`RemoteSpacePermissionSet`, `RemoteContentPermission`; both names
//!   null: anonymous or every signed-in user); `addPermissionsToSpace [[types], name, key]`
//!   and `removePermissionFromSpace [type, name, key]` → `true`. Errors are HTTP 200 with
//!   `{"error": {"code", "message"}}` (`JsonRpcHandler`, `DefaultErrorMapper`).
//! - `GET /rest/api/permissions/group/{group}` (Data Center 9.1+ only; 404 before):
//!   `[{"operation": {"targetType", "operationKey"}}]`, global permissions.
//! - Data Center 9.1+ also reads and changes space permissions by REST (Atlassian's "Space
//!   Permissions" REST group, v910 and later): `GET /rest/api/space/{key}/permissions/
//!   group/{group}`, `…/user/{userKey}` and `…/anonymous` → `[{"operation": {"targetType",
//!   "operationKey"}, "subject", "spaceKey"}]`; `PUT …/group/{group}/grant|revoke` (and
//!   `…/user/{userKey}/…`) with `[{"targetType", "operationKey"}]`. The audit uses them
//!   where they exist (the JSON-RPC remote API is deprecated, and gone with XML-RPC and SOAP
//!   on 9.x installs that removed it) and names the permissions as the remote API does;
//!   the pairs map to those names as Atlassian's permission table lists them side by side.
//!   A user's key comes from `GET /rest/api/user?username=` (`userKey`).

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use http::Method;
use serde_json::{Value, json};

use super::wiki::{WikiClient, encode, json_of};
use super::{AuditError, Change, Expected, Finding, Fix, Subject};
use crate::routes::Action;

/// Confluence's space permission types (`SpacePermission`) a guest permission needs.
fn needed(action: Action) -> &'static [&'static str] {
    match action {
        Action::View => &["VIEWSPACE"],
        Action::Edit => &["EDITSPACE", "EDITBLOG"],
        Action::Comment => &["COMMENT"],
        Action::Attach => &["CREATEATTACHMENT"],
        Action::Delete => &[
            "REMOVEPAGE",
            "REMOVEBLOG",
            "REMOVECOMMENT",
            "REMOVEATTACHMENT",
        ],
        // A single page's PDF or Word export needs only view; EXPORTSPACE is the space
        // export, which guests never hold. Admin: no guest holds it.
        Action::Export | Action::Admin => &[],
    }
}

fn needed_all(actions: &BTreeSet<Action>) -> BTreeSet<&'static str> {
    actions.iter().flat_map(|a| needed(*a)).copied().collect()
}

/// What a wiki entry may hold for permissions `actions`: what they need, and deleting
/// one's own content for anyone who may add some.
fn allowed(actions: &BTreeSet<Action>) -> BTreeSet<&'static str> {
    let mut all = needed_all(actions);
    if actions.iter().any(|a| {
        matches!(
            a,
            Action::Edit | Action::Comment | Action::Attach | Action::Delete
        )
    }) {
        all.insert("REMOVEOWNCONTENT");
    }
    all
}

/// A remote API call; its result, or the error the wiki put in the body.
async fn rpc(client: &WikiClient, method: &str, params: Value) -> Result<Value, AuditError> {
    let what = format!("the remote API call {method}");
    let fetched = client
        .send(
            Method::POST,
            &format!("/rpc/json-rpc/confluenceservice-v2/{method}"),
            Some("application/json"),
            Bytes::from(params.to_string()),
        )
        .await?;
    let value = json_of(&what, fetched)?;
    if let Some(error) = value.get("error").filter(|_| value.is_object()) {
        let message = error
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("no message");
        return Err(AuditError::Refused {
            what,
            why: message.lines().next().unwrap_or(message).to_string(),
        });
    }
    Ok(value)
}

/// Every item of a paged REST listing.
async fn paged(client: &WikiClient, what: &str, path: &str) -> Result<Vec<Value>, AuditError> {
    const LIMIT: usize = 200;
    const MAX_PAGES: usize = 1000;
    let mut items = Vec::new();
    let sep = if path.contains('?') { '&' } else { '?' };
    // The next page starts after what this one held: a server may cap `limit` lower.
    let mut start = 0;
    for _ in 0..MAX_PAGES {
        let json = client
            .get_json(what, &format!("{path}{sep}start={start}&limit={LIMIT}"))
            .await?;
        let results = json
            .get("results")
            .and_then(Value::as_array)
            .ok_or_else(|| AuditError::Unexpected {
                what: what.to_string(),
                why: "no `results` array".into(),
            })?;
        items.extend(results.iter().cloned());
        start += results.len();
        let limit = json
            .get("limit")
            .and_then(Value::as_u64)
            .unwrap_or(LIMIT as u64) as usize;
        let more = json.pointer("/_links/next").is_some();
        if results.is_empty() || results.len() < limit || !more {
            return Ok(items);
        }
    }
    Err(AuditError::Unexpected {
        what: what.to_string(),
        why: format!("more than {MAX_PAGES} pages"),
    })
}

fn string_at<'v>(v: &'v Value, key: &str) -> Option<&'v str> {
    v.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// One space's permission entries, by subject, and those of "everyone" (anonymous or
/// every signed-in user: the remote API does not tell them apart).
#[derive(Default)]
struct SpacePermissions {
    by_subject: BTreeMap<Subject, BTreeSet<String>>,
    everyone: BTreeSet<String>,
}

/// How this Confluence lists and changes space permissions.
enum SpaceApi {
    /// The JSON-RPC remote API (Server and Data Center before 9.1).
    RemoteApi,
    /// REST, per subject (Data Center 9.1+); user subjects by user key.
    Rest { user_keys: BTreeMap<String, String> },
}

/// REST `operationKey targetType` pairs and the remote API's names for them.
const REST_OPERATIONS: [(&str, &str, &str); 14] = [
    ("read", "space", "VIEWSPACE"),
    ("create", "page", "EDITSPACE"),
    ("create", "blogpost", "EDITBLOG"),
    ("create", "comment", "COMMENT"),
    ("create", "attachment", "CREATEATTACHMENT"),
    ("delete", "page", "REMOVEPAGE"),
    ("delete", "blogpost", "REMOVEBLOG"),
    ("delete", "comment", "REMOVECOMMENT"),
    ("delete", "attachment", "REMOVEATTACHMENT"),
    ("delete", "space", "REMOVEOWNCONTENT"),
    ("export", "space", "EXPORTSPACE"),
    ("administer", "space", "SETSPACEPERMISSIONS"),
    ("restrict_content", "space", "SETPAGEPERMISSIONS"),
    ("delete_mail", "space", "REMOVEMAIL"),
];

fn legacy_name(operation: &str, target: &str) -> String {
    REST_OPERATIONS
        .iter()
        .find(|(o, t, _)| *o == operation && *t == target)
        .map_or_else(
            || format!("{operation} {target}"),
            |(_, _, n)| n.to_string(),
        )
}

fn rest_operation(name: &str) -> Option<(&'static str, &'static str)> {
    REST_OPERATIONS
        .iter()
        .find(|(_, _, n)| *n == name)
        .map(|(o, t, _)| (*o, *t))
}

/// Which API this Confluence has: REST where `space` answers on it, else the remote API.
async fn space_api(
    client: &WikiClient,
    space: Option<&str>,
    users: impl Iterator<Item = &String>,
) -> Result<SpaceApi, AuditError> {
    let Some(space) = space else {
        return Ok(SpaceApi::RemoteApi);
    };
    let probe = client
        .get(&format!(
            "/rest/api/space/{}/permissions/anonymous",
            encode(space)
        ))
        .await?;
    if probe.status == http::StatusCode::NOT_FOUND {
        return Ok(SpaceApi::RemoteApi);
    }
    json_of("the space permissions REST API", probe)?;
    let mut user_keys = BTreeMap::new();
    for user in users {
        let json = client
            .get_json(
                &format!("the user key of {user}"),
                &format!("/rest/api/user?username={}", encode(user)),
            )
            .await?;
        if let Some(key) = string_at(&json, "userKey") {
            user_keys.insert(user.clone(), key.to_string());
        }
    }
    Ok(SpaceApi::Rest { user_keys })
}

/// The grants of one subject in `space`, by REST.
async fn rest_grants(
    client: &WikiClient,
    space: &str,
    subject_path: &str,
) -> Result<BTreeSet<String>, AuditError> {
    let what = format!("the permissions of {subject_path} in {space}");
    let path = format!(
        "/rest/api/space/{}/permissions/{subject_path}",
        encode(space)
    );
    let json = match client.get_json(&what, &path).await {
        Err(AuditError::NotFound(_)) => return Ok(BTreeSet::new()),
        other => other?,
    };
    Ok(json
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let op = p
                .pointer("/operation/operationKey")
                .and_then(Value::as_str)?;
            let target = p.pointer("/operation/targetType").and_then(Value::as_str)?;
            Some(legacy_name(op, target))
        })
        .collect())
}

async fn space_permissions(
    client: &WikiClient,
    api: &SpaceApi,
    space: &str,
    groups: &BTreeSet<String>,
) -> Result<SpacePermissions, AuditError> {
    let SpaceApi::Rest { user_keys } = api else {
        return remote_space_permissions(client, space).await;
    };
    let mut out = SpacePermissions::default();
    for group in groups {
        let grants = rest_grants(client, space, &format!("group/{}", encode(group))).await?;
        if !grants.is_empty() {
            out.by_subject.insert(Subject::Group(group.clone()), grants);
        }
    }
    for (user, key) in user_keys {
        let grants = rest_grants(client, space, &format!("user/{}", encode(key))).await?;
        if !grants.is_empty() {
            out.by_subject.insert(Subject::User(user.clone()), grants);
        }
    }
    out.everyone = rest_grants(client, space, "anonymous").await?;
    Ok(out)
}

async fn remote_space_permissions(
    client: &WikiClient,
    space: &str,
) -> Result<SpacePermissions, AuditError> {
    let sets = rpc(client, "getSpacePermissionSets", json!([space])).await?;
    let sets = sets.as_array().ok_or_else(|| AuditError::Unexpected {
        what: format!("getSpacePermissionSets of {space}"),
        why: "not an array".into(),
    })?;
    let mut out = SpacePermissions::default();
    for set in sets {
        for entry in set
            .get("spacePermissions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(kind) = string_at(entry, "type").or_else(|| string_at(set, "type")) else {
                continue;
            };
            let kind = kind.to_string();
            match (string_at(entry, "userName"), string_at(entry, "groupName")) {
                (Some(user), _) => out
                    .by_subject
                    .entry(Subject::User(user.to_string()))
                    .or_default()
                    .insert(kind),
                (None, Some(group)) => out
                    .by_subject
                    .entry(Subject::Group(group.to_string()))
                    .or_default()
                    .insert(kind),
                (None, None) => out.everyone.insert(kind),
            };
        }
    }
    Ok(out)
}

fn list(set: &BTreeSet<String>) -> String {
    set.iter().cloned().collect::<Vec<_>>().join(", ")
}

pub async fn audit(
    client: &WikiClient,
    expected: &Expected,
) -> Result<(Vec<Finding>, Vec<String>), AuditError> {
    let me = client
        .get_json(
            "the service account (/rest/api/user/current)",
            "/rest/api/user/current",
        )
        .await?;
    if me.get("type").and_then(Value::as_str) != Some("known") {
        return Err(AuditError::Credentials(
            "Confluence answers as to an anonymous user (a wrong or expired personal access token is not refused but ignored); set upstream.service_authorization_env to an administrator's credentials".into(),
        ));
    }
    let mut findings = Vec::new();
    let mut unchecked = Vec::new();
    // Only an administrator sees every space: spaces hidden from the service account would
    // be missing from the audit without a word.
    if let Some(me) = string_at(&me, "username") {
        let path = format!("/rest/api/user/memberof?username={}", encode(me));
        let admin = match paged(client, "the service account's groups", &path).await {
            Ok(groups) => groups
                .iter()
                .any(|g| string_at(g, "name") == Some("confluence-administrators")),
            Err(AuditError::NotFound(_)) => false,
            Err(e) => return Err(e),
        };
        if !admin {
            unchecked.push(format!(
                "spaces the service account {me} cannot see: it is not in confluence-administrators, so only the spaces it can see were audited"
            ));
        }
    }

    // The guest accounts: those the document declares and the guest groups' members, each
    // with its groups on the wiki.
    let mut missing_groups = BTreeSet::new();
    let mut accounts: BTreeMap<String, Vec<String>> = expected
        .guest_users
        .keys()
        .map(|u| (u.clone(), Vec::new()))
        .collect();
    for group in &expected.guest_groups {
        let path = format!("/rest/api/group/{}/member", encode(group));
        match paged(client, &format!("the members of {group}"), &path).await {
            Ok(members) => {
                for m in members {
                    // A member the document declares regular is a regular user whatever
                    // else the wiki has them in (permissions are additive).
                    if let Some(name) = string_at(&m, "username")
                        && !expected.regular_users.contains(name)
                    {
                        accounts.entry(name.to_string()).or_default();
                    }
                }
            }
            Err(AuditError::NotFound(_)) => {
                missing_groups.insert(group.clone());
            }
            Err(e) => return Err(e),
        }
    }
    // Users with a grant of their own are guest accounts too (unless declared regular).
    for granted in expected.grants.values() {
        for subject in granted.keys() {
            if let Subject::User(user) = subject
                && !expected.regular_users.contains(user)
            {
                accounts.entry(user.clone()).or_default();
            }
        }
    }
    let mut missing_users = BTreeSet::new();
    for (user, groups) in accounts.iter_mut() {
        let path = format!("/rest/api/user/memberof?username={}", encode(user));
        match paged(client, &format!("the groups of {user}"), &path).await {
            Ok(found) => {
                *groups = found
                    .iter()
                    .filter_map(|g| string_at(g, "name"))
                    .map(|g| {
                        expected
                            .guest_group(g)
                            .cloned()
                            .unwrap_or_else(|| g.to_string())
                    })
                    .collect();
            }
            Err(AuditError::NotFound(_)) => {
                missing_users.insert(user.clone());
            }
            Err(e) => return Err(e),
        }
    }
    accounts.retain(|u, _| !missing_users.contains(u));

    let spaces: Vec<String> = paged(client, "the spaces (/rest/api/space)", "/rest/api/space")
        .await?
        .iter()
        .filter_map(|s| string_at(s, "key").map(str::to_string))
        .collect();
    let on_wiki: BTreeSet<String> = spaces.iter().map(|s| s.to_uppercase()).collect();
    let api = space_api(client, spaces.first().map(String::as_str), accounts.keys()).await?;
    // The groups whose entries matter: the guest groups and those guest accounts are in.
    let groups: BTreeSet<String> = expected
        .guest_groups
        .iter()
        .chain(accounts.values().flatten())
        .cloned()
        .collect();
    for space in &spaces {
        let mut have = space_permissions(client, &api, space, &groups).await?;
        // Confluence stores group names lower-cased: the document's spelling from here on.
        have.by_subject = std::mem::take(&mut have.by_subject)
            .into_iter()
            .map(|(subject, perms)| match subject {
                Subject::Group(g) => (
                    Subject::Group(expected.guest_group(&g).cloned().unwrap_or(g)),
                    perms,
                ),
                user => (user, perms),
            })
            .collect();
        // The guest groups' own entries.
        for (subject, perms) in &have.by_subject {
            let may = match subject {
                Subject::Group(g) if expected.guest_groups.contains(g) => {
                    allowed(&expected.own(space, subject))
                }
                Subject::User(u) if accounts.contains_key(u) => {
                    allowed(&expected.effective(space, u, &accounts[u]))
                }
                _ => continue,
            };
            for extra in perms.iter().filter(|p| !may.contains(p.as_str())) {
                // A REST operation with no remote API name (`archive page`, …) is revoked
                // in the space's permissions by hand.
                let fix = if extra.contains(' ') {
                    Fix::Manual(format!(
                        "revoke {extra} from {subject} in {space}'s permissions"
                    ))
                } else {
                    Fix::Change(Change::Revoke {
                        space: space.clone(),
                        subject: subject.clone(),
                        permission: extra.clone(),
                    })
                };
                findings.push(Finding {
                    excess: true,
                    what: format!(
                        "{subject} holds {extra} in {space}, which the data document does not grant"
                    ),
                    fix,
                });
            }
        }
        // Regular groups guest accounts belong to (`confluence-users`, usually).
        for (user, groups) in &accounts {
            let may = allowed(&expected.effective(space, user, groups));
            for group in groups
                .iter()
                .filter(|g| !expected.guest_groups.contains(*g))
            {
                let Some(perms) = have.by_subject.get(&Subject::Group(group.clone())) else {
                    continue;
                };
                let extra: BTreeSet<String> = perms
                    .iter()
                    .filter(|p| !may.contains(p.as_str()))
                    .cloned()
                    .collect();
                if !extra.is_empty() {
                    findings.push(Finding {
                        excess: true,
                        what: format!(
                            "guest user {user} holds {} in {space} through the wiki group {group}",
                            list(&extra)
                        ),
                        fix: Fix::Manual(format!(
                            "take {user} out of {group} (a guest account needs only its guest groups; give those \"Can use\"), or take the permissions from {group} in {space}"
                        )),
                    });
                }
            }
        }
        // Anonymous or every signed-in user: guests included.
        if !accounts.is_empty() || !expected.guest_groups.is_empty() {
            let extra: BTreeSet<String> = have
                .everyone
                .iter()
                .filter(|p| {
                    accounts.iter().any(|(u, g)| {
                        !allowed(&expected.effective(space, u, g)).contains(p.as_str())
                    }) || accounts.is_empty()
                })
                .cloned()
                .collect();
            if !extra.is_empty() {
                findings.push(Finding {
                    excess: true,
                    what: format!(
                        "anonymous users or all signed-in users (guests included) hold {} in {space}",
                        list(&extra)
                    ),
                    fix: Fix::Manual(format!(
                        "remove those permissions from anonymous / all users in {space}'s permissions"
                    )),
                });
            }
        }
        // What the grants need and the wiki lacks.
        if let Some(granted) = expected.grants.get(&space.to_uppercase()) {
            for (subject, actions) in granted {
                let exists = match subject {
                    Subject::Group(g) => !missing_groups.contains(g),
                    // A user the document declares regular is no guest account to grant to.
                    Subject::User(u) => {
                        !missing_users.contains(u) && !expected.regular_users.contains(u)
                    }
                };
                if !exists {
                    continue;
                }
                let held = have.by_subject.get(subject);
                for need in needed_all(actions) {
                    if held.is_none_or(|h| !h.contains(need)) {
                        findings.push(Finding {
                            excess: false,
                            what: format!(
                                "{subject} lacks {need} in {space}: the wiki will refuse what the grant allows"
                            ),
                            fix: Fix::Change(Change::Grant {
                                space: space.clone(),
                                subject: subject.clone(),
                                permission: need.to_string(),
                            }),
                        });
                    }
                }
            }
        }
    }
    for (space, granted) in &expected.grants {
        if !granted.is_empty() && !on_wiki.contains(space) {
            findings.push(Finding {
                excess: false,
                what: format!("space {space} is granted to guests but the wiki has no such space (or the service account cannot see it)"),
                fix: Fix::Manual("create the space, correct the key, or make the service account a Confluence administrator".into()),
            });
        }
    }
    for group in &missing_groups {
        findings.push(Finding {
            excess: false,
            what: format!("guest group {group} does not exist on the wiki"),
            fix: Fix::Manual(format!(
                "create {group} in Confluence and add the guest accounts to it"
            )),
        });
    }
    for user in &missing_users {
        findings.push(Finding {
            excess: false,
            what: format!("guest user {user} has no account on the wiki"),
            fix: Fix::Manual(format!(
                "create {user}'s account, or remove them from the data document"
            )),
        });
    }

    // Global permissions: readable from Data Center 9.1 on.
    for group in expected.guest_groups.difference(&missing_groups) {
        let path = format!("/rest/api/permissions/group/{}", encode(group));
        let fetched = client.get(&path).await?;
        if fetched.status == http::StatusCode::NOT_FOUND {
            unchecked.push(
                "global permissions: this Confluence (before Data Center 9.1) has no API to read them; in Confluence administration › Global permissions, guest groups should hold \"Can use\" only (not \"Personal space\", \"Create space\", \"Can view user profiles\", administration)".into(),
            );
            break;
        }
        let granted = json_of(&format!("the global permissions of {group}"), fetched)?;
        for entry in granted.as_array().into_iter().flatten() {
            let target = entry
                .pointer("/operation/targetType")
                .and_then(Value::as_str);
            let key = entry
                .pointer("/operation/operationKey")
                .and_then(Value::as_str);
            if let (Some(target), Some(key)) = (target, key)
                && (target, key) != ("application", "use")
            {
                findings.push(Finding {
                    excess: true,
                    what: format!("guest group {group} holds the global permission {target} {key}"),
                    fix: Fix::Manual(
                        "revoke it in Confluence administration › Global permissions".into(),
                    ),
                });
            }
        }
    }
    Ok((findings, unchecked))
}

pub async fn apply(client: &WikiClient, change: &Change) -> Result<(), AuditError> {
    let space = match change {
        Change::Grant { space, .. } | Change::Revoke { space, .. } => space.as_str(),
        Change::LeaveGroup { .. } => "",
    };
    let users: Vec<String> = match change {
        Change::Grant {
            subject: Subject::User(u),
            ..
        }
        | Change::Revoke {
            subject: Subject::User(u),
            ..
        } => vec![u.clone()],
        _ => Vec::new(),
    };
    if let SpaceApi::Rest { user_keys } = space_api(client, Some(space), users.iter()).await? {
        return rest_apply(client, change, &user_keys).await;
    }
    // The remote API looks a name up as a user first, then as a group: a change meant for
    // a group that shares a user's name would land on the user.
    if let Change::Grant {
        subject: Subject::Group(group),
        ..
    }
    | Change::Revoke {
        subject: Subject::Group(group),
        ..
    } = change
    {
        let user = client
            .get(&format!("/rest/api/user?username={}", encode(group)))
            .await?;
        if user.status.is_success() {
            return Err(AuditError::Setup(format!(
                "a user is also named {group}: Confluence's remote API would change that user's permission instead of the group's; make this change by hand"
            )));
        }
    }
    let (method, params) = match change {
        Change::Grant {
            space,
            subject: Subject::Group(name) | Subject::User(name),
            permission,
        } => ("addPermissionsToSpace", json!([[permission], name, space])),
        Change::Revoke {
            space,
            subject: Subject::Group(name) | Subject::User(name),
            permission,
        } => (
            "removePermissionFromSpace",
            json!([permission, name, space]),
        ),
        Change::LeaveGroup { .. } => {
            return Err(AuditError::Setup(
                "Confluence group memberships are changed by hand".into(),
            ));
        }
    };
    let result = rpc(client, method, params).await?;
    if result != Value::Bool(true) {
        return Err(AuditError::Unexpected {
            what: format!("{method} ({change})"),
            why: format!("answered {result} instead of true"),
        });
    }
    Ok(())
}

async fn rest_apply(
    client: &WikiClient,
    change: &Change,
    user_keys: &BTreeMap<String, String>,
) -> Result<(), AuditError> {
    let (space, subject, permission, verb) = match change {
        Change::Grant {
            space,
            subject,
            permission,
        } => (space, subject, permission, "grant"),
        Change::Revoke {
            space,
            subject,
            permission,
        } => (space, subject, permission, "revoke"),
        Change::LeaveGroup { .. } => {
            return Err(AuditError::Setup(
                "Confluence group memberships are changed by hand".into(),
            ));
        }
    };
    let subject_path = match subject {
        Subject::Group(g) => format!("group/{}", encode(g)),
        Subject::User(u) => match user_keys.get(u) {
            Some(key) => format!("user/{}", encode(key)),
            None => {
                return Err(AuditError::NotFound(format!("user key of {u}")));
            }
        },
    };
    let Some((operation, target)) = rest_operation(permission) else {
        return Err(AuditError::Setup(format!(
            "{permission} has no REST operation to {verb}; change it in the space's permissions by hand"
        )));
    };
    let body = json!([{"targetType": target, "operationKey": operation}]).to_string();
    let what = format!("{change}");
    let fetched = client
        .send(
            Method::PUT,
            &format!(
                "/rest/api/space/{}/permissions/{subject_path}/{verb}",
                encode(space)
            ),
            Some("application/json"),
            Bytes::from(body),
        )
        .await?;
    if fetched.status.is_success() {
        return Ok(());
    }
    json_of(&what, fetched).map(drop)
}
