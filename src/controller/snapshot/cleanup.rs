//! A deleted Snapshot: its workload started again, what its copy method made deleted, and its
//! archives deleted by a delete mover when its policy says so.

use k8s_openapi::api::batch::v1::Job;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};

use super::act::acting_as;
use crate::api::snapshot::{ArchivePhase, DeletionPolicy, Phase, Snapshot, Storage};
use crate::controller::kernel::{archive_key, effective_storage};
use crate::controller::mover::{self, MoverJob};
use crate::controller::{Context, Error, copy, jobs, stop};
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
    let keys: Vec<String> = snap
        .status
        .iter()
        .flat_map(|s| &s.archives)
        .filter(|a| a.phase == ArchivePhase::Succeeded)
        .filter_map(|a| archive_key(&snap.spec, a))
        .collect();
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
        if ctx.take_slot(snap, "all", &name) {
            let job = delete_mover(snap, ctx, name, keys, &storage).await?;
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

/// The Job of the mover `name` that deletes the archives `keys` of `storage`.
async fn delete_mover(
    snap: &Snapshot,
    ctx: &Context,
    name: String,
    keys: Vec<String>,
    storage: &Storage,
) -> Result<Job, Error> {
    let security = acting_as(ctx, snap).await?;
    let task = MoverTask::Delete(DeleteTask {
        keys,
        termination_log: TERMINATION_LOG.into(),
    });
    let spec = MoverJob {
        name,
        namespace: snap.namespace().unwrap_or_default(),
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
    Ok(mover::job(&spec, &ctx.config.mover))
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
