//! The proxy itself: pass-through, forwarded headers, streaming, upstream failures, TLS + h2.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Frame;

#[tokio::test]
async fn trusted_proxies_extend_x_forwarded_for_and_authorization_passes_when_asked() {
    let up = start_upstream().await;
    let mut c = TestConfig::new(&up.url());
    c.server_extra = "trusted_proxies = [\"127.0.0.0/8\"]\n".into();
    c.upstream_extra = "pass_authorization = true\n".into();
    let gw = start_gateway(c).await;
    let auth = bearer(&token("alice", &[]));
    let a = get(
        &gw.url("/display/ENG/Home"),
        &[("authorization", &auth), ("x-forwarded-for", "203.0.113.9")],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let seen = up.forwarded();
    let s = &seen[0];
    assert_eq!(s.header("x-forwarded-for"), Some("203.0.113.9, 127.0.0.1"));
    assert_eq!(s.header("authorization"), Some(auth.as_str()));
}

#[tokio::test]
async fn regular_user_passes_through_with_identity_and_forwarded_headers() {
    let up = start_upstream().await;
    let gw = start_gateway(TestConfig::new(&up.url())).await;
    let token = token("alice", &[]);
    let auth = bearer(&token);
    let answer = get(
        &gw.url("/display/HR/Salaries;jsessionid=1?x=1&y=%20z"),
        &[
            ("authorization", &auth),
            ("host", "wiki.example.com"),
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "secret"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic Zm9v"),
            ("x-forwarded-for", "203.0.113.9"),
        ],
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(answer.json()["user"], "alice");
    let seen = up.forwarded();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(
        s.uri, "/display/HR/Salaries?x=1&y=%20z",
        "canonical path, query unchanged"
    );
    assert_eq!(s.header("x-guestgate-user"), Some("alice"));
    assert_eq!(s.header("x-guestgate-guest"), Some("false"));
    assert_eq!(
        s.header("authorization"),
        None,
        "the wiki never reads the client's credentials as a sign-in of its own"
    );
    assert_eq!(
        s.header("x-forwarded-for"),
        Some("127.0.0.1"),
        "a client that is no trusted proxy does not write the wiki's log"
    );
    assert_eq!(s.header("x-forwarded-proto"), Some("http"));
    assert_eq!(s.header("x-forwarded-host"), Some("wiki.example.com"));
    assert_eq!(s.header("host"), Some(up.addr.to_string().as_str()));
    for hop in ["x-hop", "keep-alive", "proxy-authorization"] {
        assert!(s.header(hop).is_none(), "{hop} must not be forwarded");
    }
}

#[tokio::test]
async fn spoofed_identity_headers_are_replaced() {
    let up = start_upstream().await;
    let mut c = TestConfig::new(&up.url());
    c.upstream_extra = "user_header = \"X-Remote-User\"".into();
    let gw = start_gateway(c).await;
    let auth = bearer(&token("gary", &[]));
    let answer = get(
        &gw.url("/display/ENG/Home"),
        &[
            ("authorization", &auth),
            ("x-guestgate-user", "admin"),
            ("x-guestgate-guest", "false"),
            ("X-GuestGate-Groups", "confluence-administrators"),
            ("x-remote-user", "admin"),
        ],
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    let seen = up.forwarded();
    let s = &seen[0];
    assert_eq!(s.header("x-guestgate-user"), Some("gary"));
    assert_eq!(s.header("x-guestgate-guest"), Some("true"));
    assert_eq!(s.header("x-remote-user"), Some("gary"));
    assert!(s.header("x-guestgate-groups").is_none());
    assert_eq!(s.headers.get_all("x-guestgate-user").iter().count(), 1);
    assert_eq!(s.headers.get_all("x-remote-user").iter().count(), 1);
}

#[tokio::test]
async fn public_routes_need_no_token_and_survive_a_stale_one() {
    let up = start_upstream().await;
    let gw = start_gateway(TestConfig::new(&up.url())).await;
    let a = get(&gw.url("/s/en_GB/1234/_/styles/main.css"), &[]).await;
    assert_eq!(a.status, StatusCode::OK);
    let mut expired = claims("gary", &[]);
    expired["exp"] = serde_json::json!(now() - 3600);
    let stale = format!("guestgate_token={}", sign_hs256(&expired));
    let a = get(&gw.url("/login.action"), &[("cookie", &stale)]).await;
    assert_eq!(a.status, StatusCode::OK);
    let s = up.forwarded();
    assert_eq!(s.len(), 2);
    assert!(
        s[1].header("x-guestgate-user").is_none(),
        "no identity for anonymous"
    );
    assert_eq!(s[1].header("x-guestgate-guest"), Some("false"));
}

#[tokio::test]
async fn upstream_down_is_502_and_slow_is_504() {
    // A port that was just free: nothing listens there.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let gw = start_gateway(TestConfig::new(&format!("http://{closed}"))).await;
    let auth = bearer(&token("alice", &[]));
    let a = get(&gw.url("/display/ENG/Home"), &[("authorization", &auth)]).await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        a.json(),
        serde_json::json!({"error": "bad_gateway", "reason": "upstream_unavailable"})
    );

    let up = start_upstream().await;
    let gw = start_gateway(TestConfig::new(&up.url())).await;
    let started = std::time::Instant::now();
    let a = get(&gw.url("/slow"), &[("authorization", &auth)]).await;
    assert_eq!(a.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(a.json()["reason"], "upstream_timeout");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "request_timeout_secs = 1 applies"
    );
}

#[tokio::test]
async fn refusals_are_html_for_browsers() {
    let up = start_upstream().await;
    let gw = start_gateway(TestConfig::new(&up.url())).await;
    let auth = bearer(&token("gary", &[]));
    let a = get(
        &gw.url("/admin/users.action"),
        &[
            ("authorization", &auth),
            ("accept", "text/html,application/xhtml+xml,*/*;q=0.8"),
        ],
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert!(a.header("content-type").unwrap().starts_with("text/html"));
    assert!(a.text().contains("guest_blocked_family"));
    assert!(up.forwarded().is_empty());
}

/// The upstream sends its first chunk, then waits until the client has received it before
/// sending the rest: a gateway that buffered the body would deadlock here.
#[tokio::test]
async fn response_bodies_stream_without_buffering() {
    let (got_first_tx, got_first_rx) = tokio::sync::watch::channel(false);
    let got_first_rx = Arc::new(got_first_rx);
    const CHUNK: usize = 1 << 20;
    const CHUNKS: usize = 64;
    let handler: Handler = Arc::new(move |_req| {
        let mut rx = (*got_first_rx).clone();
        Box::pin(async move {
            let (mut tx, body) =
                http_body_util::channel::Channel::<Bytes, std::convert::Infallible>::new(2);
            tokio::spawn(async move {
                let chunk = Bytes::from(vec![b'x'; CHUNK]);
                tx.send_data(chunk.clone()).await.unwrap();
                let _ = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|v| *v)).await;
                for _ in 1..CHUNKS {
                    if tx.send_data(chunk.clone()).await.is_err() {
                        return;
                    }
                }
            });
            Response::new(body.boxed())
        })
    });
    let up = start_upstream_with(handler).await;
    let gw = start_gateway(TestConfig::new(&up.url())).await;
    let auth = bearer(&token("alice", &[]));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let req = Request::get(gw.url("/download/attachments/100/big.bin"))
        .header("authorization", &auth)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut total = 0usize;
    let started = std::time::Instant::now();
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .unwrap()
    {
        if let Ok(data) = frame.unwrap().into_data() {
            total += data.len();
            if total >= 1 {
                got_first_tx.send_replace(true);
            }
        }
    }
    assert_eq!(total, CHUNK * CHUNKS);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "no stall waiting for a buffered body"
    );
}

/// The client sends its first chunk and waits until the upstream has read it.
#[tokio::test]
async fn request_bodies_stream_without_buffering() {
    let (first_seen_tx, mut first_seen_rx) = tokio::sync::watch::channel(false);
    let first_seen_tx = Arc::new(first_seen_tx);
    let handler: Handler = Arc::new(move |req| {
        let first_seen_tx = first_seen_tx.clone();
        Box::pin(async move {
            let mut body = req.into_body();
            let mut total = 0usize;
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(d) = frame.into_data() {
                    total += d.len();
                    first_seen_tx.send_replace(true);
                }
            }
            json_response(StatusCode::OK, serde_json::json!({"received": total}))
        })
    });
    let up = start_upstream_with(handler).await;
    let gw = start_gateway(TestConfig::new(&up.url())).await;
    let auth = bearer(&token("alice", &[]));
    let (mut tx, body) =
        http_body_util::channel::Channel::<Bytes, std::convert::Infallible>::new(1);
    let req = Request::post(gw.url("/rest/api/content/100/child/attachment"))
        .header("authorization", &auth)
        .body(body)
        .unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let sending = tokio::spawn(async move {
        let chunk = Bytes::from(vec![b'y'; 1 << 20]);
        tx.send(Frame::data(chunk.clone())).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), first_seen_rx.wait_for(|v| *v))
            .await
            .expect("upstream saw the first chunk before the body was complete")
            .unwrap();
        for _ in 1..32 {
            tx.send(Frame::data(chunk.clone())).await.unwrap();
        }
    });
    let resp = client.request(req).await.unwrap();
    sending.await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["received"], 32 << 20);
}

#[tokio::test]
async fn http2_over_tls_with_alpn() {
    let up = start_upstream().await;
    let mut c = TestConfig::new(&up.url());
    c.tls = true;
    let gw = start_gateway(c).await;
    let cert_pem = std::fs::read(gw.path("cert.pem")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&cert_pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http2()
        .build();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build(connector);
    let auth = bearer(&token("gary", &[]));
    for (path, status) in [
        ("/display/ENG/Home", StatusCode::OK),
        ("/display/HR/Home", StatusCode::FORBIDDEN),
    ] {
        let req = Request::get(format!("https://localhost:{}{path}", gw.addr.port()))
            .header("authorization", &auth)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.version(), http::Version::HTTP_2);
        assert_eq!(resp.status(), status);
    }
    let seen = up.forwarded();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("x-forwarded-proto"), Some("https"));
    assert_eq!(
        seen[0].header("x-forwarded-host"),
        Some(format!("localhost:{}", gw.addr.port()).as_str())
    );
}

#[tokio::test]
async fn bad_paths_are_refused_before_anything_else() {
    let up = start_upstream().await;
    let gw = start_gateway(TestConfig::new(&up.url())).await;
    let auth = bearer(&token("alice", &[]));
    for path in [
        "/display/ENG%2f..%2fadmin",
        "/display/ENG/%00",
        "/a/%zz",
        "/display/../..",
        "/x%c3%28",
    ] {
        let a = get(&gw.url(path), &[("authorization", &auth)]).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(a.json()["error"], "bad_request");
    }
    // Captured query parameters must not repeat: the wiki could read the other one.
    let a = get(
        &gw.url("/pages/viewpage.action?pageId=100&pageId=200"),
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.json()["reason"], "duplicate_query_parameter");
    assert!(up.forwarded().is_empty());
}

#[tokio::test]
async fn graceful_shutdown_lets_in_flight_requests_finish() {
    let handler: Handler = Arc::new(|_req| {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            json_response(StatusCode::OK, serde_json::json!({"done": true}))
        })
    });
    let up = start_upstream_with(handler).await;
    let gw = start_gateway(TestConfig::new(&up.url())).await;
    let url = gw.url("/display/ENG/Home");
    let auth = bearer(&token("alice", &[]));
    let in_flight = tokio::spawn(async move { get(&url, &[("authorization", &auth)]).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    gw.running.shutdown();
    let a = in_flight.await.unwrap();
    assert_eq!(a.status, StatusCode::OK);
    gw.running.wait().await;
    assert!(
        tokio::net::TcpStream::connect(gw.addr).await.is_err(),
        "listener closed"
    );
}

/// Websocket upgrades are authorized like any request, then tunnelled both ways.
#[tokio::test]
async fn websocket_upgrades_are_authorized_then_tunnelled() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let handler: Handler = Arc::new(|mut req| {
        Box::pin(async move {
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(upgraded) = upgrade.await else { return };
                let mut io = hyper_util::rt::TokioIo::new(upgraded);
                let mut buf = [0u8; 64];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("upgrade", "websocket")
                .header("connection", "Upgrade")
                .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
                .body(full(Bytes::new()))
                .unwrap()
        })
    });
    let up = start_upstream_with(handler).await;
    let gw = start_gateway(TestConfig::new(&up.url())).await;
    let handshake = |user: &str| {
        format!(
            "GET /synchrony/v1/bayeux-sync1 HTTP/1.1\r\nHost: wiki.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nAuthorization: {}\r\n\r\n",
            bearer(&token(user, &[]))
        )
    };
    // A guest cannot reach collaborative editing without a space: refused, nothing tunnelled.
    let refused = raw(gw.addr, handshake("gary").as_bytes()).await;
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
    assert!(up.forwarded().is_empty());

    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(handshake("alice").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    stream.write_all(b"frame-bytes").await.unwrap();
    let mut echo = [0u8; 11];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echo, b"frame-bytes");
    let seen = up.forwarded();
    assert_eq!(seen[0].header("x-guestgate-user"), Some("alice"));
    assert_eq!(seen[0].header("upgrade"), Some("websocket"));
}

/// A gateway with one worker, so that every request uses the same pool of connections to
/// the wiki (each worker keeps its own: src/http/pool.rs).
fn one_worker(upstream: &str) -> TestConfig {
    let mut c = TestConfig::new(upstream);
    c.server_extra = "workers = 1\n".into();
    c
}

/// Connections to the wiki are kept and used again: requests one after another share one,
/// whether the answer had a body, had none (`HEAD`), or was `204 No Content`.
#[tokio::test]
async fn requests_one_after_another_share_one_connection_to_the_wiki() {
    let handler: Handler = Arc::new(|req| {
        Box::pin(async move {
            if req.uri().path().ends_with("/Nothing") {
                Response::builder()
                    .status(StatusCode::NO_CONTENT)
                    .body(full(Bytes::new()))
                    .unwrap()
            } else {
                json_response(StatusCode::OK, serde_json::json!({"ok": true}))
            }
        })
    });
    let up = start_upstream_with(handler).await;
    let gw = start_gateway(one_worker(&up.url())).await;
    let auth = bearer(&token("alice", &[]));
    let headers = [("authorization", auth.as_str())];
    for (method, page, status) in [
        ("GET", "Home", StatusCode::OK),
        ("GET", "Home", StatusCode::OK),
        ("HEAD", "Home", StatusCode::OK),
        ("GET", "Nothing", StatusCode::NO_CONTENT),
        ("GET", "Home", StatusCode::OK),
    ] {
        let url = gw.url(&format!("/display/ENG/{page}"));
        let a = request(method, &url, &headers, "").await;
        assert_eq!(a.status, status, "{method} {page}");
    }
    assert_eq!(up.forwarded().len(), 5);
    assert_eq!(up.connection_count(), 1, "one connection for all five");
}

/// A wiki written byte by byte: every request head it reads is answered with `answer`;
/// with `one_per_connection` the connection is then closed (no `Connection: close`: as a
/// keep-alive timeout would). Counts the connections it accepts.
async fn raw_wiki(
    answer: &'static [u8],
    one_per_connection: bool,
) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut pending = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        pending.drain(..end + 4);
                        if stream.write_all(answer).await.is_err() || one_per_connection {
                            return;
                        }
                    }
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => pending.extend_from_slice(&buf[..n]),
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// A connection the wiki closed while it waited idle (its keep-alive timeout) is not used
/// again: the next request goes on a new one and is answered.
#[tokio::test]
async fn a_connection_the_wiki_closed_while_idle_is_not_used_again() {
    let (addr, accepted) = raw_wiki(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}",
        true,
    )
    .await;
    let gw = start_gateway(one_worker(&format!("http://{addr}"))).await;
    let auth = bearer(&token("alice", &[]));
    for i in 0..4 {
        let a = get(&gw.url("/display/ENG/Home"), &[("authorization", &auth)]).await;
        assert_eq!(a.status, StatusCode::OK, "request {i}: {}", a.text());
        // Time for the gateway to see the connection close.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 4);
}

/// An answer whose client went away before it was read to its end leaves its connection
/// unusable (the rest of the answer is still on it): it is closed, not put back, and the
/// next request is answered on a new one.
#[tokio::test]
async fn a_connection_with_an_unread_answer_is_not_put_back() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const SIZE: usize = 16 << 20;
    let handler: Handler = Arc::new(|req| {
        Box::pin(async move {
            if req.uri().path().ends_with("/big.bin") {
                Response::builder()
                    .header("content-type", "application/octet-stream")
                    .body(full(vec![b'x'; SIZE]))
                    .unwrap()
            } else {
                json_response(StatusCode::OK, serde_json::json!({"ok": true}))
            }
        })
    });
    let up = start_upstream_with(handler).await;
    let gw = start_gateway(one_worker(&up.url())).await;
    let mut client = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    client
        .write_all(b"GET /s/x/_/download/resources/big.bin HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    let mut first = vec![0u8; 64 << 10];
    let read = client.read(&mut first).await.unwrap();
    assert!(String::from_utf8_lossy(&first[..read]).starts_with("HTTP/1.1 200"));
    drop(client);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let auth = bearer(&token("alice", &[]));
    let a = get(&gw.url("/display/ENG/Home"), &[("authorization", &auth)]).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(up.connection_count(), 2);
}

/// A wiki behind HTTPS with a private CA (`upstream.ca_file`): requests reach it over TLS
/// with its `Host`, one after another on one connection; without the CA its certificate is
/// not trusted and the request fails closed (502), never falling back to anything else.
#[tokio::test]
async fn an_https_wiki_with_a_private_ca_is_reached_and_its_connection_kept() {
    use rustls::pki_types::pem::PemObject;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("wiki-ca.pem");
    std::fs::write(&ca_file, cert.cert.pem()).unwrap();
    let server_config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::from_pem_slice(
            cert.signing_key.serialize_pem().as_bytes(),
        )
        .unwrap(),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let hosts = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let (counted, seen) = (handshakes.clone(), hosts.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, counted, seen) = (acceptor.clone(), counted.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let host = req.headers().get("host").and_then(|h| h.to_str().ok());
                        seen.lock().unwrap().push(host.unwrap_or("").to_string());
                        async {
                            Ok::<_, std::convert::Infallible>(json_response(
                                StatusCode::OK,
                                serde_json::json!({"ok": true}),
                            ))
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    let wiki = format!("https://localhost:{port}");
    let auth = bearer(&token("alice", &[]));

    let mut c = one_worker(&wiki);
    c.upstream_extra = format!("ca_file = \"{}\"\n", ca_file.display());
    let gw = start_gateway(c).await;
    for i in 0..3 {
        let a = get(&gw.url("/display/ENG/Home"), &[("authorization", &auth)]).await;
        assert_eq!(a.status, StatusCode::OK, "request {i}: {}", a.text());
    }
    assert_eq!(
        handshakes.load(Ordering::SeqCst),
        1,
        "one TLS connection for three requests"
    );
    let expected_host = format!("localhost:{port}");
    assert!(
        hosts.lock().unwrap().iter().all(|h| *h == expected_host),
        "{hosts:?}"
    );

    let untrusting = start_gateway(one_worker(&wiki)).await;
    let a = get(
        &untrusting.url("/display/ENG/Home"),
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        hosts.lock().unwrap().len(),
        3,
        "nothing reached the wiki without trust"
    );
}

/// A chunked answer with trailers ends at its trailers (hyper's server polls no further):
/// its connection is kept all the same.
#[tokio::test]
async fn a_connection_whose_answer_ended_with_trailers_is_kept() {
    let (addr, accepted) = raw_wiki(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-checksum: 1\r\n\r\n",
        false,
    )
    .await;
    let gw = start_gateway(one_worker(&format!("http://{addr}"))).await;
    let auth = bearer(&token("alice", &[]));
    for i in 0..3 {
        let a = get(&gw.url("/display/ENG/Home"), &[("authorization", &auth)]).await;
        assert_eq!(a.status, StatusCode::OK, "request {i}");
        assert_eq!(a.text(), "hello");
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
}
