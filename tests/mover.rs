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

/// The progress lines a mover printed on its standard output, in order.
fn progress_lines(stdout: &str) -> Vec<snapshot_operator::protocol::ProgressLine> {
    stdout
        .lines()
        .filter_map(snapshot_operator::protocol::ProgressLine::last_in)
        .collect()
}

#[test]
fn a_mover_prints_its_progress_while_it_works_and_its_report_last() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    make_collection(&data, "products", "p1");
    write(
        &data.join("collections/products/0/segments/seg-b/big.bin"),
        &binary(6 << 20, "big"),
        0o644,
    );
    let snapshots = dir.path().join("snapshots");
    let log = dir.path().join("termination-log");
    let mover = |every: &str| {
        let mut cmd = bin(dir.path());
        cmd.env("SNAPSHOT_OPERATOR__STORAGE__SNAPSHOTS_PATH", &snapshots)
            .env(snapshot_operator::protocol::PROGRESS_EVERY_ENV, every)
            .args(["mover", "restore", "--termination-log"])
            .arg(&log);
        cmd
    };
    let mut create = bin(dir.path());
    create
        .env("SNAPSHOT_OPERATOR__STORAGE__SNAPSHOTS_PATH", &snapshots)
        .args(["mover", "snapshot", "--termination-log"])
        .arg(&log)
        .args(["--collection", "products", "--node", "n", "--storage-path"])
        .arg(&data);
    ok(&mut create);
    let created: serde_json::Value = serde_json::from_slice(&fs::read(&log).unwrap()).unwrap();
    let archive = fs::read(snapshots.join(created["key"].as_str().unwrap())).unwrap();
    let size = archive.len() as u64;
    // Read at 3 MiB/s: a restore of about two seconds.
    let server = serve(archive, false);
    let slow = throttled_proxy(&server.base, 3 << 20);
    let target = dir.path().join("target");
    let location = format!("{slow}/good.snapshot");
    let restore = |every: &str| {
        let mut cmd = mover(every);
        cmd.args(["--location", &location, "--collection", "products"])
            .args(["--priority", "snapshot", "--storage-path"])
            .arg(&target);
        cmd
    };
    let stdout = ok(&mut restore("100"));
    let lines = progress_lines(&stdout);
    assert!(lines.len() >= 5, "{stdout}");
    assert!(
        lines.windows(2).all(|w| w[0].bytes_done <= w[1].bytes_done),
        "{stdout}"
    );
    let moving: Vec<_> = lines
        .iter()
        .filter(|l| l.bytes_done > 0 && l.bytes_done < size)
        .collect();
    assert!(moving.len() >= 3, "seen between start and end: {stdout}");
    // Known from the start of the restore on (the source's length).
    let mut started = lines.iter().filter(|l| l.bytes_done > 0);
    assert!(started.all(|l| l.bytes_total == Some(size)), "{stdout}");
    // Over the last seconds, about the link's rate.
    let rate = moving.last().unwrap().bytes_per_second;
    assert!((1 << 20..=4 << 20).contains(&rate), "{rate} B/s");
    // The report is the last line, as the termination message holds it.
    let last = stdout.lines().last().unwrap();
    assert_eq!(last, fs::read_to_string(&log).unwrap());
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(last).unwrap()["outcome"],
        "Restored"
    );

    // Without the variable, no progress lines; a bad value is refused.
    let mut quiet = restore("1");
    quiet.env_remove(snapshot_operator::protocol::PROGRESS_EVERY_ENV);
    let stdout = ok(&mut quiet);
    assert!(progress_lines(&stdout).is_empty(), "{stdout}");
    let err = fails(&mut restore("0"));
    assert!(err.contains("SNAPSHOT_OPERATOR_PROGRESS_EVERY_MS"), "{err}");
    let report: serde_json::Value = serde_json::from_slice(&fs::read(&log).unwrap()).unwrap();
    assert!(
        report["error"]
            .as_str()
            .unwrap()
            .contains("positive number of milliseconds"),
        "{report}"
    );
}
