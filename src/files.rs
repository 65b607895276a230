//! Problems in the operator's files — the config, the route profile, the data document —
//! each reported with the file it is in (and, in the message, where in it), collected and
//! shown together.

use std::path::PathBuf;

/// One problem in one file.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {message}", file.display())]
pub struct FileError {
    pub file: PathBuf,
    pub message: String,
}
