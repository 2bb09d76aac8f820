//! Local storage: archives in a directory (`storage.snapshots_path`), collection archives in
//! `<collection>/` subdirectories as in Qdrant.
//!
//! Any number of processes (movers of every node, each PID 1 in its container) may write
//! into one directory at once. A put streams into a locked temporary file in the temp path
//! ([`TempFile`]: no name at all with `O_TMPFILE`, else a random one), fsyncs it, then claims
//! the first free name by linking the checksum sidecar (`link` never overwrites) and links
//! the archive beside it; the sidecar stays locked until the archive is in place. When the
//! temp path is on another filesystem, the archive is first copied into a locked temporary
//! file next to its final name.
//!
//! Opening the storage removes what interrupted puts left, and only what is provably
//! abandoned (nobody holds its lock): named temporary files, and checksum sidecars without
//! their archive. Every path below the snapshots directory is opened without following
//! links ([`crate::safefs`]).

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use jiff::Timestamp;
use rustix::fs::OFlags;
use sha2::{Digest, Sha256};

use super::{
    ObjectInfo, Reader, Sidecar, Storage, StorageError, check_digest, is_archive_key,
    validate_archive_key, validate_folder, validate_key,
};
use crate::engine::flush::{KICK_EVERY, start_writeback};
use crate::engine::name;
use crate::safefs::{self, Dir, TempFile};

/// Default temp directory, inside the snapshots directory.
pub const DEFAULT_TEMP_DIR: &str = ".tmp";
const COPY_BUF: usize = 1 << 20;

/// Archives in a local directory.
#[derive(Debug, Clone)]
pub struct LocalStorage {
    root: Arc<Dir>,
    temp: Arc<Dir>,
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StorageError + use<> {
    let location = path.display().to_string();
    move |source| StorageError::Io {
        op,
        location,
        source,
    }
}

fn not_found(dir: &Dir, name: &str) -> StorageError {
    StorageError::NotFound {
        location: dir.join(name).display().to_string(),
    }
}

impl LocalStorage {
    /// Storage in `root`, building archives in `temp` (default `<root>/.tmp`, reached from
    /// `root` without following a link); creates both and removes what interrupted puts
    /// left. The directories given are taken as they are, links included.
    pub fn open(root: PathBuf, temp: Option<PathBuf>) -> Result<Self, StorageError> {
        let open = |path: &Path| {
            std::fs::create_dir_all(path)
                .and_then(|()| Dir::open(path))
                .map_err(io_err("open", path))
        };
        let root = open(&root)?;
        let temp = match temp {
            Some(temp) => open(&temp)?,
            None => root
                .create_dir_all(DEFAULT_TEMP_DIR, 0o777)
                .map_err(io_err("open", &root.join(DEFAULT_TEMP_DIR)))?,
        };
        let storage = Self {
            root: Arc::new(root),
            temp: Arc::new(temp),
        };
        storage.clean();
        Ok(storage)
    }

    /// The directory archives are kept in.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// The directory archives are built in.
    pub fn temp(&self) -> &Path {
        self.temp.path()
    }

    /// The directory holding `key`'s archive, and the archive's name in it.
    fn locate<'k>(&self, key: &'k str) -> Result<(Dir, &'k str), StorageError> {
        validate_key(key)?;
        let (collection, file_name) = name::split_key(key);
        let dir = match collection {
            Some(c) => self.root.open_dir(c),
            None => self.root.try_clone(),
        };
        match dir {
            Ok(dir) => Ok((dir, file_name)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StorageError::NotFound {
                location: self.location(key),
            }),
            Err(e) => Err(io_err("open", &self.root.join(key))(e)),
        }
    }

    /// Removes what interrupted puts left: temporary files in the temp path and next to
    /// archives, and sidecars without their archive, when nobody holds them. Failing to
    /// (a read-only volume, say) costs only space, so it is logged, not fatal.
    fn clean(&self) {
        let mut dirs = vec![(self.temp.try_clone(), false)];
        dirs.push((self.root.try_clone(), true));
        if let Ok(entries) = self.root.entries() {
            for (entry, kind) in entries {
                if kind == rustix::fs::FileType::Directory
                    && !entry.as_encoded_bytes().starts_with(b".")
                {
                    dirs.push((self.root.open_dir(&entry), true));
                }
            }
        }
        for (dir, with_archives) in dirs {
            let result = dir.and_then(|dir| clean_dir(&dir, with_archives));
            if let Err(e) = result {
                tracing::warn!(error = %e, "could not remove what interrupted snapshots left");
            }
        }
    }

    /// Streams `body` into a locked temporary file; returns it with its size and digest.
    fn write_temp(&self, body: Reader) -> Result<(TempFile, u64, String), StorageError> {
        let temp = TempFile::create(&self.temp).map_err(io_err("create", self.temp.path()))?;
        tracing::debug!(temp = %self.temp.path().display(), "building the archive");
        let mut hasher = Sha256::new();
        let (mut size, mut kicked) = (0u64, 0u64);
        let mut out = temp.file();
        let mut take = |data: &[u8]| -> Result<(), StorageError> {
            hasher.update(data);
            out.write_all(data)
                .map_err(io_err("write", self.temp.path()))?;
            size += data.len() as u64;
            // Start writing back what is written, so that the final fsync has little left.
            if size - kicked >= KICK_EVERY {
                start_writeback(temp.file(), kicked, size - kicked);
                kicked = size;
            }
            Ok(())
        };
        match body {
            // An archive being written: its chunks are written as they are, and given back.
            Reader::Chunks(mut chunks) => {
                while let Some(chunk) = chunks.next_blocking() {
                    let chunk = chunk.map_err(|source| StorageError::Body { source })?;
                    take(&chunk)?;
                    chunks.recycle(chunk);
                }
            }
            body => {
                let mut body = body.into_blocking();
                let mut buf = vec![0; COPY_BUF];
                loop {
                    let n = match body.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(source) => return Err(StorageError::Body { source }),
                    };
                    take(&buf[..n])?;
                }
            }
        }
        temp.file()
            .sync_all()
            .map_err(io_err("write", self.temp.path()))?;
        Ok((temp, size, name::hex(&hasher.finalize())))
    }

    /// Makes the archive in `temp` visible under the first free key of `keys`, sidecar
    /// first; returns the key.
    fn publish(
        &self,
        keys: &[String],
        temp: &TempFile,
        digest: &str,
    ) -> Result<String, StorageError> {
        for key in keys {
            validate_archive_key(key)?;
            let (collection, file_name) = name::split_key(key);
            let sidecar_name = name::checksum_key(file_name);
            let dir = match collection {
                Some(c) => self.root.create_dir_all(c, 0o777),
                None => self.root.try_clone(),
            }
            .map_err(io_err("create", &self.root.join(collection.unwrap_or(""))))?;
            let taken = |n: &str| dir.stat(n).map(|st| st.is_some());
            if taken(file_name).map_err(io_err("read", &dir.join(file_name)))?
                || taken(&sidecar_name).map_err(io_err("read", &dir.join(&sidecar_name)))?
            {
                continue;
            }
            // Claim the name with the sidecar (a link never overwrites), then the archive.
            // The sidecar stays locked until the archive is in place, so that no clean-up
            // takes it for the leftover of a crash.
            let sidecar_path = dir.join(&sidecar_name);
            let sidecar = TempFile::create(&dir).map_err(io_err("create", &sidecar_path))?;
            sidecar
                .file()
                .write_all(digest.as_bytes())
                .and_then(|()| sidecar.file().sync_all())
                .map_err(io_err("write", &sidecar_path))?;
            match sidecar.link(&dir, &sidecar_name) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err("write", &sidecar_path)(e)),
            }
            if let Err(e) = link_archive(temp, &dir, file_name) {
                // The sidecar is ours (locked, just linked): take it back.
                let _ = dir.remove_file(&sidecar_name);
                if e.kind() == io::ErrorKind::AlreadyExists {
                    continue;
                }
                return Err(io_err("write", &dir.join(file_name))(e));
            }
            dir.sync().map_err(io_err("sync", dir.path()))?;
            return Ok(key.clone());
        }
        Err(StorageError::Exists {
            location: keys.first().map(|k| self.location(k)).unwrap_or_default(),
        })
    }

    fn info(&self, key: &str, dir: &Dir, file_name: &str, st: &rustix::fs::Stat) -> ObjectInfo {
        ObjectInfo {
            key: key.into(),
            location: self.location(key),
            size: u64::try_from(st.st_size).unwrap_or(0),
            modified: Timestamp::from_second(st.st_mtime).ok(),
            checksum: read_sidecar(dir, &name::checksum_key(file_name)).valid(),
        }
    }
}

/// Removes abandoned temporary files from `dir` and, when it holds archives, sidecars whose
/// archive is gone.
fn clean_dir(dir: &Dir, with_archives: bool) -> io::Result<()> {
    for (entry, kind) in dir.entries()? {
        if kind != rustix::fs::FileType::RegularFile {
            continue;
        }
        // By the name's bytes: a lossy conversion could point at another archive.
        let bytes = entry.as_encoded_bytes();
        let archive = bytes
            .strip_suffix(name::CHECKSUM_EXT.as_bytes())
            .map(|a| Path::new(std::ffi::OsStr::from_bytes(a)));
        let removed = if bytes.ends_with(safefs::TEMP_SUFFIX.as_bytes()) {
            safefs::remove_if_abandoned(dir, &entry, || true)?
        } else if let Some(archive) = archive.filter(|_| with_archives) {
            let absent = || dir.stat(archive).is_ok_and(|st| st.is_none());
            absent() && safefs::remove_if_abandoned(dir, &entry, absent)?
        } else {
            false
        };
        if removed {
            tracing::info!(path = %dir.join(&entry).display(), "removed what an interrupted snapshot left");
        }
    }
    Ok(())
}

/// What the sidecar `sidecar` of `dir` holds (a link, or anything but a regular file, is no
/// checksum; no more is read than a checksum file can be long).
fn read_sidecar(dir: &Dir, sidecar: &str) -> Sidecar {
    let file = match dir.open_file(sidecar, OFlags::RDONLY | OFlags::NONBLOCK) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Sidecar::Missing,
        Err(_) => return Sidecar::Invalid,
    };
    let mut bytes = Vec::new();
    match file.metadata() {
        Ok(meta) if meta.is_file() => {}
        _ => return Sidecar::Invalid,
    }
    match file
        .take(name::MAX_CHECKSUM_FILE + 1)
        .read_to_end(&mut bytes)
    {
        Ok(_) => Sidecar::of(&bytes),
        Err(_) => Sidecar::Invalid,
    }
}

/// `entry` of `dir` as a `what` name (UTF-8, a valid name), or `None`, said in the log.
fn valid_name<'e>(dir: &Dir, entry: &'e std::ffi::OsStr, what: &'static str) -> Option<&'e str> {
    let valid = entry
        .to_str()
        .filter(|text| name::validate(what, text).is_ok());
    if valid.is_none() {
        tracing::warn!(
            path = %dir.join(entry).display(),
            "not listed: not a valid {what} name (left alone)"
        );
    }
    valid
}

/// Links the archive in `temp` as `file_name` in `dir`; when `dir` is on another filesystem,
/// copies it into a locked temporary file there first.
fn link_archive(temp: &TempFile, dir: &Dir, file_name: &str) -> io::Result<()> {
    match temp.link(dir, file_name) {
        Err(e) if e.kind() == io::ErrorKind::CrossesDevices => {
            let near = TempFile::create(dir)?;
            let mut from = temp.file().try_clone()?;
            from.seek(io::SeekFrom::Start(0))?;
            io::copy(&mut from, &mut near.file())?;
            near.file().sync_all()?;
            near.link(dir, file_name)
        }
        other => other,
    }
}

/// An open archive file and its size.
fn open_archive(dir: &Dir, file_name: &str) -> io::Result<(File, u64)> {
    let file = dir.open_file(file_name, OFlags::RDONLY)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok((file, meta.len()))
}

#[async_trait]
impl Storage for LocalStorage {
    fn location(&self, key: &str) -> String {
        self.root.join(key).display().to_string()
    }

    async fn put(
        &self,
        naming: super::Naming<'_>,
        body: Reader,
        checksum: Option<&str>,
    ) -> Result<super::ObjectInfo, StorageError> {
        let keys: Vec<String> = (0..).map_while(naming).collect();
        let checksum = checksum.map(str::to_owned);
        let this = self.clone();
        let (key, size, digest) = tokio::task::spawn_blocking(move || {
            let (temp, size, digest) = this.write_temp(body)?;
            let first = keys.first().map(|k| this.location(k)).unwrap_or_default();
            check_digest(&first, checksum.as_deref(), &digest)?;
            let key = this.publish(&keys, &temp, &digest)?;
            Ok::<_, StorageError>((key, size, digest))
        })
        .await
        .expect("the writer task does not panic")?;
        let location = self.location(&key);
        Ok(ObjectInfo::stored(key, location, size, digest))
    }

    async fn get(&self, key: &str) -> Result<(Reader, u64), StorageError> {
        let (dir, file_name) = self.locate(key)?;
        match open_archive(&dir, file_name) {
            Ok((file, size)) => Ok((Reader::File(file), size)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(not_found(&dir, file_name)),
            Err(e) => Err(io_err("open", &dir.join(file_name))(e)),
        }
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StorageError> {
        let (dir, file_name) = match self.locate(key) {
            Err(StorageError::NotFound { .. }) => return Ok(None),
            other => other?,
        };
        match dir.stat(file_name) {
            Ok(Some(st)) if safefs::is_file(&st) => Ok(Some(self.info(key, &dir, file_name, &st))),
            Ok(_) => Ok(None),
            Err(e) => Err(io_err("read", &dir.join(file_name))(e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        fn list_err(dir: &Dir) -> impl FnOnce(io::Error) -> StorageError + use<> {
            io_err("list", dir.path())
        }
        let mut found = Vec::new();
        let mut dirs = vec![(
            self.root.try_clone().map_err(list_err(&self.root))?,
            String::new(),
        )];
        for (entry, kind) in self.root.entries().map_err(list_err(&self.root))? {
            if kind != rustix::fs::FileType::Directory || entry.as_encoded_bytes().starts_with(b".")
            {
                continue;
            }
            // Only a collection's name is a collection folder: other names are said and left
            // alone, never mapped onto another (a lossy conversion could name a real one).
            let Some(collection) = valid_name(&self.root, &entry, "collection") else {
                continue;
            };
            match self.root.open_dir(collection) {
                Ok(dir) => dirs.push((dir, format!("{collection}/"))),
                Err(e) => tracing::warn!(
                    path = %self.root.join(collection).display(), error = %e,
                    "not listed: the folder cannot be opened"
                ),
            }
        }
        for (dir, key_prefix) in dirs {
            let entries = match dir.entries() {
                Ok(entries) => entries,
                Err(e) if !key_prefix.is_empty() => {
                    tracing::warn!(path = %dir.path().display(), error = %e, "not listed: the folder cannot be read");
                    continue;
                }
                Err(e) => return Err(list_err(&dir)(e)),
            };
            for (entry, kind) in entries {
                if kind != rustix::fs::FileType::RegularFile
                    || !entry
                        .as_encoded_bytes()
                        .ends_with(name::ARCHIVE_EXT.as_bytes())
                {
                    continue;
                }
                let Some(file_name) = valid_name(&dir, &entry, "snapshot") else {
                    continue;
                };
                let key = format!("{key_prefix}{file_name}");
                if !is_archive_key(&key) || !key.starts_with(prefix) {
                    continue;
                }
                if let Some(st) = dir.stat(file_name).map_err(list_err(&dir))? {
                    found.push(self.info(&key, &dir, file_name, &st));
                }
            }
        }
        found.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(found)
    }

    async fn sidecar(&self, key: &str) -> Result<Sidecar, StorageError> {
        let (dir, file_name) = match self.locate(key) {
            Err(StorageError::NotFound { .. }) => return Ok(Sidecar::Missing),
            other => other?,
        };
        Ok(read_sidecar(&dir, &name::checksum_key(file_name)))
    }

    async fn read_start(&self, key: &str, len: u64) -> Result<Vec<u8>, StorageError> {
        let (dir, file_name) = self.locate(key)?;
        let (file, _) = match open_archive(&dir, file_name) {
            Ok(opened) => opened,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(not_found(&dir, file_name));
            }
            Err(e) => return Err(io_err("open", &dir.join(file_name))(e)),
        };
        let mut bytes = Vec::new();
        file.take(len)
            .read_to_end(&mut bytes)
            .map_err(io_err("read", &dir.join(file_name)))?;
        Ok(bytes)
    }

    async fn folders(&self) -> Result<Vec<String>, StorageError> {
        let entries = self
            .root
            .entries()
            .map_err(io_err("list", self.root.path()))?;
        let mut found: Vec<String> = entries
            .into_iter()
            .filter(|(entry, kind)| {
                *kind == rustix::fs::FileType::Directory
                    && !entry.as_encoded_bytes().starts_with(b".")
            })
            .filter_map(|(entry, _)| valid_name(&self.root, &entry, "folder").map(str::to_owned))
            .collect();
        found.sort();
        Ok(found)
    }

    /// The folder's directory (made when absent), opened without following links.
    fn within(&self, folder: &str) -> Result<Arc<dyn Storage>, StorageError> {
        validate_folder(folder)?;
        let root = self
            .root
            .create_dir_all(folder, 0o777)
            .map_err(io_err("open", &self.root.join(folder)))?;
        Ok(Arc::new(Self {
            root: Arc::new(root),
            temp: self.temp.clone(),
        }))
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        validate_archive_key(key)?;
        let (dir, file_name) = self.locate(key)?;
        match dir.stat(file_name) {
            Ok(Some(st)) if safefs::is_file(&st) => {}
            Ok(_) => return Err(not_found(&dir, file_name)),
            Err(e) => return Err(io_err("delete", &dir.join(file_name))(e)),
        }
        match dir.remove_file(file_name) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(not_found(&dir, file_name));
            }
            Err(e) => return Err(io_err("delete", &dir.join(file_name))(e)),
        }
        let sidecar = name::checksum_key(file_name);
        safefs::ignore_absent(dir.remove_file(&sidecar))
            .map_err(io_err("delete", &dir.join(&sidecar)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opening_removes_only_abandoned_leftovers() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("snaps");
        let storage = LocalStorage::open(root.clone(), None).unwrap();
        let coll = storage.root.create_dir_all("c", 0o777).unwrap();
        // Left by a crash: a temp file in the temp path and one next to archives, and a
        // sidecar whose archive was never linked.
        std::fs::write(root.join(".tmp/.dead.partial"), b"x").unwrap();
        std::fs::write(root.join("c/.0123.partial"), b"x").unwrap();
        std::fs::write(root.join("c/lost.snapshot.checksum"), b"x").unwrap();
        // A complete archive, and a writer in the middle of publishing (sidecar linked and
        // locked, archive not yet).
        std::fs::write(root.join("c/ok.snapshot"), b"a").unwrap();
        std::fs::write(root.join("c/ok.snapshot.checksum"), b"a").unwrap();
        let live = TempFile::create(&coll).unwrap();
        live.link(&coll, "busy.snapshot.checksum").unwrap();
        let live_temp = TempFile::create_named(&storage.temp).unwrap();

        LocalStorage::open(root.clone(), None).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(root.join("c"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "busy.snapshot.checksum",
                "ok.snapshot",
                "ok.snapshot.checksum"
            ]
        );
        let temp_left: Vec<_> = std::fs::read_dir(root.join(".tmp")).unwrap().collect();
        assert_eq!(temp_left.len(), 1, "the live temp file stays");
        drop((live, live_temp));
    }
}
