//! Everything reloadable — route profile, compiled policy, data, keys — and the caches whose
//! entries are only valid for them, built together and swapped as one value. A request loads
//! the snapshot once and every stage sees the same revision; a new revision starts with
//! empty token and decision caches, so no cache can serve an answer of an older revision.

pub mod bundle;
pub mod follow;
pub mod store;
pub mod watch;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::directory::{DataError, Directory};
use crate::identity::{KeyError, RemoteKeys, Verifier};
use crate::policy::{Decision, Policy, PolicyError, read_policy_dir};
use crate::routes::{ProfileError, RouteProfile};

/// The policy part of a snapshot, taken from a bundle instead of `policy.dir`/`policy.data`.
#[derive(Debug, Clone)]
pub struct BundleContents {
    pub revision: Option<String>,
    /// Rego files, named by their path inside the bundle.
    pub files: Vec<(PathBuf, String)>,
    /// The merged data document, as JSON text.
    pub data: String,
}

/// One problem found while building a snapshot.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoadError {
    /// The route profile or the data document.
    #[error("{0}")]
    File(#[from] crate::files::FileError),
    #[error("{0}")]
    Policy(#[from] PolicyError),
    #[error("{0}")]
    Key(#[from] KeyError),
}

/// A cached policy answer and how long it may live (never past the next grant expiry).
#[derive(Debug, Clone)]
pub struct Timed<T> {
    pub value: T,
    pub ttl: Duration,
}

struct OwnTtl;

impl<T> moka::Expiry<Box<[u8]>, Timed<T>> for OwnTtl {
    fn expire_after_create(
        &self,
        _key: &Box<[u8]>,
        value: &Timed<T>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// Spaces whose listing items a guest keeps.
pub type SpaceSet = Arc<std::collections::HashSet<String>>;

/// One revision of everything a decision depends on.
pub struct Snapshot {
    /// Short content hash of the profile, policies, data and keys.
    pub revision: Arc<str>,
    pub routes: RouteProfile,
    pub policy: Policy,
    pub directory: Directory,
    /// The data document this revision was built from: a narrowing admin write applies to
    /// it when the source (file or store) has since become invalid.
    pub data_text: Arc<str>,
    pub verifier: Verifier,
    pub decisions:
        moka::sync::Cache<Box<[u8]>, Timed<Arc<Decision>>, foldhash::quality::RandomState>,
    pub viewable: moka::sync::Cache<Box<[u8]>, Timed<SpaceSet>, foldhash::quality::RandomState>,
    pub decision_ttl: Duration,
    pub listing_query: String,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("revision", &self.revision)
            .finish_non_exhaustive()
    }
}

impl Snapshot {
    /// Reads and validates every reloadable input named by `config`, collecting all errors.
    pub fn build(config: &Config) -> Result<Snapshot, Vec<LoadError>> {
        Self::build_with(config, None, None, None)
    }

    /// As [`Snapshot::build`], with keys fetched from the identity provider (which outlive
    /// snapshots: a reload does not refetch them), policies and data from a bundle, or a
    /// data document proposed by the admin write API instead of the file on disk.
    pub fn build_with(
        config: &Config,
        remote_keys: Option<Arc<RemoteKeys>>,
        bundle: Option<&BundleContents>,
        proposed_data: Option<&str>,
    ) -> Result<Snapshot, Vec<LoadError>> {
        let mut errors: Vec<LoadError> = Vec::new();
        let mut hasher = Vec::<u8>::new();

        let profile_text = std::fs::read_to_string(&config.routes.profile);
        let routes = match &profile_text {
            Ok(text) => {
                hasher.extend_from_slice(text.as_bytes());
                RouteProfile::parse(&config.routes.profile, text)
                    .map_err(|es| errors.extend(es.into_iter().map(LoadError::from)))
                    .ok()
            }
            Err(e) => {
                errors.push(
                    ProfileError {
                        file: config.routes.profile.clone(),
                        message: format!("cannot read route profile: {e}"),
                    }
                    .into(),
                );
                None
            }
        };

        let data_text = match (bundle, proposed_data) {
            (Some(b), _) => Ok(b.data.clone()),
            (None, Some(text)) => Ok(text.to_string()),
            (None, None) => std::fs::read_to_string(&config.policy.data),
        };
        let directory = match &data_text {
            Ok(text) => {
                hasher.extend_from_slice(text.as_bytes());
                Directory::parse_with(
                    &config.policy.data,
                    text,
                    routes
                        .as_ref()
                        .map_or_else(Default::default, |r| r.user_names),
                    config.identity.unknown_users,
                )
                .map_err(|es| errors.extend(es.into_iter().map(LoadError::from)))
                .ok()
            }
            Err(e) => {
                errors.push(
                    DataError {
                        file: config.policy.data.clone(),
                        message: format!("cannot read data document: {e}"),
                    }
                    .into(),
                );
                None
            }
        };

        let files = match bundle {
            Some(b) => Some(b.files.clone()),
            None => read_policy_dir(&config.policy.dir)
                .map_err(|e| errors.push(e.into()))
                .ok(),
        };
        let policy = match (&files, &directory) {
            (Some(files), Some(directory)) => {
                for (path, text) in files {
                    hasher.extend_from_slice(path.to_string_lossy().as_bytes());
                    hasher.extend_from_slice(text.as_bytes());
                }
                Policy::compile(
                    files.clone(),
                    &directory.rego_data,
                    &config.policy.query,
                    config.policy.eval_timeout,
                )
                .map_err(|e| errors.push(e.into()))
                .ok()
            }
            _ => None,
        };

        if let Some(jwks) = &config.identity.jwks_file
            && let Ok(text) = std::fs::read(jwks)
        {
            hasher.extend_from_slice(&text);
        }
        let verifier = Verifier::load(&config.identity, remote_keys)
            .map_err(|es| errors.extend(es.into_iter().map(LoadError::from)))
            .ok();

        match (routes, directory, policy, verifier, data_text) {
            (Some(routes), Some(directory), Some(policy), Some(verifier), Ok(data_text))
                if errors.is_empty() =>
            {
                let digest = crate::identity::sha256(&hasher);
                let revision: String = match bundle.and_then(|b| b.revision.clone()) {
                    Some(manifest_revision) => manifest_revision,
                    None => digest[..6].iter().map(|b| format!("{b:02x}")).collect(),
                };
                Ok(Snapshot {
                    revision: Arc::from(revision),
                    routes,
                    policy,
                    directory,
                    data_text: Arc::from(data_text),
                    verifier,
                    decisions: moka::sync::Cache::builder()
                        .max_capacity(config.policy.decision_cache_max_entries)
                        .expire_after(OwnTtl)
                        .build_with_hasher(foldhash::quality::RandomState::default()),
                    viewable: moka::sync::Cache::builder()
                        .max_capacity(config.policy.decision_cache_max_entries / 10 + 1)
                        .expire_after(OwnTtl)
                        .build_with_hasher(foldhash::quality::RandomState::default()),
                    decision_ttl: config.policy.decision_cache_ttl,
                    listing_query: config.policy.listing_query.clone(),
                })
            }
            _ => Err(errors),
        }
    }
}
