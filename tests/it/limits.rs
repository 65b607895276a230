//! Limits on requests and connections: body size (413), load shedding towards the wiki (503
//! with `Retry-After`), connection count, idle connections, HTTP/2 stream limits.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::*;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn with_server(upstream: &str, server_extra: &str) -> TestConfig {
    let mut c = TestConfig::new(upstream);
    c.server_extra = server_extra.to_string();
    c
}

/// An upstream that records, for each body it reads, its length or that it broke off.
async fn body_recording_upstream() -> (Upstream, Arc<Mutex<Vec<Result<usize, String>>>>) {
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let recorded = bodies.clone();
    let handler: Handler = Arc::new(move |req| {
        let bodies = recorded.clone();
        Box::pin(async move {
            let read = req.into_body().collect().await;
            let entry = read.map(|b| b.to_bytes().len()).map_err(|e| e.to_string());
            bodies.lock().unwrap().push(entry);
            json_response(StatusCode::OK, serde_json::json!({"ok": true}))
        })
    });
    (start_upstream_with(handler).await, bodies)
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_announced_or_streamed() {
    let (up, bodies) = body_recording_upstream().await;
    let gw = start_gateway(with_server(&up.url(), "max_body_bytes = 1000")).await;
    let auth = bearer(&token("alice", &[]));
    let url = gw.url("/display/ENG/Upload");

    // Announced by Content-Length: refused before anything reaches the wiki.
    let a = request("POST", &url, &[("authorization", &auth)], &"x".repeat(1001)).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", a.text());
    assert_eq!(a.json()["reason"], "body_too_large");
    assert!(up.forwarded().is_empty());

    // At the limit: forwarded whole.
    let a = request("POST", &url, &[("authorization", &auth)], &"x".repeat(1000)).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(bodies.lock().unwrap().last().cloned(), Some(Ok(1000)));

    // Chunked (no length): counted as it streams, and cut off at the limit. The wiki gets
    // a request whose body breaks off — never a complete one over the limit.
    let chunked = format!(
        "POST /display/ENG/Upload HTTP/1.1\r\nHost: gw\r\nAuthorization: {auth}\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n{}",
        (0..6)
            .map(|_| format!("1f4\r\n{}\r\n", "y".repeat(500)))
            .collect::<String>()
            + "0\r\n\r\n"
    );
    let answer = raw(gw.addr, chunked.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    for body in bodies.lock().unwrap().iter() {
        assert!(
            !matches!(body, Ok(n) if *n > 1000),
            "the wiki read a complete body over the limit: {body:?}"
        );
    }

    // Chunked within the limit: forwarded whole.
    let small = format!(
        "POST /display/ENG/Upload HTTP/1.1\r\nHost: gw\r\nAuthorization: {auth}\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n1f4\r\n{}\r\n0\r\n\r\n",
        "z".repeat(500)
    );
    let answer = raw(gw.addr, small.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert_eq!(bodies.lock().unwrap().last().cloned(), Some(Ok(500)));
}

#[tokio::test]
async fn too_many_requests_in_flight_to_the_wiki_are_shed_with_retry_after() {
    let handler: Handler = Arc::new(|_req| {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(400)).await;
            json_response(StatusCode::OK, serde_json::json!({"ok": true}))
        })
    });
    let up = start_upstream_with(handler).await;
    let gw = start_gateway(with_server(
        &up.url(),
        "max_upstream_in_flight = 1\nretry_after_secs = 7",
    ))
    .await;
    let auth = bearer(&token("alice", &[]));
    let (one, two) = (gw.url("/display/ENG/One"), gw.url("/display/ENG/Two"));
    let headers = [("authorization", auth.as_str())];
    let (a, b) = tokio::join!(get(&one, &headers), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        get(&two, &headers).await
    });
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(b.status, StatusCode::SERVICE_UNAVAILABLE, "{}", b.text());
    assert_eq!(b.header("retry-after"), Some("7"));
    assert_eq!(b.json()["reason"], "overloaded");
    assert_eq!(up.forwarded().len(), 1);
    assert_eq!(
        gw.gateway.pipeline.upstream_slots_available(),
        1,
        "the slot is given back"
    );
    // Refusals never take a slot: they are answered whatever the load.
    let c = get(&gw.url("/display/ENG/Three"), &[]).await;
    assert_eq!(c.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn connections_beyond_the_limit_are_answered_503_and_closed() {
    let up = start_upstream().await;
    let gw = start_gateway(with_server(
        &up.url(),
        "max_connections = 2\nretry_after_secs = 3",
    ))
    .await;
    // Two kept-alive connections that have served a request: not evictable.
    let mut first = TcpStream::connect(gw.addr).await.unwrap();
    let mut second = TcpStream::connect(gw.addr).await.unwrap();
    for stream in [&mut first, &mut second] {
        stream
            .write_all(b"GET /login.action HTTP/1.1\r\nHost: gw\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200 "));
    }
    let before = up.requests().len();
    let answer = raw(
        gw.addr,
        b"GET /display/ENG/Home HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(answer.contains("retry-after: 3\r\n"), "{answer}");
    assert!(answer.contains("too_many_connections"), "{answer}");
    assert_eq!(up.requests().len(), before);

    // A slot frees when a connection closes.
    drop(first);
    drop(second);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let answer = raw(
            gw.addr,
            b"GET /login.action HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
        )
        .await;
        if answer.starts_with("HTTP/1.1 200 ") {
            break;
        }
        assert!(Instant::now() < deadline, "no slot came back: {answer}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads until the peer closes; returns how long that took (or `None` after `limit`).
async fn time_to_close(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((started + limit).into(), stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
        }
    }
}

/// A connection that never sends a byte is held to the header deadline, not to the idle
/// timeout: it cannot keep its `max_connections` slot for a whole minute.
#[tokio::test]
async fn a_connection_that_never_sends_a_byte_is_closed_at_the_header_deadline() {
    let up = start_upstream().await;
    let gw = start_gateway(with_server(
        &up.url(),
        "idle_timeout_secs = 60\nheader_read_timeout_secs = 1",
    ))
    .await;
    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    let closed = time_to_close(&mut silent, Duration::from_secs(10)).await;
    let closed = closed.expect("a silent connection is closed");
    assert!(
        closed < Duration::from_secs(4),
        "closed after {closed:?}, not within the 1 s header deadline"
    );
}

/// A request head that stops arriving is cut off at the header deadline, on a new connection
/// and between requests on a kept-alive one (parked meanwhile or not): a slow loris keeps
/// neither the connection nor its slot.
#[tokio::test]
async fn a_request_head_that_stops_arriving_is_cut_off_at_the_header_deadline() {
    let up = start_upstream().await;
    let gw = start_gateway(with_server(
        &up.url(),
        "idle_timeout_secs = 60\nheader_read_timeout_secs = 1",
    ))
    .await;
    let mut fresh = TcpStream::connect(gw.addr).await.unwrap();
    fresh
        .write_all(b"GET /login.action HTTP/1.1\r\nHost: gw\r\nX-Slow")
        .await
        .unwrap();
    let closed = time_to_close(&mut fresh, Duration::from_secs(10)).await;
    let closed = closed.expect("a half-sent first head is cut off");
    assert!(closed < Duration::from_secs(4), "closed after {closed:?}");

    let mut kept = TcpStream::connect(gw.addr).await.unwrap();
    kept.write_all(b"GET /login.action HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    let mut answer = [0u8; 512];
    let n = kept.read(&mut answer).await.unwrap();
    assert!(answer[..n].starts_with(b"HTTP/1.1 "));
    tokio::time::sleep(Duration::from_millis(300)).await;
    kept.write_all(b"GET /login.action HTTP/1.1\r\nHo")
        .await
        .unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), kept.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "a half-sent second head is cut off");
    assert!(
        !String::from_utf8_lossy(&rest).contains("HTTP/1.1 2"),
        "{}",
        String::from_utf8_lossy(&rest)
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let up = start_upstream().await;
    // The header timeout (which hyper also applies between HTTP/1.1 requests) is longer
    // than the idle timeout, so it is the idle timeout that closes these connections.
    let gw = start_gateway(with_server(
        &up.url(),
        "idle_timeout_secs = 1\nheader_read_timeout_secs = 30",
    ))
    .await;

    // HTTP/1.1 keep-alive, after one request.
    let mut h1 = TcpStream::connect(gw.addr).await.unwrap();
    h1.write_all(b"GET /login.action HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    let closed = time_to_close(&mut h1, Duration::from_secs(5)).await;
    let closed = closed.expect("an idle HTTP/1.1 connection is closed");
    assert!(closed >= Duration::from_millis(800), "{closed:?}");

    // HTTP/2 (prior knowledge), no request at all.
    let mut h2 = TcpStream::connect(gw.addr).await.unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let closed = time_to_close(&mut h2, Duration::from_secs(5)).await;
    assert!(closed.is_some(), "an idle HTTP/2 connection is closed");

    // A response still streaming is not idle: a body that trickles for 1.8 s (three chunks,
    // 0.6 s apart) outlives the 1 s idle timeout and arrives whole.
    let handler: Handler = Arc::new(|_req| {
        Box::pin(async move {
            let (mut tx, body) =
                http_body_util::channel::Channel::<bytes::Bytes, std::convert::Infallible>::new(1);
            tokio::spawn(async move {
                for _ in 0..3 {
                    tokio::time::sleep(Duration::from_millis(600)).await;
                    if tx
                        .send_data(bytes::Bytes::from_static(b"chunk"))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
            http::Response::new(body.boxed())
        })
    });
    let slow = start_upstream_with(handler).await;
    let gw = start_gateway(with_server(&slow.url(), "idle_timeout_secs = 1")).await;
    let auth = bearer(&token("alice", &[]));
    let a = get(&gw.url("/display/ENG/Trickle"), &[("authorization", &auth)]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.text(), "chunkchunkchunk");
}

#[tokio::test]
async fn http2_settings_announce_the_stream_limit() {
    let up = start_upstream().await;
    let gw = start_gateway(with_server(&up.url(), "h2_max_concurrent_streams = 7")).await;
    let mut h2 = TcpStream::connect(gw.addr).await.unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    // The server's first frame is its SETTINGS: 9-byte header, then 6-byte parameters.
    let mut head = [0u8; 9];
    h2.read_exact(&mut head).await.unwrap();
    assert_eq!(head[3], 0x4, "SETTINGS frame");
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    h2.read_exact(&mut payload).await.unwrap();
    let settings: Vec<(u16, u32)> = payload
        .chunks(6)
        .map(|c| {
            (
                u16::from_be_bytes([c[0], c[1]]),
                u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
            )
        })
        .collect();
    assert!(
        settings.contains(&(0x3, 7)),
        "MAX_CONCURRENT_STREAMS: {settings:?}"
    );

    // And a real HTTP/2 client is served under it.
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let auth = bearer(&token("alice", &[]));
    let req = Request::get(gw.url("/display/ENG/H2"))
        .header("authorization", auth)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

/// Connections are served on `server.workers` threads, each with its own upstream pool. One
/// worker still serves many slow requests at once (it is an event loop, not a thread per
/// request), and several workers answer every connection handed to them.
#[tokio::test]
async fn every_worker_count_serves_concurrent_connections() {
    for workers in [1, 3] {
        let handler: Handler = Arc::new(|_req| {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                json_response(StatusCode::OK, serde_json::json!({"ok": true}))
            })
        });
        let up = start_upstream_with(handler).await;
        let gw = start_gateway(with_server(&up.url(), &format!("workers = {workers}"))).await;
        let auth = bearer(&token("alice", &[]));
        let started = Instant::now();
        let answers = futures_util::future::join_all((0..8).map(|i| {
            let url = gw.url(&format!("/display/ENG/Page{i}"));
            let auth = auth.clone();
            async move { get(&url, &[("authorization", auth.as_str())]).await }
        }))
        .await;
        for answer in &answers {
            assert_eq!(answer.status, StatusCode::OK, "workers = {workers}");
        }
        assert_eq!(up.forwarded().len(), 8);
        // Eight 300 ms answers one after another would take 2.4 s.
        assert!(
            started.elapsed() < Duration::from_millis(2000),
            "workers = {workers}: {:?}",
            started.elapsed()
        );
    }
}

/// A client that asks for a large answer and stops reading is dropped once a frame has
/// waited `send_timeout_secs` for it: it does not hold the response (and the upstream
/// connection behind it) for ever.
#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_after_the_send_timeout() {
    const SIZE: usize = 32 << 20;
    let up = start_upstream_with(Arc::new(|_req| {
        Box::pin(async {
            http::Response::builder()
                .header("content-type", "application/octet-stream")
                .body(full(vec![b'x'; SIZE]))
                .unwrap()
        })
    }))
    .await;
    let gw = start_gateway(with_server(&up.url(), "send_timeout_secs = 1")).await;
    let mut stalled = TcpStream::connect(gw.addr).await.unwrap();
    stalled
        .write_all(b"GET /s/x/_/download/resources/big.bin HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    // Not reading: the socket buffers fill and the gateway's frame waits.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut received = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let started = Instant::now();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stalled.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => received += n,
        }
    }
    assert!(
        received < SIZE,
        "the whole answer arrived ({received} bytes in {:?}): the stalled client was kept",
        started.elapsed()
    );
}

/// At capacity the oldest connection that never began a request gives way to a new one:
/// a client holding every slot with idle sockets does not lock a well-behaved client out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_socket_flood_does_not_lock_out_a_well_behaved_client() {
    let up = start_upstream().await;
    let gw = start_gateway(with_server(
        &up.url(),
        "max_connections = 20\nheader_read_timeout_secs = 60\nidle_timeout_secs = 60",
    ))
    .await;
    let mut flood = Vec::new();
    for _ in 0..20 {
        flood.push(TcpStream::connect(gw.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut ok = 0;
    for _ in 0..100 {
        // A new connection each time: each must win a slot from the flood.
        let answer = raw(
            gw.addr,
            b"GET /login.action HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
        )
        .await;
        if answer.starts_with("HTTP/1.1 200 ") {
            ok += 1;
        }
        // The flood reconnects what was evicted, as an attacker would.
        flood.retain_mut(|s| {
            let mut probe = [0u8; 1];
            !matches!(s.try_read(&mut probe), Ok(0))
        });
        while flood.len() < 20 {
            flood.push(TcpStream::connect(gw.addr).await.unwrap());
        }
    }
    assert!(ok >= 95, "{ok} of 100 requests got through");
}

/// `server.max_connections_per_client`: one address cannot take more.
#[tokio::test]
async fn one_client_cannot_take_more_than_its_share_of_connections() {
    let up = start_upstream().await;
    let gw = start_gateway(with_server(&up.url(), "max_connections_per_client = 3")).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(gw.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let answer = raw(
        gw.addr,
        b"GET /login.action HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let answer = raw(
            gw.addr,
            b"GET /login.action HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
        )
        .await;
        if answer.starts_with("HTTP/1.1 200 ") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slot did not come back: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
