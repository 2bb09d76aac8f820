//! What a Snapshot's spec must be beyond its schema (pure).

use jiff::{SignedDuration, Timestamp};
use kube::Resource;

use crate::api::snapshot::{CopyMethod, Format, Snapshot, SnapshotSpec, StatefulSetRef};
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
    if api && spec.encryption.is_some() {
        return Err(Invalid::Needs {
            what: "encryption",
            needs: "a copyMethod that reads the volume (Direct, Stop, Clone or Snapshot): \
                    Qdrant's API stores its snapshots as Qdrant made them",
        });
    }
    if !api && spec.qdrant.is_some() {
        return Err(Invalid::Needs {
            what: "qdrant",
            needs: "copyMethod QdrantAPI",
        });
    }
    ttl(spec)?;
    validate_qdrant(spec.qdrant.as_ref())
}

/// The longest ttl: 100 years of 365 days (a timestamp stays far within range).
const MAX_TTL: SignedDuration = SignedDuration::from_hours(100 * 365 * 24);

/// How long the Snapshot is kept, if `ttl` says (pure): a positive duration whose days are
/// 24 hours; weeks, months and years are not fixed lengths and are refused.
pub fn ttl(spec: &SnapshotSpec) -> Result<Option<SignedDuration>, Invalid> {
    let Some(text) = &spec.ttl else {
        return Ok(None);
    };
    let invalid = |why: String| Invalid::Ttl {
        ttl: text.clone(),
        why,
    };
    let span: jiff::Span = text
        .trim()
        .parse()
        .map_err(|e: jiff::Error| invalid(e.to_string()))?;
    if span.get_weeks() != 0 || span.get_months() != 0 || span.get_years() != 0 {
        return Err(invalid(
            "weeks, months and years have no fixed length: use days".into(),
        ));
    }
    let duration = span
        .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
        .map_err(|e| invalid(e.to_string()))?;
    if !duration.is_positive() {
        return Err(invalid("it must be longer than zero".into()));
    }
    if duration > MAX_TTL {
        return Err(invalid("it must be at most 100 years".into()));
    }
    Ok(Some(duration))
}

/// When the operator deletes `snap` (pure): its `ttl` after its creation.
pub fn expires_at(snap: &Snapshot) -> Option<Timestamp> {
    let created = snap.meta().creation_timestamp.as_ref()?.0;
    let ttl = ttl(&snap.spec).ok()??;
    created.checked_add(ttl).ok()
}

/// The StatefulSet to stop for the time of the snapshot, if the spec asks for it (pure).
pub fn stop_target(spec: &SnapshotSpec) -> Option<&StatefulSetRef> {
    let sts = spec.source.stateful_set.as_ref();
    sts.filter(|_| copy::of(spec.copy_method).stops_workload())
}
