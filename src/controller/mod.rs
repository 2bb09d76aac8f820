//! The Kubernetes operator: reconcilers for `Snapshot` (and `SnapshotRestore`), mover Jobs,
//! leader election, metrics and health endpoints.

pub mod config;
pub mod jobs;
pub mod leader;
pub mod metrics;
pub mod mover;
pub mod restore;
pub mod snapshot;
#[cfg(test)]
pub mod testing;
pub mod workload;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{Controller, finalizer, watcher};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

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
    #[error("Kubernetes API request failed")]
    Kube(#[from] kube::Error),
    #[error("the delete mover is still running")]
    CleanupPending,
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
}

/// What every reconciliation shares.
pub struct Context {
    pub client: Client,
    pub config: OperatorConfig,
    pub metrics: Arc<Metrics>,
    recorder: Recorder,
    /// Serialises "count running movers, then start one", so the cap holds.
    pub mover_slots: tokio::sync::Mutex<()>,
}

impl Context {
    pub fn new(
        client: Client,
        config: OperatorConfig,
        metrics: Arc<Metrics>,
        identity: &str,
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
            mover_slots: tokio::sync::Mutex::new(()),
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

/// Writes a resource's status (server-side apply, with `apiVersion` and `kind`).
pub async fn patch_status<K>(api: &Api<K>, name: &str, status: &impl Serialize) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
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
    let name = object.meta().name.clone().unwrap_or_default();
    patch_status(api, &name, status).await?;
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
    if let Error::CleanupPending = error.inner() {
        return Action::requeue(Duration::from_secs(5));
    }
    let kind = resource_label::<K>();
    ctx.metrics.failed(&kind, error.reason());
    tracing::warn!(kind = %kind, name = ?object.meta().name, error = %error, "reconcile failed");
    Action::requeue(Duration::from_secs(30))
}

/// Runs the operator until SIGTERM.
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
    let metrics = Arc::new(Metrics::default());
    let address = args.metrics_address;
    let listener_metrics = metrics.clone();
    let server = tokio::spawn(async move { metrics::serve(address, listener_metrics).await });
    // Ready once the process runs and can talk to the API; a standby replica is ready too.
    metrics.set_ready(true);
    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| format!("{}-{}", FIELD_MANAGER, std::process::id()));
    if args.leader_election {
        let leases: Api<Lease> = Api::namespaced(client.clone(), &args.lease_namespace);
        tokio::select! {
            () = leader::lead(leases, FIELD_MANAGER.into(), identity.clone()) => {}
            served = server => {
                let source = match served {
                    Ok(Err(e)) => e,
                    _ => std::io::Error::other("the metrics server stopped"),
                };
                return Err(ControllerError::Metrics { address, source });
            }
        }
    }
    let ctx = Arc::new(Context::new(client, config, metrics, &identity));
    controllers(ctx).await;
    Ok(())
}

/// Runs the reconcilers until SIGTERM (the process must already lead, if it elects).
pub async fn controllers(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let movers = watcher::Config::default().labels(&format!(
        "{}={}",
        mover::MANAGED_BY.0,
        mover::MANAGED_BY.1
    ));
    let snapshots = Controller::new(
        Api::<Snapshot>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<Job>::all(client.clone()), movers.clone())
    .shutdown_on_signal()
    .run(snapshot::reconcile, error_policy, ctx.clone())
    .for_each(log_result);
    let restores = Controller::new(
        Api::<SnapshotRestore>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<Job>::all(client), movers)
    .shutdown_on_signal()
    .run(restore::reconcile, error_policy, ctx)
    .for_each(log_result);
    tokio::join!(snapshots, restores);
}

async fn log_result<T, E: std::fmt::Display>(result: Result<T, E>) {
    if let Err(e) = result {
        tracing::debug!(error = %e, "reconcile error");
    }
}
