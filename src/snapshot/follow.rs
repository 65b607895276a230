//! Follows the data document in the shared store (`[store]`): every generation announced
//! or re-read that this replica does not serve yet is read and activated through the same
//! keep-last-good path as a reload. An empty store is seeded from the data file once.

use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;

use super::store::{SnapshotStore, WeakSnapshotStore};
use crate::shared::{SharedStore, Signal, StoreError};

/// Starts following; the task ends with the snapshot store.
pub fn start(store: &SnapshotStore) {
    let Some(shared) = store.shared().cloned() else {
        return;
    };
    let signals = shared.subscribe();
    tokio::spawn(follow(store.downgrade(), shared, signals));
}

async fn follow(
    store: WeakSnapshotStore,
    shared: Arc<SharedStore>,
    mut signals: tokio::sync::broadcast::Receiver<Signal>,
) {
    loop {
        let signal = match signals.recv().await {
            Ok(s) => s,
            // Missed some: read the document as if reconnected.
            Err(RecvError::Lagged(_)) => Signal::Connected,
            Err(RecvError::Closed) => return,
        };
        let Some(store) = store.upgrade() else {
            return;
        };
        match signal {
            Signal::Data(generation) if generation == store.stored_generation() => {}
            Signal::Data(_) | Signal::Connected => catch_up(&store, &shared).await,
            Signal::SessionEnded(_) => {}
        }
    }
}

/// Reads the stored document and activates it when it is not the one serving (seeding an
/// empty store first).
async fn catch_up(store: &SnapshotStore, shared: &SharedStore) {
    let mut synced = store.sync_stored_data(shared).await;
    if let Err(StoreError::Empty { .. }) = synced {
        synced = match seed(store, shared).await {
            Ok(()) => store.sync_stored_data(shared).await,
            Err(e) => Err(e),
        };
    }
    match synced {
        Ok(Some(revision)) => {
            tracing::info!(revision = %revision, generation = store.stored_generation(), "data document changed in the store");
        }
        Ok(None) => {}
        Err(e) => {
            tracing::error!(error = %e, "cannot read the data document from the store; the last revision read keeps serving");
        }
    }
}

/// Puts the data file into an empty store (the first replica to start does; the others
/// find it there), after validating it like a reload would.
async fn seed(store: &SnapshotStore, shared: &SharedStore) -> Result<(), StoreError> {
    let path = store.config().policy.data.clone();
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let check = store.clone();
            match check.validate_data(text.clone()).await {
                Ok(()) => {
                    if shared.seed_data(&text).await? {
                        tracing::info!(file = %path.display(), store = %shared.display(), "seeded the empty store with the data file");
                    }
                }
                Err(errors) => {
                    for e in errors {
                        tracing::error!(error = %e, "the data file cannot seed the empty store");
                    }
                }
            }
        }
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "the store holds no data document and the data file cannot be read");
        }
    }
    Ok(())
}
