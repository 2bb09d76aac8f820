//! The catalog import: Snapshots rebuilt from the archives in the default storage when it is
//! S3, so that a new cluster pointed at an old bucket lists them and restores from them node
//! by node (as Velero syncs its catalog from the bucket).
//!
//! Each pass lists the Snapshots first, then scans the storage (`catalog::scan`), then
//! decides per archive set ([`plan`], pure): a Snapshot that does not exist is created in the
//! namespace of the archives' folder (never in another; the operator creates no namespace),
//! `deletionPolicy: Retain` and labelled [`IMPORTED`], with its status from the manifests
//! and checksums; an imported one is brought up to date with the storage (a node whose
//! archive arrived since, or went); any other Snapshot is left alone. Listing the Snapshots
//! before the storage means a Snapshot deleted with its archives during a pass is never
//! brought back from archives that are being deleted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams};
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use tokio_util::sync::CancellationToken;

use super::snapshot::{self as snapshots, next_status};
use super::{Context, Error, create_if_absent, write_status};
use crate::api::Snapshot;
use crate::api::snapshot::{
    ArchivePhase, ArchiveStatus, ClaimRef, CopyMethod, DeletionPolicy, SnapshotSpec,
    SnapshotStatus, StatefulSetRef, Storage, Workload,
};
use crate::api::snapshot::{IMPORTED, IMPORTED_UID};
use crate::catalog::{self, Found, Imported, Manifests};
use crate::storage;

/// What a pass does about one archive set, or one imported Snapshot.
#[derive(Debug, Clone)]
pub enum Step {
    /// No Snapshot of that name: create it, then write this status.
    Create(Box<Snapshot>, Imported),
    /// An imported Snapshot: write its status as the storage now has it (`None`: its
    /// archives are all gone).
    Refresh(Arc<Snapshot>, Option<Imported>),
}

/// What to do, from the Snapshots that exist (as listed before the scan) and the archive
/// sets found, in the namespaces scanned (pure). An archive set whose identity does not
/// make a valid Snapshot is left out with the reason.
pub fn plan(
    existing: &[Arc<Snapshot>],
    found: &BTreeMap<String, Vec<Imported>>,
) -> (Vec<Step>, Vec<(String, String)>) {
    let mut steps = Vec::new();
    let mut skipped = Vec::new();
    for (namespace, sets) in found {
        for set in sets {
            let same = existing
                .iter()
                .find(|s| s.namespace().as_deref() == Some(namespace) && s.name_any() == set.name);
            match same {
                None => match resource(set) {
                    Ok(snap) => steps.push(Step::Create(Box::new(snap), set.clone())),
                    Err(why) => skipped.push((format!("{namespace}/{}", set.name), why)),
                },
                Some(s) if imported_from(s) == Some(set.uid.as_str()) => {
                    steps.push(Step::Refresh(s.clone(), Some(set.clone())));
                }
                // Taken here, or another Snapshot of that name: not ours to change.
                Some(_) => {}
            }
        }
    }
    // Imported Snapshots of a scanned namespace whose archives were not found: gone.
    for s in existing {
        let Some(uid) = imported_from(s) else {
            continue;
        };
        let namespace = s.namespace().unwrap_or_default();
        let sets = found.get(&namespace).map(Vec::as_slice).unwrap_or_default();
        if !sets.iter().any(|set| set.uid == uid) {
            steps.push(Step::Refresh(s.clone(), None));
        }
    }
    (steps, skipped)
}

/// The UID an imported Snapshot's archives were taken for.
fn imported_from(snap: &Snapshot) -> Option<&str> {
    if !snap.is_imported() {
        return None;
    }
    snap.annotations().get(IMPORTED_UID).map(String::as_str)
}

/// The Snapshot (no status) an archive set describes (pure), or why it cannot be one.
pub fn resource(set: &Imported) -> Result<Snapshot, String> {
    let first = set
        .nodes
        .iter()
        .find_map(|n| n.archive.as_ref())
        .and_then(|a| a.manifest.snapshot.as_ref())
        .ok_or("no archive")?;
    let source = match first.source.split_once('/') {
        Some(("statefulSet", name)) => Workload {
            stateful_set: Some(StatefulSetRef {
                name: name.to_owned(),
                volume_claim_template: first
                    .volume_claim_template
                    .clone()
                    .ok_or("the manifest names no volume claim template")?,
            }),
            persistent_volume_claim: None,
        },
        Some(("persistentVolumeClaim", name)) => Workload {
            stateful_set: None,
            persistent_volume_claim: Some(ClaimRef {
                claim_name: name.to_owned(),
            }),
        },
        _ => return Err(format!("unknown source {:?}", first.source)),
    };
    let spec = SnapshotSpec {
        source,
        path: first.path.clone(),
        collection: set.collection.clone(),
        storage: None,
        deletion_policy: DeletionPolicy::Retain,
        copy_method: CopyMethod::Direct,
        qdrant: None,
        volume_snapshot_class_name: None,
        mover_security_context: None,
        format: set
            .nodes
            .iter()
            .find_map(|n| n.archive.as_ref())
            .map(|a| a.manifest.format),
        // Imported Snapshots never expire: their archives were there before them.
        ttl: None,
        // Which Secret reads them is not recorded: a restore names it.
        encryption: None,
    };
    snapshots::validate(&spec).map_err(|e| e.to_string())?;
    let mut snap = Snapshot::new(&set.name, spec);
    snap.meta_mut().namespace = Some(set.namespace.clone());
    snap.labels_mut().insert(IMPORTED.into(), "true".into());
    snap.annotations_mut()
        .insert(IMPORTED_UID.into(), set.uid.clone());
    Ok(snap)
}

/// The status of an imported Snapshot (pure): its nodes as the storage has them, times
/// from the manifests. `None`: none of its archives is left (it completes at `now` then, if
/// it had not).
pub fn status(
    snap: &Snapshot,
    set: Option<&Imported>,
    storage: &Storage,
    now: Time,
) -> SnapshotStatus {
    let Some(set) = set else {
        let old = snap.status.clone().unwrap_or_default();
        let gone = old.archives.into_iter().map(|a| ArchiveStatus {
            phase: ArchivePhase::Failed,
            message: Some("the archive is no longer in the storage".into()),
            ..a
        });
        let at = old.completion_time.unwrap_or(now);
        return next_status(snap, gone.collect(), storage, at);
    };
    let archives: Vec<&Found> = set
        .nodes
        .iter()
        .filter_map(|n| n.archive.as_ref())
        .collect();
    let time = |newest: bool| {
        let times = archives.iter().map(|a| a.manifest.created_at);
        let at = if newest { times.max() } else { times.min() };
        Time(at.unwrap_or_default())
    };
    let nodes = set.nodes.iter().map(|n| {
        let (node, claim) = node_and_claim(snap, n);
        let archive = n.archive.as_ref();
        ArchiveStatus {
            node,
            claim,
            phase: if n.problem.is_none() {
                ArchivePhase::Succeeded
            } else {
                ArchivePhase::Failed
            },
            name: archive.map(|a| a.key.rsplit('/').next().unwrap_or(&a.key).to_owned()),
            key: archive.map(|a| a.key.clone()),
            location: archive.map(|a| a.location.clone()),
            size: archive.map(|a| i64::try_from(a.size).unwrap_or(i64::MAX)),
            checksum: archive.and_then(|a| a.checksum.clone()),
            message: n.problem.clone(),
            read_from: None,
            volume_snapshot: None,
            progress: None,
        }
    });
    let mut status = next_status(snap, nodes.collect(), storage, time(true));
    if snap
        .status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .is_none()
    {
        status.start_time = Some(time(false));
    }
    status
}

/// A node's name and claim: from its archive's manifest, else (no archive) as its
/// StatefulSet names them.
fn node_and_claim(snap: &Snapshot, node: &catalog::ImportedNode) -> (String, String) {
    let identity = node
        .archive
        .as_ref()
        .and_then(|a| a.manifest.snapshot.as_ref());
    if let (Some(name), Some(identity)) = (&node.node, identity) {
        return (name.clone(), identity.claim.clone());
    }
    let source = &snap.spec.source;
    match (&source.stateful_set, &source.persistent_volume_claim) {
        (Some(sts), _) => {
            let pod = format!("{}-{}", sts.name, node.index);
            let claim = format!("{}-{pod}", sts.volume_claim_template);
            (pod, claim)
        }
        (None, Some(claim)) => (claim.claim_name.clone(), claim.claim_name.clone()),
        (None, None) => (format!("node-{}", node.index), String::new()),
    }
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub created: usize,
    pub refreshed: usize,
    /// Archive sets of namespaces that do not exist here.
    pub no_namespace: usize,
    /// Archive sets that make no valid Snapshot.
    pub skipped: usize,
    /// Snapshots that could not be written this pass.
    pub failed: usize,
}

/// Carries out the plan for the archives found (by namespace), given the Snapshots listed
/// before the scan.
pub async fn sync(
    ctx: &Context,
    existing: &[Arc<Snapshot>],
    found: BTreeMap<String, Vec<Found>>,
) -> Summary {
    let sets: BTreeMap<String, Vec<Imported>> = found
        .into_iter()
        .map(|(ns, archives)| (ns, catalog::group(archives)))
        .collect();
    let (steps, skipped) = plan(existing, &sets);
    let mut summary = Summary {
        skipped: skipped.len(),
        ..Summary::default()
    };
    for (name, why) in skipped {
        tracing::warn!(snapshot = %name, reason = %why, "archives not imported");
    }
    // One Snapshot that cannot be written (refused, or the API failing) holds up no other:
    // it is tried again at the next pass.
    for step in steps {
        let (namespace, name) = match &step {
            Step::Create(snap, _) => (snap.namespace(), snap.name_any()),
            Step::Refresh(snap, _) => (snap.namespace(), snap.name_any()),
        };
        if let Err(e) = take(ctx, step, &mut summary).await {
            summary.failed += 1;
            let error = crate::format::render_error(&e);
            tracing::warn!(?namespace, %name, %error, "importing a Snapshot failed");
        }
    }
    summary
}

/// Carries out one step, counting what it did in `summary`.
async fn take(ctx: &Context, step: Step, summary: &mut Summary) -> Result<(), Error> {
    match step {
        Step::Create(snap, set) => {
            let ns = snap.namespace().unwrap_or_default();
            let api: Api<Snapshot> = Api::namespaced(ctx.client.clone(), &ns);
            let created = match create_if_absent(&api, snap.as_ref()).await {
                Ok(Some(created)) => created,
                // Created since the listing: not ours.
                Ok(None) => return Ok(()),
                // The namespace does not exist here.
                Err(Error::Kube(kube::Error::Api(e))) if e.code == 404 => {
                    summary.no_namespace += 1;
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            let note = format!(
                "imported from the archives in {}",
                set.nodes
                    .iter()
                    .find_map(|n| n.archive.as_ref())
                    .map_or("the storage", |a| a.location.as_str())
            );
            ctx.publish(&created, EventType::Normal, "Imported", note, "Import")
                .await;
            summary.created += 1;
            write_imported_status(ctx, created, Some(&set)).await?;
        }
        Step::Refresh(snap, set) => {
            if write_imported_status(ctx, snap.as_ref().clone(), set.as_ref()).await? {
                summary.refreshed += 1;
            }
        }
    }
    Ok(())
}

/// Writes an imported Snapshot's status as the storage has it; when the Snapshot changed
/// meanwhile (the reconciler adding its finalizer to one just created), reads it again and
/// writes on that version.
async fn write_imported_status(
    ctx: &Context,
    mut snap: Snapshot,
    set: Option<&Imported>,
) -> Result<bool, Error> {
    let ns = snap.namespace().unwrap_or_default();
    let storage = default_storage(ctx, &ns);
    let api: Api<Snapshot> = Api::namespaced(ctx.client.clone(), &ns);
    for _ in 0..3 {
        match write_status(ctx, &snap, &status(&snap, set, &storage, Time(ctx.now()))).await {
            Err(Error::Stale) => snap = api.get(&snap.name_any()).await?,
            written => return written,
        }
    }
    Err(Error::Stale)
}

fn default_storage(ctx: &Context, namespace: &str) -> Storage {
    ctx.config
        .default_storage_for(namespace)
        .unwrap_or_default()
}

/// One pass: the Snapshots, then the storage, then the plan carried out.
pub async fn pass(
    ctx: &Context,
    storage: &dyn storage::Storage,
    manifests: &mut Manifests,
) -> Result<Summary, String> {
    let listed = Api::<Snapshot>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|e| crate::format::render_error(&e))?;
    let existing: Vec<Arc<Snapshot>> = listed.items.into_iter().map(Arc::new).collect();
    let found = catalog::scan(storage, manifests)
        .await
        .map_err(|e| crate::format::render_error(&e))?;
    Ok(sync(ctx, &existing, found).await)
}

/// Imports at start and every `catalogImport.intervalSeconds` until `shutdown`, when the
/// default storage is S3 and the import is enabled.
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken) {
    let settings = ctx.config.catalog_import.clone();
    if !settings.enabled {
        return;
    }
    let storage = match crate::controller::own::connect(&ctx.config, None).await {
        None => return,
        Some(Ok(storage)) => storage,
        Some(Err(e)) => {
            let error = crate::format::render_error(&e);
            tracing::error!(%error, "catalog import: cannot use the default storage");
            return;
        }
    };
    let interval = Duration::from_secs(settings.interval_seconds.max(1));
    // The operator's own identities read encrypted archives' manifests.
    let identities = crate::crypt::Identities::from_env().unwrap_or_else(|e| {
        let error = crate::format::render_error(&e);
        tracing::error!(%error, "catalog import: encrypted archives are left out");
        crate::crypt::Identities::default()
    });
    let mut manifests = Manifests::reading_with(identities);
    loop {
        tokio::select! {
            done = pass(&ctx, &storage, &mut manifests) => match done {
                Ok(summary) => {
                    ctx.metrics.imported(summary.created);
                    tracing::info!(?summary, "catalog import pass");
                }
                Err(error) => {
                    ctx.metrics.import_failed();
                    tracing::warn!(%error, "catalog import pass failed; next pass in the interval");
                }
            },
            () = shutdown.cancelled() => return,
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests;
