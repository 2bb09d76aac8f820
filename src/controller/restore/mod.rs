//! The SnapshotRestore reconciler: fetch → validate (pure) → map archives to nodes (pure) →
//! stop the workload when asked (its replicas recorded in status first) → one restore mover
//! per node → start the workload again (also after a failure, a restart or a deletion) →
//! status.
//!
//! `validate` checks the spec, `source` finds the archives, `plan` assigns them to nodes,
//! `status` computes the status, `act` starts the movers; this file is the driver.

mod act;
mod plan;
mod source;
mod status;
mod validate;

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, ListParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};

use super::jobs::Mover;
use super::kernel::Invalid;
use super::stop;
use super::workload::{self, Node};
use super::{Context, Error, Reconciled, reject, write_status};
use crate::api::restore::{
    NodePhase, NodeRestore, RestoreMethod, RestorePhase, SnapshotRestore, SnapshotRestoreStatus,
};
use crate::api::snapshot::StatefulSetRef;
use act::{job_name, run_movers};
use plan::RestorePlan;
pub use plan::{Assignment, SourceArchive, first_entries, map_archives, refuse_mounted_claims};
use source::{Found, Sources, archives};
pub use status::{invalid_status, is_final, next_node, next_status};
use validate::stop_workload_target;
pub use validate::{validate, within_trust};

const RECHECK: Duration = Duration::from_secs(10);

impl Reconciled for SnapshotRestore {
    type Status = SnapshotRestoreStatus;
    type Phase = RestorePhase;
    const ACTION: &'static str = "Restore";

    fn current(&self) -> Option<&SnapshotRestoreStatus> {
        self.status.as_ref()
    }

    fn phase_and_ready(
        status: &SnapshotRestoreStatus,
    ) -> (Option<RestorePhase>, Option<&Condition>) {
        (status.phase, status.conditions.first())
    }

    async fn apply(&self, ctx: &Context) -> Result<Action, Error> {
        apply(self, ctx).await
    }

    async fn cleanup(&self, ctx: &Context) -> Result<Action, Error> {
        cleanup(self, ctx).await
    }
}

async fn invalid(restore: &SnapshotRestore, ctx: &Context, why: &Invalid) -> Result<Action, Error> {
    let api: Api<SnapshotRestore> =
        Api::namespaced(ctx.client.clone(), &restore.namespace().unwrap_or_default());
    // A workload stopped before the spec turned out unusable is started again.
    if let Some(replicas) = restore.status.as_ref().and_then(|s| s.stopped_replicas) {
        scale(ctx, restore, replicas).await?;
    }
    let status = invalid_status(restore, why, Time(ctx.now()));
    reject(ctx, restore, &api, &status, why).await
}

/// Scales the target StatefulSet (if the target is one) to `replicas`.
async fn scale(ctx: &Context, restore: &SnapshotRestore, replicas: i32) -> Result<(), Error> {
    let Some(sts) = &restore.spec.target.stateful_set else {
        return Ok(());
    };
    let ns = restore.namespace().unwrap_or_default();
    stop::scale(ctx, &ns, &sts.name, replicas).await
}

async fn apply(restore: &SnapshotRestore, ctx: &Context) -> Result<Action, Error> {
    let old = restore.status.clone().unwrap_or_default();
    // Finished movers whose results the status holds have done their part.
    let recorded = old.nodes.iter().filter(|n| is_final(n));
    ctx.remove_recorded_movers(restore, recorded.map(|n| job_name(restore, &n.node)))
        .await?;
    if old.phase.is_some_and(RestorePhase::is_final)
        && old.observed_generation == restore.meta().generation
    {
        // The stores show it finished: the next to stop its StatefulSet may.
        if let Some(sts) = stop_workload_target(&restore.spec) {
            ctx.wake_next_stoppers(&restore.namespace().unwrap_or_default(), &sts.name);
        }
        return Ok(Action::await_change());
    }
    let mut plan = match resolve(restore, ctx).await? {
        Resolved::Plan(plan) => plan,
        Resolved::Wait(message) => {
            let status = next_status(
                restore,
                old.nodes.clone(),
                old.stopped_replicas,
                false,
                Some(message),
                Time(ctx.now()),
            );
            write_status(ctx, restore, &status).await?;
            return Ok(Action::requeue(RECHECK));
        }
        Resolved::Invalid(why) => return invalid(restore, ctx, &why).await,
    };
    // Once every node's mover has started, the workload is stopped already (or being started
    // again): never stopped a second time. The pods (which mount the claims) matter only
    // before a mover starts: read then, from the API server, not from a cache that may lag
    // behind a pod just started on a claim about to be written.
    let to_start = plan.entries.iter().any(|e| e.phase == NodePhase::Pending);
    let pods: Vec<Pod> = if to_start {
        Api::<Pod>::namespaced(ctx.client.clone(), &plan.namespace)
            .list(&ListParams::default())
            .await?
            .items
    } else {
        Vec::new()
    };
    match stop_workload_target(&restore.spec).filter(|_| to_start) {
        Some(sts) => {
            if let Some(action) = stop_workload(restore, ctx, sts, &plan, &pods).await? {
                return Ok(action);
            }
        }
        // Through Qdrant's API, the pods that mount the claims are the ones that recover.
        None if restore.spec.method == RestoreMethod::Volume => {
            refuse_mounted_claims(&mut plan.entries, &pods);
        }
        None => {}
    }
    let (next, movers) = run_movers(restore, ctx, &plan).await?;
    // Start the workload again once every mover is done, whatever their outcome.
    let mut restarted = !restore.spec.stop_workload;
    if next.iter().all(is_final)
        && let Some(replicas) = plan.stopped_replicas
    {
        scale(ctx, restore, replicas).await?;
        restarted = true;
    }
    let status = next_status(
        restore,
        next.clone(),
        plan.stopped_replicas,
        restarted,
        None,
        Time(ctx.now()),
    );
    if write_status(ctx, restore, &status).await? {
        // Written on condition of the status read: counted once.
        count_finished(ctx, &plan.entries, &next, &movers);
    }
    Ok(next_look(&status, ctx))
}

/// When a restore is looked at again: while movers run, when their progress is read
/// next.
fn next_look(status: &SnapshotRestoreStatus, ctx: &Context) -> Action {
    let running = status.nodes.iter().any(|n| n.phase == NodePhase::Running);
    if status.phase.is_some_and(RestorePhase::is_final) {
        Action::await_change()
    } else if running {
        Action::requeue(RECHECK.min(ctx.progress.interval()))
    } else {
        Action::requeue(RECHECK)
    }
}

/// The outcome of resolving a restore.
enum Resolved {
    Plan(Box<RestorePlan>),
    /// Not yet (the source Snapshot is still running).
    Wait(String),
    /// Never, until the spec changes.
    Invalid(Invalid),
}

/// Resolves the archives, the nodes (as first resolved: a stopped StatefulSet has no
/// replicas to count) and which archive each node restores.
async fn resolve(restore: &SnapshotRestore, ctx: &Context) -> Result<Resolved, Error> {
    let ns = restore.namespace().unwrap_or_default();
    let old = restore.status.clone().unwrap_or_default();
    if let Err(why) =
        validate(&restore.spec).and_then(|()| within_trust(&restore.spec, &ns, &ctx.config))
    {
        return Ok(Resolved::Invalid(why));
    }
    let (archives, full, storage, encryption) = match archives(restore, ctx).await? {
        Ok(Sources::Found(found)) => {
            let Found {
                archives,
                full,
                storage,
                encryption,
            } = *found;
            (archives, full, storage, encryption)
        }
        Ok(Sources::Waiting(what)) => return Ok(Resolved::Wait(what)),
        Err(why) => return Ok(Resolved::Invalid(why)),
    };
    if full && restore.spec.method == RestoreMethod::QdrantApi {
        return Ok(Resolved::Invalid(Invalid::Needs {
            what: "method QdrantAPI",
            needs: "a collection snapshot (Qdrant recovers a full snapshot only at startup)",
        }));
    }
    if encryption.is_some() && restore.spec.method == RestoreMethod::QdrantApi {
        return Ok(Resolved::Invalid(Invalid::Needs {
            what: "an encrypted archive",
            needs: "method Volume (Qdrant cannot recover it as it is stored; the movers decrypt it)",
        }));
    }
    if full && !restore.spec.stop_workload && restore.spec.target.stateful_set.is_some() {
        return Ok(Resolved::Invalid(Invalid::Needs {
            what: "a full-storage restore into a StatefulSet",
            needs: "stopWorkload: true (Qdrant restores a full storage only at start)",
        }));
    }
    let nodes = if old.nodes.is_empty() {
        match workload::nodes(&ctx.client, &ns, ("target", &restore.spec.target)).await? {
            Ok(nodes) => nodes,
            Err(why) => return Ok(Resolved::Invalid(why)),
        }
    } else {
        old.nodes
            .iter()
            .map(|n| Node {
                name: n.node.clone(),
                claim: n.claim.clone(),
            })
            .collect()
    };
    let assignments = map_archives(&nodes, &archives);
    let entries = if old.nodes.is_empty() {
        first_entries(&assignments)
    } else {
        old.nodes.clone()
    };
    Ok(Resolved::Plan(Box::new(RestorePlan {
        namespace: ns,
        entries,
        assignments,
        storage,
        encryption,
        stopped_replicas: old.stopped_replicas,
    })))
}

/// Stops the workload (see [`stop::stop`]). `Some(action)` while that is under way.
async fn stop_workload(
    restore: &SnapshotRestore,
    ctx: &Context,
    sts: &StatefulSetRef,
    plan: &RestorePlan,
    pods: &[Pod],
) -> Result<Option<Action>, Error> {
    let claims: Vec<String> = plan.entries.iter().map(|n| n.claim.clone()).collect();
    let status = |replicas: Option<i32>, message: String| {
        let entries = plan.entries.clone();
        next_status(
            restore,
            entries,
            replicas,
            false,
            Some(message),
            Time(ctx.now()),
        )
    };
    let recorded = plan.stopped_replicas;
    let first = plan.entries.iter().find(|e| e.phase == NodePhase::Pending);
    let first = first.map(|e| (e.node.as_str(), job_name(restore, &e.node)));
    stop::stop(
        ctx,
        restore,
        &sts.name,
        recorded,
        (&claims, pods, first),
        status,
    )
    .await
}

/// Counts the movers that finished in this pass.
fn count_finished(
    ctx: &Context,
    entries: &[NodeRestore],
    next: &[NodeRestore],
    movers: &[Option<Mover>],
) {
    for ((entry, updated), mover) in entries.iter().zip(next).zip(movers) {
        if let Some(m) = mover
            && !is_final(entry)
            && is_final(updated)
        {
            ctx.metrics.mover_finished("restore", m.duration());
            if updated.phase == NodePhase::Restored {
                ctx.metrics
                    .restored(updated.bytes.unwrap_or(0).max(0) as u64);
            }
        }
    }
}

/// On deletion: a workload stopped by this restore is started again.
async fn cleanup(restore: &SnapshotRestore, ctx: &Context) -> Result<Action, Error> {
    let status = restore.status.clone().unwrap_or_default();
    let done = status.phase.is_some_and(RestorePhase::is_final);
    if let (Some(replicas), false) = (status.stopped_replicas, done) {
        scale(ctx, restore, replicas).await?;
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod mock;
