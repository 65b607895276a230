//! Stage 3, classify: the canonical path and the route profile give the route (family,
//! space, content, action); for a guest on a content route, the content id's space is looked
//! up at the wiki (cached, concurrent lookups of one id coalesced).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use http::header;
use tokio::sync::OnceCell;

use super::accept::Accepted;
use super::forward::{Upstream, UpstreamBody};
use crate::http::client::{exchange, get_json_request};
use crate::pipeline::error::{GatewayError, LookupError};
use crate::routes::{ContentLookup, Route, RouteProfile};

/// Largest lookup answer read; Confluence's content with `expand=space` is a few KB.
const MAX_LOOKUP_BYTES: usize = 1 << 20;

/// `json_rewriting` is `rewrite.json`: without it no listing can be filtered, and the
/// route must say so to the policy.
pub fn classify(profile: &RouteProfile, accepted: &Accepted, json_rewriting: bool) -> Route {
    let path = accepted.served_as.as_deref().unwrap_or(&accepted.path);
    let mut route = profile.classify(&accepted.method, path, &accepted.params);
    route.filtered = route.rewrites.filter_spaces && json_rewriting;
    route
}

/// What a lookup answers: the space key, or why there is none (shared by every request
/// that waited on the same lookup).
type Looked = Result<Arc<str>, Arc<LookupError>>;

/// Content id → space key, shared by all snapshots (it depends on the wiki, not on policy).
/// A hit — nearly every request — is one synchronous lookup; a miss is fetched once,
/// however many requests ask for the same id at the same time.
pub struct ContentCache {
    spaces: moka::sync::Cache<Box<str>, Arc<str>, foldhash::quality::RandomState>,
    /// Lookups in progress, by key: a request that finds one waits for its answer. An
    /// entry leaves when its lookup has answered, or when no request waits on it any more.
    pending: Mutex<HashMap<Box<str>, Arc<OnceCell<Looked>>, foldhash::quality::RandomState>>,
    /// Counts invalidations: an answer fetched across one is used but not kept, as it may
    /// be the space a page was just moved out of.
    generation: AtomicU64,
}

impl ContentCache {
    pub fn new(ttl: std::time::Duration) -> ContentCache {
        ContentCache {
            spaces: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl)
                .build_with_hasher(foldhash::quality::RandomState::default()),
            pending: Mutex::default(),
            generation: AtomicU64::new(0),
        }
    }

    /// The cached space of `key`, if any.
    pub fn get(&self, key: &str) -> Option<Arc<str>> {
        self.spaces.get(key)
    }

    /// The space of `key`, from the cache or by `fetch`; `true` with it when this call's
    /// own `fetch` ran (a lookup, not a hit). Errors are shared with the requests that waited
    /// on the same lookup, and not kept: the next request asks again.
    pub async fn get_or_fetch(
        &self,
        key: Box<str>,
        fetch: impl Future<Output = Result<Arc<str>, LookupError>>,
    ) -> (Looked, bool) {
        if let Some(space) = self.spaces.get(&key) {
            return (Ok(space), false);
        }
        let generation = self.generation.load(Ordering::Acquire);
        let cell = self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key.clone())
            .or_default()
            .clone();
        let waiting = Waiting {
            cache: self,
            key,
            cell,
        };
        let mut fetched = false;
        let looked = waiting
            .cell
            .get_or_init(|| async {
                fetched = true;
                fetch.await.map_err(Arc::new)
            })
            .await
            .clone();
        if fetched
            && let Ok(space) = &looked
            && self.generation.load(Ordering::Acquire) == generation
        {
            self.spaces.insert(waiting.key.clone(), space.clone());
        }
        drop(waiting);
        (looked, fetched)
    }

    /// Forgets one id (the wiki answered it as gone).
    pub fn invalidate(&self, key: &str) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.spaces.invalidate(key);
    }

    /// Forgets every id (a write may have moved any page).
    pub fn invalidate_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.spaces.invalidate_all();
    }
}

/// A request's place in a pending lookup. Leaving it — answered, or dropped with its
/// request — removes the lookup from `pending` once it has answered or nobody else waits
/// on it; another waiter takes a cancelled lookup over (`OnceCell::get_or_init`).
struct Waiting<'c> {
    cache: &'c ContentCache,
    key: Box<str>,
    cell: Arc<OnceCell<Looked>>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut pending = self
            .cache
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Two holders: the map and this request.
        let last = Arc::strong_count(&self.cell) <= 2;
        if pending
            .get(&self.key)
            .is_some_and(|cell| Arc::ptr_eq(cell, &self.cell))
            && (self.cell.initialized() || last)
        {
            pending.remove(&self.key);
        }
    }
}

/// True when the route names content but no space: the space must be looked up.
pub fn needs_lookup(route: &Route) -> bool {
    route.content.is_some() && route.space.is_none()
}

/// Fills `route.space` from the cache alone, without a lookup: `true` when it did.
pub fn space_from_cache(
    route: &mut Route,
    lookup: Option<&ContentLookup>,
    cache: &ContentCache,
) -> bool {
    let (Some(content), None, Some(lookup)) = (&route.content, &route.space, lookup) else {
        return false;
    };
    let Some(space) = cache.get(&lookup.cache_key(content)) else {
        return false;
    };
    crate::telemetry::count(&crate::telemetry::CONTENT_LOOKUPS, 1);
    route.space = Some(Box::from(&*space));
    true
}

/// Fills `route.space` from the content id, through the cache. Errors deny the guest.
pub async fn resolve_space(
    route: &mut Route,
    lookup: Option<&ContentLookup>,
    cache: &ContentCache,
    upstream: &Upstream,
) -> Result<(), GatewayError> {
    let (Some(content), None) = (&route.content, &route.space) else {
        return Ok(());
    };
    let Some(lookup) = lookup else {
        return Err(GatewayError::ContentUnresolved {
            content: content.to_string(),
            cause: Arc::new(LookupError::NoLookup),
        });
    };
    let key = lookup.cache_key(content).into_owned().into_boxed_str();
    let (looked, fetched) = cache
        .get_or_fetch(key, fetch_space(lookup, content, upstream))
        .await;
    crate::telemetry::count(&crate::telemetry::CONTENT_LOOKUPS, usize::from(!fetched));
    let space = looked.map_err(|cause| GatewayError::ContentUnresolved {
        content: content.to_string(),
        cause,
    })?;
    route.space = Some(Box::from(&*space));
    Ok(())
}

async fn fetch_space(
    lookup: &ContentLookup,
    content: &str,
    upstream: &Upstream,
) -> Result<Arc<str>, LookupError> {
    let url = upstream.url_for(&lookup.path_for(content));
    let mut req =
        get_json_request::<UpstreamBody>(&url, super::forward::whole_body(bytes::Bytes::new()))?;
    if let Some(auth) = &upstream.service_authorization {
        req.headers_mut()
            .insert(header::AUTHORIZATION, auth.clone());
    }
    let json = exchange(
        url,
        upstream.request(req),
        upstream.request_timeout(),
        MAX_LOOKUP_BYTES,
    )
    .await?
    .ok()?
    .json()?;
    json.pointer(&lookup.space_pointer)
        .and_then(serde_json::Value::as_str)
        .and_then(|s| lookup.space_of(s))
        .map(Arc::from)
        .ok_or_else(|| LookupError::NoSpace(lookup.space_pointer.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pending(cache: &ContentCache) -> usize {
        cache.pending.lock().map(|p| p.len()).unwrap_or(usize::MAX)
    }

    #[tokio::test]
    async fn an_answer_is_kept_and_then_served_without_a_lookup() {
        let cache = ContentCache::new(Duration::from_secs(60));
        let (looked, fetched) = cache
            .get_or_fetch("7".into(), async { Ok(Arc::from("ENG")) })
            .await;
        assert_eq!(looked.ok().as_deref(), Some("ENG"));
        assert!(fetched);
        assert_eq!(cache.get("7").as_deref(), Some("ENG"));
        let (looked, fetched) = cache
            .get_or_fetch("7".into(), async { Ok(Arc::from("HR")) })
            .await;
        assert_eq!(looked.ok().as_deref(), Some("ENG"));
        assert!(!fetched);
        assert_eq!(pending(&cache), 0);
    }

    #[tokio::test]
    async fn a_failed_lookup_is_not_kept() {
        let cache = ContentCache::new(Duration::from_secs(60));
        let (looked, _) = cache
            .get_or_fetch("7".into(), async {
                Err(LookupError::NoSpace("/space/key".into()))
            })
            .await;
        assert!(looked.is_err());
        assert_eq!(cache.get("7"), None);
        assert_eq!(pending(&cache), 0);
        let (looked, fetched) = cache
            .get_or_fetch("7".into(), async { Ok(Arc::from("ENG")) })
            .await;
        assert_eq!(looked.ok().as_deref(), Some("ENG"));
        assert!(fetched, "asked again");
    }

    #[tokio::test]
    async fn an_answer_fetched_across_an_invalidation_is_used_but_not_kept() {
        let cache = ContentCache::new(Duration::from_secs(60));
        let (looked, _) = cache
            .get_or_fetch("7".into(), async {
                // A write succeeds while the wiki is being asked: the page may have moved.
                cache.invalidate_all();
                Ok(Arc::from("ENG"))
            })
            .await;
        assert_eq!(looked.ok().as_deref(), Some("ENG"));
        assert_eq!(cache.get("7"), None);
    }

    #[tokio::test]
    async fn a_lookup_left_by_every_request_leaves_nothing_pending() {
        let cache = ContentCache::new(Duration::from_secs(60));
        let (started_tx, started) = tokio::sync::oneshot::channel::<()>();
        {
            let first = cache.get_or_fetch("7".into(), async move {
                let _ = started_tx.send(());
                std::future::pending::<Result<Arc<str>, LookupError>>().await
            });
            tokio::pin!(first);
            tokio::select! {
                _ = &mut first => unreachable!("the lookup never answers"),
                _ = started => {}
            }
            assert_eq!(pending(&cache), 1);
        }
        // Its request gone (the client hung up): the lookup is no longer pending.
        assert_eq!(pending(&cache), 0);
        let (looked, fetched) = cache
            .get_or_fetch("7".into(), async { Ok(Arc::from("ENG")) })
            .await;
        assert_eq!(looked.ok().as_deref(), Some("ENG"));
        assert!(fetched);
    }

    #[tokio::test]
    async fn a_waiter_takes_over_a_lookup_whose_request_left() {
        let cache = ContentCache::new(Duration::from_secs(60));
        let (started_tx, started) = tokio::sync::oneshot::channel::<()>();
        let first = cache.get_or_fetch("7".into(), async move {
            let _ = started_tx.send(());
            std::future::pending::<Result<Arc<str>, LookupError>>().await
        });
        let mut first = Box::pin(first);
        tokio::select! {
            _ = &mut first => unreachable!("the lookup never answers"),
            _ = started => {}
        }
        let second = cache.get_or_fetch("7".into(), async { Ok(Arc::from("ENG")) });
        let mut second = Box::pin(second);
        // The second request waits on the first one's lookup…
        assert!(futures_util::poll!(&mut second).is_pending());
        assert_eq!(pending(&cache), 1);
        // …and, when that request is gone, looks up itself.
        drop(first);
        let (looked, fetched) = second.await;
        assert_eq!(looked.ok().as_deref(), Some("ENG"));
        assert!(fetched);
        assert_eq!(pending(&cache), 0);
    }
}
