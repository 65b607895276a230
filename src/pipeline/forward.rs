//! Stage 5, forward: sends the judged request — canonical path, identity headers set by the
//! gateway alone — to the wiki over a keep-alive connection of the worker's pool, and streams
//! the answer back.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt as _;
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper_util::rt::TokioIo;

use super::accept::Accepted;
use super::multipart::GuardedMultipart;
use crate::config::{ServerConfig, UpstreamConfig};
use crate::http::client::{ClientError, current_worker};
use crate::http::pool::{OriginPool, PooledBody};
use crate::pipeline::error::GatewayError;

/// Request bodies towards the wiki: the client's, streamed (cut off at its route's limit),
/// or none (lookups).
/// A request body towards the wiki: the client's, streamed through its limit, or one the
/// gateway holds whole (a guest's form or JSON body it has judged; a lookup's empty one).
pub type UpstreamBody = Either<
    crate::http::body::RequestBody,
    Either<Full<Bytes>, GuardedMultipart<crate::http::body::RequestBody>>,
>;

/// The body of the wiki's answer.
pub type WikiBody = PooledBody<UpstreamBody>;

/// An upstream body the gateway holds whole.
pub fn whole_body(bytes: Bytes) -> UpstreamBody {
    Either::Right(Either::Left(Full::new(bytes)))
}

static X_GUESTGATE_USER: HeaderName = HeaderName::from_static("x-guestgate-user");
static X_GUESTGATE_GUEST: HeaderName = HeaderName::from_static("x-guestgate-guest");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The wiki, as the gateway reaches it.
pub struct Upstream {
    /// One pool per worker thread, then one for everything else: a pooled connection's task
    /// runs on the runtime that opened it, and a request should find its upstream
    /// connection on its own thread (see `crate::workers`).
    pools: Box<[Arc<OriginPool<UpstreamBody>>]>,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    /// `Host` towards the wiki, as a client writes it from the URI (the port only where it
    /// is not the scheme's default), made once instead of formatted for every request.
    host: HeaderValue,
    base_path: String,
    user_header: Option<HeaderName>,
    request_timeout: Duration,
    pub service_authorization: Option<HeaderValue>,
    trusted_proxies: Vec<ipnet::IpNet>,
    pass_authorization: bool,
}

/// A problem building the upstream client.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream.ca_file")]
    Client(#[source] ClientError),
    #[error("upstream.url: its host and port do not make a `Host` header")]
    Origin,
    #[error("upstream.service_authorization_env: environment variable ${0} is not set")]
    ServiceAuthorizationUnset(String),
    #[error("upstream.service_authorization_env: ${0} is not a valid header value")]
    ServiceAuthorizationInvalid(String),
}

impl Upstream {
    pub fn new(config: &UpstreamConfig, server: &ServerConfig) -> Result<Upstream, UpstreamError> {
        let workers = server.workers;
        // Clones share one pool; each worker needs a pool of its own. Together they keep
        // about as many idle connections to the wiki as one shared pool of 256 would.
        let max_idle = (256 / (workers + 1)).max(8);
        let connector =
            crate::http::client::connector(config.ca_file.as_deref(), config.connect_timeout)
                .map_err(UpstreamError::Client)?;
        let origin = Uri::builder()
            .scheme(config.scheme.clone())
            .authority(config.authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|_| UpstreamError::Origin)?;
        let pools = (0..=workers)
            .map(|_| OriginPool::new(connector.clone(), origin.clone(), max_idle))
            .collect::<Vec<_>>();
        // hyper_util's client wrote `Host` from the URI; requests now go in origin form.
        let host = host_header(&config.scheme, &config.authority).ok_or(UpstreamError::Origin)?;
        let service_authorization = match &config.service_authorization_env {
            Some(var) => {
                let value = std::env::var(var)
                    .map_err(|_| UpstreamError::ServiceAuthorizationUnset(var.clone()))?;
                let mut value = HeaderValue::from_str(&value)
                    .map_err(|_| UpstreamError::ServiceAuthorizationInvalid(var.clone()))?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        Ok(Upstream {
            pools: pools.into_boxed_slice(),
            host,
            scheme: config.scheme.clone(),
            authority: config.authority.clone(),
            base_path: config.base_path.clone(),
            user_header: config.user_header.clone(),
            request_timeout: server.request_timeout,
            service_authorization,
            trusted_proxies: server.trusted_proxies.clone(),
            pass_authorization: config.pass_authorization,
        })
    }

    /// The absolute upstream URL of a canonical path and query, for the gateway's own
    /// lookups (whose errors name it; the pool sends it in origin form). Parsed by the
    /// request that carries it, which refuses one that is not a URI.
    pub fn url_for(&self, path_and_query: &str) -> String {
        format!(
            "{}://{}{}",
            self.scheme,
            self.authority,
            path_text(&self.base_path, path_and_query, None)
        )
    }
}

/// A forwarded request's URI in origin form, as it goes on the wire (the pool would
/// otherwise rebuild an absolute one on every request). `None` when the base path, path
/// and query do not make one: the request is refused rather than sent somewhere else.
fn origin_form(base_path: &str, path: &str, query: Option<&str>) -> Option<Uri> {
    http::uri::PathAndQuery::from_maybe_shared(path_text(base_path, path, query))
        .ok()
        .map(Uri::from)
}

/// The base path, a canonical path and, when there is one, its query: written once, into
/// the buffer the URI keeps.
fn path_text(base_path: &str, path: &str, query: Option<&str>) -> String {
    let query_len = query.map_or(0, |q| q.len() + 1);
    let mut s = String::with_capacity(base_path.len() + path.len() + query_len);
    s.push_str(base_path);
    s.push_str(path);
    if let Some(query) = query {
        s.push('?');
        s.push_str(query);
    }
    s
}

impl Upstream {
    /// The pool of the worker thread this runs on (the shared last one off the workers).
    fn pool(&self) -> &Arc<OriginPool<UpstreamBody>> {
        let last = self.pools.len() - 1;
        &self.pools[current_worker().map_or(last, |i| i.min(last))]
    }

    /// Sends a request to the wiki and answers the response head, without a deadline (the
    /// caller's): the gateway's own lookups. The URI may be absolute; it is sent in origin
    /// form with the gateway's `Host`.
    pub fn request(
        &self,
        mut req: Request<UpstreamBody>,
    ) -> impl Future<Output = Result<Response<WikiBody>, crate::http::pool::PoolError>> + Send + use<>
    {
        req.headers_mut().insert(header::HOST, self.host.clone());
        self.pool().send(req)
    }

    /// How long the wiki has to answer (`server.request_timeout`).
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Sends a request, bounded by the request timeout until the answer's headers arrive.
    ///
    /// A combinator, not an `async fn`, which would keep the request beside the client's
    /// future: this future is part of every request's.
    pub fn send(
        &self,
        req: Request<UpstreamBody>,
    ) -> impl Future<Output = Result<Response<WikiBody>, GatewayError>> + Send + use<> {
        tokio::time::timeout(self.request_timeout, self.pool().send(req)).map(|answer| match answer
        {
            Err(_) => {
                crate::telemetry::count(&crate::telemetry::UPSTREAM_ERRORS, 1);
                Err(GatewayError::UpstreamTimeout)
            }
            Ok(Err(e)) => {
                crate::telemetry::count(&crate::telemetry::UPSTREAM_ERRORS, 0);
                Err(GatewayError::upstream_failed(Box::new(e)))
            }
            Ok(Ok(resp)) => Ok(resp),
        })
    }
}

/// What the gateway says about the caller, towards the wiki.
pub struct ForwardIdentity<'a> {
    pub user: Option<&'a str>,
    pub guest: bool,
    /// The response will be rewritten: ask the wiki for an uncompressed body.
    pub identity_encoding: bool,
}

/// Facts about the client connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    pub tls: bool,
}

/// `Host` for the wiki's authority: its host, and its port unless it is the scheme's default
/// (as hyper_util's `set_host` writes it, which the gateway's requests got before they were
/// sent in origin form). `None` if it were not valid header text (it always is, coming from
/// a parsed URI).
fn host_header(
    scheme: &http::uri::Scheme,
    authority: &http::uri::Authority,
) -> Option<HeaderValue> {
    let default_port = if *scheme == http::uri::Scheme::HTTPS {
        443
    } else {
        80
    };
    let host = match authority.port() {
        Some(port) if port.as_u16() != default_port => {
            format!("{}:{}", authority.host(), port.as_str())
        }
        _ => authority.host().to_string(),
    };
    HeaderValue::from_str(&host).ok()
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) and the proxy-only ones, never forwarded.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Headers a client could use to make the wiki act on something other than what the
/// gateway judged, or to speak for the gateway: the identity headers (in any spelling PHP
/// or CGI folds to the same name: `X_Guestgate_User` is `X-Guestgate-User` there), the
/// configured user header, URL and method overrides, and the forwarding headers, which
/// the gateway sets itself. `Authorization` too, unless `upstream.pass_authorization`:
/// Confluence 7.9+ reads `Bearer` as a personal access token and `Basic` as a sign-in of
/// its own, either of which could be another user than the one the gateway judged.
fn drop_client_controlled(headers: &mut HeaderMap, upstream: &Upstream) {
    let user_header = upstream.user_header.as_ref().map(HeaderName::as_str);
    let dropped: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            let name = name.as_str();
            (name == "authorization" && !upstream.pass_authorization)
                || starts_dashed(name, "x-guestgate-")
                || user_header.is_some_and(|h| eq_dashed(name, h))
                || starts_dashed(name, "x-forwarded-")
                || CLIENT_CONTROLLED.iter().any(|c| eq_dashed(name, c))
        })
        .cloned()
        .collect();
    for name in dropped {
        headers.remove(&name);
    }
}

/// Request headers no client gets to set for the wiki (see [`drop_client_controlled`]).
const CLIENT_CONTROLLED: [&str; 8] = [
    "forwarded",
    "x-real-ip",
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-host",
];

/// `a == b` where `_` in `a` counts as `-` (header names are lower case already).
fn eq_dashed(a: &str, b: &str) -> bool {
    a.len() == b.len() && starts_dashed(a, b)
}

/// `a` starts with `prefix`, where `_` in `a` counts as `-`.
fn starts_dashed(a: &str, prefix: &str) -> bool {
    a.len() >= prefix.len()
        && a.bytes()
            .zip(prefix.bytes())
            .all(|(x, y)| x == y || (x == b'_' && y == b'-'))
}

/// An address as `Display` writes it; an IPv4 one without the formatter, which took a
/// tenth of the forward stage's own work.
fn address_text(ip: std::net::IpAddr) -> String {
    let std::net::IpAddr::V4(v4) = ip else {
        return ip.to_string();
    };
    let mut text = String::with_capacity(15);
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text.push('.');
        }
        if octet >= 100 {
            text.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            text.push(char::from(b'0' + octet / 10 % 10));
        }
        text.push(char::from(b'0' + octet % 10));
    }
    text
}

/// The client's `X-Forwarded-For` as one list, when it is text.
fn conn_prior_xff(values: &[HeaderValue]) -> Option<String> {
    let parts: Vec<&str> = values.iter().filter_map(|v| v.to_str().ok()).collect();
    (!parts.is_empty() && parts.len() == values.len()).then(|| parts.join(", "))
}

/// HTTP/2 may split `Cookie` into several fields; towards the wiki (HTTP/1.1) they are one
/// field again, joined with `; ` (RFC 9113 §8.2.3), so that the wiki reads every cookie.
fn join_cookie_crumbs(headers: &mut HeaderMap) {
    if headers.get_all(header::COOKIE).iter().nth(1).is_none() {
        return;
    }
    let joined: Vec<&[u8]> = headers
        .get_all(header::COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    let joined = joined.join(&b"; "[..]);
    match HeaderValue::from_bytes(&joined) {
        Ok(v) => {
            headers.insert(header::COOKIE, v);
        }
        Err(_) => {
            headers.remove(header::COOKIE);
        }
    }
}

/// Only websocket upgrades are tunnelled. Any other (`h2c` above all) is dropped with the
/// hop-by-hop headers: a tunnel to a wiki that speaks h2c would carry requests the gateway
/// never sees (h2c smuggling).
fn is_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes hop-by-hop headers, including any the `Connection` header names. An upgrade keeps
/// `Upgrade` and `Connection: upgrade`, which it needs end to end.
fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Names `Connection` lists beyond the standard ones below (and `Upgrade`, decided
    // there): rare, so only they are parsed into names of their own. `keep-alive`, which
    // nearly every HTTP/1.1 answer lists, is one of the standard ones.
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| {
            !t.eq_ignore_ascii_case("upgrade")
                && !HOP_BY_HOP
                    .iter()
                    .any(|h| h.as_str().eq_ignore_ascii_case(t))
        })
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in &listed {
        headers.remove(name);
    }
    // Most messages carry one of them at most: a pass over the names present (standard
    // names compare without hashing) for each, instead of a hashed removal of each of the
    // list, and no list of what was found.
    while let Some(name) = headers
        .keys()
        .find(|name| HOP_BY_HOP.contains(name) || (!keep_upgrade && *name == header::UPGRADE))
        .cloned()
    {
        headers.remove(&name);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Prepares the request for the wiki, and returns the future that sends it and answers the
/// wiki's response head. Preparing is synchronous: an `async fn` would keep its arguments
/// and the request it builds from them in a future that every request copies.
pub fn forward(
    upstream: &Upstream,
    mut req: Request<UpstreamBody>,
    accepted: &Accepted,
    identity: ForwardIdentity<'_>,
    query: Option<&str>,
    conn: ConnInfo,
) -> Result<
    impl Future<Output = Result<Response<WikiBody>, GatewayError>> + Send + use<>,
    GatewayError,
> {
    let upgrade = is_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let original_host = req.headers().get(header::HOST).cloned().or_else(|| {
        req.uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    let (mut parts, body) = req.into_parts();
    // Taken before the client's forwarding headers are dropped.
    let parts_xff: Vec<HeaderValue> = parts
        .headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .cloned()
        .collect();

    let headers = &mut parts.headers;
    strip_hop_by_hop(headers, upgrade);
    drop_client_controlled(headers, upstream);
    // The browser session and sign-in state are the gateway's; the wiki never sees them.
    crate::http::cookies::strip_gateway_cookies(headers);
    join_cookie_crumbs(headers);
    headers.insert(header::HOST, upstream.host.clone());
    // The client's own X-Forwarded-For only counts when it comes through a proxy this
    // deployment trusts; from anyone else it is whatever the client wanted the wiki to log.
    let client_ip = conn.remote.ip();
    let prior = upstream
        .trusted_proxies
        .iter()
        .any(|net| net.contains(&client_ip))
        .then(|| conn_prior_xff(&parts_xff))
        .flatten();
    let xff = match prior {
        Some(prior) => format!("{prior}, {client_ip}"),
        None => address_text(client_ip),
    };
    if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(xff)) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(if conn.tls { "https" } else { "http" }),
    );
    match original_host {
        Some(h) => headers.insert(X_FORWARDED_HOST.clone(), h),
        None => headers.remove(&X_FORWARDED_HOST),
    };
    if let Some(user) = identity.user {
        let value = HeaderValue::from_str(user)
            .map_err(|_| GatewayError::BadRequest("user_name_not_a_header_value"))?;
        if let Some(h) = &upstream.user_header {
            headers.insert(h.clone(), value.clone());
        }
        headers.insert(X_GUESTGATE_USER.clone(), value);
    }
    headers.insert(
        X_GUESTGATE_GUEST.clone(),
        HeaderValue::from_static(if identity.guest { "true" } else { "false" }),
    );
    if identity.identity_encoding {
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
    }

    // A guest's search narrowed to their spaces replaces the query (`pipeline::scope`).
    parts.uri = origin_form(
        &upstream.base_path,
        &accepted.path,
        query.or(accepted.query.as_deref()),
    )
    .ok_or(GatewayError::BadRequest("target_not_a_uri"))?;
    // The client may speak HTTP/2; the wiki is spoken to in HTTP/1.1.
    parts.version = Version::HTTP_11;
    let upstream_req = Request::from_parts(parts, body);

    Ok(upstream.send(upstream_req).map(move |resp| {
        let mut resp = resp?;
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client_upgrade) = client_upgrade
        {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                let (Ok(client), Ok(server)) = (client_upgrade.await, upstream_upgrade.await)
                else {
                    tracing::debug!("upgrade did not complete");
                    return;
                };
                let mut client = TokioIo::new(client);
                let mut server = TokioIo::new(server);
                if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut server).await {
                    tracing::debug!(error = %e, "upgraded connection ended");
                }
            });
            strip_hop_by_hop(resp.headers_mut(), true);
            return Ok(resp);
        }
        strip_hop_by_hop(resp.headers_mut(), false);
        Ok(resp)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http2_cookie_crumbs_become_one_field() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1"));
        h.append(header::COOKIE, HeaderValue::from_static("b=2; c=3"));
        join_cookie_crumbs(&mut h);
        let all: Vec<_> = h.get_all(header::COOKIE).iter().collect();
        assert_eq!(all, ["a=1; b=2; c=3"]);
        let mut one = HeaderMap::new();
        one.append(header::COOKIE, HeaderValue::from_static("a=1"));
        join_cookie_crumbs(&mut one);
        assert_eq!(
            one.get(header::COOKIE).map(HeaderValue::as_bytes),
            Some(&b"a=1"[..])
        );
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_lists_are_removed() {
        let mut h = HeaderMap::new();
        h.append(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Trace"),
        );
        h.append(header::CONNECTION, HeaderValue::from_static(" Close ,te"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-trace", HeaderValue::from_static("1"));
        h.insert("close", HeaderValue::from_static("odd"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-type", "x-kept"]);

        let mut up = HeaderMap::new();
        up.insert(
            header::CONNECTION,
            HeaderValue::from_static("Upgrade, X-Trace"),
        );
        up.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        up.insert("x-trace", HeaderValue::from_static("1"));
        up.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        strip_hop_by_hop(&mut up, true);
        let mut left: Vec<(&str, &[u8])> =
            up.iter().map(|(k, v)| (k.as_str(), v.as_bytes())).collect();
        left.sort_unstable();
        assert_eq!(
            left,
            [
                ("connection", &b"upgrade"[..]),
                ("upgrade", &b"websocket"[..])
            ]
        );
    }

    #[test]
    fn host_is_written_as_the_client_would_write_it() {
        let host = |scheme: &str, authority: &str| {
            let scheme = scheme.parse().expect("scheme");
            let authority = authority.parse().expect("authority");
            host_header(&scheme, &authority).map(|v| v.to_str().expect("text").to_string())
        };
        assert_eq!(host("http", "wiki:80").as_deref(), Some("wiki"));
        assert_eq!(host("http", "wiki:8090").as_deref(), Some("wiki:8090"));
        assert_eq!(host("https", "wiki:443").as_deref(), Some("wiki"));
        assert_eq!(host("https", "wiki:80").as_deref(), Some("wiki:80"));
        assert_eq!(host("http", "[::1]:8090").as_deref(), Some("[::1]:8090"));
        assert_eq!(host("http", "wiki").as_deref(), Some("wiki"));
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for octet in 0..=255u8 {
            for ip in [
                std::net::Ipv4Addr::new(octet, 0, 255, octet),
                std::net::Ipv4Addr::new(10, octet, 9, 100),
            ] {
                let ip = std::net::IpAddr::V4(ip);
                assert_eq!(address_text(ip), ip.to_string());
            }
        }
        let v6: std::net::IpAddr = "2001:db8::ffff:1.2.3.4".parse().expect("v6");
        assert_eq!(address_text(v6), v6.to_string());
    }

    #[test]
    fn the_wiki_gets_base_path_path_and_query_or_nothing() {
        let uri = origin_form("/wiki", "/display/ENG/Home", Some("a=1&b=%20"));
        assert_eq!(
            uri.as_ref().map(Uri::to_string).as_deref(),
            Some("/wiki/display/ENG/Home?a=1&b=%20")
        );
        assert_eq!(
            origin_form("", "/x", None)
                .map(|u| u.to_string())
                .as_deref(),
            Some("/x")
        );
        // Not a URI: refused, never replaced by another target.
        assert!(origin_form("", "/a b", None).is_none());
        assert!(origin_form("", "/x", Some("q=\u{7f}")).is_none());
    }

    #[test]
    fn names_compare_with_underscores_as_dashes() {
        assert!(eq_dashed("x_guestgate_user", "x-guestgate-user"));
        assert!(starts_dashed("x_forwarded_for", "x-forwarded-"));
        assert!(!eq_dashed("x-guestgate-users", "x-guestgate-user"));
        assert!(!starts_dashed("x-forward", "x-forwarded-"));
    }
}
