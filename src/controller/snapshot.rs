//! The Snapshot reconciler: fetch → validate (pure) → plan (pure) → apply (mover Jobs) →
//! status. One mover Job per node; the archives' metadata comes back in the movers'
//! termination messages. Deleting a Snapshot with `deletionPolicy: Delete` runs a delete
//! mover before the finalizer goes.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, PodSecurityContext};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, ListParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};

use super::copy::{self, Prepared};
use super::jobs::{self, Mover};
use super::mover::{self, MoverJob};
use super::stop;
use super::{Context, Error, Reconciled, reject, trusted, workload, write_status};
use crate::api::condition::{self, reason};
use crate::api::snapshot::{
    ArchivePhase, ArchiveStatus, DeletionPolicy, Phase, Snapshot, SnapshotSpec, SnapshotStatus,
    StatefulSetRef, Storage,
};
use crate::engine::manifest::SnapshotIdentity;
use crate::engine::name;
use crate::protocol::{DeleteTask, MoverReport, MoverTask, SnapshotTask, TERMINATION_LOG};

/// How often a running Snapshot is looked at even without events.
const RUNNING_RECHECK: Duration = Duration::from_secs(30);
/// How often a Snapshot waiting for a mover slot tries again.
const PENDING_RECHECK: Duration = Duration::from_secs(10);

/// Checks what the API server's schema cannot (pure).
pub fn validate(spec: &SnapshotSpec) -> Result<(), String> {
    workload::validate(&spec.source)?;
    inside_volume("path", &spec.path)?;
    if let Some(c) = &spec.collection {
        name::validate("collection", c).map_err(|e| e.to_string())?;
    }
    if let Some(storage) = &spec.storage {
        validate_storage(storage)?;
    }
    if copy::of(spec.copy_method).stops_workload() && spec.source.stateful_set.is_none() {
        return Err("copyMethod Stop needs a statefulSet source (it stops the StatefulSet)".into());
    }
    Ok(())
}

/// The StatefulSet to stop for the time of the snapshot, if the spec asks for it (pure).
fn stop_target(spec: &SnapshotSpec) -> Option<&StatefulSetRef> {
    let sts = spec.source.stateful_set.as_ref();
    sts.filter(|_| copy::of(spec.copy_method).stops_workload())
}

/// The status while the workload is being stopped (pure): its replicas recorded.
fn stopping_status(
    snap: &Snapshot,
    archives: Vec<ArchiveStatus>,
    storage: &Storage,
    (replicas, message): (Option<i32>, String),
    now: Time,
) -> SnapshotStatus {
    let old = snap.status.clone().unwrap_or_default();
    SnapshotStatus {
        stopped_replicas: replicas,
        conditions: vec![condition::ready(
            false,
            reason::STOPPING_WORKLOAD,
            message,
            snap.meta().generation,
            &old.conditions,
            now.clone(),
        )],
        ..next_status(snap, archives, storage, now)
    }
}

/// Exactly one storage kind (pure).
pub fn validate_storage(storage: &Storage) -> Result<(), String> {
    match (&storage.local, &storage.s3) {
        (Some(local), None) => inside_volume("storage.local.path", &local.path),
        (None, Some(_)) => Ok(()),
        _ => Err("storage: set exactly one of local and s3".into()),
    }
}

/// A path inside a volume: relative to its root, never leaving it (pure).
pub fn inside_volume(field: &str, path: &str) -> Result<(), String> {
    if path.split('/').any(|part| part == "..") {
        return Err(format!(
            "{field} {path:?} leaves the volume: it must not contain '..'"
        ));
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

/// What to do for one node.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeStep {
    /// Its archive is final; keep the status entry.
    Keep,
    /// No mover yet: start one.
    Start,
    /// Its mover runs.
    Running,
    /// Its mover finished: record the report.
    Finished {
        succeeded: bool,
        report: Box<MoverReport>,
    },
}

/// Whether a node's archive is final.
pub fn is_final(archive: &ArchiveStatus) -> bool {
    matches!(
        archive.phase,
        ArchivePhase::Succeeded | ArchivePhase::Failed
    )
}

/// Decides per node from the archives recorded so far and their movers (pure).
pub fn plan(archives: &[ArchiveStatus], movers: &[Option<Mover>]) -> Vec<NodeStep> {
    archives
        .iter()
        .zip(movers)
        .map(|(a, mover)| {
            if is_final(a) {
                return NodeStep::Keep;
            }
            match mover {
                None => NodeStep::Start,
                Some(m) => match m.outcome() {
                    None => NodeStep::Running,
                    Some(succeeded) => NodeStep::Finished {
                        succeeded,
                        report: Box::new(m.report()),
                    },
                },
            }
        })
        .collect()
}

/// Applies a node step to its status entry (pure).
pub fn next_archive(
    archive: &ArchiveStatus,
    step: &NodeStep,
    storage: &Storage,
    started: bool,
) -> ArchiveStatus {
    let mut a = archive.clone();
    match step {
        NodeStep::Keep => {}
        NodeStep::Start if started => {
            a.phase = ArchivePhase::Running;
            a.message = None;
        }
        NodeStep::Start => {
            a.phase = ArchivePhase::Pending;
            a.message = Some("waiting for a free mover slot".into());
        }
        NodeStep::Running => {
            a.phase = ArchivePhase::Running;
            a.message = None;
        }
        NodeStep::Finished {
            succeeded: true,
            report,
        } if report.key.is_some() => {
            a.phase = ArchivePhase::Succeeded;
            a.name.clone_from(&report.name);
            a.key.clone_from(&report.key);
            // S3 locations are as the mover's storage reports them; a local storage claim is
            // shown by name, which the mover (seeing only its mount) does not know.
            a.location = match &storage.local {
                Some(local) => report
                    .key
                    .as_deref()
                    .map(|k| mover::claim_location(local, k)),
                None => report.location.clone(),
            };
            a.size = report.size.and_then(|s| i64::try_from(s).ok());
            a.checksum.clone_from(&report.checksum);
            a.message = report
                .changed
                .as_ref()
                .map(|changed| format!("{changed}; copyMethod Stop takes a copy of one moment"));
        }
        NodeStep::Finished {
            succeeded: true, ..
        } => {
            a.phase = ArchivePhase::Failed;
            a.message = Some("the mover succeeded but its report is missing".into());
        }
        NodeStep::Finished { report, .. } => {
            a.phase = ArchivePhase::Failed;
            a.message = Some(
                report
                    .error
                    .clone()
                    .unwrap_or_else(|| "the mover failed without a message".into()),
            );
        }
    }
    a
}

/// The overall phase from the archives (pure).
pub fn phase_of(archives: &[ArchiveStatus]) -> Phase {
    let any = |p: ArchivePhase| archives.iter().any(|a| a.phase == p);
    if any(ArchivePhase::Running) {
        Phase::Running
    } else if any(ArchivePhase::Pending) {
        Phase::Pending
    } else if any(ArchivePhase::Failed) {
        Phase::Failed
    } else {
        Phase::Succeeded
    }
}

/// The new status (pure).
pub fn next_status(
    snap: &Snapshot,
    archives: Vec<ArchiveStatus>,
    storage: &Storage,
    now: Time,
) -> SnapshotStatus {
    let old = snap.status.clone().unwrap_or_default();
    let phase = phase_of(&archives);
    let done = archives
        .iter()
        .filter(|a| a.phase == ArchivePhase::Succeeded)
        .count();
    let total_size: i64 = archives.iter().filter_map(|a| a.size).sum();
    let (ready, why, message) = match phase {
        Phase::Succeeded => (
            true,
            reason::SUCCEEDED,
            format!("{done} of {} archives stored", archives.len()),
        ),
        Phase::Failed => {
            let failures: Vec<String> = archives
                .iter()
                .filter(|a| a.phase == ArchivePhase::Failed)
                .map(|a| format!("{}: {}", a.node, a.message.as_deref().unwrap_or("failed")))
                .collect();
            (false, reason::FAILED, failures.join("; "))
        }
        Phase::Running => (
            false,
            reason::RUNNING,
            format!("{done} of {} archives stored", archives.len()),
        ),
        Phase::Pending => (
            false,
            reason::PENDING,
            "waiting for a free mover slot".into(),
        ),
    };
    let terminal = phase.is_final();
    let started = archives.iter().any(|a| a.phase != ArchivePhase::Pending);
    SnapshotStatus {
        observed_generation: snap.meta().generation,
        phase: Some(phase),
        start_time: old
            .start_time
            .clone()
            .or_else(|| started.then(|| now.clone())),
        completion_time: old
            .completion_time
            .clone()
            .or_else(|| terminal.then(|| now.clone())),
        conditions: vec![condition::ready(
            ready,
            why,
            message,
            snap.meta().generation,
            &old.conditions,
            now,
        )],
        nodes: Some(archives.len() as i32),
        size: (total_size > 0).then(|| crate::format::human_bytes(total_size as u64)),
        storage: Some(storage.clone()),
        archives,
        stopped_replicas: old.stopped_replicas,
    }
}

/// The status of a Snapshot whose spec cannot be acted on (pure).
pub fn invalid_status(snap: &Snapshot, message: &str, now: Time) -> SnapshotStatus {
    let old = snap.status.clone().unwrap_or_default();
    SnapshotStatus {
        observed_generation: snap.meta().generation,
        phase: Some(Phase::Failed),
        conditions: vec![condition::ready(
            false,
            reason::INVALID_SPEC,
            message,
            snap.meta().generation,
            &old.conditions,
            now,
        )],
        ..old
    }
}

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
    // Its status comes from the storage (`import`); no mover ever runs for it. (A label put
    // on a Snapshot that holds its StatefulSet stopped does not stop its reconciliation.)
    let holding = snap
        .status
        .as_ref()
        .is_some_and(|s| s.stopped_replicas.is_some());
    if snap.is_imported() && !holding {
        return Ok(Action::await_change());
    }
    let old = snap.status.clone().unwrap_or_default();
    // Finished movers whose results the status holds have done their part.
    let recorded = old.archives.iter().filter(|a| is_final(a));
    ctx.remove_recorded_movers(snap, recorded.map(|a| job_name(snap, &a.node)))
        .await?;
    if old.phase.is_some_and(Phase::is_final) && old.observed_generation == snap.meta().generation {
        return Ok(Action::await_change());
    }
    let (storage, archives) = match resolve(snap, ctx).await? {
        Ok(resolved) => resolved,
        Err(message) => return invalid(snap, ctx, &message).await,
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
        Some(Phase::Running) => Action::requeue(RUNNING_RECHECK),
        Some(Phase::Pending) => Action::requeue(PENDING_RECHECK),
        _ => Action::await_change(),
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
            ctx.metrics
                .mover_finished("snapshot", jobs::duration(&m.job));
            if *succeeded && report.key.is_some() {
                ctx.metrics.archived(report.size.unwrap_or(0));
            }
            tracing::info!(node = %archive.node, succeeded, "snapshot mover finished");
        }
    }
}

/// The storage and the nodes' archive entries (as first resolved), or why the spec cannot be
/// acted on.
async fn resolve(
    snap: &Snapshot,
    ctx: &Context,
) -> Result<Result<(Storage, Vec<ArchiveStatus>), String>, Error> {
    let ns = snap.namespace().unwrap_or_default();
    let storage = effective_storage(snap, ctx.config.default_storage_for(&ns).as_ref());
    let own = snap.spec.storage.as_ref().and_then(|s| s.s3.as_ref());
    let allowed = trusted(&ctx.config, own, snap.spec.mover_security_context.as_ref());
    let checked = validate(&snap.spec).and(allowed).and_then(|()| {
        storage.ok_or_else(|| {
            "no storage: set spec.storage, or defaultStorage in the operator's configuration"
                .to_owned()
        })
    });
    let storage = match checked {
        Ok(storage) => storage,
        Err(message) => return Ok(Err(message)),
    };
    let recorded = snap.status.iter().flat_map(|s| s.archives.clone());
    let archives: Vec<ArchiveStatus> = recorded.collect();
    if !archives.is_empty() {
        return Ok(Ok((storage, archives)));
    }
    let ns = snap.namespace().unwrap_or_default();
    Ok(workload::nodes(&ctx.client, &ns, &snap.spec.source)
        .await?
        .map(|nodes| (storage, nodes.into_iter().map(pending_archive).collect())))
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
    }
}

/// Starts the movers the plan calls for, as slots allow; the next archive entries.
async fn act(
    snap: &Snapshot,
    ctx: &Context,
    (archives, steps): (&[ArchiveStatus], &[NodeStep]),
    storage: &Storage,
    pods: Option<Vec<Pod>>,
) -> Result<Vec<ArchiveStatus>, Error> {
    let method = copy::of(snap.spec.copy_method);
    // Pods tell where claims are attached, to pin new movers (`pods`, if listed already);
    // the workload who the movers act as: both read once a mover starts.
    let mut inputs = MoverInputs::Unread(pods);
    let mut next = Vec::new();
    for (index, (archive, step)) in archives.iter().zip(steps).enumerate() {
        let starting = *step == NodeStep::Start;
        let volume_snapshot = method
            .volume_snapshot(snap, &archive.node)
            .filter(|_| starting)
            .or_else(|| archive.volume_snapshot.clone());
        let waiting = |phase, message| ArchiveStatus {
            phase,
            message: Some(message),
            volume_snapshot: volume_snapshot.clone(),
            ..archive.clone()
        };
        if starting {
            match method.prepare(ctx, snap, archive).await? {
                Prepared::Ready => {}
                Prepared::Waiting(why) => {
                    next.push(waiting(ArchivePhase::Pending, why));
                    continue;
                }
                Prepared::Failed(why) => {
                    next.push(waiting(ArchivePhase::Failed, why));
                    continue;
                }
            }
        }
        if starting && ctx.take_slot(snap, &archive.node, &job_name(snap, &archive.node)) {
            let (pods, security) = inputs.read(ctx, snap).await?;
            let read_from = match method.source_claim(ctx, snap, archive).await? {
                Ok(read_from) => read_from,
                Err(why) => {
                    next.push(ArchiveStatus {
                        phase: ArchivePhase::Failed,
                        message: Some(why),
                        ..archive.clone()
                    });
                    continue;
                }
            };
            let mover = NewMover {
                archive,
                read_from: read_from.as_deref(),
                storage,
                pods,
                identity: identity(snap, index, archives.len(), &archive.claim),
                security: security.clone(),
            };
            start_mover(snap, ctx, mover).await?;
            let mut entry = next_archive(archive, step, storage, true);
            entry.read_from = read_from;
            entry.volume_snapshot = volume_snapshot;
            next.push(entry);
            continue;
        }
        // What was made for the mover has served once its node's archive is done.
        if matches!(step, NodeStep::Finished { .. }) {
            method.release(ctx, snap, &archive.node).await?;
        }
        let mut entry = next_archive(archive, step, storage, false);
        entry.volume_snapshot = volume_snapshot;
        next.push(entry);
    }
    Ok(next)
}

/// What starting movers needs, read from the API server when the first one starts: the
/// namespace's pods (where claims are attached) and who the movers act as.
enum MoverInputs {
    /// Not read yet (the pods, if listed already).
    Unread(Option<Vec<Pod>>),
    Read(Vec<Pod>, Box<PodSecurityContext>),
}

impl MoverInputs {
    async fn read(
        &mut self,
        ctx: &Context,
        snap: &Snapshot,
    ) -> Result<(&[Pod], &PodSecurityContext), Error> {
        if let MoverInputs::Unread(pods) = self {
            let ns = snap.namespace().unwrap_or_default();
            let listed = match pods.take() {
                Some(listed) => listed,
                None => {
                    Api::<Pod>::namespaced(ctx.client.clone(), &ns)
                        .list(&ListParams::default())
                        .await?
                        .items
                }
            };
            let security = acting_as(ctx, snap).await?;
            *self = MoverInputs::Read(listed, Box::new(security));
        }
        match self {
            MoverInputs::Read(pods, security) => Ok((pods, security)),
            MoverInputs::Unread(_) => unreachable!("read above"),
        }
    }
}

/// The mover Job of a node.
fn job_name(snap: &Snapshot, node: &str) -> String {
    mover::job_name("snap", &snap.name_any(), node)
}

async fn invalid(snap: &Snapshot, ctx: &Context, message: &str) -> Result<Action, Error> {
    let api: Api<Snapshot> =
        Api::namespaced(ctx.client.clone(), &snap.namespace().unwrap_or_default());
    start_again(snap, ctx).await?;
    let status = invalid_status(snap, message, Time(ctx.now()));
    reject(ctx, snap, &api, &status, message).await
}

/// Which Snapshot an archive belongs to, and which of its nodes takes it (pure): recorded in
/// the archive's manifest.
pub fn identity(snap: &Snapshot, index: usize, nodes: usize, claim: &str) -> SnapshotIdentity {
    let source = &snap.spec.source;
    let (source, volume_claim_template) =
        match (&source.stateful_set, &source.persistent_volume_claim) {
            (Some(sts), _) => (
                format!("statefulSet/{}", sts.name),
                Some(sts.volume_claim_template.clone()),
            ),
            (None, Some(claim)) => (format!("persistentVolumeClaim/{}", claim.claim_name), None),
            (None, None) => (String::new(), None),
        };
    SnapshotIdentity {
        namespace: snap.namespace().unwrap_or_default(),
        name: snap.name_any(),
        uid: snap.uid().unwrap_or_default(),
        index: u32::try_from(index).unwrap_or(u32::MAX),
        nodes: u32::try_from(nodes).unwrap_or(u32::MAX),
        source,
        volume_claim_template,
        claim: claim.to_owned(),
        path: snap.spec.path.clone(),
    }
}

/// What a node's new mover needs.
struct NewMover<'a> {
    archive: &'a ArchiveStatus,
    /// The claim it reads instead of the node's (a clone).
    read_from: Option<&'a str>,
    storage: &'a Storage,
    pods: &'a [Pod],
    identity: SnapshotIdentity,
    security: PodSecurityContext,
}

/// Starts the mover of one node (its slot taken).
async fn start_mover(snap: &Snapshot, ctx: &Context, new: NewMover<'_>) -> Result<(), Error> {
    let NewMover {
        archive,
        read_from,
        storage,
        pods,
        identity,
        security,
    } = new;
    let task = MoverTask::Snapshot(SnapshotTask {
        dir: mover::data_dir(&snap.spec.path),
        collection: snap.spec.collection.clone(),
        node: archive.node.clone(),
        identity: Some(identity),
        format: snap.spec.format,
        termination_log: TERMINATION_LOG.into(),
    });
    let spec = MoverJob {
        name: job_name(snap, &archive.node),
        namespace: snap.namespace().unwrap_or_default(),
        owner: snap
            .controller_owner_ref(&())
            .expect("a stored Snapshot has a UID"),
        owner_uid: snap.uid().unwrap_or_default(),
        node: &archive.node,
        task,
        // A clone is a new volume: made where the mover runs.
        data: Some((read_from.unwrap_or(&archive.claim), true)),
        storage,
        pin_to: match read_from {
            Some(_) => None,
            None => workload::node_of_claim(pods, &archive.claim),
        },
        security,
    };
    jobs::create(&ctx.client, &mover::job(&spec, &ctx.config.mover)).await
}

/// A StatefulSet this Snapshot stopped and has not started again is started again.
async fn start_again(snap: &Snapshot, ctx: &Context) -> Result<(), Error> {
    let status = snap.status.clone().unwrap_or_default();
    let done = status.phase.is_some_and(Phase::is_final);
    let sts = snap.spec.source.stateful_set.as_ref();
    if let (Some(sts), Some(replicas), false) = (sts, status.stopped_replicas, done) {
        let ns = snap.namespace().unwrap_or_default();
        stop::scale(ctx, &ns, &sts.name, replicas).await?;
    }
    Ok(())
}

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
async fn cleanup(snap: &Snapshot, ctx: &Context) -> Result<Action, Error> {
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
        Some(true) => {
            ctx.publish(
                snap,
                EventType::Normal,
                "Deleted",
                "archives and checksums deleted",
                "Cleanup",
            )
            .await;
            Ok(Action::await_change())
        }
        Some(false) => {
            let message = m
                .report()
                .error
                .unwrap_or_else(|| "the delete mover failed".into());
            ctx.publish(
                snap,
                EventType::Warning,
                "CleanupFailed",
                format!("{message}; retrying"),
                "Cleanup",
            )
            .await;
            jobs::delete(&ctx.client, &m.job).await?;
            Err(Error::CleanupFailed(message))
        }
    }
}

/// Who a Snapshot's movers act as, its delete mover too: its `moverSecurityContext`, else
/// the workload's user while the workload exists. On a volume that takes no `fsGroup` only
/// the user who wrote an archive may delete it.
async fn acting_as(ctx: &Context, snap: &Snapshot) -> Result<PodSecurityContext, Error> {
    workload::mover_security(
        &ctx.client,
        &snap.namespace().unwrap_or_default(),
        snap.spec.mover_security_context.as_ref(),
        &snap.spec.source,
        &ctx.config.mover,
    )
    .await
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
    };
    Ok(mover::job(&spec, &ctx.config.mover))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::snapshot::{ClaimRef, CopyMethod, LocalStorage, StatefulSetRef, Workload};

    pub(crate) fn storage() -> Storage {
        Storage {
            local: Some(LocalStorage {
                persistent_volume_claim: ClaimRef {
                    claim_name: "backups".into(),
                },
                path: "/".into(),
            }),
            s3: None,
        }
    }

    fn archive(node: &str, phase: ArchivePhase) -> ArchiveStatus {
        ArchiveStatus {
            phase,
            ..pending_archive(workload::Node {
                name: node.into(),
                claim: format!("data-{node}"),
            })
        }
    }

    fn snapshot_spec(collection: Option<&str>) -> SnapshotSpec {
        SnapshotSpec {
            source: Workload {
                stateful_set: None,
                persistent_volume_claim: Some(ClaimRef {
                    claim_name: "x".into(),
                }),
            },
            path: "/".into(),
            collection: collection.map(Into::into),
            storage: None,
            deletion_policy: DeletionPolicy::Delete,
            copy_method: CopyMethod::Direct,
            volume_snapshot_class_name: None,
            mover_security_context: None,
            format: None,
        }
    }

    #[test]
    fn files_changed_while_read_are_said_beside_a_stored_archive() {
        let report = MoverReport {
            key: Some("products/a.snapshot".into()),
            changed: Some(
                "1 file(s) changed while they were read: collections/products/wal".into(),
            ),
            ..MoverReport::default()
        };
        let step = NodeStep::Finished {
            succeeded: true,
            report: Box::new(report),
        };
        let a = next_archive(
            &archive("qdrant-0", ArchivePhase::Running),
            &step,
            &storage(),
            false,
        );
        assert_eq!(a.phase, ArchivePhase::Succeeded);
        let message = a.message.unwrap();
        assert!(
            message.contains("collections/products/wal") && message.contains("copyMethod Stop"),
            "{message}"
        );
    }

    #[test]
    fn specs_are_validated() {
        let mut spec = SnapshotSpec {
            source: Workload {
                stateful_set: Some(StatefulSetRef {
                    name: "qdrant".into(),
                    volume_claim_template: "data".into(),
                }),
                persistent_volume_claim: Some(ClaimRef {
                    claim_name: "x".into(),
                }),
            },
            path: "/".into(),
            collection: None,
            storage: None,
            deletion_policy: DeletionPolicy::Delete,
            copy_method: CopyMethod::Direct,
            volume_snapshot_class_name: None,
            mover_security_context: None,
            format: None,
        };
        assert!(validate(&spec).unwrap_err().contains("exactly one"));
        spec.source.persistent_volume_claim = None;
        assert!(validate(&spec).is_ok());
        spec.collection = Some("..".into());
        assert!(validate(&spec).unwrap_err().contains("collection"));
        spec.collection = Some("products".into());
        spec.storage = Some(Storage::default());
        assert!(validate(&spec).unwrap_err().contains("storage"));
        // Paths stay inside their volumes.
        spec.storage = Some(storage());
        assert!(validate(&spec).is_ok());
        spec.storage.as_mut().unwrap().local.as_mut().unwrap().path = "/a/../..".into();
        assert!(validate(&spec).unwrap_err().contains("leaves the volume"));
        spec.storage = None;
        spec.path = "../etc".into();
        assert!(
            validate(&spec)
                .unwrap_err()
                .contains("path \"../etc\" leaves the volume")
        );
        spec.path = "/qdrant/..storage/x..y".into();
        assert!(validate(&spec).is_ok(), "names with dots are names");
    }

    #[test]
    fn phases_follow_the_archives() {
        use ArchivePhase::*;
        assert_eq!(
            phase_of(&[archive("a", Succeeded), archive("b", Running)]),
            Phase::Running
        );
        assert_eq!(
            phase_of(&[archive("a", Succeeded), archive("b", Pending)]),
            Phase::Pending
        );
        assert_eq!(
            phase_of(&[archive("a", Failed), archive("b", Succeeded)]),
            Phase::Failed
        );
        assert_eq!(
            phase_of(&[archive("a", Succeeded), archive("b", Succeeded)]),
            Phase::Succeeded
        );
    }

    #[test]
    fn reports_become_archives() {
        let a = archive("qdrant-0", ArchivePhase::Running);
        let report = MoverReport {
            name: Some("p-qdrant-0-2026-11-25-10-00-00.snapshot".into()),
            key: Some("p/p-qdrant-0-2026-11-25-10-00-00.snapshot".into()),
            size: Some(2048),
            checksum: Some("ab".repeat(32)),
            ..MoverReport::default()
        };
        let done = next_archive(
            &a,
            &NodeStep::Finished {
                succeeded: true,
                report: Box::new(report),
            },
            &storage(),
            false,
        );
        assert_eq!(done.phase, ArchivePhase::Succeeded);
        assert_eq!(
            done.location.as_deref(),
            Some("pvc://backups/p/p-qdrant-0-2026-11-25-10-00-00.snapshot")
        );
        assert_eq!(
            done.key.as_deref(),
            Some("p/p-qdrant-0-2026-11-25-10-00-00.snapshot")
        );
        assert_eq!(done.size, Some(2048));
        // In S3, the key and location are recorded as the mover's storage reported them.
        let s3 = Storage {
            s3: Some(crate::api::snapshot::S3Storage {
                bucket: "b".into(),
                region: None,
                endpoint_url: None,
                prefix: Some("ns".into()),
                force_path_style: None,
                credentials_secret: None,
            }),
            local: None,
        };
        let reported = MoverReport {
            name: Some("odd-name.snapshot".into()),
            key: Some("p/odd-name.snapshot".into()),
            location: Some("s3://b/ns/p/odd-name.snapshot".into()),
            ..MoverReport::default()
        };
        let done = next_archive(
            &a,
            &NodeStep::Finished {
                succeeded: true,
                report: Box::new(reported),
            },
            &s3,
            false,
        );
        assert_eq!(
            done.location.as_deref(),
            Some("s3://b/ns/p/odd-name.snapshot")
        );
        assert_eq!(
            archive_key(&snapshot_spec(Some("other")), &done).as_deref(),
            Some("p/odd-name.snapshot")
        );
        let failed = next_archive(
            &a,
            &NodeStep::Finished {
                succeeded: false,
                report: Box::new(MoverReport {
                    error: Some("collection \"p\" not found".into()),
                    ..MoverReport::default()
                }),
            },
            &storage(),
            false,
        );
        assert_eq!(failed.phase, ArchivePhase::Failed);
        assert!(failed.message.unwrap().contains("not found"));
        let waiting = next_archive(
            &archive("b", ArchivePhase::Pending),
            &NodeStep::Start,
            &storage(),
            false,
        );
        assert_eq!(waiting.phase, ArchivePhase::Pending);
        let started = next_archive(
            &archive("b", ArchivePhase::Pending),
            &NodeStep::Start,
            &storage(),
            true,
        );
        assert_eq!(started.phase, ArchivePhase::Running);
    }
}

#[cfg(test)]
mod mock {
    //! Reconciliations against a mock API server: every request asserted.
    use super::*;
    use crate::api::snapshot::CopyMethod;
    use crate::controller::FINALIZER;
    use crate::controller::cluster::Cluster;
    use crate::controller::config::OperatorConfig;
    use crate::controller::testing::{
        Expect, conflict, deleted, event, list, mover_job, mover_pod, movers, not_found, scripted,
        statefulset, workload_pod,
    };
    use k8s_openapi::api::batch::v1::Job;
    use serde_json::{Value, json};
    use std::sync::Arc;

    const SNAPS: &str = "/apis/snapshot-operator.dev/v1alpha1/namespaces/ns/snapshots/s";
    const JOBS: &str = "/apis/batch/v1/namespaces/ns/jobs";
    const PODS: &str = "/api/v1/namespaces/ns/pods";
    const STS: &str = "/apis/apps/v1/namespaces/ns/statefulsets/qdrant";

    /// The object as the API server returns it after a write.
    fn stored() -> Value {
        serde_json::to_value(snapshot(true, Value::Null, false)).unwrap()
    }

    fn snapshot(finalizers: bool, status: Value, deleting: bool) -> Snapshot {
        let mut meta = json!({"name": "s", "namespace": "ns", "uid": "uid-1", "generation": 1, "resourceVersion": "7"});
        if finalizers {
            meta["finalizers"] = json!([FINALIZER]);
        }
        if deleting {
            meta["deletionTimestamp"] = json!("2026-11-25T10:00:00Z");
        }
        serde_json::from_value(json!({
            "apiVersion": "snapshot-operator.dev/v1alpha1",
            "kind": "Snapshot",
            "metadata": meta,
            "spec": {
                "source": {"statefulSet": {"name": "qdrant", "volumeClaimTemplate": "data"}},
                "path": "/qdrant/storage",
                "collection": "products",
                "storage": {"local": {"persistentVolumeClaim": {"claimName": "backups"}, "path": "/"}},
            },
            "status": status,
        }))
        .unwrap()
    }

    fn job(node: &str, condition: Option<&str>) -> Job {
        mover_job("snap", ("s", "uid-1"), node, condition)
    }

    /// The job of `node`, finished, with one pod that reported `message`.
    fn finished(node: &str, condition: &str, message: &str) -> (Job, Pod) {
        let job = job(node, Some(condition));
        let exit = if condition == "Complete" { 0 } else { 1 };
        let pod = mover_pod(&job, exit, message, 4, true);
        (job, pod)
    }

    fn running_archives() -> Value {
        json!({"phase": "Running", "observedGeneration": 1,
            "storage": {"local": {"persistentVolumeClaim": {"claimName": "backups"}, "path": "/"}},
            "archives": [
                {"node": "qdrant-0", "claim": "data-qdrant-0", "phase": "Running"},
                {"node": "qdrant-1", "claim": "data-qdrant-1", "phase": "Running"}]})
    }

    async fn reconcile_with(
        snap: Snapshot,
        (config, cluster): (OperatorConfig, Cluster),
        script: Vec<Expect>,
    ) -> (Result<Action, Error>, String) {
        scripted(config, cluster, script, |ctx| {
            super::super::reconcile(Arc::new(snap), ctx)
        })
        .await
    }

    /// One pass over the Snapshot with both movers running, as the status says.
    async fn over_running_archives(cluster: Cluster, script: Vec<Expect>) -> Result<Action, Error> {
        let snap = snapshot(true, running_archives(), false);
        reconcile_with(snap, (OperatorConfig::default(), cluster), script)
            .await
            .0
    }

    fn nothing() -> (OperatorConfig, Cluster) {
        (OperatorConfig::default(), movers(vec![], vec![]))
    }

    #[tokio::test]
    async fn no_mover_ever_runs_for_an_imported_snapshot() {
        // Created by the catalog import, its status not written yet: nothing to do here.
        let mut snap = snapshot(true, Value::Null, false);
        snap.labels_mut()
            .insert(crate::api::snapshot::IMPORTED.into(), "true".into());
        snap.annotations_mut()
            .insert(crate::api::snapshot::IMPORTED_UID.into(), "uid-0".into());
        let (action, _) = reconcile_with(snap, nothing(), vec![]).await;
        assert_eq!(action.unwrap(), Action::await_change());
    }

    #[tokio::test]
    async fn a_new_snapshot_gets_the_finalizer_first() {
        let script = vec![Expect::new("PATCH", SNAPS, stored()).check(|body| {
            assert!(body.to_string().contains(FINALIZER), "{body}");
        })];
        let (action, _) =
            reconcile_with(snapshot(false, Value::Null, false), nothing(), script).await;
        assert_eq!(action.unwrap(), Action::await_change());
    }

    #[tokio::test]
    async fn one_mover_per_pod_pinned_to_the_node_of_its_claim_then_running_status() {
        let script = vec![
            Expect::new("GET", STS, statefulset(2)),
            Expect::new("GET", PODS, list("Pod", vec![workload_pod(0, "worker-a")])),
            Expect::new("GET", STS, statefulset(2)),
            Expect::new("PATCH", format!("{JOBS}/{}", mover::job_name("snap", "s", "qdrant-0")), Value::Null).check(|job| {
                let pod = &job["spec"]["template"]["spec"];
                assert_eq!(pod["containers"][0]["args"], json!(["mover", "snapshot", "--storage-path", "/data/qdrant/storage", "--volume", "/data", "--node", "qdrant-0", "--collection", "products",
                    "--identity", r#"{"namespace":"ns","name":"s","uid":"uid-1","index":0,"nodes":2,"source":"statefulSet/qdrant","volumeClaimTemplate":"data","claim":"data-qdrant-0","path":"/qdrant/storage"}"#]));
                assert_eq!(pod["volumes"][0]["persistentVolumeClaim"], json!({"claimName": "data-qdrant-0", "readOnly": true}));
                assert_eq!(pod["volumes"][1]["persistentVolumeClaim"]["claimName"], "backups");
                assert_eq!(pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]["matchFields"][0]["values"], json!(["worker-a"]));
                assert_eq!(pod["automountServiceAccountToken"], false);
                assert_eq!(job["metadata"]["ownerReferences"][0]["uid"], "uid-1");
                assert_eq!(job["metadata"]["ownerReferences"][0]["controller"], true);
            }),
            Expect::new("PATCH", format!("{JOBS}/{}", mover::job_name("snap", "s", "qdrant-1")), Value::Null).check(|job| {
                let pod = &job["spec"]["template"]["spec"];
                assert_eq!(pod["volumes"][0]["persistentVolumeClaim"]["claimName"], "data-qdrant-1");
                assert!(pod.get("affinity").is_none_or(Value::is_null), "qdrant-1 has no pod: no pinning");
            }),
            Expect::new("PATCH", format!("{SNAPS}/status"), stored()).check(|body| {
                assert_eq!(body["kind"], "Snapshot");
                assert_eq!(body["metadata"]["resourceVersion"], "7", "conditional on the version read");
                let status = &body["status"];
                assert_eq!(status["phase"], "Running");
                assert_eq!(status["nodes"], 2);
                assert_eq!(status["archives"][0]["phase"], "Running");
                assert_eq!(status["archives"][1]["claim"], "data-qdrant-1");
                assert_eq!(status["conditions"][0]["reason"], "Running");
                assert_eq!(status["conditions"][0]["status"], "False");
                assert!(status["startTime"].is_string());
            }),
            event("Running"),
        ];
        let (action, _) =
            reconcile_with(snapshot(true, Value::Null, false), nothing(), script).await;
        assert_eq!(action.unwrap(), Action::requeue(RUNNING_RECHECK));
    }

    #[tokio::test]
    async fn finished_movers_fill_the_archives_and_make_it_ready_once() {
        let report0 = r#"{"name":"products-qdrant-0-2026-11-25-10-00-00.snapshot","key":"products/products-qdrant-0-2026-11-25-10-00-00.snapshot","size":1024,"checksum":"aaaa"}"#;
        let report1 = r#"{"name":"products-qdrant-1-2026-11-25-10-00-00.snapshot","key":"products/products-qdrant-1-2026-11-25-10-00-00.snapshot","size":2048,"checksum":"bbbb"}"#;
        let (job0, pod0) = finished("qdrant-0", "Complete", report0);
        let (job1, pod1) = finished("qdrant-1", "Complete", report1);
        // An earlier attempt of qdrant-1 failed, and finished later than the retry: the retry
        // reports.
        let failed_try = mover_pod(&job1, 1, "connection reset", 5, true);
        let cluster = movers(vec![job0, job1], vec![pod0, pod1, failed_try]);
        let written = Arc::new(std::sync::Mutex::new(Value::Null));
        let keep = written.clone();
        let script = vec![
            Expect::new("PATCH", format!("{SNAPS}/status"), stored()).check(move |body| {
                let status = &body["status"];
                assert_eq!(status["phase"], "Succeeded");
                assert_eq!(status["conditions"][0]["type"], "Ready");
                assert_eq!(status["conditions"][0]["status"], "True");
                assert_eq!(status["size"], "3.0 KiB");
                let a = &status["archives"][1];
                assert_eq!(a["phase"], "Succeeded");
                assert_eq!(
                    a["location"],
                    "pvc://backups/products/products-qdrant-1-2026-11-25-10-00-00.snapshot"
                );
                assert_eq!(a["checksum"], "bbbb");
                assert_eq!(a["size"], 2048);
                assert!(status["completionTime"].is_string());
                *keep.lock().unwrap() = status.clone();
            }),
            event("Succeeded"),
        ];
        let config = || (OperatorConfig::default(), cluster.clone());
        let (action, metrics) =
            reconcile_with(snapshot(true, running_archives(), false), config(), script).await;
        assert_eq!(action.unwrap(), Action::await_change());
        assert!(
            metrics.contains("snapshot_operator_archived_bytes_total 3072"),
            "{metrics}"
        );
        let durations = r#"snapshot_operator_mover_duration_seconds_count{operation="snapshot"} 2"#;
        assert!(metrics.contains(durations), "{metrics}");

        // A second pass that read the same, now outdated, status: its write is refused and
        // nothing is counted again.
        let script = vec![Expect::new("PATCH", format!("{SNAPS}/status"), conflict()).status(409)];
        let (result, metrics) =
            reconcile_with(snapshot(true, running_archives(), false), config(), script).await;
        assert!(matches!(result.unwrap_err().inner(), Error::Stale));
        assert!(
            metrics.contains("snapshot_operator_archived_bytes_total 0\n"),
            "{metrics}"
        );

        // A pass that reads the recorded results removes the Jobs and writes nothing.
        let recorded = written.lock().unwrap().clone();
        let script = [job("qdrant-0", None), job("qdrant-1", None)]
            .iter()
            .map(|j| Expect::new("DELETE", format!("{JOBS}/{}", j.name_any()), deleted()))
            .collect();
        let (action, _) = reconcile_with(snapshot(true, recorded, false), config(), script).await;
        assert_eq!(action.unwrap(), Action::await_change());
    }

    #[tokio::test]
    async fn a_failed_mover_fails_the_snapshot_with_its_reason() {
        let (job0, pod0) = finished(
            "qdrant-0",
            "Complete",
            r#"{"name":"a.snapshot","key":"products/a.snapshot","size":1}"#,
        );
        let (job1, pod1) = finished(
            "qdrant-1",
            "Failed",
            r#"{"error":"collection \"products\" not found: /data/qdrant/storage/collections/products is not a directory"}"#,
        );
        let script = vec![
            Expect::new("PATCH", format!("{SNAPS}/status"), stored()).check(|body| {
                let status = &body["status"];
                assert_eq!(status["phase"], "Failed");
                assert_eq!(status["conditions"][0]["reason"], "Failed");
                let message = status["conditions"][0]["message"].as_str().unwrap();
                assert!(
                    message.starts_with("qdrant-1: collection \"products\" not found"),
                    "{message}"
                );
                assert_eq!(status["archives"][0]["phase"], "Succeeded");
                assert_eq!(status["archives"][1]["phase"], "Failed");
            }),
            event("Failed"),
        ];
        let cluster = movers(vec![job0, job1], vec![pod0, pod1]);
        over_running_archives(cluster, script).await.unwrap();
    }

    #[tokio::test]
    async fn a_report_from_a_pod_the_job_does_not_own_is_ignored() {
        // Any pod in the namespace can carry the Job's labels and a forged report (here one
        // that would make a later delete remove another Snapshot's archive).
        let job0 = job("qdrant-0", Some("Complete"));
        let forged = mover_pod(
            &job0,
            0,
            r#"{"name":"x.snapshot","key":"other/x.snapshot","size":1}"#,
            1,
            false,
        );
        let script = vec![
            // Not in the store: the Job's pods are read from the API server, the same check
            // applies.
            Expect::new(
                "GET",
                format!("{PODS}?&labelSelector=job-name%3D{}", job0.name_any()),
                list("Pod", vec![serde_json::to_value(&forged).unwrap()]),
            ),
            Expect::new("PATCH", format!("{SNAPS}/status"), stored()).check(|body| {
                let a = &body["status"]["archives"][0];
                assert_eq!(a["phase"], "Failed");
                assert_eq!(
                    a["message"],
                    "the mover succeeded but its report is missing"
                );
                assert!(a.get("key").is_none_or(Value::is_null), "{a}");
            }),
        ];
        let cluster = movers(
            vec![job0.clone(), job("qdrant-1", None)],
            vec![forged.clone()],
        );
        over_running_archives(cluster, script).await.unwrap();
    }

    #[tokio::test]
    async fn a_mover_that_never_starts_fails_its_node_with_the_reason() {
        // Created days ago, its pod still waits for a Secret.
        let mut stuck = job("qdrant-0", None);
        stuck.metadata.creation_timestamp = Some(Time("2026-11-25T10:00:00Z".parse().unwrap()));
        let waiting: Pod = serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "ns",
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": stuck.name_any(),
                "uid": stuck.uid().unwrap(), "controller": true}]},
            "status": {"phase": "Pending", "containerStatuses": [{"name": "mover", "image": "x", "imageID": "",
                "ready": false, "restartCount": 0, "state": {"waiting": {"reason": "CreateContainerConfigError",
                "message": "secret \"creds\" not found"}}}]}}))
        .unwrap();
        let script = vec![
            Expect::new("PATCH", format!("{SNAPS}/status"), stored()).check(|body| {
                let a = &body["status"]["archives"][0];
                assert_eq!(a["phase"], "Failed");
                let message = a["message"].as_str().unwrap();
                assert!(message.contains("did not start within 600s"), "{message}");
                assert!(message.contains("secret \"creds\" not found"), "{message}");
            }),
        ];
        let cluster = movers(vec![stuck, job("qdrant-1", None)], vec![waiting]);
        over_running_archives(cluster, script).await.unwrap();
    }

    #[tokio::test]
    async fn requests_do_not_grow_with_unrelated_pods_and_jobs() {
        // Hundreds of pods and Jobs elsewhere, some carrying the operator's labels: a pass
        // over a running Snapshot makes one request (its status), whatever their number.
        let mut jobs: Vec<Job> = (0..300)
            .map(|i| {
                mover_job(
                    "snap",
                    (&format!("other-{i}"), &format!("uid-o{i}")),
                    "qdrant-0",
                    None,
                )
            })
            .collect();
        jobs.push(job("qdrant-0", None));
        jobs.push(job("qdrant-1", None));
        let pods = jobs[..300]
            .iter()
            .map(|j| mover_pod(j, 0, "{}", 1, true))
            .collect();
        let script = vec![
            Expect::new("PATCH", format!("{SNAPS}/status"), stored()).check(|body| {
                assert_eq!(body["status"]["phase"], "Running");
            }),
        ];
        let mut status = running_archives();
        status["conditions"] = json!([{"type": "Ready", "status": "False", "reason": "Pending", "message": "", "lastTransitionTime": "2026-11-25T10:00:00Z"}]);
        let (result, _) = reconcile_with(
            snapshot(true, status, false),
            (OperatorConfig::default(), movers(jobs, pods)),
            script,
        )
        .await;
        assert_eq!(result.unwrap(), Action::requeue(RUNNING_RECHECK));
    }

    #[tokio::test]
    async fn an_invalid_spec_is_flagged_without_jobs() {
        let mut snap = snapshot(true, Value::Null, false);
        snap.spec.source.persistent_volume_claim = Some(crate::api::snapshot::ClaimRef {
            claim_name: "x".into(),
        });
        let script = vec![
            Expect::new("PATCH", format!("{SNAPS}/status"), stored()).check(|body| {
                assert_eq!(body["status"]["phase"], "Failed");
                assert_eq!(body["status"]["conditions"][0]["reason"], "InvalidSpec");
                assert!(
                    body["status"]["conditions"][0]["message"]
                        .as_str()
                        .unwrap()
                        .contains("exactly one")
                );
            }),
            event("InvalidSpec"),
        ];
        let (action, metrics) = reconcile_with(snap, nothing(), script).await;
        assert_eq!(action.unwrap(), Action::await_change(), "no requeue loop");
        assert!(
            metrics.contains(
                r#"snapshot_operator_reconcile_failures_total{resource="snapshot",reason="InvalidSpec"} 1"#
            ),
            "{metrics}"
        );
    }

    #[tokio::test]
    async fn its_own_storage_only_at_an_allowed_endpoint() {
        // A Secret the Snapshot names would go to this endpoint: refused, no mover.
        let mut snap = snapshot(true, Value::Null, false);
        snap.spec.storage = serde_json::from_value(json!({"s3": {"bucket": "b",
            "endpointUrl": "https://collector.example", "credentialsSecret": {"name": "creds"}}}))
        .unwrap();
        let script = vec![
            Expect::new("PATCH", format!("{SNAPS}/status"), stored()).check(|body| {
                let condition = &body["status"]["conditions"][0];
                assert_eq!(condition["reason"], "InvalidSpec");
                let message = condition["message"].as_str().unwrap();
                assert!(message.contains("https://collector.example"), "{message}");
            }),
            event("InvalidSpec"),
        ];
        let (result, _) = reconcile_with(snap, nothing(), script).await;
        assert_eq!(result.unwrap(), Action::await_change());
    }

    #[tokio::test]
    async fn root_movers_only_where_the_configuration_allows_them() {
        let mut snap = snapshot(true, Value::Null, false);
        snap.spec.mover_security_context = serde_json::from_value(json!({"runAsUser": 0})).unwrap();
        let script = vec![
            Expect::new("PATCH", format!("{SNAPS}/status"), stored()).check(|body| {
                let message = body["status"]["conditions"][0]["message"].as_str().unwrap();
                assert!(message.contains("mover.allowRoot"), "{message}");
            }),
            event("InvalidSpec"),
        ];
        let (result, _) = reconcile_with(snap.clone(), nothing(), script).await;
        assert_eq!(result.unwrap(), Action::await_change());
        // Allowed: the movers run as root, as asked, without reading the workload.
        let mut config = OperatorConfig::default();
        config.mover.allow_root = true;
        let script = vec![
            Expect::new("GET", STS, statefulset(1)),
            Expect::new("GET", PODS, list("Pod", vec![])),
            Expect::new(
                "PATCH",
                format!("{JOBS}/{}", mover::job_name("snap", "s", "qdrant-0")),
                Value::Null,
            )
            .check(|job| {
                let pod = &job["spec"]["template"]["spec"];
                assert_eq!(pod["securityContext"]["runAsUser"], 0);
                assert_eq!(pod["securityContext"]["runAsNonRoot"], false);
                assert_eq!(
                    pod["containers"][0]["securityContext"]["runAsNonRoot"],
                    false
                );
            }),
            Expect::new("PATCH", format!("{SNAPS}/status"), stored()),
            event("Running"),
        ];
        let cluster = movers(vec![], vec![]);
        let (result, _) = reconcile_with(snap, (config, cluster), script).await;
        result.unwrap();
    }

    #[tokio::test]
    async fn an_unknown_statefulset_is_an_invalid_spec() {
        let script = vec![
            Expect::new("GET", STS, not_found()).status(404),
            Expect::new("PATCH", format!("{SNAPS}/status"), stored()).check(|body| {
                assert_eq!(body["status"]["conditions"][0]["reason"], "InvalidSpec");
                assert!(
                    body["status"]["conditions"][0]["message"]
                        .as_str()
                        .unwrap()
                        .contains("StatefulSet qdrant not found")
                );
            }),
            event("InvalidSpec"),
        ];
        let (result, _) =
            reconcile_with(snapshot(true, Value::Null, false), nothing(), script).await;
        result.unwrap();
    }

    /// One mover slot in all, held by a running mover of another Snapshot; `also`: more
    /// Jobs in the store.
    fn one_slot_held(also: Vec<Job>) -> (OperatorConfig, Cluster) {
        let config = OperatorConfig {
            max_concurrent_movers: 1,
            ..OperatorConfig::default()
        };
        let other = serde_json::from_value::<Snapshot>(
            json!({"apiVersion": "snapshot-operator.dev/v1alpha1", "kind": "Snapshot",
            "metadata": {"name": "other", "namespace": "x", "uid": "uid-o"},
            "spec": {"source": {"persistentVolumeClaim": {"claimName": "d"}}}}),
        )
        .unwrap();
        let mut jobs = vec![mover_job("snap", ("other", "uid-o"), "n", None)];
        jobs.extend(also);
        (config, Cluster::of(jobs, vec![], vec![other], vec![]))
    }

    #[tokio::test]
    async fn movers_beyond_the_cap_wait_pending_and_foreign_jobs_hold_no_slot() {
        // A running mover of another Snapshot holds the one slot; a Job that only carries
        // the operator's labels (its owner is no Snapshot the operator knows) holds none.
        let foreign = mover_job("snap", ("ghost", "uid-ghost"), "n", None);
        let (config, busy) = one_slot_held(vec![foreign.clone()]);
        let script = vec![
            Expect::new("GET", STS, statefulset(2)),
            Expect::new("PATCH", format!("{SNAPS}/status"), stored()).check(|body| {
                assert_eq!(body["status"]["phase"], "Pending");
                assert_eq!(
                    body["status"]["archives"][0]["message"],
                    "waiting for a free mover slot"
                );
                assert!(body["status"].get("startTime").is_none());
            }),
            event("Pending"),
        ];
        let (action, _) = reconcile_with(
            snapshot(true, Value::Null, false),
            (config.clone(), busy),
            script,
        )
        .await;
        assert_eq!(action.unwrap(), Action::requeue(PENDING_RECHECK));

        // Only the foreign Job left: the slot is free.
        let script = vec![
            Expect::new("GET", STS, statefulset(1)),
            Expect::new("GET", PODS, list("Pod", vec![])),
            Expect::new("GET", STS, statefulset(1)),
            Expect::new(
                "PATCH",
                format!("{JOBS}/{}", mover::job_name("snap", "s", "qdrant-0")),
                Value::Null,
            ),
            Expect::new("PATCH", format!("{SNAPS}/status"), stored()),
            event("Running"),
        ];
        let (action, _) = reconcile_with(
            snapshot(true, Value::Null, false),
            (config, movers(vec![foreign], vec![])),
            script,
        )
        .await;
        assert_eq!(action.unwrap(), Action::requeue(RUNNING_RECHECK));
    }

    fn succeeded_archives() -> Value {
        json!({"phase": "Succeeded", "observedGeneration": 1,
            "storage": {"local": {"persistentVolumeClaim": {"claimName": "backups"}, "path": "/"}},
            "archives": [{"node": "qdrant-0", "claim": "data-qdrant-0", "phase": "Succeeded", "name": "a.snapshot"},
                         {"node": "qdrant-1", "claim": "data-qdrant-1", "phase": "Failed"}]})
    }

    #[tokio::test]
    async fn deletion_runs_a_delete_mover_then_removes_the_finalizer() {
        let delete_job = mover::job_name("del", "s", "all");
        // It acts as the workload's user, who wrote the archives.
        let mut sts = statefulset(2);
        sts["spec"]["template"] = json!({"spec": {"containers": [],
            "securityContext": {"runAsUser": 1000, "runAsGroup": 1000}}});
        let script = vec![
            Expect::new("GET", STS, sts),
            Expect::new("PATCH", format!("{JOBS}/{delete_job}"), Value::Null).check(|job| {
                let pod = &job["spec"]["template"]["spec"];
                assert_eq!(
                    pod["containers"][0]["args"],
                    json!(["mover", "delete", "--", "products/a.snapshot"])
                );
                assert_eq!(
                    pod["volumes"][0]["persistentVolumeClaim"]["claimName"],
                    "backups"
                );
                assert_eq!(pod["securityContext"]["runAsUser"], 1000, "{pod}");
                assert_eq!(pod["securityContext"]["runAsGroup"], 1000, "{pod}");
            }),
        ];
        let snap = Arc::new(snapshot(true, succeeded_archives(), true));
        let (result, metrics) = scripted(
            OperatorConfig::default(),
            movers(vec![], vec![]),
            script,
            |ctx| async move {
                let result = super::super::reconcile(snap.clone(), ctx.clone()).await;
                if let Err(e) = &result {
                    super::super::error_policy(snap, e, ctx);
                }
                result
            },
        )
        .await;
        let err = result.unwrap_err();
        assert!(matches!(err.inner(), Error::CleanupPending), "{err}");
        // Waiting for the delete mover is not a reconcile failure.
        assert!(!metrics.contains("CleanupPending"), "{metrics}");

        let done = mover_job("del", ("s", "uid-1"), "all", Some("Complete"));
        let pod = mover_pod(&done, 0, "{}", 3, true);
        let script = vec![
            event("Deleted"),
            Expect::new("PATCH", SNAPS, stored()).check(|body| {
                assert!(body.to_string().contains("remove"), "{body}");
            }),
        ];
        let deleting = || snapshot(true, succeeded_archives(), true);
        let (result, _) = reconcile_with(
            deleting(),
            (OperatorConfig::default(), movers(vec![done], vec![pod])),
            script,
        )
        .await;
        result.unwrap();

        // A failed delete keeps the finalizer, says why, and runs the mover again later.
        let failed = mover_job("del", ("s", "uid-1"), "all", Some("Failed"));
        let pod = mover_pod(&failed, 1, "access denied", 3, true);
        let script = vec![
            event("CleanupFailed"),
            Expect::new("DELETE", format!("{JOBS}/{delete_job}"), deleted()),
        ];
        let (result, _) = reconcile_with(
            deleting(),
            (OperatorConfig::default(), movers(vec![failed], vec![pod])),
            script,
        )
        .await;
        let err = result.unwrap_err();
        assert!(
            matches!(err.inner(), Error::CleanupFailed(m) if m == "access denied"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn in_a_namespace_being_deleted_the_finalizer_goes_without_a_mover() {
        let delete_job = mover::job_name("del", "s", "all");
        let terminating = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": "Forbidden", "code": 403,
            "message": "jobs.batch \"x\" is forbidden: unable to create new content in namespace ns because it is being terminated"});
        let script = vec![
            Expect::new("GET", STS, statefulset(2)),
            Expect::new("PATCH", format!("{JOBS}/{delete_job}"), terminating).status(403),
            Expect::new("PATCH", SNAPS, stored()).check(|body| {
                assert!(body.to_string().contains("remove"), "{body}");
            }),
        ];
        let (result, _) = reconcile_with(
            snapshot(true, succeeded_archives(), true),
            (OperatorConfig::default(), movers(vec![], vec![])),
            script,
        )
        .await;
        result.unwrap();
        // Any other refusal keeps it.
        let forbidden = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": "Forbidden", "code": 403, "message": "jobs.batch is forbidden: RBAC"});
        let script = vec![
            Expect::new("GET", STS, statefulset(2)),
            Expect::new("PATCH", format!("{JOBS}/{delete_job}"), forbidden).status(403),
        ];
        let (result, _) = reconcile_with(
            snapshot(true, succeeded_archives(), true),
            (OperatorConfig::default(), movers(vec![], vec![])),
            script,
        )
        .await;
        assert!(result.is_err());
    }

    #[tokio::test]
    async fn delete_movers_wait_for_a_slot_too() {
        let config = OperatorConfig {
            max_concurrent_movers: 1,
            ..OperatorConfig::default()
        };
        let busy = Cluster::of(
            vec![mover_job("snap", ("s2", "uid-2"), "n", None)],
            vec![],
            vec![
                serde_json::from_value(
                    json!({"apiVersion": "snapshot-operator.dev/v1alpha1", "kind": "Snapshot",
                "metadata": {"name": "s2", "namespace": "ns", "uid": "uid-2"},
                "spec": {"source": {"persistentVolumeClaim": {"claimName": "d"}}}}),
                )
                .unwrap(),
            ],
            vec![],
        );
        let (result, _) = reconcile_with(
            snapshot(true, succeeded_archives(), true),
            (config, busy),
            vec![],
        )
        .await;
        assert!(matches!(result.unwrap_err().inner(), Error::CleanupPending));
    }

    #[tokio::test]
    async fn retain_keeps_the_archives() {
        let mut snap = snapshot(true, succeeded_archives(), true);
        snap.spec.deletion_policy = DeletionPolicy::Retain;
        let script = vec![Expect::new("PATCH", SNAPS, stored())];
        let (result, _) = reconcile_with(snap, nothing(), script).await;
        result.unwrap();
    }

    fn scale(replicas: i32) -> Value {
        json!({"apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": {"name": "qdrant", "namespace": "ns"}, "spec": {"replicas": replicas}})
    }

    /// A Snapshot with `copyMethod: Stop`, its status `status`.
    fn stopping(status: Value, deleting: bool) -> Snapshot {
        let mut snap = snapshot(true, status, deleting);
        snap.spec.copy_method = CopyMethod::Stop;
        snap
    }

    /// `status` with the replicas recorded.
    fn recorded(mut status: Value) -> Value {
        status["stoppedReplicas"] = json!(2);
        status
    }

    #[tokio::test]
    async fn a_workload_is_not_stopped_while_other_movers_hold_every_slot() {
        let (config, busy) = one_slot_held(vec![]);
        let pods = list("Pod", vec![workload_pod(0, "w"), workload_pod(1, "w")]);
        let script = vec![
            Expect::new("GET", STS, statefulset(2)),
            Expect::new("GET", PODS, pods),
            Expect::new("PATCH", format!("{SNAPS}/status"), stored()).check(|body| {
                let status = &body["status"];
                assert_eq!(status.get("stoppedReplicas"), None, "{status}");
                assert_eq!(
                    status["conditions"][0]["message"],
                    "waiting for a mover slot before stopping StatefulSet qdrant"
                );
            }),
            event("StoppingWorkload"),
        ];
        let (action, _) =
            reconcile_with(stopping(Value::Null, false), (config, busy), script).await;
        assert_eq!(action.unwrap(), Action::requeue(Duration::from_secs(10)));
    }

    #[tokio::test]
    async fn its_own_movers_do_not_hold_back_a_stopped_workloads_other_nodes() {
        // A running pod that mounts `claim`, controlled by the Job of UID `job_uid`.
        let pod = |name: &str, claim: &str, job_uid: &str| {
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "ns",
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "j",
                    "uid": job_uid, "controller": true}]},
                "spec": {"containers": [], "volumes": [{"name": "data",
                    "persistentVolumeClaim": {"claimName": claim}}]},
                "status": {"phase": "Running"}})
        };
        // Node 0's mover runs (one slot: node 1 waited); node 1 is to start.
        let one_left = recorded(json!({"phase": "Running", "observedGeneration": 1,
            "storage": {"local": {"persistentVolumeClaim": {"claimName": "backups"}, "path": "/"}},
            "archives": [{"node": "qdrant-0", "claim": "data-qdrant-0", "phase": "Running"},
                         {"node": "qdrant-1", "claim": "data-qdrant-1", "phase": "Pending"}]}));
        let running = job("qdrant-0", None);
        let ours = pod("mover-0", "data-qdrant-0", &running.uid().unwrap());
        let script = vec![
            Expect::new("GET", PODS, list("Pod", vec![ours.clone()])),
            Expect::new("GET", STS, statefulset(0)),
            Expect::new(
                "PATCH",
                format!("{JOBS}/{}", mover::job_name("snap", "s", "qdrant-1")),
                Value::Null,
            ),
            Expect::new("PATCH", format!("{SNAPS}/status"), stored()).check(|body| {
                assert_eq!(body["status"]["archives"][1]["phase"], "Running");
            }),
        ];
        let cluster = movers(vec![running.clone()], vec![]);
        reconcile_with(
            stopping(one_left.clone(), false),
            (OperatorConfig::default(), cluster),
            script,
        )
        .await
        .0
        .unwrap();

        // A pod of another resource's Job (or of no known Job) mounting a claim still counts.
        let other = mover_job("snap", ("t", "uid-2"), "qdrant-1", None);
        let theirs = pod("other-1", "data-qdrant-1", &other.uid().unwrap());
        let script = vec![
            Expect::new("GET", PODS, list("Pod", vec![ours, theirs])),
            Expect::new("PATCH", format!("{STS}/scale"), scale(0)),
            Expect::new("PATCH", format!("{SNAPS}/status"), stored()).check(|body| {
                let message = &body["status"]["conditions"][0]["message"];
                assert_eq!(message, "waiting for pods to stop: other-1");
            }),
        ];
        let cluster = movers(vec![running, other], vec![]);
        let (action, _) = reconcile_with(
            stopping(one_left, false),
            (OperatorConfig::default(), cluster),
            script,
        )
        .await;
        assert_eq!(action.unwrap(), Action::requeue(Duration::from_secs(3)));
    }

    #[tokio::test]
    async fn copy_method_stop_records_stops_snapshots_then_starts_again() {
        // Replicas recorded before the scale to zero.
        let pods = list("Pod", vec![workload_pod(0, "w"), workload_pod(1, "w")]);
        let script = vec![
            Expect::new("GET", STS, statefulset(2)),
            Expect::new("GET", PODS, pods.clone()),
            Expect::new("GET", format!("{STS}/scale"), scale(2)),
            Expect::new("PATCH", format!("{SNAPS}/status"), stored()).check(|body| {
                let status = &body["status"];
                assert_eq!(status["stoppedReplicas"], 2);
                assert_eq!(status["conditions"][0]["reason"], "StoppingWorkload");
                assert_eq!(status["archives"][1]["phase"], "Pending");
            }),
            Expect::new("PATCH", format!("{STS}/scale"), scale(0))
                .check(|b| assert_eq!(b["spec"]["replicas"], 0)),
            event("StoppingWorkload"),
        ];
        let (action, _) = reconcile_with(stopping(Value::Null, false), nothing(), script).await;
        assert_eq!(action.unwrap(), Action::requeue(Duration::from_secs(2)));

        // A pod still running: no mover yet.
        let pending = recorded(json!({"phase": "Pending", "observedGeneration": 1,
            "storage": {"local": {"persistentVolumeClaim": {"claimName": "backups"}, "path": "/"}},
            "archives": [{"node": "qdrant-0", "claim": "data-qdrant-0", "phase": "Pending"},
                         {"node": "qdrant-1", "claim": "data-qdrant-1", "phase": "Pending"}]}));
        let script = vec![
            Expect::new("GET", PODS, list("Pod", vec![workload_pod(1, "w")])),
            Expect::new("PATCH", format!("{STS}/scale"), scale(0)),
            Expect::new("PATCH", format!("{SNAPS}/status"), stored()).check(|body| {
                let message = &body["status"]["conditions"][0]["message"];
                assert_eq!(message, "waiting for pods to stop: qdrant-1");
            }),
        ];
        let (action, _) = reconcile_with(stopping(pending.clone(), false), nothing(), script).await;
        assert_eq!(action.unwrap(), Action::requeue(Duration::from_secs(3)));

        // Stopped: the movers start, not pinned (no pod holds the claims).
        let unpinned = |job: &Value| {
            assert_eq!(
                job["spec"]["template"]["spec"].get("affinity"),
                None,
                "{job}"
            );
        };
        let script = vec![
            Expect::new("GET", PODS, list("Pod", vec![])),
            Expect::new("GET", STS, statefulset(0)),
            Expect::new(
                "PATCH",
                format!("{JOBS}/{}", mover::job_name("snap", "s", "qdrant-0")),
                Value::Null,
            )
            .check(unpinned),
            Expect::new(
                "PATCH",
                format!("{JOBS}/{}", mover::job_name("snap", "s", "qdrant-1")),
                Value::Null,
            )
            .check(unpinned),
            Expect::new("PATCH", format!("{SNAPS}/status"), stored()).check(|body| {
                assert_eq!(body["status"]["phase"], "Running");
                assert_eq!(body["status"]["stoppedReplicas"], 2);
            }),
            event("Running"),
        ];
        reconcile_with(stopping(pending, false), nothing(), script)
            .await
            .0
            .unwrap();

        // Both archives done (one failed): started again before the outcome is written.
        let report =
            r#"{"name":"a.snapshot","key":"products/a.snapshot","size":1,"checksum":"aa"}"#;
        let (job0, pod0) = finished("qdrant-0", "Complete", report);
        let (job1, pod1) = finished("qdrant-1", "Failed", "disk full");
        let cluster = movers(vec![job0, job1], vec![pod0, pod1]);
        // Every mover started: the stop is not looked at again (restarting pods are not
        // stopped a second time).
        let script = vec![
            Expect::new("PATCH", format!("{STS}/scale"), scale(2))
                .check(|b| assert_eq!(b["spec"]["replicas"], 2)),
            Expect::new("PATCH", format!("{SNAPS}/status"), stored()).check(|body| {
                assert_eq!(body["status"]["phase"], "Failed");
            }),
            event("Failed"),
        ];
        let running = recorded(running_archives());
        reconcile_with(
            stopping(running, false),
            (OperatorConfig::default(), cluster),
            script,
        )
        .await
        .0
        .unwrap();
    }

    const CLAIMS: &str = "/api/v1/namespaces/ns/persistentvolumeclaims";

    /// A Snapshot with `copyMethod: Clone`, its status `status`.
    fn cloning(status: Value, deleting: bool) -> Snapshot {
        let mut snap = snapshot(true, status, deleting);
        snap.spec.copy_method = CopyMethod::Clone;
        snap
    }

    #[tokio::test]
    async fn copy_method_clone_reads_a_clone_made_when_the_mover_starts_and_deleted_after() {
        let clone = super::copy::clone::name(&cloning(Value::Null, false), "qdrant-0");
        let source = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data-qdrant-0", "namespace": "ns"},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "csi-rbd",
                     "resources": {"requests": {"storage": "10Gi"}}},
            "status": {"capacity": {"storage": "12Gi"}}});
        let made = clone.clone();
        let mounted = clone.clone();
        let script = vec![
            Expect::new("GET", STS, statefulset(1)),
            Expect::new("GET", PODS, list("Pod", vec![workload_pod(0, "worker-a")])),
            Expect::new("GET", STS, statefulset(1)),
            Expect::new("GET", format!("{CLAIMS}/data-qdrant-0"), source),
            Expect::new("POST", CLAIMS, Value::Null).check(move |pvc| {
                assert_eq!(pvc["metadata"]["name"], made.as_str());
                assert_eq!(
                    pvc["spec"]["dataSource"],
                    json!({"kind": "PersistentVolumeClaim", "name": "data-qdrant-0"})
                );
                assert_eq!(pvc["spec"]["storageClassName"], "csi-rbd");
                assert_eq!(
                    pvc["spec"]["resources"]["requests"]["storage"], "12Gi",
                    "the source's size"
                );
                assert_eq!(pvc["metadata"]["ownerReferences"][0]["uid"], "uid-1");
                assert_eq!(pvc["metadata"]["ownerReferences"][0]["controller"], false);
            }),
            Expect::new(
                "PATCH",
                format!("{JOBS}/{}", mover::job_name("snap", "s", "qdrant-0")),
                Value::Null,
            )
            .check(move |job| {
                let pod = &job["spec"]["template"]["spec"];
                assert_eq!(
                    pod["volumes"][0]["persistentVolumeClaim"],
                    json!({"claimName": mounted.as_str(), "readOnly": true})
                );
                assert_eq!(
                    pod.get("affinity"),
                    None,
                    "a new volume: not pinned to the workload's node"
                );
                // The archive still belongs to the node's own claim.
                let args = pod["containers"][0]["args"].to_string();
                assert!(args.contains(r#"\"claim\":\"data-qdrant-0\""#), "{args}");
            }),
            Expect::new("PATCH", format!("{SNAPS}/status"), stored()).check({
                let clone = clone.clone();
                move |body| {
                    assert_eq!(body["status"]["archives"][0]["readFrom"], clone.as_str());
                    assert_eq!(body["status"]["archives"][0]["phase"], "Running");
                }
            }),
            event("Running"),
        ];
        reconcile_with(cloning(Value::Null, false), nothing(), script)
            .await
            .0
            .unwrap();

        // Its archive done: the clone goes, then the outcome is written.
        let running = json!({"phase": "Running", "observedGeneration": 1,
            "storage": {"local": {"persistentVolumeClaim": {"claimName": "backups"}, "path": "/"}},
            "archives": [{"node": "qdrant-0", "claim": "data-qdrant-0", "phase": "Running", "readFrom": clone}]});
        let report =
            r#"{"name":"a.snapshot","key":"products/a.snapshot","size":1,"checksum":"aa"}"#;
        let (job, pod) = finished("qdrant-0", "Complete", report);
        let script = vec![
            Expect::new("DELETE", format!("{CLAIMS}/{clone}"), deleted()),
            Expect::new("PATCH", format!("{SNAPS}/status"), stored()).check(|body| {
                assert_eq!(body["status"]["phase"], "Succeeded");
            }),
            event("Succeeded"),
        ];
        let cluster = movers(vec![job], vec![pod]);
        reconcile_with(
            cloning(running.clone(), false),
            (OperatorConfig::default(), cluster),
            script,
        )
        .await
        .0
        .unwrap();

        // Deleted while its mover runs: the clone goes with it (already gone: fine).
        let mut deleting = cloning(running, true);
        deleting.spec.deletion_policy = DeletionPolicy::Retain;
        let script = vec![
            Expect::new("DELETE", format!("{CLAIMS}/{clone}"), not_found()).status(404),
            Expect::new("PATCH", SNAPS, stored()),
        ];
        reconcile_with(deleting, nothing(), script).await.0.unwrap();
    }

    const VOLUME_SNAPSHOTS: &str = "/apis/snapshot.storage.k8s.io/v1/namespaces/ns/volumesnapshots";

    #[tokio::test]
    async fn copy_method_snapshot_reads_a_claim_made_from_a_ready_volume_snapshot() {
        let mut snap = snapshot(true, Value::Null, false);
        snap.spec.copy_method = CopyMethod::Snapshot;
        snap.spec.volume_snapshot_class_name = Some("csi-snapclass".into());
        let vs = super::copy::snapshot::name(&snap, "qdrant-0");
        let temp = super::copy::clone::name(&snap, "qdrant-0");
        let volume_snapshot = |ready: Option<bool>, error: Option<&str>| {
            json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
                "metadata": {"name": vs, "namespace": "ns"},
                "spec": {"source": {"persistentVolumeClaimName": "data-qdrant-0"}},
                "status": {"readyToUse": ready, "error": error.map(|m| json!({"message": m}))}})
        };
        // First pass: the VolumeSnapshot is made; no slot is held while it is not ready.
        let made = vs.clone();
        let script = vec![
            Expect::new("GET", STS, statefulset(1)),
            Expect::new("GET", format!("{VOLUME_SNAPSHOTS}/{vs}"), not_found()).status(404),
            Expect::new("POST", VOLUME_SNAPSHOTS, Value::Null).check(move |body| {
                assert_eq!(body["metadata"]["name"], made.as_str());
                assert_eq!(
                    body["spec"]["source"]["persistentVolumeClaimName"],
                    "data-qdrant-0"
                );
                assert_eq!(body["spec"]["volumeSnapshotClassName"], "csi-snapclass");
                assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], "uid-1");
            }),
            Expect::new("PATCH", format!("{SNAPS}/status"), stored()).check({
                let vs = vs.clone();
                move |body| {
                    let archive = &body["status"]["archives"][0];
                    assert_eq!(archive["phase"], "Pending");
                    assert_eq!(archive["volumeSnapshot"], vs.as_str());
                    assert_eq!(
                        archive["message"],
                        format!("waiting for VolumeSnapshot {vs} to be ready")
                    );
                }
            }),
            event("Pending"),
        ];
        let (action, _) = reconcile_with(snap.clone(), nothing(), script).await;
        assert_eq!(action.unwrap(), Action::requeue(PENDING_RECHECK));

        // Ready: a claim is made from it and the mover reads that claim.
        let pending = json!({"phase": "Pending", "observedGeneration": 1,
            "storage": {"local": {"persistentVolumeClaim": {"claimName": "backups"}, "path": "/"}},
            "archives": [{"node": "qdrant-0", "claim": "data-qdrant-0", "phase": "Pending", "volumeSnapshot": vs}]});
        let mut waiting = snap.clone();
        waiting.status = serde_json::from_value(pending).unwrap();
        let source = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data-qdrant-0", "namespace": "ns"},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "csi-rbd",
                     "resources": {"requests": {"storage": "10Gi"}}}});
        let from = vs.clone();
        let mounted = temp.clone();
        let script = vec![
            Expect::new("GET", format!("{VOLUME_SNAPSHOTS}/{vs}"), volume_snapshot(Some(true), None)),
            Expect::new("GET", PODS, list("Pod", vec![])),
            Expect::new("GET", STS, statefulset(1)),
            Expect::new("GET", format!("{CLAIMS}/data-qdrant-0"), source),
            Expect::new("POST", CLAIMS, Value::Null).check(move |pvc| {
                assert_eq!(
                    pvc["spec"]["dataSource"],
                    json!({"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": from.as_str()})
                );
                assert_eq!(pvc["spec"]["resources"]["requests"]["storage"], "10Gi");
            }),
            Expect::new("PATCH", format!("{JOBS}/{}", mover::job_name("snap", "s", "qdrant-0")), Value::Null)
                .check(move |job| {
                    let volume = &job["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"];
                    assert_eq!(volume, &json!({"claimName": mounted.as_str(), "readOnly": true}));
                }),
            Expect::new("PATCH", format!("{SNAPS}/status"), stored()).check(|body| {
                let archive = &body["status"]["archives"][0];
                assert_eq!(archive["phase"], "Running");
                assert!(archive["volumeSnapshot"].is_string() && archive["readFrom"].is_string());
            }),
            event("Running"),
        ];
        reconcile_with(waiting.clone(), nothing(), script)
            .await
            .0
            .unwrap();

        // Done: the claim and the VolumeSnapshot go before the outcome is written.
        let running = json!({"phase": "Running", "observedGeneration": 1,
            "storage": {"local": {"persistentVolumeClaim": {"claimName": "backups"}, "path": "/"}},
            "archives": [{"node": "qdrant-0", "claim": "data-qdrant-0", "phase": "Running", "volumeSnapshot": vs, "readFrom": temp}]});
        let mut done = snap.clone();
        done.status = serde_json::from_value(running).unwrap();
        let report =
            r#"{"name":"a.snapshot","key":"products/a.snapshot","size":1,"checksum":"aa"}"#;
        let (job, pod) = finished("qdrant-0", "Complete", report);
        let script = vec![
            Expect::new("DELETE", format!("{CLAIMS}/{temp}"), deleted()),
            Expect::new("DELETE", format!("{VOLUME_SNAPSHOTS}/{vs}"), deleted()),
            Expect::new("PATCH", format!("{SNAPS}/status"), stored()).check(|body| {
                assert_eq!(body["status"]["phase"], "Succeeded");
                assert!(
                    body["status"]["archives"][0]["volumeSnapshot"].is_string(),
                    "said which"
                );
            }),
            event("Succeeded"),
        ];
        reconcile_with(
            done,
            (OperatorConfig::default(), movers(vec![job], vec![pod])),
            script,
        )
        .await
        .0
        .unwrap();

        // A VolumeSnapshot that failed fails its node, and goes.
        let script = vec![
            Expect::new(
                "GET",
                format!("{VOLUME_SNAPSHOTS}/{vs}"),
                volume_snapshot(None, Some("driver says no")),
            ),
            Expect::new("DELETE", format!("{VOLUME_SNAPSHOTS}/{vs}"), deleted()),
            Expect::new("PATCH", format!("{SNAPS}/status"), stored()).check(|body| {
                let archive = &body["status"]["archives"][0];
                assert_eq!(archive["phase"], "Failed");
                assert!(
                    archive["message"]
                        .as_str()
                        .unwrap()
                        .ends_with("failed: driver says no")
                );
            }),
            event("Failed"),
        ];
        reconcile_with(waiting, nothing(), script).await.0.unwrap();
    }

    #[tokio::test]
    async fn a_claim_that_is_not_there_cannot_be_cloned_and_fails_its_node() {
        let script = vec![
            Expect::new("GET", STS, statefulset(1)),
            Expect::new("GET", PODS, list("Pod", vec![])),
            Expect::new("GET", STS, statefulset(1)),
            Expect::new("GET", format!("{CLAIMS}/data-qdrant-0"), not_found()).status(404),
            Expect::new("PATCH", format!("{SNAPS}/status"), stored()).check(|body| {
                let archive = &body["status"]["archives"][0];
                assert_eq!(archive["phase"], "Failed");
                assert_eq!(
                    archive["message"],
                    "claim data-qdrant-0 not found: nothing to clone"
                );
            }),
            event("Failed"),
        ];
        reconcile_with(cloning(Value::Null, false), nothing(), script)
            .await
            .0
            .unwrap();
    }

    #[tokio::test]
    async fn a_statefulset_another_resource_holds_stopped_is_waited_for_not_stopped_again() {
        // A restore stopped it: recording its replicas now would record zero.
        let restore =
            serde_json::from_value(json!({"apiVersion": "snapshot-operator.dev/v1alpha1",
            "kind": "SnapshotRestore", "metadata": {"name": "r", "namespace": "ns", "uid": "uid-r"},
            "spec": {"source": {"location": "x.snapshot"}, "stopWorkload": true,
                     "target": {"statefulSet": {"name": "qdrant", "volumeClaimTemplate": "data"}}},
            "status": {"phase": "Running", "stoppedReplicas": 2}}))
            .unwrap();
        let cluster = Cluster::of(vec![], vec![], vec![], vec![restore]);
        let script = vec![
            Expect::new("GET", STS, statefulset(2)),
            Expect::new("GET", PODS, list("Pod", vec![])),
            Expect::new("PATCH", format!("{SNAPS}/status"), stored()).check(|body| {
                let status = &body["status"];
                assert_eq!(status.get("stoppedReplicas"), None, "{status}");
                assert_eq!(
                    status["conditions"][0]["message"],
                    "waiting for SnapshotRestore r, which stops StatefulSet qdrant"
                );
            }),
            event("StoppingWorkload"),
        ];
        let (action, _) = reconcile_with(
            stopping(Value::Null, false),
            (OperatorConfig::default(), cluster),
            script,
        )
        .await;
        assert_eq!(action.unwrap(), Action::requeue(Duration::from_secs(10)));
    }

    #[tokio::test]
    async fn a_stopped_workload_is_started_again_when_the_snapshot_goes_or_turns_out_invalid() {
        // Deleted while its movers run: the StatefulSet comes back, then the finalizer goes.
        let script = vec![
            Expect::new("PATCH", format!("{STS}/scale"), scale(2))
                .check(|b| assert_eq!(b["spec"]["replicas"], 2)),
            Expect::new("PATCH", SNAPS, stored()),
        ];
        let (result, _) = reconcile_with(
            stopping(recorded(running_archives()), true),
            nothing(),
            script,
        )
        .await;
        result.unwrap();
        // Finished: nothing to bring back.
        let mut done = recorded(succeeded_archives());
        done["phase"] = json!("Succeeded");
        let mut snap = stopping(done, true);
        snap.spec.deletion_policy = DeletionPolicy::Retain;
        let (result, _) =
            reconcile_with(snap, nothing(), vec![Expect::new("PATCH", SNAPS, stored())]).await;
        result.unwrap();
        // A PersistentVolumeClaim cannot be stopped: refused before anything happens.
        let mut claim = stopping(Value::Null, false);
        claim.spec.source =
            serde_json::from_value(json!({"persistentVolumeClaim": {"claimName": "data"}}))
                .unwrap();
        let script = vec![
            Expect::new("PATCH", format!("{SNAPS}/status"), stored()).check(|body| {
                let message = body["status"]["conditions"][0]["message"].as_str().unwrap();
                assert!(
                    message.contains("copyMethod Stop needs a statefulSet"),
                    "{message}"
                );
            }),
            event("InvalidSpec"),
        ];
        reconcile_with(claim, nothing(), script).await.0.unwrap();
    }
}
