//! Local storage: archives in a directory (`storage.snapshots_path`), collection archives in
//! `<collection>/` subdirectories as in Qdrant.
//!
//! A put streams into `<temp_path>/<pid>-<n>.partial` (locked with `flock` while written),
//! fsyncs it, writes the sidecar, then links the archive under its final name (`link` fails
//! rather than overwrite). Partial files whose writer is gone are removed when storage opens.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use jiff::Timestamp;
use rustix::fs::FlockOperation;
use sha2::{Digest, Sha256};

use super::{
    Naming, ObjectInfo, Reader, Storage, StorageError, check_digest, is_archive_key, validate_key,
};
use crate::engine::name;

const PARTIAL_EXT: &str = ".partial";
/// Default temp directory, inside the snapshots directory.
pub const DEFAULT_TEMP_DIR: &str = ".tmp";
const COPY_BUF: usize = 1 << 20;

static PUT_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Archives in a local directory.
#[derive(Debug, Clone)]
pub struct LocalStorage {
    root: PathBuf,
    temp: PathBuf,
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StorageError {
    let location = path.display().to_string();
    move |source| StorageError::Io {
        op,
        location,
        source,
    }
}

impl LocalStorage {
    /// Storage in `root`, building archives in `temp` (default `<root>/.tmp`); creates both
    /// and removes partial archives left by interrupted puts.
    pub fn open(root: PathBuf, temp: Option<PathBuf>) -> Result<Self, StorageError> {
        let temp = temp.unwrap_or_else(|| root.join(DEFAULT_TEMP_DIR));
        for dir in [&root, &temp] {
            fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        }
        let storage = Self { root, temp };
        storage.clean_partials()?;
        Ok(storage)
    }

    /// The directory archives are kept in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory archives are built in.
    pub fn temp(&self) -> &Path {
        &self.temp
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn clean_partials(&self) -> Result<(), StorageError> {
        let entries = match fs::read_dir(&self.temp) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("read", &self.temp)(e)),
        };
        for entry in entries {
            let path = entry.map_err(io_err("read", &self.temp))?.path();
            if !path.to_string_lossy().ends_with(PARTIAL_EXT) {
                continue;
            }
            // A partial file still locked is being written by a live process.
            let Ok(file) = File::open(&path) else {
                continue;
            };
            if rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive).is_ok() {
                tracing::info!(path = %path.display(), "removing a partial archive left by an interrupted snapshot");
                fs::remove_file(&path).map_err(io_err("remove", &path))?;
            }
        }
        Ok(())
    }

    /// Writes `body` to a locked partial file, returning it with its size and digest.
    fn write_partial(&self, body: Reader) -> Result<(PathBuf, File, u64, String), StorageError> {
        fs::create_dir_all(&self.temp).map_err(io_err("create", &self.temp))?;
        let n = PUT_COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = self
            .temp
            .join(format!("{}-{n}{PARTIAL_EXT}", std::process::id()));
        let mut file = File::create(&path).map_err(io_err("create", &path))?;
        let result = (|| {
            rustix::fs::flock(&file, FlockOperation::LockExclusive)
                .map_err(|e| io_err("lock", &path)(e.into()))?;
            let mut body = body.into_blocking();
            let mut hasher = Sha256::new();
            let mut buf = vec![0; COPY_BUF];
            let mut size = 0u64;
            loop {
                let n = match body.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(source) => return Err(StorageError::Body { source }),
                };
                hasher.update(&buf[..n]);
                file.write_all(&buf[..n]).map_err(io_err("write", &path))?;
                size += n as u64;
            }
            file.sync_all().map_err(io_err("sync", &path))?;
            Ok((size, name::hex(&hasher.finalize())))
        })();
        match result {
            Ok((size, digest)) => Ok((path, file, size, digest)),
            Err(e) => {
                let _ = fs::remove_file(&path);
                Err(e)
            }
        }
    }

    /// Makes the partial file visible under the first free key, sidecar first.
    fn publish(
        &self,
        naming: Naming<'_>,
        partial: &Path,
        digest: &str,
    ) -> Result<String, StorageError> {
        for attempt in 0.. {
            let Some(key) = naming(attempt) else { break };
            validate_key(&key)?;
            let target = self.path(&key);
            let sidecar = self.path(&name::checksum_key(&key));
            if target.exists() || sidecar.exists() {
                continue;
            }
            let dir = target.parent().expect("keys have a parent");
            fs::create_dir_all(dir).map_err(io_err("create", dir))?;
            // Claim the name with the sidecar (link refuses to overwrite), then the archive.
            let tmp_sidecar = partial.with_extension("checksum.partial");
            write_synced(&tmp_sidecar, digest.as_bytes())?;
            let claimed = link_same_fs(&tmp_sidecar, &sidecar);
            let _ = fs::remove_file(&tmp_sidecar);
            match claimed {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err("write", &sidecar)(e)),
            }
            match link_same_fs(partial, &target) {
                Ok(()) => {}
                Err(e) => {
                    let _ = fs::remove_file(&sidecar);
                    if e.kind() == io::ErrorKind::AlreadyExists {
                        continue;
                    }
                    return Err(io_err("write", &target)(e));
                }
            }
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err("sync", dir))?;
            return Ok(key);
        }
        Err(StorageError::Exists {
            location: naming(0).map(|k| self.location(&k)).unwrap_or_default(),
        })
    }

    fn info(&self, key: &str, meta: &fs::Metadata) -> ObjectInfo {
        let checksum = fs::read_to_string(self.path(&name::checksum_key(key)))
            .ok()
            .and_then(|t| name::parse_checksum(&t));
        ObjectInfo {
            key: key.into(),
            location: self.location(key),
            size: meta.len(),
            modified: meta
                .modified()
                .ok()
                .and_then(|t| Timestamp::try_from(t).ok()),
            checksum,
        }
    }
}

fn write_synced(path: &Path, data: &[u8]) -> Result<(), StorageError> {
    let mut f = File::create(path).map_err(io_err("create", path))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .map_err(io_err("write", path))
}

/// `link(from, to)`; when `from` is on another filesystem (a temp path elsewhere), copies it
/// next to `to` first.
fn link_same_fs(from: &Path, to: &Path) -> io::Result<()> {
    match fs::hard_link(from, to) {
        Err(e) if e.kind() == io::ErrorKind::CrossesDevices => {
            let file_name = to.file_name().unwrap_or_default().to_string_lossy();
            let near = to.with_file_name(format!(".{file_name}{PARTIAL_EXT}"));
            let result = fs::copy(from, &near)
                .and_then(|_| File::open(&near)?.sync_all())
                .and_then(|()| fs::hard_link(&near, to));
            let _ = fs::remove_file(&near);
            result
        }
        other => other,
    }
}

#[async_trait]
impl Storage for LocalStorage {
    fn location(&self, key: &str) -> String {
        self.path(key).display().to_string()
    }

    async fn put(
        &self,
        naming: Naming<'_>,
        body: Reader,
        checksum: Option<&str>,
    ) -> Result<ObjectInfo, StorageError> {
        let this = self.clone();
        let (partial, file, size, digest) =
            tokio::task::spawn_blocking(move || this.write_partial(body))
                .await
                .expect("the writer task does not panic")?;
        let published = check_digest(
            &self.location(&naming(0).unwrap_or_default()),
            checksum,
            &digest,
        )
        .and_then(|()| self.publish(naming, &partial, &digest));
        let _ = fs::remove_file(&partial);
        drop(file);
        let key = published?;
        let location = self.location(&key);
        Ok(ObjectInfo::stored(key, location, size, digest))
    }

    async fn get(&self, key: &str) -> Result<(Reader, u64), StorageError> {
        validate_key(key)?;
        let path = self.path(key);
        let file = File::open(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                StorageError::NotFound {
                    location: self.location(key),
                }
            } else {
                io_err("open", &path)(e)
            }
        })?;
        let size = file.metadata().map_err(io_err("open", &path))?.len();
        Ok((Reader::File(file), size))
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StorageError> {
        validate_key(key)?;
        let path = self.path(key);
        match fs::metadata(&path) {
            Ok(meta) if meta.is_file() => Ok(Some(self.info(key, &meta))),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("read", &path)(e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        let mut found = Vec::new();
        let mut scan =
            |dir: &Path, key_prefix: &str, depth: u8| -> Result<Vec<String>, StorageError> {
                let mut subdirs = Vec::new();
                let entries = match fs::read_dir(dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(subdirs),
                    Err(e) => return Err(io_err("list", dir)(e)),
                };
                for entry in entries {
                    let entry = entry.map_err(io_err("list", dir))?;
                    let file_name = entry.file_name().to_string_lossy().into_owned();
                    let key = format!("{key_prefix}{file_name}");
                    let meta = entry.metadata().map_err(io_err("list", &entry.path()))?;
                    if meta.is_dir() && depth == 0 && !file_name.starts_with('.') {
                        subdirs.push(file_name);
                    } else if meta.is_file() && is_archive_key(&key) && key.starts_with(prefix) {
                        found.push(self.info(&key, &meta));
                    }
                }
                Ok(subdirs)
            };
        for dir in scan(&self.root, "", 0)? {
            scan(&self.root.join(&dir), &format!("{dir}/"), 1)?;
        }
        found.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(found)
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        validate_key(key)?;
        let path = self.path(key);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StorageError::NotFound {
                    location: self.location(key),
                });
            }
            Err(e) => return Err(io_err("delete", &path)(e)),
        }
        let sidecar = self.path(&name::checksum_key(key));
        match fs::remove_file(&sidecar) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("delete", &sidecar)(e)),
            _ => Ok(()),
        }
    }
}
