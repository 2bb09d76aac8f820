//! The catalog of a storage: which Snapshots its archives belong to, rebuilt from the
//! archives' manifests alone (what a new cluster pointed at an old bucket needs). [`scan`]
//! reads each archive's manifest from its first bytes (a ranged read) in any [`Storage`]
//! laid out as the operator's default storage, `<namespace>/<key>`; [`group`] (pure)
//! gathers the archives into Snapshots node by node, a missing node or a missing checksum
//! said, never papered over.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};

use futures_util::StreamExt;

use crate::crypt::Identities;
use crate::engine::manifest::{Manifest, SnapshotIdentity};
use crate::engine::name;
use crate::storage::{ObjectInfo, Storage, StorageError};

/// How many bytes of an archive to read first for its manifest (the tar header and a
/// manifest of ordinary size): a ranged read, the archive itself is not downloaded.
/// `engine::restore::manifest_of` on them fails when they end inside the manifest.
pub const MANIFEST_PREFIX: u64 = 64 << 10;
/// The bytes of an archive read first: those that hold its first [`MANIFEST_PREFIX`] bytes
/// in plain, encrypted or not.
pub const FIRST_READ: u64 = crate::crypt::stored_prefix(MANIFEST_PREFIX);

/// The most nodes an imported Snapshot may have: its status (one entry per node) must fit
/// in one Kubernetes object, and a manifest claiming more is not to be believed.
pub const MAX_NODES: u32 = 1000;

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

/// What earlier passes read of each archive, by location, kept while the listing shows the
/// same object (size and time): its manifest (`None`: unreadable) and its checksum (read
/// again while there is none). A storage is scanned again and again; an archive's first
/// bytes and its sidecar are read once. Encrypted archives are read with its identities
/// (none: they are left out, with a warning).
#[derive(Debug, Default)]
pub struct Manifests {
    known: HashMap<String, Known>,
    identities: Identities,
}

impl Manifests {
    /// None known yet; encrypted archives read with `identities`.
    pub fn reading_with(identities: Identities) -> Self {
        Self {
            known: HashMap::new(),
            identities,
        }
    }
}

#[derive(Debug, Clone)]
struct Known {
    size: u64,
    modified: Option<jiff::Timestamp>,
    manifest: Option<Manifest>,
    checksum: Option<String>,
}

/// Is `name` a Kubernetes namespace name (an RFC 1123 label)? Folders of other names in a
/// storage are not a namespace's (pure).
pub fn is_namespace(name: &str) -> bool {
    let bytes = name.as_bytes();
    let inner = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
    let end = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    name.len() <= 63 && bytes.iter().all(inner) && end(bytes.first()) && end(bytes.last())
}

/// The archives of each namespace folder of `storage` with their manifests, by namespace.
/// An archive whose manifest cannot be read, or that names another namespace than its
/// folder's, is left out with a warning: an archive is only ever a Snapshot of the
/// namespace it is stored under.
pub async fn scan(
    storage: &dyn Storage,
    manifests: &mut Manifests,
) -> Result<BTreeMap<String, Vec<Found>>, StorageError> {
    let mut by_namespace = BTreeMap::new();
    let mut seen = HashMap::new();
    for namespace in storage.folders().await? {
        if !is_namespace(&namespace) {
            continue;
        }
        let folder = storage.within(&namespace)?;
        let archives = folder.list_archives("").await?;
        let read: Vec<(ObjectInfo, Known)> = futures_util::stream::iter(archives)
            .map(|info| {
                let known = manifests
                    .known
                    .get(&info.location)
                    .filter(|k| k.size == info.size && k.modified == info.modified)
                    .cloned();
                let folder = folder.as_ref();
                let identities = &manifests.identities;
                async move {
                    let known = read_archive(folder, &info, known, identities).await?;
                    Ok::<_, StorageError>((info, known))
                }
            })
            .buffered(8)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        let mut found = Vec::new();
        for (info, known) in read {
            seen.insert(info.location.clone(), known.clone());
            let Known {
                manifest, checksum, ..
            } = known;
            let Some(manifest) = manifest else { continue };
            let claimed = manifest.snapshot.as_ref().map(|s| s.namespace.as_str());
            if claimed.is_some_and(|ns| ns != namespace) {
                tracing::warn!(
                    location = %info.location,
                    "archive names another namespace than the folder it is in; not imported"
                );
                continue;
            }
            found.push(Found {
                key: info.key,
                location: info.location,
                size: info.size,
                checksum,
                manifest,
            });
        }
        by_namespace.insert(namespace, found);
    }
    // Forget the manifests of archives that are gone.
    manifests.known = seen;
    Ok(by_namespace)
}

/// What is known of the archive `info` once `known` (an earlier pass's reading of the same
/// object) is completed: its manifest and checksum, each read only when not known yet.
async fn read_archive(
    storage: &dyn Storage,
    info: &ObjectInfo,
    known: Option<Known>,
    identities: &Identities,
) -> Result<Known, StorageError> {
    let manifest = match known.as_ref() {
        Some(known) => known.manifest.clone(),
        None => read_manifest(storage, info, identities).await,
    };
    let checksum = match known.and_then(|k| k.checksum) {
        Some(checksum) => Some(checksum),
        None => storage.sidecar(&info.key).await?.valid(),
    };
    Ok(Known {
        size: info.size,
        modified: info.modified,
        manifest,
        checksum,
    })
}

/// The manifest of one archive, from its first [`MANIFEST_PREFIX`] bytes; `None` (with a
/// warning) when it cannot be read.
async fn read_manifest(
    storage: &dyn Storage,
    info: &ObjectInfo,
    identities: &Identities,
) -> Option<Manifest> {
    let mut read = manifest_in_first(storage, info, FIRST_READ, identities).await;
    // A manifest longer than the first read (thousands of collections): once more, as far
    // as the largest manifest a restore accepts.
    if read.is_err() && info.size > FIRST_READ {
        let most = crate::engine::manifest::MAX_MANIFEST_BYTES + MANIFEST_PREFIX;
        let most = crate::crypt::stored_prefix(most);
        read = manifest_in_first(storage, info, most, identities).await;
    }
    read.inspect_err(|error| {
        tracing::warn!(location = %info.location, %error, "cannot read the archive's manifest");
    })
    .ok()
}

async fn manifest_in_first(
    storage: &dyn Storage,
    info: &ObjectInfo,
    len: u64,
    identities: &Identities,
) -> Result<Manifest, String> {
    let bytes = storage
        .read_start(&info.key, len)
        .await
        .map_err(|e| crate::format::render_error(&e))?;
    // `len` holds whole chunks of an encrypted archive (`crypt::stored_prefix`): a chunk
    // authenticates only whole.
    let plain = identities
        .plaintext(std::io::Cursor::new(bytes))
        .map_err(|e| crate::format::render_error(&e))?;
    crate::engine::restore::manifest_of(plain).map_err(|e| crate::format::render_error(&e))
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
        let Some(identity) = f.manifest.snapshot.clone() else {
            continue;
        };
        if identity.nodes > MAX_NODES {
            tracing::warn!(location = %f.location, nodes = identity.nodes,
                "archive of a Snapshot of more nodes than the import takes; not imported");
            continue;
        }
        by_uid
            .entry(identity.uid.clone())
            .or_default()
            .push((identity, f));
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

/// Archives for tests.
#[cfg(test)]
pub mod fixtures {
    use super::*;

    /// A valid checksum.
    pub const SUM: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// The archive of node `index` of `nodes` of the Snapshot `snap-<uid>` of namespace
    /// `ns` (StatefulSet `qdrant`, collection `products`), taken `second`s after a
    /// fixed time.
    pub fn found(uid: &str, index: u32, nodes: u32, checksum: Option<&str>, second: i64) -> Found {
        let identity = SnapshotIdentity {
            namespace: "ns".into(),
            name: format!("snap-{uid}"),
            uid: uid.into(),
            index,
            nodes,
            source: "statefulSet/qdrant".into(),
            volume_claim_template: Some("data".into()),
            claim: format!("data-qdrant-{index}"),
            path: "/qdrant/storage".into(),
        };
        let manifest = Manifest::new(
            Some("products".into()),
            format!("qdrant-{index}"),
            jiff::Timestamp::from_second(1_800_000_000 + second).unwrap(),
            vec!["products".into()],
            BTreeMap::new(),
            Some(identity),
            crate::engine::manifest::Format::Files,
        );
        let key = format!("products/{uid}-{index}-{second}.snapshot");
        Found {
            location: format!("s3://backups/ns/{key}"),
            key,
            size: 10,
            checksum: checksum.map(str::to_owned),
            manifest,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::fixtures::{SUM, found};

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
    fn a_snapshot_of_implausibly_many_nodes_is_not_believed() {
        let mut huge = found("a", 0, u32::MAX, Some(SUM), 0);
        assert!(group([huge.clone()]).is_empty());
        huge.manifest.snapshot.as_mut().unwrap().nodes = MAX_NODES;
        assert_eq!(group([huge])[0].nodes.len(), MAX_NODES as usize);
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
