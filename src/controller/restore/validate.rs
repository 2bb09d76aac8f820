//! What a SnapshotRestore's spec must be beyond its schema, and what it may make a mover read
//! (pure).

use crate::api::restore::{RestoreMethod, RestoreSource, SnapshotRef, SnapshotRestoreSpec};
use crate::api::snapshot::StatefulSetRef;
use crate::controller::config::OperatorConfig;
use crate::controller::kernel::{
    Admitted, Invalid, inside_volume, trusted, validate_qdrant, validate_storage, workload_shape,
};
use crate::engine::name;

/// Where a restore reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin<'a> {
    /// The archives of a Snapshot.
    Snapshot(&'a SnapshotRef),
    /// One archive, for every node.
    Location(&'a str),
}

/// Where `source` says to read from: exactly one of the two (pure).
pub fn origin(source: &RestoreSource) -> Admitted<Origin<'_>> {
    match (&source.snapshot_ref, &source.location) {
        (Some(reference), None) => Ok(Origin::Snapshot(reference)),
        (None, Some(location)) => Ok(Origin::Location(location)),
        _ => Err(Invalid::ExactlyOne {
            field: "source",
            one: "snapshotRef",
            other: "location",
        }),
    }
}

/// Checks what the schema cannot (pure).
pub fn validate(spec: &SnapshotRestoreSpec) -> Result<(), Invalid> {
    workload_shape("target", &spec.target)?;
    inside_volume("path", &spec.path)?;
    origin(&spec.source)?;
    for c in spec.collection.iter().chain(&spec.source_collection) {
        name::validate("collection", c)?;
    }
    if spec.source_collection.is_some() && spec.collection.is_none() {
        return Err(Invalid::Needs {
            what: "sourceCollection",
            needs: "collection",
        });
    }
    if let Some(sum) = &spec.checksum
        && name::parse_checksum(sum).as_deref() != Some(sum.as_str())
    {
        return Err(Invalid::Checksum(sum.clone()));
    }
    if let Some(location) = &spec.source.location {
        crate::source::Location::parse(location).map_err(|e| Invalid::Location(e.to_string()))?;
    }
    if spec.stop_workload && spec.target.stateful_set.is_none() {
        return Err(Invalid::Needs {
            what: "stopWorkload",
            needs: "a statefulSet target",
        });
    }
    if let Some(storage) = &spec.storage {
        validate_storage(storage)?;
    }
    validate_method(spec)
}

/// What restoring through Qdrant's API takes (pure).
fn validate_method(spec: &SnapshotRestoreSpec) -> Result<(), Invalid> {
    let needs = |what, needs| Err(Invalid::Needs { what, needs });
    if spec.method == RestoreMethod::Volume {
        return match spec.qdrant {
            Some(_) => needs("qdrant", "method QdrantAPI"),
            None => Ok(()),
        };
    }
    let what = "method QdrantAPI";
    if spec.target.stateful_set.is_none() {
        return needs(
            what,
            "a statefulSet target (of Qdrant, whose pods answer its API)",
        );
    }
    if spec.collection.is_none() {
        return needs(
            what,
            "a collection (Qdrant recovers a full snapshot only at startup)",
        );
    }
    if spec.source_collection.is_some() {
        return needs(
            "sourceCollection",
            "method Volume (Qdrant recovers a full snapshot only at startup)",
        );
    }
    if spec.stop_workload {
        return needs(what, "stopWorkload: false (Qdrant running, to recover)");
    }
    validate_qdrant(spec.qdrant.as_ref())
}

/// What creating this restore may make a mover do (pure): what [`trusted`] allows (its own S3
/// storage only at an endpoint the operator allows, its mover security context), and read an
/// `s3://` location outside the storage's bucket only with credentials the resource names
/// (never the operator's or the nodes' own).
pub fn within_trust(
    spec: &SnapshotRestoreSpec,
    namespace: &str,
    config: &OperatorConfig,
) -> Result<(), Invalid> {
    let own = spec.storage.as_ref().and_then(|s| s.s3.as_ref());
    trusted(config, own, spec.mover_security_context.as_ref())?;
    let Some(location) = &spec.source.location else {
        return Ok(());
    };
    let Ok(crate::source::Location::S3 { bucket, key }) = crate::source::Location::parse(location)
    else {
        return Ok(());
    };
    let named = own.is_some_and(|s| s.credentials_secret.is_some());
    let shared = config.default_storage_for(namespace);
    let storage = spec.storage.as_ref().or(shared.as_ref());
    let s3 = storage.and_then(|s| s.s3.as_ref());
    if own.is_none()
        && let Some(s3) = s3
        && s3.bucket == bucket
        && !key.starts_with(&format!("{}/", s3.prefix.as_deref().unwrap_or_default()))
    {
        return Err(Invalid::OutsideNamespace {
            location: location.clone(),
            bucket: s3.bucket.clone(),
            prefix: s3.prefix.clone().unwrap_or_default(),
        });
    }
    if s3.map(|s| s.bucket.as_str()) != Some(bucket.as_str()) && !named {
        return Err(Invalid::OtherBucket {
            location: location.clone(),
            bucket,
        });
    }
    Ok(())
}

/// The StatefulSet to stop, if the spec asks for it (validated: only with one).
pub fn stop_workload_target(spec: &SnapshotRestoreSpec) -> Option<&StatefulSetRef> {
    spec.target
        .stateful_set
        .as_ref()
        .filter(|_| spec.stop_workload)
}
