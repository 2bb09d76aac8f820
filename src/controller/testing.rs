//! A mock API server for reconciler tests (controller-rs's `ApiServerVerifier` pattern):
//! a test lists the requests a reconciliation must make, in order, each checked by method,
//! path and body, and the canned answer each gets; what the watches would hold (mover Jobs
//! and pods, Snapshots) is given as stores. The objects both reconcilers' tests use are
//! built here.

use std::sync::Arc;

use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use kube::runtime::controller::Action;
use serde_json::Value;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::cluster::Cluster;
use super::config::OperatorConfig;
use super::metrics::Metrics;
use super::{Context, Error, Wake, mover};
use crate::engine::restore::Outcome;
use crate::protocol::MoverReport;

/// Test objects built up step by step, as controller-rs's `Document::test().finalized()`:
/// each kind's tests give its `test()` object, these the common steps.
pub trait Fixture: Resource + Serialize + DeserializeOwned {
    /// Carrying the operator's finalizer, as every object it has seen once does.
    fn finalized(mut self) -> Self {
        self.meta_mut().finalizers = Some(vec![super::FINALIZER.into()]);
        self
    }

    /// Being deleted.
    fn deleting(mut self) -> Self {
        let at = serde_json::from_value(json!("2026-11-25T10:00:00Z")).unwrap();
        self.meta_mut().deletion_timestamp = Some(at);
        self
    }

    /// With the status `status` (JSON, as the API server holds it).
    fn with_status(self, status: Value) -> Self {
        let mut object = serde_json::to_value(self).unwrap();
        object["status"] = status;
        serde_json::from_value(object).unwrap()
    }
}

impl<K: Resource + Serialize + DeserializeOwned> Fixture for K {}

/// One expected request.
pub struct Expect {
    pub method: &'static str,
    /// The path and query must contain this.
    pub path: String,
    /// The JSON answered (`Null`: the request body, as the API server echoes a write; a
    /// string: that text), with `status`.
    pub status: u16,
    pub reply: Value,
    /// Checks on the request body (JSON; `Null` when empty).
    pub check: Box<dyn Fn(&Value) + Send>,
}

impl Expect {
    pub fn new(method: &'static str, path: impl Into<String>, reply: Value) -> Self {
        Self {
            method,
            path: path.into(),
            status: 200,
            reply,
            check: Box::new(|_| {}),
        }
    }

    pub fn status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    pub fn check(mut self, check: impl Fn(&Value) + Send + 'static) -> Self {
        self.check = Box::new(check);
        self
    }
}

/// An event write, answered with itself.
pub fn event(reason: &'static str) -> Expect {
    Expect::new(
        "POST",
        "/apis/events.k8s.io/v1/namespaces/ns/events",
        Value::Null,
    )
    .check(move |body| {
        assert_eq!(body["reason"], reason, "{body}");
    })
}

/// A 404 from the API server.
pub fn not_found() -> Value {
    serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})
}

/// A 409 from the API server: the object changed since it was read.
pub fn conflict() -> Value {
    serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409, "message": "the object has been modified"})
}

/// The answer to a delete.
pub fn deleted() -> Value {
    serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Success"})
}

/// A list answer.
pub fn list(kind: &str, items: Vec<Value>) -> Value {
    serde_json::json!({"kind": format!("{kind}List"), "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items})
}

/// The mock server's side: answers requests in the order the scenario lists them.
pub struct Verifier(tower_test::mock::Handle<Request<Body>, Response<Body>>);

impl Verifier {
    /// Runs the scenario; panics on an unexpected request. Returns when all were seen.
    pub fn run(mut self, script: Vec<Expect>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            for (i, expect) in script.into_iter().enumerate() {
                let (request, send) =
                    tokio::time::timeout(std::time::Duration::from_secs(5), self.0.next_request())
                        .await
                        .unwrap_or_else(|_| {
                            panic!("request {i} ({} {}) never came", expect.method, expect.path)
                        })
                        .expect("the client is alive");
                let method = request.method().to_string();
                let uri = request.uri().to_string();
                assert_eq!(method, expect.method, "request {i}: {method} {uri}");
                assert!(
                    uri.contains(&expect.path),
                    "request {i}: {method} {uri}, expected {}",
                    expect.path
                );
                let bytes = request.into_body().collect_bytes().await.unwrap();
                let body = if bytes.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
                };
                (expect.check)(&body);
                let reply = if expect.reply.is_null() {
                    &body
                } else {
                    &expect.reply
                };
                // A string is answered as text (a pod's log).
                let bytes = match reply {
                    Value::String(text) => text.clone().into_bytes(),
                    json => serde_json::to_vec(json).unwrap(),
                };
                let response = Response::builder()
                    .status(expect.status)
                    .body(Body::from(bytes))
                    .unwrap();
                send.send_response(response);
            }
        })
    }
}

/// Runs one reconciliation (`reconcile`, given a context whose client talks to the mock
/// server) against `script`, checking that every expected request was made; returns its
/// result and the metrics it recorded, as `/metrics` shows them.
pub async fn scripted<F>(
    config: OperatorConfig,
    cluster: Cluster,
    script: Vec<Expect>,
    reconcile: impl FnOnce(Arc<Context>) -> F,
) -> (Result<Action, Error>, String)
where
    F: Future<Output = Result<Action, Error>>,
{
    scripted_at(config, cluster, jiff::Timestamp::now(), script, reconcile).await
}

/// [`scripted`] with the clock stopped at `now`.
pub async fn scripted_at<F>(
    config: OperatorConfig,
    cluster: Cluster,
    now: jiff::Timestamp,
    script: Vec<Expect>,
    reconcile: impl FnOnce(Arc<Context>) -> F,
) -> (Result<Action, Error>, String)
where
    F: Future<Output = Result<Action, Error>>,
{
    let context = move |client| {
        let metrics = Arc::new(Metrics::default());
        Context::new(client, config, metrics, "test", cluster, Wake::default())
            .with_clock(Arc::new(move || now))
    };
    scripted_in(context, script, reconcile).await
}

/// [`scripted`] in the context `context` makes of the mock server's client.
pub async fn scripted_in<F>(
    context: impl FnOnce(Client) -> Context,
    script: Vec<Expect>,
    reconcile: impl FnOnce(Arc<Context>) -> F,
) -> (Result<Action, Error>, String)
where
    F: Future<Output = Result<Action, Error>>,
{
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = Arc::new(context(Client::new(service, "default")));
    let verifier = Verifier(handle).run(script);
    let result = reconcile(ctx.clone()).await;
    verifier.await.expect("every expected request was made");
    (result, ctx.metrics.render())
}

/// Stores holding only these mover Jobs and pods.
pub fn movers(jobs: Vec<Job>, pods: Vec<Pod>) -> Cluster {
    Cluster::of(jobs, pods, Vec::new(), Vec::new())
}

/// The mover Job `prefix` (`snap`, `rst`, `del`) of the resource `owner` (UID `owner_uid`)
/// on `node`, as the operator creates it, with the condition `condition` once finished.
pub fn mover_job(
    prefix: &str,
    (owner, owner_uid): (&str, &str),
    node: &str,
    condition: Option<&str>,
) -> Job {
    let name = mover::job_name(prefix, owner, node);
    let operation = match prefix {
        "snap" => "snapshot",
        "rst" => "restore",
        _ => "delete",
    };
    let kind = if prefix == "rst" {
        "SnapshotRestore"
    } else {
        "Snapshot"
    };
    let mut job = json!({"apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"),
            "labels": mover::labels(owner_uid, operation, node),
            "ownerReferences": [{"apiVersion": "snapshot-operator.dev/v1alpha1", "kind": kind,
                "name": owner, "uid": owner_uid, "controller": true}]},
        "spec": {"template": {}}});
    if let Some(c) = condition {
        job["status"] = json!({"startTime": "2026-11-25T10:00:00Z", "completionTime": "2026-11-25T10:00:04Z",
            "conditions": [{"type": c, "status": "True", "reason": "BackoffLimitExceeded",
                "message": "Job has reached the specified backoff limit"}]});
    }
    serde_json::from_value(job).unwrap()
}

/// The pod of `job` whose mover ended with `exit_code` and the termination message
/// `message`, `finished` seconds after 10:00, controlled by the Job.
pub fn mover_pod(job: &Job, exit_code: i32, message: &str, finished: u32) -> Pod {
    let meta = json!({"name": format!("{}-{finished}-{exit_code}", job.name_any()), "namespace": "ns",
        "labels": {"job-name": job.name_any(), "batch.kubernetes.io/job-name": job.name_any()},
        "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job",
            "name": job.name_any(), "uid": job.uid().unwrap(), "controller": true}]});
    let phase = if exit_code == 0 {
        "Succeeded"
    } else {
        "Failed"
    };
    serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta,
        "spec": {"containers": []},
        "status": {"phase": phase, "containerStatuses": [{"name": "mover", "image": "x", "imageID": "",
            "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": exit_code, "message": message,
                "finishedAt": format!("2026-11-25T10:00:{finished:02}Z")}}}]}}))
    .unwrap()
}

/// `pod` not controlled by its Job: it only carries the Job's labels, as any pod can.
pub fn unowned(mut pod: Pod) -> Pod {
    pod.metadata.owner_references = None;
    pod
}

/// What a snapshot mover that stored `key` (`size` bytes, SHA-256 `checksum`) reports, as
/// it writes it to its termination message.
pub fn stored_report(key: &str, size: u64, checksum: Option<&str>) -> String {
    report(MoverReport {
        name: key.rsplit('/').next().map(Into::into),
        key: Some(key.into()),
        size: Some(size),
        checksum: checksum.map(Into::into),
        ..MoverReport::default()
    })
}

/// What a restore mover reports: the node `outcome`, `size` bytes, why it was skipped.
pub fn restore_report(outcome: Outcome, size: u64, reason: Option<&str>) -> String {
    report(MoverReport {
        outcome: Some(outcome),
        size: Some(size),
        reason: reason.map(Into::into),
        ..MoverReport::default()
    })
}

/// What a mover that failed with `error` reports.
pub fn failed_report(error: &str) -> String {
    report(MoverReport {
        error: Some(error.into()),
        ..MoverReport::default()
    })
}

fn report(report: MoverReport) -> String {
    serde_json::to_string(&report).unwrap()
}

/// A StatefulSet `qdrant` with `replicas` and the claim template `data`.
pub fn statefulset(replicas: i32) -> serde_json::Value {
    json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "qdrant", "namespace": "ns"},
           "spec": {"replicas": replicas, "selector": {}, "serviceName": "qdrant", "template": {},
                    "volumeClaimTemplates": [{"metadata": {"name": "data"}}]}})
}

/// The running pod `qdrant-<i>` on the Kubernetes node `worker`, mounting its claim.
pub fn workload_pod(i: u32, worker: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("qdrant-{i}"), "namespace": "ns"},
           "spec": {"nodeName": worker, "containers": [],
                    "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": format!("data-qdrant-{i}")}}]},
           "status": {"phase": "Running"}})
}
