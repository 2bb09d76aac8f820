//! The operator's own configuration (a YAML file the Helm chart renders from its values):
//! default storage, the mover pods' image, resources and security, the concurrency cap.

use std::num::{NonZeroU32, NonZeroU64};
use std::path::Path;

use k8s_openapi::api::core::v1::{PodSecurityContext, ResourceRequirements, SeccompProfile};
use serde::{Deserialize, Serialize};

use crate::api::snapshot::Storage;
use crate::controller::kernel::Invalid;
use crate::protocol::LimitArgs;

/// The operator configuration.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OperatorConfig {
    /// Storage for resources that set none.
    #[serde(default)]
    pub default_storage: Option<Storage>,
    /// Mover pods.
    #[serde(default)]
    pub mover: MoverConfig,
    /// Most mover Jobs running at once, cluster-wide.
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent_movers: u32,
    /// Most mover Jobs running at once in one namespace (default: the cluster-wide cap).
    #[serde(default)]
    pub max_concurrent_movers_per_namespace: Option<u32>,
    /// The S3 endpoints a resource's own storage may name (`aws` for AWS, i.e. no
    /// `endpointUrl` or an `amazonaws.com` one). Default: the default storage's endpoint and
    /// AWS. A Secret a resource names goes to its endpoint: this list bounds where.
    #[serde(default)]
    pub allowed_s3_endpoints: Option<Vec<String>>,
    /// Rebuilding the catalog from the default storage (when it is S3).
    #[serde(default)]
    pub catalog_import: CatalogImport,
    /// The archives of a deleted Snapshot (`deletionPolicy: Delete`) in the default S3
    /// storage are deleted by the operator itself, with its own credentials (see
    /// `catalogImport`; they need delete rights): at once, with no delete mover and no slot.
    /// Off: a delete mover does it with the namespace's Secret, as for any other storage.
    #[serde(default)]
    pub delete_through_operator: bool,
}

/// Snapshots imported from the archives in the default S3 storage: see `controller::import`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CatalogImport {
    /// Import at all.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Seconds between two passes over the storage (the first at start).
    #[serde(default = "default_import_interval")]
    pub interval_seconds: u64,
}

impl Default for CatalogImport {
    fn default() -> Self {
        Self {
            enabled: true,
            interval_seconds: default_import_interval(),
        }
    }
}

fn yes() -> bool {
    true
}

fn default_import_interval() -> u64 {
    300
}

/// How mover pods run.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MoverConfig {
    /// The operator's image (it holds the engine).
    #[serde(default = "default_image")]
    pub image: String,
    #[serde(default = "default_pull_policy")]
    pub image_pull_policy: String,
    #[serde(default)]
    pub resources: Option<ResourceRequirements>,
    /// Pod security context; the default runs as user and group 65532, non-root.
    #[serde(default = "default_pod_security")]
    pub pod_security_context: PodSecurityContext,
    /// Retries of a failed mover pod.
    #[serde(default = "default_backoff_limit")]
    pub backoff_limit: i32,
    /// Seconds a mover Job may run before Kubernetes stops it (its activeDeadlineSeconds).
    #[serde(default = "default_active_deadline")]
    pub active_deadline_seconds: i64,
    /// Seconds a mover pod may wait to start (unschedulable, a missing Secret, a pending
    /// claim) before its node fails with the reason.
    #[serde(default = "default_start_timeout")]
    pub start_timeout_seconds: i64,
    /// What a restore mover accepts from an archive.
    #[serde(default)]
    pub restore_limits: LimitArgs,
    /// Whether a resource may run its movers as root (`moverSecurityContext.runAsUser: 0`,
    /// or a workload whose pod template runs as root). Off: such movers run as the pod
    /// security context's user.
    #[serde(default)]
    pub allow_root: bool,
    /// How running movers' progress is read.
    #[serde(default)]
    pub progress: ProgressConfig,
}

/// How the progress of running movers is read (from their logs, through the API server).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProgressConfig {
    /// Milliseconds between two reads of one mover's progress (movers print it twice as
    /// often).
    #[serde(default = "default_progress_interval")]
    pub interval_milliseconds: NonZeroU64,
    /// Most reads of movers' progress per second, all movers together: with many movers,
    /// each is read less often.
    #[serde(default = "default_progress_reads")]
    pub reads_per_second: NonZeroU32,
}

impl Default for ProgressConfig {
    fn default() -> Self {
        Self {
            interval_milliseconds: default_progress_interval(),
            reads_per_second: default_progress_reads(),
        }
    }
}

impl ProgressConfig {
    /// The time between two reads of one mover's progress.
    pub fn interval(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.interval_milliseconds.get())
    }
}

fn default_progress_interval() -> NonZeroU64 {
    NonZeroU64::new(10_000).expect("not zero")
}

fn default_progress_reads() -> NonZeroU32 {
    NonZeroU32::new(5).expect("not zero")
}

impl Default for MoverConfig {
    fn default() -> Self {
        Self {
            image: default_image(),
            image_pull_policy: default_pull_policy(),
            resources: None,
            pod_security_context: default_pod_security(),
            backoff_limit: default_backoff_limit(),
            active_deadline_seconds: default_active_deadline(),
            start_timeout_seconds: default_start_timeout(),
            restore_limits: LimitArgs::default(),
            allow_root: false,
            progress: ProgressConfig::default(),
        }
    }
}

impl Default for OperatorConfig {
    fn default() -> Self {
        Self {
            default_storage: None,
            mover: MoverConfig::default(),
            max_concurrent_movers: default_max_concurrent(),
            max_concurrent_movers_per_namespace: None,
            allowed_s3_endpoints: None,
            catalog_import: CatalogImport::default(),
            delete_through_operator: false,
        }
    }
}

fn default_max_concurrent() -> u32 {
    4
}

fn default_image() -> String {
    concat!(
        "ghcr.io/snapshot-operator/snapshot-operator:",
        env!("CARGO_PKG_VERSION")
    )
    .into()
}

fn default_pull_policy() -> String {
    "IfNotPresent".into()
}

fn default_backoff_limit() -> i32 {
    1
}

fn default_active_deadline() -> i64 {
    24 * 3600
}

fn default_start_timeout() -> i64 {
    600
}

fn default_pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(65532),
        run_as_group: Some(65532),
        fs_group: Some(65532),
        fs_group_change_policy: Some("OnRootMismatch".into()),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..SeccompProfile::default()
        }),
        ..PodSecurityContext::default()
    }
}

/// Why the configuration cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("failed to read the operator configuration {path}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid operator configuration {path}")]
    Parse {
        path: String,
        source: Box<serde_saphyr::Error>,
    },
}

/// An endpoint as compared: scheme, host and port, lower case, no trailing slash; AWS's
/// (none, or a host under `amazonaws.com`) as `aws`.
fn endpoint_key(endpoint: Option<&str>) -> String {
    let Some(url) = endpoint else {
        return "aws".into();
    };
    let url = url.trim().trim_end_matches('/').to_ascii_lowercase();
    let host = url.split("://").nth(1).unwrap_or(&url);
    let host = host.split(['/', ':']).next().unwrap_or_default();
    if host == "amazonaws.com" || host.ends_with(".amazonaws.com") {
        "aws".into()
    } else {
        url
    }
}

impl OperatorConfig {
    /// The default storage as a resource of `namespace` uses it: below a directory or key
    /// prefix of the namespace's name, so that namespaces sharing it never reach each
    /// other's archives by name.
    pub fn default_storage_for(&self, namespace: &str) -> Option<Storage> {
        let mut storage = self.default_storage.clone()?;
        if let Some(s3) = &mut storage.s3 {
            let prefix = s3.prefix.as_deref().unwrap_or_default().trim_matches('/');
            s3.prefix = Some(if prefix.is_empty() {
                namespace.to_owned()
            } else {
                format!("{prefix}/{namespace}")
            });
        }
        if let Some(local) = &mut storage.local {
            local.path = format!("{}/{namespace}", local.path.trim_end_matches('/'));
        }
        Some(storage)
    }

    /// Whether a resource's own S3 storage may use `endpoint` (pure): see
    /// `allowedS3Endpoints`.
    pub fn allow_endpoint(&self, endpoint: Option<&str>) -> Result<(), Invalid> {
        let allowed: Vec<String> = match &self.allowed_s3_endpoints {
            Some(list) => list.iter().map(|e| endpoint_key(Some(e))).collect(),
            None => {
                let default = self.default_storage.as_ref().and_then(|s| s.s3.as_ref());
                let mut list = vec!["aws".to_owned()];
                if let Some(s3) = default {
                    list.push(endpoint_key(s3.endpoint_url.as_deref()));
                }
                list
            }
        };
        let wanted = endpoint_key(endpoint);
        if allowed.contains(&wanted) {
            return Ok(());
        }
        Err(Invalid::Endpoint {
            endpoint: endpoint.unwrap_or("(AWS)").into(),
            allowed: allowed.join(", "),
        })
    }

    /// Reads the file, or the defaults when there is none.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        serde_saphyr::from_str(&text).map_err(|source| ConfigError::Parse {
            path: shown,
            source: Box::new(source),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_namespace_has_its_own_part_of_the_default_storage() {
        let s3: OperatorConfig = serde_json::from_value(serde_json::json!({
            "defaultStorage": {"s3": {"bucket": "b", "prefix": "prod/"}}}))
        .unwrap();
        let team = s3.default_storage_for("team-a").unwrap().s3.unwrap();
        assert_eq!(
            (team.bucket.as_str(), team.prefix.as_deref()),
            ("b", Some("prod/team-a"))
        );
        let local: OperatorConfig = serde_json::from_value(serde_json::json!({
            "defaultStorage": {"local": {"persistentVolumeClaim": {"claimName": "backups"}}}}))
        .unwrap();
        assert_eq!(
            local
                .default_storage_for("team-a")
                .unwrap()
                .local
                .unwrap()
                .path,
            "/team-a"
        );
        assert_eq!(OperatorConfig::default().default_storage_for("x"), None);
    }

    #[test]
    fn endpoints_a_resource_may_name() {
        let config: OperatorConfig = serde_json::from_value(serde_json::json!({
            "defaultStorage": {"s3": {"bucket": "b", "endpointUrl": "http://minio.minio:9000/"}}}))
        .unwrap();
        // Default: the default storage's endpoint and AWS.
        for fine in [
            None,
            Some("http://MINIO.minio:9000"),
            Some("https://s3.eu-west-1.amazonaws.com"),
        ] {
            assert!(config.allow_endpoint(fine).is_ok(), "{fine:?}");
        }
        let refused = config
            .allow_endpoint(Some("https://attacker.example"))
            .unwrap_err();
        assert_eq!(
            refused,
            Invalid::Endpoint {
                endpoint: "https://attacker.example".into(),
                allowed: "aws, http://minio.minio:9000".into()
            }
        );
        // Configured: exactly the list.
        let only: OperatorConfig = serde_json::from_value(serde_json::json!({
            "allowedS3Endpoints": ["https://storage.internal:9000"]}))
        .unwrap();
        assert!(
            only.allow_endpoint(Some("https://storage.internal:9000/"))
                .is_ok()
        );
        assert!(only.allow_endpoint(None).is_err(), "AWS only when listed");
        assert!(
            only.allow_endpoint(Some("https://storage.internal:9001"))
                .is_err()
        );
    }

    #[test]
    fn defaults_and_a_full_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("operator.yaml");
        std::fs::write(
            &path,
            "defaultStorage:\n  s3:\n    bucket: snaps\n    endpointUrl: http://minio:9000\n    credentialsSecret:\n      name: s3-creds\nmover:\n  image: example/op:1\n  resources:\n    limits:\n      memory: 256Mi\nmaxConcurrentMovers: 2\n",
        )
        .unwrap();
        let config = OperatorConfig::load(Some(&path)).unwrap();
        let s3 = config.default_storage.unwrap().s3.unwrap();
        assert_eq!(s3.bucket, "snaps");
        assert_eq!(
            s3.credentials_secret.unwrap().access_key_id_key,
            "AWS_ACCESS_KEY_ID"
        );
        assert_eq!(config.mover.image, "example/op:1");
        assert_eq!(
            config.mover.pod_security_context.run_as_non_root,
            Some(true)
        );
        assert_eq!(config.max_concurrent_movers, 2);
        assert_eq!(
            OperatorConfig::load(None).unwrap(),
            OperatorConfig::default()
        );
        std::fs::write(&path, "maxConcurrentMover: 2\n").unwrap();
        assert!(OperatorConfig::load(Some(&path)).is_err());
    }
}
