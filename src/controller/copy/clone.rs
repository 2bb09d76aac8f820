//! `copyMethod: Clone` (and the claim `Snapshot` makes): each node's mover reads a temporary
//! claim whose `dataSource` is the node's claim (CSI volume cloning) or its VolumeSnapshot
//! (see [`super::snapshot`]),
//! made when the mover starts and deleted once the node's archive is done or the Snapshot
//! goes. Its name is derived from the Snapshot and the node, so that a restarted operator
//! finds it; it is owned by the Snapshot, so that Kubernetes collects one the operator could
//! not delete.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimSpec, TypedLocalObjectReference,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::Api;
use kube::{Resource, ResourceExt};

use async_trait::async_trait;

use super::method::{Method, ReadFrom};
use crate::api::snapshot::{ArchiveStatus, Snapshot};
use crate::controller::{Context, Error, create_if_absent, delete_named, mover};

/// The name of the clone of `node`'s claim (pure).
pub fn name(snap: &Snapshot, node: &str) -> String {
    mover::job_name("clone", &snap.name_any(), node)
}

/// Where a temporary claim's data comes from: the node's claim itself, or its VolumeSnapshot.
pub fn data_source(claim: &str, volume_snapshot: Option<&str>) -> TypedLocalObjectReference {
    match volume_snapshot {
        Some(vs) => TypedLocalObjectReference {
            api_group: Some("snapshot.storage.k8s.io".into()),
            kind: "VolumeSnapshot".into(),
            name: vs.to_owned(),
        },
        None => TypedLocalObjectReference {
            api_group: None,
            kind: "PersistentVolumeClaim".into(),
            name: claim.to_owned(),
        },
    }
}

/// The temporary claim for `node` from `data_source` (pure): in the storage class of the
/// node's claim `source`, of its size and access modes, labelled as the operator's and owned
/// by the Snapshot.
pub fn claim(
    snap: &Snapshot,
    node: &str,
    source: &PersistentVolumeClaim,
    data_source: TypedLocalObjectReference,
) -> PersistentVolumeClaim {
    let spec = source.spec.clone().unwrap_or_default();
    let size = source
        .status
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage").cloned())
        .or_else(|| {
            let requests = spec.resources.as_ref()?.requests.as_ref()?;
            requests.get("storage").cloned()
        });
    let owner = snap.controller_owner_ref(&()).map(|mut o| {
        o.controller = Some(false);
        o
    });
    let labels = BTreeMap::from([
        (
            mover::MANAGED_BY.0.to_owned(),
            mover::MANAGED_BY.1.to_owned(),
        ),
        (mover::OWNER_UID.to_owned(), snap.uid().unwrap_or_default()),
    ]);
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(name(snap, node)),
            namespace: snap.namespace(),
            labels: Some(labels),
            owner_references: owner.map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: spec.access_modes.clone(),
            storage_class_name: spec.storage_class_name.clone(),
            volume_mode: spec.volume_mode.clone(),
            resources: size.map(
                |size| k8s_openapi::api::core::v1::VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([("storage".to_owned(), size)])),
                    ..Default::default()
                },
            ),
            data_source: Some(data_source),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}

/// Makes the temporary claim of `node` (of its claim `source`, or of its VolumeSnapshot
/// `volume_snapshot`) if it is not there yet: the claim to read, or why there is nothing to
/// copy.
pub async fn ensure(
    ctx: &Context,
    snap: &Snapshot,
    node: &str,
    source: &str,
    volume_snapshot: Option<&str>,
) -> Result<ReadFrom, Error> {
    let ns = snap.namespace().unwrap_or_default();
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(found) = api.get_opt(source).await? else {
        return Ok(ReadFrom::Nothing(format!(
            "claim {source} not found: nothing to clone"
        )));
    };
    let clone = claim(snap, node, &found, data_source(source, volume_snapshot));
    // None: made by an earlier pass.
    create_if_absent(&api, &clone).await?;
    Ok(ReadFrom::Claim(clone.name_any()))
}

/// Deletes the clone of `node`'s claim, if there is one.
pub async fn delete(ctx: &Context, snap: &Snapshot, node: &str) -> Result<(), Error> {
    let ns = snap.namespace().unwrap_or_default();
    delete_named::<PersistentVolumeClaim>(&ctx.client, &ns, &name(snap, node)).await
}

/// `copyMethod: Clone`: the mover reads a clone of the node's claim.
pub struct Cloned;

#[async_trait]
impl Method for Cloned {
    async fn source_claim(
        &self,
        ctx: &Context,
        snap: &Snapshot,
        archive: &ArchiveStatus,
    ) -> Result<ReadFrom, Error> {
        ensure(ctx, snap, &archive.node, &archive.claim, None).await
    }

    async fn release(&self, ctx: &Context, snap: &Snapshot, node: &str) -> Result<(), Error> {
        delete(ctx, snap, node).await
    }
}
