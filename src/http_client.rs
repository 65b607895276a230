//! The one way guestgate builds an HTTP(S) client — towards the wiki, the identity
//! provider and the bundle server: rustls with the aws-lc-rs provider, the Mozilla roots
//! plus an optional private CA, HTTP/1.1, pooled keep-alive connections.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

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
    /// On the runtime of whoever opens the connection: a worker's own pool (crate::workers).
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

/// Idle connections a shared client keeps per host.
const SHARED_MAX_IDLE: usize = 256;

/// Builds a client shared by every thread (towards the identity provider, the bundle
/// server, a webhook). Its connections run on the runtime current when it is built.
/// `extra_ca` names a PEM file of additional trusted roots.
pub fn build<B: RequestBody>(
    extra_ca: Option<&Path>,
    connect_timeout: Duration,
) -> Result<HttpsClient<B>, String> {
    let spawner = tokio::runtime::Handle::try_current().map_or(Spawner::Current, Spawner::On);
    build_with(extra_ca, connect_timeout, spawner, SHARED_MAX_IDLE)
}

/// Builds a client for one worker thread: its connections run on the runtime that opens
/// them, and it keeps at most `max_idle` idle connections per host.
pub fn build_local<B: RequestBody>(
    extra_ca: Option<&Path>,
    connect_timeout: Duration,
    max_idle: usize,
) -> Result<HttpsClient<B>, String> {
    build_with(extra_ca, connect_timeout, Spawner::Current, max_idle)
}

fn build_with<B: RequestBody>(
    extra_ca: Option<&Path>,
    connect_timeout: Duration,
    spawner: Spawner,
    max_idle: usize,
) -> Result<HttpsClient<B>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(ca) = extra_ca {
        let certs =
            CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
        for cert in certs {
            let cert = cert.map_err(|e| format!("{}: {e}", ca.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("{}: {e}", ca.display()))?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(spawner)
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(max_idle)
        .build(connector))
}
