//! The identity provider as the gateway talks to it: its discovery document, its token
//! endpoint (code exchange, refresh), userinfo and revocation — over the shared rustls
//! client, with bounded bodies and timeouts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::Full;

use super::error::{ProviderError, SignInError};
use crate::config::{ClientAuth, OidcConfig};
use crate::http::client::{ClientError, HttpsClient, build, fetch};
use crate::identity::discovery::discover;

const MAX_DOCUMENT_BYTES: usize = 1 << 20;
const TIMEOUT: Duration = Duration::from_secs(10);
/// A failed discovery is retried by the next sign-in at most this often.
const REDISCOVER_AFTER: Duration = Duration::from_secs(5);

/// The parts of the discovery document the gateway uses.
#[derive(Debug)]
pub struct Metadata {
    pub authorization_endpoint: String,
    pub token_endpoint: Uri,
    pub userinfo_endpoint: Option<Uri>,
    pub end_session_endpoint: Option<String>,
    pub revocation_endpoint: Option<Uri>,
}

/// A token endpoint's success answer (RFC 6749 §5.1, OIDC Core §3.1.3.3).
#[derive(Debug, serde::Deserialize)]
pub struct TokenResponse {
    #[serde(default)]
    pub access_token: Option<String>,
    #[serde(default)]
    pub id_token: Option<String>,
    #[serde(default)]
    pub refresh_token: Option<String>,
    #[serde(default)]
    pub expires_in: Option<u64>,
}

pub struct IdpClient {
    issuer: String,
    client_id: String,
    client_secret: String,
    client_auth: ClientAuth,
    client: HttpsClient<Full<Bytes>>,
    metadata: ArcSwapOption<Metadata>,
    /// Held while discovering; remembers when the last attempt started.
    discovering: tokio::sync::Mutex<Option<Instant>>,
}

impl IdpClient {
    pub fn new(config: &OidcConfig, client_secret: String) -> Result<IdpClient, ClientError> {
        Ok(IdpClient {
            issuer: config.issuer.clone(),
            client_id: config.client_id.clone(),
            client_secret,
            client_auth: config.client_auth,
            client: build(None, Duration::from_secs(5))?,
            metadata: ArcSwapOption::empty(),
            discovering: tokio::sync::Mutex::new(None),
        })
    }

    /// The discovery document, fetched on first use and kept (a provider's endpoints do
    /// not move while it runs; a restart or reload of the gateway rediscovers).
    pub async fn metadata(&self) -> Result<Arc<Metadata>, SignInError> {
        if let Some(m) = self.metadata.load_full() {
            return Ok(m);
        }
        let mut last = self.discovering.lock().await;
        if let Some(m) = self.metadata.load_full() {
            return Ok(m);
        }
        if let Some(at) = *last
            && at.elapsed() < REDISCOVER_AFTER
        {
            return Err(SignInError::IdpUnavailable(ProviderError::RecentlyFailed));
        }
        *last = Some(Instant::now());
        let m = Arc::new(self.discover().await.map_err(SignInError::IdpUnavailable)?);
        self.metadata.store(Some(m.clone()));
        Ok(m)
    }

    async fn discover(&self) -> Result<Metadata, ProviderError> {
        let found = discover(&self.client, &self.issuer).await?;
        if let Some(methods) = &found.code_challenge_methods
            && !methods.iter().any(|m| m == "S256")
        {
            return Err(ProviderError::NoPkceS256);
        }
        Ok(Metadata {
            authorization_endpoint: found
                .required(&found.authorization_endpoint, "authorization_endpoint")?,
            token_endpoint: found.required(&found.token_endpoint, "token_endpoint")?,
            userinfo_endpoint: found.userinfo_endpoint,
            end_session_endpoint: found.end_session_endpoint,
            revocation_endpoint: found.revocation_endpoint,
        })
    }

    /// The provider's answer to `req`, its body read as JSON (`null` when empty).
    async fn json(
        &self,
        req: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, serde_json::Value), ProviderError> {
        let fetched = fetch(&self.client, req, TIMEOUT, MAX_DOCUMENT_BYTES).await?;
        Ok((fetched.status, fetched.json()?))
    }

    /// A form POST authenticated as the client.
    fn client_post(
        &self,
        uri: &Uri,
        form: &[(&str, &str)],
    ) -> Result<Request<Full<Bytes>>, ProviderError> {
        let mut body = form_urlencoded::Serializer::new(String::new());
        for (k, v) in form {
            body.append_pair(k, v);
        }
        let mut builder = Request::post(uri.clone())
            .header(header::ACCEPT, "application/json")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        match self.client_auth {
            ClientAuth::Basic => {
                use base64::Engine as _;
                // RFC 6749 §2.3.1: id and secret are form-encoded before Basic encoding.
                let enc =
                    |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
                let creds = base64::engine::general_purpose::STANDARD.encode(format!(
                    "{}:{}",
                    enc(&self.client_id),
                    enc(&self.client_secret)
                ));
                let mut value = http::HeaderValue::from_str(&format!("Basic {creds}"))
                    .map_err(|_| ProviderError::ClientCredentials)?;
                value.set_sensitive(true);
                builder = builder.header(header::AUTHORIZATION, value);
            }
            ClientAuth::Post => {
                body.append_pair("client_id", &self.client_id);
                body.append_pair("client_secret", &self.client_secret);
            }
        }
        builder
            .body(Full::new(Bytes::from(body.finish())))
            .map_err(ProviderError::Request)
    }

    /// Calls the token endpoint. Only `400` with the OAuth error `invalid_grant` (RFC 6749
    /// §5.2: the code or refresh token is invalid, expired, revoked or replayed) is
    /// [`SignInError::TokenRejected`]: it is the one answer that says the grant itself is
    /// dead, and a refresh that gets it ends the session. Anything else — rate limiting
    /// (429), a client the provider does not accept (`invalid_client`), 5xx, no answer —
    /// says nothing about the grant and is [`SignInError::IdpUnavailable`].
    pub async fn token(&self, form: &[(&str, &str)]) -> Result<TokenResponse, SignInError> {
        let meta = self.metadata().await?;
        let req = self
            .client_post(&meta.token_endpoint, form)
            .map_err(SignInError::IdpUnavailable)?;
        let (status, doc) = self.json(req).await.map_err(SignInError::IdpUnavailable)?;
        if status != StatusCode::OK {
            let error: String = doc
                .get("error")
                .and_then(|e| e.as_str())
                .unwrap_or("unknown")
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                .take(64)
                .collect();
            if status == StatusCode::BAD_REQUEST && error == "invalid_grant" {
                return Err(SignInError::TokenRejected { error });
            }
            return Err(SignInError::IdpUnavailable(ProviderError::TokenEndpoint {
                status,
                error,
            }));
        }
        serde_json::from_value(doc)
            .map_err(|e| SignInError::IdpUnavailable(ProviderError::TokenResponse(e)))
    }

    /// The userinfo claims for an access token.
    pub async fn userinfo(
        &self,
        access_token: &str,
    ) -> Result<Option<serde_json::Map<String, serde_json::Value>>, SignInError> {
        let meta = self.metadata().await?;
        let Some(endpoint) = &meta.userinfo_endpoint else {
            return Ok(None);
        };
        let req = Request::get(endpoint.clone())
            .header(header::ACCEPT, "application/json")
            .header(header::AUTHORIZATION, format!("Bearer {access_token}"))
            .body(Full::new(Bytes::new()))
            .map_err(|e| SignInError::Userinfo(ProviderError::Request(e)))?;
        let (status, doc) = self.json(req).await.map_err(SignInError::Userinfo)?;
        if status != StatusCode::OK {
            return Err(SignInError::Userinfo(ProviderError::Status(status)));
        }
        match doc {
            serde_json::Value::Object(map) => Ok(Some(map)),
            _ => Err(SignInError::Userinfo(ProviderError::NotAnObject)),
        }
    }

    /// Revokes a refresh token (RFC 7009), best effort: logout goes on whatever happens.
    pub async fn revoke(&self, refresh_token: &str) {
        let Ok(meta) = self.metadata().await else {
            return;
        };
        let Some(endpoint) = &meta.revocation_endpoint else {
            return;
        };
        let form = [
            ("token", refresh_token),
            ("token_type_hint", "refresh_token"),
        ];
        match self.client_post(endpoint, &form) {
            Ok(req) => match self.json(req).await {
                Ok((status, _)) if status.is_success() => {}
                Ok((status, _)) => tracing::warn!(%status, "refresh token revocation refused"),
                Err(e) => tracing::warn!(error = %e, "refresh token revocation failed"),
            },
            Err(e) => tracing::warn!(error = %e, "refresh token revocation failed"),
        }
    }
}
