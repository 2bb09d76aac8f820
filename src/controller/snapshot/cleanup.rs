//! A deleted Snapshot: its workload started again, what its copy method made deleted, and its
//! archives deleted when its policy says so: by the operator in its default storage, else by
//! a delete mover, one for the archives of every Snapshot deleted alike at that time.

use std::sync::Arc;

use k8s_openapi::api::batch::v1::Job;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};

use super::act::acting_as;
use crate::api::snapshot::{ArchivePhase, DeletionPolicy, Phase, Snapshot, Storage};
use crate::controller::jobs::Mover;
use crate::controller::kernel::{archive_key, effective_storage};
use crate::controller::mover::{self, MoverJob};
use crate::controller::{Context, Error, FINALIZER, copy, jobs, stop};
use crate::format::render_error;
use crate::ops;
use crate::protocol::{DeleteTask, MoverTask, TERMINATION_LOG};

/// The archives of a Snapshot whose namespace is being deleted, where no delete mover can
/// run: on a claim of that namespace they go with it; in S3 they stay (the namespace's
/// Secret, which holds the credentials, goes too), and the log says where. The finalizer
/// goes either way, so that the namespace is not held up.
fn left_with_namespace(snap: &Snapshot, storage: &Storage) {
    let (ns, name) = (snap.namespace().unwrap_or_default(), snap.name_any());
    if let Some(local) = &storage.local {
        let claim = &local.persistent_volume_claim.claim_name;
        tracing::info!(
            namespace = ns,
            snapshot = name,
            claim,
            "namespace deleted: the archives go with the claim that holds them"
        );
    } else if let Some(s3) = &storage.s3 {
        tracing::warn!(
            namespace = ns,
            snapshot = name,
            bucket = s3.bucket,
            prefix = s3.prefix.as_deref().unwrap_or_default(),
            "namespace deleted: no mover can delete the archives; they stay in the bucket \
             (delete them with `snapshot-operator snapshot delete`, or delete Snapshots before \
             their namespace)"
        );
    }
}

/// Starts again a StatefulSet stopped for it, then deletes the archives (through a delete
/// mover) when the policy says so.
pub async fn cleanup(snap: &Snapshot, ctx: &Context) -> Result<Action, Error> {
    start_again(snap, ctx).await?;
    for archive in snap.status.iter().flat_map(|s| &s.archives) {
        copy::of(snap.spec.copy_method)
            .release(ctx, snap, &archive.node)
            .await?;
    }
    let keys = keys(snap);
    let ns = snap.namespace().unwrap_or_default();
    let storage = effective_storage(snap, ctx.config.default_storage_for(&ns).as_ref());
    let (DeletionPolicy::Delete, Some(storage)) = (snap.spec.deletion_policy, storage) else {
        return Ok(Action::await_change());
    };
    if keys.is_empty() {
        return Ok(Action::await_change());
    }
    let ns = snap.namespace().unwrap_or_default();
    // In the default storage (as it is now), the operator may delete them itself: at once,
    // with no mover and no slot, in a namespace being deleted too.
    if ctx.config.default_storage_for(&ns).as_ref() == Some(&storage)
        && let Some(own) = ctx.deleting_storage(&ns).await
    {
        let deleted = match own {
            Ok(store) => ops::delete_archives(store.as_ref(), &keys).await,
            Err(e) => Err(e),
        };
        return done(snap, ctx, deleted.map_err(|e| render_error(&e))).await;
    }
    let uid = snap.uid().unwrap_or_default();
    let name = mover::job_name("del", &snap.name_any(), "all");
    let Some(m) = ctx.mover(&ns, &name, &uid).await? else {
        // Another Snapshot's delete mover may delete these archives with its own.
        let others = ctx.cluster.delete_movers_for(&ns, &uid);
        if let Some(settled) = covered(&others) {
            ctx.needs_no_slot(snap, "all");
            return match settled {
                true => done(snap, ctx, Ok(())).await,
                false => Err(Error::CleanupPending),
            };
        }
        if ctx.take_slot(snap, "all", &name) {
            let job = delete_mover(snap, ctx, name, &storage).await?;
            match jobs::create(&ctx.client, &job).await {
                Err(e) if jobs::namespace_terminating(&e) => {
                    left_with_namespace(snap, &storage);
                    return Ok(Action::await_change());
                }
                other => other?,
            }
        }
        return Err(Error::CleanupPending);
    };
    match m.outcome() {
        None => Err(Error::CleanupPending),
        Some(true) => done(snap, ctx, Ok(())).await,
        Some(false) => {
            let message = m
                .report()
                .error
                .unwrap_or_else(|| "the delete mover failed".into());
            let failed = done(snap, ctx, Err(message)).await;
            jobs::delete(&ctx.client, &m.job).await?;
            failed
        }
    }
}

/// The keys of a Snapshot's archives.
fn keys(snap: &Snapshot) -> Vec<String> {
    snap.status
        .iter()
        .flat_map(|s| &s.archives)
        .filter(|a| a.phase == ArchivePhase::Succeeded)
        .filter_map(|a| archive_key(&snap.spec, a))
        .collect()
}

/// How other Snapshots' delete movers that delete a Snapshot's archives too stand (pure):
/// `Some(true)` once one succeeded, `Some(false)` while one runs, `None` if none will (none
/// there, or all failed: its own mover then deletes them, and says how that went).
fn covered(others: &[Mover]) -> Option<bool> {
    let outcomes: Vec<Option<bool>> = others.iter().map(Mover::outcome).collect();
    if outcomes.contains(&Some(true)) {
        Some(true)
    } else if outcomes.contains(&None) {
        Some(false)
    } else {
        None
    }
}

/// Most Snapshots whose archives one delete mover deletes.
const BATCH: usize = 50;

/// The Snapshots whose archives the delete mover of `snap` deletes with its own (pure):
/// those of `deleting` that are deleted too, in its namespace, keeping their archives in
/// `storage` as `snap` does and deleting them with them, of the same workload and mover
/// user (the mover acts as that user for all) and finished (their archives change no more),
/// and not deleted already by a delete mover that runs or succeeded (`covered`).
fn batch<'a>(
    snap: &Snapshot,
    storage: &Storage,
    default: Option<&Storage>,
    deleting: &'a [Arc<Snapshot>],
    covered: impl Fn(&Snapshot) -> bool,
) -> Vec<&'a Snapshot> {
    let same = |other: &Snapshot| {
        other.namespace() == snap.namespace()
            && other.uid() != snap.uid()
            && other.meta().deletion_timestamp.is_some()
            && other.finalizers().iter().any(|f| f == FINALIZER)
            && other.spec.deletion_policy == DeletionPolicy::Delete
            && other.spec.source == snap.spec.source
            && other.spec.mover_security_context == snap.spec.mover_security_context
            && other
                .status
                .as_ref()
                .and_then(|s| s.phase)
                .is_some_and(Phase::is_final)
            && effective_storage(other, default).as_ref() == Some(storage)
    };
    deleting
        .iter()
        .map(AsRef::as_ref)
        .filter(|other| same(other) && !keys(other).is_empty() && !covered(other))
        .take(BATCH - 1)
        .collect()
}

/// Says how deleting the archives went: the finalizer goes once they are deleted; a failure
/// is retried.
async fn done(
    snap: &Snapshot,
    ctx: &Context,
    deleted: Result<(), String>,
) -> Result<Action, Error> {
    match deleted {
        Ok(()) => {
            let note = "archives and checksums deleted";
            ctx.publish(snap, EventType::Normal, "Deleted", note, "Cleanup")
                .await;
            Ok(Action::await_change())
        }
        Err(message) => {
            let note = format!("{message}; retrying");
            ctx.publish(snap, EventType::Warning, "CleanupFailed", note, "Cleanup")
                .await;
            Err(Error::CleanupFailed(message))
        }
    }
}

/// The Job of the delete mover `name` of `snap`: it deletes the archives of `storage` of
/// `snap` and of the other Snapshots [`batch`] finds, each an owner of the Job (whose
/// outcome each reads, and whose garbage collection waits for the last of them).
async fn delete_mover(
    snap: &Snapshot,
    ctx: &Context,
    name: String,
    storage: &Storage,
) -> Result<Job, Error> {
    let ns = snap.namespace().unwrap_or_default();
    let default = ctx.config.default_storage_for(&ns);
    let deleting = ctx.cluster.snapshots.state();
    let is_covered = |other: &Snapshot| {
        let uid = other.uid().unwrap_or_default();
        covered(&ctx.cluster.delete_movers_for(&ns, &uid)).is_some()
    };
    let others = batch(snap, storage, default.as_ref(), &deleting, is_covered);
    let security = acting_as(ctx, snap).await?;
    let task = MoverTask::Delete(DeleteTask {
        keys: std::iter::once(snap)
            .chain(others.iter().copied())
            .flat_map(keys)
            .collect(),
        termination_log: TERMINATION_LOG.into(),
    });
    let spec = MoverJob {
        name,
        namespace: ns,
        owner: snap
            .controller_owner_ref(&())
            .expect("a stored Snapshot has a UID"),
        owner_uid: snap.uid().unwrap_or_default(),
        node: "all",
        task,
        data: None,
        storage,
        pin_to: None,
        security,
        env: Vec::new(),
    };
    let mut job = mover::job(&spec, &ctx.config.mover);
    let owners = job.metadata.owner_references.get_or_insert_with(Vec::new);
    owners.extend(others.iter().filter_map(|o| o.owner_ref(&())));
    Ok(job)
}

/// A StatefulSet this Snapshot stopped and has not started again is started again.
pub async fn start_again(snap: &Snapshot, ctx: &Context) -> Result<(), Error> {
    let status = snap.status.clone().unwrap_or_default();
    let done = status.phase.is_some_and(Phase::is_final);
    let sts = snap.spec.source.stateful_set.as_ref();
    if let (Some(sts), Some(replicas), false) = (sts, status.stopped_replicas, done) {
        let ns = snap.namespace().unwrap_or_default();
        stop::scale(ctx, &ns, &sts.name, replicas).await?;
    }
    Ok(())
}
