//! Retention keeps what it promises, against the binary: no name from outside decides what
//! is newest (uploads of archives named in the future are refused; an archive counts from
//! when it was stored at the latest, and the last one stored is always kept); names that
//! are not valid collection or snapshot names are said and left alone, never mapped onto
//! another; one archive that cannot be deleted holds up no other.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::*;

/// The keys `snapshot list` shows for the storage `cli` configures.
fn listed(cli: &dyn Fn() -> Command) -> Vec<String> {
    let out: serde_json::Value =
        serde_json::from_str(&ok(cli().args(["snapshot", "list", "-o", "json"]))).unwrap();
    out.as_array()
        .unwrap()
        .iter()
        .map(|a| a["key"].as_str().unwrap().to_owned())
        .collect()
}

/// Uploads an archive named in the future: refused, nothing stored.
fn future_uploads_are_refused(dir: &Path, cli: &dyn Fn() -> Command) {
    let (_, base) = downloaded_products(dir, cli);
    let before = listed(cli);
    let forged = dir.join("products-n0-2099-01-01-00-00-00.snapshot");
    fs::copy(&base, &forged).unwrap();
    let err = fails(cli().args(["snapshot", "upload"]).arg(&forged));
    assert!(err.contains("in the future"), "{err}");
    assert_eq!(listed(cli), before, "nothing stored");
    // Not an archive name: refused too (it would never be listed).
    let odd = dir.join("backup.tar");
    fs::copy(&base, &odd).unwrap();
    let err = fails(cli().args(["snapshot", "upload"]).arg(&odd));
    assert!(err.contains("not an archive name"), "{err}");
    assert_eq!(listed(cli), before);
}

#[test]
fn uploads_named_in_the_future_are_refused_locally_and_on_s3() {
    let dir = tempfile::tempdir().unwrap();
    future_uploads_are_refused(dir.path(), &|| bin(dir.path()));
    let Some(env) = s3_env() else { return };
    let prefix = unique_prefix("future");
    let s3dir = tempfile::tempdir().unwrap();
    future_uploads_are_refused(s3dir.path(), &|| {
        let mut cmd = bin(s3dir.path());
        env.apply(&mut cmd, &prefix);
        cmd
    });
}

#[test]
fn a_name_from_the_future_never_outlives_the_archives_stored_after_it() {
    // Put there by hand (not through upload): an archive whose name says 2099.
    let dir = tempfile::tempdir().unwrap();
    let cli = || bin(dir.path());
    let src = dir.path().join("source");
    make_collection(&src, "products", "p");
    let first = create_products(cli(), &src)["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let snapshots = dir.path().join("snapshots/products");
    let forged = "products-n0-2099-01-01-00-00-00.snapshot";
    fs::copy(snapshots.join(&first), snapshots.join(forged)).unwrap();
    fs::copy(
        snapshots.join(format!("{first}.checksum")),
        snapshots.join(format!("{forged}.checksum")),
    )
    .unwrap();
    // Stored a while ago (its time on disk), then a real archive taken now.
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    fs::File::options()
        .write(true)
        .open(snapshots.join(forged))
        .unwrap()
        .set_modified(old)
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let latest = create_products(cli(), &src)["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let plan: serde_json::Value = serde_json::from_str(&ok(cli().args([
        "snapshot",
        "prune",
        "--keep-last",
        "1",
        "-o",
        "json",
    ])))
    .unwrap();
    let kept: Vec<&str> = plan
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["keep"] == true)
        .map(|p| p["key"].as_str().unwrap())
        .collect();
    assert_eq!(kept, [format!("products/{latest}")], "{plan}");
    assert_eq!(listed(&cli), [format!("products/{latest}")]);
}

#[test]
fn names_that_are_not_valid_are_said_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let cli = || bin(dir.path());
    // A real collection whose name is U+FFFD, and a planted folder whose name is not UTF-8
    // (a lossy conversion makes it the same name).
    let src = dir.path().join("source");
    make_collection(&src, "c\u{FFFD}", "r");
    let mut cmd = bin(dir.path());
    cmd.args([
        "snapshot",
        "create",
        "--collection",
        "c\u{FFFD}",
        "--node",
        "n0",
        "--storage-path",
    ])
    .arg(&src);
    ok(&mut cmd);
    let snapshots = dir.path().join("snapshots");
    let real = snapshots.join("c\u{FFFD}");
    let planted = snapshots.join(OsStr::from_bytes(b"c\xff"));
    fs::create_dir_all(&planted).unwrap();
    for entry in fs::read_dir(&real).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), planted.join(entry.file_name())).unwrap();
    }
    // Odd archive names beside the real ones, and a folder that cannot be read.
    fs::write(real.join("odd\\name.snapshot"), b"x").unwrap();
    fs::write(
        snapshots.join(OsStr::from_bytes(b"full-\xfe.snapshot")),
        b"x",
    )
    .unwrap();
    make_collection(&src, "products", "p");
    let products = create_products(cli(), &src)["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let locked = snapshots.join("locked");
    fs::create_dir_all(&locked).unwrap();
    if is_root() {
        give_to(dir.path(), NOBODY);
    }
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o000)).unwrap();
    let as_user = |args: &[&str]| {
        let mut cmd = bin(dir.path());
        cmd.args(args);
        as_nobody(cmd, dir.path())
    };
    let keys = |out: &str| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(out).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|a| a["key"].as_str().unwrap().to_owned())
            .collect()
    };
    // Each archive once; the odd ones not at all; the unreadable folder skipped.
    let mut list = as_user(&["snapshot", "list", "-o", "json"]);
    list.env("SNAPSHOT_OPERATOR_LOG", "warn");
    let out = run(&mut list);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not a valid"), "{stderr}");
    let found = keys(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        found.iter().any(|k| k.starts_with("c\u{FFFD}/")),
        "{found:?}"
    );
    assert!(found.contains(&format!("products/{products}")), "{found:?}");
    // Pruning keeps the only archive of each; the planted copies are untouched.
    let mut prune = as_user(&["snapshot", "prune", "--keep-last", "1"]);
    ok(&mut prune);
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(
        fs::read_dir(&real).unwrap().count(),
        3,
        "archive, checksum, odd name"
    );
    assert_eq!(fs::read_dir(&planted).unwrap().count(), 2);
    assert_eq!(listed(&cli).len(), 2);
}

#[test]
fn one_archive_that_cannot_be_deleted_holds_up_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let cli = || bin(dir.path());
    archives_taken_at(
        dir.path(),
        &cli,
        &["2026-03-01-02-00-00", "2026-03-02-02-00-00"],
    );
    let src = dir.path().join("other-source");
    make_collection(&src, "other", "o");
    for _ in 0..2 {
        let mut cmd = bin(dir.path());
        cmd.args([
            "snapshot",
            "create",
            "--collection",
            "other",
            "--node",
            "n0",
            "--storage-path",
        ])
        .arg(&src);
        ok(&mut cmd);
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    // The products folder is read-only for the user pruning: its old archive stays.
    if is_root() {
        give_to(dir.path(), NOBODY);
    }
    let products = dir.path().join("snapshots/products");
    fs::set_permissions(&products, fs::Permissions::from_mode(0o555)).unwrap();
    let mut cmd = bin(dir.path());
    cmd.args(["snapshot", "prune", "--keep-last", "1"]);
    let out = run(&mut as_nobody(cmd, dir.path()));
    fs::set_permissions(&products, fs::Permissions::from_mode(0o755)).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stderr.contains("1 archive(s) the policy removes could not be deleted"),
        "{stderr}"
    );
    assert!(
        stdout.contains("failed") && stdout.contains("removed"),
        "{stdout}"
    );
    let left = listed(&cli);
    assert_eq!(
        left.iter().filter(|k| k.starts_with("other/")).count(),
        1,
        "{left:?}"
    );
    assert_eq!(
        left.iter().filter(|k| k.starts_with("products/")).count(),
        2,
        "{left:?}"
    );
}
