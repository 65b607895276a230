//! OPA bundles: the scale-out path. N stateless replicas poll one bundle server for a
//! `.tar.gz` holding `.manifest`, `*.rego` and `data.json`; each new bundle becomes a new
//! snapshot through the same keep-last-good swap as any reload, and the manifest's
//! revision becomes the policy revision.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::Empty;

use super::store::SnapshotStore;
use crate::config::BundleConfig;
use crate::http::client::{ClientError, FetchError, HttpsClient, build, fetch};

const MAX_BUNDLE_BYTES: usize = 64 << 20;
const MAX_UNPACKED_BYTES: u64 = 256 << 20;

pub use super::BundleContents;

/// Why a bundle was refused, or could not be had.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The archive is not a bundle the gateway can use.
    #[error("bundle: {0}")]
    Unpack(String),
    #[error("bundle server: {0}")]
    Fetch(#[from] FetchError),
    #[error("bundle server: bundle.url")]
    Url(#[source] http::uri::InvalidUri),
    #[error("bundle server: cannot build the request")]
    Request(#[source] http::Error),
    #[error("bundle server: client")]
    Client(#[source] ClientError),
    #[error("bundle: unpacking task failed")]
    Task(#[source] tokio::task::JoinError),
}

/// Unpacks a bundle. `data.json` files at `a/b/data.json` land under `data.a.b`, as in OPA.
pub fn unpack(gz: &[u8]) -> Result<BundleContents, BundleError> {
    let decoder = flate2::read::GzDecoder::new(gz).take(MAX_UNPACKED_BYTES);
    let mut archive = tar::Archive::new(decoder);
    let mut files = Vec::new();
    let mut data = serde_json::Value::Object(Default::default());
    let mut revision = None;
    let entries = archive
        .entries()
        .map_err(|e| BundleError::Unpack(format!("not a tar.gz: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| BundleError::Unpack(format!("corrupt archive: {e}")))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry
            .path()
            .map_err(|e| BundleError::Unpack(format!("bad path: {e}")))?
            .into_owned();
        let name = path
            .to_string_lossy()
            .trim_start_matches("./")
            .trim_start_matches('/')
            .to_string();
        if name.split('/').any(|seg| seg == "..") {
            return Err(BundleError::Unpack(format!(
                "{name}: path escapes the bundle"
            )));
        }
        let mut text = String::new();
        entry
            .read_to_string(&mut text)
            .map_err(|e| BundleError::Unpack(format!("{name}: {e}")))?;
        if name == ".manifest" {
            let manifest: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| BundleError::Unpack(format!(".manifest: {e}")))?;
            revision = manifest
                .get("revision")
                .and_then(|r| r.as_str())
                .map(str::to_string);
        } else if name.ends_with(".rego") {
            files.push((PathBuf::from(format!("bundle/{name}")), text));
        } else if name == "data.json" || name.ends_with("/data.json") {
            let value: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| BundleError::Unpack(format!("{name}: {e}")))?;
            let prefix: Vec<&str> = name
                .trim_end_matches("data.json")
                .split('/')
                .filter(|s| !s.is_empty())
                .collect();
            merge_at(&mut data, &prefix, value)
                .map_err(|e| BundleError::Unpack(format!("{name}: {e}")))?;
        }
    }
    if files.is_empty() {
        return Err(BundleError::Unpack("no .rego files".into()));
    }
    files.sort();
    Ok(BundleContents {
        revision,
        files,
        data: data.to_string(),
    })
}

fn merge_at(
    root: &mut serde_json::Value,
    path: &[&str],
    value: serde_json::Value,
) -> Result<(), String> {
    let mut at = root;
    for seg in path {
        let obj = at.as_object_mut().ok_or("data paths overlap")?;
        at = obj
            .entry(seg.to_string())
            .or_insert_with(|| serde_json::Value::Object(Default::default()));
    }
    match (at, value) {
        (serde_json::Value::Object(existing), serde_json::Value::Object(new)) => {
            for (k, v) in new {
                if existing.insert(k.clone(), v).is_some() {
                    return Err(format!("key `{k}` defined twice"));
                }
            }
            Ok(())
        }
        _ => Err("data.json must hold an object".into()),
    }
}

/// Polls the bundle server and swaps in each new bundle.
pub struct BundlePoller {
    config: BundleConfig,
    client: HttpsClient<Empty<Bytes>>,
}

/// What one poll found.
pub enum Poll {
    Unchanged,
    New(BundleContents, Option<String>),
}

impl BundlePoller {
    pub fn new(config: BundleConfig) -> Result<BundlePoller, BundleError> {
        Ok(BundlePoller {
            config,
            client: build(None, Duration::from_secs(5)).map_err(BundleError::Client)?,
        })
    }

    /// One conditional GET (`If-None-Match` with the last ETag). The whole exchange, head
    /// and body, has one deadline: a server that stalls mid-body cannot stop the polling.
    pub async fn poll(&self, etag: Option<&str>) -> Result<Poll, BundleError> {
        let uri: Uri = self.config.url.parse().map_err(BundleError::Url)?;
        let mut req = Request::get(uri).header(header::ACCEPT, "application/gzip");
        if let Some(etag) = etag {
            req = req.header(header::IF_NONE_MATCH, etag);
        }
        if let Some(auth) = &self.config.authorization {
            req = req.header(header::AUTHORIZATION, auth.as_str());
        }
        let req = req.body(Empty::new()).map_err(BundleError::Request)?;
        let fetched = fetch(&self.client, req, self.config.timeout, MAX_BUNDLE_BYTES).await?;
        if fetched.status == StatusCode::NOT_MODIFIED {
            return Ok(Poll::Unchanged);
        }
        let fetched = fetched.ok()?;
        let etag = fetched
            .headers
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = fetched.body;
        let contents = tokio::task::spawn_blocking(move || unpack(&body))
            .await
            .map_err(BundleError::Task)??;
        Ok(Poll::New(contents, etag))
    }

    /// Polls for as long as the runtime lives: every `poll_interval`, ± `jitter` so
    /// replicas do not poll in step. Each new bundle goes through `store`'s keep-last-good
    /// swap.
    pub fn start(self, store: SnapshotStore) {
        tokio::spawn(async move {
            let mut etag: Option<String> = None;
            loop {
                let started = std::time::Instant::now();
                let polled = self.poll(etag.as_deref()).await;
                let took = started.elapsed();
                if took > self.config.poll_interval / 2 {
                    tracing::warn!(seconds = took.as_secs_f64(), "bundle poll was slow");
                }
                if polled.is_ok() {
                    store.metrics().bundle_polled();
                }
                match polled {
                    Ok(Poll::Unchanged) => {}
                    Ok(Poll::New(contents, new_etag)) => match store.install_bundle(contents).await
                    {
                        Ok(revision) => {
                            tracing::info!(revision = %revision, "bundle activated");
                            etag = new_etag;
                        }
                        Err(errors) => {
                            for e in errors {
                                tracing::error!(error = %e, "bundle refused; previous revision keeps serving");
                            }
                        }
                    },
                    Err(e) => {
                        store.metrics().reload_failed();
                        tracing::warn!(error = %e, source = ?std::error::Error::source(&e), "bundle poll failed; previous revision keeps serving");
                    }
                }
                tokio::time::sleep(jittered(self.config.poll_interval, self.config.jitter)).await;
            }
        });
    }
}

fn jittered(interval: Duration, jitter: f64) -> Duration {
    let mut byte = [0u8; 1];
    let _ = aws_lc_rs::rand::fill(&mut byte);
    let unit = f64::from(byte[0]) / 255.0 * 2.0 - 1.0;
    interval.mul_f64((1.0 + unit * jitter).max(0.05))
}
