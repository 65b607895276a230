//! One client connection, served to its end on the worker that accepted it: idle and
//! shutdown handling, and the panic guard every request runs in.

use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use http::{Request, Response};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::http::body::ProxyBody;
use crate::pipeline::Pipeline;
use crate::pipeline::error::GatewayError;
use crate::pipeline::forward::ConnInfo;
use crate::pipeline::rescue::refusal;

/// Serves one client connection until it ends. It is closed gracefully — the request in
/// progress finishes, then the connection closes (HTTP/2: GOAWAY) — when the gateway shuts
/// down or when no request has been in progress for `server.idle_timeout`.
pub(super) async fn serve_connection<I>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    pipeline: Arc<Pipeline>,
    conn: ConnInfo,
    mut shutdown: watch::Receiver<bool>,
    activity: Arc<Activity>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let idle_timeout = pipeline.config.server.idle_timeout;
    let send_timeout = pipeline.config.server.send_timeout;
    // A connection that has not begun a single request is held to the header deadline:
    // one that never sends a byte must not keep its `max_connections` slot for a whole
    // idle timeout.
    let first_request = pipeline.config.server.header_read_timeout.min(idle_timeout);
    let service = {
        let activity = activity.clone();
        service_fn(move |req| {
            let pipeline = pipeline.clone();
            let busy = activity.begin();
            // Boxed: hyper keeps a slot the size of this future for every connection, idle or
            // not (its `in_flight`); a pointer there instead of the whole request future
            // saves about 3.5 KB per idle keep-alive connection for one allocation per request.
            let request: std::pin::Pin<Box<dyn Future<Output = _> + Send>> = Box::pin(async move {
                let response = respond(&pipeline, req, conn).await;
                // The request stays in progress until its response body has been sent (or
                // dropped), so a long download is never taken for an idle connection; and
                // the body tells the connection when a frame waits for the client to take it.
                let response =
                    response.map(|body| WatchedBody { inner: body, busy }.boxed_unsync());
                Ok::<_, Infallible>(response)
            });
            request
        })
    };
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);
    let mut closing = false;
    // Set when an idle connection is being closed. Nothing is in progress on it, so if the
    // client does not take part in the graceful close (an HTTP/2 client that never answers
    // the GOAWAY's PING) it is dropped after another `idle_timeout`: an idle client must not
    // be able to keep its connection — and its `max_connections` slot — for ever.
    let mut drop_at: Option<tokio::time::Instant> = None;
    // Shutting down already: the connection was accepted just before the listener closed.
    let mut first_request_wait = shutdown
        .borrow()
        .then(|| tokio::time::Instant::now() + SHUTDOWN_FIRST_REQUEST_WAIT);
    let (mut last_progress, mut strikes) = (0u64, 0u32);
    // Periodic, whether or not a request is in progress: arming it when a request begins
    // would cost every request a wake-up, and an idle connection never strikes.
    let stall_period = send_timeout / 2;
    let mut stall_check = tokio::time::Instant::now() + stall_period;
    loop {
        let limit = if activity.served_any() {
            idle_timeout
        } else {
            first_request
        };
        let idle_at = tokio::time::Instant::from_std(activity.idle_deadline(limit));
        tokio::select! {
            _ = connection.as_mut() => break,
            // At capacity the listener evicts the oldest connection that never began a
            // request, rather than refuse a new one (server/mod.rs).
            _ = activity.evict.notified(), if !activity.served_any() => {
                tracing::debug!("never-used connection evicted for a new one");
                break;
            }
            _ = shutdown.changed(), if !closing && first_request_wait.is_none() => {
                if activity.served_any() {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                } else {
                    // Accepted, its request perhaps already in the socket but not read yet:
                    // closing now would leave a request sent and never answered. It gets a
                    // moment to begin one, which is then answered (and the connection closed).
                    first_request_wait = Some(tokio::time::Instant::now() + SHUTDOWN_FIRST_REQUEST_WAIT);
                }
            }
            _ = sleep_until_some(first_request_wait), if !closing => {
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = tokio::time::sleep_until(idle_at), if !closing => {
                if activity.idle_for() >= limit {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                    drop_at = Some(tokio::time::Instant::now() + limit);
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
                    break;
                }
            }
            _ = sleep_until_some(drop_at) => {
                if activity.idle_for() >= limit {
                    tracing::debug!("idle connection did not close gracefully; dropped");
                    break;
                }
                drop_at = Some(tokio::time::Instant::now() + limit);
            }
        }
    }
}

/// At shutdown, how long a connection that has not begun a request is given to begin one.
const SHUTDOWN_FIRST_REQUEST_WAIT: Duration = Duration::from_millis(500);

/// Sleeps until `at`, or for ever when it is `None`.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
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
        }
    }

    pub(super) fn served_any(&self) -> bool {
        self.served.load(Ordering::Relaxed)
    }

    /// Asks the connection to close, if it still has not begun a request.
    pub(super) fn evict(&self) {
        self.evict.notify_one();
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.served.store(true, Ordering::Relaxed);
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
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        let this = &mut *self;
        let activity = &this.busy.0;
        activity.progress.fetch_add(1, Ordering::Relaxed);
        activity.waiting_on_client.store(false, Ordering::Relaxed);
        let polled = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
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
async fn respond(
    pipeline: &Pipeline,
    req: Request<Incoming>,
    conn: ConnInfo,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let (response, panicked) = catch_panics(pipeline.handle(req, conn)).await;
    if panicked {
        // `handle` records every answer it gives; this one it never got to give.
        pipeline
            .metrics()
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
}
