//! The Kubernetes operator: reconcilers for `Snapshot` (and `SnapshotRestore`), mover Jobs,
//! leader election, metrics and health endpoints.

pub mod cluster;
pub mod config;
pub mod copy;
pub mod import;
pub mod jobs;
pub mod kernel;
pub mod leader;
pub mod metrics;
pub mod mover;
pub mod own;
pub mod progress;
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

use cluster::Cluster;
use futures_util::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, reflector};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::api::{Snapshot, SnapshotRestore};
use config::OperatorConfig;
pub use kernel::{
    Admitted, Clock, Context, Error, FIELD_MANAGER, FINALIZER, Invalid, Reconciled, Wake,
    create_if_absent, delete_if_there, delete_named, error_policy, patch_status, reconcile, reject,
    resource_label, trusted, write_status,
};
use metrics::Metrics;

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
    tokio::spawn(follow_jobs(ctx.clone(), job_events, jobs_listed));
    tokio::spawn(follow_pods(ctx.clone(), pod_events, pods_listed));
    let snapshots = counted(
        snapshots.run(reconcile::<Snapshot>, error_policy, ctx.clone()),
        ctx.metrics.clone(),
        "snapshots",
    );
    let schedules = schedule_controller(&ctx.client, &shutdown);
    let schedules = counted(
        schedules.run(schedule::reconcile, error_policy, ctx.clone()),
        ctx.metrics.clone(),
        "snapshotschedules",
    );
    let imports = import::run(ctx.clone(), shutdown);
    let restores = counted(
        restores.run(reconcile::<SnapshotRestore>, error_policy, ctx.clone()),
        ctx.metrics.clone(),
        "snapshotrestores",
    );
    tokio::join!(snapshots, restores, schedules, imports);
}

/// Follows the mover Jobs' watch: owners are woken from this stream, after the store took
/// the change (a reconcile woken by a Job's change sees that change).
async fn follow_jobs(
    ctx: Arc<Context>,
    events: impl futures_util::Stream<Item = Result<watcher::Event<Job>, watcher::Error>>,
    listed: watch::Sender<bool>,
) {
    events
        .for_each(move |event| {
            match event {
                Ok(watcher::Event::Apply(job) | watcher::Event::Delete(job)) => {
                    ctx.mover_changed(&job);
                }
                Ok(watcher::Event::InitDone) => {
                    listed.send_replace(true);
                    ctx.wake_waiters();
                }
                Ok(_) => {}
                Err(e) => {
                    ctx.metrics.watch_failed("jobs");
                    tracing::warn!(error = %e, "watching mover Jobs");
                }
            }
            std::future::ready(())
        })
        .await
}

/// Follows the mover pods' watch.
async fn follow_pods(
    ctx: Arc<Context>,
    events: impl futures_util::Stream<Item = Result<watcher::Event<Pod>, watcher::Error>>,
    listed: watch::Sender<bool>,
) {
    events
        .for_each(move |event| {
            match event {
                Ok(watcher::Event::Apply(pod)) => ctx.mover_pod_changed(&pod),
                Ok(watcher::Event::InitDone) => {
                    listed.send_replace(true);
                }
                Ok(_) => {}
                Err(e) => {
                    ctx.metrics.watch_failed("pods");
                    tracing::warn!(error = %e, "watching mover pods");
                }
            }
            std::future::ready(())
        })
        .await
}

/// The SnapshotSchedule controller: a schedule looks again when one of its Snapshots
/// changes (to prune, and to record the last success).
fn schedule_controller(
    client: &Client,
    shutdown: &CancellationToken,
) -> Controller<crate::api::SnapshotSchedule> {
    let of_schedule = watcher::Config::default().labels(schedule::SCHEDULE);
    Controller::new(
        Api::<crate::api::SnapshotSchedule>::all(client.clone()),
        watcher::Config::default(),
    )
    .watches(Api::<Snapshot>::all(client.clone()), of_schedule, |snap| {
        let name = snap.labels().get(schedule::SCHEDULE).cloned();
        name.map(|n| ObjectRef::new(&n).within(snap.namespace().as_deref().unwrap_or_default()))
    })
    .graceful_shutdown_on(shutdown.clone().cancelled_owned())
}

/// The values sent on a channel, as a stream.
fn received<T: Send + 'static>(
    receiver: mpsc::UnboundedReceiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    })
}

/// A controller's results, its failed watches counted.
async fn counted<T, E: std::error::Error + 'static>(
    results: impl futures_util::Stream<
        Item = Result<T, kube::runtime::controller::Error<E, watcher::Error>>,
    >,
    metrics: Arc<Metrics>,
    resource: &'static str,
) {
    results
        .for_each(move |result| {
            outcome(result, &metrics, resource);
            std::future::ready(())
        })
        .await
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
