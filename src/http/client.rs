//! The one way guestgate connects out — to the wiki, the identity provider and the bundle
//! server: rustls with the aws-lc-rs provider, the Mozilla roots plus an optional private
//! CA, HTTP/1.1, keep-alive connections (the wiki's in `super::pool`, per worker thread).

use std::cell::Cell;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// A pooled client for bodies of type `B`.
pub type HttpsClient<B> = Client<HttpsConnector<HttpConnector>, B>;

/// Request bodies a client can send.
pub trait RequestBody:
    hyper::body::Body<Data: Send, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
    + Send
    + Unpin
    + 'static
{
}

impl<B> RequestBody for B where
    B: hyper::body::Body<Data: Send, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
        + Send
        + Unpin
        + 'static
{
}

/// Where a client's connection tasks run.
#[derive(Clone)]
enum Spawner {
    /// On the runtime of whoever opens the connection: a worker's own pool (`crate::server::workers`).
    Current,
    /// On one runtime, whoever opens the connection: a client shared by every thread keeps
    /// its connections on the control runtime, which outlives the workers and does not make
    /// one worker drive another's traffic.
    On(tokio::runtime::Handle),
}

impl<F> hyper::rt::Executor<F> for Spawner
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        match self {
            Spawner::Current => drop(tokio::spawn(future)),
            Spawner::On(runtime) => drop(runtime.spawn(future)),
        }
    }
}

thread_local! {
    static WORKER_INDEX: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Marks this thread as worker `index`, whose connections use that worker's own pool.
pub fn enter_worker(index: usize) {
    WORKER_INDEX.with(|i| i.set(Some(index)));
}

/// The index of the worker thread this code runs on; `None` off the workers (the control
/// runtime that runs the admin listener, reloads and background tasks, or a test's own).
pub fn current_worker() -> Option<usize> {
    WORKER_INDEX.with(Cell::get)
}

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{}: cannot read the CA certificates", path.display())]
    CaFile {
        path: std::path::PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{}: a CA certificate is not usable", path.display())]
    CaCertificate {
        path: std::path::PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("TLS client setup failed")]
    Tls(#[source] rustls::Error),
}

/// How long an idle keep-alive connection is kept: a load balancer on the way may forget a
/// connection silently, and a request sent on it would wait for its whole timeout.
/// hyper_util's pool default.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Idle connections a shared client keeps per host.
const SHARED_MAX_IDLE: usize = 256;

/// Builds a client shared by every thread (towards the identity provider, the bundle
/// server, a webhook). Its connections run on the runtime current when it is built.
/// `extra_ca` names a PEM file of additional trusted roots.
pub fn build<B: RequestBody>(
    extra_ca: Option<&Path>,
    connect_timeout: Duration,
) -> Result<HttpsClient<B>, ClientError> {
    let spawner = tokio::runtime::Handle::try_current().map_or(Spawner::Current, Spawner::On);
    build_with(extra_ca, connect_timeout, spawner, SHARED_MAX_IDLE)
}

fn build_with<B: RequestBody>(
    extra_ca: Option<&Path>,
    connect_timeout: Duration,
    spawner: Spawner,
    max_idle: usize,
) -> Result<HttpsClient<B>, ClientError> {
    Ok(Client::builder(spawner)
        // hyper grows a connection's read buffer to ~400 KB while a large body streams;
        // 64 KiB streams as fast on a LAN and keeps 96 concurrent downloads from holding
        // ~30 MB more (benches/memory.sh).
        .http1_max_buf_size(64 * 1024)
        .pool_idle_timeout(IDLE_TIMEOUT)
        .pool_max_idle_per_host(max_idle)
        .build(connector(extra_ca, connect_timeout)?))
}

/// The connector every client uses: TCP with the connect timeout, no Nagle delay and
/// keepalive probes, then TLS for `https` (HTTP/1.1 only).
pub fn connector(
    extra_ca: Option<&Path>,
    connect_timeout: Duration,
) -> Result<HttpsConnector<HttpConnector>, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(ca) = extra_ca {
        let unreadable = |source| ClientError::CaFile {
            path: ca.to_path_buf(),
            source,
        };
        for cert in CertificateDer::pem_file_iter(ca).map_err(unreadable)? {
            roots
                .add(cert.map_err(unreadable)?)
                .map_err(|source| ClientError::CaCertificate {
                    path: ca.to_path_buf(),
                    source,
                })?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(ClientError::Tls)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    // A peer that vanishes without a word (a dead bundle server, a dropped NAT entry) is
    // noticed by the kernel, not only by a request's deadline.
    http.set_keepalive(Some(Duration::from_secs(60)));
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http))
}

/// Why a request the gateway makes on its own behalf (keys, discovery, bundles, content
/// lookups, webhooks) did not bring back a usable answer. Each variant names the URI.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{uri}: cannot build the request")]
    Request {
        uri: String,
        #[source]
        source: http::Error,
    },
    #[error("{uri}: no complete answer within {deadline:?}")]
    Timeout { uri: String, deadline: Duration },
    #[error("{uri}: unreachable")]
    Unreachable {
        uri: String,
        #[source]
        source: BoxError,
    },
    #[error("{uri}: answered {status}")]
    Status { uri: String, status: StatusCode },
    #[error("{uri}: the body could not be read within {limit} bytes")]
    Body {
        uri: String,
        limit: usize,
        #[source]
        source: BoxError,
    },
    #[error("{uri}: the body is not JSON")]
    NotJson {
        uri: String,
        #[source]
        source: serde_json::Error,
    },
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A whole answer: head and body, read within one deadline.
#[derive(Debug)]
pub struct Fetched {
    pub uri: String,
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Fetched {
    /// The answer, if it is `200 OK`.
    pub fn ok(self) -> Result<Fetched, FetchError> {
        if self.status == StatusCode::OK {
            Ok(self)
        } else {
            Err(FetchError::Status {
                uri: self.uri,
                status: self.status,
            })
        }
    }

    /// The body as JSON; an empty body is `null`.
    pub fn json(&self) -> Result<serde_json::Value, FetchError> {
        if self.body.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_slice(&self.body).map_err(|source| FetchError::NotJson {
            uri: self.uri.clone(),
            source,
        })
    }
}

/// Sends `req` with `client` and reads the whole answer, at most `max_bytes` of body, all
/// within `deadline`: a server that sends its head and then stalls mid-body cannot hold
/// the caller for longer than that.
pub async fn fetch<B: RequestBody>(
    client: &HttpsClient<B>,
    req: Request<B>,
    deadline: Duration,
    max_bytes: usize,
) -> Result<Fetched, FetchError> {
    let uri = req.uri().to_string();
    exchange(uri, client.request(req), deadline, max_bytes).await
}

/// As [`fetch`], for a request already on its way (`send` yields the answer's head).
pub async fn exchange<E, B>(
    uri: String,
    send: impl std::future::Future<Output = Result<Response<B>, E>>,
    deadline: Duration,
    max_bytes: usize,
) -> Result<Fetched, FetchError>
where
    E: Into<BoxError>,
    B: hyper::body::Body<Data = Bytes, Error: Into<BoxError>>,
{
    let whole = async {
        let response = send.await.map_err(|e| FetchError::Unreachable {
            uri: uri.clone(),
            source: e.into(),
        })?;
        let (head, body) = response.into_parts();
        let body = Limited::new(body, max_bytes)
            .collect()
            .await
            .map_err(|source| FetchError::Body {
                uri: uri.clone(),
                limit: max_bytes,
                source,
            })?
            .to_bytes();
        Ok((head, body))
    };
    match tokio::time::timeout(deadline, whole).await {
        Err(_) => Err(FetchError::Timeout { uri, deadline }),
        Ok(Err(e)) => Err(e),
        Ok(Ok((head, body))) => Ok(Fetched {
            uri,
            status: head.status,
            headers: head.headers,
            body,
        }),
    }
}

/// An error and each of its causes, joined by `: `: what a failed outbound request says
/// in a log line or on a terminal (`client error (Connect): tcp connect error: Connection
/// refused`), rather than the client's bare "client error (Connect)".
pub fn sentence(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let more = e.to_string();
        // Some errors repeat their cause in their own message.
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = e.source();
    }
    text
}

/// A `GET` of `uri` asking for JSON, with `empty` as its (empty) body.
pub fn get_json_request<B>(uri: &str, empty: B) -> Result<Request<B>, FetchError> {
    Request::get(uri)
        .header(http::header::ACCEPT, "application/json")
        .body(empty)
        .map_err(|source| FetchError::Request {
            uri: uri.to_string(),
            source,
        })
}
