//! Listeners: the proxy (HTTP/1.1 and HTTP/2, TLS with ALPN when configured) and the admin
//! listener, with graceful shutdown, and the limits that belong to connections: how many
//! may be open, how long one may sit idle, how many HTTP/2 streams it may carry. The proxy
//! listener accepts on the caller's runtime and hands each connection to a worker thread
//! ([`crate::workers`]), which serves it to the end. Every request runs inside a panic
//! guard: a bug answers 500, it does not take the process down.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use http::{Request, Response};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::config::TlsFiles;
use crate::error::{GatewayError, ProxyBody};
use crate::gateway::Gateway;
use crate::pipeline::{self, forward::ConnInfo};
use crate::workers::Workers;

/// Why the listeners could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("cannot start the worker threads: {0}")]
    Workers(#[source] std::io::Error),
}

/// The running listeners of one gateway.
pub struct Running {
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops accepting; in-flight requests get up to `shutdown_grace` to finish.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Waits until both listeners have stopped.
    pub async fn wait(self) {
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

fn tls_acceptor(files: &TlsFiles) -> Result<tokio_rustls::TlsAcceptor, ServerError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| ServerError::Tls(format!("{}: {e}", files.cert.display())))?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| ServerError::Tls(format!("{}: {e}", files.key.display())))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ServerError::Tls(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| ServerError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// How long the accept loop pauses after a failed `accept` (out of file descriptors, say),
/// so that the failure does not become a busy loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// Connections above `max_connections` being answered 503 at one time; beyond these,
/// further ones are closed without a word, so that a flood cannot make the answering
/// itself unbounded.
const MAX_TURNED_AWAY: usize = 256;
/// How long a turned-away connection is given to read its 503.
const TURN_AWAY_TIME: Duration = Duration::from_secs(1);

/// Binds both listeners and starts serving.
pub async fn start(gw: Arc<Gateway>) -> Result<Running, ServerError> {
    let config = gw.config.clone();
    let tls = config.server.tls.as_ref().map(tls_acceptor).transpose()?;
    let proxy = TcpListener::bind(config.server.listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: config.server.listen,
            source,
        })?;
    let admin = TcpListener::bind(config.admin.listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: config.admin.listen,
            source,
        })?;
    let proxy_addr = proxy.local_addr().map_err(|source| ServerError::Bind {
        addr: config.server.listen,
        source,
    })?;
    let admin_addr = admin.local_addr().map_err(|source| ServerError::Bind {
        addr: config.admin.listen,
        source,
    })?;
    let workers = Workers::start(config.server.workers).map_err(ServerError::Workers)?;
    let (shutdown, rx) = watch::channel(false);
    crate::notify::start(&gw);

    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper also runs the header timer while an idle HTTP/1.1 connection waits for its next
    // request, so that wait ends at the shorter of this and `idle_timeout`.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.server.header_read_timeout)
        .max_buf_size(config.server.max_header_bytes.max(8192) + 1024)
        .max_headers(config.server.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(config.server.max_header_bytes as u32)
        .max_concurrent_streams(config.server.h2_max_concurrent_streams)
        .max_pending_accept_reset_streams(config.server.h2_max_pending_reset_streams);
    let builder = Arc::new(builder);

    let proxy_task = {
        let gw = gw.clone();
        let mut rx = rx.clone();
        let max_connections = config.server.max_connections;
        // One permit per open connection. All permits back means all connections closed,
        // which is what the graceful shutdown waits for.
        let connections = Arc::new(Semaphore::new(max_connections));
        let turned_away = Arc::new(Semaphore::new(MAX_TURNED_AWAY));
        let over_capacity: Arc<[u8]> = over_capacity_response(config.server.retry_after).into();
        let grace = config.server.shutdown_grace;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    accepted = proxy.accept() => {
                        let (stream, remote) = match accepted {
                            Ok(accepted) => accepted,
                            Err(e) => {
                                tracing::warn!(error = %e, "accept failed");
                                tokio::time::sleep(ACCEPT_BACKOFF).await;
                                continue;
                            }
                        };
                        let Ok(slot) = connections.clone().try_acquire_owned() else {
                            turn_away(stream, tls.is_some(), &turned_away, &over_capacity);
                            continue;
                        };
                        let _ = stream.set_nodelay(true);
                        // Handed over as a plain socket: it joins the reactor of the worker
                        // that serves it.
                        let Ok(stream) = stream.into_std() else { continue };
                        let gw = gw.clone();
                        let builder = builder.clone();
                        let tls = tls.clone();
                        let shutdown = rx.clone();
                        workers.spawn(async move {
                            let _slot = slot;
                            let Ok(stream) = TcpStream::from_std(stream) else { return };
                            let conn = ConnInfo { remote, tls: tls.is_some() };
                            match tls {
                                Some(acceptor) => {
                                    // A client that never finishes the handshake must not hold the slot.
                                    let timeout = gw.config.server.header_read_timeout;
                                    let handshake = acceptor.accept(stream);
                                    let Ok(Ok(stream)) = tokio::time::timeout(timeout, handshake).await else {
                                        return;
                                    };
                                    serve_connection(&builder, stream, gw, conn, shutdown).await;
                                }
                                None => serve_connection(&builder, stream, gw, conn, shutdown).await,
                            }
                        });
                    }
                    _ = rx.changed() => break,
                }
            }
            drop(proxy);
            let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
            if tokio::time::timeout(grace, connections.acquire_many(all))
                .await
                .is_err()
            {
                tracing::warn!("shutdown grace period over; closing remaining connections");
            }
            // Stopping a worker drops the connections it still serves.
            let _ = tokio::task::spawn_blocking(move || workers.stop_and_join()).await;
        })
    };

    let admin_task = {
        let gw = gw.clone();
        let mut rx = rx.clone();
        tokio::spawn(async move {
            let graceful = GracefulShutdown::new();
            let builder = hyper::server::conn::http1::Builder::new();
            loop {
                tokio::select! {
                    accepted = admin.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let gw = gw.clone();
                        let service = service_fn(move |req| {
                            let gw = gw.clone();
                            async move { Ok::<_, Infallible>(crate::admin::handle(&gw, req).await) }
                        });
                        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
                        tokio::spawn(async move { let _ = conn.await; });
                    }
                    _ = rx.changed() => break,
                }
            }
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(2), graceful.shutdown()).await;
        })
    };

    Ok(Running {
        proxy_addr,
        admin_addr,
        shutdown,
        tasks: vec![proxy_task, admin_task],
    })
}

/// Serves one client connection until it ends. It is closed gracefully — the request in
/// progress finishes, then the connection closes (HTTP/2: GOAWAY) — when the gateway shuts
/// down or when no request has been in progress for `server.idle_timeout`.
async fn serve_connection<I>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    gw: Arc<Gateway>,
    conn: ConnInfo,
    mut shutdown: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let idle_timeout = gw.config.server.idle_timeout;
    let activity = Arc::new(Activity::new());
    let service = {
        let activity = activity.clone();
        service_fn(move |req| {
            let gw = gw.clone();
            let busy = activity.begin();
            // Boxed: hyper keeps a slot the size of this future for every connection, idle or
            // not (its `in_flight`); a pointer there instead of the whole request future
            // saves about 3.5 KB per idle keep-alive connection for one allocation per request.
            let request: std::pin::Pin<Box<dyn Future<Output = _> + Send>> = Box::pin(async move {
                let response = respond(&gw, req, conn).await;
                // The request stays in progress until its response body has been sent (or
                // dropped), so a long download is never taken for an idle connection.
                let response = response.map(|body| {
                    body.map_frame(move |frame| {
                        let _in_progress = &busy;
                        frame
                    })
                    .boxed_unsync()
                });
                Ok::<_, Infallible>(response)
            });
            request
        })
    };
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);
    let mut closing = *shutdown.borrow();
    if closing {
        connection.as_mut().graceful_shutdown();
    }
    // Set when an idle connection is being closed. Nothing is in progress on it, so if the
    // client does not take part in the graceful close (an HTTP/2 client that never answers
    // the GOAWAY's PING) it is dropped after another `idle_timeout`: an idle client must not
    // be able to keep its connection — and its `max_connections` slot — for ever.
    let mut drop_at: Option<tokio::time::Instant> = None;
    loop {
        let idle_at = tokio::time::Instant::from_std(activity.idle_deadline(idle_timeout));
        tokio::select! {
            _ = connection.as_mut() => break,
            _ = shutdown.changed(), if !closing => {
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = tokio::time::sleep_until(idle_at), if !closing => {
                if activity.idle_for() >= idle_timeout {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                    drop_at = Some(tokio::time::Instant::now() + idle_timeout);
                }
            }
            _ = sleep_until_some(drop_at) => {
                if activity.idle_for() >= idle_timeout {
                    tracing::debug!("idle connection did not close gracefully; dropped");
                    break;
                }
                drop_at = Some(tokio::time::Instant::now() + idle_timeout);
            }
        }
    }
}

/// Sleeps until `at`, or for ever when it is `None`.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// When a connection last had a request in progress, and how many it has now.
struct Activity {
    in_flight: AtomicUsize,
    last: Mutex<Instant>,
}

/// A request in progress on a connection; dropping it marks the connection active now.
struct Busy(Arc<Activity>);

impl Activity {
    fn new() -> Activity {
        Activity {
            in_flight: AtomicUsize::new(0),
            last: Mutex::new(Instant::now()),
        }
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.touch();
        Busy(self.clone())
    }

    fn touch(&self) {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
    }

    /// How long the connection has had no request in progress (zero while one is).
    fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return Duration::ZERO;
        }
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .elapsed()
    }

    /// When the connection will have been idle for `timeout`, if nothing happens before.
    fn idle_deadline(&self, timeout: Duration) -> Instant {
        Instant::now() + timeout.saturating_sub(self.idle_for())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.touch();
    }
}

/// Runs one request through the pipeline, inside the panic guard.
async fn respond(gw: &Gateway, req: Request<Incoming>, conn: ConnInfo) -> Response<ProxyBody> {
    let started = Instant::now();
    let (response, panicked) = catch_panics(pipeline::handle(gw, req, conn)).await;
    if panicked {
        // `handle` records every answer it gives; this one it never got to give.
        gw.metrics
            .observe_request(response.status(), started.elapsed());
    }
    response
}

/// Awaits a request's future; if it panics, the panic is logged and the request answered
/// 500 (`internal_error`) — the connection and the process carry on. The `bool` says
/// whether that happened.
///
/// `AssertUnwindSafe` is sound here because nothing the request shares with others is left
/// half-changed by an unwinding request: the snapshot is immutable behind an `Arc`, caches
/// and counters update atomically, and the few `Mutex`es are recovered from poisoning.
/// Panics while a response body streams (after this returns) end that connection's task,
/// which tokio contains the same way. Needs `panic = "unwind"` (the default profile).
pub fn catch_panics<F>(request: F) -> impl Future<Output = (Response<ProxyBody>, bool)>
where
    F: Future<Output = Response<ProxyBody>>,
{
    // A combinator, not an `async fn`: an async fn would hold `request` twice (the
    // argument and the guarded copy), and this future is moved for every request.
    AssertUnwindSafe(request)
        .catch_unwind()
        .map(|outcome| match outcome {
            Ok(response) => (response, false),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .copied()
                    .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                    .unwrap_or("(not a string)");
                tracing::error!(panic = message, "request task panicked; answered 500");
                (
                    GatewayError::Internal("internal_error").into_response(false),
                    true,
                )
            }
        })
}

/// The whole answer to a connection above `server.max_connections`.
fn over_capacity_response(retry_after: Duration) -> Vec<u8> {
    let body = r#"{"error":"unavailable","reason":"too_many_connections"}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: {}\r\ncache-control: no-store\r\nconnection: close\r\n\
         content-length: {}\r\n\r\n{body}",
        retry_after.as_secs().max(1),
        body.len()
    )
    .into_bytes()
}

/// A connection above `server.max_connections` is accepted and answered 503 with
/// `Retry-After`, then closed — so clients learn to come back rather than hang in the
/// listen queue. The answer is written without reading the request (an HTTP/1.1 client
/// reads it as the answer to what it sends); what the client sends is then read and dropped
/// for a moment, so that closing does not reset the connection before the client has read
/// the answer. TLS connections are closed at once: no handshake is spent on them.
fn turn_away(stream: TcpStream, tls: bool, turned_away: &Arc<Semaphore>, answer: &Arc<[u8]>) {
    let Ok(permit) = turned_away.clone().try_acquire_owned() else {
        return;
    };
    if tls {
        return;
    }
    let answer = answer.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let mut stream = stream;
        let _ = tokio::time::timeout(TURN_AWAY_TIME, async {
            stream.write_all(&answer).await?;
            stream.shutdown().await?;
            let mut sink = [0u8; 4096];
            while stream.read(&mut sink).await? > 0 {}
            Ok::<_, std::io::Error>(())
        })
        .await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn a_panicking_request_is_answered_500_and_the_next_one_is_served() {
        let (response, panicked) = catch_panics(async {
            if Instant::now().elapsed() < Duration::from_secs(3600) {
                panic!("a bug in some stage");
            }
            Response::new(crate::error::full_body("unreachable"))
        })
        .await;
        assert!(panicked);
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let json: serde_json::Value =
            serde_json::from_slice(&body).unwrap_or_else(|e| panic!("not JSON: {e}"));
        assert_eq!(
            json,
            serde_json::json!({"error": "internal_error", "reason": "internal_error"})
        );

        // A panic with a formatted message, then a request that does not panic.
        let (response, panicked) = catch_panics(async {
            let stage = "decide";
            if Instant::now().elapsed() < Duration::from_secs(3600) {
                panic!("{stage} failed");
            }
            Response::new(crate::error::full_body(""))
        })
        .await;
        assert!(panicked);
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let (response, panicked) =
            catch_panics(async { Response::new(crate::error::full_body("fine")) }).await;
        assert!(!panicked);
        assert_eq!(response.status(), StatusCode::OK);
    }

    #[test]
    fn activity_counts_idle_time_only_between_requests() {
        let activity = Arc::new(Activity::new());
        let busy = activity.begin();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(activity.idle_for(), Duration::ZERO, "busy is not idle");
        drop(busy);
        std::thread::sleep(Duration::from_millis(20));
        assert!(activity.idle_for() >= Duration::from_millis(20));
        assert!(
            activity.idle_deadline(Duration::from_secs(1))
                < Instant::now() + Duration::from_secs(1)
        );
    }

    #[test]
    fn the_over_capacity_answer_is_a_complete_http_response() {
        let answer =
            String::from_utf8(over_capacity_response(Duration::from_secs(2))).unwrap_or_default();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or_default();
        assert!(head.starts_with("HTTP/1.1 503 "));
        assert!(head.contains("\r\nretry-after: 2\r\n"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
    }
}
