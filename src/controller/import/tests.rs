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
    let stored = serde_json::to_value(existing("snap-a", Some("a"), Value::Null).as_ref()).unwrap();
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
    let stored = serde_json::to_value(existing("snap-a", Some("a"), Value::Null).as_ref()).unwrap();
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
    let stored = serde_json::to_value(existing("snap-b", Some("b"), Value::Null).as_ref()).unwrap();
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
    let script = vec![Expect::new("POST", "/namespaces/gone/snapshots", not_found()).status(404)];
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
