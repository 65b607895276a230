//! The one error type of the request path. Every stage returns `Result<_, GatewayError>`;
//! [`GatewayError::describe`] says, for each variant in one place, what the client is told
//! (status, reason word, the sentence a browser sees), and `rescue.rs` alone turns an error
//! into a response.

use std::sync::Arc;

use http::{HeaderValue, StatusCode};

use crate::http::body::{BoxError, ClientBodyError};
use crate::http::client::FetchError;
use crate::identity::IdentityError;
use crate::identity::oidc::SignInError;
use crate::policy::PolicyError;

/// Why a content id's space could not be found.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("the route profile has no lookup for this route")]
    NoLookup,
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("the wiki's answer has no space key at {0}")]
    NoSpace(String),
}

/// Everything that can end a request before (or instead of) the upstream's answer.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The request cannot be read without guessing (a non-canonical target, a malformed
    /// header or parameter); the word says which.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("request header fields too large")]
    HeadersTooLarge,
    /// The request body is larger than its route allows (`Content-Length` up front, or the
    /// streamed body once it passes the limit).
    #[error("request body too large")]
    PayloadTooLarge,
    #[error("method not allowed: {0}")]
    MethodNotAllowed(&'static str),
    /// No usable identity on a route that needs one.
    #[error("unauthorized: {0}")]
    Unauthorized(#[from] IdentityError),
    /// The policy said no. `anonymous` marks a denial of a request that carried no
    /// identity, which a browser may answer by signing in.
    #[error("forbidden: {reason}")]
    Denied {
        reason: Arc<str>,
        status: StatusCode,
        anonymous: bool,
    },
    /// The policy could not be evaluated; fail closed.
    #[error("policy evaluation failed")]
    Policy(#[source] PolicyError),
    /// The space of a content id could not be resolved for a guest; fail closed.
    #[error("space of content {content} could not be resolved")]
    ContentUnresolved {
        content: String,
        #[source]
        cause: Arc<LookupError>,
    },
    #[error("upstream unreachable")]
    UpstreamUnavailable(#[source] BoxError),
    #[error("upstream did not answer in time")]
    UpstreamTimeout,
    /// Too many requests are in flight to the wiki; shed load rather than queue without end.
    #[error("too many requests in flight to the upstream")]
    Overloaded { retry_after_secs: u64 },
    /// The request task panicked; the panic was caught and the request answered.
    #[error("internal error: {0}")]
    Internal(&'static str),
    /// A guest's listing could not be filtered; it is refused rather than passed unfiltered.
    #[error("listing cannot be filtered: {0}")]
    Unfilterable(&'static str),
    #[error("gateway not ready: {0}")]
    NotReady(&'static str),
    /// A step of browser sign-in failed (or a `/_guestgate/` path that does not exist); the
    /// answer clears `clear_cookie` when set.
    #[error("sign-in failed")]
    SignIn {
        #[source]
        error: SignInError,
        clear_cookie: Option<HeaderValue>,
    },
}

impl From<SignInError> for GatewayError {
    fn from(error: SignInError) -> GatewayError {
        GatewayError::SignIn {
            error,
            clear_cookie: None,
        }
    }
}

/// What a client is told about a refusal.
pub struct Description<'e> {
    pub status: StatusCode,
    /// The short snake_case word clients and logs see as `reason`.
    pub reason: &'e str,
    /// A sentence for a person at a browser, where the refusal has one to offer beyond the
    /// status (a failed sign-in, with the way back in).
    pub sign_in_failure: Option<&'static str>,
    /// Worth a warning in the log (the gateway or the wiki failed, not the client).
    pub log: bool,
}

impl GatewayError {
    /// Status, reason and message of each refusal, in one place.
    pub fn describe(&self) -> Description<'_> {
        let (status, reason, log) = match self {
            Self::BadRequest(r) => (StatusCode::BAD_REQUEST, *r, false),
            Self::HeadersTooLarge => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
                false,
            ),
            Self::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", false),
            Self::MethodNotAllowed(r) => (StatusCode::METHOD_NOT_ALLOWED, *r, false),
            Self::Unauthorized(e) => (StatusCode::UNAUTHORIZED, e.reason(), false),
            Self::Denied { reason, status, .. } => (*status, &**reason, false),
            Self::Policy(_) => (StatusCode::FORBIDDEN, "policy_error", true),
            // Still refused either way; a wiki that cannot be reached says so, as it does
            // to regular users, rather than look like a denial.
            Self::ContentUnresolved { cause, .. } => match &**cause {
                LookupError::Fetch(FetchError::Timeout { .. }) => {
                    (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout", true)
                }
                LookupError::Fetch(FetchError::Unreachable { .. }) => {
                    (StatusCode::BAD_GATEWAY, "upstream_unavailable", true)
                }
                _ => (StatusCode::FORBIDDEN, "space_unresolved", true),
            },
            Self::UpstreamUnavailable(_) => (StatusCode::BAD_GATEWAY, "upstream_unavailable", true),
            Self::UpstreamTimeout => (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout", false),
            Self::Overloaded { .. } => (StatusCode::SERVICE_UNAVAILABLE, "overloaded", false),
            Self::Internal(r) => (StatusCode::INTERNAL_SERVER_ERROR, *r, true),
            Self::Unfilterable(r) => (StatusCode::BAD_GATEWAY, *r, false),
            Self::NotReady(r) => (StatusCode::SERVICE_UNAVAILABLE, *r, false),
            Self::SignIn { error, .. } => (error.status(), error.reason(), error.offers_sign_in()),
        };
        // Only a fixed sentence: the error's own text names the provider's URLs and
        // low-level causes, which are for the log, not for whoever is at the browser.
        let sign_in_failure = match self {
            Self::SignIn { error, .. } if error.offers_sign_in() => Some(error.public_message()),
            _ => None,
        };
        Description {
            status,
            reason,
            sign_in_failure,
            log,
        }
    }

    pub fn status(&self) -> StatusCode {
        self.describe().status
    }

    pub fn reason(&self) -> &str {
        self.describe().reason
    }

    /// The error of a request to the wiki that failed. A client body that broke off or
    /// passed its limit surfaces here as the send's cause: that is the client's 400 or 413,
    /// not the wiki's 502.
    pub fn upstream_failed(error: BoxError) -> GatewayError {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&*error);
        while let Some(e) = cause {
            if e.is::<http_body_util::LengthLimitError>() {
                return GatewayError::PayloadTooLarge;
            }
            if e.is::<ClientBodyError>() {
                return GatewayError::BadRequest("invalid_request_body");
            }
            if e.is::<super::multipart::UnjudgedField>() {
                return GatewayError::BadRequest("unjudged_multipart_field");
            }
            cause = e.source();
        }
        GatewayError::UpstreamUnavailable(error)
    }
}
