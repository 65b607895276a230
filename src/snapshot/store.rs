//! The one place a snapshot is swapped. Reloads (SIGHUP, `POST /reload`, the file watch),
//! bundles and the admin write API all build a new snapshot off the async threads and go
//! through the same keep-last-good path here: an invalid revision is refused and the
//! serving one stays. Background services hold a [`SnapshotStore`] handle (cheap to
//! clone), never the gateway; they learn of new revisions through [`SnapshotStore::changes`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use super::{BundleContents, Snapshot};
use crate::config::Config;
use crate::identity::RemoteKeys;
use crate::shared::SharedStore;
use crate::telemetry::Metrics;

/// A handle on the serving snapshot.
#[derive(Clone)]
pub struct SnapshotStore {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<Config>,
    current: ArcSwap<Snapshot>,
    remote_keys: Option<Arc<RemoteKeys>>,
    /// The active bundle, reused when other files change.
    bundle: std::sync::Mutex<Option<Arc<BundleContents>>>,
    ready: AtomicBool,
    /// Serialises swaps so two never race.
    swap_lock: tokio::sync::Mutex<()>,
    metrics: Arc<Metrics>,
    /// The serving revision, for whoever follows changes (the access-change notifier).
    revisions: watch::Sender<Arc<str>>,
    /// With `[store]`: where the data document lives, the last one read from it (reloads
    /// rebuild with it instead of the file) and its generation there.
    shared: Option<Arc<SharedStore>>,
    stored_data: std::sync::Mutex<Option<Arc<str>>>,
    stored_generation: AtomicI64,
    /// The last stored generation that did not build (logged once).
    bad_generation: AtomicI64,
}

/// A handle that does not keep the store alive: background tasks that should end with
/// the gateway hold this.
#[derive(Clone)]
pub struct WeakSnapshotStore {
    inner: std::sync::Weak<Inner>,
}

impl WeakSnapshotStore {
    pub fn upgrade(&self) -> Option<SnapshotStore> {
        self.inner.upgrade().map(|inner| SnapshotStore { inner })
    }
}

/// Held while a change of the data document is validated, written and activated: no
/// reload or other change can swap a snapshot in between.
pub struct DataChange<'s> {
    store: &'s SnapshotStore,
    _guard: tokio::sync::MutexGuard<'s, ()>,
}

impl SnapshotStore {
    /// Starts with `first`, which the caller built and validated.
    pub fn new(
        config: Arc<Config>,
        first: Snapshot,
        remote_keys: Option<Arc<RemoteKeys>>,
        metrics: Arc<Metrics>,
        shared: Option<Arc<SharedStore>>,
    ) -> SnapshotStore {
        // With a bundle server or a store, the local files only make the process
        // startable: nothing is served until the first bundle or stored document is active.
        let ready = AtomicBool::new(config.bundle.is_none() && shared.is_none());
        metrics.set_revision(&first.revision);
        let (revisions, _) = watch::channel(first.revision.clone());
        SnapshotStore {
            inner: Arc::new(Inner {
                config,
                current: ArcSwap::from_pointee(first),
                remote_keys,
                bundle: std::sync::Mutex::new(None),
                ready,
                swap_lock: tokio::sync::Mutex::new(()),
                metrics,
                revisions,
                shared,
                stored_data: std::sync::Mutex::new(None),
                stored_generation: AtomicI64::new(0),
                bad_generation: AtomicI64::new(0),
            }),
        }
    }

    /// The shared store (`[store]`), when the data document lives there.
    pub fn shared(&self) -> Option<&Arc<SharedStore>> {
        self.inner.shared.as_ref()
    }

    /// The generation of the stored document serving now; 0 before the first.
    pub fn stored_generation(&self) -> i64 {
        self.inner.stored_generation.load(Ordering::Acquire)
    }

    /// Checks a data document like a reload would, without activating it.
    pub async fn validate_data(&self, text: String) -> Result<(), Vec<String>> {
        self.build(None, Some(text)).await.map(drop)
    }

    /// Reads the stored document and activates it unless its generation is the one serving.
    /// The read happens under the swap lock, which this replica's own writes hold from
    /// their commit to their activation: a document read before such a write committed can
    /// never replace the newer one (a revocation undone until the next read).
    /// `Ok(None)`: nothing new.
    pub async fn sync_stored_data(
        &self,
        shared: &SharedStore,
    ) -> Result<Option<Arc<str>>, crate::shared::StoreError> {
        let _guard = self.inner.swap_lock.lock().await;
        let (generation, text) = shared.load_data().await?;
        if generation == self.stored_generation() {
            return Ok(None);
        }
        Ok(self.install_stored_locked(generation, text).await.ok())
    }

    async fn install_stored_locked(
        &self,
        generation: i64,
        text: String,
    ) -> Result<Arc<str>, Vec<String>> {
        match self.build(None, Some(text.clone())).await {
            Ok(snapshot) => Ok(self.activate_stored(snapshot, generation, text)),
            Err(errors) => {
                self.inner.metrics.reload_failed();
                // The generation serving stays the last good one, so the follower tries
                // this one again on every read, and a reload (once local files are fixed)
                // builds from it, not from the older text. One log line per bad generation.
                if let Ok(mut slot) = self.inner.stored_data.lock() {
                    *slot = Some(Arc::from(text));
                }
                if self.inner.bad_generation.swap(generation, Ordering::AcqRel) != generation {
                    for e in &errors {
                        tracing::error!(error = %e, generation, "the stored data document is invalid; the previous revision keeps serving");
                    }
                }
                Err(errors)
            }
        }
    }

    fn activate_stored(&self, snapshot: Snapshot, generation: i64, text: String) -> Arc<str> {
        let revision = self.activate(snapshot);
        if let Ok(mut slot) = self.inner.stored_data.lock() {
            *slot = Some(Arc::from(text));
        }
        self.inner
            .stored_generation
            .store(generation, Ordering::Release);
        self.inner.ready.store(true, Ordering::Release);
        revision
    }

    pub fn downgrade(&self) -> WeakSnapshotStore {
        WeakSnapshotStore {
            inner: Arc::downgrade(&self.inner),
        }
    }

    /// The snapshot a request works with from start to end.
    pub fn current(&self) -> Arc<Snapshot> {
        self.inner.current.load_full()
    }

    /// False only while a configured bundle has not been activated yet.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire)
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.inner.config
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// The serving revision now and whenever it changes.
    pub fn changes(&self) -> watch::Receiver<Arc<str>> {
        self.inner.revisions.subscribe()
    }

    /// Builds a snapshot off the async threads.
    async fn build(
        &self,
        bundle: Option<Arc<BundleContents>>,
        proposed_data: Option<String>,
    ) -> Result<Snapshot, Vec<String>> {
        let config = self.inner.config.clone();
        let remote = self.inner.remote_keys.clone();
        tokio::task::spawn_blocking(move || {
            Snapshot::build_with(&config, remote, bundle.as_deref(), proposed_data.as_deref())
        })
        .await
        .map_err(|e| vec![format!("snapshot build task failed: {e}")])?
        .map_err(|errors| errors.iter().map(|e| e.to_string()).collect())
    }

    /// Swaps a validated snapshot in, unless it is the revision already serving (a file
    /// touched but unchanged, or the watcher seeing the write API's own write): then the
    /// serving snapshot and its warm caches stay.
    fn activate(&self, snapshot: Snapshot) -> Arc<str> {
        let revision = snapshot.revision.clone();
        let metrics = &self.inner.metrics;
        if self.inner.config.bundle.is_none() && self.inner.current.load().revision == revision {
            metrics.reload_succeeded(&revision);
            return revision;
        }
        self.inner.current.store(Arc::new(snapshot));
        metrics.reload_succeeded(&revision);
        self.inner.revisions.send_replace(revision.clone());
        revision
    }

    /// Rebuilds the snapshot from the files named by the config and swaps it in. On any
    /// error the current snapshot keeps serving (keep-last-good).
    pub async fn reload(&self) -> Result<Arc<str>, Vec<String>> {
        let _guard = self.inner.swap_lock.lock().await;
        let bundle = self.inner.bundle.lock().ok().and_then(|b| b.clone());
        if self.inner.config.bundle.is_some() && bundle.is_none() {
            return Err(vec!["no bundle has been activated yet".to_string()]);
        }
        let stored = self.inner.stored_data.lock().ok().and_then(|d| d.clone());
        if self.inner.shared.is_some() && stored.is_none() {
            return Err(vec![
                "no data document has been read from the store yet".to_string(),
            ]);
        }
        match self.build(bundle, stored.map(|t| t.to_string())).await {
            Ok(snapshot) => {
                let revision = self.activate(snapshot);
                tracing::info!(revision = %revision, "reloaded");
                Ok(revision)
            }
            Err(errors) => {
                self.inner.metrics.reload_failed();
                for e in &errors {
                    tracing::error!(error = %e, "reload refused; previous revision keeps serving");
                }
                Err(errors)
            }
        }
    }

    /// Builds a snapshot from a new bundle and swaps it in; the previous revision keeps
    /// serving when it is invalid.
    pub async fn install_bundle(&self, contents: BundleContents) -> Result<Arc<str>, Vec<String>> {
        let _guard = self.inner.swap_lock.lock().await;
        let contents = Arc::new(contents);
        match self.build(Some(contents.clone()), None).await {
            Ok(snapshot) => {
                let revision = self.activate(snapshot);
                if let Ok(mut slot) = self.inner.bundle.lock() {
                    *slot = Some(contents);
                }
                self.inner.ready.store(true, Ordering::Release);
                Ok(revision)
            }
            Err(errors) => {
                self.inner.metrics.reload_failed();
                Err(errors)
            }
        }
    }

    /// Starts a change of the data document (the admin write API). `None` when the data
    /// comes from a bundle server, which is where it must be changed.
    pub async fn begin_data_change(&self) -> Option<DataChange<'_>> {
        if self.inner.config.bundle.is_some() {
            return None;
        }
        Some(DataChange {
            store: self,
            _guard: self.inner.swap_lock.lock().await,
        })
    }
}

impl DataChange<'_> {
    /// Validates a proposed data document like a reload would, without activating it.
    pub async fn validate(&self, text: String) -> Result<Snapshot, Vec<String>> {
        self.store.build(None, Some(text)).await
    }

    /// Swaps in a snapshot `validate` returned, once its document is safely on disk.
    pub fn activate(self, snapshot: Snapshot) -> Arc<str> {
        self.store.activate(snapshot)
    }

    /// Swaps in a snapshot `validate` returned, once its document is committed to the
    /// store as `generation`.
    pub fn activate_stored(self, snapshot: Snapshot, generation: i64, text: String) -> Arc<str> {
        self.store.activate_stored(snapshot, generation, text)
    }
}
