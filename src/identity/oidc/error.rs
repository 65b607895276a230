//! Why a step of browser sign-in failed: the errors of this layer, each with the status,
//! reason word and public sentence the pipeline's rescue answers with.

use http::StatusCode;

use crate::http::client::FetchError;
use crate::identity::IdentityError;
use crate::identity::discovery::DiscoveryError;

/// What went wrong talking to the identity provider.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("discovery failed moments ago")]
    RecentlyFailed,
    #[error("the provider does not support PKCE with S256")]
    NoPkceS256,
    #[error("token endpoint answered {status} ({error})")]
    TokenEndpoint { status: StatusCode, error: String },
    #[error("token response")]
    TokenResponse(#[source] serde_json::Error),
    #[error("answered {0}")]
    Status(StatusCode),
    #[error("not a JSON object (signed userinfo is not supported)")]
    NotAnObject,
    #[error("userinfo names another subject")]
    SubjectMismatch,
    #[error("groups claim is not a list of strings")]
    GroupsNotStrings,
    #[error("the client credentials do not fit in a header")]
    ClientCredentials,
    #[error("cannot build the request")]
    Request(#[source] http::Error),
}

/// Why a sign-in step was refused. The pipeline's rescue turns it into a response.
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    #[error("browser sign-in is not configured")]
    NotConfigured,
    #[error("no such gateway endpoint")]
    UnknownEndpoint,
    #[error("the callback carries no state")]
    StateMissing,
    /// No sign-in started in this browser matches the callback's state: a tampered or
    /// forged callback, another browser's callback, or cookies refused.
    #[error("no sign-in in progress in this browser matches the callback's state")]
    StateMismatch,
    #[error("the sign-in took too long")]
    StateExpired,
    #[error("this sign-in has already been completed")]
    StateReused,
    #[error("the callback names another issuer")]
    IssuerMismatch,
    #[error("the identity provider refused the sign-in: {0}")]
    IdpRefused(String),
    #[error("the callback carries no code")]
    CodeMissing,
    #[error("the identity provider refused the code: {error}")]
    TokenRejected { error: String },
    #[error("the token response has no ID token")]
    NoIdToken,
    #[error("the ID token is not valid: {0}")]
    IdToken(#[source] IdentityError),
    #[error("the ID token's nonce is not the one this sign-in sent")]
    NonceMismatch,
    #[error("userinfo")]
    Userinfo(#[source] ProviderError),
    #[error("identity provider unavailable")]
    IdpUnavailable(#[source] ProviderError),
    /// Neither the ID token nor userinfo says which groups the person is in (or Entra ID
    /// left them out for having too many): without them a guest would pass as a regular user.
    #[error("the identity provider did not say which groups the user is in")]
    GroupsUnavailable,
    /// Neither the ID token nor userinfo names the user by `identity.user_claim`.
    #[error("the identity provider did not give the user's name")]
    UserUnavailable,
    #[error("the session does not fit in a cookie")]
    SessionTooLarge,
    #[error("the request names no host")]
    NoHost,
    /// A logout posted from another site: a page elsewhere must not sign people out.
    #[error("a logout from another site")]
    CrossSite,
    /// The shared store (`[store]`) could not record a used state or an ended session:
    /// refusing is the only answer that holds on every replica.
    #[error("the shared store is unavailable: {0}")]
    StoreUnavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl SignInError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotConfigured | Self::UnknownEndpoint => StatusCode::NOT_FOUND,
            Self::StateMissing
            | Self::StateMismatch
            | Self::StateExpired
            | Self::StateReused
            | Self::IssuerMismatch
            | Self::CodeMissing
            | Self::TokenRejected { .. }
            | Self::NoHost => StatusCode::BAD_REQUEST,
            Self::IdpRefused(_)
            | Self::GroupsUnavailable
            | Self::UserUnavailable
            | Self::CrossSite => StatusCode::FORBIDDEN,
            Self::NoIdToken | Self::IdToken(_) | Self::NonceMismatch => StatusCode::UNAUTHORIZED,
            Self::Userinfo(_) | Self::IdpUnavailable(_) => StatusCode::BAD_GATEWAY,
            Self::SessionTooLarge | Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::StoreUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotConfigured | Self::UnknownEndpoint => "not_found",
            Self::StateMissing => "state_missing",
            Self::StateMismatch => "state_mismatch",
            Self::StateExpired => "state_expired",
            Self::StateReused => "state_reused",
            Self::IssuerMismatch => "issuer_mismatch",
            Self::IdpRefused(_) => "sign_in_refused",
            Self::CodeMissing => "code_missing",
            Self::TokenRejected { .. } => "code_rejected",
            Self::NoIdToken => "no_id_token",
            Self::IdToken(_) => "invalid_id_token",
            Self::NonceMismatch => "nonce_mismatch",
            Self::Userinfo(_) => "userinfo_failed",
            Self::IdpUnavailable(_) => "idp_unavailable",
            Self::GroupsUnavailable => "groups_unavailable",
            Self::UserUnavailable => "user_unavailable",
            Self::SessionTooLarge => "session_too_large",
            Self::NoHost => "missing_host",
            Self::CrossSite => "cross_site_request",
            Self::StoreUnavailable(_) => "store_unavailable",
            Self::Internal(_) => "internal_error",
        }
    }

    /// What the error page tells the person: a fixed sentence. The details (provider
    /// URLs, transport and parse errors, the provider's own words) go to the log only.
    pub fn public_message(&self) -> &'static str {
        match self {
            Self::NotConfigured | Self::UnknownEndpoint => "no such page",
            Self::StateMissing => "the answer from the identity provider carries no state",
            Self::StateMismatch => "no sign-in started in this browser matches this answer",
            Self::StateExpired => "the sign-in took too long",
            Self::StateReused => "this sign-in has already been completed",
            Self::IssuerMismatch => "the answer names another identity provider",
            Self::IdpRefused(_) => "the identity provider refused the sign-in",
            Self::CodeMissing => "the answer from the identity provider carries no code",
            Self::TokenRejected { .. } => "the identity provider refused the sign-in code",
            Self::NoIdToken => "the identity provider sent no ID token",
            Self::IdToken(_) => "the ID token is not valid",
            Self::NonceMismatch => "the ID token belongs to another sign-in",
            Self::Userinfo(_) => "the user information from the identity provider is not usable",
            Self::IdpUnavailable(_) => "the identity provider cannot be reached",
            Self::GroupsUnavailable => "the identity provider did not say which groups you are in",
            Self::UserUnavailable => "the identity provider did not give your user name",
            Self::SessionTooLarge => "the session does not fit in a cookie",
            Self::NoHost => "the request names no host",
            Self::CrossSite => "a page of another site asked to sign you out",
            Self::StoreUnavailable(_) => {
                "the sign-in service is briefly unavailable; please try again"
            }
            Self::Internal(_) => "an internal error occurred",
        }
    }

    /// Whether a person can fix this by signing in again (the error page offers it).
    pub fn offers_sign_in(&self) -> bool {
        !matches!(
            self,
            Self::NotConfigured | Self::UnknownEndpoint | Self::CrossSite
        )
    }
}
