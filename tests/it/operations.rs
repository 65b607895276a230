//! Operations: reload storms, file watching, dry runs, keys from an identity provider.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::*;
use http::{Response, StatusCode};

/// 100 reloads, a third of them invalid, while a client keeps sending requests: no request
/// fails, and the revision serving at the end is the last valid one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_storm_loses_no_request() {
    let up = start_upstream().await;
    let gw = start_gateway(TestConfig::new(&up.url())).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let client = {
        let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
        let url = gw.url("/display/ENG/Home");
        let auth = bearer(&token("gary", &[]));
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let a = get(&url, &[("authorization", &auth)]).await;
                sent.fetch_add(1, Ordering::Relaxed);
                if a.status != StatusCode::OK {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let mut data: serde_json::Value = serde_json::from_str(TEST_DATA).unwrap();
    let mut last_valid = gw.gateway.snapshot().revision.to_string();
    for i in 0..100 {
        let valid = i % 3 != 2;
        data["spaces"]["OPS"] = if valid {
            serde_json::json!({"name": format!("Ops {i}"), "guests": {"groups": {"acme-guests": ["view"]}}})
        } else {
            serde_json::json!({"guests": {"groups": {"acme-guests": ["admin"]}}})
        };
        std::fs::write(gw.path("data.json"), data.to_string()).unwrap();
        let r = request("POST", &gw.admin_url("/reload"), &[], "").await;
        if valid {
            assert_eq!(r.status, StatusCode::OK, "reload {i}");
            last_valid = r.json()["revision"].as_str().unwrap().to_string();
        } else {
            assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "reload {i}");
        }
    }
    stop.store(true, Ordering::Relaxed);
    client.await.unwrap();
    assert!(sent.load(Ordering::Relaxed) > 0);
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "of {} requests",
        sent.load(Ordering::Relaxed)
    );
    assert_eq!(&*gw.gateway.snapshot().revision, last_valid.as_str());
    let m = get(&gw.admin_url("/metrics"), &[]).await.text();
    assert!(
        m.contains("guestgate_reloads_total{result=\"success\"} 67"),
        "{m}"
    );
    assert!(
        m.contains("guestgate_reloads_total{result=\"failure\"} 33"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_files_are_picked_up_by_the_watch() {
    let up = start_upstream().await;
    let gw = start_gateway(TestConfig::new(&up.url())).await;
    let _watch = guestgate::snapshot::watch::watch(gw.gateway.store.clone()).unwrap();
    let gary = bearer(&token("gary", &[]));
    assert_eq!(
        get(&gw.url("/display/HR/x"), &[("authorization", &gary)])
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let mut data: serde_json::Value = serde_json::from_str(TEST_DATA).unwrap();
    data["spaces"]["HR"] = serde_json::json!({"guests": {"groups": {"acme-guests": ["view"]}}});
    // Replace the file the way editors and ConfigMaps do: write aside, rename over.
    std::fs::write(gw.path("data.json.tmp"), data.to_string()).unwrap();
    std::fs::rename(gw.path("data.json.tmp"), gw.path("data.json")).unwrap();
    let mut status = StatusCode::FORBIDDEN;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        status = get(&gw.url("/display/HR/x"), &[("authorization", &gary)])
            .await
            .status;
        if status == StatusCode::OK {
            break;
        }
    }
    assert_eq!(status, StatusCode::OK, "the watch reloaded the new grant");

    // Reading the files (as every reload does) is not a change: the watch goes quiet.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let reloads = |m: &str| -> u64 {
        m.lines()
            .find(|l| l.starts_with("guestgate_reloads_total{result=\"success\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap()
    };
    let settled = reloads(&get(&gw.admin_url("/metrics"), &[]).await.text());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = reloads(&get(&gw.admin_url("/metrics"), &[]).await.text());
    assert_eq!(later, settled, "the watch kept reloading unchanged files");
}

#[tokio::test]
async fn dry_run_logs_denials_without_enforcing_them() {
    let up = start_upstream().await;
    let mut c = TestConfig::new(&up.url());
    c.policy_extra = "dry_run = true".into();
    c.log_decisions = "decisions.log".into();
    let gw = start_gateway(c).await;
    let gary = bearer(&token("gary", &[]));
    let a = get(&gw.url("/display/HR/x"), &[("authorization", &gary)]).await;
    assert_eq!(a.status, StatusCode::OK, "not enforced");
    assert_eq!(up.forwarded()[0].header("x-guestgate-guest"), Some("true"));
    // Identity is still required: dry run is about the policy, not about authentication.
    assert_eq!(
        get(&gw.url("/display/HR/x"), &[]).await.status,
        StatusCode::UNAUTHORIZED
    );
    let mut log = String::new();
    for _ in 0..200 {
        log = std::fs::read_to_string(gw.path("decisions.log")).unwrap_or_default();
        if !log.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let line: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert_eq!(line["result"]["allow"], false);
    assert_eq!(line["result"]["reason"], "space_not_granted");
    assert_eq!(line["dry_run"], true);
}

/// An identity provider stand-in: serves a JWKS (and a discovery document) that the test
/// can rotate or take down, and counts fetches.
struct Idp {
    url: String,
    jwks: Arc<Mutex<serde_json::Value>>,
    down: Arc<std::sync::atomic::AtomicBool>,
    fetches: Arc<AtomicUsize>,
}

async fn start_idp() -> Idp {
    let jwks = Arc::new(Mutex::new(serde_json::json!({"keys": []})));
    let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let fetches = Arc::new(AtomicUsize::new(0));
    let addr_cell: Arc<Mutex<String>> = Arc::new(Mutex::new(String::new()));
    let handler: Handler = {
        let (jwks, down, fetches, addr_cell) = (
            jwks.clone(),
            down.clone(),
            fetches.clone(),
            addr_cell.clone(),
        );
        Arc::new(move |req| {
            let (jwks, down, fetches, addr_cell) = (
                jwks.clone(),
                down.clone(),
                fetches.clone(),
                addr_cell.clone(),
            );
            Box::pin(async move {
                if down.load(Ordering::SeqCst) {
                    return Response::builder().status(503).body(full("down")).unwrap();
                }
                if req.uri().path() == "/.well-known/openid-configuration" {
                    let base = addr_cell.lock().unwrap().clone();
                    return json_response(
                        StatusCode::OK,
                        serde_json::json!({"issuer": base, "jwks_uri": format!("{base}/jwks")}),
                    );
                }
                fetches.fetch_add(1, Ordering::SeqCst);
                json_response(StatusCode::OK, jwks.lock().unwrap().clone())
            })
        })
    };
    let up = start_upstream_with(handler).await;
    *addr_cell.lock().unwrap() = up.url();
    Idp {
        url: up.url(),
        jwks,
        down,
        fetches,
    }
}

fn es256(key: &TestKey, kid: &str, user: &str) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(kid.into());
    let mut c = claims(user, &[]);
    c["iss"] = serde_json::json!(ISSUER);
    jsonwebtoken::encode(&header, &c, &key.enc).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_rotation_unknown_kids_and_outages() {
    let idp = start_idp().await;
    let k1 = ec_key("k1");
    *idp.jwks.lock().unwrap() = serde_json::json!({"keys": [k1.jwk]});
    let up = start_upstream().await;
    let mut c = TestConfig::new(&up.url());
    c.identity_extra = format!(
        "jwks_url = \"{}/jwks\"\njwks_refresh_secs = 3600\njwks_min_refetch_secs = 1",
        idp.url
    );
    let gw = start_gateway(c).await;
    let status = |auth: String| {
        let url = gw.url("/display/ENG/Home");
        async move { get(&url, &[("authorization", &auth)]).await }
    };
    // The first fetch runs at start; a token with k1 verifies.
    let a = status(bearer(&es256(&k1, "k1", "alice"))).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());

    // The IdP rotates to k2: a k2 token triggers one refetch, and then passes.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let k2 = ec_key("k2");
    *idp.jwks.lock().unwrap() = serde_json::json!({"keys": [k2.jwk]});
    let before = idp.fetches.load(Ordering::SeqCst);
    let a = status(bearer(&es256(&k2, "k2", "alice"))).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(idp.fetches.load(Ordering::SeqCst), before + 1);

    // Random kids cannot make the gateway hammer the IdP: refetches are rate-limited.
    let before = idp.fetches.load(Ordering::SeqCst);
    let mut tasks = Vec::new();
    for i in 0..20 {
        let auth = bearer(&es256(&k2, &format!("random-{i}"), "mallory"));
        let url = gw.url("/display/ENG/Home");
        tasks.push(tokio::spawn(async move {
            get(&url, &[("authorization", &auth)]).await.status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::UNAUTHORIZED);
    }
    assert!(
        idp.fetches.load(Ordering::SeqCst) - before <= 1,
        "at most one refetch in the interval"
    );

    // The IdP goes down: the keys it served keep working.
    idp.down.store(true, Ordering::SeqCst);
    assert!(
        gw.gateway
            .remote_keys
            .as_ref()
            .unwrap()
            .fetch()
            .await
            .is_err()
    );
    let a = status(bearer(&es256(&k2, "k2", "alice"))).await;
    assert_eq!(a.status, StatusCode::OK, "stale keys keep serving");
}

#[tokio::test]
async fn discovery_finds_the_jwks_and_no_keys_at_all_fails_closed() {
    let idp = start_idp().await;
    idp.down.store(true, Ordering::SeqCst);
    let up = start_upstream().await;
    let mut c = TestConfig::new(&up.url());
    // Only remote keys, and the IdP is down from the start.
    c.identity_extra = format!("jwks_url = \"{}/jwks\"", idp.url);
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &c);
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("hs256_secret_file = \"secret\"\n", "");
    std::fs::write(&path, text).unwrap();
    let gw = start_gateway_in(dir, &path).await;
    let k1 = ec_key("k1");
    let url = gw.url("/display/ENG/Home");
    let a = get(
        &url,
        &[("authorization", &bearer(&es256(&k1, "k1", "alice")))],
    )
    .await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.json()["reason"], "no_verification_keys");
    assert!(up.forwarded().is_empty());

    // Discovery: issuer → /.well-known/openid-configuration → jwks_uri.
    idp.down.store(false, Ordering::SeqCst);
    *idp.jwks.lock().unwrap() = serde_json::json!({"keys": [k1.jwk]});
    let mut c = TestConfig::new(&up.url());
    c.identity_extra = "discovery = true".into();
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &c);
    let text = std::fs::read_to_string(&path).unwrap().replace(
        &format!("issuer = \"{ISSUER}\""),
        &format!("issuer = \"{}\"", idp.url),
    );
    std::fs::write(&path, text).unwrap();
    let config = guestgate::config::Config::load(&path).unwrap();
    let remote = guestgate::identity::RemoteKeys::new(&config.identity)
        .unwrap()
        .unwrap();
    assert_eq!(remote.fetch().await.unwrap(), 1);
}

/// kubelet's ConfigMap update, exactly: a new timestamped folder, a `..data_tmp` link to it
/// renamed over `..data`, the old folder removed — twice in a row, the second a revocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_swaps_are_seen_every_time() {
    use std::os::unix::fs::symlink;
    let up = start_upstream().await;
    let gw = start_gateway(TestConfig::new(&up.url())).await;
    // The ConfigMap layout: data.json -> ..data/data.json, ..data -> ..2026_12_06_v1.
    let swap = |version: u32, data: &str| {
        let folder = format!("..2026_12_06_v{version}");
        std::fs::create_dir(gw.path(&folder)).unwrap();
        std::fs::write(gw.path(&format!("{folder}/data.json")), data).unwrap();
        let _ = std::fs::remove_file(gw.path("..data_tmp"));
        symlink(&folder, gw.path("..data_tmp")).unwrap();
        std::fs::rename(gw.path("..data_tmp"), gw.path("..data")).unwrap();
        if version > 1 {
            std::fs::remove_dir_all(gw.path(&format!("..2026_12_06_v{}", version - 1))).unwrap();
        }
    };
    swap(1, TEST_DATA);
    std::fs::remove_file(gw.path("data.json")).unwrap();
    symlink("..data/data.json", gw.path("data.json")).unwrap();
    gw.gateway.store.reload().await.unwrap();
    let _watch = guestgate::snapshot::watch::watch(gw.gateway.store.clone()).unwrap();

    let gary = bearer(&token("gary", &[]));
    let hr = || async {
        get(&gw.url("/display/HR/x"), &[("authorization", &gary)])
            .await
            .status
    };
    let wait_for = |want: StatusCode| async move {
        let mut status = StatusCode::IM_A_TEAPOT;
        // Within the fingerprint check's interval at the latest.
        for _ in 0..((guestgate::snapshot::watch::FINGERPRINT_INTERVAL.as_millis() / 100) + 30) {
            status = hr().await;
            if status == want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        status
    };
    assert_eq!(hr().await, StatusCode::FORBIDDEN);

    let mut granted: serde_json::Value = serde_json::from_str(TEST_DATA).unwrap();
    granted["spaces"]["HR"] = serde_json::json!({"guests": {"groups": {"acme-guests": ["view"]}}});
    swap(2, &granted.to_string());
    assert_eq!(
        wait_for(StatusCode::OK).await,
        StatusCode::OK,
        "the first update"
    );

    swap(3, TEST_DATA);
    assert_eq!(
        wait_for(StatusCode::FORBIDDEN).await,
        StatusCode::FORBIDDEN,
        "the second update, a revocation, is applied too"
    );

    // An edit of the file the links lead to (no swap at all) is seen too.
    std::fs::write(gw.path("..2026_12_06_v3/data.json"), granted.to_string()).unwrap();
    assert_eq!(
        wait_for(StatusCode::OK).await,
        StatusCode::OK,
        "an edit in place"
    );
}
