//! The Kubernetes operator: reconcilers for `Snapshot` (and `SnapshotRestore`), mover Jobs,
//! leader election, metrics and health endpoints.

pub mod clone;
pub mod cluster;
pub mod config;
pub mod csi;
pub mod import;
pub mod jobs;
pub mod leader;
pub mod metrics;
pub mod mover;
pub mod restore;
pub mod schedule;
pub mod slots;
pub mod snapshot;
pub mod stop;
#[cfg(test)]
pub mod testing;
pub mod workload;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cluster::Cluster;
use futures_util::StreamExt;
use jobs::Mover;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, reflector};
use kube::runtime::{Controller, WatchStreamExt, finalizer, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use slots::{Busy, Claimant, Kind, Limits, Slots};
use std::time::Instant;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::api::condition::reason;
use crate::api::{Snapshot, SnapshotRestore};
use config::OperatorConfig;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use metrics::Metrics;

/// The field manager of every write.
pub const FIELD_MANAGER: &str = "snapshot-operator";
/// The finalizer on resources whose cleanup the operator owes.
pub const FINALIZER: &str = "snapshot-operator.dev/cleanup";

/// `snapshot-operator controller`.
#[derive(Debug, Clone, clap::Args)]
pub struct ControllerArgs {
    /// The operator configuration (YAML: defaultStorage, mover, maxConcurrentMovers).
    #[arg(long, env = "SNAPSHOT_OPERATOR_OPERATOR_CONFIG", value_name = "FILE")]
    pub operator_config: Option<PathBuf>,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub metrics_address: SocketAddr,
    /// Take a Lease before reconciling, so that several replicas are safe.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Namespace of the Lease (default: the pod's namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// Identity in the Lease (default: the pod name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Only check the operator configuration, then exit.
    #[arg(long)]
    pub check_config: bool,
}

/// Why a reconciliation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("the delete mover is still running or waits for a slot")]
    CleanupPending,
    #[error("the object changed since it was read")]
    Stale,
    #[error("deleting the archives failed: {0}")]
    CleanupFailed(String),
    #[error(transparent)]
    Finalizer(#[from] Box<finalizer::Error<Error>>),
}

impl Error {
    /// The error that caused this one, through the finalizer's wrapping.
    pub fn inner(&self) -> &Error {
        match self {
            Error::Finalizer(e) => match e.as_ref() {
                finalizer::Error::ApplyFailed(inner) | finalizer::Error::CleanupFailed(inner) => {
                    inner.inner()
                }
                _ => self,
            },
            other => other,
        }
    }

    /// A metrics label.
    pub fn reason(&self) -> &'static str {
        match self.inner() {
            Error::Kube(_) => "KubeApi",
            Error::CleanupPending => "CleanupPending",
            Error::Stale => "Stale",
            Error::CleanupFailed(_) => "CleanupFailed",
            Error::Finalizer(_) => "Finalizer",
        }
    }
}

/// Why the controller stopped.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("cannot reach the Kubernetes API (in-cluster config or KUBECONFIG)")]
    Client(#[source] kube::Error),
    #[error("cannot serve metrics on {address}")]
    Metrics {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot make an identity for leader election (set POD_NAME)")]
    Identity(#[source] std::io::Error),
    #[error(
        "the lease was lost (taken over, or not renewed in time); stopping so that only one replica reconciles"
    )]
    LostLease,
}

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

    /// Whether `who` gets a mover slot now (its turn, under both caps), for the Job `job`
    /// it then creates; otherwise `who` waits in line and is reconciled when its turn comes.
    pub fn take_slot<K: Reconciled>(&self, object: &K, node: &str, job: &str) -> bool {
        let meta = object.meta();
        let who = Claimant {
            namespace: meta.namespace.clone().unwrap_or_default(),
            kind: K::KIND,
            name: meta.name.clone().unwrap_or_default(),
            node: node.to_owned(),
        };
        let job = Busy {
            namespace: who.namespace.clone(),
            job: job.to_owned(),
        };
        let mut slots = self.slots.lock().expect("slots lock");
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

    /// A mover Job changed (as the store now shows it): its owner looks at it, and a slot
    /// it freed goes to the next in line.
    fn mover_changed(&self, job: &Job) {
        let namespace = job.metadata.namespace.clone().unwrap_or_default();
        for owner in job
            .owner_references()
            .iter()
            .filter(|o| o.controller == Some(true))
        {
            let kind = match owner.kind.as_str() {
                "Snapshot" => Kind::Snapshot,
                "SnapshotRestore" => Kind::SnapshotRestore,
                _ => continue,
            };
            let woken = self.wake(kind, &namespace, &owner.name);
            tracing::trace!(owner = %owner.name, ?woken, "a mover changed");
        }
        self.wake_waiters();
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

    /// After a mover finished: reconciles those next in line for the free slots.
    pub fn wake_waiters(&self) {
        let next = {
            let mut slots = self.slots.lock().expect("slots lock");
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

/// A resource the operator reconciles: applied while it exists, cleaned up (behind the
/// finalizer) when deleted.
pub trait Reconciled:
    Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + Serialize
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    /// Its status.
    type Status: Serialize + PartialEq + Send + Sync;
    /// The name of its action in events (`Snapshot`, `Restore`).
    const ACTION: &'static str;
    /// Its kind, as it waits for mover slots.
    const KIND: Kind;

    /// Moves the resource towards its spec; writes its status.
    fn apply(&self, ctx: &Context) -> impl Future<Output = Result<Action, Error>> + Send;
    /// Releases what the resource holds before it goes.
    fn cleanup(&self, ctx: &Context) -> impl Future<Output = Result<Action, Error>> + Send;
    /// The status as read.
    fn current(&self) -> Option<&Self::Status>;
    /// A status's phase, and its `Ready` condition.
    fn phase_and_ready(status: &Self::Status) -> (String, Option<&Condition>);
}

/// Writes `status` if it differs from the one read (on condition that the object is still
/// the version read: see [`patch_status`]) and publishes an event when the phase changed.
/// Tells whether it wrote: what a pass counts in the metrics, it counts only then.
pub async fn write_status<K: Reconciled>(
    ctx: &Context,
    object: &K,
    status: &K::Status,
) -> Result<bool, Error> {
    if object.current() == Some(status) {
        return Ok(false);
    }
    let api: Api<K> = Api::namespaced(
        ctx.client.clone(),
        object.meta().namespace.as_deref().unwrap_or_default(),
    );
    patch_status(&api, object, status).await?;
    let (phase, ready) = K::phase_and_ready(status);
    if object.current().map(|s| K::phase_and_ready(s).0) != Some(phase) {
        ctx.publish_ready(object, ready, K::ACTION).await;
    }
    Ok(true)
}

/// Reconciles one resource: timed, once the mover stores are filled, through the finalizer.
#[tracing::instrument(skip_all, fields(
    kind = K::kind(&()).as_ref(),
    namespace = object.meta().namespace.as_deref(),
    name = object.meta().name.as_deref(),
))]
pub async fn reconcile<K: Reconciled>(object: Arc<K>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconciling(&resource_label::<K>());
    ctx.cluster.ready().await;
    let api: Api<K> = Api::namespaced(
        ctx.client.clone(),
        object.meta().namespace.as_deref().unwrap_or_default(),
    );
    finalizer(&api, FINALIZER, object, |event| async {
        match event {
            finalizer::Event::Apply(object) => object.apply(&ctx).await,
            finalizer::Event::Cleanup(object) => object.cleanup(&ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// Writes a resource's status (server-side apply, with `apiVersion` and `kind`), on
/// condition that the object is still the version read: a pass that worked from an older one
/// fails with [`Error::Stale`] and changes nothing.
pub async fn patch_status<K>(api: &Api<K>, object: &K, status: &impl Serialize) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let meta = object.meta();
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": {"resourceVersion": meta.resource_version},
        "status": status,
    });
    let name = meta.name.clone().unwrap_or_default();
    match api
        .patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Err(Error::Stale),
        Err(e) => Err(e.into()),
    }
}

/// Deletes the object `name`; one that is not there is fine. Tells whether it deleted one.
pub async fn delete_if_there<K>(
    api: &Api<K>,
    name: &str,
    params: &kube::api::DeleteParams,
) -> Result<bool, Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, params).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The `resource` label of a kind in the metrics: `snapshot`, `snapshotrestore`.
pub fn resource_label<K: Resource<DynamicType = ()>>() -> String {
    K::kind(&()).to_ascii_lowercase()
}

/// Records a spec that cannot be acted on: its `status` (`Ready=False`, `InvalidSpec`), the
/// failure in the metrics and a Warning event. Nothing is retried until the spec changes.
pub async fn reject<K>(
    ctx: &Context,
    object: &K,
    api: &Api<K>,
    status: &impl Serialize,
    message: &str,
) -> Result<Action, Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    patch_status(api, object, status).await?;
    ctx.metrics
        .failed(&resource_label::<K>(), reason::INVALID_SPEC);
    ctx.publish(
        object,
        EventType::Warning,
        reason::INVALID_SPEC,
        message,
        "Validate",
    )
    .await;
    Ok(Action::await_change())
}

/// Transient errors are retried with backoff; a cleanup in progress is looked at soon.
pub fn error_policy<K: Resource<DynamicType = ()>>(
    object: Arc<K>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    // Waiting for a delete mover is a normal state, not a failure (the finalizer helper
    // keeps the finalizer only when cleanup returns an error).
    match error.inner() {
        Error::CleanupPending => return Action::requeue(Duration::from_secs(5)),
        // The watch brings the newer version; look again soon.
        Error::Stale => return Action::requeue(Duration::from_secs(1)),
        _ => {}
    }
    let kind = resource_label::<K>();
    ctx.metrics.failed(&kind, error.reason());
    tracing::warn!(kind = %kind, name = ?object.meta().name, error = %error, "reconcile failed");
    Action::requeue(Duration::from_secs(30))
}

/// Runs the operator until SIGTERM or SIGINT: reconciliations in flight finish, the Lease
/// is released (another replica leads at once), and the process exits with status 0.
pub async fn run(args: ControllerArgs) -> Result<(), ControllerError> {
    let config = OperatorConfig::load(args.operator_config.as_deref())?;
    if args.check_config {
        println!(
            "{}",
            serde_json::to_string_pretty(&config).expect("configs serialise")
        );
        return Ok(());
    }
    let client = Client::try_default()
        .await
        .map_err(ControllerError::Client)?;
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    let metrics = Arc::new(Metrics::default());
    let address = args.metrics_address;
    let server = tokio::spawn(metrics::serve(
        address,
        metrics.clone(),
        shutdown.clone().cancelled_owned(),
    ));
    // Resolves only if the server fails: on shutdown it ends, and the rest winds down.
    let server_failure = async move {
        let source = match server.await {
            Ok(Ok(())) => return std::future::pending().await,
            Ok(Err(e)) => e,
            Err(e) => std::io::Error::other(e),
        };
        ControllerError::Metrics { address, source }
    };
    tokio::pin!(server_failure);
    // Ready once the process runs and can talk to the API; a standby replica is ready too.
    metrics.set_ready(true);
    // Unique per replica without relying on process ids (PID 1 in every container).
    let identity = match &args.identity {
        Some(identity) => identity.clone(),
        None => format!(
            "{FIELD_MANAGER}-{}",
            crate::safefs::random_hex().map_err(ControllerError::Identity)?
        ),
    };
    let mut leadership = None;
    if args.leader_election {
        tokio::select! {
            acquired = leader::acquire(Api::namespaced(client.clone(), &args.lease_namespace), FIELD_MANAGER, &identity) => {
                leadership = Some(acquired);
            }
            () = shutdown.cancelled() => return Ok(()),
            failure = &mut server_failure => return Err(failure),
        }
    }
    let lost = async {
        match leadership.as_mut() {
            Some(l) => l.lost().await,
            None => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        () = controllers(client, config, metrics, &identity, Arc::new(jiff::Timestamp::now), shutdown.clone()) => Ok(()),
        // Another replica leads now: this one must not reconcile any more.
        () = lost => Err(ControllerError::LostLease),
        failure = &mut server_failure => Err(failure),
    };
    shutdown.cancel();
    if let Some(l) = leadership {
        l.release().await;
    }
    result
}

/// Cancels `shutdown` on SIGTERM or SIGINT.
async fn stop_on_signal(shutdown: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::error!(error = %e, "cannot handle SIGTERM");
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
    }
    shutdown.cancel();
}

/// Runs the reconcilers until `shutdown` is cancelled, then lets the reconciliations in
/// flight finish (the process must already lead, if it elects).
pub async fn controllers(
    client: Client,
    config: OperatorConfig,
    metrics: Arc<Metrics>,
    identity: &str,
    clock: Clock,
    shutdown: CancellationToken,
) {
    let movers = watcher::Config::default().labels(&format!(
        "{}={}",
        mover::MANAGED_BY.0,
        mover::MANAGED_BY.1
    ));
    // Reads come from stores of the operator's Jobs and pods (by label: their size follows
    // the movers, not the cluster).
    let (jobs, job_writer) = reflector::store::<Job>();
    let (pods, pod_writer) = reflector::store::<Pod>();
    let job_events = reflector(
        job_writer,
        watcher(Api::<Job>::all(client.clone()), movers.clone()),
    )
    .default_backoff();
    let pod_events =
        reflector(pod_writer, watcher(Api::<Pod>::all(client.clone()), movers)).default_backoff();
    let (wake_snapshots, woken_snapshots) = mpsc::unbounded_channel();
    let (wake_restores, woken_restores) = mpsc::unbounded_channel();
    let snapshots = Controller::new(
        Api::<Snapshot>::all(client.clone()),
        watcher::Config::default(),
    )
    .reconcile_on(received(woken_snapshots))
    .graceful_shutdown_on(shutdown.clone().cancelled_owned());
    let restores = Controller::new(
        Api::<SnapshotRestore>::all(client.clone()),
        watcher::Config::default(),
    )
    .reconcile_on(received(woken_restores))
    .graceful_shutdown_on(shutdown.clone().cancelled_owned());
    // Each mover store says when it holds a first full listing.
    let (jobs_listed, jobs_listing) = watch::channel(false);
    let (pods_listed, pods_listing) = watch::channel(false);
    let cluster = Cluster {
        jobs,
        pods,
        snapshots: snapshots.store(),
        restores: restores.store(),
        listed: [jobs_listing, pods_listing],
        stops: cluster::Stops::default(),
    };
    let wake = Wake {
        snapshots: Some(wake_snapshots),
        restores: Some(wake_restores),
    };
    let ctx =
        Arc::new(Context::new(client, config, metrics, identity, cluster, wake).with_clock(clock));
    let woken = ctx.clone();
    // Owners are woken from this stream, after the store took the change: a reconcile
    // woken by a Job's change sees that change.
    tokio::spawn(job_events.for_each(move |event| {
        match event {
            Ok(watcher::Event::Apply(job) | watcher::Event::Delete(job)) => {
                woken.mover_changed(&job);
            }
            Ok(watcher::Event::InitDone) => {
                jobs_listed.send_replace(true);
                woken.wake_waiters();
            }
            Ok(_) => {}
            Err(e) => {
                woken.metrics.watch_failed("jobs");
                tracing::warn!(error = %e, "watching mover Jobs");
            }
        }
        std::future::ready(())
    }));
    let watching = ctx.clone();
    tokio::spawn(pod_events.for_each(move |event| {
        match event {
            Ok(watcher::Event::InitDone) => {
                pods_listed.send_replace(true);
            }
            Ok(_) => {}
            Err(e) => {
                watching.metrics.watch_failed("pods");
                tracing::warn!(error = %e, "watching mover pods");
            }
        }
        std::future::ready(())
    }));
    let metrics = ctx.metrics.clone();
    let snapshots = snapshots
        .run(reconcile::<Snapshot>, error_policy, ctx.clone())
        .for_each(move |result| {
            outcome(result, &metrics, "snapshots");
            std::future::ready(())
        });
    // A schedule looks again when one of its Snapshots changes (to prune, and to record the
    // last success).
    let of_schedule = watcher::Config::default().labels(schedule::SCHEDULE);
    let schedules = Controller::new(
        Api::<crate::api::SnapshotSchedule>::all(ctx.client.clone()),
        watcher::Config::default(),
    )
    .watches(
        Api::<Snapshot>::all(ctx.client.clone()),
        of_schedule,
        |snap| {
            let name = snap.labels().get(schedule::SCHEDULE).cloned();
            name.map(|n| ObjectRef::new(&n).within(snap.namespace().as_deref().unwrap_or_default()))
        },
    )
    .graceful_shutdown_on(shutdown.clone().cancelled_owned());
    let metrics = ctx.metrics.clone();
    let schedules = schedules
        .run(schedule::reconcile, error_policy, ctx.clone())
        .for_each(move |result| {
            outcome(result, &metrics, "snapshotschedules");
            std::future::ready(())
        });
    let imports = import::run(ctx.clone(), shutdown);
    let metrics = ctx.metrics.clone();
    let restores = restores
        .run(reconcile::<SnapshotRestore>, error_policy, ctx)
        .for_each(move |result| {
            outcome(result, &metrics, "snapshotrestores");
            std::future::ready(())
        });
    tokio::join!(snapshots, restores, schedules, imports);
}

/// The values sent on a channel, as a stream.
fn received<T: Send + 'static>(
    receiver: mpsc::UnboundedReceiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    })
}

/// Counts a controller's failed watches; other errors were handled by the error policy.
fn outcome<T, E: std::error::Error>(
    result: Result<T, kube::runtime::controller::Error<E, watcher::Error>>,
    metrics: &Metrics,
    resource: &str,
) {
    match result {
        Ok(_) => {}
        Err(kube::runtime::controller::Error::QueueError(e)) => {
            metrics.watch_failed(resource);
            tracing::warn!(%resource, error = %e, "watching failed");
        }
        Err(e) => tracing::debug!(error = %e, "reconcile error"),
    }
}
