//! Which archive each node restores (pure).

use k8s_openapi::api::core::v1::Pod;

use crate::api::restore::{NodePhase, NodeRestore};
use crate::api::snapshot::{Encryption, Storage};
use crate::controller::workload::{self, Node};

/// One archive to restore on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub node: Node,
    /// What the mover reads: a storage key or a location; `None` when no archive matches.
    pub location: Option<String>,
    /// Its checksum, when known.
    pub checksum: Option<String>,
    /// For people (status).
    pub shown: Option<String>,
}

/// An archive a restore can read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceArchive {
    /// The node it was taken on (empty for a location).
    pub node: String,
    /// What the mover reads: a storage key or a location.
    pub location: String,
    pub checksum: Option<String>,
    /// Where it is, for people.
    pub shown: Option<String>,
}

/// The ordinal at the end of a pod name (`qdrant-2` → 2).
fn ordinal(node: &str) -> Option<&str> {
    node.rsplit_once('-')
        .map(|(_, n)| n)
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Maps a Snapshot's archives to the target's nodes: by node name, else by ordinal (a
/// renamed StatefulSet); a node without an archive gets none (pure).
pub fn map_archives(nodes: &[Node], archives: &[SourceArchive]) -> Vec<Assignment> {
    nodes
        .iter()
        .map(|node| {
            let by_ordinal = || {
                let ord = ordinal(&node.name)?;
                let mut same: Vec<_> = archives
                    .iter()
                    .filter(|a| ordinal(&a.node) == Some(ord))
                    .collect();
                (same.len() == 1).then(|| same.remove(0))
            };
            // One archive for every node (a location), or one node and one archive.
            let only = || {
                (archives.len() == 1 && (nodes.len() == 1 || archives[0].node.is_empty()))
                    .then(|| &archives[0])
            };
            let found = archives
                .iter()
                .find(|a| a.node == node.name)
                .or_else(by_ordinal)
                .or_else(only);
            Assignment {
                node: node.clone(),
                location: found.map(|a| a.location.clone()),
                checksum: found.and_then(|a| a.checksum.clone()),
                shown: found.map(|a| a.shown.clone().unwrap_or_else(|| a.location.clone())),
            }
        })
        .collect()
}

/// The node entries of a new restore (pure): pending, or failed without an archive.
pub fn first_entries(assignments: &[Assignment]) -> Vec<NodeRestore> {
    assignments
        .iter()
        .map(|a| NodeRestore {
            node: a.node.name.clone(),
            claim: a.node.claim.clone(),
            archive: a.shown.clone(),
            phase: if a.location.is_some() {
                NodePhase::Pending
            } else {
                NodePhase::Failed
            },
            bytes: None,
            message: a
                .location
                .is_none()
                .then(|| "no archive for this node in the snapshot".into()),
            progress: None,
        })
        .collect()
}

/// Without `stopWorkload`, a node whose claim a running pod mounts fails (pure): restoring
/// under a running database would lose data.
pub fn refuse_mounted_claims(entries: &mut [NodeRestore], pods: &[Pod]) {
    for entry in entries.iter_mut().filter(|e| e.phase == NodePhase::Pending) {
        if let Some(pod) = workload::pods_using(pods, std::slice::from_ref(&entry.claim)).first() {
            entry.phase = NodePhase::Failed;
            entry.message = Some(format!(
                "claim {} is mounted by running pod {pod}; stop it (or, for a StatefulSet, set stopWorkload: true)",
                entry.claim
            ));
        }
    }
}

/// What a pass acts on, once the source and the nodes are resolved.
pub struct RestorePlan {
    pub namespace: String,
    pub entries: Vec<NodeRestore>,
    pub assignments: Vec<Assignment>,
    pub storage: Option<Storage>,
    /// The Secret whose identities read the archives, when one is named.
    pub encryption: Option<Encryption>,
    pub stopped_replicas: Option<i32>,
}
