//! Encrypted archives (age) through the binary: stored only as ciphertext whose SHA-256 is
//! the checksum, read back from local storage, S3 (multipart), an http(s) source and by the
//! catalog scan; a wrong, missing or rotated-out key, and changed ciphertext, refused with
//! nothing restored; the age CLI reads them as the archive tar reads.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// A new age key in `dir/<name>.txt`: its public key and the file's path.
fn keygen(dir: &Path, name: &str) -> (String, PathBuf) {
    use age::secrecy::ExposeSecret;
    let identity = age::x25519::Identity::generate();
    let path = dir.join(format!("{name}.txt"));
    let text = format!(
        "# public key: {}\n{}\n",
        identity.to_public(),
        identity.to_string().expose_secret()
    );
    fs::write(&path, text).unwrap();
    (identity.to_public().to_string(), path)
}

fn identity_args(files: &[&Path]) -> Vec<String> {
    files
        .iter()
        .flat_map(|f| ["--identity-file".into(), f.to_string_lossy().into_owned()])
        .collect()
}

const AGE_MAGIC: &[u8] = b"age-encryption.org/v1\n";

#[test]
fn an_encrypted_local_archive_restores_with_its_key_or_a_rotated_list_and_only_so() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let src = cwd.join("storage");
    make_storage(&src);
    let (old_public, old_key) = keygen(cwd, "old");
    let (new_public, new_key) = keygen(cwd, "new");
    let (_, stranger) = keygen(cwd, "stranger");

    let mut create = create_cmd(cwd, &src, Some("products"));
    let created: serde_json::Value =
        serde_json::from_str(&ok(create.args(["--recipient", &old_public]))).unwrap();
    assert_eq!(created["encrypted"], true);
    let archive = archive_path(&created);
    let stored = fs::read(cwd.join(&archive)).unwrap();
    assert!(stored.starts_with(AGE_MAGIC));
    assert_eq!(
        created["archive"]["checksum"].as_str().unwrap(),
        sha256_hex(&stored),
        "the checksum is over the bytes stored"
    );
    // Nothing of the plaintext reaches storage: no tar header, no file name.
    let needle = b"segments";
    assert!(!stored.windows(needle.len()).any(|w| w == needle));

    // Uploaded elsewhere as it is: its collection read from it with the key, or refused.
    let elsewhere = cwd.join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    let upload = || {
        let mut cmd = bin(&elsewhere);
        cmd.args(["snapshot", "upload"]).arg(cwd.join(&archive));
        cmd
    };
    let err = fails(&mut upload());
    assert!(err.contains("the archive is encrypted (age)"), "{err}");
    ok(upload().args(identity_args(&[&old_key])));
    let uploaded = elsewhere
        .join("snapshots/products")
        .join(archive.file_name().unwrap());
    assert_eq!(
        fs::read(uploaded).unwrap(),
        stored,
        "stored as it was, encrypted"
    );

    // After a rotation: new archives go to the new key; both keys read.
    let mut create = create_cmd(cwd, &src, Some("products"));
    let recipients = cwd.join("recipients.txt");
    fs::write(&recipients, format!("# rotated\n{new_public}\n")).unwrap();
    let newer: serde_json::Value =
        serde_json::from_str(&ok(create.arg("--recipients-file").arg(&recipients))).unwrap();
    let want = subtree(&fingerprint(&src), "collections/products");
    for (i, made) in [&created, &newer].into_iter().enumerate() {
        let target = cwd.join(format!("restored-{i}"));
        let location = format!("{}:products", archive_path(made).display());
        let mut restore = restore_as_nobody(cwd, &target, &["--snapshot", &location]);
        ok(restore.args(identity_args(&[&new_key, &old_key])));
        let fp = fingerprint(&target);
        assert_eq!(subtree(&fp, "collections/products"), want);
    }

    // Refused before anything is staged: no key, a stranger's, the new key alone for the
    // old archive.
    let location = format!("{}:products", archive.display());
    let target = cwd.join("refused");
    let cases: [(&[&Path], &str); 3] = [
        (&[], "the archive is encrypted (age)"),
        (&[&stranger], "none of the identities given reads"),
        (&[&new_key], "none of the identities given reads"),
    ];
    for (keys, says) in cases {
        let mut restore = restore_as_nobody(cwd, &target, &["--snapshot", &location]);
        let err = fails(restore.args(identity_args(keys)));
        assert!(err.contains(says), "{keys:?}: {err}");
        assert!(!target.exists(), "nothing made for a refused restore");
    }
}

#[test]
fn changed_ciphertext_with_a_matching_checksum_restores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let src = cwd.join("storage");
    make_collection(&src, "products", "p");
    write(
        &src.join("collections/products/big"),
        &binary(3 << 20, "b"),
        0o644,
    );
    let (public, key) = keygen(cwd, "key");
    let mut create = create_cmd(cwd, &src, Some("products"));
    let created: serde_json::Value =
        serde_json::from_str(&ok(create.args(["--recipient", &public]))).unwrap();
    let archive = cwd.join(archive_path(&created));
    let mut bytes = fs::read(&archive).unwrap();
    // One bit of the last chunk: detected only once the rest was staged.
    let at = bytes.len() - 100;
    bytes[at] ^= 0x10;
    fs::write(&archive, &bytes).unwrap();
    let sidecar = PathBuf::from(format!("{}.checksum", archive.display()));
    fs::write(&sidecar, sha256_hex(&bytes)).unwrap();
    let target = cwd.join("target");
    write(&target.join("collections/products/mine"), b"kept", 0o644);
    let before = fingerprint(&target);
    let location = format!("{}:products", archive.display());
    let mut restore = restore_as_nobody(cwd, &target, &["--snapshot", &location]);
    let err = fails(
        restore
            .args(["--priority", "snapshot"])
            .args(identity_args(&[&key])),
    );
    assert!(err.contains("does not authenticate"), "{err}");
    assert_eq!(fingerprint(&target), before, "the target is as it was");
}

#[test]
fn encrypted_archives_go_through_s3_multipart_an_http_source_and_the_age_cli() {
    let Some(env) = s3_env() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let src = cwd.join("storage");
    make_collection(&src, "products", "p");
    // 24 MiB: five parts of 5 MiB.
    for i in 0..3 {
        write(
            &src.join(format!("collections/products/part-{i}")),
            &binary(8 << 20, &format!("{i}")),
            0o644,
        );
    }
    let (public, key) = keygen(cwd, "key");
    let prefix = unique_prefix("encrypted");
    let s3 = || {
        let mut cmd = bin(cwd);
        env.apply(&mut cmd, &prefix);
        cmd
    };
    // The recipients from the environment, as movers take them.
    let mut create = s3();
    create.env(
        "SNAPSHOT_OPERATOR_AGE_RECIPIENTS",
        format!("# ours\n{public}\n"),
    );
    let created = create_products(create, &src);
    let name = created["name"].as_str().unwrap();
    let checksum = created["archive"]["checksum"].as_str().unwrap();
    assert!(created["archive"]["size"].as_u64().unwrap() > 20 << 20);

    // Downloaded as stored (verified), then decrypted by the same command.
    ok(s3().args(["snapshot", "download", name, "-o", "stored.age"]));
    let stored = fs::read(cwd.join("stored.age")).unwrap();
    assert!(stored.starts_with(AGE_MAGIC));
    assert_eq!(sha256_hex(&stored), checksum);
    let mut download = s3();
    download.args(["snapshot", "download", name, "-o", "plain.snapshot"]);
    ok(download.args(identity_args(&[&key])));
    ok(Command::new("tar")
        .arg("-tf")
        .arg(cwd.join("plain.snapshot")));

    // The age CLI reads it as the archive the decrypting download wrote.
    match Command::new("age").arg("--version").output() {
        Ok(_) => {
            let out = Command::new("age")
                .args(["-d", "-i"])
                .arg(&key)
                .arg(cwd.join("stored.age"))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(out.stdout, fs::read(cwd.join("plain.snapshot")).unwrap());
        }
        Err(_) => eprintln!("SKIPPED: the age CLI is not installed (its check of the format)"),
    }

    // Restored from s3:// and from an http source, each verified against the checksum.
    let want = subtree(&fingerprint(&src), "collections/products");
    let server = serve(stored, false);
    let sources = [
        format!("s3://{}/{prefix}/products/{name}", env.bucket),
        format!("{}/good.snapshot", server.base),
    ];
    for (i, from) in sources.iter().enumerate() {
        let target = cwd.join(format!("restored-{i}"));
        let mut restore = s3();
        restore.args(["restore", "--snapshot", &format!("{from}:products")]);
        restore
            .args(["--checksum", checksum, "--storage-path"])
            .arg(&target);
        ok(restore.args(identity_args(&[&key])));
        assert_eq!(
            subtree(&fingerprint(&target), "collections/products"),
            want,
            "{from}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_scan_reads_encrypted_manifests_with_the_operator_s_identities() {
    use snapshot_operator::catalog::{Manifests, scan};
    use snapshot_operator::crypt::Identities;
    use snapshot_operator::storage::s3::S3Storage;
    let Some(env) = s3_env() else { return };
    let base = unique_prefix("catalog-encrypted");
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let src = cwd.join("storage");
    make_collection(&src, "products", "p");
    let (public, key) = keygen(cwd, "key");
    let mut create = bin(cwd);
    env.apply(&mut create, &format!("{base}/team-a"));
    create.env("SNAPSHOT_OPERATOR_AGE_RECIPIENTS", &public);
    create_products(create, &src);

    let root = S3Storage::connect(&env.config(), format!("{base}/"))
        .await
        .unwrap();
    let locked = scan(&root, &mut Manifests::default()).await.unwrap();
    assert!(locked["team-a"].is_empty(), "unreadable without a key");
    let ids = Identities::parse("key", &fs::read_to_string(&key).unwrap()).unwrap();
    let read = scan(&root, &mut Manifests::reading_with(ids))
        .await
        .unwrap();
    let found = &read["team-a"];
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].manifest.collection.as_deref(), Some("products"));
    assert_eq!(found[0].manifest.node, "n0");
}
