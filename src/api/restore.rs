//! The `SnapshotRestore` custom resource: restores archives into a workload's volumes with a
//! priority deciding what wins over existing data.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::condition::{Progress, conditions_schema};
use super::snapshot::{MoverSecurityContext, Storage, Workload, root_path};
pub use crate::engine::restore::Priority;

/// Restores a Snapshot's archives (or one archive from a location) into the volume(s) of a
/// workload, one mover per node, with Qdrant's priorities.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "snapshot-operator.dev",
    version = "v1alpha1",
    kind = "SnapshotRestore",
    namespaced,
    status = "SnapshotRestoreStatus",
    shortname = "snaprestore",
    category = "snapshot-operator",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Collection","type":"string","jsonPath":".spec.collection"}"#,
    printcolumn = r#"{"name":"Priority","type":"string","jsonPath":".spec.priority"}"#,
    printcolumn = r#"{"name":"Progress","type":"string","jsonPath":".status.conditions[?(@.type==\"Progressing\")].message"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    doc = "Restores snapshot archives into the volumes of a workload, with a priority.",
    validation = Rule::new("self.spec == oldSelf.spec").message("spec is immutable: create a new SnapshotRestore")
)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotRestoreSpec {
    /// What to restore: exactly one of `snapshotRef` or `location`.
    pub source: RestoreSource,
    /// Expected SHA-256 of the archive (lowercase hex); nothing changes when it differs.
    /// Archives of a Snapshot are always verified against their recorded checksums.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-f]{64}$"))]
    pub checksum: Option<String>,
    /// Where to restore: exactly one of `statefulSet` or `persistentVolumeClaim`.
    pub target: Workload,
    /// The storage directory inside the volume (default `/`).
    #[serde(default = "root_path")]
    #[schemars(length(max = 4096), extend("x-kubernetes-validations" = [{
        "rule": "!self.split('/').exists(s, s == '..')",
        "message": "a path inside the volume: no '..'",
    }]))]
    pub path: String,
    /// The collection to restore, and its name in the target (a collection archive may be
    /// restored under another name). Omit to restore a full-storage snapshot whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255), regex(pattern = r"^[^/\\]+$"))]
    pub collection: Option<String>,
    /// The collection to take out of a full-storage snapshot when it differs from
    /// `collection`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255), regex(pattern = r"^[^/\\]+$"))]
    pub source_collection: Option<String>,
    /// What wins when the collection already exists on a node: `replica` (default) keeps the
    /// existing data, `snapshot` replaces it atomically, `no_sync` writes the snapshot files
    /// over the existing ones.
    #[serde(default)]
    pub priority: Priority,
    /// For a Qdrant shard snapshot: the shard of `collection` it is restored as (default 0);
    /// other archives refuse it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 65535))]
    pub shard: Option<i32>,
    /// Scale the StatefulSet to zero during the restore and back afterwards (required for a
    /// full-storage restore, and to restore into claims mounted by running pods).
    #[serde(default)]
    pub stop_workload: bool,
    /// Storage for `file://` locations and `s3://` credentials; omit to use the operator's
    /// default storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<Storage>,
    /// The user and groups the restore movers run as; default: those the StatefulSet's pod
    /// template sets (so that restored files belong to the application), else the
    /// operator's (65532).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mover_security_context: Option<MoverSecurityContext>,
    /// How each node's archive gets in: `Volume` (default) has a mover write it into the
    /// node's claim; `QdrantAPI` uploads it to the node's running Qdrant (`qdrant`), which
    /// recovers it with the priority (`replica`, `snapshot`, `no_sync` as Qdrant means them)
    /// after checking its checksum: no volume access, no stop. A collection only (Qdrant
    /// recovers a full snapshot only at startup).
    #[serde(default)]
    pub method: RestoreMethod,
    /// With `method: QdrantAPI`: how to reach each pod's API (default: Qdrant's chart's port
    /// 6333 over http, no api-key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qdrant: Option<super::qdrant::QdrantApi>,
    /// The Secret whose `identities` read encrypted archives (see the Snapshot's
    /// `encryption`); default: the `snapshotRef` Snapshot's. Plain archives need none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<super::snapshot::Encryption>,
}

/// How a restore's archives get into the workload.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RestoreMethod {
    /// A mover writes each archive into its node's claim.
    #[default]
    Volume,
    /// Each archive is uploaded to its node's running Qdrant, which recovers it.
    #[serde(rename = "QdrantAPI")]
    QdrantApi,
}

impl SnapshotRestoreSpec {
    /// The shard a shard snapshot is restored as (the schema keeps it within 0..=65535).
    pub fn shard_number(&self) -> Option<u32> {
        self.shard.and_then(|n| u32::try_from(n).ok())
    }
}

/// Where the archives come from. Exactly one field is set.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.snapshotRef) != has(self.location)",
    "message": "set exactly one of snapshotRef and location"
}]))]
pub struct RestoreSource {
    /// A Snapshot in the same namespace: its archives are mapped to the target's nodes by
    /// pod name, else by ordinal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_ref: Option<SnapshotRef>,
    /// One archive restored to every node: `s3://bucket/key`, `https://...` or
    /// `file:///path` inside the local storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(s3|https?|file)://.+"))]
    pub location: Option<String>,
}

/// A Snapshot by name.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct SnapshotRef {
    /// Name of the Snapshot, in the same namespace.
    pub name: String,
}

/// Progress of a SnapshotRestore.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RestorePhase {
    /// Waiting (for a mover slot, or for the workload to stop).
    Pending,
    /// Movers are running.
    Running,
    /// Every node was restored or skipped.
    Succeeded,
    /// At least one node failed, or the spec is invalid.
    Failed,
}

impl RestorePhase {
    /// Succeeded or Failed: the SnapshotRestore is done; nothing more happens to it.
    pub fn is_final(self) -> bool {
        matches!(self, RestorePhase::Succeeded | RestorePhase::Failed)
    }
}

/// The observed state of a SnapshotRestore.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotRestoreStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pending, Running, Succeeded or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RestorePhase>,
    /// When the restore started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// `Ready` is True once every node is restored or skipped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The StatefulSet's replicas before it was stopped (`stopWorkload`); it is scaled back
    /// to this count afterwards, also after a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_replicas: Option<i32>,
    /// One entry per node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeRestore>,
}

/// Outcome on one node.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum NodePhase {
    /// Not started.
    Pending,
    /// Its mover is running.
    Running,
    /// The collection (or storage) was restored.
    Restored,
    /// Existing data was kept (priority `replica`); see `message`.
    Skipped,
    /// The restore failed and changed nothing; see `message`.
    Failed,
}

/// One node's restore.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeRestore {
    /// The node (pod name, or claim name).
    pub node: String,
    /// The claim restored into.
    pub claim: String,
    /// The archive restored (a location).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<String>,
    /// Pending, Running, Restored, Skipped or Failed.
    pub phase: NodePhase,
    /// Bytes of archive read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<i64>,
    /// Why it was skipped or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// While its mover runs: how far it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
}
