//! `guestgate audit` against a stand-in of Confluence's permission endpoints, answering in
//! the documented shapes kept in `tests/fixtures/confluence/` (its README names the
//! sources); the real MediaWiki's case is in `mediawiki.rs`.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::{Arc, Mutex};

use http::StatusCode;
use http_body_util::BodyExt;
use serde_json::{Value, json};

use crate::support::*;

const SERVICE_TOKEN: &str = "Bearer service-pat-of-an-administrator";
const AUTH_VAR: &str = "GG_TEST_WIKI_SERVICE_AUTH";

fn fixture(name: &str) -> Value {
    let path = repo_path(&format!("tests/fixtures/confluence/{name}"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A page of results in the documented shape, `template` filled per item.
fn page(file: &str, items: Vec<Value>) -> Value {
    let mut page = fixture(file);
    let template = page["results"][0].clone();
    let results: Vec<Value> = items
        .into_iter()
        .map(|fields| {
            let mut item = template.clone();
            for (k, v) in fields.as_object().unwrap() {
                item[k] = v.clone();
            }
            item
        })
        .collect();
    page["size"] = json!(results.len());
    page["results"] = Value::Array(results);
    page
}

/// One space permission entry: its type, user name and group name.
type Entry = (String, Option<String>, Option<String>);

/// The wiki's state: space → entries; user → groups.
#[derive(Default)]
struct Wiki {
    spaces: BTreeMap<String, Vec<Entry>>,
    groups_of: BTreeMap<String, Vec<String>>,
    /// Remote API calls that change something, as made.
    writes: Vec<String>,
    /// The service account may not administer spaces.
    not_admin: bool,
    /// Data Center 9.1+: space permissions by REST, no remote API.
    rest: bool,
}

/// REST `operationKey`/`targetType` pairs of the remote API's names (Data Center 9.1+).
const REST_NAMES: [(&str, &str, &str); 5] = [
    ("VIEWSPACE", "read", "space"),
    ("COMMENT", "create", "comment"),
    ("EDITSPACE", "create", "page"),
    ("EDITBLOG", "create", "blogpost"),
    ("SETSPACEPERMISSIONS", "administer", "space"),
];

fn user_key(user: &str) -> String {
    format!("key-of-{user}")
}

impl Wiki {
    fn sets(&self, space: &str) -> Value {
        let mut by_type: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
        let template = fixture("space-permission-sets.json")[0]["spacePermissions"][0].clone();
        for (kind, user, group) in &self.spaces[space] {
            let mut entry = template.clone();
            entry["type"] = json!(kind);
            entry["userName"] = json!(user);
            entry["groupName"] = json!(group);
            by_type.entry(kind).or_default().push(entry);
        }
        Value::Array(
            by_type
                .into_iter()
                .map(|(kind, entries)| json!({"type": kind, "spacePermissions": entries}))
                .collect(),
        )
    }
}

fn entry(kind: &str, user: Option<&str>, group: Option<&str>) -> Entry {
    (kind.into(), user.map(Into::into), group.map(Into::into))
}

/// ENG grants acme-guests view and comment and gina view and edit; DOCS partner-guests view
/// (`TEST_DATA`). The wiki lacks acme-guests' COMMENT in ENG and lets acme-guests view HR.
fn drifted() -> Wiki {
    let mut w = Wiki::default();
    w.spaces.insert(
        "ENG".into(),
        vec![
            entry("VIEWSPACE", None, Some("confluence-users")),
            entry("EDITSPACE", None, Some("confluence-users")),
            entry("VIEWSPACE", None, Some("acme-guests")),
            entry("VIEWSPACE", Some("gina"), None),
            entry("EDITSPACE", Some("gina"), None),
            entry("EDITBLOG", Some("gina"), None),
            entry("SETSPACEPERMISSIONS", Some("alice"), None),
        ],
    );
    w.spaces.insert(
        "HR".into(),
        vec![
            entry("VIEWSPACE", None, Some("confluence-users")),
            entry("VIEWSPACE", None, Some("acme-guests")),
        ],
    );
    w.spaces.insert(
        "DOCS".into(),
        vec![entry("VIEWSPACE", None, Some("partner-guests"))],
    );
    w.groups_of
        .insert("gary".into(), vec!["acme-guests".into()]);
    w.groups_of
        .insert("gina".into(), vec!["partner-guests".into()]);
    w.groups_of
        // Regular in the data document; the wiki also has her in a guest group.
        .insert(
            "alice".into(),
            vec!["confluence-users".into(), "acme-guests".into()],
        );
    // The service account (`user-current.json`) is an administrator: it sees every space.
    w.groups_of.insert(
        "svc-guestgate".into(),
        vec!["confluence-administrators".into()],
    );
    w
}

async fn start_wiki(wiki: Wiki) -> (Upstream, Arc<Mutex<Wiki>>) {
    let state = Arc::new(Mutex::new(wiki));
    let shared = state.clone();
    let handler: Handler = Arc::new(move |req| {
        let state = shared.clone();
        Box::pin(async move {
            let auth = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let path = req.uri().path().to_string();
            let query = req.uri().query().unwrap_or("").to_string();
            let method = req.method().clone();
            let body = req.into_body().collect().await.unwrap().to_bytes();
            match auth.as_deref() {
                None => {
                    return http::Response::builder()
                        .status(StatusCode::UNAUTHORIZED)
                        .header("www-authenticate", "Basic realm=\"protected-area\"")
                        .body(full(""))
                        .unwrap();
                }
                Some(SERVICE_TOKEN) => {}
                // Any other token: Confluence ignores it and answers as to anonymous.
                Some(_) if path == "/rest/api/user/current" => {
                    return json_response(StatusCode::OK, fixture("user-current-anonymous.json"));
                }
                Some(_) => return json_response(StatusCode::UNAUTHORIZED, json!({})),
            }
            let mut wiki = state.lock().unwrap();
            let param = |name: &str| {
                form_urlencoded::parse(query.as_bytes())
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.into_owned())
            };
            if path == "/rest/api/user/current" {
                return json_response(StatusCode::OK, fixture("user-current.json"));
            }
            if path == "/rest/api/space" {
                let start: usize = param("start").unwrap_or_default().parse().unwrap_or(0);
                let keys: Vec<Value> = wiki
                    .spaces
                    .keys()
                    .skip(start)
                    .map(|k| json!({"key": k, "name": format!("{k} space")}))
                    .collect();
                return json_response(StatusCode::OK, page("spaces.json", keys));
            }
            if let Some(group) = path
                .strip_prefix("/rest/api/group/")
                .and_then(|p| p.strip_suffix("/member"))
            {
                let members: Vec<Value> = wiki
                    .groups_of
                    .iter()
                    .filter(|(_, gs)| gs.iter().any(|g| g == group))
                    .map(|(u, _)| json!({"username": u, "displayName": u}))
                    .collect();
                if members.is_empty() {
                    return json_response(StatusCode::NOT_FOUND, json!({"statusCode": 404}));
                }
                return json_response(StatusCode::OK, page("group-members.json", members));
            }
            if path == "/rest/api/user/memberof" {
                let user = param("username").unwrap_or_default();
                let Some(groups) = wiki.groups_of.get(&user) else {
                    return json_response(StatusCode::NOT_FOUND, json!({"statusCode": 404}));
                };
                let items = groups.iter().map(|g| json!({"name": g})).collect();
                return json_response(StatusCode::OK, page("memberof.json", items));
            }
            if wiki.rest
                && let Some(rest) = path.strip_prefix("/rest/api/space/")
                && let Some((space, subject)) = rest.split_once("/permissions/")
            {
                let space = space.to_string();
                let (subject, verb) = match subject.rsplit_once('/') {
                    Some((s, v)) if v == "grant" || v == "revoke" => (s.to_string(), Some(v)),
                    _ => (subject.to_string(), None),
                };
                let matches = |(_, u, g): &Entry| match subject.split_once('/') {
                    Some(("group", name)) => g.as_deref() == Some(name),
                    Some(("user", key)) => u.as_deref().map(user_key).as_deref() == Some(key),
                    _ => subject == "anonymous" && u.is_none() && g.is_none(),
                };
                let Some(verb) = verb else {
                    let template = fixture("space-permissions-rest.json")[0].clone();
                    let list: Vec<Value> = wiki.spaces[&space]
                        .iter()
                        .filter(|e| matches(e))
                        .map(|(kind, _, _)| {
                            let (_, op, target) =
                                REST_NAMES.iter().find(|(n, _, _)| n == kind).unwrap();
                            let mut p = template.clone();
                            p["operation"] = json!({"targetType": target, "operationKey": op});
                            p["spaceKey"] = json!(space);
                            p
                        })
                        .collect();
                    return json_response(StatusCode::OK, Value::Array(list));
                };
                assert_eq!(method, http::Method::PUT);
                let ops: Value = serde_json::from_slice(&body).unwrap();
                let (op, target) = (
                    ops[0]["operationKey"].as_str().unwrap(),
                    ops[0]["targetType"].as_str().unwrap(),
                );
                let kind = REST_NAMES
                    .iter()
                    .find(|(_, o, t)| *o == op && *t == target)
                    .unwrap()
                    .0;
                let e = match subject.split_once('/').unwrap() {
                    ("group", name) => entry(kind, None, Some(name)),
                    (_, key) => entry(kind, Some(key.trim_start_matches("key-of-")), None),
                };
                let entries = wiki.spaces.get_mut(&space).unwrap();
                if verb == "grant" {
                    entries.push(e);
                } else {
                    entries.retain(|x| x != &e);
                }
                wiki.writes.push(format!("PUT {path} {ops}"));
                return http::Response::builder()
                    .status(StatusCode::NO_CONTENT)
                    .body(full(""))
                    .unwrap();
            }
            if path == "/rest/api/user" {
                let user = param("username").unwrap_or_default();
                if !wiki.groups_of.contains_key(&user) {
                    return json_response(StatusCode::NOT_FOUND, json!({"statusCode": 404}));
                }
                let mut u = fixture("user.json");
                u["username"] = json!(user);
                u["userKey"] = json!(user_key(&user));
                return json_response(StatusCode::OK, u);
            }
            if path.starts_with("/rest/api/permissions/") {
                // Confluence before Data Center 9.1: no such resource.
                return json_response(StatusCode::NOT_FOUND, json!({"statusCode": 404}));
            }
            if let Some(rpc) = path.strip_prefix("/rpc/json-rpc/confluenceservice-v2/")
                && !wiki.rest
            {
                assert_eq!(method, http::Method::POST);
                let params: Value = serde_json::from_slice(&body).unwrap();
                if wiki.not_admin {
                    return json_response(StatusCode::OK, fixture("rpc-error.json"));
                }
                let answer = match rpc {
                    "getSpacePermissionSets" => wiki.sets(params[0].as_str().unwrap()),
                    "addPermissionsToSpace" => {
                        let (name, space) =
                            (params[1].as_str().unwrap(), params[2].as_str().unwrap());
                        let group = !wiki.groups_of.contains_key(name);
                        for kind in params[0].as_array().unwrap() {
                            let e = if group {
                                entry(kind.as_str().unwrap(), None, Some(name))
                            } else {
                                entry(kind.as_str().unwrap(), Some(name), None)
                            };
                            let entries = wiki.spaces.get_mut(space).unwrap();
                            if !entries.contains(&e) {
                                entries.push(e);
                            }
                        }
                        wiki.writes.push(format!("{rpc} {params}"));
                        json!(true)
                    }
                    "removePermissionFromSpace" => {
                        let (kind, name, space) = (
                            params[0].as_str().unwrap().to_string(),
                            params[1].as_str().unwrap().to_string(),
                            params[2].as_str().unwrap().to_string(),
                        );
                        wiki.spaces.get_mut(&space).unwrap().retain(|(k, u, g)| {
                            !(k == &kind
                                && (u.as_deref() == Some(&*name) || g.as_deref() == Some(&*name)))
                        });
                        wiki.writes.push(format!("{rpc} {params}"));
                        json!(true)
                    }
                    other => panic!("unexpected remote API call {other}"),
                };
                return json_response(StatusCode::OK, answer);
            }
            json_response(StatusCode::NOT_FOUND, json!({"unexpected": path}))
        })
    });
    (start_upstream_with(handler).await, state)
}

/// A config in front of `wiki` whose service credentials are `auth` (unset: none).
fn config_for(dir: &std::path::Path, wiki: &Upstream, extra: &str) -> String {
    let mut c = TestConfig::new(&wiki.url());
    c.upstream_extra = format!("service_authorization_env = \"{AUTH_VAR}\"\n");
    c.extra_sections = format!("[audit]\nwiki = \"confluence\"\n{extra}");
    let path = write_config(dir, &c);
    std::fs::write(dir.join("secret"), SECRET).unwrap();
    path.to_str().unwrap().to_string()
}

async fn audit(config: &str, auth: Option<&str>, args: &[&str]) -> (i32, String, String) {
    let args = ["audit", "--config", config]
        .iter()
        .chain(args)
        .map(|a| a.to_string())
        .collect();
    run_guestgate_async(args, vec![(AUTH_VAR.into(), auth.map(Into::into))]).await
}

#[tokio::test]
async fn audit_reports_drift_plans_the_fix_and_apply_makes_the_wiki_agree() {
    let (up, wiki) = start_wiki(drifted()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_for(dir.path(), &up, "");

    let (code, out, err) = audit(&config, Some(SERVICE_TOKEN), &[]).await;
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        out.contains("MORE  group acme-guests holds VIEWSPACE in HR"),
        "a guest group with a permission in an ungranted space: {out}"
    );
    assert!(
        out.contains("LESS  group acme-guests lacks COMMENT in ENG"),
        "{out}"
    );
    // What the data document grants is not reported: gina's own entries, regular groups.
    assert!(!out.contains("gina"), "{out}");
    assert!(!out.contains("alice"), "{out}");
    assert!(out.contains("UNCHECKED  global permissions"), "{out}");
    assert_eq!(out.matches("fix:").count(), 2, "{out}");

    let (code, out, _) = audit(&config, Some(SERVICE_TOKEN), &["--plan"]).await;
    assert_eq!(code, 1);
    assert!(
        out.contains("Plan: 2 change(s), made only with --apply"),
        "{out}"
    );
    assert!(
        out.contains("  grant COMMENT in ENG to group acme-guests"),
        "{out}"
    );
    assert!(
        out.contains("  revoke VIEWSPACE in HR from group acme-guests"),
        "{out}"
    );
    assert!(
        wiki.lock().unwrap().writes.is_empty(),
        "nothing changed without --apply"
    );

    let (code, out, err) = audit(&config, Some(SERVICE_TOKEN), &["--apply"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("2 change(s) made."), "{out}");
    assert_eq!(
        wiki.lock().unwrap().writes,
        vec![
            r#"addPermissionsToSpace [["COMMENT"],"acme-guests","ENG"]"#,
            r#"removePermissionFromSpace ["VIEWSPACE","acme-guests","HR"]"#,
        ]
    );

    let (code, out, _) = audit(&config, Some(SERVICE_TOKEN), &[]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("The wiki agrees with the data document."),
        "{out}"
    );
    // Idempotent: a second --apply has nothing to do.
    let (code, _, _) = audit(&config, Some(SERVICE_TOKEN), &["--apply"]).await;
    assert_eq!(code, 0);
    assert_eq!(wiki.lock().unwrap().writes.len(), 2);
}

/// Data Center 9.1+: the same audit and fix through the space permissions REST API (the
/// remote API is not there).
#[tokio::test]
async fn on_data_center_9_the_rest_api_is_read_and_changed() {
    let mut w = drifted();
    w.rest = true;
    let (up, wiki) = start_wiki(w).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_for(dir.path(), &up, "");
    let (code, out, _) = audit(&config, Some(SERVICE_TOKEN), &["--plan"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("MORE  group acme-guests holds VIEWSPACE in HR"),
        "{out}"
    );
    assert!(
        out.contains("LESS  group acme-guests lacks COMMENT in ENG"),
        "{out}"
    );
    assert!(
        !out.contains("gina"),
        "gina's own entries match her grant: {out}"
    );
    assert!(wiki.lock().unwrap().writes.is_empty());
    let (code, out, err) = audit(&config, Some(SERVICE_TOKEN), &["--apply"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(
        wiki.lock().unwrap().writes,
        vec![
            r#"PUT /rest/api/space/ENG/permissions/group/acme-guests/grant [{"operationKey":"create","targetType":"comment"}]"#,
            r#"PUT /rest/api/space/HR/permissions/group/acme-guests/revoke [{"operationKey":"read","targetType":"space"}]"#,
        ]
    );
    let (code, out, _) = audit(&config, Some(SERVICE_TOKEN), &[]).await;
    assert_eq!(code, 0, "{out}");
}

/// The usual Server/DC set-up: guest accounts in `confluence-users`, which views most
/// spaces. No permission of a guest group shows it; the audit does, and leaves the fix to
/// a person (group memberships are not the audit's to change).
#[tokio::test]
async fn a_guest_account_in_a_regular_group_is_reported_with_a_fix_by_hand() {
    let mut w = drifted();
    // Not an administrator this time: the spaces it cannot see are named as unchecked.
    w.groups_of.remove("svc-guestgate");
    w.groups_of.insert(
        "gina".into(),
        vec!["partner-guests".into(), "confluence-users".into()],
    );
    w.spaces
        .get_mut("ENG")
        .unwrap()
        .push(entry("COMMENT", None, Some("acme-guests")));
    w.spaces
        .get_mut("HR")
        .unwrap()
        .retain(|e| e.2.as_deref() != Some("acme-guests"));
    w.spaces
        .get_mut("DOCS")
        .unwrap()
        .push(entry("VIEWSPACE", None, None));
    let (up, wiki) = start_wiki(w).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_for(dir.path(), &up, "");
    let (code, out, _) = audit(&config, Some(SERVICE_TOKEN), &["--apply"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(
            "MORE  guest user gina holds VIEWSPACE in HR through the wiki group confluence-users"
        ),
        "{out}"
    );
    assert!(
        out.contains("fix by hand: take gina out of confluence-users"),
        "{out}"
    );
    // In ENG gina may edit: confluence-users' EDITSPACE gives her nothing more.
    assert!(!out.contains("in ENG through"), "{out}");
    assert!(
        out.contains(
            "MORE  anonymous users or all signed-in users (guests included) hold VIEWSPACE in DOCS"
        ),
        "{out}"
    );
    assert!(
        out.contains("UNCHECKED  spaces the service account svc-guestgate cannot see"),
        "{out}"
    );
    assert!(wiki.lock().unwrap().writes.is_empty(), "{out}");
}

#[tokio::test]
async fn a_wiki_that_refuses_the_service_credentials_fails_with_a_clear_message() {
    let (up, wiki) = start_wiki(drifted()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_for(dir.path(), &up, "");

    // No credentials set: the variable the config names is missing.
    let (code, _, err) = audit(&config, None, &[]).await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!("environment variable ${AUTH_VAR} is not set")),
        "{err}"
    );
    // An expired token: Confluence answers as to anonymous rather than refusing.
    let (code, _, err) = audit(&config, Some("Bearer expired"), &[]).await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("refused the service credentials") && err.contains("anonymous"),
        "{err}"
    );
    // Not an administrator: the remote API's error is said, nothing is changed.
    wiki.lock().unwrap().not_admin = true;
    let (code, _, err) = audit(&config, Some(SERVICE_TOKEN), &["--apply"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("refused the remote API call getSpacePermissionSets")
            && err.contains("You don't have permission to administer the space"),
        "{err}"
    );
    assert!(wiki.lock().unwrap().writes.is_empty());
}

/// `audit.interval_secs`: the serving gateway audits too; `/guests` and the metric show
/// the last result, and readiness does not depend on it. (The real binary, so that the
/// service credentials come from its own environment.)
#[tokio::test]
async fn the_gateway_shows_the_last_audit_on_guests_and_in_a_metric() {
    use std::io::BufRead;
    let (up, _wiki) = start_wiki(drifted()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_for(dir.path(), &up, "interval_secs = 3600\n");
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_guestgate"))
            .args(["serve", "--config", &config])
            .env(AUTH_VAR, SERVICE_TOKEN)
            .env_remove("RUST_LOG")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = child.0.stderr.take().unwrap();
    let stderr_rest = Arc::new(Mutex::new(None));
    let keep = stderr_rest.clone();
    let admin = tokio::task::spawn_blocking(move || {
        let mut reader = std::io::BufReader::new(stderr);
        let mut line = String::new();
        while !line.contains("guestgate listening") {
            line.clear();
            assert!(
                reader.read_line(&mut line).unwrap() > 0,
                "serve logs its addresses"
            );
        }
        // Kept open: the gateway goes on logging there.
        *keep.lock().unwrap() = Some(reader);
        line.split("admin=")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    })
    .await
    .unwrap();
    let url = |path: &str| format!("http://{admin}{path}");
    let start = std::time::Instant::now();
    let guests = loop {
        let g = get(&url("/guests"), &[]).await.json();
        if !g["wiki_permissions"].is_null() {
            break g;
        }
        if start.elapsed() > std::time::Duration::from_secs(10) {
            let _ = child.0.kill();
            let mut rest = String::new();
            let _ = std::io::Read::read_to_string(
                &mut stderr_rest.lock().unwrap().take().unwrap(),
                &mut rest,
            );
            panic!("{g}\n{rest}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let audit = &guests["wiki_permissions"];
    assert_eq!(audit["agrees"], false, "{audit}");
    assert_eq!(audit["wiki"], "confluence");
    let findings = audit["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 2, "{audit}");
    assert!(
        findings.iter().any(|f| f["kind"] == "more"
            && f["what"]
                .as_str()
                .unwrap()
                .contains("acme-guests holds VIEWSPACE in HR")),
        "{audit}"
    );
    let metrics = get(&url("/metrics"), &[]).await.text();
    assert!(
        metrics.contains("guestgate_wiki_permission_drift 2"),
        "{metrics}"
    );
    assert_eq!(get(&url("/readyz"), &[]).await.status, StatusCode::OK);
}

/// The remote API finds a name as a user before a group: a planned change for a group
/// that shares a user's name is not made (it would land on the user); what came before it
/// stays made, and the command says where it stopped.
#[tokio::test]
async fn apply_stops_before_a_group_change_that_would_land_on_a_user() {
    let mut w = drifted();
    w.groups_of.insert("acme-guests".into(), Vec::new());
    let (up, wiki) = start_wiki(w).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_for(dir.path(), &up, "");
    let (code, out, err) = audit(&config, Some(SERVICE_TOKEN), &["--apply"]).await;
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains("stopped after 0 of 2 change(s)")
            && err.contains("a user is also named acme-guests"),
        "{err}"
    );
    assert!(wiki.lock().unwrap().writes.is_empty());
}
