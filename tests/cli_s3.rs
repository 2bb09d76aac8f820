//! The CLI with S3 storage against a real S3 server (skipped when none is configured): every
//! command works as with local storage, `s3://` restores, upload, interruption, no secrets.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use snapshot_operator::storage::s3::S3Storage;
use snapshot_operator::storage::{Sidecar, Storage};

use common::*;

fn s3_bin(env: &S3Env, cwd: &Path, prefix: &str) -> Command {
    let mut cmd = bin(cwd);
    env.apply(&mut cmd, prefix);
    cmd
}

#[test]
fn every_command_works_on_s3() {
    let Some(env) = s3_env() else { return };
    let prefix = unique_prefix("cli");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("storage");
    make_storage(&src);
    let s3 = |cmd: &[&str]| {
        let mut c = s3_bin(&env, dir.path(), &prefix);
        c.args(cmd);
        c
    };

    let created = create_products(s3(&[]), &src);
    let name = created["name"].as_str().unwrap().to_owned();
    let location = created["archive"]["location"].as_str().unwrap().to_owned();
    assert_eq!(
        location,
        format!("s3://{}/{prefix}/products/{name}", env.bucket)
    );
    let checksum = created["archive"]["checksum"].as_str().unwrap().to_owned();
    let full: serde_json::Value = serde_json::from_str(&ok(s3(&[
        "snapshot", "create", "--node", "n0", "-o", "json",
    ])
    .arg("--storage-path")
    .arg(&src)))
    .unwrap();

    let listed: serde_json::Value =
        serde_json::from_str(&ok(&mut s3(&["snapshot", "list", "-o", "json"]))).unwrap();
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, [full["name"].as_str().unwrap(), name.as_str()]);
    assert_eq!(listed[1]["checksum"], checksum.as_str());

    // Download, verified, equal to what GNU tar reads.
    ok(s3(&["snapshot", "download", &name, "-o", "dl.snapshot"]).current_dir(dir.path()));
    let bytes = fs::read(dir.path().join("dl.snapshot")).unwrap();
    assert_eq!(sha256_hex(&bytes), checksum);
    ok(Command::new("tar")
        .arg("-tf")
        .arg(dir.path().join("dl.snapshot")));

    // Restore by name, from s3:// (renamed), and the full storage.
    let dst = dir.path().join("dst");
    ok(s3(&["restore", "--snapshot", &format!("{name}:products")])
        .arg("--storage-path")
        .arg(&dst));
    ok(
        s3(&["restore", "--snapshot", &format!("{location}:renamed")])
            .arg("--storage-path")
            .arg(&dst),
    );
    let fp = fingerprint(&dst);
    let want = subtree(&fingerprint(&src), "collections/products");
    assert_eq!(subtree(&fp, "collections/products"), want);
    assert_eq!(subtree(&fp, "collections/renamed"), want);
    let full_dst = dir.path().join("full");
    ok(s3(&[
        "restore",
        "--storage-snapshot",
        full["name"].as_str().unwrap(),
    ])
    .arg("--storage-path")
    .arg(&full_dst));
    assert_eq!(fingerprint(&full_dst), fingerprint(&src));
    // s3:// works from local storage too, with the SDK's environment.
    let mut local = bin(dir.path());
    local
        .env("AWS_ENDPOINT_URL", &env.endpoint)
        .env("AWS_ACCESS_KEY_ID", &env.access_key)
        .env("AWS_SECRET_ACCESS_KEY", &env.secret_key)
        .env_remove("AWS_CA_BUNDLE")
        .args(["restore", "--snapshot", &format!("{location}:from-env")])
        .arg("--storage-path")
        .arg(&dst);
    ok(&mut local);
    assert_eq!(subtree(&fingerprint(&dst), "collections/from-env"), want);

    // A wrong checksum changes nothing.
    let before = fingerprint(&dst);
    let err = fails(
        s3(&[
            "restore",
            "--snapshot",
            &format!("{name}:other"),
            "--checksum",
            &"a".repeat(64),
        ])
        .arg("--storage-path")
        .arg(&dst),
    );
    assert!(err.contains("given") || err.contains("checksum"), "{err}");
    assert_eq!(fingerprint(&dst), before);

    // Upload a local archive into S3 (checksum from its sidecar), then restore it by name.
    let local_dir = dir.path().join("local");
    fs::create_dir_all(&local_dir).unwrap();
    let local_created = create(&local_dir, &src, Some("reviews"));
    let local_archive = local_dir.join(archive_path(&local_created));
    let out = ok(s3(&["snapshot", "upload"]).arg(&local_archive));
    assert!(
        out.contains(&format!("s3://{}/{prefix}/reviews/", env.bucket)),
        "{out}"
    );
    let uploaded = local_created["name"].as_str().unwrap();
    ok(
        s3(&["restore", "--snapshot", &format!("{uploaded}:reviews")])
            .arg("--storage-path")
            .arg(&dst),
    );
    assert_eq!(
        subtree(&fingerprint(&dst), "collections/reviews"),
        subtree(&fingerprint(&src), "collections/reviews")
    );

    // Delete: archive and sidecar gone.
    ok(&mut s3(&["snapshot", "delete", &name]));
    let listed: serde_json::Value = serde_json::from_str(&ok(&mut s3(&[
        "snapshot",
        "list",
        "--collection",
        "products",
        "-o",
        "json",
    ])))
    .unwrap();
    assert_eq!(listed, serde_json::json!([]));
    let err = fails(&mut s3(&["snapshot", "download", &name]));
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn credentials_never_show_in_output_logs_or_help() {
    let Some(env) = s3_env() else { return };
    let prefix = unique_prefix("secret");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("storage");
    make_storage(&src);
    let mut runs = Vec::new();
    for args in [
        vec![
            "--log",
            "debug",
            "snapshot",
            "create",
            "--collection",
            "products",
        ],
        vec!["--log", "debug", "snapshot", "list"],
        vec!["snapshot", "--help"],
        vec!["restore", "--help"],
    ] {
        let mut cmd = s3_bin(&env, dir.path(), &prefix);
        cmd.args(&args);
        if args.contains(&"create") {
            cmd.arg("--storage-path").arg(&src);
        }
        runs.push(run(&mut cmd));
    }
    // And an error: wrong credentials.
    let mut wrong = s3_bin(&env, dir.path(), &prefix);
    wrong.env(
        "SNAPSHOT_OPERATOR__STORAGE__SNAPSHOTS_CONFIG__S3_CONFIG__SECRET_KEY",
        "bad-secret-9876",
    );
    let out = run(wrong.args(["--log", "debug", "snapshot", "list"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("check the access key")
            && err.contains(&env.bucket)
            && err.contains(&env.endpoint),
        "{err}"
    );
    assert!(!err.contains("bad-secret-9876"));
    for out in &runs {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for stream in [&out.stdout, &out.stderr] {
            let text = String::from_utf8_lossy(stream);
            assert!(
                !text.contains(&env.secret_key),
                "the secret key was printed:\n{text}"
            );
        }
    }
    // Nothing we write holds it either.
    for entry in fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            assert!(
                !fs::read_to_string(&path)
                    .unwrap_or_default()
                    .contains(&env.secret_key)
            );
        }
    }
}

/// A tree of 192 MiB (several parts), in `dir/storage`.
fn big_tree(dir: &Path) -> std::path::PathBuf {
    let src = dir.join("storage");
    for i in 0..12 {
        write(
            &src.join(format!("collections/big/part-{i}")),
            &binary(16 << 20, &format!("i{i}")),
            0o644,
        );
    }
    src
}

/// Starts `snapshot create` of `src` and returns once its multipart upload is in progress
/// and the name it takes claimed.
async fn start_upload(
    env: &S3Env,
    storage: &S3Storage,
    dir: &Path,
    prefix: &str,
    src: &Path,
) -> std::process::Child {
    let before = storage.uploads_in_progress().await.unwrap().len();
    let mut cmd = s3_bin(env, dir, prefix);
    cmd.args([
        "snapshot",
        "create",
        "--collection",
        "big",
        "--storage-path",
    ])
    .arg(src)
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    for _ in 0..200 {
        let uploads = storage.uploads_in_progress().await.unwrap();
        if uploads.len() > before {
            let (object, _) = uploads.last().unwrap();
            let key = object.strip_prefix(&format!("{prefix}/")).unwrap();
            if storage.object_sidecar(key).await.unwrap() != Sidecar::Missing {
                return child;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the upload never started");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_upload_leaves_no_object_and_no_upload() {
    let Some(env) = s3_env() else { return };
    let prefix = unique_prefix("interrupt");
    let dir = tempfile::tempdir().unwrap();
    let src = big_tree(dir.path());
    let storage = S3Storage::connect(&env.config(), format!("{prefix}/"))
        .await
        .unwrap();
    let child = start_upload(&env, &storage, dir.path(), &prefix, &src).await;
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted by SIGINT"), "{err}");
    assert_eq!(storage.uploads_in_progress().await.unwrap(), vec![]);
    assert!(storage.list("").await.unwrap().is_empty());
}

/// A writer killed outright leaves its multipart upload and the name it claimed; the next
/// put removes both once the upload is older than `abort_incomplete_uploads_after_secs`,
/// and not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_left_by_a_killed_writer_is_aborted_by_a_later_put() {
    let Some(env) = s3_env() else { return };
    let prefix = unique_prefix("killed");
    let dir = tempfile::tempdir().unwrap();
    let src = big_tree(dir.path());
    let small = dir.path().join("small");
    make_collection(&small, "c", "s");
    let storage = S3Storage::connect(&env.config(), format!("{prefix}/"))
        .await
        .unwrap();
    let mut child = start_upload(&env, &storage, dir.path(), &prefix, &src).await;
    child.kill().unwrap();
    child.wait().unwrap();
    let left = storage.uploads_in_progress().await.unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
    // It left the name it claimed too: an empty sidecar, its archive never completed.
    let key = left[0]
        .0
        .strip_prefix(&format!("{prefix}/"))
        .unwrap()
        .to_owned();
    let claim = || async { storage.object_sidecar(&key).await.unwrap() };
    assert_eq!(claim().await, Sidecar::Invalid, "{key}");

    let create = |age: Option<&str>| {
        let mut cmd = s3_bin(&env, dir.path(), &prefix);
        if let Some(age) = age {
            cmd.env(
                "SNAPSHOT_OPERATOR__STORAGE__SNAPSHOTS_CONFIG__S3_CONFIG__ABORT_INCOMPLETE_UPLOADS_AFTER_SECS",
                age,
            );
        }
        ok(cmd
            .args(["snapshot", "create", "--collection", "c", "--storage-path"])
            .arg(&small));
    };
    // Younger than the default age (six hours): it may belong to a live writer.
    create(None);
    assert_eq!(storage.uploads_in_progress().await.unwrap(), left);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(claim().await, Sidecar::Invalid, "kept while it may be live");
    create(Some("2"));
    assert_eq!(storage.uploads_in_progress().await.unwrap(), vec![]);
    assert_eq!(
        claim().await,
        Sidecar::Missing,
        "the claim goes with its upload"
    );
    assert_eq!(storage.list("").await.unwrap().len(), 2);
}

/// Downloads from S3 are paced like http(s) ones: a link too slow for the minimum average
/// rate, or for the deadline, fails the restore (and `snapshot download`), changing nothing.
#[test]
fn slow_s3_downloads_are_cut_by_the_minimum_rate_and_the_deadline() {
    let Some(env) = s3_env() else { return };
    let prefix = unique_prefix("slow");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("storage");
    make_collection(&src, "c", "slow");
    write(
        &src.join("collections/c/bulk"),
        &binary(3 << 20, "slow"),
        0o644,
    );
    let out = ok(s3_bin(&env, dir.path(), &prefix)
        .args([
            "snapshot",
            "create",
            "--collection",
            "c",
            "-o",
            "json",
            "--storage-path",
        ])
        .arg(&src));
    let created: serde_json::Value = serde_json::from_str(&out).unwrap();
    let key = created["archive"]["key"].as_str().unwrap().to_owned();

    // 256 KiB/s: the 3 MiB archive takes twelve seconds.
    let slow = S3Env {
        endpoint: throttled_proxy(&env.endpoint, 256 << 10),
        access_key: env.access_key.clone(),
        secret_key: env.secret_key.clone(),
        bucket: env.bucket.clone(),
    };
    let target = dir.path().join("target");
    let restore = |extra: &[&str]| {
        let mut cmd = s3_bin(&slow, dir.path(), &prefix);
        cmd.args([
            "restore",
            "--snapshot",
            &format!("{key}:c"),
            "--storage-path",
        ])
        .arg(&target)
        .args(["--download-timeout", "1"])
        .args(extra);
        cmd
    };
    let started = std::time::Instant::now();
    let err = fails(&mut restore(&["--min-download-rate", "10000000"]));
    assert!(err.contains("below the minimum average rate"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    let started = std::time::Instant::now();
    let err = fails(&mut restore(&[
        "--min-download-rate",
        "0",
        "--download-deadline",
        "2",
    ]));
    assert!(err.contains("did not finish within 2s"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert!(!target.exists());

    let err = fails(
        s3_bin(&slow, dir.path(), &prefix)
            .args(["snapshot", "download", &key, "-o"])
            .arg(dir.path().join("copy"))
            .args(["--download-deadline", "2", "--min-download-rate", "0"]),
    );
    assert!(err.contains("did not finish within 2s"), "{err}");
    assert!(!dir.path().join("copy").exists());
}

/// The catalog scan of a default storage laid out by namespace: each namespace folder's
/// archives with their manifests read from their first bytes (a manifest longer than the
/// first read too), unreadable archives and folders that are no namespace's left out, and
/// the same answer from what is kept between passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_scan_reads_each_namespace_folders_manifests() {
    use snapshot_operator::catalog::{FIRST_READ, Found, Manifests, scan};
    use snapshot_operator::storage::Reader;
    use std::collections::BTreeMap;
    let Some(env) = s3_env() else { return };
    let base = unique_prefix("catalog");
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small");
    make_collection(&small, "products", "a");
    // Thousands of collections: a manifest longer than the first ranged read.
    let many = dir.path().join("many");
    for i in 0..4000 {
        write(
            &many.join(format!("collections/collection-with-a-long-name-{i:05}/x")),
            b"x",
            0o644,
        );
    }
    for (ns, src, collection) in [
        ("team-a", &small, Some("products")),
        ("team-b", &many, None),
    ] {
        let mut cmd = s3_bin(&env, dir.path(), &format!("{base}/{ns}"));
        cmd.args(["snapshot", "create", "--node", "n0", "--storage-path"])
            .arg(src);
        if let Some(c) = collection {
            cmd.args(["--collection", c]);
        }
        ok(&mut cmd);
    }
    let put = |prefix: String, key: String, data: Vec<u8>| {
        let config = env.config();
        async move {
            let storage = S3Storage::connect(&config, prefix).await.unwrap();
            let data = Reader::stream(std::io::Cursor::new(data));
            storage
                .put(&|i| (i == 0).then(|| key.clone()), data, None)
                .await
                .unwrap();
        }
    };
    let junk = || b"not a tar archive".repeat(100);
    let team_a = format!("{base}/team-a/");
    put(team_a.clone(), "products/junk.snapshot".into(), junk()).await;
    put(
        format!("{base}/Not_A_Namespace/"),
        "x.snapshot".into(),
        junk(),
    )
    .await;

    let root = S3Storage::connect(&env.config(), format!("{base}/"))
        .await
        .unwrap();
    let mut manifests = Manifests::default();
    let first = scan(&root, &mut manifests).await.unwrap();
    assert_eq!(first.keys().collect::<Vec<_>>(), ["team-a", "team-b"]);
    let a = &first["team-a"];
    assert_eq!(a.len(), 1, "the junk archive is left out: {a:?}");
    assert_eq!(a[0].manifest.collection.as_deref(), Some("products"));
    assert_eq!(a[0].manifest.node, "n0");
    assert_eq!(a[0].checksum.as_ref().map(String::len), Some(64));
    assert!(
        a[0].location
            .starts_with(&format!("s3://{}/{base}/team-a/products/", env.bucket))
    );
    let b = &first["team-b"][0];
    assert_eq!(b.manifest.collections.len(), 4000);
    assert!(
        serde_json::to_vec(&b.manifest).unwrap().len() as u64 > FIRST_READ,
        "the manifest is longer than the first read"
    );
    // (Compared whole, but not printed whole: 4000 collection names.)
    let same = |found: BTreeMap<String, Vec<Found>>| found == first;
    assert!(same(scan(&root, &mut manifests).await.unwrap()));

    // A sidecar is read once per archive (it is final before its archive is visible):
    // deleted behind the scan's back, a remembering scan still says what it read, a new one
    // what is there now, and reads it again while there is none.
    let folder = S3Storage::connect(&env.config(), team_a.clone())
        .await
        .unwrap();
    let sidecar = format!("{}.checksum", a[0].key);
    folder.delete_object(&sidecar).await.unwrap();
    assert!(
        same(scan(&root, &mut manifests).await.unwrap()),
        "read again"
    );
    let mut later = Manifests::default();
    let now = scan(&root, &mut later).await.unwrap();
    assert_eq!(now["team-a"][0].checksum, None);
    let sum = a[0].checksum.clone().unwrap();
    folder.put_object(&sidecar, sum.into()).await.unwrap();
    assert!(
        same(scan(&root, &mut later).await.unwrap()),
        "not read again"
    );
}

#[test]
fn prune_applies_the_retention_policy_to_s3_storage() {
    let Some(env) = s3_env() else { return };
    let prefix = unique_prefix("prune");
    let dir = tempfile::tempdir().unwrap();
    let cli = || s3_bin(&env, dir.path(), &prefix);
    prune_keeps_two_days(dir.path(), &cli);
}
