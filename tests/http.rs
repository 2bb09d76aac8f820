//! Restores from http(s):// locations against local HTTP servers serving a real archive:
//! api-key, checksums, a stalling server, a trickling one (minimum rate and deadline), and
//! redirects (the api-key stays with its origin).

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
            .args(["--download-timeout", "2"]);
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

    // A server trickling a byte every 50 ms never stalls, but is far below the minimum rate:
    // cut once the 2 s of --download-timeout have passed.
    let started = Instant::now();
    let err = fails(restore(&target2, "/trickle.snapshot").args(["--min-download-rate", "1000"]));
    let took = started.elapsed();
    assert!(err.contains("below the minimum average rate"), "{err}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    // With no minimum rate, the total deadline cuts it.
    let started = Instant::now();
    let err = fails(restore(&target2, "/trickle.snapshot").args([
        "--min-download-rate",
        "0",
        "--download-deadline",
        "3",
    ]));
    let took = started.elapsed();
    assert!(err.contains("did not finish within 3s"), "{err}");
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(10),
        "{took:?}"
    );
    assert_eq!(fingerprint(&target2), before);
}

#[test]
fn the_api_key_goes_only_to_the_origin_of_the_location() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("storage");
    make_storage(&src);
    let created = create(dir.path(), &src, Some("products"));
    let archive = fs::read(dir.path().join(archive_path(&created))).unwrap();
    let origin = serve(archive.clone(), true);
    let other = serve(archive, false);
    let restore = |target: &std::path::Path, url: &str| {
        let mut cmd = bin(dir.path());
        cmd.args(["restore", "--storage-path"])
            .arg(target)
            .args(["--snapshot", &format!("{url}:products")])
            .args(["--api-key", "secret"]);
        cmd
    };

    // A redirect within the origin keeps the key.
    let same = format!("{}/redirect?to=/good.snapshot", origin.base);
    ok(&mut restore(&dir.path().join("t1"), &same));
    // A redirect to another origin (another port) is followed without the key, and no
    // Referer carries the original URL there.
    let away = format!("{}/redirect?to={}/good.snapshot", origin.base, other.base);
    ok(&mut restore(&dir.path().join("t2"), &away));
    assert_eq!(
        subtree(&fingerprint(&dir.path().join("t2")), "collections/products"),
        subtree(&fingerprint(&src), "collections/products")
    );
    let at_origin = origin.requests.lock().unwrap().clone();
    assert!(
        at_origin
            .iter()
            .all(|(_, key, _)| key.as_deref() == Some("secret")),
        "{at_origin:?}"
    );
    assert_eq!(at_origin.len(), 3, "{at_origin:?}");
    let elsewhere = other.requests.lock().unwrap().clone();
    assert_eq!(
        elsewhere,
        [("/good.snapshot".to_owned(), None, None)],
        "the other origin got the key or a Referer"
    );
}
