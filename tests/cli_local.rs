//! The CLI on local storage: round trips, GNU tar compatibility, names, priorities, startup
//! restore rules and refused archives. Restores run as a non-root user when the tests run
//! as root.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::*;

/// A restore into `storage`, run as a non-root user (as movers are) when the tests run as
/// root; the test directory `cwd` is given to that user.
fn restore_cmd(cwd: &Path, storage: &Path) -> Command {
    let mut cmd = bin(cwd);
    cmd.args(["restore", "--storage-path"]).arg(storage);
    as_nobody(cmd, cwd)
}

/// This process's umask (which the binary inherits).
fn umask() -> u32 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
    u32::from_str_radix(line["Umask:".len()..].trim(), 8).unwrap()
}

#[test]
fn collection_round_trip_is_byte_identical_also_under_a_new_name() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("storage");
    make_storage(&src);
    let created = create(dir.path(), &src, Some("products"));
    let archive = archive_path(&created);
    assert!(archive.starts_with("./snapshots/products/"), "{archive:?}");
    assert_eq!(created["content"]["files"], 6);

    let dst = dir.path().join("restored");
    let arg = format!("{}:products", archive.display());
    ok(restore_cmd(dir.path(), &dst).args(["--snapshot", &arg]));
    let want = subtree(&fingerprint(&src), "collections/products");
    assert_eq!(subtree(&fingerprint(&dst), "collections/products"), want);
    // Nothing else appears in the target: no workspace, no other collection.
    let top: Vec<_> = fs::read_dir(&dst)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(top, ["collections"]);
    // `collections/` is not in a collection archive: created with the default mode.
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(dst.join("collections"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o777 & !umask());
    if is_root() {
        use std::os::unix::fs::MetadataExt;
        let config = dst.join("collections/products/config.json");
        assert_eq!(
            fs::metadata(config).unwrap().uid(),
            NOBODY,
            "not restored as nobody"
        );
    }

    let arg = format!("{}:products-copy", archive.display());
    ok(restore_cmd(dir.path(), &dst).args(["--snapshot", &arg]));
    assert_eq!(
        subtree(&fingerprint(&dst), "collections/products-copy"),
        want
    );
}

#[test]
fn full_round_trip_is_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("storage");
    make_storage(&src);
    let created = create(dir.path(), &src, None);
    let name = created["name"].as_str().unwrap();
    assert!(name.starts_with("full-snapshot-node-0-"), "{name}");
    let dst = dir.path().join("restored");
    // By name, looked up in the configured storage.
    let out = ok(restore_cmd(dir.path(), &dst).args(["--storage-snapshot", name]));
    assert!(
        out.contains("restored products") && out.contains("restored reviews"),
        "{out}"
    );
    assert_eq!(fingerprint(&dst), fingerprint(&src));
}

#[test]
fn one_collection_comes_out_of_a_full_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("storage");
    make_storage(&src);
    let archive = archive_path(&create(dir.path(), &src, None));
    let dst = dir.path().join("restored");
    let arg = format!("{}:reviews", archive.display());
    ok(restore_cmd(dir.path(), &dst).args(["--snapshot", &arg]));
    let arg = format!("{}:renamed", archive.display());
    ok(restore_cmd(dir.path(), &dst).args(["--snapshot", &arg, "--from-collection", "products"]));
    let fp = fingerprint(&dst);
    let src_fp = fingerprint(&src);
    assert_eq!(
        subtree(&fp, "collections/reviews"),
        subtree(&src_fp, "collections/reviews")
    );
    assert_eq!(
        subtree(&fp, "collections/renamed"),
        subtree(&src_fp, "collections/products")
    );
    assert!(!dst.join("collections/products").exists());
    assert!(
        !dst.join("aliases").exists(),
        "a collection restore writes no aliases"
    );
    let arg = format!("{}:missing", archive.display());
    let err = fails(restore_cmd(dir.path(), &dst).args(["--snapshot", &arg]));
    assert!(
        err.contains("not in this full-storage snapshot") && err.contains("products, reviews"),
        "{err}"
    );
}

#[test]
fn gnu_tar_lists_and_extracts_our_archives_and_sha256sum_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("storage");
    make_storage(&src);
    let archive = archive_path(&create(dir.path(), &src, Some("products")));
    let archive = dir.path().join(archive);

    let listing = ok(Command::new("tar").arg("-tf").arg(&archive));
    let names: Vec<&str> = listing.lines().collect();
    assert_eq!(names[0], "snapshot.json");
    assert_eq!(names[1], "collections/products/");
    assert!(
        names
            .iter()
            .any(|n| n.ends_with("/leaf-p1.dat") && n.len() > 100)
    );
    let mut sorted = names[1..].to_vec();
    sorted.sort();
    assert_eq!(sorted.len(), names.len() - 1);

    let out = dir.path().join("gnu");
    fs::create_dir(&out).unwrap();
    ok(Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&out));
    assert_eq!(
        subtree(&fingerprint(&out), "collections/products"),
        subtree(&fingerprint(&src), "collections/products")
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("snapshot.json")).unwrap()).unwrap();
    assert_eq!(manifest["format_version"], 1);
    assert_eq!(manifest["kind"], "collection");
    assert_eq!(manifest["collection"], "products");
    assert_eq!(manifest["node"], "node-0");
    assert_eq!(manifest["collections"], serde_json::json!(["products"]));
    assert_eq!(
        manifest["aliases"],
        serde_json::json!({"catalog": "products"})
    );

    let sum = ok(Command::new("sha256sum").arg(&archive));
    let sidecar = fs::read_to_string(format!("{}.checksum", archive.display())).unwrap();
    assert_eq!(sidecar.trim(), sum.split_whitespace().next().unwrap());
    assert_eq!(sidecar.trim(), sha256_hex(&fs::read(&archive).unwrap()));
}

#[test]
fn names_follow_the_design_and_never_collide() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("storage");
    make_storage(&src);
    let mut names = Vec::new();
    for _ in 0..4 {
        names.push(
            create(dir.path(), &src, Some("reviews"))["name"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let re = |n: &str| {
        let rest = n.strip_prefix("reviews-node-0-").unwrap();
        let rest = rest.strip_suffix(".snapshot").unwrap();
        let (ts, suffix) = rest.split_at(19);
        assert!(
            ts.bytes()
                .enumerate()
                .all(|(i, b)| if [4, 7, 10, 13, 16].contains(&i) {
                    b == b'-'
                } else {
                    b.is_ascii_digit()
                }),
            "{n}"
        );
        (ts.to_owned(), suffix.to_owned())
    };
    let parsed: Vec<_> = names.iter().map(|n| re(n)).collect();
    let mut unique = names.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), names.len(), "{names:?}");
    // Within one second, later snapshots carry -1, -2, ...
    for w in parsed.windows(2) {
        if w[0].0 == w[1].0 {
            assert_ne!(w[0].1, w[1].1);
            assert!(w[1].1.starts_with('-'), "{names:?}");
        }
    }
    for n in &names {
        assert!(dir.path().join("snapshots/reviews").join(n).is_file());
        assert!(
            dir.path()
                .join("snapshots/reviews")
                .join(format!("{n}.checksum"))
                .is_file()
        );
    }
}

#[test]
fn invalid_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("storage");
    make_storage(&src);
    for bad in ["../products", "a/b", "..", ""] {
        let err = fails(
            bin(dir.path())
                .args(["snapshot", "create", "--collection", bad])
                .arg("--storage-path")
                .arg(&src),
        );
        assert!(
            err.contains("name") || err.contains("not found"),
            "{bad:?}: {err}"
        );
    }
    let err = fails(
        bin(dir.path())
            .args([
                "snapshot",
                "create",
                "--collection",
                "nope",
                "--storage-path",
            ])
            .arg(&src),
    );
    assert!(err.contains("collection \"nope\" not found"), "{err}");
    let err = fails(
        bin(dir.path())
            .args(["snapshot", "create", "--node", "a/b", "--storage-path"])
            .arg(&src),
    );
    assert!(err.contains("node name"), "{err}");
    let archive = archive_path(&create(dir.path(), &src, Some("products")));
    let dst = dir.path().join("dst");
    for bad in ["..", "a\\b"] {
        let arg = format!("{}:{bad}", archive.display());
        let err = fails(restore_cmd(dir.path(), &dst).args(["--snapshot", &arg]));
        assert!(err.contains("collection name"), "{err}");
    }
    for bad in ["../x.snapshot", "a/b/c.snapshot"] {
        let err = fails(bin(dir.path()).args(["snapshot", "delete", bad]));
        assert!(
            err.contains("not found") || err.contains("invalid"),
            "{err}"
        );
    }
    assert!(!dst.exists());
}

/// Sets up `target` with an existing `products` collection (salt "old") and returns the
/// archives of a newer `products` (salt "new"): (collection archive, full archive).
fn priority_fixture(dir: &Path) -> (String, String) {
    let newer = dir.join("newer");
    make_collection(&newer, "products", "new");
    make_collection(&newer, "reviews", "new");
    write(
        &newer.join("aliases/data.json"),
        br#"{"a1":"products","shared":"reviews"}"#,
        0o644,
    );
    write(&newer.join("raft_state.json"), b"new", 0o644);
    let coll = archive_path(&create(dir, &newer, Some("products")));
    let full = archive_path(&create(dir, &newer, None));
    (coll.display().to_string(), full.display().to_string())
}

fn old_target(dir: &Path, name: &str) -> std::path::PathBuf {
    let target = dir.join(name);
    make_collection(&target, "products", "old");
    write(
        &target.join("collections/products/only-old.txt"),
        b"old only",
        0o644,
    );
    write(
        &target.join("aliases/data.json"),
        br#"{"shared":"products","mine":"products"}"#,
        0o644,
    );
    write(&target.join("raft_state.json"), b"old", 0o644);
    target
}

#[test]
fn priority_table_for_a_collection_every_cell() {
    let dir = tempfile::tempdir().unwrap();
    let (coll, _) = priority_fixture(dir.path());
    let newer = fingerprint(&dir.path().join("newer"));
    let new_products = subtree(&newer, "collections/products");

    for priority in ["replica", "snapshot", "no_sync"] {
        // Target collection absent: restored, whatever the priority.
        let empty = dir.path().join(format!("empty-{priority}"));
        let arg = format!("{coll}:products");
        let out =
            ok(restore_cmd(dir.path(), &empty).args(["--snapshot", &arg, "--priority", priority]));
        assert!(out.contains("restored products"), "{out}");
        assert_eq!(
            subtree(&fingerprint(&empty), "collections/products"),
            new_products
        );

        // Target collection exists and is not empty.
        let target = old_target(dir.path(), &format!("target-{priority}"));
        let before = fingerprint(&target);
        let out = ok(restore_cmd(dir.path(), &target).args([
            "--snapshot",
            &arg,
            "--priority",
            priority,
            "-o",
            "json",
        ]));
        let result: serde_json::Value = serde_json::from_str(&out).unwrap();
        let outcome = &result[0]["collections"][0];
        let after = fingerprint(&target);
        let products = subtree(&after, "collections/products");
        match priority {
            "replica" => {
                assert_eq!(outcome["outcome"], "Skipped");
                assert!(
                    outcome["reason"]
                        .as_str()
                        .unwrap()
                        .contains("already exists")
                );
                assert_eq!(after, before);
            }
            "snapshot" => {
                assert_eq!(outcome["outcome"], "Restored");
                assert_eq!(
                    products, new_products,
                    "replaced whole: old-only files gone"
                );
            }
            _ => {
                assert_eq!(outcome["outcome"], "Restored");
                // Snapshot files over existing ones; nothing removed.
                let mut expected = subtree(&before, "collections/products");
                expected.extend(new_products.clone());
                assert_eq!(products, expected);
                assert!(target.join("collections/products/only-old.txt").exists());
            }
        }
        // Outside the collection nothing changes in a collection restore.
        let outside = |fp: &Fingerprint| -> Fingerprint {
            fp.iter()
                .filter(|(k, _)| !k.starts_with("collections/products"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        assert_eq!(outside(&after), outside(&before));
        assert!(!target.join(".snapshot-operator").exists());
    }
}

#[test]
fn an_empty_existing_collection_counts_as_absent() {
    let dir = tempfile::tempdir().unwrap();
    let (coll, _) = priority_fixture(dir.path());
    let target = dir.path().join("t");
    fs::create_dir_all(target.join("collections/products")).unwrap();
    let out =
        ok(restore_cmd(dir.path(), &target).args(["--snapshot", &format!("{coll}:products")]));
    assert!(out.contains("restored products"), "{out}");
    assert!(target.join("collections/products/config.json").exists());
}

#[test]
fn priority_table_for_a_full_storage_every_cell() {
    let dir = tempfile::tempdir().unwrap();
    let (_, full) = priority_fixture(dir.path());
    let newer = fingerprint(&dir.path().join("newer"));
    for priority in ["replica", "snapshot", "no_sync"] {
        let target = old_target(dir.path(), &format!("full-{priority}"));
        let before = fingerprint(&target);
        let out = ok(restore_cmd(dir.path(), &target).args([
            "--storage-snapshot",
            &full,
            "--priority",
            priority,
            "-o",
            "json",
        ]));
        let result: serde_json::Value = serde_json::from_str(&out).unwrap();
        let outcomes: Vec<(String, String)> = result[0]["collections"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["collection"].as_str().unwrap().into(),
                    c["outcome"].as_str().unwrap().into(),
                )
            })
            .collect();
        let after = fingerprint(&target);
        // Absent collection: restored in every cell.
        assert_eq!(
            subtree(&after, "collections/reviews"),
            subtree(&newer, "collections/reviews")
        );
        let aliases: serde_json::Value =
            serde_json::from_slice(&fs::read(target.join("aliases/data.json")).unwrap()).unwrap();
        let raft = fs::read(target.join("raft_state.json")).unwrap();
        match priority {
            "replica" => {
                assert_eq!(
                    outcomes,
                    [
                        ("products".into(), "Skipped".into()),
                        ("reviews".into(), "Restored".into())
                    ]
                );
                assert_eq!(
                    subtree(&after, "collections/products"),
                    subtree(&before, "collections/products")
                );
                assert_eq!(
                    aliases,
                    serde_json::json!({"a1":"products","mine":"products","shared":"products"})
                );
                assert_eq!(raft, b"old");
            }
            "snapshot" => {
                assert_eq!(
                    outcomes,
                    [
                        ("products".into(), "Restored".into()),
                        ("reviews".into(), "Restored".into())
                    ]
                );
                assert_eq!(
                    subtree(&after, "collections/products"),
                    subtree(&newer, "collections/products")
                );
                assert_eq!(
                    aliases,
                    serde_json::json!({"a1":"products","mine":"products","shared":"reviews"})
                );
                assert_eq!(raft, b"new");
            }
            _ => {
                assert_eq!(
                    outcomes,
                    [
                        ("products".into(), "Restored".into()),
                        ("reviews".into(), "Restored".into())
                    ]
                );
                let mut expected = subtree(&before, "collections/products");
                expected.extend(subtree(&newer, "collections/products"));
                assert_eq!(subtree(&after, "collections/products"), expected);
                assert_eq!(
                    aliases,
                    serde_json::json!({"a1":"products","mine":"products","shared":"reviews"})
                );
                assert_eq!(raft, b"new");
            }
        }
        assert!(!target.join(".snapshot-operator").exists());
    }
}

#[test]
fn startup_restore_keeps_qdrants_contract() {
    let dir = tempfile::tempdir().unwrap();
    let (coll, full) = priority_fixture(dir.path());
    let newer = fingerprint(&dir.path().join("newer"));
    let target = old_target(dir.path(), "startup");
    let before = fingerprint(&target);
    let arg = format!("{coll}:products");
    // Qdrant's contract: without --force-snapshot an existing collection is an error.
    let err = fails(restore_cmd(dir.path(), &target).args(["--snapshot", &arg]));
    assert!(
        err.contains("already there") && err.contains("--force-snapshot"),
        "{err}"
    );
    assert_eq!(fingerprint(&target), before);
    // --priority replica keeps it and exits 0 (an initContainer run at every pod start).
    let out =
        ok(restore_cmd(dir.path(), &target).args(["--snapshot", &arg, "--priority", "replica"]));
    assert!(out.contains("skipped products"), "{out}");
    assert_eq!(fingerprint(&target), before);
    let out = ok(restore_cmd(dir.path(), &target).args(["--snapshot", &arg, "--force-snapshot"]));
    assert!(out.contains("restored products"), "{out}");
    assert_eq!(
        subtree(&fingerprint(&target), "collections/products"),
        subtree(&newer, "collections/products")
    );
    // The same for a full-storage snapshot.
    let target = old_target(dir.path(), "startup-full");
    let before = fingerprint(&target);
    let err = fails(restore_cmd(dir.path(), &target).args(["--storage-snapshot", &full]));
    assert!(err.contains("already there"), "{err}");
    assert_eq!(fingerprint(&target), before);
    let out = ok(restore_cmd(dir.path(), &target).args([
        "--storage-snapshot",
        &full,
        "--priority",
        "replica",
    ]));
    assert!(out.contains("skipped products"), "{out}");
    assert_eq!(
        subtree(&fingerprint(&target), "collections/products"),
        subtree(&before, "collections/products")
    );
    ok(restore_cmd(dir.path(), &target).args(["--storage-snapshot", &full, "--force-snapshot"]));
    assert_eq!(
        subtree(&fingerprint(&target), "collections/products"),
        subtree(&newer, "collections/products")
    );
    // --force-snapshot and --priority contradict each other.
    let err = fails(restore_cmd(dir.path(), &target).args([
        "--storage-snapshot",
        &full,
        "--force-snapshot",
        "--priority",
        "no_sync",
    ]));
    assert!(err.contains("cannot be used with"), "{err}");
    // A collection archive is not a full-storage snapshot.
    let err = fails(restore_cmd(dir.path(), &target).args(["--storage-snapshot", &coll]));
    assert!(err.contains("needs a full-storage snapshot"), "{err}");
}

#[test]
fn refused_archives_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("storage");
    make_storage(&src);
    let good = fs::read(
        dir.path()
            .join(archive_path(&create(dir.path(), &src, Some("products")))),
    )
    .unwrap();
    let manifest = manifest_json(Some("products"), &["products"], 1);
    let with = |extra: Vec<RawEntry>| {
        let mut entries = vec![
            RawEntry::file("snapshot.json", &manifest),
            RawEntry::dir("collections/products/"),
        ];
        entries.extend(extra);
        raw_tar(&entries)
    };
    let file = |p: &str| RawEntry::file(p, b"x");
    let zeros = "0".repeat(64);
    let cases: Vec<(&str, Vec<u8>, Vec<&str>, &str)> = vec![
        (
            "truncated",
            good[..good.len() / 2].to_vec(),
            vec![],
            "truncated",
        ),
        (
            "no-manifest",
            raw_tar(&[file("collections/products/a")]),
            vec![],
            "does not start with snapshot.json",
        ),
        (
            "version",
            raw_tar(&[
                RawEntry::file(
                    "snapshot.json",
                    &manifest_json(Some("products"), &["products"], 99),
                ),
                file("collections/products/a"),
            ]),
            vec![],
            "format version 99",
        ),
        (
            "absolute",
            with(vec![file("/tmp/evil")]),
            vec![],
            "absolute path",
        ),
        (
            "dotdot",
            with(vec![file("collections/products/../../../evil")]),
            vec![],
            "`..`",
        ),
        (
            "symlink",
            with(vec![RawEntry::special(
                "collections/products/link",
                tar::EntryType::Symlink,
                "/etc",
            )]),
            vec![],
            "symbolic link",
        ),
        (
            "hardlink",
            with(vec![RawEntry::special(
                "collections/products/link",
                tar::EntryType::Link,
                "/etc/passwd",
            )]),
            vec![],
            "hard link",
        ),
        (
            "chardev",
            with(vec![RawEntry::special(
                "collections/products/dev",
                tar::EntryType::Char,
                "",
            )]),
            vec![],
            "character device",
        ),
        (
            "fifo",
            with(vec![RawEntry::special(
                "collections/products/fifo",
                tar::EntryType::Fifo,
                "",
            )]),
            vec![],
            "FIFO",
        ),
        (
            "count",
            with(
                (0..5)
                    .map(|i| file(&format!("collections/products/f{i}")))
                    .collect(),
            ),
            vec!["--max-entries", "4"],
            "more than 4 entries",
        ),
        (
            "size",
            with(vec![RawEntry::file("collections/products/big", &[7; 5000])]),
            vec!["--max-bytes", "4096"],
            "more than 4096 bytes",
        ),
        (
            "checksum",
            good.clone(),
            vec!["--checksum", &zeros],
            "checksum mismatch",
        ),
    ];
    for priority in ["replica", "snapshot", "no_sync"] {
        let target = dir.path().join(format!("target-{priority}"));
        make_collection(&target, "other", "keep");
        let outside = dir.path().join("outside");
        fs::create_dir_all(&outside).unwrap();
        let before = (fingerprint(&target), fingerprint(&outside));
        for (case, bytes, extra, message) in &cases {
            let path = dir.path().join(format!("{case}.snapshot"));
            fs::write(&path, bytes).unwrap();
            let arg = format!("{}:products", path.display());
            let err = fails(
                restore_cmd(dir.path(), &target)
                    .args(["--snapshot", &arg, "--priority", priority])
                    .args(extra),
            );
            assert!(err.contains(message), "{case}: {err}");
            assert_eq!(
                (fingerprint(&target), fingerprint(&outside)),
                before,
                "{case} changed something"
            );
            assert!(!Path::new("/tmp/evil").exists());
        }
        // Refused for a target that did not exist: it still does not.
        let fresh = dir.path().join("fresh");
        let arg = format!("{}:products", dir.path().join("symlink.snapshot").display());
        fails(restore_cmd(dir.path(), &fresh).args(["--snapshot", &arg]));
        assert!(!fresh.exists());
    }
}

#[test]
fn paths_through_symlinks_in_the_target_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("storage");
    make_storage(&src);
    let coll = archive_path(&create(dir.path(), &src, Some("products")))
        .display()
        .to_string();
    let full = archive_path(&create(dir.path(), &src, None))
        .display()
        .to_string();
    let elsewhere = dir.path().join("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();

    // collections/ itself is a symlink.
    let t1 = dir.path().join("t1");
    fs::create_dir_all(&t1).unwrap();
    std::os::unix::fs::symlink(&elsewhere, t1.join("collections")).unwrap();
    // the collection is a symlink.
    let t2 = dir.path().join("t2");
    fs::create_dir_all(t2.join("collections")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, t2.join("collections/products")).unwrap();
    // a directory inside an existing collection is a symlink (matters for no_sync merges).
    let t3 = dir.path().join("t3");
    make_collection(&t3, "products", "old");
    fs::remove_dir_all(t3.join("collections/products/0")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, t3.join("collections/products/0")).unwrap();
    // a top-level directory a full restore merges into is a symlink.
    let t4 = dir.path().join("t4");
    fs::create_dir_all(&t4).unwrap();
    std::os::unix::fs::symlink(&elsewhere, t4.join("aliases")).unwrap();

    let cases = [
        (&t1, format!("{coll}:products"), "snapshot"),
        (&t2, format!("{coll}:products"), "snapshot"),
        (&t3, format!("{coll}:products"), "no_sync"),
    ];
    for (target, arg, priority) in cases {
        let before = fingerprint(target);
        let err = fails(restore_cmd(dir.path(), target).args([
            "--snapshot",
            &arg,
            "--priority",
            priority,
        ]));
        assert!(err.contains("symbolic link"), "{err}");
        assert_eq!(fingerprint(target), before);
        assert!(fingerprint(&elsewhere).is_empty());
    }
    let before = fingerprint(&t4);
    let err = fails(restore_cmd(dir.path(), &t4).args(["--storage-snapshot", &full]));
    assert!(err.contains("symbolic link"), "{err}");
    assert_eq!(fingerprint(&t4), before);
    assert!(fingerprint(&elsewhere).is_empty());
}

#[test]
fn special_files_are_skipped_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("storage");
    make_collection(&src, "products", "p");
    std::os::unix::fs::symlink("/etc/passwd", src.join("collections/products/link")).unwrap();
    ok(Command::new("mkfifo").arg(src.join("collections/products/fifo")));
    let created = create(dir.path(), &src, Some("products"));
    let skipped = created["content"]["skipped"].as_array().unwrap();
    let kinds: Vec<(&str, &str)> = skipped
        .iter()
        .map(|s| (s["path"].as_str().unwrap(), s["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("collections/products/fifo", "fifo"),
            ("collections/products/link", "symlink")
        ]
    );
    let listing = ok(Command::new("tar")
        .arg("-tf")
        .arg(dir.path().join(archive_path(&created))));
    assert!(
        !listing.contains("link") && !listing.contains("fifo"),
        "{listing}"
    );
}

#[test]
fn snapshots_and_temp_paths_inside_the_storage_are_not_archived() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("storage");
    make_storage(&src);
    let out = ok(bin(&src).args(["snapshot", "create", "--storage-path", ".", "-o", "json"]));
    let created: serde_json::Value = serde_json::from_str(&out).unwrap();
    let again = ok(bin(&src).args(["snapshot", "create", "--storage-path", ".", "-o", "json"]));
    let again: serde_json::Value = serde_json::from_str(&again).unwrap();
    assert_eq!(created["content"]["files"], again["content"]["files"]);
    let listing = ok(Command::new("tar")
        .arg("-tf")
        .arg(src.join(archive_path(&again))));
    assert!(!listing.contains("snapshots/"), "{listing}");
}

#[test]
fn list_download_delete_and_upload() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("storage");
    make_storage(&src);
    let created = create(dir.path(), &src, Some("products"));
    let full = create(dir.path(), &src, None);
    let name = created["name"].as_str().unwrap();

    let listed: serde_json::Value =
        serde_json::from_str(&ok(bin(dir.path()).args(["snapshot", "list", "-o", "json"])))
            .unwrap();
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, [full["name"].as_str().unwrap(), name]);
    assert_eq!(listed[1]["collection"], "products");
    assert_eq!(listed[1]["checksum"], created["archive"]["checksum"]);
    let table = ok(bin(dir.path()).args(["snapshot", "list", "--collection", "products"]));
    assert!(
        table.starts_with("COLLECTION") && table.contains(name) && !table.contains("full-snapshot"),
        "{table}"
    );

    ok(bin(dir.path()).args(["snapshot", "download", name, "-o", "copy.snapshot"]));
    let original = fs::read(dir.path().join(archive_path(&created))).unwrap();
    assert_eq!(
        fs::read(dir.path().join("copy.snapshot")).unwrap(),
        original
    );
    let piped = run(bin(dir.path()).args(["snapshot", "download", name, "-o", "-"]));
    assert_eq!(piped.stdout, original);
    // A corrupted archive fails its download and leaves no file.
    let corrupt_path = dir.path().join(archive_path(&created));
    let mut corrupt = original.clone();
    corrupt[600] ^= 1;
    fs::write(&corrupt_path, &corrupt).unwrap();
    let err = fails(bin(dir.path()).args(["snapshot", "download", name, "-o", "bad.snapshot"]));
    assert!(err.contains("checksum mismatch"), "{err}");
    assert!(!dir.path().join("bad.snapshot").exists());
    fs::write(&corrupt_path, &original).unwrap();

    ok(bin(dir.path()).args(["snapshot", "delete", name]));
    assert!(!corrupt_path.exists());
    assert!(!Path::new(&format!("{}.checksum", corrupt_path.display())).exists());
    let err = fails(bin(dir.path()).args(["snapshot", "delete", name]));
    assert!(err.contains("not found"), "{err}");

    // Upload into another storage (configured by environment) with its checksum.
    let other = dir.path().join("other-snapshots");
    let mut up = bin(dir.path());
    up.env("SNAPSHOT_OPERATOR__STORAGE__SNAPSHOTS_PATH", &other);
    let out = ok(up.args(["snapshot", "upload", "copy.snapshot"]));
    assert!(out.contains("uploaded"), "{out}");
    let uploaded = other.join("products/copy.snapshot");
    assert_eq!(fs::read(&uploaded).unwrap(), original);
    assert_eq!(
        fs::read_to_string(other.join("products/copy.snapshot.checksum")).unwrap(),
        sha256_hex(&original)
    );
    let err = fails(
        bin(dir.path())
            .env("SNAPSHOT_OPERATOR__STORAGE__SNAPSHOTS_PATH", &other)
            .args(["snapshot", "upload", "copy.snapshot"]),
    );
    assert!(err.contains("already exists"), "{err}");
    fs::copy(
        dir.path().join("copy.snapshot"),
        dir.path().join("second.snapshot"),
    )
    .unwrap();
    let err = fails(
        bin(dir.path())
            .env("SNAPSHOT_OPERATOR__STORAGE__SNAPSHOTS_PATH", &other)
            .args([
                "snapshot",
                "upload",
                "second.snapshot",
                "--checksum",
                &"1".repeat(64),
            ]),
    );
    assert!(err.contains("checksum mismatch"), "{err}");
    assert!(!other.join("products/second.snapshot").exists());
}

#[test]
fn file_urls_must_stay_inside_the_snapshots_path() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("storage");
    make_storage(&src);
    let archive = dir
        .path()
        .join(archive_path(&create(dir.path(), &src, Some("products"))));
    let dst = dir.path().join("dst");
    let inside = format!("file://{}:products", archive.display());
    ok(restore_cmd(dir.path(), &dst).args(["--snapshot", &inside]));
    assert!(dst.join("collections/products/config.json").exists());

    let outside_file = dir.path().join("outside.snapshot");
    fs::copy(&archive, &outside_file).unwrap();
    let via_dotdot = format!(
        "file://{}/snapshots/../outside.snapshot:products",
        dir.path().display()
    );
    let link = dir.path().join("snapshots/link.snapshot");
    std::os::unix::fs::symlink(&outside_file, &link).unwrap();
    for arg in [
        format!("file://{}:products", outside_file.display()),
        via_dotdot,
        format!("file://{}:products", link.display()),
    ] {
        let dst = dir.path().join("dst2");
        let err = fails(restore_cmd(dir.path(), &dst).args(["--snapshot", &arg]));
        assert!(err.contains("outside the snapshots path"), "{arg}: {err}");
        assert!(!dst.exists());
    }
}

#[test]
fn configuration_comes_from_file_and_environment() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("storage");
    make_storage(&src);
    fs::write(
        dir.path().join("config.yaml"),
        "storage:\n  snapshots_path: ./from-file\n",
    )
    .unwrap();
    let out = ok(bin(dir.path())
        .args([
            "--config",
            "config.yaml",
            "snapshot",
            "create",
            "--collection",
            "products",
            "--storage-path",
        ])
        .arg(&src));
    assert!(out.contains("./from-file/products/"), "{out}");
    let out = ok(bin(dir.path())
        .env("SNAPSHOT_OPERATOR__STORAGE__SNAPSHOTS_PATH", "./from-env")
        .env("SNAPSHOT_OPERATOR__STORAGE__TEMP_PATH", "./tmp-env")
        .args([
            "--config",
            "config.yaml",
            "snapshot",
            "create",
            "--collection",
            "products",
            "--storage-path",
        ])
        .arg(&src));
    assert!(out.contains("./from-env/products/"), "{out}");
    assert!(dir.path().join("tmp-env").is_dir());
    let err = fails(
        bin(dir.path())
            .env("SNAPSHOT_OPERATOR__STORAGE__NOPE", "1")
            .args(["snapshot", "list"]),
    );
    assert!(
        err.contains("invalid configuration") && err.contains("nope"),
        "{err}"
    );
}

#[test]
fn prune_applies_the_retention_policy_to_local_storage() {
    let dir = tempfile::tempdir().unwrap();
    let cli = || bin(dir.path());
    prune_keeps_two_days(dir.path(), &cli);
    // The checksums of the removed archives went with them.
    let sidecars = fs::read_dir(dir.path().join("snapshots/products"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".checksum")
        })
        .count();
    assert_eq!(sidecars, 2);
}
