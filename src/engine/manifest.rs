//! The manifest: `snapshot.json`, the first entry of every archive.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// Name of the manifest entry, always the first entry of an archive.
pub const MANIFEST_ENTRY: &str = "snapshot.json";
/// The archive format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Largest manifest accepted when reading an archive.
pub const MAX_MANIFEST_BYTES: u64 = 16 << 20;

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
    /// Archive format version ([`FORMAT_VERSION`]).
    pub format_version: u32,
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
}

impl Manifest {
    /// A manifest written by this build.
    pub fn new(
        collection: Option<String>,
        node: String,
        created_at: Timestamp,
        collections: Vec<String>,
        aliases: BTreeMap<String, String>,
    ) -> Self {
        Self {
            format_version: FORMAT_VERSION,
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
        );
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains(r#""kind":"collection""#), "{json}");
        assert!(
            json.contains(r#""created_at":"2026-11-25T10:20:30Z""#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<Manifest>(&json).unwrap(), m);
    }
}
