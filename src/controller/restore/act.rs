//! Starting a SnapshotRestore's movers, one a node, as slots allow.

use k8s_openapi::api::core::v1::PodSecurityContext;
use kube::{Resource, ResourceExt};

use super::plan::{Assignment, RestorePlan};
use super::status::next_node;
use crate::api::restore::{NodePhase, NodeRestore, RestoreMethod, SnapshotRestore};
use crate::api::snapshot::{Encryption, Storage};
use crate::controller::copy::Endpoint;
use crate::controller::copy::qdrant::{endpoint, service_of};
use crate::controller::jobs::{self, Mover};
use crate::controller::mover::{self, MoverJob};
use crate::controller::{Context, Error, workload};
use crate::protocol::{ApiRestoreTask, MoverTask, RestoreTask, TERMINATION_LOG};

/// Starts the movers of pending nodes as slots allow and reads the finished ones: the next
/// node entries, and each node's mover.
pub async fn run_movers(
    restore: &SnapshotRestore,
    ctx: &Context,
    plan: &RestorePlan,
) -> Result<(Vec<NodeRestore>, Vec<Option<Mover>>), Error> {
    let names = plan.entries.iter().map(|e| job_name(restore, &e.node));
    let movers = ctx.movers_of(restore, names).await?;
    let mut next = Vec::new();
    // Who the movers act as, and the pods' service through Qdrant's API: read once a mover
    // starts.
    let mut security: Option<PodSecurityContext> = None;
    let mut service: Option<Result<String, String>> = None;
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
            let through = match through_api(restore, ctx, plan, &entry.node, &mut service).await? {
                Ok(through) => through,
                Err(why) => {
                    ctx.give_back_slot(restore, &job_name(restore, &entry.node));
                    next.push(NodeRestore {
                        phase: NodePhase::Failed,
                        message: Some(why),
                        ..entry.clone()
                    });
                    continue;
                }
            };
            let source = MoverSource {
                location,
                checksum: checksum.as_deref(),
                storage: plan.storage.as_ref(),
                encryption: plan.encryption.as_ref(),
                security: security.clone().unwrap_or_default(),
                through,
            };
            start_mover(restore, ctx, entry, source).await?;
            started = true;
        }
        next.push(next_node(entry, mover.as_ref(), started));
    }
    Ok((next, movers))
}

/// The API of `node`'s Qdrant when the restore goes through it; `Err(why)` when its pods
/// have no address. `service`: the StatefulSet's service, once read.
async fn through_api(
    restore: &SnapshotRestore,
    ctx: &Context,
    plan: &RestorePlan,
    node: &str,
    service: &mut Option<Result<String, String>>,
) -> Result<Result<Option<Endpoint>, String>, Error> {
    let (Some(sts), RestoreMethod::QdrantApi) =
        (&restore.spec.target.stateful_set, restore.spec.method)
    else {
        return Ok(Ok(None));
    };
    if service.is_none() {
        *service = Some(service_of(ctx, &plan.namespace, &sts.name).await?);
    }
    let found = service.clone().expect("read above");
    Ok(found.map(|service| {
        let api = restore.spec.qdrant.as_ref();
        Some(endpoint(api, node, &service, &plan.namespace))
    }))
}

/// What a node's mover restores.
struct MoverSource<'a> {
    location: &'a str,
    checksum: Option<&'a str>,
    storage: Option<&'a Storage>,
    /// The Secret whose identities read the archive.
    encryption: Option<&'a Encryption>,
    /// The movers' pod security context.
    security: PodSecurityContext,
    /// The node's Qdrant API, when the archive is uploaded there.
    through: Option<Endpoint>,
}

/// Starts the mover of one node (its slot taken).
async fn start_mover(
    restore: &SnapshotRestore,
    ctx: &Context,
    entry: &NodeRestore,
    source: MoverSource<'_>,
) -> Result<(), Error> {
    let (task, data, env) = match &source.through {
        Some(endpoint) => (api_task(restore, &source, endpoint), None, endpoint.env()),
        None => {
            let task = volume_task(restore, ctx, &source);
            let env = source.encryption.map(Encryption::identities_env);
            (
                task,
                Some((entry.claim.as_str(), false)),
                env.into_iter().collect(),
            )
        }
    };
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
        data,
        storage: source.storage.unwrap_or(&none),
        pin_to: None,
        security: source.security,
        env,
    };
    jobs::create(&ctx.client, &mover::job(&job, &ctx.config.mover)).await
}

/// The task of a mover that writes the archive into its node's claim (pure).
fn volume_task(restore: &SnapshotRestore, ctx: &Context, source: &MoverSource<'_>) -> MoverTask {
    let spec = &restore.spec;
    MoverTask::Restore(RestoreTask {
        dir: mover::data_dir(&spec.path),
        location: source.location.to_owned(),
        collection: spec.collection.clone(),
        source_collection: spec.source_collection.clone(),
        priority: spec.priority,
        checksum: source.checksum.map(str::to_owned),
        shard: spec.shard_number(),
        limits: ctx.config.mover.restore_limits,
        termination_log: TERMINATION_LOG.into(),
    })
}

/// The task of a mover that uploads the archive to its node's Qdrant (pure).
fn api_task(restore: &SnapshotRestore, source: &MoverSource<'_>, endpoint: &Endpoint) -> MoverTask {
    let spec = &restore.spec;
    MoverTask::ApiRestore(ApiRestoreTask {
        qdrant: endpoint.task(),
        location: source.location.to_owned(),
        collection: spec.collection.clone().unwrap_or_default(),
        shard: spec.shard_number(),
        priority: spec.priority,
        checksum: source.checksum.map(str::to_owned),
        termination_log: TERMINATION_LOG.into(),
    })
}

/// The mover Job of a node.
pub fn job_name(restore: &SnapshotRestore, node: &str) -> String {
    mover::job_name("rst", &restore.name_any(), node)
}
