//! Stopping a StatefulSet while movers work on its claims, and starting it again: one
//! sequence for `SnapshotRestore.stopWorkload` and `Snapshot.copyMethod: Stop`. The
//! replicas are recorded in the resource's status before the scale to zero, so that the end
//! of the work, a failure, an operator restart or the resource's deletion brings back exactly
//! as many.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use serde_json::json;

use super::cluster::Stopper;
use super::{Context, Error, Reconciled, patch_status, workload, write_status};
use crate::api::condition::reason;

/// Scales the StatefulSet `name` to `replicas`: a merge patch of the scale subresource, which
/// does not take ownership of `spec.replicas` away from whoever manages the StatefulSet.
pub async fn scale(ctx: &Context, namespace: &str, name: &str, replicas: i32) -> Result<(), Error> {
    let api: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), namespace);
    let patch = json!({"spec": {"replicas": replicas}});
    api.patch_scale(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// Stops the StatefulSet `name` of `object` before its movers start: records its replicas
/// (in the status `status(replicas, message)` builds), scales it to zero, then waits for the
/// pods mounting `claims` to go (the resource's own movers aside). `Some(action)` while that
/// is under way; `recorded`: the replicas the status already holds. While another resource
/// stops the StatefulSet (`Cluster::begin_stop`), it waits (with no replicas recorded) until
/// that one has started it again. `first`: the node to start first and its mover Job: the
/// StatefulSet is stopped only once that mover's slot is taken, so that the workload is not
/// stopped while other movers hold every slot.
pub async fn stop<K: Reconciled>(
    ctx: &Context,
    object: &K,
    name: &str,
    recorded: Option<i32>,
    (claims, pods, first): (&[String], &[Pod], Option<(&str, String)>),
    status: impl Fn(Option<i32>, String) -> K::Status,
) -> Result<Option<Action>, Error> {
    let namespace = object.meta().namespace.clone().unwrap_or_default();
    let uid = object.meta().uid.clone().unwrap_or_default();
    let Some(replicas) = recorded else {
        let who = Stopper::new(K::KIND, object.meta().name.clone().unwrap_or_default());
        let sts = (namespace.as_str(), name);
        if let Err(holder) = ctx.cluster.begin_stop(sts, (&uid, &who), Instant::now()) {
            let message = format!("waiting for {holder}, which stops StatefulSet {name}");
            write_status(ctx, object, &status(None, message)).await?;
            return Ok(Some(Action::requeue(Duration::from_secs(10))));
        }
        if let Some((node, job)) = &first
            && !ctx.take_slot(object, node, job)
        {
            // Not stopping it after all, for now: another resource may.
            ctx.cluster.forget_stop(sts, &uid);
            let message = format!("waiting for a mover slot before stopping StatefulSet {name}");
            write_status(ctx, object, &status(None, message)).await?;
            return Ok(Some(Action::requeue(Duration::from_secs(10))));
        }
        let current = Api::<StatefulSet>::namespaced(ctx.client.clone(), &namespace)
            .get_scale(name)
            .await?
            .spec
            .and_then(|s| s.replicas)
            .unwrap_or(0);
        // Recorded before scaling: a restart finds the replicas to bring back.
        let message = format!("stopping StatefulSet {name} ({current} replicas)");
        let api: Api<K> = Api::namespaced(ctx.client.clone(), &namespace);
        patch_status(&api, object, &status(Some(current), message)).await?;
        scale(ctx, &namespace, name, 0).await?;
        let note = format!("scaled StatefulSet {name} from {current} to 0");
        ctx.publish(
            object,
            EventType::Normal,
            reason::STOPPING_WORKLOAD,
            note,
            "Stop",
        )
        .await;
        return Ok(Some(Action::requeue(Duration::from_secs(2))));
    };
    // The resource's own movers (by ownership, not label) are not the workload.
    let mut in_use = workload::pods_using(pods, claims);
    let own = pods.iter().filter(|p| ctx.cluster.is_mover_pod_of(p, &uid));
    let own: Vec<&str> = own.filter_map(|p| p.metadata.name.as_deref()).collect();
    in_use.retain(|name| !own.contains(name));
    if in_use.is_empty() {
        return Ok(None);
    }
    // Again, in case the operator stopped between recording and scaling.
    scale(ctx, &namespace, name, 0).await?;
    let message = format!("waiting for pods to stop: {}", in_use.join(", "));
    write_status(ctx, object, &status(Some(replicas), message)).await?;
    Ok(Some(Action::requeue(Duration::from_secs(3))))
}
