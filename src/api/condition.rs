//! Conditions shared by both resources: the `Ready` condition, its reasons, and the
//! list-map schema of `status.conditions`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::{Schema, SchemaGenerator};

/// The one condition type: the resource reached its goal.
pub const READY: &str = "Ready";

/// Reasons of the `Ready` condition.
pub mod reason {
    /// Every node's mover finished successfully.
    pub const SUCCEEDED: &str = "Succeeded";
    /// Movers are running.
    pub const RUNNING: &str = "Running";
    /// Waiting for a free mover slot (the operator's concurrency cap) or for the workload.
    pub const PENDING: &str = "Pending";
    /// At least one node failed.
    pub const FAILED: &str = "Failed";
    /// The spec cannot be acted on; fix it.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// The workload is being stopped or started.
    pub const STOPPING_WORKLOAD: &str = "StoppingWorkload";
    /// A schedule takes its Snapshots.
    pub const SCHEDULED: &str = "Scheduled";
    /// A schedule is suspended.
    pub const SUSPENDED: &str = "Suspended";
}

/// `status.conditions` as Kubernetes lists them: a list-map keyed by `type`.
pub fn conditions_schema(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = generator.subschema_for::<Vec<Condition>>();
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["type"]),
    );
    schema
}

/// The conditions of a resource whose spec cannot be acted on: not `Ready`, for the reason
/// `InvalidSpec`, saying `why`.
pub fn invalid_spec(
    why: &impl std::fmt::Display,
    generation: Option<i64>,
    previous: &[Condition],
    now: Time,
) -> Vec<Condition> {
    let message = why.to_string();
    vec![ready(
        false,
        reason::INVALID_SPEC,
        message,
        generation,
        previous,
        now,
    )]
}

/// A `Ready` condition; keeps `last_transition_time` from `previous` when the status is the
/// same.
pub fn ready(
    status: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
    previous: &[Condition],
    now: Time,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_owned();
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == READY && c.status == status)
        .map_or(now, |c| c.last_transition_time.clone());
    Condition {
        type_: READY.into(),
        status,
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time,
    }
}
