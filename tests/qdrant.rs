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

/// A shard of the engine's in a collection as the Qdrant server keeps one (its
/// `config.json`, the shard's `shard_config.json` and `replica_state.json`): a Qdrant
/// storage directory, which snapshots take Qdrant's format for.
fn make_server_collection(python: &Path, storage: &Path, collection: &str, count: u32, seed: u32) {
    make_shard(python, storage, collection, count, seed);
    ok(&mut helper(
        python,
        &["server"],
        &shard_of(storage, collection),
    ));
}

#[test]
fn our_snapshots_of_a_qdrant_storage_are_qdrants_and_its_unpacker_takes_their_shards() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("storage");
    make_server_collection(&python, &src, "products", 5_000, 3);
    let products = describe(&python, &shard_of(&src, "products"));
    let created = create(dir.path(), &src, Some("products"));
    let archive = dir.path().join(archive_path(&created));
    // Qdrant's layout: the collection's files at the top, each segment a tar in the tar.
    let listing = ok(Command::new("tar").arg("-tf").arg(&archive));
    let names: Vec<&str> = listing.lines().collect();
    assert_eq!(names[0], "snapshot.json");
    assert!(names.contains(&"config.json"), "{listing}");
    assert!(names.contains(&"0/replica_state.json"), "{listing}");
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("0/segments/") && n.ends_with(".tar")),
        "{listing}"
    );
    assert!(
        !names.iter().any(|n| n.starts_with("collections/")),
        "{listing}"
    );

    // Qdrant's own shard unpacker takes the shard as we wrote it (GNU tar repacks it as a
    // shard snapshot: the shard's entries at the top).
    let extracted = dir.path().join("extracted");
    std::fs::create_dir_all(&extracted).unwrap();
    ok(Command::new("tar")
        .arg("-xSf")
        .arg(&archive)
        .arg("-C")
        .arg(&extracted));
    let shard_snapshot = dir.path().join("shard.snapshot");
    ok(Command::new("tar")
        .arg("-cSf")
        .arg(&shard_snapshot)
        .arg("-C")
        .arg(extracted.join("0"))
        .arg("."));
    let unpacked = dir.path().join("unpacked");
    let out = ok(&mut helper(
        &python,
        &["unpack", unpacked.to_str().unwrap()],
        &shard_snapshot,
    ));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap(),
        products
    );

    // Our restore lays it down as the storage directory held it, replica state for one node.
    let target = dir.path().join("target");
    let arg = format!("{}:copy", archive.display());
    restore(dir.path(), &target, &["--snapshot", &arg], |_| {});
    assert_eq!(describe(&python, &shard_of(&target, "copy")), products);
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(shard_of(&target, "copy").join("replica_state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        state["peers"],
        serde_json::json!({"7": "Active"}),
        "{state}"
    );
    // A full snapshot of it is Qdrant's full snapshot, and restores whole.
    make_server_collection(&python, &src, "reviews", 700, 4);
    let reviews = describe(&python, &shard_of(&src, "reviews"));
    write(
        &src.join("aliases/data.json"),
        br#"{"shop":"products"}"#,
        0o644,
    );
    let full = dir
        .path()
        .join(archive_path(&create(dir.path(), &src, None)));
    let listing = ok(Command::new("tar").arg("-tf").arg(&full));
    assert_eq!(
        listing.lines().collect::<Vec<_>>(),
        [
            "snapshot.json",
            "config.json",
            "products.snapshot",
            "reviews.snapshot"
        ]
    );
    let whole = dir.path().join("whole");
    restore(
        dir.path(),
        &whole,
        &["--storage-snapshot", full.to_str().unwrap()],
        |_| {},
    );
    assert_eq!(describe(&python, &shard_of(&whole, "products")), products);
    assert_eq!(describe(&python, &shard_of(&whole, "reviews")), reviews);
    assert_eq!(
        std::fs::read_to_string(whole.join("aliases/data.json")).unwrap(),
        r#"{"shop":"products"}"#
    );
    // And --format files keeps the storage directory's own paths.
    let mut files = create_cmd(dir.path(), &src, Some("products"));
    files.args(["--format", "files"]);
    let plain: serde_json::Value = serde_json::from_str(&ok(&mut files)).unwrap();
    let listing = ok(Command::new("tar")
        .arg("-tf")
        .arg(dir.path().join(archive_path(&plain))));
    assert!(
        listing
            .lines()
            .nth(1)
            .unwrap()
            .starts_with("collections/products/"),
        "{listing}"
    );
}

#[test]
fn shards_packed_in_both_of_qdrants_segment_layouts_restore_from_every_source() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("storage");
    make_shard(&python, &src, "products", 4_000, 5);
    let products = describe(&python, &shard_of(&src, "products"));
    let mut snapshots = Vec::new();
    for layout in ["regular", "streamable"] {
        let snapshot = dir
            .path()
            .join(format!("products-shard-0-{layout}.snapshot"));
        ok(&mut helper(
            &python,
            &["pack", snapshot.to_str().unwrap(), layout],
            &shard_of(&src, "products"),
        ));
        snapshots.push(snapshot);
    }
    // From a file, as shard 0 of a new collection and as shard 2 of another; over an
    // existing shard with each priority.
    let target = dir.path().join("target");
    for (i, snapshot) in snapshots.iter().enumerate() {
        let name = format!("c{i}");
        let arg = format!("{}:{name}", snapshot.display());
        restore(dir.path(), &target, &["--snapshot", &arg], |_| {});
        assert_eq!(
            describe(&python, &shard_of(&target, &name)),
            products,
            "{snapshot:?}"
        );
        restore(
            dir.path(),
            &target,
            &["--snapshot", &arg, "--shard", "2"],
            |_| {},
        );
        assert_eq!(
            describe(&python, &target.join("collections").join(&name).join("2")),
            products
        );
    }
    let other = dir.path().join("other");
    make_shard(&python, &other, "products", 300, 6);
    let old = describe(&python, &shard_of(&other, "products"));
    let arg = format!("{}:products", snapshots[1].display());
    for (priority, expected) in [
        ("replica", &old),
        ("snapshot", &products),
        ("no_sync", &products),
    ] {
        restore(
            dir.path(),
            &other,
            &["--snapshot", &arg, "--priority", priority],
            |_| {},
        );
        assert_eq!(
            &describe(&python, &shard_of(&other, "products")),
            expected,
            "{priority}"
        );
    }
    // Without a priority an existing shard is Qdrant's startup error; --shard goes with
    // shard snapshots only.
    let mut cmd = bin(dir.path());
    cmd.args(["restore", "--storage-path"])
        .arg(&other)
        .args(["--snapshot", &arg]);
    let err = fails(&mut as_nobody(cmd, dir.path()));
    assert!(err.contains("already there"), "{err}");
    let ours = dir
        .path()
        .join(archive_path(&create(dir.path(), &src, Some("products"))));
    let mut cmd = bin(dir.path());
    cmd.args(["restore", "--storage-path"])
        .arg(dir.path().join("none"))
        .args([
            "--snapshot",
            &format!("{}:x", ours.display()),
            "--shard",
            "1",
        ]);
    let err = fails(&mut as_nobody(cmd, dir.path()));
    assert!(
        err.contains("--shard goes with a Qdrant shard snapshot"),
        "{err}"
    );

    // From http(s), file:// (inside the snapshots path), an upload by name, and S3.
    let server = serve(std::fs::read(&snapshots[0]).unwrap(), false);
    let from_http = dir.path().join("from-http");
    let url = format!("{}/good.snapshot:products", server.base);
    restore(dir.path(), &from_http, &["--snapshot", &url], |_| {});
    assert_eq!(
        describe(&python, &shard_of(&from_http, "products")),
        products
    );
    let err = fails(
        bin(dir.path())
            .args(["snapshot", "upload"])
            .arg(&snapshots[1]),
    );
    assert!(err.contains("give it with --collection"), "{err}");
    ok(bin(dir.path())
        .args(["snapshot", "upload", "--collection", "products"])
        .arg(&snapshots[1]));
    let uploaded = dir
        .path()
        .join("snapshots/products/products-shard-0-streamable.snapshot");
    assert!(uploaded.is_file());
    for (i, location) in [
        "products-shard-0-streamable.snapshot:products".to_owned(),
        format!("file://{}:products", uploaded.display()),
    ]
    .iter()
    .enumerate()
    {
        let by_name = dir.path().join(format!("by-name-{i}"));
        restore(dir.path(), &by_name, &["--snapshot", location], |_| {});
        assert_eq!(describe(&python, &shard_of(&by_name, "products")), products);
    }
    if let Some(env) = s3_env() {
        let prefix = unique_prefix("qdrant-shard");
        let mut upload = bin(dir.path());
        env.apply(&mut upload, &prefix);
        ok(upload
            .args(["snapshot", "upload", "--collection", "products"])
            .arg(&snapshots[0]));
        let from_s3 = dir.path().join("from-s3");
        let location = format!(
            "s3://{}/{prefix}/products/products-shard-0-regular.snapshot:products",
            env.bucket
        );
        restore(dir.path(), &from_s3, &["--snapshot", &location], |cmd| {
            env.apply(cmd, &prefix)
        });
        assert_eq!(describe(&python, &shard_of(&from_s3, "products")), products);
    }
}
