//! Configuration, shaped like Qdrant's `storage` section: a YAML file and environment
//! variables `SNAPSHOT_OPERATOR__<SECTION>__<KEY>` (e.g.
//! `SNAPSHOT_OPERATOR__STORAGE__SNAPSHOTS_CONFIG__S3_CONFIG__ACCESS_KEY`), the environment
//! winning over the file.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Prefix of configuration environment variables (followed by `__`).
pub const ENV_PREFIX: &str = "SNAPSHOT_OPERATOR";

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub storage: StorageConfig,
}

/// Where archives are kept (Qdrant's `storage` section).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Local archives directory, or the key prefix in S3.
    #[serde(default = "default_snapshots_path")]
    pub snapshots_path: PathBuf,
    /// Where local archives are built; default `<snapshots_path>/.tmp`.
    #[serde(default)]
    pub temp_path: Option<PathBuf>,
    #[serde(default)]
    pub snapshots_config: SnapshotsConfig,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            snapshots_path: default_snapshots_path(),
            temp_path: None,
            snapshots_config: SnapshotsConfig::default(),
        }
    }
}

fn default_snapshots_path() -> PathBuf {
    PathBuf::from("./snapshots")
}

/// Which backend keeps archives.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotsConfig {
    #[serde(default)]
    pub snapshots_storage: StorageKind,
    #[serde(default)]
    pub s3_config: Option<S3Config>,
}

/// `local` or `s3`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    #[default]
    Local,
    S3,
}

/// S3 settings (Qdrant's `s3_config`, plus path-style addressing and upload tuning).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    pub bucket: String,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub access_key: Option<Secret>,
    #[serde(default)]
    pub secret_key: Option<Secret>,
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), needed by most S3-compatible servers.
    #[serde(default)]
    pub force_path_style: Option<bool>,
    /// Multipart upload part size in MiB (default 16).
    #[serde(default)]
    pub part_size_mib: Option<u64>,
    /// Parts uploaded at once (default 4).
    #[serde(default)]
    pub upload_concurrency: Option<usize>,
    /// Multipart uploads under the prefix older than this many seconds are taken for
    /// abandoned (their writer died) and aborted by the next put (default 21600, six hours;
    /// 0 never aborts them). Keep it above the longest upload.
    #[serde(default)]
    pub abort_incomplete_uploads_after_secs: Option<u64>,
    /// S3's server-side encryption of every object written: `AES256` (SSE-S3) or `aws:kms`
    /// (SSE-KMS, with `sse_kms_key_id`, else the account's default key). Omit for the
    /// bucket's default. Reads need nothing: S3 decrypts.
    #[serde(default)]
    pub server_side_encryption: Option<String>,
    /// The KMS key of `server_side_encryption: aws:kms`.
    #[serde(default)]
    pub sse_kms_key_id: Option<String>,
    /// SSE-C: a key of 32 bytes, base64, that S3 encrypts every object written with and needs
    /// for every read of them (ranged reads included); S3 keeps only its MD5. Never printed.
    #[serde(default)]
    pub sse_customer_key: Option<Secret>,
}

/// A credential: never printed.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Why the configuration cannot be loaded.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration (from {origin} and SNAPSHOT_OPERATOR__* environment variables)")]
pub struct ConfigError {
    origin: String,
    source: Box<config::ConfigError>,
}

impl Config {
    /// Loads the file (when given) and the environment over it.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, std::env::vars())
    }

    /// Like [`load`](Self::load), with the environment given.
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let origin = file.map_or_else(|| "defaults".into(), |f| f.display().to_string());
        let env: config::Map<String, String> = env.into_iter().collect();
        let mut builder = config::Config::builder();
        if let Some(file) = file {
            builder = builder.add_source(
                config::File::from(file)
                    .format(config::FileFormat::Yaml)
                    .required(true),
            );
        }
        builder
            .add_source(
                config::Environment::with_prefix(ENV_PREFIX)
                    .prefix_separator("__")
                    .separator("__")
                    .source(Some(env)),
            )
            .build()
            .and_then(config::Config::try_deserialize)
            .map_err(|source| ConfigError {
                origin,
                source: Box::new(source),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_local_snapshots_dir() {
        let c = Config::load_from(None, env(&[])).unwrap();
        assert_eq!(c.storage.snapshots_path, PathBuf::from("./snapshots"));
        assert_eq!(
            c.storage.snapshots_config.snapshots_storage,
            StorageKind::Local
        );
        assert!(c.storage.temp_path.is_none());
    }

    #[test]
    fn file_then_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.yaml");
        std::fs::write(
            &file,
            "storage:\n  snapshots_path: /data/snaps\n  snapshots_config:\n    snapshots_storage: s3\n    s3_config:\n      bucket: b1\n      access_key: fromfile\n",
        )
        .unwrap();
        let c = Config::load_from(
            Some(&file),
            env(&[
                ("SNAPSHOT_OPERATOR__STORAGE__TEMP_PATH", "/tmp/t"),
                (
                    "SNAPSHOT_OPERATOR__STORAGE__SNAPSHOTS_CONFIG__S3_CONFIG__ACCESS_KEY",
                    "0123",
                ),
                (
                    "SNAPSHOT_OPERATOR__STORAGE__SNAPSHOTS_CONFIG__S3_CONFIG__FORCE_PATH_STYLE",
                    "true",
                ),
                ("SNAPSHOT_OPERATOR_TEST_S3_ENDPOINT", "ignored"),
                ("OTHER", "ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(c.storage.snapshots_path, PathBuf::from("/data/snaps"));
        assert_eq!(c.storage.temp_path, Some(PathBuf::from("/tmp/t")));
        let s3 = c.storage.snapshots_config.s3_config.unwrap();
        assert_eq!(
            c.storage.snapshots_config.snapshots_storage,
            StorageKind::S3
        );
        assert_eq!(s3.bucket, "b1");
        assert_eq!(s3.access_key.as_ref().unwrap().expose(), "0123");
        assert_eq!(s3.force_path_style, Some(true));
        assert!(!format!("{s3:?}").contains("0123"));
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = Config::load_from(
            None,
            env(&[("SNAPSHOT_OPERATOR__STORAGE__SNAPSHOT_PATH", "x")]),
        )
        .unwrap_err();
        let chain = format!("{:?}", err);
        assert!(chain.contains("snapshot_path"), "{chain}");
    }
}
