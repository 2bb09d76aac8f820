//! What a restore is asked to do and what it answers: the types the CLI, the mover and the
//! `SnapshotRestore` resource share with the engine.

use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::engine::manifest::Manifest;
use crate::engine::qdrant;
use crate::safefs::Anchored;

/// What wins when the target collection already holds data (DESIGN §5); the same type
/// serves the CLI and the `SnapshotRestore` resource.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Existing data wins: an existing collection is left untouched (the default).
    #[default]
    Replica,
    /// The snapshot wins: an existing collection is replaced atomically.
    Snapshot,
    /// No synchronisation: snapshot files are written over existing ones, nothing removed.
    NoSync,
}

impl Priority {
    const ALL: [Self; 3] = [Self::Replica, Self::Snapshot, Self::NoSync];
    /// The names accepted by [`FromStr`], as Qdrant spells them.
    pub const NAMES: [&'static str; 3] = ["replica", "snapshot", "no_sync"];

    /// Its name, as Qdrant spells it (and the CLI takes it).
    pub fn name(self) -> &'static str {
        match self {
            Self::Replica => "replica",
            Self::Snapshot => "snapshot",
            Self::NoSync => "no_sync",
        }
    }
}

impl FromStr for Priority {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown priority {s:?}; expected one of {}",
                    Self::NAMES.join(", ")
                )
            })
    }
}

pub use crate::engine::limits::Limits;

/// What to restore from an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// One collection, restored as `into`. `from` picks the collection out of a full-storage
    /// archive (default: `into`); for a collection archive it must match the archive's.
    Collection { from: Option<String>, into: String },
    /// Everything a full-storage archive holds.
    Full,
}

/// A restore to run.
#[derive(Debug, Clone)]
pub struct RestoreSpec {
    /// The storage directory restored into (created when absent).
    pub storage: Anchored,
    pub selection: Selection,
    /// What wins when the target already holds a collection (or, for a full-storage
    /// restore, anything the archive holds); `None`: nothing does, the restore is refused
    /// (Qdrant's startup contract).
    pub priority: Option<Priority>,
    /// Expected SHA-256 (lowercase hex) of the whole archive.
    pub checksum: Option<String>,
    pub limits: Limits,
    /// For a Qdrant shard snapshot: the shard of the collection it is restored as (default
    /// 0); other archives refuse it.
    pub shard: Option<u32>,
    /// What reads an encrypted archive (none: only plain archives restore).
    pub identities: crate::crypt::Identities,
}

/// The outcome for one collection on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Restored,
    Skipped,
}

/// What happened to one collection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CollectionResult {
    pub collection: String,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What a restore did.
#[derive(Debug, Clone, Serialize)]
pub struct Restored {
    /// The archive's manifest; none for a snapshot Qdrant made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest: Option<Manifest>,
    /// What Qdrant snapshot it was, when it was in Qdrant's layout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qdrant: Option<qdrant::Kind>,
    /// SHA-256 of the archive as read.
    pub checksum: String,
    /// Size of the archive.
    pub archive_bytes: u64,
    /// Bytes of file data staged.
    pub data_bytes: u64,
    /// Files staged.
    pub files: u64,
    pub collections: Vec<CollectionResult>,
}
