//! Mover Jobs as the reconcilers see them: outcome, report, duration; create and delete.

use std::sync::Arc;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ContainerStateTerminated, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PropagationPolicy};
use kube::{Client, ResourceExt};

use super::{Error, FIELD_MANAGER};
use crate::protocol::MoverReport;

/// A mover Job and its own pods, as the stores hold them.
#[derive(Debug, Clone)]
pub struct Mover {
    pub job: Arc<Job>,
    pub pods: Vec<Arc<Pod>>,
    /// Why its pod never started, once it waited too long: the mover counts as failed.
    pub stuck: Option<String>,
    /// How far it is, while it runs (its log, as last read).
    pub progress: Option<crate::api::condition::Progress>,
}

impl Mover {
    /// `None` while it runs, else whether it succeeded.
    pub fn outcome(&self) -> Option<bool> {
        if self.stuck.is_some() {
            return Some(false);
        }
        settled(&self.job, &self.pods)
    }

    /// Its report (see [`report`]).
    pub fn report(&self) -> MoverReport {
        match &self.stuck {
            Some(reason) => MoverReport {
                error: Some(reason.clone()),
                ..MoverReport::default()
            },
            None => report(&self.job, &self.pods),
        }
    }

    /// Seconds from its Job's start to its end: the Job's completion, else (settled by its
    /// pod, before the Job controller marks it) the end of the pod it reports from, else now.
    pub fn duration(&self) -> f64 {
        let status = self.job.status.as_ref();
        let start = status.and_then(|s| s.start_time.as_ref()).map(|t| t.0);
        let end = status
            .and_then(|s| s.completion_time.as_ref())
            .or_else(|| reporting(&self.job, &self.pods)?.finished_at.as_ref())
            .map_or_else(jiff::Timestamp::now, |t| t.0);
        start.map_or(0.0, |s| (end - s).total(jiff::Unit::Second).unwrap_or(0.0))
    }
}

/// Why a Job's mover has not started `timeout` after the Job was created, if so (pure): its
/// pod is unschedulable, waits for a Secret or a claim, cannot pull its image... A Job that
/// finished, or whose mover container runs or ran, is not stuck.
pub fn stuck(
    job: &Job,
    pods: &[Arc<Pod>],
    now: jiff::Timestamp,
    timeout: jiff::SignedDuration,
) -> Option<String> {
    let created = job.metadata.creation_timestamp.as_ref()?.0;
    if outcome(job).is_some() || now.duration_since(created) < timeout {
        return None;
    }
    let mut reasons = Vec::new();
    for pod in pods {
        let status = pod.status.as_ref();
        let mover = status
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c.iter().find(|c| c.name == "mover"));
        let state = mover.and_then(|c| c.state.as_ref());
        if state.is_some_and(|s| s.running.is_some() || s.terminated.is_some()) {
            return None;
        }
        if let Some(waiting) = state.and_then(|s| s.waiting.as_ref()) {
            reasons.push(format!(
                "{}: {}",
                waiting.reason.as_deref().unwrap_or("Waiting"),
                waiting.message.as_deref().unwrap_or_default()
            ));
        }
        let unscheduled = status.and_then(|s| s.conditions.as_ref()).and_then(|c| {
            c.iter()
                .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        });
        if let Some(c) = unscheduled {
            reasons.push(format!(
                "{}: {}",
                c.reason.as_deref().unwrap_or("Unschedulable"),
                c.message.as_deref().unwrap_or_default()
            ));
        }
    }
    if reasons.is_empty() {
        reasons.push("no pod was created (see the Job's events)".into());
    }
    Some(format!(
        "the mover did not start within {}s: {}",
        timeout.as_secs(),
        reasons.join("; ")
    ))
}

/// `None` while a Job runs, else whether it succeeded.
pub fn outcome(job: &Job) -> Option<bool> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    let is = |t: &str| {
        conditions
            .iter()
            .any(|c| c.type_ == t && c.status == "True")
    };
    if is("Complete") || is("SuccessCriteriaMet") {
        Some(true)
    } else if is("Failed") || is("FailureTarget") {
        Some(false)
    } else {
        None
    }
}

/// The pod of a mover that runs on a node now (whose log can be read), if any (pure).
pub fn running_pod(pods: &[Arc<Pod>]) -> Option<&Pod> {
    pods.iter()
        .map(AsRef::as_ref)
        .filter(|p| p.spec.as_ref().is_some_and(|s| s.node_name.is_some()))
        .find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
}

/// The report of a finished Job: from the pod that succeeded when the Job did, else from the
/// pod that failed last (by when it finished, never by creation order: a failed pod and its
/// successful retry can be created in the same second); failing that, the reason in the
/// Job's conditions. `pods` are the Job's own (see [`super::cluster::Cluster::pods_of`]).
pub fn report(job: &Job, pods: &[Arc<Pod>]) -> MoverReport {
    let chosen = reporting(job, pods);
    if let Some(message) = chosen.and_then(|t| t.message.as_deref()) {
        if let Ok(report) = serde_json::from_str::<MoverReport>(message) {
            return report;
        }
        if !message.trim().is_empty() {
            return MoverReport {
                error: Some(message.trim().to_owned()),
                ..MoverReport::default()
            };
        }
    }
    let reason = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Failed"))
        .map(|c| {
            format!(
                "{}: {}",
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default()
            )
        });
    MoverReport {
        error: reason,
        ..MoverReport::default()
    }
}

/// Whether a mover finished, and how (pure): its Job's conditions, or before them a pod of
/// its own (`pods`: those the Job controls) that succeeded. The Job controller marks a Job
/// complete a second or more after its pod ended (it batches pod events): waiting for that
/// held every mover slot a second longer than its mover. A failed pod waits for the Job,
/// which may still retry it.
pub fn settled(job: &Job, pods: &[Arc<Pod>]) -> Option<bool> {
    outcome(job).or_else(|| pods.iter().any(|p| succeeded(p)).then_some(true))
}

/// Whether a mover pod succeeded: its phase, and its mover container's exit (pure).
pub fn succeeded(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    phase == Some("Succeeded") && terminated(pod).is_some_and(|t| t.exit_code == 0)
}

/// How the mover container of `pod` ended, if it did (pure).
fn terminated(pod: &Pod) -> Option<&ContainerStateTerminated> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == "mover")?
        .state
        .as_ref()?
        .terminated
        .as_ref()
}

/// The state of the pod whose report a finished mover's outcome calls for (see [`report`]).
pub fn reporting<'a>(job: &Job, pods: &'a [Arc<Pod>]) -> Option<&'a ContainerStateTerminated> {
    let finished = pods.iter().filter_map(|p| terminated(p));
    match settled(job, pods)? {
        true => finished.into_iter().find(|t| t.exit_code == 0),
        false => finished
            .filter(|t| t.exit_code != 0)
            .max_by_key(|t| t.finished_at.as_ref().map(|f| f.0)),
    }
}

/// Creates (server-side applies) a mover Job.
pub async fn create(client: &Client, job: &Job) -> Result<(), Error> {
    let ns = job.namespace().unwrap_or_default();
    let mut job = job.clone();
    job.metadata.managed_fields = None;
    let patch = serde_json::json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": job.metadata,
        "spec": job.spec,
    });
    Api::<Job>::namespaced(client.clone(), &ns)
        .patch(
            &job.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    Ok(())
}

/// Did the API server refuse to create an object because its namespace is being deleted
/// (nothing new may be created there: no mover can run)?
pub fn namespace_terminating(error: &Error) -> bool {
    match error {
        Error::Kube(kube::Error::Api(status)) => {
            status.code == 403 && status.message.contains("because it is being terminated")
        }
        _ => false,
    }
}

/// Deletes a Job and its pods (to run it again).
pub async fn delete(client: &Client, job: &Job) -> Result<(), Error> {
    let ns = job.namespace().unwrap_or_default();
    let params = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..DeleteParams::default()
    };
    let api = Api::<Job>::namespaced(client.clone(), &ns);
    super::delete_if_there(&api, &job.name_any(), &params).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::testing::{mover_job, mover_pod, movers, unowned};

    const OWNER: (&str, &str) = ("s", "uid-1");

    #[test]
    fn outcomes() {
        assert_eq!(outcome(&mover_job("snap", OWNER, "n0", None)), None);
        for done in ["Complete", "SuccessCriteriaMet"] {
            assert_eq!(
                outcome(&mover_job("snap", OWNER, "n", Some(done))),
                Some(true)
            );
        }
        for failed in ["Failed", "FailureTarget"] {
            assert_eq!(
                outcome(&mover_job("snap", OWNER, "n", Some(failed))),
                Some(false)
            );
        }
    }

    #[test]
    fn a_mover_whose_pod_succeeded_has_finished_before_its_job_says_so() {
        let mut job = mover_job("snap", OWNER, "n0", None);
        job.status =
            serde_json::from_value(serde_json::json!({"startTime": "2026-11-25T10:00:00Z"}))
                .unwrap();
        let stored = r#"{"name":"a.snapshot","key":"a.snapshot"}"#;
        let owner: crate::api::Snapshot = serde_json::from_value(serde_json::json!({
            "apiVersion": "snapshot-operator.dev/v1alpha1", "kind": "Snapshot",
            "metadata": {"name": OWNER.0, "namespace": "ns", "uid": OWNER.1},
            "spec": {"source": {"persistentVolumeClaim": {"claimName": "d"}}}}))
        .unwrap();
        let with = |pods: Vec<Pod>| {
            let cluster =
                super::super::Cluster::of(vec![job.clone()], pods, vec![owner.clone()], vec![]);
            let mover = cluster.mover("ns", &job.name_any(), OWNER.1).unwrap();
            (mover, cluster.busy_slots().len())
        };
        let (mover, busy) = with(vec![mover_pod(&job, 0, stored, 2)]);
        assert_eq!(mover.outcome(), Some(true));
        assert_eq!(mover.report().name.as_deref(), Some("a.snapshot"));
        assert_eq!(busy, 0, "its slot is free");
        assert_eq!(mover.duration(), 2.0, "it ended with its pod");
        // A failed pod waits for the Job, which may retry it; so does a pod the Job does
        // not control, whatever it says.
        for pod in [
            mover_pod(&job, 1, "disk full", 2),
            unowned(mover_pod(&job, 0, stored, 2)),
        ] {
            let (mover, busy) = with(vec![pod]);
            assert_eq!(mover.outcome(), None);
            assert_eq!(busy, 1);
        }
        let (mover, busy) = with(vec![]);
        assert_eq!((mover.outcome(), busy), (None, 1), "running");
    }

    #[test]
    fn the_report_of_a_retried_job_is_the_successful_pod_s_whatever_the_order() {
        let job = mover_job("snap", OWNER, "n0", Some("Complete"));
        let failed = mover_pod(&job, 1, "disk full", 3);
        let retry = mover_pod(&job, 0, r#"{"name":"a.snapshot","key":"a.snapshot"}"#, 2);
        for pods in [
            vec![failed.clone(), retry.clone()],
            vec![retry.clone(), failed.clone()],
        ] {
            let pods: Vec<Arc<Pod>> = pods.into_iter().map(Arc::new).collect();
            assert_eq!(report(&job, &pods).name.as_deref(), Some("a.snapshot"));
        }
        // A Job that failed: the pod that failed last speaks.
        let job = mover_job("snap", OWNER, "n0", Some("Failed"));
        let pods: Vec<Arc<Pod>> = [
            mover_pod(&job, 1, "second", 9),
            mover_pod(&job, 1, "first", 5),
        ]
        .into_iter()
        .map(Arc::new)
        .collect();
        assert_eq!(report(&job, &pods).error.as_deref(), Some("second"));
        // No pod: the Job's reason.
        let reason = report(&job, &[]).error.unwrap();
        assert!(reason.starts_with("BackoffLimitExceeded"), "{reason}");
    }

    #[test]
    fn a_mover_that_never_starts_fails_with_the_reason() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        let mut job = mover_job("snap", OWNER, "n0", None);
        let created: jiff::Timestamp = "2026-11-25T10:00:00Z".parse().unwrap();
        job.metadata.creation_timestamp = Some(Time(created));
        let timeout = jiff::SignedDuration::from_secs(600);
        let at = |minutes: i64| created + jiff::SignedDuration::from_mins(minutes);
        let pod = |status: serde_json::Value| -> Arc<Pod> {
            Arc::new(
                serde_json::from_value(
                    serde_json::json!({"metadata": {"name": "p"}, "status": status}),
                )
                .unwrap(),
            )
        };
        assert_eq!(stuck(&job, &[], at(5), timeout), None, "not yet");
        let none = stuck(&job, &[], at(11), timeout).unwrap();
        assert!(
            none.contains("within 600s") && none.contains("no pod was created"),
            "{none}"
        );
        let secret = pod(
            serde_json::json!({"containerStatuses": [{"name": "mover", "image": "x", "imageID": "",
            "ready": false, "restartCount": 0, "state": {"waiting": {"reason": "CreateContainerConfigError",
            "message": "secret \"creds\" not found"}}}]}),
        );
        let reason = stuck(&job, &[secret], at(11), timeout).unwrap();
        assert!(
            reason.ends_with("CreateContainerConfigError: secret \"creds\" not found"),
            "{reason}"
        );
        let unschedulable = pod(
            serde_json::json!({"conditions": [{"type": "PodScheduled", "status": "False",
            "reason": "Unschedulable", "message": "0/3 nodes are available"}]}),
        );
        let reason = stuck(&job, &[unschedulable], at(11), timeout).unwrap();
        assert!(
            reason.ends_with("Unschedulable: 0/3 nodes are available"),
            "{reason}"
        );
        let running = pod(
            serde_json::json!({"containerStatuses": [{"name": "mover", "image": "x", "imageID": "",
            "ready": true, "restartCount": 0, "state": {"running": {}}}]}),
        );
        assert_eq!(
            stuck(&job, &[running], at(60), timeout),
            None,
            "it runs: slow is not stuck"
        );
        // A stuck mover is a failed one, and says why.
        let mover = Mover {
            job: Arc::new(job),
            pods: vec![],
            stuck: Some(none.clone()),
            progress: None,
        };
        assert_eq!(mover.outcome(), Some(false));
        assert_eq!(mover.report().error, Some(none));
    }

    #[test]
    fn pods_and_jobs_that_only_carry_the_labels_are_not_movers() {
        let job = mover_job("snap", OWNER, "n0", Some("Complete"));
        let forged = r#"{"name":"../../other.snapshot","key":"other/x.snapshot"}"#;
        let impostor = unowned(mover_pod(&job, 0, forged, 1));
        let cluster = movers(vec![job.clone()], vec![impostor]);
        let mover = cluster.mover("ns", &job.name_any(), "uid-1").unwrap();
        assert!(mover.pods.is_empty());
        assert_eq!(mover.report().key, None);
        // A Job of the right name controlled by another object is not this resource's.
        assert!(cluster.mover("ns", &job.name_any(), "uid-2").is_none());
    }
}
