//! Who is asking: bearer tokens and their keys (local files, a JWKS fetched and refreshed,
//! OpenID discovery), and browser sign-in (`oidc`), which turns a session cookie into the
//! same kind of identity. Nothing here knows about routes, spaces or policies; errors are
//! this layer's own, and the pipeline maps them to responses.
//!
//! Identification never fails a request by itself: a missing or invalid token is carried
//! as [`Caller::Anonymous`] / [`Caller::Rejected`] so that public routes (login page,
//! static resources) stay reachable with a stale cookie; the pipeline answers 401
//! everywhere else.

pub mod discovery;
pub mod jwks;
pub mod keys;
pub mod oidc;
pub mod verify;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

pub use jwks::RemoteKeys;
pub use keys::KeyError;
pub use verify::{MAX_TOKEN_BYTES, Verifier};

/// Why a token was not accepted; each is the `reason` of a 401.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("no token")]
    Missing,
    #[error("token too large")]
    TooLarge,
    #[error("malformed token")]
    Malformed,
    #[error("token header has critical extensions the gateway does not understand")]
    UnsupportedCritical,
    #[error("token type not accepted")]
    UnsupportedType,
    #[error("token algorithm not accepted")]
    UnsupportedAlgorithm,
    #[error("token key id unknown")]
    UnknownKey,
    #[error("token algorithm does not match its key")]
    AlgorithmMismatch,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token issuer not accepted")]
    InvalidIssuer,
    #[error("token audience not accepted")]
    InvalidAudience,
    #[error("token signature invalid")]
    InvalidSignature,
    #[error("token claims invalid")]
    InvalidClaims,
    #[error("token names no user")]
    MissingSubject,
    /// The user name has white space around it or a control character in it: the wiki
    /// would read it as another name (or none), so it names nobody.
    #[error("the user name is not one the wiki could hold")]
    InvalidUserName,
    #[error("no verification keys configured")]
    NoKeys,
    /// A token with a `nonce`: an ID token (the code flow always sets one), which proves a
    /// sign-in to its client but is no credential for the wiki, and may have leaked through
    /// a URL (`id_token_hint`).
    #[error("an ID token is not accepted as a bearer token")]
    IdTokenAsBearer,
    /// A browser session (sign-in) that ended and could not be refreshed.
    #[error("session expired")]
    SessionExpired,
    /// A session cookie that does not open with any of the gateway's session keys.
    #[error("session invalid")]
    SessionInvalid,
}

impl IdentityError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "missing_token",
            Self::TooLarge => "token_too_large",
            Self::Malformed => "malformed_token",
            Self::UnsupportedCritical => "unsupported_critical_header",
            Self::UnsupportedType => "unsupported_token_type",
            Self::UnsupportedAlgorithm => "unsupported_algorithm",
            Self::UnknownKey => "unknown_key",
            Self::AlgorithmMismatch => "algorithm_mismatch",
            Self::Expired => "token_expired",
            Self::NotYetValid => "token_not_yet_valid",
            Self::InvalidIssuer => "invalid_issuer",
            Self::InvalidAudience => "invalid_audience",
            Self::InvalidSignature => "invalid_signature",
            Self::InvalidClaims => "invalid_claims",
            Self::MissingSubject => "missing_subject",
            Self::InvalidUserName => "invalid_user_name",
            Self::NoKeys => "no_keys",
            Self::IdTokenAsBearer => "id_token_not_accepted",
            Self::SessionExpired => "session_expired",
            Self::SessionInvalid => "invalid_session",
        }
    }

    /// RFC 6750 §3: no error code when no token was sent, `invalid_token` otherwise.
    pub fn www_authenticate(&self) -> http::HeaderValue {
        let value = match self {
            Self::Missing => "Bearer realm=\"guestgate\"".to_string(),
            other => format!(
                "Bearer realm=\"guestgate\", error=\"invalid_token\", error_description=\"{}\"",
                other.reason()
            ),
        };
        http::HeaderValue::from_str(&value)
            .unwrap_or_else(|_| http::HeaderValue::from_static("Bearer"))
    }
}

/// A verified token's identity.
#[derive(Debug)]
pub struct Identity {
    pub name: Arc<str>,
    /// Groups from the token's groups claim (the directory's are added in `decide`).
    pub token_groups: Vec<Arc<str>>,
    /// All claims, for the policy input.
    pub claims: regorus::Value,
    /// SHA-256 of the token: the cache key, and what stands for the claims in decision keys.
    pub token_hash: [u8; 32],
    /// `exp`, seconds since the epoch.
    pub expires_at: u64,
}

/// Who is asking.
#[derive(Debug, Clone)]
pub enum Caller {
    Authenticated(Arc<Identity>),
    Anonymous,
    Rejected(IdentityError),
}

/// Whether `name` can name a wiki user: not empty, no white space around it (Confluence
/// looks names up untrimmed, and Crowd refuses to create such names), no control
/// characters (a header value could not carry them faithfully).
pub fn is_valid_user_name(name: &str) -> bool {
    crate::files::is_printable_name(name)
}

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// SHA-256 of `bytes`: token cache keys, revision hashes, event ids.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}
