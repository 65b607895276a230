//! The state one gateway process shares between connections: config, the current snapshot,
//! the upstream client, caches that outlive snapshots, telemetry.

use std::sync::Arc;

use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::pipeline::classify::{ContentCache, content_cache};
use crate::pipeline::forward::{Upstream, UpstreamError};
use crate::pipeline::limits::UpstreamSlots;
use crate::snapshot::{LoadError, Snapshot};
use crate::telemetry::{DecisionLog, Metrics};

pub struct Gateway {
    pub config: Arc<Config>,
    current: ArcSwap<Snapshot>,
    pub upstream: Upstream,
    /// Bounds the requests in flight to the wiki (`server.max_upstream_in_flight`).
    pub upstream_slots: UpstreamSlots,
    pub content_cache: ContentCache,
    pub decision_log: DecisionLog,
    pub metrics: Metrics,
    pub remote_keys: Option<Arc<crate::pipeline::identify::RemoteKeys>>,
    pub notifier: crate::notify::Notifier,
    /// Browser sign-in (`[identity.oidc]`); like remote keys, it outlives snapshots.
    pub signin: Option<Arc<crate::pipeline::signin::SignIn>>,
    /// The active bundle, reused when other files change.
    bundle: std::sync::Mutex<Option<Arc<crate::bundle::BundleContents>>>,
    ready: AtomicBool,
    /// Serialises reloads so two never race to swap.
    reload_lock: tokio::sync::Mutex<()>,
}

/// Why a change through the admin write API did not happen.
#[derive(Debug, thiserror::Error)]
pub enum DataChangeError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the change would make the data document invalid")]
    Invalid(Vec<String>),
    #[error("{0}")]
    Storage(String),
}

/// Replaces `path` by `new` so that a crash at any point leaves either the old or the new
/// document in place, never a torn one: the old text goes to `<path>.bak`, the new one to a
/// temporary file in the same folder, fsynced, renamed over `path`, and the folder fsynced.
fn write_atomically(path: &std::path::Path, old: &str, new: &str) -> Result<(), String> {
    use std::io::Write as _;
    let folder = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data.json".into());
    let place = |target: &std::path::Path, text: &str| -> std::io::Result<()> {
        let tmp = folder.join(format!(".{name}.{}.tmp", std::process::id()));
        let result = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, target)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    };
    let backup = folder.join(format!("{name}.bak"));
    place(&backup, old).map_err(|e| format!("cannot write {}: {e}", backup.display()))?;
    place(path, new).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    std::fs::File::open(folder)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("cannot sync {}: {e}", folder.display()))
}

/// Why a gateway could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Load(Vec<LoadError>),
    #[error("{0}")]
    Upstream(#[from] UpstreamError),
    #[error("decision log: {0}")]
    DecisionLog(std::io::Error),
    #[error("{0}")]
    SignIn(String),
}

impl Gateway {
    pub fn new(config: Config) -> Result<Gateway, StartError> {
        let remote_keys = crate::pipeline::identify::RemoteKeys::new(&config.identity)
            .map_err(|e| StartError::Load(vec![e.into()]))?;
        if let Some(remote) = &remote_keys {
            remote.start();
        }
        let snapshot = Snapshot::build_with(&config, remote_keys.clone(), None, None)
            .map_err(StartError::Load)?;
        let signin =
            crate::pipeline::signin::SignIn::new(&config.identity).map_err(StartError::SignIn)?;
        // With a bundle server, the local policy files only make the process startable:
        // nothing is served until the first bundle is active.
        let ready = AtomicBool::new(config.bundle.is_none());
        let upstream = Upstream::new(
            &config.upstream,
            config.server.request_timeout,
            config.server.workers,
        )?;
        let ttl = snapshot
            .routes
            .content_lookup
            .as_ref()
            .map(|l| l.cache_ttl)
            .unwrap_or(std::time::Duration::from_secs(300));
        let decision_log =
            DecisionLog::start(&config.log.decisions).map_err(StartError::DecisionLog)?;
        let metrics = Metrics::default();
        metrics.set_revision(&snapshot.revision);
        let upstream_slots = UpstreamSlots::new(
            config.server.max_upstream_in_flight,
            config.server.retry_after,
        );
        let notifier = crate::notify::Notifier::new(&config.notify);
        Ok(Gateway {
            notifier,
            config: Arc::new(config),
            current: ArcSwap::from_pointee(snapshot),
            upstream,
            upstream_slots,
            content_cache: content_cache(ttl),
            decision_log,
            metrics,
            remote_keys,
            signin,
            bundle: std::sync::Mutex::new(None),
            ready,
            reload_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// False only while a configured bundle has not been activated yet.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Builds a snapshot from a new bundle (off the async threads) and swaps it in; the
    /// previous revision keeps serving when it is invalid.
    pub async fn install_bundle(
        self: &Arc<Self>,
        contents: crate::bundle::BundleContents,
    ) -> Result<Arc<str>, Vec<String>> {
        let _guard = self.reload_lock.lock().await;
        let contents = Arc::new(contents);
        let (config, remote, b) = (
            self.config.clone(),
            self.remote_keys.clone(),
            contents.clone(),
        );
        let built = tokio::task::spawn_blocking(move || {
            Snapshot::build_with(&config, remote, Some(&b), None)
        })
        .await
        .map_err(|e| vec![format!("bundle task failed: {e}")])?;
        match built {
            Ok(snapshot) => {
                let revision = self.activate(snapshot);
                if let Ok(mut slot) = self.bundle.lock() {
                    *slot = Some(contents);
                }
                self.ready.store(true, Ordering::Release);
                Ok(revision)
            }
            Err(errors) => {
                self.metrics.reload_failed();
                Err(errors.iter().map(|e| e.to_string()).collect())
            }
        }
    }

    /// Swaps a validated snapshot in, unless it is the revision already serving (a file
    /// touched but unchanged, or the watcher seeing the write API's own write): then the
    /// serving snapshot and its warm caches stay.
    fn activate(&self, snapshot: Snapshot) -> Arc<str> {
        let revision = snapshot.revision.clone();
        if self.config.bundle.is_none() && self.current.load().revision == revision {
            self.metrics.reload_succeeded(&revision);
            return revision;
        }
        self.current.store(Arc::new(snapshot));
        self.metrics.reload_succeeded(&revision);
        self.notifier.revision_changed();
        revision
    }

    /// Applies one change of the admin write API: `change` edits the data document read
    /// from disk; the result is validated like a reload, written atomically (the previous
    /// file kept as `<data>.bak`) and activated. Writes and reloads are serialised, and a
    /// change that fails at any step leaves file and revision as they were.
    pub async fn change_data<T>(
        self: &Arc<Self>,
        change: impl FnOnce(
            &mut serde_json::Value,
            &crate::directory::Directory,
        ) -> Result<T, DataChangeError>,
    ) -> Result<(T, Arc<Snapshot>, Arc<Snapshot>), DataChangeError> {
        let _guard = self.reload_lock.lock().await;
        if self.config.bundle.is_some() {
            return Err(DataChangeError::Conflict(
                "the data document comes from the bundle server; change it there".into(),
            ));
        }
        let path = self.config.policy.data.clone();
        let old_text = std::fs::read_to_string(&path).map_err(|e| {
            DataChangeError::Storage(format!("cannot read {}: {e}", path.display()))
        })?;
        let mut doc: serde_json::Value = serde_json::from_str(&old_text).map_err(|e| {
            DataChangeError::Conflict(format!(
                "{} is not valid JSON ({e}); fix the file before using the write API",
                path.display()
            ))
        })?;
        let before = self.snapshot();
        let outcome = change(&mut doc, &before.directory)?;
        let mut new_text = serde_json::to_string_pretty(&doc)
            .map_err(|e| DataChangeError::Storage(e.to_string()))?;
        new_text.push('\n');
        let (config, remote, text) = (
            self.config.clone(),
            self.remote_keys.clone(),
            new_text.clone(),
        );
        let built = tokio::task::spawn_blocking(move || {
            Snapshot::build_with(&config, remote, None, Some(&text))
        })
        .await
        .map_err(|e| DataChangeError::Storage(format!("validation task failed: {e}")))?;
        let snapshot = built.map_err(|errors| {
            DataChangeError::Invalid(errors.iter().map(|e| e.to_string()).collect())
        })?;
        let (old, new) = (old_text, new_text);
        tokio::task::spawn_blocking(move || write_atomically(&path, &old, &new))
            .await
            .map_err(|e| DataChangeError::Storage(format!("write task failed: {e}")))?
            .map_err(DataChangeError::Storage)?;
        let revision = self.activate(snapshot);
        tracing::info!(revision = %revision, "data document changed through the admin API");
        Ok((outcome, before, self.snapshot()))
    }

    /// The snapshot a request works with from start to end.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Rebuilds the snapshot from the files named by the config, off the async threads, and
    /// swaps it in. On any error the current snapshot keeps serving (keep-last-good).
    pub async fn reload(self: &Arc<Self>) -> Result<Arc<str>, Vec<String>> {
        let _guard = self.reload_lock.lock().await;
        let config = self.config.clone();
        let remote = self.remote_keys.clone();
        let bundle = self.bundle.lock().ok().and_then(|b| b.clone());
        if self.config.bundle.is_some() && bundle.is_none() {
            return Err(vec!["no bundle has been activated yet".to_string()]);
        }
        let built = tokio::task::spawn_blocking(move || {
            Snapshot::build_with(&config, remote, bundle.as_deref(), None)
        })
        .await
        .map_err(|e| vec![format!("reload task failed: {e}")])?;
        match built {
            Ok(snapshot) => {
                let revision = self.activate(snapshot);
                tracing::info!(revision = %revision, "reloaded");
                Ok(revision)
            }
            Err(errors) => {
                self.metrics.reload_failed();
                let errors: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
                for e in &errors {
                    tracing::error!(error = %e, "reload refused; previous revision keeps serving");
                }
                Err(errors)
            }
        }
    }
}
