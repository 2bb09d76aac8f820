//! The `Snapshot` custom resource: tar archives of one collection or of a whole storage
//! directory, one per node of a workload.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::condition::{Progress, conditions_schema};
pub use crate::engine::manifest::Format;

/// A snapshot of a workload's data: one archive per node (pod of a StatefulSet, or the one
/// PersistentVolumeClaim), of one collection or of the whole storage directory, with a
/// SHA-256 checksum, in local-volume or S3 storage.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "snapshot-operator.dev",
    version = "v1alpha1",
    kind = "Snapshot",
    namespaced,
    status = "SnapshotStatus",
    shortname = "snap",
    category = "snapshot-operator",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Collection","type":"string","jsonPath":".spec.collection"}"#,
    printcolumn = r#"{"name":"Nodes","type":"integer","jsonPath":".status.nodes"}"#,
    printcolumn = r#"{"name":"Size","type":"string","jsonPath":".status.size"}"#,
    printcolumn = r#"{"name":"Progress","type":"string","jsonPath":".status.conditions[?(@.type==\"Progressing\")].message"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Expires","type":"string","jsonPath":".status.expiresAt"}"#,
    doc = "A snapshot of a workload's data: one archive per node, of one collection or of a whole storage directory.",
    validation = Rule::new("self.spec == oldSelf.spec").message("spec is immutable: create a new Snapshot")
)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotSpec {
    /// The data to snapshot: exactly one of `statefulSet` (one archive per pod) or
    /// `persistentVolumeClaim` (one archive).
    pub source: Workload,
    /// The storage directory inside the volume, e.g. `/qdrant/storage` (default `/`).
    #[serde(default = "root_path")]
    #[schemars(length(max = 4096), extend("x-kubernetes-validations" = [{
        "rule": "!self.split('/').exists(s, s == '..')",
        "message": "a path inside the volume: no '..'",
    }]))]
    pub path: String,
    /// The collection to snapshot (a directory `collections/<collection>` in the storage
    /// directory); omit for a full-storage snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255), regex(pattern = r"^[^/\\]+$"))]
    pub collection: Option<String>,
    /// Where to keep the archives; omit to use the operator's default storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<Storage>,
    /// What happens to the archives when the Snapshot is deleted: `Delete` (default) removes
    /// them and their checksums, `Retain` keeps them.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// How the movers see the data: `Direct` (default) reads the live volume while the
    /// application runs; `Stop` scales the StatefulSet to zero for the time of the snapshot and
    /// back to its replicas afterwards (on success, failure, operator restart and deletion),
    /// so that each archive is a picture of one moment; `Clone` reads a clone of each claim
    /// (CSI volume cloning) and `Snapshot` a claim made from a CSI VolumeSnapshot of it, while
    /// the application keeps running; `QdrantAPI` has each Qdrant pod make its own snapshot
    /// through its API (`qdrant`), with no volume access.
    #[serde(default)]
    pub copy_method: CopyMethod,
    /// With `copyMethod: QdrantAPI`: how to reach each pod's API (default: Qdrant's chart's
    /// port 6333 over http, no api-key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qdrant: Option<super::qdrant::QdrantApi>,
    /// With `copyMethod: Snapshot`: the VolumeSnapshotClass (default: the cluster's default
    /// class for the claims' driver).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub volume_snapshot_class_name: Option<String>,
    /// The user and groups the movers run as; default: those the StatefulSet's pod template
    /// sets (so that they may read what the application may), else the operator's (65532).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mover_security_context: Option<MoverSecurityContext>,
    /// The archives' format: `qdrant` (Qdrant's own collection or full snapshot, which
    /// Qdrant's recovery, upload and startup flags take) or `files` (the storage directory's
    /// files, for any application). Omit to use Qdrant's for a Qdrant storage directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<Format>,
    /// How long the Snapshot is kept (Velero's `ttl`): once this long after its creation, the
    /// operator deletes it, and with `deletionPolicy: Delete` its archives. A duration such
    /// as `72h`, `30d`, `1h30m` or `PT36H` (a day is 24 hours). Omit to keep it until it is
    /// deleted (or pruned by its schedule's retention, whichever comes first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub ttl: Option<String>,
    /// Encrypt the archives (the age format) to the recipients of a Secret: only the
    /// encrypted bytes reach the storage, and restores read them with that Secret's
    /// identities. Not with copyMethod QdrantAPI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
}

/// The age keys of a Secret in the resource's namespace: `recipients` (public keys, `age1…`,
/// one per line) encrypt new archives and are all a Snapshot's movers get; `identities`
/// (secret keys, an `age-keygen` file: `AGE-SECRET-KEY-1…`, one per line) read them, and are
/// all a restore's movers get. To rotate, put the new key's public key in `recipients` and
/// keep the old secret keys in `identities` with the new one.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Encryption {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
}

impl Encryption {
    /// A snapshot mover's environment: the recipients, from the Secret's `recipients` key.
    pub fn recipients_env(&self) -> (String, crate::protocol::EnvValue) {
        self.env(crate::crypt::RECIPIENTS_ENV, crate::crypt::RECIPIENTS_KEY)
    }

    /// A restore mover's environment: the identities, from the Secret's `identities` key.
    pub fn identities_env(&self) -> (String, crate::protocol::EnvValue) {
        self.env(crate::crypt::IDENTITIES_ENV, crate::crypt::IDENTITIES_KEY)
    }

    fn env(&self, var: &str, key: &str) -> (String, crate::protocol::EnvValue) {
        let value = crate::protocol::EnvValue::secret(&self.secret_name, key);
        (var.to_owned(), value)
    }
}

/// The user and groups of mover pods (VolSync's `moverSecurityContext`, limited to identity).
/// Root (`runAsUser: 0`) only where the operator's configuration allows it
/// (`mover.allowRoot`).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MoverSecurityContext {
    /// The user the mover runs as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub run_as_user: Option<i64>,
    /// Its primary group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub run_as_group: Option<i64>,
    /// The group that owns the mounted volumes' files (Kubernetes' `fsGroup`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub fs_group: Option<i64>,
    /// More groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub supplemental_groups: Vec<i64>,
}

pub(crate) fn root_path() -> String {
    "/".into()
}

/// Which volumes hold the data. Exactly one field is set.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.statefulSet) != has(self.persistentVolumeClaim)",
    "message": "set exactly one of statefulSet and persistentVolumeClaim"
}]))]
pub struct Workload {
    /// A StatefulSet: each pod's claim `<volumeClaimTemplate>-<statefulSet>-<ordinal>` is a
    /// node, named after the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stateful_set: Option<StatefulSetRef>,
    /// One PersistentVolumeClaim: one node, named after the claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<ClaimRef>,
}

/// A StatefulSet and the volume claim template holding the data.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatefulSetRef {
    /// Name of the StatefulSet, in the same namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Name of its volume claim template that holds the data.
    #[schemars(length(min = 1, max = 253))]
    pub volume_claim_template: String,
}

/// A PersistentVolumeClaim in the same namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimRef {
    /// Name of the claim.
    #[schemars(length(min = 1, max = 253))]
    pub claim_name: String,
}

/// Where archives are kept. Exactly one field is set.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.local) != has(self.s3)",
    "message": "set exactly one of local and s3"
}]))]
pub struct Storage {
    /// A PersistentVolumeClaim (in the same namespace) holding the archives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalStorage>,
    /// An S3 or S3-compatible bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Storage>,
}

/// Archives on a volume.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalStorage {
    /// The claim holding the archives.
    pub persistent_volume_claim: ClaimRef,
    /// Directory inside that volume (default `/`).
    #[serde(default = "root_path")]
    #[schemars(length(max = 4096), extend("x-kubernetes-validations" = [{
        "rule": "!self.split('/').exists(s, s == '..')",
        "message": "a path inside the volume: no '..'",
    }]))]
    pub path: String,
}

/// Archives in an S3 bucket.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Storage {
    /// Bucket name.
    #[schemars(length(min = 3, max = 63))]
    pub bucket: String,
    /// Region (default `us-east-1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Endpoint of an S3-compatible server, e.g. `http://minio.minio:9000`; omit for AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<String>,
    /// Key prefix of the archives (default: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Path-style addressing (default: true when `endpointUrl` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_path_style: Option<bool>,
    /// A Secret in the same namespace with the access key pair; omit to use the mover pod's
    /// environment (e.g. IRSA / workload identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<CredentialsSecret>,
    /// S3's server-side encryption of the archives the movers write: `AES256` (SSE-S3) or
    /// `aws:kms` (SSE-KMS, with `kmsKeyId`, else the account's default key); omit for the
    /// bucket's default. Reads need nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_side_encryption: Option<ServerSideEncryption>,
    /// With `serverSideEncryption: aws:kms`: the KMS key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
    /// SSE-C: a Secret key in the same namespace holding a 32-byte key, base64, that S3
    /// encrypts the archives with and needs for every read (movers get it as environment;
    /// the operator never reads it). Excludes `serverSideEncryption`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_key_secret: Option<CustomerKeySecret>,
}

/// S3's server-side encryption modes.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ServerSideEncryption {
    /// SSE-S3.
    #[serde(rename = "AES256")]
    Aes256,
    /// SSE-KMS.
    #[serde(rename = "aws:kms")]
    AwsKms,
}

impl ServerSideEncryption {
    /// As S3 (and the configuration) spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Aes256 => "AES256",
            Self::AwsKms => "aws:kms",
        }
    }
}

/// Where SSE-C's key is.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CustomerKeySecret {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key (default `sse-customer-key`).
    #[serde(default = "customer_key_key")]
    pub key: String,
}

fn customer_key_key() -> String {
    "sse-customer-key".into()
}

/// Where the S3 access key pair is. The operator never reads it: mover pods get it as
/// environment variables.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsSecret {
    /// Secret name.
    pub name: String,
    /// Key holding the access key id (default `AWS_ACCESS_KEY_ID`).
    #[serde(default = "access_key_id_key")]
    pub access_key_id_key: String,
    /// Key holding the secret access key (default `AWS_SECRET_ACCESS_KEY`).
    #[serde(default = "secret_access_key_key")]
    pub secret_access_key_key: String,
}

fn access_key_id_key() -> String {
    "AWS_ACCESS_KEY_ID".into()
}

fn secret_access_key_key() -> String {
    "AWS_SECRET_ACCESS_KEY".into()
}

/// How the movers see the data.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum CopyMethod {
    /// The live volume, read while the application writes to it.
    #[default]
    Direct,
    /// The StatefulSet stopped for the time of the snapshot.
    Stop,
    /// A clone of each claim (a claim whose `dataSource` is the source claim, in its storage
    /// class), made when the node's mover starts, read by the mover, deleted when the node's
    /// archive is done. Needs a CSI driver that can clone.
    Clone,
    /// A CSI VolumeSnapshot of each claim (of `volumeSnapshotClassName`), then a claim made
    /// from it that the mover reads; both deleted when the node's archive is done. Needs a CSI
    /// driver with snapshots and the snapshot controller.
    Snapshot,
    /// Qdrant makes each pod's snapshot through its REST API (`spec.qdrant`) while it keeps
    /// running (consistent: Qdrant flushes and proxies its segments meanwhile); the mover
    /// streams it into the storage and deletes it from the pod. The mover mounts no volume
    /// and runs on any node. Needs a StatefulSet of Qdrant.
    #[serde(rename = "QdrantAPI")]
    QdrantApi,
}

/// What deleting a Snapshot does to its archives.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Delete the archives and their checksums with the Snapshot.
    #[default]
    Delete,
    /// Keep the archives.
    Retain,
}

/// Progress of a Snapshot.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Waiting to start (e.g. for a free mover slot).
    Pending,
    /// Movers are running.
    Running,
    /// Every archive is stored.
    Succeeded,
    /// At least one archive failed, or the spec is invalid.
    Failed,
}

impl Phase {
    /// Succeeded or Failed: the Snapshot is done; nothing more happens to it.
    pub fn is_final(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed)
    }
}

/// The observed state of a Snapshot.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pending, Running, Succeeded or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// When the first mover started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the last mover finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// `Ready` is True once every archive is stored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// Number of nodes (archives).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<i32>,
    /// Total size of the archives, for people (`12.3 MiB`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// The storage the archives are written to: `spec.storage`, or the operator's default
    /// when the Snapshot was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<Storage>,
    /// One entry per node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub archives: Vec<ArchiveStatus>,
    /// With `copyMethod: Stop`: the StatefulSet's replicas before it was stopped, scaled
    /// back to once the archives are done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_replicas: Option<i32>,
    /// When the operator deletes it: `spec.ttl` after its creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
}

/// Progress of one node's archive.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ArchivePhase {
    /// Not started.
    Pending,
    /// Its mover is running.
    Running,
    /// Stored with its checksum.
    Succeeded,
    /// Its mover failed; see `message`.
    Failed,
}

/// One node's archive.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveStatus {
    /// The node (pod name, or claim name for a PersistentVolumeClaim source).
    pub node: String,
    /// The claim holding this node's data.
    pub claim: String,
    /// Pending, Running, Succeeded or Failed.
    pub phase: ArchivePhase,
    /// Archive file name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Storage key of the archive (`<collection>/<name>`, or `<name>` for a full-storage
    /// archive), as the storage reported it; deletes and restores use it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Where the archive is (`s3://bucket/key`, or `pvc://<claim>/<path>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,
    /// Lowercase hex SHA-256 of the archive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    /// Why it failed, what it is waiting for, or, for a stored archive, which files changed
    /// while they were read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// With `copyMethod: Clone` or `Snapshot`: the temporary claim the mover read (deleted
    /// once the archive is done).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_from: Option<String>,
    /// With `copyMethod: Snapshot`: the VolumeSnapshot the archive was taken from (deleted
    /// once the archive is done).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshot: Option<String>,
    /// While its mover runs: how far it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
}

/// The label of an imported Snapshot (`"true"`): its status comes from the storage, and no
/// mover ever runs for it.
pub const IMPORTED: &str = "snapshot-operator.dev/imported";
/// The annotation holding the UID of the Snapshot the archives were taken for.
pub const IMPORTED_UID: &str = "snapshot-operator.dev/imported-uid";

impl Snapshot {
    /// Was this Snapshot imported (the label, and the UID of the Snapshot it was imported
    /// from)?
    pub fn is_imported(&self) -> bool {
        use kube::ResourceExt;
        self.labels().get(IMPORTED).map(String::as_str) == Some("true")
            && self.annotations().contains_key(IMPORTED_UID)
    }
}
