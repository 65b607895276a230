//! Token verification: finds the token in the request and turns it into a verified
//! [`Identity`], through a cache keyed by the token's hash.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use http::header::{AUTHORIZATION, COOKIE};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::config::{IdentityConfig, TokenSource};

use super::jwks::RemoteKeys;
use super::keys::{KeyError, VerifyKey, keys_from_jwks};
use super::{Caller, Identity, IdentityError, sha256, unix_now};

/// Tokens longer than this are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// A verified token is cached at most this long (and never past its `exp`).
pub(crate) const MAX_TOKEN_CACHE: Duration = Duration::from_secs(600);

/// The keys and claim rules of one snapshot, with the cache of tokens verified under them.
pub struct Verifier {
    keys: Vec<VerifyKey>,
    sources: Vec<TokenSource>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: u64,
    user_claim: String,
    groups_claim: String,
    // Hashed with foldhash's keyed quality variant, seeded per process: several times
    // faster than SipHash on short keys, and collisions cannot be aimed without the seed.
    cache: moka::sync::Cache<[u8; 32], Arc<Identity>, foldhash::quality::RandomState>,
    /// Keys fetched from the identity provider, shared across snapshots.
    remote: Option<Arc<RemoteKeys>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("keys", &self.keys.len())
            .finish()
    }
}

pub(crate) struct UntilExp;

impl moka::Expiry<[u8; 32], Arc<Identity>> for UntilExp {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &Arc<Identity>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        let left = value.expires_at.saturating_sub(unix_now());
        Some(Duration::from_secs(left).min(MAX_TOKEN_CACHE))
    }
}

impl Verifier {
    /// Loads the HS256 secret (from its environment variable) and the JWKS file.
    pub fn load(
        config: &IdentityConfig,
        remote: Option<Arc<RemoteKeys>>,
    ) -> Result<Verifier, Vec<KeyError>> {
        let mut keys = Vec::new();
        let mut errors = Vec::new();
        let secret = match (&config.hs256_secret_env, &config.hs256_secret_file) {
            (Some(var), _) => Some(std::env::var(var).map_err(|_| {
                format!("identity.hs256_secret_env: environment variable ${var} is not set")
            })),
            (None, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
                    .map_err(|e| format!("identity.hs256_secret_file: {}: {e}", path.display())),
            ),
            (None, None) => None,
        };
        match secret {
            Some(Ok(secret)) if secret.len() >= 32 => keys.push(VerifyKey {
                kid: None,
                alg: Algorithm::HS256,
                key: DecodingKey::from_secret(secret.as_bytes()),
            }),
            Some(Ok(_)) => errors.push(KeyError(
                "identity: the HS256 secret must be at least 32 bytes long".into(),
            )),
            Some(Err(e)) => errors.push(KeyError(e)),
            None => {}
        }
        if let Some(path) = &config.jwks_file {
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    let (found, problems) = keys_from_jwks(&text, &path.display().to_string());
                    keys.extend(found);
                    errors.extend(problems);
                }
                Err(e) => errors.push(KeyError(format!("{}: {e}", path.display()))),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Verifier {
            keys,
            sources: config.token_sources.clone(),
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway: config.leeway_secs,
            user_claim: config.user_claim.clone(),
            groups_claim: config.groups_claim.clone(),
            cache: moka::sync::Cache::builder()
                .max_capacity(config.token_cache_max_entries)
                .expire_after(UntilExp)
                .build_with_hasher(foldhash::quality::RandomState::default()),
            remote,
        })
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Finds the token in the request (sources in configured order) and verifies it. A
    /// token naming a key the gateway does not have triggers one (coalesced, rate-limited)
    /// refetch of the identity provider's keys before it is refused.
    pub async fn identify(&self, headers: &HeaderMap) -> Caller {
        let Some(token) = find_token(&self.sources, headers) else {
            return Caller::Anonymous;
        };
        let mut result = self.verify(token);
        if let (Err(IdentityError::UnknownKey | IdentityError::NoKeys), Some(remote)) =
            (&result, &self.remote)
            // Boxed: rare, and it would otherwise enlarge every request's future.
            && Box::pin(remote.refresh_for_unknown_key()).await
        {
            result = self.verify(token);
        }
        match result {
            Ok(identity) => Caller::Authenticated(identity),
            Err(e) => Caller::Rejected(e),
        }
    }

    /// Verifies one token, through the cache.
    pub fn verify(&self, token: &str) -> Result<Arc<Identity>, IdentityError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(IdentityError::TooLarge);
        }
        let hash = sha256(token.as_bytes());
        if let Some(hit) = self.cache.get(&hash)
            && hit.expires_at > unix_now()
        {
            crate::telemetry::count(&crate::telemetry::TOKEN_CACHE, 1);
            return Ok(hit);
        }
        crate::telemetry::count(&crate::telemetry::TOKEN_CACHE, 0);
        let identity = Arc::new(self.verify_uncached(token, hash)?);
        if identity.expires_at > unix_now() {
            self.cache.insert(hash, identity.clone());
        }
        Ok(identity)
    }

    fn verify_uncached(&self, token: &str, hash: [u8; 32]) -> Result<Identity, IdentityError> {
        let remote = self.remote.as_ref().map(|r| r.keys.load());
        let remote_keys: &[VerifyKey] = remote.as_deref().map_or(&[], |k| k.as_slice());
        let claims = decode_claims(
            token,
            &self.keys,
            remote_keys,
            &ClaimRules {
                issuer: self.issuer.as_deref(),
                audience: self.audience.as_deref(),
                leeway: self.leeway,
            },
        )?;
        if claims.contains_key("nonce") {
            return Err(IdentityError::IdTokenAsBearer);
        }
        let expires_at = claims
            .get("exp")
            .and_then(serde_json::Value::as_u64)
            .ok_or(IdentityError::InvalidClaims)?;
        let (name, token_groups) = name_and_groups(&claims, &self.user_claim, &self.groups_claim)?;
        let claims: regorus::Value = serde_json::from_value(serde_json::Value::Object(claims))
            .map_err(|_| IdentityError::InvalidClaims)?;
        Ok(Identity {
            name,
            token_groups,
            claims,
            token_hash: hash,
            expires_at,
        })
    }
}

/// What a token's registered claims must say, besides a valid `exp`.
pub(crate) struct ClaimRules<'a> {
    pub issuer: Option<&'a str>,
    pub audience: Option<&'a str>,
    pub leeway: u64,
}

/// Checks a compact JWS against `keys` then `remote_keys` and returns its claims: the
/// header first (see [`parse_header`]), then the key its `kid` names — whose algorithm is
/// the only one accepted — then signature, `exp`, `nbf`, issuer and audience. Used for
/// bearer tokens and for the ID tokens of browser sign-in alike.
pub(crate) fn decode_claims(
    token: &str,
    keys: &[VerifyKey],
    remote_keys: &[VerifyKey],
    rules: &ClaimRules<'_>,
) -> Result<serde_json::Map<String, serde_json::Value>, IdentityError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(IdentityError::TooLarge);
    }
    if keys.is_empty() && remote_keys.is_empty() {
        return Err(IdentityError::NoKeys);
    }
    let all = || keys.iter().chain(remote_keys.iter());
    let header = parse_header(token)?;
    // The algorithm is pinned by the key: a token never chooses how it is checked.
    let key = match &header.kid {
        Some(kid) => {
            let key = all()
                .find(|k| k.kid.as_deref() == Some(kid.as_str()))
                .or_else(|| all().find(|k| k.kid.is_none() && k.alg == header.alg))
                .ok_or(IdentityError::UnknownKey)?;
            if key.alg != header.alg {
                return Err(IdentityError::AlgorithmMismatch);
            }
            key
        }
        None => all()
            .find(|k| k.alg == header.alg)
            .ok_or(IdentityError::UnsupportedAlgorithm)?,
    };
    let mut validation = Validation::new(key.alg);
    validation.leeway = rules.leeway;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.set_required_spec_claims(&["exp"]);
    match rules.issuer {
        Some(iss) => validation.set_issuer(&[iss]),
        None => validation.iss = None,
    }
    match rules.audience {
        Some(aud) => validation.set_audience(&[aud]),
        None => validation.validate_aud = false,
    }
    let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
        token,
        &key.key,
        &validation,
    )
    .map_err(|e| {
        use jsonwebtoken::errors::ErrorKind as K;
        match e.kind() {
            K::ExpiredSignature => IdentityError::Expired,
            K::ImmatureSignature => IdentityError::NotYetValid,
            K::InvalidIssuer => IdentityError::InvalidIssuer,
            K::InvalidAudience => IdentityError::InvalidAudience,
            K::InvalidSignature => IdentityError::InvalidSignature,
            K::InvalidAlgorithm => IdentityError::AlgorithmMismatch,
            K::MissingRequiredClaim(_) | K::InvalidClaimFormat(_) => IdentityError::InvalidClaims,
            _ => IdentityError::Malformed,
        }
    })?;
    Ok(data.claims)
}

/// The user name (`user_claim`, falling back to `sub`) and the groups (`groups_claim`: a
/// string or an array of strings) of a set of claims.
pub(crate) fn name_and_groups(
    claims: &serde_json::Map<String, serde_json::Value>,
    user_claim: &str,
    groups_claim: &str,
) -> Result<(Arc<str>, Vec<Arc<str>>), IdentityError> {
    let name = claims
        .get(user_claim)
        .and_then(serde_json::Value::as_str)
        .or_else(|| claims.get("sub").and_then(serde_json::Value::as_str))
        .filter(|n| !n.is_empty())
        .ok_or(IdentityError::MissingSubject)?;
    if !super::is_valid_user_name(name) {
        return Err(IdentityError::InvalidUserName);
    }
    let groups = groups_of(claims.get(groups_claim))?;
    Ok((Arc::from(name), groups))
}

/// A groups claim: absent or null (none), one string, or an array of strings.
pub(crate) fn groups_of(value: Option<&serde_json::Value>) -> Result<Vec<Arc<str>>, IdentityError> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(Vec::new()),
        Some(serde_json::Value::String(g)) => Ok(vec![Arc::from(g.as_str())]),
        Some(serde_json::Value::Array(gs)) => gs
            .iter()
            .map(|g| {
                g.as_str()
                    .map(Arc::from)
                    .ok_or(IdentityError::InvalidClaims)
            })
            .collect(),
        Some(_) => Err(IdentityError::InvalidClaims),
    }
}

/// The JOSE header fields the gateway acts on.
#[derive(Debug, serde::Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

/// The header of a compact JWS, checked before any key is chosen: the algorithm must be one
/// the gateway verifies (`none` never is), `crit` extensions are refused because the
/// gateway implements none (RFC 7515 §4.1.11), and `typ`, when present, must say JWT.
struct TokenHeader {
    alg: Algorithm,
    kid: Option<String>,
}

fn parse_header(token: &str) -> Result<TokenHeader, IdentityError> {
    use base64::Engine as _;
    let mut parts = token.split('.');
    let (Some(head), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(IdentityError::Malformed);
    };
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(head)
        .map_err(|_| IdentityError::Malformed)?;
    let raw: RawHeader = serde_json::from_slice(&json).map_err(|_| IdentityError::Malformed)?;
    if raw.crit.is_some() {
        return Err(IdentityError::UnsupportedCritical);
    }
    if let Some(typ) = &raw.typ {
        let typ = typ.to_ascii_lowercase();
        let typ = typ.strip_prefix("application/").unwrap_or(&typ);
        if !matches!(typ, "jwt" | "at+jwt") {
            return Err(IdentityError::UnsupportedType);
        }
    }
    let alg = match raw.alg.as_str() {
        "HS256" | "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512" | "ES256" | "ES384"
        | "EdDSA" => {
            Algorithm::from_str(&raw.alg).map_err(|_| IdentityError::UnsupportedAlgorithm)?
        }
        _ => return Err(IdentityError::UnsupportedAlgorithm),
    };
    Ok(TokenHeader { alg, kid: raw.kid })
}

/// The first token found in the configured sources.
fn find_token<'h>(sources: &[TokenSource], headers: &'h HeaderMap) -> Option<&'h str> {
    for source in sources {
        let found = match source {
            TokenSource::Authorization => headers
                .get_all(AUTHORIZATION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find_map(|v| {
                    let (scheme, rest) = v.split_once(' ')?;
                    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
                }),
            TokenSource::Cookie(name) => headers
                .get_all(COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .find_map(|pair| {
                    let (k, v) = pair.trim().split_once('=')?;
                    (k == name).then(|| v.trim_matches('"'))
                }),
            TokenSource::Header(name) => headers.get(name).and_then(|v| v.to_str().ok()),
        };
        if let Some(token) = found.filter(|t| !t.is_empty()) {
            return Some(token);
        }
    }
    None
}
