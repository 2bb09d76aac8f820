//! One conformance suite for every storage backend: local, and S3 against a real server
//! (skipped when none is configured).

mod common;

use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use snapshot_operator::storage::local::LocalStorage;
use snapshot_operator::storage::s3::S3Storage;
use snapshot_operator::storage::{Reader, Storage, StorageError};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use common::*;

fn reader(data: Vec<u8>) -> Reader {
    Reader::stream(io::Cursor::new(data))
}

/// Yields `data`, then fails (a producer that broke mid-stream).
struct Failing {
    data: io::Cursor<Vec<u8>>,
}

impl AsyncRead for Failing {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.data).poll_read(cx, buf);
        if buf.filled().len() == before {
            return Poll::Ready(Err(io::Error::other("producer failed")));
        }
        r
    }
}

async fn read_all(storage: &dyn Storage, key: &str) -> Vec<u8> {
    let (r, size) = storage.get(key).await.unwrap();
    let mut out = Vec::new();
    r.into_async().read_to_end(&mut out).await.unwrap();
    assert_eq!(out.len() as u64, size);
    out
}

fn naming(keys: &'static [&'static str]) -> impl Fn(u32) -> Option<String> + Send + Sync {
    move |i| keys.get(i as usize).map(|k| k.to_string())
}

/// The suite. `big` is larger than one S3 part (multipart path), `small` fits in one.
async fn conformance(storage: &dyn Storage, in_progress: impl AsyncFn() -> usize) {
    let big = binary(12 << 20, "big");
    let small = b"small archive".to_vec();

    // put (streaming), get, head, sidecar.
    let names = naming(&["c/a.snapshot", "c/a-1.snapshot", "c/a-2.snapshot"]);
    let stored = storage
        .put(&names, reader(big.clone()), None)
        .await
        .unwrap();
    assert_eq!(stored.key, "c/a.snapshot");
    assert_eq!(stored.size, big.len() as u64);
    assert_eq!(stored.checksum.as_deref(), Some(sha256_hex(&big).as_str()));
    assert_eq!(read_all(storage, "c/a.snapshot").await, big);
    let head = storage.head("c/a.snapshot").await.unwrap().unwrap();
    assert_eq!(
        (head.size, head.checksum.clone()),
        (big.len() as u64, Some(sha256_hex(&big)))
    );
    assert!(head.location.ends_with("c/a.snapshot"), "{}", head.location);

    // A second put with the same names never overwrites: it takes the next name.
    let second = storage
        .put(&names, reader(small.clone()), Some(&sha256_hex(&small)))
        .await
        .unwrap();
    assert_eq!(second.key, "c/a-1.snapshot");
    assert_eq!(read_all(storage, "c/a.snapshot").await, big);
    let only = naming(&["c/a.snapshot"]);
    assert!(matches!(
        storage.put(&only, reader(small.clone()), None).await,
        Err(StorageError::Exists { .. })
    ));

    // list with prefix, archives only, sorted.
    storage
        .put(&naming(&["full-x.snapshot"]), reader(small.clone()), None)
        .await
        .unwrap();
    storage
        .put(&naming(&["d/b.snapshot"]), reader(small.clone()), None)
        .await
        .unwrap();
    let keys = |list: Vec<snapshot_operator::storage::ObjectInfo>| {
        list.into_iter().map(|i| i.key).collect::<Vec<_>>()
    };
    assert_eq!(
        keys(storage.list("").await.unwrap()),
        [
            "c/a-1.snapshot",
            "c/a.snapshot",
            "d/b.snapshot",
            "full-x.snapshot"
        ]
    );
    assert_eq!(
        keys(storage.list("c/").await.unwrap()),
        ["c/a-1.snapshot", "c/a.snapshot"]
    );
    let listed = storage.list("d/").await.unwrap();
    assert_eq!(
        listed[0].checksum.as_deref(),
        Some(sha256_hex(&small).as_str())
    );

    // A checksum mismatch or a failing producer stores nothing, big or small.
    for data in [big.clone(), small.clone()] {
        let err = storage
            .put(
                &naming(&["c/bad.snapshot"]),
                reader(data.clone()),
                Some(&"0".repeat(64)),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, StorageError::Checksum { .. }), "{err}");
        let failing = Reader::stream(Failing {
            data: io::Cursor::new(data),
        });
        let err = storage
            .put(&naming(&["c/bad.snapshot"]), failing, None)
            .await
            .unwrap_err();
        assert!(matches!(err, StorageError::Body { .. }), "{err}");
    }
    assert!(storage.head("c/bad.snapshot").await.unwrap().is_none());
    assert_eq!(
        keys(storage.list("c/").await.unwrap()),
        ["c/a-1.snapshot", "c/a.snapshot"]
    );
    snapshot_operator::storage::s3::cleanups().close();
    snapshot_operator::storage::s3::cleanups().wait().await;
    assert_eq!(
        in_progress().await,
        0,
        "a failed put left an upload in progress"
    );

    // Atomic visibility: nothing under the key while the put is under way.
    let (body, open, given) = Gated::new(&big, 7 << 20);
    let body = Reader::stream(body);
    let names = naming(&["c/slow.snapshot"]);
    let put = storage.put(&names, body, None);
    tokio::pin!(put);
    loop {
        tokio::select! {
            _ = &mut put => panic!("the put finished before its data"),
            _ = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
        }
        if given.load(Ordering::SeqCst) == 7 << 20 {
            break;
        }
    }
    // Let the first parts reach the server.
    for _ in 0..10 {
        tokio::select! {
            _ = &mut put => panic!("the put finished before its data"),
            _ = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
        }
    }
    assert!(storage.head("c/slow.snapshot").await.unwrap().is_none());
    assert!(!keys(storage.list("c/").await.unwrap()).contains(&"c/slow.snapshot".to_string()));
    open.send(()).unwrap();
    put.await.unwrap();
    assert_eq!(read_all(storage, "c/slow.snapshot").await, big);

    // delete: archive and sidecar; a missing archive is NotFound.
    storage.delete("c/a.snapshot").await.unwrap();
    assert!(storage.head("c/a.snapshot").await.unwrap().is_none());
    assert!(matches!(
        storage.delete("c/a.snapshot").await,
        Err(StorageError::NotFound { .. })
    ));
    assert!(matches!(
        storage.get("c/a.snapshot").await,
        Err(StorageError::NotFound { .. })
    ));
    // The name is free again, with no stale sidecar blocking it.
    let again = storage
        .put(&naming(&["c/a.snapshot"]), reader(small.clone()), None)
        .await
        .unwrap();
    assert_eq!(again.key, "c/a.snapshot");

    // Keys must be one or two valid names.
    for bad in ["../x.snapshot", "a/b/c.snapshot", "/x.snapshot", ""] {
        assert!(
            matches!(storage.head(bad).await, Err(StorageError::Key { .. })),
            "{bad:?}"
        );
        assert!(
            matches!(storage.delete(bad).await, Err(StorageError::Key { .. })),
            "{bad:?}"
        );
    }
}

/// The catalog on a storage laid out as the operator's default storage (`<namespace>/<key>`):
/// each namespace folder's archives with their manifests and checksums, a junk archive and a
/// folder that is no namespace's left out, the same answer from what a pass keeps.
async fn catalog_conformance(root: &dyn Storage) {
    use snapshot_operator::catalog::{Manifests, scan};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    make_collection(&data, "products", "a");
    let archive = |collection| {
        let created = create(dir.path(), &data, collection);
        std::fs::read(dir.path().join(archive_path(&created))).unwrap()
    };
    let (collection, full) = (archive(Some("products")), archive(None));
    let put = async |folder: &str, key: &str, bytes: Vec<u8>| {
        let key = key.to_owned();
        let naming = move |i: u32| (i == 0).then(|| key.clone());
        let folder = root.within(folder).unwrap();
        folder.put(&naming, reader(bytes), None).await.unwrap()
    };
    let a = put(
        "team-a",
        "products/products-n0.snapshot",
        collection.clone(),
    )
    .await;
    put("team-a", "products/junk.snapshot", b"not a tar".repeat(100)).await;
    let b = put("team-b", "full-snapshot-n0.snapshot", full).await;
    put("Not_A_Namespace", "x.snapshot", collection.clone()).await;

    let mut manifests = Manifests::default();
    let first = scan(root, &mut manifests).await.unwrap();
    assert_eq!(first.keys().collect::<Vec<_>>(), ["team-a", "team-b"]);
    let found = &first["team-a"];
    assert_eq!(found.len(), 1, "the junk archive is left out: {found:?}");
    assert_eq!(found[0].key, a.key);
    assert_eq!(found[0].location, a.location);
    assert_eq!(found[0].manifest.collection.as_deref(), Some("products"));
    assert_eq!(found[0].manifest.node, "node-0");
    assert_eq!(
        found[0].checksum.as_deref(),
        Some(&*sha256_hex(&collection))
    );
    let found = &first["team-b"];
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].key, b.key);
    assert_eq!(found[0].manifest.collection, None);
    assert_eq!(found[0].manifest.collections, ["products"]);
    assert_eq!(scan(root, &mut manifests).await.unwrap(), first);
    assert_eq!(scan(root, &mut Manifests::default()).await.unwrap(), first);

    // What the scan reads with: folders, a folder's storage, an archive's first bytes.
    let folders = root.folders().await.unwrap();
    assert_eq!(folders, ["Not_A_Namespace", "team-a", "team-b"]);
    for bad in ["..", ".", "a/b", ""] {
        assert!(
            matches!(root.within(bad), Err(StorageError::Key { .. })),
            "{bad:?}"
        );
    }
    let team_a = root.within("team-a").unwrap();
    assert_eq!(
        team_a.read_start(&a.key, 10).await.unwrap(),
        collection[..10]
    );
    let whole = team_a.read_start(&a.key, 1 << 40).await.unwrap();
    assert_eq!(
        whole, collection,
        "a shorter archive is read whole, no further"
    );
    assert!(matches!(
        team_a.read_start("products/absent.snapshot", 10).await,
        Err(StorageError::NotFound { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_storage_catalog_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let storage = LocalStorage::open(dir.path().join("snapshots"), None).unwrap();
    catalog_conformance(&storage).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_storage_catalog_conforms() {
    let Some(env) = s3_env() else { return };
    let prefix = format!("{}/", unique_prefix("catalog-conformance"));
    let storage = S3Storage::connect(&env.config(), prefix).await.unwrap();
    catalog_conformance(&storage).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_storage_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let storage = LocalStorage::open(dir.path().join("snapshots"), None).unwrap();
    let temp = storage.temp().to_owned();
    conformance(&storage, async || std::fs::read_dir(&temp).unwrap().count()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_storage_with_a_temp_path_on_another_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    // /dev/shm is a tmpfs: archives built there cannot be linked into place and are copied.
    let temp_parent = if std::path::Path::new("/dev/shm").is_dir() {
        "/dev/shm"
    } else {
        "/tmp"
    };
    let temp = tempfile::tempdir_in(temp_parent).unwrap();
    let storage =
        LocalStorage::open(dir.path().join("snapshots"), Some(temp.path().to_owned())).unwrap();
    let names = |i: u32| (i == 0).then(|| "c/x.snapshot".to_string());
    storage
        .put(&names, reader(b"data".to_vec()), None)
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(dir.path().join("snapshots/c/x.snapshot")).unwrap(),
        b"data"
    );
    assert_eq!(std::fs::read_dir(temp.path()).unwrap().count(), 0);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("snapshots/c"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 2, "{leftovers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_storage_conforms() {
    let Some(env) = s3_env() else { return };
    let storage = S3Storage::connect(&env.config(), format!("{}/", unique_prefix("conformance")))
        .await
        .unwrap();
    let probe = storage.clone();
    conformance(&storage, async || {
        probe.uploads_in_progress().await.unwrap().len()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_throttling_and_5xx_are_retried() {
    let Some(env) = s3_env() else { return };
    let proxy = fault_proxy(&env.endpoint, 3);
    let mut config = env.config();
    config.endpoint_url = Some(proxy.endpoint.clone());
    let storage = S3Storage::connect(&config, format!("{}/", unique_prefix("throttle")))
        .await
        .unwrap();
    let data = binary(6 << 20, "t");
    let names = |i: u32| (i == 0).then(|| "c/t.snapshot".to_string());
    let stored = storage
        .put(&names, reader(data.clone()), None)
        .await
        .unwrap();
    assert_eq!(proxy.injected.load(Ordering::SeqCst), 3);
    assert_eq!(stored.checksum.unwrap(), sha256_hex(&data));
    assert_eq!(read_all(&storage, "c/t.snapshot").await, data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_errors_name_bucket_and_endpoint_and_hide_credentials() {
    let Some(env) = s3_env() else { return };
    let mut wrong = env.config();
    wrong.secret_key = Some(snapshot_operator::config::Secret::new("wrong-secret-value"));
    let storage = S3Storage::connect(&wrong, "x/".into()).await.unwrap();
    let err = storage.list("").await.unwrap_err();
    let text = snapshot_operator::format::render_error(&err);
    assert!(
        text.contains(&env.bucket) && text.contains(&env.endpoint),
        "{text}"
    );
    assert!(text.contains("check the access key"), "{text}");
    assert!(
        !text.contains("wrong-secret-value") && !format!("{err:?}").contains("wrong-secret-value")
    );

    let mut missing = env.config();
    missing.bucket = "no-such-bucket-here".into();
    let storage = S3Storage::connect(&missing, "x/".into()).await.unwrap();
    let err = storage.list("").await.unwrap_err();
    let text = snapshot_operator::format::render_error(&err);
    assert!(
        text.contains("no-such-bucket-here") && text.contains("NoSuchBucket"),
        "{text}"
    );

    let mut unreachable = env.config();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    unreachable.endpoint_url = Some(format!("http://127.0.0.1:{port}"));
    let storage = S3Storage::connect(&unreachable, "x/".into()).await.unwrap();
    let err = storage.list("").await.unwrap_err();
    let text = snapshot_operator::format::render_error(&err);
    assert!(
        text.contains(&format!("127.0.0.1:{port}")) && text.contains("cannot reach"),
        "{text}"
    );
    assert!(!text.contains(&env.secret_key));
}
