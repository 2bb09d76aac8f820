//! What the operations share: their error, their progress reports, what a snapshot made is
//! and the names it may be stored under.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;

use crate::engine::archive::{Archived, CreateError};
use crate::engine::name;
use crate::engine::restore::RestoreError;
use crate::protocol::ProgressLine;
use crate::source::SourceError;
use crate::storage::{ObjectInfo, StorageError};

/// Reports progress: bytes done so far.
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

/// A progress reporter that reports nothing.
pub fn no_progress() -> Progress {
    Arc::new(|_| {})
}

/// What a mover has moved so far, for the progress lines it prints.
#[derive(Debug)]
pub struct Meter {
    done: AtomicU64,
    /// `u64::MAX`: not known.
    total: AtomicU64,
}

impl Default for Meter {
    fn default() -> Self {
        Self {
            done: AtomicU64::new(0),
            total: AtomicU64::new(u64::MAX),
        }
    }
}

impl Meter {
    /// The reporter that counts into this meter.
    pub fn progress(self: &Arc<Self>) -> Progress {
        let meter = self.clone();
        Arc::new(move |n| meter.done.store(n, Ordering::Relaxed))
    }

    /// What the count reaches at the end, when known.
    pub fn set_total(&self, total: Option<u64>) {
        self.total
            .store(total.unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// The count so far.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    fn total(&self) -> Option<u64> {
        Some(self.total.load(Ordering::Relaxed)).filter(|t| *t != u64::MAX)
    }
}

/// A rate over the last few samples (pure).
#[derive(Debug, Default)]
pub struct Rate {
    /// (time since the start, count) of the samples kept, oldest first.
    samples: VecDeque<(Duration, u64)>,
}

impl Rate {
    /// Samples older than this before the newest do not count.
    const WINDOW: Duration = Duration::from_secs(10);

    /// Adds the count `done` at `at`; the rate (per second) since the oldest sample kept.
    pub fn add(&mut self, at: Duration, done: u64) -> u64 {
        self.samples.push_back((at, done));
        while let Some(&(first, _)) = self.samples.front() {
            if at.saturating_sub(first) > Self::WINDOW && self.samples.len() > 2 {
                self.samples.pop_front();
            } else {
                break;
            }
        }
        let (first_at, first_done) = self.samples[0];
        let seconds = at.saturating_sub(first_at).as_secs_f64();
        if seconds <= 0.0 {
            return 0;
        }
        (done.saturating_sub(first_done) as f64 / seconds) as u64
    }
}

/// Prints a progress line of `meter` on standard output every `every`, until dropped (the
/// mover's log, which the controller reads).
pub async fn print_progress(meter: Arc<Meter>, every: Duration) {
    let start = tokio::time::Instant::now();
    let mut rate = Rate::default();
    let mut tick = tokio::time::interval_at(start + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let done = meter.done();
        let line = ProgressLine {
            bytes_done: done,
            bytes_total: meter.total(),
            bytes_per_second: rate.add(start.elapsed(), done),
        };
        println!("{}", line.to_line());
    }
}

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error(transparent)]
    Create(#[from] CreateError),
    #[error(transparent)]
    Restore(#[from] RestoreError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Name(#[from] name::NameError),
    #[error(transparent)]
    Qdrant(#[from] crate::qdrant_api::ApiError),
    #[error(transparent)]
    Crypt(#[from] crate::crypt::CryptError),
    #[error("{0}")]
    Usage(String),
}

/// A snapshot that was created.
#[derive(Debug, Clone, Serialize)]
pub struct Created {
    /// Archive file name.
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collection: Option<String>,
    pub node: String,
    pub created_at: Timestamp,
    /// The archive in storage (key, location, size, checksum).
    pub archive: ObjectInfo,
    /// What went into it, when read from the storage directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<Archived>,
    /// The snapshot Qdrant made, when made through its API (deleted from its disk since).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qdrant_snapshot: Option<String>,
    /// Whether it is stored encrypted (an age file).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub encrypted: bool,
}

/// The keys an archive of `collection` taken on `node` at `at` may be stored under: its
/// name, then the same with a suffix, for a second archive of the same second.
pub fn archive_naming(
    collection: Option<&str>,
    node: &str,
    at: Timestamp,
) -> Result<impl Fn(u32) -> Option<String> + Send + Sync + use<>, OpsError> {
    let stem = name::archive_stem(collection, node, at);
    name::validate("snapshot", &name::archive_name(&stem, 99))?;
    let collection = collection.map(str::to_owned);
    Ok(move |attempt: u32| {
        (attempt < 1000)
            .then(|| name::key(collection.as_deref(), &name::archive_name(&stem, attempt)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_over_the_last_ten_seconds() {
        let mut rate = Rate::default();
        let s = Duration::from_secs;
        assert_eq!(rate.add(s(0), 0), 0);
        assert_eq!(rate.add(s(1), 100), 100);
        assert_eq!(rate.add(s(2), 300), 150);
        // 20 s on at 10/s: the fast start has left the window.
        for t in 3..=22 {
            rate.add(s(t), 300 + (t - 2) * 10);
        }
        assert_eq!(rate.add(s(23), 510), 10);
        // Stalled: the rate falls to 0 once the window holds only the stall.
        for t in 24..=40 {
            rate.add(s(t), 510);
        }
        assert_eq!(rate.add(s(41), 510), 0);
    }

    #[test]
    fn a_meter_counts_what_its_reporter_is_told() {
        let meter = Arc::new(Meter::default());
        assert_eq!(meter.total(), None);
        meter.set_total(Some(1000));
        (meter.progress())(400);
        assert_eq!((meter.done(), meter.total()), (400, Some(1000)));
    }
}
