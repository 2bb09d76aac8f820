//! Qdrant's snapshot formats, as Qdrant 1.18 writes and recovers them (its source:
//! `lib/collection/src/collection/snapshots.rs`, `shards/local_shard/snapshot.rs`,
//! `lib/segment/src/segment/snapshot.rs`, `lib/storage/src/content_manager/snapshots/`):
//!
//! * a **collection snapshot** holds the collection's directory: `config.json`,
//!   `version.info`, `payload_index.json`, `shard_key_mapping.json` at its root, and one
//!   directory per shard (`0/`, `1/`, ...) with `segments/`, `wal/`, `replica_state.json`,
//!   `shard_config.json`, the clocks and `applied_seq.json`;
//! * a **shard snapshot** holds one shard's directory at its root;
//! * a **full snapshot** holds one collection snapshot per collection, as a file
//!   `<name>.snapshot` (a tar in the tar), and a `config.json` that maps collection names to
//!   those files (`collections_mapping`) and names the aliases (`collections_aliases`).
//!
//! Segments are tars in the tar, `segments/<id>.tar` holding `snapshot/files/<segment
//! files>`, or, in the streamable layout, directories `segments/<id>/files/<segment files>`.
//! Qdrant's recovery unpacks each into `segments/<id>/`, the files hoisted out of `files/`,
//! and drops the RocksDB backups of old versions (`db_backup/`,
//! `payload_index_db_backup/`). Everything here is pure: where an entry goes, what a staged
//! snapshot turned out to be, the replica state a single node loads.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A collection's configuration, at the root of a collection snapshot and in the
/// collection's directory; a full snapshot's `config.json` names its collections instead.
pub const CONFIG_FILE: &str = "config.json";
/// A shard's directory of segments.
pub const SEGMENTS_DIR: &str = "segments";
/// What a shard is (`{"type":"ReplicaSet"}`), in each shard's directory.
pub const SHARD_CONFIG_FILE: &str = "shard_config.json";
/// Which peers hold a shard, and whether this node does.
pub const REPLICA_STATE_FILE: &str = "replica_state.json";
/// The directory a segment tar holds everything under.
const SEGMENT_TAR_ROOT: &[u8] = b"snapshot";
/// The directory, in a segment snapshot, that holds the segment's files.
const SEGMENT_FILES: &[u8] = b"files";
/// RocksDB backups older Qdrant versions put in segment snapshots; its recovery drops them.
const DROPPED: [&[u8]; 2] = [b"db_backup", b"payload_index_db_backup"];
/// What names a segment tar and a collection snapshot in a full snapshot.
const TAR_EXT: &[u8] = b".tar";
const SNAPSHOT_EXT: &[u8] = b".snapshot";

/// A full snapshot's `config.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FullConfig {
    /// Collection name → the file of its collection snapshot in the full snapshot.
    pub collections_mapping: BTreeMap<String, String>,
    /// Alias → collection name.
    #[serde(default)]
    pub collections_aliases: BTreeMap<String, String>,
}

/// What a Qdrant snapshot is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Collection,
    Shard,
    Full,
}

/// Where an entry of a Qdrant snapshot goes, relative to the snapshot's root once Qdrant
/// would have unpacked it.
#[derive(Debug, PartialEq, Eq)]
pub enum Place<'a> {
    /// There (the components of its path).
    At(Vec<&'a [u8]>),
    /// Nowhere: Qdrant's recovery drops it (or it is the directory a hoisting empties).
    Drop,
    /// It is a segment tar: its entries go, as [`in_segment_tar`] says, below this
    /// directory (the segment's).
    SegmentTar(Vec<&'a [u8]>),
    /// It is a collection snapshot of a full snapshot, by this file name.
    CollectionTar(&'a [u8]),
}

/// Is `name` a segment's id: a plain name, not hidden, with no dot (Qdrant's recovery reads
/// `<id>.tar` by splitting at the first dot, and skips hidden entries)?
pub fn is_segment_id(name: &[u8]) -> bool {
    !name.is_empty() && !name.contains(&b'.')
}

pub fn is_shard_dir(name: &[u8]) -> bool {
    !name.is_empty() && name.iter().all(u8::is_ascii_digit)
}

/// Is the directory at `parts` of a collection's directory a shard's `segments/` (pure)?
pub fn is_segments_dir(parts: &[&[u8]]) -> bool {
    matches!(parts, [shard, segments] if is_shard_dir(shard) && *segments == SEGMENTS_DIR.as_bytes())
}

/// Where the entry at `parts` (`is_file`: a regular file) of a Qdrant collection, shard or
/// full snapshot goes (pure). `top`: the entry is at the snapshot's top level, where a full
/// snapshot holds its collection snapshots.
pub fn place<'a>(parts: &[&'a [u8]], is_file: bool, top: bool) -> Place<'a> {
    if top && is_file && parts.len() == 1 && parts[0].ends_with(SNAPSHOT_EXT) {
        return Place::CollectionTar(parts[0]);
    }
    // `segments/` of a shard snapshot, or of a collection snapshot's shard `<n>/`.
    let at = match parts {
        [first, ..] if *first == SEGMENTS_DIR.as_bytes() => 0,
        [shard, second, ..] if is_shard_dir(shard) && *second == SEGMENTS_DIR.as_bytes() => 1,
        _ => return Place::At(parts.to_vec()),
    };
    let (dir, below) = parts.split_at(at + 1);
    match below {
        [tar] if is_file => match tar.strip_suffix(TAR_EXT) {
            Some(id) if is_segment_id(id) => {
                let mut segment = dir.to_vec();
                segment.push(id);
                Place::SegmentTar(segment)
            }
            _ => Place::At(parts.to_vec()),
        },
        // A streamable segment: `<id>/files/...` hoisted into `<id>/`.
        [id, first, rest @ ..] if is_segment_id(id) => {
            if *first == SEGMENT_FILES {
                // `files/` itself is the segment's directory once hoisted.
                let mut path = parts[..at + 2].to_vec();
                path.extend_from_slice(rest);
                Place::At(path)
            } else if DROPPED.contains(first) {
                Place::Drop
            } else {
                Place::At(parts.to_vec())
            }
        }
        _ => Place::At(parts.to_vec()),
    }
}

/// Where the entry at `parts` of a segment tar goes, relative to the segment's directory
/// (pure): `snapshot/files/x` and `snapshot/x` to `x` (`snapshot/files` itself is the
/// segment's directory), the RocksDB backups nowhere; an ancient tar (no `snapshot/`) as
/// it is.
pub fn in_segment_tar<'a>(parts: &[&'a [u8]]) -> Place<'a> {
    match parts {
        [root] if *root == SEGMENT_TAR_ROOT => Place::Drop,
        [root, files, below @ ..] if *root == SEGMENT_TAR_ROOT && *files == SEGMENT_FILES => {
            Place::At(below.to_vec())
        }
        [root, first, ..] if *root == SEGMENT_TAR_ROOT && DROPPED.contains(first) => Place::Drop,
        [root, rest @ ..] if *root == SEGMENT_TAR_ROOT => Place::At(rest.to_vec()),
        other => Place::At(other.to_vec()),
    }
}

/// What a Qdrant snapshot is, from its first entry (pure): the first thing each kind
/// writes, and `None` when it says nothing (a file at the top of a collection snapshot).
pub fn kind_from_first(parts: &[&[u8]], is_file: bool) -> Option<Kind> {
    match place(parts, is_file, true) {
        Place::CollectionTar(_) => Some(Kind::Full),
        _ => match parts {
            [first, ..] if *first == SEGMENTS_DIR.as_bytes() => Some(Kind::Shard),
            [first, ..] if *first == b"wal" => Some(Kind::Shard),
            [shard, _, ..] if is_shard_dir(shard) => Some(Kind::Collection),
            _ => None,
        },
    }
}

/// The replica state a single node loads from a snapshot's `replica_state.json` (pure), as
/// Qdrant's own recovery on a node outside a cluster makes it: this node's replica the only
/// one, active. A shard whose data this node never held cannot be restored so.
pub fn single_node_replica_state(json: &[u8]) -> Result<Vec<u8>, &'static str> {
    let mut state: serde_json::Value =
        serde_json::from_slice(json).map_err(|_| "not a valid replica state (JSON)")?;
    let object = state.as_object_mut().ok_or("not a valid replica state")?;
    if object.get("is_local") != Some(&serde_json::Value::Bool(true)) {
        return Err(
            "a shard this node holds no data of (is_local is false): restore it into the \
             cluster that has its replicas, through Qdrant",
        );
    }
    let peer = object
        .get("this_peer_id")
        .and_then(serde_json::Value::as_u64)
        .ok_or("a replica state without this_peer_id")?;
    object.insert(
        "peers".into(),
        serde_json::json!({ peer.to_string(): "Active" }),
    );
    Ok(serde_json::to_vec(&state).expect("JSON values serialise"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(path: &str) -> Vec<&[u8]> {
        path.split('/').map(str::as_bytes).collect()
    }

    fn at(path: &str) -> Place<'_> {
        Place::At(split(path))
    }

    #[test]
    fn entries_go_where_qdrants_recovery_puts_them() {
        let cases = [
            // Collection snapshot: shard directories, segment tars, files at the top.
            (
                "0/segments/abc.tar",
                true,
                Place::SegmentTar(split("0/segments/abc")),
            ),
            ("0/wal/open-1", true, at("0/wal/open-1")),
            ("config.json", true, at("config.json")),
            ("12/replica_state.json", true, at("12/replica_state.json")),
            // Shard snapshot.
            (
                "segments/abc.tar",
                true,
                Place::SegmentTar(split("segments/abc")),
            ),
            ("wal/closed-2", true, at("wal/closed-2")),
            // Streamable segments: files hoisted, backups dropped.
            (
                "0/segments/abc/files/segment.json",
                true,
                at("0/segments/abc/segment.json"),
            ),
            (
                "segments/abc/files/v/chunk_0.mmap",
                true,
                at("segments/abc/v/chunk_0.mmap"),
            ),
            ("segments/abc/files", false, at("segments/abc")),
            ("segments/abc/db_backup/x", true, Place::Drop),
            ("segments/abc/other", true, at("segments/abc/other")),
            // Full snapshot: collection snapshots at the top only.
            (
                "products-1-2026.snapshot",
                true,
                Place::CollectionTar(b"products-1-2026.snapshot"),
            ),
            // Names Qdrant would not take for segments stay what they are.
            ("segments/a.b.tar", true, at("segments/a.b.tar")),
            ("segments/.hidden.tar", true, at("segments/.hidden.tar")),
            ("x/segments/abc.tar", true, at("x/segments/abc.tar")),
            ("segments/abc.tar", false, at("segments/abc.tar")),
        ];
        for (path, is_file, expected) in cases {
            assert_eq!(place(&split(path), is_file, true), expected, "{path}");
        }
        assert_eq!(place(&split("p.snapshot"), true, false), at("p.snapshot"));
    }

    #[test]
    fn segment_tars_unpack_with_their_files_hoisted() {
        assert_eq!(
            in_segment_tar(&split("snapshot/files/segment.json")),
            at("segment.json")
        );
        assert_eq!(
            in_segment_tar(&split("snapshot/files/v/c.mmap")),
            at("v/c.mmap")
        );
        assert_eq!(in_segment_tar(&split("snapshot/files")), Place::At(vec![]));
        assert_eq!(in_segment_tar(&split("snapshot")), Place::Drop);
        assert_eq!(in_segment_tar(&split("snapshot/db_backup/x")), Place::Drop);
        assert_eq!(in_segment_tar(&split("snapshot/extra")), at("extra"));
        // Ancient: a plain archive of the segment.
        assert_eq!(in_segment_tar(&split("segment.json")), at("segment.json"));
    }

    #[test]
    fn the_first_entry_says_what_a_snapshot_is() {
        let kind = |p: &str| kind_from_first(&split(p), true);
        assert_eq!(kind("0/segments/abc.tar"), Some(Kind::Collection));
        assert_eq!(kind("segments/abc.tar"), Some(Kind::Shard));
        assert_eq!(kind("wal/closed-2"), Some(Kind::Shard));
        assert_eq!(kind("products-1-2026-12-02.snapshot"), Some(Kind::Full));
        assert_eq!(kind("config.json"), None);
    }

    #[test]
    fn a_single_node_loads_only_its_own_active_replica() {
        let state = br#"{"is_local":true,"this_peer_id":7,"peers":{"7":"Partial","8":"Active"}}"#;
        let fixed: serde_json::Value =
            serde_json::from_slice(&single_node_replica_state(state).unwrap()).unwrap();
        assert_eq!(
            fixed,
            serde_json::json!({"is_local": true, "this_peer_id": 7, "peers": {"7": "Active"}})
        );
        let remote = br#"{"is_local":false,"this_peer_id":7,"peers":{"8":"Active"}}"#;
        assert!(single_node_replica_state(remote).is_err());
        assert!(single_node_replica_state(b"[]").is_err());
        assert!(single_node_replica_state(br#"{"is_local":true}"#).is_err());
    }
}
