//! Load: the operator binary with 40 Snapshots of one claim and four mover slots in their
//! namespace, each mover taking 300 ms on the kubelet played here, and the Job controller
//! played as Kubernetes' batches pod events: a Job marked complete a second after its pod
//! ended. Prints what a slot-use costs beyond its mover and where that goes (a mover ended →
//! its report in the status, against the Job marked complete; a slot freed → the next Job
//! seen), then how long deleting the Snapshots takes with delete movers (one for the
//! archives of every Snapshot deleted by then) and with the operator deleting their archives
//! itself (`deleteThroughOperator`), half of them each way, in the same run.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use snapshot_operator::api::Snapshot;
use snapshot_operator::controller::mover;

use super::{
    TestNamespace, common, eventually, operator_binary, run_pod, stops_cleanly_on_sigterm,
    try_complete_job,
};

const SNAPSHOTS: usize = 40;
const SLOTS: usize = 4;
/// How long each mover runs on the kubelet played here.
const MOVER: Duration = Duration::from_millis(300);
/// How long after a pod ended the Job controller marks its Job complete (Kubernetes' Job
/// controller syncs a Job at most once a second for its pods' changes).
const JOB_CONTROLLER: Duration = Duration::from_secs(1);

/// One mover Job as the kubelet saw it.
#[derive(Debug, Clone)]
struct Seen {
    operation: String,
    owner: String,
    seen: Instant,
    /// Its pod ended (as the kubelet began to say so).
    done: Option<Instant>,
    /// The Job controller marked it complete (unless the operator had deleted it, its
    /// result recorded).
    completed: Option<Instant>,
}

type Movers = Arc<Mutex<BTreeMap<String, Seen>>>;

/// Plays the kubelet and the Job controller: every mover Job of `ns` runs for [`MOVER`],
/// then ends well (a snapshot's report names an archive after its Snapshot), and is marked
/// complete [`JOB_CONTROLLER`] later.
fn kubelet(client: Client, ns: String, movers: Movers) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
        let config = watcher::Config::default().labels(mover::OWNER_UID);
        let mut stream = watcher(jobs, config).applied_objects().boxed();
        while let Some(event) = stream.next().await {
            let Ok(job) = event else { continue };
            let name = job.name_any();
            let finished = job.status.as_ref().and_then(|s| s.conditions.as_ref());
            if finished.is_some() || movers.lock().unwrap().contains_key(&name) {
                continue;
            }
            let seen = Seen {
                operation: job.labels()[mover::OPERATION].clone(),
                owner: job.owner_references()[0].name.clone(),
                seen: Instant::now(),
                done: None,
                completed: None,
            };
            movers.lock().unwrap().insert(name.clone(), seen.clone());
            let (client, ns, movers) = (client.clone(), ns.clone(), movers.clone());
            tokio::spawn(async move {
                tokio::time::sleep(MOVER).await;
                let report = match seen.operation.as_str() {
                    "snapshot" => json!({"name": format!("{}.snapshot", seen.owner),
                        "key": format!("products/{}.snapshot", seen.owner), "size": 1})
                    .to_string(),
                    _ => "{}".into(),
                };
                // Before the pod says it ended: a slot it frees is never seen taken first.
                movers.lock().unwrap().get_mut(&name).unwrap().done = Some(Instant::now());
                run_pod(&client, &ns, &job, "pod", &report, true, true).await;
                tokio::time::sleep(JOB_CONTROLLER).await;
                // The operator may have deleted the Job already, its result recorded.
                if try_complete_job(&client, &ns, &job, true).await.is_ok() {
                    movers.lock().unwrap().get_mut(&name).unwrap().completed = Some(Instant::now());
                }
            });
        }
    })
}

/// When each Snapshot of `ns` was first seen Ready, and when each was seen gone.
#[derive(Default)]
struct Watched {
    ready: BTreeMap<String, Instant>,
    gone: BTreeMap<String, Instant>,
}

fn watch_snapshots(
    client: Client,
    ns: String,
    seen: Arc<Mutex<Watched>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let snapshots: Api<Snapshot> = Api::namespaced(client, &ns);
        let mut stream = watcher(snapshots, watcher::Config::default()).boxed();
        while let Some(event) = stream.next().await {
            let now = Instant::now();
            let mut seen = seen.lock().unwrap();
            match event {
                Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => {
                    let ready = s.status.as_ref().is_some_and(|st| {
                        st.conditions
                            .iter()
                            .any(|c| c.type_ == "Ready" && c.status == "True")
                    });
                    if ready {
                        seen.ready.entry(s.name_any()).or_insert(now);
                    }
                }
                Ok(watcher::Event::Delete(s)) => {
                    seen.gone.insert(s.name_any(), now);
                }
                _ => {}
            }
        }
    })
}

/// The median and the largest of `values` (pure).
fn median_max(mut values: Vec<Duration>) -> (Duration, Duration) {
    values.sort();
    match values.last() {
        Some(&max) => (values[values.len() / 2], max),
        None => (Duration::ZERO, Duration::ZERO),
    }
}

/// The most movers running at once (pure): from each one's start and end.
fn most_at_once(spans: &[(Instant, Instant)]) -> usize {
    spans
        .iter()
        .map(|(start, _)| {
            spans
                .iter()
                .filter(|(s, e)| s <= start && start < e)
                .count()
        })
        .max()
        .unwrap_or(0)
}

pub async fn load_scenario(client: &Client) {
    let Some(s3) = common::s3_env() else {
        eprintln!("SKIPPED: the load scenario needs the test S3 server");
        return;
    };
    let ns = format!("load-it-{}", std::process::id());
    let namespace = TestNamespace::with_claims(client, &ns, &["data"]).await;
    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    // One default storage for both operators: a Snapshot's archives are deleted through the
    // operator only while the default storage is still the one they were stored in.
    let prefix = common::unique_prefix("load-it");
    let settings = |through_operator: bool| {
        json!({
            "defaultStorage": {"s3": {"bucket": s3.bucket, "endpointUrl": s3.endpoint,
                "prefix": prefix, "forcePathStyle": true}},
            "maxConcurrentMovers": 1000,
            "maxConcurrentMoversPerNamespace": SLOTS,
            "deleteThroughOperator": through_operator,
        })
    };
    let movers: Movers = Arc::default();
    let watched: Arc<Mutex<Watched>> = Arc::default();
    let kubelet = kubelet(client.clone(), ns.clone(), movers.clone());
    let watcher = watch_snapshots(client.clone(), ns.clone(), watched.clone());
    let first = operator_binary(client, work, &s3, &settings(false)).await;

    let snapshots: Api<Snapshot> = Api::namespaced(client.clone(), &ns);
    let started = Instant::now();
    for i in 0..SNAPSHOTS {
        let snap: Snapshot = serde_json::from_value(json!({
            "apiVersion": "snapshot-operator.dev/v1alpha1", "kind": "Snapshot",
            "metadata": {"name": format!("s{i:02}")},
            "spec": {"source": {"persistentVolumeClaim": {"claimName": "data"}},
                     "collection": "products", "deletionPolicy": "Delete"}}))
        .unwrap();
        snapshots
            .create(&PostParams::default(), &snap)
            .await
            .unwrap();
    }
    eventually("all Snapshots Ready", || async {
        (watched.lock().unwrap().ready.len() == SNAPSHOTS).then_some(())
    })
    .await;
    let (all_ready, ready) = {
        let w = watched.lock().unwrap();
        (*w.ready.values().max().unwrap() - started, w.ready.clone())
    };
    let snapshot_movers: Vec<Seen> = movers
        .lock()
        .unwrap()
        .values()
        .filter(|m| m.operation == "snapshot")
        .cloned()
        .collect();
    assert_eq!(snapshot_movers.len(), SNAPSHOTS, "one mover per Snapshot");
    let spans: Vec<(Instant, Instant)> = snapshot_movers
        .iter()
        .map(|m| (m.seen, m.done.expect("every mover ended")))
        .collect();
    let at_once = most_at_once(&spans);
    assert!(at_once <= SLOTS, "{at_once} movers at once, {SLOTS} slots");
    // A finished mover's report read into its Snapshot's status.
    let reported = median_max(
        snapshot_movers
            .iter()
            .map(|m| ready[&m.owner] - m.done.unwrap())
            .collect(),
    );
    // Each report was read before the Job controller marked its Job complete: the result
    // is the pod's, the slot freed without waiting for the Job.
    assert!(
        reported.1 < JOB_CONTROLLER,
        "a report was read {:?} after its pod ended, the Job marked complete after {JOB_CONTROLLER:?}",
        reported.1
    );
    for m in snapshot_movers.iter().filter(|m| m.completed.is_some()) {
        assert!(ready[&m.owner] < m.completed.unwrap(), "{}", m.owner);
    }
    // A slot freed → the next mover Job seen: the k-th end frees the slot the (k + SLOTS)-th
    // mover takes.
    let mut starts: Vec<Instant> = spans.iter().map(|(s, _)| *s).collect();
    let mut ends: Vec<Instant> = spans.iter().map(|(_, e)| *e).collect();
    starts.sort();
    ends.sort();
    let handed = median_max(
        (0..SNAPSHOTS - SLOTS)
            .map(|k| starts[k + SLOTS].saturating_duration_since(ends[k]))
            .collect(),
    );
    let mover_time = MOVER * SNAPSHOTS as u32;
    let slot_time = all_ready * SLOTS as u32;
    let beyond = slot_time.saturating_sub(mover_time) / SNAPSHOTS as u32;
    eprintln!(
        "load: {SNAPSHOTS} movers of {MOVER:?}, {SLOTS} slots: all Ready after {all_ready:.2?} \
         ({mover_time:.1?} of mover time, {:.2} of {SLOTS} slots busy, at most {at_once} at once); \
         per mover (Job seen → report read): {beyond:.2?} beyond the mover; \
         a mover ended → its report in the status: median {:.2?}, max {:.2?} \
         (its Job marked complete {JOB_CONTROLLER:?} after its pod ended); \
         a slot freed → the next Job seen: median {:.2?}, max {:.2?}",
        mover_time.as_secs_f64() / all_ready.as_secs_f64(),
        reported.0,
        reported.1,
        handed.0,
        handed.1,
    );

    // Deleting: half through delete movers, half by the operator itself, timed alike.
    let half = SNAPSHOTS / 2;
    let names: Vec<String> = (0..SNAPSHOTS).map(|i| format!("s{i:02}")).collect();
    let delete = |names: Vec<String>| {
        let (snapshots, watched) = (snapshots.clone(), watched.clone());
        async move {
            let started = Instant::now();
            for name in &names {
                snapshots
                    .delete(name, &DeleteParams::default())
                    .await
                    .unwrap();
            }
            eventually("the Snapshots gone", || async {
                let w = watched.lock().unwrap();
                names.iter().all(|n| w.gone.contains_key(n)).then_some(())
            })
            .await;
            let w = watched.lock().unwrap();
            *names.iter().map(|n| &w.gone[n]).max().unwrap() - started
        }
    };
    let delete_movers = || {
        let movers = movers.lock().unwrap();
        movers.values().filter(|m| m.operation == "delete").count()
    };
    let with_movers = delete(names[..half].to_vec()).await;
    // One mover deletes the archives of the Snapshots deleted meanwhile.
    let batched = delete_movers();
    assert!(
        (1..half).contains(&batched),
        "{batched} delete movers for {half} Snapshots"
    );
    stops_cleanly_on_sigterm(first).await;
    let second = operator_binary(client, work, &s3, &settings(true)).await;
    let through = delete(names[half..].to_vec()).await;
    let delete_movers_after = delete_movers();
    assert_eq!(
        delete_movers_after, batched,
        "no delete mover through the operator"
    );
    eprintln!(
        "load: deleting {half} Snapshots took {with_movers:.2?} with {batched} delete movers \
         ({SLOTS} slots, movers of {MOVER:?}), {through:.2?} through the operator ({:.1}x)",
        with_movers.as_secs_f64() / through.as_secs_f64()
    );
    assert!(
        snapshots
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    stops_cleanly_on_sigterm(second).await;
    kubelet.abort();
    watcher.abort();
    namespace.delete().await;
}
