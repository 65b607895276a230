//! Stage 1, accept: checks the request's shape and limits and computes, once, the canonical
//! path and the query parameters every later stage uses.

use http::{HeaderMap, Method, Request, header};

use super::canonical::canonicalize;
use crate::config::ServerConfig;
use crate::error::GatewayError;
use crate::routes::RouteProfile;

/// What the later stages know about the request target.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub method: Method,
    /// The canonical path: what routes match, what the policy sees, what goes upstream.
    pub path: String,
    /// The raw query string, forwarded unchanged.
    pub query: Option<String>,
    /// Decoded query parameters, in order.
    pub params: Vec<(String, String)>,
    /// The client prefers HTML (a browser): refusals come as a small page.
    pub wants_html: bool,
}

/// True when the `Accept` header ranks `text/html` above JSON, as browsers send it.
pub fn prefers_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| {
            let html = accept.find("text/html");
            let json = accept.find("application/json");
            match (html, json) {
                (Some(h), Some(j)) => h < j,
                (Some(_), None) => true,
                _ => false,
            }
        })
}

pub fn accept<B>(
    req: &Request<B>,
    limits: &ServerConfig,
    profile: &RouteProfile,
) -> Result<Accepted, GatewayError> {
    if req.method() == Method::CONNECT {
        return Err(GatewayError::MethodNotAllowed("connect_not_supported"));
    }
    let headers = req.headers();
    if headers.len() > limits.max_headers {
        return Err(GatewayError::HeadersTooLarge);
    }
    let header_bytes: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if header_bytes > limits.max_header_bytes {
        return Err(GatewayError::HeadersTooLarge);
    }
    let path = canonicalize(req.uri().path()).map_err(|e| GatewayError::BadRequest(e.reason()))?;
    let query = req.uri().query().map(str::to_string);
    let params = parse_query(query.as_deref(), profile)?;
    Ok(Accepted {
        method: req.method().clone(),
        path,
        query,
        params,
        wants_html: prefers_html(headers),
    })
}

fn parse_query(
    query: Option<&str>,
    profile: &RouteProfile,
) -> Result<Vec<(String, String)>, GatewayError> {
    let Some(query) = query else {
        return Ok(Vec::new());
    };
    let mut params: Vec<(String, String)> = Vec::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        // The decoder replaces invalid UTF-8 with U+FFFD; the wiki might decode differently.
        if k.contains('\u{FFFD}') || v.contains('\u{FFFD}') {
            return Err(GatewayError::BadRequest("invalid_query_encoding"));
        }
        if v.chars().any(|c| c.is_control()) && profile.captured_query_params.contains(&*k) {
            return Err(GatewayError::BadRequest("control_character"));
        }
        if profile.captured_query_params.contains(&*k) && params.iter().any(|(p, _)| *p == *k) {
            return Err(GatewayError::BadRequest("duplicate_query_parameter"));
        }
        params.push((k.into_owned(), v.into_owned()));
    }
    Ok(params)
}
