//! Mover Jobs as the reconcilers see them: find, read the outcome and report, create, count.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PropagationPolicy};
use kube::{Client, ResourceExt};

use super::mover;
use super::{Error, FIELD_MANAGER};
use crate::protocol::MoverReport;

/// The mover Jobs of one resource (by its UID).
pub async fn list(client: &Client, namespace: &str, owner_uid: &str) -> Result<Vec<Job>, Error> {
    let selector = format!("{}={owner_uid}", mover::OWNER_UID);
    Ok(Api::<Job>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(&selector))
        .await?
        .items)
}

/// The mover of `node` doing `operation`, if any.
pub fn find<'a>(jobs: &'a [Job], node: &str, operation: &str) -> Option<&'a Job> {
    let node = mover::labels("", operation, node)[mover::NODE].clone();
    jobs.iter().find(|j| {
        let labels = j.labels();
        labels.get(mover::NODE) == Some(&node)
            && labels.get(mover::OPERATION).map(String::as_str) == Some(operation)
    })
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

/// Seconds from a Job's start to its completion (or now).
pub fn duration(job: &Job) -> f64 {
    let status = job.status.as_ref();
    let start = status.and_then(|s| s.start_time.as_ref()).map(|t| t.0);
    let end = status
        .and_then(|s| s.completion_time.as_ref())
        .map_or_else(jiff::Timestamp::now, |t| t.0);
    start.map_or(0.0, |s| (end - s).total(jiff::Unit::Second).unwrap_or(0.0))
}

/// The report in the termination message of the Job's last finished pod, or, failing that,
/// the reason in the Job's conditions.
pub fn report(job: &Job, pods: &[Pod]) -> MoverReport {
    let job_name = job.name_any();
    let mut finished: Vec<(&Pod, String)> = pods
        .iter()
        .filter(|p| {
            p.labels().get("job-name") == Some(&job_name)
                || p.labels().get("batch.kubernetes.io/job-name") == Some(&job_name)
        })
        .filter_map(|p| {
            let terminated = p
                .status
                .as_ref()?
                .container_statuses
                .as_ref()?
                .iter()
                .find(|c| c.name == "mover")?
                .state
                .as_ref()?
                .terminated
                .as_ref()?;
            Some((p, terminated.message.clone().unwrap_or_default()))
        })
        .collect();
    finished.sort_by_key(|(p, _)| p.creation_timestamp().map(|t| t.0));
    if let Some((_, message)) = finished.last() {
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

/// Deletes a Job and its pods (to run it again).
pub async fn delete(client: &Client, job: &Job) -> Result<(), Error> {
    let ns = job.namespace().unwrap_or_default();
    let params = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..DeleteParams::default()
    };
    match Api::<Job>::namespaced(client.clone(), &ns)
        .delete(&job.name_any(), &params)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Whether fewer than `max` movers run cluster-wide.
pub async fn slot_free(client: &Client, max: u32) -> Result<bool, Error> {
    let selector = format!("{}={}", mover::MANAGED_BY.0, mover::MANAGED_BY.1);
    let running = Api::<Job>::all(client.clone())
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .iter()
        .filter(|j| outcome(j).is_none())
        .count();
    Ok(running < max as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateTerminated, ContainerStatus, PodStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use std::collections::BTreeMap;

    pub(crate) fn job(name: &str, node: &str, operation: &str, condition: Option<&str>) -> Job {
        Job {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                labels: Some(mover::labels("uid", operation, node)),
                ..ObjectMeta::default()
            },
            status: condition.map(|c| JobStatus {
                conditions: Some(vec![JobCondition {
                    type_: c.into(),
                    status: "True".into(),
                    reason: Some("BackoffLimitExceeded".into()),
                    message: Some("Job has reached the specified backoff limit".into()),
                    ..JobCondition::default()
                }]),
                ..JobStatus::default()
            }),
            ..Job::default()
        }
    }

    pub(crate) fn pod(job: &str, message: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(format!("{job}-x")),
                labels: Some(BTreeMap::from([("job-name".to_owned(), job.to_owned())])),
                ..ObjectMeta::default()
            },
            status: Some(PodStatus {
                container_statuses: Some(vec![ContainerStatus {
                    name: "mover".into(),
                    state: Some(ContainerState {
                        terminated: Some(ContainerStateTerminated {
                            message: Some(message.into()),
                            ..ContainerStateTerminated::default()
                        }),
                        ..ContainerState::default()
                    }),
                    ..ContainerStatus::default()
                }]),
                ..PodStatus::default()
            }),
            ..Pod::default()
        }
    }

    #[test]
    fn outcomes_and_reports() {
        let running = job("j0", "n0", "snapshot", None);
        let done = job("j1", "n1", "snapshot", Some("Complete"));
        let failed = job("j2", "n2", "snapshot", Some("Failed"));
        assert_eq!(outcome(&running), None);
        assert_eq!(outcome(&done), Some(true));
        assert_eq!(outcome(&failed), Some(false));
        let jobs = vec![running, done.clone(), failed.clone()];
        assert_eq!(find(&jobs, "n1", "snapshot").unwrap().name_any(), "j1");
        assert!(find(&jobs, "n1", "delete").is_none());
        let pods = vec![
            pod("j1", r#"{"name":"a.snapshot","size":5}"#),
            pod("j2", "plain failure text"),
        ];
        assert_eq!(report(&done, &pods).name.as_deref(), Some("a.snapshot"));
        assert_eq!(
            report(&failed, &pods).error.as_deref(),
            Some("plain failure text")
        );
        let report = report(&failed, &[]);
        assert!(report.error.unwrap().starts_with("BackoffLimitExceeded"));
    }
}
