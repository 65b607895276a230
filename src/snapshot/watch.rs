//! What triggers a reload besides SIGHUP and `POST /reload`: a watch on the files a snapshot
//! is built from. Changes are debounced (editors and ConfigMap updates write in several
//! steps) and then handed to `SnapshotStore::reload`, which keeps the last good snapshot
//! when the new files are invalid.
//!
//! Files are watched through the folders they are configured in — never through the folders
//! their symbolic links resolve to: a Kubernetes ConfigMap mounts `data.json` as a link to
//! `..data/data.json`, and kubelet swaps `..data` to a new timestamped folder and deletes
//! the old one on every update, which would end a watch armed on it. Beside the events, a
//! fingerprint of every watched file (what its links resolve to, inode, size, modification
//! time) is checked every few seconds, so a change the events missed is seen all the same.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify_debouncer_full::notify::{EventKind, RecursiveMode};
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};

use super::store::SnapshotStore;
use crate::config::Config;

/// How long the files must stay quiet before a reload starts.
const DEBOUNCE: Duration = Duration::from_millis(300);

/// How often the files' fingerprint is checked, whatever the events said.
pub const FINGERPRINT_INTERVAL: Duration = Duration::from_secs(5);

/// Keeps the watch alive; dropping it stops watching.
pub struct FileWatch {
    _debouncer: Debouncer<notify_debouncer_full::notify::RecommendedWatcher, RecommendedCache>,
    fingerprints: tokio::task::JoinHandle<()>,
}

impl Drop for FileWatch {
    fn drop(&mut self) {
        self.fingerprints.abort();
    }
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

/// The path as configured, made absolute without resolving links (see the module doc).
fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

/// What a watched path is now: where its links lead and the file they lead to (device,
/// inode, size, modification time); for a folder, the same for everything below it.
fn fingerprint(files: &BTreeSet<PathBuf>, dirs: &[PathBuf]) -> Vec<String> {
    fn one(path: &Path, out: &mut Vec<String>) {
        use std::os::unix::fs::MetadataExt as _;
        let mut link = path.to_path_buf();
        let mut hops = String::new();
        for _ in 0..8 {
            match std::fs::read_link(&link) {
                Ok(target) => {
                    hops.push_str(&target.to_string_lossy());
                    hops.push('>');
                    link = link.parent().map_or(target.clone(), |p| p.join(&target));
                }
                Err(_) => break,
            }
        }
        // `..data` in the folder: kubelet's swap changes it even when the file's own link
        // text stays `..data/data.json`.
        if let Some(parent) = path.parent()
            && let Ok(target) = std::fs::read_link(parent.join("..data"))
        {
            hops.push_str(&target.to_string_lossy());
        }
        let meta = std::fs::metadata(path)
            .map(|m| {
                format!(
                    "{}:{}:{}:{}",
                    m.dev(),
                    m.ino(),
                    m.len(),
                    m.mtime_nsec() + m.mtime() * 1_000_000_000
                )
            })
            .unwrap_or_else(|e| e.kind().to_string());
        out.push(format!("{}={hops}={meta}", path.display()));
    }
    fn walk(dir: &Path, out: &mut Vec<String>, depth: usize) {
        one(dir, out);
        if depth > 4 {
            return;
        }
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for p in paths {
            if p.is_dir() {
                walk(&p, out, depth + 1);
            } else {
                one(&p, out);
            }
        }
    }
    let mut out = Vec::new();
    for f in files {
        one(f, &mut out);
    }
    for d in dirs {
        walk(d, &mut out, 0);
    }
    out
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
    let (relevant_files_check, relevant_dirs_check) = (files.clone(), dirs.clone());
    let store_check = store.clone();
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
    let fingerprints = tokio::spawn(async move {
        let (files, dirs) = (relevant_files_check, relevant_dirs_check);
        let mut last = fingerprint(&files, &dirs);
        loop {
            tokio::time::sleep(FINGERPRINT_INTERVAL).await;
            let (f, d) = (files.clone(), dirs.clone());
            let Ok(now) = tokio::task::spawn_blocking(move || fingerprint(&f, &d)).await else {
                continue;
            };
            if now != last {
                tracing::info!("watched files changed (fingerprint); reloading");
                // A reload that fails keeps the last good snapshot; the files are looked at
                // again at the next tick only if they change again.
                let _ = store_check.reload().await;
                last = now;
            }
        }
    });
    Ok(FileWatch {
        _debouncer: debouncer,
        fingerprints,
    })
}
