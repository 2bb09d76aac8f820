//! The custom resources of the group `snapshot-operator.dev`, version `v1alpha1`. Types and
//! their documentation only (the documentation is what `kubectl explain` shows).

pub mod condition;
pub mod restore;
pub mod snapshot;

pub use restore::SnapshotRestore;
pub use snapshot::Snapshot;

/// The API group of the resources.
pub const GROUP: &str = "snapshot-operator.dev";
