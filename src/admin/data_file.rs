//! Changes of the data document through the admin write API: read from disk, edited,
//! validated like a reload, written atomically and activated, all while the snapshot store
//! holds its swap lock (no reload slips in between) and the process holds an exclusive lock
//! on `<data>.lock` beside the file (no other replica's write does). The document is read
//! again under those locks, so a change always applies to what the last writer — this
//! replica or another — left, and no acknowledged write is undone by a later one.

use std::sync::Arc;

use crate::directory::Directory;
use crate::snapshot::Snapshot;
use crate::snapshot::store::SnapshotStore;

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
    /// `If-Match` named another revision than the document now holds.
    #[error("the data document changed since revision {expected}; it is now {current}")]
    Stale { expected: String, current: String },
}

/// Applies one change: `change` edits the data document read from disk; the result is
/// validated like a reload, written atomically (the previous file kept as `<data>.bak`)
/// and activated. A change that fails at any step leaves file and revision as they were.
/// Returns what `change` returned, and the snapshots before and after.
///
/// `if_match`: the revision the caller read; when the document now holds another, nothing
/// changes ([`DataChangeError::Stale`]).
pub async fn change_data<T>(
    store: &SnapshotStore,
    if_match: Option<&str>,
    change: impl FnOnce(&mut serde_json::Value, &Directory) -> Result<T, DataChangeError>,
) -> Result<(T, Arc<Snapshot>, Arc<Snapshot>), DataChangeError> {
    let Some(guard) = store.begin_data_change().await else {
        return Err(DataChangeError::Conflict(
            "the data document comes from the bundle server; change it there".into(),
        ));
    };
    let path = store.config().policy.data.clone();
    let lock_path = lock_path(&path);
    let _file_lock = tokio::task::spawn_blocking(move || lock_exclusively(&lock_path))
        .await
        .map_err(|e| DataChangeError::Storage(format!("lock task failed: {e}")))?
        .map_err(DataChangeError::Storage)?;
    let old_text = std::fs::read_to_string(&path)
        .map_err(|e| DataChangeError::Storage(format!("cannot read {}: {e}", path.display())))?;
    // What the file holds now, which another replica may have changed since this one last
    // reloaded: the change applies to it, and its revision is what If-Match is held to.
    let on_disk = guard.validate(old_text.clone()).await.map_err(|errors| {
        DataChangeError::Conflict(format!(
            "{} is not valid ({}); fix the file before using the write API",
            path.display(),
            errors.join("; ")
        ))
    })?;
    if let Some(expected) = if_match
        && expected != &*on_disk.revision
    {
        return Err(DataChangeError::Stale {
            expected: expected.to_string(),
            current: on_disk.revision.to_string(),
        });
    }
    let mut doc: serde_json::Value = serde_json::from_str(&old_text).map_err(|e| {
        DataChangeError::Conflict(format!(
            "{} is not valid JSON ({e}); fix the file before using the write API",
            path.display()
        ))
    })?;
    let before = Arc::new(on_disk);
    let outcome = change(&mut doc, &before.directory)?;
    if let serde_json::Value::Object(map) = &mut doc {
        map.insert(
            "generation".into(),
            serde_json::Value::from(before.directory.generation + 1),
        );
    }
    let mut new_text =
        serde_json::to_string_pretty(&doc).map_err(|e| DataChangeError::Storage(e.to_string()))?;
    new_text.push('\n');
    let snapshot = guard
        .validate(new_text.clone())
        .await
        .map_err(DataChangeError::Invalid)?;
    tokio::task::spawn_blocking(move || write_atomically(&path, &old_text, &new_text))
        .await
        .map_err(|e| DataChangeError::Storage(format!("write task failed: {e}")))?
        .map_err(DataChangeError::Storage)?;
    let revision = guard.activate(snapshot);
    tracing::info!(revision = %revision, "data document changed through the admin API");
    Ok((outcome, before, store.current()))
}

/// `<data>.lock`, beside the data document.
fn lock_path(data: &std::path::Path) -> std::path::PathBuf {
    let mut name = data
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "data.json".into());
    name.push(".lock");
    data.with_file_name(name)
}

/// Takes the exclusive lock every replica's writer takes (an advisory `flock`, released
/// when the file is closed — also when the process dies).
fn lock_exclusively(path: &std::path::Path) -> Result<std::fs::File, String> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    file.lock()
        .map_err(|e| format!("cannot lock {}: {e}", path.display()))?;
    Ok(file)
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
