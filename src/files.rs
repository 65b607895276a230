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

/// Whether `name` can name something the operator or the wiki holds: not empty, no white
/// space around it, no control characters.
pub fn is_printable_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(char::is_whitespace)
        && !name.ends_with(char::is_whitespace)
        && !name.chars().any(char::is_control)
}
