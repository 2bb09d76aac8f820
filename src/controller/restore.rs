//! The SnapshotRestore reconciler: fetch → validate (pure) → map archives to nodes (pure) →
//! stop the workload when asked (its replicas recorded in status first) → one restore mover
//! per node → start the workload again (also after a failure, a restart or a deletion) →
//! status.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, PodSecurityContext};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, ListParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use super::config::OperatorConfig;
use super::jobs::{self, Mover};
use super::mover::{self, MoverJob};
use super::snapshot::{effective_storage, inside_volume, validate_storage};
use super::stop;
use super::workload::{self, Node};
use super::{Context, Error, Reconciled, reject, trusted, write_status};
use crate::api::condition::{self, reason};
use crate::api::restore::{
    NodePhase, NodeRestore, RestorePhase, SnapshotRestore, SnapshotRestoreSpec,
    SnapshotRestoreStatus,
};
use crate::api::snapshot::{ArchivePhase, Phase, Snapshot, StatefulSetRef, Storage};
use crate::engine::name;
use crate::engine::restore::Outcome;
use crate::protocol::{MoverTask, RestoreTask, TERMINATION_LOG};

const RECHECK: Duration = Duration::from_secs(10);

/// One archive to restore on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub node: Node,
    /// What the mover reads: a storage key or a location; `None` when no archive matches.
    pub location: Option<String>,
    /// Its checksum, when known.
    pub checksum: Option<String>,
    /// For people (status).
    pub shown: Option<String>,
}

/// An archive a restore can read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceArchive {
    /// The node it was taken on (empty for a location).
    pub node: String,
    /// What the mover reads: a storage key or a location.
    pub location: String,
    pub checksum: Option<String>,
    /// Where it is, for people.
    pub shown: Option<String>,
}

/// Checks what the schema cannot (pure).
pub fn validate(spec: &SnapshotRestoreSpec) -> Result<(), String> {
    workload::validate(&spec.target)?;
    inside_volume("path", &spec.path)?;
    match (&spec.source.snapshot_ref, &spec.source.location) {
        (Some(_), None) | (None, Some(_)) => {}
        _ => return Err("source: set exactly one of snapshotRef and location".into()),
    }
    for c in spec.collection.iter().chain(&spec.source_collection) {
        name::validate("collection", c).map_err(|e| e.to_string())?;
    }
    if spec.source_collection.is_some() && spec.collection.is_none() {
        return Err("sourceCollection needs collection".into());
    }
    if let Some(sum) = &spec.checksum
        && name::parse_checksum(sum).as_deref() != Some(sum.as_str())
    {
        return Err(format!("checksum {sum:?} is not 64 lowercase hex digits"));
    }
    if let Some(location) = &spec.source.location {
        crate::source::Location::parse(location).map_err(|e| e.to_string())?;
    }
    if spec.stop_workload && spec.target.stateful_set.is_none() {
        return Err("stopWorkload needs a statefulSet target".into());
    }
    if let Some(storage) = &spec.storage {
        validate_storage(storage)?;
    }
    Ok(())
}

/// The ordinal at the end of a pod name (`qdrant-2` → 2).
fn ordinal(node: &str) -> Option<&str> {
    node.rsplit_once('-')
        .map(|(_, n)| n)
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Maps a Snapshot's archives to the target's nodes: by node name, else by ordinal (a
/// renamed StatefulSet); a node without an archive gets none (pure).
pub fn map_archives(nodes: &[Node], archives: &[SourceArchive]) -> Vec<Assignment> {
    nodes
        .iter()
        .map(|node| {
            let by_ordinal = || {
                let ord = ordinal(&node.name)?;
                let mut same: Vec<_> = archives
                    .iter()
                    .filter(|a| ordinal(&a.node) == Some(ord))
                    .collect();
                (same.len() == 1).then(|| same.remove(0))
            };
            // One archive for every node (a location), or one node and one archive.
            let only = || {
                (archives.len() == 1 && (nodes.len() == 1 || archives[0].node.is_empty()))
                    .then(|| &archives[0])
            };
            let found = archives
                .iter()
                .find(|a| a.node == node.name)
                .or_else(by_ordinal)
                .or_else(only);
            Assignment {
                node: node.clone(),
                location: found.map(|a| a.location.clone()),
                checksum: found.and_then(|a| a.checksum.clone()),
                shown: found.map(|a| a.shown.clone().unwrap_or_else(|| a.location.clone())),
            }
        })
        .collect()
}

/// The new status from the node entries (pure); `restarted` tells whether the workload is
/// running again (or was never stopped).
pub fn next_status(
    restore: &SnapshotRestore,
    nodes: Vec<NodeRestore>,
    stopped_replicas: Option<i32>,
    restarted: bool,
    waiting: Option<String>,
    now: Time,
) -> SnapshotRestoreStatus {
    let old = restore.status.clone().unwrap_or_default();
    let any = |p: NodePhase| nodes.iter().any(|n| n.phase == p);
    let finished = !nodes.is_empty() && !any(NodePhase::Pending) && !any(NodePhase::Running);
    let phase = if finished && restarted {
        if any(NodePhase::Failed) {
            RestorePhase::Failed
        } else {
            RestorePhase::Succeeded
        }
    } else if any(NodePhase::Running) || (finished && !restarted) {
        RestorePhase::Running
    } else {
        RestorePhase::Pending
    };
    let count = |p: NodePhase| nodes.iter().filter(|n| n.phase == p).count();
    let summary = format!(
        "{} restored, {} skipped, {} failed of {}",
        count(NodePhase::Restored),
        count(NodePhase::Skipped),
        count(NodePhase::Failed),
        nodes.len()
    );
    let (ready, why, message) = match phase {
        RestorePhase::Succeeded => (true, reason::SUCCEEDED, summary),
        RestorePhase::Failed => {
            let failures: Vec<String> = nodes
                .iter()
                .filter(|n| n.phase == NodePhase::Failed)
                .map(|n| format!("{}: {}", n.node, n.message.as_deref().unwrap_or("failed")))
                .collect();
            (false, reason::FAILED, failures.join("; "))
        }
        RestorePhase::Running if finished => (
            false,
            reason::STOPPING_WORKLOAD,
            "starting the workload again".into(),
        ),
        RestorePhase::Running => (false, reason::RUNNING, summary),
        RestorePhase::Pending => match waiting {
            Some(w) => (false, reason::STOPPING_WORKLOAD, w),
            None => (
                false,
                reason::PENDING,
                "waiting for a free mover slot".into(),
            ),
        },
    };
    let terminal = phase.is_final();
    SnapshotRestoreStatus {
        observed_generation: restore.meta().generation,
        phase: Some(phase),
        start_time: old.start_time.clone().or_else(|| Some(now.clone())),
        completion_time: old
            .completion_time
            .clone()
            .or_else(|| terminal.then(|| now.clone())),
        conditions: vec![condition::ready(
            ready,
            why,
            message,
            restore.meta().generation,
            &old.conditions,
            now,
        )],
        stopped_replicas,
        nodes,
    }
}

fn invalid_status(restore: &SnapshotRestore, message: &str, now: Time) -> SnapshotRestoreStatus {
    let old = restore.status.clone().unwrap_or_default();
    SnapshotRestoreStatus {
        observed_generation: restore.meta().generation,
        phase: Some(RestorePhase::Failed),
        conditions: vec![condition::ready(
            false,
            reason::INVALID_SPEC,
            message,
            restore.meta().generation,
            &old.conditions,
            now,
        )],
        ..old
    }
}

/// What creating this restore may make a mover do (pure): what [`trusted`] allows (its own S3
/// storage only at an endpoint the operator allows, its mover security context), and read an
/// `s3://` location outside the storage's bucket only with credentials the resource names
/// (never the operator's or the nodes' own).
pub fn within_trust(
    spec: &SnapshotRestoreSpec,
    namespace: &str,
    config: &OperatorConfig,
) -> Result<(), String> {
    let own = spec.storage.as_ref().and_then(|s| s.s3.as_ref());
    trusted(config, own, spec.mover_security_context.as_ref())?;
    let Some(location) = &spec.source.location else {
        return Ok(());
    };
    let Ok(crate::source::Location::S3 { bucket, key }) = crate::source::Location::parse(location)
    else {
        return Ok(());
    };
    let named = own.is_some_and(|s| s.credentials_secret.is_some());
    let shared = config.default_storage_for(namespace);
    let storage = spec.storage.as_ref().or(shared.as_ref());
    let s3 = storage.and_then(|s| s.s3.as_ref());
    if own.is_none()
        && let Some(s3) = s3
        && s3.bucket == bucket
        && !key.starts_with(&format!("{}/", s3.prefix.as_deref().unwrap_or_default()))
    {
        return Err(format!(
            "location {location} is outside this namespace's part of the default storage \
             (s3://{}/{}/)",
            s3.bucket,
            s3.prefix.as_deref().unwrap_or_default()
        ));
    }
    if s3.map(|s| s.bucket.as_str()) != Some(bucket.as_str()) && !named {
        return Err(format!(
            "location {location} is outside the storage's bucket: name the credentials for \
             bucket {bucket} in spec.storage.s3.credentialsSecret (the operator's and the nodes' \
             own are never used for another bucket)"
        ));
    }
    Ok(())
}

/// Whether a node's restore is over.
pub fn is_final(node: &NodeRestore) -> bool {
    matches!(
        node.phase,
        NodePhase::Restored | NodePhase::Skipped | NodePhase::Failed
    )
}

/// Applies a mover's state to a node entry (pure).
pub fn next_node(entry: &NodeRestore, mover: Option<&Mover>, started: bool) -> NodeRestore {
    let mut n = entry.clone();
    if is_final(&n) {
        return n;
    }
    let Some(mover) = mover else {
        n.phase = if started {
            NodePhase::Running
        } else {
            NodePhase::Pending
        };
        return n;
    };
    match mover.outcome() {
        None => n.phase = NodePhase::Running,
        Some(succeeded) => {
            let report = mover.report();
            n.bytes = report.size.and_then(|s| i64::try_from(s).ok());
            if succeeded {
                n.phase = if report.outcome == Some(Outcome::Skipped) {
                    NodePhase::Skipped
                } else {
                    NodePhase::Restored
                };
                n.message = report.reason;
            } else {
                n.phase = NodePhase::Failed;
                n.message = Some(
                    report
                        .error
                        .unwrap_or_else(|| "the mover failed without a message".into()),
                );
            }
        }
    }
    n
}

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

async fn invalid(restore: &SnapshotRestore, ctx: &Context, message: &str) -> Result<Action, Error> {
    let api: Api<SnapshotRestore> =
        Api::namespaced(ctx.client.clone(), &restore.namespace().unwrap_or_default());
    // A workload stopped before the spec turned out unusable is started again.
    if let Some(replicas) = restore.status.as_ref().and_then(|s| s.stopped_replicas) {
        scale(ctx, restore, replicas).await?;
    }
    let status = invalid_status(restore, message, Time(ctx.now()));
    reject(ctx, restore, &api, &status, message).await
}

/// The archives to restore, or why not (yet): `Ok(Err((message, wait)))`.
async fn archives(
    restore: &SnapshotRestore,
    ctx: &Context,
) -> Result<Result<(Vec<SourceArchive>, bool, Option<Storage>), (String, bool)>, Error> {
    let ns = restore.namespace().unwrap_or_default();
    let spec = &restore.spec;
    if let Some(location) = &spec.source.location {
        let storage = spec
            .storage
            .clone()
            .or_else(|| ctx.config.default_storage_for(&ns));
        let full = spec.collection.is_none();
        let archive = SourceArchive {
            node: String::new(),
            location: location.clone(),
            checksum: spec.checksum.clone(),
            shown: None,
        };
        return Ok(Ok((vec![archive], full, storage)));
    }
    let Some(reference) = &spec.source.snapshot_ref else {
        return Ok(Err(("no source".into(), false)));
    };
    // From the store; a Snapshot not there yet (the store still filling) is looked up.
    let cached = ctx
        .cluster
        .snapshots
        .get(&ObjectRef::new(&reference.name).within(&ns));
    let found = match cached {
        Some(snap) => Some(snap),
        None => Api::<Snapshot>::namespaced(ctx.client.clone(), &ns)
            .get_opt(&reference.name)
            .await?
            .map(Arc::new),
    };
    let Some(snap) = found else {
        return Ok(Err((
            format!("Snapshot {} not found in {ns}", reference.name),
            false,
        )));
    };
    let status = snap.status.clone().unwrap_or_default();
    match status.phase {
        Some(Phase::Succeeded) => {}
        Some(Phase::Failed) => {
            return Ok(Err((
                format!("Snapshot {} failed; nothing to restore", reference.name),
                false,
            )));
        }
        _ => {
            return Ok(Err((
                format!("waiting for Snapshot {} to finish", reference.name),
                true,
            )));
        }
    }
    let archives = status
        .archives
        .iter()
        .filter(|a| a.phase == ArchivePhase::Succeeded)
        .filter_map(|a| {
            Some(SourceArchive {
                node: a.node.clone(),
                location: super::snapshot::archive_key(&snap.spec, a)?,
                checksum: a.checksum.clone(),
                shown: a.location.clone(),
            })
        })
        .collect();
    let full = snap.spec.collection.is_none() && spec.collection.is_none();
    Ok(Ok((
        archives,
        full,
        effective_storage(&snap, ctx.config.default_storage_for(&ns).as_ref()),
    )))
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
        Resolved::Invalid(message) => return invalid(restore, ctx, &message).await,
    };
    let pods: Vec<Pod> = Api::<Pod>::namespaced(ctx.client.clone(), &plan.namespace)
        .list(&ListParams::default())
        .await?
        .items;
    // Once every node's mover has started, the workload is stopped already (or being started
    // again): never stopped a second time.
    let to_start = plan.entries.iter().any(|e| e.phase == NodePhase::Pending);
    match stop_workload_target(&restore.spec).filter(|_| to_start) {
        Some(sts) => {
            if let Some(action) = stop_workload(restore, ctx, sts, &plan, &pods).await? {
                return Ok(action);
            }
        }
        None => refuse_mounted_claims(&mut plan.entries, &pods),
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
    Ok(if status.phase.is_some_and(RestorePhase::is_final) {
        Action::await_change()
    } else {
        Action::requeue(RECHECK)
    })
}

/// What a pass acts on, once the source and the nodes are resolved.
struct RestorePlan {
    namespace: String,
    entries: Vec<NodeRestore>,
    assignments: Vec<Assignment>,
    storage: Option<Storage>,
    stopped_replicas: Option<i32>,
}

/// The outcome of resolving a restore.
enum Resolved {
    Plan(Box<RestorePlan>),
    /// Not yet (the source Snapshot is still running).
    Wait(String),
    /// Never, until the spec changes.
    Invalid(String),
}

/// Resolves the archives, the nodes (as first resolved: a stopped StatefulSet has no
/// replicas to count) and which archive each node restores.
async fn resolve(restore: &SnapshotRestore, ctx: &Context) -> Result<Resolved, Error> {
    let ns = restore.namespace().unwrap_or_default();
    let old = restore.status.clone().unwrap_or_default();
    if let Err(message) =
        validate(&restore.spec).and_then(|()| within_trust(&restore.spec, &ns, &ctx.config))
    {
        return Ok(Resolved::Invalid(message));
    }
    let (archives, full, storage) = match archives(restore, ctx).await? {
        Ok(found) => found,
        Err((message, true)) => return Ok(Resolved::Wait(message)),
        Err((message, false)) => return Ok(Resolved::Invalid(message)),
    };
    if full && !restore.spec.stop_workload && restore.spec.target.stateful_set.is_some() {
        return Ok(Resolved::Invalid(
            "a full-storage restore into a StatefulSet needs stopWorkload: true (Qdrant restores a full storage only at start)".into(),
        ));
    }
    let nodes = if old.nodes.is_empty() {
        match workload::nodes(&ctx.client, &ns, &restore.spec.target).await? {
            Ok(nodes) => nodes,
            Err(message) => return Ok(Resolved::Invalid(message)),
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
        stopped_replicas: old.stopped_replicas,
    })))
}

/// The node entries of a new restore (pure): pending, or failed without an archive.
pub fn first_entries(assignments: &[Assignment]) -> Vec<NodeRestore> {
    assignments
        .iter()
        .map(|a| NodeRestore {
            node: a.node.name.clone(),
            claim: a.node.claim.clone(),
            archive: a.shown.clone(),
            phase: if a.location.is_some() {
                NodePhase::Pending
            } else {
                NodePhase::Failed
            },
            bytes: None,
            message: a
                .location
                .is_none()
                .then(|| "no archive for this node in the snapshot".into()),
        })
        .collect()
}

/// The StatefulSet to stop, if the spec asks for it (validated: only with one).
fn stop_workload_target(spec: &SnapshotRestoreSpec) -> Option<&StatefulSetRef> {
    spec.target
        .stateful_set
        .as_ref()
        .filter(|_| spec.stop_workload)
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

/// Without `stopWorkload`, a node whose claim a running pod mounts fails (pure): restoring
/// under a running database would lose data.
pub fn refuse_mounted_claims(entries: &mut [NodeRestore], pods: &[Pod]) {
    for entry in entries.iter_mut().filter(|e| e.phase == NodePhase::Pending) {
        if let Some(pod) = workload::pods_using(pods, std::slice::from_ref(&entry.claim)).first() {
            entry.phase = NodePhase::Failed;
            entry.message = Some(format!(
                "claim {} is mounted by running pod {pod}; stop it (or, for a StatefulSet, set stopWorkload: true)",
                entry.claim
            ));
        }
    }
}

/// Starts the movers of pending nodes as slots allow and reads the finished ones: the next
/// node entries, and each node's mover.
async fn run_movers(
    restore: &SnapshotRestore,
    ctx: &Context,
    plan: &RestorePlan,
) -> Result<(Vec<NodeRestore>, Vec<Option<Mover>>), Error> {
    let names = plan.entries.iter().map(|e| job_name(restore, &e.node));
    let movers = ctx.movers_of(restore, names).await?;
    let mut next = Vec::new();
    // Who the movers act as: read once a mover starts.
    let mut security: Option<PodSecurityContext> = None;
    for (entry, mover) in plan.entries.iter().zip(&movers) {
        let mut started = false;
        let assignment = plan.assignments.iter().find(|a| a.node.name == entry.node);
        if mover.is_none()
            && entry.phase == NodePhase::Pending
            && let Some(Assignment {
                location: Some(location),
                checksum,
                ..
            }) = assignment
            && ctx.take_slot(restore, &entry.node, &job_name(restore, &entry.node))
        {
            if security.is_none() {
                let spec = &restore.spec;
                let found = workload::mover_security(
                    &ctx.client,
                    &plan.namespace,
                    spec.mover_security_context.as_ref(),
                    &spec.target,
                    &ctx.config.mover,
                )
                .await?;
                security = Some(found);
            }
            let source = MoverSource {
                location,
                checksum: checksum.as_deref(),
                storage: plan.storage.as_ref(),
                security: security.clone().unwrap_or_default(),
            };
            start_mover(restore, ctx, entry, source).await?;
            started = true;
        }
        next.push(next_node(entry, mover.as_ref(), started));
    }
    Ok((next, movers))
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
            ctx.metrics
                .mover_finished("restore", jobs::duration(&m.job));
            if updated.phase == NodePhase::Restored {
                ctx.metrics
                    .restored(updated.bytes.unwrap_or(0).max(0) as u64);
            }
        }
    }
}

/// The mover Job of a node.
fn job_name(restore: &SnapshotRestore, node: &str) -> String {
    mover::job_name("rst", &restore.name_any(), node)
}

/// What a node's mover restores.
struct MoverSource<'a> {
    location: &'a str,
    checksum: Option<&'a str>,
    storage: Option<&'a Storage>,
    /// The movers' pod security context.
    security: PodSecurityContext,
}

/// Starts the mover of one node (its slot taken).
async fn start_mover(
    restore: &SnapshotRestore,
    ctx: &Context,
    entry: &NodeRestore,
    source: MoverSource<'_>,
) -> Result<(), Error> {
    let spec = &restore.spec;
    let task = MoverTask::Restore(RestoreTask {
        dir: mover::data_dir(&spec.path),
        location: source.location.to_owned(),
        collection: spec.collection.clone(),
        source_collection: spec.source_collection.clone(),
        priority: spec.priority,
        checksum: source.checksum.map(str::to_owned),
        shard: spec.shard.and_then(|n| u32::try_from(n).ok()),
        limits: ctx.config.mover.restore_limits,
        termination_log: TERMINATION_LOG.into(),
    });
    let none = Storage::default();
    let job = MoverJob {
        name: job_name(restore, &entry.node),
        namespace: restore.namespace().unwrap_or_default(),
        owner: restore
            .controller_owner_ref(&())
            .expect("a stored resource has a UID"),
        owner_uid: restore.uid().unwrap_or_default(),
        node: &entry.node,
        task,
        data: Some((&entry.claim, false)),
        storage: source.storage.unwrap_or(&none),
        pin_to: None,
        security: source.security,
    };
    jobs::create(&ctx.client, &mover::job(&job, &ctx.config.mover)).await
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
mod tests {
    use super::*;
    use crate::api::restore::{Priority, RestoreSource, SnapshotRef};
    use crate::api::snapshot::{StatefulSetRef, Workload};

    fn node(name: &str) -> Node {
        Node {
            name: name.into(),
            claim: format!("data-{name}"),
        }
    }

    fn archive(node: &str) -> SourceArchive {
        SourceArchive {
            node: node.into(),
            location: format!("c/c-{node}.snapshot"),
            checksum: Some(format!("sum-{node}")),
            shown: None,
        }
    }

    #[test]
    fn archives_map_by_name_then_ordinal_never_guessed() {
        let archives = vec![archive("qdrant-0"), archive("qdrant-1")];
        let same = map_archives(&[node("qdrant-0"), node("qdrant-1")], &archives);
        assert_eq!(same[1].location.as_deref(), Some("c/c-qdrant-1.snapshot"));
        assert_eq!(same[1].checksum.as_deref(), Some("sum-qdrant-1"));
        let renamed = map_archives(
            &[node("search-0"), node("search-1"), node("search-2")],
            &archives,
        );
        assert_eq!(
            renamed[0].location.as_deref(),
            Some("c/c-qdrant-0.snapshot")
        );
        assert_eq!(
            renamed[1].location.as_deref(),
            Some("c/c-qdrant-1.snapshot")
        );
        assert_eq!(
            renamed[2].location, None,
            "no archive for ordinal 2: reported, not guessed"
        );
        let one = map_archives(&[node("data")], &[archive("other-claim")]);
        assert_eq!(one[0].location.as_deref(), Some("c/c-other-claim.snapshot"));
        let location = SourceArchive {
            node: String::new(),
            ..archive("x")
        };
        let everywhere = map_archives(&[node("a-0"), node("a-1")], &[location]);
        assert!(
            everywhere
                .iter()
                .all(|a| a.location.as_deref() == Some("c/c-x.snapshot"))
        );
    }

    fn spec() -> SnapshotRestoreSpec {
        SnapshotRestoreSpec {
            source: RestoreSource {
                snapshot_ref: Some(SnapshotRef { name: "s".into() }),
                location: None,
            },
            checksum: None,
            target: Workload {
                stateful_set: Some(StatefulSetRef {
                    name: "qdrant".into(),
                    volume_claim_template: "data".into(),
                }),
                persistent_volume_claim: None,
            },
            path: "/".into(),
            collection: Some("products".into()),
            source_collection: None,
            priority: Priority::Replica,
            shard: None,
            stop_workload: false,
            storage: None,
            mover_security_context: None,
        }
    }

    #[test]
    fn specs_are_validated() {
        assert!(validate(&spec()).is_ok());
        let mut s = spec();
        s.source.location = Some("s3://b/k".into());
        assert!(validate(&s).unwrap_err().contains("exactly one"));
        let mut s = spec();
        s.checksum = Some("ABC".into());
        assert!(validate(&s).unwrap_err().contains("checksum"));
        let mut s = spec();
        s.source = RestoreSource {
            snapshot_ref: None,
            location: Some("ftp://x/y".into()),
        };
        assert!(validate(&s).unwrap_err().contains("unsupported scheme"));
        let mut s = spec();
        s.target = Workload {
            stateful_set: None,
            persistent_volume_claim: Some(crate::api::snapshot::ClaimRef {
                claim_name: "d".into(),
            }),
        };
        s.stop_workload = true;
        assert!(
            validate(&s)
                .unwrap_err()
                .contains("stopWorkload needs a statefulSet")
        );
        let mut s = spec();
        s.collection = None;
        s.source_collection = Some("x".into());
        assert!(validate(&s).is_err());
    }

    #[test]
    fn what_a_restore_may_read_is_bounded() {
        let config: OperatorConfig = serde_json::from_value(serde_json::json!({
            "defaultStorage": {"s3": {"bucket": "shared", "endpointUrl": "http://minio:9000"}}}))
        .unwrap();
        let with = |location: &str, storage: serde_json::Value| {
            let mut s = spec();
            s.source = RestoreSource {
                snapshot_ref: None,
                location: Some(location.into()),
            };
            s.storage = serde_json::from_value(storage).unwrap();
            within_trust(&s, "team-a", &config)
        };
        // The default storage: this namespace's part of it only.
        assert!(with("s3://shared/team-a/c/x.snapshot", serde_json::Value::Null).is_ok());
        let theirs = with("s3://shared/team-b/c/x.snapshot", serde_json::Value::Null).unwrap_err();
        assert!(theirs.contains("outside this namespace's part"), "{theirs}");
        let other = with("s3://someone-else/x.snapshot", serde_json::Value::Null).unwrap_err();
        assert!(other.contains("credentialsSecret"), "{other}");
        let storage =
            serde_json::json!({"s3": {"bucket": "mine", "credentialsSecret": {"name": "c"}}});
        assert!(
            with("s3://someone-else/x.snapshot", storage).is_ok(),
            "credentials named"
        );
        let elsewhere = serde_json::json!({"s3": {"bucket": "mine", "endpointUrl": "https://attacker.example",
            "credentialsSecret": {"name": "c"}}});
        let refused = with("https://example.com/x.snapshot", elsewhere).unwrap_err();
        assert!(refused.contains("not one the operator allows"), "{refused}");
        assert!(with("https://example.com/x.snapshot", serde_json::Value::Null).is_ok());
    }

    fn entry(phase: NodePhase) -> NodeRestore {
        NodeRestore {
            node: "n".into(),
            claim: "c".into(),
            archive: None,
            phase,
            bytes: None,
            message: None,
        }
    }

    #[test]
    fn status_waits_for_the_workload_to_restart() {
        let r: SnapshotRestore = serde_json::from_value(serde_json::json!({
            "apiVersion": "snapshot-operator.dev/v1alpha1", "kind": "SnapshotRestore",
            "metadata": {"name": "r", "generation": 1},
            "spec": serde_json::to_value(spec()).unwrap(),
        }))
        .unwrap();
        let now = || Time(jiff::Timestamp::UNIX_EPOCH);
        let done = vec![entry(NodePhase::Restored), entry(NodePhase::Skipped)];
        let s = next_status(&r, done.clone(), Some(3), false, None, now());
        assert_eq!(s.phase, Some(RestorePhase::Running));
        assert_eq!(s.conditions[0].reason, reason::STOPPING_WORKLOAD);
        let s = next_status(&r, done, Some(3), true, None, now());
        assert_eq!(s.phase, Some(RestorePhase::Succeeded));
        assert_eq!(
            s.conditions[0].message,
            "1 restored, 1 skipped, 0 failed of 2"
        );
        assert_eq!(s.stopped_replicas, Some(3));
        let failed = vec![entry(NodePhase::Restored), entry(NodePhase::Failed)];
        assert_eq!(
            next_status(&r, failed, None, true, None, now()).phase,
            Some(RestorePhase::Failed)
        );
        let waiting = next_status(
            &r,
            vec![entry(NodePhase::Pending)],
            Some(1),
            false,
            Some("waiting for pods to stop: q-0".into()),
            now(),
        );
        assert_eq!(waiting.phase, Some(RestorePhase::Pending));
        assert_eq!(
            waiting.conditions[0].message,
            "waiting for pods to stop: q-0"
        );
    }
}

#[cfg(test)]
mod mock {
    //! Reconciliations against a mock API server: every request asserted.
    use super::*;
    use crate::controller::FINALIZER;
    use crate::controller::cluster::Cluster;
    use crate::controller::config::OperatorConfig;
    use crate::controller::testing::{
        Expect, event, list, mover_job, mover_pod, scripted, statefulset, workload_pod,
    };
    use k8s_openapi::api::batch::v1::Job;
    use serde_json::{Value, json};

    const RESTORES: &str = "/apis/snapshot-operator.dev/v1alpha1/namespaces/ns/snapshotrestores/r";
    const JOBS: &str = "/apis/batch/v1/namespaces/ns/jobs";
    const STS: &str = "/apis/apps/v1/namespaces/ns/statefulsets/qdrant";
    const PODS: &str = "/api/v1/namespaces/ns/pods";

    /// The source Snapshot, finished, and no movers yet.
    fn source() -> Cluster {
        cluster("Succeeded", vec![], vec![])
    }

    fn restore(spec: Value, status: Value, deleting: bool) -> SnapshotRestore {
        let mut meta = json!({"name": "r", "namespace": "ns", "uid": "uid-r", "generation": 1, "finalizers": [FINALIZER]});
        if deleting {
            meta["deletionTimestamp"] = json!("2026-11-25T10:00:00Z");
        }
        serde_json::from_value(
            json!({"apiVersion": "snapshot-operator.dev/v1alpha1", "kind": "SnapshotRestore",
            "metadata": meta, "spec": spec, "status": status}),
        )
        .unwrap()
    }

    fn spec(stop: bool) -> Value {
        json!({"source": {"snapshotRef": {"name": "s"}},
               "target": {"statefulSet": {"name": "qdrant", "volumeClaimTemplate": "data"}},
               "path": "/qdrant/storage", "collection": "products", "priority": "snapshot", "stopWorkload": stop})
    }

    fn stored() -> Value {
        serde_json::to_value(restore(spec(true), Value::Null, false)).unwrap()
    }

    /// The status once the workload was stopped: replicas and nodes recorded.
    fn pending_nodes() -> Value {
        json!({"stoppedReplicas": 2, "phase": "Pending", "nodes": [
            {"node": "qdrant-0", "claim": "data-qdrant-0", "phase": "Pending", "archive": "s3://b/products/products-qdrant-0.snapshot"},
            {"node": "qdrant-1", "claim": "data-qdrant-1", "phase": "Pending"}]})
    }

    fn snapshot(phase: &str) -> Value {
        json!({"apiVersion": "snapshot-operator.dev/v1alpha1", "kind": "Snapshot",
            "metadata": {"name": "s", "namespace": "ns", "uid": "uid-s"},
            "spec": {"source": {"statefulSet": {"name": "qdrant", "volumeClaimTemplate": "data"}}, "collection": "products",
                     "storage": {"s3": {"bucket": "b", "credentialsSecret": {"name": "creds"}}}},
            "status": {"phase": phase, "archives": [
                {"node": "qdrant-0", "claim": "data-qdrant-0", "phase": "Succeeded", "name": "products-qdrant-0.snapshot", "checksum": "aa", "location": "s3://b/products/products-qdrant-0.snapshot"},
                {"node": "qdrant-1", "claim": "data-qdrant-1", "phase": "Succeeded", "name": "products-qdrant-1.snapshot", "checksum": "bb"}]}})
    }

    fn scale(replicas: i32) -> Value {
        json!({"apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": {"name": "qdrant", "namespace": "ns"}, "spec": {"replicas": replicas}})
    }

    /// What the watches hold: the source Snapshot in `phase`, and these movers.
    fn cluster(phase: &str, jobs: Vec<Job>, pods: Vec<Pod>) -> Cluster {
        let source = serde_json::from_value(snapshot(phase)).unwrap();
        Cluster::of(jobs, pods, vec![source], vec![])
    }

    fn finished(node: &str, message: &str) -> (Job, Pod) {
        let job = mover_job("rst", ("r", "uid-r"), node, Some("Complete"));
        let pod = mover_pod(&job, 0, message, 3, true);
        (job, pod)
    }

    async fn run(
        r: SnapshotRestore,
        cluster: Cluster,
        script: Vec<Expect>,
    ) -> Result<Action, Error> {
        scripted(OperatorConfig::default(), cluster, script, |ctx| {
            super::super::reconcile(Arc::new(r), ctx)
        })
        .await
        .0
    }

    fn status_check(check: impl Fn(&Value) + Send + 'static) -> Expect {
        Expect::new("PATCH", format!("{RESTORES}/status"), stored())
            .check(move |body| check(&body["status"]))
    }

    #[tokio::test]
    async fn stop_workload_records_replicas_before_scaling_to_zero() {
        let script = vec![
            Expect::new("GET", STS, statefulset(2)),
            Expect::new(
                "GET",
                PODS,
                list("Pod", vec![workload_pod(0, "w"), workload_pod(1, "w")]),
            ),
            Expect::new("GET", format!("{STS}/scale"), scale(2)),
            status_check(|s| {
                assert_eq!(s["stoppedReplicas"], 2);
                assert_eq!(s["conditions"][0]["reason"], "StoppingWorkload");
            }),
            Expect::new("PATCH", format!("{STS}/scale"), scale(0))
                .check(|b| assert_eq!(b["spec"]["replicas"], 0)),
            event("StoppingWorkload"),
        ];
        run(restore(spec(true), Value::Null, false), source(), script)
            .await
            .unwrap();

        // Pods still running: wait, no movers.
        let script = vec![
            Expect::new("GET", PODS, list("Pod", vec![workload_pod(1, "w")])),
            Expect::new("PATCH", format!("{STS}/scale"), scale(0))
                .check(|b| assert_eq!(b["spec"]["replicas"], 0)),
            status_check(|s| {
                assert_eq!(s["phase"], "Pending");
                assert_eq!(
                    s["conditions"][0]["message"],
                    "waiting for pods to stop: qdrant-1"
                );
            }),
        ];
        run(
            restore(spec(true), pending_nodes(), false),
            source(),
            script,
        )
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn stopped_workload_gets_one_restore_mover_per_node_with_its_archive() {
        // The application runs as 1000: restored files must be its own.
        let mut sts = statefulset(2);
        sts["spec"]["template"] = json!({"spec": {"containers": [],
            "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000}}});
        let script = vec![
            Expect::new("GET", PODS, list("Pod", vec![])),
            Expect::new("GET", STS, sts),
            Expect::new(
                "PATCH",
                format!("{JOBS}/{}", mover::job_name("rst", "r", "qdrant-0")),
                Value::Null,
            )
            .check(|job| {
                let pod = &job["spec"]["template"]["spec"];
                let ids = &pod["securityContext"];
                assert_eq!(
                    (&ids["runAsUser"], &ids["runAsGroup"], &ids["fsGroup"]),
                    (&json!(1000), &json!(1000), &json!(1000)),
                    "{ids}"
                );
                assert_eq!(
                    pod["containers"][0]["args"],
                    json!([
                        "mover",
                        "restore",
                        "--storage-path",
                        "/data/qdrant/storage",
                        "--volume",
                        "/data",
                        "--location",
                        "products/products-qdrant-0.snapshot",
                        "--priority",
                        "snapshot",
                        "--collection",
                        "products",
                        "--checksum",
                        "aa",
                        "--max-entries",
                        "5000",
                        "--max-bytes",
                        "1073741824",
                        "--max-hole-bytes",
                        "1099511627776"
                    ])
                );
                assert_eq!(
                    job["spec"]["activeDeadlineSeconds"], 3600,
                    "the configured deadline"
                );
                assert_eq!(
                    pod["volumes"][0]["persistentVolumeClaim"],
                    json!({"claimName": "data-qdrant-0", "readOnly": false})
                );
                let env = pod["containers"][0]["env"].to_string();
                assert!(
                    env.contains("\"creds\"") && env.contains("S3_CONFIG__BUCKET"),
                    "{env}"
                );
            }),
            Expect::new(
                "PATCH",
                format!("{JOBS}/{}", mover::job_name("rst", "r", "qdrant-1")),
                Value::Null,
            ),
            status_check(|s| {
                assert_eq!(s["phase"], "Running");
                assert_eq!(s["nodes"][0]["phase"], "Running");
                assert_eq!(
                    s["nodes"][0]["archive"],
                    "s3://b/products/products-qdrant-0.snapshot"
                );
                assert_eq!(s["stoppedReplicas"], 2);
            }),
            event("Running"),
        ];
        // Limits and deadline as the operator is configured.
        let config: OperatorConfig = serde_json::from_value(json!({"mover": {
            "activeDeadlineSeconds": 3600,
            "restoreLimits": {"maxEntries": 5000, "maxBytes": 1073741824}}}))
        .unwrap();
        let r = restore(spec(true), pending_nodes(), false);
        let (result, _) = scripted(config, source(), script, |ctx| {
            super::super::reconcile(Arc::new(r), ctx)
        })
        .await;
        result.unwrap();
    }

    #[tokio::test]
    async fn finished_movers_restart_the_workload_then_report_each_node() {
        let running = json!({"stoppedReplicas": 2, "phase": "Running", "nodes": [
            {"node": "qdrant-0", "claim": "data-qdrant-0", "phase": "Running"},
            {"node": "qdrant-1", "claim": "data-qdrant-1", "phase": "Running"}]});
        let (job0, pod0) = finished("qdrant-0", r#"{"outcome":"Restored","size":4096}"#);
        let (job1, pod1) = finished(
            "qdrant-1",
            r#"{"outcome":"Skipped","reason":"collection \"products\" already exists on this node","size":10}"#,
        );
        let movers = cluster("Succeeded", vec![job0, job1], vec![pod0, pod1]);
        let script = vec![
            Expect::new("GET", PODS, list("Pod", vec![])),
            Expect::new("PATCH", format!("{STS}/scale"), scale(2))
                .check(|b| assert_eq!(b["spec"]["replicas"], 2)),
            status_check(|s| {
                assert_eq!(s["phase"], "Succeeded");
                assert_eq!(s["conditions"][0]["status"], "True");
                assert_eq!(s["nodes"][0]["phase"], "Restored");
                assert_eq!(s["nodes"][0]["bytes"], 4096);
                assert_eq!(s["nodes"][1]["phase"], "Skipped");
                assert!(
                    s["nodes"][1]["message"]
                        .as_str()
                        .unwrap()
                        .contains("already exists")
                );
            }),
            event("Succeeded"),
        ];
        let (action, metrics) = scripted(OperatorConfig::default(), movers, script, |ctx| {
            super::super::reconcile(Arc::new(restore(spec(true), running, false)), ctx)
        })
        .await;
        let action = action.unwrap();
        assert!(
            metrics.contains("snapshot_operator_restored_bytes_total 4096"),
            "{metrics}"
        );
        assert_eq!(action, Action::await_change());
    }

    #[tokio::test]
    async fn a_full_restore_without_stop_workload_is_invalid() {
        let mut s = spec(false);
        s.as_object_mut().unwrap().remove("collection");
        let mut full = snapshot("Succeeded");
        full["spec"].as_object_mut().unwrap().remove("collection");
        let full = Cluster::of(
            vec![],
            vec![],
            vec![serde_json::from_value(full).unwrap()],
            vec![],
        );
        let script = vec![
            status_check(|s| {
                assert_eq!(s["conditions"][0]["reason"], "InvalidSpec");
                assert!(
                    s["conditions"][0]["message"]
                        .as_str()
                        .unwrap()
                        .contains("stopWorkload")
                );
            }),
            event("InvalidSpec"),
        ];
        let (action, metrics) = scripted(OperatorConfig::default(), full, script, |ctx| {
            super::super::reconcile(Arc::new(restore(s, Value::Null, false)), ctx)
        })
        .await;
        assert_eq!(action.unwrap(), Action::await_change());
        assert!(
            metrics.contains(
                r#"snapshot_operator_reconcile_failures_total{resource="snapshotrestore",reason="InvalidSpec"} 1"#
            ),
            "{metrics}"
        );
    }

    #[tokio::test]
    async fn a_full_restore_into_a_claim_runs_when_no_pod_mounts_it() {
        // A claim of its own (no StatefulSet to stop), from a location: the whole storage.
        let spec = || {
            json!({"source": {"location": "s3://b/full.snapshot"},
            "target": {"persistentVolumeClaim": {"claimName": "d"}}, "path": "/qdrant/storage",
            "storage": {"s3": {"bucket": "b"}}})
        };
        let claim = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "d", "namespace": "ns"}});
        let mounting = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "db", "namespace": "ns"},
            "spec": {"containers": [], "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "d"}}]},
            "status": {"phase": "Running"}});
        let script = vec![
            Expect::new(
                "GET",
                "/api/v1/namespaces/ns/persistentvolumeclaims/d",
                claim.clone(),
            ),
            Expect::new("GET", PODS, list("Pod", vec![])),
            Expect::new(
                "PATCH",
                format!("{JOBS}/{}", mover::job_name("rst", "r", "d")),
                Value::Null,
            )
            .check(|job| {
                let args = job["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
                assert!(
                    args.contains("s3://b/full.snapshot") && !args.contains("--collection"),
                    "{args}"
                );
            }),
            status_check(|s| assert_eq!(s["nodes"][0]["phase"], "Running")),
            event("Running"),
        ];
        run(restore(spec(), Value::Null, false), source(), script)
            .await
            .unwrap();

        // A running pod mounts it: that node fails, and says why.
        let script = vec![
            Expect::new(
                "GET",
                "/api/v1/namespaces/ns/persistentvolumeclaims/d",
                claim,
            ),
            Expect::new("GET", PODS, list("Pod", vec![mounting])),
            status_check(|s| {
                assert_eq!(s["phase"], "Failed");
                let message = s["nodes"][0]["message"].as_str().unwrap();
                assert!(message.contains("mounted by running pod db"), "{message}");
            }),
            event("Failed"),
        ];
        run(restore(spec(), Value::Null, false), source(), script)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn claims_of_running_pods_are_refused_without_stop_workload() {
        let script = vec![
            Expect::new("GET", STS, statefulset(2)),
            Expect::new(
                "GET",
                PODS,
                list("Pod", vec![workload_pod(0, "w"), workload_pod(1, "w")]),
            ),
            status_check(|s| {
                assert_eq!(s["phase"], "Failed");
                let message = s["nodes"][0]["message"].as_str().unwrap();
                assert!(
                    message.contains("mounted by running pod qdrant-0")
                        && message.contains("stopWorkload"),
                    "{message}"
                );
            }),
            event("Failed"),
        ];
        run(restore(spec(false), Value::Null, false), source(), script)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn an_unfinished_snapshot_is_waited_for() {
        let script = vec![status_check(|s| {
            assert_eq!(s["phase"], "Pending");
            assert_eq!(
                s["conditions"][0]["message"],
                "waiting for Snapshot s to finish"
            );
        })];
        assert_eq!(
            run(
                restore(spec(true), Value::Null, false),
                cluster("Running", vec![], vec![]),
                script
            )
            .await
            .unwrap(),
            Action::requeue(RECHECK)
        );
    }

    #[tokio::test]
    async fn deleting_a_restore_mid_way_restarts_the_workload() {
        let script = vec![
            Expect::new("PATCH", format!("{STS}/scale"), scale(3))
                .check(|b| assert_eq!(b["spec"]["replicas"], 3)),
            Expect::new("PATCH", RESTORES, stored())
                .check(|b| assert!(b.to_string().contains("remove"))),
        ];
        run(
            restore(
                spec(true),
                json!({"stoppedReplicas": 3, "phase": "Running"}),
                true,
            ),
            source(),
            script,
        )
        .await
        .unwrap();
    }
}
