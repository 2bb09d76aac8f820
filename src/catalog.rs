//! The catalog of a storage: which Snapshots its archives belong to, rebuilt from the
//! archives' manifests alone (what a new cluster pointed at an old bucket needs). Pure:
//! reading a manifest from the first bytes of an archive, and grouping archives into
//! Snapshots node by node, a missing node or a missing checksum said, never papered over.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use crate::engine::manifest::{Manifest, SnapshotIdentity};
use crate::engine::name;

/// How many bytes of an archive to read first for its manifest (the tar header and a
/// manifest of ordinary size): a ranged read, the archive itself is not downloaded.
/// `engine::restore::manifest_of` on them fails when they end inside the manifest.
pub const MANIFEST_PREFIX: u64 = 64 << 10;

/// An archive found in the storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub key: String,
    pub location: String,
    pub size: u64,
    /// Its checksum sidecar, if any.
    pub checksum: Option<String>,
    pub manifest: Manifest,
}

/// One node of an imported Snapshot: its archive, or why there is none to trust.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedNode {
    pub index: u32,
    /// The node's name, from its archive's manifest.
    pub node: Option<String>,
    pub archive: Option<Found>,
    /// Why this node cannot be restored from, if so.
    pub problem: Option<String>,
}

/// A Snapshot as its archives describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub source: String,
    pub collection: Option<String>,
    pub nodes: Vec<ImportedNode>,
}

/// Groups archives into the Snapshots they belong to (by uid), node by node. Archives
/// without a Snapshot identity (taken by the CLI) are not part of any. A node with no
/// archive, or an archive without a valid checksum, is listed with the problem; of two
/// archives of one node (a retried mover), the newer counts.
pub fn group(found: impl IntoIterator<Item = Found>) -> Vec<Imported> {
    let mut by_uid: BTreeMap<String, Vec<(SnapshotIdentity, Found)>> = BTreeMap::new();
    for f in found {
        if let Some(identity) = f.manifest.snapshot.clone() {
            by_uid
                .entry(identity.uid.clone())
                .or_default()
                .push((identity, f));
        }
    }
    by_uid.into_values().map(snapshot_of).collect()
}

fn snapshot_of(mut archives: Vec<(SnapshotIdentity, Found)>) -> Imported {
    // Newest first, so that the first archive of each index is the one that counts.
    archives.sort_by_key(|(_, f)| Reverse(f.manifest.created_at));
    let first = archives[0].0.clone();
    let nodes = archives.iter().map(|(i, _)| i.nodes).max().unwrap_or(0);
    let agree = archives.iter().all(|(i, _)| i.nodes == nodes);
    let collection = archives[0].1.manifest.collection.clone();
    let node_of = |index: u32| {
        let found = archives.iter().find(|(i, _)| i.index == index);
        let Some((_, archive)) = found else {
            return ImportedNode {
                index,
                node: None,
                archive: None,
                problem: Some(format!("no archive of node {index} in the storage")),
            };
        };
        let checksum = archive.checksum.as_deref().and_then(name::parse_checksum);
        let problem = match (&checksum, agree) {
            (None, _) => Some(format!("{}: no valid checksum beside it", archive.key)),
            (Some(_), false) => Some(format!(
                "{}: the archives disagree on the number of nodes",
                archive.key
            )),
            (Some(_), true) => None,
        };
        ImportedNode {
            index,
            node: Some(archive.manifest.node.clone()),
            archive: Some(Found {
                checksum,
                ..archive.clone()
            }),
            problem,
        }
    };
    Imported {
        namespace: first.namespace,
        name: first.name,
        uid: first.uid,
        source: first.source,
        collection,
        nodes: (0..nodes).map(node_of).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(uid: &str, index: u32, nodes: u32, checksum: Option<&str>, second: i64) -> Found {
        let identity = SnapshotIdentity {
            namespace: "search".into(),
            name: format!("snap-{uid}"),
            uid: uid.into(),
            index,
            nodes,
            source: "statefulSet/qdrant".into(),
        };
        let manifest = Manifest::new(
            Some("products".into()),
            format!("qdrant-{index}"),
            jiff::Timestamp::from_second(1_800_000_000 + second).unwrap(),
            vec!["products".into()],
            BTreeMap::new(),
            Some(identity),
        );
        Found {
            key: format!("search/products/{uid}-{index}-{second}.snapshot"),
            location: String::new(),
            size: 10,
            checksum: checksum.map(str::to_owned),
            manifest,
        }
    }

    const SUM: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn archives_group_into_their_snapshots_node_by_node() {
        let mut cli_made = found("x", 0, 1, Some(SUM), 0);
        cli_made.manifest.snapshot = None;
        let snapshots = group([
            found("a", 1, 2, Some(SUM), 0),
            cli_made,
            found("a", 0, 2, Some(SUM), 0),
            found("b", 0, 3, Some(SUM), 0),
            found("b", 2, 3, None, 0),
        ]);
        assert_eq!(snapshots.len(), 2, "{snapshots:#?}");
        let a = &snapshots[0];
        assert_eq!(
            (a.name.as_str(), a.collection.as_deref()),
            ("snap-a", Some("products"))
        );
        let nodes: Vec<_> = a
            .nodes
            .iter()
            .map(|n| (n.node.clone(), n.problem.clone()))
            .collect();
        assert_eq!(
            nodes,
            [
                (Some("qdrant-0".into()), None),
                (Some("qdrant-1".into()), None)
            ]
        );
        // b: node 1 missing, node 2 without a checksum; both said.
        let b = &snapshots[1];
        assert_eq!(b.nodes.len(), 3);
        assert_eq!(b.nodes[0].problem, None);
        assert_eq!(
            b.nodes[1].problem.as_deref(),
            Some("no archive of node 1 in the storage")
        );
        assert!(
            b.nodes[2]
                .problem
                .as_deref()
                .unwrap()
                .contains("no valid checksum")
        );
    }

    #[test]
    fn a_retried_node_counts_its_newer_archive_and_disagreements_are_said() {
        let snapshots = group([
            found("a", 0, 1, Some(SUM), 0),
            found("a", 0, 1, Some(SUM), 60),
        ]);
        let archive = snapshots[0].nodes[0].archive.as_ref().unwrap();
        assert!(archive.key.ends_with("-60.snapshot"), "{}", archive.key);
        let snapshots = group([
            found("c", 0, 2, Some(SUM), 0),
            found("c", 1, 3, Some(SUM), 0),
        ]);
        assert_eq!(snapshots[0].nodes.len(), 3);
        assert!(
            snapshots[0].nodes[0]
                .problem
                .as_deref()
                .unwrap()
                .contains("disagree")
        );
    }

    #[test]
    fn the_manifest_comes_from_the_first_bytes_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("collections/products")).unwrap();
        std::fs::write(
            dir.path().join("collections/products/data"),
            vec![7u8; 200_000],
        )
        .unwrap();
        let manifest = found("a", 0, 1, None, 0).manifest;
        let json = serde_json::to_vec(&manifest).unwrap();
        let mut archive = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(json.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        archive
            .append_data(&mut header, "snapshot.json", &json[..])
            .unwrap();
        archive.append_dir_all("", dir.path()).unwrap();
        let bytes = archive.into_inner().unwrap();
        assert!(bytes.len() > 2 * MANIFEST_PREFIX as usize);
        let of = |bytes: &[u8]| crate::engine::restore::manifest_of(std::io::Cursor::new(bytes));
        assert_eq!(of(&bytes[..MANIFEST_PREFIX as usize]).unwrap(), manifest);
        // Cut inside the manifest: an error, not a wrong manifest.
        assert!(of(&bytes[..600]).is_err());
    }
}
