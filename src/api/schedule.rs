//! The `SnapshotSchedule` custom resource: Snapshots taken on a schedule and pruned by
//! count.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::condition::conditions_schema;
use super::snapshot::SnapshotSpec;
use crate::retention::Policy;

/// Snapshots taken on a schedule (cron or `@every`, in a time zone) from a template, and
/// pruned by count (restic's keepLast / hourly / daily / weekly / monthly / yearly). The
/// Snapshots are not owned by the schedule: deleting it keeps them.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "snapshot-operator.dev",
    version = "v1alpha1",
    kind = "SnapshotSchedule",
    namespaced,
    status = "SnapshotScheduleStatus",
    shortname = "snapsched",
    category = "snapshot-operator",
    printcolumn = r#"{"name":"Schedule","type":"string","jsonPath":".spec.schedule"}"#,
    printcolumn = r#"{"name":"Suspended","type":"boolean","jsonPath":".spec.suspend"}"#,
    printcolumn = r#"{"name":"Last Success","type":"date","jsonPath":".status.lastSuccessfulTime"}"#,
    printcolumn = r#"{"name":"Next","type":"date","jsonPath":".status.nextScheduleTime"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    doc = "Snapshots taken on a schedule from a template, and pruned by count."
)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotScheduleSpec {
    /// When to take a Snapshot: five cron fields (`minute hour day-of-month month
    /// day-of-week`, e.g. `0 2 * * *`), `@hourly`, `@daily`, `@weekly`, `@monthly`,
    /// `@yearly`, or `@every <duration>` (e.g. `@every 6h`, at least one minute, counted from
    /// the schedule's creation).
    #[schemars(length(min = 1, max = 256))]
    pub schedule: String,
    /// The IANA time zone the schedule and the retention periods are counted in (default
    /// `UTC`), e.g. `Europe/Berlin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub time_zone: Option<String>,
    /// The spec of each Snapshot taken, checked like a Snapshot's.
    pub template: SnapshotSpec,
    /// Which of its finished Snapshots to keep; the others are deleted (their
    /// `deletionPolicy` decides their archives). Without rules, all successful ones are kept.
    #[serde(default)]
    pub retention: Retention,
    /// Take no Snapshots while true (runs due meanwhile are not counted as missed).
    #[serde(default)]
    pub suspend: bool,
    /// A run due while one of the schedule's Snapshots is still running: `Forbid` (default)
    /// skips it and counts it as missed, `Allow` takes it.
    #[serde(default)]
    pub concurrency_policy: ConcurrencyPolicy,
    /// After an outage of the operator, a run missed by less than this many seconds is
    /// still taken (once); older ones are only counted as missed. Default: the last run
    /// missed is taken, however late.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub starting_deadline_seconds: Option<i64>,
}

/// Which finished Snapshots of a schedule to keep.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Retention {
    /// Successful Snapshots kept, by rule: a Snapshot kept by any rule is kept, and the
    /// newest successful one always is.
    #[serde(flatten)]
    pub policy: Policy,
    /// How many of the newest failed Snapshots to keep (default 1).
    #[serde(default = "one")]
    pub keep_failed: u32,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            policy: Policy::default(),
            keep_failed: one(),
        }
    }
}

fn one() -> u32 {
    1
}

/// What to do with a run due while the previous Snapshot still runs.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ConcurrencyPolicy {
    /// Skip it, and count it as missed.
    #[default]
    Forbid,
    /// Take it.
    Allow,
}

/// The observed state of a schedule.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotScheduleStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The last run handled: a Snapshot taken, or a run counted as missed or skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,
    /// The next run (none while suspended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<Time>,
    /// The newest Snapshot of the schedule that succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_snapshot: Option<String>,
    /// When it completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_time: Option<Time>,
    /// Runs missed so far: the operator was down past the starting deadline, or the
    /// previous Snapshot was still running (`Forbid`).
    #[serde(default)]
    pub missed_runs: i64,
    /// The schedule and time zone `lastScheduleTime` was counted with: after an edit, runs
    /// are counted from the edit, never caught up under the new schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_schedule: Option<String>,
    /// `Ready`: True while the schedule is valid and active.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}
