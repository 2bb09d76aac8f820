//! The custom resources of the group `snapshot-operator.dev`, version `v1alpha1`. Types and
//! their documentation only (the documentation is what `kubectl explain` shows), and the
//! CustomResourceDefinitions generated from them.

pub mod condition;
pub mod qdrant;
pub mod restore;
pub mod schedule;
pub mod snapshot;

pub use restore::SnapshotRestore;
pub use schedule::SnapshotSchedule;
pub use snapshot::Snapshot;

/// The API group of the resources.
pub const GROUP: &str = "snapshot-operator.dev";

/// The CustomResourceDefinitions as YAML, with the file name each has in `crds/`.
pub fn crd_documents() -> Vec<(String, String)> {
    use kube::CustomResourceExt;
    [
        crate::api::Snapshot::crd(),
        crate::api::SnapshotRestore::crd(),
        crate::api::SnapshotSchedule::crd(),
    ]
    .into_iter()
    .map(|crd| {
        let file = format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("crd"));
        let yaml = serde_saphyr::to_string(&crd).expect("a CRD serialises to YAML");
        (file, yaml)
    })
    .collect()
}
