//! An S3 server stopped in the middle of an upload: the put fails with a clear error, keeps
//! trying to abort its multipart upload, and once the server is back nothing is left: no
//! object, no upload in progress. Alone in its binary because it stops the shared server.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use snapshot_operator::storage::s3::{S3Storage, cleanups};
use snapshot_operator::storage::{Reader, Storage};

use common::*;

fn port_of(endpoint: &str) -> String {
    endpoint.rsplit(':').next().unwrap().to_owned()
}

async fn wait_until_up(storage: &S3Storage) {
    for _ in 0..120 {
        if storage.list("").await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("the S3 server did not come back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stopped_mid_upload_leaves_nothing_behind() {
    let Some(env) = s3_env() else { return };
    let restart = std::env::var("SNAPSHOT_OPERATOR_TEST_S3_COMMAND")
        .expect("SNAPSHOT_OPERATOR_TEST_S3_COMMAND: how to restart the test S3 server");
    let storage = S3Storage::connect(&env.config(), format!("{}/", unique_prefix("outage")))
        .await
        .unwrap();
    let data = binary(30 << 20, "outage");
    let (body, open, _) = Gated::new(&data, 12 << 20);
    let body = Reader::stream(body);
    let names = |i: u32| (i == 0).then(|| "c/outage.snapshot".to_string());
    let put_storage = storage.clone();
    let put = tokio::spawn(async move { put_storage.put(&names, body, None).await.map(|_| ()) });
    // The first parts are up and the upload is in progress.
    for _ in 0..100 {
        if !storage.uploads_in_progress().await.unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(storage.uploads_in_progress().await.unwrap().len(), 1);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Stop the server, let the put go on: it fails.
    let pattern = format!("-s3.port={} ", port_of(&env.endpoint));
    assert!(
        Command::new("pkill")
            .args(["-9", "-f", "--", &pattern])
            .status()
            .unwrap()
            .success()
    );
    while Command::new("pgrep")
        .args(["-f", "--", &pattern])
        .status()
        .unwrap()
        .success()
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    open.send(()).unwrap();
    let err = put.await.unwrap().unwrap_err();
    let text = snapshot_operator::format::render_error(&err);
    assert!(
        text.contains(&env.endpoint) && text.contains(&env.bucket),
        "{text}"
    );

    // Bring the server back (it outlives this test; the test script stops it): the pending
    // abort goes through.
    let started = Command::new("sh")
        .args(["-c", &format!("{restart} >/dev/null 2>&1 &")])
        .stdin(Stdio::null())
        .status()
        .unwrap();
    assert!(started.success());
    wait_until_up(&storage).await;
    cleanups().close();
    tokio::time::timeout(Duration::from_secs(120), cleanups().wait())
        .await
        .unwrap();
    assert_eq!(storage.uploads_in_progress().await.unwrap(), vec![]);
    assert!(storage.head("c/outage.snapshot").await.unwrap().is_none());
    assert!(storage.list("").await.unwrap().is_empty());
}
