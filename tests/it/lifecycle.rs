//! The guest lifecycle through the public interface: access that expires (and cached
//! decisions that expire with it), the admin write API, change notifications to a webhook,
//! and the Guest access page.
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::*;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const ADMIN_TOKEN: &str = "admin-token-0123456789";

fn in_secs(secs: f64) -> String {
    (OffsetDateTime::now_utc() + Duration::from_secs_f64(secs))
        .format(&Rfc3339)
        .unwrap()
}

/// Sleeps until `instant` (RFC 3339) has passed by a little.
async fn sleep_past(instant: &str) {
    let t = OffsetDateTime::parse(instant, &Rfc3339).unwrap();
    let left = t - OffsetDateTime::now_utc();
    if left.is_positive() {
        tokio::time::sleep(Duration::try_from(left).unwrap() + Duration::from_millis(150)).await;
    }
}

fn data_with(f: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut data: serde_json::Value = serde_json::from_str(TEST_DATA).unwrap();
    f(&mut data);
    serde_json::to_string_pretty(&data).unwrap()
}

#[tokio::test]
async fn expiring_grants_and_memberships_end_access_even_when_cached() {
    let up = start_upstream().await;
    let soon = in_secs(2.0);
    let mut c = TestConfig::new(&up.url());
    c.policy_extra = "decision_cache_ttl_secs = 300\n".into();
    c.data = data_with(|d| {
        d["spaces"]["HR"] = serde_json::json!({"guests": {"users": {
            "gary": {"permissions": ["view"], "expires": soon}}}});
        d["users"]["gwen"] =
            serde_json::json!({"groups": [{"group": "partner-guests", "expires": soon}]});
    });
    let gw = start_gateway(c).await;
    let gary = bearer(&token("gary", &[]));
    let gwen = bearer(&token("gwen", &[]));
    for _ in 0..2 {
        let a = get(&gw.url("/display/HR/Home"), &[("authorization", &gary)]).await;
        assert_eq!(a.status, StatusCode::OK);
        let a = get(&gw.url("/display/DOCS/Manual"), &[("authorization", &gwen)]).await;
        assert_eq!(a.status, StatusCode::OK);
    }
    let m = get(&gw.admin_url("/metrics"), &[]).await.text();
    assert!(
        m.contains("guestgate_decision_cache_total{result=\"hit\"} 2"),
        "the second round came from the cache: {m}"
    );
    sleep_past(&soon).await;
    let a = get(&gw.url("/display/HR/Home"), &[("authorization", &gary)]).await;
    assert_eq!(
        a.status,
        StatusCode::FORBIDDEN,
        "a 300 s cache entry outlived the grant"
    );
    assert_eq!(a.json()["reason"], "space_not_granted");
    let a = get(&gw.url("/display/DOCS/Manual"), &[("authorization", &gwen)]).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    // A lapsed guest membership leaves a guest, not a regular user.
    let a = get(&gw.url("/browsepeople.action"), &[("authorization", &gwen)]).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(a.json()["reason"], "guest_blocked_family");
    // ENG stays: gary's group grant never expired.
    let a = get(&gw.url("/display/ENG/Home"), &[("authorization", &gary)]).await;
    assert_eq!(a.status, StatusCode::OK);
}

#[tokio::test]
async fn guests_report_and_check_show_expiries() {
    let up = start_upstream().await;
    let mut c = TestConfig::new(&up.url());
    c.data = data_with(|d| {
        d["spaces"]["OLD"] = serde_json::json!({"guests": {"groups": {
            "acme-guests": {"permissions": ["view"], "expires": "2001-01-01T00:00:00Z"}}}});
        d["users"]["gwen"] = serde_json::json!({"groups": [
            {"group": "partner-guests", "expires": "2031-05-01T00:00:00Z"}],
            "expires": "2032-01-01T00:00:00Z", "email": "gwen@partner.example"});
    });
    let gw = start_gateway(c).await;
    let report = get(&gw.admin_url("/guests"), &[]).await.json();
    assert_eq!(report["guests"]["gwen"]["expires"], "2032-01-01T00:00:00Z");
    assert_eq!(
        report["guests"]["gwen"]["memberships"],
        serde_json::json!([{"group": "partner-guests", "expires": "2031-05-01T00:00:00Z"}])
    );
    assert_eq!(
        report["spaces"]["OLD"]["groups"]["acme-guests"]["expires"],
        "2001-01-01T00:00:00Z"
    );
    assert_eq!(
        report["guest_groups"]["partner-guests"]["members"],
        serde_json::json!(["gina", "gwen"])
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_guestgate"))
        .args(["check", "--config"])
        .arg(gw.path("guestgate.toml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(
            "warning:  spaces.OLD.guests.groups.acme-guests expired at 2001-01-01T00:00:00Z"
        ),
        "{stdout}"
    );
    assert_eq!(stdout.matches("expired at").count(), 1, "{stdout}");
}

#[tokio::test]
async fn only_guest_group_memberships_can_expire() {
    let up = start_upstream().await;
    let gw = start_gateway(TestConfig::new(&up.url())).await;
    let data = data_with(|d| {
        d["users"]["alice"]["groups"] = serde_json::json!([
            {"group": "confluence-users", "expires": "2030-01-01T00:00:00Z"}]);
    });
    std::fs::write(gw.path("data.json"), data).unwrap();
    let r = request("POST", &gw.admin_url("/reload"), &[], "").await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        r.text().contains("only guest group memberships can expire"),
        "{}",
        r.text()
    );
}

// ---------------------------------------------------------------- the write API

async fn writable_gateway(extra: &str) -> (Upstream, TestGateway) {
    let up = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin-token"), format!("{ADMIN_TOKEN}\n")).unwrap();
    let mut c = TestConfig::new(&up.url());
    c.extra_sections = extra.to_string();
    let path = write_config(dir.path(), &c);
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "[admin]\n",
        "[admin]\nwrite = true\nwrite_token_file = \"admin-token\"\n",
    );
    std::fs::write(&path, text).unwrap();
    (up, start_gateway_in(dir, &path).await)
}

async fn admin_post(gw: &TestGateway, path: &str, body: serde_json::Value) -> Answer {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    request(
        "POST",
        &gw.admin_url(path),
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        &body.to_string(),
    )
    .await
}

fn events(a: &Answer) -> Vec<String> {
    a.json()["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn write_api_is_off_by_default_and_guarded_by_its_token() {
    let up = start_upstream().await;
    let gw = start_gateway(TestConfig::new(&up.url())).await;
    let a = admin_post(
        &gw,
        "/guests/invite",
        serde_json::json!({"user": "x", "groups": ["acme-guests"]}),
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(a.json()["reason"], "admin_write_disabled");

    let (_up, gw) = writable_gateway("").await;
    let body = serde_json::json!({"user": "x", "groups": ["acme-guests"]}).to_string();
    for auth in [
        "",
        "Bearer wrong-token-0123456789",
        "Basic YWRtaW46YWRtaW4=",
    ] {
        let mut headers = vec![("content-type", "application/json")];
        if !auth.is_empty() {
            headers.push(("authorization", auth));
        }
        let a = request("POST", &gw.admin_url("/guests/invite"), &headers, &body).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{auth}");
        assert!(a.headers.contains_key("www-authenticate"));
    }
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let a = request(
        "POST",
        &gw.admin_url("/guests/invite"),
        &[("authorization", &auth)],
        &body,
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "JSON only");
    let a = request(
        "GET",
        &gw.admin_url("/guests/invite"),
        &[("authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(!gw.path("data.json.bak").exists(), "nothing was written");
}

#[tokio::test]
async fn invite_assign_revoke_remove_round_trip() {
    let (_up, gw) = writable_gateway("").await;
    let first = gw.gateway.snapshot().revision.clone();
    let original = std::fs::read_to_string(gw.path("data.json")).unwrap();
    let gwen = bearer(&token("gwen", &[]));
    let a = get(&gw.url("/display/ENG/Home"), &[("authorization", &gwen)]).await;
    assert_eq!(
        a.status,
        StatusCode::FORBIDDEN,
        "a user no declared group places is refused, never regular"
    );
    assert!(a.text().contains("user_unclassified"), "{}", a.text());

    // Invite: gwen becomes a guest of acme-guests (ENG: view, comment).
    let a = admin_post(
        &gw,
        "/guests/invite",
        serde_json::json!({"user": "gwen", "groups": ["acme-guests"],
            "display_name": "Gwen Partner", "email": "gwen@partner.example"}),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text());
    assert_eq!(events(&a), vec!["guest_joined_group", "guest_added"]);
    assert_ne!(a.json()["revision"], &*first);
    assert_eq!(a.json()["previous_revision"], &*first);
    assert_eq!(
        &*gw.gateway.snapshot().revision,
        a.json()["revision"].as_str().unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(gw.path("data.json.bak")).unwrap(),
        original,
        "the previous document is kept as a backup"
    );
    let on_disk: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(gw.path("data.json")).unwrap()).unwrap();
    assert_eq!(on_disk["users"]["gwen"]["email"], "gwen@partner.example");
    let a = get(&gw.url("/display/HR/Home"), &[("authorization", &gwen)]).await;
    assert_eq!(
        a.status,
        StatusCode::FORBIDDEN,
        "a guest sees nothing by default"
    );
    let a = get(&gw.url("/display/ENG/Home"), &[("authorization", &gwen)]).await;
    assert_eq!(a.status, StatusCode::OK);

    // Assign view-only access to HR and OPS, with an expiry.
    let until = in_secs(3600.0);
    let a = admin_post(
        &gw,
        "/guests/assign",
        serde_json::json!({"user": "gwen", "spaces": ["hr", "OPS"], "permissions": ["view"], "expires": until}),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(events(&a), vec!["access_granted", "access_granted"]);
    assert_eq!(a.json()["changes"][0]["space"], "HR");
    assert_eq!(a.json()["changes"][0]["expires"], until.as_str());
    let a = get(&gw.url("/display/HR/Home"), &[("authorization", &gwen)]).await;
    assert_eq!(a.status, StatusCode::OK);
    let a = request(
        "POST",
        &gw.url("/rest/api/content/201/child/comment"),
        &[
            ("authorization", &gwen),
            ("content-type", "application/json"),
        ],
        "{}",
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "view-only");
    assert_eq!(a.json()["reason"], "missing_permission_comment");

    // Widen HR.
    let a = admin_post(
        &gw,
        "/guests/assign",
        serde_json::json!({"user": "gwen", "spaces": ["HR"], "permissions": ["view", "comment"]}),
    )
    .await;
    assert_eq!(events(&a), vec!["permissions_widened"]);
    let a = request(
        "POST",
        &gw.url("/rest/api/content/201/child/comment"),
        &[
            ("authorization", &gwen),
            ("content-type", "application/json"),
        ],
        "{}",
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);

    // Revoke HR; revoking it again finds nothing.
    let a = admin_post(
        &gw,
        "/guests/revoke",
        serde_json::json!({"user": "gwen", "spaces": ["HR"]}),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(events(&a), vec!["access_revoked"]);
    let a = get(&gw.url("/display/HR/Home"), &[("authorization", &gwen)]).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let a = admin_post(
        &gw,
        "/guests/revoke",
        serde_json::json!({"user": "gwen", "spaces": ["HR"]}),
    )
    .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);

    // The report shows what is left.
    let report = get(&gw.admin_url("/guests"), &[]).await.json();
    assert_eq!(report["guests"]["gwen"]["spaces"][0]["space"], "OPS");

    // Remove the guest: the user and every grant of theirs go.
    let a = admin_post(&gw, "/guests/remove", serde_json::json!({"user": "gwen"})).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let mut kinds = events(&a);
    kinds.sort();
    assert_eq!(
        kinds,
        vec!["access_revoked", "guest_removed", "membership_revoked"]
    );
    let report = get(&gw.admin_url("/guests"), &[]).await.json();
    assert!(report["guests"].get("gwen").is_none(), "{report}");
    let a = admin_post(&gw, "/guests/remove", serde_json::json!({"user": "gwen"})).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn refused_writes_change_nothing() {
    let (_up, gw) = writable_gateway("").await;
    let revision = gw.gateway.snapshot().revision.clone();
    let before = std::fs::read_to_string(gw.path("data.json")).unwrap();
    let cases = [
        (
            "/guests/assign",
            serde_json::json!({"group": "acme-guests", "spaces": ["HR"], "permissions": ["view", "admin"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "`admin` can never be granted",
        ),
        (
            "/guests/assign",
            serde_json::json!({"group": "confluence-users", "spaces": ["HR"], "permissions": ["view"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "is a regular group",
        ),
        (
            "/guests/assign",
            serde_json::json!({"group": "acme-guests", "spaces": ["A", "B", "C", "D", "E", "F"], "permissions": ["view"]}),
            StatusCode::BAD_REQUEST,
            "1 to 5 spaces",
        ),
        (
            "/guests/assign",
            serde_json::json!({"group": "acme-guests", "user": "gary", "spaces": ["HR"], "permissions": ["view"]}),
            StatusCode::BAD_REQUEST,
            "exactly one of",
        ),
        (
            "/guests/assign",
            serde_json::json!({"group": "acme-guests", "spaces": ["HR"], "permissions": ["view"], "expires": "2001-01-01T00:00:00Z"}),
            StatusCode::BAD_REQUEST,
            "already past",
        ),
        (
            "/guests/assign",
            serde_json::json!({"group": "acme-guests", "spaces": ["HR"], "permissions": ["view"], "expires": "next week"}),
            StatusCode::BAD_REQUEST,
            "not an RFC 3339 time",
        ),
        (
            "/guests/assign",
            serde_json::json!({"group": "acme-guests", "spaces": ["HR"], "permissions": []}),
            StatusCode::BAD_REQUEST,
            "at least one permission",
        ),
        (
            "/guests/invite",
            serde_json::json!({"user": "eve", "groups": ["confluence-users"]}),
            StatusCode::BAD_REQUEST,
            "not a guest group",
        ),
        (
            "/guests/invite",
            serde_json::json!({"user": "alice", "groups": ["acme-guests"]}),
            StatusCode::CONFLICT,
            "is a regular user",
        ),
        (
            "/guests/invite",
            serde_json::json!({"user": "eve", "groups": ["acme-guests"], "role": "admin"}),
            StatusCode::BAD_REQUEST,
            "unknown field",
        ),
        (
            "/guests/remove",
            serde_json::json!({"user": "alice"}),
            StatusCode::CONFLICT,
            "is a regular user",
        ),
        (
            "/guests/remove",
            serde_json::json!({"user": "nobody"}),
            StatusCode::NOT_FOUND,
            "no guest",
        ),
    ];
    for (path, body, status, message) in cases {
        let a = admin_post(&gw, path, body.clone()).await;
        assert_eq!(a.status, status, "{path} {body}: {}", a.text());
        assert!(a.text().contains(message), "{path} {body}: {}", a.text());
    }
    assert_eq!(
        std::fs::read_to_string(gw.path("data.json")).unwrap(),
        before
    );
    assert_eq!(gw.gateway.snapshot().revision, revision);
    assert!(!gw.path("data.json.bak").exists());
}

#[tokio::test]
async fn concurrent_writes_are_serialised_and_none_is_lost() {
    let (_up, gw) = writable_gateway("").await;
    let gw = Arc::new(gw);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let gw = gw.clone();
        tasks.push(tokio::spawn(async move {
            admin_post(
                &gw,
                "/guests/assign",
                serde_json::json!({"group": "acme-guests", "spaces": [format!("S{i}")], "permissions": ["view"]}),
            )
            .await
            .status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    let on_disk: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(gw.path("data.json")).unwrap()).unwrap();
    for i in 0..8 {
        assert_eq!(
            on_disk["spaces"][format!("S{i}")]["guests"]["groups"]["acme-guests"],
            serde_json::json!(["view"])
        );
    }
    let gary = bearer(&token("gary", &[]));
    let a = get(&gw.url("/display/S7/Home"), &[("authorization", &gary)]).await;
    assert_eq!(a.status, StatusCode::OK);
}

// ---------------------------------------------------------------- notifications

/// A webhook receiver that refuses its first `fail_first` deliveries with 503.
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<serde_json::Value>>>,
    attempts: Arc<Mutex<usize>>,
}

async fn start_receiver(fail_first: usize) -> Receiver {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/guests", listener.local_addr().unwrap());
    let got = Arc::new(Mutex::new(Vec::new()));
    let attempts = Arc::new(Mutex::new(0usize));
    let (g, a) = (got.clone(), attempts.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (g, a) = (g.clone(), a.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: http::Request<Incoming>| {
                    let (g, a) = (g.clone(), a.clone());
                    async move {
                        let auth = req.headers().get("authorization").cloned();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let n = {
                            let mut n = a.lock().unwrap();
                            *n += 1;
                            *n
                        };
                        let status = if n <= fail_first {
                            StatusCode::SERVICE_UNAVAILABLE
                        } else {
                            let mut event: serde_json::Value =
                                serde_json::from_slice(&body).unwrap();
                            event["_auth"] =
                                serde_json::json!(auth.map(|v| v.to_str().unwrap().to_string()));
                            g.lock().unwrap().push(event);
                            StatusCode::NO_CONTENT
                        };
                        Ok::<_, Infallible>(
                            http::Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::new()))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Receiver { url, got, attempts }
}

impl Receiver {
    async fn wait_for(&self, n: usize) -> Vec<serde_json::Value> {
        for _ in 0..100 {
            let got = self.got.lock().unwrap().clone();
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("webhook got {:?}", self.got.lock().unwrap());
    }
}

#[tokio::test]
async fn access_changes_reach_the_webhook_with_retries() {
    let hook = start_receiver(2).await;
    let (_up, gw) = writable_gateway(&format!(
        "[notify]\nwebhook_url = \"{}\"\ninitial_backoff_ms = 20\nmax_attempts = 5\n",
        hook.url
    ))
    .await;
    let a = admin_post(
        &gw,
        "/guests/assign",
        serde_json::json!({"group": "acme-guests", "spaces": ["HR"], "permissions": ["view"]}),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let got = hook.wait_for(1).await;
    assert_eq!(
        *hook.attempts.lock().unwrap(),
        3,
        "two refusals, then delivered"
    );
    let e = &got[0];
    assert_eq!(e["event"], "access_granted");
    assert_eq!(e["space"], "HR");
    assert_eq!(
        e["principal"],
        serde_json::json!({"type": "group", "name": "acme-guests"})
    );
    assert_eq!(e["permissions"], serde_json::json!(["view"]));
    assert_eq!(e["revision"], a.json()["revision"]);
    assert_eq!(
        e["text"],
        "guest group acme-guests can now view in space HR"
    );
    assert_eq!(
        e["id"],
        a.json()["changes"][0]["id"],
        "the API answer and the event agree"
    );

    // A change made by editing the file and reloading is announced too.
    let data = data_with(|d| {
        d["spaces"]["ENG"]["guests"]["groups"]["acme-guests"] = serde_json::json!(["view"]);
        d["spaces"]["HR"] = serde_json::json!({"guests": {"groups": {"acme-guests": ["view"]}}});
    });
    std::fs::write(gw.path("data.json"), data).unwrap();
    assert_eq!(
        request("POST", &gw.admin_url("/reload"), &[], "")
            .await
            .status,
        StatusCode::OK
    );
    let got = hook.wait_for(2).await;
    assert_eq!(got[1]["event"], "permissions_narrowed");
    assert_eq!(
        got[1]["previous_permissions"],
        serde_json::json!(["comment", "view"])
    );

    let m = get(&gw.admin_url("/metrics"), &[]).await.text();
    assert!(
        m.contains("guestgate_notifications_total{result=\"delivered\"} 2"),
        "{m}"
    );
    assert!(m.contains("guestgate_access_events_total 2"), "{m}");
}

#[tokio::test]
async fn expiry_is_announced_when_it_happens() {
    let hook = start_receiver(0).await;
    let up = start_upstream().await;
    let soon = in_secs(1.5);
    let mut c = TestConfig::new(&up.url());
    c.extra_sections = format!(
        "[notify]\nwebhook_url = \"{}\"\ninitial_backoff_ms = 20\nauthorization_env = \"GUESTGATE_TEST_UNSET_VARIABLE\"\n",
        hook.url
    );
    // An unset variable is a config error, named with its key.
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &c);
    let err = guestgate::config::Config::load(&path)
        .unwrap_err()
        .to_string();
    assert!(err.contains("notify.authorization_env"), "{err}");

    c.extra_sections = format!("[notify]\nwebhook_url = \"{}\"\n", hook.url);
    c.data = data_with(|d| {
        d["spaces"]["HR"] = serde_json::json!({"guests": {"users": {
            "gary": {"permissions": ["view", "edit"], "expires": soon}}}});
    });
    let _gw = start_gateway(c).await;
    sleep_past(&soon).await;
    let got = hook.wait_for(1).await;
    assert_eq!(got[0]["event"], "access_expired");
    assert_eq!(
        got[0]["principal"],
        serde_json::json!({"type": "user", "name": "gary"})
    );
    assert_eq!(got[0]["space"], "HR");
    assert_eq!(got[0]["expires"], soon.as_str());
    assert!(got[0]["_auth"].is_null());
}

#[tokio::test]
async fn a_dead_webhook_never_slows_requests() {
    // Nothing listens on this port: every delivery fails and is retried in the background.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", closed.local_addr().unwrap());
    drop(closed);
    let (_up, gw) = writable_gateway(&format!(
        "[notify]\nwebhook_url = \"{url}\"\ninitial_backoff_ms = 5000\nqueue = 2\n"
    ))
    .await;
    for i in 0..4 {
        let a = admin_post(
            &gw,
            "/guests/assign",
            serde_json::json!({"group": "acme-guests", "spaces": [format!("Q{i}")], "permissions": ["view"]}),
        )
        .await;
        assert_eq!(a.status, StatusCode::OK);
    }
    let started = std::time::Instant::now();
    let gary = bearer(&token("gary", &[]));
    let a = get(&gw.url("/display/Q3/Home"), &[("authorization", &gary)]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(started.elapsed() < Duration::from_secs(4));
    // One event in delivery, two queued, the rest dropped and counted.
    let mut dropped = String::new();
    for _ in 0..50 {
        let m = get(&gw.admin_url("/metrics"), &[]).await.text();
        if let Some(line) = m
            .lines()
            .find(|l| l.starts_with("guestgate_notifications_total{result=\"dropped\"}"))
        {
            dropped = line.to_string();
            if !line.ends_with(" 0") {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        dropped,
        "guestgate_notifications_total{result=\"dropped\"} 1"
    );
}

// ---------------------------------------------------------------- the Guest access page

#[tokio::test]
async fn guests_page_for_browsers_escapes_everything() {
    let up = start_upstream().await;
    let mut c = TestConfig::new(&up.url());
    c.data = data_with(|d| {
        d["users"]["gary"]["display_name"] = serde_json::json!("<script>alert(1)</script>");
        d["spaces"]["OLD"] = serde_json::json!({"guests": {"groups": {
            "acme-guests": {"permissions": ["view"], "expires": "2001-01-01T00:00:00Z"}}}});
    });
    let gw = start_gateway(c).await;
    let page = get(
        &gw.admin_url("/guests"),
        &[(
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        )],
    )
    .await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
    let html = page.text();
    assert!(!html.contains("<script>"), "{html}");
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(html.contains("2001-01-01T00:00:00Z (expired)"));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no external assets"
    );
    let json = get(&gw.admin_url("/guests"), &[("accept", "application/json")]).await;
    assert!(json.json()["guests"].is_object());
}

/// Debian's Chromium, headless, with the flags this sandbox needs (its background
/// networking is refused here and would only slow it down).
fn chromium(args: &[String]) -> Option<std::process::Output> {
    let bin = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())?;
    let profile = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .output()
        .unwrap();
    Some(out)
}

#[tokio::test]
async fn guests_page_renders_in_chromium() {
    let up = start_upstream().await;
    let mut c = TestConfig::new(&up.url());
    c.data = data_with(|d| {
        d["users"]["gwen"] = serde_json::json!({"groups": [
            {"group": "partner-guests", "expires": "2031-05-01T00:00:00Z"}],
            "display_name": "Gwen Partner", "email": "gwen@partner.example"});
        d["spaces"]["ENG"]["name"] = serde_json::json!("Engineering");
        d["spaces"]["HR"] = serde_json::json!({"guests": {"users": {
            "gwen": {"permissions": ["view"], "expires": "2031-01-31T18:00:00Z"}}}});
        d["spaces"]["OLD"] = serde_json::json!({"guests": {"groups": {
            "acme-guests": {"permissions": ["view"], "expires": "2001-01-01T00:00:00Z"}}}});
    });
    let gw = start_gateway(c).await;
    let url = gw.admin_url("/guests");
    let shots = tempfile::tempdir().unwrap();
    let shot = std::env::var("GUESTGATE_SCREENSHOT_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| shots.path().to_path_buf())
        .join("admin-guests.png");
    let args_dom = vec!["--dump-dom".to_string(), url.clone()];
    let args_shot = vec![
        format!("--screenshot={}", shot.display()),
        "--window-size=1100,900".to_string(),
        url.clone(),
    ];
    let (dom, png) =
        tokio::task::spawn_blocking(move || (chromium(&args_dom), chromium(&args_shot)))
            .await
            .unwrap();
    let (Some(dom), Some(png)) = (dom, png) else {
        crate::support::skip(
            "GUESTGATE_REQUIRE_BROWSER",
            "guests_page_renders_in_chromium",
            "no chromium (apt-get install chromium)",
        );
        return;
    };
    let dom = String::from_utf8_lossy(&dom.stdout).to_string();
    // What the browser built, row by row: the spaces table lists each grant.
    let rows: Vec<String> = dom
        .split("<tr>")
        .skip(1)
        .map(|row| {
            let row = row.split("</tr>").next().unwrap_or("");
            let mut text = String::new();
            let mut in_tag = false;
            for ch in row.chars() {
                match ch {
                    '<' => in_tag = true,
                    '>' => {
                        in_tag = false;
                        text.push(' ');
                    }
                    c if !in_tag => text.push(c),
                    _ => {}
                }
            }
            text.split_whitespace().collect::<Vec<_>>().join(" ")
        })
        .collect();
    for want in [
        "ENG Engineering acme-guests (group) view comment never",
        "ENG Engineering gina (guest) view edit never",
        "HR gwen (guest) view 2031-01-31T18:00:00Z",
        "OLD acme-guests (group) view 2001-01-01T00:00:00Z (expired)",
        "gwen GUEST Gwen Partner gwen@partner.example partner-guests until 2031-05-01T00:00:00Z HR view until 2031-01-31T18:00:00Z never",
        "partner-guests gina, gwen DOCS view",
    ] {
        assert!(
            rows.iter().any(|r| r == want),
            "no row {want:?} in {rows:#?}"
        );
    }
    assert!(dom.contains("<h1>Guest access</h1>"), "{dom}");
    assert!(
        png.status.success(),
        "{}",
        String::from_utf8_lossy(&png.stderr)
    );
    let bytes = std::fs::read(&shot).unwrap();
    assert!(
        bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000,
        "a real screenshot"
    );
}

#[tokio::test]
async fn a_write_that_cannot_be_stored_changes_nothing() {
    let (_up, gw) = writable_gateway("").await;
    let revision = gw.gateway.snapshot().revision.clone();
    let before = std::fs::read_to_string(gw.path("data.json")).unwrap();
    // The backup cannot be written where a folder stands in its way.
    std::fs::create_dir(gw.path("data.json.bak")).unwrap();
    std::fs::write(gw.path("data.json.bak").join("keep"), "x").unwrap();
    let a = admin_post(
        &gw,
        "/guests/assign",
        serde_json::json!({"group": "acme-guests", "spaces": ["HR"], "permissions": ["view"]}),
    )
    .await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", a.text());
    assert_eq!(a.json()["reason"], "data_not_written");
    assert_eq!(
        std::fs::read_to_string(gw.path("data.json")).unwrap(),
        before
    );
    assert_eq!(gw.gateway.snapshot().revision, revision);
    let gary = bearer(&token("gary", &[]));
    let a = get(&gw.url("/display/HR/Home"), &[("authorization", &gary)]).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let leftovers: Vec<_> = std::fs::read_dir(gw.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// Two replicas on one data file: concurrent revocations through either are all kept
/// (each write re-reads the file under an exclusive lock), and a write naming a revision
/// the file no longer holds is refused with the current one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_file_lose_no_write() {
    let (_up, first) = writable_gateway("").await;
    let config = guestgate::config::Config::load(&first.path("guestgate.toml")).unwrap();
    let gateway = std::sync::Arc::new(guestgate::gateway::Gateway::new(config).unwrap());
    let running = guestgate::server::start(gateway.clone()).await.unwrap();
    let second_admin = |path: &str| format!("http://{}{path}", running.admin_addr);
    let post = |url: String, body: serde_json::Value| async move {
        let auth = format!("Bearer {ADMIN_TOKEN}");
        request(
            "POST",
            &url,
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            &body.to_string(),
        )
        .await
    };
    let grants = || {
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(first.path("data.json")).unwrap())
                .unwrap();
        (
            doc["spaces"]["ENG"]["guests"]["groups"]
                .get("acme-guests")
                .is_some(),
            doc["spaces"]["ENG"]["guests"]["users"]
                .get("gina")
                .is_some(),
        )
    };
    for round in 0..10 {
        for body in [
            serde_json::json!({"group": "acme-guests", "spaces": ["ENG"], "permissions": ["view"]}),
            serde_json::json!({"user": "gina", "spaces": ["ENG"], "permissions": ["view"]}),
        ] {
            let a = post(first.admin_url("/guests/assign"), body).await;
            assert!(a.status.is_success(), "round {round}: {}", a.text());
        }
        assert_eq!(grants(), (true, true));
        let (a, b) = tokio::join!(
            post(
                first.admin_url("/guests/revoke"),
                serde_json::json!({"group": "acme-guests", "spaces": ["ENG"]})
            ),
            post(
                second_admin("/guests/revoke"),
                serde_json::json!({"user": "gina", "spaces": ["ENG"]})
            ),
        );
        assert!(a.status.is_success(), "round {round}: {}", a.text());
        assert!(b.status.is_success(), "round {round}: {}", b.text());
        assert_eq!(
            grants(),
            (false, false),
            "round {round}: both revocations are kept"
        );
    }

    // If-Match: the revision read must still be the file's. (Without a file watch here,
    // the first replica learns of the second's last write by a reload.)
    first.gateway.store.reload().await.unwrap();
    let guests = get(&first.admin_url("/guests"), &[]).await;
    let etag = guests
        .headers
        .get("etag")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let body = serde_json::json!({"user": "gina", "spaces": ["ENG"], "permissions": ["view"]});
    let stale = request(
        "POST",
        &first.admin_url("/guests/assign"),
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
            ("if-match", "\"0000000000ff\""),
        ],
        &body.to_string(),
    )
    .await;
    assert_eq!(
        stale.status,
        StatusCode::PRECONDITION_FAILED,
        "{}",
        stale.text()
    );
    assert_eq!(stale.json()["reason"], "stale_revision");
    assert_eq!(
        format!("\"{}\"", stale.json()["revision"].as_str().unwrap()),
        etag
    );
    let fresh = request(
        "POST",
        &first.admin_url("/guests/assign"),
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
            ("if-match", &etag),
        ],
        &body.to_string(),
    )
    .await;
    assert!(fresh.status.is_success(), "{}", fresh.text());
    assert!(fresh.headers.get("etag").is_some());
    running.shutdown();
}

/// Revoke, grant again, revoke again: the same change twice is two occurrences, and a
/// receiver that drops duplicate ids must not drop the second.
#[tokio::test]
async fn event_ids_identify_occurrences() {
    let (_up, gw) = writable_gateway("").await;
    let grant = serde_json::json!({"user": "gina", "spaces": ["DOCS"], "permissions": ["view"]});
    let revoke = serde_json::json!({"user": "gina", "spaces": ["DOCS"]});
    let mut ids = Vec::new();
    for body in [grant.clone(), revoke.clone(), grant, revoke] {
        let a = admin_post(
            &gw,
            if body.get("permissions").is_some() {
                "/guests/assign"
            } else {
                "/guests/revoke"
            },
            body,
        )
        .await;
        assert!(a.status.is_success(), "{}", a.text());
        for e in a.json()["changes"].as_array().unwrap() {
            ids.push(e["id"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(ids.len(), 4, "{ids:?}");
    let distinct: std::collections::BTreeSet<_> = ids.iter().collect();
    assert_eq!(
        distinct.len(),
        4,
        "every occurrence has its own id: {ids:?}"
    );
}

// ---------------------------------------------------------------- replicas on PostgreSQL

/// A writable replica whose data document lives in `pg` (seeded from its data file when
/// the store is empty).
async fn stored_replica(pg: &Postgres, extra: &str) -> (Upstream, TestGateway) {
    let (up, gw) = writable_gateway(&format!(
        "[store]\nurl = \"{}\"\npoll_interval_secs = 1\ntimeout_secs = 2\n\n{extra}",
        pg.url()
    ))
    .await;
    wait_until(Duration::from_secs(10), "the replica is ready", || async {
        get(&gw.admin_url("/readyz"), &[]).await.status == StatusCode::OK
    })
    .await;
    (up, gw)
}

/// Polls `check` every 10 ms until it holds; returns how long that took.
async fn wait_until<F, Fut>(limit: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if check().await {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what}: not within {limit:?}");
}

async fn status_as(gw: &TestGateway, user: &str, groups: &[&str], path: &str) -> StatusCode {
    let auth = bearer(&token(user, groups));
    get(&gw.url(path), &[("authorization", &auth)]).await.status
}

/// Two replicas on one PostgreSQL: a change through either is enforced by both within a
/// second (LISTEN/NOTIFY), concurrent changes are all kept, a stale If-Match is refused,
/// and each access-change event reaches the webhook once, not once per replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_postgres_enforce_a_change_through_either_within_a_second() {
    let Some(pg) = start_postgres("two_replicas_on_postgres") else {
        return;
    };
    let hook = start_receiver(0).await;
    let notify = format!("[notify]\nwebhook_url = \"{}\"\n", hook.url);
    let (_up1, a) = stored_replica(&pg, &notify).await;
    let (_up2, b) = stored_replica(&pg, &notify).await;
    for gw in [&a, &b] {
        assert_eq!(
            status_as(gw, "gina", &["partner-guests"], "/display/ENG/Home").await,
            StatusCode::OK,
            "seeded from the data file"
        );
    }

    // Revoke through b: a refuses gina within a second.
    let r = admin_post(
        &b,
        "/guests/revoke",
        serde_json::json!({"user": "gina", "spaces": ["ENG"]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        status_as(&b, "gina", &["partner-guests"], "/display/ENG/Home").await,
        StatusCode::FORBIDDEN
    );
    let took = wait_until(
        Duration::from_secs(1),
        "a enforces b's revocation",
        || async {
            status_as(&a, "gina", &["partner-guests"], "/display/ENG/Home").await
                == StatusCode::FORBIDDEN
        },
    )
    .await;
    eprintln!("revocation through b enforced by a after {took:?}");

    // Grant through a: b lets gary's group into HR within a second.
    let g = admin_post(
        &a,
        "/guests/assign",
        serde_json::json!({"group": "acme-guests", "spaces": ["HR"], "permissions": ["view"]}),
    )
    .await;
    assert_eq!(g.status, StatusCode::OK, "{}", g.text());
    wait_until(Duration::from_secs(1), "b enforces a's grant", || async {
        status_as(&b, "gary", &["acme-guests"], "/display/HR/Home").await == StatusCode::OK
    })
    .await;

    // Concurrent revocations through both replicas, five rounds: none is lost.
    for round in 0..5 {
        for body in [
            serde_json::json!({"group": "acme-guests", "spaces": ["ENG"], "permissions": ["view"]}),
            serde_json::json!({"user": "gina", "spaces": ["ENG"], "permissions": ["view"]}),
        ] {
            let r = admin_post(&a, "/guests/assign", body).await;
            assert!(r.status.is_success(), "round {round}: {}", r.text());
        }
        let (x, y) = tokio::join!(
            admin_post(
                &a,
                "/guests/revoke",
                serde_json::json!({"group": "acme-guests", "spaces": ["ENG"]})
            ),
            admin_post(
                &b,
                "/guests/revoke",
                serde_json::json!({"user": "gina", "spaces": ["ENG"]})
            ),
        );
        assert_eq!(x.status, StatusCode::OK, "round {round}: {}", x.text());
        assert_eq!(y.status, StatusCode::OK, "round {round}: {}", y.text());
        for gw in [&a, &b] {
            wait_until(Duration::from_secs(1), "both revocations hold", || async {
                status_as(gw, "gina", &["partner-guests"], "/display/ENG/Home").await
                    == StatusCode::FORBIDDEN
                    && status_as(gw, "gary", &["acme-guests"], "/display/ENG/Home").await
                        == StatusCode::FORBIDDEN
            })
            .await;
        }
    }

    // If-Match: a revision that is no longer the store's is refused with the current one.
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let stale = request(
        "POST",
        &a.admin_url("/guests/assign"),
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
            ("if-match", "\"0000000000ff\""),
        ],
        &serde_json::json!({"user": "gina", "spaces": ["ENG"], "permissions": ["view"]})
            .to_string(),
    )
    .await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
    let current = stale.json()["revision"].as_str().unwrap().to_string();
    let guests = get(&b.admin_url("/guests"), &[]).await;
    assert_eq!(
        guests.header("etag"),
        Some(format!("\"{current}\"").as_str()),
        "both replicas serve the store's revision"
    );

    // One delivery per event although both replicas saw every change.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got = hook.got.lock().unwrap().clone();
    assert!(got.len() >= 12, "{} events", got.len());
    let mut ids: Vec<&str> = got.iter().map(|e| e["id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    let all = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), all, "every event was delivered once");
    let metrics = get(&a.admin_url("/metrics"), &[]).await.text()
        + &get(&b.admin_url("/metrics"), &[]).await.text();
    assert!(
        metrics.contains("guestgate_notifications_total{result=\"sent_by_another_replica\"} "),
        "{metrics}"
    );
}

/// A replica that loses the database keeps enforcing the last document it read, says so
/// on /readyz and /metrics, refuses writes with 503, and catches up when it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_loses_postgres_keeps_its_last_revision_and_says_so() {
    let Some(pg) = start_postgres("a_replica_that_loses_postgres") else {
        return;
    };
    let (_up, gw) = stored_replica(&pg, "").await;
    let revision = get(&gw.admin_url("/readyz"), &[]).await.text();
    pg.stop();
    wait_until(
        Duration::from_secs(5),
        "/readyz says the store is gone",
        || async {
            get(&gw.admin_url("/readyz"), &[])
                .await
                .text()
                .contains("store unreachable")
        },
    )
    .await;
    let ready = get(&gw.admin_url("/readyz"), &[]).await;
    assert_eq!(
        ready.status,
        StatusCode::OK,
        "still serving: {}",
        ready.text()
    );
    assert!(
        ready.text().starts_with(revision.trim()),
        "{}",
        ready.text()
    );
    assert!(
        get(&gw.admin_url("/metrics"), &[])
            .await
            .text()
            .contains("guestgate_store_connected 0")
    );
    assert_eq!(
        status_as(&gw, "gina", &["partner-guests"], "/display/ENG/Home").await,
        StatusCode::OK
    );
    assert_eq!(
        status_as(&gw, "gary", &["acme-guests"], "/display/HR/Home").await,
        StatusCode::FORBIDDEN
    );
    let w = admin_post(
        &gw,
        "/guests/revoke",
        serde_json::json!({"user": "gina", "spaces": ["ENG"]}),
    )
    .await;
    assert_eq!(w.status, StatusCode::SERVICE_UNAVAILABLE, "{}", w.text());
    assert_eq!(w.json()["reason"], "store_unavailable");
    assert_eq!(w.header("retry-after"), Some("5"));
    assert_eq!(
        status_as(&gw, "gina", &["partner-guests"], "/display/ENG/Home").await,
        StatusCode::OK,
        "nothing changed"
    );

    pg.start();
    wait_until(Duration::from_secs(15), "back on the store", || async {
        get(&gw.admin_url("/readyz"), &[]).await.text() == revision
    })
    .await;
    let w = admin_post(
        &gw,
        "/guests/revoke",
        serde_json::json!({"user": "gina", "spaces": ["ENG"]}),
    )
    .await;
    assert_eq!(w.status, StatusCode::OK, "{}", w.text());
    assert_eq!(
        status_as(&gw, "gina", &["partner-guests"], "/display/ENG/Home").await,
        StatusCode::FORBIDDEN
    );
}

/// A hand edit that broke the data file blocks widening writes (409), not revocations: a
/// revoke applies to the serving revision, which replaces the broken file (kept as
/// `data.json.bak`), so the revocation is enforced at once and survives the next reload.
#[tokio::test]
async fn a_revocation_goes_through_when_an_unrelated_part_of_the_file_is_invalid() {
    let (_up, gw) = writable_gateway("").await;
    let broken = std::fs::read_to_string(gw.path("data.json"))
        .unwrap()
        .replace("[\"view\"]", "[\"fly\"]");
    assert!(broken.contains("fly"));
    std::fs::write(gw.path("data.json"), &broken).unwrap();

    let widen = admin_post(
        &gw,
        "/guests/assign",
        serde_json::json!({"user": "gina", "spaces": ["HR"], "permissions": ["view"]}),
    )
    .await;
    assert_eq!(widen.status, StatusCode::CONFLICT, "{}", widen.text());
    assert!(widen.text().contains("revoke and remove still work"));

    let revoke = admin_post(
        &gw,
        "/guests/revoke",
        serde_json::json!({"user": "gina", "spaces": ["ENG"]}),
    )
    .await;
    assert_eq!(revoke.status, StatusCode::OK, "{}", revoke.text());
    assert_eq!(
        status_as(&gw, "gina", &["partner-guests"], "/display/ENG/Home").await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        std::fs::read_to_string(gw.path("data.json.bak")).unwrap(),
        broken
    );
    // The file is valid again and holds the revocation: a reload keeps it.
    gw.gateway.store.reload().await.unwrap();
    assert_eq!(
        status_as(&gw, "gina", &["partner-guests"], "/display/ENG/Home").await,
        StatusCode::FORBIDDEN
    );
}

/// A stored document that does not build here (a bad hand edit in the database): the
/// replica keeps its last good revision, refuses a narrowing write that would put that
/// older document back over the stored one (409), and follows the next good generation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_stored_document_is_not_served_and_not_overwritten() {
    let Some(pg) = start_postgres("an_invalid_stored_document") else {
        return;
    };
    let (_up, gw) = stored_replica(&pg, "").await;
    let (client, connection) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let write = |generation: i64, document: String| {
        let client = &client;
        async move {
            client
                .execute(
                    "UPDATE guestgate_data SET generation = $1, document = $2 WHERE id",
                    &[&generation, &document],
                )
                .await
                .unwrap();
            client
                .execute(
                    "SELECT pg_notify('guestgate_data', $1)",
                    &[&generation.to_string()],
                )
                .await
                .unwrap();
        }
    };
    let mut doc: serde_json::Value = serde_json::from_str(TEST_DATA).unwrap();
    // Generation 2: gina's ENG grant gone, and an unknown permission elsewhere.
    doc["spaces"]["ENG"]["guests"]["users"] = serde_json::json!({});
    let mut broken = doc.clone();
    broken["spaces"]["DOCS"]["guests"]["groups"]["partner-guests"] = serde_json::json!(["fly"]);
    write(2, broken.to_string()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        status_as(&gw, "gina", &["partner-guests"], "/display/ENG/Home").await,
        StatusCode::OK,
        "generation 2 does not build: generation 1 keeps serving"
    );
    let r = admin_post(
        &gw,
        "/guests/revoke",
        serde_json::json!({"group": "acme-guests", "spaces": ["ENG"]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
    assert!(
        r.text().contains("not the document this replica serves"),
        "{}",
        r.text()
    );
    // Generation 3, valid: followed within a second.
    write(3, doc.to_string()).await;
    wait_until(
        Duration::from_secs(1),
        "generation 3 is enforced",
        || async {
            status_as(&gw, "gina", &["partner-guests"], "/display/ENG/Home").await
                == StatusCode::FORBIDDEN
        },
    )
    .await;
}
