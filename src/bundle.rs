//! OPA bundles: the scale-out path. N stateless replicas poll one bundle server for a
//! `.tar.gz` holding `.manifest`, `*.rego` and `data.json`; each new bundle becomes a new
//! snapshot through the same keep-last-good swap as any reload, and the manifest's
//! revision becomes the policy revision.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};

use crate::config::BundleConfig;
use crate::gateway::Gateway;

const MAX_BUNDLE_BYTES: usize = 64 << 20;
const MAX_UNPACKED_BYTES: u64 = 256 << 20;

/// The policy part of a snapshot, taken from a bundle instead of `policy.dir`/`policy.data`.
#[derive(Debug, Clone)]
pub struct BundleContents {
    pub revision: Option<String>,
    /// Rego files, named by their path inside the bundle.
    pub files: Vec<(PathBuf, String)>,
    /// The merged data document, as JSON text.
    pub data: String,
}

/// Why a bundle was refused.
#[derive(Debug, Clone, thiserror::Error)]
#[error("bundle: {0}")]
pub struct BundleError(pub String);

/// Unpacks a bundle. `data.json` files at `a/b/data.json` land under `data.a.b`, as in OPA.
pub fn unpack(gz: &[u8]) -> Result<BundleContents, BundleError> {
    let decoder = flate2::read::GzDecoder::new(gz).take(MAX_UNPACKED_BYTES);
    let mut archive = tar::Archive::new(decoder);
    let mut files = Vec::new();
    let mut data = serde_json::Value::Object(Default::default());
    let mut revision = None;
    let entries = archive
        .entries()
        .map_err(|e| BundleError(format!("not a tar.gz: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| BundleError(format!("corrupt archive: {e}")))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry
            .path()
            .map_err(|e| BundleError(format!("bad path: {e}")))?
            .into_owned();
        let name = path
            .to_string_lossy()
            .trim_start_matches("./")
            .trim_start_matches('/')
            .to_string();
        if name.split('/').any(|seg| seg == "..") {
            return Err(BundleError(format!("{name}: path escapes the bundle")));
        }
        let mut text = String::new();
        entry
            .read_to_string(&mut text)
            .map_err(|e| BundleError(format!("{name}: {e}")))?;
        if name == ".manifest" {
            let manifest: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| BundleError(format!(".manifest: {e}")))?;
            revision = manifest
                .get("revision")
                .and_then(|r| r.as_str())
                .map(str::to_string);
        } else if name.ends_with(".rego") {
            files.push((PathBuf::from(format!("bundle/{name}")), text));
        } else if name == "data.json" || name.ends_with("/data.json") {
            let value: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| BundleError(format!("{name}: {e}")))?;
            let prefix: Vec<&str> = name
                .trim_end_matches("data.json")
                .split('/')
                .filter(|s| !s.is_empty())
                .collect();
            merge_at(&mut data, &prefix, value).map_err(|e| BundleError(format!("{name}: {e}")))?;
        }
    }
    if files.is_empty() {
        return Err(BundleError("no .rego files".into()));
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
    client: crate::http_client::HttpsClient<Empty<Bytes>>,
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
            client: crate::http_client::build(None, Duration::from_secs(5)).map_err(BundleError)?,
        })
    }

    /// One conditional GET (`If-None-Match` with the last ETag).
    pub async fn poll(&self, etag: Option<&str>) -> Result<Poll, BundleError> {
        let uri: Uri = self
            .config
            .url
            .parse()
            .map_err(|e| BundleError(format!("url: {e}")))?;
        let mut req = Request::get(uri).header(header::ACCEPT, "application/gzip");
        if let Some(etag) = etag {
            req = req.header(header::IF_NONE_MATCH, etag);
        }
        if let Some(auth) = &self.config.authorization {
            req = req.header(header::AUTHORIZATION, auth.as_str());
        }
        let req = req
            .body(Empty::new())
            .map_err(|e| BundleError(e.to_string()))?;
        let resp = tokio::time::timeout(Duration::from_secs(30), self.client.request(req))
            .await
            .map_err(|_| BundleError("server timed out".into()))?
            .map_err(|e| BundleError(format!("server unreachable: {e}")))?;
        match resp.status() {
            StatusCode::NOT_MODIFIED => Ok(Poll::Unchanged),
            StatusCode::OK => {
                let etag = resp
                    .headers()
                    .get(header::ETAG)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let body = Limited::new(resp.into_body(), MAX_BUNDLE_BYTES)
                    .collect()
                    .await
                    .map_err(|e| BundleError(format!("download: {e}")))?
                    .to_bytes();
                let contents = tokio::task::spawn_blocking(move || unpack(&body))
                    .await
                    .map_err(|e| BundleError(e.to_string()))??;
                Ok(Poll::New(contents, etag))
            }
            other => Err(BundleError(format!("server answered {other}"))),
        }
    }

    /// Polls forever: every `poll_interval`, ± `jitter` so replicas do not poll in step.
    pub fn start(self, gw: Arc<Gateway>) {
        tokio::spawn(async move {
            let mut etag: Option<String> = None;
            loop {
                match self.poll(etag.as_deref()).await {
                    Ok(Poll::Unchanged) => {}
                    Ok(Poll::New(contents, new_etag)) => match gw.install_bundle(contents).await {
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
                        gw.metrics.reload_failed();
                        tracing::warn!(error = %e, "bundle poll failed; previous revision keeps serving");
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
