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
//! For a Qdrant storage directory ([`Format::Qdrant`]), the entries after the manifest are
//! Qdrant's own snapshot instead ([`super::qdrant`]): a collection snapshot is the
//! collection's directory with each segment `<shard>/segments/<id>/` as a tar in the tar,
//! `<shard>/segments/<id>.tar` holding `snapshot/files/...`; a full snapshot is one such
//! collection snapshot per collection (`<name>.snapshot`) and the `config.json` naming them
//! and the aliases. A tar in a tar needs its size in its header, so these archives are
//! planned (every file's size and holes) before they are written, and a file that changed
//! between the two fails the snapshot.
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
use super::manifest::{Format, MANIFEST_ENTRY, Manifest, SnapshotIdentity};
use super::name::{self, NameError};
use super::qdrant;
use super::tarwrite::{self, FileCopyError, TarWriter};
use crate::safefs::{self, Anchored, Dir};

const BLOCK: usize = limits::BLOCK as usize;
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
    /// The archive's format; `None`: Qdrant's for a Qdrant storage directory, else files.
    pub format: Option<Format>,
}

/// An entry that was not archived because it is not a directory or a regular file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// Path relative to the storage directory.
    pub path: String,
    /// `symlink`, `fifo`, `socket`, `block device`, `char device`, `vanished` (listed, but
    /// gone by the time it was read), or `manifest` (the manifest of an archive Qdrant
    /// recovered, left in the collection's directory).
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
    #[error(
        "{path} is not a Qdrant collection (it has no config.json, or no shard directory with \
         segments/); snapshot it with --format files"
    )]
    NotQdrant { path: PathBuf },
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
    let format = choose_format(&root, spec.format, &collections)?;
    Ok(Manifest::new(
        spec.collection.clone(),
        spec.node.clone(),
        spec.created_at,
        collections,
        aliases,
        spec.identity.clone(),
        format,
    ))
}

/// The format an archive of `collections` takes: the one asked for (Qdrant's only for
/// Qdrant collections), else Qdrant's when there are collections and each is Qdrant's.
fn choose_format(
    root: &Dir,
    asked: Option<Format>,
    collections: &[String],
) -> Result<Format, CreateError> {
    let not_qdrant = || -> Result<Option<PathBuf>, CreateError> {
        for c in collections {
            let rel = Path::new(COLLECTIONS_DIR).join(c);
            let dir = root.open_dir(&rel).map_err(read_err(root, &rel))?;
            if !is_qdrant_collection(&dir).map_err(read_err(root, &rel))? {
                return Ok(Some(root.join(&rel)));
            }
        }
        Ok(None)
    };
    match asked {
        Some(Format::Files) => Ok(Format::Files),
        Some(Format::Qdrant) => match not_qdrant()? {
            None => Ok(Format::Qdrant),
            Some(path) => Err(CreateError::NotQdrant { path }),
        },
        None if collections.is_empty() => Ok(Format::Files),
        None => Ok(match not_qdrant()? {
            None => Format::Qdrant,
            Some(_) => Format::Files,
        }),
    }
}

/// Is `dir` a Qdrant collection's directory, as the Qdrant server keeps one: its
/// `config.json`, and a shard directory with its `shard_config.json` and `segments/`
/// (qdrant-edge's shards have neither file: they are not)?
pub fn is_qdrant_collection(dir: &Dir) -> io::Result<bool> {
    let is = |rel: &Path, kind: fn(&rustix::fs::Stat) -> bool| -> io::Result<bool> {
        Ok(dir.stat(rel)?.is_some_and(|st| kind(&st)))
    };
    if !is(Path::new(qdrant::CONFIG_FILE), safefs::is_file)? {
        return Ok(false);
    }
    for (name, kind) in dir.entries()? {
        let shard = Path::new(&name);
        if kind == FileType::Directory
            && qdrant::is_shard_dir(name.as_bytes())
            && is(&shard.join(qdrant::SHARD_CONFIG_FILE), safefs::is_file)?
            && is(&shard.join(qdrant::SEGMENTS_DIR), safefs::is_dir)?
        {
            return Ok(true);
        }
    }
    Ok(false)
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

/// The manifest as the archive's first entry holds it, refused when larger than a restore
/// reads.
pub fn manifest_json(manifest: &Manifest) -> Result<Vec<u8>, CreateError> {
    let json = serde_json::to_vec_pretty(manifest).expect("a manifest always serialises");
    if json.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(CreateError::ManifestTooLarge { size: json.len() });
    }
    Ok(json)
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
    let json = manifest_json(manifest)?;
    let mtime = u64::try_from(manifest.created_at.as_second()).unwrap_or(0);
    walker
        .tar
        .append_bytes(MANIFEST_ENTRY.as_bytes(), 0o644, mtime, &json)
        .map_err(write_err)?;
    match (manifest.format, &spec.collection) {
        (Format::Files, Some(c)) => {
            let rel = Path::new(COLLECTIONS_DIR).join(c);
            let dir = root.open_dir(&rel).map_err(read_err(&root, &rel))?;
            walker.dir(&dir, rel.into_os_string().into_encoded_bytes())?;
        }
        (Format::Files, None) => walker.children(&root, Vec::new())?,
        (Format::Qdrant, collection) => {
            let planned = walker.plan_qdrant(&root, collection.as_deref(), manifest, mtime)?;
            for entry in &planned {
                walker.write_planned(&root, entry)?;
            }
        }
    }
    walker.tar.finish().map_err(write_err)?;
    Ok(walker.done)
}

fn write_err(source: io::Error) -> CreateError {
    CreateError::Write { source }
}

/// What a directory's child is, opened without following a link.
enum Child {
    File(File),
    Dir(Dir),
    /// Not archived, for this reason (see [`Skipped::kind`]).
    Skip(&'static str),
}

/// Opens the child `name` of `dir`, listed as `kind`. What was listed may be gone (a
/// database's temporary file), or swapped for a link, by the time it is opened: it is
/// skipped, as is anything that is not a file or a directory.
fn open_child(dir: &Dir, name: &std::ffi::OsStr, kind: FileType) -> Result<Child, CreateError> {
    let opened = match kind {
        // No following a link, no blocking on a FIFO swapped in since the listing.
        FileType::RegularFile => dir
            .open_file(name, OFlags::RDONLY | OFlags::NONBLOCK)
            .map(Child::File),
        FileType::Directory => dir.open_dir(name).map(Child::Dir),
        other => return Ok(Child::Skip(kind_of(other))),
    };
    match opened {
        Ok(child) => Ok(child),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Child::Skip("vanished")),
        Err(e) if safefs::is_link_refused(&e) => Ok(Child::Skip("symlink")),
        Err(source) => Err(CreateError::Read {
            path: dir.join(name),
            source,
        }),
    }
}

/// The children of `dir`, sorted by their name's bytes (the type from the listing: no
/// `lstat` per file).
fn sorted_children(dir: &Dir) -> Result<Vec<(std::ffi::OsString, FileType)>, CreateError> {
    let mut children = dir.entries().map_err(|source| CreateError::Read {
        path: dir.path().to_owned(),
        source,
    })?;
    children.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    Ok(children)
}

/// A file as it is about to be archived: its metadata, and its data regions when it has
/// holes.
struct Opened {
    meta: std::fs::Metadata,
    regions: Option<Vec<(u64, u64)>>,
}

fn inspect(file: &File, abs: &Path) -> Result<Opened, CreateError> {
    let read = |source| CreateError::Read {
        path: abs.to_owned(),
        source,
    };
    let meta = file.metadata().map_err(read)?;
    if !meta.is_file() {
        return Err(CreateError::Changed {
            path: abs.to_owned(),
            expected: 0,
        });
    }
    let size = meta.len();
    // Fewer blocks than bytes: the file may have holes.
    let regions = if meta.blocks().saturating_mul(512) < size {
        data_regions(file, size).map_err(read)?
    } else {
        None
    };
    Ok(Opened { meta, regions })
}

/// The times that change when a file is written.
fn times(meta: &std::fs::Metadata) -> (i64, i64, i64, i64) {
    (
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec(),
    )
}

/// An entry of a Qdrant-format archive, planned before it is written: a tar in the tar
/// needs its size in its header.
#[derive(Debug)]
enum Planned {
    Dir {
        path: Vec<u8>,
        mode: u32,
        mtime: u64,
    },
    File {
        path: Vec<u8>,
        /// Where it is, relative to the storage directory.
        src: PathBuf,
        /// Device and inode, size, data regions and times when it was planned.
        identity: (u64, u64),
        size: u64,
        regions: Option<Vec<(u64, u64)>>,
        times: (i64, i64, i64, i64),
        mode: u32,
        mtime: u64,
    },
    Data {
        path: Vec<u8>,
        mtime: u64,
        data: Vec<u8>,
    },
    Tar {
        path: Vec<u8>,
        mtime: u64,
        entries: Vec<Planned>,
    },
}

impl Planned {
    /// Bytes it takes in the archive.
    fn size(&self) -> u64 {
        match self {
            Self::Dir { path, .. } => tarwrite::header_size(path),
            Self::File {
                path,
                size,
                regions: Some(regions),
                ..
            } => tarwrite::sparse_entry_size(path, *size, regions),
            Self::File { path, size, .. } => tarwrite::entry_size(path, *size),
            Self::Data { path, data, .. } => tarwrite::entry_size(path, data.len() as u64),
            Self::Tar { path, entries, .. } => tarwrite::entry_size(path, tar_size(entries)),
        }
    }
}

/// Bytes a tar of `entries` takes, its end marker included.
fn tar_size(entries: &[Planned]) -> u64 {
    entries.iter().map(Planned::size).sum::<u64>() + tarwrite::END
}

/// The name of a collection's snapshot inside a full snapshot: `<name>.snapshot`, or, for a
/// name too long for that to be a file name, by its position (pure).
fn nested_name(collection: &str, index: usize) -> String {
    let name = format!("{collection}{}", name::ARCHIVE_EXT);
    if name.len() <= name::MAX_NAME_LEN {
        name
    } else {
        format!("collection-{index}{}", name::ARCHIVE_EXT)
    }
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
            .map_err(write_err)?;
        self.done.directories += 1;
        self.children(dir, path)
    }

    /// Archives the children of the open directory `dir`, whose archive path is `prefix`
    /// (empty for the root, else ending in `/`).
    fn children(&mut self, dir: &Dir, prefix: Vec<u8>) -> Result<(), CreateError> {
        for (name, kind) in sorted_children(dir)? {
            if prefix.is_empty() && name == WORKSPACE_DIR {
                continue;
            }
            let mut rel = prefix.clone();
            rel.extend_from_slice(name.as_bytes());
            let path = dir.join(&name);
            if kind == FileType::RegularFile {
                check_path(&rel, &path)?;
            }
            match open_child(dir, &name, kind)? {
                Child::File(file) => self.file(file, path, &rel)?,
                Child::Dir(sub) if !self.excluded(&sub)? => self.dir(&sub, rel)?,
                Child::Dir(_) => {}
                Child::Skip(kind) => self.skip(&rel, kind),
            }
        }
        Ok(())
    }

    /// Is the directory `sub` one never archived?
    fn excluded(&self, sub: &Dir) -> Result<bool, CreateError> {
        let st = sub.metadata().map_err(|source| CreateError::Read {
            path: sub.path().to_owned(),
            source,
        })?;
        Ok(self.exclude.contains(&safefs::identity(&st)))
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
        let opened = inspect(&file, &abs)?;
        let mode = opened.meta.mode();
        let mtime = u64::try_from(opened.meta.mtime()).unwrap_or(0);
        let size = opened.meta.len();
        self.copy(
            &file,
            &abs,
            rel,
            (mode, mtime, size),
            opened.regions.as_deref(),
        )?;
        self.said_if_changed(&file, &abs, rel, times(&opened.meta));
        Ok(())
    }

    /// Writes the entry of `file` (`abs`) at `rel`: `size` bytes with these mode and time,
    /// its data `regions` only when it has holes.
    fn copy(
        &mut self,
        file: &File,
        abs: &Path,
        rel: &[u8],
        (mode, mtime, size): (u32, u64, u64),
        regions: Option<&[(u64, u64)]>,
    ) -> Result<(), CreateError> {
        let on_read = |n| {
            self.done.data_bytes += n;
            (self.progress)(self.done.data_bytes);
        };
        let written = match regions {
            Some(regions) => {
                self.done.sparse_files += 1;
                self.tar
                    .append_sparse(rel, mode, mtime, size, regions, file, on_read)
            }
            None => self.tar.append_file(rel, mode, mtime, size, file, on_read),
        };
        written.map_err(|e| match e {
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

    /// Says `file` (at `rel`) changed when its times are no longer `before`: written to
    /// while it was read, at the same size (archived all the same).
    fn said_if_changed(
        &mut self,
        file: &File,
        abs: &Path,
        rel: &[u8],
        before: (i64, i64, i64, i64),
    ) {
        if file.metadata().is_ok_and(|after| times(&after) != before) {
            tracing::warn!(path = %abs.display(), "changed while it was being archived");
            self.done
                .changed
                .push(String::from_utf8_lossy(rel).into_owned());
        }
    }

    /// Plans the Qdrant snapshot of `collection` (its directory's entries, each segment a
    /// tar in the tar), or, for `None`, Qdrant's full snapshot of the manifest's
    /// collections: their `config.json` and one collection snapshot each.
    fn plan_qdrant(
        &mut self,
        root: &Dir,
        collection: Option<&str>,
        manifest: &Manifest,
        mtime: u64,
    ) -> Result<Vec<Planned>, CreateError> {
        let mut plan_collection = |c: &str| {
            let src = Path::new(COLLECTIONS_DIR).join(c);
            let dir = root.open_dir(&src).map_err(read_err(root, &src))?;
            self.plan_tree(&dir, src, Vec::new(), true)
        };
        if let Some(c) = collection {
            return plan_collection(c);
        }
        let mut config = qdrant::FullConfig {
            collections_aliases: manifest.aliases.clone(),
            ..Default::default()
        };
        let mut nested = Vec::new();
        for (i, c) in manifest.collections.iter().enumerate() {
            let file = nested_name(c, i);
            config.collections_mapping.insert(c.clone(), file.clone());
            nested.push(Planned::Tar {
                path: file.into_bytes(),
                mtime,
                entries: plan_collection(c)?,
            });
        }
        let data = serde_json::to_vec_pretty(&config).expect("a config always serialises");
        let mut planned = vec![Planned::Data {
            path: qdrant::CONFIG_FILE.into(),
            mtime,
            data,
        }];
        planned.extend(nested);
        Ok(planned)
    }

    /// Plans the entries of the open directory `dir` (at `src` in the storage directory)
    /// under the archive path `prefix`; in a collection's directory (`collection`), each
    /// `<shard>/segments/<id>/` as the segment tar Qdrant writes.
    fn plan_tree(
        &mut self,
        dir: &Dir,
        src: PathBuf,
        prefix: Vec<u8>,
        collection: bool,
    ) -> Result<Vec<Planned>, CreateError> {
        let mut planned = Vec::new();
        let parts: Vec<&[u8]> = prefix
            .split(|b| *b == b'/')
            .filter(|p| !p.is_empty())
            .collect();
        let in_segments = collection && qdrant::is_segments_dir(&parts);
        for (name, kind) in sorted_children(dir)? {
            let bytes = name.as_bytes();
            let mut path = prefix.clone();
            path.extend_from_slice(bytes);
            let child_src = src.join(&name);
            let abs = dir.join(&name);
            if collection && prefix.is_empty() && name == MANIFEST_ENTRY {
                // Left by Qdrant's recovery of one of these archives: not the collection's.
                self.skip(&path, "manifest");
                continue;
            }
            match open_child(dir, &name, kind)? {
                Child::Skip(kind) => self.skip(&path, kind),
                Child::File(file) => {
                    check_path(&path, &abs)?;
                    check_path(child_src.as_os_str().as_bytes(), &abs)?;
                    let opened = inspect(&file, &abs)?;
                    let meta = &opened.meta;
                    planned.push(Planned::File {
                        path,
                        src: child_src,
                        identity: (meta.dev(), meta.ino()),
                        size: meta.len(),
                        times: times(meta),
                        mode: meta.mode(),
                        mtime: u64::try_from(meta.mtime()).unwrap_or(0),
                        regions: opened.regions,
                    });
                }
                Child::Dir(sub) if self.excluded(&sub)? => {}
                Child::Dir(sub) => {
                    let st = sub.metadata().map_err(read_err(dir, Path::new(&name)))?;
                    let (mode, mtime) = (st.st_mode, u64::try_from(st.st_mtime).unwrap_or(0));
                    if in_segments && qdrant::is_segment_id(bytes) {
                        path.extend_from_slice(b".tar");
                        check_path(&path, &abs)?;
                        planned.push(self.plan_segment(&sub, child_src, path, (mode, mtime))?);
                        continue;
                    }
                    path.push(b'/');
                    check_path(&path, &abs)?;
                    check_path(child_src.as_os_str().as_bytes(), &abs)?;
                    planned.push(Planned::Dir {
                        path: path.clone(),
                        mode,
                        mtime,
                    });
                    planned.extend(self.plan_tree(&sub, child_src, path, collection)?);
                }
            }
        }
        Ok(planned)
    }

    /// Plans a segment's directory `dir` as the segment tar `path` Qdrant writes: its files
    /// under `snapshot/files/`, both directories with the segment's mode and time.
    fn plan_segment(
        &mut self,
        dir: &Dir,
        src: PathBuf,
        path: Vec<u8>,
        (mode, mtime): (u32, u64),
    ) -> Result<Planned, CreateError> {
        let files = b"snapshot/files/".to_vec();
        let mut entries = vec![
            Planned::Dir {
                path: b"snapshot/".to_vec(),
                mode,
                mtime,
            },
            Planned::Dir {
                path: files.clone(),
                mode,
                mtime,
            },
        ];
        entries.extend(self.plan_tree(dir, src, files, false)?);
        Ok(Planned::Tar {
            path,
            mtime,
            entries,
        })
    }

    /// Writes a planned entry; a file that is no longer what was planned (another file, of
    /// another size) fails the snapshot.
    fn write_planned(&mut self, root: &Dir, entry: &Planned) -> Result<(), CreateError> {
        match entry {
            Planned::Dir { path, mode, mtime } => {
                self.tar
                    .append_dir(path, *mode, *mtime)
                    .map_err(write_err)?;
                self.done.directories += 1;
            }
            Planned::Data { path, mtime, data } => {
                self.tar
                    .append_bytes(path, 0o644, *mtime, data)
                    .map_err(write_err)?;
            }
            Planned::Tar {
                path,
                mtime,
                entries,
            } => {
                self.tar
                    .header(
                        path,
                        tar::EntryType::Regular,
                        0o644,
                        *mtime,
                        tar_size(entries),
                    )
                    .map_err(write_err)?;
                for entry in entries {
                    self.write_planned(root, entry)?;
                }
                // A tar is whole blocks: no padding after it.
                self.tar.end().map_err(write_err)?;
            }
            Planned::File {
                path,
                src,
                identity,
                size,
                regions,
                times: before,
                mode,
                mtime,
            } => {
                let abs = root.join(src);
                let changed = || CreateError::Changed {
                    path: abs.clone(),
                    expected: *size,
                };
                let file = root
                    .open_file(src, OFlags::RDONLY | OFlags::NONBLOCK)
                    .map_err(|e| match e.kind() {
                        io::ErrorKind::NotFound => changed(),
                        _ => read_err(root, src)(e),
                    })?;
                let meta = file.metadata().map_err(read_err(root, src))?;
                if (meta.dev(), meta.ino()) != *identity || meta.len() != *size {
                    return Err(changed());
                }
                self.copy(
                    &file,
                    &abs,
                    path,
                    (*mode, *mtime, *size),
                    regions.as_deref(),
                )?;
                self.said_if_changed(&file, &abs, path, *before);
            }
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
            format: None,
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
