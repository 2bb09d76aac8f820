//! Reconciliations against a mock API server: every request asserted.

use std::sync::Arc;

use super::*;
use crate::controller::FINALIZER;
use crate::controller::cluster::Cluster;
use crate::controller::config::OperatorConfig;
use crate::controller::mover;
use crate::controller::testing::{
    Expect, Fixture, conflict, event, list, mover_job, mover_pod, restore_report, scripted,
    statefulset, workload_pod,
};
use crate::engine::restore::Outcome;
use k8s_openapi::api::batch::v1::Job;
use serde_json::{Value, json};

const RESTORES: &str = "/apis/snapshot-operator.dev/v1alpha1/namespaces/ns/snapshotrestores/r";
const JOBS: &str = "/apis/batch/v1/namespaces/ns/jobs";
const STS: &str = "/apis/apps/v1/namespaces/ns/statefulsets/qdrant";
const PODS: &str = "/api/v1/namespaces/ns/pods";

/// The source Snapshot, finished, and no movers yet.
fn source() -> Cluster {
    cluster("Succeeded", vec![], vec![])
}

/// The SnapshotRestore `r` of these tests (of Snapshot `s` into StatefulSet `qdrant`, with
/// `stopWorkload`), built up with the [`Fixture`] steps:
/// `SnapshotRestore::test().stop_workload(false).with_status(..).deleting()`.
impl SnapshotRestore {
    fn test() -> Self {
        Self::test_of(spec())
    }

    /// One of the spec `spec` (JSON).
    fn test_of(spec: Value) -> Self {
        serde_json::from_value(json!({"apiVersion": "snapshot-operator.dev/v1alpha1", "kind": "SnapshotRestore",
            "metadata": {"name": "r", "namespace": "ns", "uid": "uid-r", "generation": 1, "finalizers": [FINALIZER]},
            "spec": spec}))
        .unwrap()
    }

    fn stop_workload(mut self, stop: bool) -> Self {
        self.spec.stop_workload = stop;
        self
    }
}

/// The spec of [`SnapshotRestore::test`].
fn spec() -> Value {
    json!({"source": {"snapshotRef": {"name": "s"}},
           "target": {"statefulSet": {"name": "qdrant", "volumeClaimTemplate": "data"}},
           "path": "/qdrant/storage", "collection": "products", "priority": "snapshot", "stopWorkload": true})
}

fn stored() -> Value {
    serde_json::to_value(SnapshotRestore::test()).unwrap()
}

/// The status once the workload was stopped: replicas and nodes recorded.
fn pending_nodes() -> Value {
    json!({"stoppedReplicas": 2, "phase": "Pending", "nodes": [
        {"node": "qdrant-0", "claim": "data-qdrant-0", "phase": "Pending", "archive": "s3://b/products/products-qdrant-0.snapshot"},
        {"node": "qdrant-1", "claim": "data-qdrant-1", "phase": "Pending"}]})
}

fn snapshot(phase: &str) -> Value {
    json!({"apiVersion": "snapshot-operator.dev/v1alpha1", "kind": "Snapshot",
        "metadata": {"name": "s", "namespace": "ns", "uid": "uid-s"},
        "spec": {"source": {"statefulSet": {"name": "qdrant", "volumeClaimTemplate": "data"}}, "collection": "products",
                 "storage": {"s3": {"bucket": "b", "credentialsSecret": {"name": "creds"}}}},
        "status": {"phase": phase, "archives": [
            {"node": "qdrant-0", "claim": "data-qdrant-0", "phase": "Succeeded", "name": "products-qdrant-0.snapshot", "checksum": "aa", "location": "s3://b/products/products-qdrant-0.snapshot"},
            {"node": "qdrant-1", "claim": "data-qdrant-1", "phase": "Succeeded", "name": "products-qdrant-1.snapshot", "checksum": "bb"}]}})
}

fn scale(replicas: i32) -> Value {
    json!({"apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": {"name": "qdrant", "namespace": "ns"}, "spec": {"replicas": replicas}})
}

/// What the watches hold: the source Snapshot in `phase`, and these movers.
fn cluster(phase: &str, jobs: Vec<Job>, pods: Vec<Pod>) -> Cluster {
    let source = serde_json::from_value(snapshot(phase)).unwrap();
    Cluster::of(jobs, pods, vec![source], vec![])
}

fn finished(node: &str, message: &str) -> (Job, Pod) {
    let job = mover_job("rst", ("r", "uid-r"), node, Some("Complete"));
    let pod = mover_pod(&job, 0, message, 3);
    (job, pod)
}

async fn run(r: SnapshotRestore, cluster: Cluster, script: Vec<Expect>) -> Result<Action, Error> {
    scripted(OperatorConfig::default(), cluster, script, |ctx| {
        super::super::reconcile(Arc::new(r), ctx)
    })
    .await
    .0
}

fn status_check(check: impl Fn(&Value) + Send + 'static) -> Expect {
    Expect::new("PATCH", format!("{RESTORES}/status"), stored())
        .check(move |body| check(&body["status"]))
}

#[tokio::test]
async fn stop_workload_records_replicas_before_scaling_to_zero() {
    let script = vec![
        Expect::new("GET", STS, statefulset(2)),
        Expect::new(
            "GET",
            PODS,
            list("Pod", vec![workload_pod(0, "w"), workload_pod(1, "w")]),
        ),
        Expect::new("GET", format!("{STS}/scale"), scale(2)),
        status_check(|s| {
            assert_eq!(s["stoppedReplicas"], 2);
            assert_eq!(s["conditions"][0]["reason"], "StoppingWorkload");
        }),
        Expect::new("PATCH", format!("{STS}/scale"), scale(0))
            .check(|b| assert_eq!(b["spec"]["replicas"], 0)),
        event("StoppingWorkload"),
    ];
    run(SnapshotRestore::test(), source(), script)
        .await
        .unwrap();

    // Pods still running: wait, no movers.
    let script = vec![
        Expect::new("GET", PODS, list("Pod", vec![workload_pod(1, "w")])),
        Expect::new("PATCH", format!("{STS}/scale"), scale(0))
            .check(|b| assert_eq!(b["spec"]["replicas"], 0)),
        status_check(|s| {
            assert_eq!(s["phase"], "Pending");
            assert_eq!(
                s["conditions"][0]["message"],
                "waiting for pods to stop: qdrant-1"
            );
        }),
    ];
    run(
        SnapshotRestore::test().with_status(pending_nodes()),
        source(),
        script,
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn stopped_workload_gets_one_restore_mover_per_node_with_its_archive() {
    // The application runs as 1000: restored files must be its own.
    let mut sts = statefulset(2);
    sts["spec"]["template"] = json!({"spec": {"containers": [],
        "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000}}});
    let script = vec![
        Expect::new("GET", PODS, list("Pod", vec![])),
        Expect::new("GET", STS, sts),
        Expect::new(
            "PATCH",
            format!("{JOBS}/{}", mover::job_name("rst", "r", "qdrant-0")),
            Value::Null,
        )
        .check(|job| {
            let pod = &job["spec"]["template"]["spec"];
            let ids = &pod["securityContext"];
            assert_eq!(
                (&ids["runAsUser"], &ids["runAsGroup"], &ids["fsGroup"]),
                (&json!(1000), &json!(1000), &json!(1000)),
                "{ids}"
            );
            assert_eq!(
                pod["containers"][0]["args"],
                json!([
                    "mover",
                    "restore",
                    "--storage-path",
                    "/data/qdrant/storage",
                    "--volume",
                    "/data",
                    "--location",
                    "products/products-qdrant-0.snapshot",
                    "--priority",
                    "snapshot",
                    "--collection",
                    "products",
                    "--checksum",
                    "aa",
                    "--max-entries",
                    "5000",
                    "--max-bytes",
                    "1073741824",
                    "--max-hole-bytes",
                    "1099511627776"
                ])
            );
            assert_eq!(
                job["spec"]["activeDeadlineSeconds"], 3600,
                "the configured deadline"
            );
            assert_eq!(
                pod["volumes"][0]["persistentVolumeClaim"],
                json!({"claimName": "data-qdrant-0", "readOnly": false})
            );
            let env = pod["containers"][0]["env"].to_string();
            assert!(
                env.contains("\"creds\"") && env.contains("S3_CONFIG__BUCKET"),
                "{env}"
            );
            // The Snapshot's Secret reads its encrypted archives: its identities alone.
            let identities = r#"{"name":"SNAPSHOT_OPERATOR_AGE_IDENTITIES","valueFrom":{"secretKeyRef":{"key":"identities","name":"age","optional":false}}}"#;
            assert!(env.contains(identities), "{env}");
            assert!(!env.contains("AGE_RECIPIENTS"), "{env}");
        }),
        Expect::new(
            "PATCH",
            format!("{JOBS}/{}", mover::job_name("rst", "r", "qdrant-1")),
            Value::Null,
        ),
        status_check(|s| {
            assert_eq!(s["phase"], "Running");
            assert_eq!(s["nodes"][0]["phase"], "Running");
            assert_eq!(
                s["nodes"][0]["archive"],
                "s3://b/products/products-qdrant-0.snapshot"
            );
            assert_eq!(s["stoppedReplicas"], 2);
        }),
        event("Running"),
    ];
    // Limits and deadline as the operator is configured.
    let config: OperatorConfig = serde_json::from_value(json!({"mover": {
        "activeDeadlineSeconds": 3600,
        "restoreLimits": {"maxEntries": 5000, "maxBytes": 1073741824}}}))
    .unwrap();
    let r = SnapshotRestore::test().with_status(pending_nodes());
    let mut encrypted = snapshot("Succeeded");
    encrypted["spec"]["encryption"] = json!({"secretName": "age"});
    let encrypted = Cluster::of(
        vec![],
        vec![],
        vec![serde_json::from_value(encrypted).unwrap()],
        vec![],
    );
    let (result, _) = scripted(config, encrypted, script, |ctx| {
        super::super::reconcile(Arc::new(r), ctx)
    })
    .await;
    result.unwrap();
}

#[tokio::test]
async fn finished_movers_restart_the_workload_then_report_each_node() {
    let running = json!({"stoppedReplicas": 2, "phase": "Running", "nodes": [
        {"node": "qdrant-0", "claim": "data-qdrant-0", "phase": "Running"},
        {"node": "qdrant-1", "claim": "data-qdrant-1", "phase": "Running"}]});
    let (job0, pod0) = finished("qdrant-0", &restore_report(Outcome::Restored, 4096, None));
    let (job1, pod1) = finished(
        "qdrant-1",
        &restore_report(
            Outcome::Skipped,
            10,
            Some("collection \"products\" already exists on this node"),
        ),
    );
    let movers = cluster("Succeeded", vec![job0, job1], vec![pod0, pod1]);
    // No pod list: every mover has started, none will.
    let script = vec![
        Expect::new("PATCH", format!("{STS}/scale"), scale(2))
            .check(|b| assert_eq!(b["spec"]["replicas"], 2)),
        status_check(|s| {
            assert_eq!(s["phase"], "Succeeded");
            assert_eq!(s["conditions"][0]["status"], "True");
            assert_eq!(s["nodes"][0]["phase"], "Restored");
            assert_eq!(s["nodes"][0]["bytes"], 4096);
            assert_eq!(s["nodes"][1]["phase"], "Skipped");
            assert!(
                s["nodes"][1]["message"]
                    .as_str()
                    .unwrap()
                    .contains("already exists")
            );
        }),
        event("Succeeded"),
    ];
    let (action, metrics) = scripted(OperatorConfig::default(), movers, script, |ctx| {
        super::super::reconcile(Arc::new(SnapshotRestore::test().with_status(running)), ctx)
    })
    .await;
    let action = action.unwrap();
    assert!(
        metrics.contains("snapshot_operator_restored_bytes_total 4096"),
        "{metrics}"
    );
    assert_eq!(action, Action::await_change());
}

#[tokio::test]
async fn passes_over_running_movers_read_nothing_from_the_api_server() {
    // A pass while the movers run (one each progress interval): its status written, no pod
    // list, no StatefulSet read, no Snapshot read.
    let running = json!({"stoppedReplicas": 2, "phase": "Running", "nodes": [
        {"node": "qdrant-0", "claim": "data-qdrant-0", "phase": "Running"},
        {"node": "qdrant-1", "claim": "data-qdrant-1", "phase": "Running"}]});
    let jobs = ["qdrant-0", "qdrant-1"].map(|n| mover_job("rst", ("r", "uid-r"), n, None));
    let movers = cluster("Succeeded", jobs.to_vec(), vec![]);
    let script = vec![status_check(|s| {
        assert_eq!(s["phase"], "Running");
        assert_eq!(s["conditions"][1]["type"], "Progressing");
        assert_eq!(s["conditions"][1]["message"], "2 movers running");
    })];
    let action = run(SnapshotRestore::test().with_status(running), movers, script).await;
    let interval = crate::controller::config::ProgressConfig::default().interval();
    assert_eq!(action.unwrap(), Action::requeue(RECHECK.min(interval)));
}

/// Two passes that both read the restore before either wrote (two workers, or a pass and
/// a retry) see the same finished movers: the second's status write is refused (409, the
/// version it read is gone), and the movers count once.
#[tokio::test]
async fn finished_movers_seen_by_two_racing_passes_count_once() {
    let running = json!({"stoppedReplicas": 2, "phase": "Running", "nodes": [
        {"node": "qdrant-0", "claim": "data-qdrant-0", "phase": "Running"},
        {"node": "qdrant-1", "claim": "data-qdrant-1", "phase": "Running"}]});
    let (job0, pod0) = finished("qdrant-0", &restore_report(Outcome::Restored, 4096, None));
    let (job1, pod1) = finished("qdrant-1", &restore_report(Outcome::Restored, 100, None));
    let movers = cluster("Succeeded", vec![job0, job1], vec![pod0, pod1]);
    let pass = |status: Option<u16>| {
        let write = status_check(|s| assert_eq!(s["phase"], "Succeeded"));
        let mut steps = vec![Expect::new("PATCH", format!("{STS}/scale"), scale(2))];
        match status {
            None => steps.extend([write, event("Succeeded")]),
            Some(code) => steps
                .push(Expect::new("PATCH", format!("{RESTORES}/status"), conflict()).status(code)),
        }
        steps
    };
    let script: Vec<Expect> = [pass(None), pass(Some(409))]
        .into_iter()
        .flatten()
        .collect();
    let read = SnapshotRestore::test().with_status(running);
    let (second, metrics) = scripted(OperatorConfig::default(), movers, script, |ctx| {
        let read = Arc::new(read);
        async move {
            super::super::reconcile(read.clone(), ctx.clone()).await?;
            super::super::reconcile(read, ctx).await
        }
    })
    .await;
    assert!(second.is_err(), "the stale write is refused: {second:?}");
    let once = r#"snapshot_operator_mover_duration_seconds_count{operation="restore"} 2"#;
    assert!(metrics.contains(once), "{metrics}");
    assert!(
        metrics.contains("snapshot_operator_restored_bytes_total 4196"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_full_restore_without_stop_workload_is_invalid() {
    let mut s = spec();
    s.as_object_mut().unwrap().remove("collection");
    s["stopWorkload"] = json!(false);
    let mut full = snapshot("Succeeded");
    full["spec"].as_object_mut().unwrap().remove("collection");
    let full = Cluster::of(
        vec![],
        vec![],
        vec![serde_json::from_value(full).unwrap()],
        vec![],
    );
    let script = vec![
        status_check(|s| {
            assert_eq!(s["conditions"][0]["reason"], "InvalidSpec");
            assert!(
                s["conditions"][0]["message"]
                    .as_str()
                    .unwrap()
                    .contains("stopWorkload")
            );
        }),
        event("InvalidSpec"),
    ];
    let (action, metrics) = scripted(OperatorConfig::default(), full, script, |ctx| {
        super::super::reconcile(Arc::new(SnapshotRestore::test_of(s)), ctx)
    })
    .await;
    assert_eq!(action.unwrap(), Action::await_change());
    assert!(
        metrics.contains(
            r#"snapshot_operator_reconcile_failures_total{resource="snapshotrestore",reason="InvalidSpec"} 1"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_full_restore_into_a_claim_runs_when_no_pod_mounts_it() {
    // A claim of its own (no StatefulSet to stop), from a location: the whole storage.
    let spec = || {
        json!({"source": {"location": "s3://b/full.snapshot"},
        "target": {"persistentVolumeClaim": {"claimName": "d"}}, "path": "/qdrant/storage",
        "storage": {"s3": {"bucket": "b"}}})
    };
    let claim = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "d", "namespace": "ns"}});
    let mounting = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "db", "namespace": "ns"},
        "spec": {"containers": [], "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "d"}}]},
        "status": {"phase": "Running"}});
    let script = vec![
        Expect::new(
            "GET",
            "/api/v1/namespaces/ns/persistentvolumeclaims/d",
            claim.clone(),
        ),
        Expect::new("GET", PODS, list("Pod", vec![])),
        Expect::new(
            "PATCH",
            format!("{JOBS}/{}", mover::job_name("rst", "r", "d")),
            Value::Null,
        )
        .check(|job| {
            let args = job["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
            assert!(
                args.contains("s3://b/full.snapshot") && !args.contains("--collection"),
                "{args}"
            );
        }),
        status_check(|s| assert_eq!(s["nodes"][0]["phase"], "Running")),
        event("Running"),
    ];
    run(SnapshotRestore::test_of(spec()), source(), script)
        .await
        .unwrap();

    // A running pod mounts it: that node fails, and says why.
    let script = vec![
        Expect::new(
            "GET",
            "/api/v1/namespaces/ns/persistentvolumeclaims/d",
            claim,
        ),
        Expect::new("GET", PODS, list("Pod", vec![mounting])),
        status_check(|s| {
            assert_eq!(s["phase"], "Failed");
            let message = s["nodes"][0]["message"].as_str().unwrap();
            assert!(message.contains("mounted by running pod db"), "{message}");
        }),
        event("Failed"),
    ];
    run(SnapshotRestore::test_of(spec()), source(), script)
        .await
        .unwrap();
}

#[tokio::test]
async fn claims_of_running_pods_are_refused_without_stop_workload() {
    let script = vec![
        Expect::new("GET", STS, statefulset(2)),
        Expect::new(
            "GET",
            PODS,
            list("Pod", vec![workload_pod(0, "w"), workload_pod(1, "w")]),
        ),
        status_check(|s| {
            assert_eq!(s["phase"], "Failed");
            let message = s["nodes"][0]["message"].as_str().unwrap();
            assert!(
                message.contains("mounted by running pod qdrant-0")
                    && message.contains("stopWorkload"),
                "{message}"
            );
        }),
        event("Failed"),
    ];
    run(
        SnapshotRestore::test().stop_workload(false),
        source(),
        script,
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn an_unfinished_snapshot_is_waited_for() {
    let script = vec![status_check(|s| {
        assert_eq!(s["phase"], "Pending");
        assert_eq!(
            s["conditions"][0]["message"],
            "waiting for Snapshot s to finish"
        );
    })];
    assert_eq!(
        run(
            SnapshotRestore::test(),
            cluster("Running", vec![], vec![]),
            script
        )
        .await
        .unwrap(),
        Action::requeue(RECHECK)
    );
}

#[tokio::test]
async fn deleting_a_restore_mid_way_restarts_the_workload() {
    let script = vec![
        Expect::new("PATCH", format!("{STS}/scale"), scale(3))
            .check(|b| assert_eq!(b["spec"]["replicas"], 3)),
        Expect::new("PATCH", RESTORES, stored())
            .check(|b| assert!(b.to_string().contains("remove"))),
    ];
    run(
        SnapshotRestore::test()
            .with_status(json!({"stoppedReplicas": 3, "phase": "Running"}))
            .deleting(),
        source(),
        script,
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn through_qdrant_s_api_each_node_s_archive_is_uploaded_to_its_running_pod() {
    let mut restore = SnapshotRestore::test().stop_workload(false);
    restore.spec.method = crate::api::restore::RestoreMethod::QdrantApi;
    restore.spec.qdrant = Some(
        serde_json::from_value(
            json!({"scheme": "https", "port": 6334, "apiKeySecret": {"name": "k", "key": "key"}}),
        )
        .unwrap(),
    );
    let upload = |node: &'static str, archive: &'static str| {
        Expect::new(
            "PATCH",
            format!("{JOBS}/{}", mover::job_name("rst", "r", node)),
            Value::Null,
        )
        .check(move |job| {
            let pod = &job["spec"]["template"]["spec"];
            assert_eq!(pod.get("volumes"), Some(&json!([])), "no volume: {pod}");
            let container = &pod["containers"][0];
            let args = container["args"].to_string();
            let url = format!("https://{node}.qdrant.ns.svc:6334");
            assert!(
                args.contains(r#""api-restore""#)
                    && args.contains(&url)
                    && args.contains(archive),
                "{args}"
            );
            let env = container["env"].to_string();
            assert!(
                env.contains(r#"{"name":"QDRANT_API_KEY","valueFrom":{"secretKeyRef":{"key":"key","name":"k","optional":false}}}"#),
                "{env}"
            );
        })
    };
    let script = vec![
        Expect::new("GET", STS, statefulset(2)),
        // The pods run and mount their claims: they are the ones that recover.
        Expect::new(
            "GET",
            PODS,
            list("Pod", vec![workload_pod(0, "w"), workload_pod(1, "w")]),
        ),
        Expect::new("GET", STS, statefulset(2)),
        Expect::new("GET", STS, statefulset(2)),
        // Each its own archive, with the checksum the Snapshot recorded.
        upload(
            "qdrant-0",
            r#""products/products-qdrant-0.snapshot","--collection","products","--priority","snapshot","--checksum","aa""#,
        ),
        upload(
            "qdrant-1",
            r#""products/products-qdrant-1.snapshot","--collection","products","--priority","snapshot","--checksum","bb""#,
        ),
        status_check(|s| {
            assert_eq!(s["phase"], "Running");
            assert_eq!(s["nodes"][0]["phase"], "Running");
            assert_eq!(s["nodes"][1]["phase"], "Running");
        }),
        event("Running"),
    ];
    run(restore, source(), script).await.unwrap();
}
