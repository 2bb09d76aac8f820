//! Many writers into one storage at once, as the movers of a StatefulSet snapshot are: each
//! process PID 1 of its own PID namespace (`unshare --fork --pid`), pairs of them sharing a
//! node name so that their archive names collide within the second. Every create must
//! succeed, every archive match its sidecar and `sha256sum`, and hold its own writer's data
//! and node.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

const WRITERS: usize = 8;
const ROUNDS: usize = 3;

/// A storage directory whose collection `c` holds `id` and `mib` MiB unique to it.
fn writer_storage(root: &Path, id: &str, mib: usize) -> std::path::PathBuf {
    let storage = root.join(format!("data-{id}"));
    let c = storage.join("collections/c");
    write(&c.join("id"), id.as_bytes(), 0o644);
    write(&c.join("bulk"), &binary(mib << 20, id), 0o644);
    for i in 0..50 {
        write(
            &c.join(format!("small/{i}")),
            format!("{id}-{i}").as_bytes(),
            0o644,
        );
    }
    storage
}

struct Written {
    id: String,
    node: String,
    key: String,
    checksum: String,
}

/// Runs one round of `WRITERS` concurrent creates, each PID 1 of a new PID namespace;
/// `configure` points each at the shared storage.
fn round(dir: &Path, round: usize, configure: &dyn Fn(&mut Command)) -> Vec<Written> {
    let mut children = Vec::new();
    for w in 0..WRITERS {
        let id = format!("r{round}-w{w}");
        let node = format!("node-{}", w / 2);
        // Some archives fit in one S3 part, others take several.
        let storage = writer_storage(dir, &id, 2 + 3 * (w % 3));
        let mut cmd = as_pid1(&bin(dir));
        configure(&mut cmd);
        cmd.args([
            "snapshot",
            "create",
            "--collection",
            "c",
            "-o",
            "json",
            "--node",
            &node,
        ])
        .arg("--storage-path")
        .arg(&storage)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        children.push((id, node, cmd.spawn().expect("unshare runs")));
    }
    children
        .into_iter()
        .map(|(id, node, child)| {
            let out = child.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "writer {id} failed: {stderr}");
            assert!(
                stderr.contains("pid=1\n"),
                "writer {id} was not PID 1: {stderr}"
            );
            let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            Written {
                id,
                node,
                key: created["archive"]["key"].as_str().unwrap().to_owned(),
                checksum: created["archive"]["checksum"].as_str().unwrap().to_owned(),
            }
        })
        .collect()
}

/// Checks one archive file against what its writer reported.
fn check_archive(dir: &Path, archive: &Path, sidecar: &str, w: &Written) {
    let sha = ok(Command::new("sha256sum").arg(archive));
    let sha = sha.split_whitespace().next().unwrap();
    assert_eq!(
        sha, w.checksum,
        "{}: sha256sum differs from the reported checksum",
        w.key
    );
    assert_eq!(
        name_checksum(sidecar),
        w.checksum,
        "{}: sidecar differs",
        w.key
    );
    let manifest = ok(Command::new("tar")
        .arg("-xOf")
        .arg(archive)
        .arg("snapshot.json"));
    let manifest: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    assert_eq!(
        manifest["node"],
        w.node.as_str(),
        "{}: another node's manifest",
        w.key
    );
    let id = ok(Command::new("tar")
        .arg("-xOf")
        .arg(archive)
        .arg("collections/c/id")
        .current_dir(dir));
    assert_eq!(id, w.id, "{}: another writer's data", w.key);
}

fn name_checksum(sidecar: &str) -> String {
    sidecar
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn concurrent_pid1_writers_into_local_storage_never_collide() {
    let dir = tempfile::tempdir().unwrap();
    let snapshots = dir.path().join("snapshots");
    let configure = |cmd: &mut Command| {
        cmd.env("SNAPSHOT_OPERATOR__STORAGE__SNAPSHOTS_PATH", &snapshots);
    };
    let mut keys = BTreeSet::new();
    for r in 0..ROUNDS {
        for w in round(dir.path(), r, &configure) {
            assert!(keys.insert(w.key.clone()), "two writers got {}", w.key);
            let archive = snapshots.join(&w.key);
            let sidecar = fs::read_to_string(format!("{}.checksum", archive.display())).unwrap();
            check_archive(dir.path(), &archive, &sidecar, &w);
        }
    }
    // Nothing else is left: no temp files, no stray sidecars.
    let mut names: Vec<String> = fs::read_dir(snapshots.join("c"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.retain(|n| !n.ends_with(".snapshot") && !n.ends_with(".snapshot.checksum"));
    assert!(names.is_empty(), "left behind: {names:?}");
    assert_eq!(fs::read_dir(snapshots.join(".tmp")).unwrap().count(), 0);
    assert_eq!(keys.len(), WRITERS * ROUNDS);
    assert_collided(&keys);
}

/// Writers sharing a node started together: some of them wanted the same name.
fn assert_collided(keys: &BTreeSet<String>) {
    assert!(
        keys.iter().any(|k| k.ends_with("-1.snapshot")),
        "no two writers wanted one name: {keys:?}"
    );
}

#[test]
fn concurrent_pid1_writers_into_s3_never_collide() {
    let Some(env) = s3_env() else { return };
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique_prefix("concurrent");
    let configure = |cmd: &mut Command| env.apply(cmd, &prefix);
    let mut keys = BTreeSet::new();
    for r in 0..ROUNDS {
        for w in round(dir.path(), r, &configure) {
            assert!(keys.insert(w.key.clone()), "two writers got {}", w.key);
            let local = dir.path().join(format!("{}.download", w.id));
            // `snapshot download` fetches the archive and checks it against its sidecar.
            let mut download = bin(dir.path());
            env.apply(&mut download, &prefix);
            ok(download
                .args(["snapshot", "download", &w.key, "-o"])
                .arg(&local));
            let mut list = bin(dir.path());
            env.apply(&mut list, &prefix);
            let listed: serde_json::Value =
                serde_json::from_str(&ok(list.args(["snapshot", "list", "-o", "json"]))).unwrap();
            let sidecar = listed
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["key"] == w.key.as_str())
                .and_then(|e| e["checksum"].as_str())
                .unwrap_or_default()
                .to_owned();
            check_archive(dir.path(), &local, &sidecar, &w);
        }
    }
    assert_eq!(keys.len(), WRITERS * ROUNDS);
    assert_collided(&keys);
}
