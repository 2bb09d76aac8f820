//! Prometheus metrics (`snapshot_operator_*`) and the HTTP endpoint that serves them with
//! `/healthz` and `/readyz`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Upper bounds (seconds) of the mover duration histogram.
const BUCKETS: [f64; 10] = [
    1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 14400.0,
];

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

/// The operator's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<(&'static str, String), f64>>,
    durations: Mutex<BTreeMap<String, Histogram>>,
    ready: AtomicBool,
}

impl Metrics {
    fn add(&self, name: &'static str, labels: String, value: f64) {
        *self
            .counters
            .lock()
            .expect("not poisoned")
            .entry((name, labels))
            .or_default() += value;
    }

    /// A reconciliation of `resource` (`snapshot`, `snapshotrestore`).
    pub fn reconciled(&self, resource: &str) {
        self.add(
            "snapshot_operator_reconciliations_total",
            format!("resource=\"{resource}\""),
            1.0,
        );
    }

    /// A failed reconciliation, by reason.
    pub fn failed(&self, resource: &str, reason: &str) {
        self.add(
            "snapshot_operator_reconcile_failures_total",
            format!("resource=\"{resource}\",reason=\"{reason}\""),
            1.0,
        );
    }

    /// Bytes written to storage by snapshot movers.
    pub fn archived(&self, bytes: u64) {
        self.add(
            "snapshot_operator_archived_bytes_total",
            String::new(),
            bytes as f64,
        );
    }

    /// Bytes of archives restored by restore movers.
    pub fn restored(&self, bytes: u64) {
        self.add(
            "snapshot_operator_restored_bytes_total",
            String::new(),
            bytes as f64,
        );
    }

    /// A mover finished after `seconds`.
    pub fn mover_finished(&self, operation: &str, seconds: f64) {
        let mut durations = self.durations.lock().expect("not poisoned");
        let h = durations.entry(operation.to_owned()).or_default();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                h.counts[i] += 1;
            }
        }
        h.sum += seconds;
        h.count += 1;
    }

    /// Marks the controller ready (it is leading and watching) or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut last = "";
        for ((name, labels), value) in self.counters.lock().expect("not poisoned").iter() {
            if *name != last {
                let _ = writeln!(out, "# TYPE {name} counter");
                last = name;
            }
            let labels = if labels.is_empty() {
                String::new()
            } else {
                format!("{{{labels}}}")
            };
            let _ = writeln!(out, "{name}{labels} {value}");
        }
        let durations = self.durations.lock().expect("not poisoned");
        if !durations.is_empty() {
            let name = "snapshot_operator_mover_duration_seconds";
            let _ = writeln!(out, "# TYPE {name} histogram");
            for (op, h) in durations.iter() {
                for (bound, count) in BUCKETS.iter().zip(h.counts) {
                    let _ = writeln!(
                        out,
                        "{name}_bucket{{operation=\"{op}\",le=\"{bound}\"}} {count}"
                    );
                }
                let _ = writeln!(
                    out,
                    "{name}_bucket{{operation=\"{op}\",le=\"+Inf\"}} {}",
                    h.count
                );
                let _ = writeln!(out, "{name}_sum{{operation=\"{op}\"}} {}", h.sum);
                let _ = writeln!(out, "{name}_count{{operation=\"{op}\"}} {}", h.count);
            }
        }
        out
    }
}

/// The answer to one request path: status line and body.
fn respond(path: &str, metrics: &Metrics) -> (&'static str, String) {
    match path {
        "/metrics" => ("200 OK", metrics.render()),
        "/healthz" => ("200 OK", "ok\n".into()),
        "/readyz" if metrics.ready.load(Ordering::SeqCst) => ("200 OK", "ready\n".into()),
        "/readyz" => ("503 Service Unavailable", "not ready\n".into()),
        _ => ("404 Not Found", "not found\n".into()),
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `address` until the process ends.
pub async fn serve(address: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let listener = TcpListener::bind(address).await?;
    tracing::info!(%address, "serving /metrics, /healthz and /readyz");
    loop {
        let (mut stream, _) = listener.accept().await?;
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = vec![0; 4096];
            let Ok(n) = stream.read(&mut buf).await else {
                return;
            };
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let path = path.split('?').next().unwrap_or(path);
            let (status, body) = respond(path, &metrics);
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_counters_and_histograms() {
        let m = Metrics::default();
        m.reconciled("snapshot");
        m.reconciled("snapshot");
        m.failed("snapshot", "InvalidSpec");
        m.archived(1024);
        m.mover_finished("snapshot", 12.0);
        let text = m.render();
        assert!(
            text.contains("snapshot_operator_reconciliations_total{resource=\"snapshot\"} 2"),
            "{text}"
        );
        assert!(text.contains("snapshot_operator_reconcile_failures_total{resource=\"snapshot\",reason=\"InvalidSpec\"} 1"));
        assert!(text.contains("snapshot_operator_archived_bytes_total 1024"));
        assert!(text.contains(
            "snapshot_operator_mover_duration_seconds_bucket{operation=\"snapshot\",le=\"5\"} 0"
        ));
        assert!(text.contains(
            "snapshot_operator_mover_duration_seconds_bucket{operation=\"snapshot\",le=\"15\"} 1"
        ));
        assert!(
            text.contains(
                "snapshot_operator_mover_duration_seconds_count{operation=\"snapshot\"} 1"
            )
        );
        assert_eq!(respond("/readyz", &m).0, "503 Service Unavailable");
        m.set_ready(true);
        assert_eq!(respond("/readyz", &m).0, "200 OK");
        assert_eq!(respond("/healthz", &m).0, "200 OK");
        assert_eq!(respond("/nope", &m).0, "404 Not Found");
    }
}
