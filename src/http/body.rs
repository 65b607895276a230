//! Body types: what the gateway answers with, and a client's request body on its way on.

use bytes::Bytes;
use http_body_util::combinators::MapErr;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

/// Body type of every response the gateway sends: either a small body of its own or the
/// upstream's body streamed through.
pub type ProxyBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body the gateway writes itself.
pub fn full_body(body: impl Into<Bytes>) -> ProxyBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// The upstream's body passed through unchanged.
pub fn streamed<B>(body: B) -> ProxyBody
where
    B: hyper::body::Body<Data = Bytes, Error = hyper::Error> + Send + 'static,
{
    body.map_err(|e| -> BoxError { Box::new(e) }).boxed_unsync()
}

/// A client's request body on its way to the wiki, cut off at its route's limit. Passing
/// the limit makes the upstream request fail with `http_body_util::LengthLimitError` as
/// its cause, which the pipeline turns into 413; a body that cannot be read (a malformed
/// chunk, a client gone) fails with [`ClientBodyError`], turned into 400.
pub type RequestBody = Limited<MapErr<Incoming, fn(hyper::Error) -> ClientBodyError>>;

/// Reading the client's request body failed: the client's fault, not the wiki's.
#[derive(Debug, thiserror::Error)]
#[error("client request body: {0}")]
pub struct ClientBodyError(#[source] pub hyper::Error);

/// Wraps the body so that it fails once more than `limit` bytes have streamed through.
pub fn limited(body: Incoming, limit: usize) -> RequestBody {
    let client_error: fn(hyper::Error) -> ClientBodyError = ClientBodyError;
    Limited::new(body.map_err(client_error), limit)
}
