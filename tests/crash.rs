//! SIGKILL at many points of a create and of a `snapshot`-priority restore: never a partial
//! archive under a final name, never a mix of old and new collection data.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

/// A collection big enough that a create or restore takes a fraction of a second.
fn big_collection(storage: &Path, name: &str, salt: &str) {
    make_collection(storage, name, salt);
    let c = storage.join("collections").join(name);
    for i in 0..24 {
        write(
            &c.join(format!("big/part-{i:02}")),
            &binary(2 << 20, &format!("{salt}{i}")),
            0o644,
        );
    }
    for i in 0..400 {
        write(
            &c.join(format!("small/{:02}/f{i}", i % 20)),
            format!("{salt}-{i}").as_bytes(),
            0o644,
        );
    }
}

/// Runs `cmd`, kills it with SIGKILL after `delay`; returns whether it had finished by then.
fn run_and_kill(cmd: &mut Command, delay: Duration) -> bool {
    let mut child = cmd.spawn().unwrap();
    std::thread::sleep(delay);
    if child.try_wait().unwrap().is_some_and(|s| s.success()) {
        return true;
    }
    let _ = child.kill();
    child.wait().unwrap().success()
}

/// Every archive under a final name is complete: its sidecar matches and GNU tar reads it.
fn assert_only_complete_archives(snapshots: &Path) -> usize {
    let mut complete = 0;
    for dir in [snapshots.to_owned(), snapshots.join("products")] {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if !name.ends_with(".snapshot") {
                continue;
            }
            let data = fs::read(&path).unwrap();
            let sidecar = fs::read_to_string(format!("{}.checksum", path.display()))
                .unwrap_or_else(|_| panic!("{name} is visible without its checksum"));
            assert_eq!(sidecar.trim(), sha256_hex(&data), "{name} is incomplete");
            ok(Command::new("tar").arg("-tf").arg(&path));
            complete += 1;
        }
    }
    complete
}

fn partials(temp: &Path) -> usize {
    fs::read_dir(temp).map_or(0, |e| {
        e.filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".partial")
        })
        .count()
    })
}

#[test]
fn a_killed_create_leaves_no_archive_under_a_final_name() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("storage");
    big_collection(&src, "products", "a");
    let snapshots = dir.path().join("snapshots");
    let mut killed_mid_write = 0;
    let mut finished = false;
    let log = dir.path().join("log");
    for step in 0..60u64 {
        let mut cmd = bin(dir.path());
        cmd.args([
            "snapshot",
            "create",
            "--collection",
            "products",
            "--node",
            "n",
            "--storage-path",
        ])
        .arg(&src)
        .env("SNAPSHOT_OPERATOR_LOG", "snapshot_operator=debug")
        .stdout(std::process::Stdio::null())
        .stderr(fs::File::create(&log).unwrap());
        finished = run_and_kill(&mut cmd, Duration::from_millis(step * 15));
        assert_only_complete_archives(&snapshots);
        // The temp file may have no name (O_TMPFILE): the log tells when the write began.
        let log = fs::read_to_string(&log).unwrap();
        if !finished && log.contains("building the archive") {
            killed_mid_write += 1;
        }
        if finished {
            break;
        }
    }
    assert!(finished, "a create never completed");
    assert!(
        killed_mid_write >= 2,
        "only {killed_mid_write} kills hit a write in progress"
    );
    // The next start removes what the killed runs left in the temp path.
    ok(bin(dir.path()).args(["snapshot", "list"]));
    assert_eq!(partials(&snapshots.join(".tmp")), 0);
    assert!(assert_only_complete_archives(&snapshots) >= 1);
}

#[test]
fn a_killed_snapshot_priority_restore_leaves_old_or_new_never_a_mix() {
    let dir = tempfile::tempdir().unwrap();
    let newer = dir.path().join("newer");
    big_collection(&newer, "products", "new");
    let archive = dir
        .path()
        .join(archive_path(&create(dir.path(), &newer, Some("products"))));
    let new_fp = subtree(&fingerprint(&newer), "collections/products");
    let old_src = dir.path().join("old");
    big_collection(&old_src, "products", "old");
    let old_fp = subtree(&fingerprint(&old_src), "collections/products");
    assert_ne!(old_fp, new_fp);

    let target = dir.path().join("target");
    let reset = || {
        let _ = fs::remove_dir_all(&target);
        ok(Command::new("cp").arg("-a").arg(&old_src).arg(&target));
    };
    reset();
    let arg = format!("{}:products", archive.display());
    let (mut saw_old_with_staging, mut saw_new, mut finished) = (0, 0, false);
    for step in 0..80u64 {
        let mut cmd = bin(dir.path());
        cmd.args([
            "restore",
            "--priority",
            "snapshot",
            "--snapshot",
            &arg,
            "--storage-path",
        ])
        .arg(&target)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
        // As a non-root user, as movers run.
        let mut cmd = as_nobody(cmd, dir.path());
        finished = run_and_kill(&mut cmd, Duration::from_millis(step * 12));
        let now = subtree(&fingerprint(&target), "collections/products");
        if now == new_fp {
            saw_new += 1;
            if finished {
                break;
            }
            reset();
        } else {
            assert_eq!(
                now, old_fp,
                "after a kill at step {step} the collection is a mix"
            );
            if target.join(".snapshot-operator").exists() {
                saw_old_with_staging += 1;
            }
        }
    }
    assert!(finished, "a restore never completed");
    assert!(
        saw_old_with_staging >= 2,
        "kills during staging: {saw_old_with_staging}"
    );
    assert!(saw_new >= 1);
    assert!(
        !target.join(".snapshot-operator").exists(),
        "the completed run cleaned up"
    );
}
