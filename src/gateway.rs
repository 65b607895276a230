//! Assembles one gateway process from its parts: the snapshot store, the request pipeline
//! (which owns what a request needs), the change notifier and the identity provider's
//! keys, which outlive snapshots. It holds no logic of its own: the server serves the
//! pipeline, the admin listener and the background services get the handles they need.

use std::sync::Arc;

use crate::changes::notify::Notifier;
use crate::config::Config;
use crate::identity::RemoteKeys;
use crate::pipeline::{Pipeline, PipelineError};
use crate::shared::SharedStore;
use crate::snapshot::store::SnapshotStore;
use crate::snapshot::{LoadError, Snapshot};
use crate::telemetry::Metrics;

pub struct Gateway {
    pub config: Arc<Config>,
    pub store: SnapshotStore,
    pub pipeline: Arc<Pipeline>,
    pub notifier: Arc<Notifier>,
    pub metrics: Arc<Metrics>,
    pub remote_keys: Option<Arc<RemoteKeys>>,
    /// The last periodic audit of the wiki's own permissions (`audit.interval_secs`).
    pub last_audit: Arc<crate::audit::LastAudit>,
}

/// Why a gateway could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Load(Vec<LoadError>),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("store: {0}")]
    Store(String),
}

impl Gateway {
    pub fn new(config: Config) -> Result<Gateway, StartError> {
        let remote_keys =
            RemoteKeys::new(&config.identity).map_err(|e| StartError::Load(vec![e.into()]))?;
        if let Some(remote) = &remote_keys {
            remote.start();
        }
        let snapshot = Snapshot::build_with(&config, remote_keys.clone(), None, None)
            .map_err(StartError::Load)?;
        let shared = config
            .store
            .as_ref()
            .map(SharedStore::new)
            .transpose()
            .map_err(|e| StartError::Store(e.to_string()))?;
        let config = Arc::new(config);
        let metrics = Arc::new(Metrics::default());
        let store = SnapshotStore::new(
            config.clone(),
            snapshot,
            remote_keys.clone(),
            metrics.clone(),
            shared,
        );
        let pipeline = Pipeline::new(config.clone(), store.clone(), metrics.clone())?;
        Ok(Gateway {
            notifier: Arc::new(Notifier::new(&config.notify)),
            config,
            store,
            pipeline: Arc::new(pipeline),
            metrics,
            remote_keys,
            last_audit: Arc::default(),
        })
    }

    /// Audits the wiki's own permissions every `audit.interval_secs` against the serving
    /// data document, for `/guests` and `guestgate_wiki_permission_drift`. Readiness does
    /// not depend on it: a drifted wiki is the operator's to fix, not a reason to stop.
    pub fn start_audits(self: &Arc<Self>) {
        let Some(interval) = self.config.audit.interval else {
            return;
        };
        let gw = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(gateway) = gw.upgrade() else { return };
                let snapshot = gateway.snapshot();
                let result = crate::audit::audit(&gateway.config, &snapshot.directory).await;
                match &result {
                    Ok(report) if !report.agrees() => tracing::warn!(
                        "The wiki's own permissions for guest accounts disagree with the data document in {} place(s) (see /guests or `guestgate audit`).",
                        report.findings.len()
                    ),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!("The periodic audit of the wiki's permissions failed: {e}.")
                    }
                }
                gateway.last_audit.store(result.map_err(|e| e.to_string()));
                drop(gateway);
                tokio::time::sleep(interval).await;
            }
        });
    }

    /// The serving snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.store.current()
    }
}
