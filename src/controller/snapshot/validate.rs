//! What a Snapshot's spec must be beyond its schema (pure).

use crate::api::snapshot::{CopyMethod, Format, SnapshotSpec, StatefulSetRef};
use crate::controller::copy;
use crate::controller::kernel::{
    Invalid, inside_volume, validate_qdrant, validate_storage, workload_shape,
};
use crate::engine::name;

/// Checks what the API server's schema cannot (pure).
pub fn validate(spec: &SnapshotSpec) -> Result<(), Invalid> {
    workload_shape("source", &spec.source)?;
    inside_volume("path", &spec.path)?;
    if let Some(c) = &spec.collection {
        name::validate("collection", c)?;
    }
    if let Some(storage) = &spec.storage {
        validate_storage(storage)?;
    }
    if copy::of(spec.copy_method).stops_workload() && spec.source.stateful_set.is_none() {
        return Err(Invalid::Needs {
            what: "copyMethod Stop",
            needs: "a statefulSet source (it stops the StatefulSet)",
        });
    }
    let api = spec.copy_method == CopyMethod::QdrantApi;
    if api && spec.source.stateful_set.is_none() {
        return Err(Invalid::Needs {
            what: "copyMethod QdrantAPI",
            needs: "a statefulSet source (of Qdrant, whose pods answer its API)",
        });
    }
    if api && spec.format == Some(Format::Files) {
        return Err(Invalid::Needs {
            what: "copyMethod QdrantAPI",
            needs: "format qdrant (Qdrant's API makes Qdrant's own snapshots)",
        });
    }
    if !api && spec.qdrant.is_some() {
        return Err(Invalid::Needs {
            what: "qdrant",
            needs: "copyMethod QdrantAPI",
        });
    }
    validate_qdrant(spec.qdrant.as_ref())
}

/// The StatefulSet to stop for the time of the snapshot, if the spec asks for it (pure).
pub fn stop_target(spec: &SnapshotSpec) -> Option<&StatefulSetRef> {
    let sts = spec.source.stateful_set.as_ref();
    sts.filter(|_| copy::of(spec.copy_method).stops_workload())
}
