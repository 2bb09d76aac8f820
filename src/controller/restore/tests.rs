use super::*;
use crate::api::condition::reason;
use crate::api::restore::{
    NodePhase, Priority, RestoreMethod, RestoreSource, SnapshotRef, SnapshotRestoreSpec,
};
use crate::api::snapshot::{ClaimRef, StatefulSetRef, Workload};
use crate::controller::config::OperatorConfig;

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
        method: RestoreMethod::Volume,
        qdrant: None,
        encryption: None,
    }
}

#[test]
fn restores_through_qdrant_s_api_are_of_a_collection_into_a_running_statefulset() {
    let api = || SnapshotRestoreSpec {
        method: RestoreMethod::QdrantApi,
        ..spec()
    };
    assert!(validate(&api()).is_ok());
    let needs = |spec: SnapshotRestoreSpec| match validate(&spec) {
        Err(Invalid::Needs { what, needs }) => format!("{what} needs {needs}"),
        other => panic!("{other:?}"),
    };
    let full = needs(SnapshotRestoreSpec {
        collection: None,
        ..api()
    });
    assert!(full.contains("only at startup"), "{full}");
    let out_of_full = needs(SnapshotRestoreSpec {
        source_collection: Some("a".into()),
        ..api()
    });
    assert!(
        out_of_full.starts_with("sourceCollection needs"),
        "{out_of_full}"
    );
    let stopped = needs(SnapshotRestoreSpec {
        stop_workload: true,
        ..api()
    });
    assert!(stopped.contains("Qdrant running"), "{stopped}");
    let claim = needs(SnapshotRestoreSpec {
        target: Workload {
            stateful_set: None,
            persistent_volume_claim: Some(ClaimRef {
                claim_name: "x".into(),
            }),
        },
        ..api()
    });
    assert!(claim.contains("statefulSet target"), "{claim}");
    let ca = |scheme| {
        let qdrant = serde_json::json!({"scheme": scheme, "caSecret": {"name": "qdrant-tls"}});
        SnapshotRestoreSpec {
            qdrant: Some(serde_json::from_value(qdrant).unwrap()),
            ..api()
        }
    };
    assert!(validate(&ca("https")).is_ok());
    let plain = needs(ca("http"));
    assert!(plain.starts_with("qdrant.caSecret needs"), "{plain}");
    let settings = needs(SnapshotRestoreSpec {
        qdrant: Some(Default::default()),
        ..spec()
    });
    assert_eq!(settings, "qdrant needs method QdrantAPI");
}

#[test]
fn specs_are_validated() {
    assert!(validate(&spec()).is_ok());
    let mut s = spec();
    s.source.location = Some("s3://b/k".into());
    assert!(matches!(
        validate(&s),
        Err(Invalid::ExactlyOne {
            field: "source",
            ..
        })
    ));
    let mut s = spec();
    s.checksum = Some("ABC".into());
    assert_eq!(validate(&s), Err(Invalid::Checksum("ABC".into())));
    let mut s = spec();
    s.source = RestoreSource {
        snapshot_ref: None,
        location: Some("ftp://x/y".into()),
    };
    let why = validate(&s).unwrap_err();
    assert!(matches!(why, Invalid::Location(_)), "{why}");
    assert!(why.to_string().contains("unsupported scheme"), "{why}");
    let mut s = spec();
    s.target = Workload {
        stateful_set: None,
        persistent_volume_claim: Some(crate::api::snapshot::ClaimRef {
            claim_name: "d".into(),
        }),
    };
    s.stop_workload = true;
    assert!(matches!(
        validate(&s),
        Err(Invalid::Needs {
            what: "stopWorkload",
            ..
        })
    ));
    let mut s = spec();
    s.collection = None;
    s.source_collection = Some("x".into());
    assert!(matches!(
        validate(&s),
        Err(Invalid::Needs {
            what: "sourceCollection",
            ..
        })
    ));
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
    assert_eq!(
        theirs,
        Invalid::OutsideNamespace {
            location: "s3://shared/team-b/c/x.snapshot".into(),
            bucket: "shared".into(),
            prefix: "team-a".into()
        }
    );
    let other = with("s3://someone-else/x.snapshot", serde_json::Value::Null).unwrap_err();
    assert!(matches!(other, Invalid::OtherBucket { .. }), "{other}");
    assert!(other.to_string().contains("credentialsSecret"), "{other}");
    let storage = serde_json::json!({"s3": {"bucket": "mine", "credentialsSecret": {"name": "c"}}});
    assert!(
        with("s3://someone-else/x.snapshot", storage).is_ok(),
        "credentials named"
    );
    let elsewhere = serde_json::json!({"s3": {"bucket": "mine", "endpointUrl": "https://attacker.example",
        "credentialsSecret": {"name": "c"}}});
    let refused = with("https://example.com/x.snapshot", elsewhere).unwrap_err();
    assert!(matches!(refused, Invalid::Endpoint { .. }), "{refused}");
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
        progress: None,
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
