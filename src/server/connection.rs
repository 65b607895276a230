//! One client connection, served to its end on the worker that accepted it: idle and
//! shutdown handling, and the panic guard every request runs in.

use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt as _;
use http::{Request, Response};
use http_body_util::BodyExt as _;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Body as _, Incoming};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::pin::Pin;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::http::body::{BoxError, ProxyBody};
use crate::pipeline::Pipeline;
use crate::pipeline::error::GatewayError;
use crate::pipeline::forward::ConnInfo;
use crate::pipeline::rescue::refusal;

/// The hyper builders proxy connections are served with.
pub(super) struct Protocols {
    /// HTTP/2, and any connection whose first bytes could still be the HTTP/2 preface.
    pub auto: auto::Builder<TokioExecutor>,
    /// Plain-text HTTP/1.1, served so that it can be parked between requests.
    pub http1: http1::Builder,
}

/// How long a plain HTTP/1.1 connection must have been idle before it is parked: long
/// enough that a connection in steady use is rarely parked between its requests (parking
/// and unparking costs a few allocations), short enough that a burst of connections left
/// open after one request each is parked before many of them pile up — the allocator keeps
/// their peak resident. Measured (docs/BENCHMARKS.md): 3,000 connections opened at once
/// hold 3.5–3.9 KiB each parked after 10 ms, 7.9–9.1 after 50 ms; under load, the same CPU.
const PARK_AFTER: Duration = Duration::from_millis(10);

/// What a connection carries from one served stretch to the next. It counts the connection
/// in the gateway's metrics while it lives.
struct Session {
    pipeline: Arc<Pipeline>,
    /// Parked now: waiting for the client with only the socket held.
    parked: bool,
    activity: Arc<Activity>,
    shutdown: watch::Receiver<bool>,
    /// Set at shutdown for a connection that has not begun a request: when it must have.
    first_request_wait: Option<tokio::time::Instant>,
}

impl Session {
    fn new(
        pipeline: &Arc<Pipeline>,
        activity: Arc<Activity>,
        shutdown: watch::Receiver<bool>,
    ) -> Session {
        pipeline.metrics().client_connection(true);
        // Shutting down already: the connection was accepted just before the listener closed.
        let first_request_wait = shutdown
            .borrow()
            .then(|| tokio::time::Instant::now() + SHUTDOWN_FIRST_REQUEST_WAIT);
        Session {
            pipeline: pipeline.clone(),
            parked: false,
            activity,
            shutdown,
            first_request_wait,
        }
    }

    fn set_parked(&mut self, parked: bool) {
        if self.parked != parked {
            self.parked = parked;
            self.pipeline.metrics().parked_connection(parked);
        }
    }

    /// How long the connection may have no request in progress. One that has not begun a
    /// single request is held to the header deadline: one that never sends a byte must not
    /// keep its `max_connections` slot for a whole idle timeout.
    fn idle_limit(&self) -> Duration {
        let server = &self.pipeline.config.server;
        if self.activity.served_any() {
            server.idle_timeout
        } else {
            server.header_read_timeout.min(server.idle_timeout)
        }
    }

    /// The same for a plain HTTP/1.1 connection, parked or not: hyper runs no header timer
    /// on it (server/mod.rs), so the header deadline also ends the wait between requests,
    /// as hyper's timer would.
    fn http1_idle_limit(&self) -> Duration {
        let server = &self.pipeline.config.server;
        server.idle_timeout.min(server.header_read_timeout)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.set_parked(false);
        self.pipeline.metrics().client_connection(false);
    }
}

/// What a connection holds for as long as it is open, given back when it closes: its
/// `max_connections` slot and its place in its worker's count (server/mod.rs).
pub(super) type Slots = Box<dyn std::any::Any + Send>;

/// Serves a plain-text client connection until it ends (`None`) or is idle enough to park
/// (the connection, as from [`serve_http1`]). hyper's connection is not built
/// until the client sends its first bytes; HTTP/1.1 connections idle for [`PARK_AFTER`] are
/// parked — hyper's connection, its buffers and the connection's task are dropped, and the
/// socket waits in its worker's table (server/parking.rs) — and served afresh, in a new
/// task, when the client sends again, so that an idle keep-alive connection costs little
/// more than its socket.
pub(super) fn serve_plain(
    protocols: Arc<Protocols>,
    stream: TcpStream,
    pipeline: Arc<Pipeline>,
    conn: ConnInfo,
    shutdown: watch::Receiver<bool>,
    activity: Arc<Activity>,
    slots: Slots,
) -> impl Future<Output = Option<Http1Connection>> + Send {
    // Not an `async fn`, which copies its arguments into locals, and what is built from
    // them is built before the future: everything the future captures stays in the
    // connection's task for as long as the connection is open (-Zprint-type-sizes).
    let mut session = Session::new(&pipeline, activity.clone(), shutdown);
    let service = RequestService {
        pipeline,
        conn,
        activity: activity.clone(),
    };
    async move {
        // Waited for here, not in the table: a connection that has not begun a request may
        // be evicted for a new one, and gets a moment at shutdown to send what it was
        // opened for.
        if !await_request(&stream, &mut session).await {
            return None;
        }
        // Scoped: a local's storage outlives its last use to the end of its scope.
        let may_be_http2 = {
            let mut head = [0u8; H2_PREFACE.len()];
            let Ok(read @ 1..) = stream.peek(&mut head).await else {
                return None;
            };
            H2_PREFACE.starts_with(&head[..read])
        };
        if may_be_http2 {
            // HTTP/2 with prior knowledge, or too few bytes yet to tell: the auto builder
            // reads the preface itself. Such connections are not parked.
            Box::pin(serve_auto(&protocols, stream, service, &mut session)).await;
            drop(slots);
            return None;
        }
        let socket = ClientSocket {
            unread: Bytes::new(),
            stream,
            activity,
        };
        serve_http1(Http1Connection {
            socket,
            protocols,
            service,
            session,
            slots,
        })
        .await
    }
}

/// A plain HTTP/1.1 connection with no request in progress: all it needs to serve again.
/// The fields drop in order: the socket closes before the slots are given back.
pub(super) struct Http1Connection {
    socket: ClientSocket,
    protocols: Arc<Protocols>,
    service: RequestService,
    session: Session,
    slots: Slots,
}

impl Http1Connection {
    /// The gateway's shutdown signal.
    pub(super) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.session.shutdown.clone()
    }

    /// The gateway is shutting down: an idle connection that has served a request is closed.
    pub(super) fn shutting_down(&self) -> bool {
        *self.session.shutdown.borrow()
    }

    /// Whether the client has sent something (or closed): `Ready(false)` when the socket
    /// can no longer be waited on.
    pub(super) fn poll_readable(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<bool> {
        self.socket
            .stream
            .poll_read_ready(cx)
            .map(|ready| ready.is_ok())
    }

    pub(super) fn set_parked(&mut self, parked: bool) {
        self.session.set_parked(parked);
    }

    /// When the connection must be closed if the client sends nothing before: a parked
    /// connection may stay idle as long as it could unparked ([`Session::http1_idle_limit`]).
    pub(super) fn idle_deadline(&self) -> tokio::time::Instant {
        let limit = self.session.http1_idle_limit();
        tokio::time::Instant::from_std(self.session.activity.idle_deadline(limit))
    }

    /// It has been idle for as long as it may.
    pub(super) fn idle_too_long(&self) -> bool {
        self.session.activity.idle_for() >= self.session.http1_idle_limit()
    }
}

/// Serves a plain HTTP/1.1 connection from its next request until it ends (`None`) or is
/// idle enough to park (the connection, to hand to its worker's table: server/parking.rs).
pub(super) fn serve_http1(
    connection: Http1Connection,
) -> impl Future<Output = Option<Http1Connection>> + Send {
    let Http1Connection {
        mut socket,
        protocols,
        mut service,
        mut session,
        slots,
    } = connection;
    async move {
        loop {
            let mut connection = Box::new(
                protocols
                    .http1
                    .serve_connection(TokioIo::new(socket), service)
                    .with_upgrades(),
            );
            let graceful = |c: &mut Box<http1::UpgradeableConnection<_, _>>| {
                Pin::new(&mut **c).graceful_shutdown()
            };
            // Boxed, as the connection is: the task's own future stays small.
            let turn = Box::pin(drive(&mut connection, graceful, true, &mut session)).await;
            if let Turn::Ended = turn {
                return None;
            }
            // Nothing is in progress and everything written has been flushed: all hyper holds
            // that must be kept is what it read of a request not yet begun.
            {
                let parts = connection.into_parts()?;
                service = parts.service;
                socket = parts.io.into_inner();
                // Copied, and dropped here: hyper's `read_buf` is a view of its whole read
                // buffer, which would otherwise stay allocated while the connection is parked.
                let read_buf = parts.read_buf;
                socket.unread = if read_buf.is_empty() && socket.unread.is_empty() {
                    Bytes::new()
                } else {
                    [&read_buf[..], &socket.unread[..]].concat().into()
                };
            }
            if socket.unread.is_empty() {
                return Some(Http1Connection {
                    socket,
                    protocols,
                    service,
                    session,
                    slots,
                });
            }
            // Part of the next request had arrived. It is served at once, and not parked
            // again until a request begins: still idle past `PARK_AFTER`, it would otherwise
            // be parked and woken again at once, over and over, while the head trickles in.
            session.activity.clean.store(false, Ordering::Relaxed);
        }
    }
}

/// Serves a TLS client connection until it ends (not parked: rustls's own buffers would
/// stay, and the handshake may already have read the first request).
pub(super) async fn serve_tls(
    protocols: &Protocols,
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    pipeline: Arc<Pipeline>,
    conn: ConnInfo,
    shutdown: watch::Receiver<bool>,
    activity: Arc<Activity>,
) {
    let mut session = Session::new(&pipeline, activity.clone(), shutdown);
    let service = RequestService {
        pipeline,
        conn,
        activity,
    };
    serve_auto(protocols, stream, service, &mut session).await;
}

/// Serves a connection with the auto builder (HTTP/2, or HTTP/1.1 over TLS) to its end.
async fn serve_auto<I>(protocols: &Protocols, io: I, service: RequestService, session: &mut Session)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let connection = protocols
        .auto
        .serve_connection_with_upgrades(TokioIo::new(io), service);
    let mut connection = Box::pin(connection);
    drive(
        &mut connection,
        |c| c.as_mut().graceful_shutdown(),
        false,
        session,
    )
    .await;
}

/// The client preface every HTTP/2 connection with prior knowledge begins with (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a proxied request is answered with.
type ClientResponse = Response<UnsyncBoxBody<Bytes, BoxError>>;

/// The service every request on a connection runs through.
#[derive(Clone)]
struct RequestService {
    pipeline: Arc<Pipeline>,
    conn: ConnInfo,
    activity: Arc<Activity>,
}

impl hyper::service::Service<Request<Incoming>> for RequestService {
    type Response = ClientResponse;
    type Error = Infallible;
    // Boxed: hyper keeps a slot the size of this future for every connection it serves (its
    // `in_flight`, allocated with the connection), a pointer instead of the whole request
    // future. Handed over unboxed (through `service_fn`), a connection in steady use would
    // skip one allocation per request (about 250 instructions of ~91,000, callgrind), but
    // every connection would hold 4.3 KB from its first byte until it is parked: with
    // 10,000 connections opened in a row, 2–5 MB more stayed resident (benches/load.sh,
    // four paired runs), for a CPU gain timed rounds cannot resolve.
    type Future = Pin<Box<dyn Future<Output = Result<ClientResponse, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let busy = self.activity.begin(req.body().is_end_stream());
        // Combinators, not an async block around `respond`: each async layer copies the
        // whole of the future it awaits into its own, and this one is kilobytes.
        Box::pin(
            respond(self.pipeline.clone(), req, self.conn).map(|response| {
                // The request stays in progress until its response body has been sent (or
                // dropped), so a long download is never taken for an idle connection; and the
                // body tells the connection when a frame waits for the client to take it.
                Ok(response.map(|body| WatchedBody { inner: body, busy }.boxed_unsync()))
            }),
        )
    }
}

/// How a served stretch of a connection ended.
enum Turn {
    /// The connection is over.
    Ended,
    /// It is idle and may be parked.
    Park,
}

/// Serves `connection` until it ends or, where `parks` (a plain HTTP/1.1 connection), until
/// it is idle enough to park.
/// It is closed gracefully — the request in progress finishes, then the connection closes
/// (HTTP/2: GOAWAY) — when the gateway shuts down or when no request has been in progress
/// for `server.idle_timeout`.
async fn drive<C>(
    connection: &mut C,
    graceful_shutdown: impl Fn(&mut C),
    parks: bool,
    session: &mut Session,
) -> Turn
where
    C: Future + Unpin,
{
    let activity = session.activity.clone();
    let mut closing = false;
    // Set when an idle connection is being closed. Nothing is in progress on it, so if the
    // client does not take part in the graceful close (an HTTP/2 client that never answers
    // the GOAWAY's PING) it is dropped after another `idle_timeout`: an idle client must not
    // be able to keep its connection — and its `max_connections` slot — for ever.
    let mut drop_at: Option<tokio::time::Instant> = None;
    let (mut last_progress, mut strikes) = (0u64, 0u32);
    // Periodic, whether or not a request is in progress: arming it when a request begins
    // would cost every request a wake-up, and an idle connection never strikes.
    let stall_period = session.pipeline.config.server.send_timeout / 2;
    let mut stall_check = tokio::time::Instant::now() + stall_period;
    loop {
        let limit = if parks {
            session.http1_idle_limit()
        } else {
            session.idle_limit()
        };
        let may_park = parks && session.first_request_wait.is_none();
        // One timer for both: closing when idle too long, parking when idle a little.
        let mut check_at = activity.idle_deadline(limit);
        if may_park {
            check_at = check_at.min(activity.idle_deadline(PARK_AFTER));
        }
        tokio::select! {
            // The connection first: a parked connection resumed because its client sent
            // something is past its park deadline, and must read before that is checked, or
            // it would go back to the table unread (and be woken again at once).
            biased;
            _ = &mut *connection => return Turn::Ended,
            // At capacity the listener evicts the oldest connection that never began a
            // request, rather than refuse a new one (server/mod.rs).
            _ = activity.evict.notified(), if !activity.served_any() => {
                tracing::debug!("never-used connection evicted for a new one");
                return Turn::Ended;
            }
            _ = session.shutdown.changed(), if !closing && session.first_request_wait.is_none() => {
                if activity.served_any() {
                    graceful_shutdown(connection);
                    closing = true;
                } else {
                    // Accepted, its request perhaps already in the socket but not read yet:
                    // closing now would leave a request sent and never answered. It gets a
                    // moment to begin one, which is then answered (and the connection closed).
                    session.first_request_wait = Some(tokio::time::Instant::now() + SHUTDOWN_FIRST_REQUEST_WAIT);
                }
            }
            _ = sleep_until_some(session.first_request_wait), if !closing => {
                graceful_shutdown(connection);
                closing = true;
            }
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(check_at)), if !closing => {
                if activity.idle_for() >= limit {
                    graceful_shutdown(connection);
                    closing = true;
                    drop_at = Some(tokio::time::Instant::now() + limit);
                } else if may_park && activity.parkable(PARK_AFTER) {
                    return Turn::Park;
                }
            }
            _ = tokio::time::sleep_until(stall_check) => {
                // A frame has waited for the client through two checks half a send timeout
                // apart (so for between one and one and a half send timeouts): a client that stopped reading would hold the response, its
                // buffers and the upstream connection behind it for ever.
                let progress = activity.progress.load(Ordering::Relaxed);
                if activity.waiting_on_client.load(Ordering::Relaxed) && progress == last_progress {
                    strikes += 1;
                } else {
                    strikes = 0;
                }
                last_progress = progress;
                stall_check = tokio::time::Instant::now() + stall_period;
                if strikes >= 2 {
                    tracing::debug!("client stopped reading; connection dropped");
                    return Turn::Ended;
                }
            }
            _ = sleep_until_some(drop_at) => {
                if activity.idle_for() >= limit {
                    tracing::debug!("idle connection did not close gracefully; dropped");
                    return Turn::Ended;
                }
                drop_at = Some(tokio::time::Instant::now() + limit);
            }
        }
    }
}

/// Waits for a new connection's first bytes: `false` when the connection is to be closed
/// instead — evicted, idle too long, or the gateway shutting down (a connection that has not
/// begun a request gets a moment to begin one first).
async fn await_request(stream: &TcpStream, session: &mut Session) -> bool {
    session.set_parked(true);
    let woken = wait_parked(stream, session).await;
    session.set_parked(false);
    woken
}

async fn wait_parked(stream: &TcpStream, session: &mut Session) -> bool {
    let activity = session.activity.clone();
    loop {
        let limit = session.http1_idle_limit();
        // One timer: a parked connection is small, and each timer is a tenth of it.
        let mut wake_at = tokio::time::Instant::from_std(activity.idle_deadline(limit));
        if let Some(at) = session.first_request_wait {
            wake_at = wake_at.min(at);
        }
        tokio::select! {
            // Polled in place: `readable()`'s future would add 152 bytes to every parked
            // connection's task.
            ready = std::future::poll_fn(|cx| stream.poll_read_ready(cx)) => return ready.is_ok(),
            _ = activity.evict.notified(), if !activity.served_any() => {
                tracing::debug!("never-used connection evicted for a new one");
                return false;
            }
            _ = session.shutdown.changed(), if session.first_request_wait.is_none() => {
                if activity.served_any() {
                    return false;
                }
                session.first_request_wait = Some(tokio::time::Instant::now() + SHUTDOWN_FIRST_REQUEST_WAIT);
            }
            _ = tokio::time::sleep_until(wake_at) => {
                let shutdown_wait_over = session
                    .first_request_wait
                    .is_some_and(|at| at <= tokio::time::Instant::now());
                if shutdown_wait_over || activity.idle_for() >= limit {
                    return false;
                }
            }
        }
    }
}

/// The client socket as hyper sees it: bytes an earlier stretch read but did not use come
/// first, and whether everything hyper wrote has been flushed is kept where the
/// connection can see it (a connection is parked only when it has).
struct ClientSocket {
    unread: Bytes,
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for ClientSocket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if !self.unread.is_empty() {
            let n = self.unread.len().min(buf.remaining());
            buf.put_slice(&self.unread.split_to(n));
            return std::task::Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ClientSocket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.activity.unflushed.store(true, Ordering::Relaxed);
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.activity.unflushed.store(true, Ordering::Relaxed);
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let flushed = Pin::new(&mut self.stream).poll_flush(cx);
        if let std::task::Poll::Ready(Ok(())) = flushed {
            self.activity.unflushed.store(false, Ordering::Relaxed);
        }
        flushed
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// At shutdown, how long a connection that has not begun a request is given to begin one.
const SHUTDOWN_FIRST_REQUEST_WAIT: Duration = Duration::from_millis(500);

/// Sleeps until `at`, or for ever when it is `None`.
pub(super) async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// When a connection last had a request in progress, and how many it has now.
pub(super) struct Activity {
    /// Told by the listener to close a connection that has not begun a request.
    evict: tokio::sync::Notify,
    in_flight: AtomicUsize,
    last: Mutex<Instant>,
    /// A request has begun on the connection.
    served: std::sync::atomic::AtomicBool,
    /// A response frame was handed to hyper, which has not asked for the next one yet
    /// (it waits for the client to read).
    waiting_on_client: std::sync::atomic::AtomicBool,
    /// Counts hyper's requests for response frames: unchanged while the client reads nothing.
    progress: AtomicU64,
    /// The last request began with no body: once it is answered, nothing of it is left for
    /// hyper to read (a body the pipeline did not read, hyper drains after the response —
    /// parked then, the rest of that body would be read as the next request).
    clean: std::sync::atomic::AtomicBool,
    /// hyper has written bytes it has not flushed yet (the client is not reading).
    unflushed: std::sync::atomic::AtomicBool,
}

/// A request in progress on a connection; dropping it marks the connection active now.
struct Busy(Arc<Activity>);

impl Activity {
    pub(super) fn new() -> Activity {
        Activity {
            evict: tokio::sync::Notify::new(),
            in_flight: AtomicUsize::new(0),
            last: Mutex::new(Instant::now()),
            served: std::sync::atomic::AtomicBool::new(false),
            waiting_on_client: std::sync::atomic::AtomicBool::new(false),
            progress: AtomicU64::new(0),
            clean: std::sync::atomic::AtomicBool::new(false),
            unflushed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub(super) fn served_any(&self) -> bool {
        self.served.load(Ordering::Relaxed)
    }

    /// Asks the connection to close, if it still has not begun a request.
    pub(super) fn evict(&self) {
        self.evict.notify_one();
    }

    fn begin(self: &Arc<Self>, bodiless: bool) -> Busy {
        self.served.store(true, Ordering::Relaxed);
        self.clean.store(bodiless, Ordering::Relaxed);
        // No clock read here: while a request is in progress the connection is not idle
        // whenever `last` says, and `Busy`'s drop sets `last` before it can be idle again.
        self.in_flight.fetch_add(1, Ordering::SeqCst);
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

    /// Whether the connection may be parked now: it has served a request, none is in
    /// progress or left half-read, all it wrote is flushed, and it has been idle `for_at_least`.
    fn parkable(&self, for_at_least: Duration) -> bool {
        self.served_any()
            && self.clean.load(Ordering::Relaxed)
            && !self.unflushed.load(Ordering::Relaxed)
            && self.idle_for() >= for_at_least
    }

    /// When the connection will have been idle for `timeout`, if nothing happens before.
    fn idle_deadline(&self, timeout: Duration) -> Instant {
        Instant::now() + timeout.saturating_sub(self.idle_for())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that tells its connection when a frame waits on the client: set when a
/// frame is handed to hyper, cleared when hyper asks for the next (it has written the last);
/// and counts hyper's asks, so the connection sees whether any came between two checks.
struct WatchedBody {
    inner: ProxyBody,
    busy: Busy,
}

impl hyper::body::Body for WatchedBody {
    type Data = bytes::Bytes;
    type Error = crate::http::body::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        let this = &mut *self;
        let activity = &this.busy.0;
        activity.progress.fetch_add(1, Ordering::Relaxed);
        activity.waiting_on_client.store(false, Ordering::Relaxed);
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(_))) = &polled {
            activity.waiting_on_client.store(true, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Runs one request through the pipeline, inside the panic guard.
fn respond(
    pipeline: Arc<Pipeline>,
    req: Request<Incoming>,
    conn: ConnInfo,
) -> impl Future<Output = Response<ProxyBody>> + Send {
    let started = Instant::now();
    let metrics = pipeline.clone();
    catch_panics(pipeline.handle(req, conn, started)).map(move |(response, panicked)| {
        if panicked {
            // `handle` records every answer it gives; this one it never got to give.
            metrics
                .metrics()
                .observe_request(response.status(), started.elapsed());
        }
        response
    })
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
                    refusal(&GatewayError::Internal("internal_error"), false),
                    true,
                )
            }
        })
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
            Response::new(crate::http::body::full_body("unreachable"))
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
            Response::new(crate::http::body::full_body(""))
        })
        .await;
        assert!(panicked);
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let (response, panicked) =
            catch_panics(async { Response::new(crate::http::body::full_body("fine")) }).await;
        assert!(!panicked);
        assert_eq!(response.status(), StatusCode::OK);
    }

    #[test]
    fn activity_counts_idle_time_only_between_requests() {
        let activity = Arc::new(Activity::new());
        let busy = activity.begin(true);
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
}
