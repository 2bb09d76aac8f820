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
//! * paths longer than 100 bytes use GNU long-name entries.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::Serialize;

use super::WORKSPACE_DIR;
use super::manifest::{MANIFEST_ENTRY, Manifest};
use super::name::{self, NameError};

const BLOCK: usize = 512;
const COPY_BUF: usize = 1 << 20;
/// Relative path of the collections directory inside a storage directory.
pub const COLLECTIONS_DIR: &str = "collections";
/// Relative path of the aliases file inside a storage directory.
pub const ALIASES_FILE: &str = "aliases/data.json";

/// What to archive.
#[derive(Debug, Clone)]
pub struct CreateSpec {
    /// The storage directory.
    pub storage: PathBuf,
    /// One collection, or `None` for the whole storage directory.
    pub collection: Option<String>,
    /// The node name written into the archive name and manifest.
    pub node: String,
    /// Creation time, in the archive name and manifest.
    pub created_at: Timestamp,
    /// Directories never archived (the snapshots and temp paths when they lie inside the
    /// storage directory). Compared after canonicalisation.
    pub exclude: Vec<PathBuf>,
}

/// An entry that was not archived because it is not a directory or a regular file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// Path relative to the storage directory.
    pub path: String,
    /// `symlink`, `fifo`, `socket`, `block device` or `char device`.
    pub kind: &'static str,
}

/// What was archived.
#[derive(Debug, Clone, Serialize)]
pub struct Archived {
    /// Regular files written.
    pub files: u64,
    /// Directories written.
    pub directories: u64,
    /// Bytes of file data (without tar headers).
    pub data_bytes: u64,
    /// Entries skipped.
    pub skipped: Vec<Skipped>,
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
        "{path} changed while it was being archived (it was {expected} bytes); \
         stop writes to the storage directory or retry"
    )]
    Changed { path: PathBuf, expected: u64 },
    #[error("failed to write the archive")]
    Write { source: io::Error },
}

/// Checks the spec against the storage directory and builds the manifest, before any byte is
/// written: the storage (and collection) must be directories, names must be valid.
pub fn plan(spec: &CreateSpec) -> Result<Manifest, CreateError> {
    name::validate("node", &spec.node)?;
    let storage_err = |source| CreateError::Storage {
        path: spec.storage.clone(),
        source,
    };
    let meta = fs::metadata(&spec.storage).map_err(storage_err)?;
    if !meta.is_dir() {
        return Err(storage_err(io::Error::new(
            io::ErrorKind::NotADirectory,
            "not a directory",
        )));
    }
    let mut collections = list_collections(&spec.storage).map_err(storage_err)?;
    let mut aliases = read_aliases(&spec.storage)?;
    if let Some(c) = &spec.collection {
        name::validate("collection", c)?;
        let path = spec.storage.join(COLLECTIONS_DIR).join(c);
        if !fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            return Err(CreateError::NoCollection {
                collection: c.clone(),
                path,
            });
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
    ))
}

/// The collection directories of a storage directory, sorted (none when there is no
/// `collections/`).
pub fn list_collections(storage: &Path) -> io::Result<Vec<String>> {
    let dir = storage.join(COLLECTIONS_DIR);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Reads `aliases/data.json` (`{"alias": "collection"}`); absent means no aliases.
pub fn read_aliases(storage: &Path) -> Result<BTreeMap<String, String>, CreateError> {
    let path = storage.join(ALIASES_FILE);
    match fs::read(&path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map_err(|source| CreateError::Aliases { path, source })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(source) => Err(CreateError::Read { path, source }),
    }
}

/// Writes the archive described by `spec` and `manifest` (from [`plan`]) to `out`, calling
/// `progress` with the number of file bytes read so far.
pub fn write_archive<W: Write>(
    spec: &CreateSpec,
    manifest: &Manifest,
    out: W,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Archived, CreateError> {
    let root = fs::canonicalize(&spec.storage).map_err(|source| CreateError::Storage {
        path: spec.storage.clone(),
        source,
    })?;
    let mut exclude: Vec<PathBuf> = spec
        .exclude
        .iter()
        .filter_map(|p| fs::canonicalize(p).ok())
        .collect();
    exclude.push(root.join(WORKSPACE_DIR));
    let mut walker = Walker {
        tar: TarWriter::new(out),
        exclude,
        progress,
        done: Archived {
            files: 0,
            directories: 0,
            data_bytes: 0,
            skipped: Vec::new(),
        },
    };
    let json = serde_json::to_vec_pretty(manifest).expect("a manifest always serialises");
    let mtime = u64::try_from(manifest.created_at.as_second()).unwrap_or(0);
    walker
        .tar
        .append_bytes(MANIFEST_ENTRY.as_bytes(), 0o644, mtime, &json)
        .map_err(|source| CreateError::Write { source })?;
    match &spec.collection {
        Some(c) => {
            let rel = format!("{COLLECTIONS_DIR}/{c}").into_bytes();
            let abs = root.join(COLLECTIONS_DIR).join(c);
            let meta = fs::symlink_metadata(&abs).map_err(|source| CreateError::Read {
                path: abs.clone(),
                source,
            })?;
            walker.dir(&abs, rel, &meta)?;
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
    exclude: Vec<PathBuf>,
    progress: &'a (dyn Fn(u64) + Sync),
    done: Archived,
}

impl<W: Write> Walker<'_, W> {
    fn dir(&mut self, abs: &Path, rel: Vec<u8>, meta: &Metadata) -> Result<(), CreateError> {
        let mut path = rel.clone();
        path.push(b'/');
        self.tar
            .append_dir(&path, meta)
            .map_err(|source| CreateError::Write { source })?;
        self.done.directories += 1;
        self.children(abs, path)
    }

    /// Archives the children of directory `abs`, whose archive path is `prefix` (empty for the
    /// root, else ending in `/`).
    fn children(&mut self, abs: &Path, prefix: Vec<u8>) -> Result<(), CreateError> {
        let read_err = |source| CreateError::Read {
            path: abs.to_owned(),
            source,
        };
        // The type comes from the directory listing (no `lstat` per file).
        let mut children: Vec<(OsString, fs::FileType)> = fs::read_dir(abs)
            .map_err(read_err)?
            .map(|e| e.and_then(|e| Ok((e.file_name(), e.file_type()?))))
            .collect::<io::Result<_>>()
            .map_err(read_err)?;
        children.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        for (name, ft) in children {
            let child = abs.join(&name);
            if self.exclude.contains(&child) {
                continue;
            }
            let mut rel = prefix.clone();
            rel.extend_from_slice(&name.into_vec());
            if ft.is_file() {
                self.file(&child, &rel)?;
                continue;
            }
            let meta = fs::symlink_metadata(&child).map_err(|source| changed(&child, source, 0))?;
            if meta.is_dir() {
                self.dir(&child, rel, &meta)?;
            } else {
                let skipped = Skipped {
                    path: String::from_utf8_lossy(&rel).into_owned(),
                    kind: kind_of(&meta),
                };
                tracing::warn!(path = %skipped.path, kind = skipped.kind, "skipped: not a regular file or directory");
                self.done.skipped.push(skipped);
            }
        }
        Ok(())
    }

    fn file(&mut self, abs: &Path, rel: &[u8]) -> Result<(), CreateError> {
        // No following a symlink, no blocking on a FIFO swapped in since the listing.
        let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
        let file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(flags.bits() as i32)
            .open(abs)
            .map_err(|source| changed(abs, source, 0))?;
        let meta = file.metadata().map_err(|source| CreateError::Read {
            path: abs.to_owned(),
            source,
        })?;
        if !meta.is_file() {
            return Err(CreateError::Changed {
                path: abs.to_owned(),
                expected: 0,
            });
        }
        let size = meta.len();
        self.tar
            .append_file(rel, &meta, file, |n| {
                self.done.data_bytes += n;
                (self.progress)(self.done.data_bytes);
            })
            .map_err(|e| match e {
                FileCopyError::Read(source) => CreateError::Read {
                    path: abs.to_owned(),
                    source,
                },
                FileCopyError::Short => CreateError::Changed {
                    path: abs.to_owned(),
                    expected: size,
                },
                FileCopyError::Write(source) => CreateError::Write { source },
            })?;
        self.done.files += 1;
        Ok(())
    }
}

/// A file that vanished between listing and reading is a change of the tree.
fn changed(path: &Path, source: io::Error, expected: u64) -> CreateError {
    if source.kind() == io::ErrorKind::NotFound {
        CreateError::Changed {
            path: path.to_owned(),
            expected,
        }
    } else {
        CreateError::Read {
            path: path.to_owned(),
            source,
        }
    }
}

fn kind_of(meta: &Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let ft = meta.file_type();
    if ft.is_symlink() {
        "symlink"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_block_device() {
        "block device"
    } else {
        "char device"
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
        h.as_gnu_mut().expect("gnu header").name[..n].copy_from_slice(&path[..n]);
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

    fn append_dir(&mut self, path: &[u8], meta: &Metadata) -> io::Result<()> {
        self.header(path, tar::EntryType::Directory, meta.mode(), mtime(meta), 0)
    }

    /// Writes a file entry of `meta.len()` bytes read from `file`; a file shorter than that
    /// is an error (it changed), bytes beyond it are not read.
    fn append_file(
        &mut self,
        path: &[u8],
        meta: &Metadata,
        mut file: File,
        mut on_read: impl FnMut(u64),
    ) -> Result<(), FileCopyError> {
        let size = meta.len();
        self.header(
            path,
            tar::EntryType::Regular,
            meta.mode(),
            mtime(meta),
            size,
        )
        .map_err(FileCopyError::Write)?;
        let mut left = size;
        while left > 0 {
            let want = usize::try_from(left)
                .unwrap_or(usize::MAX)
                .min(self.buf.len());
            let n = match file.read(&mut self.buf[..want]) {
                Ok(0) => return Err(FileCopyError::Short),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(FileCopyError::Read(e)),
            };
            self.out
                .write_all(&self.buf[..n])
                .map_err(FileCopyError::Write)?;
            left -= n as u64;
            on_read(n as u64);
        }
        self.pad(size).map_err(FileCopyError::Write)
    }

    /// Writes the end-of-archive marker (two zero blocks) and flushes.
    fn finish(&mut self) -> io::Result<()> {
        self.out.write_all(&[0; 2 * BLOCK])?;
        self.out.flush()
    }
}

fn mtime(meta: &Metadata) -> u64 {
    u64::try_from(meta.mtime()).unwrap_or(0)
}
