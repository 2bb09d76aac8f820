//! Checks and readings of specs that several reconcilers share (pure).

use super::invalid::{Admitted, Invalid};
use crate::api::qdrant::{ApiScheme, QdrantApi};
use crate::api::snapshot::{
    ArchiveStatus, ClaimRef, Snapshot, SnapshotSpec, StatefulSetRef, Storage, Workload,
};
use crate::engine::name;

/// What a workload is: one of its two shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape<'a> {
    StatefulSet(&'a StatefulSetRef),
    Claim(&'a ClaimRef),
}

/// The shape of the workload the spec's `field` names: exactly one of the two.
pub fn workload_shape<'a>(field: &'static str, workload: &'a Workload) -> Admitted<Shape<'a>> {
    match (&workload.stateful_set, &workload.persistent_volume_claim) {
        (Some(sts), None) => Ok(Shape::StatefulSet(sts)),
        (None, Some(claim)) => Ok(Shape::Claim(claim)),
        _ => Err(Invalid::ExactlyOne {
            field,
            one: "statefulSet",
            other: "persistentVolumeClaim",
        }),
    }
}

/// Exactly one storage kind (pure).
pub fn validate_storage(storage: &Storage) -> Result<(), Invalid> {
    match (&storage.local, &storage.s3) {
        (Some(local), None) => inside_volume("storage.local.path", &local.path),
        (None, Some(s3)) => validate_sse(s3),
        _ => Err(Invalid::ExactlyOne {
            field: "storage",
            one: "local",
            other: "s3",
        }),
    }
}

/// S3's server-side encryption holds together (pure).
fn validate_sse(s3: &crate::api::snapshot::S3Storage) -> Result<(), Invalid> {
    use crate::api::snapshot::ServerSideEncryption::AwsKms;
    if s3.customer_key_secret.is_some() && s3.server_side_encryption.is_some() {
        return Err(Invalid::Needs {
            what: "storage.s3.customerKeySecret (SSE-C)",
            needs: "no serverSideEncryption (S3 encrypts with one or the other)",
        });
    }
    if s3.kms_key_id.is_some() && s3.server_side_encryption != Some(AwsKms) {
        return Err(Invalid::Needs {
            what: "storage.s3.kmsKeyId",
            needs: "serverSideEncryption aws:kms",
        });
    }
    Ok(())
}

/// How Qdrant's API is reached holds together (pure): a CA is for https.
pub fn validate_qdrant(api: Option<&QdrantApi>) -> Result<(), Invalid> {
    match api {
        Some(api) if api.ca_secret.is_some() && api.scheme == ApiScheme::Http => {
            Err(Invalid::Needs {
                what: "qdrant.caSecret",
                needs: "qdrant.scheme https (a CA checks the certificate of https)",
            })
        }
        _ => Ok(()),
    }
}

/// A path inside a volume: relative to its root, never leaving it (pure).
pub fn inside_volume(field: &'static str, path: &str) -> Result<(), Invalid> {
    if path.split('/').any(|part| part == "..") {
        return Err(Invalid::LeavesVolume {
            field,
            path: path.into(),
        });
    }
    Ok(())
}

/// The storage a Snapshot writes to: recorded in status, else its spec, else the default.
pub fn effective_storage(snap: &Snapshot, default: Option<&Storage>) -> Option<Storage> {
    snap.status
        .as_ref()
        .and_then(|s| s.storage.clone())
        .or_else(|| snap.spec.storage.clone())
        .or_else(|| default.cloned())
}

/// The storage key of a node's archive, as its mover reported it (statuses written before
/// keys were recorded: from the archive's name).
pub fn archive_key(spec: &SnapshotSpec, archive: &ArchiveStatus) -> Option<String> {
    archive.key.clone().or_else(|| {
        archive
            .name
            .as_deref()
            .map(|n| name::key(spec.collection.as_deref(), n))
    })
}
