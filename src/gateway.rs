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
    /// Browser sign-in (`[identity.oidc]`); like remote keys, it outlives snapshots.
    pub signin: Option<Arc<crate::pipeline::signin::SignIn>>,
    /// The active bundle, reused when other files change.
    bundle: std::sync::Mutex<Option<Arc<crate::bundle::BundleContents>>>,
    ready: AtomicBool,
    /// Serialises reloads so two never race to swap.
    reload_lock: tokio::sync::Mutex<()>,
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
        let snapshot =
            Snapshot::build_with(&config, remote_keys.clone(), None).map_err(StartError::Load)?;
        let signin =
            crate::pipeline::signin::SignIn::new(&config.identity).map_err(StartError::SignIn)?;
        // With a bundle server, the local policy files only make the process startable:
        // nothing is served until the first bundle is active.
        let ready = AtomicBool::new(config.bundle.is_none());
        let upstream = Upstream::new(&config.upstream, config.server.request_timeout)?;
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
        Ok(Gateway {
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
        let built =
            tokio::task::spawn_blocking(move || Snapshot::build_with(&config, remote, Some(&b)))
                .await
                .map_err(|e| vec![format!("bundle task failed: {e}")])?;
        match built {
            Ok(snapshot) => {
                let revision = snapshot.revision.clone();
                self.current.store(Arc::new(snapshot));
                if let Ok(mut slot) = self.bundle.lock() {
                    *slot = Some(contents);
                }
                self.ready.store(true, Ordering::Release);
                self.metrics.reload_succeeded(&revision);
                Ok(revision)
            }
            Err(errors) => {
                self.metrics.reload_failed();
                Err(errors.iter().map(|e| e.to_string()).collect())
            }
        }
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
            Snapshot::build_with(&config, remote, bundle.as_deref())
        })
        .await
        .map_err(|e| vec![format!("reload task failed: {e}")])?;
        match built {
            Ok(snapshot) => {
                let revision = snapshot.revision.clone();
                self.current.store(Arc::new(snapshot));
                self.metrics.reload_succeeded(&revision);
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
