//! S3's server-side encryption against the real S3 server (SeaweedFS): SSE-S3 and SSE-C on
//! every request on an object (single-part sidecars, multipart archives, head, whole and
//! ranged reads: list, download, restore, the catalog's manifest reads), as the server
//! records it; an SSE-C archive unreadable without its key. SSE-KMS is not tested here:
//! SeaweedFS answers 500 to it without a KMS configured.

mod common;

use std::path::Path;
use std::process::Command;

use base64::Engine;
use snapshot_operator::config::{S3Config, Secret};
use snapshot_operator::storage::Storage;
use snapshot_operator::storage::s3::S3Storage;

use common::*;

const S3: &str = "SNAPSHOT_OPERATOR__STORAGE__SNAPSHOTS_CONFIG__S3_CONFIG";

/// A storage of 12 MiB and a little (three parts of 5 MiB).
fn tree(dir: &Path) -> std::path::PathBuf {
    let src = dir.join("storage");
    make_collection(&src, "products", "p");
    write(
        &src.join("collections/products/big"),
        &binary(12 << 20, "big"),
        0o644,
    );
    src
}

/// The binary on the test server under `prefix`, with these `S3_CONFIG__` settings.
fn cli(env: &S3Env, cwd: &Path, prefix: &str, settings: &[(&str, &str)]) -> Command {
    let mut cmd = bin(cwd);
    env.apply(&mut cmd, prefix);
    for (name, value) in settings {
        cmd.env(format!("{S3}__{name}"), value);
    }
    cmd
}

/// Create, list, download (verified) and restore of `products` with `settings`; returns the
/// archive's key.
fn round_trip(env: &S3Env, cwd: &Path, prefix: &str, settings: &[(&str, &str)]) -> String {
    let src = tree(cwd);
    let created = create_products(cli(env, cwd, prefix, settings), &src);
    let key = created["archive"]["key"].as_str().unwrap().to_owned();
    let name = created["name"].as_str().unwrap();
    let checksum = created["archive"]["checksum"].as_str().unwrap();
    let listed = ok(cli(env, cwd, prefix, settings).args(["snapshot", "list", "-o", "json"]));
    assert!(listed.contains(checksum), "{listed}");
    let mut download = cli(env, cwd, prefix, settings);
    ok(download.args(["snapshot", "download", name, "-o", "dl.snapshot"]));
    let bytes = std::fs::read(cwd.join("dl.snapshot")).unwrap();
    assert_eq!(sha256_hex(&bytes), checksum);
    let target = cwd.join("restored");
    let mut restore = cli(env, cwd, prefix, settings);
    restore.args(["restore", "--snapshot", &format!("{name}:products")]);
    ok(restore.arg("--storage-path").arg(&target));
    assert_eq!(
        subtree(&fingerprint(&target), "collections/products"),
        subtree(&fingerprint(&src), "collections/products")
    );
    key
}

/// What the server says of an object: its `x-amz-server-side-encryption`.
async fn recorded(env: &S3Env, object: &str) -> Option<String> {
    use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .http_client(http)
        .region(Region::new("us-east-1"))
        .endpoint_url(&env.endpoint)
        .force_path_style(true)
        .credentials_provider(Credentials::new(
            &env.access_key,
            &env.secret_key,
            None,
            None,
            "test",
        ))
        .build();
    let client = aws_sdk_s3::Client::from_conf(config);
    let head = client.head_object().bucket(&env.bucket).key(object);
    let out = head.send().await.unwrap();
    out.server_side_encryption().map(|s| s.as_str().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_s3_archives_are_encrypted_by_the_server_and_read_as_any_other() {
    let Some(env) = s3_env() else { return };
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique_prefix("sse-s3");
    let key = tokio::task::block_in_place(|| {
        round_trip(
            &env,
            dir.path(),
            &prefix,
            &[("SERVER_SIDE_ENCRYPTION", "AES256")],
        )
    });
    for object in [key.clone(), format!("{key}.checksum")] {
        let sse = recorded(&env, &format!("{prefix}/{object}")).await;
        assert_eq!(sse.as_deref(), Some("AES256"), "{object}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_c_archives_need_their_key_for_every_read() {
    let Some(env) = s3_env() else { return };
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique_prefix("sse-c");
    let customer = base64::engine::general_purpose::STANDARD.encode(binary(32, "sse-c"));
    let settings = [("SSE_CUSTOMER_KEY", customer.as_str())];
    let key = tokio::task::block_in_place(|| round_trip(&env, dir.path(), &prefix, &settings));

    // Without the key (or with another), nothing of it reads: not the archive, not its
    // sidecar, not the catalog's ranged read of its start.
    let other = base64::engine::general_purpose::STANDARD.encode(binary(32, "other"));
    for wrong in [None, Some(other)] {
        let config = S3Config {
            sse_customer_key: wrong.map(Secret::new),
            ..env.config()
        };
        let storage = S3Storage::connect(&config, format!("{prefix}/"))
            .await
            .unwrap();
        assert!(storage.get(&key).await.is_err());
        assert!(storage.read_start(&key, 1024).await.is_err());
    }
    let config = S3Config {
        sse_customer_key: Some(Secret::new(&customer)),
        ..env.config()
    };
    let storage = S3Storage::connect(&config, format!("{prefix}/"))
        .await
        .unwrap();
    let start = storage.read_start(&key, 1024).await.unwrap();
    assert_eq!(&start[..13], b"snapshot.json");
    assert!(storage.sidecar(&key).await.unwrap().valid().is_some());
}
