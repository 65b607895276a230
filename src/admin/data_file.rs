//! Changes of the data document through the admin write API: read from disk, edited,
//! validated like a reload, written atomically and activated, all while the snapshot store
//! holds its swap lock (no reload slips in between) and the process holds an exclusive lock
//! on `<data>.lock` beside the file (no other replica's write does). The document is read
//! again under those locks, so a change always applies to what the last writer — this
//! replica or another — left, and no acknowledged write is undone by a later one.

use std::sync::Arc;

use crate::directory::Directory;
use crate::shared::DataTransaction;
use crate::snapshot::Snapshot;
use crate::snapshot::store::{DataChange, SnapshotStore};

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
    /// The shared store cannot be reached: nothing changed, try again.
    #[error("{0}")]
    Unavailable(String),
    /// `If-Match` named another revision than the document now holds.
    #[error("the data document changed since revision {expected}; it is now {current}")]
    Stale { expected: String, current: String },
}

/// Where the document being changed came from, held exclusively until written.
enum Source {
    /// The data file, with the `<data>.lock` every replica's writer takes.
    File {
        path: std::path::PathBuf,
        _lock: std::fs::File,
        text: String,
    },
    /// The shared store, in a transaction holding the document's row lock.
    Store(DataTransaction),
}

impl Source {
    async fn open(store: &SnapshotStore) -> Result<Source, DataChangeError> {
        if let Some(shared) = store.shared() {
            return shared
                .begin_data_change()
                .await
                .map(Source::Store)
                .map_err(store_error);
        }
        let path = store.config().policy.data.clone();
        let lock_path = lock_path(&path);
        let lock = tokio::task::spawn_blocking(move || lock_exclusively(&lock_path))
            .await
            .map_err(|e| DataChangeError::Storage(format!("lock task failed: {e}")))?
            .map_err(DataChangeError::Storage)?;
        let text = std::fs::read_to_string(&path).map_err(|e| {
            DataChangeError::Storage(format!("cannot read {}: {e}", path.display()))
        })?;
        Ok(Source::File {
            path,
            _lock: lock,
            text,
        })
    }

    fn text(&self) -> &str {
        match self {
            Source::File { text, .. } => text,
            Source::Store(tx) => tx.document().1,
        }
    }

    /// Whether the serving revision was built from the document read here. With a store,
    /// a replica behind (or one that cannot build the newest generation) must not put its
    /// older text back: that would undo changes other replicas enforce.
    fn serves_here(&self, store: &SnapshotStore) -> bool {
        match self {
            Source::File { .. } => true,
            Source::Store(tx) => tx.document().0 == store.stored_generation(),
        }
    }

    fn name(&self) -> String {
        match self {
            Source::File { path, .. } => path.display().to_string(),
            Source::Store(_) => "the stored data document".to_string(),
        }
    }

    /// Writes `new` in place of the document read; returns the store's new generation.
    async fn write(self, new: String) -> Result<Option<i64>, DataChangeError> {
        match self {
            Source::File {
                path, _lock, text, ..
            } => {
                tokio::task::spawn_blocking(move || write_atomically(&path, &text, &new))
                    .await
                    .map_err(|e| DataChangeError::Storage(format!("write task failed: {e}")))?
                    .map_err(DataChangeError::Storage)?;
                drop(_lock);
                Ok(None)
            }
            Source::Store(tx) => tx.commit(&new).await.map(Some).map_err(store_error),
        }
    }

    async fn abandon(self) {
        if let Source::Store(tx) = self {
            tx.rollback().await;
        }
    }
}

/// Applies one change: `change` edits the data document as the file or the store holds
/// it; the result is validated like a reload, written (a file atomically, the previous
/// text kept as `<data>.bak`; the store in a transaction) and activated. A change that
/// fails at any step leaves document and revision as they were. Returns what `change`
/// returned, and the snapshots before and after.
///
/// `if_match`: the revision the caller read; when the document now holds another, nothing
/// changes ([`DataChangeError::Stale`]).
///
/// `narrowing`: the change only takes access away (revoke, remove). When the document has
/// become invalid (a hand edit gone wrong), such a change still happens — an emergency
/// revocation must not wait for someone to fix an unrelated typo: it applies to the
/// serving revision's document, which replaces the invalid one (kept as `<data>.bak`, or
/// in the store's `previous_document`), so that every replica enforces it.
pub async fn change_data<T>(
    store: &SnapshotStore,
    if_match: Option<&str>,
    narrowing: bool,
    change: impl Fn(&mut serde_json::Value, &Directory) -> Result<T, DataChangeError>,
) -> Result<(T, Arc<Snapshot>, Arc<Snapshot>), DataChangeError> {
    let Some(guard) = store.begin_data_change().await else {
        return Err(DataChangeError::Conflict(
            "the data document comes from the bundle server; change it there".into(),
        ));
    };
    let source = Source::open(store).await?;
    let result = edit(store, &guard, &source, if_match, narrowing, &change).await;
    let (outcome, before, new_text, snapshot) = match result {
        Ok(edited) => edited,
        Err(e) => {
            source.abandon().await;
            return Err(e);
        }
    };
    let generation = source.write(new_text.clone()).await?;
    let revision = match generation {
        Some(generation) => guard.activate_stored(snapshot, generation, new_text),
        None => guard.activate(snapshot),
    };
    tracing::info!(revision = %revision, "data document changed through the admin API");
    Ok((outcome, before, store.current()))
}

type Edited<T> = (T, Arc<Snapshot>, String, Snapshot);

/// The change applied and validated, not yet written.
async fn edit<T>(
    store: &SnapshotStore,
    guard: &DataChange<'_>,
    source: &Source,
    if_match: Option<&str>,
    narrowing: bool,
    change: &impl Fn(&mut serde_json::Value, &Directory) -> Result<T, DataChangeError>,
) -> Result<Edited<T>, DataChangeError> {
    // What the source holds now, which another replica may have changed since this one
    // last read it: the change applies to it, and its revision is what If-Match is held to.
    let base_text = match guard.validate(source.text().to_string()).await {
        Ok(snapshot) => Ok((Arc::new(snapshot), source.text().to_string())),
        Err(errors) if narrowing && source.serves_here(store) => {
            let serving = store.current();
            tracing::warn!(
                errors = %errors.join("; "),
                "{} is invalid; the narrowing change applies to the serving revision, which replaces it",
                source.name()
            );
            let text = serving.data_text.to_string();
            Ok((serving, text))
        }
        Err(errors) if narrowing => Err(DataChangeError::Conflict(format!(
            "{} is not valid here ({}) and is not the document this replica serves: putting the \
             serving one back could undo changes other replicas enforce; fix the stored document",
            source.name(),
            errors.join("; ")
        ))),
        Err(errors) => Err(DataChangeError::Conflict(format!(
            "{} is not valid ({}); fix it before using the write API (revoke and remove still work)",
            source.name(),
            errors.join("; ")
        ))),
    };
    let (before, base_text) = base_text?;
    if let Some(expected) = if_match
        && expected != &*before.revision
    {
        return Err(DataChangeError::Stale {
            expected: expected.to_string(),
            current: before.revision.to_string(),
        });
    }
    let mut doc: serde_json::Value = serde_json::from_str(&base_text).map_err(|e| {
        DataChangeError::Conflict(format!("the data document is not valid JSON ({e})"))
    })?;
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
    Ok((outcome, before, new_text, snapshot))
}

fn store_error(e: crate::shared::StoreError) -> DataChangeError {
    match e {
        crate::shared::StoreError::Unavailable { .. } => {
            DataChangeError::Unavailable(e.to_string())
        }
        other => DataChangeError::Storage(other.to_string()),
    }
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
