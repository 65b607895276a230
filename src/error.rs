//! The one error type of the request path and its one mapping to an HTTP response.
//!
//! Every stage returns `Result<_, GatewayError>`; `pipeline::handle` turns an error into a
//! response here and nowhere else, so the shape of every refusal (status, JSON or HTML body,
//! `WWW-Authenticate`) is decided in one place.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};

use crate::pipeline::identify::IdentityError;
use crate::pipeline::signin::SignInError;
use crate::policy::PolicyError;

/// Body type of every response the gateway sends: either a small body of its own or the
/// upstream's body streamed through.
pub type ProxyBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Everything that can end a request before (or instead of) the upstream's answer.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The request target cannot be made canonical without guessing (contract §3.2).
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
    /// The policy said no.
    #[error("forbidden: {reason}")]
    Denied {
        reason: Arc<str>,
        status: StatusCode,
    },
    /// The policy could not be evaluated; fail closed.
    #[error("policy evaluation failed")]
    Policy(#[source] PolicyError),
    /// The space of a content id could not be resolved for a guest; fail closed.
    #[error("space of content {content} could not be resolved: {cause}")]
    ContentUnresolved { content: String, cause: String },
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
    /// A step of browser sign-in failed (or a `/_guestgate/` path that does not exist).
    #[error("sign-in: {0}")]
    SignIn(#[from] SignInError),
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Denied { status, .. } => *status,
            Self::Policy(_) | Self::ContentUnresolved { .. } => StatusCode::FORBIDDEN,
            Self::UpstreamUnavailable(_) | Self::Unfilterable(_) => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::SignIn(e) => e.status(),
        }
    }

    /// The short snake_case word clients and logs see as `reason`.
    pub fn reason(&self) -> &str {
        match self {
            Self::BadRequest(r)
            | Self::MethodNotAllowed(r)
            | Self::NotReady(r)
            | Self::Unfilterable(r) => r,
            Self::HeadersTooLarge => "headers_too_large",
            Self::PayloadTooLarge => "body_too_large",
            Self::Overloaded { .. } => "overloaded",
            Self::Internal(r) => r,
            Self::Unauthorized(e) => e.reason(),
            Self::Denied { reason, .. } => reason,
            Self::Policy(_) => "policy_error",
            Self::ContentUnresolved { .. } => "space_unresolved",
            Self::UpstreamUnavailable(_) => "upstream_unavailable",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::SignIn(e) => e.reason(),
        }
    }

    /// Builds the response for this error. `wants_html` is true when the client prefers
    /// `text/html` (a browser), which gets a small page instead of JSON.
    pub fn into_response(self, wants_html: bool) -> Response<ProxyBody> {
        let status = self.status();
        let reason = self.reason();
        let word = error_word(status);
        let mut builder = Response::builder()
            .status(status)
            .header(header::CACHE_CONTROL, "no-store");
        if let Self::Unauthorized(e) = &self {
            builder = builder.header(header::WWW_AUTHENTICATE, e.www_authenticate());
        }
        if let Self::Overloaded { retry_after_secs } = &self {
            builder = builder.header(header::RETRY_AFTER, *retry_after_secs);
        }
        // A failed sign-in says so in words and offers the way back in. Only a fixed
        // sentence: the error's own text names the provider's URLs and low-level causes,
        // which are for the log (`pipeline::handle`), not for whoever is at the browser.
        let sign_in_hint = match &self {
            Self::SignIn(e) if e.offers_sign_in() => Some(e.public_message()),
            _ => None,
        };
        let (content_type, body) = if wants_html {
            let page = html_page(status, word, reason, sign_in_hint);
            ("text/html; charset=utf-8", page)
        } else {
            let body = serde_json::json!({"error": word, "reason": reason});
            ("application/json", body.to_string())
        };
        builder
            .header(header::CONTENT_TYPE, HeaderValue::from_static(content_type))
            .body(full_body(body))
            .unwrap_or_else(|_| {
                let mut r = Response::new(full_body(String::new()));
                *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                r
            })
    }
}

impl GatewayError {
    /// The error of a request to the wiki that failed. A client body that broke off or
    /// passed its limit (see `pipeline::limits`) surfaces here as the send's cause: that is
    /// the client's 400 or 413, not the wiki's 502.
    pub fn upstream_failed(error: BoxError) -> GatewayError {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&*error);
        while let Some(e) = cause {
            if e.is::<http_body_util::LengthLimitError>() {
                return GatewayError::PayloadTooLarge;
            }
            if e.is::<crate::pipeline::limits::ClientBodyError>() {
                return GatewayError::BadRequest("invalid_request_body");
            }
            cause = e.source();
        }
        GatewayError::UpstreamUnavailable(error)
    }
}

/// The `error` field of the contract's error body.
fn error_word(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "headers_too_large",
        StatusCode::BAD_GATEWAY => "bad_gateway",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        StatusCode::GATEWAY_TIMEOUT => "gateway_timeout",
        s if s.is_client_error() => "forbidden",
        _ => "internal_error",
    }
}

fn html_page(status: StatusCode, word: &str, reason: &str, sign_in: Option<&str>) -> String {
    // `reason` comes from the policy; escape it like any untrusted text.
    let reason = html_escape(reason);
    let title = status.canonical_reason().unwrap_or(word);
    let extra = match sign_in {
        Some(what) => format!(
            "<p>Sign-in failed: {}.</p><p><a href=\"{}\">Sign in again</a></p>",
            html_escape(what),
            crate::pipeline::signin::LOGIN_PATH
        ),
        None => String::new(),
    };
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{code} {title}</title></head>\
         <body style=\"font-family:sans-serif;margin:3em\"><h1>{code} {title}</h1>\
         <p>guestgate refused this request: <code>{reason}</code>.</p>{extra}</body></html>\n",
        code = status.as_u16(),
    )
}

pub(crate) fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

pub fn full_body(body: impl Into<Bytes>) -> ProxyBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}
