//! What the reconcilers read without asking the API server: reflector stores of the mover
//! Jobs and mover pods (watched by the operator's label, so their size follows the movers,
//! not the cluster) and of the resources that own them.
//!
//! Everything read here is checked against ownership, never trusted by label alone: any pod
//! or Job in a namespace can carry the operator's labels, only the operator's Jobs are
//! controlled by a Snapshot or SnapshotRestore, and only their pods by those Jobs.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store, store::Writer};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use tokio::sync::watch;

use super::jobs::{self, Mover};
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
        }
    }

    /// The resource, other than the one of UID `except`, that holds the StatefulSet `name`
    /// of `namespace` stopped: a Snapshot with `copyMethod: Stop` or a SnapshotRestore with
    /// `stopWorkload`, unfinished, whose status records the replicas to bring back. A second
    /// one must wait: it would record zero replicas and leave the StatefulSet stopped.
    pub fn stopped_by(&self, namespace: &str, name: &str, except: &str) -> Option<String> {
        use crate::api::restore::RestorePhase;
        use crate::api::snapshot::{CopyMethod, Phase};
        let here = |meta: &ObjectMeta| {
            meta.namespace.as_deref() == Some(namespace) && meta.uid.as_deref() != Some(except)
        };
        let snapshot = self.snapshots.state().into_iter().find(|s| {
            let sts = s.spec.source.stateful_set.as_ref();
            let status = s.status.as_ref();
            here(s.meta())
                && s.spec.copy_method == CopyMethod::Stop
                && sts.is_some_and(|sts| sts.name == name)
                && status.is_some_and(|st| {
                    st.stopped_replicas.is_some()
                        && !matches!(st.phase, Some(Phase::Succeeded | Phase::Failed))
                })
        });
        if let Some(s) = snapshot {
            return Some(format!("Snapshot {}", s.name_any()));
        }
        let restore = self.restores.state().into_iter().find(|r| {
            let sts = r.spec.target.stateful_set.as_ref();
            let status = r.status.as_ref();
            here(r.meta())
                && r.spec.stop_workload
                && sts.is_some_and(|sts| sts.name == name)
                && status.is_some_and(|st| {
                    st.stopped_replicas.is_some()
                        && !matches!(
                            st.phase,
                            Some(RestorePhase::Succeeded | RestorePhase::Failed)
                        )
                })
        });
        restore.map(|r| format!("SnapshotRestore {}", r.name_any()))
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
            .filter(|j| controlled_by(j.meta(), owner_uid))?;
        let uid = job.uid()?;
        let pods = self.pods.state_filter(|p| controlled_by(p.meta(), &uid));
        Some(Mover {
            job,
            pods,
            stuck: None,
        })
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
        self.jobs
            .state()
            .iter()
            .filter(|j| jobs::outcome(j).is_none())
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
