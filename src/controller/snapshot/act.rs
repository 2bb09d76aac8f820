//! Starting a Snapshot's movers: each node's copy method prepared, a slot taken, the Job
//! made.

use k8s_openapi::api::core::v1::{Pod, PodSecurityContext};
use kube::api::{Api, ListParams};
use kube::{Resource, ResourceExt};

use super::status::{NodeStep, next_archive};
use crate::api::snapshot::{ArchivePhase, ArchiveStatus, Encryption, Snapshot, Storage};
use crate::controller::copy::{self, Prepared, ReadFrom};
use crate::controller::mover::{self, MoverJob};
use crate::controller::{Context, Error, jobs, workload};
use crate::engine::manifest::SnapshotIdentity;
use crate::protocol::{ApiSnapshotTask, EnvValue, MoverTask, SnapshotTask, TERMINATION_LOG};

/// Starts the movers the plan calls for, as slots allow; the next archive entries.
pub async fn act(
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
            let read = method.source_claim(ctx, snap, archive).await?;
            if let ReadFrom::Nothing(why) = read {
                ctx.give_back_slot(snap, &job_name(snap, &archive.node));
                next.push(ArchiveStatus {
                    phase: ArchivePhase::Failed,
                    message: Some(why),
                    ..archive.clone()
                });
                continue;
            }
            let read_from = match &read {
                ReadFrom::Claim(claim) => Some(claim.clone()),
                _ => None,
            };
            let mover = NewMover {
                archive,
                read: &read,
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
        refuse_plain(snap, step, &mut entry);
        next.push(entry);
    }
    Ok(next)
}

/// An archive stored plain for a Snapshot that asks for encryption (a mover image older
/// than the operator) fails its node; its key stays recorded, so that deleting the Snapshot
/// deletes it (pure).
fn refuse_plain(snap: &Snapshot, step: &NodeStep, entry: &mut ArchiveStatus) {
    if let NodeStep::Finished { report, .. } = step
        && snap.spec.encryption.is_some()
        && entry.phase == ArchivePhase::Succeeded
        && !report.encrypted
    {
        entry.phase = ArchivePhase::Failed;
        entry.message = Some(
            "the mover stored the archive unencrypted, though encryption is set: check that \
             mover.image is this operator's version; delete this Snapshot to delete the archive"
                .into(),
        );
    }
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
    /// What it reads (not [`ReadFrom::Nothing`]).
    read: &'a ReadFrom,
    storage: &'a Storage,
    pods: &'a [Pod],
    identity: SnapshotIdentity,
    security: PodSecurityContext,
}

/// Starts the mover of one node (its slot taken).
async fn start_mover(snap: &Snapshot, ctx: &Context, new: NewMover<'_>) -> Result<(), Error> {
    let NewMover {
        archive,
        read,
        storage,
        pods,
        identity,
        security,
    } = new;
    let (task, env) = task(snap, archive, read, identity);
    let spec = MoverJob {
        name: job_name(snap, &archive.node),
        namespace: snap.namespace().unwrap_or_default(),
        owner: snap
            .controller_owner_ref(&())
            .expect("a stored Snapshot has a UID"),
        owner_uid: snap.uid().unwrap_or_default(),
        node: &archive.node,
        task,
        data: match read {
            // A clone is a new volume: made where the mover runs.
            ReadFrom::Claim(claim) => Some((claim, true)),
            ReadFrom::Own => Some((&archive.claim, true)),
            ReadFrom::Api(_) | ReadFrom::Nothing(_) => None,
        },
        storage,
        pin_to: match read {
            ReadFrom::Own => workload::node_of_claim(pods, &archive.claim),
            _ => None,
        },
        security,
        env,
    };
    jobs::create(&ctx.client, &mover::job(&spec, &ctx.config.mover)).await
}

/// What a node's mover is told to do, and the environment that takes (pure).
fn task(
    snap: &Snapshot,
    archive: &ArchiveStatus,
    read: &ReadFrom,
    identity: SnapshotIdentity,
) -> (MoverTask, Vec<(String, EnvValue)>) {
    let ReadFrom::Api(endpoint) = read else {
        let task = MoverTask::Snapshot(SnapshotTask {
            dir: mover::data_dir(&snap.spec.path),
            collection: snap.spec.collection.clone(),
            node: archive.node.clone(),
            identity: Some(identity),
            format: snap.spec.format,
            termination_log: TERMINATION_LOG.into(),
        });
        let env = snap.spec.encryption.iter().map(Encryption::recipients_env);
        return (task, env.collect());
    };
    let task = MoverTask::ApiSnapshot(ApiSnapshotTask {
        qdrant: endpoint.task(),
        collection: snap.spec.collection.clone(),
        node: archive.node.clone(),
        identity: Some(identity),
        termination_log: TERMINATION_LOG.into(),
    });
    (task, endpoint.env())
}

/// Who a Snapshot's movers act as, its delete mover too: its `moverSecurityContext`, else
/// the workload's user while the workload exists. On a volume that takes no `fsGroup` only
/// the user who wrote an archive may delete it.
pub async fn acting_as(ctx: &Context, snap: &Snapshot) -> Result<PodSecurityContext, Error> {
    workload::mover_security(
        &ctx.client,
        &snap.namespace().unwrap_or_default(),
        snap.spec.mover_security_context.as_ref(),
        &snap.spec.source,
        &ctx.config.mover,
    )
    .await
}

/// The mover Job of a node.
pub fn job_name(snap: &Snapshot, node: &str) -> String {
    mover::job_name("snap", &snap.name_any(), node)
}
