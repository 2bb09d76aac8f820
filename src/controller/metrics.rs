//! Prometheus metrics (`snapshot_operator_*`, OpenMetrics text from `prometheus-client`) and
//! the HTTP endpoints that serve them with `/healthz` and `/readyz` (axum).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// Upper bounds (seconds) of the mover duration histogram.
const MOVER_BUCKETS: [f64; 10] = [
    1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 14400.0,
];
/// Upper bounds (seconds) of the reconcile duration histogram.
const RECONCILE_BUCKETS: [f64; 8] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabel {
    resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    resource: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScheduleLabels {
    namespace: String,
    schedule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabel {
    operation: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// The operator's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconciliations: Family<ResourceLabel, Counter>,
    failures: Family<FailureLabels, Counter>,
    reconcile_duration: Histograms<ResourceLabel>,
    archived: Counter,
    restored: Counter,
    mover_duration: Histograms<OperationLabel>,
    watch_errors: Family<ResourceLabel, Counter>,
    progress_reads: Family<ResultLabel, Counter>,
    imported: Counter,
    import_failures: Counter,
    missed_runs: Family<ScheduleLabels, Counter>,
    last_success: Family<ScheduleLabels, Gauge>,
    ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let mut reg = Registrar(&mut registry);
        let reconciliations = reg.add(
            "snapshot_operator_reconciliations",
            "Reconciliations, by resource",
            Family::default(),
        );
        let failures = reg.add(
            "snapshot_operator_reconcile_failures",
            "Failed reconciliations and invalid specs, by resource and reason",
            Family::default(),
        );
        let reconcile_duration: Histograms<ResourceLabel> = reg.add(
            "snapshot_operator_reconcile_duration_seconds",
            "Time one reconciliation takes, by resource",
            Family::new_with_constructor(|| Histogram::new(RECONCILE_BUCKETS)),
        );
        let archived = reg.add(
            "snapshot_operator_archived_bytes",
            "Bytes of archives stored by snapshot movers",
            Counter::default(),
        );
        let restored = reg.add(
            "snapshot_operator_restored_bytes",
            "Bytes of archives restored by restore movers",
            Counter::default(),
        );
        let mover_duration: Histograms<OperationLabel> = reg.add(
            "snapshot_operator_mover_duration_seconds",
            "Time from a mover Job's start to its end, by operation",
            Family::new_with_constructor(|| Histogram::new(MOVER_BUCKETS)),
        );
        let watch_errors = reg.add(
            "snapshot_operator_watch_errors",
            "Failed list or watch requests (each retried with backoff), by resource",
            Family::default(),
        );
        let progress_reads = reg.add(
            "snapshot_operator_progress_reads",
            "Reads of a running mover's log for its progress, by result (read, none, failed)",
            Family::default(),
        );
        let imported = reg.add(
            "snapshot_operator_imported_snapshots",
            "Snapshots created by the catalog import from the default storage",
            Counter::default(),
        );
        let import_failures = reg.add(
            "snapshot_operator_import_failures",
            "Catalog import passes that failed (each retried after the interval)",
            Counter::default(),
        );
        let missed_runs = reg.add(
            "snapshot_operator_schedule_missed_runs",
            "Runs of a SnapshotSchedule not taken (past the starting deadline, or the previous Snapshot still running)",
            Family::default(),
        );
        let last_success = reg.add(
            "snapshot_operator_schedule_last_success_timestamp_seconds",
            "When the newest successful Snapshot of a SnapshotSchedule completed (Unix time)",
            Family::default(),
        );
        Self {
            registry,
            reconciliations,
            failures,
            reconcile_duration,
            archived,
            restored,
            mover_duration,
            watch_errors,
            progress_reads,
            imported,
            import_failures,
            missed_runs,
            last_success,
            ready: AtomicBool::new(false),
        }
    }
}

/// Registers metrics.
struct Registrar<'r>(&'r mut Registry);

impl Registrar<'_> {
    /// `metric`, registered as `name` with `help`.
    fn add<M: prometheus_client::registry::Metric + Clone>(
        &mut self,
        name: &str,
        help: &str,
        metric: M,
    ) -> M {
        self.0.register(name, help, metric.clone());
        metric
    }
}

fn schedule_labels(namespace: &str, schedule: &str) -> ScheduleLabels {
    ScheduleLabels {
        namespace: namespace.to_owned(),
        schedule: schedule.to_owned(),
    }
}

/// Observes a reconciliation's duration when dropped.
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    resource: String,
    started: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .reconcile_duration
            .get_or_create(&ResourceLabel {
                resource: std::mem::take(&mut self.resource),
            })
            .observe(self.started.elapsed().as_secs_f64());
    }
}

impl Metrics {
    /// A catalog import pass created `count` Snapshots.
    pub fn imported(&self, count: usize) {
        self.imported.inc_by(count as u64);
    }

    /// A catalog import pass failed.
    pub fn import_failed(&self) {
        self.import_failures.inc();
    }

    /// A reconciliation of `resource` (`snapshot`, `snapshotrestore`) starts; its duration
    /// is observed when the returned guard goes.
    pub fn reconciling(&self, resource: &str) -> ReconcileTimer<'_> {
        let label = ResourceLabel {
            resource: resource.to_owned(),
        };
        self.reconciliations.get_or_create(&label).inc();
        ReconcileTimer {
            metrics: self,
            resource: label.resource,
            started: Instant::now(),
        }
    }

    /// A failed reconciliation, by reason.
    pub fn failed(&self, resource: &str, reason: &str) {
        self.failures
            .get_or_create(&FailureLabels {
                resource: resource.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Bytes written to storage by snapshot movers.
    pub fn archived(&self, bytes: u64) {
        self.archived.inc_by(bytes);
    }

    /// Bytes of archives restored by restore movers.
    pub fn restored(&self, bytes: u64) {
        self.restored.inc_by(bytes);
    }

    /// A mover finished after `seconds`.
    pub fn mover_finished(&self, operation: &str, seconds: f64) {
        self.mover_duration
            .get_or_create(&OperationLabel {
                operation: operation.to_owned(),
            })
            .observe(seconds);
    }

    /// A mover's log was read for its progress: `read` (a progress line found), `none` or
    /// `failed`.
    pub fn progress_read(&self, result: &str) {
        self.progress_reads
            .get_or_create(&ResultLabel {
                result: result.to_owned(),
            })
            .inc();
    }

    /// A schedule missed `count` runs.
    pub fn missed_runs(&self, namespace: &str, schedule: &str, count: usize) {
        self.missed_runs
            .get_or_create(&schedule_labels(namespace, schedule))
            .inc_by(count as u64);
    }

    /// The newest successful Snapshot of a schedule completed at `at`.
    pub fn last_success(&self, namespace: &str, schedule: &str, at: jiff::Timestamp) {
        self.last_success
            .get_or_create(&schedule_labels(namespace, schedule))
            .set(at.as_second());
    }

    /// A list or watch of `resource` failed (it is retried).
    pub fn watch_failed(&self, resource: &str) {
        self.watch_errors
            .get_or_create(&ResourceLabel {
                resource: resource.to_owned(),
            })
            .inc();
    }

    /// Marks the controller ready (it is leading and watching) or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// The routes: `/metrics`, `/healthz`, `/readyz`.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(m): State<Arc<Metrics>>| async move {
                let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
                ([(header::CONTENT_TYPE, content_type)], m.render())
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|State(m): State<Arc<Metrics>>| async move {
                if m.ready.load(Ordering::SeqCst) {
                    (StatusCode::OK, "ready\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                }
            }),
        )
        .with_state(metrics)
}

/// Serves the routes on `address` until `shutdown` resolves.
pub async fn serve(
    address: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(address).await?;
    tracing::info!(%address, "serving /metrics, /healthz and /readyz");
    axum::serve(listener, router(metrics))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_counters_and_histograms() {
        let m = Metrics::default();
        drop(m.reconciling("snapshot"));
        drop(m.reconciling("snapshot"));
        m.failed("snapshot", "InvalidSpec");
        m.archived(1024);
        m.mover_finished("snapshot", 12.0);
        let text = m.render();
        for line in [
            r#"snapshot_operator_reconciliations_total{resource="snapshot"} 2"#,
            r#"snapshot_operator_reconcile_failures_total{resource="snapshot",reason="InvalidSpec"} 1"#,
            "snapshot_operator_archived_bytes_total 1024",
            r#"snapshot_operator_mover_duration_seconds_bucket{le="5.0",operation="snapshot"} 0"#,
            r#"snapshot_operator_mover_duration_seconds_bucket{le="15.0",operation="snapshot"} 1"#,
            r#"snapshot_operator_mover_duration_seconds_count{operation="snapshot"} 1"#,
            r#"snapshot_operator_reconcile_duration_seconds_count{resource="snapshot"} 2"#,
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
        }
    }

    #[tokio::test]
    async fn endpoints_answer_over_http() {
        crate::tls::install_crypto_provider();
        let m = Arc::new(Metrics::default());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(axum::serve(listener, router(m.clone())).into_future());
        let get = |path: &'static str| async move {
            let r = reqwest::get(format!("http://{address}{path}"))
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        };
        assert_eq!(get("/readyz").await.0, 503);
        m.set_ready(true);
        assert_eq!(get("/readyz").await, (200, "ready\n".into()));
        assert_eq!(get("/healthz").await, (200, "ok\n".into()));
        assert_eq!(get("/nope").await.0, 404);
        m.watch_failed("pods");
        let (status, body) = get("/metrics").await;
        assert_eq!(status, 200);
        assert!(
            body.contains(r#"snapshot_operator_watch_errors_total{resource="pods"} 1"#),
            "{body}"
        );
    }
}
