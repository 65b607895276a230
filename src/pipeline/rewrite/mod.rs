//! Stage 6, rewrite: guests marked wherever users appear (`tag_users`), listings cut to the
//! guest's spaces (`filter_spaces`), and a banner on pages of spaces shared with guests.
//!
//! Only routes that name a rewrite, only 2xx bodies, only JSON and HTML. `filter_spaces`
//! protects a guest, so every way it could fail (body too large, not JSON, an encoding it
//! cannot undo, malformed JSON) is a 502; the cosmetic rewrites fail open to the unchanged
//! body instead, which is always a correct answer.

pub mod html;
pub mod json;

use std::collections::HashSet;
use std::io::Read;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};

use crate::config::RewriteConfig;
use crate::http::body::{BoxError, ProxyBody};
use crate::pipeline::error::GatewayError;
use crate::pipeline::forward::WikiBody;
use crate::pipeline::limits::{BufferBudget, BufferCharge};
use crate::routes::Route;
use crate::snapshot::Snapshot;

/// What the rewrite stage will do to one response, decided before forwarding (so the wiki
/// can be asked for an uncompressed body).
pub struct RewritePlan {
    snapshot: Arc<Snapshot>,
    tag_json: bool,
    tag_html: bool,
    /// The spaces a guest's listings keep.
    filter: Option<Arc<HashSet<String>>>,
    banner: Option<String>,
    max_body_bytes: usize,
    budget: Arc<BufferBudget>,
}

impl RewritePlan {
    /// Returns the plan for a response, or `None` when it passes untouched.
    pub fn new(
        snapshot: &Arc<Snapshot>,
        config: &RewriteConfig,
        method: &Method,
        route: &Route,
        filter: Option<Arc<HashSet<String>>>,
        budget: &Arc<BufferBudget>,
    ) -> Option<RewritePlan> {
        if *method == Method::HEAD {
            return None;
        }
        let r = route.rewrites;
        let banner = (r.banner && config.html)
            .then_some(route.space.as_deref())
            .flatten()
            .filter(|space| {
                snapshot
                    .directory
                    .spaces
                    .get(*space)
                    .is_some_and(|g| !g.groups.is_empty() || !g.users.is_empty())
            })
            .map(|_| html::banner_html(&config.banner_text));
        let plan = RewritePlan {
            snapshot: snapshot.clone(),
            tag_json: r.tag_users && config.json,
            tag_html: r.tag_users && config.html && snapshot.routes.user_links.is_some(),
            filter: if r.filter_spaces { filter } else { None },
            banner,
            max_body_bytes: config.max_body_bytes,
            budget: budget.clone(),
        };
        (plan.tag_json || plan.tag_html || plan.filter.is_some() || plan.banner.is_some())
            .then_some(plan)
    }

    /// A user a response names, looked up under the wiki's rule for names, as the
    /// directory is keyed: to Confluence `Gary` and `gary` are one user
    /// ([`UserNames::CaseInsensitive`](crate::routes::extract::UserNames)), and so they are
    /// to the tags.
    fn is_guest(snapshot: &Snapshot, username: &str) -> Option<bool> {
        let directory = &snapshot.directory;
        let user = directory
            .users
            .get(directory.user_names.canonical(username).as_ref())?;
        Some(user.guest)
    }
}

enum Kind {
    Json,
    Html(&'static encoding_rs::Encoding),
    Other,
}

/// The media type and charset of `Content-Type`, as written (compared without case by
/// the callers): read on every response, so not lower-cased into new strings.
fn media_type(headers: &HeaderMap) -> (&str, Option<&str>) {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return ("", None);
    };
    let mut parts = ct.split(';');
    let media = parts.next().unwrap_or("").trim();
    let charset = parts.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("charset")
            .then(|| v.trim().trim_matches('"'))
    });
    (media, charset)
}

fn kind_of(headers: &HeaderMap) -> Kind {
    let (media, charset) = media_type(headers);
    let bytes = media.as_bytes();
    let (application, json_suffix) = (&b"application/"[..], &b"+json"[..]);
    if media.eq_ignore_ascii_case("application/json")
        || (bytes.len() >= application.len() + json_suffix.len()
            && bytes[..application.len()].eq_ignore_ascii_case(application)
            && bytes[bytes.len() - json_suffix.len()..].eq_ignore_ascii_case(json_suffix))
    {
        Kind::Json
    } else if media.eq_ignore_ascii_case("text/html") {
        // `for_label` compares labels without case.
        let enc = charset
            .and_then(|c| encoding_rs::Encoding::for_label(c.as_bytes()))
            .unwrap_or(encoding_rs::UTF_8);
        Kind::Html(enc)
    } else {
        Kind::Other
    }
}

fn passthrough(resp: Response<WikiBody>) -> Response<ProxyBody> {
    resp.map(|b| b.map_err(|e| -> BoxError { Box::new(e) }).boxed_unsync())
}

/// A modified body is a different representation: its strong validator no longer holds.
fn weaken_etag(headers: &mut HeaderMap) {
    if let Some(etag) = headers.get(header::ETAG).and_then(|v| v.to_str().ok())
        && !etag.starts_with("W/")
        && let Ok(weak) =
            HeaderValue::from_maybe_shared(Bytes::from([b"W/", etag.as_bytes()].concat()))
    {
        headers.insert(header::ETAG, weak);
        return;
    }
    if headers
        .get(header::ETAG)
        .is_some_and(|v| v.to_str().is_err())
    {
        headers.remove(header::ETAG);
    }
}

fn content_encoding(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase())
        .filter(|v| !v.is_empty() && v != "identity")
}

/// Runs the plan over the wiki's response.
pub async fn apply(
    resp: Response<WikiBody>,
    plan: RewritePlan,
) -> Result<Response<ProxyBody>, GatewayError> {
    let status = resp.status();
    if !status.is_success() || status == StatusCode::NO_CONTENT {
        return Ok(passthrough(resp));
    }
    let guarded = plan.filter.is_some();
    match kind_of(resp.headers()) {
        Kind::Json if plan.tag_json || guarded => rewrite_json(resp, plan).await,
        Kind::Html(encoding) if !guarded && (plan.tag_html || plan.banner.is_some()) => {
            if content_encoding(resp.headers()).is_some() || encoding.output_encoding() != encoding
            {
                // Asked for identity but got something else (or a non-ASCII-compatible charset):
                // cosmetic, so the page goes through as it is rather than mangled.
                return Ok(passthrough(resp));
            }
            let snapshot = plan.snapshot.clone();
            let is_guest: html::GuestTest =
                Arc::new(move |name: &str| RewritePlan::is_guest(&snapshot, name) == Some(true));
            let html_plan = html::HtmlPlan {
                tag_users: plan
                    .snapshot
                    .routes
                    .user_links
                    .clone()
                    .filter(|_| plan.tag_html)
                    .map(|s| (s, is_guest)),
                user_names: plan.snapshot.routes.user_link_names.clone(),
                banner: plan.banner,
                encoding,
            };
            let (mut parts, body) = resp.into_parts();
            parts.headers.remove(header::CONTENT_LENGTH);
            weaken_etag(&mut parts.headers);
            let body = html::HtmlRewriteBody::new(body, html_plan).boxed_unsync();
            Ok(Response::from_parts(parts, body))
        }
        _ if guarded => Err(GatewayError::Unfilterable("listing_not_json")),
        _ => Ok(passthrough(resp)),
    }
}

/// Why a body was not read whole.
enum TooLarge {
    /// Larger than `rewrite.max_body_bytes`.
    Limit,
    /// The buffer budget cannot hold it now.
    Budget,
}

/// A body read so far: its first frame as hyper gave it, copied into one buffer only if
/// a second arrives. An API answer of a few kilobytes comes in one frame, which is then
/// scanned, and sent on when nothing changes, without a copy.
enum Gathered {
    Nothing,
    OneFrame(Bytes),
    Frames(Vec<u8>),
}

impl Gathered {
    fn len(&self) -> usize {
        match self {
            Gathered::Nothing => 0,
            Gathered::OneFrame(frame) => frame.len(),
            Gathered::Frames(buffer) => buffer.len(),
        }
    }

    /// Appends `data`; a buffer begun here holds at least `capacity` bytes (what
    /// Content-Length announced, already charged).
    fn push(&mut self, data: Bytes, capacity: usize) {
        match self {
            Gathered::Nothing => *self = Gathered::OneFrame(data),
            Gathered::OneFrame(first) => {
                let mut buffer = Vec::with_capacity(capacity.max(first.len() + data.len()));
                buffer.extend_from_slice(first);
                buffer.extend_from_slice(&data);
                *self = Gathered::Frames(buffer);
            }
            Gathered::Frames(buffer) => buffer.extend_from_slice(&data),
        }
    }

    fn into_bytes(self) -> Bytes {
        match self {
            Gathered::Nothing => Bytes::new(),
            Gathered::OneFrame(frame) => frame,
            Gathered::Frames(buffer) => Bytes::from(buffer),
        }
    }
}

/// Reads at most `max` bytes, each counted `factor` times against the buffer budget (the
/// body, and the copies a rewrite makes of it). `Err` when the body is larger or the
/// budget is spent, with the prefix read and the frame that did not fit.
async fn read_limited(
    body: &mut WikiBody,
    max: usize,
    budget: &BufferBudget,
    charge: &mut BufferCharge,
    factor: usize,
    announced: Option<usize>,
) -> Result<Result<Bytes, (TooLarge, Bytes, Bytes)>, GatewayError> {
    // Charged once from Content-Length, and a buffer, if one is needed, sized from it: a
    // Vec grown by doubling would hold up to twice the body (three times while it moves),
    // memory the budget would not see.
    let announced = announced.unwrap_or(0).min(max);
    if !budget.add(charge, factor * announced) {
        return Ok(Err((TooLarge::Budget, Bytes::new(), Bytes::new())));
    }
    let mut covered = announced;
    let mut read = Gathered::Nothing;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| GatewayError::UpstreamUnavailable(Box::new(e)))?;
        if let Ok(data) = frame.into_data() {
            if read.len() + data.len() > max {
                return Ok(Err((TooLarge::Limit, read.into_bytes(), data)));
            }
            let needed = read.len() + data.len();
            if needed > covered {
                if !budget.add(charge, factor * (needed - covered)) {
                    return Ok(Err((TooLarge::Budget, read.into_bytes(), data)));
                }
                covered = needed;
            }
            read.push(data, announced);
        }
    }
    Ok(Ok(read.into_bytes()))
}

/// Undoes a content coding, refusing to produce more than `max` bytes.
fn decode(encoding: &str, raw: &[u8], max: usize) -> Option<Vec<u8>> {
    let limit = max as u64 + 1;
    let mut out = Vec::new();
    let ok = match encoding {
        "gzip" | "x-gzip" => flate2::read::MultiGzDecoder::new(raw)
            .take(limit)
            .read_to_end(&mut out)
            .is_ok(),
        "deflate" => {
            // RFC 9110's deflate is zlib-wrapped; some servers send it raw.
            flate2::read::ZlibDecoder::new(raw)
                .take(limit)
                .read_to_end(&mut out)
                .is_ok()
                || {
                    out.clear();
                    flate2::read::DeflateDecoder::new(raw)
                        .take(limit)
                        .read_to_end(&mut out)
                        .is_ok()
                }
        }
        "br" => brotli_decompressor::Decompressor::new(raw, 4096)
            .take(limit)
            .read_to_end(&mut out)
            .is_ok(),
        _ => false,
    };
    (ok && out.len() <= max).then_some(out)
}

async fn rewrite_json(
    resp: Response<WikiBody>,
    plan: RewritePlan,
) -> Result<Response<ProxyBody>, GatewayError> {
    let guarded = plan.filter.is_some();
    let (mut parts, mut body) = resp.into_parts();
    let encoding = content_encoding(&parts.headers);
    // The body and the rewritten copy; a compressed body also its decoded copy, charged
    // once decoded (its size is not known before).
    let mut charge = plan.budget.charge();
    let read = read_limited(
        &mut body,
        plan.max_body_bytes,
        &plan.budget,
        &mut charge,
        if encoding.is_some() { 1 } else { 2 },
        parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok()),
    )
    .await?;
    let raw = match read {
        Ok(raw) => raw,
        Err((TooLarge::Limit, ..)) if guarded => {
            return Err(GatewayError::Unfilterable("body_too_large_to_filter"));
        }
        Err((TooLarge::Budget, ..)) if guarded => {
            crate::telemetry::count(&crate::telemetry::BUFFER_BUDGET_EXCEEDED, 0);
            tracing::warn!("buffer budget exhausted; a guest's listing is refused (503)");
            return Err(plan.budget.exhausted());
        }
        Err((why, prefix, extra)) => {
            if matches!(why, TooLarge::Budget) {
                crate::telemetry::count(&crate::telemetry::BUFFER_BUDGET_EXCEEDED, 1);
            }
            let body = PrefixedBody {
                prefix: Some(prefix),
                extra: Some(extra),
                rest: body,
                charge: Some(charge),
            };
            return Ok(Response::from_parts(parts, body.boxed_unsync()));
        }
    };
    let unchanged = |parts: http::response::Parts, raw: Bytes, charge: BufferCharge| {
        Ok(Response::from_parts(parts, charged_body(raw, charge)))
    };
    let decoded = match &encoding {
        None => None,
        Some(enc) => match decode(enc, &raw, plan.max_body_bytes) {
            Some(d) if plan.budget.add(&mut charge, 2 * d.len()) => Some(d),
            Some(_) if guarded => {
                crate::telemetry::count(&crate::telemetry::BUFFER_BUDGET_EXCEEDED, 0);
                return Err(plan.budget.exhausted());
            }
            Some(_) => {
                crate::telemetry::count(&crate::telemetry::BUFFER_BUDGET_EXCEEDED, 1);
                return unchanged(parts, raw, charge);
            }
            None if guarded => return Err(GatewayError::Unfilterable("undecodable_body")),
            None => return unchanged(parts, raw, charge),
        },
    };
    let (_, charset) = media_type(&parts.headers);
    if charset.is_some_and(|c| !c.eq_ignore_ascii_case("utf-8") && !c.eq_ignore_ascii_case("utf8"))
    {
        if guarded {
            return Err(GatewayError::Unfilterable("listing_not_utf8"));
        }
        return unchanged(parts, raw, charge);
    }
    let snapshot = plan.snapshot.clone();
    let lookup = move |name: &str| RewritePlan::is_guest(&snapshot, name);
    let lookup_ref: &dyn Fn(&str) -> Option<bool> = &lookup;
    let json_plan = json::JsonPlan {
        tag_users: plan.tag_json.then_some(lookup_ref),
        filter: plan
            .filter
            .as_deref()
            .map(|visible| (plan.snapshot.routes.listing_space.as_slice(), visible)),
        user_keys: &plan.snapshot.routes.json_user_keys,
        listings: &plan.snapshot.routes.listing_arrays,
    };
    match json::rewrite(decoded.as_deref().unwrap_or(&raw), &json_plan) {
        Ok(Some(out)) => {
            parts.headers.remove(header::CONTENT_ENCODING);
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(out.len()));
            weaken_etag(&mut parts.headers);
            drop(raw);
            drop(decoded);
            Ok(Response::from_parts(
                parts,
                charged_body(Bytes::from(out), charge),
            ))
        }
        Ok(None) => unchanged(parts, raw, charge),
        Err(e) if guarded => {
            tracing::warn!(error = %e, "listing could not be filtered; refusing it");
            Err(GatewayError::Unfilterable("unfilterable_listing"))
        }
        Err(_) => unchanged(parts, raw, charge),
    }
}

/// A body held whole, its buffer-budget charge given back once it is sent (or dropped):
/// a client slow to read it keeps it counted.
fn charged_body(bytes: Bytes, charge: BufferCharge) -> ProxyBody {
    ChargedBody {
        inner: http_body_util::Full::new(bytes),
        _charge: charge,
    }
    .boxed_unsync()
}

/// Holds the `Full` body itself rather than an already boxed one: one allocation per
/// rewritten answer, not two.
struct ChargedBody {
    inner: http_body_util::Full<Bytes>,
    _charge: BufferCharge,
}

impl Body for ChargedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner)
            .poll_frame(cx)
            .map_err(|never| match never {})
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A body whose first bytes were already read (to find out it was too large to rewrite).
struct PrefixedBody {
    prefix: Option<Bytes>,
    extra: Option<Bytes>,
    rest: WikiBody,
    /// What the prefix was charged, given back once it is handed on.
    charge: Option<BufferCharge>,
}

impl Body for PrefixedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(prefix) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        if let Some(extra) = self.extra.take() {
            return Poll::Ready(Some(Ok(Frame::data(extra))));
        }
        self.charge = None;
        Pin::new(&mut self.rest)
            .poll_frame(cx)
            .map(|f| f.map(|r| r.map_err(|e| -> BoxError { Box::new(e) })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(content_type: &str) -> Kind {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(content_type).expect("header"),
        );
        kind_of(&headers)
    }

    #[test]
    fn media_types_compare_without_case() {
        for json in [
            "application/json",
            "Application/JSON; charset=UTF-8",
            "application/vnd.api+json",
            "APPLICATION/problem+JSON",
        ] {
            assert!(matches!(kind(json), Kind::Json), "{json}");
        }
        for other in [
            "text/plain",
            "application/jsonp",
            "application/+jsonx",
            "json",
        ] {
            assert!(matches!(kind(other), Kind::Other), "{other}");
        }
        match kind("Text/HTML; Charset=\"ISO-8859-1\"") {
            Kind::Html(enc) => assert_eq!(enc, encoding_rs::WINDOWS_1252),
            _ => panic!("text/html"),
        }
        match kind("text/html") {
            Kind::Html(enc) => assert_eq!(enc, encoding_rs::UTF_8),
            _ => panic!("text/html"),
        }
    }
}
