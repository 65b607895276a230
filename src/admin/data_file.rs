//! Changes of the data document through the admin write API: read from disk, edited,
//! validated like a reload, written atomically and activated, all while the snapshot store
//! holds its swap lock, so no reload can slip in between.

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
}

/// Applies one change: `change` edits the data document read from disk; the result is
/// validated like a reload, written atomically (the previous file kept as `<data>.bak`)
/// and activated. A change that fails at any step leaves file and revision as they were.
/// Returns what `change` returned, and the snapshots before and after.
pub async fn change_data<T>(
    store: &SnapshotStore,
    change: impl FnOnce(&mut serde_json::Value, &Directory) -> Result<T, DataChangeError>,
) -> Result<(T, Arc<Snapshot>, Arc<Snapshot>), DataChangeError> {
    let Some(guard) = store.begin_data_change().await else {
        return Err(DataChangeError::Conflict(
            "the data document comes from the bundle server; change it there".into(),
        ));
    };
    let path = store.config().policy.data.clone();
    let old_text = std::fs::read_to_string(&path)
        .map_err(|e| DataChangeError::Storage(format!("cannot read {}: {e}", path.display())))?;
    let mut doc: serde_json::Value = serde_json::from_str(&old_text).map_err(|e| {
        DataChangeError::Conflict(format!(
            "{} is not valid JSON ({e}); fix the file before using the write API",
            path.display()
        ))
    })?;
    let before = store.current();
    let outcome = change(&mut doc, &before.directory)?;
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
