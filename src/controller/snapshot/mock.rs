//! Reconciliations against a mock API server: every request asserted.

use super::*;
use crate::api::snapshot::{CopyMethod, DeletionPolicy};
use crate::controller::FINALIZER;
use crate::controller::cluster::Cluster;
use crate::controller::config::OperatorConfig;
use crate::controller::mover;
use crate::controller::testing::{
    Expect, Fixture, conflict, deleted, event, failed_report, list, mover_job, mover_pod, movers,
    not_found, scripted, scripted_in, statefulset, stored_report, unowned, workload_pod,
};
use k8s_openapi::api::batch::v1::Job;
use serde_json::{Value, json};
use std::sync::Arc;

const SNAPS: &str = "/apis/snapshot-operator.dev/v1alpha1/namespaces/ns/snapshots/s";
const JOBS: &str = "/apis/batch/v1/namespaces/ns/jobs";
const PODS: &str = "/api/v1/namespaces/ns/pods";
const STS: &str = "/apis/apps/v1/namespaces/ns/statefulsets/qdrant";

/// The object as the API server returns it after a write.
fn stored() -> Value {
    serde_json::to_value(Snapshot::test().finalized()).unwrap()
}

/// The Snapshot `s` of these tests, built up with the [`Fixture`] steps:
/// `Snapshot::test().finalized().with_status(..).deleting()`.
impl Snapshot {
    fn test() -> Self {
        serde_json::from_value(json!({
            "apiVersion": "snapshot-operator.dev/v1alpha1",
            "kind": "Snapshot",
            "metadata": {"name": "s", "namespace": "ns", "uid": "uid-1", "generation": 1, "resourceVersion": "7"},
            "spec": {
                "source": {"statefulSet": {"name": "qdrant", "volumeClaimTemplate": "data"}},
                "path": "/qdrant/storage",
                "collection": "products",
                "storage": {"local": {"persistentVolumeClaim": {"claimName": "backups"}, "path": "/"}},
            },
        }))
        .unwrap()
    }

    fn copying(mut self, method: CopyMethod) -> Self {
        self.spec.copy_method = method;
        self
    }
}

fn job(node: &str, condition: Option<&str>) -> Job {
    mover_job("snap", ("s", "uid-1"), node, condition)
}

/// The job of `node`, finished, with one pod that reported `message`.
fn finished(node: &str, condition: &str, message: &str) -> (Job, Pod) {
    let job = job(node, Some(condition));
    let exit = if condition == "Complete" { 0 } else { 1 };
    let pod = mover_pod(&job, exit, message, 4);
    (job, pod)
}

fn running_archives() -> Value {
    json!({"phase": "Running", "observedGeneration": 1,
        "storage": {"local": {"persistentVolumeClaim": {"claimName": "backups"}, "path": "/"}},
        "archives": [
            {"node": "qdrant-0", "claim": "data-qdrant-0", "phase": "Running"},
            {"node": "qdrant-1", "claim": "data-qdrant-1", "phase": "Running"}]})
}

async fn reconcile_with(
    snap: Snapshot,
    (config, cluster): (OperatorConfig, Cluster),
    script: Vec<Expect>,
) -> (Result<Action, Error>, String) {
    scripted(config, cluster, script, |ctx| {
        super::super::reconcile(Arc::new(snap), ctx)
    })
    .await
}

/// One pass over the Snapshot with both movers running, as the status says.
async fn over_running_archives(cluster: Cluster, script: Vec<Expect>) -> Result<Action, Error> {
    let snap = Snapshot::test().finalized().with_status(running_archives());
    reconcile_with(snap, (OperatorConfig::default(), cluster), script)
        .await
        .0
}

fn nothing() -> (OperatorConfig, Cluster) {
    (OperatorConfig::default(), movers(vec![], vec![]))
}

#[tokio::test]
async fn no_mover_ever_runs_for_an_imported_snapshot() {
    // Created by the catalog import, its status not written yet: nothing to do here.
    let mut snap = Snapshot::test().finalized();
    snap.labels_mut()
        .insert(crate::api::snapshot::IMPORTED.into(), "true".into());
    snap.annotations_mut()
        .insert(crate::api::snapshot::IMPORTED_UID.into(), "uid-0".into());
    let (action, _) = reconcile_with(snap, nothing(), vec![]).await;
    assert_eq!(action.unwrap(), Action::await_change());
}

#[tokio::test]
async fn a_new_snapshot_gets_the_finalizer_first() {
    let script = vec![Expect::new("PATCH", SNAPS, stored()).check(|body| {
        assert!(body.to_string().contains(FINALIZER), "{body}");
    })];
    let (action, _) = reconcile_with(Snapshot::test(), nothing(), script).await;
    assert_eq!(action.unwrap(), Action::await_change());
}

#[tokio::test]
async fn one_mover_per_pod_pinned_to_the_node_of_its_claim_then_running_status() {
    let script = vec![
        Expect::new("GET", STS, statefulset(2)),
        Expect::new("GET", PODS, list("Pod", vec![workload_pod(0, "worker-a")])),
        Expect::new("GET", STS, statefulset(2)),
        Expect::new("PATCH", format!("{JOBS}/{}", mover::job_name("snap", "s", "qdrant-0")), Value::Null).check(|job| {
            let pod = &job["spec"]["template"]["spec"];
            assert_eq!(pod["containers"][0]["args"], json!(["mover", "snapshot", "--storage-path", "/data/qdrant/storage", "--volume", "/data", "--node", "qdrant-0", "--collection", "products",
                "--identity", r#"{"namespace":"ns","name":"s","uid":"uid-1","index":0,"nodes":2,"source":"statefulSet/qdrant","volumeClaimTemplate":"data","claim":"data-qdrant-0","path":"/qdrant/storage"}"#]));
            assert_eq!(pod["volumes"][0]["persistentVolumeClaim"], json!({"claimName": "data-qdrant-0", "readOnly": true}));
            assert_eq!(pod["volumes"][1]["persistentVolumeClaim"]["claimName"], "backups");
            assert_eq!(pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]["matchFields"][0]["values"], json!(["worker-a"]));
            assert_eq!(pod["automountServiceAccountToken"], false);
            // Encrypted to the Secret's recipients: the public keys alone.
            let env = pod["containers"][0]["env"].to_string();
            let recipients = r#"{"name":"SNAPSHOT_OPERATOR_AGE_RECIPIENTS","valueFrom":{"secretKeyRef":{"key":"recipients","name":"age","optional":false}}}"#;
            assert!(env.contains(recipients), "{env}");
            assert!(!env.contains("AGE_IDENTITIES"), "{env}");
            assert_eq!(job["metadata"]["ownerReferences"][0]["uid"], "uid-1");
            assert_eq!(job["metadata"]["ownerReferences"][0]["controller"], true);
        }),
        Expect::new("PATCH", format!("{JOBS}/{}", mover::job_name("snap", "s", "qdrant-1")), Value::Null).check(|job| {
            let pod = &job["spec"]["template"]["spec"];
            assert_eq!(pod["volumes"][0]["persistentVolumeClaim"]["claimName"], "data-qdrant-1");
            assert!(pod.get("affinity").is_none_or(Value::is_null), "qdrant-1 has no pod: no pinning");
        }),
        Expect::new("PATCH", format!("{SNAPS}/status"), stored()).check(|body| {
            assert_eq!(body["kind"], "Snapshot");
            assert_eq!(body["metadata"]["resourceVersion"], "7", "conditional on the version read");
            let status = &body["status"];
            assert_eq!(status["phase"], "Running");
            assert_eq!(status["nodes"], 2);
            assert_eq!(status["archives"][0]["phase"], "Running");
            assert_eq!(status["archives"][1]["claim"], "data-qdrant-1");
            assert_eq!(status["conditions"][0]["reason"], "Running");
            assert_eq!(status["conditions"][0]["status"], "False");
            assert!(status["startTime"].is_string());
        }),
        event("Running"),
    ];
    let mut snap = Snapshot::test().finalized();
    snap.spec.encryption = Some(crate::api::snapshot::Encryption {
        secret_name: "age".into(),
    });
    let (action, _) = reconcile_with(snap, nothing(), script).await;
    assert_eq!(action.unwrap(), running_recheck());
}

#[tokio::test]
async fn finished_movers_fill_the_archives_and_make_it_ready_once() {
    let report0 = &stored_report(
        "products/products-qdrant-0-2026-11-25-10-00-00.snapshot",
        1024,
        Some("aaaa"),
    );
    let report1 = &stored_report(
        "products/products-qdrant-1-2026-11-25-10-00-00.snapshot",
        2048,
        Some("bbbb"),
    );
    let (job0, pod0) = finished("qdrant-0", "Complete", report0);
    let (job1, pod1) = finished("qdrant-1", "Complete", report1);
    // An earlier attempt of qdrant-1 failed, and finished later than the retry: the retry
    // reports.
    let failed_try = mover_pod(&job1, 1, "connection reset", 5);
    let cluster = movers(vec![job0, job1], vec![pod0, pod1, failed_try]);
    let written = Arc::new(std::sync::Mutex::new(Value::Null));
    let keep = written.clone();
    let script = vec![
        Expect::new("PATCH", format!("{SNAPS}/status"), stored()).check(move |body| {
            let status = &body["status"];
            assert_eq!(status["phase"], "Succeeded");
            assert_eq!(status["conditions"][0]["type"], "Ready");
            assert_eq!(status["conditions"][0]["status"], "True");
            assert_eq!(status["size"], "3.0 KiB");
            let a = &status["archives"][1];
            assert_eq!(a["phase"], "Succeeded");
            assert_eq!(
                a["location"],
                "pvc://backups/products/products-qdrant-1-2026-11-25-10-00-00.snapshot"
            );
            assert_eq!(a["checksum"], "bbbb");
            assert_eq!(a["size"], 2048);
            assert!(status["completionTime"].is_string());
            *keep.lock().unwrap() = status.clone();
        }),
        event("Succeeded"),
    ];
    let config = || (OperatorConfig::default(), cluster.clone());
    let (action, metrics) = reconcile_with(
        Snapshot::test().finalized().with_status(running_archives()),
        config(),
        script,
    )
    .await;
    assert_eq!(action.unwrap(), Action::await_change());
    assert!(
        metrics.contains("snapshot_operator_archived_bytes_total 3072"),
        "{metrics}"
    );
    let durations = r#"snapshot_operator_mover_duration_seconds_count{operation="snapshot"} 2"#;
    assert!(metrics.contains(durations), "{metrics}");

    // A second pass that read the same, now outdated, status: its write is refused and
    // nothing is counted again.
    let script = vec![Expect::new("PATCH", format!("{SNAPS}/status"), conflict()).status(409)];
    let (result, metrics) = reconcile_with(
        Snapshot::test().finalized().with_status(running_archives()),
        config(),
        script,
    )
    .await;
    assert!(matches!(result.unwrap_err().inner(), Error::Stale));
    assert!(
        metrics.contains("snapshot_operator_archived_bytes_total 0\n"),
        "{metrics}"
    );

    // A pass that reads the recorded results removes the Jobs and writes nothing.
    let recorded = written.lock().unwrap().clone();
    let script = [job("qdrant-0", None), job("qdrant-1", None)]
        .iter()
        .map(|j| Expect::new("DELETE", format!("{JOBS}/{}", j.name_any()), deleted()))
        .collect();
    let (action, _) = reconcile_with(
        Snapshot::test().finalized().with_status(recorded),
        config(),
        script,
    )
    .await;
    assert_eq!(action.unwrap(), Action::await_change());
}

#[tokio::test]
async fn a_failed_mover_fails_the_snapshot_with_its_reason() {
    let (job0, pod0) = finished(
        "qdrant-0",
        "Complete",
        &stored_report("products/a.snapshot", 1, None),
    );
    let (job1, pod1) = finished(
        "qdrant-1",
        "Failed",
        &failed_report(
            "collection \"products\" not found: /data/qdrant/storage/collections/products is not a directory",
        ),
    );
    let script = vec![
        Expect::new("PATCH", format!("{SNAPS}/status"), stored()).check(|body| {
            let status = &body["status"];
            assert_eq!(status["phase"], "Failed");
            assert_eq!(status["conditions"][0]["reason"], "Failed");
            let message = status["conditions"][0]["message"].as_str().unwrap();
            assert!(
                message.starts_with("qdrant-1: collection \"products\" not found"),
                "{message}"
            );
            assert_eq!(status["archives"][0]["phase"], "Succeeded");
            assert_eq!(status["archives"][1]["phase"], "Failed");
        }),
        event("Failed"),
    ];
    let cluster = movers(vec![job0, job1], vec![pod0, pod1]);
    over_running_archives(cluster, script).await.unwrap();
}

#[tokio::test]
async fn a_report_from_a_pod_the_job_does_not_own_is_ignored() {
    // Any pod in the namespace can carry the Job's labels and a forged report (here one
    // that would make a later delete remove another Snapshot's archive).
    let job0 = job("qdrant-0", Some("Complete"));
    let forged = unowned(mover_pod(
        &job0,
        0,
        &stored_report("other/x.snapshot", 1, None),
        1,
    ));
    let script = vec![
        // Not in the store: the Job's pods are read from the API server, the same check
        // applies.
        Expect::new(
            "GET",
            format!("{PODS}?&labelSelector=job-name%3D{}", job0.name_any()),
            list("Pod", vec![serde_json::to_value(&forged).unwrap()]),
        ),
        Expect::new("PATCH", format!("{SNAPS}/status"), stored()).check(|body| {
            let a = &body["status"]["archives"][0];
            assert_eq!(a["phase"], "Failed");
            assert_eq!(
                a["message"],
                "the mover succeeded but its report is missing"
            );
            assert!(a.get("key").is_none_or(Value::is_null), "{a}");
        }),
    ];
    let cluster = movers(
        vec![job0.clone(), job("qdrant-1", None)],
        vec![forged.clone()],
    );
    over_running_archives(cluster, script).await.unwrap();
}

#[tokio::test]
async fn a_mover_that_never_starts_fails_its_node_with_the_reason() {
    // Created days ago, its pod still waits for a Secret.
    let mut stuck = job("qdrant-0", None);
    stuck.metadata.creation_timestamp = Some(Time("2026-11-25T10:00:00Z".parse().unwrap()));
    let waiting: Pod = serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "ns",
        "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": stuck.name_any(),
            "uid": stuck.uid().unwrap(), "controller": true}]},
        "status": {"phase": "Pending", "containerStatuses": [{"name": "mover", "image": "x", "imageID": "",
            "ready": false, "restartCount": 0, "state": {"waiting": {"reason": "CreateContainerConfigError",
            "message": "secret \"creds\" not found"}}}]}}))
    .unwrap();
    let script = vec![
        Expect::new("PATCH", format!("{SNAPS}/status"), stored()).check(|body| {
            let a = &body["status"]["archives"][0];
            assert_eq!(a["phase"], "Failed");
            let message = a["message"].as_str().unwrap();
            assert!(message.contains("did not start within 600s"), "{message}");
            assert!(message.contains("secret \"creds\" not found"), "{message}");
        }),
    ];
    let cluster = movers(vec![stuck, job("qdrant-1", None)], vec![waiting]);
    over_running_archives(cluster, script).await.unwrap();
}

#[tokio::test]
async fn requests_do_not_grow_with_unrelated_pods_and_jobs() {
    // Hundreds of pods and Jobs elsewhere, some carrying the operator's labels: a pass
    // over a running Snapshot makes one request (its status), whatever their number.
    let mut jobs: Vec<Job> = (0..300)
        .map(|i| {
            mover_job(
                "snap",
                (&format!("other-{i}"), &format!("uid-o{i}")),
                "qdrant-0",
                None,
            )
        })
        .collect();
    jobs.push(job("qdrant-0", None));
    jobs.push(job("qdrant-1", None));
    let pods = jobs[..300]
        .iter()
        .map(|j| mover_pod(j, 0, "{}", 1))
        .collect();
    let script = vec![
        Expect::new("PATCH", format!("{SNAPS}/status"), stored()).check(|body| {
            assert_eq!(body["status"]["phase"], "Running");
        }),
    ];
    let mut status = running_archives();
    status["conditions"] = json!([{"type": "Ready", "status": "False", "reason": "Pending", "message": "", "lastTransitionTime": "2026-11-25T10:00:00Z"}]);
    let (result, _) = reconcile_with(
        Snapshot::test().finalized().with_status(status),
        (OperatorConfig::default(), movers(jobs, pods)),
        script,
    )
    .await;
    assert_eq!(result.unwrap(), running_recheck());
}

/// The mover of `node` running on the Kubernetes node `worker`.
fn running_pod(node: &str) -> Pod {
    let job = job(node, None);
    serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("{}-x1", job.name_any()), "namespace": "ns", "uid": format!("pod-{node}"),
            "labels": {"job-name": job.name_any()},
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job",
                "name": job.name_any(), "uid": job.uid().unwrap(), "controller": true}]},
        "spec": {"nodeName": "worker", "containers": []}, "status": {"phase": "Running"}}))
    .unwrap()
}

#[tokio::test]
async fn a_running_mover_s_progress_is_read_from_its_log_into_the_status() {
    let pod = running_pod("qdrant-0");
    let line = |done: u64, rate: u64| {
        let line = crate::protocol::ProgressLine {
            bytes_done: done << 20,
            bytes_total: None,
            bytes_per_second: rate << 20,
        };
        line.to_line()
    };
    let log = format!(
        "{}\n{}\n2026-12-07T03:00:00Z WARN a line of its own\n",
        line(100, 90),
        line(300, 100)
    );
    let script = vec![
        Expect::new(
            "GET",
            format!(
                "{PODS}/{}/log?&container=mover&limitBytes=4096&tailLines=10",
                pod.name_any()
            ),
            Value::String(log),
        ),
        Expect::new("PATCH", format!("{SNAPS}/status"), stored()).check(|body| {
            let status = &body["status"];
            assert_eq!(
                status["archives"][0]["progress"],
                json!({"bytesDone": 300 << 20, "bytesPerSecond": 100 << 20})
            );
            // Its mover has no pod on a node yet: nothing to read.
            assert!(status["archives"][1].get("progress").is_none(), "{status}");
            let progressing = &status["conditions"][1];
            assert_eq!(progressing["type"], "Progressing");
            assert_eq!(progressing["status"], "True");
            assert_eq!(progressing["reason"], "MoversRunning");
            assert_eq!(progressing["message"], "2 movers: 300.0 MiB at 100.0 MiB/s");
        }),
    ];
    let cluster = movers(
        vec![job("qdrant-0", None), job("qdrant-1", None)],
        vec![pod],
    );
    let snap = Snapshot::test().finalized().with_status(running_archives());
    let (result, metrics) =
        reconcile_with(snap, (OperatorConfig::default(), cluster), script).await;
    assert_eq!(result.unwrap(), running_recheck());
    assert!(
        metrics.contains("snapshot_operator_progress_reads_total{result=\"read\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_log_that_cannot_be_read_leaves_the_progress_as_it_was() {
    let pod = running_pod("qdrant-0");
    let mut status = running_archives();
    let before = json!({"bytesDone": 7, "bytesTotal": 70, "bytesPerSecond": 1});
    status["archives"][0]["progress"] = before.clone();
    let script = vec![
        Expect::new("GET", format!("{PODS}/{}/log", pod.name_any()), not_found()).status(404),
        Expect::new("PATCH", format!("{SNAPS}/status"), stored()).check(move |body| {
            let status = &body["status"];
            assert_eq!(status["archives"][0]["progress"], before);
            assert_eq!(status["conditions"][1]["message"], "2 movers: 7 B at 1 B/s");
        }),
    ];
    let cluster = movers(
        vec![job("qdrant-0", None), job("qdrant-1", None)],
        vec![pod],
    );
    let snap = Snapshot::test().finalized().with_status(status);
    let (result, metrics) =
        reconcile_with(snap, (OperatorConfig::default(), cluster), script).await;
    assert_eq!(result.unwrap(), running_recheck());
    assert!(
        metrics.contains("snapshot_operator_progress_reads_total{result=\"failed\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_invalid_spec_is_flagged_without_jobs() {
    let mut snap = Snapshot::test().finalized();
    snap.spec.source.persistent_volume_claim = Some(crate::api::snapshot::ClaimRef {
        claim_name: "x".into(),
    });
    let script = vec![
        Expect::new("PATCH", format!("{SNAPS}/status"), stored()).check(|body| {
            assert_eq!(body["status"]["phase"], "Failed");
            assert_eq!(body["status"]["conditions"][0]["reason"], "InvalidSpec");
            assert!(
                body["status"]["conditions"][0]["message"]
                    .as_str()
                    .unwrap()
                    .contains("exactly one")
            );
        }),
        event("InvalidSpec"),
    ];
    let (action, metrics) = reconcile_with(snap, nothing(), script).await;
    assert_eq!(action.unwrap(), Action::await_change(), "no requeue loop");
    assert!(
        metrics.contains(
            r#"snapshot_operator_reconcile_failures_total{resource="snapshot",reason="InvalidSpec"} 1"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn its_own_storage_only_at_an_allowed_endpoint() {
    // A Secret the Snapshot names would go to this endpoint: refused, no mover.
    let mut snap = Snapshot::test().finalized();
    snap.spec.storage = serde_json::from_value(json!({"s3": {"bucket": "b",
        "endpointUrl": "https://collector.example", "credentialsSecret": {"name": "creds"}}}))
    .unwrap();
    let script = vec![
        Expect::new("PATCH", format!("{SNAPS}/status"), stored()).check(|body| {
            let condition = &body["status"]["conditions"][0];
            assert_eq!(condition["reason"], "InvalidSpec");
            let message = condition["message"].as_str().unwrap();
            assert!(message.contains("https://collector.example"), "{message}");
        }),
        event("InvalidSpec"),
    ];
    let (result, _) = reconcile_with(snap, nothing(), script).await;
    assert_eq!(result.unwrap(), Action::await_change());
}

#[tokio::test]
async fn root_movers_only_where_the_configuration_allows_them() {
    let mut snap = Snapshot::test().finalized();
    snap.spec.mover_security_context = serde_json::from_value(json!({"runAsUser": 0})).unwrap();
    let script = vec![
        Expect::new("PATCH", format!("{SNAPS}/status"), stored()).check(|body| {
            let message = body["status"]["conditions"][0]["message"].as_str().unwrap();
            assert!(message.contains("mover.allowRoot"), "{message}");
        }),
        event("InvalidSpec"),
    ];
    let (result, _) = reconcile_with(snap.clone(), nothing(), script).await;
    assert_eq!(result.unwrap(), Action::await_change());
    // Allowed: the movers run as root, as asked, without reading the workload.
    let mut config = OperatorConfig::default();
    config.mover.allow_root = true;
    let script = vec![
        Expect::new("GET", STS, statefulset(1)),
        Expect::new("GET", PODS, list("Pod", vec![])),
        Expect::new(
            "PATCH",
            format!("{JOBS}/{}", mover::job_name("snap", "s", "qdrant-0")),
            Value::Null,
        )
        .check(|job| {
            let pod = &job["spec"]["template"]["spec"];
            assert_eq!(pod["securityContext"]["runAsUser"], 0);
            assert_eq!(pod["securityContext"]["runAsNonRoot"], false);
            assert_eq!(
                pod["containers"][0]["securityContext"]["runAsNonRoot"],
                false
            );
        }),
        Expect::new("PATCH", format!("{SNAPS}/status"), stored()),
        event("Running"),
    ];
    let cluster = movers(vec![], vec![]);
    let (result, _) = reconcile_with(snap, (config, cluster), script).await;
    result.unwrap();
}

#[tokio::test]
async fn an_unknown_statefulset_is_an_invalid_spec() {
    let script = vec![
        Expect::new("GET", STS, not_found()).status(404),
        Expect::new("PATCH", format!("{SNAPS}/status"), stored()).check(|body| {
            assert_eq!(body["status"]["conditions"][0]["reason"], "InvalidSpec");
            assert!(
                body["status"]["conditions"][0]["message"]
                    .as_str()
                    .unwrap()
                    .contains("StatefulSet qdrant not found")
            );
        }),
        event("InvalidSpec"),
    ];
    let (result, _) = reconcile_with(Snapshot::test().finalized(), nothing(), script).await;
    result.unwrap();
}

/// One mover slot in all, held by a running mover of another Snapshot; `also`: more
/// Jobs in the store.
fn one_slot_held(also: Vec<Job>) -> (OperatorConfig, Cluster) {
    one_slot_held_with(also, vec![])
}

/// [`one_slot_held`], the store holding `pods` too.
fn one_slot_held_with(also: Vec<Job>, pods: Vec<Pod>) -> (OperatorConfig, Cluster) {
    let config = OperatorConfig {
        max_concurrent_movers: 1,
        ..OperatorConfig::default()
    };
    let other = serde_json::from_value::<Snapshot>(
        json!({"apiVersion": "snapshot-operator.dev/v1alpha1", "kind": "Snapshot",
        "metadata": {"name": "other", "namespace": "x", "uid": "uid-o"},
        "spec": {"source": {"persistentVolumeClaim": {"claimName": "d"}}}}),
    )
    .unwrap();
    let mut jobs = vec![mover_job("snap", ("other", "uid-o"), "n", None)];
    jobs.extend(also);
    (config, Cluster::of(jobs, pods, vec![other], vec![]))
}

/// The requests of a pass that finds a slot free and starts the one mover of a Snapshot
/// of a one-pod StatefulSet.
fn starts_its_mover() -> Vec<Expect> {
    vec![
        Expect::new("GET", STS, statefulset(1)),
        Expect::new("GET", PODS, list("Pod", vec![])),
        Expect::new("GET", STS, statefulset(1)),
        Expect::new(
            "PATCH",
            format!("{JOBS}/{}", mover::job_name("snap", "s", "qdrant-0")),
            Value::Null,
        ),
        Expect::new("PATCH", format!("{SNAPS}/status"), stored()),
        event("Running"),
    ]
}

#[tokio::test]
async fn movers_beyond_the_cap_wait_pending_and_foreign_jobs_hold_no_slot() {
    // A running mover of another Snapshot holds the one slot; a Job that only carries
    // the operator's labels (its owner is no Snapshot the operator knows) holds none.
    let foreign = mover_job("snap", ("ghost", "uid-ghost"), "n", None);
    let (config, busy) = one_slot_held(vec![foreign.clone()]);
    let script = vec![
        Expect::new("GET", STS, statefulset(2)),
        Expect::new("PATCH", format!("{SNAPS}/status"), stored()).check(|body| {
            assert_eq!(body["status"]["phase"], "Pending");
            assert_eq!(
                body["status"]["archives"][0]["message"],
                "waiting for a free mover slot"
            );
            assert!(body["status"].get("startTime").is_none());
        }),
        event("Pending"),
    ];
    let (action, _) =
        reconcile_with(Snapshot::test().finalized(), (config.clone(), busy), script).await;
    assert_eq!(action.unwrap(), Action::requeue(PENDING_RECHECK));

    // Only the foreign Job left: the slot is free.
    let script = starts_its_mover();
    let (action, _) = reconcile_with(
        Snapshot::test().finalized(),
        (config, movers(vec![foreign], vec![])),
        script,
    )
    .await;
    assert_eq!(action.unwrap(), running_recheck());
}

#[tokio::test]
async fn a_mover_whose_pod_succeeded_frees_its_slot_before_its_job_is_marked_complete() {
    // The other Snapshot's mover ended well; the Job controller has not marked its Job
    // complete yet (it batches pod events for a second): the one slot is free already.
    let other = mover_job("snap", ("other", "uid-o"), "n", None);
    let (config, cluster) = one_slot_held_with(vec![], vec![mover_pod(&other, 0, "{}", 1)]);
    let script = starts_its_mover();
    let (action, _) = reconcile_with(
        Snapshot::test().finalized(),
        (config.clone(), cluster),
        script,
    )
    .await;
    assert_eq!(action.unwrap(), running_recheck());

    // Its pod failed instead: the Job may still retry it, and keeps the slot.
    let (config, cluster) = one_slot_held_with(vec![], vec![mover_pod(&other, 1, "full", 1)]);
    let script = vec![
        Expect::new("GET", STS, statefulset(1)),
        Expect::new("PATCH", format!("{SNAPS}/status"), stored()).check(|body| {
            assert_eq!(body["status"]["phase"], "Pending");
        }),
        event("Pending"),
    ];
    let (action, _) = reconcile_with(Snapshot::test().finalized(), (config, cluster), script).await;
    assert_eq!(action.unwrap(), Action::requeue(PENDING_RECHECK));
}

fn succeeded_archives() -> Value {
    json!({"phase": "Succeeded", "observedGeneration": 1,
        "storage": {"local": {"persistentVolumeClaim": {"claimName": "backups"}, "path": "/"}},
        "archives": [{"node": "qdrant-0", "claim": "data-qdrant-0", "phase": "Succeeded", "name": "a.snapshot"},
                     {"node": "qdrant-1", "claim": "data-qdrant-1", "phase": "Failed"}]})
}

#[tokio::test]
async fn deletion_runs_a_delete_mover_then_removes_the_finalizer() {
    let delete_job = mover::job_name("del", "s", "all");
    // It acts as the workload's user, who wrote the archives.
    let mut sts = statefulset(2);
    sts["spec"]["template"] = json!({"spec": {"containers": [],
        "securityContext": {"runAsUser": 1000, "runAsGroup": 1000}}});
    let script = vec![
        Expect::new("GET", STS, sts),
        Expect::new("PATCH", format!("{JOBS}/{delete_job}"), Value::Null).check(|job| {
            let pod = &job["spec"]["template"]["spec"];
            assert_eq!(
                pod["containers"][0]["args"],
                json!(["mover", "delete", "--", "products/a.snapshot"])
            );
            assert_eq!(
                pod["volumes"][0]["persistentVolumeClaim"]["claimName"],
                "backups"
            );
            assert_eq!(pod["securityContext"]["runAsUser"], 1000, "{pod}");
            assert_eq!(pod["securityContext"]["runAsGroup"], 1000, "{pod}");
        }),
    ];
    let snap = Arc::new(
        Snapshot::test()
            .finalized()
            .with_status(succeeded_archives())
            .deleting(),
    );
    let (result, metrics) = scripted(
        OperatorConfig::default(),
        movers(vec![], vec![]),
        script,
        |ctx| async move {
            let result = super::super::reconcile(snap.clone(), ctx.clone()).await;
            if let Err(e) = &result {
                super::super::error_policy(snap, e, ctx);
            }
            result
        },
    )
    .await;
    let err = result.unwrap_err();
    assert!(matches!(err.inner(), Error::CleanupPending), "{err}");
    // Waiting for the delete mover is not a reconcile failure.
    assert!(!metrics.contains("CleanupPending"), "{metrics}");

    let done = mover_job("del", ("s", "uid-1"), "all", Some("Complete"));
    let pod = mover_pod(&done, 0, "{}", 3);
    let script = vec![
        event("Deleted"),
        Expect::new("PATCH", SNAPS, stored()).check(|body| {
            assert!(body.to_string().contains("remove"), "{body}");
        }),
    ];
    let deleting = || {
        Snapshot::test()
            .finalized()
            .with_status(succeeded_archives())
            .deleting()
    };
    let (result, _) = reconcile_with(
        deleting(),
        (OperatorConfig::default(), movers(vec![done], vec![pod])),
        script,
    )
    .await;
    result.unwrap();

    // A failed delete keeps the finalizer, says why, and runs the mover again later.
    let failed = mover_job("del", ("s", "uid-1"), "all", Some("Failed"));
    let pod = mover_pod(&failed, 1, "access denied", 3);
    let script = vec![
        event("CleanupFailed"),
        Expect::new("DELETE", format!("{JOBS}/{delete_job}"), deleted()),
    ];
    let (result, _) = reconcile_with(
        deleting(),
        (OperatorConfig::default(), movers(vec![failed], vec![pod])),
        script,
    )
    .await;
    let err = result.unwrap_err();
    assert!(
        matches!(err.inner(), Error::CleanupFailed(m) if m == "access denied"),
        "{err}"
    );
}

/// A Snapshot like [`Snapshot::test`], named `name`, being deleted after it succeeded with
/// the archive `<name>.snapshot`.
fn deleted_with_archive(name: &str) -> Snapshot {
    let mut snap = Snapshot::test()
        .finalized()
        .with_status(json!({"phase": "Succeeded", "observedGeneration": 1,
            "storage": {"local": {"persistentVolumeClaim": {"claimName": "backups"}, "path": "/"}},
            "archives": [{"node": "qdrant-0", "claim": "data-qdrant-0", "phase": "Succeeded",
                "name": format!("{name}.snapshot")}]}))
        .deleting();
    snap.metadata.name = Some(name.into());
    snap.metadata.uid = Some(format!("uid-{name}"));
    snap
}

#[tokio::test]
async fn one_delete_mover_deletes_the_archives_of_the_snapshots_deleted_alike() {
    // t is deleted alike; u keeps its archives elsewhere; v is not deleted; w's own delete
    // mover runs already; x still runs (its archives may change).
    let mut u = deleted_with_archive("u");
    u.status.as_mut().unwrap().storage = None;
    u.spec.storage = serde_json::from_value(
        json!({"local": {"persistentVolumeClaim": {"claimName": "other"}, "path": "/"}}),
    )
    .unwrap();
    let mut v = deleted_with_archive("v");
    v.metadata.deletion_timestamp = None;
    let mut x = deleted_with_archive("x");
    x.status.as_mut().unwrap().phase = Some(crate::api::snapshot::Phase::Running);
    let w_mover = mover_job("del", ("w", "uid-w"), "all", None);
    let store: Vec<Snapshot> = [
        deleted_with_archive("t"),
        u,
        v,
        deleted_with_archive("w"),
        x,
    ]
    .into_iter()
    .collect();
    let cluster = Cluster::of(vec![w_mover], vec![], store, vec![]);
    let script = vec![
        Expect::new("GET", STS, statefulset(2)),
        Expect::new(
            "PATCH",
            format!("{JOBS}/{}", mover::job_name("del", "s", "all")),
            Value::Null,
        )
        .check(|job| {
            assert_eq!(
                job["spec"]["template"]["spec"]["containers"][0]["args"],
                json!([
                    "mover",
                    "delete",
                    "--",
                    "products/a.snapshot",
                    "products/t.snapshot"
                ])
            );
            let owners: Vec<(&str, bool)> = job["metadata"]["ownerReferences"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| (o["uid"].as_str().unwrap(), o["controller"] == true))
                .collect();
            assert_eq!(owners, [("uid-1", true), ("uid-t", false)]);
        }),
    ];
    let snap = Snapshot::test()
        .finalized()
        .with_status(succeeded_archives())
        .deleting();
    let (result, _) = reconcile_with(snap, (OperatorConfig::default(), cluster), script).await;
    let err = result.unwrap_err();
    assert!(matches!(err.inner(), Error::CleanupPending), "{err}");
}

#[tokio::test]
async fn a_snapshot_whose_archives_another_s_delete_mover_deletes_waits_for_it_and_no_slot() {
    // t's delete mover deletes s's archives too; s has none of its own, and its slot is taken.
    let config = OperatorConfig {
        max_concurrent_movers: 1,
        ..OperatorConfig::default()
    };
    let batch = |condition| {
        let mut job = mover_job("del", ("t", "uid-t"), "all", condition);
        let s = Snapshot::test().owner_ref(&()).unwrap();
        job.metadata.owner_references.as_mut().unwrap().push(s);
        job
    };
    let deleting = || {
        Snapshot::test()
            .finalized()
            .with_status(succeeded_archives())
            .deleting()
    };
    let store = || vec![deleted_with_archive("t")];
    let cluster = Cluster::of(vec![batch(None)], vec![], store(), vec![]);
    let (result, _) = reconcile_with(deleting(), (config.clone(), cluster), vec![]).await;
    let err = result.unwrap_err();
    assert!(matches!(err.inner(), Error::CleanupPending), "{err}");
    // It ended well: s's archives are deleted, and its finalizer goes.
    let cluster = Cluster::of(vec![batch(Some("Complete"))], vec![], store(), vec![]);
    let script = vec![
        event("Deleted"),
        Expect::new("PATCH", SNAPS, stored()).check(|body| {
            assert!(body.to_string().contains("remove"), "{body}");
        }),
    ];
    let (result, _) = reconcile_with(deleting(), (config.clone(), cluster), script).await;
    result.unwrap();
    // It failed: s's own mover deletes them (t's retries its own).
    let cluster = Cluster::of(vec![batch(Some("Failed"))], vec![], vec![], vec![]);
    let script = vec![
        Expect::new("GET", STS, statefulset(2)),
        Expect::new(
            "PATCH",
            format!("{JOBS}/{}", mover::job_name("del", "s", "all")),
            Value::Null,
        ),
    ];
    let (result, _) = reconcile_with(deleting(), (config, cluster), script).await;
    assert!(matches!(result.unwrap_err().inner(), Error::CleanupPending));
}

/// A context whose default S3 storage the operator deletes from itself: `root/<namespace>`
/// here, as the operator reaches it.
fn deleting_itself(root: &std::path::Path) -> impl FnOnce(kube::Client) -> Context {
    let config = serde_json::from_value(json!({
        "defaultStorage": {"s3": {"bucket": "b", "prefix": "p"}}, "deleteThroughOperator": true}))
    .unwrap();
    let root = root.to_owned();
    let own: crate::controller::own::OwnStorage = Arc::new(move |namespace| {
        let dir = root.join(namespace.expect("a namespace's part"));
        Box::pin(async move {
            let local = crate::storage::local::LocalStorage::open(dir, None);
            Some(local.map(|s| Box::new(s) as Box<dyn crate::storage::Storage>))
        })
    });
    move |client| {
        let metrics = Arc::new(crate::controller::metrics::Metrics::default());
        let (cluster, wake) = (movers(vec![], vec![]), crate::controller::Wake::default());
        Context::new(client, config, metrics, "test", cluster, wake).with_own_storage(own)
    }
}

#[tokio::test]
async fn with_delete_through_operator_the_operator_deletes_default_storage_archives_itself() {
    let root = tempfile::tempdir().unwrap();
    let archives = root.path().join("ns/products");
    std::fs::create_dir_all(&archives).unwrap();
    for file in ["a.snapshot", "a.snapshot.checksum", "other.snapshot"] {
        std::fs::write(archives.join(file), file).unwrap();
    }
    let mut status = succeeded_archives();
    status["storage"] = json!({"s3": {"bucket": "b", "prefix": "p/ns"}});
    let snap = Snapshot::test()
        .finalized()
        .with_status(status.clone())
        .deleting();
    // No delete mover: the archive and its checksum deleted, then the finalizer removed.
    let script = vec![
        event("Deleted"),
        Expect::new("PATCH", SNAPS, stored()).check(|body| {
            assert!(body.to_string().contains("remove"), "{body}");
        }),
    ];
    let (result, _) = scripted_in(deleting_itself(root.path()), script, |ctx| {
        super::super::reconcile(Arc::new(snap), ctx)
    })
    .await;
    assert_eq!(result.unwrap(), Action::await_change());
    let left: Vec<_> = std::fs::read_dir(&archives)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(left, ["other.snapshot"]);

    // A storage it cannot reach: the finalizer stays, an event says why.
    let file = root.path().join("not-a-directory");
    std::fs::write(&file, "").unwrap();
    let snap = Snapshot::test().finalized().with_status(status).deleting();
    let unreachable = deleting_itself(&file);
    let (result, _) = scripted_in(unreachable, vec![event("CleanupFailed")], |ctx| {
        super::super::reconcile(Arc::new(snap), ctx)
    })
    .await;
    let err = result.unwrap_err();
    assert!(matches!(err.inner(), Error::CleanupFailed(_)), "{err}");
}

#[tokio::test]
async fn in_a_namespace_being_deleted_the_finalizer_goes_without_a_mover() {
    let delete_job = mover::job_name("del", "s", "all");
    let terminating = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "reason": "Forbidden", "code": 403,
        "message": "jobs.batch \"x\" is forbidden: unable to create new content in namespace ns because it is being terminated"});
    let script = vec![
        Expect::new("GET", STS, statefulset(2)),
        Expect::new("PATCH", format!("{JOBS}/{delete_job}"), terminating).status(403),
        Expect::new("PATCH", SNAPS, stored()).check(|body| {
            assert!(body.to_string().contains("remove"), "{body}");
        }),
    ];
    let (result, _) = reconcile_with(
        Snapshot::test()
            .finalized()
            .with_status(succeeded_archives())
            .deleting(),
        (OperatorConfig::default(), movers(vec![], vec![])),
        script,
    )
    .await;
    result.unwrap();
    // Any other refusal keeps it.
    let forbidden = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "reason": "Forbidden", "code": 403, "message": "jobs.batch is forbidden: RBAC"});
    let script = vec![
        Expect::new("GET", STS, statefulset(2)),
        Expect::new("PATCH", format!("{JOBS}/{delete_job}"), forbidden).status(403),
    ];
    let (result, _) = reconcile_with(
        Snapshot::test()
            .finalized()
            .with_status(succeeded_archives())
            .deleting(),
        (OperatorConfig::default(), movers(vec![], vec![])),
        script,
    )
    .await;
    assert!(result.is_err());
}

#[tokio::test]
async fn delete_movers_wait_for_a_slot_too() {
    let config = OperatorConfig {
        max_concurrent_movers: 1,
        ..OperatorConfig::default()
    };
    let busy = Cluster::of(
        vec![mover_job("snap", ("s2", "uid-2"), "n", None)],
        vec![],
        vec![
            serde_json::from_value(
                json!({"apiVersion": "snapshot-operator.dev/v1alpha1", "kind": "Snapshot",
            "metadata": {"name": "s2", "namespace": "ns", "uid": "uid-2"},
            "spec": {"source": {"persistentVolumeClaim": {"claimName": "d"}}}}),
            )
            .unwrap(),
        ],
        vec![],
    );
    let (result, _) = reconcile_with(
        Snapshot::test()
            .finalized()
            .with_status(succeeded_archives())
            .deleting(),
        (config, busy),
        vec![],
    )
    .await;
    assert!(matches!(result.unwrap_err().inner(), Error::CleanupPending));
}

#[tokio::test]
async fn retain_keeps_the_archives() {
    let mut snap = Snapshot::test()
        .finalized()
        .with_status(succeeded_archives())
        .deleting();
    snap.spec.deletion_policy = DeletionPolicy::Retain;
    let script = vec![Expect::new("PATCH", SNAPS, stored())];
    let (result, _) = reconcile_with(snap.clone(), nothing(), script).await;
    result.unwrap();
    // A second pass, begun before the store showed it gone, finds its finalizer gone with it.
    let script = vec![Expect::new("PATCH", SNAPS, not_found()).status(404)];
    let (result, _) = reconcile_with(snap, nothing(), script).await;
    assert_eq!(result.unwrap(), Action::await_change());
}

fn scale(replicas: i32) -> Value {
    json!({"apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": {"name": "qdrant", "namespace": "ns"}, "spec": {"replicas": replicas}})
}

/// `status` with the replicas recorded.
fn recorded(mut status: Value) -> Value {
    status["stoppedReplicas"] = json!(2);
    status
}

#[tokio::test]
async fn a_workload_is_not_stopped_while_other_movers_hold_every_slot() {
    let (config, busy) = one_slot_held(vec![]);
    let pods = list("Pod", vec![workload_pod(0, "w"), workload_pod(1, "w")]);
    let script = vec![
        Expect::new("GET", STS, statefulset(2)),
        Expect::new("GET", PODS, pods),
        Expect::new("PATCH", format!("{SNAPS}/status"), stored()).check(|body| {
            let status = &body["status"];
            assert_eq!(status.get("stoppedReplicas"), None, "{status}");
            assert_eq!(
                status["conditions"][0]["message"],
                "waiting for a mover slot before stopping StatefulSet qdrant"
            );
        }),
        event("StoppingWorkload"),
    ];
    let (action, _) = reconcile_with(
        Snapshot::test().finalized().copying(CopyMethod::Stop),
        (config, busy),
        script,
    )
    .await;
    assert_eq!(action.unwrap(), Action::requeue(Duration::from_secs(10)));
}

#[tokio::test]
async fn its_own_movers_do_not_hold_back_a_stopped_workloads_other_nodes() {
    // A running pod that mounts `claim`, controlled by the Job of UID `job_uid`.
    let pod = |name: &str, claim: &str, job_uid: &str| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "ns",
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "j",
                "uid": job_uid, "controller": true}]},
            "spec": {"containers": [], "volumes": [{"name": "data",
                "persistentVolumeClaim": {"claimName": claim}}]},
            "status": {"phase": "Running"}})
    };
    // Node 0's mover runs (one slot: node 1 waited); node 1 is to start.
    let one_left = recorded(json!({"phase": "Running", "observedGeneration": 1,
        "storage": {"local": {"persistentVolumeClaim": {"claimName": "backups"}, "path": "/"}},
        "archives": [{"node": "qdrant-0", "claim": "data-qdrant-0", "phase": "Running"},
                     {"node": "qdrant-1", "claim": "data-qdrant-1", "phase": "Pending"}]}));
    let running = job("qdrant-0", None);
    let ours = pod("mover-0", "data-qdrant-0", &running.uid().unwrap());
    let script = vec![
        Expect::new("GET", PODS, list("Pod", vec![ours.clone()])),
        Expect::new("GET", STS, statefulset(0)),
        Expect::new(
            "PATCH",
            format!("{JOBS}/{}", mover::job_name("snap", "s", "qdrant-1")),
            Value::Null,
        ),
        Expect::new("PATCH", format!("{SNAPS}/status"), stored()).check(|body| {
            assert_eq!(body["status"]["archives"][1]["phase"], "Running");
        }),
    ];
    let cluster = movers(vec![running.clone()], vec![]);
    reconcile_with(
        Snapshot::test()
            .finalized()
            .with_status(one_left.clone())
            .copying(CopyMethod::Stop),
        (OperatorConfig::default(), cluster),
        script,
    )
    .await
    .0
    .unwrap();

    // A pod of another resource's Job (or of no known Job) mounting a claim still counts.
    let other = mover_job("snap", ("t", "uid-2"), "qdrant-1", None);
    let theirs = pod("other-1", "data-qdrant-1", &other.uid().unwrap());
    let script = vec![
        Expect::new("GET", PODS, list("Pod", vec![ours, theirs])),
        Expect::new("PATCH", format!("{STS}/scale"), scale(0)),
        Expect::new("PATCH", format!("{SNAPS}/status"), stored()).check(|body| {
            let message = &body["status"]["conditions"][0]["message"];
            assert_eq!(message, "waiting for pods to stop: other-1");
        }),
    ];
    let cluster = movers(vec![running, other], vec![]);
    let (action, _) = reconcile_with(
        Snapshot::test()
            .finalized()
            .with_status(one_left)
            .copying(CopyMethod::Stop),
        (OperatorConfig::default(), cluster),
        script,
    )
    .await;
    assert_eq!(action.unwrap(), Action::requeue(Duration::from_secs(3)));
}

#[tokio::test]
async fn copy_method_stop_records_stops_snapshots_then_starts_again() {
    // Replicas recorded before the scale to zero.
    let pods = list("Pod", vec![workload_pod(0, "w"), workload_pod(1, "w")]);
    let script = vec![
        Expect::new("GET", STS, statefulset(2)),
        Expect::new("GET", PODS, pods.clone()),
        Expect::new("GET", format!("{STS}/scale"), scale(2)),
        Expect::new("PATCH", format!("{SNAPS}/status"), stored()).check(|body| {
            let status = &body["status"];
            assert_eq!(status["stoppedReplicas"], 2);
            assert_eq!(status["conditions"][0]["reason"], "StoppingWorkload");
            assert_eq!(status["archives"][1]["phase"], "Pending");
        }),
        Expect::new("PATCH", format!("{STS}/scale"), scale(0))
            .check(|b| assert_eq!(b["spec"]["replicas"], 0)),
        event("StoppingWorkload"),
    ];
    let (action, _) = reconcile_with(
        Snapshot::test().finalized().copying(CopyMethod::Stop),
        nothing(),
        script,
    )
    .await;
    assert_eq!(action.unwrap(), Action::requeue(Duration::from_secs(2)));

    // A pod still running: no mover yet.
    let pending = recorded(json!({"phase": "Pending", "observedGeneration": 1,
        "storage": {"local": {"persistentVolumeClaim": {"claimName": "backups"}, "path": "/"}},
        "archives": [{"node": "qdrant-0", "claim": "data-qdrant-0", "phase": "Pending"},
                     {"node": "qdrant-1", "claim": "data-qdrant-1", "phase": "Pending"}]}));
    let script = vec![
        Expect::new("GET", PODS, list("Pod", vec![workload_pod(1, "w")])),
        Expect::new("PATCH", format!("{STS}/scale"), scale(0)),
        Expect::new("PATCH", format!("{SNAPS}/status"), stored()).check(|body| {
            let message = &body["status"]["conditions"][0]["message"];
            assert_eq!(message, "waiting for pods to stop: qdrant-1");
        }),
    ];
    let (action, _) = reconcile_with(
        Snapshot::test()
            .finalized()
            .with_status(pending.clone())
            .copying(CopyMethod::Stop),
        nothing(),
        script,
    )
    .await;
    assert_eq!(action.unwrap(), Action::requeue(Duration::from_secs(3)));

    // Stopped: the movers start, not pinned (no pod holds the claims).
    let unpinned = |job: &Value| {
        assert_eq!(
            job["spec"]["template"]["spec"].get("affinity"),
            None,
            "{job}"
        );
    };
    let script = vec![
        Expect::new("GET", PODS, list("Pod", vec![])),
        Expect::new("GET", STS, statefulset(0)),
        Expect::new(
            "PATCH",
            format!("{JOBS}/{}", mover::job_name("snap", "s", "qdrant-0")),
            Value::Null,
        )
        .check(unpinned),
        Expect::new(
            "PATCH",
            format!("{JOBS}/{}", mover::job_name("snap", "s", "qdrant-1")),
            Value::Null,
        )
        .check(unpinned),
        Expect::new("PATCH", format!("{SNAPS}/status"), stored()).check(|body| {
            assert_eq!(body["status"]["phase"], "Running");
            assert_eq!(body["status"]["stoppedReplicas"], 2);
        }),
        event("Running"),
    ];
    reconcile_with(
        Snapshot::test()
            .finalized()
            .with_status(pending)
            .copying(CopyMethod::Stop),
        nothing(),
        script,
    )
    .await
    .0
    .unwrap();

    // Both archives done (one failed): started again before the outcome is written.
    let report = &stored_report("products/a.snapshot", 1, Some("aa"));
    let (job0, pod0) = finished("qdrant-0", "Complete", report);
    let (job1, pod1) = finished("qdrant-1", "Failed", "disk full");
    let cluster = movers(vec![job0, job1], vec![pod0, pod1]);
    // Every mover started: the stop is not looked at again (restarting pods are not
    // stopped a second time).
    let script = vec![
        Expect::new("PATCH", format!("{STS}/scale"), scale(2))
            .check(|b| assert_eq!(b["spec"]["replicas"], 2)),
        Expect::new("PATCH", format!("{SNAPS}/status"), stored()).check(|body| {
            assert_eq!(body["status"]["phase"], "Failed");
        }),
        event("Failed"),
    ];
    let running = recorded(running_archives());
    reconcile_with(
        Snapshot::test()
            .finalized()
            .with_status(running)
            .copying(CopyMethod::Stop),
        (OperatorConfig::default(), cluster),
        script,
    )
    .await
    .0
    .unwrap();
}

const CLAIMS: &str = "/api/v1/namespaces/ns/persistentvolumeclaims";

#[tokio::test]
async fn copy_method_clone_reads_a_clone_made_when_the_mover_starts_and_deleted_after() {
    let clone = crate::controller::copy::clone::name(
        &Snapshot::test().finalized().copying(CopyMethod::Clone),
        "qdrant-0",
    );
    let source = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data-qdrant-0", "namespace": "ns"},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "csi-rbd",
                 "resources": {"requests": {"storage": "10Gi"}}},
        "status": {"capacity": {"storage": "12Gi"}}});
    let made = clone.clone();
    let mounted = clone.clone();
    let script = vec![
        Expect::new("GET", STS, statefulset(1)),
        Expect::new("GET", PODS, list("Pod", vec![workload_pod(0, "worker-a")])),
        Expect::new("GET", STS, statefulset(1)),
        Expect::new("GET", format!("{CLAIMS}/data-qdrant-0"), source),
        Expect::new("POST", CLAIMS, Value::Null).check(move |pvc| {
            assert_eq!(pvc["metadata"]["name"], made.as_str());
            assert_eq!(
                pvc["spec"]["dataSource"],
                json!({"kind": "PersistentVolumeClaim", "name": "data-qdrant-0"})
            );
            assert_eq!(pvc["spec"]["storageClassName"], "csi-rbd");
            assert_eq!(
                pvc["spec"]["resources"]["requests"]["storage"], "12Gi",
                "the source's size"
            );
            assert_eq!(pvc["metadata"]["ownerReferences"][0]["uid"], "uid-1");
            assert_eq!(pvc["metadata"]["ownerReferences"][0]["controller"], false);
        }),
        Expect::new(
            "PATCH",
            format!("{JOBS}/{}", mover::job_name("snap", "s", "qdrant-0")),
            Value::Null,
        )
        .check(move |job| {
            let pod = &job["spec"]["template"]["spec"];
            assert_eq!(
                pod["volumes"][0]["persistentVolumeClaim"],
                json!({"claimName": mounted.as_str(), "readOnly": true})
            );
            assert_eq!(
                pod.get("affinity"),
                None,
                "a new volume: not pinned to the workload's node"
            );
            // The archive still belongs to the node's own claim.
            let args = pod["containers"][0]["args"].to_string();
            assert!(args.contains(r#"\"claim\":\"data-qdrant-0\""#), "{args}");
        }),
        Expect::new("PATCH", format!("{SNAPS}/status"), stored()).check({
            let clone = clone.clone();
            move |body| {
                assert_eq!(body["status"]["archives"][0]["readFrom"], clone.as_str());
                assert_eq!(body["status"]["archives"][0]["phase"], "Running");
            }
        }),
        event("Running"),
    ];
    reconcile_with(
        Snapshot::test().finalized().copying(CopyMethod::Clone),
        nothing(),
        script,
    )
    .await
    .0
    .unwrap();

    // Its archive done: the clone goes, then the outcome is written.
    let running = json!({"phase": "Running", "observedGeneration": 1,
        "storage": {"local": {"persistentVolumeClaim": {"claimName": "backups"}, "path": "/"}},
        "archives": [{"node": "qdrant-0", "claim": "data-qdrant-0", "phase": "Running", "readFrom": clone}]});
    let report = &stored_report("products/a.snapshot", 1, Some("aa"));
    let (job, pod) = finished("qdrant-0", "Complete", report);
    let script = vec![
        Expect::new("DELETE", format!("{CLAIMS}/{clone}"), deleted()),
        Expect::new("PATCH", format!("{SNAPS}/status"), stored()).check(|body| {
            assert_eq!(body["status"]["phase"], "Succeeded");
        }),
        event("Succeeded"),
    ];
    let cluster = movers(vec![job], vec![pod]);
    reconcile_with(
        Snapshot::test()
            .finalized()
            .with_status(running.clone())
            .copying(CopyMethod::Clone),
        (OperatorConfig::default(), cluster),
        script,
    )
    .await
    .0
    .unwrap();

    // Deleted while its mover runs: the clone goes with it (already gone: fine).
    let mut deleting = Snapshot::test()
        .finalized()
        .with_status(running)
        .copying(CopyMethod::Clone)
        .deleting();
    deleting.spec.deletion_policy = DeletionPolicy::Retain;
    let script = vec![
        Expect::new("DELETE", format!("{CLAIMS}/{clone}"), not_found()).status(404),
        Expect::new("PATCH", SNAPS, stored()),
    ];
    reconcile_with(deleting, nothing(), script).await.0.unwrap();
}

const VOLUME_SNAPSHOTS: &str = "/apis/snapshot.storage.k8s.io/v1/namespaces/ns/volumesnapshots";

#[tokio::test]
async fn copy_method_snapshot_reads_a_claim_made_from_a_ready_volume_snapshot() {
    let mut snap = Snapshot::test().finalized();
    snap.spec.copy_method = CopyMethod::Snapshot;
    snap.spec.volume_snapshot_class_name = Some("csi-snapclass".into());
    let vs = crate::controller::copy::snapshot::name(&snap, "qdrant-0");
    let temp = crate::controller::copy::clone::name(&snap, "qdrant-0");
    let volume_snapshot = |ready: Option<bool>, error: Option<&str>| {
        json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
            "metadata": {"name": vs, "namespace": "ns"},
            "spec": {"source": {"persistentVolumeClaimName": "data-qdrant-0"}},
            "status": {"readyToUse": ready, "error": error.map(|m| json!({"message": m}))}})
    };
    // First pass: the VolumeSnapshot is made; no slot is held while it is not ready.
    let made = vs.clone();
    let script = vec![
        Expect::new("GET", STS, statefulset(1)),
        Expect::new("GET", format!("{VOLUME_SNAPSHOTS}/{vs}"), not_found()).status(404),
        Expect::new("POST", VOLUME_SNAPSHOTS, Value::Null).check(move |body| {
            assert_eq!(body["metadata"]["name"], made.as_str());
            assert_eq!(
                body["spec"]["source"]["persistentVolumeClaimName"],
                "data-qdrant-0"
            );
            assert_eq!(body["spec"]["volumeSnapshotClassName"], "csi-snapclass");
            assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        }),
        Expect::new("PATCH", format!("{SNAPS}/status"), stored()).check({
            let vs = vs.clone();
            move |body| {
                let archive = &body["status"]["archives"][0];
                assert_eq!(archive["phase"], "Pending");
                assert_eq!(archive["volumeSnapshot"], vs.as_str());
                assert_eq!(
                    archive["message"],
                    format!("waiting for VolumeSnapshot {vs} to be ready")
                );
            }
        }),
        event("Pending"),
    ];
    let (action, _) = reconcile_with(snap.clone(), nothing(), script).await;
    assert_eq!(action.unwrap(), Action::requeue(PENDING_RECHECK));

    // Ready: a claim is made from it and the mover reads that claim.
    let pending = json!({"phase": "Pending", "observedGeneration": 1,
        "storage": {"local": {"persistentVolumeClaim": {"claimName": "backups"}, "path": "/"}},
        "archives": [{"node": "qdrant-0", "claim": "data-qdrant-0", "phase": "Pending", "volumeSnapshot": vs}]});
    let mut waiting = snap.clone();
    waiting.status = serde_json::from_value(pending).unwrap();
    let source = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data-qdrant-0", "namespace": "ns"},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "csi-rbd",
                 "resources": {"requests": {"storage": "10Gi"}}}});
    let from = vs.clone();
    let mounted = temp.clone();
    let script = vec![
        Expect::new("GET", format!("{VOLUME_SNAPSHOTS}/{vs}"), volume_snapshot(Some(true), None)),
        Expect::new("GET", PODS, list("Pod", vec![])),
        Expect::new("GET", STS, statefulset(1)),
        Expect::new("GET", format!("{CLAIMS}/data-qdrant-0"), source),
        Expect::new("POST", CLAIMS, Value::Null).check(move |pvc| {
            assert_eq!(
                pvc["spec"]["dataSource"],
                json!({"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": from.as_str()})
            );
            assert_eq!(pvc["spec"]["resources"]["requests"]["storage"], "10Gi");
        }),
        Expect::new("PATCH", format!("{JOBS}/{}", mover::job_name("snap", "s", "qdrant-0")), Value::Null)
            .check(move |job| {
                let volume = &job["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"];
                assert_eq!(volume, &json!({"claimName": mounted.as_str(), "readOnly": true}));
            }),
        Expect::new("PATCH", format!("{SNAPS}/status"), stored()).check(|body| {
            let archive = &body["status"]["archives"][0];
            assert_eq!(archive["phase"], "Running");
            assert!(archive["volumeSnapshot"].is_string() && archive["readFrom"].is_string());
        }),
        event("Running"),
    ];
    reconcile_with(waiting.clone(), nothing(), script)
        .await
        .0
        .unwrap();

    // Done: the claim and the VolumeSnapshot go before the outcome is written.
    let running = json!({"phase": "Running", "observedGeneration": 1,
        "storage": {"local": {"persistentVolumeClaim": {"claimName": "backups"}, "path": "/"}},
        "archives": [{"node": "qdrant-0", "claim": "data-qdrant-0", "phase": "Running", "volumeSnapshot": vs, "readFrom": temp}]});
    let mut done = snap.clone();
    done.status = serde_json::from_value(running).unwrap();
    let report = &stored_report("products/a.snapshot", 1, Some("aa"));
    let (job, pod) = finished("qdrant-0", "Complete", report);
    let script = vec![
        Expect::new("DELETE", format!("{CLAIMS}/{temp}"), deleted()),
        Expect::new("DELETE", format!("{VOLUME_SNAPSHOTS}/{vs}"), deleted()),
        Expect::new("PATCH", format!("{SNAPS}/status"), stored()).check(|body| {
            assert_eq!(body["status"]["phase"], "Succeeded");
            assert!(
                body["status"]["archives"][0]["volumeSnapshot"].is_string(),
                "said which"
            );
        }),
        event("Succeeded"),
    ];
    reconcile_with(
        done,
        (OperatorConfig::default(), movers(vec![job], vec![pod])),
        script,
    )
    .await
    .0
    .unwrap();

    // A VolumeSnapshot that failed fails its node, and goes.
    let script = vec![
        Expect::new(
            "GET",
            format!("{VOLUME_SNAPSHOTS}/{vs}"),
            volume_snapshot(None, Some("driver says no")),
        ),
        Expect::new("DELETE", format!("{VOLUME_SNAPSHOTS}/{vs}"), deleted()),
        Expect::new("PATCH", format!("{SNAPS}/status"), stored()).check(|body| {
            let archive = &body["status"]["archives"][0];
            assert_eq!(archive["phase"], "Failed");
            assert!(
                archive["message"]
                    .as_str()
                    .unwrap()
                    .ends_with("failed: driver says no")
            );
        }),
        event("Failed"),
    ];
    reconcile_with(waiting, nothing(), script).await.0.unwrap();
}

#[tokio::test]
async fn a_claim_that_is_not_there_cannot_be_cloned_and_fails_its_node() {
    let script = vec![
        Expect::new("GET", STS, statefulset(1)),
        Expect::new("GET", PODS, list("Pod", vec![])),
        Expect::new("GET", STS, statefulset(1)),
        Expect::new("GET", format!("{CLAIMS}/data-qdrant-0"), not_found()).status(404),
        Expect::new("PATCH", format!("{SNAPS}/status"), stored()).check(|body| {
            let archive = &body["status"]["archives"][0];
            assert_eq!(archive["phase"], "Failed");
            assert_eq!(
                archive["message"],
                "claim data-qdrant-0 not found: nothing to clone"
            );
        }),
        event("Failed"),
    ];
    reconcile_with(
        Snapshot::test().finalized().copying(CopyMethod::Clone),
        nothing(),
        script,
    )
    .await
    .0
    .unwrap();
}

#[tokio::test]
async fn a_statefulset_another_resource_holds_stopped_is_waited_for_not_stopped_again() {
    // A restore stopped it: recording its replicas now would record zero.
    let restore = serde_json::from_value(json!({"apiVersion": "snapshot-operator.dev/v1alpha1",
        "kind": "SnapshotRestore", "metadata": {"name": "r", "namespace": "ns", "uid": "uid-r"},
        "spec": {"source": {"location": "x.snapshot"}, "stopWorkload": true,
                 "target": {"statefulSet": {"name": "qdrant", "volumeClaimTemplate": "data"}}},
        "status": {"phase": "Running", "stoppedReplicas": 2}}))
    .unwrap();
    let cluster = Cluster::of(vec![], vec![], vec![], vec![restore]);
    let script = vec![
        Expect::new("GET", STS, statefulset(2)),
        Expect::new("GET", PODS, list("Pod", vec![])),
        Expect::new("PATCH", format!("{SNAPS}/status"), stored()).check(|body| {
            let status = &body["status"];
            assert_eq!(status.get("stoppedReplicas"), None, "{status}");
            assert_eq!(
                status["conditions"][0]["message"],
                "waiting for SnapshotRestore r, which stops StatefulSet qdrant"
            );
        }),
        event("StoppingWorkload"),
    ];
    let (action, _) = reconcile_with(
        Snapshot::test().finalized().copying(CopyMethod::Stop),
        (OperatorConfig::default(), cluster),
        script,
    )
    .await;
    assert_eq!(action.unwrap(), Action::requeue(Duration::from_secs(10)));
}

#[tokio::test]
async fn a_stopped_workload_is_started_again_when_the_snapshot_goes_or_turns_out_invalid() {
    // Deleted while its movers run: the StatefulSet comes back, then the finalizer goes.
    let script = vec![
        Expect::new("PATCH", format!("{STS}/scale"), scale(2))
            .check(|b| assert_eq!(b["spec"]["replicas"], 2)),
        Expect::new("PATCH", SNAPS, stored()),
    ];
    let (result, _) = reconcile_with(
        Snapshot::test()
            .finalized()
            .with_status(recorded(running_archives()))
            .copying(CopyMethod::Stop)
            .deleting(),
        nothing(),
        script,
    )
    .await;
    result.unwrap();
    // Finished: nothing to bring back.
    let mut done = recorded(succeeded_archives());
    done["phase"] = json!("Succeeded");
    let mut snap = Snapshot::test()
        .finalized()
        .with_status(done)
        .copying(CopyMethod::Stop)
        .deleting();
    snap.spec.deletion_policy = DeletionPolicy::Retain;
    let (result, _) =
        reconcile_with(snap, nothing(), vec![Expect::new("PATCH", SNAPS, stored())]).await;
    result.unwrap();
    // A PersistentVolumeClaim cannot be stopped: refused before anything happens.
    let mut claim = Snapshot::test().finalized().copying(CopyMethod::Stop);
    claim.spec.source =
        serde_json::from_value(json!({"persistentVolumeClaim": {"claimName": "data"}})).unwrap();
    let script = vec![
        Expect::new("PATCH", format!("{SNAPS}/status"), stored()).check(|body| {
            let message = body["status"]["conditions"][0]["message"].as_str().unwrap();
            assert!(
                message.contains("copyMethod Stop needs a statefulSet"),
                "{message}"
            );
        }),
        event("InvalidSpec"),
    ];
    reconcile_with(claim, nothing(), script).await.0.unwrap();
}

#[tokio::test]
async fn copy_method_qdrant_api_has_each_pod_make_its_snapshot_with_no_volume_mounted() {
    let mut snap = Snapshot::test().finalized().copying(CopyMethod::QdrantApi);
    let api = json!({
        "apiKeySecret": {"name": "qdrant-apikey"},
        "scheme": "https",
        "caSecret": {"name": "qdrant-tls"},
    });
    snap.spec.qdrant = Some(serde_json::from_value(api).unwrap());
    let script = vec![
        Expect::new("GET", STS, statefulset(1)),
        Expect::new("GET", PODS, list("Pod", vec![workload_pod(0, "worker-a")])),
        Expect::new("GET", STS, statefulset(1)),
        // Its service: the pods' stable names.
        Expect::new("GET", STS, statefulset(1)),
        Expect::new(
            "PATCH",
            format!("{JOBS}/{}", mover::job_name("snap", "s", "qdrant-0")),
            Value::Null,
        )
        .check(|job| {
            let pod = &job["spec"]["template"]["spec"];
            let volumes = pod["volumes"].to_string();
            assert!(!volumes.contains("data-qdrant-0"), "{volumes}");
            assert_eq!(pod.get("affinity"), None, "any node reaches the API");
            let container = &pod["containers"][0];
            let args = container["args"].to_string();
            assert!(
                args.contains(r#""api-snapshot""#)
                    && args.contains(r#""https://qdrant-0.qdrant.ns.svc:6333""#)
                    && args.contains(r#"\"claim\":\"data-qdrant-0\""#),
                "{args}"
            );
            let env = |name: &str| {
                let env = container["env"].as_array().unwrap().iter();
                env.clone().find(|e| e["name"] == name).cloned()
            };
            let key = env("QDRANT_API_KEY").expect("the api-key from its Secret");
            assert_eq!(
                key["valueFrom"]["secretKeyRef"],
                json!({"name": "qdrant-apikey", "key": "api-key", "optional": false})
            );
            let ca = env("QDRANT_CA_CERT").expect("the CAs from their Secret");
            assert_eq!(
                ca["valueFrom"]["secretKeyRef"],
                json!({"name": "qdrant-tls", "key": "ca.crt", "optional": false})
            );
        }),
        Expect::new("PATCH", format!("{SNAPS}/status"), stored()).check(|body| {
            let archive = &body["status"]["archives"][0];
            assert_eq!(archive["phase"], "Running");
            assert_eq!(archive.get("readFrom"), None);
        }),
        event("Running"),
    ];
    reconcile_with(snap, nothing(), script).await.0.unwrap();

    // A StatefulSet without a service has no address to reach: that node fails, saying so.
    let mut bare = statefulset(1);
    bare["spec"].as_object_mut().unwrap().remove("serviceName");
    let script = vec![
        Expect::new("GET", STS, bare.clone()),
        Expect::new("GET", PODS, list("Pod", vec![workload_pod(0, "worker-a")])),
        Expect::new("GET", STS, bare.clone()),
        Expect::new("GET", STS, bare),
        Expect::new("PATCH", format!("{SNAPS}/status"), stored()).check(|body| {
            let archive = &body["status"]["archives"][0];
            assert_eq!(archive["phase"], "Failed");
            let message = archive["message"].as_str().unwrap();
            assert!(message.contains("names no serviceName"), "{message}");
        }),
        event("Failed"),
    ];
    let snap = Snapshot::test().finalized().copying(CopyMethod::QdrantApi);
    reconcile_with(snap, nothing(), script).await.0.unwrap();
}

/// A Snapshot taken on 2026-12-01 at 10:00 to be kept for a day, as it stands when done.
fn kept_a_day() -> Snapshot {
    let mut snap = Snapshot::test().finalized().with_status(json!({
        "phase": "Succeeded", "observedGeneration": 1,
        "archives": [{"node": "qdrant-0", "claim": "data-qdrant-0", "phase": "Succeeded"}],
    }));
    snap.metadata.creation_timestamp = Some(Time("2026-12-01T10:00:00Z".parse().unwrap()));
    snap.spec.ttl = Some("1d".into());
    snap
}

/// One pass over `snap` at `now`, the stores holding `restores`.
async fn expiring_at(
    snap: Snapshot,
    now: &str,
    restores: Vec<crate::api::SnapshotRestore>,
    script: Vec<Expect>,
) -> Result<Action, Error> {
    let cluster = Cluster::of(vec![], vec![], vec![], restores);
    let now = now.parse().unwrap();
    let config = OperatorConfig::default();
    let reconcile = |ctx| super::super::reconcile(Arc::new(snap), ctx);
    crate::controller::testing::scripted_at(config, cluster, now, script, reconcile)
        .await
        .0
}

#[tokio::test]
async fn a_snapshot_is_deleted_once_its_ttl_has_passed_unless_a_restore_still_reads_it() {
    // Before: nothing to do until it expires, looked at again then.
    let action = expiring_at(kept_a_day(), "2026-12-02T09:00:00Z", vec![], vec![]).await;
    assert_eq!(action.unwrap(), Action::requeue(Duration::from_secs(3600)));

    // After: deleted (this very Snapshot, by UID), saying so; its cleanup follows.
    let script = vec![
        Expect::new("DELETE", SNAPS, stored()).check(|body| {
            assert_eq!(body["preconditions"]["uid"], "uid-1", "{body}");
        }),
        event("Expired"),
    ];
    let action = expiring_at(kept_a_day(), "2026-12-02T10:00:00Z", vec![], script).await;
    assert_eq!(action.unwrap(), Action::await_change());

    // A restore from it that has not finished holds it; a finished one does not.
    let reading = |phase: &str| {
        let restore = json!({"apiVersion": "snapshot-operator.dev/v1alpha1", "kind": "SnapshotRestore",
            "metadata": {"name": "r", "namespace": "ns", "uid": "uid-r"},
            "spec": {"source": {"snapshotRef": {"name": "s"}},
                     "target": {"statefulSet": {"name": "qdrant", "volumeClaimTemplate": "data"}}},
            "status": {"phase": phase}});
        serde_json::from_value(restore).unwrap()
    };
    let held = expiring_at(
        kept_a_day(),
        "2026-12-03T00:00:00Z",
        vec![reading("Running")],
        vec![],
    );
    assert_eq!(
        held.await.unwrap(),
        Action::requeue(Duration::from_secs(10))
    );
    let script = vec![Expect::new("DELETE", SNAPS, stored()), event("Expired")];
    let done = expiring_at(
        kept_a_day(),
        "2026-12-03T00:00:00Z",
        vec![reading("Succeeded")],
        script,
    );
    assert_eq!(done.await.unwrap(), Action::await_change());
}

/// What a running Snapshot's reconcile asks: to be looked at again when its movers'
/// progress is read next.
fn running_recheck() -> Action {
    let interval = crate::controller::config::ProgressConfig::default().interval();
    Action::requeue(RUNNING_RECHECK.min(interval))
}
