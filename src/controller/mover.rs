//! Mover Jobs: the operator's image running the engine (`snapshot-operator mover ...`) next to
//! a workload's volume. Pure builders: names, labels, storage settings, the Job itself.
//!
//! A mover gets no service-account token, runs non-root with a read-only root filesystem and
//! no capabilities, reads its storage settings from the environment (S3 credentials from the
//! Secret the resource names, never seen by the operator), and reports its result as JSON in
//! its termination message.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, EnvVar, EnvVarSource, NodeAffinity, NodeSelector,
    NodeSelectorRequirement, NodeSelectorTerm, PersistentVolumeClaimVolumeSource, PodSpec,
    PodTemplateSpec, SecretKeySelector, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::config::MoverConfig;
use crate::api::snapshot::Storage;
use crate::engine::name;

/// Label on everything the operator creates.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "snapshot-operator");
/// Label naming the resource (by UID) a mover works for.
pub const OWNER_UID: &str = "snapshot-operator.dev/owner-uid";
/// Label naming the node a mover works on.
pub const NODE: &str = "snapshot-operator.dev/node";
/// Label naming what a mover does: `snapshot`, `delete` or `restore`.
pub const OPERATION: &str = "snapshot-operator.dev/operation";

/// Where a mover pod mounts the data volume.
pub const DATA_MOUNT: &str = "/data";
/// Where a mover pod mounts a local storage volume.
pub const SNAPSHOTS_MOUNT: &str = "/snapshots";
/// Where a mover writes its result.
pub const TERMINATION_LOG: &str = "/dev/termination-log";

/// The result a mover writes to its termination message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoverReport {
    /// On failure: what went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Archive file name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Storage key of the archive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Where the archive is, as the mover sees it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    /// Restores: `Restored` or `Skipped`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// Restores: why it was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The largest termination message Kubernetes keeps.
pub const MAX_REPORT: usize = 4096;

impl MoverReport {
    /// The JSON written to the termination message, an error cut to fit.
    pub fn to_message(&self) -> String {
        let mut report = self.clone();
        loop {
            let text = serde_json::to_string(&report).expect("reports serialise");
            match &mut report.error {
                Some(error) if text.len() > MAX_REPORT => {
                    let keep = error.len().saturating_sub(text.len() - MAX_REPORT + 3);
                    let mut cut = keep;
                    while !error.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    error.truncate(cut);
                    error.push_str("...");
                }
                _ => return text,
            }
        }
    }
}

/// A Job name (a DNS label, at most 63 characters) for an operation of a resource on a node:
/// readable prefix, and a hash of all three so that different inputs never collide.
pub fn job_name(operation: &str, resource: &str, node: &str) -> String {
    let hash = Sha256::digest(format!("{operation}\0{resource}\0{node}").as_bytes());
    let suffix = &name::hex(&hash)[..10];
    let mut prefix: String = format!("{operation}-{resource}-{node}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    prefix.truncate(63 - 1 - suffix.len());
    format!("{}-{suffix}", prefix.trim_end_matches('-'))
}

/// A path inside a mount: `/data` + `/qdrant/storage` = `/data/qdrant/storage`.
pub fn mounted(mount: &str, path: &str) -> String {
    let inner = path.trim_matches('/');
    if inner.is_empty() {
        mount.to_owned()
    } else {
        format!("{mount}/{inner}")
    }
}

/// Where an archive is, for people: `s3://bucket/prefix/key` or `pvc://claim/path/key`.
pub fn location(storage: &Storage, key: &str) -> String {
    match (&storage.s3, &storage.local) {
        (Some(s3), _) => {
            let prefix = crate::storage::s3::prefix_of(s3.prefix.as_deref().unwrap_or(""));
            format!("s3://{}/{prefix}{key}", s3.bucket)
        }
        (None, Some(local)) => format!(
            "pvc://{}",
            mounted(
                &local.persistent_volume_claim.claim_name,
                &mounted(&local.path, key)
            )
        ),
        (None, None) => key.to_owned(),
    }
}

const ENV: &str = "SNAPSHOT_OPERATOR__STORAGE__";

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// Environment, volume and mount that point a mover's engine at `storage`.
pub fn storage_settings(storage: &Storage) -> (Vec<EnvVar>, Vec<Volume>, Vec<VolumeMount>) {
    let cfg = format!("{ENV}SNAPSHOTS_CONFIG__");
    if let Some(s3) = &storage.s3 {
        let s3c = format!("{cfg}S3_CONFIG__");
        let mut vars = vec![
            env(
                &format!("{ENV}SNAPSHOTS_PATH"),
                s3.prefix.clone().unwrap_or_default(),
            ),
            env(&format!("{cfg}SNAPSHOTS_STORAGE"), "s3"),
            env(&format!("{s3c}BUCKET"), s3.bucket.clone()),
        ];
        if let Some(region) = &s3.region {
            vars.push(env(&format!("{s3c}REGION"), region.clone()));
        }
        if let Some(url) = &s3.endpoint_url {
            vars.push(env(&format!("{s3c}ENDPOINT_URL"), url.clone()));
        }
        if let Some(style) = s3.force_path_style {
            vars.push(env(&format!("{s3c}FORCE_PATH_STYLE"), style.to_string()));
        }
        if let Some(secret) = &s3.credentials_secret {
            vars.push(secret_env(
                &format!("{s3c}ACCESS_KEY"),
                &secret.name,
                &secret.access_key_id_key,
            ));
            vars.push(secret_env(
                &format!("{s3c}SECRET_KEY"),
                &secret.name,
                &secret.secret_access_key_key,
            ));
        }
        return (vars, Vec::new(), Vec::new());
    }
    let Some(local) = &storage.local else {
        return (Vec::new(), Vec::new(), Vec::new());
    };
    (
        vec![
            env(
                &format!("{ENV}SNAPSHOTS_PATH"),
                mounted(SNAPSHOTS_MOUNT, &local.path),
            ),
            env(&format!("{cfg}SNAPSHOTS_STORAGE"), "local"),
        ],
        vec![claim_volume(
            "snapshots",
            &local.persistent_volume_claim.claim_name,
            false,
        )],
        vec![VolumeMount {
            name: "snapshots".into(),
            mount_path: SNAPSHOTS_MOUNT.into(),
            ..VolumeMount::default()
        }],
    )
}

fn claim_volume(name: &str, claim: &str, read_only: bool) -> Volume {
    Volume {
        name: name.into(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: claim.into(),
            read_only: Some(read_only),
        }),
        ..Volume::default()
    }
}

/// One mover Job to build.
#[derive(Debug, Clone)]
pub struct MoverJob<'a> {
    pub name: String,
    pub namespace: String,
    pub owner: OwnerReference,
    pub owner_uid: String,
    /// `snapshot`, `delete` or `restore`.
    pub operation: &'a str,
    pub node: &'a str,
    /// Arguments after `snapshot-operator mover`.
    pub args: Vec<String>,
    /// The data claim, mounted at [`DATA_MOUNT`], and whether read-only.
    pub data: Option<(&'a str, bool)>,
    pub storage: &'a Storage,
    /// Pin the pod to this Kubernetes node (where the data claim is attached).
    pub pin_to: Option<&'a str>,
}

/// The labels of a mover Job and its pod.
pub fn labels(owner_uid: &str, operation: &str, node: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.0.into(), MANAGED_BY.1.into()),
        (
            "app.kubernetes.io/name".into(),
            "snapshot-operator-mover".into(),
        ),
        (OWNER_UID.into(), owner_uid.into()),
        (OPERATION.into(), operation.into()),
        (NODE.into(), label_value(node)),
    ])
}

/// A label value (at most 63 characters).
fn label_value(text: &str) -> String {
    if text.len() <= 63 {
        return text.to_owned();
    }
    let hash = name::hex(&Sha256::digest(text.as_bytes()));
    format!(
        "{}-{}",
        &text[..52].trim_end_matches(['-', '.', '_']),
        &hash[..10]
    )
}

/// The Job.
pub fn job(spec: &MoverJob<'_>, config: &MoverConfig) -> Job {
    let labels = labels(&spec.owner_uid, spec.operation, spec.node);
    let (env, mut volumes, mut mounts) = storage_settings(spec.storage);
    if let Some((claim, read_only)) = spec.data {
        volumes.insert(0, claim_volume("data", claim, read_only));
        mounts.insert(
            0,
            VolumeMount {
                name: "data".into(),
                mount_path: DATA_MOUNT.into(),
                read_only: Some(read_only),
                ..VolumeMount::default()
            },
        );
    }
    let mut args = vec!["mover".to_owned()];
    args.extend(spec.args.iter().cloned());
    let affinity = spec.pin_to.map(|node| Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_fields: Some(vec![NodeSelectorRequirement {
                        key: "metadata.name".into(),
                        operator: "In".into(),
                        values: Some(vec![node.into()]),
                    }]),
                    ..NodeSelectorTerm::default()
                }],
            }),
            ..NodeAffinity::default()
        }),
        ..Affinity::default()
    });
    Job {
        metadata: ObjectMeta {
            name: Some(spec.name.clone()),
            namespace: Some(spec.namespace.clone()),
            labels: Some(labels.clone()),
            owner_references: Some(vec![spec.owner.clone()]),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(config.backoff_limit),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".into()),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(config.pod_security_context.clone()),
                    affinity,
                    containers: vec![Container {
                        name: "mover".into(),
                        image: Some(config.image.clone()),
                        image_pull_policy: Some(config.image_pull_policy.clone()),
                        args: Some(args),
                        env: Some(env),
                        resources: config.resources.clone(),
                        volume_mounts: Some(mounts),
                        termination_message_path: Some(TERMINATION_LOG.into()),
                        termination_message_policy: Some("FallbackToLogsOnError".into()),
                        security_context: Some(SecurityContext {
                            allow_privilege_escalation: Some(false),
                            read_only_root_filesystem: Some(true),
                            run_as_non_root: Some(true),
                            capabilities: Some(Capabilities {
                                drop: Some(vec!["ALL".into()]),
                                ..Capabilities::default()
                            }),
                            ..SecurityContext::default()
                        }),
                        ..Container::default()
                    }],
                    volumes: Some(volumes),
                    ..PodSpec::default()
                }),
            },
            ..JobSpec::default()
        }),
        ..Job::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::snapshot::{ClaimRef, CredentialsSecret, LocalStorage, S3Storage};

    fn s3() -> Storage {
        Storage {
            s3: Some(S3Storage {
                bucket: "snaps".into(),
                region: Some("eu-west-1".into()),
                endpoint_url: Some("http://minio:9000".into()),
                prefix: Some("prod".into()),
                force_path_style: Some(true),
                credentials_secret: Some(CredentialsSecret {
                    name: "creds".into(),
                    access_key_id_key: "id".into(),
                    secret_access_key_key: "secret".into(),
                }),
            }),
            local: None,
        }
    }

    fn local() -> Storage {
        Storage {
            local: Some(LocalStorage {
                persistent_volume_claim: ClaimRef {
                    claim_name: "backups".into(),
                },
                path: "/qdrant".into(),
            }),
            s3: None,
        }
    }

    #[test]
    fn job_names_are_short_stable_and_distinct() {
        let a = job_name("snap", "products-2026-11-25", "qdrant-0");
        assert_eq!(a, job_name("snap", "products-2026-11-25", "qdrant-0"));
        assert_ne!(a, job_name("snap", "products-2026-11-25", "qdrant-1"));
        assert!(a.starts_with("snap-products-2026-11-25-qdrant-0-"), "{a}");
        let long = job_name("snap", &"x.y".repeat(80), &"n".repeat(60));
        assert!(long.len() <= 63, "{long}");
        assert!(
            long.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
        assert_ne!(long, job_name("snap", &"x.y".repeat(80), &"n".repeat(61)));
    }

    #[test]
    fn paths_and_locations() {
        assert_eq!(mounted("/data", "/"), "/data");
        assert_eq!(mounted("/data", "/qdrant/storage/"), "/data/qdrant/storage");
        assert_eq!(
            location(&s3(), "c/x.snapshot"),
            "s3://snaps/prod/c/x.snapshot"
        );
        assert_eq!(
            location(&local(), "c/x.snapshot"),
            "pvc://backups/qdrant/c/x.snapshot"
        );
    }

    #[test]
    fn s3_settings_take_credentials_from_the_secret_only() {
        let (env, volumes, mounts) = storage_settings(&s3());
        assert!(volumes.is_empty() && mounts.is_empty());
        let find = |n: &str| env.iter().find(|e| e.name.ends_with(n)).unwrap().clone();
        assert_eq!(find("__BUCKET").value.as_deref(), Some("snaps"));
        assert_eq!(find("__SNAPSHOTS_STORAGE").value.as_deref(), Some("s3"));
        assert_eq!(
            find("STORAGE__SNAPSHOTS_PATH").value.as_deref(),
            Some("prod")
        );
        let secret = find("__SECRET_KEY");
        assert_eq!(secret.value, None);
        let selector = secret.value_from.unwrap().secret_key_ref.unwrap();
        assert_eq!(
            (selector.name.as_str(), selector.key.as_str()),
            ("creds", "secret")
        );
        // Every name is one the engine's configuration accepts.
        let vars: Vec<(String, String)> = env
            .iter()
            .map(|e| {
                (
                    e.name.clone(),
                    e.value.clone().unwrap_or_else(|| "x".into()),
                )
            })
            .collect();
        crate::config::Config::load_from(None, vars).unwrap();
    }

    #[test]
    fn the_job_is_locked_down_and_pinned() {
        let storage = local();
        let owner = OwnerReference {
            api_version: "snapshot-operator.dev/v1alpha1".into(),
            kind: "Snapshot".into(),
            name: "s".into(),
            uid: "uid-1".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        let spec = MoverJob {
            name: "snap-s-qdrant-0-abc".into(),
            namespace: "ns".into(),
            owner,
            owner_uid: "uid-1".into(),
            operation: "snapshot",
            node: "qdrant-0",
            args: vec!["snapshot".into(), "--node".into(), "qdrant-0".into()],
            data: Some(("qdrant-storage-qdrant-0", true)),
            storage: &storage,
            pin_to: Some("worker-2"),
        };
        let job = job(&spec, &MoverConfig::default());
        let pod = job.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert_eq!(pod.security_context.unwrap().run_as_non_root, Some(true));
        let c = &pod.containers[0];
        let sc = c.security_context.clone().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.capabilities.unwrap().drop.unwrap(), ["ALL"]);
        assert_eq!(c.args.clone().unwrap()[..2], ["mover", "snapshot"]);
        let mounts = c.volume_mounts.clone().unwrap();
        assert_eq!(
            (mounts[0].mount_path.as_str(), mounts[0].read_only),
            ("/data", Some(true))
        );
        assert_eq!(mounts[1].mount_path, "/snapshots");
        let volumes = pod.volumes.unwrap();
        let data = volumes[0].persistent_volume_claim.clone().unwrap();
        assert_eq!(
            (data.claim_name.as_str(), data.read_only),
            ("qdrant-storage-qdrant-0", Some(true))
        );
        let terms = pod
            .affinity
            .unwrap()
            .node_affinity
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .unwrap()
            .node_selector_terms;
        assert_eq!(
            terms[0].match_fields.clone().unwrap()[0]
                .values
                .clone()
                .unwrap(),
            ["worker-2"]
        );
        assert_eq!(job.metadata.labels.unwrap()[OWNER_UID], "uid-1");
    }

    #[test]
    fn reports_fit_the_termination_message() {
        let report = MoverReport {
            error: Some("é".repeat(5000)),
            ..MoverReport::default()
        };
        let text = report.to_message();
        assert!(text.len() <= MAX_REPORT, "{}", text.len());
        let back: MoverReport = serde_json::from_str(&text).unwrap();
        assert!(back.error.unwrap().ends_with("..."));
        let ok = MoverReport {
            name: Some("a.snapshot".into()),
            size: Some(7),
            ..MoverReport::default()
        };
        assert_eq!(
            serde_json::from_str::<MoverReport>(&ok.to_message()).unwrap(),
            ok
        );
    }
}
