//! Keys fetched from the identity provider (`identity.jwks_url`, or its issuer's OIDC
//! discovery document): refreshed on a timer, refetched once — coalesced and rate-limited —
//! when a token names an unknown key, and kept when the provider cannot be reached, so an
//! IdP outage does not lock everyone out while its keys are still good.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};

use super::identify::{KeyError, VerifyKey, keys_from_jwks};
use crate::config::IdentityConfig;

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
    client: crate::http_client::HttpsClient<Empty<Bytes>>,
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
            (None, true, Some(issuer)) => {
                Source::Discovery(issuer.trim_end_matches('/').to_string())
            }
            (None, true, None) => {
                return Err(KeyError("identity.discovery needs identity.issuer".into()));
            }
            (None, false, _) => return Ok(None),
        };
        Ok(Some(Arc::new(RemoteKeys {
            source,
            keys: ArcSwap::from_pointee(Vec::new()),
            client: crate::http_client::build(None, Duration::from_secs(5)).map_err(KeyError)?,
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
            source: Source::Discovery(issuer.trim_end_matches('/').to_string()),
            keys: ArcSwap::from_pointee(Vec::new()),
            client: crate::http_client::build(None, Duration::from_secs(5)).map_err(KeyError)?,
            last_fetch: tokio::sync::Mutex::new(None),
            refresh_every,
            min_refetch,
        }))
    }

    pub fn key_count(&self) -> usize {
        self.keys.load().len()
    }

    async fn get_json(&self, uri: Uri) -> Result<serde_json::Value, String> {
        let req = Request::get(uri.clone())
            .header(header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(FETCH_TIMEOUT, self.client.request(req))
            .await
            .map_err(|_| format!("{uri}: timed out"))?
            .map_err(|e| format!("{uri}: {e}"))?;
        if resp.status() != StatusCode::OK {
            return Err(format!("{uri}: answered {}", resp.status()));
        }
        let body = Limited::new(resp.into_body(), MAX_DOCUMENT_BYTES)
            .collect()
            .await
            .map_err(|e| format!("{uri}: {e}"))?
            .to_bytes();
        serde_json::from_slice(&body).map_err(|e| format!("{uri}: {e}"))
    }

    /// Fetches the keys now. On success they replace the current ones; on failure the
    /// current ones stay.
    pub async fn fetch(&self) -> Result<usize, String> {
        let jwks_uri = match &self.source {
            Source::Jwks(uri) => uri.clone(),
            Source::Discovery(issuer) => {
                let doc = self
                    .get_json(
                        format!("{issuer}/.well-known/openid-configuration")
                            .parse()
                            .map_err(|e| format!("discovery URL: {e}"))?,
                    )
                    .await?;
                doc.get("jwks_uri")
                    .and_then(|v| v.as_str())
                    .ok_or("discovery document has no jwks_uri")?
                    .parse()
                    .map_err(|e| format!("jwks_uri: {e}"))?
            }
        };
        let doc = self.get_json(jwks_uri.clone()).await?;
        let (keys, problems) = keys_from_jwks(&doc.to_string(), &jwks_uri.to_string());
        for p in &problems {
            tracing::warn!(problem = %p, "skipping a key of the identity provider");
        }
        if keys.is_empty() {
            return Err(format!("{jwks_uri}: no usable keys"));
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
