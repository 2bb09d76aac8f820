//! `copyMethod: Clone`: each node's mover reads a clone of its claim, a temporary claim whose
//! `dataSource` is the source claim (CSI volume cloning), made when the mover starts and
//! deleted once the node's archive is done or the Snapshot goes. Its name is derived from the
//! Snapshot and the node, so that a restarted operator finds it; it is owned by the Snapshot,
//! so that Kubernetes collects one the operator could not delete.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimSpec, TypedLocalObjectReference,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Resource, ResourceExt};

use super::{Context, Error, FIELD_MANAGER, mover};
use crate::api::snapshot::Snapshot;

/// The name of the clone of `node`'s claim (pure).
pub fn name(snap: &Snapshot, node: &str) -> String {
    mover::job_name("clone", &snap.name_any(), node)
}

/// The clone of `source` for `node` (pure): in the source's storage class, of its size and
/// access modes, labelled as the operator's and owned by the Snapshot.
pub fn claim(snap: &Snapshot, node: &str, source: &PersistentVolumeClaim) -> PersistentVolumeClaim {
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
            data_source: Some(TypedLocalObjectReference {
                api_group: None,
                kind: "PersistentVolumeClaim".into(),
                name: source.name_any(),
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}

/// Makes the clone of `node`'s `source` claim if it is not there yet: its name, or why there
/// is nothing to clone.
pub async fn ensure(
    ctx: &Context,
    snap: &Snapshot,
    node: &str,
    source: &str,
) -> Result<Result<String, String>, Error> {
    let ns = snap.namespace().unwrap_or_default();
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(found) = api.get_opt(source).await? else {
        return Ok(Err(format!("claim {source} not found: nothing to clone")));
    };
    let clone = claim(snap, node, &found);
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    match api.create(&params, &clone).await {
        Ok(_) => {}
        // Made by an earlier pass.
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    Ok(Ok(clone.name_any()))
}

/// Deletes the clone of `node`'s claim, if there is one.
pub async fn delete(ctx: &Context, snap: &Snapshot, node: &str) -> Result<(), Error> {
    let ns = snap.namespace().unwrap_or_default();
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    match api
        .delete(&name(snap, node), &DeleteParams::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}
