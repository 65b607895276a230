//! Keep-alive connections to one origin (the wiki), for one worker thread: HTTP/1.1
//! connections from hyper's `client::conn`, each driven by a task of its own, and the idle
//! ones kept in a stack.
//!
//! Why not hyper_util's pooled client, which the gateway used before: to put a connection
//! back, that client spawns a task per request that waits for the connection to be ready
//! again, and every checkout goes through a keyed, shared pool and a connect future built
//! whether it is needed or not. Here the answer's body puts its connection back when the
//! wiki's answer has been read to its end, with no task: the bare pass-through proxy
//! measured 1.5 µs less CPU per request this way, the gateway as much
//! (docs/BENCHMARKS.md, "Connections to the wiki"). What that client did for the gateway
//! is kept: a request that an idle connection closed before it could be sent is sent
//! again on another; idle connections are closed after [`IDLE_TIMEOUT`] and at most
//! `max_idle` are kept.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, Uri};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;

use super::client::{IDLE_TIMEOUT, RequestBody};

/// Why a request to the origin got no answer.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("cannot connect to {origin}")]
    Connect {
        origin: Uri,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("HTTP/1.1 handshake with {origin} failed")]
    Handshake {
        origin: Uri,
        #[source]
        source: hyper::Error,
    },
    #[error("the request to {origin} failed")]
    Send {
        origin: Uri,
        #[source]
        source: hyper::Error,
    },
}

/// Connections to one origin, for the worker thread that uses it (their tasks run on the
/// runtime that opened them).
pub struct OriginPool<B> {
    connector: HttpsConnector<HttpConnector>,
    /// `scheme://authority`, what the connector connects to.
    origin: Uri,
    handshake: http1::Builder,
    idle: Mutex<IdleConnections<SendRequest<B>>>,
}

impl<B: RequestBody> OriginPool<B> {
    /// A pool for `origin` (its scheme and authority are used), keeping at most `max_idle`
    /// idle connections.
    pub fn new(
        connector: HttpsConnector<HttpConnector>,
        origin: Uri,
        max_idle: usize,
    ) -> Arc<OriginPool<B>> {
        let mut handshake = http1::Builder::new();
        // hyper grows a connection's read buffer to ~400 KB while a large body streams;
        // 64 KiB streams as fast on a LAN and keeps 96 concurrent downloads from holding
        // ~30 MB more (benches/memory.sh).
        handshake.max_buf_size(64 * 1024);
        Arc::new(OriginPool {
            connector,
            origin,
            handshake,
            idle: Mutex::new(IdleConnections::new(max_idle, IDLE_TIMEOUT)),
        })
    }

    /// Sends `req` on an idle connection, or a new one, and answers the response head. The
    /// request's URI is written in origin form (its path and query), as a client talking
    /// to an origin server does (RFC 9112 §3.2.1); `Host` is the caller's to set.
    pub fn send(
        self: &Arc<Self>,
        mut req: Request<B>,
    ) -> impl Future<Output = Result<Response<PooledBody<B>>, PoolError>> + Send + use<B> {
        if req.uri().scheme().is_some() || req.uri().authority().is_some() {
            let origin_form = req
                .uri()
                .path_and_query()
                .cloned()
                .map_or_else(|| Uri::from_static("/"), Uri::from);
            *req.uri_mut() = origin_form;
        }
        let pool = self.clone();
        async move {
            loop {
                // An idle connection that the wiki closed while it waited gives the request
                // back unsent (hyper's `TrySendError::take_message`): it goes to the next
                // one, or a new one. A new one that fails has no next.
                let (mut sender, idle) = match pool.checkout() {
                    Some(sender) => (sender, true),
                    None => (pool.connect().await?, false),
                };
                match sender.try_send_request(req).await {
                    Ok(response) => return Ok(pool.body_returns(response, sender)),
                    Err(mut failed) => match failed.take_message() {
                        Some(unsent) if idle => req = unsent,
                        _ => return Err(pool.send_error(failed.into_error())),
                    },
                }
            }
        }
    }

    fn send_error(&self, source: hyper::Error) -> PoolError {
        PoolError::Send {
            origin: self.origin.clone(),
            source,
        }
    }

    fn checkout(&self) -> Option<SendRequest<B>> {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .checkout(Instant::now())
    }

    /// Keeps a connection whose last answer has been read to its end. One that is not ready
    /// yet (a request body still being sent) is kept once it is, by a task that waits for
    /// that; one that is closed is dropped.
    fn checkin(self: Arc<Self>, mut sender: SendRequest<B>) {
        if sender.is_ready() {
            self.keep(sender);
        } else if !sender.is_closed()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            // Off a runtime (a body dropped as its runtime shuts down) it just closes.
            runtime.spawn(async move {
                if sender.ready().await.is_ok() {
                    self.keep(sender);
                }
            });
        }
    }

    fn keep(&self, sender: SendRequest<B>) {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .checkin(sender, Instant::now());
    }

    async fn connect(&self) -> Result<SendRequest<B>, PoolError> {
        let unreachable = |source| PoolError::Connect {
            origin: self.origin.clone(),
            source,
        };
        let mut connector = self.connector.clone();
        // The tower contract: ready before called (the HTTP connector always is).
        std::future::poll_fn(|cx| tower_service::Service::<Uri>::poll_ready(&mut connector, cx))
            .await
            .map_err(unreachable)?;
        let io = tower_service::Service::call(&mut connector, self.origin.clone())
            .await
            .map_err(unreachable)?;
        let (sender, connection) =
            self.handshake
                .handshake(io)
                .await
                .map_err(|source| PoolError::Handshake {
                    origin: self.origin.clone(),
                    source,
                })?;
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(error = %e, "connection to the wiki ended");
            }
        });
        Ok(sender)
    }

    fn body_returns(
        self: &Arc<Self>,
        response: Response<Incoming>,
        sender: SendRequest<B>,
    ) -> Response<PooledBody<B>> {
        response.map(|inner| PooledBody {
            inner,
            home: Some((self.clone(), sender)),
            read_to_end: false,
        })
    }
}

/// What the pool needs to know of a connection (a trait so the bookkeeping is tested
/// without sockets).
trait Connection {
    /// It can take a request now.
    fn can_send(&self) -> bool;
}

impl<B> Connection for SendRequest<B> {
    fn can_send(&self) -> bool {
        self.is_ready()
    }
}

/// Idle connections, the most recently used on top: a burst's extra connections sink to
/// the bottom and time out there, while the top few stay warm.
struct IdleConnections<C> {
    stack: VecDeque<(C, Instant)>,
    max_idle: usize,
    timeout: Duration,
}

impl<C: Connection> IdleConnections<C> {
    fn new(max_idle: usize, timeout: Duration) -> IdleConnections<C> {
        IdleConnections {
            stack: VecDeque::new(),
            max_idle,
            timeout,
        }
    }

    /// The most recently used connection that can still send; closed and timed-out ones
    /// met on the way are dropped.
    fn checkout(&mut self, now: Instant) -> Option<C> {
        while let Some((connection, since)) = self.stack.pop_back() {
            if now.saturating_duration_since(since) >= self.timeout {
                // Everything below has waited longer.
                self.stack.clear();
                return None;
            }
            if connection.can_send() {
                return Some(connection);
            }
        }
        None
    }

    fn checkin(&mut self, connection: C, now: Instant) {
        while let Some((_, since)) = self.stack.front()
            && now.saturating_duration_since(*since) >= self.timeout
        {
            self.stack.pop_front();
        }
        if self.max_idle == 0 {
            return;
        }
        if self.stack.len() >= self.max_idle {
            self.stack.pop_front();
        }
        self.stack.push_back((connection, now));
    }
}

/// The body of an answer from the origin. Once it has been read to its end its connection
/// goes back to the pool; dropped before that, the connection closes (hyper cannot reuse a
/// connection with an unread answer on it).
pub struct PooledBody<B: RequestBody> {
    inner: Incoming,
    home: Option<(Arc<OriginPool<B>>, SendRequest<B>)>,
    read_to_end: bool,
}

impl<B: RequestBody> PooledBody<B> {
    fn go_home(&mut self) {
        if let Some((pool, sender)) = self.home.take() {
            pool.checkin(sender);
        }
    }
}

impl<B: RequestBody> Body for PooledBody<B> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        match &frame {
            // hyper's server stops polling a body that says it has ended, and after its
            // trailers: the last frame is where the end is seen.
            Poll::Ready(None) => this.read_to_end = true,
            Poll::Ready(Some(Ok(frame))) if frame.is_trailers() || this.inner.is_end_stream() => {
                this.read_to_end = true
            }
            Poll::Ready(Some(Err(_))) => drop(this.home.take()),
            _ => {}
        }
        if this.read_to_end {
            this.go_home();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: RequestBody> Drop for PooledBody<B> {
    fn drop(&mut self) {
        // An answer without a body (`HEAD`, `204`, `304`, `Content-Length: 0`) is never
        // polled: it ended before it began.
        if self.read_to_end || self.inner.is_end_stream() {
            self.go_home();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake {
        id: u32,
        open: bool,
    }

    impl Connection for Fake {
        fn can_send(&self) -> bool {
            self.open
        }
    }

    fn fake(id: u32) -> Fake {
        Fake { id, open: true }
    }

    #[test]
    fn the_most_recently_used_connection_goes_first() {
        let t = Instant::now();
        let mut idle = IdleConnections::new(8, Duration::from_secs(90));
        idle.checkin(fake(1), t);
        idle.checkin(fake(2), t + Duration::from_secs(1));
        let now = t + Duration::from_secs(2);
        assert_eq!(idle.checkout(now).map(|c| c.id), Some(2));
        assert_eq!(idle.checkout(now).map(|c| c.id), Some(1));
        assert!(idle.checkout(now).is_none());
    }

    #[test]
    fn closed_connections_are_passed_over_and_dropped() {
        let t = Instant::now();
        let mut idle = IdleConnections::new(8, Duration::from_secs(90));
        idle.checkin(fake(1), t);
        idle.checkin(Fake { id: 2, open: false }, t);
        idle.checkin(Fake { id: 3, open: false }, t);
        assert_eq!(idle.checkout(t).map(|c| c.id), Some(1));
        assert!(idle.stack.is_empty());
    }

    #[test]
    fn connections_idle_past_the_timeout_are_not_used() {
        let t = Instant::now();
        let timeout = Duration::from_secs(90);
        let mut idle = IdleConnections::new(8, timeout);
        idle.checkin(fake(1), t);
        idle.checkin(fake(2), t + Duration::from_secs(10));
        // The older one has timed out, the newer one not yet.
        let now = t + timeout + Duration::from_secs(5);
        assert_eq!(idle.checkout(now).map(|c| c.id), Some(2));
        assert!(idle.checkout(now).is_none());
        assert!(idle.stack.is_empty());

        // Both timed out: neither is handed out, and both are dropped.
        idle.checkin(fake(3), t);
        idle.checkin(fake(4), t + Duration::from_secs(1));
        assert!(
            idle.checkout(t + timeout + Duration::from_secs(1))
                .is_none()
        );
        assert!(idle.stack.is_empty());
    }

    #[test]
    fn a_checkin_drops_what_has_timed_out_below() {
        let t = Instant::now();
        let timeout = Duration::from_secs(90);
        let mut idle = IdleConnections::new(8, timeout);
        idle.checkin(fake(1), t);
        idle.checkin(fake(2), t + Duration::from_secs(60));
        idle.checkin(fake(3), t + timeout);
        let ids: Vec<u32> = idle.stack.iter().map(|(c, _)| c.id).collect();
        assert_eq!(ids, [2, 3]);
    }

    #[test]
    fn at_most_max_idle_are_kept_and_the_oldest_goes() {
        let t = Instant::now();
        let mut idle = IdleConnections::new(2, Duration::from_secs(90));
        for id in 1..=3 {
            idle.checkin(fake(id), t);
        }
        let ids: Vec<u32> = idle.stack.iter().map(|(c, _)| c.id).collect();
        assert_eq!(ids, [2, 3]);
        let mut none = IdleConnections::new(0, Duration::from_secs(90));
        none.checkin(fake(1), t);
        assert!(none.checkout(t).is_none());
    }
}
