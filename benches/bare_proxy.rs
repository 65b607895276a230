//! The baseline for the load benchmark (benches/load.sh): a bare hyper 1 pass-through proxy
//! with a pooled keep-alive client and nothing else — no tokens, no policy, no rewriting.
//! guestgate's throughput and CPU per request are compared with this and with nginx.
//!
//!     cargo bench --bench bare_proxy -- 127.0.0.1:18081 http://127.0.0.1:18080
//!
//! Its client is hyper_util's pooled one, the way a plain hyper proxy is written. With
//! `BARE_POOL=guestgate` it forwards through guestgate's own pool of upstream connections
//! (`guestgate::http::pool`) instead: the same proxy without what hyper_util's client adds
//! around each send (load.sh's target `bare_pool`).
//!
//! Without both arguments it exits at once, so a plain `cargo bench` is not blocked by it.

use std::convert::Infallible;
use std::net::SocketAddr;

use http::Uri;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let (Some(listen), Some(upstream)) = (args.first(), args.get(1)) else {
        eprintln!("usage: bare_proxy LISTEN_ADDR UPSTREAM_URL (skipped)");
        return;
    };
    let listen: SocketAddr = listen.parse().expect("listen address");
    let upstream: Uri = upstream.parse().expect("upstream URL");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if std::env::var("BARE_POOL").as_deref() == Ok("guestgate") {
        runtime.block_on(serve_on_guestgates_pool(listen, upstream));
        return;
    }
    runtime.block_on(async move {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(256)
            .build(connector);
        let listener = tokio::net::TcpListener::bind(listen).await.expect("bind");
        eprintln!("bare_proxy listening on {listen}");
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let client = client.clone();
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let service = service_fn(move |mut req: hyper::Request<Incoming>| {
                    let client = client.clone();
                    let upstream = upstream.clone();
                    async move {
                        let path = req
                            .uri()
                            .path_and_query()
                            .map(|p| p.as_str())
                            .unwrap_or("/")
                            .to_string();
                        *req.uri_mut() = Uri::builder()
                            .scheme(upstream.scheme_str().unwrap_or("http"))
                            .authority(
                                upstream
                                    .authority()
                                    .map(|a| a.as_str())
                                    .unwrap_or("127.0.0.1"),
                            )
                            .path_and_query(path)
                            .build()
                            .expect("uri");
                        req.headers_mut().remove(http::header::HOST);
                        Ok::<_, Infallible>(answer(client.request(req).await))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

/// The same pass-through, its upstream connections from guestgate's pool.
async fn serve_on_guestgates_pool(listen: SocketAddr, upstream: Uri) {
    let connector = guestgate::http::client::connector(None, std::time::Duration::from_secs(5))
        .expect("connector");
    let host = http::HeaderValue::from_str(upstream.authority().expect("authority").as_str())
        .expect("host");
    let pool = guestgate::http::pool::OriginPool::<Incoming>::new(connector, upstream, 256);
    let listener = tokio::net::TcpListener::bind(listen).await.expect("bind");
    eprintln!("bare_proxy (guestgate's pool) listening on {listen}");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (pool, host) = (pool.clone(), host.clone());
        tokio::spawn(async move {
            let service = service_fn(move |mut req: hyper::Request<Incoming>| {
                req.headers_mut().insert(http::header::HOST, host.clone());
                let send = pool.send(req);
                async move { Ok::<_, Infallible>(answer(send.await)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The upstream's answer, or an empty 502 when there was none.
fn answer<B, E>(
    sent: Result<hyper::Response<B>, E>,
) -> hyper::Response<http_body_util::Either<B, http_body_util::Empty<bytes::Bytes>>> {
    match sent {
        Ok(resp) => resp.map(http_body_util::Either::Left),
        Err(_) => hyper::Response::builder()
            .status(502)
            .body(http_body_util::Either::Right(http_body_util::Empty::new()))
            .expect("response"),
    }
}
