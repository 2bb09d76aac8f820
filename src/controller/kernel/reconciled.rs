//! A resource the operator reconciles, the driver that runs it behind the finalizer, and
//! the writes every reconciler makes.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Resource;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::FINALIZER;
use super::context::Context;
use super::error::Error;
use super::invalid::Invalid;
use super::objects::patch_status;
use crate::api::condition::reason;
use crate::controller::slots::Queued;

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
    + Queued
    + 'static
{
    /// Its status.
    type Status: Serialize + PartialEq + Send + Sync;
    /// Its phase.
    type Phase: PartialEq;
    /// The name of its action in events (`Snapshot`, `Restore`).
    const ACTION: &'static str;

    /// Moves the resource towards its spec; writes its status.
    fn apply(&self, ctx: &Context) -> impl Future<Output = Result<Action, Error>> + Send;
    /// Releases what the resource holds before it goes.
    fn cleanup(&self, ctx: &Context) -> impl Future<Output = Result<Action, Error>> + Send;
    /// The status as read.
    fn current(&self) -> Option<&Self::Status>;
    /// A status's phase, and its `Ready` condition.
    fn phase_and_ready(status: &Self::Status) -> (Option<Self::Phase>, Option<&Condition>);
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
    let result = finalizer(&api, FINALIZER, object, |event| async {
        match event {
            finalizer::Event::Apply(object) => object.apply(&ctx).await,
            finalizer::Event::Cleanup(object) => object.cleanup(&ctx).await,
        }
    })
    .await;
    match result {
        // A pass begun before the store showed the object gone (woken twice as its movers
        // finished) cleaned up again: the finalizer an earlier pass removed is gone with it.
        Err(finalizer::Error::RemoveFinalizer(kube::Error::Api(e))) if e.code == 404 => {
            Ok(Action::await_change())
        }
        other => other.map_err(|e| Error::Finalizer(Box::new(e))),
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
    why: &Invalid,
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
        why.to_string(),
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
