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
            what: "Forbid: the run's own Snapshot, taken by a pass whose status write was lost",
            spec: json!({}),
            status: handled("2026-03-10T02:00:00Z", "0 2 * * * UTC"),
            snapshots: vec![
                snap("2026-03-10T02:00:00Z", Some("Succeeded")),
                snap("2026-03-11T02:00:00Z", Some("Running")),
            ],
            now: "2026-03-11T02:00:01Z",
            take: Some("2026-03-11T02:00:00Z"),
            missed: vec![],
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
        let wait = case
            .next
            .map(|n| Duration::from_secs(at(n).duration_since(at(case.now)).as_secs() as u64 + 1));
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
        (
            json!({"template": {"source": {"persistentVolumeClaim": {"claimName": "data"}},
                                "ttl": "a while"}}),
            "template: ttl \"a while\" is not a duration",
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
const SCHEDS: &str = "/apis/snapshot-operator.dev/v1alpha1/namespaces/ns/snapshotschedules/nightly";

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
    let template = json!({"source": {"persistentVolumeClaim": {"claimName": "data"}},
        "collection": "products", "ttl": "30d"});
    let sched = schedule(json!({"template": template}), Value::Null);
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
            assert_eq!(
                body["spec"]["ttl"], "30d",
                "the template's ttl, on its Snapshot"
            );
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
