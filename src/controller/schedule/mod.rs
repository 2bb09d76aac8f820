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
use kube::api::{Api, DeleteParams, ListParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};

use super::{
    Context, Error, Invalid, create_if_absent, delete_if_there, patch_status, reject, trusted,
};
use crate::api::condition::{self, reason};
use crate::api::schedule::{
    ConcurrencyPolicy, SnapshotSchedule, SnapshotScheduleSpec, SnapshotScheduleStatus,
};
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
    restoring: &[String],
    now: Timestamp,
) -> Result<Decision, Invalid> {
    let spec = &sched.spec;
    let name = sched.name_any();
    if name.len() > 63 {
        return Err(Invalid::LongName(name));
    }
    super::snapshot::validate(&spec.template).map_err(Invalid::in_template)?;
    let created = sched
        .meta()
        .creation_timestamp
        .as_ref()
        .map_or(now, |t| t.0);
    let schedule = Schedule::parse(&spec.schedule, spec.time_zone.as_deref(), created)
        .map_err(Invalid::Schedule)?;
    let tz = schedule.time_zone();
    let old = sched.status.clone().unwrap_or_default();
    // The schedule as counted: an edit of it, a suspension or a resumption starts counting
    // afresh from that moment (nothing caught up, nothing counted as missed).
    let cadence = format!(
        "{} {}{}",
        spec.schedule,
        spec.time_zone.as_deref().unwrap_or("UTC"),
        if spec.suspend { " (suspended)" } else { "" }
    );
    let (since, afresh) = match (&old.observed_schedule, &old.last_schedule_time) {
        (Some(seen), Some(last)) if *seen == cadence => (last.0, false),
        (Some(seen), _) if *seen != cadence => (now, true),
        _ => (created, false),
    };
    let (due, more) = schedule.runs_between(since, now, MOST_RUNS);
    let (take, missed) = take_or_miss(spec, snapshots, &due, more, now);
    let last_schedule_time = due
        .last()
        .map(|t| Time(*t))
        .or_else(|| afresh.then_some(Time(now)))
        .or(old.last_schedule_time.clone());
    let next = if spec.suspend || more {
        None
    } else {
        schedule.next_after(due.last().copied().unwrap_or(since).max(now))
    };
    let successful = last_success(snapshots);
    let (ready_reason, message) = readiness(spec.suspend, next);
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
    Ok(Decision {
        status,
        take,
        missed,
        prune: prune(&spec.retention, snapshots, restoring, tz),
        requeue: requeue_after(more, next, now),
    })
}

/// Of the runs `due` (`more`: more were due than one pass looks at), the one to take now,
/// and those missed.
fn take_or_miss(
    spec: &SnapshotScheduleSpec,
    snapshots: &[Snapshot],
    due: &[Timestamp],
    more: bool,
    now: Timestamp,
) -> (Option<Timestamp>, Vec<Timestamp>) {
    let Some((&last, older)) = due.split_last().filter(|_| !spec.suspend) else {
        return (None, Vec::new());
    };
    let mut missed = older.to_vec();
    // More runs due than one pass looks at: none of these is the latest.
    let late = more
        || spec
            .starting_deadline_seconds
            .is_some_and(|d| now.duration_since(last).as_secs() > d);
    // A Snapshot of this very run is not one still running from before: an earlier pass took
    // it and did not get to write the status (the create that follows finds it there).
    let running = snapshots
        .iter()
        .any(|s| active(s) && s.meta().deletion_timestamp.is_none() && run_time(s) != last);
    if late || (running && spec.concurrency_policy == ConcurrencyPolicy::Forbid) {
        missed.push(last);
        (None, missed)
    } else {
        (Some(last), missed)
    }
}

/// The `Ready` condition's reason and message.
fn readiness(suspend: bool, next: Option<Timestamp>) -> (&'static str, String) {
    match (suspend, next) {
        (true, _) => (
            reason::SUSPENDED,
            "suspended: no Snapshots are taken".to_owned(),
        ),
        (false, Some(at)) => (reason::SCHEDULED, format!("next run at {at}")),
        (false, None) => (reason::SCHEDULED, "no further run".to_owned()),
    }
}

/// When to look again: the next run, or at once when more runs were due than one pass
/// looks at.
fn requeue_after(more: bool, next: Option<Timestamp>, now: Timestamp) -> Option<Duration> {
    match (more, next) {
        (true, _) => Some(Duration::from_secs(1)),
        (false, Some(at)) => Some(Duration::from_secs(
            u64::try_from(at.duration_since(now).as_secs()).unwrap_or(0) + 1,
        )),
        (false, None) => None,
    }
}

/// Is the Snapshot still to finish?
fn active(snap: &Snapshot) -> bool {
    let phase = snap.status.as_ref().and_then(|s| s.phase);
    !phase.is_some_and(Phase::is_final)
}

/// The time of the run a Snapshot says it was taken for (else its creation), and its
/// creation, which only the API server writes.
fn times(snap: &Snapshot) -> retention::Stored {
    let created = snap.meta().creation_timestamp.as_ref().map(|t| t.0);
    let claimed = snap
        .annotations()
        .get(SCHEDULED_TIME)
        .and_then(|t| t.parse().ok())
        .or(created)
        .unwrap_or(Timestamp::UNIX_EPOCH);
    retention::Stored {
        claimed,
        stored: created.unwrap_or(claimed),
    }
}

/// The time of the run a Snapshot was taken for: the time its annotation says, unless that
/// is later than its creation (an annotation cannot make a Snapshot newer than it is).
fn run_time(snap: &Snapshot) -> Timestamp {
    times(snap).at()
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
/// `keepFailed`. Running ones, ones already being deleted and ones a restore in progress
/// reads (`restoring`, by name) are left alone.
pub fn prune(
    retention: &crate::api::schedule::Retention,
    snapshots: &[Snapshot],
    restoring: &[String],
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
    let mut remove = |snap: &Snapshot, why: String| {
        if !restoring.contains(&snap.name_any()) {
            pruned.push((snap.name_any(), why));
        }
    };
    let succeeded = settled(Phase::Succeeded);
    if !retention.policy.is_empty() {
        let items: Vec<retention::Stored> = succeeded.iter().map(|s| times(s)).collect();
        let kept = retention::decide_stored(&retention.policy, &items, tz);
        for (snap, rules) in succeeded.iter().zip(kept) {
            if rules.is_empty() {
                remove(snap, "kept by no retention rule".to_owned());
            }
        }
    }
    let failed = settled(Phase::Failed);
    for snap in failed.iter().skip(retention.keep_failed as usize) {
        let why = format!("failed, older than the newest {}", retention.keep_failed);
        remove(snap, why);
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
    let restoring: Vec<String> = (ctx.cluster.restores_reading(&ns).into_iter())
        .map(|(snapshot, _)| snapshot)
        .collect();
    let decision = match admit(&ctx, &sched).and_then(|()| decide(&sched, &own, &restoring, now)) {
        Ok(decision) => decision,
        Err(why) => {
            let status = invalid_status(&sched, &why, now);
            return reject(&ctx, sched.as_ref(), &api, &status, &why).await;
        }
    };
    carry_out(&ctx, &sched, &snapshots, &decision).await?;
    if let Some(t) = &decision.status.last_successful_time {
        ctx.metrics.last_success(&ns, &name, t.0);
    }
    if sched.status.as_ref() != Some(&decision.status) {
        patch_status(&api, sched.as_ref(), &decision.status).await?;
    }
    // Counted once the status that counts them is written.
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

    Ok(decision
        .requeue
        .map_or_else(Action::await_change, Action::requeue))
}

/// Whether the operator may act on the template: its S3 endpoint and mover security context.
fn admit(ctx: &Context, sched: &SnapshotSchedule) -> Result<(), Invalid> {
    let template = &sched.spec.template;
    let s3 = template.storage.as_ref().and_then(|s| s.s3.as_ref());
    trusted(&ctx.config, s3, template.mover_security_context.as_ref()).map_err(Invalid::in_template)
}

/// The status of a schedule whose spec cannot be acted on.
fn invalid_status(
    sched: &SnapshotSchedule,
    why: &Invalid,
    now: Timestamp,
) -> SnapshotScheduleStatus {
    let old = sched.status.clone().unwrap_or_default();
    SnapshotScheduleStatus {
        observed_generation: sched.meta().generation,
        conditions: condition::invalid_spec(
            why,
            sched.meta().generation,
            &old.conditions,
            Time(now),
        ),
        ..old
    }
}

/// Takes the run the decision says, and prunes what it says, with an event for each.
async fn carry_out(
    ctx: &Context,
    sched: &SnapshotSchedule,
    snapshots: &Api<Snapshot>,
    decision: &Decision,
) -> Result<(), Error> {
    if let Some(at) = decision.take {
        let snap = snapshot_of(sched, at);
        // None: taken by an earlier pass that did not get to write the status.
        if create_if_absent(snapshots, &snap).await?.is_some() {
            ctx.publish(
                sched,
                EventType::Normal,
                "Scheduled",
                format!("Snapshot {} taken for the run at {at}", snap.name_any()),
                "Schedule",
            )
            .await;
        }
    }
    for (victim, why) in &decision.prune {
        if delete_if_there(snapshots, victim, &DeleteParams::default()).await? {
            ctx.publish(
                sched,
                EventType::Normal,
                "Pruned",
                format!("Snapshot {victim} deleted: {why}"),
                "Prune",
            )
            .await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
