//! A running mover's progress reaches its Snapshot's status: the mover runs here for real
//! (300 MiB into the S3 server), and the test plays the kubelet's log endpoint, which the
//! API server calls (over HTTPS, as it calls kubelets) when the controller reads the
//! mover's log.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use snapshot_operator::api::Snapshot;
use snapshot_operator::api::condition::Progress;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{
    Running, TestNamespace, common, finish_job, mover_here, movers_of, pod_running, ready,
};

/// What the log endpoint serves (the mover's standard output so far), and the paths it was
/// asked for.
#[derive(Default)]
struct Logs {
    lines: Mutex<Vec<String>>,
    asked: Mutex<Vec<String>>,
}

/// The answer to a log request `path` (pure): the last `tailLines` lines.
fn tail(lines: &[String], path: &str) -> String {
    let query = path.split_once('?').map_or("", |(_, q)| q);
    let wanted = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("tailLines="))
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(lines.len());
    let from = lines.len().saturating_sub(wanted);
    lines[from..].iter().map(|l| format!("{l}\n")).collect()
}

/// Serves `/containerLogs/...` over TLS (with the API server's own serving certificate: the
/// API server does not verify kubelets' without a CA for them); its port.
async fn serve_logs(logs: Arc<Logs>) -> u16 {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let ca = std::env::var("APISERVER_CA").expect("the test script exports APISERVER_CA");
    let pki = std::path::Path::new(&ca).parent().unwrap().to_owned();
    let certs: Vec<CertificateDer> = CertificateDer::pem_file_iter(pki.join("serving.crt"))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(pki.join("serving.key")).unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, logs) = (acceptor.clone(), logs.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head);
                let path = head.split(' ').nth(1).unwrap_or_default().to_owned();
                let body = tail(&logs.lines.lock().unwrap(), &path);
                logs.asked.lock().unwrap().push(path);
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    port
}

/// A Node whose kubelet is the log endpoint on `port`.
async fn node(client: &Client, name: &str, port: u16) -> Api<Node> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
    let status = json!({"status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": port}}}});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    nodes
}

/// 300 MiB in three files below a Qdrant collection.
fn big_storage(storage: &std::path::Path) {
    common::make_collection(storage, "products", "big");
    let block: Vec<u8> = (0..1 << 20)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    for i in 0..3 {
        let path = storage.join(format!(
            "collections/products/0/segments/big-{i}/vectors.bin"
        ));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut file = std::fs::File::create(path).unwrap();
        for _ in 0..100 {
            std::io::Write::write_all(&mut file, &block).unwrap();
        }
    }
}

/// What the test saw of the Snapshot while its mover ran.
#[derive(Default)]
struct Seen {
    progress: Vec<Progress>,
    messages: Vec<String>,
}

/// Reads the Snapshot `name` every 50 ms until `done`, collecting what its status said of
/// its running mover.
async fn watch_progress(snapshots: &Api<Snapshot>, name: &str, done: &tokio::sync::Notify) -> Seen {
    let mut seen = Seen::default();
    loop {
        let status = snapshots
            .get(name)
            .await
            .unwrap()
            .status
            .unwrap_or_default();
        if let Some(p) = status.archives.first().and_then(|a| a.progress.clone())
            && seen.progress.last() != Some(&p)
        {
            seen.progress.push(p);
        }
        let progressing = status.conditions.iter().find(|c| c.type_ == "Progressing");
        if let Some(c) = progressing.filter(|c| c.status == "True")
            && seen.messages.last() != Some(&c.message)
        {
            seen.messages.push(c.message.clone());
        }
        tokio::select! {
            () = done.notified() => return seen,
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_mover_s_progress_shows_in_the_status() {
    let Some(s3) = common::s3_env() else {
        eprintln!("SKIPPED: the progress scenario needs the test S3 server");
        return;
    };
    let prefix = common::unique_prefix("progress-it");
    let settings = json!({
        "defaultStorage": {"s3": {"bucket": s3.bucket, "endpointUrl": s3.endpoint,
            "prefix": prefix, "forcePathStyle": true}},
        "mover": {"progress": {"intervalMilliseconds": 200, "readsPerSecond": 20}},
    });
    let Some(run) = Running::start_with(settings).await else {
        return;
    };
    let client = &run.client;
    let ns = format!("progress-it-{}", std::process::id());
    let namespace = TestNamespace::with_claims(client, &ns, &["data"]).await;
    let logs = Arc::new(Logs::default());
    let node_name = format!("kubelet-{ns}");
    let nodes = node(client, &node_name, serve_logs(logs.clone()).await).await;

    let snapshots: Api<Snapshot> = Api::namespaced(client.clone(), &ns);
    let snap = serde_json::from_value(json!({
        "apiVersion": "snapshot-operator.dev/v1alpha1", "kind": "Snapshot",
        "metadata": {"name": "big"},
        "spec": {"source": {"persistentVolumeClaim": {"claimName": "data"}},
                 "path": "/qdrant/storage", "collection": "products"}}))
    .unwrap();
    let created = snapshots
        .create(&PostParams::default(), &snap)
        .await
        .unwrap();
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let job = movers_of(&jobs, &created.uid().unwrap(), 1).await.remove(0);
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("volume");
    big_storage(&data.join("qdrant/storage"));
    let (cmd, log) = mover_here(&job, &data, &s3, work.path());
    let mut cmd = common::as_nobody(cmd, work.path());

    // Its log is read from the moment its pod runs.
    let spec = json!({"nodeName": node_name});
    pod_running(client, (&ns, &job, "progress"), spec).await;
    let started = Instant::now();
    let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let done = Arc::new(tokio::sync::Notify::new());
    let (reader_logs, reader_done) = (logs.clone(), done.clone());
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            reader_logs.lock_lines().push(line.unwrap());
        }
        reader_done.notify_one();
    });
    let seen = watch_progress(&snapshots, "big", &done).await;
    reader.join().unwrap();
    assert!(child.wait().unwrap().success());
    let ran = started.elapsed();
    let reads = logs.asked.lock().unwrap().len();
    check_seen(&seen, &logs, &ns, &job);

    let report = std::fs::read_to_string(&log).unwrap();
    finish_job(client, &ns, &job, &report, true).await;
    let status = ready(&snapshots, "big").await;
    assert!(status.archives[0].progress.is_none(), "{status:?}");
    let progressing = status.conditions.iter().find(|c| c.type_ == "Progressing");
    assert_eq!(
        progressing.map(|c| c.status.as_str()),
        Some("False"),
        "{status:?}"
    );

    let per_minute = reads as f64 / ran.as_secs_f64() * 60.0;
    eprintln!(
        "progress: {} distinct values in the status, {reads} log reads in {:.1} s of mover \
         ({per_minute:.0} per mover-minute at a 200 ms interval; the default 10 s: 6 at most)",
        seen.progress.len(),
        ran.as_secs_f64()
    );
    // At most one read per interval (and a first at once).
    assert!(
        reads as f64 <= ran.as_secs_f64() / 0.2 + 2.0,
        "{reads} reads in {ran:?}"
    );
    nodes
        .delete(&node_name, &DeleteParams::default())
        .await
        .unwrap();
    namespace.delete().await;
    run.stop().await;
}

/// The status showed the mover moving: bytes done growing below the end, at a rate, the
/// condition saying so; the log was read at the mover pod's path.
fn check_seen(seen: &Seen, logs: &Logs, ns: &str, job: &Job) {
    let moving: Vec<&Progress> = seen
        .progress
        .iter()
        .filter(|p| p.bytes_done > 0 && p.bytes_done < 300 << 20)
        .collect();
    assert!(moving.len() >= 2, "progress seen: {:?}", seen.progress);
    assert!(
        seen.progress
            .windows(2)
            .all(|w| w[0].bytes_done <= w[1].bytes_done),
        "{:?}",
        seen.progress
    );
    assert!(moving.iter().any(|p| p.bytes_per_second > 0), "{moving:?}");
    assert!(
        seen.messages
            .iter()
            .any(|m| m.starts_with("1 mover: ") && m.ends_with("/s")),
        "{:?}",
        seen.messages
    );
    let path = format!("/containerLogs/{ns}/{}-progress/mover?", job.name_any());
    let asked = logs.asked.lock().unwrap();
    assert!(asked.iter().all(|p| p.starts_with(&path)), "{asked:?}");
}

impl Logs {
    fn lock_lines(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.lines.lock().unwrap()
    }
}
