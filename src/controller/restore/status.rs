//! A SnapshotRestore's status from its nodes and their movers (pure).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Resource;

use crate::api::condition::{self, reason};
use crate::api::restore::{
    NodePhase, NodeRestore, RestorePhase, SnapshotRestore, SnapshotRestoreStatus,
};
use crate::controller::jobs::Mover;
use crate::controller::kernel::Invalid;
use crate::engine::restore::Outcome;

/// The new status from the node entries (pure); `restarted` tells whether the workload is
/// running again (or was never stopped).
pub fn next_status(
    restore: &SnapshotRestore,
    nodes: Vec<NodeRestore>,
    stopped_replicas: Option<i32>,
    restarted: bool,
    waiting: Option<String>,
    now: Time,
) -> SnapshotRestoreStatus {
    let old = restore.status.clone().unwrap_or_default();
    let any = |p: NodePhase| nodes.iter().any(|n| n.phase == p);
    let finished = !nodes.is_empty() && !any(NodePhase::Pending) && !any(NodePhase::Running);
    let phase = if finished && restarted {
        if any(NodePhase::Failed) {
            RestorePhase::Failed
        } else {
            RestorePhase::Succeeded
        }
    } else if any(NodePhase::Running) || (finished && !restarted) {
        RestorePhase::Running
    } else {
        RestorePhase::Pending
    };
    let (ready, why, message) = ready_of(phase, &nodes, finished, waiting);
    let terminal = phase.is_final();
    SnapshotRestoreStatus {
        observed_generation: restore.meta().generation,
        phase: Some(phase),
        start_time: old.start_time.clone().or_else(|| Some(now.clone())),
        completion_time: old
            .completion_time
            .clone()
            .or_else(|| terminal.then(|| now.clone())),
        conditions: condition::ready_and_progressing(
            (ready, why, message),
            nodes
                .iter()
                .filter(|x| x.phase == NodePhase::Running)
                .map(|x| x.progress.as_ref()),
            restore.meta().generation,
            &old.conditions,
            now,
        ),
        stopped_replicas,
        nodes,
    }
}

/// The `Ready` condition's status, reason and message for `phase` (pure).
fn ready_of(
    phase: RestorePhase,
    nodes: &[NodeRestore],
    finished: bool,
    waiting: Option<String>,
) -> (bool, &'static str, String) {
    let count = |p: NodePhase| nodes.iter().filter(|n| n.phase == p).count();
    let summary = format!(
        "{} restored, {} skipped, {} failed of {}",
        count(NodePhase::Restored),
        count(NodePhase::Skipped),
        count(NodePhase::Failed),
        nodes.len()
    );
    match phase {
        RestorePhase::Succeeded => (true, reason::SUCCEEDED, summary),
        RestorePhase::Failed => {
            let failures: Vec<String> = nodes
                .iter()
                .filter(|n| n.phase == NodePhase::Failed)
                .map(|n| format!("{}: {}", n.node, n.message.as_deref().unwrap_or("failed")))
                .collect();
            (false, reason::FAILED, failures.join("; "))
        }
        RestorePhase::Running if finished => (
            false,
            reason::STOPPING_WORKLOAD,
            "starting the workload again".into(),
        ),
        RestorePhase::Running => (false, reason::RUNNING, summary),
        RestorePhase::Pending => match waiting {
            Some(w) => (false, reason::STOPPING_WORKLOAD, w),
            None => (
                false,
                reason::PENDING,
                "waiting for a free mover slot".into(),
            ),
        },
    }
}

pub fn invalid_status(
    restore: &SnapshotRestore,
    why: &Invalid,
    now: Time,
) -> SnapshotRestoreStatus {
    let old = restore.status.clone().unwrap_or_default();
    SnapshotRestoreStatus {
        observed_generation: restore.meta().generation,
        phase: Some(RestorePhase::Failed),
        conditions: condition::invalid_spec(why, restore.meta().generation, &old.conditions, now),
        ..old
    }
}

/// Whether a node's restore is over.
pub fn is_final(node: &NodeRestore) -> bool {
    matches!(
        node.phase,
        NodePhase::Restored | NodePhase::Skipped | NodePhase::Failed
    )
}

/// Applies a mover's state to a node entry (pure).
pub fn next_node(entry: &NodeRestore, mover: Option<&Mover>, started: bool) -> NodeRestore {
    let mut n = entry.clone();
    if is_final(&n) {
        return n;
    }
    let running = mover.is_some_and(|m| m.outcome().is_none());
    // Kept as last read while it runs and a read brought nothing new.
    n.progress = match mover.and_then(|m| m.progress.clone()) {
        Some(progress) if running => Some(progress),
        _ if running => n.progress,
        _ => None,
    };
    let Some(mover) = mover else {
        n.phase = if started {
            NodePhase::Running
        } else {
            NodePhase::Pending
        };
        return n;
    };
    match mover.outcome() {
        None => n.phase = NodePhase::Running,
        Some(succeeded) => {
            let report = mover.report();
            n.bytes = report.size.and_then(|s| i64::try_from(s).ok());
            if succeeded {
                n.phase = if report.outcome == Some(Outcome::Skipped) {
                    NodePhase::Skipped
                } else {
                    NodePhase::Restored
                };
                n.message = report.reason;
            } else {
                n.phase = NodePhase::Failed;
                n.message = Some(
                    report
                        .error
                        .unwrap_or_else(|| "the mover failed without a message".into()),
                );
            }
        }
    }
    n
}
