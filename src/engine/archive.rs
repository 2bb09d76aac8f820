//! Writing archives: walk a storage directory and write an uncompressed tar that GNU tar reads.
//!
//! The rule for entries, documented for users in the README:
//! * `snapshot.json` (the manifest) first, then the data entries as paths relative to the
//!   storage directory (`collections/<name>/...`), depth first, each directory's children
//!   sorted by their name's bytes, so the same tree always gives the same entry order;
//! * directories and regular files only: symlinks, devices, FIFOs and sockets are skipped and
//!   reported;
//! * permission bits and modification time (seconds) of each file and directory are kept;
//!   owner and group are written as 0 with no names (a restore creates files as the restoring
//!   user);
//! * paths longer than 100 bytes use GNU long-name entries;
//! * files with holes (found with `SEEK_DATA`/`SEEK_HOLE`; Qdrant preallocates its WAL and
//!   mmap'd storage) are written as GNU sparse entries (type `S`, as `tar -cS` writes them):
//!   their data regions only, rounded out to 512-byte blocks, and their size.
//!
//! The storage directory belongs to the workload: the walk opens every directory and file
//! from its parent's descriptor without following links ([`crate::safefs`]), so a link
//! planted anywhere, or swapped in during the walk, is skipped or refused, never followed.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use rustix::fs::{FileType, OFlags};
use serde::Serialize;

use super::WORKSPACE_DIR;
use super::limits::{self, MAX_MANIFEST_BYTES, MAX_SPARSE_REGIONS};
use super::manifest::{MANIFEST_ENTRY, Manifest, SnapshotIdentity};
use super::name::{self, NameError};
use crate::safefs::{self, Anchored, Dir};

const BLOCK: usize = limits::BLOCK as usize;
const COPY_BUF: usize = 1 << 20;
/// Relative path of the collections directory inside a storage directory.
pub const COLLECTIONS_DIR: &str = "collections";
/// Relative path of the aliases file inside a storage directory.
pub const ALIASES_FILE: &str = "aliases/data.json";

/// What to archive.
#[derive(Debug, Clone)]
pub struct CreateSpec {
    /// The storage directory.
    pub storage: Anchored,
    /// One collection, or `None` for the whole storage directory.
    pub collection: Option<String>,
    /// The node name written into the archive name and manifest.
    pub node: String,
    /// Creation time, in the archive name and manifest.
    pub created_at: Timestamp,
    /// The Snapshot resource it belongs to, recorded in the manifest.
    pub identity: Option<SnapshotIdentity>,
    /// Directories never archived (the snapshots and temp paths when they lie inside the
    /// storage directory), recognised by device and inode.
    pub exclude: Vec<PathBuf>,
}

/// An entry that was not archived because it is not a directory or a regular file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// Path relative to the storage directory.
    pub path: String,
    /// `symlink`, `fifo`, `socket`, `block device`, `char device`, or `vanished` (listed, but
    /// gone by the time it was read).
    pub kind: &'static str,
}

/// What was archived.
#[derive(Debug, Clone, Serialize)]
pub struct Archived {
    /// Regular files written.
    pub files: u64,
    /// Directories written.
    pub directories: u64,
    /// Bytes of file data stored (without tar headers, without the holes of sparse files).
    pub data_bytes: u64,
    /// Files written as sparse entries (with holes).
    pub sparse_files: u64,
    /// Entries skipped.
    pub skipped: Vec<Skipped>,
    /// Files written to while they were read, at the same size (their entries may mix data
    /// from before and after the write).
    pub changed: Vec<String>,
}

/// Why an archive could not be written.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("storage directory {path} cannot be read; check --storage-path")]
    Storage { path: PathBuf, source: io::Error },
    #[error(
        "collection {collection:?} not found: {path} is not a directory (see `ls {}`)",
        .path.parent().map(|p| p.display().to_string()).unwrap_or_default()
    )]
    NoCollection { collection: String, path: PathBuf },
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("aliases file {path} is not valid JSON of the form {{\"alias\": \"collection\"}}")]
    Aliases {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("failed to read {path}")]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "refused: {path} is a symbolic link, or behind one; snapshots never follow links \
         (point --storage-path at the real directory)"
    )]
    Link { path: PathBuf },
    #[error(
        "{path} changed while it was being archived (it was {expected} bytes); \
         stop writes to the storage directory (in the cluster: copyMethod Stop) or retry"
    )]
    Changed { path: PathBuf, expected: u64 },
    #[error(
        "{path} cannot be archived: it is {why}, which no restore accepts; move or rename \
         it, or snapshot a part of the storage directory without it"
    )]
    Unrestorable { path: PathBuf, why: &'static str },
    #[error(
        "the manifest would be {size} bytes, more than the {MAX_MANIFEST_BYTES} a restore \
         reads: the storage directory has too many collections or aliases for one archive"
    )]
    ManifestTooLarge { size: usize },
    #[error("failed to write the archive")]
    Write { source: io::Error },
}

/// The error of reading `rel` in `dir`: a link in the way is refused as such.
fn read_err(dir: &Dir, rel: &Path) -> impl FnOnce(io::Error) -> CreateError + use<> {
    let path = dir.join(rel);
    move |source| {
        if safefs::is_link_refused(&source) {
            CreateError::Link { path }
        } else {
            CreateError::Read { path, source }
        }
    }
}

/// Opens the storage directory of `spec`.
fn open_storage(spec: &CreateSpec) -> Result<Dir, CreateError> {
    spec.storage.open().map_err(|source| CreateError::Storage {
        path: spec.storage.path(),
        source,
    })
}

/// Checks the spec against the storage directory and builds the manifest, before any byte is
/// written: the storage (and collection) must be directories, names must be valid.
pub fn plan(spec: &CreateSpec) -> Result<Manifest, CreateError> {
    name::validate("node", &spec.node)?;
    let root = open_storage(spec)?;
    let mut collections =
        collections_in(&root).map_err(read_err(&root, Path::new(COLLECTIONS_DIR)))?;
    let mut aliases = read_aliases(&root)?;
    if let Some(c) = &spec.collection {
        name::validate("collection", c)?;
        let rel = Path::new(COLLECTIONS_DIR).join(c);
        match root.stat(&rel).map_err(read_err(&root, &rel))? {
            Some(st) if safefs::is_dir(&st) => {}
            Some(st) if safefs::is_symlink(&st) => {
                return Err(CreateError::Link {
                    path: root.join(&rel),
                });
            }
            _ => {
                return Err(CreateError::NoCollection {
                    collection: c.clone(),
                    path: root.join(&rel),
                });
            }
        }
        collections = vec![c.clone()];
        aliases.retain(|_, target| target == c);
    }
    Ok(Manifest::new(
        spec.collection.clone(),
        spec.node.clone(),
        spec.created_at,
        collections,
        aliases,
        spec.identity.clone(),
    ))
}

/// The collection directories of a storage directory, sorted (none when there is no
/// `collections/`; a link there is refused, and links to collections are not collections).
pub fn collections_in(storage: &Dir) -> io::Result<Vec<String>> {
    let dir = match storage.open_dir(COLLECTIONS_DIR) {
        Ok(dir) => dir,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut names: Vec<String> = dir
        .entries()?
        .into_iter()
        .filter(|(_, kind)| *kind == FileType::Directory)
        .map(|(name, _)| name.to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}

/// Reads `aliases/data.json` (`{"alias": "collection"}`); absent means no aliases.
pub fn read_aliases(storage: &Dir) -> Result<BTreeMap<String, String>, CreateError> {
    let path = storage.join(ALIASES_FILE);
    let mut bytes = Vec::new();
    match storage.open_file(ALIASES_FILE, OFlags::RDONLY | OFlags::NONBLOCK) {
        Ok(file) => file
            .take(MAX_MANIFEST_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(read_err(storage, Path::new(ALIASES_FILE)))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(read_err(storage, Path::new(ALIASES_FILE))(e)),
    };
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(CreateError::Unrestorable {
            path,
            why: "an aliases file larger than the manifest holds (16 MiB)",
        });
    }
    serde_json::from_slice(&bytes).map_err(|source| CreateError::Aliases { path, source })
}

/// Writes the archive described by `spec` and `manifest` (from [`plan`]) to `out`, calling
/// `progress` with the number of file bytes read so far.
pub fn write_archive<W: Write>(
    spec: &CreateSpec,
    manifest: &Manifest,
    out: W,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Archived, CreateError> {
    let root = open_storage(spec)?;
    let exclude = spec
        .exclude
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| (m.dev(), m.ino()))
        .collect();
    let mut walker = Walker {
        tar: TarWriter::new(out),
        exclude,
        progress,
        done: Archived {
            files: 0,
            directories: 0,
            data_bytes: 0,
            sparse_files: 0,
            skipped: Vec::new(),
            changed: Vec::new(),
        },
    };
    let json = serde_json::to_vec_pretty(manifest).expect("a manifest always serialises");
    if json.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(CreateError::ManifestTooLarge { size: json.len() });
    }
    let mtime = u64::try_from(manifest.created_at.as_second()).unwrap_or(0);
    walker
        .tar
        .append_bytes(MANIFEST_ENTRY.as_bytes(), 0o644, mtime, &json)
        .map_err(|source| CreateError::Write { source })?;
    match &spec.collection {
        Some(c) => {
            let rel = Path::new(COLLECTIONS_DIR).join(c);
            let dir = root.open_dir(&rel).map_err(read_err(&root, &rel))?;
            walker.dir(&dir, rel.into_os_string().into_encoded_bytes())?;
        }
        None => walker.children(&root, Vec::new())?,
    }
    walker
        .tar
        .finish()
        .map_err(|source| CreateError::Write { source })?;
    Ok(walker.done)
}

struct Walker<'a, W: Write> {
    tar: TarWriter<W>,
    /// Device and inode of directories never archived.
    exclude: Vec<(u64, u64)>,
    progress: &'a (dyn Fn(u64) + Sync),
    done: Archived,
}

impl<W: Write> Walker<'_, W> {
    /// Archives the open directory `dir`, whose archive path is `rel`, and its content.
    fn dir(&mut self, dir: &Dir, rel: Vec<u8>) -> Result<(), CreateError> {
        let st = dir.metadata().map_err(|source| CreateError::Read {
            path: dir.path().to_owned(),
            source,
        })?;
        let mut path = rel;
        path.push(b'/');
        check_path(&path, dir.path())?;
        self.tar
            .append_dir(&path, st.st_mode, u64::try_from(st.st_mtime).unwrap_or(0))
            .map_err(|source| CreateError::Write { source })?;
        self.done.directories += 1;
        self.children(dir, path)
    }

    /// Archives the children of the open directory `dir`, whose archive path is `prefix`
    /// (empty for the root, else ending in `/`).
    fn children(&mut self, dir: &Dir, prefix: Vec<u8>) -> Result<(), CreateError> {
        // The type comes from the directory listing (no `lstat` per file).
        let mut children = dir.entries().map_err(|source| CreateError::Read {
            path: dir.path().to_owned(),
            source,
        })?;
        children.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        for (name, kind) in children {
            if prefix.is_empty() && name == WORKSPACE_DIR {
                continue;
            }
            let mut rel = prefix.clone();
            rel.extend_from_slice(name.as_bytes());
            let path = dir.join(&name);
            if kind == FileType::RegularFile {
                check_path(&rel, &path)?;
            }
            // What was listed may be gone (a database's temporary file), or swapped for a
            // link, by the time it is opened: it is skipped and reported, as is anything that
            // is not a file or a directory.
            let opened = match kind {
                // No following a link, no blocking on a FIFO swapped in since the listing.
                FileType::RegularFile => dir
                    .open_file(&name, OFlags::RDONLY | OFlags::NONBLOCK)
                    .map(|file| self.file(file, path.clone(), &rel)),
                FileType::Directory => dir
                    .open_dir(&name)
                    .map(|sub| self.subdir(&sub, rel.clone())),
                other => {
                    self.skip(&rel, kind_of(other));
                    continue;
                }
            };
            match opened {
                Ok(archived) => archived?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => self.skip(&rel, "vanished"),
                Err(e) if safefs::is_link_refused(&e) => self.skip(&rel, "symlink"),
                Err(source) => return Err(CreateError::Read { path, source }),
            }
        }
        Ok(())
    }

    /// Archives the open subdirectory `sub` unless it is excluded.
    fn subdir(&mut self, sub: &Dir, rel: Vec<u8>) -> Result<(), CreateError> {
        let st = sub.metadata().map_err(|source| CreateError::Read {
            path: sub.path().to_owned(),
            source,
        })?;
        if self.exclude.contains(&safefs::identity(&st)) {
            return Ok(());
        }
        self.dir(sub, rel)
    }

    fn skip(&mut self, rel: &[u8], kind: &'static str) {
        let skipped = Skipped {
            path: String::from_utf8_lossy(rel).into_owned(),
            kind,
        };
        tracing::warn!(path = %skipped.path, kind = skipped.kind, "skipped: not a regular file or directory (any more)");
        self.done.skipped.push(skipped);
    }

    fn file(&mut self, file: File, abs: PathBuf, rel: &[u8]) -> Result<(), CreateError> {
        let meta = file.metadata().map_err(|source| CreateError::Read {
            path: abs.clone(),
            source,
        })?;
        if !meta.is_file() {
            return Err(CreateError::Changed {
                path: abs,
                expected: 0,
            });
        }
        let size = meta.len();
        let mtime = u64::try_from(meta.mtime()).unwrap_or(0);
        // Fewer blocks than bytes: the file may have holes.
        let regions = if meta.blocks().saturating_mul(512) < size {
            data_regions(&file, size).map_err(|source| CreateError::Read {
                path: abs.clone(),
                source,
            })?
        } else {
            None
        };
        let on_read = |n| {
            self.done.data_bytes += n;
            (self.progress)(self.done.data_bytes);
        };
        let written = match &regions {
            Some(regions) => {
                self.done.sparse_files += 1;
                self.tar
                    .append_sparse(rel, meta.mode(), mtime, size, regions, &file, on_read)
            }
            None => self
                .tar
                .append_file(rel, meta.mode(), mtime, size, &file, on_read),
        };
        written.map_err(|e| match e {
            FileCopyError::Read(source) => CreateError::Read {
                path: abs.clone(),
                source,
            },
            FileCopyError::Short => CreateError::Changed {
                path: abs.clone(),
                expected: size,
            },
            FileCopyError::Write(source) => CreateError::Write { source },
        })?;
        self.done.files += 1;
        // Written to while it was read, at the same size: archived, and said.
        let when = |m: &std::fs::Metadata| (m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec());
        if file
            .metadata()
            .is_ok_and(|after| when(&after) != when(&meta))
        {
            tracing::warn!(path = %abs.display(), "changed while it was being archived");
            self.done
                .changed
                .push(String::from_utf8_lossy(rel).into_owned());
        }
        Ok(())
    }
}

/// Refuses to write an entry at `rel` (the file or directory `abs`) that a restore would
/// refuse: the reader's own check of paths.
fn check_path(rel: &[u8], abs: &Path) -> Result<(), CreateError> {
    limits::path_components(rel)
        .map(drop)
        .map_err(|why| CreateError::Unrestorable {
            path: abs.to_owned(),
            why,
        })
}

/// The data regions of a file of `size` bytes, rounded out to 512-byte blocks and merged
/// down to at most [`MAX_SPARSE_REGIONS`], or `None` when it has no holes.
fn data_regions(file: &File, size: u64) -> io::Result<Option<Vec<(u64, u64)>>> {
    use rustix::fs::SeekFrom;
    const B: u64 = BLOCK as u64;
    let mut regions: Vec<(u64, u64)> = Vec::new();
    let mut pos = 0;
    while pos < size {
        let start = match rustix::fs::seek(file, SeekFrom::Data(pos)) {
            Ok(start) => start,
            // No data after `pos`: the rest is a hole.
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(e.into()),
        };
        if start >= size {
            break;
        }
        let end = rustix::fs::seek(file, SeekFrom::Hole(start))?.min(size);
        let (start, end) = (start / B * B, end.div_ceil(B).saturating_mul(B).min(size));
        match regions.last_mut() {
            Some((at, len)) if *at + *len >= start => *len = end.max(*at + *len) - *at,
            _ => regions.push((start, end - start)),
        }
        pos = end;
        // A file of countless small holes takes bounded memory: merged as it is mapped.
        if regions.len() > 2 * MAX_SPARSE_REGIONS {
            regions = limits::merge_regions(&regions, MAX_SPARSE_REGIONS);
        }
    }
    let regions = limits::merge_regions(&regions, MAX_SPARSE_REGIONS);
    let dense = regions.len() == 1 && regions[0] == (0, size);
    Ok((!dense).then_some(regions))
}

fn kind_of(kind: FileType) -> &'static str {
    match kind {
        FileType::Symlink => "symlink",
        FileType::Fifo => "fifo",
        FileType::Socket => "socket",
        FileType::BlockDevice => "block device",
        FileType::CharacterDevice => "char device",
        _ => "unknown",
    }
}

enum FileCopyError {
    Read(io::Error),
    Short,
    Write(io::Error),
}

/// A minimal streaming tar writer (GNU headers, long names as GNU long-name entries).
struct TarWriter<W: Write> {
    out: W,
    buf: Vec<u8>,
}

impl<W: Write> TarWriter<W> {
    fn new(out: W) -> Self {
        Self {
            out,
            buf: vec![0; COPY_BUF],
        }
    }

    fn header(
        &mut self,
        path: &[u8],
        kind: tar::EntryType,
        mode: u32,
        mtime: u64,
        size: u64,
    ) -> io::Result<()> {
        self.header_with(path, kind, mode, mtime, size, |_| {})
    }

    /// Writes the header of an entry (after a long-name entry when `path` needs one), with
    /// `extra` filling GNU fields beyond the common ones.
    fn header_with(
        &mut self,
        path: &[u8],
        kind: tar::EntryType,
        mode: u32,
        mtime: u64,
        size: u64,
        extra: impl FnOnce(&mut tar::GnuHeader),
    ) -> io::Result<()> {
        if path.len() > 100 {
            let mut data = path.to_vec();
            data.push(0);
            let mut long = tar::Header::new_gnu();
            long.as_gnu_mut().expect("gnu header").name[..13].copy_from_slice(b"././@LongLink");
            self.raw_header(
                &mut long,
                tar::EntryType::GNULongName,
                0o644,
                0,
                data.len() as u64,
            )?;
            self.out.write_all(&data)?;
            self.pad(data.len() as u64)?;
        }
        let mut h = tar::Header::new_gnu();
        let n = path.len().min(100);
        let gnu = h.as_gnu_mut().expect("gnu header");
        gnu.name[..n].copy_from_slice(&path[..n]);
        extra(gnu);
        self.raw_header(&mut h, kind, mode, mtime, size)
    }

    fn raw_header(
        &mut self,
        h: &mut tar::Header,
        kind: tar::EntryType,
        mode: u32,
        mtime: u64,
        size: u64,
    ) -> io::Result<()> {
        h.set_entry_type(kind);
        h.set_mode(mode & 0o7777);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(mtime);
        h.set_size(size);
        h.set_cksum();
        self.out.write_all(h.as_bytes())
    }

    fn pad(&mut self, len: u64) -> io::Result<()> {
        let rem = (len % BLOCK as u64) as usize;
        if rem != 0 {
            self.out.write_all(&[0; BLOCK][..BLOCK - rem])?;
        }
        Ok(())
    }

    fn append_bytes(&mut self, path: &[u8], mode: u32, mtime: u64, data: &[u8]) -> io::Result<()> {
        self.header(
            path,
            tar::EntryType::Regular,
            mode,
            mtime,
            data.len() as u64,
        )?;
        self.out.write_all(data)?;
        self.pad(data.len() as u64)
    }

    fn append_dir(&mut self, path: &[u8], mode: u32, mtime: u64) -> io::Result<()> {
        self.header(path, tar::EntryType::Directory, mode, mtime, 0)
    }

    /// Writes a file entry of `size` bytes read from `file`; a file shorter than that is an
    /// error (it changed), bytes beyond it are not read.
    fn append_file(
        &mut self,
        path: &[u8],
        mode: u32,
        mtime: u64,
        size: u64,
        file: &File,
        mut on_read: impl FnMut(u64),
    ) -> Result<(), FileCopyError> {
        self.header(path, tar::EntryType::Regular, mode, mtime, size)
            .map_err(FileCopyError::Write)?;
        self.copy_range(file, 0, size, &mut on_read)?;
        self.pad(size).map_err(FileCopyError::Write)
    }

    /// Copies `len` bytes of `file` from `at` into the archive; a file shorter than that is
    /// an error (it changed).
    fn copy_range(
        &mut self,
        file: &File,
        at: u64,
        len: u64,
        on_read: &mut impl FnMut(u64),
    ) -> Result<(), FileCopyError> {
        use std::os::unix::fs::FileExt;
        let mut done = 0u64;
        while done < len {
            let want = usize::try_from(len - done)
                .unwrap_or(usize::MAX)
                .min(self.buf.len());
            let n = match file.read_at(&mut self.buf[..want], at + done) {
                Ok(0) => return Err(FileCopyError::Short),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(FileCopyError::Read(e)),
            };
            self.out
                .write_all(&self.buf[..n])
                .map_err(FileCopyError::Write)?;
            done += n as u64;
            on_read(n as u64);
        }
        Ok(())
    }

    /// Writes a GNU sparse entry: the header with the first regions of the map, extension
    /// blocks with the rest, then the data of each region read from `file`. The map ends at
    /// the file's size (an empty last region marks it when the file ends in a hole).
    #[allow(clippy::too_many_arguments)]
    fn append_sparse(
        &mut self,
        path: &[u8],
        mode: u32,
        mtime: u64,
        size: u64,
        regions: &[(u64, u64)],
        file: &File,
        mut on_read: impl FnMut(u64),
    ) -> Result<(), FileCopyError> {
        let map = limits::sparse_map(regions, size);
        let set = |entry: &mut tar::GnuSparseHeader, (at, len): (u64, u64)| {
            entry.set_offset(at);
            entry.set_length(len);
        };
        let stored: u64 = map.iter().map(|(_, len)| len).sum();
        let (first, rest) = map.split_at(map.len().min(limits::SPARSE_IN_HEADER));
        self.header_with(
            path,
            tar::EntryType::GNUSparse,
            mode,
            mtime,
            stored,
            |gnu| {
                for (entry, region) in gnu.sparse.iter_mut().zip(first) {
                    set(entry, *region);
                }
                gnu.set_is_extended(!rest.is_empty());
                gnu.set_real_size(size);
            },
        )
        .map_err(FileCopyError::Write)?;
        let blocks: Vec<&[(u64, u64)]> = rest.chunks(limits::SPARSE_IN_EXTENSION).collect();
        for (i, chunk) in blocks.iter().enumerate() {
            let mut ext = tar::GnuExtSparseHeader::new();
            for (entry, region) in ext.sparse.iter_mut().zip(chunk.iter()) {
                set(entry, *region);
            }
            ext.set_is_extended(i + 1 < blocks.len());
            self.out
                .write_all(ext.as_bytes())
                .map_err(FileCopyError::Write)?;
        }
        for &(at, len) in &map {
            self.copy_range(file, at, len, &mut on_read)?;
        }
        self.pad(stored).map_err(FileCopyError::Write)
    }

    /// Writes the end-of-archive marker (two zero blocks) and flushes.
    fn finish(&mut self) -> io::Result<()> {
        self.out.write_all(&[0; 2 * BLOCK])?;
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[test]
    fn a_file_written_to_while_it_is_read_is_archived_and_said() {
        let dir = tempfile::tempdir().unwrap();
        let storage = dir.path().join("storage");
        let collection = storage.join("collections/products");
        std::fs::create_dir_all(&collection).unwrap();
        let (busy, still) = (collection.join("segment"), collection.join("config.json"));
        std::fs::write(&busy, vec![1u8; 4 << 20]).unwrap();
        std::fs::write(&still, b"{}").unwrap();
        // An old modification time: any write from now on changes it.
        let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000);
        for path in [&busy, &still] {
            let file = File::options().write(true).open(path).unwrap();
            file.set_modified(old).unwrap();
        }
        let spec = CreateSpec {
            storage: Anchored::trusted(storage),
            collection: Some("products".into()),
            node: "n0".into(),
            created_at: Timestamp::now(),
            identity: None,
            exclude: Vec::new(),
        };
        let manifest = plan(&spec).unwrap();
        // Half-way through the segment (past the 2 bytes of the other file), the application
        // writes one byte in place: same size.
        let written = AtomicBool::new(false);
        let progress = |read: u64| {
            if read > 1 << 20 && !written.swap(true, Ordering::SeqCst) {
                let file = File::options().write(true).open(&busy).unwrap();
                file.write_all_at(b"2", 0).unwrap();
            }
        };
        let archived = write_archive(&spec, &manifest, std::io::sink(), &progress).unwrap();
        assert!(written.load(Ordering::SeqCst));
        assert_eq!(archived.changed, ["collections/products/segment"]);
        assert_eq!(archived.files, 2);
        // Untouched, nothing is said.
        let again = write_archive(&spec, &manifest, std::io::sink(), &|_| {}).unwrap();
        assert!(again.changed.is_empty(), "{:?}", again.changed);
    }
}
