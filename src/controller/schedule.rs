//! The `SnapshotSchedule` reconciler. Every decision (is a run due, which runs were missed,
//! which Snapshots to prune, when to look again) is [`decide`], a pure function of the
//! schedule, its Snapshots and the time; the reconciler only carries it out: create the
//! Snapshot of the run (named after its time, so that doing it twice is harmless), delete the
//! pruned ones, write the status, and come back at the next run instead of polling.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};

use super::{Context, Error, FIELD_MANAGER, patch_status, reject};
use crate::api::condition::{self, reason};
use crate::api::schedule::{ConcurrencyPolicy, SnapshotSchedule, SnapshotScheduleStatus};
use crate::api::snapshot::{Phase, Snapshot};
use crate::retention;
use crate::schedule::Schedule;

/// The label on a schedule's Snapshots: the schedule's name.
pub const SCHEDULE: &str = "snapshot-operator.dev/schedule";
/// The annotation on a schedule's Snapshot: the time of the run it was taken for.
pub const SCHEDULED_TIME: &str = "snapshot-operator.dev/scheduled-time";
/// Most runs looked at in one pass (after a long outage, the older ones are only counted).
const MOST_RUNS: usize = 1000;

/// What a pass does.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The status to write.
    pub status: SnapshotScheduleStatus,
    /// Take a Snapshot for the run at this time.
    pub take: Option<Timestamp>,
    /// Runs counted as missed in this pass.
    pub missed: Vec<Timestamp>,
    /// Snapshots to delete, with why.
    pub prune: Vec<(String, String)>,
    /// Look again after this long (the next run), or when something changes.
    pub requeue: Option<Duration>,
}

/// Why the schedule cannot be acted on, or the decision (pure).
pub fn decide(
    sched: &SnapshotSchedule,
    snapshots: &[Snapshot],
    now: Timestamp,
) -> Result<Decision, String> {
    let spec = &sched.spec;
    let name = sched.name_any();
    if name.len() > 63 {
        return Err(format!(
            "the name {name:?} is longer than 63 characters: it labels the Snapshots"
        ));
    }
    super::snapshot::validate(&spec.template).map_err(|e| format!("template: {e}"))?;
    let created = sched
        .meta()
        .creation_timestamp
        .as_ref()
        .map_or(now, |t| t.0);
    let schedule = Schedule::parse(&spec.schedule, spec.time_zone.as_deref(), created)?;
    let tz = match &spec.time_zone {
        Some(zone) => TimeZone::get(zone).map_err(|e| e.to_string())?,
        None => TimeZone::UTC,
    };
    let old = sched.status.clone().unwrap_or_default();
    let cadence = format!("{} {}", spec.schedule, spec.time_zone.as_deref().unwrap_or("UTC"));
    // Runs are counted from the last one handled; a new schedule from its creation, an
    // edited one from the edit.
    let since = match (&old.observed_schedule, &old.last_schedule_time) {
        (Some(seen), Some(last)) if *seen == cadence => last.0,
        (Some(seen), _) if *seen != cadence => now,
        _ => created,
    };
    let (due, more) = schedule.runs_between(since, now, MOST_RUNS);
    let mut take = None;
    let mut missed = Vec::new();
    if !spec.suspend
        && let Some((&last, older)) = due.split_last()
    {
        missed.extend_from_slice(older);
        let late = spec
            .starting_deadline_seconds
            .is_some_and(|d| now.duration_since(last).as_secs() > d);
        let running = snapshots.iter().any(|s| active(s) && s.meta().deletion_timestamp.is_none());
        if late || (running && spec.concurrency_policy == ConcurrencyPolicy::Forbid) {
            missed.push(last);
        } else {
            take = Some(last);
        }
    }
    let last_schedule_time = due.last().map(|t| Time(*t)).or(old.last_schedule_time.clone());
    let next = if spec.suspend || more {
        None
    } else {
        schedule.next_after(due.last().copied().unwrap_or(since).max(now))
    };
    let successful = last_success(snapshots);
    let (ready_reason, message) = match (spec.suspend, next) {
        (true, _) => (reason::SUSPENDED, "suspended: no Snapshots are taken".to_owned()),
        (false, Some(at)) => (reason::SCHEDULED, format!("next run at {at}")),
        (false, None) => (reason::SCHEDULED, "no further run".to_owned()),
    };
    let status = SnapshotScheduleStatus {
        observed_generation: sched.meta().generation,
        last_schedule_time,
        next_schedule_time: next.map(Time),
        last_successful_snapshot: successful.map(|(s, _)| s.name_any()),
        last_successful_time: successful.map(|(_, at)| Time(at)),
        missed_runs: old.missed_runs + missed.len() as i64,
        observed_schedule: Some(cadence),
        conditions: vec![condition::ready(
            !spec.suspend,
            ready_reason,
            message,
            sched.meta().generation,
            &old.conditions,
            Time(now),
        )],
    };
    let requeue = match (more, next) {
        // More runs than one pass looks at: the rest at once.
        (true, _) => Some(Duration::from_secs(1)),
        (false, Some(at)) => Some(Duration::from_secs(
            u64::try_from(at.duration_since(now).as_secs()).unwrap_or(0) + 1,
        )),
        (false, None) => None,
    };
    Ok(Decision {
        status,
        take,
        missed,
        prune: prune(&spec.retention, snapshots, &tz),
        requeue,
    })
}

/// Is the Snapshot still to finish?
fn active(snap: &Snapshot) -> bool {
    let phase = snap.status.as_ref().and_then(|s| s.phase);
    !matches!(phase, Some(Phase::Succeeded | Phase::Failed))
}

/// The time of the run a Snapshot was taken for (else its creation).
fn run_time(snap: &Snapshot) -> Timestamp {
    snap.annotations()
        .get(SCHEDULED_TIME)
        .and_then(|t| t.parse().ok())
        .or_else(|| snap.meta().creation_timestamp.as_ref().map(|t| t.0))
        .unwrap_or(Timestamp::UNIX_EPOCH)
}

/// The newest successful Snapshot, and when it completed.
fn last_success(snapshots: &[Snapshot]) -> Option<(&Snapshot, Timestamp)> {
    snapshots
        .iter()
        .filter(|s| s.status.as_ref().and_then(|s| s.phase) == Some(Phase::Succeeded))
        .max_by_key(|s| run_time(s))
        .map(|s| {
            let done = s.status.as_ref().and_then(|st| st.completion_time.as_ref());
            (s, done.map_or_else(|| run_time(s), |t| t.0))
        })
}

/// The finished Snapshots the retention does not keep (pure): successful ones by the
/// policy (none without rules; never the newest), failed ones beyond the newest
/// `keepFailed`. Running ones and ones already being deleted are left alone.
pub fn prune(
    retention: &crate::api::schedule::Retention,
    snapshots: &[Snapshot],
    tz: &TimeZone,
) -> Vec<(String, String)> {
    let settled = |phase: Phase| {
        let mut found: Vec<&Snapshot> = snapshots
            .iter()
            .filter(|s| s.meta().deletion_timestamp.is_none())
            .filter(|s| s.status.as_ref().and_then(|s| s.phase) == Some(phase))
            .collect();
        found.sort_by_key(|s| std::cmp::Reverse(run_time(s)));
        found
    };
    let mut pruned = Vec::new();
    let succeeded = settled(Phase::Succeeded);
    if !retention.policy.is_empty() {
        let times: Vec<Timestamp> = succeeded.iter().map(|s| run_time(s)).collect();
        let kept = retention::decide(&retention.policy, &times, tz);
        for (snap, rules) in succeeded.iter().zip(kept) {
            if rules.is_empty() {
                pruned.push((snap.name_any(), "kept by no retention rule".to_owned()));
            }
        }
    }
    let failed = settled(Phase::Failed);
    for snap in failed.iter().skip(retention.keep_failed as usize) {
        pruned.push((
            snap.name_any(),
            format!("failed, older than the newest {}", retention.keep_failed),
        ));
    }
    pruned
}

/// The name of the Snapshot of a run: `<schedule>-<UTC time>` (pure).
pub fn snapshot_name(schedule: &str, at: Timestamp) -> String {
    format!("{schedule}-{}", at.strftime("%Y%m%d-%H%M%S"))
}

/// The Snapshot of a run (pure).
pub fn snapshot_of(sched: &SnapshotSchedule, at: Timestamp) -> Snapshot {
    let name = sched.name_any();
    let mut snap = Snapshot::new(&snapshot_name(&name, at), sched.spec.template.clone());
    snap.meta_mut().namespace = sched.namespace();
    snap.labels_mut().insert(SCHEDULE.into(), name);
    snap.annotations_mut()
        .insert(SCHEDULED_TIME.into(), at.to_string());
    snap
}

/// Reconciles one schedule.
#[tracing::instrument(skip_all, fields(namespace = sched.meta().namespace.as_deref(), name = sched.meta().name.as_deref()))]
pub async fn reconcile(sched: Arc<SnapshotSchedule>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconciling("snapshotschedule");
    let ns = sched.namespace().unwrap_or_default();
    let name = sched.name_any();
    let api: Api<SnapshotSchedule> = Api::namespaced(ctx.client.clone(), &ns);
    let snapshots: Api<Snapshot> = Api::namespaced(ctx.client.clone(), &ns);
    let selector = format!("{SCHEDULE}={name}");
    let own = snapshots
        .list(&ListParams::default().labels(&selector))
        .await?
        .items;
    let now = ctx.now();
    let decision = match decide(&sched, &own, now) {
        Ok(decision) => decision,
        Err(message) => {
            let old = sched.status.clone().unwrap_or_default();
            let status = SnapshotScheduleStatus {
                observed_generation: sched.meta().generation,
                conditions: vec![condition::ready(
                    false,
                    reason::INVALID_SPEC,
                    &message,
                    sched.meta().generation,
                    &old.conditions,
                    Time(now),
                )],
                ..old
            };
            return reject(&ctx, sched.as_ref(), &api, &status, &message).await;
        }
    };
    if !decision.missed.is_empty() {
        ctx.metrics.missed_runs(&ns, &name, decision.missed.len());
        let runs: Vec<String> = decision.missed.iter().map(Timestamp::to_string).collect();
        ctx.publish(
            sched.as_ref(),
            EventType::Warning,
            "Missed",
            format!("runs not taken: {}", runs.join(", ")),
            "Schedule",
        )
        .await;
    }
    if let Some(at) = decision.take {
        let snap = snapshot_of(&sched, at);
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        match snapshots.create(&params, &snap).await {
            Ok(_) => {
                ctx.publish(
                    sched.as_ref(),
                    EventType::Normal,
                    "Scheduled",
                    format!("Snapshot {} taken for the run at {at}", snap.name_any()),
                    "Schedule",
                )
                .await;
            }
            // Taken by an earlier pass that did not get to write the status.
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    for (victim, why) in &decision.prune {
        match snapshots.delete(victim, &DeleteParams::default()).await {
            Ok(_) => {
                ctx.publish(
                    sched.as_ref(),
                    EventType::Normal,
                    "Pruned",
                    format!("Snapshot {victim} deleted: {why}"),
                    "Prune",
                )
                .await;
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(t) = &decision.status.last_successful_time {
        ctx.metrics.last_success(&ns, &name, t.0);
    }
    if sched.status.as_ref() != Some(&decision.status) {
        patch_status(&api, sched.as_ref(), &decision.status).await?;
    }
    Ok(decision
        .requeue
        .map_or_else(Action::await_change, Action::requeue))
}
