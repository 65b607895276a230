//! Browser sign-in: the OpenID Connect authorization code flow with PKCE, and the sealed
//! session cookie it ends in.
//!
//! Two places in the pipeline reach this module:
//! - **identify**: when no token was sent, [`SignIn::session_caller`] opens the
//!   `guestgate_session` cookie (refreshing it first when it is due) into the same
//!   [`Identity`] a bearer token gives, so decide treats both alike.
//! - **the `/_guestgate/` namespace**: requests under `/_guestgate/` are the gateway's own
//!   (login, callback, logout, signed-out). They are answered by [`endpoint`], never
//!   classified by the route profile and never forwarded to the wiki.
//!
//! A browser (`Accept: text/html`, `GET`/`HEAD`) that has no valid session where one is
//! needed is sent to the provider by [`SignIn::start`] instead of getting a 401.

pub mod error;
mod provider;
pub mod seal;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, Uri, header};

use crate::config::{IdentityConfig, OidcConfig};
use crate::http::body::{ProxyBody, full_body};
use crate::http::cookies;
use crate::http::gateway_paths::{
    self, LOGIN as LOGIN_PATH, LOGOUT as LOGOUT_PATH, SIGNED_OUT as SIGNED_OUT_PATH,
};
use crate::identity::verify::{ClaimRules, decode_claims, groups_of};
use crate::identity::{Caller, Identity, IdentityError, RemoteKeys, sha256, unix_now};
use crate::shared::{SharedStore, Signal};
pub use error::{ProviderError, SignInError};
use provider::IdpClient;
use seal::{Sealer, random_token};

/// Browsers keep cookies up to 4096 bytes (name, value and attributes together).
const MAX_COOKIE_VALUE: usize = 3800;
/// Keeps `revoked` up to date with the sessions other replicas end: all of them on each
/// (re)connection, then each as announced.
async fn follow_ended_sessions(
    shared: Arc<SharedStore>,
    mut signals: tokio::sync::broadcast::Receiver<Signal>,
    revoked: moka::sync::Cache<String, ()>,
) {
    use tokio::sync::broadcast::error::RecvError;
    // Set until a full read succeeds; retried on every later signal (the listener's
    // re-read sends one each poll interval), so sign-outs announced while this replica
    // was cut off are never left out.
    let mut resync = false;
    loop {
        match signals.recv().await {
            Ok(Signal::SessionEnded(id)) => revoked.insert(id, ()),
            Ok(Signal::Connected) | Err(RecvError::Lagged(_)) => resync = true,
            Ok(Signal::Data(_)) => {}
            Err(RecvError::Closed) => return,
        }
        if resync {
            match shared.ended_sessions().await {
                Ok(ids) => {
                    ids.into_iter().for_each(|id| revoked.insert(id, ()));
                    resync = false;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the sessions ended on other replicas; trying again");
                }
            }
        }
    }
}

/// A return path longer than this is replaced by `/` (it rides in the state cookie).
const MAX_RETURN_PATH: usize = 512;
/// No token is taken to last longer than this, whatever `expires_in` says.
const MAX_TOKEN_LIFETIME: u64 = 366 * 86_400;
/// How long a refresh's result is shared by the requests that carry the old cookie.
const REFRESH_SHARED_FOR: Duration = Duration::from_secs(30);

/// One sign-in in progress, sealed in its `guestgate_state_…` cookie. The return path
/// lives here, not in the round trip through the provider, so nobody can change it.
#[derive(serde::Serialize, serde::Deserialize)]
struct LoginState {
    state: String,
    nonce: String,
    verifier: String,
    /// A same-origin path (with query) to come back to.
    rd: String,
    exp: u64,
}

/// A signed-in browser, sealed in `guestgate_session`. Short field names: it is a cookie.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Session {
    /// Random, set at sign-in and kept across refreshes: logout and a refused refresh
    /// revoke the session by it, so every cookie of the session (copies made before a
    /// refresh included) is refused, not just the one presented. Required: a session
    /// without one could not be revoked.
    id: String,
    sub: String,
    /// The user name (`identity.user_claim`, from the ID token or userinfo).
    u: String,
    /// Groups from the ID token or userinfo (`identity.groups_claim`).
    g: Vec<String>,
    /// Valid until (the provider's token lifetime); refreshed before it where possible.
    exp: u64,
    /// The absolute end: sign-in time + `session_lifetime_secs`.
    max: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rt: Option<String>,
    /// Kept only for RP-initiated logout's `id_token_hint`, and only when it fits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    idt: Option<String>,
}

struct OpenSession {
    session: Session,
    identity: Arc<Identity>,
}

enum Refresh {
    Done {
        open: Arc<OpenSession>,
        cookie: String,
    },
    /// The provider refused the refresh token (revoked, expired, user gone): the session
    /// ends now.
    Revoked,
    /// The provider could not be asked: keep the session until it expires.
    Failed,
}

pub struct SignIn {
    config: OidcConfig,
    user_claim: String,
    groups_claim: String,
    leeway: u64,
    sealer: Sealer,
    idp: IdpClient,
    keys: Arc<RemoteKeys>,
    /// Hashes of `state` values already completed (single use within this process).
    used_states: moka::sync::Cache<[u8; 32], ()>,
    /// Ids of sessions ended in this process (logout, or a refresh the provider refused).
    revoked: moka::sync::Cache<String, ()>,
    /// Opened session cookies, by hash, so a request does not re-open and re-parse.
    opened: moka::sync::Cache<[u8; 32], Arc<OpenSession>>,
    /// Refreshes by the hash of the cookie they replace; concurrent requests share one.
    refreshes: moka::future::Cache<[u8; 32], Arc<Refresh>>,
    /// With `[store]`: used states and ended sessions are shared with every replica.
    shared: Option<Arc<SharedStore>>,
}

impl std::fmt::Debug for SignIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignIn")
            .field("issuer", &self.config.issuer)
            .finish_non_exhaustive()
    }
}

impl SignIn {
    /// Reads the client secret and session keys. `Ok(None)` when `[identity.oidc]` is not
    /// configured. Must run inside a tokio runtime: it starts fetching the provider's keys.
    pub fn new(
        identity: &IdentityConfig,
        shared: Option<Arc<SharedStore>>,
    ) -> Result<Option<Arc<SignIn>>, String> {
        let Some(config) = &identity.oidc else {
            return Ok(None);
        };
        let secret = config.client_secret.read("identity.oidc.client_secret")?;
        let sealer = Sealer::from_text(&config.session_keys.read("identity.oidc.session_keys")?)
            .map_err(|e| format!("identity.oidc.session_keys: {e}"))?;
        let keys = RemoteKeys::from_discovery(
            &config.issuer,
            identity.jwks_refresh,
            identity.jwks_min_refetch,
        )
        .map_err(|e| e.0)?;
        keys.start();
        let lifetime = config.session_lifetime;
        // Least-recently-used, so a new sign-out is always admitted (the default policy may
        // refuse a new entry when full); a million ended sessions within one session
        // lifetime before the oldest could be forgotten.
        let revoked = moka::sync::Cache::builder()
            .max_capacity(1_000_000)
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .time_to_live(lifetime)
            .build();
        if let Some(shared) = &shared {
            tokio::spawn(follow_ended_sessions(
                shared.clone(),
                shared.subscribe(),
                revoked.clone(),
            ));
        }
        Ok(Some(Arc::new(SignIn {
            shared,
            idp: IdpClient::new(config, secret).map_err(|e| e.to_string())?,
            keys,
            sealer,
            user_claim: identity.user_claim.clone(),
            groups_claim: identity.groups_claim.clone(),
            leeway: identity.leeway_secs,
            used_states: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(config.state_ttl + Duration::from_secs(60))
                .build(),
            revoked,
            opened: moka::sync::Cache::builder()
                .max_capacity(identity.token_cache_max_entries)
                .time_to_live(Duration::from_secs(60))
                .build(),
            refreshes: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(REFRESH_SHARED_FOR)
                .build(),
            config: config.clone(),
        })))
    }

    /// Reads and checks the client secret and the session keys without contacting the
    /// provider (for `guestgate check`). `Ok` tells how many session keys there are.
    pub fn check_secrets(config: &OidcConfig) -> Result<usize, String> {
        config.client_secret.read("identity.oidc.client_secret")?;
        let sealer = Sealer::from_text(&config.session_keys.read("identity.oidc.session_keys")?)
            .map_err(|e| format!("identity.oidc.session_keys: {e}"))?;
        Ok(sealer.key_count())
    }

    /// Cookies get `Secure` when the browser reaches the gateway over TLS (directly, or
    /// through a TLS front whose `external_url` says https).
    fn secure(&self, tls: bool) -> bool {
        tls || self
            .config
            .external_url
            .as_deref()
            .is_some_and(|u| u.starts_with("https://"))
    }

    /// The origin browsers use: `external_url`, else the request's own scheme and `Host`
    /// (checked by accept). The provider only redirects to registered URIs, so a forged
    /// `Host` cannot send a code elsewhere.
    fn origin(&self, headers: &HeaderMap, uri: &Uri, tls: bool) -> Result<String, SignInError> {
        if let Some(url) = &self.config.external_url {
            return Ok(url.clone());
        }
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| !h.is_empty())
            .or_else(|| uri.authority().map(|a| a.as_str()))
            .ok_or(SignInError::NoHost)?;
        Ok(format!("{}://{host}", if tls { "https" } else { "http" }))
    }

    /// Whether a request comes from a page of this origin, as a logout must: by
    /// `Sec-Fetch-Site` where the browser sends it, else by `Origin`. A request with
    /// neither is not a browser's cross-site form (browsers send `Origin` with every
    /// `POST`) and passes.
    fn same_origin(&self, headers: &HeaderMap, uri: &Uri, tls: bool) -> bool {
        if let Some(site) = headers.get("sec-fetch-site") {
            return site.as_bytes() == b"same-origin";
        }
        let Some(origin) = headers.get(header::ORIGIN) else {
            return true;
        };
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        match &self.config.external_url {
            Some(url) => origin.eq_ignore_ascii_case(url),
            // Behind a TLS front without `external_url` the scheme seen here may differ
            // from the browser's: the host (with port) is what must match.
            None => {
                let host = origin.split_once("://").map(|(_, h)| h);
                host.is_some_and(|h| {
                    self.origin(headers, uri, tls)
                        .ok()
                        .and_then(|o| o.split_once("://").map(|(_, mine)| mine.to_string()))
                        .is_some_and(|mine| mine.eq_ignore_ascii_case(h))
                })
            }
        }
    }

    // ---- identify ---------------------------------------------------------------------

    /// The caller a session cookie stands for, and the `Set-Cookie` of a refreshed session
    /// for the response. No cookie: `Anonymous`. A cookie that does not open:
    /// `Rejected(SessionInvalid)`. An ended session: `Rejected(SessionExpired)`.
    pub async fn session_caller(
        &self,
        headers: &HeaderMap,
        tls: bool,
    ) -> (Caller, Option<HeaderValue>) {
        let Some(value) = cookies::get(headers, cookies::SESSION) else {
            return (Caller::Anonymous, None);
        };
        let hash = sha256(value.as_bytes());
        let open = match self.opened.get(&hash) {
            Some(open) => open,
            None => match self.open_session(value, hash) {
                Some(open) => {
                    let open = Arc::new(open);
                    self.opened.insert(hash, open.clone());
                    open
                }
                None => return (Caller::Rejected(IdentityError::SessionInvalid), None),
            },
        };
        if self.revoked.contains_key(&open.session.id) {
            return (Caller::Rejected(IdentityError::SessionExpired), None);
        }
        let now = unix_now();
        let s = &open.session;
        if now >= s.max {
            return (Caller::Rejected(IdentityError::SessionExpired), None);
        }
        let refresh_due =
            s.rt.is_some() && s.exp.saturating_sub(now) <= self.config.refresh_before.as_secs();
        if refresh_due {
            let outcome = self
                .refreshes
                .get_with(hash, async {
                    let outcome = self.refresh(s).await;
                    let slot = match outcome {
                        Refresh::Done { .. } => 0,
                        Refresh::Revoked => {
                            // The provider ended it: refuse every cookie of this session
                            // without asking again, on every replica.
                            self.revoked.insert(s.id.clone(), ());
                            if let Some(shared) = self.shared.clone() {
                                let (id, until) = (s.id.clone(), s.max);
                                tokio::spawn(async move {
                                    let until = i64::try_from(until).unwrap_or(i64::MAX);
                                    if let Err(e) = shared.end_session(&id, until).await {
                                        tracing::error!(error = %e, "cannot share the end of a session the provider refused to refresh");
                                    }
                                });
                            }
                            1
                        }
                        Refresh::Failed => 2,
                    };
                    crate::telemetry::count(&crate::telemetry::SESSION_REFRESHES, slot);
                    Arc::new(outcome)
                })
                .await;
            match &*outcome {
                Refresh::Done { open, cookie } => {
                    let max_age = open.session.max.saturating_sub(now);
                    let set =
                        cookies::set(cookies::SESSION, cookie, "/", max_age, self.secure(tls));
                    return (Caller::Authenticated(open.identity.clone()), Some(set));
                }
                Refresh::Revoked => {
                    return (Caller::Rejected(IdentityError::SessionExpired), None);
                }
                Refresh::Failed => {}
            }
        }
        if now >= s.exp {
            return (Caller::Rejected(IdentityError::SessionExpired), None);
        }
        (Caller::Authenticated(open.identity.clone()), None)
    }

    fn open_session(&self, value: &str, hash: [u8; 32]) -> Option<OpenSession> {
        let plain = self.sealer.open(cookies::SESSION, value)?;
        let session: Session = serde_json::from_slice(&plain).ok()?;
        let identity = self.identity_of(&session, hash)?;
        Some(OpenSession {
            session,
            identity: Arc::new(identity),
        })
    }

    /// What decide sees: the same shape as a bearer token's identity. The claims the policy
    /// gets are the session's own (issuer, subject, user, groups), not the whole ID token.
    fn identity_of(&self, s: &Session, hash: [u8; 32]) -> Option<Identity> {
        let mut claims = serde_json::Map::new();
        claims.insert("iss".into(), self.config.issuer.clone().into());
        claims.insert("sub".into(), s.sub.clone().into());
        claims.insert(self.user_claim.clone(), s.u.clone().into());
        claims.insert(self.groups_claim.clone(), s.g.clone().into());
        let claims = serde_json::from_value(serde_json::Value::Object(claims)).ok()?;
        Some(Identity {
            name: Arc::from(s.u.as_str()),
            token_groups: s.g.iter().map(|g| Arc::from(g.as_str())).collect(),
            claims,
            token_hash: hash,
            expires_at: s.exp,
        })
    }

    async fn refresh(&self, old: &Session) -> Refresh {
        let Some(rt) = &old.rt else {
            return Refresh::Failed;
        };
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", rt.as_str()),
        ];
        let tokens = match self.idp.token(&form).await {
            Ok(t) => t,
            Err(SignInError::TokenRejected { error }) => {
                tracing::info!(user = %old.u, error = %error, "refresh token refused; session ends");
                return Refresh::Revoked;
            }
            Err(e) => {
                tracing::warn!(user = %old.u, error = %e, "cannot refresh a session; keeping it until it expires");
                return Refresh::Failed;
            }
        };
        let now = unix_now();
        let mut new = old.clone();
        let mut id_exp = None;
        match &tokens.id_token {
            Some(idt) => match self.verify_id_token(idt, None).await {
                // OIDC Core §12.2: a refreshed ID token must be about the same subject.
                Ok(claims) if claims.get("sub").and_then(|v| v.as_str()) == Some(&old.sub) => {
                    match self
                        .groups_for(&claims, tokens.access_token.as_deref())
                        .await
                    {
                        Ok(Some(groups)) => new.g = groups,
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "refresh: groups unavailable; keeping the previous ones")
                        }
                    }
                    id_exp = claims.get("exp").and_then(|v| v.as_u64());
                    new.idt = Some(idt.clone());
                }
                Ok(_) => {
                    tracing::warn!(user = %old.u, "refreshed ID token names another subject; session ends");
                    return Refresh::Revoked;
                }
                Err(e) => {
                    tracing::warn!(user = %old.u, error = %e, "refreshed ID token invalid; session ends");
                    return Refresh::Revoked;
                }
            },
            None => {
                if let Some(at) = tokens.access_token.as_deref()
                    && self.config.userinfo_groups
                {
                    match self.userinfo_groups(at, &old.sub).await {
                        Ok(Some(groups)) => new.g = groups,
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "refresh: groups unavailable; keeping the previous ones")
                        }
                    }
                }
            }
        }
        new.exp = session_exp(tokens.expires_in, id_exp, now).min(new.max);
        if let Some(rt) = tokens.refresh_token {
            new.rt = Some(rt);
        }
        let cookie = match self.seal_session(&mut new) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "refreshed session cannot be sealed");
                return Refresh::Failed;
            }
        };
        let hash = sha256(cookie.as_bytes());
        let Some(identity) = self.identity_of(&new, hash) else {
            return Refresh::Failed;
        };
        let open = Arc::new(OpenSession {
            session: new,
            identity: Arc::new(identity),
        });
        self.opened.insert(hash, open.clone());
        Refresh::Done { open, cookie }
    }

    /// Seals a session into a cookie value that fits: without the ID token (only used as
    /// logout's hint) if need be, refused if even that is too large (huge group lists).
    fn seal_session(&self, s: &mut Session) -> Result<String, SignInError> {
        let seal = |s: &Session| -> Result<String, SignInError> {
            let json = serde_json::to_vec(s).map_err(|e| SignInError::Internal(e.to_string()))?;
            self.sealer
                .seal(cookies::SESSION, &json)
                .map_err(SignInError::Internal)
        };
        let sealed = seal(s)?;
        if sealed.len() <= MAX_COOKIE_VALUE {
            return Ok(sealed);
        }
        s.idt = None;
        let sealed = seal(s)?;
        if sealed.len() <= MAX_COOKIE_VALUE {
            Ok(sealed)
        } else {
            Err(SignInError::SessionTooLarge)
        }
    }

    // ---- the flow ---------------------------------------------------------------------

    /// Sends the browser to the provider: `state` (bound to this browser by its sealed
    /// cookie), `nonce` and a PKCE S256 challenge; `return_to` must be a same-origin path.
    pub async fn start(
        &self,
        headers: &HeaderMap,
        uri: &Uri,
        tls: bool,
        return_to: &str,
    ) -> Result<Response<ProxyBody>, SignInError> {
        let meta = self.idp.metadata().await?;
        let origin = self.origin(headers, uri, tls)?;
        let random = || random_token(32).map_err(SignInError::Internal);
        let (state, nonce, verifier) = (random()?, random()?, random()?);
        let challenge = URL_SAFE_NO_PAD.encode(sha256(verifier.as_bytes()));
        let mut url = meta.authorization_endpoint.clone();
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str(
            &form_urlencoded::Serializer::new(String::new())
                .append_pair("response_type", "code")
                .append_pair("client_id", &self.config.client_id)
                .append_pair(
                    "redirect_uri",
                    &format!("{origin}{}", self.config.redirect_path),
                )
                .append_pair("scope", &self.config.scopes.join(" "))
                .append_pair("state", &state)
                .append_pair("nonce", &nonce)
                .append_pair("code_challenge", &challenge)
                .append_pair("code_challenge_method", "S256")
                .finish(),
        );
        let ttl = self.config.state_ttl.as_secs();
        let login = LoginState {
            rd: safe_return_path(return_to),
            exp: unix_now().saturating_add(ttl),
            state,
            nonce,
            verifier,
        };
        let sealed = serde_json::to_vec(&login)
            .map_err(|e| SignInError::Internal(e.to_string()))
            .and_then(|json| {
                self.sealer
                    .seal(cookies::STATE_PREFIX, &json)
                    .map_err(SignInError::Internal)
            })?;
        let cookie = cookies::set(
            &state_cookie_name(&login.state),
            &sealed,
            &self.config.redirect_path,
            ttl,
            self.secure(tls),
        );
        Ok(redirect(&url, [cookie]))
    }

    /// The provider's redirect back: state checked against this browser's cookie (once),
    /// code exchanged with the PKCE verifier, ID token verified (signature from the
    /// provider's JWKS, issuer, audience, nonce), session cookie set.
    async fn callback(
        &self,
        headers: &HeaderMap,
        uri: &Uri,
        tls: bool,
        params: &[(String, String)],
    ) -> Result<Response<ProxyBody>, SignInError> {
        let param = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let state = param("state")
            .filter(|s| !s.is_empty())
            .ok_or(SignInError::StateMissing)?;
        let name = state_cookie_name(state);
        let login: LoginState = cookies::get(headers, &name)
            .and_then(|sealed| self.sealer.open(cookies::STATE_PREFIX, sealed))
            .and_then(|json| serde_json::from_slice(&json).ok())
            .ok_or(SignInError::StateMismatch)?;
        if !constant_eq(login.state.as_bytes(), state.as_bytes()) {
            return Err(SignInError::StateMismatch);
        }
        if unix_now() >= login.exp {
            return Err(SignInError::StateExpired);
        }
        let hash = sha256(state.as_bytes());
        let first_use = self.used_states.entry(hash).or_insert(()).is_fresh();
        let first_use = match (&self.shared, first_use) {
            (Some(shared), true) => shared
                .use_state(&hash, i64::try_from(login.exp).unwrap_or(i64::MAX))
                .await
                .map_err(|e| SignInError::StoreUnavailable(e.to_string()))?,
            (_, first_use) => first_use,
        };
        if !first_use {
            return Err(SignInError::StateReused);
        }
        // RFC 9207: a provider that names itself in the response must be the one asked.
        if let Some(iss) = param("iss")
            && iss != self.config.issuer
        {
            return Err(SignInError::IssuerMismatch);
        }
        if let Some(error) = param("error") {
            let error: String = error
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                .take(64)
                .collect();
            return Err(SignInError::IdpRefused(error));
        }
        let code = param("code")
            .filter(|c| !c.is_empty())
            .ok_or(SignInError::CodeMissing)?;
        let redirect_uri = format!(
            "{}{}",
            self.origin(headers, uri, tls)?,
            self.config.redirect_path
        );
        let tokens = self
            .idp
            .token(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", &redirect_uri),
                ("code_verifier", &login.verifier),
            ])
            .await?;
        let id_token = tokens.id_token.as_deref().ok_or(SignInError::NoIdToken)?;
        let claims = self.verify_id_token(id_token, Some(&login.nonce)).await?;
        let sub = claims
            .get("sub")
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .ok_or(SignInError::IdToken(IdentityError::MissingSubject))?;
        let (user, groups) = self
            .person(&claims, sub, tokens.access_token.as_deref())
            .await?;
        let groups = match groups {
            Some(groups) => groups,
            // Explicitly allowed: the directory alone decides who is a guest.
            None if self.config.allow_missing_groups => Vec::new(),
            None => {
                tracing::warn!(user = %user, claim = %self.groups_claim, "sign-in refused: the provider gave no groups claim");
                return Err(SignInError::GroupsUnavailable);
            }
        };
        let now = unix_now();
        let max = now.saturating_add(self.config.session_lifetime.as_secs());
        let id_exp = claims.get("exp").and_then(|v| v.as_u64());
        let ends_at_idp = self.idp.metadata().await?.end_session_endpoint.is_some();
        let mut session = Session {
            id: random_token(16).map_err(SignInError::Internal)?,
            sub: sub.to_string(),
            u: user.to_string(),
            g: groups,
            exp: session_exp(tokens.expires_in, id_exp, now).min(max),
            max,
            rt: tokens.refresh_token,
            idt: ends_at_idp.then(|| id_token.to_string()),
        };
        let sealed = self.seal_session(&mut session)?;
        tracing::info!(user = %session.u, "signed in");
        let secure = self.secure(tls);
        Ok(redirect(
            &login.rd,
            [
                cookies::set(cookies::SESSION, &sealed, "/", max - now, secure),
                cookies::clear(&name, &self.config.redirect_path, secure),
            ],
        ))
    }

    /// Verifies an ID token with the provider's keys (refetched once for an unknown `kid`,
    /// as after a key rotation): issuer, audience = client id, `azp` when present, and —
    /// after a sign-in, not after a refresh — the nonce.
    async fn verify_id_token(
        &self,
        token: &str,
        nonce: Option<&str>,
    ) -> Result<serde_json::Map<String, serde_json::Value>, SignInError> {
        let rules = ClaimRules {
            issuer: Some(&self.config.issuer),
            audience: Some(&self.config.client_id),
            leeway: self.leeway,
        };
        let check = || decode_claims(token, &[], &self.keys.keys.load(), &rules);
        let mut result = check();
        if matches!(
            result,
            Err(IdentityError::UnknownKey | IdentityError::NoKeys)
        ) && self.keys.refresh_for_unknown_key().await
        {
            result = check();
        }
        let claims = result.map_err(SignInError::IdToken)?;
        if let Some(azp) = claims.get("azp")
            && azp.as_str() != Some(self.config.client_id.as_str())
        {
            return Err(SignInError::IdToken(IdentityError::InvalidAudience));
        }
        if let Some(expected) = nonce {
            let got = claims.get("nonce").and_then(|v| v.as_str()).unwrap_or("");
            if !constant_eq(got.as_bytes(), expected.as_bytes()) {
                return Err(SignInError::NonceMismatch);
            }
        }
        Ok(claims)
    }

    /// Groups from the ID token's groups claim; when it has none, from userinfo (if
    /// `userinfo_groups`). `None` when neither says anything, or when the ID token says
    /// the groups were left out for being too many (Entra ID's overage: neither the token
    /// nor userinfo then holds the full list).
    async fn groups_for(
        &self,
        claims: &serde_json::Map<String, serde_json::Value>,
        access_token: Option<&str>,
    ) -> Result<Option<Vec<String>>, SignInError> {
        if groups_overage(claims, &self.groups_claim) {
            tracing::warn!(claim = %self.groups_claim, "the provider left the groups out of the ID token (too many groups)");
            return Ok(None);
        }
        if claims.contains_key(&self.groups_claim) {
            let groups = groups_of(claims.get(&self.groups_claim)).map_err(SignInError::IdToken)?;
            return Ok(Some(groups.iter().map(|g| g.to_string()).collect()));
        }
        let sub = claims.get("sub").and_then(|v| v.as_str()).unwrap_or("");
        match access_token {
            Some(at) if self.config.userinfo_groups => self.userinfo_groups(at, sub).await,
            _ => Ok(None),
        }
    }

    /// The user name and the groups of a new sign-in: each from the ID token, else from
    /// userinfo (if `userinfo_groups`). The user name never falls back
    /// to `sub` (unless `user_claim` is `sub`): grants and guest status hang on the name,
    /// and an opaque `sub` that happens to spell another person's name must not pass.
    async fn person(
        &self,
        claims: &serde_json::Map<String, serde_json::Value>,
        sub: &str,
        access_token: Option<&str>,
    ) -> Result<(String, Option<Vec<String>>), SignInError> {
        let name_in = |m: &serde_json::Map<String, serde_json::Value>| {
            m.get(&self.user_claim)
                .and_then(|v| v.as_str())
                .filter(|n| !n.is_empty())
                .map(str::to_string)
        };
        let mut user = name_in(claims);
        let mut groups = self.groups_for(claims, access_token).await?;
        if user.is_none()
            && let Some(at) = access_token
            && self.config.userinfo_groups
            && let Some(info) = self.userinfo_of(at, sub).await?
        {
            user = name_in(&info);
            if groups.is_none()
                && !groups_overage(claims, &self.groups_claim)
                && info.contains_key(&self.groups_claim)
            {
                groups = Some(userinfo_group_list(&info, &self.groups_claim)?);
            }
        }
        let user = match user {
            Some(user) if crate::identity::is_valid_user_name(&user) => user,
            Some(_) => return Err(SignInError::IdToken(IdentityError::InvalidUserName)),
            None => {
                tracing::warn!(claim = %self.user_claim, "sign-in refused: the provider gave no user claim");
                return Err(SignInError::UserUnavailable);
            }
        };
        Ok((user, groups))
    }

    /// The userinfo claims, checked to be about `sub`. `None` without a userinfo endpoint.
    async fn userinfo_of(
        &self,
        access_token: &str,
        sub: &str,
    ) -> Result<Option<serde_json::Map<String, serde_json::Value>>, SignInError> {
        let Some(info) = self.idp.userinfo(access_token).await? else {
            return Ok(None);
        };
        // OIDC Core §5.3.2: userinfo about anyone else must not be used.
        if info.get("sub").and_then(|v| v.as_str()) != Some(sub) {
            return Err(SignInError::Userinfo(ProviderError::SubjectMismatch));
        }
        Ok(Some(info))
    }

    async fn userinfo_groups(
        &self,
        access_token: &str,
        sub: &str,
    ) -> Result<Option<Vec<String>>, SignInError> {
        let Some(info) = self.userinfo_of(access_token, sub).await? else {
            return Ok(None);
        };
        if !info.contains_key(&self.groups_claim) {
            return Ok(None);
        }
        userinfo_group_list(&info, &self.groups_claim).map(Some)
    }

    /// Ends the session: the cookie is cleared, the refresh token revoked where the
    /// provider offers it, this cookie refused from now on by this process, and — when the
    /// provider offers RP-initiated logout — the browser sent there to end the provider's
    /// session too.
    async fn logout(
        &self,
        headers: &HeaderMap,
        uri: &Uri,
        tls: bool,
    ) -> Result<Response<ProxyBody>, SignInError> {
        let secure = self.secure(tls);
        let session = cookies::get(headers, cookies::SESSION).and_then(|value| {
            let hash = sha256(value.as_bytes());
            let open = self.open_session(value, hash)?;
            self.revoked.insert(open.session.id.clone(), ());
            self.opened.invalidate(&hash);
            Some(open.session)
        });
        // Every replica must refuse the session's cookies from now on: when the store
        // cannot record it, the sign-out fails (503) rather than half happen.
        if let (Some(shared), Some(s)) = (&self.shared, &session) {
            shared
                .end_session(&s.id, i64::try_from(s.max).unwrap_or(i64::MAX))
                .await
                .map_err(|e| SignInError::StoreUnavailable(e.to_string()))?;
        }
        if let Some(rt) = session.as_ref().and_then(|s| s.rt.as_deref()) {
            self.idp.revoke(rt).await;
        }
        if let Some(s) = &session {
            tracing::info!(user = %s.u, "signed out");
        }
        let end_session = match self.idp.metadata().await {
            Ok(meta) => meta.end_session_endpoint.clone(),
            Err(_) => None,
        };
        let location = match end_session {
            Some(endpoint) => {
                let mut q = form_urlencoded::Serializer::new(String::new());
                if let Some(idt) = session.as_ref().and_then(|s| s.idt.as_deref()) {
                    q.append_pair("id_token_hint", idt);
                }
                q.append_pair("client_id", &self.config.client_id);
                // Without a known origin (an HTTP/1.0 request without `Host`) the provider
                // is not told where to come back; the cookie is cleared all the same.
                if let Ok(origin) = self.origin(headers, uri, tls) {
                    q.append_pair(
                        "post_logout_redirect_uri",
                        &format!("{origin}{SIGNED_OUT_PATH}"),
                    );
                }
                let sep = if endpoint.contains('?') { '&' } else { '?' };
                format!("{endpoint}{sep}{}", q.finish())
            }
            None => SIGNED_OUT_PATH.to_string(),
        };
        Ok(redirect(
            &location,
            [cookies::clear(cookies::SESSION, "/", secure)],
        ))
    }
}

/// Session validity: the access token's lifetime when the provider gives one, else the ID
/// token's `exp`, else five minutes.
fn session_exp(expires_in: Option<u64>, id_exp: Option<u64>, now: u64) -> u64 {
    match (expires_in, id_exp) {
        // A provider's absurd `expires_in` must not overflow; the session's absolute end
        // bounds the result anyway.
        (Some(secs), _) => now.saturating_add(secs.min(MAX_TOKEN_LIFETIME)),
        (None, Some(exp)) => exp,
        (None, None) => now.saturating_add(300),
    }
}

fn userinfo_group_list(
    info: &serde_json::Map<String, serde_json::Value>,
    groups_claim: &str,
) -> Result<Vec<String>, SignInError> {
    let groups = groups_of(info.get(groups_claim))
        .map_err(|_| SignInError::Userinfo(ProviderError::GroupsNotStrings))?;
    Ok(groups.iter().map(|g| g.to_string()).collect())
}

/// Entra ID's group overage: instead of the groups claim, the token points elsewhere
/// (`_claim_names.groups`) or just says there are some (`hasgroups`, implicit flows).
fn groups_overage(claims: &serde_json::Map<String, serde_json::Value>, groups_claim: &str) -> bool {
    let pointed_elsewhere = claims
        .get("_claim_names")
        .and_then(|v| v.as_object())
        .is_some_and(|names| names.contains_key(groups_claim));
    let has_groups = claims.get("hasgroups").is_some_and(|v| match v {
        serde_json::Value::Bool(b) => *b,
        serde_json::Value::String(s) => s.eq_ignore_ascii_case("true"),
        _ => false,
    });
    pointed_elsewhere || has_groups
}

/// The state cookie's name: derived from the state, so each sign-in has its own.
fn state_cookie_name(state: &str) -> String {
    let digest = sha256(state.as_bytes());
    let mut name = String::from(cookies::STATE_PREFIX);
    for b in &digest[..6] {
        name.push_str(&format!("{b:02x}"));
    }
    name
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A return target that can only stay on this origin: a path starting with one `/` (not
/// `//` or `/\`, which browsers read as another host), no backslash or control character,
/// not absurdly long, whose path part has a canonical form (the one the gateway routes by)
/// that is not the gateway's own namespace — so `/%5Fguestgate/logout`,
/// `/_guestgate;x/logout` or `/a/../_guestgate/logout` cannot send a browser back to log
/// out. The canonical path is what is returned; non-ASCII is percent-encoded so the
/// `Location` header is always valid. Anything else becomes `/`.
pub fn safe_return_path(p: &str) -> String {
    let plausible = p.starts_with('/')
        && !p.starts_with("//")
        && !p.contains('\\')
        && !p.chars().any(|c| c.is_control() || c == ' ')
        && p.len() <= MAX_RETURN_PATH;
    if !plausible {
        return "/".to_string();
    }
    let p = encode_non_ascii(p);
    let (path, rest) = p.split_at(p.find(['?', '#']).unwrap_or(p.len()));
    match crate::http::canonical::canonicalize(path) {
        Ok(canonical)
            if !canonical.starts_with("//")
                && !gateway_paths::contains(&canonical)
                && canonical.len() + rest.len() <= MAX_RETURN_PATH =>
        {
            format!("{canonical}{rest}")
        }
        _ => "/".to_string(),
    }
}

/// Percent-encodes every byte outside ASCII (UTF-8), leaving the rest as it is.
fn encode_non_ascii(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    out
}

fn redirect<const N: usize>(location: &str, cookies: [HeaderValue; N]) -> Response<ProxyBody> {
    let mut response = Response::new(full_body(bytes::Bytes::new()));
    *response.status_mut() = StatusCode::FOUND;
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(location) {
        h.insert(header::LOCATION, v);
    }
    // These answers set or clear the gateway's cookies: no cache may keep them.
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-store"),
    );
    cookies::append_all(h, cookies);
    response
}

fn page(title: &str, body_html: &str) -> Response<ProxyBody> {
    crate::http::page::html(StatusCode::OK, title, body_html)
}

/// A request to the gateway's own namespace, as the pipeline accepted it.
pub struct EndpointRequest<'a> {
    pub method: &'a Method,
    /// The canonical path.
    pub path: &'a str,
    /// The query's parameters, decoded.
    pub params: &'a [(String, String)],
    pub headers: &'a HeaderMap,
    pub uri: &'a Uri,
    /// The browser reached the gateway over TLS.
    pub tls: bool,
}

/// A refused request to the gateway's namespace, and the cookie that goes with the answer
/// (a failed callback's sign-in state, cleared).
#[derive(Debug)]
pub struct EndpointError {
    pub error: SignInError,
    pub clear_cookie: Option<HeaderValue>,
}

impl From<SignInError> for EndpointError {
    fn from(error: SignInError) -> EndpointError {
        EndpointError {
            error,
            clear_cookie: None,
        }
    }
}

/// Answers a request under the gateway's own prefix. Runs right after accept; nothing here
/// is classified by the route profile or forwarded.
pub async fn endpoint(
    signin: Option<&SignIn>,
    request: &EndpointRequest<'_>,
) -> Result<Response<ProxyBody>, EndpointError> {
    let Some(s) = signin else {
        return Err(SignInError::NotConfigured.into());
    };
    let EndpointRequest {
        method,
        path,
        params,
        headers,
        uri,
        tls,
    } = *request;
    let read = method == Method::GET || method == Method::HEAD;
    if read && path == LOGIN_PATH {
        let rd = params
            .iter()
            .find(|(k, _)| k == "rd")
            .map_or("/", |(_, v)| v.as_str());
        return Ok(s.start(headers, uri, tls, rd).await?);
    }
    if path == LOGOUT_PATH {
        if method == Method::POST {
            if !s.same_origin(headers, uri, tls) {
                return Err(SignInError::CrossSite.into());
            }
            return Ok(s.logout(headers, uri, tls).await?);
        }
        // A GET (a link, an `<img>` of another site) only asks: the logout itself is a
        // same-origin POST, so no other page can sign people out.
        if read {
            return Ok(page(
                "Sign out",
                &format!(
                    "<form method=\"post\" action=\"{LOGOUT_PATH}\">\
                     <button type=\"submit\">Sign out</button></form>"
                ),
            ));
        }
    }
    if read && path == SIGNED_OUT_PATH {
        return Ok(page(
            "Signed out",
            &format!(
                "<p>You have signed out.</p><p><a href=\"{LOGIN_PATH}\">Sign in again</a></p>"
            ),
        ));
    }
    if method == Method::GET && path == s.config.redirect_path {
        let result = s.callback(headers, uri, tls, params).await;
        let slot = usize::from(result.is_err());
        crate::telemetry::count(&crate::telemetry::SIGN_INS, slot);
        // A failed callback ends the sign-in its state names (the provider's answer was
        // used or is unusable): its cookie goes now rather than at `state_ttl`. Other
        // sign-ins of this browser (other tabs) keep theirs.
        return result.map_err(|error| EndpointError {
            error,
            clear_cookie: params
                .iter()
                .find(|(k, v)| k == "state" && !v.is_empty())
                .map(|(_, v)| {
                    cookies::clear(
                        &state_cookie_name(v),
                        &s.config.redirect_path,
                        s.secure(tls),
                    )
                }),
        });
    }
    Err(SignInError::UnknownEndpoint.into())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn return_paths_stay_on_this_origin() {
        for ok in [
            "/",
            "/display/ENG/Home",
            "/pages/viewpage.action?pageId=1&x=%2F%2F",
        ] {
            assert_eq!(safe_return_path(ok), ok);
        }
        for bad in [
            "//evil.example/x",
            "/\\evil.example",
            "https://evil.example/",
            "evil",
            "",
            "/a\\b",
            "/a\tb",
            "/_guestgate/logout",
            "/_guestgate",
            "/_guestgate?x",
            // Spellings the gateway's canonical form reads as its own namespace.
            "/%5Fguestgate/logout",
            "/%5fguestgate/logout?x=1",
            "/_guestgate;x/logout",
            "/a/../_guestgate/logout",
            "/./_guestgate/logout",
            "/x/..;/_guestgate/logout",
            // No canonical form at all.
            "/a/%2F/b",
            "/../etc",
            "/a/%zz",
        ] {
            assert_eq!(safe_return_path(bad), "/", "{bad:?}");
        }
        assert_eq!(safe_return_path(&format!("/{}", "a".repeat(600))), "/");
    }

    #[test]
    fn return_paths_are_canonical_and_ascii() {
        assert_eq!(safe_return_path("/a/./b/../c?q=1"), "/a/c?q=1");
        assert_eq!(safe_return_path("/display/%45NG"), "/display/ENG");
        let encoded = safe_return_path("/display/ENG/Caf\u{e9}?q=\u{fc}");
        assert_eq!(encoded, "/display/ENG/Caf%C3%A9?q=%C3%BC");
        assert!(HeaderValue::from_str(&encoded).is_ok());
    }

    #[test]
    fn absurd_token_lifetimes_do_not_overflow() {
        let now = 1_700_000_000;
        assert_eq!(session_exp(Some(60), None, now), now + 60);
        assert_eq!(
            session_exp(Some(u64::MAX), None, now),
            now + MAX_TOKEN_LIFETIME
        );
        assert_eq!(session_exp(Some(5), None, u64::MAX), u64::MAX);
        assert_eq!(session_exp(None, None, u64::MAX), u64::MAX);
        assert_eq!(session_exp(None, Some(now + 9), now), now + 9);
    }

    #[test]
    fn entra_group_overage_is_recognised() {
        let claims = |v: serde_json::Value| v.as_object().unwrap().clone();
        assert!(groups_overage(
            &claims(
                serde_json::json!({"_claim_names": {"groups": "src1"}, "_claim_sources": {"src1": {"endpoint": "https://graph"}}})
            ),
            "groups"
        ));
        assert!(groups_overage(
            &claims(serde_json::json!({"hasgroups": true})),
            "groups"
        ));
        assert!(groups_overage(
            &claims(serde_json::json!({"hasgroups": "true"})),
            "groups"
        ));
        assert!(!groups_overage(
            &claims(serde_json::json!({"groups": []})),
            "groups"
        ));
        assert!(!groups_overage(
            &claims(serde_json::json!({"_claim_names": {"roles": "src1"}, "hasgroups": false})),
            "groups"
        ));
    }

    #[test]
    fn state_cookie_names_differ_per_state() {
        let a = state_cookie_name("a");
        assert!(
            a.starts_with(cookies::STATE_PREFIX) && a.len() == cookies::STATE_PREFIX.len() + 12
        );
        assert_ne!(a, state_cookie_name("b"));
        assert!(
            constant_eq(b"abc", b"abc")
                && !constant_eq(b"abc", b"abd")
                && !constant_eq(b"a", b"ab")
        );
    }
}
