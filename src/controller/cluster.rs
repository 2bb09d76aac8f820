//! What the reconcilers read without asking the API server: reflector stores of the mover
//! Jobs and mover pods (watched by the operator's label, so their size follows the movers,
//! not the cluster) and of the resources that own them.
//!
//! Everything read here is checked against ownership, never trusted by label alone: any pod
//! or Job in a namespace can carry the operator's labels, only the operator's Jobs are
//! controlled by a Snapshot or SnapshotRestore, and only their pods by those Jobs.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store, store::Writer};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use tokio::sync::watch;

use super::jobs::{self, Mover};
use super::mover;
use super::slots::{Busy, Claimant, Kind};
use crate::api::{Snapshot, SnapshotRestore};

/// The stores, shared by both reconcilers.
#[derive(Clone)]
pub struct Cluster {
    pub jobs: Store<Job>,
    pub pods: Store<Pod>,
    pub snapshots: Store<Snapshot>,
    pub restores: Store<SnapshotRestore>,
    /// True once the Job store, and the pod store, hold a first full listing. (A store's
    /// own readiness future wakes only the last of several tasks waiting on it.)
    pub listed: [watch::Receiver<bool>; 2],
    /// StatefulSets this process began to stop, until the stores can show it.
    pub stops: Stops,
}

/// How long a stop begun by this process is remembered: far longer than a watch event takes
/// to reach the stores.
const PENDING_STOP: Duration = Duration::from_secs(60);

/// The StatefulSets (namespace, name) this process began to stop, with who did and when.
/// Recording the replicas in a resource's status and the stores showing that record are not
/// one step: without this, a second resource looking in between would find no holder, read
/// the replicas the first had just scaled to zero, and leave the StatefulSet stopped. And
/// who waits to stop each, to be woken when the stop ends.
#[derive(Clone, Default)]
pub struct Stops(Arc<Mutex<StopsBegun>>);

#[derive(Default)]
struct StopsBegun {
    begun: HashMap<(String, String), Begun>,
    waiting: HashMap<(String, String), BTreeSet<Stopper>>,
}

/// A stop this process began: by whom (UID, and which resource), when.
struct Begun {
    uid: String,
    who: Stopper,
    at: Instant,
}

/// A resource that stops a StatefulSet: a Snapshot with `copyMethod: Stop` or a
/// SnapshotRestore with `stopWorkload`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stopper {
    pub kind: Kind,
    pub name: String,
}

impl Stopper {
    pub fn new(kind: Kind, name: impl Into<String>) -> Self {
        Self {
            kind,
            name: name.into(),
        }
    }
}

impl std::fmt::Display for Stopper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind.name(), self.name)
    }
}

/// Whether `meta` names `uid` as its controller.
pub fn controlled_by(meta: &ObjectMeta, uid: &str) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && o.uid == uid)
}

impl Cluster {
    /// Stores holding exactly these objects (tests, and the mock API server tier).
    pub fn of(
        jobs: Vec<Job>,
        pods: Vec<Pod>,
        snapshots: Vec<Snapshot>,
        restores: Vec<SnapshotRestore>,
    ) -> Self {
        Self {
            jobs: filled(jobs),
            pods: filled(pods),
            snapshots: filled(snapshots),
            restores: filled(restores),
            listed: [watch::channel(true).1, watch::channel(true).1],
            stops: Stops::default(),
        }
    }

    /// Lets `who` (of UID `uid`) stop the StatefulSet `name` of `namespace` at `now`, unless
    /// another resource holds it stopped (the stores say so) or began to stop it in the last
    /// minute (this process remembers): then the holder, to wait for (`who` is woken when
    /// the holder's stop ends: see [`Cluster::stop_ended`]).
    pub fn begin_stop(
        &self,
        (namespace, name): (&str, &str),
        (uid, who): (&str, &Stopper),
        now: Instant,
    ) -> Result<(), Stopper> {
        let mut stops = self.stops.0.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (namespace.to_owned(), name.to_owned());
        let holder = self.stopped_by(namespace, name, uid).or_else(|| {
            // A stop ends when its resource is finished or gone (it started the StatefulSet
            // again before saying so, or in its cleanup), at the latest after PENDING_STOP.
            stops.begun.retain(|_, b| {
                now.saturating_duration_since(b.at) < PENDING_STOP && self.unfinished(&b.uid)
            });
            let other = stops.begun.get(&key).filter(|b| b.uid != uid);
            other.map(|b| b.who.clone())
        });
        if let Some(holder) = holder {
            stops.waiting.entry(key).or_default().insert(who.clone());
            return Err(holder);
        }
        if let Some(waiting) = stops.waiting.get_mut(&key) {
            waiting.remove(who);
            if waiting.is_empty() {
                stops.waiting.remove(&key);
            }
        }
        let (uid, who) = (uid.to_owned(), who.clone());
        stops.begun.insert(key, Begun { uid, who, at: now });
        Ok(())
    }

    /// The stop of the StatefulSet `name` of `namespace` has ended (its holder is finished,
    /// as the stores show): who waited to stop it next, to wake.
    pub fn stop_ended(&self, (namespace, name): (&str, &str)) -> Vec<Stopper> {
        let mut stops = self.stops.0.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (namespace.to_owned(), name.to_owned());
        let waiting = stops.waiting.remove(&key).unwrap_or_default();
        waiting.into_iter().collect()
    }

    /// The resource, other than the one of UID `except`, that holds the StatefulSet `name`
    /// of `namespace` stopped: a Snapshot with `copyMethod: Stop` or a SnapshotRestore with
    /// `stopWorkload`, unfinished, whose status records the replicas to bring back. A second
    /// one must wait: it would record zero replicas and leave the StatefulSet stopped.
    pub fn stopped_by(&self, namespace: &str, name: &str, except: &str) -> Option<Stopper> {
        use crate::api::restore::RestorePhase;
        use crate::api::snapshot::Phase;
        let here = |meta: &ObjectMeta| {
            meta.namespace.as_deref() == Some(namespace) && meta.uid.as_deref() != Some(except)
        };
        let snapshot = self.snapshots.state().into_iter().find(|s| {
            let sts = s.spec.source.stateful_set.as_ref();
            let status = s.status.as_ref();
            // Only a Snapshot whose copy method stops the workload records replicas.
            here(s.meta())
                && sts.is_some_and(|sts| sts.name == name)
                && status.is_some_and(|st| {
                    st.stopped_replicas.is_some() && !st.phase.is_some_and(Phase::is_final)
                })
        });
        if let Some(s) = snapshot {
            return Some(Stopper::new(Kind::Snapshot, s.name_any()));
        }
        let restore = self.restores.state().into_iter().find(|r| {
            let sts = r.spec.target.stateful_set.as_ref();
            let status = r.status.as_ref();
            here(r.meta())
                && r.spec.stop_workload
                && sts.is_some_and(|sts| sts.name == name)
                && status.is_some_and(|st| {
                    st.stopped_replicas.is_some() && !st.phase.is_some_and(RestorePhase::is_final)
                })
        });
        restore.map(|r| Stopper::new(Kind::SnapshotRestore, r.name_any()))
    }

    /// The unfinished SnapshotRestores of namespace `namespace` that restore from a Snapshot
    /// (`snapshotRef`), as (Snapshot, SnapshotRestore) names: a Snapshot they read is neither
    /// pruned nor expired under them.
    pub fn restores_reading(&self, namespace: &str) -> Vec<(String, String)> {
        use crate::api::restore::RestorePhase;
        let reading = |r: &SnapshotRestore| {
            let phase = r.status.as_ref().and_then(|s| s.phase);
            let from = r.spec.source.snapshot_ref.as_ref();
            let here = r.namespace().as_deref() == Some(namespace);
            let from = from.filter(|_| here && !phase.is_some_and(RestorePhase::is_final));
            from.map(|f| (f.name.clone(), r.name_any()))
        };
        self.restores
            .state()
            .iter()
            .filter_map(|r| reading(r))
            .collect()
    }

    /// Whether the stores show a Snapshot or SnapshotRestore of UID `uid` that is not
    /// finished (Succeeded or Failed).
    fn unfinished(&self, uid: &str) -> bool {
        use crate::api::restore::RestorePhase;
        use crate::api::snapshot::Phase;
        let is = |meta: &ObjectMeta| meta.uid.as_deref() == Some(uid);
        let snapshot = self.snapshots.state().into_iter().find(|s| is(s.meta()));
        if let Some(s) = snapshot {
            let phase = s.status.as_ref().and_then(|st| st.phase);
            return !phase.is_some_and(Phase::is_final);
        }
        let restore = self.restores.state().into_iter().find(|r| is(r.meta()));
        restore.is_some_and(|r| {
            let phase = r.status.as_ref().and_then(|st| st.phase);
            !phase.is_some_and(RestorePhase::is_final)
        })
    }

    /// Forgets that `uid` began to stop the StatefulSet `name` of `namespace` (it has not
    /// stopped it after all).
    pub fn forget_stop(&self, (namespace, name): (&str, &str), uid: &str) {
        let mut stops = self.stops.0.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (namespace.to_owned(), name.to_owned());
        if stops.begun.get(&key).is_some_and(|b| b.uid == uid) {
            stops.begun.remove(&key);
        }
    }

    /// Whether `pod` is a pod of a mover Job of the resource of UID `owner_uid` (as the
    /// stores show it: by ownership, not by label).
    pub fn is_mover_pod_of(&self, pod: &Pod, owner_uid: &str) -> bool {
        self.jobs
            .find(|j| {
                controlled_by(j.meta(), owner_uid)
                    && j.uid().is_some_and(|job| controlled_by(pod.meta(), &job))
            })
            .is_some()
    }

    /// Waits until the mover stores hold a first full listing: before that, a running mover
    /// would look absent and be started again.
    pub async fn ready(&self) {
        for listed in &self.listed {
            // An error means the sender is gone, and with it the process.
            let _ = listed.clone().wait_for(|listed| *listed).await;
        }
    }

    /// The mover Job named `name` in `namespace` with its pods, if `owner_uid` controls it:
    /// a Job of that name made by someone else is not a mover of this resource, and a pod
    /// that only carries the Job's name in a label is not one of its pods.
    pub fn mover(&self, namespace: &str, name: &str, owner_uid: &str) -> Option<Mover> {
        let job = self
            .jobs
            .get(&ObjectRef::new(name).within(namespace))
            .filter(|j| controlled_by(j.meta(), owner_uid) && j.uid().is_some())?;
        Some(self.with_pods(job))
    }

    /// The mover of `job`: with the pods it controls.
    fn with_pods(&self, job: Arc<Job>) -> Mover {
        let uid = job.uid().unwrap_or_default();
        let pods = self.pods.state_filter(|p| controlled_by(p.meta(), &uid));
        Mover {
            job,
            pods,
            stuck: None,
            progress: None,
        }
    }

    /// The delete movers of `namespace` that delete the archives of the Snapshot `uid`: those
    /// it owns, controller or not (one mover deletes the archives of several Snapshots).
    pub fn delete_movers_for(&self, namespace: &str, uid: &str) -> Vec<Mover> {
        let deleting = |j: &Job| {
            j.namespace().as_deref() == Some(namespace)
                && j.labels().get(mover::OPERATION).map(String::as_str) == Some("delete")
                && j.owner_references().iter().any(|o| o.uid == uid)
        };
        self.jobs
            .state()
            .into_iter()
            .filter(|j| deleting(j))
            .map(|job| self.with_pods(job))
            .collect()
    }

    /// Whether the store holds the Job `name` of `namespace`, in any state.
    pub fn has_job(&self, namespace: &str, name: &str) -> bool {
        self.jobs
            .get(&ObjectRef::new(name).within(namespace))
            .is_some()
    }

    /// The Job that controls `pod`, as the store holds it.
    pub fn job_of(&self, pod: &Pod) -> Option<Arc<Job>> {
        let owner = pod
            .owner_references()
            .iter()
            .find(|o| o.controller == Some(true) && o.kind == "Job")?;
        let ns = pod.namespace()?;
        self.jobs
            .get(&ObjectRef::new(&owner.name).within(&ns))
            .filter(|j| j.uid().as_deref() == Some(owner.uid.as_str()))
    }

    /// Whether the resource waiting for a slot still exists.
    pub fn exists(&self, who: &Claimant) -> bool {
        let (name, ns) = (who.name.as_str(), who.namespace.as_str());
        match who.kind {
            Kind::Snapshot => self
                .snapshots
                .get(&ObjectRef::new(name).within(ns))
                .is_some(),
            Kind::SnapshotRestore => self
                .restores
                .get(&ObjectRef::new(name).within(ns))
                .is_some(),
        }
    }

    /// Whether a Snapshot or SnapshotRestore with this UID exists.
    fn owner_exists(&self, uid: &str) -> bool {
        self.snapshots
            .find(|s| s.uid().as_deref() == Some(uid))
            .is_some()
            || self
                .restores
                .find(|r| r.uid().as_deref() == Some(uid))
                .is_some()
    }

    /// The movers that hold a slot: Jobs still running and controlled by an existing
    /// Snapshot or SnapshotRestore (a foreign Job carrying the operator's label holds none).
    pub fn busy_slots(&self) -> Vec<Busy> {
        // Whether a Job has finished is its pods' word too (see [`jobs::settled`]): its own,
        // found by the uid of their controller.
        let mut pods: HashMap<String, Vec<Arc<Pod>>> = HashMap::new();
        for pod in self.pods.state() {
            if let Some(job) = pod
                .owner_references()
                .iter()
                .find(|o| o.controller == Some(true))
            {
                pods.entry(job.uid.clone()).or_default().push(pod.clone());
            }
        }
        let none = Vec::new();
        self.jobs
            .state()
            .iter()
            .filter(|j| {
                let own = j.uid().and_then(|uid| pods.get(&uid)).unwrap_or(&none);
                jobs::settled(j, own).is_none()
            })
            .filter(|j| {
                j.owner_references()
                    .iter()
                    .any(|o| o.controller == Some(true) && self.owner_exists(&o.uid))
            })
            .map(|j| Busy {
                namespace: j.namespace().unwrap_or_default(),
                job: j.name_any(),
            })
            .collect()
    }
}

fn filled<K>(objects: Vec<K>) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let mut writer = Writer::default();
    writer.apply_watcher_event(&watcher::Event::Init);
    for object in objects {
        writer.apply_watcher_event(&watcher::Event::InitApply(object));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    writer.as_reader()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Snapshot (uid `uid-a`) in `phase`, or a SnapshotRestore (`uid-b`, `uid-c`) in it:
    /// a stopper of StatefulSet qdrant as the stores show it.
    fn stopper(kind: &str, uid: &str, phase: &str) -> serde_json::Value {
        let spec = match kind {
            "Snapshot" => serde_json::json!({"copyMethod": "Stop", "storage": {},
                "source": {"statefulSet": {"name": "qdrant", "volumeClaimTemplate": "data"}}}),
            _ => serde_json::json!({"source": {"location": "x.snapshot"}, "stopWorkload": true,
                "target": {"statefulSet": {"name": "qdrant", "volumeClaimTemplate": "data"}}}),
        };
        serde_json::json!({"apiVersion": "snapshot-operator.dev/v1alpha1", "kind": kind,
            "metadata": {"name": uid.trim_start_matches("uid-"), "namespace": "ns", "uid": uid},
            "spec": spec, "status": {"phase": phase}})
    }

    /// The stores showing Snapshot a and SnapshotRestores b and c in these phases (None:
    /// not there), sharing the stops begun in `stops`.
    fn showing(stops: &Stops, phases: [Option<&str>; 3]) -> Cluster {
        let [a, b, c] = phases;
        let snapshots = a.map(|p| serde_json::from_value(stopper("Snapshot", "uid-a", p)).unwrap());
        let restores = [("uid-b", b), ("uid-c", c)]
            .into_iter()
            .filter_map(|(uid, p)| p.map(|p| stopper("SnapshotRestore", uid, p)))
            .map(|v| serde_json::from_value(v).unwrap())
            .collect();
        let cluster = Cluster::of(vec![], vec![], snapshots.into_iter().collect(), restores);
        Cluster {
            stops: stops.clone(),
            ..cluster
        }
    }

    #[test]
    fn a_stop_begun_here_holds_off_a_second_stopper_until_the_stores_can_show_it() {
        let stops = Stops::default();
        let cluster = showing(&stops, [Some("Pending"), Some("Pending"), None]);
        let (snapshot, restore) = (
            Stopper::new(Kind::Snapshot, "a"),
            Stopper::new(Kind::SnapshotRestore, "b"),
        );
        let (a, b) = (("uid-a", &snapshot), ("uid-b", &restore));
        let sts = ("ns", "qdrant");
        let now = Instant::now();
        let at = |s| now + Duration::from_secs(s);
        assert_eq!(cluster.begin_stop(sts, a, now), Ok(()));
        // Its own next pass goes on; another resource waits for it.
        assert_eq!(cluster.begin_stop(sts, a, at(1)), Ok(()));
        assert_eq!(cluster.begin_stop(sts, b, at(2)), Err(snapshot.clone()));
        // Another StatefulSet, or one of the same name elsewhere, is free.
        assert_eq!(cluster.begin_stop(("ns", "other"), b, at(2)), Ok(()));
        assert_eq!(cluster.begin_stop(("ns2", "qdrant"), b, at(2)), Ok(()));
        // A minute after the last pass, the stores answer alone.
        assert_eq!(cluster.begin_stop(sts, b, at(60)), Err(snapshot.clone()));
        assert_eq!(cluster.begin_stop(sts, b, at(61)), Ok(()));
        assert_eq!(cluster.begin_stop(sts, a, at(62)), Err(restore.clone()));
        // One that did not stop it after all (no mover slot) lets the other go at once;
        // forgetting another's stop does nothing.
        cluster.forget_stop(sts, "uid-a");
        assert_eq!(cluster.begin_stop(sts, a, at(63)), Err(restore.clone()));
        cluster.forget_stop(sts, "uid-b");
        assert_eq!(cluster.begin_stop(sts, a, at(64)), Ok(()));
    }

    #[test]
    fn three_stoppers_one_after_another_each_start_as_the_one_before_finishes() {
        let stops = Stops::default();
        let sts = ("ns", "qdrant");
        let snapshot = Stopper::new(Kind::Snapshot, "a");
        let restore = Stopper::new(Kind::SnapshotRestore, "b");
        let other = Stopper::new(Kind::SnapshotRestore, "c");
        let (a, b, c) = (("uid-a", &snapshot), ("uid-b", &restore), ("uid-c", &other));
        let now = Instant::now();
        let at = |s| now + Duration::from_secs(s);
        // a stops it; b and c, created meanwhile, wait.
        let cluster = showing(&stops, [Some("Running"), Some("Pending"), Some("Pending")]);
        assert_eq!(cluster.begin_stop(sts, a, now), Ok(()));
        assert_eq!(cluster.begin_stop(sts, b, at(1)), Err(snapshot.clone()));
        assert_eq!(cluster.begin_stop(sts, c, at(1)), Err(snapshot.clone()));
        // a succeeded (it started the StatefulSet again first): the stores show it, and b
        // and c are woken at once, not at their next look; b goes, c waits for b.
        let cluster = showing(
            &stops,
            [Some("Succeeded"), Some("Pending"), Some("Pending")],
        );
        assert_eq!(cluster.stop_ended(sts), [restore.clone(), other.clone()]);
        assert_eq!(cluster.stop_ended(sts), []);
        assert_eq!(cluster.begin_stop(sts, b, at(2)), Ok(()));
        assert_eq!(cluster.begin_stop(sts, c, at(3)), Err(restore.clone()));
        // b failed: c, woken, goes at once.
        let cluster = showing(&stops, [Some("Succeeded"), Some("Failed"), Some("Pending")]);
        assert_eq!(cluster.stop_ended(sts), std::slice::from_ref(&other));
        assert_eq!(cluster.begin_stop(sts, c, at(4)), Ok(()));
        assert_eq!(cluster.stop_ended(sts), []);
        // c deleted while it ran (its cleanup started the StatefulSet again): a Snapshot
        // created next goes at once.
        let cluster = showing(&stops, [Some("Pending"), Some("Failed"), None]);
        assert_eq!(cluster.begin_stop(sts, a, at(5)), Ok(()));
    }
}
