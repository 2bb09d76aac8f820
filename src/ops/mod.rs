//! The operations the CLI and the mover Jobs run: the blocking engine joined to async storage
//! and sources, with the engine's tar work on blocking threads and bounded pipes between.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;

use crate::config::StorageConfig;
use crate::engine::archive::{self, CreateError, CreateSpec};
use crate::engine::manifest::SnapshotIdentity;
use crate::engine::name;
use crate::engine::pipe::pipe;
use crate::engine::restore::{self, Outcome, RestoreSpec, Restored, Selection};
use crate::format::render_error;
use crate::protocol::{
    ApiRestoreTask, ApiSnapshotTask, DeleteTask, MoverReport, MoverTask, RestoreTask, SnapshotTask,
    StorageDir,
};
use crate::safefs::Anchored;
use crate::source::Opened;
use crate::source::{self, Location, Pace};
use crate::storage::{ObjectInfo, Reader, Storage, StorageError};

mod common;
mod qdrant;

pub use common::{Created, Meter, OpsError, Progress, archive_naming, no_progress};
pub use qdrant::{ApiSnapshot, plain_through_api, recover_through_api, snapshot_through_api};

/// Chunks in flight between the tar writer and the storage upload.
const PIPE_SLOTS: usize = 4;

/// What `snapshot prune` decides for one archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pruning {
    pub key: String,
    pub location: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collection: Option<String>,
    /// The node that took it (`None`: a name this program does not write; never removed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub taken: Option<Timestamp>,
    pub keep: bool,
    /// The retention rules that keep it, or why it is kept or removed.
    pub why: String,
    /// Why it could not be deleted, when it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Applies `policy` to the archives of each collection (full-storage archives apart) and
/// node, periods counted in `tz` (pure). An archive counts at the time its name says, unless
/// that is later than when it was stored (a name cannot make an archive newer than it is);
/// the last one stored of each collection and node is always kept, and so is any archive
/// whose name does not say its node and time.
pub fn plan_prune(
    archives: &[ObjectInfo],
    policy: &crate::retention::Policy,
    tz: &jiff::tz::TimeZone,
) -> Vec<Pruning> {
    use crate::retention::Stored;
    // (collection, node) -> (index in `archives`, its times, collision suffix)
    type Groups<'a> =
        std::collections::BTreeMap<(Option<&'a str>, &'a str), Vec<(usize, Stored, u32)>>;
    let mut groups = Groups::new();
    let mut plan: Vec<Pruning> = archives
        .iter()
        .enumerate()
        .map(|(i, info)| {
            let parsed = name::parse_archive(&info.key);
            let times = parsed.as_ref().map(|p| Stored {
                claimed: p.taken,
                stored: info.modified.unwrap_or(p.taken),
            });
            if let (Some(p), Some(times)) = (&parsed, times) {
                groups
                    .entry((p.collection, p.node))
                    .or_default()
                    .push((i, times, p.attempt));
            }
            Pruning {
                key: info.key.clone(),
                location: info.location.clone(),
                collection: name::split_key(&info.key).0.map(str::to_owned),
                node: parsed.as_ref().map(|p| p.node.to_owned()),
                taken: times.map(|t| t.at()),
                keep: true,
                why: "its name does not say its node and time".into(),
                error: None,
            }
        })
        .collect();
    for members in groups.values_mut() {
        // Newest first; of two taken in one second, the one named later.
        members.sort_by_key(|(_, times, attempt)| std::cmp::Reverse((times.at(), *attempt)));
        let items: Vec<Stored> = members.iter().map(|(_, times, _)| *times).collect();
        let decided = crate::retention::decide_stored(policy, &items, tz);
        for ((i, _, _), rules) in members.iter().zip(decided) {
            let entry = &mut plan[*i];
            entry.keep = !rules.is_empty();
            entry.why = if rules.is_empty() {
                "kept by no rule".into()
            } else {
                let names: Vec<String> = rules.iter().map(ToString::to_string).collect();
                names.join(",")
            };
        }
    }
    plan
}

/// How far ahead of this machine's clock an uploaded archive's name may say it was taken
/// (clocks of two machines disagree a little).
pub const MAX_CLOCK_AHEAD: jiff::SignedDuration = jiff::SignedDuration::from_mins(15);

/// The key an archive named `file_name` is uploaded under (its collection's folder, from its
/// manifest), refusing names that are not archive names or that say the archive was taken
/// in the future: retention counts an archive from when its name says it was taken (pure).
pub fn upload_key(
    collection: Option<&str>,
    file_name: &str,
    now: Timestamp,
) -> Result<String, OpsError> {
    let key = name::key(collection, file_name);
    crate::storage::validate_archive_key(&key)?;
    if let Some(parsed) = name::parse_archive(&key)
        && parsed.taken > now + MAX_CLOCK_AHEAD
    {
        return Err(OpsError::Usage(format!(
            "{file_name}: its name says it was taken at {}, in the future (this machine's \
             clock says {}); archives are pruned by the time in their names: rename it with \
             the time it was taken",
            parsed.taken,
            now.round(jiff::Unit::Second).unwrap_or(now)
        )));
    }
    Ok(key)
}

/// The collection an uploaded archive belongs to (its folder in the storage), from what its
/// start says (pure): ours say it; a collection or shard snapshot Qdrant made needs
/// `--collection`; full snapshots have none.
pub fn upload_collection(
    described: &crate::engine::restore::Described,
    given: Option<&str>,
) -> Result<Option<String>, OpsError> {
    use crate::engine::qdrant::Kind;
    use crate::engine::restore::Described;
    if let Some(given) = given {
        name::validate("collection", given)?;
    }
    match (described, given) {
        (Described::Ours(manifest), given) => match (&manifest.collection, given) {
            (Some(c), Some(given)) if c != given => Err(OpsError::Usage(format!(
                "the archive is a snapshot of collection {c:?}, not {given:?}"
            ))),
            (None, Some(_)) => Err(OpsError::Usage(
                "the archive is a full-storage snapshot: it goes without --collection".into(),
            )),
            (collection, _) => Ok(collection.clone()),
        },
        (Described::Qdrant(Some(Kind::Full)), None) => Ok(None),
        (Described::Qdrant(Some(Kind::Full)), Some(_)) => Err(OpsError::Usage(
            "the archive is a Qdrant full snapshot: it goes without --collection".into(),
        )),
        (Described::Qdrant(_), Some(given)) => Ok(Some(given.to_owned())),
        (Described::Qdrant(_), None) => Err(OpsError::Usage(
            "the archive is a collection or shard snapshot Qdrant made, which does not say its \
             collection: give it with --collection"
                .into(),
        )),
    }
}

/// What to snapshot.
#[derive(Debug, Clone)]
pub struct SnapshotRequest {
    /// The storage directory.
    pub storage: Anchored,
    pub collection: Option<String>,
    pub node: String,
    /// Directories inside the storage path never archived (local snapshots and temp paths).
    pub exclude: Vec<PathBuf>,
    /// The Snapshot resource it belongs to (movers), recorded in the manifest.
    pub identity: Option<SnapshotIdentity>,
    /// The archive's format (`None`: Qdrant's for a Qdrant storage directory, else files).
    pub format: Option<crate::engine::manifest::Format>,
    /// Encrypt the archive to these (`None`: stored plain).
    pub encrypt_to: Option<crate::crypt::Recipients>,
}

/// Creates a snapshot of `request` in `storage`.
pub async fn create_snapshot(
    storage: &dyn Storage,
    request: SnapshotRequest,
    progress: Progress,
) -> Result<Created, OpsError> {
    let spec = CreateSpec {
        storage: request.storage,
        collection: request.collection,
        node: request.node,
        created_at: Timestamp::now(),
        exclude: request.exclude,
        identity: request.identity,
        format: request.format,
    };
    let manifest = archive::plan(&spec)?;
    let naming = archive_naming(spec.collection.as_deref(), &spec.node, spec.created_at)?;

    let (writer, reader) = pipe(PIPE_SLOTS);
    let job_spec = spec.clone();
    let encrypt_to = request.encrypt_to;
    let encrypted = encrypt_to.is_some();
    let writer_task = tokio::task::spawn_blocking(move || {
        let mut writer = writer;
        let write = |out: &mut dyn std::io::Write| {
            archive::write_archive(&job_spec, &manifest, out, progress.as_ref())
        };
        let write_err = |source| CreateError::Write { source };
        let archived = match &encrypt_to {
            None => write(&mut writer)?,
            Some(recipients) => {
                let mut sealed = recipients.encrypt(&mut writer).map_err(write_err)?;
                let archived = write(&mut sealed)?;
                sealed.finish().map_err(write_err)?;
                archived
            }
        };
        writer.finish().map_err(write_err)?;
        Ok::<_, CreateError>(archived)
    });
    let stored = storage.put(&naming, Reader::Chunks(reader), None).await;
    let written = writer_task
        .await
        .expect("the archive writer does not panic");
    let (archive, content) = match (stored, written) {
        (Ok(archive), Ok(content)) => (archive, content),
        // The writer failed first: that is the cause, the storage only saw the stream end.
        (_, Err(e)) if !matches!(e, CreateError::Write { .. }) => return Err(e.into()),
        (Err(e), _) => return Err(e.into()),
        (Ok(_), Err(e)) => return Err(e.into()),
    };
    let (_, file_name) = name::split_key(&archive.key);
    Ok(Created {
        name: file_name.to_owned(),
        collection: spec.collection,
        node: spec.node,
        created_at: spec.created_at,
        archive,
        content: Some(content),
        qdrant_snapshot: None,
        encrypted,
    })
}

/// Restores the opened archive as `spec` says (its checksum from `source` unless set).
pub async fn restore_snapshot(
    source: Opened,
    mut spec: RestoreSpec,
    progress: Progress,
) -> Result<Restored, OpsError> {
    if spec.checksum.is_none() {
        spec.checksum = source.checksum;
    }
    let reader = source.reader;
    let restored = tokio::task::spawn_blocking(move || {
        restore::restore(&spec, reader.into_blocking(), progress.as_ref())
    })
    .await
    .expect("the restore does not panic")?;
    Ok(restored)
}

/// Runs a mover's task against the storage of its configuration, writes its report to the
/// task's termination log (and standard output), and returns the task's result.
pub async fn run_mover(task: MoverTask, storage: &StorageConfig) -> Result<(), OpsError> {
    let log = task.termination_log().to_owned();
    let result = match progress_every() {
        Ok(every) => run_task(task, storage, every).await,
        Err(e) => Err(e),
    };
    let report = match &result {
        Ok(report) => report.clone(),
        Err(e) => MoverReport {
            error: Some(render_error(e).trim_start_matches("error: ").to_owned()),
            ..MoverReport::default()
        },
    };
    let message = report.to_message();
    if let Err(e) = std::fs::write(&log, &message) {
        tracing::warn!(path = %log.display(), error = %e, "could not write the termination message");
    }
    println!("{message}");
    result.map(|_| ())
}

/// Runs a mover's task, printing its progress every `every` meanwhile.
async fn run_task(
    task: MoverTask,
    storage: &StorageConfig,
    every: Option<Duration>,
) -> Result<MoverReport, OpsError> {
    let meter = Arc::new(Meter::default());
    let _printing = every.map(|every| {
        let printer = tokio::spawn(common::print_progress(meter.clone(), every));
        tokio_util::task::AbortOnDropHandle::new(printer)
    });
    match task {
        MoverTask::Snapshot(task) => mover_snapshot(task, storage, &meter).await,
        MoverTask::Restore(task) => mover_restore(task, storage, &meter).await,
        MoverTask::Delete(task) => mover_delete(task, storage).await,
        MoverTask::ApiSnapshot(task) => mover_api_snapshot(task, storage, &meter).await,
        MoverTask::ApiRestore(task) => mover_api_restore(task, storage, &meter).await,
    }
}

/// How often the mover prints its progress, from [`crate::protocol::PROGRESS_EVERY_ENV`]
/// (absent: never).
fn progress_every() -> Result<Option<Duration>, OpsError> {
    let name = crate::protocol::PROGRESS_EVERY_ENV;
    let Some(value) = std::env::var_os(name) else {
        return Ok(None);
    };
    match value.to_str().and_then(|v| v.parse::<u64>().ok()) {
        Some(ms) if ms > 0 => Ok(Some(Duration::from_millis(ms))),
        _ => Err(OpsError::Usage(format!(
            "{name} must be a positive number of milliseconds, not {value:?}"
        ))),
    }
}

/// A mover's storage directory: beneath the workload's volume when its mount is given.
fn anchored(dir: StorageDir) -> Result<Anchored, OpsError> {
    match &dir.volume {
        None => Ok(Anchored::trusted(dir.storage_path)),
        Some(volume) => Anchored::within(volume, &dir.storage_path).ok_or_else(|| {
            OpsError::Usage(format!(
                "--storage-path {} is not inside --volume {}",
                dir.storage_path.display(),
                volume.display()
            ))
        }),
    }
}

async fn mover_snapshot(
    task: SnapshotTask,
    storage: &StorageConfig,
    meter: &Arc<Meter>,
) -> Result<MoverReport, OpsError> {
    let (store, _) = crate::storage::open(storage).await?;
    let request = SnapshotRequest {
        storage: anchored(task.dir)?,
        collection: task.collection,
        node: task.node,
        exclude: Vec::new(),
        identity: task.identity,
        format: task.format,
        encrypt_to: crate::crypt::Recipients::from_env()?,
    };
    let created = create_snapshot(store.as_ref(), request, meter.progress()).await?;
    Ok(created_report(created))
}

/// What a snapshot mover reports of the archive it stored.
fn created_report(created: Created) -> MoverReport {
    MoverReport {
        changed: created
            .content
            .as_ref()
            .and_then(|c| changed_while_read(&c.changed)),
        name: Some(created.name),
        key: Some(created.archive.key),
        location: Some(created.archive.location),
        size: Some(created.archive.size),
        checksum: created.archive.checksum,
        encrypted: created.encrypted,
        ..MoverReport::default()
    }
}

async fn mover_api_snapshot(
    task: ApiSnapshotTask,
    storage: &StorageConfig,
    meter: &Arc<Meter>,
) -> Result<MoverReport, OpsError> {
    let (store, _) = crate::storage::open(storage).await?;
    plain_through_api(crate::crypt::Recipients::from_env()?.as_ref())?;
    let api = task.qdrant.connect()?;
    let request = ApiSnapshot {
        collection: task.collection,
        node: task.node,
        identity: task.identity,
    };
    let created = snapshot_through_api(&api, store.as_ref(), request, meter.progress()).await?;
    Ok(created_report(created))
}

async fn mover_api_restore(
    task: ApiRestoreTask,
    storage: &StorageConfig,
    meter: &Arc<Meter>,
) -> Result<MoverReport, OpsError> {
    let api = task.qdrant.connect()?;
    let opened = mover_source(&task.location, task.checksum.as_deref(), storage).await?;
    meter.set_total(opened.size);
    let from = opened.location.clone();
    let checksum = opened.checksum.clone();
    let scope = crate::qdrant_api::Scope::of(task.collection, task.shard);
    recover_through_api(&api, opened, &scope, Some(task.priority), meter.progress()).await?;
    Ok(MoverReport {
        location: Some(from),
        size: Some(meter.done()),
        checksum,
        outcome: Some(Outcome::Restored),
        ..MoverReport::default()
    })
}

/// How many files changed while they were read, with the first few names (pure): short
/// enough for a termination message.
pub fn changed_while_read(paths: &[String]) -> Option<String> {
    const SHOWN: usize = 5;
    let (first, more) = paths.split_at(paths.len().min(SHOWN));
    let mut names: Vec<String> = first
        .iter()
        .map(|p| p.chars().take(120).collect())
        .collect();
    if !more.is_empty() {
        names.push(format!("and {} more", more.len()));
    }
    (!paths.is_empty()).then(|| {
        format!(
            "{} file(s) changed while they were read: {}",
            paths.len(),
            names.join(", ")
        )
    })
}

async fn mover_delete(task: DeleteTask, storage: &StorageConfig) -> Result<MoverReport, OpsError> {
    let (store, _) = crate::storage::open(storage).await?;
    delete_archives(store.as_ref(), &task.keys).await?;
    Ok(MoverReport::default())
}

/// Deletes the archives `keys` of `store` and their checksums; absent ones are fine.
pub async fn delete_archives(store: &dyn Storage, keys: &[String]) -> Result<(), StorageError> {
    for key in keys {
        match store.delete(key).await {
            Ok(()) | Err(StorageError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Opens what a mover restores: a key of its storage, or a remote location (never a file
/// of the machine it runs on).
async fn mover_source(
    location: &str,
    checksum: Option<&str>,
    storage: &StorageConfig,
) -> Result<Opened, OpsError> {
    let (store, s3) = crate::storage::open(storage).await?;
    let ctx = source::Context {
        storage: store,
        snapshots_path: storage.snapshots_path.clone(),
        api_key: None,
        pace: Pace::default(),
        s3,
        local_files: false,
    };
    Ok(source::open(&Location::parse(location)?, checksum, &ctx).await?)
}

async fn mover_restore(
    task: RestoreTask,
    storage: &StorageConfig,
    meter: &Arc<Meter>,
) -> Result<MoverReport, OpsError> {
    let opened = mover_source(&task.location, task.checksum.as_deref(), storage).await?;
    meter.set_total(opened.size);
    let from = opened.location.clone();
    let selection = match task.collection {
        Some(into) => Selection::Collection {
            from: task.source_collection,
            into,
        },
        None => Selection::Full,
    };
    let spec = RestoreSpec {
        storage: anchored(task.dir)?,
        selection,
        priority: Some(task.priority),
        checksum: None,
        limits: task.limits.into(),
        shard: task.shard,
        identities: crate::crypt::Identities::from_env()?.requiring_encryption(),
    };
    let restored = restore_snapshot(opened, spec, meter.progress()).await?;
    let skipped: Vec<String> = restored
        .collections
        .iter()
        .filter(|c| c.outcome == Outcome::Skipped)
        .filter_map(|c| c.reason.clone())
        .collect();
    let all_skipped =
        !restored.collections.is_empty() && skipped.len() == restored.collections.len();
    Ok(MoverReport {
        location: Some(from),
        size: Some(restored.archive_bytes),
        checksum: Some(restored.checksum),
        outcome: Some(if all_skipped {
            Outcome::Skipped
        } else {
            Outcome::Restored
        }),
        reason: (!skipped.is_empty()).then(|| skipped.join("; ")),
        ..MoverReport::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_files_are_counted_and_the_first_few_named() {
        assert_eq!(changed_while_read(&[]), None);
        let paths: Vec<String> = (0..7).map(|i| format!("collections/c/{i}")).collect();
        let said = changed_while_read(&paths).unwrap();
        assert!(
            said.starts_with("7 file(s) changed while they were read: collections/c/0,"),
            "{said}"
        );
        assert!(said.ends_with("collections/c/4, and 2 more"), "{said}");
        let long = vec!["x".repeat(10_000); 100];
        assert!(changed_while_read(&long).unwrap().len() < 1000);
    }

    #[test]
    fn uploads_keep_archive_names_from_the_past() {
        let now: Timestamp = "2026-03-07T10:00:00Z".parse().unwrap();
        let key = |c, n| upload_key(c, n, now);
        assert_eq!(
            key(Some("c"), "c-n0-2026-03-07-09-00-00.snapshot").unwrap(),
            "c/c-n0-2026-03-07-09-00-00.snapshot"
        );
        // A little ahead (another machine's clock): fine; far ahead: refused.
        assert!(key(Some("c"), "c-n0-2026-03-07-10-10-00.snapshot").is_ok());
        let future = key(Some("c"), "c-n0-2099-01-01-00-00-00.snapshot").unwrap_err();
        assert!(future.to_string().contains("in the future"), "{future}");
        // Other archive names are kept as they are; non-archive names are refused.
        assert!(key(None, "qdrant-made.snapshot").is_ok());
        for bad in ["x.snapshot.checksum", "x.tar", ".x.snapshot"] {
            assert!(key(Some("c"), bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn prune_decides_per_collection_and_node_and_keeps_names_it_does_not_know() {
        let info = |key: &str| ObjectInfo {
            key: key.into(),
            location: format!("/s/{key}"),
            size: 1,
            modified: None,
            checksum: None,
        };
        let archives = [
            info("products/products-n0-2026-03-05-02-00-00.snapshot"),
            info("products/products-n0-2026-03-06-02-00-00.snapshot"),
            info("products/products-n1-2026-03-01-02-00-00.snapshot"),
            info("products/products-n0-2026-03-06-02-00-00-1.snapshot"),
            info("products/someone-elses.snapshot"),
            info("full-snapshot-n0-2026-03-04-02-00-00.snapshot"),
            info("full-snapshot-n0-2026-03-05-02-00-00.snapshot"),
        ];
        let policy = crate::retention::Policy {
            keep_last: Some(1),
            ..Default::default()
        };
        let plan = plan_prune(&archives, &policy, &jiff::tz::TimeZone::UTC);
        let decided: Vec<(bool, &str)> = plan.iter().map(|p| (p.keep, p.why.as_str())).collect();
        assert_eq!(
            decided,
            [
                (false, "kept by no rule"),
                // Two in the same second: the one named later (`-1`) is the newer.
                (false, "kept by no rule"),
                // The only one of node n1: its newest.
                (true, "last"),
                (true, "last"),
                (true, "its name does not say its node and time"),
                (false, "kept by no rule"),
                (true, "last"),
            ]
        );
    }
}
