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
use crate::api::restore::RestorePhase;
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
    let running = snapshots
        .iter()
        .any(|s| active(s) && s.meta().deletion_timestamp.is_none());
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
    let restoring = restoring(&ctx, &ns);
    let decision = match admit(&ctx, &sched).and_then(|()| decide(&sched, &own, &restoring, now)) {
        Ok(decision) => decision,
        Err(why) => {
            let status = invalid_status(&sched, &why.to_string(), now);
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

/// The Snapshots of namespace `ns` that a restore in progress reads: they are not pruned
/// under it.
fn restoring(ctx: &Context, ns: &str) -> Vec<String> {
    ctx.cluster
        .restores
        .state()
        .iter()
        .filter(|r| r.namespace().as_deref() == Some(ns))
        .filter(|r| {
            let phase = r.status.as_ref().and_then(|s| s.phase);
            !phase.is_some_and(RestorePhase::is_final)
        })
        .filter_map(|r| r.spec.source.snapshot_ref.as_ref().map(|s| s.name.clone()))
        .collect()
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
    message: &str,
    now: Timestamp,
) -> SnapshotScheduleStatus {
    let old = sched.status.clone().unwrap_or_default();
    SnapshotScheduleStatus {
        observed_generation: sched.meta().generation,
        conditions: vec![condition::ready(
            false,
            reason::INVALID_SPEC,
            message,
            sched.meta().generation,
            &old.conditions,
            Time(now),
        )],
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
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::controller::config::OperatorConfig;
    use crate::controller::testing::{Expect, deleted, event, list, movers, scripted_at};

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    /// The schedule `nightly` of namespace `ns`, created at 2026-03-10T01:00Z, with `spec`
    /// over defaults and `status`.
    fn schedule(spec: Value, status: Value) -> SnapshotSchedule {
        let mut full = json!({"schedule": "0 2 * * *",
            "template": {"source": {"persistentVolumeClaim": {"claimName": "data"}},
                         "collection": "products"}});
        for (k, v) in spec.as_object().unwrap() {
            full[k] = v.clone();
        }
        serde_json::from_value(json!({"apiVersion": "snapshot-operator.dev/v1alpha1",
            "kind": "SnapshotSchedule",
            "metadata": {"name": "nightly", "namespace": "ns", "uid": "sched-1", "generation": 1,
                "resourceVersion": "5", "creationTimestamp": "2026-03-10T01:00:00Z"},
            "spec": full, "status": status}))
        .unwrap()
    }

    /// The status after runs up to `last`, counted under `observed`.
    fn handled(last: &str, observed: &str) -> Value {
        json!({"lastScheduleTime": last, "observedSchedule": observed, "missedRuns": 0})
    }

    /// A Snapshot of the schedule for the run at `run`, in `phase` (`None`: no status yet).
    fn snap(run: &str, phase: Option<&str>) -> Snapshot {
        let run = at(run);
        let name = snapshot_name("nightly", run);
        let status = match phase {
            Some(p) => {
                json!({"phase": p, "completionTime": (run + jiff::SignedDuration::from_secs(60)).to_string()})
            }
            None => Value::Null,
        };
        serde_json::from_value(
            json!({"apiVersion": "snapshot-operator.dev/v1alpha1", "kind": "Snapshot",
            "metadata": {"name": name, "namespace": "ns", "labels": {SCHEDULE: "nightly"},
                "annotations": {SCHEDULED_TIME: run.to_string()}},
            "spec": {"source": {"persistentVolumeClaim": {"claimName": "data"}}},
            "status": status}),
        )
        .unwrap()
    }

    struct Case {
        what: &'static str,
        spec: Value,
        status: Value,
        snapshots: Vec<Snapshot>,
        now: &'static str,
        take: Option<&'static str>,
        missed: Vec<&'static str>,
        next: Option<&'static str>,
    }

    #[test]
    fn runs_due_missed_and_next() {
        let cases = [
            Case {
                what: "new, before its first run",
                spec: json!({}),
                status: Value::Null,
                snapshots: vec![],
                now: "2026-03-10T01:30:00Z",
                take: None,
                missed: vec![],
                next: Some("2026-03-10T02:00:00Z"),
            },
            Case {
                what: "a run due",
                spec: json!({}),
                status: Value::Null,
                snapshots: vec![],
                now: "2026-03-10T02:00:05Z",
                take: Some("2026-03-10T02:00:00Z"),
                missed: vec![],
                next: Some("2026-03-11T02:00:00Z"),
            },
            Case {
                what: "three runs due after an outage: the last taken, two missed",
                spec: json!({}),
                status: handled("2026-03-10T02:00:00Z", "0 2 * * * UTC"),
                snapshots: vec![],
                now: "2026-03-13T02:30:00Z",
                take: Some("2026-03-13T02:00:00Z"),
                missed: vec!["2026-03-11T02:00:00Z", "2026-03-12T02:00:00Z"],
                next: Some("2026-03-14T02:00:00Z"),
            },
            Case {
                what: "past the starting deadline: only counted",
                spec: json!({"startingDeadlineSeconds": 600}),
                status: handled("2026-03-10T02:00:00Z", "0 2 * * * UTC"),
                snapshots: vec![],
                now: "2026-03-12T02:30:00Z",
                take: None,
                missed: vec!["2026-03-11T02:00:00Z", "2026-03-12T02:00:00Z"],
                next: Some("2026-03-13T02:00:00Z"),
            },
            Case {
                what: "within the starting deadline: taken",
                spec: json!({"startingDeadlineSeconds": 600}),
                status: handled("2026-03-10T02:00:00Z", "0 2 * * * UTC"),
                snapshots: vec![],
                now: "2026-03-11T02:09:00Z",
                take: Some("2026-03-11T02:00:00Z"),
                missed: vec![],
                next: Some("2026-03-12T02:00:00Z"),
            },
            Case {
                what: "Forbid: the previous one still runs",
                spec: json!({}),
                status: handled("2026-03-10T02:00:00Z", "0 2 * * * UTC"),
                snapshots: vec![snap("2026-03-10T02:00:00Z", Some("Running"))],
                now: "2026-03-11T02:00:01Z",
                take: None,
                missed: vec!["2026-03-11T02:00:00Z"],
                next: Some("2026-03-12T02:00:00Z"),
            },
            Case {
                what: "Allow: taken beside the running one",
                spec: json!({"concurrencyPolicy": "Allow"}),
                status: handled("2026-03-10T02:00:00Z", "0 2 * * * UTC"),
                snapshots: vec![snap("2026-03-10T02:00:00Z", None)],
                now: "2026-03-11T02:00:01Z",
                take: Some("2026-03-11T02:00:00Z"),
                missed: vec![],
                next: Some("2026-03-12T02:00:00Z"),
            },
            Case {
                what: "suspended: nothing taken, nothing counted, no next run",
                spec: json!({"suspend": true}),
                status: handled("2026-03-10T02:00:00Z", "0 2 * * * UTC"),
                snapshots: vec![],
                now: "2026-03-13T03:00:00Z",
                take: None,
                missed: vec![],
                next: None,
            },
            Case {
                what: "edited between runs: counted from the edit, nothing caught up",
                spec: json!({"schedule": "@hourly"}),
                status: handled("2026-03-10T02:00:00Z", "0 2 * * * UTC"),
                snapshots: vec![],
                now: "2026-03-10T10:30:00Z",
                take: None,
                missed: vec![],
                next: Some("2026-03-10T11:00:00Z"),
            },
            Case {
                what: "the day daylight saving starts: 02:30 happens at 03:00 EDT",
                spec: json!({"schedule": "30 2 * * *", "timeZone": "America/New_York"}),
                status: handled("2026-03-07T07:30:00Z", "30 2 * * * America/New_York"),
                snapshots: vec![],
                now: "2026-03-08T07:00:30Z",
                take: Some("2026-03-08T07:00:00Z"),
                missed: vec![],
                next: Some("2026-03-09T06:30:00Z"),
            },
            Case {
                what: "the 31st: April has none",
                spec: json!({"schedule": "0 0 31 * *"}),
                status: handled("2026-03-31T00:00:00Z", "0 0 31 * * UTC"),
                snapshots: vec![],
                now: "2026-05-31T00:00:10Z",
                take: Some("2026-05-31T00:00:00Z"),
                missed: vec![],
                next: Some("2026-07-31T00:00:00Z"),
            },
        ];
        for case in cases {
            let sched = schedule(case.spec, case.status);
            let decision = decide(&sched, &case.snapshots, &[], at(case.now)).unwrap();
            let what = case.what;
            assert_eq!(decision.take, case.take.map(at), "{what}");
            let missed: Vec<Timestamp> = case.missed.iter().map(|t| at(t)).collect();
            assert_eq!(decision.missed, missed, "{what}");
            let next = decision.status.next_schedule_time.as_ref().map(|t| t.0);
            assert_eq!(next, case.next.map(at), "{what}");
            assert_eq!(decision.status.missed_runs, missed.len() as i64, "{what}");
            // Come back at the next run, not before and not by polling.
            let wait = case.next.map(|n| {
                Duration::from_secs(at(n).duration_since(at(case.now)).as_secs() as u64 + 1)
            });
            assert_eq!(decision.requeue, wait, "{what}");
            if case.take.is_some() || !case.missed.is_empty() {
                assert_eq!(
                    decision.status.last_schedule_time.map(|t| t.0),
                    case.take.or(case.missed.last().copied()).map(at),
                    "{what}"
                );
            }
        }
    }

    #[test]
    fn the_same_pass_twice_takes_the_run_once() {
        let sched = schedule(json!({}), Value::Null);
        let first = decide(&sched, &[], &[], at("2026-03-10T02:00:05Z")).unwrap();
        let mut after = sched.clone();
        after.status = Some(first.status);
        let again = decide(
            &after,
            &[snap("2026-03-10T02:00:00Z", None)],
            &[],
            at("2026-03-10T02:00:09Z"),
        )
        .unwrap();
        assert_eq!((again.take, again.missed), (None, vec![]));
    }

    #[test]
    fn an_annotation_from_the_future_never_outranks_the_snapshots_created_after_it() {
        // Created with the 5th's run, its annotation edited to say 2099; the 6th's and the
        // 7th's created after it.
        let created = |mut snap: Snapshot, at_: &str| {
            snap.meta_mut().creation_timestamp = Some(Time(at(at_)));
            snap
        };
        let mut forged = created(
            snap("2026-03-05T02:00:00Z", Some("Succeeded")),
            "2026-03-05T02:00:01Z",
        );
        forged
            .annotations_mut()
            .insert(SCHEDULED_TIME.into(), "2099-01-01T00:00:00Z".into());
        let snapshots = vec![
            forged,
            created(
                snap("2026-03-06T02:00:00Z", Some("Succeeded")),
                "2026-03-06T02:00:01Z",
            ),
            created(
                snap("2026-03-07T02:00:00Z", Some("Succeeded")),
                "2026-03-07T02:00:01Z",
            ),
        ];
        let last = json!({"retention": {"keepLast": 1}});
        let decision = decide(
            &schedule(last, Value::Null),
            &snapshots,
            &[],
            at("2026-03-07T03:00:00Z"),
        )
        .unwrap();
        let pruned: Vec<&str> = decision.prune.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            pruned,
            ["nightly-20260306-020000", "nightly-20260305-020000"],
            "the last created stays"
        );
        assert_eq!(
            decision.status.last_successful_snapshot.as_deref(),
            Some("nightly-20260307-020000")
        );
    }

    #[test]
    fn retention_prunes_finished_snapshots_only_and_keeps_the_newest_success() {
        let spec = json!({"retention": {"keepDaily": 2, "keepFailed": 1}});
        let snapshots = vec![
            snap("2026-03-05T02:00:00Z", Some("Succeeded")),
            snap("2026-03-06T02:00:00Z", Some("Succeeded")),
            snap("2026-03-06T14:00:00Z", Some("Failed")),
            snap("2026-03-07T02:00:00Z", Some("Succeeded")),
            snap("2026-03-07T03:00:00Z", Some("Failed")),
            snap("2026-03-08T02:00:00Z", Some("Failed")),
            snap("2026-03-09T02:00:00Z", None),
        ];
        let decision = decide(
            &schedule(spec, Value::Null),
            &snapshots,
            &[],
            at("2026-03-09T02:00:30Z"),
        )
        .unwrap();
        let pruned: Vec<&str> = decision.prune.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            pruned,
            [
                "nightly-20260305-020000",
                "nightly-20260307-030000",
                "nightly-20260306-140000"
            ]
        );
        assert_eq!(
            decision.status.last_successful_snapshot.as_deref(),
            Some("nightly-20260307-020000")
        );
        assert_eq!(
            decision.status.last_successful_time.map(|t| t.0),
            Some(at("2026-03-07T02:01:00Z"))
        );
        // Without rules every success stays; keepFailed: 0 removes every failure.
        let at_nine = at("2026-03-09T02:00:30Z");
        let keep_all = json!({"retention": {"keepFailed": 0}});
        let decision = decide(&schedule(keep_all, Value::Null), &snapshots, &[], at_nine).unwrap();
        assert_eq!(decision.prune.len(), 3, "{:?}", decision.prune);
        // keepLast 1: only the newest success stays; one a restore reads stays too.
        let last = json!({"retention": {"keepLast": 1}});
        let decision = decide(
            &schedule(last.clone(), Value::Null),
            &snapshots,
            &[],
            at_nine,
        )
        .unwrap();
        let pruned: Vec<&str> = decision.prune.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            pruned,
            [
                "nightly-20260306-020000",
                "nightly-20260305-020000",
                "nightly-20260307-030000",
                "nightly-20260306-140000"
            ]
        );
        let restoring = ["nightly-20260305-020000".to_owned()];
        let decision = decide(
            &schedule(last, Value::Null),
            &snapshots,
            &restoring,
            at_nine,
        )
        .unwrap();
        assert!(
            decision
                .prune
                .iter()
                .all(|(n, _)| n != "nightly-20260305-020000")
        );
        assert_eq!(decision.prune.len(), 3);
    }

    /// Passes one after the other, each reading the status the one before wrote.
    fn passes(mut sched: SnapshotSchedule, at_times: &[(&str, Option<Value>)]) -> Vec<Decision> {
        let mut decisions = Vec::new();
        for (now, spec) in at_times {
            if let Some(spec) = spec {
                sched.spec = serde_json::from_value(spec.clone()).unwrap();
            }
            let decision = decide(&sched, &[], &[], at(now)).unwrap();
            sched.status = Some(decision.status.clone());
            decisions.push(decision);
        }
        decisions
    }

    #[test]
    fn an_edit_a_suspension_and_a_resumption_start_counting_afresh() {
        let daily = json!({"schedule": "0 2 * * *", "template": {"source": {"persistentVolumeClaim": {"claimName": "data"}}}});
        let mut hourly = daily.clone();
        hourly["schedule"] = json!("@hourly");
        let mut suspended = daily.clone();
        suspended["suspend"] = json!(true);
        let seen = |d: &Decision| (d.take, d.missed.len());
        // Edited at 10:30 to hourly: the pass the edit triggers and the one its status write
        // triggers take nothing and count nothing; 11:00 is taken.
        let edited = passes(
            schedule(json!({}), handled("2026-03-10T02:00:00Z", "0 2 * * * UTC")),
            &[
                ("2026-03-10T10:30:00Z", Some(hourly.clone())),
                ("2026-03-10T10:30:01Z", None),
                ("2026-03-10T11:00:02Z", None),
            ],
        );
        let seen_edit: Vec<_> = edited.iter().map(seen).collect();
        assert_eq!(
            seen_edit,
            [(None, 0), (None, 0), (Some(at("2026-03-10T11:00:00Z")), 0)]
        );
        // Suspended for three nights, resumed at 14:00: nothing caught up, nothing missed; the
        // next night is taken.
        let resumed = passes(
            schedule(json!({}), handled("2026-03-10T02:00:00Z", "0 2 * * * UTC")),
            &[
                ("2026-03-10T12:00:00Z", Some(suspended.clone())),
                ("2026-03-12T12:00:00Z", None),
                ("2026-03-13T14:00:00Z", Some(daily.clone())),
                ("2026-03-13T14:00:01Z", None),
                ("2026-03-14T02:00:03Z", None),
            ],
        );
        let seen_resume: Vec<_> = resumed.iter().map(seen).collect();
        assert_eq!(
            seen_resume,
            [
                (None, 0),
                (None, 0),
                (None, 0),
                (None, 0),
                (Some(at("2026-03-14T02:00:00Z")), 0)
            ]
        );
        assert_eq!(resumed[4].status.missed_runs, 0);
    }

    #[test]
    fn more_runs_due_than_a_pass_looks_at_are_only_counted() {
        // Three days of a run a minute: 4320 runs; the first pass counts 1000, takes none.
        let every = json!({"schedule": "@every 1m", "template": {"source": {"persistentVolumeClaim": {"claimName": "data"}}}});
        let sched = schedule(every, handled("2026-03-10T01:00:00Z", "@every 1m UTC"));
        let first = decide(&sched, &[], &[], at("2026-03-13T01:00:30Z")).unwrap();
        assert_eq!((first.take, first.missed.len()), (None, 1000));
        assert_eq!(first.requeue, Some(Duration::from_secs(1)));
    }

    #[test]
    fn invalid_schedules_say_why() {
        for (spec, says) in [
            (json!({"schedule": "every night"}), "five fields"),
            (json!({"timeZone": "Nowhere/Land"}), "IANA"),
            (
                json!({"template": {"source": {}, "collection": "products"}}),
                "template",
            ),
        ] {
            let error = decide(
                &schedule(spec, Value::Null),
                &[],
                &[],
                at("2026-03-10T02:00:00Z"),
            )
            .unwrap_err()
            .to_string();
            assert!(error.contains(says), "{error}");
        }
    }

    const SNAPS: &str = "/apis/snapshot-operator.dev/v1alpha1/namespaces/ns/snapshots";
    const SCHEDS: &str =
        "/apis/snapshot-operator.dev/v1alpha1/namespaces/ns/snapshotschedules/nightly";

    async fn pass(sched: SnapshotSchedule, now: &str, script: Vec<Expect>) -> Action {
        let (result, _) = scripted_at(
            OperatorConfig::default(),
            movers(vec![], vec![]),
            at(now),
            script,
            |ctx| reconcile(Arc::new(sched), ctx),
        )
        .await;
        result.unwrap()
    }

    #[tokio::test]
    async fn a_due_run_creates_its_snapshot_then_writes_the_status_and_waits_for_the_next() {
        let sched = schedule(json!({}), Value::Null);
        let stored = serde_json::to_value(&sched).unwrap();
        let script = vec![
            Expect::new(
                "GET",
                format!(
                    "{SNAPS}?&labelSelector={}",
                    "snapshot-operator.dev%2Fschedule%3Dnightly"
                ),
                list("Snapshot", vec![]),
            ),
            Expect::new("POST", SNAPS, Value::Null).check(|body| {
                assert_eq!(body["metadata"]["name"], "nightly-20260310-020000");
                assert_eq!(body["metadata"]["labels"][SCHEDULE], "nightly");
                assert_eq!(
                    body["metadata"]["annotations"][SCHEDULED_TIME],
                    "2026-03-10T02:00:00Z"
                );
                assert_eq!(body["metadata"].get("ownerReferences"), None, "not owned");
                assert_eq!(body["spec"]["collection"], "products");
            }),
            event("Scheduled"),
            Expect::new("PATCH", format!("{SCHEDS}/status"), stored).check(|body| {
                let status = &body["status"];
                assert_eq!(status["lastScheduleTime"], "2026-03-10T02:00:00Z");
                assert_eq!(status["nextScheduleTime"], "2026-03-11T02:00:00Z");
                assert_eq!(status["conditions"][0]["reason"], "Scheduled");
            }),
        ];
        let action = pass(sched, "2026-03-10T02:00:05Z", script).await;
        assert_eq!(
            action,
            Action::requeue(Duration::from_secs(24 * 3600 - 5 + 1))
        );
    }

    #[tokio::test]
    async fn pruned_snapshots_are_deleted_and_missed_runs_said() {
        let spec = json!({"retention": {"keepLast": 1}});
        let sched = schedule(spec, handled("2026-03-10T02:00:00Z", "0 2 * * * UTC"));
        let stored = serde_json::to_value(&sched).unwrap();
        let running = snap("2026-03-10T02:00:00Z", Some("Running"));
        let old = [
            snap("2026-03-08T02:00:00Z", Some("Succeeded")),
            snap("2026-03-09T02:00:00Z", Some("Succeeded")),
        ];
        let items = [&old[0], &old[1], &running].map(|s| serde_json::to_value(s).unwrap());
        let script = vec![
            Expect::new("GET", SNAPS, list("Snapshot", items.to_vec())),
            Expect::new(
                "DELETE",
                format!("{SNAPS}/nightly-20260308-020000"),
                deleted(),
            ),
            event("Pruned"),
            Expect::new("PATCH", format!("{SCHEDS}/status"), stored).check(|body| {
                assert_eq!(body["status"]["missedRuns"], 1);
                assert_eq!(
                    body["status"]["lastSuccessfulSnapshot"],
                    "nightly-20260309-020000"
                );
            }),
            event("Missed"),
        ];
        pass(sched, "2026-03-11T02:00:01Z", script).await;
    }

    #[tokio::test]
    async fn an_invalid_schedule_is_refused_without_a_retry() {
        let sched = schedule(json!({"schedule": "at noon"}), Value::Null);
        let stored = serde_json::to_value(&sched).unwrap();
        let script = vec![
            Expect::new("GET", SNAPS, list("Snapshot", vec![])),
            Expect::new("PATCH", format!("{SCHEDS}/status"), stored).check(|body| {
                assert_eq!(body["status"]["conditions"][0]["reason"], "InvalidSpec");
            }),
            event("InvalidSpec"),
        ];
        assert_eq!(
            pass(sched, "2026-03-10T02:00:05Z", script).await,
            Action::await_change()
        );
    }
}
