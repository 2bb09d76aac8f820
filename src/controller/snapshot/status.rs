//! A Snapshot's status from its nodes' archives and movers (pure).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Resource;

use crate::api::condition::{self, Progress, reason};
use crate::api::snapshot::{ArchivePhase, ArchiveStatus, Phase, Snapshot, SnapshotStatus, Storage};
use crate::controller::jobs::Mover;
use crate::controller::kernel::Invalid;
use crate::controller::mover;
use crate::protocol::MoverReport;

/// What to do for one node.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeStep {
    /// Its archive is final; keep the status entry.
    Keep,
    /// No mover yet: start one.
    Start,
    /// Its mover runs, this far as it last said.
    Running(Option<Progress>),
    /// Its mover finished: record the report.
    Finished {
        succeeded: bool,
        report: Box<MoverReport>,
    },
}

/// Whether a node's archive is final.
pub fn is_final(archive: &ArchiveStatus) -> bool {
    matches!(
        archive.phase,
        ArchivePhase::Succeeded | ArchivePhase::Failed
    )
}

/// Decides per node from the archives recorded so far and their movers (pure).
pub fn plan(archives: &[ArchiveStatus], movers: &[Option<Mover>]) -> Vec<NodeStep> {
    archives
        .iter()
        .zip(movers)
        .map(|(a, mover)| {
            if is_final(a) {
                return NodeStep::Keep;
            }
            match mover {
                None => NodeStep::Start,
                Some(m) => match m.outcome() {
                    None => NodeStep::Running(m.progress.clone()),
                    Some(succeeded) => NodeStep::Finished {
                        succeeded,
                        report: Box::new(m.report()),
                    },
                },
            }
        })
        .collect()
}

/// Applies a node step to its status entry (pure).
pub fn next_archive(
    archive: &ArchiveStatus,
    step: &NodeStep,
    storage: &Storage,
    started: bool,
) -> ArchiveStatus {
    let mut a = archive.clone();
    if !matches!(step, NodeStep::Running(_)) {
        a.progress = None;
    }
    match step {
        NodeStep::Keep => {}
        NodeStep::Start if started => {
            a.phase = ArchivePhase::Running;
            a.message = None;
        }
        NodeStep::Start => {
            a.phase = ArchivePhase::Pending;
            a.message = Some("waiting for a free mover slot".into());
        }
        NodeStep::Running(progress) => {
            a.phase = ArchivePhase::Running;
            a.message = None;
            // Kept as last read when a read brought nothing new.
            if progress.is_some() {
                a.progress.clone_from(progress);
            }
        }
        NodeStep::Finished {
            succeeded: true,
            report,
        } if report.key.is_some() => {
            a.phase = ArchivePhase::Succeeded;
            a.name.clone_from(&report.name);
            a.key.clone_from(&report.key);
            // S3 locations are as the mover's storage reports them; a local storage claim is
            // shown by name, which the mover (seeing only its mount) does not know.
            a.location = match &storage.local {
                Some(local) => report
                    .key
                    .as_deref()
                    .map(|k| mover::claim_location(local, k)),
                None => report.location.clone(),
            };
            a.size = report.size.and_then(|s| i64::try_from(s).ok());
            a.checksum.clone_from(&report.checksum);
            a.message = report
                .changed
                .as_ref()
                .map(|changed| format!("{changed}; copyMethod Stop takes a copy of one moment"));
        }
        NodeStep::Finished {
            succeeded: true, ..
        } => {
            a.phase = ArchivePhase::Failed;
            a.message = Some("the mover succeeded but its report is missing".into());
        }
        NodeStep::Finished { report, .. } => {
            a.phase = ArchivePhase::Failed;
            a.message = Some(
                report
                    .error
                    .clone()
                    .unwrap_or_else(|| "the mover failed without a message".into()),
            );
        }
    }
    a
}

/// The overall phase from the archives (pure).
pub fn phase_of(archives: &[ArchiveStatus]) -> Phase {
    let any = |p: ArchivePhase| archives.iter().any(|a| a.phase == p);
    if any(ArchivePhase::Running) {
        Phase::Running
    } else if any(ArchivePhase::Pending) {
        Phase::Pending
    } else if any(ArchivePhase::Failed) {
        Phase::Failed
    } else {
        Phase::Succeeded
    }
}

/// The new status (pure).
pub fn next_status(
    snap: &Snapshot,
    archives: Vec<ArchiveStatus>,
    storage: &Storage,
    now: Time,
) -> SnapshotStatus {
    let old = snap.status.clone().unwrap_or_default();
    let phase = phase_of(&archives);
    let done = archives
        .iter()
        .filter(|a| a.phase == ArchivePhase::Succeeded)
        .count();
    let total_size: i64 = archives.iter().filter_map(|a| a.size).sum();
    let (ready, why, message) = match phase {
        Phase::Succeeded => (
            true,
            reason::SUCCEEDED,
            format!("{done} of {} archives stored", archives.len()),
        ),
        Phase::Failed => {
            let failures: Vec<String> = archives
                .iter()
                .filter(|a| a.phase == ArchivePhase::Failed)
                .map(|a| format!("{}: {}", a.node, a.message.as_deref().unwrap_or("failed")))
                .collect();
            (false, reason::FAILED, failures.join("; "))
        }
        Phase::Running => (
            false,
            reason::RUNNING,
            format!("{done} of {} archives stored", archives.len()),
        ),
        Phase::Pending => (
            false,
            reason::PENDING,
            "waiting for a free mover slot".into(),
        ),
    };
    let terminal = phase.is_final();
    let started = archives.iter().any(|a| a.phase != ArchivePhase::Pending);
    SnapshotStatus {
        observed_generation: snap.meta().generation,
        phase: Some(phase),
        start_time: old
            .start_time
            .clone()
            .or_else(|| started.then(|| now.clone())),
        completion_time: old
            .completion_time
            .clone()
            .or_else(|| terminal.then(|| now.clone())),
        conditions: condition::ready_and_progressing(
            (ready, why, message),
            archives
                .iter()
                .filter(|x| x.phase == ArchivePhase::Running)
                .map(|x| x.progress.as_ref()),
            snap.meta().generation,
            &old.conditions,
            now,
        ),
        nodes: Some(archives.len() as i32),
        size: (total_size > 0).then(|| crate::format::human_bytes(total_size as u64)),
        storage: Some(storage.clone()),
        archives,
        stopped_replicas: old.stopped_replicas,
        expires_at: super::validate::expires_at(snap).map(Time),
    }
}

/// The status of a Snapshot whose spec cannot be acted on (pure).
pub fn invalid_status(snap: &Snapshot, why: &Invalid, now: Time) -> SnapshotStatus {
    let old = snap.status.clone().unwrap_or_default();
    SnapshotStatus {
        observed_generation: snap.meta().generation,
        phase: Some(Phase::Failed),
        conditions: condition::invalid_spec(why, snap.meta().generation, &old.conditions, now),
        expires_at: super::validate::expires_at(snap).map(Time),
        ..old
    }
}

/// The status while the workload is being stopped (pure): its replicas recorded.
pub fn stopping_status(
    snap: &Snapshot,
    archives: Vec<ArchiveStatus>,
    storage: &Storage,
    (replicas, message): (Option<i32>, String),
    now: Time,
) -> SnapshotStatus {
    let old = snap.status.clone().unwrap_or_default();
    SnapshotStatus {
        stopped_replicas: replicas,
        conditions: vec![condition::ready(
            false,
            reason::STOPPING_WORKLOAD,
            message,
            snap.meta().generation,
            &old.conditions,
            now.clone(),
        )],
        ..next_status(snap, archives, storage, now)
    }
}
