//! Mover Jobs: the operator's image running the engine (`snapshot-operator mover ...`) next to
//! a workload's volume. Pure builders: names, labels, storage settings, the Job itself.
//!
//! A mover gets no service-account token, runs non-root with a read-only root filesystem and
//! no capabilities, reads its storage settings from the environment (S3 credentials from the
//! Secret the resource names, never seen by the operator), and reports its result as JSON in
//! its termination message ([`crate::protocol`] defines both sides).

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, EnvVar, EnvVarSource, NodeAffinity, NodeSelector,
    NodeSelectorRequirement, NodeSelectorTerm, PersistentVolumeClaimVolumeSource,
    PodSecurityContext, PodSpec, PodTemplateSpec, SecretKeySelector, SecurityContext, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use sha2::{Digest, Sha256};

use super::config::MoverConfig;
use super::kernel::Invalid;
use crate::api::snapshot::{LocalStorage, MoverSecurityContext, Storage};
use crate::engine::name;
use crate::protocol::{
    EnvValue, MoverStorage, MoverTask, PROGRESS_EVERY_ENV, SecretKeys, TERMINATION_LOG,
};

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

/// The storage directory `path` of the data volume, as a mover sees it: inside the volume's
/// mount, resolved without following links.
pub fn data_dir(path: &str) -> crate::protocol::StorageDir {
    crate::protocol::StorageDir {
        storage_path: mounted(DATA_MOUNT, path).into(),
        volume: Some(DATA_MOUNT.into()),
    }
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

/// Where an archive in a local storage claim is, for people: `pvc://claim/path/key`.
pub fn claim_location(local: &LocalStorage, key: &str) -> String {
    format!(
        "pvc://{}",
        mounted(
            &local.persistent_volume_claim.claim_name,
            &mounted(&local.path, key)
        )
    )
}

/// The storage a mover uses, as the protocol carries it (`None` without one: delete movers
/// always have one).
pub fn mover_storage(storage: &Storage) -> Option<MoverStorage> {
    if let Some(s3) = &storage.s3 {
        return Some(MoverStorage::S3 {
            bucket: s3.bucket.clone(),
            prefix: s3.prefix.clone().unwrap_or_default(),
            region: s3.region.clone(),
            endpoint_url: s3.endpoint_url.clone(),
            force_path_style: s3.force_path_style,
            credentials: s3.credentials_secret.as_ref().map(|c| SecretKeys {
                secret: c.name.clone(),
                access_key_id_key: c.access_key_id_key.clone(),
                secret_access_key_key: c.secret_access_key_key.clone(),
            }),
            sse: Box::new(crate::protocol::MoverSse {
                mode: s3.server_side_encryption.map(|m| m.name().to_owned()),
                kms_key_id: s3.kms_key_id.clone(),
                customer_key: (s3.customer_key_secret.as_ref())
                    .map(|c| (c.name.clone(), c.key.clone())),
            }),
        });
    }
    storage.local.as_ref().map(|local| MoverStorage::Local {
        snapshots_path: mounted(SNAPSHOTS_MOUNT, &local.path),
    })
}

fn env_var(name: String, value: EnvValue) -> EnvVar {
    match value {
        EnvValue::Value(value) => EnvVar {
            name,
            value: Some(value),
            ..EnvVar::default()
        },
        EnvValue::SecretKey { secret, key } => EnvVar {
            name,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret,
                    key,
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        },
    }
}

/// Environment, volume and mount that point a mover's engine at `storage`.
pub fn storage_settings(storage: &Storage) -> (Vec<EnvVar>, Vec<Volume>, Vec<VolumeMount>) {
    let env = mover_storage(storage)
        .map(|s| s.env().into_iter().map(|(n, v)| env_var(n, v)).collect())
        .unwrap_or_default();
    let Some(local) = &storage.local else {
        return (env, Vec::new(), Vec::new());
    };
    (
        env,
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

/// Checks a resource's own `moverSecurityContext` against the configuration (pure): root
/// only where `mover.allowRoot` says so.
pub fn check_security(
    explicit: Option<&MoverSecurityContext>,
    config: &MoverConfig,
) -> Result<(), Invalid> {
    match explicit {
        Some(ids) if ids.run_as_user == Some(0) && !config.allow_root => Err(Invalid::RootMovers),
        _ => Ok(()),
    }
}

/// The pod security context of a mover (pure): the configured one, with the user and groups
/// of `explicit` (the resource's `moverSecurityContext`), else of the workload's pod
/// `template` (its pod security context, its first container's overriding), so that movers
/// act as the application. A template running as root, where the configuration does not
/// allow root movers, leaves the configured user; [`check_security`] refuses an explicit one.
pub fn security(
    explicit: Option<&MoverSecurityContext>,
    template: Option<&PodSpec>,
    config: &MoverConfig,
) -> PodSecurityContext {
    let ids = explicit.cloned().unwrap_or_else(|| {
        let Some(pod) = template else {
            return MoverSecurityContext::default();
        };
        let sc = pod.security_context.clone().unwrap_or_default();
        let container = pod
            .containers
            .first()
            .and_then(|c| c.security_context.clone())
            .unwrap_or_default();
        MoverSecurityContext {
            run_as_user: container.run_as_user.or(sc.run_as_user),
            run_as_group: container.run_as_group.or(sc.run_as_group),
            fs_group: sc.fs_group,
            supplemental_groups: sc.supplemental_groups.unwrap_or_default(),
        }
    });
    let mut context = config.pod_security_context.clone();
    if ids.run_as_user == Some(0) && !config.allow_root {
        return context;
    }
    if let Some(user) = ids.run_as_user {
        context.run_as_user = Some(user);
        context.run_as_non_root = Some(user != 0);
    }
    context.run_as_group = ids.run_as_group.or(context.run_as_group);
    context.fs_group = ids.fs_group.or(context.fs_group);
    if !ids.supplemental_groups.is_empty() {
        context.supplemental_groups = Some(ids.supplemental_groups);
    }
    context
}

/// One mover Job to build.
#[derive(Debug, Clone)]
pub struct MoverJob<'a> {
    pub name: String,
    pub namespace: String,
    pub owner: OwnerReference,
    pub owner_uid: String,
    pub node: &'a str,
    /// What the mover does.
    pub task: MoverTask,
    /// The data claim, mounted at [`DATA_MOUNT`], and whether read-only.
    pub data: Option<(&'a str, bool)>,
    pub storage: &'a Storage,
    /// Pin the pod to this Kubernetes node (where the data claim is attached).
    pub pin_to: Option<&'a str>,
    /// The pod security context (see [`security`]).
    pub security: PodSecurityContext,
    /// The task's own environment beyond its storage's (a Qdrant api-key's Secret).
    pub env: Vec<(String, EnvValue)>,
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

/// Scheduling on the Kubernetes node `node` only.
fn pinned_to(node: &str) -> Affinity {
    Affinity {
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
    }
}

/// The Job.
pub fn job(spec: &MoverJob<'_>, config: &MoverConfig) -> Job {
    let labels = labels(&spec.owner_uid, spec.task.operation(), spec.node);
    let (mut env, mut volumes, mut mounts) = storage_settings(spec.storage);
    env.extend(spec.env.iter().map(|(n, v)| env_var(n.clone(), v.clone())));
    // Printed twice as often as read: what is read is at most half an interval old.
    let every = (config.progress.interval_milliseconds.get() / 2).max(1);
    env.push(env_var(
        PROGRESS_EVERY_ENV.into(),
        EnvValue::Value(every.to_string()),
    ));
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
    args.extend(spec.task.args());
    let affinity = spec.pin_to.map(pinned_to);
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
            active_deadline_seconds: Some(config.active_deadline_seconds),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".into()),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(spec.security.clone()),
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
                            run_as_non_root: Some(spec.security.run_as_non_root != Some(false)),
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
    use crate::api::snapshot::{ClaimRef, CredentialsSecret, S3Storage};

    /// A pod template running as `user` (pod level) with `fs_group`, its container as
    /// `container_user`.
    fn template(user: Option<i64>, fs_group: Option<i64>, container_user: Option<i64>) -> PodSpec {
        serde_json::from_value(serde_json::json!({
            "securityContext": {"runAsUser": user, "runAsGroup": user, "fsGroup": fs_group},
            "containers": [{"name": "qdrant", "securityContext": {"runAsUser": container_user}}],
        }))
        .unwrap()
    }

    fn ids(user: Option<i64>, group: Option<i64>, fs_group: Option<i64>) -> MoverSecurityContext {
        MoverSecurityContext {
            run_as_user: user,
            run_as_group: group,
            fs_group,
            supplemental_groups: vec![],
        }
    }

    #[test]
    fn movers_act_as_the_workload_or_as_asked_and_as_root_only_where_allowed() {
        let config = MoverConfig::default();
        let root_ok = MoverConfig {
            allow_root: true,
            ..MoverConfig::default()
        };
        let seen = |sc: PodSecurityContext| {
            (
                sc.run_as_user,
                sc.run_as_group,
                sc.fs_group,
                sc.run_as_non_root,
            )
        };
        let cases = [
            // (what, explicit, template, config, user, group, fs group, non-root)
            (
                "nothing said: the configured user",
                None,
                None,
                &config,
                (Some(65532), Some(65532), Some(65532), Some(true)),
            ),
            (
                "the workload's user",
                None,
                Some(template(Some(1000), Some(2000), None)),
                &config,
                (Some(1000), Some(1000), Some(2000), Some(true)),
            ),
            (
                "its container's user wins",
                None,
                Some(template(Some(1000), None, Some(1500))),
                &config,
                (Some(1500), Some(1000), Some(65532), Some(true)),
            ),
            (
                "a template running as root: not allowed",
                None,
                Some(template(Some(0), Some(0), None)),
                &config,
                (Some(65532), Some(65532), Some(65532), Some(true)),
            ),
            (
                "a template running as root: allowed",
                None,
                Some(template(Some(0), None, None)),
                &root_ok,
                (Some(0), Some(0), Some(65532), Some(false)),
            ),
            (
                "asked for: wins over the workload",
                Some(ids(Some(7), Some(8), Some(9))),
                Some(template(Some(1000), None, None)),
                &config,
                (Some(7), Some(8), Some(9), Some(true)),
            ),
            (
                "asked for a group only",
                Some(ids(None, None, Some(9))),
                None,
                &config,
                (Some(65532), Some(65532), Some(9), Some(true)),
            ),
        ];
        for (what, explicit, template, config, expected) in cases {
            let sc = security(explicit.as_ref(), template.as_ref(), config);
            assert_eq!(seen(sc.clone()), expected, "{what}");
            // The rest of the configured context stays (seccomp).
            assert!(sc.seccomp_profile.is_some(), "{what}");
        }
        let root = ids(Some(0), None, None);
        assert_eq!(
            check_security(Some(&root), &config),
            Err(Invalid::RootMovers)
        );
        assert!(check_security(Some(&root), &root_ok).is_ok());
        assert!(check_security(Some(&ids(Some(1000), None, None)), &config).is_ok());
    }

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
                server_side_encryption: None,
                kms_key_id: None,
                customer_key_secret: Some(crate::api::snapshot::CustomerKeySecret {
                    name: "sse".into(),
                    key: "k".into(),
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
            claim_location(local().local.as_ref().unwrap(), "c/x.snapshot"),
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
        // SSE-C's key likewise.
        let customer = find("__SSE_CUSTOMER_KEY").value_from.unwrap();
        let selector = customer.secret_key_ref.unwrap();
        assert_eq!(
            (selector.name.as_str(), selector.key.as_str()),
            ("sse", "k")
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
            node: "qdrant-0",
            task: MoverTask::Snapshot(crate::protocol::SnapshotTask {
                dir: crate::protocol::StorageDir {
                    storage_path: "/data".into(),
                    volume: Some("/data".into()),
                },
                collection: None,
                node: "qdrant-0".into(),
                identity: None,
                format: None,
                termination_log: TERMINATION_LOG.into(),
            }),
            data: Some(("qdrant-storage-qdrant-0", true)),
            storage: &storage,
            pin_to: Some("worker-2"),
            security: MoverConfig::default().pod_security_context,
            env: Vec::new(),
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
}
