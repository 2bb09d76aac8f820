//! The mover protocol: what a mover Job is told to do ([`MoverTask`], its container's
//! arguments, and [`MoverStorage`], its environment) and what it answers ([`MoverReport`],
//! its termination message). One type for each, used both by the controller that writes
//! them and by `snapshot-operator mover`, which reads them with the same definitions (clap
//! derive, the configuration loader, serde); the round-trip tests below tie the two sides.
//! Kube-free: the controller turns [`EnvValue`]s into Kubernetes environment variables.

use std::path::PathBuf;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};

use crate::config::ENV_PREFIX;
use crate::engine::manifest::{Format, SnapshotIdentity};
use crate::engine::restore::{Limits, Outcome, Priority};

/// Where a mover writes its report (the container's termination message).
pub const TERMINATION_LOG: &str = "/dev/termination-log";

/// What a mover does: `snapshot-operator mover <task>`.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum MoverTask {
    /// Snapshot the storage directory (or one collection) of this node.
    Snapshot(SnapshotTask),
    /// Restore an archive into this node's storage directory.
    Restore(RestoreTask),
    /// Delete archives (and their checksums) by key; absent ones are fine.
    Delete(DeleteTask),
    /// Have a Qdrant make its snapshot through its API, and store it (no volume).
    ApiSnapshot(ApiSnapshotTask),
    /// Upload an archive to a Qdrant, which recovers it (no volume).
    ApiRestore(ApiRestoreTask),
}

/// The environment variable a mover reads the Qdrant api-key from (set from a Secret).
pub const QDRANT_API_KEY_ENV: &str = "QDRANT_API_KEY";
/// The environment variable a mover reads the PEM certificates of the CAs that sign
/// Qdrant's certificate from (set from a Secret), trusted besides the system's.
pub const QDRANT_CA_ENV: &str = "QDRANT_CA_CERT";

/// The REST API of the Qdrant a mover works through. Its api-key and CA, when it has them,
/// come from the environment ([`QDRANT_API_KEY_ENV`], [`QDRANT_CA_ENV`]), never from the
/// arguments.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct QdrantEndpoint {
    #[arg(long, value_name = "URL")]
    pub qdrant_url: String,
    /// How long one call may take, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 3600)]
    pub qdrant_timeout: u64,
}

impl QdrantEndpoint {
    /// The API, with the api-key and CA of the environment.
    pub fn connect(&self) -> Result<crate::qdrant_api::Qdrant, crate::qdrant_api::ApiError> {
        let api_key = std::env::var(QDRANT_API_KEY_ENV)
            .ok()
            .filter(|v| !v.is_empty());
        // A CA given but empty (a Secret key that holds nothing) is a mistake, not "no CA".
        let ca_pem = std::env::var(QDRANT_CA_ENV).ok().map(String::into_bytes);
        let access = crate::qdrant_api::Access { api_key, ca_pem };
        let timeout = std::time::Duration::from_secs(self.qdrant_timeout);
        crate::qdrant_api::Qdrant::new(&self.qdrant_url, access, timeout)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct ApiSnapshotTask {
    #[command(flatten)]
    pub qdrant: QdrantEndpoint,
    /// The collection to snapshot; omit for Qdrant's full snapshot.
    #[arg(long)]
    pub collection: Option<String>,
    /// The node (pod) name, in the archive's name and manifest.
    #[arg(long)]
    pub node: String,
    /// The Snapshot resource the archive belongs to (JSON), recorded in its manifest.
    #[arg(long)]
    pub identity: Option<SnapshotIdentity>,
    #[arg(long, default_value = TERMINATION_LOG)]
    pub termination_log: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct ApiRestoreTask {
    #[command(flatten)]
    pub qdrant: QdrantEndpoint,
    /// A storage key, http(s):// or s3:// location.
    #[arg(long)]
    pub location: String,
    /// The collection Qdrant recovers it as.
    #[arg(long)]
    pub collection: String,
    /// For a shard snapshot: the shard of the collection it is recovered as.
    #[arg(long)]
    pub shard: Option<u32>,
    #[arg(long, value_parser = PossibleValuesParser::new(Priority::NAMES)
        .map(|s| s.parse::<Priority>().expect("listed values parse")))]
    pub priority: Priority,
    /// Expected SHA-256 of the archive (Qdrant checks it too).
    #[arg(long)]
    pub checksum: Option<String>,
    #[arg(long, default_value = TERMINATION_LOG)]
    pub termination_log: PathBuf,
}

/// The storage directory a mover works on, inside the workload's volume.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct StorageDir {
    #[arg(long, value_name = "DIR")]
    pub storage_path: PathBuf,
    /// The mount of the workload's volume holding the storage path: nothing below it is
    /// reached through a symbolic link.
    #[arg(long, value_name = "DIR")]
    pub volume: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct SnapshotTask {
    #[command(flatten)]
    pub dir: StorageDir,
    /// The collection to snapshot; omit for the whole storage directory.
    #[arg(long)]
    pub collection: Option<String>,
    /// The node (pod) name, in the archive's name and manifest.
    #[arg(long)]
    pub node: String,
    /// The Snapshot resource the archive belongs to (JSON), recorded in its manifest.
    #[arg(long)]
    pub identity: Option<SnapshotIdentity>,
    /// The archive's format; omit for Qdrant's with a Qdrant storage directory, else files.
    #[arg(long, value_parser = PossibleValuesParser::new(Format::NAMES)
        .map(|s| s.parse::<Format>().expect("listed values parse")))]
    pub format: Option<Format>,
    #[arg(long, default_value = TERMINATION_LOG)]
    pub termination_log: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct RestoreTask {
    #[command(flatten)]
    pub dir: StorageDir,
    /// A storage key, file://, http(s):// or s3:// location.
    #[arg(long)]
    pub location: String,
    /// The collection to restore (and its name here); omit for a full-storage restore.
    #[arg(long)]
    pub collection: Option<String>,
    /// The collection to take out of a full-storage snapshot, when it differs.
    #[arg(long)]
    pub source_collection: Option<String>,
    #[arg(long, value_parser = PossibleValuesParser::new(Priority::NAMES)
        .map(|s| s.parse::<Priority>().expect("listed values parse")))]
    pub priority: Priority,
    /// Expected SHA-256 of the archive.
    #[arg(long)]
    pub checksum: Option<String>,
    /// For a Qdrant shard snapshot: the shard of the collection it is restored as (default
    /// 0).
    #[arg(long)]
    pub shard: Option<u32>,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[arg(long, default_value = TERMINATION_LOG)]
    pub termination_log: PathBuf,
}

/// Bounds on what a restore accepts from an archive (the CLI's and the movers' flags; the
/// controller's `mover.restoreLimits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Args, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LimitArgs {
    /// Refuse archives with more entries (files and directories) than this.
    #[arg(long, default_value_t = Limits::default().max_entries)]
    #[serde(default = "default_max_entries")]
    pub max_entries: u64,
    /// Refuse archives larger than this many bytes (every byte read from the source counts,
    /// headers, padding and entries not restored included), or whose files restored would
    /// be larger (their sizes, holes included).
    #[arg(long, default_value_t = Limits::default().max_bytes)]
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Refuse archives whose sparse files have more than this many bytes of holes in all
    /// (their apparent size beyond their data).
    #[arg(long, default_value_t = Limits::default().max_hole_bytes)]
    #[serde(default = "default_max_hole_bytes")]
    pub max_hole_bytes: u64,
    /// Refuse archives whose files would take more than this many bytes of disk (their data
    /// in whole 4 KiB blocks); default: the space free on the target's filesystem.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_disk_bytes: Option<u64>,
}

fn default_max_entries() -> u64 {
    Limits::default().max_entries
}

fn default_max_bytes() -> u64 {
    Limits::default().max_bytes
}

fn default_max_hole_bytes() -> u64 {
    Limits::default().max_hole_bytes
}

impl Default for LimitArgs {
    fn default() -> Self {
        Limits::default().into()
    }
}

impl From<Limits> for LimitArgs {
    fn from(limits: Limits) -> Self {
        Self {
            max_entries: limits.max_entries,
            max_bytes: limits.max_bytes,
            max_hole_bytes: limits.max_hole_bytes,
            max_disk_bytes: limits.max_disk_bytes,
        }
    }
}

impl From<LimitArgs> for Limits {
    fn from(args: LimitArgs) -> Self {
        Self {
            max_entries: args.max_entries,
            max_bytes: args.max_bytes,
            max_hole_bytes: args.max_hole_bytes,
            max_disk_bytes: args.max_disk_bytes,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct DeleteTask {
    /// Archive keys (`collection/name` or `name`).
    #[arg(required = true)]
    pub keys: Vec<String>,
    #[arg(long, default_value = TERMINATION_LOG)]
    pub termination_log: PathBuf,
}

/// Builds an argument list.
#[derive(Default)]
struct ArgList(Vec<String>);

impl ArgList {
    fn flag(&mut self, name: &str, value: impl Into<String>) {
        self.0.extend([name.to_owned(), value.into()]);
    }
    fn maybe(&mut self, name: &str, value: Option<&str>) {
        if let Some(value) = value {
            self.flag(name, value);
        }
    }
    fn dir(&mut self, dir: &StorageDir) {
        self.flag("--storage-path", dir.storage_path.to_string_lossy());
        if let Some(volume) = &dir.volume {
            self.flag("--volume", volume.to_string_lossy());
        }
    }
    fn qdrant(&mut self, qdrant: &QdrantEndpoint) {
        self.flag("--qdrant-url", &qdrant.qdrant_url);
        self.flag("--qdrant-timeout", qdrant.qdrant_timeout.to_string());
    }
    fn log(&mut self, log: &std::path::Path) {
        if log != std::path::Path::new(TERMINATION_LOG) {
            self.flag("--termination-log", log.to_string_lossy());
        }
    }
}

impl MoverTask {
    /// The arguments after `snapshot-operator mover` that parse back into this task.
    pub fn args(&self) -> Vec<String> {
        let mut a = ArgList::default();
        match self {
            Self::Snapshot(t) => {
                a.0.push("snapshot".into());
                a.dir(&t.dir);
                a.flag("--node", &t.node);
                a.maybe("--collection", t.collection.as_deref());
                if let Some(identity) = &t.identity {
                    a.flag("--identity", identity.to_string());
                }
                a.maybe("--format", t.format.map(Format::name));
                a.log(&t.termination_log);
            }
            Self::Restore(t) => {
                a.0.push("restore".into());
                a.dir(&t.dir);
                a.flag("--location", &t.location);
                a.flag("--priority", t.priority.name());
                a.maybe("--collection", t.collection.as_deref());
                a.maybe("--source-collection", t.source_collection.as_deref());
                a.maybe("--checksum", t.checksum.as_deref());
                a.maybe("--shard", t.shard.map(|n| n.to_string()).as_deref());
                a.flag("--max-entries", t.limits.max_entries.to_string());
                a.flag("--max-bytes", t.limits.max_bytes.to_string());
                a.flag("--max-hole-bytes", t.limits.max_hole_bytes.to_string());
                a.maybe(
                    "--max-disk-bytes",
                    t.limits.max_disk_bytes.map(|n| n.to_string()).as_deref(),
                );
                a.log(&t.termination_log);
            }
            Self::Delete(t) => {
                a.0.push("delete".into());
                a.log(&t.termination_log);
                a.0.push("--".into());
                a.0.extend(t.keys.iter().cloned());
            }
            Self::ApiSnapshot(t) => {
                a.0.push("api-snapshot".into());
                a.qdrant(&t.qdrant);
                a.flag("--node", &t.node);
                a.maybe("--collection", t.collection.as_deref());
                if let Some(identity) = &t.identity {
                    a.flag("--identity", identity.to_string());
                }
                a.log(&t.termination_log);
            }
            Self::ApiRestore(t) => {
                a.0.push("api-restore".into());
                a.qdrant(&t.qdrant);
                a.flag("--location", &t.location);
                a.flag("--collection", &t.collection);
                a.flag("--priority", t.priority.name());
                a.maybe("--shard", t.shard.map(|n| n.to_string()).as_deref());
                a.maybe("--checksum", t.checksum.as_deref());
                a.log(&t.termination_log);
            }
        }
        a.0
    }

    /// Its name: `snapshot`, `restore`, `delete`, `api-snapshot` or `api-restore`.
    pub fn operation(&self) -> &'static str {
        match self {
            Self::Snapshot(_) => "snapshot",
            Self::Restore(_) => "restore",
            Self::Delete(_) => "delete",
            Self::ApiSnapshot(_) => "api-snapshot",
            Self::ApiRestore(_) => "api-restore",
        }
    }

    /// Where it writes its report.
    pub fn termination_log(&self) -> &std::path::Path {
        match self {
            Self::Snapshot(t) => &t.termination_log,
            Self::Restore(t) => &t.termination_log,
            Self::Delete(t) => &t.termination_log,
            Self::ApiSnapshot(t) => &t.termination_log,
            Self::ApiRestore(t) => &t.termination_log,
        }
    }
}

/// Where a mover keeps archives: the storage configuration it reads from its environment
/// (`SNAPSHOT_OPERATOR__STORAGE__...`). S3 credentials are keys of a Secret, resolved into
/// the environment by the kubelet: the operator never reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MoverStorage {
    /// A directory (the storage claim's mount, and the path inside it).
    Local { snapshots_path: String },
    S3 {
        bucket: String,
        /// Key prefix.
        prefix: String,
        region: Option<String>,
        endpoint_url: Option<String>,
        force_path_style: Option<bool>,
        credentials: Option<SecretKeys>,
        sse: Box<MoverSse>,
    },
}

/// S3's server-side encryption of what a mover writes: a mode, or SSE-C's key in a Secret.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MoverSse {
    /// `AES256` or `aws:kms`.
    pub mode: Option<String>,
    pub kms_key_id: Option<String>,
    /// SSE-C: the Secret and its key holding the customer key (base64).
    pub customer_key: Option<(String, String)>,
}

/// The Secret holding S3 credentials, and its keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretKeys {
    pub secret: String,
    pub access_key_id_key: String,
    pub secret_access_key_key: String,
}

/// The value of a mover's environment variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvValue {
    Value(String),
    /// A key of a Secret in the mover's namespace.
    SecretKey {
        secret: String,
        key: String,
    },
}

impl EnvValue {
    /// The key `key` of the Secret `secret`.
    pub fn secret(secret: &str, key: &str) -> Self {
        Self::SecretKey {
            secret: secret.to_owned(),
            key: key.to_owned(),
        }
    }
}

impl MoverStorage {
    /// The environment variables that configure a mover's storage.
    pub fn env(&self) -> Vec<(String, EnvValue)> {
        let storage = format!("{ENV_PREFIX}__STORAGE__");
        let config = format!("{storage}SNAPSHOTS_CONFIG__");
        let s3 = format!("{config}S3_CONFIG__");
        let value = |name: String, v: &str| (name, EnvValue::Value(v.to_owned()));
        match self {
            Self::Local { snapshots_path } => vec![
                value(format!("{storage}SNAPSHOTS_PATH"), snapshots_path),
                value(format!("{config}SNAPSHOTS_STORAGE"), "local"),
            ],
            Self::S3 {
                bucket,
                prefix,
                region,
                endpoint_url,
                force_path_style,
                credentials,
                sse,
            } => {
                let mut vars = vec![
                    value(format!("{storage}SNAPSHOTS_PATH"), prefix),
                    value(format!("{config}SNAPSHOTS_STORAGE"), "s3"),
                    value(format!("{s3}BUCKET"), bucket),
                ];
                if let Some(region) = region {
                    vars.push(value(format!("{s3}REGION"), region));
                }
                if let Some(url) = endpoint_url {
                    vars.push(value(format!("{s3}ENDPOINT_URL"), url));
                }
                if let Some(style) = force_path_style {
                    vars.push(value(format!("{s3}FORCE_PATH_STYLE"), &style.to_string()));
                }
                if let Some(mode) = &sse.mode {
                    vars.push(value(format!("{s3}SERVER_SIDE_ENCRYPTION"), mode));
                }
                if let Some(key) = &sse.kms_key_id {
                    vars.push(value(format!("{s3}SSE_KMS_KEY_ID"), key));
                }
                if let Some((secret, key)) = &sse.customer_key {
                    let from = EnvValue::secret(secret, key);
                    vars.push((format!("{s3}SSE_CUSTOMER_KEY"), from));
                }
                if let Some(keys) = credentials {
                    let secret = |key: &str| EnvValue::secret(&keys.secret, key);
                    vars.push((format!("{s3}ACCESS_KEY"), secret(&keys.access_key_id_key)));
                    vars.push((
                        format!("{s3}SECRET_KEY"),
                        secret(&keys.secret_access_key_key),
                    ));
                }
                vars
            }
        }
    }
}

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
    /// Where the archive is, as the mover's storage says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    /// Restores: `Restored` or `Skipped`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// Restores: why it was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Snapshots: the files written to while they were read, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed: Option<String>,
    /// A snapshot: the archive is stored encrypted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub encrypted: bool,
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

/// How often a mover prints a [`ProgressLine`] (milliseconds; absent: never): set by the
/// controller on every mover Job.
pub const PROGRESS_EVERY_ENV: &str = "SNAPSHOT_OPERATOR_PROGRESS_EVERY_MS";

/// The key of a progress line's one field: a line of the mover's log is a progress line
/// only when it is a JSON object with this key.
const PROGRESS_KEY: &str = "snapshotOperatorProgress";

/// How far a mover is: printed on its standard output while it works, read from its log by
/// the controller (movers have no API access).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProgressLine {
    /// Bytes read (snapshots: of the files; restores: of the archive).
    pub bytes_done: u64,
    /// What `bytes_done` reaches at the end, when known (restores: the archive's size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_total: Option<u64>,
    /// Bytes per second over the last few seconds.
    pub bytes_per_second: u64,
}

#[derive(Serialize, Deserialize)]
struct Tagged {
    #[serde(rename = "snapshotOperatorProgress")]
    progress: ProgressLine,
}

impl ProgressLine {
    /// The line a mover prints (without its newline).
    pub fn to_line(self) -> String {
        serde_json::to_string(&Tagged { progress: self }).expect("progress lines serialise")
    }

    /// The last progress line in `log` (the end of a mover's log), if any (pure).
    pub fn last_in(log: &str) -> Option<Self> {
        log.lines()
            .rev()
            .filter(|line| line.contains(PROGRESS_KEY))
            .find_map(|line| serde_json::from_str::<Tagged>(line.trim()).ok())
            .map(|t| t.progress)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// `snapshot-operator mover ...` as the binary parses it.
    #[derive(Debug, Parser)]
    struct Mover {
        #[command(subcommand)]
        task: MoverTask,
    }

    fn dir(volume: bool) -> StorageDir {
        StorageDir {
            storage_path: "/data/qdrant/storage".into(),
            volume: volume.then(|| "/data".into()),
        }
    }

    #[test]
    fn the_last_progress_line_of_a_log_is_found_among_other_lines() {
        let line = |done| ProgressLine {
            bytes_done: done,
            bytes_total: Some(300),
            bytes_per_second: 7,
        };
        let log = format!(
            "{}\n2026-12-07T03:00:00Z WARN something\n{}\n{{\"name\":\"x\"}}\n",
            line(100).to_line(),
            line(200).to_line()
        );
        assert_eq!(ProgressLine::last_in(&log), Some(line(200)));
        // A line cut by the log read's byte limit, or another JSON object, is not one.
        let cut = &line(250).to_line()[..30];
        assert_eq!(
            ProgressLine::last_in(&format!("{}\n{cut}", line(100).to_line())),
            Some(line(100))
        );
        assert_eq!(ProgressLine::last_in("no progress here\n{}"), None);
        let unknown_total = ProgressLine {
            bytes_total: None,
            ..line(5)
        };
        assert!(!unknown_total.to_line().contains("bytesTotal"));
        assert_eq!(
            ProgressLine::last_in(&unknown_total.to_line()),
            Some(unknown_total)
        );
    }

    #[test]
    fn tasks_survive_args_and_parsing() {
        let tasks = [
            MoverTask::Snapshot(SnapshotTask {
                dir: dir(true),
                collection: Some("products".into()),
                node: "qdrant-0".into(),
                format: Some(Format::Qdrant),
                identity: Some(SnapshotIdentity {
                    namespace: "search".into(),
                    name: "nightly \"1\"".into(),
                    uid: "u-1".into(),
                    index: 2,
                    nodes: 3,
                    source: "statefulSet/qdrant".into(),
                    volume_claim_template: Some("data".into()),
                    claim: "data-qdrant-2".into(),
                    path: "/qdrant/storage".into(),
                }),
                termination_log: TERMINATION_LOG.into(),
            }),
            MoverTask::Snapshot(SnapshotTask {
                dir: dir(false),
                collection: None,
                node: "a b".into(),
                identity: None,
                format: None,
                termination_log: "/tmp/log".into(),
            }),
            MoverTask::Restore(RestoreTask {
                dir: dir(true),
                location: "s3://b/p/c/x.snapshot".into(),
                collection: Some("copy".into()),
                source_collection: Some("products".into()),
                priority: Priority::NoSync,
                checksum: Some("ab".repeat(32)),
                shard: Some(3),
                limits: LimitArgs {
                    max_entries: 10,
                    max_bytes: 1 << 30,
                    max_hole_bytes: 1 << 20,
                    max_disk_bytes: Some(1 << 25),
                },
                termination_log: TERMINATION_LOG.into(),
            }),
            MoverTask::Restore(RestoreTask {
                dir: dir(true),
                location: "full-snapshot-n-1.snapshot".into(),
                collection: None,
                source_collection: None,
                priority: Priority::Replica,
                checksum: None,
                shard: None,
                limits: LimitArgs::default(),
                termination_log: TERMINATION_LOG.into(),
            }),
            MoverTask::Delete(DeleteTask {
                keys: vec!["c/a.snapshot".into(), "--looks-like-a-flag".into()],
                termination_log: TERMINATION_LOG.into(),
            }),
            MoverTask::ApiSnapshot(ApiSnapshotTask {
                qdrant: QdrantEndpoint {
                    qdrant_url: "https://qdrant-1.qdrant-headless.search.svc:6333".into(),
                    qdrant_timeout: 60,
                },
                collection: Some("products".into()),
                node: "qdrant-1".into(),
                identity: None,
                termination_log: TERMINATION_LOG.into(),
            }),
            MoverTask::ApiRestore(ApiRestoreTask {
                qdrant: QdrantEndpoint {
                    qdrant_url: "http://qdrant-0.q:6333".into(),
                    qdrant_timeout: 3600,
                },
                location: "s3://b/products/x.snapshot".into(),
                collection: "products".into(),
                shard: Some(1),
                priority: Priority::Replica,
                checksum: Some("cd".repeat(32)),
                termination_log: "/tmp/log".into(),
            }),
        ];
        for task in tasks {
            let args = task.args();
            let parsed =
                Mover::try_parse_from(std::iter::once("mover".to_owned()).chain(args.clone()))
                    .unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert_eq!(parsed.task, task, "{args:?}");
            assert_eq!(args[0], task.operation());
        }
    }

    #[test]
    fn storage_survives_the_environment_and_the_configuration_loader() {
        use crate::config::{Config, StorageKind};
        let s3 = MoverStorage::S3 {
            bucket: "snaps".into(),
            prefix: "ns/team".into(),
            region: Some("eu-west-1".into()),
            endpoint_url: Some("http://minio:9000".into()),
            force_path_style: Some(true),
            credentials: Some(SecretKeys {
                secret: "s3".into(),
                access_key_id_key: "id".into(),
                secret_access_key_key: "secret".into(),
            }),
            sse: Box::new(MoverSse {
                mode: None,
                kms_key_id: None,
                customer_key: Some(("sse".into(), "key".into())),
            }),
        };
        // The kubelet resolves Secret keys; here, into their key names.
        let resolved = |storage: &MoverStorage| {
            storage
                .env()
                .into_iter()
                .map(|(name, value)| match value {
                    EnvValue::Value(v) => (name, v),
                    EnvValue::SecretKey { secret, key } => (name, format!("{secret}:{key}")),
                })
                .collect::<Vec<_>>()
        };
        let config = Config::load_from(None, resolved(&s3)).unwrap().storage;
        assert_eq!(config.snapshots_path, PathBuf::from("ns/team"));
        assert_eq!(config.snapshots_config.snapshots_storage, StorageKind::S3);
        let c = config.snapshots_config.s3_config.unwrap();
        assert_eq!(
            (
                c.bucket.as_str(),
                c.region.as_deref(),
                c.endpoint_url.as_deref()
            ),
            ("snaps", Some("eu-west-1"), Some("http://minio:9000"))
        );
        assert_eq!(c.force_path_style, Some(true));
        assert_eq!(c.access_key.unwrap().expose(), "s3:id");
        assert_eq!(c.secret_key.unwrap().expose(), "s3:secret");
        assert_eq!(c.sse_customer_key.unwrap().expose(), "sse:key");
        let kms = MoverStorage::S3 {
            bucket: "snaps".into(),
            prefix: String::new(),
            region: None,
            endpoint_url: None,
            force_path_style: None,
            credentials: None,
            sse: Box::new(MoverSse {
                mode: Some("aws:kms".into()),
                kms_key_id: Some("k-1".into()),
                customer_key: None,
            }),
        };
        let config = Config::load_from(None, resolved(&kms)).unwrap().storage;
        let c = config.snapshots_config.s3_config.unwrap();
        assert_eq!(c.server_side_encryption.as_deref(), Some("aws:kms"));
        assert_eq!(c.sse_kms_key_id.as_deref(), Some("k-1"));

        let local = MoverStorage::Local {
            snapshots_path: "/snapshots/backups".into(),
        };
        let config = Config::load_from(None, resolved(&local)).unwrap().storage;
        assert_eq!(config.snapshots_path, PathBuf::from("/snapshots/backups"));
        assert_eq!(
            config.snapshots_config.snapshots_storage,
            StorageKind::Local
        );
    }

    #[test]
    fn reports_round_trip_and_fit_the_termination_message() {
        let report = MoverReport {
            error: Some("é".repeat(5000)),
            ..MoverReport::default()
        };
        let text = report.to_message();
        assert!(text.len() <= MAX_REPORT, "{}", text.len());
        let back: MoverReport = serde_json::from_str(&text).unwrap();
        assert!(back.error.unwrap().ends_with("..."));
        let ok = MoverReport {
            key: Some("c/x.snapshot".into()),
            location: Some("s3://b/c/x.snapshot".into()),
            size: Some(12),
            ..MoverReport::default()
        };
        assert_eq!(
            serde_json::from_str::<MoverReport>(&ok.to_message()).unwrap(),
            ok
        );
    }
}
