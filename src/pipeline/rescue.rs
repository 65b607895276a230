//! The one rescue point: every error of the request path becomes its response here, and
//! nowhere else — the shape of every refusal (status, JSON or HTML body,
//! `WWW-Authenticate`, `Retry-After`) and the one decision to send a browser to sign in
//! instead of answering 401.

use http::{HeaderValue, Method, Response, StatusCode, header};

use super::error::GatewayError;
use crate::http::body::{ProxyBody, full_body};
use crate::http::client::sentence;
use crate::http::cookies;
use crate::http::gateway_paths;
use crate::http::page;
use crate::identity::IdentityError;

/// Whether a browser should be sent to sign in rather than answered `error`: a navigation
/// (prefers HTML, `GET`/`HEAD`) that carried no usable credentials — none at all, or an
/// expired or invalid session — on a route that needs them, or that the policy refused
/// for want of a signed-in user. A rejected bearer token stays a 401: that client is not
/// a person at a browser.
pub fn wants_sign_in(error: &GatewayError, method: &Method, wants_html: bool) -> bool {
    let missing_credentials = match error {
        GatewayError::Unauthorized(e) => matches!(
            e,
            IdentityError::Missing | IdentityError::SessionExpired | IdentityError::SessionInvalid
        ),
        GatewayError::Denied {
            status, anonymous, ..
        } => *status == StatusCode::UNAUTHORIZED && *anonymous,
        _ => false,
    };
    missing_credentials && wants_html && (method == Method::GET || method == Method::HEAD)
}

/// The response for `error`: JSON for API clients, a small page for browsers
/// (`wants_html`). Never cached.
pub fn refusal(error: &GatewayError, wants_html: bool) -> Response<ProxyBody> {
    let described = error.describe();
    let status = described.status;
    let word = error_word(status);
    let mut builder = Response::builder()
        .status(status)
        .header(header::CACHE_CONTROL, "no-store");
    if let GatewayError::Unauthorized(e) = error {
        builder = builder.header(header::WWW_AUTHENTICATE, e.www_authenticate());
    }
    if let GatewayError::Overloaded { retry_after_secs } = error {
        builder = builder.header(header::RETRY_AFTER, *retry_after_secs);
    }
    let (content_type, body) = if wants_html {
        let page = html_page(status, word, described.reason, described.sign_in_failure);
        ("text/html; charset=utf-8", page)
    } else {
        let body = serde_json::json!({"error": word, "reason": described.reason});
        ("application/json", body.to_string())
    };
    let mut response = builder
        .header(header::CONTENT_TYPE, HeaderValue::from_static(content_type))
        .body(full_body(body))
        .unwrap_or_else(|_| {
            let mut r = Response::new(full_body(String::new()));
            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            r
        });
    if let GatewayError::SignIn {
        clear_cookie: Some(cookie),
        ..
    } = error
    {
        cookies::append_all(response.headers_mut(), [cookie.clone()]);
    }
    response
}

/// Logs what deserves it: failures of the gateway or of the services it depends on, and
/// failed sign-ins (whose page only says what failed in general). The error and its causes
/// read as one sentence (`the wiki is unavailable: client error (Connect): tcp connect
/// error: Connection refused`), not as a debug dump.
pub fn log(error: &GatewayError) {
    if !error.describe().log {
        return;
    }
    match error {
        GatewayError::SignIn { error, .. } => tracing::warn!(
            error = %sentence(error),
            reason = error.reason(),
            "sign-in failed"
        ),
        _ => tracing::warn!(error = %sentence(error), "request refused"),
    }
}

/// The `error` field of the error body.
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

/// A guest's refused page view, answered with their home: the spaces granted to them,
/// each linked to its home page (the profile's `space_home`, under the wiki's context path),
/// with the permissions held there and when they end — so a guest who lands on `/`, the
/// dashboard or a page not shared with them finds the way to what is. Still a 403.
pub fn guest_home(
    error: &GatewayError,
    user: &str,
    reach: &[crate::directory::Reach],
    space_home: Option<&str>,
    context_path: &str,
) -> Response<ProxyBody> {
    use time::format_description::well_known::Rfc3339;
    let reason = page::escape(error.describe().reason);
    let mut items = String::new();
    for space in reach {
        let label = match &space.name {
            Some(name) => format!("{} ({})", page::escape(name), page::escape(&space.space)),
            None => page::escape(&space.space).into_owned(),
        };
        let title = match space_home {
            Some(home) => format!(
                "<a href=\"{}\">{label}</a>",
                page::escape(&format!(
                    "{context_path}{}",
                    home.replace("{space}", &space.space)
                ))
            ),
            None => label,
        };
        let permissions: Vec<&str> = space.permissions.iter().map(|p| p.as_str()).collect();
        let until = match space.expires.and_then(|t| t.format(&Rfc3339).ok()) {
            Some(t) => format!("until {}", page::escape(&t)),
            None => "no end date".to_string(),
        };
        items.push_str(&format!(
            "<li>{title} — {} — {until}</li>",
            permissions.join(", ")
        ));
    }
    let list = if items.is_empty() {
        "<p>No space is shared with you at the moment. Ask the person who invited you.</p>"
            .to_string()
    } else {
        format!("<p>The spaces shared with you:</p><ul>{items}</ul>")
    };
    let body = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Not shared with you</title></head>\
         <body style=\"font-family:sans-serif;margin:3em;max-width:48em\">\
         <div class=\"guestgate-guest-banner\" role=\"note\" style=\"background:#fffae6;border-left:4px solid #ff991f;padding:.6em 1em\">\
         You are signed in as <strong>{user}</strong>, a guest. This page is not shared with you \
         (<code>{reason}</code>).</div>{list}</body></html>\n",
        user = page::escape(user),
    );
    Response::builder()
        .status(StatusCode::FORBIDDEN)
        .header(header::CACHE_CONTROL, "no-store")
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .body(full_body(body))
        .unwrap_or_else(|_| refusal(error, true))
}

fn html_page(status: StatusCode, word: &str, reason: &str, sign_in: Option<&str>) -> String {
    // `reason` comes from the policy; escape it like any untrusted text.
    let reason = page::escape(reason);
    let title = status.canonical_reason().unwrap_or(word);
    let extra = match sign_in {
        Some(what) => format!(
            "<p>Sign-in failed: {}.</p><p><a href=\"{}\">Sign in again</a></p>",
            page::escape(what),
            gateway_paths::LOGIN
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_logged_error_reads_as_one_sentence() {
        let refused =
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let error = GatewayError::UpstreamUnavailable(Box::new(refused));
        let text = sentence(&error);
        assert!(text.ends_with(": connection refused"), "{text}");
        assert!(!text.contains("Custom {"), "{text}");
    }

    #[test]
    fn only_browser_navigations_without_credentials_are_sent_to_sign_in() {
        use IdentityError::*;
        let unauthorized = |e| GatewayError::Unauthorized(e);
        assert!(wants_sign_in(&unauthorized(Missing), &Method::GET, true));
        assert!(wants_sign_in(
            &unauthorized(SessionExpired),
            &Method::HEAD,
            true
        ));
        assert!(wants_sign_in(
            &unauthorized(SessionInvalid),
            &Method::GET,
            true
        ));
        assert!(
            !wants_sign_in(&unauthorized(Missing), &Method::GET, false),
            "API client"
        );
        assert!(
            !wants_sign_in(&unauthorized(Missing), &Method::POST, true),
            "a body would be lost"
        );
        assert!(
            !wants_sign_in(&unauthorized(InvalidSignature), &Method::GET, true),
            "bad bearer token"
        );
        let denied = |anonymous| GatewayError::Denied {
            reason: "sign_in_required".into(),
            status: StatusCode::UNAUTHORIZED,
            anonymous,
        };
        assert!(wants_sign_in(&denied(true), &Method::GET, true));
        assert!(
            !wants_sign_in(&denied(false), &Method::GET, true),
            "a signed-in user the policy refuses is not sent to sign in again"
        );
    }
}
