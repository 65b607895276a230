//! OPA bundles polled from a bundle server on loopback: ETags, corrupt bundles, outages.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::*;
use http::{Response, StatusCode};

fn bundle(revision: &str, data: &serde_json::Value) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut add = |name: &str, body: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, name, body).unwrap();
    };
    add(
        ".manifest",
        serde_json::json!({"revision": revision, "roots": [""]})
            .to_string()
            .as_bytes(),
    );
    add(
        "guestgate/authz.rego",
        std::fs::read(repo_path("policies/guestgate/authz.rego"))
            .unwrap()
            .as_slice(),
    );
    add("data.json", data.to_string().as_bytes());
    let raw = tar.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &raw).unwrap();
    gz.finish().unwrap()
}

#[derive(Clone)]
enum Served {
    Bundle(String, Vec<u8>),
    Garbage,
    Down,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundles_are_polled_with_etags_and_bad_ones_are_refused() {
    let served = Arc::new(Mutex::new(Served::Bundle(
        "\"e1\"".into(),
        bundle("2026-11-23-r1", &serde_json::from_str(TEST_DATA).unwrap()),
    )));
    let not_modified = Arc::new(Mutex::new(0usize));
    let handler: Handler = {
        let (served, not_modified) = (served.clone(), not_modified.clone());
        Arc::new(move |req| {
            let (served, not_modified) = (served.clone(), not_modified.clone());
            Box::pin(async move {
                let current = served.lock().unwrap().clone();
                match current {
                    Served::Down => Response::builder()
                        .status(503)
                        .body(full("maintenance"))
                        .unwrap(),
                    Served::Garbage => Response::builder()
                        .header("etag", "\"bad\"")
                        .body(full("not a tarball"))
                        .unwrap(),
                    Served::Bundle(etag, body) => {
                        if req
                            .headers()
                            .get("if-none-match")
                            .and_then(|v| v.to_str().ok())
                            == Some(etag.as_str())
                        {
                            *not_modified.lock().unwrap() += 1;
                            return Response::builder().status(304).body(full("")).unwrap();
                        }
                        Response::builder()
                            .header("etag", etag)
                            .header("content-type", "application/gzip")
                            .body(full(body))
                            .unwrap()
                    }
                }
            })
        })
    };
    let server = start_upstream_with(handler).await;
    let up = start_upstream().await;
    let mut c = TestConfig::new(&up.url());
    c.extra_sections = format!(
        "[bundle]\nurl = \"{}/bundles/guestgate.tar.gz\"\npoll_interval_secs = 1\njitter = 0.0\n",
        server.url()
    );
    let gw = start_gateway(c).await;
    let gary = bearer(&token("gary", &[]));

    // Nothing is served before the first bundle is active.
    let a = get(&gw.url("/display/ENG/Home"), &[("authorization", &gary)]).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.json()["reason"], "policy_not_loaded");
    assert_eq!(
        get(&gw.admin_url("/readyz"), &[]).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );

    let config = gw.gateway.config.bundle.clone().unwrap();
    guestgate::snapshot::bundle::BundlePoller::new(config)
        .unwrap()
        .start(gw.gateway.store.clone());
    let wait_for = |rev: &'static str| {
        let gateway = gw.gateway.clone();
        async move {
            for _ in 0..100 {
                if &*gateway.snapshot().revision == rev && gateway.store.is_ready() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!(
                "revision {rev} never became active (now {})",
                gateway.snapshot().revision
            );
        }
    };
    wait_for("2026-11-23-r1").await;
    assert_eq!(
        get(&gw.admin_url("/readyz"), &[]).await.status,
        StatusCode::OK
    );
    assert_eq!(
        get(&gw.url("/display/ENG/Home"), &[("authorization", &gary)])
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        get(&gw.url("/display/HR/Home"), &[("authorization", &gary)])
            .await
            .status,
        StatusCode::FORBIDDEN
    );

    // Unchanged bundles are not downloaded again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        *not_modified.lock().unwrap() >= 1,
        "If-None-Match answered 304"
    );

    // A corrupt bundle and an outage change nothing.
    *served.lock().unwrap() = Served::Garbage;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    *served.lock().unwrap() = Served::Down;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(&*gw.gateway.snapshot().revision, "2026-11-23-r1");
    assert_eq!(
        get(&gw.url("/display/ENG/Home"), &[("authorization", &gary)])
            .await
            .status,
        StatusCode::OK
    );
    // So does a bundle whose data is invalid (an admin grant to guests).
    let mut bad: serde_json::Value = serde_json::from_str(TEST_DATA).unwrap();
    bad["spaces"]["HR"] = serde_json::json!({"guests": {"groups": {"acme-guests": ["admin"]}}});
    *served.lock().unwrap() = Served::Bundle("\"e2\"".into(), bundle("2026-11-23-r2", &bad));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(&*gw.gateway.snapshot().revision, "2026-11-23-r1");

    // A valid new bundle becomes the revision.
    let mut good: serde_json::Value = serde_json::from_str(TEST_DATA).unwrap();
    good["spaces"]["HR"] = serde_json::json!({"guests": {"groups": {"acme-guests": ["view"]}}});
    *served.lock().unwrap() = Served::Bundle("\"e3\"".into(), bundle("2026-11-23-r3", &good));
    wait_for("2026-11-23-r3").await;
    assert_eq!(
        get(&gw.url("/display/HR/Home"), &[("authorization", &gary)])
            .await
            .status,
        StatusCode::OK
    );
}

#[test]
fn unpack_refuses_bundles_without_policies_and_escaping_paths() {
    assert!(guestgate::snapshot::bundle::unpack(b"garbage").is_err());
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(2);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "data.json", &b"{}"[..])
        .unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &tar.into_inner().unwrap()).unwrap();
    let err = guestgate::snapshot::bundle::unpack(&gz.finish().unwrap()).unwrap_err();
    assert!(err.to_string().contains("no .rego files"), "{err}");
}

/// A bundle server that sends its headers and half a body, then goes quiet, holds one poll
/// for `timeout_secs` at most: the next poll applies the bundle published meanwhile, and
/// the gauge of the last good poll says when the server last answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_server_that_stalls_mid_body_does_not_stop_the_polling() {
    use futures_util::StreamExt as _;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let first = bundle("2026-12-06-r1", &serde_json::from_str(TEST_DATA).unwrap());
    let mut revoked: serde_json::Value = serde_json::from_str(TEST_DATA).unwrap();
    revoked["spaces"]["ENG"] = serde_json::json!({"guests": {}});
    let second = bundle("2026-12-06-r2", &revoked);
    let polls = Arc::new(AtomicUsize::new(0));
    let handler: Handler = {
        let polls = polls.clone();
        Arc::new(move |_req| {
            let n = polls.fetch_add(1, Ordering::SeqCst);
            let (first, second) = (first.clone(), second.clone());
            Box::pin(async move {
                match n {
                    0 => Response::builder().body(full(first)).unwrap(),
                    // The second poll: headers and half a body, then nothing, ever.
                    1 => {
                        let half = bytes::Bytes::from(second[..second.len() / 2].to_vec());
                        let stream =
                            futures_util::stream::iter([Ok::<_, std::convert::Infallible>(
                                hyper::body::Frame::data(half),
                            )])
                            .chain(futures_util::stream::pending());
                        Response::builder()
                            .header("content-length", second.len())
                            .body(http_body_util::BodyExt::boxed(
                                http_body_util::StreamBody::new(stream),
                            ))
                            .unwrap()
                    }
                    _ => Response::builder()
                        .header("etag", "\"r2\"")
                        .body(full(second))
                        .unwrap(),
                }
            })
        })
    };
    let server = start_upstream_with(handler).await;
    let up = start_upstream().await;
    let mut c = TestConfig::new(&up.url());
    c.extra_sections = format!(
        "[bundle]\nurl = \"{}/bundles/guestgate.tar.gz\"\npoll_interval_secs = 1\njitter = 0.0\ntimeout_secs = 1\n",
        server.url()
    );
    let gw = start_gateway(c).await;
    let config = gw.gateway.config.bundle.clone().unwrap();
    guestgate::snapshot::bundle::BundlePoller::new(config)
        .unwrap()
        .start(gw.gateway.store.clone());
    let gary = bearer(&token("gary", &[]));
    let mut revision = String::new();
    for _ in 0..120 {
        revision = gw.gateway.snapshot().revision.to_string();
        if revision == "2026-12-06-r2" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        revision, "2026-12-06-r2",
        "the revocation published after the stall"
    );
    assert!(polls.load(Ordering::SeqCst) >= 3);
    assert_eq!(
        get(&gw.url("/display/ENG/Home"), &[("authorization", &gary)])
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let m = get(&gw.admin_url("/metrics"), &[]).await.text();
    assert!(
        m.contains("guestgate_bundle_last_success_timestamp_seconds "),
        "{m}"
    );
}
