//! What the operations share: their error, their progress reports, what a snapshot made is
//! and the names it may be stored under.

use std::sync::Arc;

use jiff::Timestamp;
use serde::Serialize;

use crate::engine::archive::{Archived, CreateError};
use crate::engine::name;
use crate::engine::restore::RestoreError;
use crate::source::SourceError;
use crate::storage::{ObjectInfo, StorageError};

/// Reports progress: bytes done so far.
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

/// A progress reporter that reports nothing.
pub fn no_progress() -> Progress {
    Arc::new(|_| {})
}

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error(transparent)]
    Create(#[from] CreateError),
    #[error(transparent)]
    Restore(#[from] RestoreError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Name(#[from] name::NameError),
    #[error(transparent)]
    Qdrant(#[from] crate::qdrant_api::ApiError),
    #[error(transparent)]
    Crypt(#[from] crate::crypt::CryptError),
    #[error("{0}")]
    Usage(String),
}

/// A snapshot that was created.
#[derive(Debug, Clone, Serialize)]
pub struct Created {
    /// Archive file name.
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collection: Option<String>,
    pub node: String,
    pub created_at: Timestamp,
    /// The archive in storage (key, location, size, checksum).
    pub archive: ObjectInfo,
    /// What went into it, when read from the storage directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<Archived>,
    /// The snapshot Qdrant made, when made through its API (deleted from its disk since).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qdrant_snapshot: Option<String>,
    /// Whether it is stored encrypted (an age file).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub encrypted: bool,
}

/// The keys an archive of `collection` taken on `node` at `at` may be stored under: its
/// name, then the same with a suffix, for a second archive of the same second.
pub fn archive_naming(
    collection: Option<&str>,
    node: &str,
    at: Timestamp,
) -> Result<impl Fn(u32) -> Option<String> + Send + Sync + use<>, OpsError> {
    let stem = name::archive_stem(collection, node, at);
    name::validate("snapshot", &name::archive_name(&stem, 99))?;
    let collection = collection.map(str::to_owned);
    Ok(move |attempt: u32| {
        (attempt < 1000)
            .then(|| name::key(collection.as_deref(), &name::archive_name(&stem, attempt)))
    })
}
