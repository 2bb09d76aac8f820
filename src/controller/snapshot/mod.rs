//! The Snapshot reconciler: fetch → validate (pure) → plan (pure) → apply (mover Jobs) →
//! status. One mover Job per node; the archives' metadata comes back in the movers'
//! termination messages. Deleting a Snapshot with `deletionPolicy: Delete` runs a delete
//! mover before the finalizer goes.
//!
//! `validate` checks the spec, `status` computes the status from the nodes' archives and
//! movers, `act` starts the movers, `cleanup` runs when the Snapshot is deleted; this file
//! is the driver.

mod act;
mod cleanup;
mod expiry;
mod status;
mod validate;

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, ListParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};

use super::jobs::Mover;
use super::kernel::{Admitted, Invalid, effective_storage};
use super::stop;
use super::{Context, Error, Reconciled, reject, trusted, workload, write_status};
use crate::api::snapshot::{ArchivePhase, ArchiveStatus, Phase, Snapshot, SnapshotStatus, Storage};
pub use act::identity;
use act::{act, job_name};
use cleanup::{cleanup, start_again};
use expiry::{Expiry, until_expiry};
pub use status::{
    NodeStep, invalid_status, is_final, next_archive, next_status, phase_of, plan, stopping_status,
};
use validate::stop_target;
pub use validate::validate;

/// How often a running Snapshot is looked at even without events.
const RUNNING_RECHECK: Duration = Duration::from_secs(30);

/// How often a Snapshot waiting for a mover slot tries again.
const PENDING_RECHECK: Duration = Duration::from_secs(10);

impl Reconciled for Snapshot {
    type Status = SnapshotStatus;
    type Phase = Phase;
    const ACTION: &'static str = "Snapshot";

    fn current(&self) -> Option<&SnapshotStatus> {
        self.status.as_ref()
    }

    fn phase_and_ready(status: &SnapshotStatus) -> (Option<Phase>, Option<&Condition>) {
        (status.phase, status.conditions.first())
    }

    async fn apply(&self, ctx: &Context) -> Result<Action, Error> {
        apply(self, ctx).await
    }

    async fn cleanup(&self, ctx: &Context) -> Result<Action, Error> {
        cleanup(self, ctx).await
    }
}

async fn apply(snap: &Snapshot, ctx: &Context) -> Result<Action, Error> {
    let reading = || expiry::restores_reading(ctx, snap);
    match expiry::expiry(snap, ctx.now(), reading) {
        Expiry::Due => return expiry::expire(snap, ctx).await,
        Expiry::Held(by) => {
            tracing::info!(restores = ?by, "expired, kept while these restores read it");
        }
        Expiry::Never | Expiry::At(_) | Expiry::Unfinished => {}
    }
    // Its status comes from the storage (`import`); no mover ever runs for it. (A label put
    // on a Snapshot that holds its StatefulSet stopped does not stop its reconciliation.)
    let holding = snap
        .status
        .as_ref()
        .is_some_and(|s| s.stopped_replicas.is_some());
    if snap.is_imported() && !holding {
        return Ok(until_expiry(snap, ctx));
    }
    let old = snap.status.clone().unwrap_or_default();
    // Finished movers whose results the status holds have done their part.
    let recorded = old.archives.iter().filter(|a| is_final(a));
    ctx.remove_recorded_movers(snap, recorded.map(|a| job_name(snap, &a.node)))
        .await?;
    if old.phase.is_some_and(Phase::is_final) && old.observed_generation == snap.meta().generation {
        // The stores show it finished: the next to stop its StatefulSet may.
        if let Some(sts) = stop_target(&snap.spec) {
            ctx.wake_next_stoppers(&snap.namespace().unwrap_or_default(), &sts.name);
        }
        return Ok(until_expiry(snap, ctx));
    }
    let Resolved { storage, archives } = match resolve(snap, ctx).await? {
        Ok(resolved) => resolved,
        Err(why) => return invalid(snap, ctx, &why).await,
    };
    let ns = snap.namespace().unwrap_or_default();
    let names = archives.iter().map(|a| job_name(snap, &a.node));
    let movers = ctx.movers_of(snap, names).await?;
    // copyMethod Stop: the StatefulSet stopped before the movers start.
    let pods = match stop_first(snap, ctx, &archives, &storage).await? {
        Stopping::Done(pods) => pods,
        Stopping::Waiting(action) => return Ok(action),
    };
    let steps = plan(&archives, &movers);
    let next = act(snap, ctx, (&archives, &steps), &storage, pods).await?;
    // Started again once every archive is done, whatever the outcome, before that is said.
    if let (Some(sts), Some(replicas)) = (stop_target(&snap.spec), old.stopped_replicas)
        && next.iter().all(is_final)
    {
        stop::scale(ctx, &ns, &sts.name, replicas).await?;
    }
    let status = next_status(snap, next, &storage, Time(ctx.now()));
    if write_status(ctx, snap, &status).await? {
        // Written on condition of the status read: counted once.
        count_finished(ctx, &archives, &steps, &movers);
    }
    Ok(match status.phase {
        // Its movers' progress read again then.
        Some(Phase::Running) => Action::requeue(RUNNING_RECHECK.min(ctx.progress.interval())),
        Some(Phase::Pending) => Action::requeue(PENDING_RECHECK),
        _ => until_expiry(snap, ctx),
    })
}

/// Where stopping the workload stands before the movers start.
enum Stopping {
    /// Stopped, or nothing to stop: the namespace's pods, if they were listed.
    Done(Option<Vec<Pod>>),
    /// Not yet: look again then.
    Waiting(Action),
}

/// Stops the StatefulSet first when the copy method says so, until every node's mover has
/// started (after that, the workload is stopped already or being started again: never
/// stopped a second time).
async fn stop_first(
    snap: &Snapshot,
    ctx: &Context,
    archives: &[ArchiveStatus],
    storage: &Storage,
) -> Result<Stopping, Error> {
    let to_start = archives.iter().any(|a| a.phase == ArchivePhase::Pending);
    let Some(sts) = stop_target(&snap.spec).filter(|_| to_start) else {
        return Ok(Stopping::Done(None));
    };
    let ns = snap.namespace().unwrap_or_default();
    let listed = Api::<Pod>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default())
        .await?
        .items;
    let claims: Vec<String> = archives.iter().map(|a| a.claim.clone()).collect();
    let status = |replicas: Option<i32>, message: String| {
        let now = Time(ctx.now());
        stopping_status(snap, archives.to_vec(), storage, (replicas, message), now)
    };
    let recorded = snap.status.as_ref().and_then(|s| s.stopped_replicas);
    let first = archives.iter().find(|a| a.phase == ArchivePhase::Pending);
    let first = first.map(|a| (a.node.as_str(), job_name(snap, &a.node)));
    let stopping = (&claims[..], &listed[..], first);
    Ok(
        match stop::stop(ctx, snap, &sts.name, recorded, stopping, status).await? {
            Some(action) => Stopping::Waiting(action),
            None => Stopping::Done(Some(listed)),
        },
    )
}

/// Counts the movers that finished in this pass, in the metrics.
fn count_finished(
    ctx: &Context,
    archives: &[ArchiveStatus],
    steps: &[NodeStep],
    movers: &[Option<Mover>],
) {
    for ((archive, step), mover) in archives.iter().zip(steps).zip(movers) {
        if let (NodeStep::Finished { succeeded, report }, Some(m)) = (step, mover) {
            ctx.metrics.mover_finished("snapshot", m.duration());
            if *succeeded && report.key.is_some() {
                ctx.metrics.archived(report.size.unwrap_or(0));
            }
            tracing::info!(node = %archive.node, succeeded, "snapshot mover finished");
        }
    }
}

/// What a Snapshot acts on once admitted: its storage and the nodes' archive entries (as
/// first resolved).
struct Resolved {
    storage: Storage,
    archives: Vec<ArchiveStatus>,
}

/// The storage and the nodes' archive entries, or why the Snapshot cannot be acted on.
async fn resolve(snap: &Snapshot, ctx: &Context) -> Result<Admitted<Resolved>, Error> {
    let ns = snap.namespace().unwrap_or_default();
    let storage = effective_storage(snap, ctx.config.default_storage_for(&ns).as_ref());
    let own = snap.spec.storage.as_ref().and_then(|s| s.s3.as_ref());
    let checked = validate(&snap.spec)
        .and_then(|()| trusted(&ctx.config, own, snap.spec.mover_security_context.as_ref()))
        .and_then(|()| storage.ok_or(Invalid::NoStorage));
    let storage = match checked {
        Ok(storage) => storage,
        Err(why) => return Ok(Err(why)),
    };
    let recorded = snap.status.iter().flat_map(|s| s.archives.clone());
    let archives: Vec<ArchiveStatus> = recorded.collect();
    if !archives.is_empty() {
        return Ok(Ok(Resolved { storage, archives }));
    }
    Ok(
        workload::nodes(&ctx.client, &ns, ("source", &snap.spec.source))
            .await?
            .map(|nodes| Resolved {
                storage,
                archives: nodes.into_iter().map(pending_archive).collect(),
            }),
    )
}

/// The entry of a node whose mover has not started (pure).
fn pending_archive(node: workload::Node) -> ArchiveStatus {
    ArchiveStatus {
        node: node.name,
        claim: node.claim,
        phase: ArchivePhase::Pending,
        name: None,
        key: None,
        location: None,
        size: None,
        checksum: None,
        message: None,
        read_from: None,
        volume_snapshot: None,
        progress: None,
    }
}

async fn invalid(snap: &Snapshot, ctx: &Context, why: &Invalid) -> Result<Action, Error> {
    let api: Api<Snapshot> =
        Api::namespaced(ctx.client.clone(), &snap.namespace().unwrap_or_default());
    start_again(snap, ctx).await?;
    let status = invalid_status(snap, why, Time(ctx.now()));
    reject(ctx, snap, &api, &status, why).await
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod mock;
