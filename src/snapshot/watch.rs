//! What triggers a reload besides SIGHUP and `POST /reload`: a watch on the files a snapshot
//! is built from. Changes are debounced (editors and ConfigMap updates write in several
//! steps) and then handed to `SnapshotStore::reload`, which keeps the last good snapshot when the
//! new files are invalid.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify_debouncer_full::notify::{EventKind, RecursiveMode};
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};

use super::store::SnapshotStore;
use crate::config::Config;

/// How long the files must stay quiet before a reload starts.
const DEBOUNCE: Duration = Duration::from_millis(300);

/// Keeps the watch alive; dropping it stops watching.
pub struct FileWatch {
    _debouncer: Debouncer<notify_debouncer_full::notify::RecommendedWatcher, RecommendedCache>,
}

/// The files and folders a snapshot is read from.
fn watched(config: &Config) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut files = vec![config.routes.profile.clone(), config.policy.data.clone()];
    if let Some(jwks) = &config.identity.jwks_file {
        files.push(jwks.clone());
    }
    if let Some(secret) = &config.identity.hs256_secret_file {
        files.push(secret.clone());
    }
    (files, vec![config.policy.dir.clone()])
}

fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Starts watching. Files are watched through their folders, because an editor's save or a
/// Kubernetes ConfigMap update replaces the file rather than writing into it.
pub fn watch(store: SnapshotStore) -> notify_debouncer_full::notify::Result<FileWatch> {
    let (files, dirs) = watched(store.config());
    let files: BTreeSet<PathBuf> = files.iter().map(|f| absolute(f)).collect();
    let dirs: Vec<PathBuf> = dirs.iter().map(|d| absolute(d)).collect();
    let runtime = tokio::runtime::Handle::current();
    let relevant_files = files.clone();
    let relevant_dirs = dirs.clone();
    let mut debouncer = new_debouncer(DEBOUNCE, None, move |result: DebounceEventResult| {
        let Ok(events) = result else { return };
        // inotify also reports opening and reading a file; a reload reads every watched file,
        // so reacting to those would reload for ever.
        let relevant = events
            .iter()
            .filter(|e| !matches!(e.kind, EventKind::Access(_) | EventKind::Other))
            .flat_map(|e| e.paths.iter())
            .any(|p| {
                relevant_files.contains(p)
                || relevant_dirs.iter().any(|d| p.starts_with(d))
                // A folder swapped as a whole (ConfigMap `..data` symlink flip).
                || p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(".."))
            });
        if relevant {
            let store = store.clone();
            runtime.spawn(async move {
                tracing::info!("watched files changed; reloading");
                let _ = store.reload().await;
            });
        }
    })?;
    let mut parents: BTreeSet<PathBuf> = files
        .iter()
        .filter_map(|f| f.parent().map(Path::to_path_buf))
        .collect();
    for dir in &dirs {
        debouncer.watch(dir, RecursiveMode::Recursive)?;
        parents.remove(dir);
    }
    for parent in parents {
        debouncer.watch(&parent, RecursiveMode::NonRecursive)?;
    }
    Ok(FileWatch {
        _debouncer: debouncer,
    })
}
