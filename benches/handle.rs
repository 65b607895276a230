//! The whole request path — accept → identify → classify → decide → forward → rewrite →
//! respond — through `pipeline::handle`, driven over an in-memory HTTP/1 connection, so no
//! client socket and no other process take part. Denied requests never leave the process;
//! forwarded ones reach an upstream served by this process over loopback (the one socket
//! left), and the same request sent straight to that upstream is the baseline they are
//! compared with. One thread, the shipped Confluence profile, policy and data; HS256 tokens.
//!
//!     cargo bench --bench handle

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;

// The allocator the binary uses (src/main.rs), so the figures are the production ones.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use guestgate::config::Config;
use guestgate::gateway::Gateway;
use guestgate::pipeline::forward::ConnInfo;
use http::StatusCode;
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

const SECRET: &str = "bench-secret-0123456789abcdef0123456789";

/// An upstream answering every request with Confluence's content JSON (~2 KB, users in
/// `history` and `version`, space ENG), as the load script's does.
async fn start_upstream() -> std::net::SocketAddr {
    let body = Bytes::from_static(include_bytes!("../tests/fixtures/content.json"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let _ = stream.set_nodelay(true);
            let body = body.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_req| {
                    let body = body.clone();
                    async move {
                        Ok::<_, Infallible>(
                            http::Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(body))
                                .expect("response"),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// A gateway on the shipped profile, policy and data; `json_rewriting` off shows what the
/// `tag_users` rewrite costs on its own.
fn gateway(dir: &Path, upstream: std::net::SocketAddr, json_rewriting: bool) -> Arc<Gateway> {
    let root = env!("CARGO_MANIFEST_DIR");
    std::fs::write(dir.join("secret"), SECRET).expect("secret");
    let toml = format!(
        "[upstream]\nurl = \"http://{upstream}\"\n[identity]\nhs256_secret_file = \"secret\"\n\
         [policy]\ndir = \"{root}/policies\"\ndata = \"{root}/policies/data.json\"\n\
         [routes]\nprofile = \"{root}/config/routes/confluence.toml\"\n[log]\ndecisions = \"off\"\n\
         [rewrite]\njson = {json_rewriting}\n"
    );
    let path = dir.join("guestgate.toml");
    std::fs::write(&path, toml).expect("config");
    let config = Config::load(&path).expect("valid config");
    Arc::new(Gateway::new(config).expect("gateway"))
}

/// A client whose connection is served by `pipeline::handle` through an in-memory pipe.
async fn in_memory_client(gw: Arc<Gateway>) -> SendRequest<Empty<Bytes>> {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let conn = ConnInfo {
        remote: "127.0.0.1:40000".parse().expect("addr"),
        tls: false,
    };
    tokio::spawn(async move {
        let service = service_fn(move |req| {
            let gw = gw.clone();
            async move {
                Ok::<_, Infallible>(
                    gw.pipeline
                        .clone()
                        .handle(req, conn, std::time::Instant::now())
                        .await,
                )
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(server), service)
            .await;
    });
    client_over(client).await
}

/// A client whose connection is served, through an in-memory pipe, by a bare hyper
/// pass-through to `upstream` (benches/bare_proxy.rs's service): no tokens, no policy, no
/// rewriting. What guestgate adds is the difference between this and `handle`.
async fn in_memory_bare_proxy(upstream: std::net::SocketAddr) -> SendRequest<Empty<Bytes>> {
    use hyper_util::client::legacy::Client;
    use hyper_util::client::legacy::connect::HttpConnector;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, hyper::body::Incoming> =
        Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
    let (near, far) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        let service = service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
            let client = client.clone();
            async move {
                let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
                *req.uri_mut() = format!("http://{upstream}{path}").parse().expect("uri");
                req.headers_mut().remove(http::header::HOST);
                Ok::<_, Infallible>(client.request(req).await.expect("upstream answers"))
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(far), service)
            .await;
    });
    client_over(near).await
}

/// An HTTP/1 client on `io`, its connection driven by a task of its own.
async fn client_over<I>(io: I) -> SendRequest<Empty<Bytes>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    sender
}

async fn tcp_client(addr: std::net::SocketAddr) -> SendRequest<Empty<Bytes>> {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    client_over(stream).await
}

fn token(user: &str) -> String {
    let now = guestgate::identity::unix_now();
    let claims = serde_json::json!({"sub": user, "preferred_username": user, "exp": now + 86_400});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("token")
}

/// Sends one request and reads the whole answer; returns its status and body size.
async fn exchange(
    sender: &mut SendRequest<Empty<Bytes>>,
    path: &str,
    token: Option<&str>,
) -> (StatusCode, usize) {
    let mut req = http::Request::get(path).header("host", "wiki");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    sender.ready().await.expect("ready");
    let resp = sender
        .send_request(req.body(Empty::new()).expect("request"))
        .await
        .expect("response");
    let status = resp.status();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, body.len())
}

enum Via {
    Direct,
    Bare,
    Gateway,
    Untagged,
}

fn bench_handle(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let untagged_dir = tempfile::tempdir().expect("tempdir");
    let (mut direct, mut bare, mut through, mut untagged, alice, gary) = rt.block_on(async {
        let upstream = start_upstream().await;
        (
            tcp_client(upstream).await,
            in_memory_bare_proxy(upstream).await,
            in_memory_client(gateway(dir.path(), upstream, true)).await,
            in_memory_client(gateway(untagged_dir.path(), upstream, false)).await,
            token("alice"),
            token("gary"),
        )
    });
    let content = "/rest/api/content/101";
    let cases: [(&str, &str, Option<&str>, StatusCode, Via); 7] = [
        (
            "baseline: the upstream alone, over loopback",
            content,
            None,
            StatusCode::OK,
            Via::Direct,
        ),
        (
            "baseline: a bare hyper pass-through to it",
            content,
            None,
            StatusCode::OK,
            Via::Bare,
        ),
        (
            "handle: regular user, content JSON forwarded and tagged",
            content,
            Some(&alice),
            StatusCode::OK,
            Via::Gateway,
        ),
        (
            "handle: regular user, content JSON forwarded, JSON rewriting off",
            content,
            Some(&alice),
            StatusCode::OK,
            Via::Untagged,
        ),
        (
            "handle: guest, content JSON forwarded and tagged (space lookup cached)",
            content,
            Some(&gary),
            StatusCode::OK,
            Via::Gateway,
        ),
        (
            "handle: guest denied a space not granted (403, nothing forwarded)",
            "/display/HR/Home",
            Some(&gary),
            StatusCode::FORBIDDEN,
            Via::Gateway,
        ),
        (
            "handle: no token (401, nothing forwarded)",
            "/display/ENG/Home",
            None,
            StatusCode::UNAUTHORIZED,
            Via::Gateway,
        ),
    ];
    for (name, path, token, status, via) in cases {
        let sender = match via {
            Via::Direct => &mut direct,
            Via::Bare => &mut bare,
            Via::Gateway => &mut through,
            Via::Untagged => &mut untagged,
        };
        let (got, _) = rt.block_on(exchange(sender, path, token));
        assert_eq!(got, status, "{name}");
        c.bench_function(name, |b| {
            b.iter(|| rt.block_on(exchange(sender, path, token)))
        });
    }
}

criterion_group!(benches, bench_handle);
criterion_main!(benches);
