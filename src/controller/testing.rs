//! A mock API server for reconciler tests (controller-rs's `ApiServerVerifier` pattern):
//! a test lists the requests a reconciliation must make, in order, each checked by method,
//! path and body, and the canned answer each gets.

use std::sync::Arc;

use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use kube::runtime::controller::Action;
use serde_json::Value;

use super::config::OperatorConfig;
use super::metrics::Metrics;
use super::{Context, Error};

/// One expected request.
pub struct Expect {
    pub method: &'static str,
    /// The path and query must contain this.
    pub path: String,
    /// The JSON answered (`Null`: the request body, as the API server echoes a write), with
    /// `status`.
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
                let response = Response::builder()
                    .status(expect.status)
                    .body(Body::from(serde_json::to_vec(reply).unwrap()))
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
    script: Vec<Expect>,
    reconcile: impl FnOnce(Arc<Context>) -> F,
) -> (Result<Action, Error>, String)
where
    F: Future<Output = Result<Action, Error>>,
{
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let ctx = Arc::new(Context::new(
        client,
        config,
        Arc::new(Metrics::default()),
        "test",
    ));
    let verifier = Verifier(handle).run(script);
    let result = reconcile(ctx.clone()).await;
    verifier.await.expect("every expected request was made");
    (result, ctx.metrics.render())
}
