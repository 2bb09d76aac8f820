//! The command line: `snapshot` (create, list, delete, download, upload) and `restore`, on a
//! local storage directory and the configured snapshot storage.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

use crate::config::{Config, ConfigError};
use crate::engine::manifest::Format;
use crate::engine::restore::{Limits, Outcome, Priority, RestoreSpec, Restored, Selection};
use crate::engine::{name, readahead};
use crate::format::human_bytes;
use crate::ops::{self, OpsError, Progress, SnapshotRequest};
use crate::protocol::MoverTask;
use crate::qdrant_api;
use crate::safefs::Anchored;
use crate::source::{self, Context, Location, Pace};
use crate::storage::{ObjectInfo, Storage, StorageError};

/// Snapshots and restores of a storage directory (Qdrant's layout), locally or from the
/// Kubernetes operator's mover Jobs.
#[derive(Debug, Parser)]
#[command(name = "snapshot-operator", version, about, max_term_width = 100)]
pub struct Cli {
    /// Configuration file (YAML with a Qdrant-style `storage` section); environment variables
    /// SNAPSHOT_OPERATOR__STORAGE__... override it.
    #[arg(
        long,
        global = true,
        env = "SNAPSHOT_OPERATOR_CONFIG",
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,
    /// Log filter: error, warn, info, debug, trace, or a tracing filter such as
    /// `snapshot_operator=debug`.
    #[arg(
        long,
        global = true,
        env = "SNAPSHOT_OPERATOR_LOG",
        default_value = "info"
    )]
    pub log: String,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, list, delete, download or upload snapshots.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Restore a collection or a full storage from a snapshot (Qdrant's --snapshot and
    /// --storage-snapshot startup flags).
    Restore(RestoreArgs),
    /// Print the CustomResourceDefinitions (YAML), as in crds/.
    Crd,
    /// Run the Kubernetes operator.
    Controller(crate::controller::ControllerArgs),
    /// What mover Jobs run: one engine operation, its result as JSON in the termination
    /// message.
    #[command(subcommand, hide = true)]
    Mover(MoverTask),
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Snapshot one collection (--collection) or the whole storage directory.
    Create(CreateArgs),
    /// List snapshots in the configured storage.
    List(ListArgs),
    /// Delete a snapshot and its checksum file.
    Delete(NameArgs),
    /// Download a snapshot, verifying its checksum.
    Download(DownloadArgs),
    /// Put an existing archive (and its checksum) into the configured storage.
    Upload(UploadArgs),
    /// Delete the archives a retention policy does not keep, per collection and node (the
    /// newest of each always stays), with their checksums; says what it keeps and why.
    Prune(PruneArgs),
}

/// Output format of results.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("from").required(true).args(["storage_path", "qdrant_url"])))]
pub struct CreateArgs {
    /// The storage directory (Qdrant's ./storage): collections are in <DIR>/collections/.
    #[arg(long, value_name = "DIR")]
    pub storage_path: Option<PathBuf>,
    #[command(flatten)]
    pub qdrant: QdrantArgs,
    /// Snapshot this collection only; omit for a full-storage snapshot.
    #[arg(long)]
    pub collection: Option<String>,
    /// Node name in the archive name and manifest (default: the host name).
    #[arg(long)]
    pub node: Option<String>,
    /// The archive's format: qdrant (Qdrant's own snapshot, which Qdrant recovers) or files
    /// (the storage directory's files). Default: qdrant for a Qdrant storage directory;
    /// always qdrant through --qdrant-url.
    #[arg(long, conflicts_with = "qdrant_url", value_parser = PossibleValuesParser::new(Format::NAMES)
        .map(|s| s.parse::<Format>().expect("listed values parse")))]
    pub format: Option<Format>,
    #[command(flatten)]
    pub encrypt: EncryptArgs,
    #[arg(long, short, value_enum, default_value_t)]
    pub output: Output,
}

/// Encrypting new archives (the age format): to public keys only.
#[derive(Debug, Args)]
pub struct EncryptArgs {
    /// Encrypt the archive to this age recipient (a public key, age1…, as `age-keygen -y`
    /// prints it); repeatable. Default: those of $SNAPSHOT_OPERATOR_AGE_RECIPIENTS (one per
    /// line), else none (stored plain).
    #[arg(long, value_name = "AGE1…", conflicts_with = "qdrant_url")]
    pub recipient: Vec<String>,
    /// Encrypt to the recipients listed in FILE (one per line, `#` comments: age's -R).
    #[arg(long, value_name = "FILE", conflicts_with = "qdrant_url")]
    pub recipients_file: Vec<PathBuf>,
}

impl EncryptArgs {
    /// The recipients given, `None` for none.
    fn recipients(&self) -> Result<Option<crate::crypt::Recipients>> {
        use crate::crypt::Recipients;
        if self.recipient.is_empty() && self.recipients_file.is_empty() {
            return Ok(Recipients::from_env()?);
        }
        let mut texts = self.recipient.clone();
        for file in &self.recipients_file {
            texts.push(read_key_file(file)?);
        }
        Ok(Some(Recipients::parse_all("the recipients given", &texts)?))
    }
}

/// Reading encrypted archives (the age format).
#[derive(Debug, Args)]
pub struct DecryptArgs {
    /// Read encrypted archives with the age identities in FILE (private keys, as
    /// `age-keygen` writes them); repeatable, and a file may hold several: after a key
    /// rotation, give the new key and the old ones. Default: those of
    /// $SNAPSHOT_OPERATOR_AGE_IDENTITIES (an identity file's text).
    #[arg(long, value_name = "FILE")]
    pub identity_file: Vec<PathBuf>,
}

impl DecryptArgs {
    /// The identities given (none: only plain archives are read).
    fn identities(&self) -> Result<crate::crypt::Identities> {
        use crate::crypt::Identities;
        if self.identity_file.is_empty() {
            return Ok(Identities::from_env()?);
        }
        let texts = (self.identity_file.iter())
            .map(|file| read_key_file(file))
            .collect::<Result<Vec<_>>>()?;
        Ok(Identities::parse_all("the identity files given", &texts)?)
    }
}

/// The text of a key file.
fn read_key_file(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| {
        Box::new(CliError::Input {
            path: path.to_owned(),
            source,
        })
    })
}

/// A running Qdrant's REST API, instead of its storage directory.
#[derive(Debug, Args)]
pub struct QdrantArgs {
    /// Go through this Qdrant's REST API (http(s)://host:6333): Qdrant makes the snapshot
    /// while it keeps running, or recovers the archive uploaded to it.
    #[arg(long, value_name = "URL")]
    pub qdrant_url: Option<String>,
    /// The api-key of that Qdrant (its service.api_key).
    #[arg(
        long,
        env = "QDRANT_API_KEY",
        hide_env_values = true,
        requires = "qdrant_url"
    )]
    pub qdrant_api_key: Option<String>,
    /// PEM certificates of the CAs that sign that Qdrant's certificate (https), trusted
    /// besides the system's.
    #[arg(long, value_name = "FILE", requires = "qdrant_url")]
    pub qdrant_ca: Option<PathBuf>,
    /// How long a call to Qdrant may take (making the snapshot of a large collection, or
    /// recovering one, takes minutes).
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 3600,
        requires = "qdrant_url"
    )]
    pub qdrant_timeout: u64,
}

impl QdrantArgs {
    /// The API, when a URL is given.
    fn api(&self) -> Result<Option<qdrant_api::Qdrant>> {
        let Some(url) = &self.qdrant_url else {
            return Ok(None);
        };
        let ca_pem = match &self.qdrant_ca {
            Some(path) => Some(std::fs::read(path).map_err(|e| {
                CliError::Usage(format!("cannot read --qdrant-ca {}: {e}", path.display()))
            })?),
            None => None,
        };
        let access = qdrant_api::Access {
            api_key: self.qdrant_api_key.clone(),
            ca_pem,
        };
        let timeout = Duration::from_secs(self.qdrant_timeout);
        let api = qdrant_api::Qdrant::new(url, access, timeout).map_err(OpsError::from)?;
        Ok(Some(api))
    }
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only snapshots of this collection.
    #[arg(long)]
    pub collection: Option<String>,
    #[arg(long, short, value_enum, default_value_t)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Only the archives of this collection.
    #[arg(long)]
    pub collection: Option<String>,
    #[command(flatten)]
    pub policy: crate::retention::Policy,
    /// The IANA time zone the hours, days, weeks, months and years are counted in.
    #[arg(long, default_value = "UTC")]
    pub time_zone: String,
    /// Say what would be deleted, delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long, short, value_enum, default_value_t)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct NameArgs {
    /// Snapshot name (as `snapshot list` shows it), or COLLECTION/NAME.
    pub name: String,
    /// The snapshot's collection, when the name alone is ambiguous.
    #[arg(long)]
    pub collection: Option<String>,
}

#[derive(Debug, Args)]
pub struct DownloadArgs {
    #[command(flatten)]
    pub name: NameArgs,
    /// Write to FILE (`-` for standard output); default: the snapshot's name here.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Decrypt an encrypted archive with these identities as it is written (its checksum is
    /// still verified, over the bytes stored); without any, it is written as stored.
    #[command(flatten)]
    pub decrypt: DecryptArgs,
    #[command(flatten)]
    pub pace: PaceArgs,
}

/// Bounds on downloads from http(s) and S3 (see [`Pace`]).
#[derive(Debug, Args)]
pub struct PaceArgs {
    /// Fail a download from http(s) or S3 that receives nothing for this many seconds; the
    /// minimum rate applies once this long has passed.
    #[arg(long, alias = "http-timeout", value_name = "SECONDS",
        default_value_t = Pace::default().stall.as_secs())]
    pub download_timeout: u64,
    /// Fail a download from http(s) or S3 that has not finished after this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = Pace::default().deadline.as_secs())]
    pub download_deadline: u64,
    /// Fail a download from http(s) or S3 whose average rate falls below this many bytes
    /// per second (0: no minimum).
    #[arg(long, value_name = "BYTES", default_value_t = Pace::default().min_rate)]
    pub min_download_rate: u64,
}

impl PaceArgs {
    fn pace(&self) -> Pace {
        Pace {
            stall: Duration::from_secs(self.download_timeout),
            deadline: Duration::from_secs(self.download_deadline),
            min_rate: self.min_download_rate,
        }
    }
}

#[derive(Debug, Args)]
pub struct UploadArgs {
    /// The archive to upload.
    pub file: PathBuf,
    /// Expected SHA-256; default: FILE.checksum when present. The upload fails on mismatch.
    #[arg(long)]
    pub checksum: Option<String>,
    /// The collection a collection or shard snapshot Qdrant made belongs to (ours say it).
    #[arg(long)]
    pub collection: Option<String>,
    /// An encrypted archive is read with these to learn its collection (it is stored as it
    /// is, encrypted).
    #[command(flatten)]
    pub decrypt: DecryptArgs,
    #[arg(long, short, value_enum, default_value_t)]
    pub output: Output,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("source").required(true).args(["snapshot", "storage_snapshot"])))]
#[command(group(ArgGroup::new("into").required(true).args(["storage_path", "qdrant_url"])))]
pub struct RestoreArgs {
    /// The storage directory to restore into (created if absent).
    #[arg(long, value_name = "DIR")]
    pub storage_path: Option<PathBuf>,
    #[command(flatten)]
    pub qdrant: QdrantArgs,
    /// Restore a collection: LOCATION:COLLECTION, where LOCATION is a path, a snapshot name in
    /// the configured storage, file://..., http(s)://... or s3://bucket/key. Repeatable.
    #[arg(long, value_name = "LOCATION:COLLECTION")]
    pub snapshot: Vec<String>,
    /// Restore a full-storage snapshot from LOCATION.
    #[arg(long, value_name = "LOCATION", conflicts_with = "snapshot")]
    pub storage_snapshot: Option<String>,
    /// Take this collection out of a full-storage snapshot (default: COLLECTION).
    #[arg(long, value_name = "NAME")]
    pub from_collection: Option<String>,
    /// Restore a Qdrant shard snapshot as this shard of COLLECTION (default 0).
    #[arg(long, value_name = "N", requires = "snapshot")]
    pub shard: Option<u32>,
    /// What wins when a collection already exists: replica keeps existing data (and exits 0:
    /// the choice for an initContainer that runs at every pod start), snapshot replaces it
    /// atomically, no_sync writes snapshot files over existing ones. Without it (or
    /// --force-snapshot), an existing collection is an error, as in Qdrant.
    #[arg(long, value_parser = PossibleValuesParser::new(Priority::NAMES)
        .map(|s| s.parse::<Priority>().expect("listed values parse")))]
    pub priority: Option<Priority>,
    /// Replace existing collections (Qdrant's --force-snapshot; same as --priority snapshot).
    #[arg(long, conflicts_with = "priority")]
    pub force_snapshot: bool,
    /// Expected SHA-256 of the archive; nothing changes when it differs.
    #[arg(long, value_name = "SHA256")]
    pub checksum: Option<String>,
    /// API key sent as the `api-key` header to http(s) locations (to their origin only: a
    /// redirect to another host, port or scheme does not get it).
    #[arg(long, env = "SNAPSHOT_OPERATOR_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    #[command(flatten)]
    pub pace: PaceArgs,
    #[command(flatten)]
    pub limits: crate::protocol::LimitArgs,
    #[command(flatten)]
    pub decrypt: DecryptArgs,
    #[arg(long, short, value_enum, default_value_t)]
    pub output: Output,
}

/// How long the process waits for clean-up before it exits.
const CLEANUP_PATIENCE: Duration = Duration::from_secs(150);

/// Waits for SIGINT or SIGTERM; returns its name.
async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("interrupted by {0}; partial work was cleaned up")]
    Interrupted(&'static str),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Ops(#[from] OpsError),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Controller(#[from] crate::controller::ControllerError),
    #[error("failed to write {path}")]
    Output {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to read {path}")]
    Input {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl<E: Into<OpsError>> From<E> for Box<CliError> {
    fn from(e: E) -> Self {
        Box::new(CliError::Ops(e.into()))
    }
}

type Result<T, E = Box<CliError>> = std::result::Result<T, E>;

/// What a command says that works on a storage directory or through Qdrant's API but was
/// given neither (clap's argument groups ask for one already).
fn neither_dir_nor_qdrant() -> CliError {
    CliError::Usage("give --storage-path DIR or --qdrant-url URL".into())
}

impl Cli {
    /// Sets up logging to standard error.
    pub fn init_logging(&self) {
        let filter = tracing_subscriber::EnvFilter::try_new(&self.log)
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal());
        match self.log_format {
            LogFormat::Text => builder.init(),
            LogFormat::Json => builder.json().init(),
        }
    }

    /// Runs the command. SIGINT or SIGTERM stops it; clean-up (aborting S3 uploads) is
    /// waited for either way. The controller handles the signals itself (it finishes what is
    /// in flight and releases its Lease, then exits with status 0).
    pub async fn run(self) -> Result<ExitCode, CliError> {
        if let Command::Controller(args) = self.command {
            crate::controller::run(args).await?;
            return Ok(ExitCode::SUCCESS);
        }
        let config = Config::load(self.config.as_deref())?;
        let work = async {
            match self.command {
                Command::Snapshot(cmd) => run_snapshot(cmd, &config).await,
                Command::Restore(args) => restore(args, &config).await,
                Command::Controller(_) => unreachable!("run above"),
                Command::Mover(task) => {
                    ops::run_mover(task, &config.storage).await?;
                    Ok(ExitCode::SUCCESS)
                }
                Command::Crd => {
                    for (_, yaml) in crate::api::crd_documents() {
                        print!("---\n{yaml}");
                    }
                    Ok(ExitCode::SUCCESS)
                }
            }
        };
        let result = tokio::select! {
            result = work => result.map_err(|e| *e),
            signal = shutdown_signal() => Err(CliError::Interrupted(signal)),
        };
        let cleanups = crate::storage::s3::cleanups();
        cleanups.close();
        if tokio::time::timeout(CLEANUP_PATIENCE, cleanups.wait())
            .await
            .is_err()
        {
            tracing::error!("gave up waiting for clean-up after {CLEANUP_PATIENCE:?}");
        }
        result
    }
}

async fn run_snapshot(cmd: SnapshotCommand, config: &Config) -> Result<ExitCode> {
    let (storage, _) = crate::storage::open(&config.storage).await?;
    match cmd {
        SnapshotCommand::Create(args) => create(args, config, storage.as_ref()).await,
        SnapshotCommand::List(args) => list(args, storage.as_ref()).await,
        SnapshotCommand::Delete(args) => {
            let key = resolve(&args, storage.as_ref()).await?;
            storage.delete(&key).await?;
            println!("deleted {}", storage.location(&key));
            Ok(ExitCode::SUCCESS)
        }
        SnapshotCommand::Download(args) => download(args, storage.as_ref()).await,
        SnapshotCommand::Upload(args) => upload(args, storage.as_ref()).await,
        SnapshotCommand::Prune(args) => prune(args, storage.as_ref()).await,
    }
}

async fn prune(args: PruneArgs, storage: &dyn Storage) -> Result<ExitCode> {
    if args.policy.is_empty() {
        return Err(Box::new(CliError::Usage(
            "give at least one --keep-last/--keep-hourly/--keep-daily/--keep-weekly/\
             --keep-monthly/--keep-yearly rule above 0; prune deletes nothing by default"
                .into(),
        )));
    }
    let tz = jiff::tz::TimeZone::get(&args.time_zone).map_err(|_| {
        CliError::Usage(format!(
            "--time-zone {:?} is not an IANA time zone name",
            args.time_zone
        ))
    })?;
    let prefix = collection_prefix(args.collection.as_deref())?;
    let archives = storage.list(&prefix).await?;
    let mut plan = ops::plan_prune(&archives, &args.policy, &tz);
    // One archive that cannot be deleted holds up no other: each failure is said, and the
    // command fails at the end.
    let mut failed = 0;
    for entry in plan.iter_mut().filter(|p| !p.keep && !args.dry_run) {
        if let Err(e) = storage.delete(&entry.key).await {
            entry.error = Some(crate::format::error_line(&e));
            failed += 1;
        }
    }
    if args.output == Output::Json {
        print_json(&plan);
    } else {
        let removed = if args.dry_run {
            "would remove"
        } else {
            "removed"
        };
        let table: Vec<[String; 3]> = plan
            .iter()
            .map(|p| {
                let (action, why) = match (&p.error, p.keep) {
                    (Some(error), _) => ("failed", error.clone()),
                    (None, true) => ("keep", p.why.clone()),
                    (None, false) => (removed, p.why.clone()),
                };
                [action.to_owned(), p.key.clone(), why]
            })
            .collect();
        print_table(["ACTION", "ARCHIVE", "WHY"], &table);
    }
    if failed > 0 {
        return Err(Box::new(CliError::Usage(format!(
            "{failed} archive(s) the policy removes could not be deleted (see above); the \
             others were"
        ))));
    }
    Ok(ExitCode::SUCCESS)
}

async fn resolve(args: &NameArgs, storage: &dyn Storage) -> Result<String> {
    let text = match &args.collection {
        Some(c) => name::key(Some(c), &args.name),
        None => args.name.clone(),
    };
    Ok(source::resolve_key(storage, &text).await?)
}

/// The host name, the default node name of the CLI.
fn host_name() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

async fn create(args: CreateArgs, config: &Config, storage: &dyn Storage) -> Result<ExitCode> {
    let node = args.node.unwrap_or_else(host_name);
    let bar = ProgressBar::new(None, "archiving");
    let created = match (args.qdrant.api()?, args.storage_path) {
        (Some(api), _) => {
            ops::plain_through_api(args.encrypt.recipients()?.as_ref())?;
            let request = ops::ApiSnapshot {
                collection: args.collection,
                node,
                identity: None,
            };
            ops::snapshot_through_api(&api, storage, request, bar.progress()).await?
        }
        (None, Some(storage_path)) => {
            let mut exclude = vec![config.storage.snapshots_path.clone()];
            exclude.extend(config.storage.temp_path.clone());
            let request = SnapshotRequest {
                storage: Anchored::trusted(storage_path),
                collection: args.collection,
                node,
                exclude,
                identity: None,
                format: args.format,
                encrypt_to: args.encrypt.recipients()?,
            };
            ops::create_snapshot(storage, request, bar.progress()).await?
        }
        (None, None) => return Err(Box::new(neither_dir_nor_qdrant())),
    };
    bar.finish();
    match args.output {
        Output::Json => print_json(&created),
        Output::Text => {
            println!("created {}", created.name);
            println!("  location  {}", created.archive.location);
            println!("  size      {}", human_bytes(created.archive.size));
            if let Some(sum) = &created.archive.checksum {
                println!("  sha256    {sum}");
            }
            if let Some(content) = &created.content {
                println!(
                    "  content   {} files, {} directories, {} of data",
                    content.files,
                    content.directories,
                    human_bytes(content.data_bytes)
                );
                for s in &content.skipped {
                    println!("  skipped   {} ({})", s.path, s.kind);
                }
            }
            if let Some(made) = &created.qdrant_snapshot {
                println!("  content   Qdrant's snapshot {made} (deleted from Qdrant since)");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct Listed<'a> {
    collection: Option<&'a str>,
    name: &'a str,
    #[serde(flatten)]
    info: &'a ObjectInfo,
}

/// The key prefix of a collection's archives (all archives without one).
fn collection_prefix(collection: Option<&str>) -> Result<String> {
    Ok(match collection {
        Some(c) => {
            name::validate("collection", c)?;
            format!("{c}/")
        }
        None => String::new(),
    })
}

async fn list(args: ListArgs, storage: &dyn Storage) -> Result<ExitCode> {
    let prefix = collection_prefix(args.collection.as_deref())?;
    let found = storage.list(&prefix).await?;
    let rows: Vec<Listed> = found
        .iter()
        .map(|info| {
            let (collection, name) = name::split_key(&info.key);
            Listed {
                collection,
                name,
                info,
            }
        })
        .collect();
    if args.output == Output::Json {
        print_json(&rows);
        return Ok(ExitCode::SUCCESS);
    }
    let table: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            [
                r.collection.unwrap_or("(full)").to_owned(),
                r.name.to_owned(),
                human_bytes(r.info.size),
                r.info
                    .modified
                    .map(|t| t.strftime("%Y-%m-%d %H:%M:%S").to_string())
                    .unwrap_or_default(),
                r.info.checksum.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    print_table(["COLLECTION", "NAME", "SIZE", "MODIFIED", "SHA256"], &table);
    Ok(ExitCode::SUCCESS)
}

async fn download(args: DownloadArgs, storage: &dyn Storage) -> Result<ExitCode> {
    let key = resolve(&args.name, storage).await?;
    let pace = args.pace.pace();
    // The deadline covers the whole download, its first requests too.
    let started = tokio::time::Instant::now();
    let location = storage.location(&key);
    let (expected, reader, size) =
        source::within_deadline(pace, started, location.clone(), async {
            let (reader, size) = storage.get(&key).await?;
            let expected = storage
                .sidecar(&key)
                .await?
                .expected(&storage.location(&name::checksum_key(&key)))?;
            Ok::<_, Box<CliError>>((expected, reader, size))
        })
        .await?;
    let reader = source::paced(reader, pace, &location, started);
    let (_, file_name) = name::split_key(&key);
    let target = args.output.unwrap_or_else(|| PathBuf::from(file_name));
    let to_stdout = target == Path::new("-");
    // Written into a file of a random name made for it (never one found there: a link
    // planted in its place is not followed), renamed over the target once verified.
    let partial = if to_stdout {
        None
    } else {
        Some(partial_file(&target)?)
    };
    let bar = ProgressBar::new(Some(size), "downloading");
    let progress = bar.progress();
    let out: Box<dyn Write + Send> = match &partial {
        None => Box::new(std::io::stdout()),
        Some(temp) => Box::new(temp.file().try_clone().map_err(|source| CliError::Output {
            path: target.clone(),
            source,
        })?),
    };
    let identities = args.decrypt.identities()?;
    let decrypt = !identities.is_empty();
    // Read and hash on one thread, write on another (see engine::readahead).
    let copied = tokio::task::spawn_blocking(move || {
        let mut out = ProgressWriter {
            inner: out,
            done: 0,
            progress,
        };
        readahead::with_read_ahead(reader.into_blocking(), u64::MAX, |input| {
            copy_out(input, &mut out, &identities)
        })
    })
    .await
    .expect("the download does not panic");
    bar.finish();
    // A failure drops the partial file, which removes it.
    let (written, hashed) = copied;
    let done = written?;
    let hashed = hashed.ok_or_else(|| StorageError::Body {
        source: std::io::Error::other("the download ended early"),
    })?;
    crate::storage::check_digest(&location, expected.as_deref(), &hashed.sha256)?;
    if let Some(temp) = &partial {
        keep(temp, &target)?;
        eprintln!(
            "downloaded {}{} to {} ({}, sha256 verified: {})",
            location,
            if decrypt { " (decrypted)" } else { "" },
            target.display(),
            human_bytes(done),
            if expected.is_some() {
                "yes"
            } else {
                "no checksum file"
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Copies what `input` gives to `out`, decrypted with `identities` when there are any.
fn copy_out(
    input: &mut readahead::ChunkReader,
    out: &mut ProgressWriter,
    identities: &crate::crypt::Identities,
) -> std::result::Result<u64, OpsError> {
    let copied = if identities.is_empty() {
        std::io::copy(input, out)
    } else {
        let mut plain = identities.plaintext(&mut *input)?;
        let copied = std::io::copy(&mut plain, out);
        drop(plain);
        // Whatever follows the last chunk is read (and hashed) too.
        copied.and_then(|n| std::io::copy(input, &mut std::io::sink()).map(|_| n))
    };
    let copied = copied.and_then(|n| out.flush().map(|()| n));
    copied.map_err(|source| OpsError::from(StorageError::Body { source }))
}

/// Makes the verified download `temp` durable, renamed over `target`.
fn keep(temp: &crate::safefs::TempFile, target: &Path) -> Result<()> {
    let file_name = target.file_name().unwrap_or_default();
    temp.file()
        .sync_all()
        .and_then(|()| temp.persist(file_name))
        .map_err(|source| {
            Box::new(CliError::Output {
                path: target.to_owned(),
                source,
            })
        })
}

/// A new file of a random name beside `target` (in the directory named with it, as given).
fn partial_file(target: &Path) -> Result<crate::safefs::TempFile> {
    let output_err = |source| {
        Box::new(CliError::Output {
            path: target.to_owned(),
            source,
        })
    };
    if target.file_name().is_none() {
        return Err(output_err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a file name",
        )));
    }
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = crate::safefs::Dir::open(parent).map_err(output_err)?;
    crate::safefs::TempFile::create_named(&dir).map_err(output_err)
}

/// Reports the bytes written through it.
struct ProgressWriter {
    inner: Box<dyn Write + Send>,
    done: u64,
    progress: Progress,
}

impl Write for ProgressWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.done += n as u64;
        (self.progress)(self.done);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

async fn upload(args: UploadArgs, storage: &dyn Storage) -> Result<ExitCode> {
    let described = {
        let file = std::fs::File::open(&args.file).map_err(|source| {
            OpsError::Source(source::SourceError::Open {
                path: args.file.clone(),
                source,
            })
        })?;
        // An encrypted archive says what it is once decrypted; it is uploaded as it is.
        let identities = args.decrypt.identities()?;
        let plain = identities.plaintext(std::io::BufReader::new(file))?;
        crate::engine::restore::describe(plain)?
    };
    let collection = ops::upload_collection(&described, args.collection.as_deref())?;
    let opened = source::open_file(&args.file, args.checksum.as_deref()).await?;
    let file_name = args
        .file
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| {
            CliError::Usage(format!(
                "{}: the archive's file name is not UTF-8 text; rename it",
                args.file.display()
            ))
        })?;
    let key = ops::upload_key(collection.as_deref(), file_name, jiff::Timestamp::now())?;
    let naming = move |attempt: u32| (attempt == 0).then(|| key.clone());
    let stored = storage
        .put(&naming, opened.reader, opened.checksum.as_deref())
        .await?;
    match args.output {
        Output::Json => print_json(&stored),
        Output::Text => println!(
            "uploaded {} to {} ({}, sha256 {})",
            args.file.display(),
            stored.location,
            human_bytes(stored.size),
            stored.checksum.as_deref().unwrap_or("-")
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// `LOCATION:COLLECTION`, split at the last `:` (locations may hold `:`).
fn split_snapshot_arg(arg: &str) -> Result<(&str, &str)> {
    arg.rsplit_once(':')
        .filter(|(loc, coll)| !loc.is_empty() && !coll.is_empty() && !coll.contains('/'))
        .ok_or_else(|| {
            Box::new(CliError::Usage(format!(
                "--snapshot {arg:?}: expected LOCATION:COLLECTION, e.g. ./products.snapshot:products"
            )))
        })
}

/// The restores `args` ask for: each archive's location and what to restore from it.
fn restore_jobs(args: &RestoreArgs) -> Result<Vec<(String, Selection)>> {
    let mut jobs = Vec::new();
    for arg in &args.snapshot {
        let (location, collection) = split_snapshot_arg(arg)?;
        jobs.push((
            location.to_owned(),
            Selection::Collection {
                from: args.from_collection.clone(),
                into: collection.to_owned(),
            },
        ));
    }
    if let Some(location) = &args.storage_snapshot {
        if args.from_collection.is_some() {
            return Err(Box::new(CliError::Usage(
                "--from-collection goes with --snapshot LOCATION:COLLECTION".into(),
            )));
        }
        jobs.push((location.clone(), Selection::Full));
    }
    if args.checksum.is_some() && jobs.len() > 1 {
        return Err(Box::new(CliError::Usage(
            "--checksum applies to one snapshot; restore them one at a time".into(),
        )));
    }
    Ok(jobs)
}

/// What a restore did, as text.
fn print_restored(restored: &Restored, from: &str, storage_path: &Path) {
    for c in &restored.collections {
        match c.outcome {
            Outcome::Restored => println!(
                "restored {} into {} from {from} ({}, sha256 {})",
                c.collection,
                storage_path.display(),
                human_bytes(restored.archive_bytes),
                restored.checksum
            ),
            Outcome::Skipped => println!(
                "skipped {}: {}",
                c.collection,
                c.reason.as_deref().unwrap_or_default()
            ),
        }
    }
    if restored.collections.is_empty() {
        println!(
            "restored {} from {from} (no collections in it)",
            storage_path.display()
        );
    }
}

async fn restore(args: RestoreArgs, config: &Config) -> Result<ExitCode> {
    let (storage, s3) = crate::storage::open(&config.storage).await?;
    let priority = if args.force_snapshot {
        Some(Priority::Snapshot)
    } else {
        args.priority
    };
    let jobs = restore_jobs(&args)?;
    let ctx = Context {
        storage,
        snapshots_path: config.storage.snapshots_path.clone(),
        api_key: args.api_key.clone(),
        pace: args.pace.pace(),
        s3,
        local_files: true,
    };
    let limits = Limits::from(args.limits);
    let identities = args.decrypt.identities()?.requiring_encryption();
    let into = match (args.qdrant.api()?, &args.storage_path) {
        (Some(api), _) => RestoreInto::Qdrant(api),
        (None, Some(path)) => RestoreInto::Storage(path.clone()),
        (None, None) => return Err(Box::new(neither_dir_nor_qdrant())),
    };
    let (mut results, mut recovered) = (Vec::new(), Vec::new());
    for (location, selection) in jobs {
        let opened =
            source::open(&Location::parse(&location)?, args.checksum.as_deref(), &ctx).await?;
        let from = opened.location.clone();
        let bar = ProgressBar::new(opened.size, "restoring");
        match &into {
            RestoreInto::Qdrant(api) => {
                let scope = api_scope(&selection, args.shard)?;
                let done =
                    ops::recover_through_api(api, opened, &scope, priority, bar.progress()).await;
                bar.finish();
                done?;
                if args.output == Output::Text {
                    println!("recovered {} in Qdrant from {from}", scope_text(&scope));
                }
                recovered.push(Recovered { scope, from });
            }
            RestoreInto::Storage(path) => {
                let spec = RestoreSpec {
                    storage: Anchored::trusted(path.clone()),
                    selection,
                    priority,
                    checksum: None,
                    limits,
                    shard: args.shard,
                    identities: identities.clone(),
                };
                let done = ops::restore_snapshot(opened, spec, bar.progress()).await;
                bar.finish();
                let restored = done?;
                if args.output == Output::Text {
                    print_restored(&restored, &from, path);
                }
                results.push(restored);
            }
        }
    }
    match (args.output, &into) {
        (Output::Json, RestoreInto::Storage(_)) => print_json(&results),
        (Output::Json, RestoreInto::Qdrant(_)) => print_json(&recovered),
        (Output::Text, _) => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// An archive a Qdrant recovered.
#[derive(Serialize)]
struct Recovered {
    #[serde(flatten)]
    scope: qdrant_api::Scope,
    from: String,
}

/// Where a restore goes.
enum RestoreInto {
    /// Into a storage directory, by the engine.
    Storage(PathBuf),
    /// Into a running Qdrant, which recovers each archive uploaded to it.
    Qdrant(qdrant_api::Qdrant),
}

/// What an archive is recovered as through Qdrant's API (pure).
fn api_scope(selection: &Selection, shard: Option<u32>) -> Result<qdrant_api::Scope> {
    use qdrant_api::Scope;
    match (selection, shard) {
        (Selection::Collection { from: Some(_), .. }, _) => Err(Box::new(CliError::Usage(
            "--from-collection takes a collection out of a full-storage snapshot, which Qdrant \
             recovers only at startup; restore it with --storage-path while Qdrant is stopped"
                .into(),
        ))),
        (Selection::Collection { into, .. }, shard) => Ok(Scope::of(into.clone(), shard)),
        (Selection::Full, _) => Err(Box::new(CliError::Usage(
            "Qdrant recovers a full-storage snapshot only at startup (its --storage-snapshot): \
             restore it with --storage-path while Qdrant is stopped"
                .into(),
        ))),
    }
}

fn scope_text(scope: &qdrant_api::Scope) -> String {
    use qdrant_api::Scope;
    match scope {
        Scope::Collection { collection } => format!("collection {collection}"),
        Scope::Shard { collection, shard } => format!("shard {shard} of collection {collection}"),
        Scope::Full => "the whole storage".into(),
    }
}

fn print_json<T: Serialize + ?Sized>(value: &T) {
    let text = serde_json::to_string_pretty(value).expect("results serialise");
    println!("{text}");
}

fn print_table<const N: usize>(header: [&str; N], rows: &[[String; N]]) {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = std::io::stdout().lock();
    let mut line = |cells: Vec<&str>| {
        let text: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", text.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// A progress bar on standard error when it is a terminal (not in CI or when redirected).
struct ProgressBar(Option<indicatif::ProgressBar>);

impl ProgressBar {
    fn new(total: Option<u64>, label: &'static str) -> Self {
        if !std::io::stderr().is_terminal() || std::env::var_os("CI").is_some() {
            return Self(None);
        }
        let bar = match total {
            Some(n) => indicatif::ProgressBar::new(n).with_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            ),
            None => indicatif::ProgressBar::new_spinner().with_style(
                indicatif::ProgressStyle::with_template("{spinner} {msg} {bytes} {bytes_per_sec}")
                    .expect("valid template"),
            ),
        };
        bar.set_message(label);
        bar.enable_steady_tick(Duration::from_millis(200));
        Self(Some(bar))
    }

    fn progress(&self) -> Progress {
        match &self.0 {
            Some(bar) => {
                let bar = bar.clone();
                Arc::new(move |n| bar.set_position(n))
            }
            None => ops::no_progress(),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_args_split_at_the_last_colon() {
        assert_eq!(
            split_snapshot_arg("https://h:6333/x.snapshot:products").unwrap(),
            ("https://h:6333/x.snapshot", "products")
        );
        assert_eq!(
            split_snapshot_arg("a.snapshot:c").unwrap(),
            ("a.snapshot", "c")
        );
        for bad in ["a.snapshot", "a.snapshot:", ":c", "http://h/x"] {
            assert!(split_snapshot_arg(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
