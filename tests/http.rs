//! Restores from http(s):// locations against a local HTTP server serving a real archive.

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn http_restore_streams_checks_and_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("storage");
    make_storage(&src);
    let created = create(dir.path(), &src, Some("products"));
    let archive = fs::read(dir.path().join(archive_path(&created))).unwrap();
    let checksum = created["archive"]["checksum"].as_str().unwrap().to_owned();
    let server = serve(archive, true);
    let restore = |target: &std::path::Path, location: &str| {
        let mut cmd = bin(dir.path());
        cmd.args(["restore", "--storage-path"])
            .arg(target)
            .args(["--snapshot", &format!("{}{location}:products", server.base)])
            .args(["--http-timeout", "2"]);
        cmd
    };

    // With the api key and the right checksum: restored, byte-identical.
    let target = dir.path().join("t1");
    let out = ok(restore(&target, "/good.snapshot").args([
        "--api-key",
        "secret",
        "--checksum",
        &checksum,
    ]));
    assert!(
        out.contains("restored products") && out.contains(&checksum),
        "{out}"
    );
    assert_eq!(
        subtree(&fingerprint(&target), "collections/products"),
        subtree(&fingerprint(&src), "collections/products")
    );
    // The api key also comes from the environment, never shown in --help.
    let target_env = dir.path().join("t-env");
    ok(restore(&target_env, "/good.snapshot").env("SNAPSHOT_OPERATOR_API_KEY", "secret"));
    let help = ok(bin(dir.path())
        .env("SNAPSHOT_OPERATOR_API_KEY", "secret")
        .args(["restore", "--help"]));
    assert!(!help.contains("secret"), "{help}");

    // Without the key: a clear error, nothing created.
    let target2 = dir.path().join("t2");
    let err = fails(&mut restore(&target2, "/good.snapshot"));
    assert!(err.contains("401") && err.contains("--api-key"), "{err}");
    assert!(!target2.exists());
    let err = fails(&mut restore(&target2, "/missing.snapshot"));
    assert!(err.contains("404"), "{err}");

    // A wrong checksum: refused after streaming, nothing changed in an existing target.
    make_collection(&target2, "other", "x");
    let before = fingerprint(&target2);
    let err = fails(restore(&target2, "/good.snapshot").args([
        "--api-key",
        "secret",
        "--checksum",
        &"f".repeat(64),
    ]));
    assert!(err.contains("checksum mismatch"), "{err}");
    assert_eq!(fingerprint(&target2), before);

    // A server that stalls mid-body: fails after the inactivity timeout, nothing changed.
    let started = Instant::now();
    let err = fails(&mut restore(&target2, "/stall.snapshot"));
    let took = started.elapsed();
    assert!(
        err.contains("timed out") || err.contains("timeout"),
        "{err}"
    );
    assert!(
        took < Duration::from_secs(30),
        "the stall was not cut short: {took:?}"
    );
    assert_eq!(fingerprint(&target2), before);
}
