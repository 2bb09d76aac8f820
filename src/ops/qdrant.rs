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
use crate::qdrant_api::{ApiError, Qdrant, Scope, Verified, random_hex};
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
        encrypted: false,
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

/// Refuses recipients for a snapshot through Qdrant's API, which stores Qdrant's snapshot as
/// Qdrant made it: asked to encrypt, it never stores plain.
pub fn plain_through_api(recipients: Option<&crate::crypt::Recipients>) -> Result<(), OpsError> {
    match recipients {
        None => Ok(()),
        Some(_) => Err(OpsError::Usage(
            "a snapshot through Qdrant's API is stored as Qdrant made it, not encrypted: \
             snapshot the storage directory (--storage-path) to encrypt it, or give no \
             recipients"
                .into(),
        )),
    }
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
    clear_stale_uploads(api, scope).await;
    let mut reader = opened.reader.into_async();
    let mut head = Vec::new();
    (&mut reader)
        .take(FIRST_HEAD)
        .read_to_end(&mut head)
        .await
        .map_err(|source| crate::storage::StorageError::Body { source })?;
    if crate::crypt::is_encrypted(&head) {
        return Err(OpsError::Usage(format!(
            "{} is encrypted: Qdrant cannot recover it as it is; restore it into the storage \
             directory (method Volume, or --storage-path), which decrypts it, or decrypt it \
             first (snapshot download --identity-file)",
            opened.location
        )));
    }
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
    // A name of its own: two restores of one collection never share the uploaded file.
    let name = upload_name(Timestamp::now(), api.timeout());
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

/// How the archives a restore uploads are named on Qdrant's disk:
/// `restore-<deadline>-<16 hex>.snapshot`, the deadline (Unix seconds) the time by which the
/// restore's call has ended, one way or another.
const UPLOAD_PREFIX: &str = "restore-";
const UPLOAD_SUFFIX: &str = ".snapshot";
/// How long after its deadline an upload is left alone: Qdrant may go on recovering it
/// after the call that sent it timed out.
const UPLOAD_SLACK: Duration = Duration::from_secs(3600);

/// The name of an upload whose call ends by `now + timeout` (pure but for the random part).
fn upload_name(now: Timestamp, timeout: Duration) -> String {
    let deadline = now.as_second().saturating_add(timeout.as_secs() as i64);
    let hex = &random_hex()[..16];
    format!("{UPLOAD_PREFIX}{deadline}-{hex}{UPLOAD_SUFFIX}")
}

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
    let names: Vec<&str> = listed.iter().map(|s| s.name.as_str()).collect();
    for name in stale_uploads(&names, Timestamp::now()) {
        match api.delete_snapshot(scope, name).await {
            Ok(()) => tracing::info!(snapshot = %name, "deleted an upload a restore left behind"),
            Err(e) => tracing::warn!(snapshot = %name, error = %crate::format::error_line(&e),
                "could not delete an upload a restore left behind"),
        }
    }
}

/// The uploads of ours among `names` whose deadline passed more than [`UPLOAD_SLACK`] before
/// `now` (pure): none of them belongs to a restore still running, whatever its timeout.
/// Qdrant's own snapshots and anyone else's are never named.
fn stale_uploads<'a>(names: &[&'a str], now: Timestamp) -> Vec<&'a str> {
    let deadline = |name: &str| -> Option<i64> {
        let rest = name
            .strip_prefix(UPLOAD_PREFIX)?
            .strip_suffix(UPLOAD_SUFFIX)?;
        let (deadline, hex) = rest.split_once('-')?;
        let ours = hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit());
        // Digits only (`parse` alone would take a sign).
        let digits = !deadline.is_empty() && deadline.bytes().all(|b| b.is_ascii_digit());
        if !(ours && digits) {
            return None;
        }
        deadline.parse().ok()
    };
    let cutoff = now.as_second() - UPLOAD_SLACK.as_secs() as i64;
    let stale = |name: &&str| deadline(name).is_some_and(|d| d < cutoff);
    names.iter().copied().filter(stale).collect()
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
    fn only_uploads_of_ours_past_their_deadline_are_cleared() {
        let now: Timestamp = "2026-12-03T10:00:00Z".parse().unwrap();
        let made = upload_name(now, Duration::from_secs(60));
        let deadline = now.as_second() + 60;
        assert!(made.starts_with(&format!("restore-{deadline}-")), "{made}");
        assert_eq!(
            made.len(),
            "restore-".len() + 10 + 1 + 16 + ".snapshot".len()
        );
        // Its own, whatever the timeout: kept until an hour after its deadline.
        assert!(stale_uploads(&[&made], now).is_empty());
        let later = |secs| Timestamp::from_second(deadline + secs).unwrap();
        assert!(stale_uploads(&[&made], later(3600)).is_empty());
        assert_eq!(stale_uploads(&[&made], later(3601)), [made.as_str()]);
        // Nothing that is not named as ours.
        let hex = "0123456789abcdef";
        let others = [
            format!("restore-1000-{hex}.snapshot.tmp"),
            format!("restore-1000-{hex}0.snapshot"),
            format!("restore--{hex}.snapshot"),
            format!("restore-x1000-{hex}.snapshot"),
            "restore-0123456789abcdef0123456789abcdef.snapshot".to_owned(),
            "products-1-2026-12-03-09-00-00.snapshot".to_owned(),
            "mine.snapshot".to_owned(),
        ];
        let others: Vec<&str> = others.iter().map(String::as_str).collect();
        assert!(stale_uploads(&others, later(1 << 30)).is_empty());
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
