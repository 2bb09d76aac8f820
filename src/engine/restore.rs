//! Restoring archives: read and check an untrusted archive into a staging directory, verify
//! its checksum, then move the staged data into the storage directory according to the
//! priority (DESIGN §5). Nothing in the target changes until the whole archive has been read,
//! checked and made durable; a refused archive changes nothing.
//!
//! The target belongs to the workload, which may plant symbolic links there before or during
//! a restore: every directory and file the restore creates, opens, changes or removes is
//! reached from the storage directory's descriptor without following links
//! ([`crate::safefs`]). Staged files are created exclusively, so an archive holding a path
//! twice is refused.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::apply::{self, Fixup};
use super::archive::COLLECTIONS_DIR;
use super::flush::{Flusher, KICK_EVERY, start_writeback};
use super::limits;
use super::manifest::{FORMAT_VERSION, Kind, MANIFEST_ENTRY, MAX_MANIFEST_BYTES, Manifest};
use super::name::{self, NameError};
use super::readahead::{self, ChunkReader};
use super::untar::{EntryType, SparseMap, TarError, TarReader};
use super::workspace::{Workspace, WorkspaceError};
use super::writers::{SMALL_FILE, SmallFile, Writers};
use crate::safefs::{self, Anchored, Dir};

const COPY_BUF: usize = 1 << 20;
/// Threads creating small files.
const WRITERS: usize = 2;

/// What wins when the target collection already holds data (DESIGN §5); the same type
/// serves the CLI and the `SnapshotRestore` resource.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Existing data wins: an existing collection is left untouched (the default).
    #[default]
    Replica,
    /// The snapshot wins: an existing collection is replaced atomically.
    Snapshot,
    /// No synchronisation: snapshot files are written over existing ones, nothing removed.
    NoSync,
}

impl Priority {
    const ALL: [Self; 3] = [Self::Replica, Self::Snapshot, Self::NoSync];
    /// The names accepted by [`FromStr`], as Qdrant spells them.
    pub const NAMES: [&'static str; 3] = ["replica", "snapshot", "no_sync"];

    /// Its name, as Qdrant spells it (and the CLI takes it).
    pub fn name(self) -> &'static str {
        match self {
            Self::Replica => "replica",
            Self::Snapshot => "snapshot",
            Self::NoSync => "no_sync",
        }
    }
}

impl FromStr for Priority {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown priority {s:?}; expected one of {}",
                    Self::NAMES.join(", ")
                )
            })
    }
}

pub use super::limits::Limits;

/// What to restore from an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// One collection, restored as `into`. `from` picks the collection out of a full-storage
    /// archive (default: `into`); for a collection archive it must match the archive's.
    Collection { from: Option<String>, into: String },
    /// Everything a full-storage archive holds.
    Full,
}

/// A restore to run.
#[derive(Debug, Clone)]
pub struct RestoreSpec {
    /// The storage directory restored into (created when absent).
    pub storage: Anchored,
    pub selection: Selection,
    /// What wins when the target already holds a collection (or, for a full-storage
    /// restore, anything the archive holds); `None`: nothing does, the restore is refused
    /// (Qdrant's startup contract).
    pub priority: Option<Priority>,
    /// Expected SHA-256 (lowercase hex) of the whole archive.
    pub checksum: Option<String>,
    pub limits: Limits,
}

/// The outcome for one collection on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Outcome {
    Restored,
    Skipped,
}

/// What happened to one collection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CollectionResult {
    pub collection: String,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What a restore did.
#[derive(Debug, Clone, Serialize)]
pub struct Restored {
    pub manifest: Manifest,
    /// SHA-256 of the archive as read.
    pub checksum: String,
    /// Size of the archive.
    pub archive_bytes: u64,
    /// Bytes of file data staged.
    pub data_bytes: u64,
    /// Files staged.
    pub files: u64,
    pub collections: Vec<CollectionResult>,
}

/// Why a restore was refused or failed. Every error before "apply" leaves the target as it was.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Workspace(#[from] WorkspaceError),
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(transparent)]
    Tar(#[from] TarError),
    #[error("the archive does not start with {MANIFEST_ENTRY}: it is not a snapshot archive")]
    NoManifest,
    #[error("the archive's {MANIFEST_ENTRY} is not valid")]
    BadManifest { source: serde_json::Error },
    #[error(
        "the archive has format version {found}; this snapshot-operator reads version \
         {FORMAT_VERSION}: use a newer snapshot-operator"
    )]
    UnknownVersion { found: u32 },
    #[error("the archive is a {kind:?} snapshot but its manifest says otherwise: {detail}")]
    InconsistentManifest { kind: Kind, detail: String },
    #[error("the archive holds collection {found:?}, not {wanted:?}")]
    WrongCollection { wanted: String, found: String },
    #[error(
        "collection {wanted:?} is not in this full-storage snapshot; it holds: {}",
        .available.join(", ")
    )]
    NotInArchive {
        wanted: String,
        available: Vec<String>,
    },
    #[error(
        "a full-storage restore needs a full-storage snapshot; this one holds collection {collection:?}"
    )]
    NotFull { collection: String },
    #[error("refused: archive entry {path:?} is {why}; nothing was changed")]
    Hostile { path: String, why: String },
    #[error(
        "refused: the archive holds more than {max} entries (--max-entries); nothing was changed"
    )]
    TooManyEntries { max: u64 },
    #[error(
        "refused: the archive holds more than {max} bytes (--max-bytes bounds both the bytes \
         read, headers and padding included, and the size of the files restored, holes \
         included); nothing was changed"
    )]
    TooLarge { max: u64 },
    #[error(
        "refused: the archive's sparse files have more than {max} bytes of holes in all \
         (--max-hole-bytes); nothing was changed"
    )]
    TooManyHoles { max: u64 },
    #[error(
        "refused: the archive's files would take more than {max} bytes of disk ({bound}); \
         nothing was changed"
    )]
    TooMuchDisk { max: u64, bound: &'static str },
    #[error("the archive holds no data for collection {collection:?}")]
    Empty { collection: String },
    #[error(
        "checksum mismatch: the archive's SHA-256 is {actual}, expected {expected}; \
         nothing was changed"
    )]
    Checksum { expected: String, actual: String },
    #[error("refused: {path} is {why}; nothing was changed")]
    Target { path: PathBuf, why: String },
    #[error("failed to open the storage directory {path}")]
    Storage { path: PathBuf, source: io::Error },
    #[error("failed to write {path}")]
    Write { path: PathBuf, source: io::Error },
}

pub(super) fn write_err(path: &Path) -> impl FnOnce(io::Error) -> RestoreError + use<> {
    let path = path.to_owned();
    move |source| RestoreError::Write { path, source }
}

/// An error reading an entry's data: the end of the input is a truncated archive.
fn data_err(source: io::Error) -> RestoreError {
    RestoreError::Tar(if source.kind() == io::ErrorKind::UnexpectedEof {
        TarError::Truncated
    } else {
        TarError::Read { source }
    })
}

/// Restores the archive read from `reader` as `spec` says. `progress` is called with the
/// number of archive bytes read so far.
pub fn restore<R: Read + Send>(
    spec: &RestoreSpec,
    reader: R,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Restored, RestoreError> {
    if let Selection::Collection { from, into } = &spec.selection {
        name::validate("collection", into)?;
        if let Some(from) = from {
            name::validate("collection", from)?;
        }
    }
    let (root, created) =
        spec.storage
            .open_or_create()
            .map_err(|source| RestoreError::Storage {
                path: spec.storage.path(),
                source,
            })?;
    let result = Workspace::open(&root)
        .map_err(RestoreError::from)
        .and_then(|workspace| {
            let result = workspace
                .staging()
                .map_err(RestoreError::from)
                .and_then(|staging| {
                    let staged = extract(spec, reader, &staging, progress)?;
                    staging
                        .sync_filesystem()
                        .map_err(write_err(staging.path()))?;
                    let collections = apply::apply(spec, &root, &staging, &staged.fixups)?;
                    Ok(Restored {
                        collections,
                        ..staged.restored
                    })
                });
            workspace.close();
            result
        });
    if result.is_err() && created {
        // Leave no trace of a refused restore, not even the storage directory we created.
        let _ = spec.storage.remove_empty();
    }
    result
}

/// What extraction staged.
struct Staged {
    restored: Restored,
    /// Directories whose mode from the archive withholds from their owner what moving them
    /// into place needs: set once they are in place.
    fixups: Vec<Fixup>,
}

/// Reads the whole archive into `staging`, checking every entry, the limits, the end marker
/// and the checksum; then gives staged directories their modes and times, deepest first.
fn extract<R: Read + Send>(
    spec: &RestoreSpec,
    reader: R,
    staging: &Dir,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Staged, RestoreError> {
    let (parsed, hashed) = readahead::with_read_ahead(reader, spec.limits.max_bytes, |input| {
        unpack(spec, input, staging, progress)
    });
    let (mut restored, mapping, dirs) = parsed.map_err(past_the_bound)?;
    let hashed = hashed.ok_or(RestoreError::Tar(TarError::Truncated))?;
    restored.archive_bytes = hashed.bytes;
    restored.checksum = hashed.sha256;
    if let Some(expected) = &spec.checksum
        && expected != &restored.checksum
    {
        return Err(RestoreError::Checksum {
            expected: expected.clone(),
            actual: restored.checksum,
        });
    }
    mapping.check_present(staging)?;
    // Directory modes and times last, deepest first: writing into a directory changes its
    // time, and a read-only mode would block its own content. Staged directories keep
    // owner access, so that they can be moved into place; the others are fixed up there.
    let mut fixups = Vec::new();
    for (rel, (mode, mtime)) in dirs.iter().rev() {
        let dir = staging
            .open_dir(rel)
            .map_err(write_err(&staging.join(rel)))?;
        let staged_mode = mode | 0o700;
        dir.set_mode(staged_mode)
            .and_then(|()| dir.set_mtime(*mtime))
            .map_err(write_err(dir.path()))?;
        if staged_mode != *mode {
            let st = dir.metadata().map_err(write_err(dir.path()))?;
            fixups.push(Fixup {
                rel: rel.clone(),
                mode: *mode,
                identity: safefs::identity(&st),
            });
        }
    }
    Ok(Staged { restored, fixups })
}

/// The error of reading past the archive's size bound is that bound's.
fn past_the_bound(error: RestoreError) -> RestoreError {
    let bound = match &error {
        RestoreError::Tar(TarError::Read { source }) => readahead::TooLong::of(source),
        _ => None,
    };
    match bound {
        Some(max) => RestoreError::TooLarge { max },
        None => error,
    }
}

/// Staged directories (relative to the staging root) with their mode and time from the
/// archive; the last entry for a directory wins, as with GNU tar.
type StagedDirs = BTreeMap<PathBuf, (u32, u64)>;

/// Parses the archive from `input` into `staging`, then reads the input to its end.
fn unpack(
    spec: &RestoreSpec,
    input: &mut ChunkReader,
    staging: &Dir,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(Restored, Mapping, StagedDirs), RestoreError> {
    let umask = current_umask();
    std::thread::scope(|scope| {
        let writers = Writers::start(scope, WRITERS, umask);
        unpack_with(spec, input, staging, progress, writers, umask)
    })
}

fn unpack_with(
    spec: &RestoreSpec,
    input: &mut ChunkReader,
    staging: &Dir,
    progress: &(dyn Fn(u64) + Sync),
    mut writers: Writers<'_>,
    umask: u32,
) -> Result<(Restored, Mapping, StagedDirs), RestoreError> {
    let mut tar = TarReader::new(input);
    let manifest = read_manifest(&mut tar)?;
    let mapping = Mapping::new(&manifest, &spec.selection)?;
    let mut stats = Restored {
        manifest,
        checksum: String::new(),
        archive_bytes: 0,
        data_bytes: 0,
        files: 0,
        collections: Vec::new(),
    };
    let mut budget = Budget::new(spec.limits, staging)?;
    let mut flusher = Flusher::start(staging);
    let mut tree = StagingTree::new(staging).map_err(write_err(staging.path()))?;
    let mut dirs = StagedDirs::new();
    let mut buf = vec![0; COPY_BUF];
    while let Some(entry) = tar.next_entry()? {
        let shown = || String::from_utf8_lossy(&entry.path).into_owned();
        let hostile = |why: &str| RestoreError::Hostile {
            path: shown(),
            why: why.into(),
        };
        let parts = limits::path_components(&entry.path).map_err(hostile)?;
        let is_dir = match entry.kind {
            EntryType::File => false,
            EntryType::Directory if entry.size == 0 => true,
            EntryType::Directory => return Err(hostile("a directory with data")),
            other => return Err(hostile(&other.describe())),
        };
        budget.read(tar.position(), &entry)?;
        // A sparse file counts with its holes: it is that large once restored.
        let size = match (&entry.sparse, is_dir) {
            (_, true) => 0,
            (Some(map), false) => map.real_size,
            (None, false) => entry.size,
        };
        if stats.data_bytes.saturating_add(size) > spec.limits.max_bytes {
            return Err(RestoreError::TooLarge {
                max: spec.limits.max_bytes,
            });
        }
        let Some(rel) = mapping.map(&parts).map_err(hostile)? else {
            continue;
        };
        budget.staged(&entry)?;
        let twice = |e: io::Error| match e.kind() {
            io::ErrorKind::AlreadyExists | io::ErrorKind::NotADirectory => {
                hostile("given twice in the archive (or as a file and as a directory)")
            }
            _ => write_err(&staging.join(&rel))(e),
        };
        if is_dir {
            tree.dir(&rel).map_err(twice)?;
            dirs.insert(rel, (entry.mode & 0o1777, entry.mtime));
        } else {
            let name = rel
                .file_name()
                .expect("paths have a last component")
                .to_owned();
            let dir = tree
                .dir(rel.parent().unwrap_or(Path::new("")))
                .map_err(twice)?;
            let path = staging.join(&rel);
            let perm = entry.mode & 0o777;
            if let Some(map) = &entry.sparse {
                write_file(&dir, &name, &path, perm, entry.mtime, umask, |file| {
                    write_sparse(&mut tar, file, map, &mut buf, &path)
                })?;
            } else if size <= SMALL_FILE {
                let mut data = vec![0; size as usize];
                tar.read_exact(&mut data).map_err(data_err)?;
                writers.write(SmallFile {
                    dir,
                    name,
                    path,
                    data,
                    perm,
                    mtime: entry.mtime,
                })?;
            } else {
                write_file(&dir, &name, &path, perm, entry.mtime, umask, |file| {
                    copy(&mut tar, file, &mut buf, &path)
                })?;
            }
            stats.files += 1;
            stats.data_bytes += size;
            flusher.wrote(size);
        }
        progress(tar.position());
    }
    writers.finish()?;
    // What follows the end marker: a little zero padding at most (the checksum covers it).
    tar.finish()?;
    Ok((stats, mapping, dirs))
}

/// What an archive has cost so far, against its [`Limits`].
struct Budget {
    limits: Limits,
    /// The disk the staged files may take, and which bound that is.
    max_disk: (u64, &'static str),
    entries: u64,
    holes: u64,
    disk: u64,
}

impl Budget {
    /// The limits, the disk bound defaulting to the space free where `staging` is.
    fn new(limits: Limits, staging: &Dir) -> Result<Self, RestoreError> {
        let max_disk = match limits.max_disk_bytes {
            Some(max) => (max, "--max-disk-bytes"),
            None => {
                let st = rustix::fs::fstatvfs(staging)
                    .map_err(|e| write_err(staging.path())(e.into()))?;
                (
                    st.f_bavail.saturating_mul(st.f_frsize),
                    "the space free on the target's filesystem; --max-disk-bytes sets another bound",
                )
            }
        };
        Ok(Self {
            limits,
            max_disk,
            entries: 0,
            holes: 0,
            disk: 0,
        })
    }

    /// Counts an entry whose header ends at `position` of the archive, refusing it when the
    /// archive holds too many or when its data would take the archive past its size bound
    /// (before any of it is read).
    fn read(&mut self, position: u64, entry: &super::untar::Entry) -> Result<(), RestoreError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(RestoreError::TooManyEntries {
                max: self.limits.max_entries,
            });
        }
        let end = position
            .saturating_add(entry.size)
            .saturating_add(entry.size.next_multiple_of(limits::BLOCK) - entry.size);
        if end > self.limits.max_bytes {
            return Err(RestoreError::TooLarge {
                max: self.limits.max_bytes,
            });
        }
        Ok(())
    }

    /// Counts the holes and the disk of an entry about to be staged.
    fn staged(&mut self, entry: &super::untar::Entry) -> Result<(), RestoreError> {
        let (holes, disk) = match (&entry.sparse, entry.kind) {
            (_, EntryType::Directory) => (0, limits::DISK_BLOCK),
            (Some(map), _) => (map.real_size - entry.size, limits::disk_use(&map.regions)),
            (None, _) => (0, limits::disk_use(&[(0, entry.size)])),
        };
        self.holes = self.holes.saturating_add(holes);
        if self.holes > self.limits.max_hole_bytes {
            return Err(RestoreError::TooManyHoles {
                max: self.limits.max_hole_bytes,
            });
        }
        self.disk = self.disk.saturating_add(disk);
        if self.disk > self.max_disk.0 {
            return Err(RestoreError::TooMuchDisk {
                max: self.max_disk.0,
                bound: self.max_disk.1,
            });
        }
        Ok(())
    }
}

/// The staging tree's directories along the path last used, each opened from its parent
/// without following links: consecutive entries of one directory cost no lookups, and
/// nothing the workload swaps in below the staging root is followed.
struct StagingTree {
    root: Arc<Dir>,
    chain: Vec<(OsString, Arc<Dir>)>,
}

impl StagingTree {
    fn new(root: &Dir) -> io::Result<Self> {
        Ok(Self {
            root: Arc::new(root.try_clone()?),
            chain: Vec::new(),
        })
    }

    /// The directory `rel` of the staging tree, created where missing with the default mode
    /// (`0777` through the umask, as `mkdir -p` and GNU tar do; an entry of the archive for
    /// it sets its mode later).
    fn dir(&mut self, rel: &Path) -> io::Result<Arc<Dir>> {
        let parts: Vec<&OsStr> = rel
            .components()
            .filter_map(|c| match c {
                Component::Normal(name) => Some(name),
                _ => None,
            })
            .collect();
        let common = self
            .chain
            .iter()
            .zip(&parts)
            .take_while(|((held, _), part)| held.as_os_str() == **part)
            .count();
        self.chain.truncate(common);
        for part in &parts[common..] {
            let parent = self.chain.last().map_or(&self.root, |(_, dir)| dir);
            let dir = match parent.create_dir(part, 0o777) {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => parent.open_dir(part)?,
                other => other?,
            };
            self.chain.push(((*part).to_owned(), Arc::new(dir)));
        }
        Ok(self
            .chain
            .last()
            .map_or_else(|| self.root.clone(), |(_, dir)| dir.clone()))
    }
}

/// Creates the file `name` in `dir` (`path` for messages) with permission bits `perm` and
/// modification time `mtime`, its content written by `content`. The file must not exist:
/// an archive that holds a path twice is refused.
pub(super) fn write_file(
    dir: &Dir,
    name: &OsStr,
    path: &Path,
    perm: u32,
    mtime: u64,
    umask: u32,
    content: impl FnOnce(&mut File) -> Result<(), RestoreError>,
) -> Result<(), RestoreError> {
    let mut file = dir.create_file(name, perm).map_err(|e| {
        if e.kind() == io::ErrorKind::AlreadyExists {
            RestoreError::Hostile {
                path: path.display().to_string(),
                why: "given twice in the archive".into(),
            }
        } else {
            write_err(path)(e)
        }
    })?;
    content(&mut file)?;
    // The umask may have taken bits away.
    if perm & !umask != perm {
        file.set_permissions(std::fs::Permissions::from_mode(perm))
            .map_err(write_err(path))?;
    }
    file.set_modified(to_time(mtime)).map_err(write_err(path))
}

/// The process's umask (read by setting it and putting it back).
fn current_umask() -> u32 {
    let mode = rustix::fs::Mode::from_bits_truncate(0o022);
    let old = rustix::process::umask(mode);
    rustix::process::umask(old);
    old.bits()
}

/// Reads the manifest at the start of an archive (and nothing more).
pub fn manifest_of<R: Read>(reader: R) -> Result<Manifest, RestoreError> {
    read_manifest(&mut TarReader::new(reader))
}

fn read_manifest<R: Read>(tar: &mut TarReader<R>) -> Result<Manifest, RestoreError> {
    let entry = tar.next_entry()?.ok_or(RestoreError::NoManifest)?;
    if entry.path != MANIFEST_ENTRY.as_bytes()
        || entry.kind != EntryType::File
        || entry.size > MAX_MANIFEST_BYTES
    {
        return Err(RestoreError::NoManifest);
    }
    let mut json = vec![0; entry.size as usize];
    tar.read_exact(&mut json).map_err(data_err)?;
    #[derive(serde::Deserialize)]
    struct Version {
        format_version: u32,
    }
    let version: Version =
        serde_json::from_slice(&json).map_err(|source| RestoreError::BadManifest { source })?;
    if version.format_version != FORMAT_VERSION {
        return Err(RestoreError::UnknownVersion {
            found: version.format_version,
        });
    }
    let manifest: Manifest =
        serde_json::from_slice(&json).map_err(|source| RestoreError::BadManifest { source })?;
    for c in &manifest.collections {
        name::validate("collection", c)?;
    }
    let inconsistent = |detail: &str| RestoreError::InconsistentManifest {
        kind: manifest.kind,
        detail: detail.into(),
    };
    match (manifest.kind, &manifest.collection) {
        (Kind::Collection, Some(c)) if manifest.collections == [c.clone()] => {}
        (Kind::Collection, _) => return Err(inconsistent("collection / collections")),
        (Kind::Full, None) => {}
        (Kind::Full, Some(_)) => return Err(inconsistent("a collection is set")),
    }
    Ok(manifest)
}

/// Maps archive paths to staging paths for the selection.
#[derive(Debug)]
struct Mapping {
    /// For a collection restore: (collection in the archive, collection in the target).
    collection: Option<(String, String)>,
}

impl Mapping {
    fn new(manifest: &Manifest, selection: &Selection) -> Result<Self, RestoreError> {
        let collection = match (selection, manifest.kind) {
            (Selection::Full, Kind::Full) => None,
            (Selection::Full, Kind::Collection) => {
                return Err(RestoreError::NotFull {
                    collection: manifest.collection.clone().unwrap_or_default(),
                });
            }
            (Selection::Collection { from, into }, Kind::Collection) => {
                let found = manifest.collection.clone().unwrap_or_default();
                match from {
                    Some(wanted) if *wanted != found => {
                        return Err(RestoreError::WrongCollection {
                            wanted: wanted.clone(),
                            found,
                        });
                    }
                    _ => Some((found, into.clone())),
                }
            }
            (Selection::Collection { from, into }, Kind::Full) => {
                let wanted = from.clone().unwrap_or_else(|| into.clone());
                if !manifest.collections.contains(&wanted) {
                    return Err(RestoreError::NotInArchive {
                        wanted,
                        available: manifest.collections.clone(),
                    });
                }
                Some((wanted, into.clone()))
            }
        };
        Ok(Self { collection })
    }

    /// The staging path of an archive entry, or `None` when the selection does not take it.
    fn map(&self, parts: &[&[u8]]) -> Result<Option<PathBuf>, &'static str> {
        let under_collections = parts.first() == Some(&COLLECTIONS_DIR.as_bytes());
        if under_collections && parts.len() >= 2 {
            let name = String::from_utf8_lossy(parts[1]);
            if name::validate("collection", &name).is_err() {
                return Err("not under a valid collection name");
            }
        }
        let mut path = PathBuf::new();
        match &self.collection {
            None => {
                for p in parts {
                    path.push(OsStr::from_bytes(p));
                }
            }
            Some((from, into)) => {
                if !under_collections || parts.len() < 2 || parts[1] != from.as_bytes() {
                    return Ok(None);
                }
                path.push(COLLECTIONS_DIR);
                path.push(into);
                for p in &parts[2..] {
                    path.push(OsStr::from_bytes(p));
                }
            }
        }
        Ok(Some(path))
    }

    /// A collection restore must have staged the collection.
    fn check_present(&self, staging: &Dir) -> Result<(), RestoreError> {
        if let Some((from, into)) = &self.collection {
            let rel = Path::new(COLLECTIONS_DIR).join(into);
            let staged = staging.stat(&rel).map_err(write_err(&staging.join(&rel)))?;
            if !staged.is_some_and(|st| safefs::is_dir(&st)) {
                return Err(RestoreError::Empty {
                    collection: from.clone(),
                });
            }
        }
        Ok(())
    }
}

fn copy(
    from: &mut impl Read,
    to: &mut File,
    buf: &mut [u8],
    path: &Path,
) -> Result<(), RestoreError> {
    let (mut written, mut kicked) = (0u64, 0u64);
    loop {
        let n = match from.read(buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => return Err(data_err(source)),
        };
        to.write_all(&buf[..n]).map_err(write_err(path))?;
        written += n as u64;
        if written - kicked >= KICK_EVERY {
            start_writeback(to, kicked, written - kicked);
            kicked = written;
        }
    }
}

/// Writes the data of a sparse entry at its regions' offsets and sets the file's size: the
/// holes stay holes.
fn write_sparse(
    from: &mut impl Read,
    to: &mut File,
    map: &SparseMap,
    buf: &mut [u8],
    path: &Path,
) -> Result<(), RestoreError> {
    use std::os::unix::fs::FileExt;
    for &(offset, len) in &map.regions {
        let mut done = 0u64;
        while done < len {
            let want = usize::try_from(len - done)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            from.read_exact(&mut buf[..want]).map_err(data_err)?;
            to.write_all_at(&buf[..want], offset + done)
                .map_err(write_err(path))?;
            done += want as u64;
        }
    }
    to.set_len(map.real_size).map_err(write_err(path))
}

pub(super) fn to_time(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(collection: Option<&str>, collections: &[&str]) -> Manifest {
        Manifest::new(
            collection.map(Into::into),
            "n".into(),
            jiff::Timestamp::UNIX_EPOCH,
            collections.iter().map(|c| c.to_string()).collect(),
            BTreeMap::new(),
            None,
        )
    }

    #[test]
    fn mapping_renames_and_selects_collections() {
        let m = Mapping::new(
            &manifest(Some("a"), &["a"]),
            &Selection::Collection {
                from: None,
                into: "b".into(),
            },
        )
        .unwrap();
        assert_eq!(
            m.map(&[b"collections", b"a", b"x", b"y"]).unwrap(),
            Some(PathBuf::from("collections/b/x/y"))
        );
        assert_eq!(m.map(&[b"collections", b"other", b"x"]).unwrap(), None);
        assert_eq!(m.map(&[b"aliases", b"data.json"]).unwrap(), None);

        let full = manifest(None, &["a", "c"]);
        let one = Selection::Collection {
            from: Some("c".into()),
            into: "d".into(),
        };
        let m = Mapping::new(&full, &one).unwrap();
        assert_eq!(
            m.map(&[b"collections", b"c"]).unwrap(),
            Some(PathBuf::from("collections/d"))
        );
        let missing = Selection::Collection {
            from: None,
            into: "zz".into(),
        };
        assert!(matches!(
            Mapping::new(&full, &missing),
            Err(RestoreError::NotInArchive { .. })
        ));
        assert!(matches!(
            Mapping::new(&manifest(Some("a"), &["a"]), &Selection::Full),
            Err(RestoreError::NotFull { .. })
        ));
        let wrong = Selection::Collection {
            from: Some("x".into()),
            into: "a".into(),
        };
        assert!(matches!(
            Mapping::new(&manifest(Some("a"), &["a"]), &wrong),
            Err(RestoreError::WrongCollection { .. })
        ));
        let m = Mapping::new(&full, &Selection::Full).unwrap();
        assert_eq!(
            m.map(&[b"aliases", b"data.json"]).unwrap(),
            Some(PathBuf::from("aliases/data.json"))
        );
        assert!(m.map(&[b"collections", b".."]).is_err());
    }

    #[test]
    fn priorities_parse_as_qdrant_spells_them() {
        for name in Priority::NAMES {
            assert_eq!(name.parse::<Priority>().map(Priority::name), Ok(name));
        }
        assert_eq!("no_sync".parse::<Priority>(), Ok(Priority::NoSync));
        assert!("nosync".parse::<Priority>().is_err());
        assert_eq!(Priority::default(), Priority::Replica);
    }
}
