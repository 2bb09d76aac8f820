//! Conditions shared by both resources: the `Ready` condition, its reasons, and the
//! list-map schema of `status.conditions`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::{Schema, SchemaGenerator};

/// The resource reached its goal (always the first condition).
pub const READY: &str = "Ready";
/// Movers are moving bytes: how many, how fast (see [`progressing`]).
pub const PROGRESSING: &str = "Progressing";

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
    /// `Progressing`: movers run.
    pub const MOVERS_RUNNING: &str = "MoversRunning";
    /// `Progressing` is False: no mover runs.
    pub const NO_MOVER_RUNNING: &str = "NoMoverRunning";
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
    of_type(READY, status, reason, message, generation, previous, now)
}

/// A condition of type `type_`; keeps `last_transition_time` from `previous` when the
/// status is the same.
fn of_type(
    type_: &str,
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
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or(now, |c| c.last_transition_time.clone());
    Condition {
        type_: type_.into(),
        status,
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time,
    }
}

/// How far one node's running mover is, as it last said (its log, read at most every
/// `mover.progress.intervalMilliseconds`).
#[derive(
    serde::Deserialize, serde::Serialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// Bytes read so far (a snapshot: of the files; a restore: of the archive).
    pub bytes_done: i64,
    /// What `bytesDone` reaches at the end, when known (a restore: the archive's size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_total: Option<i64>,
    /// Bytes per second over the last ten seconds.
    pub bytes_per_second: i64,
}

/// A resource's conditions (pure): `Ready` (always first) as `ready` says (status, reason,
/// message), then `Progressing` from the running movers' progress (see [`progressing`]).
pub fn ready_and_progressing<'a>(
    (status, reason, message): (bool, &str, String),
    running: impl Iterator<Item = Option<&'a Progress>>,
    generation: Option<i64>,
    previous: &[Condition],
    now: Time,
) -> Vec<Condition> {
    let first = ready(status, reason, message, generation, previous, now.clone());
    vec![first, progressing(running, generation, previous, now)]
}

/// The `Progressing` condition (pure): True while movers run (`running`: each one's progress,
/// if it reported any), saying how far they are in all and how fast; False when none runs.
pub fn progressing<'a>(
    running: impl Iterator<Item = Option<&'a Progress>>,
    generation: Option<i64>,
    previous: &[Condition],
    now: Time,
) -> Condition {
    use crate::format::human_bytes;
    let running: Vec<Option<&Progress>> = running.collect();
    let reported = running.iter().flatten();
    let running = running.len();
    if running == 0 {
        let why = reason::NO_MOVER_RUNNING;
        return of_type(
            PROGRESSING,
            false,
            why,
            "no mover is running",
            generation,
            previous,
            now,
        );
    }
    let (mut done, mut total, mut rate, mut count) = (0u64, Some(0u64), 0u64, 0usize);
    for p in reported {
        let bytes = |n: i64| u64::try_from(n).unwrap_or(0);
        done += bytes(p.bytes_done);
        total = total.zip(p.bytes_total).map(|(t, n)| t + bytes(n));
        rate += bytes(p.bytes_per_second);
        count += 1;
    }
    let movers = if running == 1 {
        "1 mover"
    } else {
        &format!("{running} movers")
    };
    let message = match (count, total) {
        (0, _) => format!("{movers} running"),
        (_, Some(total)) if count == running => format!(
            "{movers}: {} of {} at {}/s",
            human_bytes(done),
            human_bytes(total),
            human_bytes(rate)
        ),
        _ => format!("{movers}: {} at {}/s", human_bytes(done), human_bytes(rate)),
    };
    let why = reason::MOVERS_RUNNING;
    of_type(PROGRESSING, true, why, message, generation, previous, now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(n: i64, total: Option<i64>) -> Progress {
        Progress {
            bytes_done: n << 20,
            bytes_total: total.map(|t| t << 20),
            bytes_per_second: 1 << 20,
        }
    }

    #[test]
    fn progressing_says_how_far_the_running_movers_are_in_all() {
        let now = || Time(jiff::Timestamp::UNIX_EPOCH);
        let message = |running: &[Option<Progress>]| {
            let c = progressing(running.iter().map(Option::as_ref), Some(1), &[], now());
            (c.status, c.reason, c.message)
        };
        let (a, b) = (at(50, Some(100)), at(10, Some(300)));
        assert_eq!(
            message(&[Some(a.clone()), Some(b)]),
            (
                "True".into(),
                "MoversRunning".into(),
                "2 movers: 60.0 MiB of 400.0 MiB at 2.0 MiB/s".into()
            )
        );
        // A total unknown for one: none in all.
        let c = at(5, None);
        assert_eq!(
            message(&[Some(a), Some(c)]).2,
            "2 movers: 55.0 MiB at 2.0 MiB/s"
        );
        assert_eq!(message(&[None]).2, "1 mover running");
        assert_eq!(
            message(&[]),
            (
                "False".into(),
                "NoMoverRunning".into(),
                "no mover is running".into()
            )
        );
        // The transition time stays while the status does.
        let earlier = progressing([None].into_iter(), Some(1), &[], now());
        let later = Time(jiff::Timestamp::UNIX_EPOCH + jiff::SignedDuration::from_secs(60));
        let again = progressing([None].into_iter(), Some(1), &[earlier], later);
        assert_eq!(again.last_transition_time, now());
    }
}
