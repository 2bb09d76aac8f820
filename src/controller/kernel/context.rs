//! What every reconciliation shares: the client, the configuration, the watch stores, the
//! mover slots, events and the clock.

use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, ListParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, Resource, ResourceExt};
use tokio::sync::mpsc;

use super::FIELD_MANAGER;
use super::error::Error;
use crate::api::condition::reason;
use crate::api::{Snapshot, SnapshotRestore};
use crate::controller::cluster::{self, Cluster};
use crate::controller::config::OperatorConfig;
use crate::controller::jobs::{self, Mover};
use crate::controller::metrics::Metrics;
use crate::controller::own::{self, OwnStorage};
use crate::controller::progress::ProgressReads;
use crate::controller::slots::{Busy, Claimant, Kind, Limits, Queued, Slots};

/// What every reconciliation shares.
pub struct Context {
    pub client: Client,
    pub config: OperatorConfig,
    pub metrics: Arc<Metrics>,
    /// Mover Jobs and pods, Snapshots and SnapshotRestores, as the watches last saw them.
    pub cluster: Cluster,
    recorder: Recorder,
    /// Who waits for a mover slot; serialises "count running movers, then start one".
    slots: std::sync::Mutex<Slots>,
    /// Reconciles those next in line when a slot frees.
    wake: Wake,
    /// The time (the system's; a test's own clock in tests).
    clock: Clock,
    /// Running movers' progress, as last read from their logs.
    pub progress: ProgressReads,
    /// The default storage as the operator reaches it itself.
    own_storage: OwnStorage,
}

/// Where the reconcilers read the time.
pub type Clock = Arc<dyn Fn() -> jiff::Timestamp + Send + Sync>;

/// Senders that trigger a reconcile of a waiting resource.
#[derive(Default)]
pub struct Wake {
    pub snapshots: Option<mpsc::UnboundedSender<ObjectRef<Snapshot>>>,
    pub restores: Option<mpsc::UnboundedSender<ObjectRef<SnapshotRestore>>>,
}

impl Context {
    pub fn new(
        client: Client,
        config: OperatorConfig,
        metrics: Arc<Metrics>,
        identity: &str,
        cluster: Cluster,
        wake: Wake,
    ) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: Some(identity.into()),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            progress: ProgressReads::new(&config.mover.progress),
            own_storage: own::own_storage(&config),
            client,
            config,
            metrics,
            cluster,
            slots: std::sync::Mutex::new(Slots::default()),
            wake,
            clock: Arc::new(jiff::Timestamp::now),
        }
    }

    /// The same context reading the time from `clock`.
    pub fn with_clock(self, clock: Clock) -> Self {
        Self { clock, ..self }
    }

    /// The time now.
    pub fn now(&self) -> jiff::Timestamp {
        (self.clock)()
    }

    /// The same context reaching the default storage through `own` (tests).
    pub fn with_own_storage(self, own: OwnStorage) -> Self {
        Self {
            own_storage: own,
            ..self
        }
    }

    /// The default storage of `namespace` when the operator deletes its archives itself
    /// (`deleteThroughOperator`, and it is S3), connected.
    pub async fn deleting_storage(
        &self,
        namespace: &str,
    ) -> Option<Result<Box<dyn crate::storage::Storage>, crate::storage::StorageError>> {
        if !self.config.delete_through_operator {
            return None;
        }
        (self.own_storage)(Some(namespace.to_owned())).await
    }

    fn limits(&self) -> Limits {
        let total = self.config.max_concurrent_movers as usize;
        Limits {
            total,
            per_namespace: self
                .config
                .max_concurrent_movers_per_namespace
                .map_or(total, |n| n as usize),
        }
    }

    /// The mover slots, the Jobs recorded as started that the store shows now forgotten
    /// (from then on the store counts them, running or finished).
    fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        let mut slots = self.slots.lock().expect("slots lock");
        slots.shown(|b| self.cluster.has_job(&b.namespace, &b.job));
        slots
    }

    /// Whether `who` gets a mover slot now (its turn, under both caps), for the Job `job`
    /// it then creates; otherwise `who` waits in line and is reconciled when its turn comes.
    pub fn take_slot<K: Queued>(&self, object: &K, node: &str, job: &str) -> bool {
        let who = Claimant::of(object, node);
        let job = Busy {
            namespace: who.namespace.clone(),
            job: job.to_owned(),
        };
        let mut slots = self.slots();
        let now = Instant::now();
        let granted = slots.request(&who, &job, &self.cluster.busy_slots(), self.limits(), now);
        if granted {
            // Counted until the store shows the Job.
            slots.started(job, now);
        }
        granted
    }

    /// The mover Job `name` of the resource `owner_uid`, with its pods. The two come from
    /// different watches: when the Job has finished but the pod whose report it calls for is
    /// not in the store yet, the Job's pods are read from the API server.
    pub async fn mover(
        &self,
        namespace: &str,
        name: &str,
        owner_uid: &str,
    ) -> Result<Option<Mover>, Error> {
        let Some(mut mover) = self.cluster.mover(namespace, name, owner_uid) else {
            return Ok(None);
        };
        if mover.outcome().is_some() && jobs::reporting(&mover.job, &mover.pods).is_none() {
            let job_uid = mover.job.uid().unwrap_or_default();
            mover.pods = Api::<Pod>::namespaced(self.client.clone(), namespace)
                .list(&ListParams::default().labels(&format!("job-name={name}")))
                .await?
                .items
                .into_iter()
                .filter(|p| cluster::controlled_by(&p.metadata, &job_uid))
                .map(Arc::new)
                .collect();
        }
        let timeout = jiff::SignedDuration::from_secs(self.config.mover.start_timeout_seconds);
        // Against the API server's own timestamps on the Job and pods: the wall clock, not
        // the controller's (which tests move ahead).
        let now = jiff::Timestamp::now();
        mover.stuck = jobs::stuck(&mover.job, &mover.pods, now, timeout);
        Ok(Some(mover))
    }

    /// The mover Jobs `names` of `owner`, each with its pods and, while it runs, its
    /// progress, if it exists.
    pub async fn movers_of<K: Resource<DynamicType = ()>>(
        &self,
        owner: &K,
        names: impl Iterator<Item = String>,
    ) -> Result<Vec<Option<Mover>>, Error> {
        let meta = owner.meta();
        let ns = meta.namespace.clone().unwrap_or_default();
        let uid = meta.uid.clone().unwrap_or_default();
        let mut movers = Vec::new();
        for name in names {
            let mut mover = self.mover(&ns, &name, &uid).await?;
            // Their progress goes into the owner's status (a delete mover's goes nowhere).
            if let Some(m) = mover.as_mut()
                && m.outcome().is_none()
                && let Some(pod) = jobs::running_pod(&m.pods)
            {
                m.progress = self.progress.of(&self.client, pod, &self.metrics).await;
            }
            movers.push(mover);
        }
        Ok(movers)
    }

    /// A mover Job changed (as the store now shows it): its owner looks at it, and a slot
    /// it freed goes to the next in line.
    pub(in crate::controller) fn mover_changed(&self, job: &Job) {
        let namespace = job.metadata.namespace.clone().unwrap_or_default();
        // Every owner: a delete mover deletes the archives of several Snapshots.
        for owner in job.owner_references() {
            let Some(kind) = Kind::of(&owner.kind) else {
                continue;
            };
            let woken = self.wake(kind, &namespace, &owner.name);
            tracing::trace!(owner = %owner.name, ?woken, "a mover changed");
        }
        self.wake_waiters();
    }

    /// A mover pod changed: once it succeeded, its Job's owner and the waiters for a slot are
    /// woken as for a change of the Job, which the Job controller makes a second or more
    /// later (see [`jobs::settled`]).
    pub(in crate::controller) fn mover_pod_changed(&self, pod: &Pod) {
        if jobs::succeeded(pod)
            && let Some(job) = self.cluster.job_of(pod)
        {
            self.mover_changed(&job);
        }
    }

    /// Deletes the mover Jobs `names` of `owner` whose results are recorded: finished Jobs
    /// would pile up, and one still running there was given up as stuck.
    pub async fn remove_recorded_movers<K: Resource<DynamicType = ()>>(
        &self,
        owner: &K,
        names: impl Iterator<Item = String>,
    ) -> Result<(), Error> {
        let meta = owner.meta();
        let ns = meta.namespace.clone().unwrap_or_default();
        let uid = meta.uid.clone().unwrap_or_default();
        for name in names {
            if let Some(m) = self.cluster.mover(&ns, &name, &uid) {
                jobs::delete(&self.client, &m.job).await?;
            }
        }
        Ok(())
    }

    /// Triggers a reconcile of a resource; `None` without a controller to trigger (tests),
    /// else whether it was queued.
    fn wake(&self, kind: Kind, namespace: &str, name: &str) -> Option<bool> {
        fn send<K: Resource<DynamicType = ()>>(
            tx: Option<&mpsc::UnboundedSender<ObjectRef<K>>>,
            namespace: &str,
            name: &str,
        ) -> Option<bool> {
            tx.map(|tx| tx.send(ObjectRef::new(name).within(namespace)).is_ok())
        }
        match kind {
            Kind::Snapshot => send(self.wake.snapshots.as_ref(), namespace, name),
            Kind::SnapshotRestore => send(self.wake.restores.as_ref(), namespace, name),
        }
    }

    /// `who` (its `node`) waits for a slot no more: another's mover does its work. It leaves
    /// the line, which it would head for a while otherwise, and who is next is woken.
    pub fn needs_no_slot<K: Queued>(&self, object: &K, node: &str) {
        let who = Claimant::of(object, node);
        if self.slots().leave(&who) {
            self.wake_waiters();
        }
    }

    /// Gives back the slot [`Context::take_slot`] granted for the Job `job` of `object`, which
    /// it will not create after all (the node failed first), and wakes who is next in line.
    pub fn give_back_slot<K: Queued>(&self, object: &K, job: &str) {
        let job = Busy {
            namespace: object.meta().namespace.clone().unwrap_or_default(),
            job: job.to_owned(),
        };
        self.slots().unused(&job);
        self.wake_waiters();
    }

    /// Once the stores show the holder of a stop of the StatefulSet `name` of `namespace`
    /// finished: reconciles who waited to stop it next, at once (not at their next look).
    pub fn wake_next_stoppers(&self, namespace: &str, name: &str) {
        for who in self.cluster.stop_ended((namespace, name)) {
            let sent = self.wake(who.kind, namespace, &who.name);
            tracing::debug!(%who, ?sent, statefulset = name, "a stop ended");
        }
    }

    /// After a mover finished: reconciles those next in line for the free slots.
    pub fn wake_waiters(&self) {
        let next = {
            let mut slots = self.slots();
            slots.retain(|who| self.cluster.exists(who));
            slots.next(&self.cluster.busy_slots(), self.limits(), Instant::now())
        };
        for who in next {
            let sent = self.wake(who.kind, &who.namespace, &who.name);
            tracing::debug!(?who, ?sent, "a mover slot is free");
        }
    }

    /// Publishes an event about `object`; failures are logged, never fatal.
    pub async fn publish<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        type_: EventType,
        reason: &str,
        note: impl Into<String>,
        action: &str,
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note.into()),
            action: action.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &object.object_ref(&())).await {
            tracing::warn!(reason = %event.reason, error = %e, "could not publish an event");
        }
    }
}

impl Context {
    /// An event for a phase change, from the new `Ready` condition: its reason and message.
    pub async fn publish_ready<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        ready: Option<&Condition>,
        action: &str,
    ) {
        let Some(c) = ready else { return };
        let failed = [reason::FAILED, reason::INVALID_SPEC].contains(&c.reason.as_str());
        let type_ = if failed {
            EventType::Warning
        } else {
            EventType::Normal
        };
        self.publish(object, type_, &c.reason, c.message.clone(), action)
            .await;
    }
}
