//! Keys fetched from the identity provider (`identity.jwks_url`, or its issuer's OIDC
//! discovery document): refreshed on a timer, refetched once — coalesced and rate-limited —
//! when a token names an unknown key, and kept when the provider cannot be reached, so an
//! IdP outage does not lock everyone out while its keys are still good.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::Uri;
use http_body_util::Empty;

use super::discovery::{DiscoveryError, discover};
use super::keys::{KeyError, VerifyKey, keys_from_jwks};
use crate::config::IdentityConfig;
use crate::http::client::{FetchError, HttpsClient, build, fetch, get_json_request};

/// Why the identity provider's keys could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum KeyFetchError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    #[error("the discovery document names no jwks_uri")]
    NoJwksUri,
    #[error("{uri}: no usable keys")]
    NoUsableKeys { uri: String },
}

const MAX_DOCUMENT_BYTES: usize = 1 << 20;
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

enum Source {
    Jwks(Uri),
    /// The issuer; its `/.well-known/openid-configuration` names the JWKS.
    Discovery(String),
}

pub struct RemoteKeys {
    source: Source,
    pub(crate) keys: ArcSwap<Vec<VerifyKey>>,
    client: HttpsClient<Empty<Bytes>>,
    /// When the last fetch started; held while fetching, so concurrent refetches coalesce.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    refresh_every: Duration,
    /// Unknown-key refetches are at most this frequent (`identity.jwks_min_refetch_secs`),
    /// so tokens with random `kid`s cannot make the gateway hammer the identity provider.
    min_refetch: Duration,
}

impl RemoteKeys {
    /// `None` when the config names no remote keys.
    pub fn new(config: &IdentityConfig) -> Result<Option<Arc<RemoteKeys>>, KeyError> {
        let source = match (&config.jwks_url, config.discovery, &config.issuer) {
            (Some(url), _, _) => Source::Jwks(
                url.parse()
                    .map_err(|e| KeyError(format!("identity.jwks_url: `{url}`: {e}")))?,
            ),
            (None, true, Some(issuer)) => Source::Discovery(issuer.clone()),
            (None, true, None) => {
                return Err(KeyError("identity.discovery needs identity.issuer".into()));
            }
            (None, false, _) => return Ok(None),
        };
        Ok(Some(Arc::new(RemoteKeys {
            source,
            keys: ArcSwap::from_pointee(Vec::new()),
            client: build(None, Duration::from_secs(5))
                .map_err(|e| KeyError(format!("identity provider client: {e}")))?,
            last_fetch: tokio::sync::Mutex::new(None),
            refresh_every: config.jwks_refresh,
            min_refetch: config.jwks_min_refetch,
        })))
    }

    /// Keys found through `{issuer}/.well-known/openid-configuration` (browser sign-in's ID
    /// tokens), refreshed like `identity.jwks_url`.
    pub fn from_discovery(
        issuer: &str,
        refresh_every: Duration,
        min_refetch: Duration,
    ) -> Result<Arc<RemoteKeys>, KeyError> {
        Ok(Arc::new(RemoteKeys {
            source: Source::Discovery(issuer.to_string()),
            keys: ArcSwap::from_pointee(Vec::new()),
            client: build(None, Duration::from_secs(5))
                .map_err(|e| KeyError(format!("identity provider client: {e}")))?,
            last_fetch: tokio::sync::Mutex::new(None),
            refresh_every,
            min_refetch,
        }))
    }

    pub fn key_count(&self) -> usize {
        self.keys.load().len()
    }

    /// Fetches the keys now. On success they replace the current ones; on failure the
    /// current ones stay.
    pub async fn fetch(&self) -> Result<usize, KeyFetchError> {
        let jwks_uri = match &self.source {
            Source::Jwks(uri) => uri.to_string(),
            Source::Discovery(issuer) => discover(&self.client, issuer)
                .await?
                .jwks_uri
                .ok_or(KeyFetchError::NoJwksUri)?
                .to_string(),
        };
        let fetched = fetch(
            &self.client,
            get_json_request(&jwks_uri, Empty::new())?,
            FETCH_TIMEOUT,
            MAX_DOCUMENT_BYTES,
        )
        .await?
        .ok()?;
        let text = std::str::from_utf8(&fetched.body).map_err(|_| KeyFetchError::NoUsableKeys {
            uri: jwks_uri.clone(),
        })?;
        let (keys, problems) = keys_from_jwks(text, &jwks_uri);
        for p in &problems {
            tracing::warn!(problem = %p, "skipping a key of the identity provider");
        }
        if keys.is_empty() {
            return Err(KeyFetchError::NoUsableKeys { uri: jwks_uri });
        }
        let n = keys.len();
        self.keys.store(Arc::new(keys));
        Ok(n)
    }

    async fn fetch_logged(&self) -> bool {
        match self.fetch().await {
            Ok(n) => {
                tracing::info!(keys = n, "identity provider keys fetched");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot fetch identity provider keys; keeping the current ones");
                false
            }
        }
    }

    /// Refetches for a token with an unknown key. Callers arriving together share one fetch;
    /// within `min_refetch` of the last fetch none happens. True when a fetch ran
    /// and succeeded (so the token is worth checking again).
    pub async fn refresh_for_unknown_key(&self) -> bool {
        let started = Instant::now();
        let mut last = self.last_fetch.lock().await;
        if let Some(at) = *last {
            // Someone fetched while this caller waited for the lock: use their result.
            if at >= started || at.elapsed() < self.min_refetch {
                return at >= started;
            }
        }
        *last = Some(Instant::now());
        self.fetch_logged().await
    }

    /// Fetches once now, then every `jwks_refresh_secs` for as long as the runtime lives.
    pub fn start(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                {
                    let mut last = me.last_fetch.lock().await;
                    *last = Some(Instant::now());
                    me.fetch_logged().await;
                }
                tokio::time::sleep(me.refresh_every).await;
            }
        });
    }
}
