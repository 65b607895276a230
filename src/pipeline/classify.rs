//! Stage 3, classify: the canonical path and the route profile give the route (family,
//! space, content, action); for a guest on a content route, the content id's space is looked
//! up at the wiki (cached, concurrent lookups of one id coalesced).

use std::sync::Arc;

use http::header;

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

/// Content id → space key, shared by all snapshots (it depends on the wiki, not on policy).
pub type ContentCache = moka::future::Cache<Box<str>, Arc<str>, foldhash::quality::RandomState>;

pub fn content_cache(ttl: std::time::Duration) -> ContentCache {
    moka::future::Cache::builder()
        .max_capacity(100_000)
        .time_to_live(ttl)
        .build_with_hasher(foldhash::quality::RandomState::default())
}

/// True when the route names content but no space: the space must be looked up.
pub fn needs_lookup(route: &Route) -> bool {
    route.content.is_some() && route.space.is_none()
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
    let key = lookup.cache_key(content);
    // A hit (nearly every request) needs no loader future, which `try_get_with` builds
    // and moves even when it finds the key.
    if let Some(space) = cache.get(&key).await {
        crate::telemetry::count(&crate::telemetry::CONTENT_LOOKUPS, 1);
        route.space = Some(Box::from(&*space));
        return Ok(());
    }
    let fetched = std::sync::atomic::AtomicBool::new(false);
    let result = cache
        .try_get_with(key, async {
            fetched.store(true, std::sync::atomic::Ordering::Relaxed);
            fetch_space(lookup, content, upstream).await
        })
        .await;
    let hit = !fetched.load(std::sync::atomic::Ordering::Relaxed);
    crate::telemetry::count(&crate::telemetry::CONTENT_LOOKUPS, usize::from(hit));
    let space = result.map_err(|cause| GatewayError::ContentUnresolved {
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
    let uri = upstream.uri_for(&lookup.path_for(content));
    let mut req = get_json_request::<UpstreamBody>(
        &uri.to_string(),
        super::forward::whole_body(bytes::Bytes::new()),
    )?;
    if let Some(auth) = &upstream.service_authorization {
        req.headers_mut()
            .insert(header::AUTHORIZATION, auth.clone());
    }
    let json = exchange(
        uri.to_string(),
        upstream.client().request(req),
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
