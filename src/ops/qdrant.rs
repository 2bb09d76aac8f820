//! Snapshots through Qdrant's own API, for a Qdrant that keeps running: Qdrant makes its
//! snapshot (consistent while it takes writes), which is streamed into the storage behind
//! our manifest (so it is our archive too: the catalog, `list` and our restore read it) and
//! then deleted from Qdrant's disk; and an archive uploaded to a running Qdrant, which
//! recovers it with the priority given.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, TryStreamExt};
use jiff::Timestamp;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::io::{ReaderStream, StreamReader};

use super::common::{Created, OpsError, Progress, archive_naming};
use crate::engine::archive::manifest_json;
use crate::engine::manifest::{Format, MANIFEST_ENTRY, Manifest, SnapshotIdentity};
use crate::engine::restore::{Described as Start, Priority};
use crate::engine::tarwrite::TarWriter;
use crate::qdrant_api::{ApiError, Described, Qdrant, Scope, Verified, random_hex};
use crate::source::Opened;
use crate::storage::{Reader, Storage};

/// What to snapshot through the API.
#[derive(Debug, Clone)]
pub struct ApiSnapshot {
    /// One collection, or (`None`) Qdrant's full snapshot.
    pub collection: Option<String>,
    /// The node (pod) it is taken on, for its name and manifest.
    pub node: String,
    /// The Snapshot resource it belongs to (movers), recorded in the manifest.
    pub identity: Option<SnapshotIdentity>,
}

/// Has Qdrant make a snapshot of `request` and streams it into `storage` behind our
/// manifest, checked against the size and SHA-256 Qdrant gives for it as it goes (a
/// mismatch stores nothing); then deletes it from Qdrant's disk, whether storing it worked
/// or not, so that Qdrant never holds more than the one snapshot being taken.
pub async fn snapshot_through_api(
    api: &Qdrant,
    storage: &dyn Storage,
    request: ApiSnapshot,
    progress: Progress,
) -> Result<Created, OpsError> {
    let created_at = Timestamp::now();
    let naming = archive_naming(request.collection.as_deref(), &request.node, created_at)?;
    let manifest = manifest(api, &request, created_at).await?;
    let head = manifest_entry(&manifest)?;
    let scope = match &request.collection {
        Some(c) => Scope::Collection {
            collection: c.clone(),
        },
        None => Scope::Full,
    };
    let made = api.create_snapshot(&scope).await?;
    tracing::info!(snapshot = %made.name, size = made.size, "Qdrant made its snapshot");
    let stored = async {
        let download = api.download(&scope, &made.name).await?;
        let body = counted(reader_of(download), progress);
        let body = std::io::Cursor::new(head).chain(Verified::new(body, made.clone()));
        Ok::<_, OpsError>(storage.put(&naming, Reader::stream(body), None).await?)
    }
    .await;
    if let Err(e) = api.delete_snapshot(&scope, &made.name).await {
        tracing::warn!(snapshot = %made.name, error = %crate::format::error_line(&e),
            "could not delete Qdrant's snapshot from its disk; delete it through its API");
    }
    let archive = stored?;
    let (_, file_name) = crate::engine::name::split_key(&archive.key);
    Ok(Created {
        name: file_name.to_owned(),
        collection: request.collection,
        node: request.node,
        created_at,
        archive,
        content: None,
        qdrant_snapshot: Some(made.name),
    })
}

/// Our manifest for Qdrant's snapshot of `request`: the collections and aliases it holds.
async fn manifest(
    api: &Qdrant,
    request: &ApiSnapshot,
    created_at: Timestamp,
) -> Result<Manifest, OpsError> {
    let collections = match &request.collection {
        Some(c) => vec![c.clone()],
        None => api.collections().await?,
    };
    let mut aliases = api.aliases().await?;
    aliases.retain(|_, collection| collections.contains(collection));
    Ok(Manifest::new(
        request.collection.clone(),
        request.node.clone(),
        created_at,
        collections,
        aliases,
        request.identity.clone(),
        Format::Qdrant,
    ))
}

/// The manifest as the first entry of a tar stream (no end: Qdrant's snapshot follows).
fn manifest_entry(manifest: &Manifest) -> Result<Vec<u8>, OpsError> {
    let json = manifest_json(manifest)?;
    let mtime = u64::try_from(manifest.created_at.as_second()).unwrap_or(0);
    let mut entry = Vec::new();
    TarWriter::new(&mut entry)
        .append_bytes(MANIFEST_ENTRY.as_bytes(), 0o644, mtime, &json)
        .expect("writing to memory does not fail");
    Ok(entry)
}

/// A download as a reader, its errors as I/O errors.
fn reader_of(
    stream: impl Stream<Item = reqwest::Result<Bytes>> + Send + Unpin + 'static,
) -> impl AsyncRead + Send + Unpin + 'static {
    StreamReader::new(stream.map_err(|e| {
        let kind = if e.is_timeout() {
            io::ErrorKind::TimedOut
        } else {
            io::ErrorKind::Other
        };
        io::Error::new(kind, e)
    }))
}

/// `reader`, reporting to `progress` the bytes read so far.
fn counted(
    reader: impl AsyncRead + Send + Unpin + 'static,
    progress: Progress,
) -> impl AsyncRead + Send + Unpin + 'static {
    let mut done = 0u64;
    let stream = ReaderStream::new(reader).inspect_ok(move |chunk| {
        done += chunk.len() as u64;
        progress(done);
    });
    StreamReader::new(stream)
}

/// The start of an archive read to tell what it is: as much as the catalog reads, and when
/// that is not enough, its manifest at most.
const FIRST_HEAD: u64 = crate::catalog::MANIFEST_PREFIX;
const MAX_HEAD: u64 = crate::engine::manifest::MAX_MANIFEST_BYTES + FIRST_HEAD;

/// Uploads the archive `opened` to Qdrant as a snapshot of `scope` (a collection or a
/// shard), which Qdrant recovers with `priority` after checking the archive's checksum.
/// Archives Qdrant cannot recover (our files format, full snapshots) are refused before
/// anything is sent.
pub async fn recover_through_api(
    api: &Qdrant,
    opened: Opened,
    scope: &Scope,
    priority: Option<Priority>,
    progress: Progress,
) -> Result<(), OpsError> {
    if priority == Some(Priority::Replica) {
        refuse_replica_over_replicas(api, scope).await?;
    }
    let mut reader = opened.reader.into_async();
    let mut head = Vec::new();
    (&mut reader)
        .take(FIRST_HEAD)
        .read_to_end(&mut head)
        .await
        .map_err(|source| crate::storage::StorageError::Body { source })?;
    let start = match crate::engine::restore::describe(head.as_slice()) {
        Ok(start) => start,
        Err(_) if head.len() as u64 == FIRST_HEAD => {
            (&mut reader)
                .take(MAX_HEAD - head.len() as u64)
                .read_to_end(&mut head)
                .await
                .map_err(|source| crate::storage::StorageError::Body { source })?;
            crate::engine::restore::describe(head.as_slice())?
        }
        Err(e) => return Err(e.into()),
    };
    recoverable(&start, &opened.location)?;
    let body = std::io::Cursor::new(head).chain(reader);
    let body = ReaderStream::new(counted(body, progress));
    clear_stale_uploads(api, scope).await;
    // A name of its own: two restores of one collection never share the uploaded file.
    let name = format!("{UPLOAD_PREFIX}{}{UPLOAD_SUFFIX}", random_hex());
    let recovered = api
        .upload((scope, &name), body, (priority, opened.checksum.as_deref()))
        .await;
    match api.delete_snapshot(scope, &name).await {
        // Never saved (the upload failed first).
        Ok(()) | Err(ApiError::Refused { status: 404, .. }) => {}
        Err(e) => tracing::warn!(snapshot = %name, error = %crate::format::error_line(&e),
            "could not delete the uploaded snapshot from Qdrant's disk; delete it through its API"),
    }
    Ok(recovered?)
}

/// Refuses priority `replica` where a shard recovered has an active replica on another
/// peer: those replicas' points would win anyway (the peer syncs from them), and Qdrant
/// (1.18.0 through 1.19.0) stops its cluster's consensus on that recovery, on every peer (it
/// submits the sync's shard transfer without a method, which every peer fails to apply).
async fn refuse_replica_over_replicas(api: &Qdrant, scope: &Scope) -> Result<(), OpsError> {
    let Some(collection) = scope.collection() else {
        return Ok(());
    };
    let mut shards = api.replicated_elsewhere(collection).await?;
    if let Scope::Shard { shard, .. } = scope {
        shards.retain(|s| s == shard);
    }
    if shards.is_empty() {
        return Ok(());
    }
    let shards: Vec<String> = shards.iter().map(u32::to_string).collect();
    Err(OpsError::Usage(format!(
        "priority replica: shard {} of collection {collection} has an active replica on another \
         peer, whose points would win anyway (this peer syncs from it), and Qdrant stops its \
         cluster's consensus on such a recovery (a shard transfer submitted without a method, \
         seen in 1.18 and 1.19); nothing was sent. Use priority snapshot for the archive's \
         points to win on every replica",
        shards.join(", ")
    )))
}

/// How the archives a restore uploads are named on Qdrant's disk: `restore-<32 hex>.snapshot`.
const UPLOAD_PREFIX: &str = "restore-";
const UPLOAD_SUFFIX: &str = ".snapshot";

/// Deletes the uploads of restores that did not finish (a mover killed while Qdrant
/// recovered: it never deleted its upload) from `scope`'s snapshots, so that they do not pile
/// up on Qdrant's disk. Best effort: what fails is logged, and the restore goes on.
async fn clear_stale_uploads(api: &Qdrant, scope: &Scope) {
    let listed = match api.snapshots(scope).await {
        Ok(listed) => listed,
        // A collection that is not there yet has none.
        Err(ApiError::Refused { status: 404, .. }) => return,
        Err(e) => {
            let error = crate::format::error_line(&e);
            return tracing::warn!(%error, "could not list Qdrant's snapshots to clear old uploads");
        }
    };
    for name in stale_uploads(&listed, Timestamp::now(), api.timeout()) {
        match api.delete_snapshot(scope, &name).await {
            Ok(()) => tracing::info!(snapshot = %name, "deleted an upload a restore left behind"),
            Err(e) => tracing::warn!(snapshot = %name, error = %crate::format::error_line(&e),
                "could not delete an upload a restore left behind"),
        }
    }
}

/// The uploads of ours among `listed` older than `older_than` at `now` (pure): no call of ours
/// lasts longer, so none of them belongs to a restore still running. Qdrant's own snapshots,
/// anyone else's, and files of unknown age are never named.
fn stale_uploads(listed: &[Described], now: Timestamp, older_than: Duration) -> Vec<String> {
    let ours = |name: &str| {
        let hex = name
            .strip_prefix(UPLOAD_PREFIX)
            .and_then(|n| n.strip_suffix(UPLOAD_SUFFIX));
        hex.is_some_and(|h| h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    let made = |time: &str| {
        let civil: jiff::civil::DateTime = time.parse().ok()?;
        civil
            .to_zoned(jiff::tz::TimeZone::UTC)
            .ok()
            .map(|z| z.timestamp())
    };
    let old = |snapshot: &Described| {
        let made = snapshot.creation_time.as_deref().and_then(made);
        made.is_some_and(|made| made < now && now.duration_since(made).unsigned_abs() > older_than)
    };
    listed
        .iter()
        .filter(|s| ours(&s.name) && old(s))
        .map(|s| s.name.clone())
        .collect()
}

/// Whether Qdrant can recover an archive that starts as `start` (pure).
fn recoverable(start: &Start, location: &str) -> Result<(), OpsError> {
    use crate::engine::manifest::Kind;
    let refuse = |why: &str| Err(OpsError::Usage(format!("{location}: {why}")));
    match start {
        Start::Ours(m) if m.format == Format::Files => refuse(
            "a snapshot in the files format, which Qdrant cannot recover: restore it into the \
             storage directory (restore --storage-path) while Qdrant is stopped",
        ),
        Start::Ours(m) if m.kind == Kind::Full => refuse(
            "a full-storage snapshot: Qdrant recovers those only at startup \
             (--storage-snapshot), or restore it with --storage-path while Qdrant is stopped",
        ),
        Start::Qdrant(Some(crate::engine::qdrant::Kind::Full)) => refuse(
            "a Qdrant full snapshot: Qdrant recovers those only at startup \
             (--storage-snapshot)",
        ),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_entry_is_a_tar_entry_that_restores_read_first() {
        let manifest = Manifest::new(
            Some("products".into()),
            "qdrant-0".into(),
            "2026-12-03T10:00:00Z".parse().unwrap(),
            vec!["products".into()],
            [("p".to_owned(), "products".to_owned())].into(),
            None,
            Format::Qdrant,
        );
        let entry = manifest_entry(&manifest).unwrap();
        assert_eq!(entry.len() % 512, 0);
        match crate::engine::restore::describe(entry.as_slice()).unwrap() {
            Start::Ours(read) => assert_eq!(*read, manifest),
            Start::Qdrant(kind) => panic!("read as Qdrant's {kind:?}"),
        }
    }

    #[test]
    fn only_uploads_of_ours_older_than_any_call_are_cleared() {
        let listed = |name: &str, time: Option<&str>| Described {
            name: name.into(),
            creation_time: time.map(Into::into),
            size: 1,
            checksum: None,
        };
        let hex = "0123456789abcdef0123456789abcdef";
        let stale = format!("restore-{hex}.snapshot");
        let listed = [
            listed(&stale, Some("2026-12-03T09:00:00")),
            listed(
                &format!("restore-{hex}.snapshot.tmp"),
                Some("2026-12-03T09:00:00"),
            ),
            listed(&stale.replace('0', "x"), Some("2026-12-03T09:00:00")),
            listed("restore-1.snapshot", Some("2026-12-03T09:00:00")),
            listed(
                "products-1-2026-12-03-09-00-00.snapshot",
                Some("2026-12-03T09:00:00"),
            ),
            listed(&stale.replace('1', "2"), Some("2026-12-03T09:59:00")),
            listed(&stale.replace('1', "3"), None),
            listed(&stale.replace('1', "4"), Some("not a time")),
            listed(&stale.replace('1', "5"), Some("2026-12-03T11:00:00")),
        ];
        let now: Timestamp = "2026-12-03T10:00:00Z".parse().unwrap();
        let hour = Duration::from_secs(3600);
        assert_eq!(stale_uploads(&listed, now, hour / 2), [stale]);
        assert!(stale_uploads(&listed, now, hour * 2).is_empty());
    }

    #[test]
    fn only_what_qdrant_can_recover_is_uploaded() {
        let ours = |format, collection: Option<&str>| {
            Start::Ours(Box::new(Manifest::new(
                collection.map(Into::into),
                "n".into(),
                Timestamp::UNIX_EPOCH,
                vec![],
                Default::default(),
                None,
                format,
            )))
        };
        assert!(recoverable(&ours(Format::Qdrant, Some("c")), "a").is_ok());
        assert!(recoverable(&Start::Qdrant(None), "a").is_ok());
        for refused in [
            ours(Format::Files, Some("c")),
            ours(Format::Qdrant, None),
            Start::Qdrant(Some(crate::engine::qdrant::Kind::Full)),
        ] {
            let why = recoverable(&refused, "a.snapshot").unwrap_err().to_string();
            assert!(why.starts_with("a.snapshot: "), "{why}");
        }
    }
}
