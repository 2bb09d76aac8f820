//! `copyMethod: Snapshot`: each node's claim is first snapshotted by its CSI driver (a
//! `VolumeSnapshot`, `snapshot.storage.k8s.io/v1`), and the mover reads a claim made from
//! that VolumeSnapshot (see [`super::clone`]); both are deleted once the node's archive is done or the
//! Snapshot goes. Only the few fields used are defined here: the types are not in
//! k8s-openapi.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::Api;
use kube::{CustomResource, Resource, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use async_trait::async_trait;

use super::clone;
use super::method::{Method, Prepared, ReadFrom};
use crate::api::snapshot::{ArchiveStatus, Snapshot};
use crate::controller::{Context, Error, create_if_absent, delete_named, mover};

/// A CSI snapshot of a claim (the fields the operator uses).
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "snapshot.storage.k8s.io",
    version = "v1",
    kind = "VolumeSnapshot",
    namespaced,
    status = "VolumeSnapshotStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotSpec {
    pub source: VolumeSnapshotSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshot_class_name: Option<String>,
}

/// What is snapshotted.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim_name: Option<String>,
}

/// How far the snapshot is.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_to_use: Option<bool>,
    /// The smallest claim it can be restored into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_size: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<VolumeSnapshotError>,
}

/// Why the snapshot failed.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct VolumeSnapshotError {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The name of the VolumeSnapshot of `node`'s claim (pure).
pub fn name(snap: &Snapshot, node: &str) -> String {
    mover::job_name("vs", &snap.name_any(), node)
}

/// Where `found` stands (pure).
pub fn readiness(found: &VolumeSnapshot) -> Prepared {
    let name = found.name_any();
    let status = found.status.clone().unwrap_or_default();
    if let Some(message) = status.error.and_then(|e| e.message) {
        return Prepared::Failed(format!("VolumeSnapshot {name} failed: {message}"));
    }
    if status.ready_to_use == Some(true) {
        Prepared::Ready
    } else {
        Prepared::Waiting(format!("waiting for VolumeSnapshot {name} to be ready"))
    }
}

/// The VolumeSnapshot of `node`'s `claim` (pure), owned by the Snapshot.
pub fn volume_snapshot(snap: &Snapshot, node: &str, claim: &str) -> VolumeSnapshot {
    let mut vs = VolumeSnapshot::new(
        &name(snap, node),
        VolumeSnapshotSpec {
            source: VolumeSnapshotSource {
                persistent_volume_claim_name: Some(claim.to_owned()),
            },
            volume_snapshot_class_name: snap.spec.volume_snapshot_class_name.clone(),
        },
    );
    vs.metadata = ObjectMeta {
        namespace: snap.namespace(),
        labels: Some(BTreeMap::from([
            (
                mover::MANAGED_BY.0.to_owned(),
                mover::MANAGED_BY.1.to_owned(),
            ),
            (mover::OWNER_UID.to_owned(), snap.uid().unwrap_or_default()),
        ])),
        owner_references: snap.controller_owner_ref(&()).map(|mut o| {
            o.controller = Some(false);
            vec![o]
        }),
        ..vs.metadata
    };
    vs
}

/// Makes the VolumeSnapshot of `node`'s `claim` if there is none, and says where it stands.
pub async fn ensure(
    ctx: &Context,
    snap: &Snapshot,
    node: &str,
    claim: &str,
) -> Result<Prepared, Error> {
    let ns = snap.namespace().unwrap_or_default();
    let api: Api<VolumeSnapshot> = Api::namespaced(ctx.client.clone(), &ns);
    if let Some(found) = api.get_opt(&name(snap, node)).await? {
        return Ok(readiness(&found));
    }
    let vs = volume_snapshot(snap, node, claim);
    Ok(match create_if_absent(&api, &vs).await? {
        Some(created) => readiness(&created),
        None => Prepared::Waiting(format!(
            "waiting for VolumeSnapshot {} to be ready",
            vs.name_any()
        )),
    })
}

/// Deletes the VolumeSnapshot of `node`'s claim, if there is one.
pub async fn delete(ctx: &Context, snap: &Snapshot, node: &str) -> Result<(), Error> {
    let ns = snap.namespace().unwrap_or_default();
    delete_named::<VolumeSnapshot>(&ctx.client, &ns, &name(snap, node)).await
}

/// `copyMethod: Snapshot`: a VolumeSnapshot of the node's claim, ready before the mover takes
/// a slot, then a claim made from it that the mover reads.
pub struct FromVolumeSnapshot;

#[async_trait]
impl Method for FromVolumeSnapshot {
    fn volume_snapshot(&self, snap: &Snapshot, node: &str) -> Option<String> {
        Some(name(snap, node))
    }

    async fn prepare(
        &self,
        ctx: &Context,
        snap: &Snapshot,
        archive: &ArchiveStatus,
    ) -> Result<Prepared, Error> {
        let readiness = ensure(ctx, snap, &archive.node, &archive.claim).await?;
        if let Prepared::Failed(_) = readiness {
            delete(ctx, snap, &archive.node).await?;
        }
        Ok(readiness)
    }

    async fn source_claim(
        &self,
        ctx: &Context,
        snap: &Snapshot,
        archive: &ArchiveStatus,
    ) -> Result<ReadFrom, Error> {
        let from = name(snap, &archive.node);
        clone::ensure(ctx, snap, &archive.node, &archive.claim, Some(&from)).await
    }

    async fn release(&self, ctx: &Context, snap: &Snapshot, node: &str) -> Result<(), Error> {
        clone::delete(ctx, snap, node).await?;
        delete(ctx, snap, node).await
    }
}
