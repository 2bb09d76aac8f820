//! Workloads: the nodes (and claims) of a StatefulSet or a PersistentVolumeClaim, and where
//! a claim is attached.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, PodSecurityContext};
use kube::api::Api;
use kube::{Client, ResourceExt};

use super::config::MoverConfig;
use super::kernel::{Shape, workload_shape};
use super::{Admitted, Error, Invalid, mover};
use crate::api::snapshot::{MoverSecurityContext, Workload};

/// One node of a workload: its name (pod or claim) and its data claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub claim: String,
}

/// The nodes of a StatefulSet as it is (pure): pods `<sts>-<ordinal>` with claims
/// `<template>-<sts>-<ordinal>`.
pub fn statefulset_nodes(sts: &StatefulSet, template: &str) -> Admitted<Vec<Node>> {
    let name = sts.name_any();
    let spec = &sts.spec;
    let templates: Vec<String> = spec
        .volume_claim_templates
        .iter()
        .flatten()
        .filter_map(|t| t.metadata.name.clone())
        .collect();
    if !templates.iter().any(|t| t == template) {
        return Err(Invalid::NoClaimTemplate {
            sts: name,
            template: template.into(),
            has: if templates.is_empty() {
                "none".into()
            } else {
                templates.join(", ")
            },
        });
    }
    let replicas = spec.replicas.unwrap_or(1);
    if replicas < 1 {
        return Err(Invalid::NoReplicas(name));
    }
    let start = spec.ordinals.as_ref().and_then(|o| o.start).unwrap_or(0);
    Ok((start..start + replicas)
        .map(|i| Node {
            name: format!("{name}-{i}"),
            claim: format!("{template}-{name}-{i}"),
        })
        .collect())
}

/// Resolves the nodes of `workload` (the spec's `field`); `Ok(Err(why))` when the spec names
/// something that is not there.
pub async fn nodes(
    client: &Client,
    namespace: &str,
    (field, workload): (&'static str, &Workload),
) -> Result<Admitted<Vec<Node>>, Error> {
    let shape = match workload_shape(field, workload) {
        Ok(shape) => shape,
        Err(why) => return Ok(Err(why)),
    };
    let not_found = |kind, name: &str| Invalid::NotFound {
        kind,
        name: name.into(),
        namespace: namespace.into(),
    };
    Ok(match shape {
        Shape::StatefulSet(sts) => {
            let api: Api<StatefulSet> = Api::namespaced(client.clone(), namespace);
            match api.get_opt(&sts.name).await? {
                Some(found) => statefulset_nodes(&found, &sts.volume_claim_template),
                None => Err(not_found("StatefulSet", &sts.name)),
            }
        }
        Shape::Claim(claim) => {
            let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
            match api.get_opt(&claim.claim_name).await? {
                Some(_) => Ok(vec![Node {
                    name: claim.claim_name.clone(),
                    claim: claim.claim_name.clone(),
                }]),
                None => Err(not_found("PersistentVolumeClaim", &claim.claim_name)),
            }
        }
    })
}

/// The pod security context of the movers that work on `workload`: `explicit` (the
/// resource's `moverSecurityContext`), else the StatefulSet's pod template's user and groups
/// (read only then), over the configured one; see [`mover::security`].
pub async fn mover_security(
    client: &Client,
    namespace: &str,
    explicit: Option<&MoverSecurityContext>,
    workload: &Workload,
    config: &MoverConfig,
) -> Result<PodSecurityContext, Error> {
    let template = match (explicit, &workload.stateful_set) {
        (None, Some(sts)) => Api::<StatefulSet>::namespaced(client.clone(), namespace)
            .get_opt(&sts.name)
            .await?
            .and_then(|found| found.spec.template.spec),
        _ => None,
    };
    Ok(mover::security(explicit, template.as_ref(), config))
}

/// Pods not finished that mount `claim` (pure).
fn active_pods_with<'a>(pods: &'a [Pod], claim: &'a str) -> impl Iterator<Item = &'a Pod> {
    pods.iter()
        .filter(|p| {
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            !matches!(phase, Some("Succeeded" | "Failed"))
        })
        .filter(move |p| {
            p.spec
                .iter()
                .flat_map(|s| s.volumes.iter().flatten())
                .any(|v| {
                    v.persistent_volume_claim
                        .as_ref()
                        .is_some_and(|c| c.claim_name == claim)
                })
        })
}

/// The Kubernetes node where a running (or starting) pod mounts `claim`, if any (pure): a
/// ReadWriteOnce volume can only be mounted there.
pub fn node_of_claim<'a>(pods: &'a [Pod], claim: &'a str) -> Option<&'a str> {
    active_pods_with(pods, claim).find_map(|p| p.spec.as_ref()?.node_name.as_deref())
}

/// Names of the pods not finished that mount any of `claims` (pure).
pub fn pods_using<'a>(pods: &'a [Pod], claims: &'a [String]) -> Vec<&'a str> {
    claims
        .iter()
        .flat_map(|c| active_pods_with(pods, c))
        .map(|p| p.metadata.name.as_deref().unwrap_or_default())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{StatefulSetOrdinals, StatefulSetSpec};
    use k8s_openapi::api::core::v1::{
        PersistentVolumeClaimVolumeSource, PodSpec, PodStatus, Volume,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    pub(crate) fn statefulset(name: &str, replicas: i32, template: &str) -> StatefulSet {
        StatefulSet {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            spec: StatefulSetSpec {
                replicas: Some(replicas),
                volume_claim_templates: Some(vec![PersistentVolumeClaim {
                    metadata: ObjectMeta {
                        name: Some(template.into()),
                        ..ObjectMeta::default()
                    },
                    ..PersistentVolumeClaim::default()
                }]),
                ..StatefulSetSpec::default()
            },
            ..StatefulSet::default()
        }
    }

    pub(crate) fn pod_on(name: &str, claim: &str, node: &str, phase: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: Some(node.into()),
                volumes: Some(vec![Volume {
                    name: "data".into(),
                    persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                        claim_name: claim.into(),
                        read_only: None,
                    }),
                    ..Volume::default()
                }]),
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                ..PodStatus::default()
            }),
        }
    }

    #[test]
    fn statefulset_nodes_follow_ordinals() {
        let sts = statefulset("qdrant", 2, "qdrant-storage");
        assert_eq!(
            statefulset_nodes(&sts, "qdrant-storage").unwrap(),
            vec![
                Node {
                    name: "qdrant-0".into(),
                    claim: "qdrant-storage-qdrant-0".into()
                },
                Node {
                    name: "qdrant-1".into(),
                    claim: "qdrant-storage-qdrant-1".into()
                },
            ]
        );
        assert_eq!(
            statefulset_nodes(&sts, "other").unwrap_err(),
            Invalid::NoClaimTemplate {
                sts: "qdrant".into(),
                template: "other".into(),
                has: "qdrant-storage".into()
            }
        );
        let mut shifted = sts.clone();
        shifted.spec.ordinals = Some(StatefulSetOrdinals { start: Some(5) });
        assert_eq!(
            statefulset_nodes(&shifted, "qdrant-storage").unwrap()[0].name,
            "qdrant-5"
        );
        assert_eq!(
            statefulset_nodes(&statefulset("q", 0, "t"), "t").unwrap_err(),
            Invalid::NoReplicas("q".into())
        );
    }

    #[test]
    fn claims_are_found_on_their_node() {
        let pods = vec![
            pod_on("old", "data-0", "node-a", "Succeeded"),
            pod_on("qdrant-0", "data-0", "node-b", "Running"),
        ];
        assert_eq!(node_of_claim(&pods, "data-0"), Some("node-b"));
        assert_eq!(node_of_claim(&pods, "data-1"), None);
        assert_eq!(pods_using(&pods, &["data-0".into()]), vec!["qdrant-0"]);
    }
}
