//! `spec.ttl`: a Snapshot is deleted once it expires, on the controller's clock (its archives
//! go with it as its `deletionPolicy` says), but never while a restore still reads it.

use std::time::Duration;

use jiff::Timestamp;
use kube::api::{Api, DeleteParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};

use super::validate::expires_at;
use crate::api::snapshot::{Phase, Snapshot};
use crate::controller::kernel::delete_if_there;
use crate::controller::{Context, Error};

/// How often an expired Snapshot that restores still read is looked at again.
const HELD_RECHECK: Duration = Duration::from_secs(10);

/// Where a Snapshot stands with its expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expiry {
    /// It has no `ttl`.
    Never,
    /// It expires then.
    At(Timestamp),
    /// It has expired: delete it.
    Due,
    /// It has expired, but its movers have not finished: deleted once they have.
    Unfinished,
    /// It has expired, but these restores still read it.
    Held(Vec<String>),
}

/// Where `snap` stands at `now` (pure); `reading`: the unfinished restores that read it
/// (asked only once it has expired). A Snapshot whose movers still run (or wait for a slot,
/// or for its workload to stop) is never cut short: it goes once it has finished.
pub fn expiry(snap: &Snapshot, now: Timestamp, reading: impl FnOnce() -> Vec<String>) -> Expiry {
    let phase = snap.status.as_ref().and_then(|s| s.phase);
    match expires_at(snap) {
        None => Expiry::Never,
        Some(at) if now < at => Expiry::At(at),
        Some(_) if !phase.is_some_and(Phase::is_final) => Expiry::Unfinished,
        Some(_) => match reading() {
            held if held.is_empty() => Expiry::Due,
            held => Expiry::Held(held),
        },
    }
}

/// The unfinished SnapshotRestores of `snap`'s namespace that restore from it (the stores).
pub fn restores_reading(ctx: &Context, snap: &Snapshot) -> Vec<String> {
    let (ns, name) = (snap.namespace().unwrap_or_default(), snap.name_any());
    let reading = ctx.cluster.restores_reading(&ns).into_iter();
    let mut names: Vec<String> = reading
        .filter(|(s, _)| *s == name)
        .map(|(_, r)| r)
        .collect();
    names.sort();
    names
}

/// Deletes the expired `snap` (this very object: another of its name made since is not it),
/// saying so in an event.
pub async fn expire(snap: &Snapshot, ctx: &Context) -> Result<Action, Error> {
    let api: Api<Snapshot> =
        Api::namespaced(ctx.client.clone(), &snap.namespace().unwrap_or_default());
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: snap.meta().uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    if delete_if_there(&api, &snap.name_any(), &params).await? {
        let ttl = snap.spec.ttl.as_deref().unwrap_or_default();
        let note = format!("expired (ttl {ttl}): deleted");
        ctx.publish(snap, EventType::Normal, "Expired", note, "Expire")
            .await;
    }
    Ok(Action::await_change())
}

/// Waiting for nothing else: look again when `snap` expires (or, held by restores, in a
/// while).
pub fn until_expiry(snap: &Snapshot, ctx: &Context) -> Action {
    let now = ctx.now();
    match expiry(snap, now, Vec::new) {
        Expiry::At(at) => {
            let left = now.duration_until(at).unsigned_abs();
            // At least a second (the clocks of passes differ a little).
            Action::requeue(left.max(Duration::from_secs(1)))
        }
        Expiry::Due | Expiry::Held(_) | Expiry::Unfinished => Action::requeue(HELD_RECHECK),
        Expiry::Never => Action::await_change(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept_a_day(phase: Option<&str>) -> Snapshot {
        let mut snap: Snapshot = serde_json::from_value(serde_json::json!({
            "apiVersion": "snapshot-operator.dev/v1alpha1", "kind": "Snapshot",
            "metadata": {"name": "s", "namespace": "ns", "creationTimestamp": "2026-12-01T10:00:00Z"},
            "spec": {"source": {"persistentVolumeClaim": {"claimName": "data"}}, "ttl": "1d"},
        }))
        .unwrap();
        if let Some(phase) = phase {
            snap.status =
                Some(serde_json::from_value(serde_json::json!({"phase": phase})).unwrap());
        }
        snap
    }

    #[test]
    fn a_snapshot_expires_once_finished_and_read_by_no_restore() {
        let at = |t: &str| t.parse::<Timestamp>().unwrap();
        let (before, after) = (at("2026-12-02T09:59:59Z"), at("2026-12-02T10:00:00Z"));
        let none = Vec::new;
        let done = kept_a_day(Some("Succeeded"));
        assert_eq!(expiry(&done, before, none), Expiry::At(after));
        assert_eq!(expiry(&done, after, none), Expiry::Due);
        assert_eq!(
            expiry(&kept_a_day(Some("Failed")), after, none),
            Expiry::Due
        );
        let held = expiry(&done, after, || vec!["r".to_owned()]);
        assert_eq!(held, Expiry::Held(vec!["r".to_owned()]));
        for unfinished in [None, Some("Pending"), Some("Running")] {
            let snap = kept_a_day(unfinished);
            assert_eq!(
                expiry(&snap, after, none),
                Expiry::Unfinished,
                "{unfinished:?}"
            );
        }
        let mut forever = done.clone();
        forever.spec.ttl = None;
        assert_eq!(expiry(&forever, after, none), Expiry::Never);
    }
}
