//! The manifest: `snapshot.json`, the first entry of every archive.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// Name of the manifest entry, always the first entry of an archive.
pub const MANIFEST_ENTRY: &str = "snapshot.json";
/// The format version of archives in our own layout ([`Format::Files`]); older builds read
/// them too.
pub const FILES_VERSION: u32 = 1;
/// The format version of archives in Qdrant's layout ([`Format::Qdrant`]): a build that
/// only knows version 1 says it needs a newer one instead of misreading them.
pub const QDRANT_VERSION: u32 = 2;
pub use super::limits::MAX_MANIFEST_BYTES;

/// How an archive lays out what it holds.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// Paths of the storage directory (`collections/<name>/...`): any application's data.
    #[default]
    Files,
    /// Qdrant's own snapshot (its collection or full snapshot), which Qdrant's recovery,
    /// upload and startup flags take; our manifest first, where Qdrant ignores it.
    Qdrant,
}

impl Format {
    /// The names the CLI takes.
    pub const NAMES: [&'static str; 2] = ["files", "qdrant"];

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Files => "files",
            Self::Qdrant => "qdrant",
        }
    }

    /// The format version of its archives.
    pub fn version(self) -> u32 {
        match self {
            Self::Files => FILES_VERSION,
            Self::Qdrant => QDRANT_VERSION,
        }
    }
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Self::Files, Self::Qdrant]
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| format!("unknown format {s:?}; expected files or qdrant"))
    }
}

/// What an archive holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// One collection: entries under `collections/<collection>/`.
    Collection,
    /// The whole storage directory.
    Full,
}

/// The content of `snapshot.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Archive format version ([`FILES_VERSION`], [`QDRANT_VERSION`]).
    pub format_version: u32,
    /// The layout of the entries after the manifest.
    #[serde(default)]
    pub format: Format,
    /// Collection or full-storage archive.
    pub kind: Kind,
    /// The collection of a collection archive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collection: Option<String>,
    /// The node (pod or host) the archive was taken on.
    pub node: String,
    /// When the archive was taken (UTC).
    pub created_at: Timestamp,
    /// The program that wrote the archive.
    pub tool: String,
    /// Its version.
    pub tool_version: String,
    /// The collections the archive holds, sorted.
    pub collections: Vec<String>,
    /// The aliases pointing at those collections (`alias -> collection`).
    #[serde(default)]
    pub aliases: BTreeMap<String, String>,
    /// The Snapshot resource the archive belongs to, when the operator took it: what lets
    /// another cluster rebuild its catalog from the storage alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotIdentity>,
}

/// Which Snapshot an archive belongs to, and which of its nodes took it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotIdentity {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The node's position among the Snapshot's nodes (a StatefulSet pod's ordinal order),
    /// from 0.
    pub index: u32,
    /// How many nodes (archives) the Snapshot has.
    pub nodes: u32,
    /// The workload snapshotted: `statefulSet/<name>` or `persistentVolumeClaim/<name>`.
    pub source: String,
    /// The StatefulSet's volume claim template holding the data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_claim_template: Option<String>,
    /// This node's PersistentVolumeClaim.
    #[serde(default)]
    pub claim: String,
    /// The storage directory inside the volume (the Snapshot's `path`).
    #[serde(default = "root")]
    pub path: String,
}

fn root() -> String {
    "/".into()
}

impl std::str::FromStr for SnapshotIdentity {
    type Err = serde_json::Error;

    /// From its JSON form (as the controller passes it to a mover).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        serde_json::from_str(text)
    }
}

impl std::fmt::Display for SnapshotIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&serde_json::to_string(self).map_err(|_| std::fmt::Error)?)
    }
}

impl Manifest {
    /// A manifest written by this build.
    pub fn new(
        collection: Option<String>,
        node: String,
        created_at: Timestamp,
        collections: Vec<String>,
        aliases: BTreeMap<String, String>,
        snapshot: Option<SnapshotIdentity>,
        format: Format,
    ) -> Self {
        Self {
            format_version: format.version(),
            format,
            kind: if collection.is_some() {
                Kind::Collection
            } else {
                Kind::Full
            },
            collection,
            node,
            created_at,
            tool: env!("CARGO_PKG_NAME").into(),
            tool_version: env!("CARGO_PKG_VERSION").into(),
            collections,
            aliases,
            snapshot,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_round_trips_with_snake_case_kind() {
        let m = Manifest::new(
            Some("products".into()),
            "node-0".into(),
            "2026-11-25T10:20:30Z".parse().unwrap(),
            vec!["products".into()],
            BTreeMap::from([("p".into(), "products".into())]),
            None,
            Format::Qdrant,
        );
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains(r#""kind":"collection""#), "{json}");
        assert!(
            json.contains(r#""format_version":2,"format":"qdrant""#),
            "{json}"
        );
        assert!(
            json.contains(r#""created_at":"2026-11-25T10:20:30Z""#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<Manifest>(&json).unwrap(), m);
    }
}
