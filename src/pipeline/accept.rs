//! Stage 1, accept: checks the request's shape and limits and computes, once, the canonical
//! path and the query parameters every later stage uses.

use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};

use crate::config::ServerConfig;
use crate::http::body::{ProxyBody, full_body};
use crate::http::canonical::canonicalize;
use crate::pipeline::error::GatewayError;
use crate::routes::RouteProfile;

/// The methods the gateway forwards, as `OPTIONS *` announces them.
pub const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

/// What the later stages know about the request target.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub method: Method,
    /// The canonical path: what the policy sees, what goes upstream.
    pub path: String,
    /// The path the wiki serves this request as, when it forwards it internally (the
    /// profile's `forwards`: Confluence serves `/s/<anything>/_/<path>` as `/<path>`).
    /// Routes match this one; `None`: the path itself.
    pub served_as: Option<String>,
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

/// `OPTIONS *` (RFC 9110 §9.3.7) asks about the server, not about a resource: the gateway
/// answers it itself — 200 with the methods it forwards — and never forwards it. It names
/// no path, so there is nothing to classify or authorize, and the wiki's own answer could
/// only describe the wiki, not what the gateway lets through. `None` for every other request.
pub fn asterisk_options(head: &Parts) -> Option<Response<ProxyBody>> {
    if head.method != Method::OPTIONS || head.uri.path() != "*" {
        return None;
    }
    let mut response = Response::new(full_body(bytes::Bytes::new()));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(header::ALLOW, HeaderValue::from_static(ALLOWED_METHODS));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Some(response)
}

/// Stage 1. `Ok`: the canonical path and the parsed query. `Err`: 405 for `CONNECT` (the
/// gateway is no tunnel), 431 over the header limits, 400 for a path that cannot be made
/// canonical (docs/CONFIGURATION.md, "Request targets") or a repeated captured query parameter. An absolute-form
/// target (`GET http://host/path`) is judged, like any other, by its path alone.
pub fn accept(
    head: &Parts,
    limits: &ServerConfig,
    context_path: &str,
    profile: &RouteProfile,
) -> Result<Accepted, GatewayError> {
    if head.method == Method::CONNECT {
        return Err(GatewayError::MethodNotAllowed("connect_not_supported"));
    }
    let headers = &head.headers;
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
    check_host(head)?;
    // Two credentials in one request: the gateway judges the first, the wiki might read
    // the other. Refused rather than guessed at.
    if headers.get_all(header::AUTHORIZATION).iter().count() > 1 {
        return Err(GatewayError::BadRequest("duplicate_authorization"));
    }
    let path = canonicalize(head.uri.path()).map_err(|e| GatewayError::BadRequest(e.reason()))?;
    let path = inside_context(path, context_path);
    let query = head.uri.query().map(str::to_string);
    if query
        .as_ref()
        .is_some_and(|q| q.len() > profile.max_query_bytes)
    {
        return Err(GatewayError::BadRequest("query_too_long"));
    }
    let params = parse_query(query.as_deref(), profile)?;
    if params.len() > profile.max_parameters {
        return Err(GatewayError::BadRequest("too_many_parameters"));
    }
    let served_as = served_as(&path, profile)?;
    Ok(Accepted {
        method: head.method.clone(),
        served_as,
        path,
        query,
        params,
        wants_html: prefers_html(headers),
    })
}

/// The path inside the wiki's context path (`upstream.url`'s path, such as `/confluence`):
/// the wiki's own links carry it, and the servlet container hands the wiki only what
/// follows it (Tomcat maps `/confluence/display/X` to the context `/confluence` and the
/// path `/display/X`), so that is what is classified. Forwarding puts the context path back
/// (`Upstream::uri_for`). A path outside it (the gateway mounted at the root) is taken as
/// inside it. `/confluencex` is not inside `/confluence`.
pub(crate) fn inside_context(path: String, context_path: &str) -> String {
    if context_path.is_empty() {
        return path;
    }
    match path.strip_prefix(context_path) {
        Some("") => "/".to_string(),
        Some(rest) if rest.starts_with('/') => rest.to_string(),
        _ => path,
    }
}

/// The path the wiki will serve `path` as, if a `forwards` pattern of the profile matches
/// it. The wiki decodes the forwarded part again (Confluence's
/// `ConfluenceResourceDownloadRewriteRule` URL-decodes it until it is stable): a forwarded
/// part that any further decoding would change, or that could carry a query, is refused.
fn served_as(path: &str, profile: &RouteProfile) -> Result<Option<String>, GatewayError> {
    for forward in &profile.forwards {
        // Most paths match none: a plain search allocates nothing, captures do.
        if !forward.is_match(path) {
            continue;
        }
        let Some(inner) = forward.captures(path).and_then(|c| c.name("path")) else {
            continue;
        };
        let inner = inner.as_str();
        if inner.contains(['%', '+', '?', '#', ';', '\\']) || inner.chars().any(char::is_control) {
            return Err(GatewayError::BadRequest("forwarded_path_not_canonical"));
        }
        let target = format!("/{}", inner.trim_start_matches('/'));
        return match canonicalize(&target) {
            Ok(canonical) if canonical == target => Ok(Some(canonical)),
            _ => Err(GatewayError::BadRequest("forwarded_path_not_canonical")),
        };
    }
    Ok(None)
}

/// RFC 9112 §3.2: an HTTP/1.1 request has exactly one `Host`, and a valid one; anything
/// else is answered 400. The gateway does not route on `Host`, but it passes it on as
/// `X-Forwarded-Host`, which the wiki may use to build links. HTTP/1.0 may omit it; HTTP/2
/// carries `:authority` instead (hyper puts it in the URI).
fn check_host(head: &Parts) -> Result<(), GatewayError> {
    let mut hosts = head.headers.get_all(header::HOST).iter();
    let (first, second) = (hosts.next(), hosts.next());
    if second.is_some() {
        return Err(GatewayError::BadRequest("duplicate_host"));
    }
    match first {
        None if head.version == http::Version::HTTP_11 => {
            Err(GatewayError::BadRequest("missing_host"))
        }
        None => Ok(()),
        Some(value) if value.is_empty() => Ok(()),
        Some(value) => {
            let valid = value
                .to_str()
                .ok()
                .and_then(|v| v.parse::<http::uri::Authority>().ok())
                .is_some_and(|a| !a.as_str().contains('@'));
            if valid {
                Ok(())
            } else {
                Err(GatewayError::BadRequest("invalid_host"))
            }
        }
    }
}

/// Most query parameters a request to a PHP wiki may carry (`query_names = "php"`), well
/// below PHP's default `max_input_vars` of 1000.
const PHP_MAX_QUERY_PARAMS: usize = 500;

/// The name under which PHP's `$_GET` files a query parameter (`query_names = "php"`):
/// cut at a NUL byte, leading spaces dropped, `.` and space turned into `_`, and
/// `name[...]` filed under `name`
/// (an array, which a PHP wiki reads instead of — or besides — a plain `name`). Matching
/// and the repeated-parameter check then see what the wiki will see: `ti.tle` is not
/// `title`, `title[]` is.
fn php_param_name(raw: &str) -> String {
    // PHP handles names as C strings: `title%00x` is `title`.
    let raw = raw.split('\0').next().unwrap_or("");
    let trimmed = raw.trim_start_matches(' ');
    let (base, bracketed) = match trimmed.find('[') {
        Some(i) if trimmed[i..].contains(']') => (&trimmed[..i], true),
        _ => (trimmed, false),
    };
    let mut name: String = base
        .chars()
        .map(|c| if c == '.' || c == ' ' { '_' } else { c })
        .collect();
    if !bracketed {
        // An unmatched `[` becomes `_` too.
        name = name.replace('[', "_");
    }
    name
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
        let k = if profile.php_query_names {
            // PHP keeps only the first `max_input_vars` (1000 by default) parameters: one the
            // gateway judged could be dropped before the wiki reads it.
            if params.len() >= PHP_MAX_QUERY_PARAMS {
                return Err(GatewayError::BadRequest("too_many_query_parameters"));
            }
            let name = php_param_name(&k);
            // `curid[]=5` is an array to PHP, which the wiki then ignores (or reads as 0)
            // while the gateway would read 5: refused rather than guessed at.
            if k.contains('[') && profile.captured_query_params.contains(&name) {
                return Err(GatewayError::BadRequest("array_query_parameter"));
            }
            std::borrow::Cow::Owned(name)
        } else {
            k
        };
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

#[cfg(test)]
mod tests {
    use super::php_param_name;

    #[test]
    fn php_reads_parameter_names_its_own_way() {
        for (raw, php) in [
            ("title", "title"),
            ("title[]", "title"),
            ("title[x][y]", "title"),
            ("ti.tle", "ti_tle"),
            ("  ti tle", "ti_tle"),
            ("title[", "title_"),
            ("f[x", "f_x"),
            ("l]", "l]"),
            ("m[a]b", "m"),
            ("title\0x", "title"),
            ("\0title", ""),
        ] {
            assert_eq!(php_param_name(raw), php, "{raw}");
        }
    }
}
