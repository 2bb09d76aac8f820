//! Why a restore was refused or failed.

use std::io;
use std::path::{Path, PathBuf};

use crate::engine::manifest::Kind;
use crate::engine::manifest::MANIFEST_ENTRY;
use crate::engine::name::NameError;
use crate::engine::untar::TarError;
use crate::engine::workspace::WorkspaceError;

/// Why a restore was refused or failed. Every error before "apply" leaves the target as it was.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Workspace(#[from] WorkspaceError),
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(transparent)]
    Tar(#[from] TarError),
    #[error(transparent)]
    Crypt(#[from] crate::crypt::CryptError),
    #[error("the archive does not start with {MANIFEST_ENTRY}: it is not a snapshot archive")]
    NoManifest,
    #[error(
        "the archive is not a snapshot: it does not start with {MANIFEST_ENTRY} (ours), nor does \
         it hold a Qdrant snapshot (a collection's config.json and shards, a shard's segments/, \
         or a full snapshot's config.json)"
    )]
    NotASnapshot,
    #[error("refused: {what} of the archive is {why}; nothing was changed")]
    Qdrant { what: String, why: String },
    #[error("--shard goes with a Qdrant shard snapshot; this archive is a {found} snapshot")]
    NotAShard { found: &'static str },
    #[error("the archive's {MANIFEST_ENTRY} is not valid")]
    BadManifest { source: serde_json::Error },
    #[error(
        "the archive has format version {found}; this snapshot-operator reads versions 1 and 2: \
         use a newer snapshot-operator"
    )]
    UnknownVersion { found: u32 },
    #[error("the archive is a {kind:?} snapshot but its manifest says otherwise: {detail}")]
    InconsistentManifest { kind: Kind, detail: String },
    #[error("the archive holds collection {found:?}, not {wanted:?}")]
    WrongCollection { wanted: String, found: String },
    #[error(
        "collection {wanted:?} is not in this full-storage snapshot; it holds: {}",
        .available.join(", ")
    )]
    NotInArchive {
        wanted: String,
        available: Vec<String>,
    },
    #[error(
        "a full-storage restore needs a full-storage snapshot; this one holds collection {collection:?}"
    )]
    NotFull { collection: String },
    #[error("refused: archive entry {path:?} is {why}; nothing was changed")]
    Hostile { path: String, why: String },
    #[error(
        "refused: the archive holds more than {max} entries (--max-entries); nothing was changed"
    )]
    TooManyEntries { max: u64 },
    #[error(
        "refused: the archive holds more than {max} bytes (--max-bytes bounds both the bytes \
         read, headers and padding included, and the size of the files restored, holes \
         included); nothing was changed"
    )]
    TooLarge { max: u64 },
    #[error(
        "refused: the archive's sparse files have more than {max} bytes of holes in all \
         (--max-hole-bytes); nothing was changed"
    )]
    TooManyHoles { max: u64 },
    #[error(
        "refused: the archive's files would take more than {max} bytes of disk ({bound}); \
         nothing was changed"
    )]
    TooMuchDisk { max: u64, bound: &'static str },
    #[error("the archive holds no data for collection {collection:?}")]
    Empty { collection: String },
    #[error(
        "checksum mismatch: the archive's SHA-256 is {actual}, expected {expected}; \
         nothing was changed"
    )]
    Checksum { expected: String, actual: String },
    #[error("refused: {path} is {why}; nothing was changed")]
    Target { path: PathBuf, why: String },
    #[error("failed to open the storage directory {path}")]
    Storage { path: PathBuf, source: io::Error },
    #[error("failed to write {path}")]
    Write { path: PathBuf, source: io::Error },
}

pub fn write_err(path: &Path) -> impl FnOnce(io::Error) -> RestoreError + use<> {
    let path = path.to_owned();
    move |source| RestoreError::Write { path, source }
}

/// An error reading an entry's data: the end of the input is a truncated archive.
pub fn data_err(source: io::Error) -> RestoreError {
    RestoreError::Tar(if source.kind() == io::ErrorKind::UnexpectedEof {
        TarError::Truncated
    } else {
        TarError::Read { source }
    })
}
