//! Qdrant's own shard engine as the workload: shards written by `qdrant-edge-py` (PyPI; the
//! test script installs it and sets `SNAPSHOT_OPERATOR_TEST_QDRANT_PYTHON`), snapshotted and
//! restored by the binary, loaded back by the engine and compared: point counts and query
//! results. Also a snapshot taken while another process keeps upserting.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const HELPER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/qdrant/shard.py");

/// The Python with `qdrant_edge`, or `None` after saying the tier is skipped.
fn python() -> Option<PathBuf> {
    match std::env::var_os("SNAPSHOT_OPERATOR_TEST_QDRANT_PYTHON") {
        Some(python) => Some(python.into()),
        None => {
            eprintln!(
                "SKIPPED: SNAPSHOT_OPERATOR_TEST_QDRANT_PYTHON is not set (`make test` installs \
                 qdrant-edge-py and sets it)"
            );
            None
        }
    }
}

fn helper(python: &Path, args: &[&str], shard: &Path) -> Command {
    let mut cmd = Command::new(python);
    cmd.arg(HELPER).arg(args[0]).arg(shard).args(&args[1..]);
    cmd
}

/// What the engine sees of the shard at `path`: its point count and three queries' results.
fn describe(python: &Path, path: &Path) -> serde_json::Value {
    serde_json::from_str(&ok(&mut helper(python, &["describe"], path))).unwrap()
}

fn make_shard(python: &Path, storage: &Path, collection: &str, count: u32, seed: u32) {
    let shard = storage.join("collections").join(collection).join("0");
    std::fs::create_dir_all(&shard).unwrap();
    ok(&mut helper(
        python,
        &["create", &count.to_string(), &seed.to_string()],
        &shard,
    ));
}

fn shard_of(storage: &Path, collection: &str) -> PathBuf {
    storage.join("collections").join(collection).join("0")
}

fn disk_usage(path: &Path) -> u64 {
    let out = ok(Command::new("du").args(["-s", "--block-size=1"]).arg(path));
    out.split_whitespace().next().unwrap().parse().unwrap()
}

/// Restores `location` (as nobody) into `target`.
fn restore(dir: &Path, target: &Path, args: &[&str], configure: impl Fn(&mut Command)) {
    let mut cmd = bin(dir);
    configure(&mut cmd);
    cmd.args(["restore", "--storage-path"])
        .arg(target)
        .args(args);
    ok(&mut as_nobody(cmd, dir));
}

#[test]
fn real_qdrant_shards_survive_snapshot_and_restore() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("storage");
    make_shard(&python, &src, "products", 20_000, 1);
    make_shard(&python, &src, "reviews", 3_000, 2);
    let products = describe(&python, &shard_of(&src, "products"));
    let reviews = describe(&python, &shard_of(&src, "reviews"));
    assert_eq!(products["count"], 20_000);

    let created = create(dir.path(), &src, Some("products"));
    let archive = dir.path().join(archive_path(&created));
    let full = dir
        .path()
        .join(archive_path(&create(dir.path(), &src, None)));
    // The engine preallocates (WAL segments, mmap'd chunks): the archive is the size of the
    // data on disk, not of the files' apparent sizes.
    let data = disk_usage(&src.join("collections/products"));
    let size = std::fs::metadata(&archive).unwrap().len();
    assert!(
        size <= data + data / 20,
        "archive {size} bytes for {data} on disk"
    );

    // Under a new name, with each priority into an absent collection.
    let target = dir.path().join("target");
    for (name, priority) in [
        ("copy", "replica"),
        ("copy2", "snapshot"),
        ("copy3", "no_sync"),
    ] {
        let arg = format!("{}:{name}", archive.display());
        restore(
            dir.path(),
            &target,
            &["--snapshot", &arg, "--priority", priority],
            |_| {},
        );
        assert_eq!(
            describe(&python, &shard_of(&target, name)),
            products,
            "{priority}"
        );
        let restored = disk_usage(&target.join("collections").join(name));
        assert!(
            restored <= data + data / 20,
            "restored {restored} bytes, source {data}"
        );
    }

    // Over another shard of the same name: replica keeps it, snapshot replaces it.
    let other = dir.path().join("other");
    make_shard(&python, &other, "products", 500, 9);
    let old = describe(&python, &shard_of(&other, "products"));
    let arg = format!("{}:products", archive.display());
    restore(
        dir.path(),
        &other,
        &["--snapshot", &arg, "--priority", "replica"],
        |_| {},
    );
    assert_eq!(describe(&python, &shard_of(&other, "products")), old);
    restore(
        dir.path(),
        &other,
        &["--snapshot", &arg, "--priority", "snapshot"],
        |_| {},
    );
    assert_eq!(describe(&python, &shard_of(&other, "products")), products);

    // The whole storage.
    let whole = dir.path().join("whole");
    restore(
        dir.path(),
        &whole,
        &["--storage-snapshot", &full.display().to_string()],
        |_| {},
    );
    assert_eq!(describe(&python, &shard_of(&whole, "products")), products);
    assert_eq!(describe(&python, &shard_of(&whole, "reviews")), reviews);

    // From S3.
    if let Some(env) = s3_env() {
        let (prefix, name) = env.upload(dir.path(), "qdrant", &archive);
        let from_s3 = dir.path().join("from-s3");
        restore(
            dir.path(),
            &from_s3,
            &["--snapshot", &format!("{name}:products")],
            |cmd| env.apply(cmd, &prefix),
        );
        assert_eq!(describe(&python, &shard_of(&from_s3, "products")), products);
    }
}

#[test]
fn a_snapshot_taken_while_the_engine_upserts_restores_to_a_loadable_shard() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("storage");
    make_shard(&python, &src, "live", 2_000, 1);
    // Another process keeps upserting and flushing; its last reported count is the count
    // the shard had at least, from then on.
    let mut upserter = helper(&python, &["upsert", "2000"], &shard_of(&src, "live"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let reported = Arc::new(Mutex::new(0u64));
    let lines = BufReader::new(upserter.stdout.take().unwrap());
    let sink = reported.clone();
    std::thread::spawn(move || {
        for line in lines.lines() {
            let Ok(count) = line.unwrap_or_default().trim().parse::<u64>() else {
                continue;
            };
            *sink.lock().unwrap() = count;
        }
    });
    let started = Instant::now();
    while *reported.lock().unwrap() == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the upserter reported nothing"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut taken = Vec::new();
    for round in 0..3 {
        let before = *reported.lock().unwrap();
        // A file that changes size while it is read fails the snapshot, which says to retry
        // (files that vanish, the engine's temporary ones, are skipped).
        let created = (0..5)
            .find_map(|_| {
                let out = run(&mut create_cmd(dir.path(), &src, Some("live")));
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(
                    out.status.success() || err.contains("changed while it was being archived"),
                    "{err}"
                );
                out.status
                    .success()
                    .then(|| serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap())
            })
            .expect("five snapshots in a row saw a file change size");
        let target = dir.path().join(format!("target-{round}"));
        let arg = format!("{}:live", dir.path().join(archive_path(&created)).display());
        restore(dir.path(), &target, &["--snapshot", &arg], |_| {});
        let count = describe(&python, &shard_of(&target, "live"))["count"]
            .as_u64()
            .unwrap();
        taken.push((before, count));
    }
    upserter.kill().unwrap();
    upserter.wait().unwrap();
    let after = describe(&python, &shard_of(&src, "live"))["count"]
        .as_u64()
        .unwrap();
    for (before, count) in taken {
        assert!(
            before <= count && count <= after,
            "restored {count} points; the shard had {before} when the snapshot began and \
             {after} at the end"
        );
    }
    assert!(after > 2_000, "the upserter did not upsert");
}
