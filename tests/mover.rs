//! The mover subcommands (what mover Jobs run) on local storage: results as JSON in the
//! termination message, errors there too.

mod common;

use std::fs;

use common::*;

#[test]
fn movers_snapshot_restore_and_delete_reporting_in_the_termination_log() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    make_storage(&data);
    let snapshots = dir.path().join("snapshots");
    let log = dir.path().join("termination-log");
    let mover = |args: &[&str]| {
        let mut cmd = bin(dir.path());
        cmd.env("SNAPSHOT_OPERATOR__STORAGE__SNAPSHOTS_PATH", &snapshots)
            .arg("mover")
            .arg(args[0])
            .arg("--termination-log")
            .arg(&log)
            .args(&args[1..]);
        cmd
    };
    let report =
        || -> serde_json::Value { serde_json::from_slice(&fs::read(&log).unwrap()).unwrap() };

    let identity = r#"{"namespace":"search","name":"nightly","uid":"u-1","index":0,"nodes":3,"source":"statefulSet/qdrant","volumeClaimTemplate":"data","claim":"data-qdrant-0","path":"/qdrant/storage"}"#;
    ok(mover(&[
        "snapshot",
        "--collection",
        "products",
        "--node",
        "qdrant-0",
        "--identity",
        identity,
        "--storage-path",
    ])
    .arg(&data));
    let created = report();
    let key = created["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("products/products-qdrant-0-"), "{key}");
    assert_eq!(created["checksum"].as_str().unwrap().len(), 64);
    assert!(snapshots.join(&key).is_file());
    // The manifest (the first entry, as GNU tar reads it) says which Snapshot it belongs to.
    let manifest = std::process::Command::new("tar")
        .arg("-xOf")
        .arg(snapshots.join(&key))
        .arg("snapshot.json")
        .output()
        .unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&manifest.stdout).unwrap();
    assert_eq!(
        manifest["snapshot"],
        serde_json::from_str::<serde_json::Value>(identity).unwrap()
    );

    // Restore by key with the recorded checksum; then again with replica: skipped.
    let target = dir.path().join("target");
    let checksum = created["checksum"].as_str().unwrap().to_owned();
    ok(mover(&[
        "restore",
        "--location",
        &key,
        "--collection",
        "products",
        "--priority",
        "snapshot",
        "--checksum",
        &checksum,
        "--storage-path",
    ])
    .arg(&target));
    assert_eq!(report()["outcome"], "Restored");
    assert_eq!(
        subtree(&fingerprint(&target), "collections/products"),
        subtree(&fingerprint(&data), "collections/products")
    );
    ok(mover(&[
        "restore",
        "--location",
        &key,
        "--collection",
        "products",
        "--priority",
        "replica",
        "--storage-path",
    ])
    .arg(&target));
    assert_eq!(report()["outcome"], "Skipped");
    assert!(
        report()["reason"]
            .as_str()
            .unwrap()
            .contains("already exists")
    );

    // Failures go to the termination message, and the exit status says so.
    let err = fails(
        mover(&[
            "restore",
            "--location",
            &key,
            "--collection",
            "products",
            "--priority",
            "snapshot",
            "--checksum",
            &"0".repeat(64),
            "--storage-path",
        ])
        .arg(&target),
    );
    assert!(err.contains("checksums disagree"), "{err}");
    assert!(
        report()["error"]
            .as_str()
            .unwrap()
            .contains("checksums disagree")
    );

    // A mover reads archives from its storage, never the files of its own container: a
    // location naming one (an archive the CLI would take) is only a name in the storage.
    let own_file = snapshots.join(&key);
    let err = fails(
        mover(&[
            "restore",
            "--location",
            own_file.to_str().unwrap(),
            "--collection",
            "products",
            "--priority",
            "snapshot",
            "--storage-path",
        ])
        .arg(&target),
    );
    assert!(err.contains("not found"), "{err}");
    // The same path through the CLI: a file of this machine.
    let mut cli = bin(dir.path());
    cli.env("SNAPSHOT_OPERATOR__STORAGE__SNAPSHOTS_PATH", &snapshots)
        .args(["restore", "--priority", "snapshot", "--snapshot"])
        .arg(format!("{}:copy", own_file.display()))
        .arg("--storage-path")
        .arg(&target);
    ok(&mut cli);

    ok(&mut mover(&[
        "delete",
        &key,
        "products/never-existed.snapshot",
    ]));
    assert!(!snapshots.join(&key).exists());
    assert_eq!(report(), serde_json::json!({}));
}
