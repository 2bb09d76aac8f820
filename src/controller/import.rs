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
use crate::config::S3Config;
use crate::storage::s3::{S3Storage, prefix_of};
use crate::storage::{self, StorageError};

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
        volume_snapshot_class_name: None,
        mover_security_context: None,
        format: set
            .nodes
            .iter()
            .find_map(|n| n.archive.as_ref())
            .map(|a| a.manifest.format),
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

/// The default storage as the operator itself reads it: credentials from its own
/// environment (the Deployment's), never from a Secret read through the API.
async fn connect(ctx: &Context) -> Option<Result<S3Storage, StorageError>> {
    let s3 = ctx.config.default_storage.as_ref()?.s3.as_ref()?;
    let config = S3Config {
        bucket: s3.bucket.clone(),
        region: s3.region.clone(),
        endpoint_url: s3.endpoint_url.clone(),
        force_path_style: s3.force_path_style,
        ..S3Config::default()
    };
    let prefix = prefix_of(s3.prefix.as_deref().unwrap_or_default());
    Some(S3Storage::connect(&config, prefix).await)
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
    let storage = match connect(&ctx).await {
        None => return,
        Some(Ok(storage)) => storage,
        Some(Err(e)) => {
            let error = crate::format::render_error(&e);
            tracing::error!(%error, "catalog import: cannot use the default storage");
            return;
        }
    };
    let interval = Duration::from_secs(settings.interval_seconds.max(1));
    let mut manifests = Manifests::default();
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
mod tests {
    use kube::runtime::controller::Action;
    use serde_json::{Value, json};

    use super::*;
    use crate::api::snapshot::Phase;
    use crate::catalog::fixtures::{SUM, found};
    use crate::controller::config::OperatorConfig;
    use crate::controller::testing::{Expect, conflict, event, movers, not_found, scripted};

    const SNAPS: &str = "/apis/snapshot-operator.dev/v1alpha1/namespaces/ns/snapshots";
    const EPOCH: Time = Time(jiff::Timestamp::UNIX_EPOCH);

    fn storage() -> Storage {
        config().default_storage_for("ns").unwrap()
    }

    fn config() -> OperatorConfig {
        serde_json::from_value(json!({"defaultStorage": {"s3": {"bucket": "backups",
            "endpointUrl": "http://s3:9000", "credentialsSecret": {"name": "s3"}}}}))
        .unwrap()
    }

    /// A Snapshot `name` of namespace `ns`: imported from the archives of `imported_uid`,
    /// or taken here.
    fn existing(name: &str, imported_uid: Option<&str>, status: Value) -> Arc<Snapshot> {
        let mut meta = json!({"name": name, "namespace": "ns", "uid": format!("here-{name}"),
            "generation": 1, "resourceVersion": "3"});
        if let Some(uid) = imported_uid {
            meta["labels"] = json!({IMPORTED: "true"});
            meta["annotations"] = json!({IMPORTED_UID: uid});
        }
        Arc::new(
            serde_json::from_value(json!({"apiVersion": "snapshot-operator.dev/v1alpha1",
                "kind": "Snapshot", "metadata": meta,
                "spec": {"source": {"statefulSet": {"name": "qdrant", "volumeClaimTemplate": "data"}},
                         "path": "/qdrant/storage", "collection": "products", "deletionPolicy": "Retain"},
                "status": status}))
            .unwrap(),
        )
    }

    fn in_namespace(namespace: &str, mut archive: Found) -> Found {
        if let Some(identity) = archive.manifest.snapshot.as_mut() {
            identity.namespace = namespace.into();
        }
        archive
    }

    fn sets(found: Vec<(&str, Vec<Found>)>) -> BTreeMap<String, Vec<Imported>> {
        found
            .into_iter()
            .map(|(ns, archives)| (ns.to_owned(), catalog::group(archives)))
            .collect()
    }

    fn names(steps: &[Step]) -> Vec<String> {
        steps
            .iter()
            .map(|step| match step {
                Step::Create(snap, _) => {
                    format!("create {}/{}", snap.namespace().unwrap(), snap.name_any())
                }
                Step::Refresh(snap, set) => {
                    format!("refresh {} {}", snap.name_any(), set.is_some())
                }
            })
            .collect()
    }

    #[test]
    fn archive_sets_become_snapshots_of_their_namespace_where_none_of_that_name_exists() {
        let found = sets(vec![
            (
                "ns",
                vec![
                    found("a", 0, 2, Some(SUM), 0),
                    found("a", 1, 2, Some(SUM), 1),
                    found("b", 0, 1, Some(SUM), 0),
                    found("c", 0, 1, Some(SUM), 0),
                ],
            ),
            (
                "other",
                vec![in_namespace("other", found("a", 0, 1, Some(SUM), 0))],
            ),
        ]);
        let existing = [
            // Taken here: left alone, whatever the storage holds.
            existing("snap-b", None, Value::Null),
            // Imported earlier from these archives: kept up to date.
            existing("snap-c", Some("c"), Value::Null),
            // Imported from archives that are gone.
            existing("snap-z", Some("z"), Value::Null),
        ];
        let (steps, skipped) = plan(&existing, &found);
        assert_eq!(
            names(&steps),
            [
                "create ns/snap-a",
                "refresh snap-c true",
                "create other/snap-a",
                "refresh snap-z false"
            ]
        );
        assert!(skipped.is_empty());
        let Step::Create(snap, _) = &steps[0] else {
            unreachable!()
        };
        assert!(snap.is_imported());
        assert_eq!(snap.annotations()[IMPORTED_UID], "a");
        assert_eq!(snap.spec.deletion_policy, DeletionPolicy::Retain);
        assert_eq!(
            snap.spec.source.stateful_set,
            Some(StatefulSetRef {
                name: "qdrant".into(),
                volume_claim_template: "data".into()
            })
        );
        assert_eq!(
            (snap.spec.path.as_str(), snap.spec.collection.as_deref()),
            ("/qdrant/storage", Some("products"))
        );
    }

    #[test]
    fn an_identity_that_makes_no_valid_snapshot_is_skipped_with_the_reason() {
        let mut up = found("a", 0, 1, Some(SUM), 0);
        up.manifest.snapshot.as_mut().unwrap().path = "/../../etc".into();
        let mut odd = found("b", 0, 1, Some(SUM), 0);
        odd.manifest.snapshot.as_mut().unwrap().source = "deployment/x".into();
        let (steps, skipped) = plan(&[], &sets(vec![("ns", vec![up, odd])]));
        assert!(steps.is_empty());
        assert!(skipped[0].1.contains(".."), "{skipped:?}");
        assert!(skipped[1].1.contains("deployment/x"), "{skipped:?}");
    }

    #[test]
    fn a_complete_set_is_succeeded_with_every_node_archive_size_and_checksum() {
        let set = &catalog::group([
            found("a", 1, 2, Some(SUM), 30),
            found("a", 0, 2, Some(SUM), 0),
        ])[0];
        let snap = resource(set).unwrap();
        let status = status(&snap, Some(set), &storage(), EPOCH);
        assert_eq!(status.phase, Some(Phase::Succeeded));
        assert_eq!(status.conditions[0].status, "True");
        assert_eq!(
            (status.nodes, status.size.as_deref()),
            (Some(2), Some("20 B"))
        );
        assert_eq!(status.storage, Some(storage()));
        let a = &status.archives[1];
        assert_eq!(
            (
                a.node.as_str(),
                a.claim.as_str(),
                a.key.as_deref(),
                a.checksum.as_deref()
            ),
            (
                "qdrant-1",
                "data-qdrant-1",
                Some("products/a-1-30.snapshot"),
                Some(SUM)
            )
        );
        assert_eq!(
            a.location.as_deref(),
            Some("s3://backups/ns/products/a-1-30.snapshot")
        );
        // Times from the manifests: the first archive taken, the last.
        let at = |t: &Option<Time>| t.as_ref().unwrap().0.as_second() - 1_800_000_000;
        assert_eq!(
            (at(&status.start_time), at(&status.completion_time)),
            (0, 30)
        );
        // Computed again from the same archives: the same status, nothing to write.
        let mut written = snap.clone();
        written.status = Some(status.clone());
        assert_eq!(
            super::status(&written, Some(set), &storage(), EPOCH),
            status
        );
    }

    #[test]
    fn a_missing_node_or_a_bad_checksum_fails_that_node_with_the_reason() {
        let set = &catalog::group([
            found("a", 0, 3, Some(SUM), 0),
            found("a", 2, 3, Some("not hex"), 0),
        ])[0];
        let snap = resource(set).unwrap();
        let status = status(&snap, Some(set), &storage(), EPOCH);
        assert_eq!(status.phase, Some(Phase::Failed));
        let phases: Vec<_> = status
            .archives
            .iter()
            .map(|a| (a.node.as_str(), a.phase))
            .collect();
        assert_eq!(
            phases,
            [
                ("qdrant-0", ArchivePhase::Succeeded),
                ("qdrant-1", ArchivePhase::Failed),
                ("qdrant-2", ArchivePhase::Failed)
            ]
        );
        assert_eq!(status.archives[1].claim, "data-qdrant-1");
        let why = &status.conditions[0].message;
        assert!(why.contains("qdrant-1: no archive of node 1"), "{why}");
        assert!(
            why.contains("qdrant-2: products/a-2-0.snapshot: no valid checksum"),
            "{why}"
        );
    }

    #[test]
    fn archives_gone_from_the_storage_fail_their_nodes() {
        let set = &catalog::group([found("a", 0, 1, Some(SUM), 0)])[0];
        let mut snap = resource(set).unwrap();
        snap.status = Some(status(&snap, Some(set), &storage(), EPOCH));
        let gone = status(&snap, None, &storage(), EPOCH);
        assert_eq!(gone.phase, Some(Phase::Failed));
        assert_eq!(
            gone.archives[0].key.as_deref(),
            Some("products/a-0-0.snapshot")
        );
        assert!(
            gone.conditions[0]
                .message
                .contains("no longer in the storage")
        );
    }

    /// `sync` against the mock API server; checks the summary.
    async fn synced(
        existing: Vec<Arc<Snapshot>>,
        found: Vec<(&str, Vec<Found>)>,
        script: Vec<Expect>,
        expected: Summary,
    ) {
        let found: BTreeMap<String, Vec<Found>> = found
            .into_iter()
            .map(|(ns, f)| (ns.to_owned(), f))
            .collect();
        let (result, _) = scripted(config(), movers(vec![], vec![]), script, |ctx| async move {
            let summary = sync(&ctx, &existing, found).await;
            assert_eq!(summary, expected);
            Ok(Action::await_change())
        })
        .await;
        result.unwrap();
    }

    #[tokio::test]
    async fn an_archive_set_is_created_then_its_status_written() {
        let stored =
            serde_json::to_value(existing("snap-a", Some("a"), Value::Null).as_ref()).unwrap();
        let script = vec![
            Expect::new("POST", SNAPS, Value::Null).check(|body| {
                assert_eq!(body["metadata"]["name"], "snap-a");
                assert_eq!(body["metadata"]["labels"][IMPORTED], "true");
                assert_eq!(body["spec"]["deletionPolicy"], "Retain");
                assert_eq!(body.get("status"), None, "{body}");
            }),
            event("Imported"),
            Expect::new("PATCH", format!("{SNAPS}/snap-a/status"), stored).check(|body| {
                let status = &body["status"];
                assert_eq!(status["phase"], "Failed", "{body}");
                assert_eq!(status["archives"][0]["phase"], "Succeeded");
                assert_eq!(
                    status["archives"][1]["message"],
                    "no archive of node 1 in the storage"
                );
                assert_eq!(status["storage"]["s3"]["prefix"], "ns");
            }),
            event("Failed"),
        ];
        let created = Summary {
            created: 1,
            ..Summary::default()
        };
        synced(
            vec![],
            vec![("ns", vec![found("a", 0, 2, Some(SUM), 0)])],
            script,
            created,
        )
        .await;
    }

    #[tokio::test]
    async fn a_status_write_refused_as_stale_is_made_again_on_the_current_version() {
        let stored =
            serde_json::to_value(existing("snap-a", Some("a"), Value::Null).as_ref()).unwrap();
        let script = vec![
            Expect::new("POST", SNAPS, Value::Null),
            event("Imported"),
            // The reconciler added its finalizer meanwhile.
            Expect::new("PATCH", format!("{SNAPS}/snap-a/status"), conflict()).status(409),
            Expect::new("GET", format!("{SNAPS}/snap-a"), stored.clone()),
            Expect::new("PATCH", format!("{SNAPS}/snap-a/status"), stored).check(|body| {
                assert_eq!(body["metadata"]["resourceVersion"], "3", "{body}");
                assert_eq!(body["status"]["phase"], "Succeeded", "{body}");
            }),
            event("Succeeded"),
        ];
        let created = Summary {
            created: 1,
            ..Summary::default()
        };
        synced(
            vec![],
            vec![("ns", vec![found("a", 0, 1, Some(SUM), 0)])],
            script,
            created,
        )
        .await;
    }

    #[tokio::test]
    async fn a_snapshot_the_api_server_refuses_holds_up_no_other() {
        let stored =
            serde_json::to_value(existing("snap-b", Some("b"), Value::Null).as_ref()).unwrap();
        let invalid = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": "Invalid", "code": 422, "message": "metadata.name: Invalid value"});
        let script = vec![
            Expect::new("POST", SNAPS, invalid).status(422),
            Expect::new("POST", SNAPS, Value::Null).check(|body| {
                assert_eq!(body["metadata"]["name"], "snap-b");
            }),
            event("Imported"),
            Expect::new("PATCH", format!("{SNAPS}/snap-b/status"), stored),
            event("Succeeded"),
        ];
        let found = vec![(
            "ns",
            vec![
                found("a", 0, 1, Some(SUM), 0),
                found("b", 0, 1, Some(SUM), 0),
            ],
        )];
        let one_of_two = Summary {
            created: 1,
            failed: 1,
            ..Summary::default()
        };
        synced(vec![], found, script, one_of_two).await;
    }

    #[tokio::test]
    async fn no_request_for_existing_snapshots_and_no_namespace_is_created() {
        // A namespace that does not exist here: the create is refused, nothing else asked.
        let script =
            vec![Expect::new("POST", "/namespaces/gone/snapshots", not_found()).status(404)];
        let found = vec![
            ("ns", vec![found("b", 0, 1, Some(SUM), 0)]),
            (
                "gone",
                vec![in_namespace("gone", found("a", 0, 1, Some(SUM), 0))],
            ),
        ];
        let absent = Summary {
            no_namespace: 1,
            ..Summary::default()
        };
        synced(
            vec![existing("snap-b", None, Value::Null)],
            found,
            script,
            absent,
        )
        .await;
    }
}
