use super::*;
use crate::api::snapshot::{
    ClaimRef, CopyMethod, DeletionPolicy, LocalStorage, SnapshotSpec, StatefulSetRef, Workload,
};
use crate::controller::kernel::archive_key;
use crate::engine::name::NameError;
use crate::protocol::MoverReport;

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
        qdrant: None,
        volume_snapshot_class_name: None,
        mover_security_context: None,
        format: None,
        ttl: None,
        encryption: None,
    }
}

#[test]
fn files_changed_while_read_are_said_beside_a_stored_archive() {
    let report = MoverReport {
        key: Some("products/a.snapshot".into()),
        changed: Some("1 file(s) changed while they were read: collections/products/wal".into()),
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
        qdrant: None,
        volume_snapshot_class_name: None,
        mover_security_context: None,
        format: None,
        ttl: None,
        encryption: None,
    };
    assert_eq!(
        validate(&spec),
        Err(Invalid::ExactlyOne {
            field: "source",
            one: "statefulSet",
            other: "persistentVolumeClaim"
        })
    );
    spec.source.persistent_volume_claim = None;
    assert!(validate(&spec).is_ok());
    spec.collection = Some("..".into());
    assert!(matches!(
        validate(&spec),
        Err(Invalid::Name(NameError::Dot {
            what: "collection",
            ..
        }))
    ));
    spec.collection = Some("products".into());
    spec.storage = Some(Storage::default());
    assert!(matches!(
        validate(&spec),
        Err(Invalid::ExactlyOne {
            field: "storage",
            ..
        })
    ));
    // Paths stay inside their volumes.
    spec.storage = Some(storage());
    assert!(validate(&spec).is_ok());
    spec.storage.as_mut().unwrap().local.as_mut().unwrap().path = "/a/../..".into();
    assert!(matches!(
        validate(&spec),
        Err(Invalid::LeavesVolume {
            field: "storage.local.path",
            ..
        })
    ));
    spec.storage = None;
    spec.path = "../etc".into();
    let why = validate(&spec).unwrap_err();
    assert!(
        why.to_string()
            .contains("path \"../etc\" leaves the volume"),
        "{why}"
    );
    spec.path = "/qdrant/..storage/x..y".into();
    assert!(validate(&spec).is_ok(), "names with dots are names");

    // Qdrant's API: of a StatefulSet, in Qdrant's format; its settings only with it.
    spec.qdrant = Some(Default::default());
    assert_eq!(
        validate(&spec),
        Err(Invalid::Needs {
            what: "qdrant",
            needs: "copyMethod QdrantAPI"
        })
    );
    spec.copy_method = CopyMethod::QdrantApi;
    assert!(validate(&spec).is_ok());
    let tls = serde_json::json!({"caSecret": {"name": "qdrant-tls"}});
    spec.qdrant = Some(serde_json::from_value(tls).unwrap());
    let why = validate(&spec).unwrap_err().to_string();
    assert!(why.contains("needs qdrant.scheme https"), "{why}");
    spec.qdrant.as_mut().unwrap().scheme = crate::api::qdrant::ApiScheme::Https;
    assert!(validate(&spec).is_ok());
    spec.format = Some(crate::api::snapshot::Format::Files);
    assert!(matches!(
        validate(&spec),
        Err(Invalid::Needs {
            what: "copyMethod QdrantAPI",
            ..
        })
    ));
    spec.format = None;
    let age = crate::api::snapshot::Encryption {
        secret_name: "age".into(),
    };
    spec.encryption = Some(age.clone());
    let sse = |s3: serde_json::Value| crate::api::snapshot::Storage {
        s3: Some(serde_json::from_value(s3).unwrap()),
        local: None,
    };
    for (s3, says) in [
        (
            serde_json::json!({"bucket": "bkt", "serverSideEncryption": "AES256",
                "customerKeySecret": {"name": "k"}}),
            "customerKeySecret (SSE-C) needs no serverSideEncryption",
        ),
        (
            serde_json::json!({"bucket": "bkt", "serverSideEncryption": "AES256", "kmsKeyId": "k"}),
            "kmsKeyId needs serverSideEncryption aws:kms",
        ),
    ] {
        let spec = SnapshotSpec {
            storage: Some(sse(s3)),
            ..spec.clone()
        };
        let why = validate(&spec).unwrap_err().to_string();
        assert!(why.contains(says), "{why}");
    }
    let why = validate(&spec).unwrap_err().to_string();
    assert!(
        why.starts_with("encryption needs a copyMethod that reads"),
        "{why}"
    );
    spec.copy_method = CopyMethod::Direct;
    spec.qdrant = None;
    assert!(validate(&spec).is_ok(), "encrypted, read from the volume");
    spec.encryption = None;
    spec.copy_method = CopyMethod::QdrantApi;
    spec.source = Workload {
        stateful_set: None,
        persistent_volume_claim: Some(ClaimRef {
            claim_name: "x".into(),
        }),
    };
    let why = validate(&spec).unwrap_err();
    assert!(
        why.to_string().contains("needs a statefulSet source"),
        "{why}"
    );
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
            server_side_encryption: None,
            kms_key_id: None,
            customer_key_secret: None,
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

#[test]
fn ttls_are_positive_durations_whose_days_are_24_hours() {
    let ttl_of = |text: &str| {
        let spec = SnapshotSpec {
            ttl: Some(text.into()),
            ..snapshot_spec(None)
        };
        super::validate::ttl(&spec).map(|d| d.map(|d| d.as_secs()))
    };
    assert_eq!(ttl_of("72h"), Ok(Some(72 * 3600)));
    assert_eq!(ttl_of("30d"), Ok(Some(30 * 86400)));
    assert_eq!(ttl_of("1h30m"), Ok(Some(5400)));
    assert_eq!(ttl_of("720h0m0s"), Ok(Some(720 * 3600)));
    assert_eq!(ttl_of("PT36H"), Ok(Some(36 * 3600)));
    assert_eq!(ttl_of("2 days"), Ok(Some(2 * 86400)));
    assert_eq!(ttl_of("36500d"), Ok(Some(36500 * 86400)));
    for refused in [
        "",
        "soon",
        "0s",
        "-1h",
        "2w",
        "1 month",
        "1y",
        "36501d",
        "175000000h",
    ] {
        let why = ttl_of(refused).unwrap_err();
        assert!(matches!(why, Invalid::Ttl { .. }), "{refused}: {why}");
        assert!(why.to_string().contains("such as 72h"), "{why}");
    }
    let spec = SnapshotSpec {
        ttl: Some("soon".into()),
        ..snapshot_spec(None)
    };
    assert!(matches!(validate(&spec), Err(Invalid::Ttl { .. })));
}
