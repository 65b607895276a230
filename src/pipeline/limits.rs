//! Request limits that need the route or the upstream: body size (per route) and load
//! shedding (requests in flight to the wiki). The limits of the request head (header bytes
//! and count, path length) are checked earlier, in `accept`; those of connections (count,
//! idle time, HTTP/2 streams) in `server`.

use std::sync::Arc;

use http::header;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, SemaphorePermit};

use crate::config::ServerConfig;
use crate::pipeline::error::GatewayError;
use crate::routes::Route;

/// The body limit of this request's route, checked against `Content-Length` now.
///
/// Runs after classify (the route may set its own `max_body_bytes`) and before the policy,
/// so an announced oversized body is refused without any further work and never reaches
/// the wiki. A body without a length (chunked, or HTTP/2 without `content-length`) is
/// counted as it streams instead (see `crate::http::body::limited`).
pub fn body_limit(
    headers: &http::HeaderMap,
    route: &Route,
    server: &ServerConfig,
) -> Result<usize, GatewayError> {
    let limit = route.max_body_bytes.unwrap_or(server.max_body_bytes);
    // hyper has already refused a malformed or conflicting `Content-Length` (HTTP/1 and
    // HTTP/2 alike); every value left is one number. Still, one that does not parse is
    // refused here rather than guessed at.
    for value in headers.get_all(header::CONTENT_LENGTH) {
        let length: u64 = value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .ok_or(GatewayError::BadRequest("invalid_content_length"))?;
        if length > limit as u64 {
            return Err(GatewayError::PayloadTooLarge);
        }
    }
    Ok(limit)
}

/// The requests that may be in flight to the wiki at once (`server.max_upstream_in_flight`).
///
/// When the wiki slows down, requests pile up in the gateway — each holding a client
/// connection, an upstream connection and memory — until everything times out at once.
/// Refusing the excess right away with 503 and `Retry-After` keeps the gateway responsive
/// and lets clients back off.
#[derive(Debug)]
pub struct UpstreamSlots {
    slots: Semaphore,
    retry_after_secs: u64,
}

impl UpstreamSlots {
    pub fn new(max_in_flight: usize, retry_after: std::time::Duration) -> UpstreamSlots {
        UpstreamSlots {
            slots: Semaphore::new(max_in_flight),
            retry_after_secs: retry_after.as_secs().max(1),
        }
    }

    /// Takes a slot for one forwarded request, held until the permit is dropped (when the
    /// wiki's response headers — or, for a rewritten response, its whole body — are in).
    /// `Err`: all slots are taken, answer 503.
    pub fn try_acquire(&self) -> Result<SemaphorePermit<'_>, GatewayError> {
        self.slots
            .try_acquire()
            .map_err(|_| GatewayError::Overloaded {
                retry_after_secs: self.retry_after_secs,
            })
    }

    /// Slots free right now (for tests and metrics).
    pub fn available(&self) -> usize {
        self.slots.available_permits()
    }
}

/// One budget for every body the gateway holds in memory at once
/// (`server.buffer_budget_bytes`): JSON responses being tagged or filtered, with their
/// decoded and rewritten copies, and guests' request bodies being inspected. Per-item
/// limits bound one body; only a total bounds many at once (48 concurrent 7.5 MB answers
/// would otherwise need ~0.5 GB). Past it, a guarded listing or a guest's body is refused
/// with 503 + `Retry-After` and a cosmetic rewrite is skipped (the body streams through
/// untagged): nothing waits for memory, so nothing piles up.
#[derive(Debug)]
pub struct BufferBudget {
    bytes: Arc<Semaphore>,
    retry_after_secs: u64,
}

/// Bytes taken from the budget, given back when dropped.
#[derive(Debug)]
pub struct BufferCharge {
    permit: Option<OwnedSemaphorePermit>,
}

impl BufferBudget {
    pub fn new(bytes: usize, retry_after: std::time::Duration) -> BufferBudget {
        BufferBudget {
            bytes: Arc::new(Semaphore::new(bytes.min(Semaphore::MAX_PERMITS))),
            retry_after_secs: retry_after.as_secs().max(1),
        }
    }

    pub fn charge(&self) -> BufferCharge {
        BufferCharge { permit: None }
    }

    /// Adds `bytes` to `charge`; `false` (and nothing taken) when the budget cannot
    /// cover them now.
    pub fn add(&self, charge: &mut BufferCharge, bytes: usize) -> bool {
        let Ok(n) = u32::try_from(bytes) else {
            return false;
        };
        match self.bytes.clone().try_acquire_many_owned(n) {
            Ok(more) => {
                match &mut charge.permit {
                    Some(p) => p.merge(more),
                    None => charge.permit = Some(more),
                }
                true
            }
            Err(_) => false,
        }
    }

    pub fn exhausted(&self) -> GatewayError {
        GatewayError::Overloaded {
            retry_after_secs: self.retry_after_secs,
        }
    }

    /// Bytes not taken right now (for tests and metrics).
    pub fn available(&self) -> usize {
        self.bytes.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A route as classify makes it (an empty profile: family `other`), with this limit.
    fn route(max_body_bytes: Option<usize>) -> Route {
        let profile = crate::routes::RouteProfile::parse(std::path::Path::new("t.toml"), "")
            .unwrap_or_else(|e| panic!("empty profile: {e:?}"));
        let mut route = profile.classify(&http::Method::POST, "/x", &[]);
        route.max_body_bytes = max_body_bytes;
        route
    }

    fn server(max_body_bytes: usize) -> ServerConfig {
        let mut config = crate::config::Config::from_toml(
            std::path::Path::new("/tmp/guestgate.toml"),
            "[upstream]\nurl = \"http://127.0.0.1:1\"\n",
        )
        .unwrap_or_else(|e| panic!("config: {e}"));
        config.server.max_body_bytes = max_body_bytes;
        config.server
    }

    fn post(length: Option<&str>) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        if let Some(l) = length {
            headers.insert(
                header::CONTENT_LENGTH,
                l.parse().unwrap_or_else(|e| panic!("{e}")),
            );
        }
        headers
    }

    #[test]
    fn content_length_is_checked_against_the_route_then_the_global_limit() {
        let s = server(100);
        assert_eq!(
            body_limit(&post(Some("100")), &route(None), &s).ok(),
            Some(100)
        );
        assert!(matches!(
            body_limit(&post(Some("101")), &route(None), &s),
            Err(GatewayError::PayloadTooLarge)
        ));
        assert_eq!(
            body_limit(&post(Some("5000")), &route(Some(10_000)), &s).ok(),
            Some(10_000)
        );
        assert!(matches!(
            body_limit(&post(Some("11")), &route(Some(10)), &s),
            Err(GatewayError::PayloadTooLarge)
        ));
        assert!(matches!(
            body_limit(&post(Some("1")), &route(Some(0)), &s),
            Err(GatewayError::PayloadTooLarge)
        ));
        // No length announced: the streamed body is counted instead.
        assert_eq!(body_limit(&post(None), &route(Some(10)), &s).ok(), Some(10));
        assert!(matches!(
            body_limit(&post(Some("ten")), &route(None), &s),
            Err(GatewayError::BadRequest("invalid_content_length"))
        ));
        assert!(matches!(
            body_limit(&post(Some("99999999999999999999999")), &route(None), &s),
            Err(GatewayError::BadRequest("invalid_content_length"))
        ));
    }

    #[test]
    fn slots_shed_load_with_retry_after() {
        let slots = UpstreamSlots::new(1, Duration::from_secs(3));
        let first = slots.try_acquire();
        assert!(first.is_ok());
        match slots.try_acquire() {
            Err(GatewayError::Overloaded { retry_after_secs }) => assert_eq!(retry_after_secs, 3),
            other => panic!("expected Overloaded, got {other:?}"),
        }
        drop(first);
        assert!(
            slots.try_acquire().is_ok(),
            "a slot frees when its request ends"
        );
    }
}
