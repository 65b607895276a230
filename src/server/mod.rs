//! Listeners: the proxy (HTTP/1.1 and HTTP/2, TLS with ALPN when configured) and the admin
//! listener, with graceful shutdown, and the limits that belong to connections: how many
//! may be open, how long one may sit idle, how many HTTP/2 streams it may carry. The proxy
//! listener accepts on the caller's runtime and hands each connection to a worker thread
//! ([`workers`]), which serves it to the end. Every request runs inside a panic
//! guard: a bug answers 500, it does not take the process down.

pub mod connection;
mod parking;
pub mod workers;

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use futures_util::FutureExt as _;
use futures_util::future::Either;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::config::TlsFiles;
use crate::gateway::Gateway;
use crate::pipeline::forward::ConnInfo;
use connection::{Activity, Protocols, Slots, serve_plain, serve_tls};
use workers::Workers;

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

/// Binds the proxy listener with `backlog` (tokio's `TcpListener::bind` listens with 128,
/// which a burst of new connections overflows: measured, a client opening connections one
/// after another had a SYN dropped — and waited a second to retry — every few hundred).
fn bind_with_backlog(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
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
    let proxy = bind_with_backlog(config.server.listen, config.server.listen_backlog).map_err(
        |source| ServerError::Bind {
            addr: config.server.listen,
            source,
        },
    )?;
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
    crate::changes::notify::start(&gw.notifier, &gw.store);
    if let Some(shared) = gw.store.shared() {
        shared.start();
        crate::snapshot::follow::start(&gw.store);
    }

    let mut auto = auto::Builder::new(TokioExecutor::new());
    // The same HTTP/1.1 limits on both builders.
    macro_rules! http1_limits {
        ($builder:expr) => {
            $builder
                .max_buf_size(config.server.max_header_bytes.max(8192) + 1024)
                .max_headers(config.server.max_headers)
        };
    }
    // hyper also runs the header timer while an idle HTTP/1.1 connection waits for its next
    // request, so that wait ends at the shorter of this and `idle_timeout`. On the plain
    // HTTP/1.1 builder the connection enforces the same deadline itself
    // (`connection::drive`): hyper's timer is armed and dropped for every request.
    http1_limits!(auto.http1())
        .timer(TokioTimer::new())
        .header_read_timeout(config.server.header_read_timeout);
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1_limits!(http1).header_read_timeout(None);
    auto.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(config.server.max_header_bytes as u32)
        .max_concurrent_streams(config.server.h2_max_concurrent_streams)
        .max_pending_accept_reset_streams(config.server.h2_max_pending_reset_streams);
    let protocols = Arc::new(Protocols { auto, http1 });

    let proxy_task = {
        let pipeline = gw.pipeline.clone();
        let mut rx = rx.clone();
        let max_connections = config.server.max_connections;
        // One permit per open connection. All permits back means all connections closed,
        // which is what the graceful shutdown waits for.
        let connections = Arc::new(Semaphore::new(max_connections));
        let turned_away = Arc::new(Semaphore::new(MAX_TURNED_AWAY));
        let over_capacity: Arc<[u8]> = over_capacity_response(config.server.retry_after).into();
        let grace = config.server.shutdown_grace;
        let per_client_cap = config.server.max_connections_per_client;
        let per_client = (per_client_cap > 0).then(|| Arc::new(Mutex::new(HashMap::new())));
        tokio::spawn(async move {
            // Connections in the order they were accepted, until they begin a request:
            // the eviction candidates when every slot is taken.
            let mut unused: VecDeque<Weak<Activity>> = VecDeque::new();
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
                        let per_client = match &per_client {
                            Some(table) => match ClientSlot::take(table, remote.ip(), per_client_cap) {
                                Some(slot) => Some(slot),
                                None => {
                                    turn_away(stream, tls.is_some(), &turned_away, &over_capacity);
                                    continue;
                                }
                            },
                            None => None,
                        };
                        let slot = match connections.clone().try_acquire_owned() {
                            Ok(permit) => Slot::Now { _permit: permit },
                            Err(_) if evict_oldest_unused(&mut unused) => Slot::Soon(connections.clone()),
                            Err(_) => {
                                turn_away(stream, tls.is_some(), &turned_away, &over_capacity);
                                continue;
                            }
                        };
                        let activity = Arc::new(Activity::new());
                        // Closed or used connections leave from the front as they pass (a
                        // `Weak` keeps its allocation), and all of them now and then.
                        while unused.front().is_some_and(|a| a.upgrade().is_none_or(|a| a.served_any())) {
                            unused.pop_front();
                        }
                        unused.push_back(Arc::downgrade(&activity));
                        if unused.len() > 2 * max_connections {
                            unused.retain(|a| a.upgrade().is_some_and(|a| !a.served_any()));
                        }
                        let _ = stream.set_nodelay(true);
                        // Handed over as a plain socket: it joins the reactor of the worker
                        // that serves it.
                        let Ok(stream) = stream.into_std() else { continue };
                        let pipeline = pipeline.clone();
                        let protocols = protocols.clone();
                        let tls = tls.clone();
                        let shutdown = rx.clone();
                        // Combinators rather than one async block: a block keeps everything
                        // it captured for as long as it runs, beside the copies it handed on,
                        // and this task lives as long as its connection (-Zprint-type-sizes).
                        workers.spawn(move |open| admit(slot).then(move |slot| {
                            let (Some(slot), Ok(stream)) = (slot, TcpStream::from_std(stream)) else {
                                return Either::Left(std::future::ready(()));
                            };
                            let conn = ConnInfo { remote, tls: tls.is_some() };
                            // Given back when the connection closes.
                            let slots: Slots = Box::new((per_client, slot, open));
                            // Boxed, the TLS path: a plain-text connection's task should not
                            // carry the handshake's state in it.
                            Either::Right(match tls {
                                Some(acceptor) => Either::Left(Box::pin(async move {
                                    // A client that never finishes the handshake must not hold the slot.
                                    let timeout = pipeline.config.server.header_read_timeout;
                                    let handshake = acceptor.accept(stream);
                                    if let Ok(Ok(stream)) = tokio::time::timeout(timeout, handshake).await {
                                        serve_tls(&protocols, stream, pipeline, conn, shutdown, activity).await;
                                    }
                                    drop(slots);
                                })),
                                None => Either::Right(parking::then_park(serve_plain(protocols, stream, pipeline, conn, shutdown, activity, slots))),
                            })
                        }));
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

/// How long a connection admitted by evicting another waits for the evicted one's slot.
const EVICTION_WAIT: Duration = Duration::from_secs(1);

/// The connection's slot, once it has one: a connection admitted by evicting another waits
/// for the evicted one to give its slot back, and is closed (`None`) if it still finds none.
async fn admit(slot: Slot) -> Option<Slot> {
    match slot {
        Slot::Now { .. } => Some(slot),
        Slot::Soon(connections) => {
            match tokio::time::timeout(EVICTION_WAIT, connections.acquire_owned()).await {
                Ok(Ok(permit)) => Some(Slot::Now { _permit: permit }),
                _ => None,
            }
        }
    }
}

/// A connection's `max_connections` slot: taken now, or to be taken once the connection
/// evicted for it has closed.
enum Slot {
    /// Held, never read: given back when dropped, as the connection ends.
    Now {
        _permit: tokio::sync::OwnedSemaphorePermit,
    },
    Soon(Arc<Semaphore>),
}

/// At capacity, a new connection is worth more than the oldest one that has not begun a
/// single request in all its time (an idle-socket flood, a slow loris still sending its
/// first head): that one is told to close. `false` when every open connection has served.
fn evict_oldest_unused(unused: &mut VecDeque<Weak<Activity>>) -> bool {
    while let Some(candidate) = unused.pop_front() {
        if let Some(activity) = candidate.upgrade()
            && !activity.served_any()
        {
            activity.evict();
            return true;
        }
    }
    false
}

/// One of a client address's connections (`server.max_connections_per_client`), given
/// back when the connection ends.
struct ClientSlot {
    table: Arc<Mutex<HashMap<IpAddr, usize>>>,
    client: IpAddr,
}

impl ClientSlot {
    fn take(
        table: &Arc<Mutex<HashMap<IpAddr, usize>>>,
        client: IpAddr,
        cap: usize,
    ) -> Option<ClientSlot> {
        let mut open = table.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(client).or_insert(0);
        if *count >= cap {
            return None;
        }
        *count += 1;
        Some(ClientSlot {
            table: table.clone(),
            client,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.client);
            }
        }
    }
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
