//! Running movers' progress, read from their logs through the API server (movers have no
//! API access; they print [`ProgressLine`]s). Each mover is read at most once per interval,
//! all movers together at most `readsPerSecond` times a second: with more movers than that
//! allows, each is read less often, never the API server more.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, LogParams};
use kube::{Client, ResourceExt};

use crate::api::condition::Progress;
use crate::controller::config::ProgressConfig;
use crate::controller::metrics::Metrics;
use crate::protocol::ProgressLine;

/// Log lines read from a mover's end: its last progress line is among them, whatever it
/// logged between two.
const TAIL_LINES: i64 = 10;
/// Bytes read at most from them.
const LIMIT_BYTES: i64 = 4096;
/// How long a log read may take.
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// A pod's last progress is forgotten once not read for this long (it is gone).
const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// The progress of running movers, as last read.
pub struct ProgressReads {
    interval: Duration,
    budget: Mutex<Budget>,
    /// By pod UID.
    seen: Mutex<HashMap<String, Seen>>,
}

/// A pod's last read.
#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    progress: Option<Progress>,
}

/// What the next read may be: whether it is due, and whether the budget allows it.
#[derive(Debug, PartialEq)]
enum Next {
    /// Not due, or over the budget: the last one read.
    Keep(Option<Progress>),
    /// Read now (the last one read, in case the read fails).
    Read(Option<Progress>),
}

impl ProgressReads {
    pub fn new(config: &ProgressConfig) -> Self {
        Self {
            interval: config.interval(),
            budget: Mutex::new(Budget::new(config.reads_per_second.get())),
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// The time between two reads of one mover.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Whether the pod `uid` is read now (pure but for the locks); a read is recorded as
    /// taken at once, so that two reconciles at the same time read once.
    fn next(&self, uid: &str, now: Instant) -> Next {
        let mut seen = self.seen.lock().expect("progress lock");
        seen.retain(|_, s| now.saturating_duration_since(s.at) < FORGET_AFTER);
        let last = seen.get(uid).cloned();
        let due = last
            .as_ref()
            .is_none_or(|s| now.saturating_duration_since(s.at) >= self.interval);
        let progress = last.and_then(|s| s.progress);
        if !due || !self.budget.lock().expect("budget lock").take(now) {
            return Next::Keep(progress);
        }
        let taken = Seen {
            at: now,
            progress: progress.clone(),
        };
        seen.insert(uid.to_owned(), taken);
        Next::Read(progress)
    }

    fn record(&self, uid: &str, progress: Option<Progress>) {
        if let Some(s) = self.seen.lock().expect("progress lock").get_mut(uid) {
            s.progress = progress;
        }
    }

    /// The progress of the running mover pod `pod`: read from its log when due and within
    /// the budget, else as last read. A failed read is logged and counted, never an error.
    pub async fn of(&self, client: &Client, pod: &Pod, metrics: &Metrics) -> Option<Progress> {
        let uid = pod.uid()?;
        let last = match self.next(&uid, Instant::now()) {
            Next::Keep(progress) => return progress,
            Next::Read(last) => last,
        };
        let api = Api::<Pod>::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
        let params = LogParams {
            container: Some("mover".into()),
            tail_lines: Some(TAIL_LINES),
            limit_bytes: Some(LIMIT_BYTES),
            ..LogParams::default()
        };
        // A kubelet that does not answer holds a reconcile up for little time.
        let name = pod.name_any();
        let read = match tokio::time::timeout(READ_TIMEOUT, api.logs(&name, &params)).await {
            Ok(Ok(log)) => ProgressLine::last_in(&log).map(progress_of),
            Ok(Err(e)) => {
                metrics.progress_read("failed");
                tracing::debug!(pod = %name, error = %e, "could not read a mover's log");
                return last;
            }
            Err(_) => {
                metrics.progress_read("failed");
                tracing::debug!(pod = %name, "a mover's log did not come in time");
                return last;
            }
        };
        metrics.progress_read(if read.is_some() { "read" } else { "none" });
        let progress = read.or(last);
        self.record(&uid, progress.clone());
        progress
    }
}

/// A progress line as the status shows it (pure).
fn progress_of(line: ProgressLine) -> Progress {
    let signed = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    Progress {
        bytes_done: signed(line.bytes_done),
        bytes_total: line.bytes_total.map(signed),
        bytes_per_second: signed(line.bytes_per_second),
    }
}

/// A token bucket: `per_second` tokens a second, at most `per_second` held (pure).
#[derive(Debug)]
struct Budget {
    per_second: f64,
    tokens: f64,
    at: Option<Instant>,
}

impl Budget {
    fn new(per_second: u32) -> Self {
        let per_second = f64::from(per_second);
        Self {
            per_second,
            tokens: per_second,
            at: None,
        }
    }

    /// Takes a token at `now`, if there is one.
    fn take(&mut self, now: Instant) -> bool {
        if let Some(at) = self.at {
            let earned = now.saturating_duration_since(at).as_secs_f64() * self.per_second;
            self.tokens = (self.tokens + earned).min(self.per_second);
        }
        self.at = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reads(interval_ms: u64, per_second: u32) -> ProgressReads {
        let config: ProgressConfig = serde_json::from_value(serde_json::json!({
            "intervalMilliseconds": interval_ms, "readsPerSecond": per_second}))
        .unwrap();
        ProgressReads::new(&config)
    }

    fn done(n: i64) -> Progress {
        Progress {
            bytes_done: n,
            bytes_total: None,
            bytes_per_second: 0,
        }
    }

    #[test]
    fn a_mover_is_read_once_per_interval() {
        let reads = reads(1000, 100);
        let t0 = Instant::now();
        assert_eq!(reads.next("a", t0), Next::Read(None));
        reads.record("a", Some(done(5)));
        // A second reconcile at once, and within the interval: the last one read.
        assert_eq!(reads.next("a", t0), Next::Keep(Some(done(5))));
        let soon = t0 + Duration::from_millis(999);
        assert_eq!(reads.next("a", soon), Next::Keep(Some(done(5))));
        let later = t0 + Duration::from_millis(1000);
        assert_eq!(reads.next("a", later), Next::Read(Some(done(5))));
        // Another mover has its own interval.
        assert_eq!(reads.next("b", soon), Next::Read(None));
    }

    #[test]
    fn all_movers_together_stay_within_the_budget() {
        // 1000 movers, each due every 100 ms, at most 5 reads a second.
        let reads = reads(100, 5);
        let t0 = Instant::now();
        let mut read = 0;
        for tick in 0..100u64 {
            let now = t0 + Duration::from_millis(100 * tick);
            for mover in 0..1000 {
                if matches!(reads.next(&mover.to_string(), now), Next::Read(_)) {
                    read += 1;
                }
            }
        }
        // 10 s: the first second's burst of 5, then 5 a second.
        assert!((50..=55).contains(&read), "{read} reads in 10 s");
    }

    #[test]
    fn the_budget_refills_at_its_rate_and_holds_one_second_of_it() {
        let mut budget = Budget::new(2);
        let t0 = Instant::now();
        assert!(budget.take(t0) && budget.take(t0));
        assert!(!budget.take(t0));
        assert!(budget.take(t0 + Duration::from_millis(500)));
        assert!(!budget.take(t0 + Duration::from_millis(600)));
        // An idle minute holds no more than a second's worth.
        let idle = t0 + Duration::from_secs(60);
        assert!(budget.take(idle) && budget.take(idle));
        assert!(!budget.take(idle));
    }
}
