//! Restoring archives: read and check an untrusted archive into a staging directory, verify
//! its checksum, then move the staged data into the storage directory according to the
//! priority (DESIGN §5). Nothing in the target changes until the whole archive has been read,
//! checked and made durable; a refused archive changes nothing.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::WORKSPACE_DIR;
use super::archive::{ALIASES_FILE, COLLECTIONS_DIR};
use super::flush::{Flusher, KICK_EVERY, start_writeback};
use super::manifest::{FORMAT_VERSION, Kind, MANIFEST_ENTRY, MAX_MANIFEST_BYTES, Manifest};
use super::name::{self, NameError};
use super::readahead::{self, ChunkReader};
use super::workspace::{Workspace, WorkspaceError};
use super::writers::{SMALL_FILE, SmallFile, Writers};

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

/// Bounds on an untrusted archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most entries (files and directories) an archive may hold.
    pub max_entries: u64,
    /// Most bytes of file data an archive may hold.
    pub max_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_entries: 100_000_000,
            max_bytes: 16 << 40,
        }
    }
}

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
    pub storage: PathBuf,
    pub selection: Selection,
    pub priority: Priority,
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
    #[error("failed to read the archive (is it a snapshot archive, and complete?)")]
    Read { source: io::Error },
    #[error("the archive ends before its end-of-archive marker: it is truncated")]
    Truncated,
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
    #[error("refused: the archive holds more than {max} entries (the limit); nothing was changed")]
    TooManyEntries { max: u64 },
    #[error(
        "refused: the archive holds more than {max} bytes of data (the limit); nothing was changed"
    )]
    TooLarge { max: u64 },
    #[error("the archive holds no data for collection {collection:?}")]
    Empty { collection: String },
    #[error(
        "checksum mismatch: the archive's SHA-256 is {actual}, expected {expected}; \
         nothing was changed"
    )]
    Checksum { expected: String, actual: String },
    #[error("refused: {path} is {why}; nothing was changed")]
    Target { path: PathBuf, why: String },
    #[error("failed to write {path}")]
    Write { path: PathBuf, source: io::Error },
}

fn write_err(path: &Path) -> impl FnOnce(io::Error) -> RestoreError + '_ {
    move |source| RestoreError::Write {
        path: path.to_owned(),
        source,
    }
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
    let existed = spec.storage.exists();
    let workspace = Workspace::open(&spec.storage)?;
    let result = workspace
        .staging()
        .map_err(RestoreError::from)
        .and_then(|staging| {
            let staged = extract(spec, reader, &staging, progress)?;
            sync_filesystem(&staging)?;
            let collections = apply(spec, &staging)?;
            Ok(Restored {
                collections,
                ..staged
            })
        });
    let closed = workspace.close();
    if result.is_err() && !existed {
        // Leave no trace of a refused restore, not even the storage directory we created.
        let _ = fs::remove_dir(&spec.storage);
    }
    let restored = result?;
    closed?;
    Ok(restored)
}

fn read_err(source: io::Error) -> RestoreError {
    if source.kind() == io::ErrorKind::UnexpectedEof {
        RestoreError::Truncated
    } else {
        RestoreError::Read { source }
    }
}

/// Reads the whole archive into `staging`, checking every entry, the limits, the end marker
/// and the checksum.
fn extract<R: Read + Send>(
    spec: &RestoreSpec,
    reader: R,
    staging: &Path,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Restored, RestoreError> {
    let (parsed, hashed) =
        readahead::with_read_ahead(reader, |input| unpack(spec, input, staging, progress));
    let (mut stats, mapping, dirs) = parsed?;
    let hashed = hashed.ok_or(RestoreError::Truncated)?;
    stats.archive_bytes = hashed.bytes;
    stats.checksum = hashed.sha256;
    if let Some(expected) = &spec.checksum
        && expected != &stats.checksum
    {
        return Err(RestoreError::Checksum {
            expected: expected.clone(),
            actual: stats.checksum,
        });
    }
    mapping.check_present(staging)?;
    // Directory modes and times last: writing into a directory changes its time, and a
    // read-only directory mode would block its own content.
    for (dir, mode, mtime) in dirs.iter().rev() {
        fs::set_permissions(dir, fs::Permissions::from_mode(mode & 0o1777))
            .map_err(write_err(dir))?;
        set_dir_mtime(dir, *mtime)?;
    }
    Ok(stats)
}

/// Staged directories with their mode and time, applied once their content is written.
type StagedDirs = Vec<(PathBuf, u32, u64)>;

/// Parses the archive from `input` into `staging`, then reads the input to its end.
fn unpack(
    spec: &RestoreSpec,
    input: &mut ChunkReader,
    staging: &Path,
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
    staging: &Path,
    progress: &(dyn Fn(u64) + Sync),
    mut writers: Writers<'_>,
    umask: u32,
) -> Result<(Restored, Mapping, StagedDirs), RestoreError> {
    let eof = input.eof_flag();
    // A read error once the input has ended means the archive is truncated.
    let read_err = |source: io::Error| {
        if eof.get() {
            RestoreError::Truncated
        } else {
            read_err(source)
        }
    };
    let truncated = |e: RestoreError| match e {
        RestoreError::Read { .. } if eof.get() => RestoreError::Truncated,
        other => other,
    };
    let mut archive = tar::Archive::new(&mut *input);
    let mut entries = archive.entries().map_err(read_err)?;
    let manifest = read_manifest(&mut entries).map_err(truncated)?;
    let mapping = Mapping::new(&manifest, &spec.selection)?;
    let mut stats = Restored {
        manifest,
        checksum: String::new(),
        archive_bytes: 0,
        data_bytes: 0,
        files: 0,
        collections: Vec::new(),
    };
    let mut flusher = Flusher::start(staging);
    let mut dirs = Vec::new();
    let mut last_parent = PathBuf::new();
    let mut entry_count = 0u64;
    let mut buf = vec![0; COPY_BUF];
    for entry in entries {
        let mut entry = entry.map_err(read_err)?;
        let raw_path = entry.path_bytes().into_owned();
        let shown = || String::from_utf8_lossy(&raw_path).into_owned();
        let parts = safe_components(&raw_path).map_err(|why| RestoreError::Hostile {
            path: shown(),
            why: why.into(),
        })?;
        let kind = entry.header().entry_type();
        let is_dir = match kind {
            tar::EntryType::Regular => false,
            tar::EntryType::Directory => true,
            tar::EntryType::XGlobalHeader => continue,
            other => {
                return Err(RestoreError::Hostile {
                    path: shown(),
                    why: format!("a {}", entry_kind(other)),
                });
            }
        };
        entry_count += 1;
        if entry_count > spec.limits.max_entries {
            return Err(RestoreError::TooManyEntries {
                max: spec.limits.max_entries,
            });
        }
        let size = entry.size();
        if stats.data_bytes.saturating_add(size) > spec.limits.max_bytes {
            return Err(RestoreError::TooLarge {
                max: spec.limits.max_bytes,
            });
        }
        let Some(rel) = mapping.map(&parts).map_err(|why| RestoreError::Hostile {
            path: shown(),
            why: why.into(),
        })?
        else {
            continue;
        };
        let dest = staging.join(&rel);
        let mode = entry.header().mode().map_err(read_err)?;
        let mtime = entry.header().mtime().map_err(read_err)?;
        if is_dir {
            fs::create_dir_all(&dest).map_err(write_err(&dest))?;
            last_parent.clone_from(&dest);
            dirs.push((dest, mode, mtime));
        } else {
            if let Some(parent) = dest.parent()
                && parent != last_parent
            {
                fs::create_dir_all(parent).map_err(write_err(parent))?;
                parent.clone_into(&mut last_parent);
            }
            let perm = mode & 0o777;
            if size <= SMALL_FILE {
                let mut data = Vec::with_capacity(size as usize);
                entry
                    .read_to_end(&mut data)
                    .map_err(|source| truncated(RestoreError::Read { source }))?;
                writers.write(SmallFile {
                    path: dest,
                    data,
                    perm,
                    mtime,
                })?;
            } else {
                write_file(&dest, perm, mtime, umask, |file| {
                    copy(&mut entry, file, &mut buf, &dest).map_err(truncated)
                })?;
            }
            stats.files += 1;
            stats.data_bytes += size;
            flusher.wrote(size);
        }
        progress(input_position(&entry));
    }
    writers.finish()?;
    if eof.get() {
        return Err(RestoreError::Truncated);
    }
    // Read what follows the end marker too: the checksum covers the whole file.
    io::copy(input, &mut io::sink()).map_err(read_err)?;
    Ok((stats, mapping, dirs))
}

/// Creates the file `path` with permission bits `perm` and modification time `mtime`, its
/// content written by `content`.
pub(super) fn write_file(
    path: &Path,
    perm: u32,
    mtime: u64,
    umask: u32,
    content: impl FnOnce(&mut File) -> Result<(), RestoreError>,
) -> Result<(), RestoreError> {
    let (mut file, created) = create_file(path, perm)?;
    content(&mut file)?;
    // The umask may have taken bits away; a file met twice kept its first mode.
    if !created || perm & !umask != perm {
        file.set_permissions(fs::Permissions::from_mode(perm))
            .map_err(write_err(path))?;
    }
    file.set_modified(to_time(mtime)).map_err(write_err(path))
}

/// Creates `path` with `perm` (through the umask), or truncates it when an earlier entry of
/// the archive created it already; tells which.
fn create_file(path: &Path, perm: u32) -> Result<(File, bool), RestoreError> {
    let nofollow = rustix::fs::OFlags::NOFOLLOW.bits() as i32;
    let mut options = OpenOptions::new();
    options.write(true).mode(perm).custom_flags(nofollow);
    match options.clone().create_new(true).open(path) {
        Ok(file) => Ok((file, true)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => options
            .truncate(true)
            .open(path)
            .map(|file| (file, false))
            .map_err(write_err(path)),
        Err(source) => Err(RestoreError::Write {
            path: path.to_owned(),
            source,
        }),
    }
}

/// The process's umask (read by setting it and putting it back).
fn current_umask() -> u32 {
    let mode = rustix::fs::Mode::from_bits_truncate(0o022);
    let old = rustix::process::umask(mode);
    rustix::process::umask(old);
    old.bits()
}

fn input_position<R: Read>(entry: &tar::Entry<'_, R>) -> u64 {
    entry.raw_file_position() + entry.size()
}

/// Reads the manifest at the start of an archive (and nothing more).
pub fn manifest_of<R: Read>(reader: R) -> Result<Manifest, RestoreError> {
    let mut archive = tar::Archive::new(reader);
    let mut entries = archive.entries().map_err(read_err)?;
    read_manifest(&mut entries)
}

fn read_manifest<R: Read>(entries: &mut tar::Entries<'_, R>) -> Result<Manifest, RestoreError> {
    let mut entry = match entries.next() {
        Some(Ok(entry)) => entry,
        Some(Err(source)) => return Err(read_err(source)),
        None => return Err(RestoreError::NoManifest),
    };
    if entry.path_bytes().as_ref() != MANIFEST_ENTRY.as_bytes()
        || entry.header().entry_type() != tar::EntryType::Regular
        || entry.size() > MAX_MANIFEST_BYTES
    {
        return Err(RestoreError::NoManifest);
    }
    let mut json = Vec::new();
    entry.read_to_end(&mut json).map_err(read_err)?;
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

/// The components of an archive path, refusing anything that could leave the target:
/// absolute paths, `..`, empty paths and paths into the restore workspace.
fn safe_components(raw: &[u8]) -> Result<Vec<&[u8]>, &'static str> {
    if raw.first() == Some(&b'/') {
        return Err("an absolute path");
    }
    let mut parts = Vec::new();
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err("a path with `..`"),
            p => parts.push(p),
        }
    }
    match parts.first() {
        None => Err("an empty path"),
        Some(first) if *first == WORKSPACE_DIR.as_bytes() => Err("inside the reserved workspace"),
        Some(_) => Ok(parts),
    }
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
                    path.push(std::ffi::OsStr::from_bytes(p));
                }
            }
            Some((from, into)) => {
                if !under_collections || parts.len() < 2 || parts[1] != from.as_bytes() {
                    return Ok(None);
                }
                path.push(COLLECTIONS_DIR);
                path.push(into);
                for p in &parts[2..] {
                    path.push(std::ffi::OsStr::from_bytes(p));
                }
            }
        }
        Ok(Some(path))
    }

    /// A collection restore must have staged the collection.
    fn check_present(&self, staging: &Path) -> Result<(), RestoreError> {
        if let Some((from, into)) = &self.collection
            && !staging.join(COLLECTIONS_DIR).join(into).is_dir()
        {
            return Err(RestoreError::Empty {
                collection: from.clone(),
            });
        }
        Ok(())
    }
}

fn entry_kind(kind: tar::EntryType) -> &'static str {
    match kind {
        tar::EntryType::Symlink => "symbolic link",
        tar::EntryType::Link => "hard link",
        tar::EntryType::Char => "character device",
        tar::EntryType::Block => "block device",
        tar::EntryType::Fifo => "FIFO",
        _ => "entry type that is not a file or directory",
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
            Err(source) => return Err(read_err(source)),
        };
        to.write_all(&buf[..n]).map_err(write_err(path))?;
        written += n as u64;
        if written - kicked >= KICK_EVERY {
            start_writeback(to, kicked, written - kicked);
            kicked = written;
        }
    }
}

fn to_time(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

fn set_dir_mtime(dir: &Path, secs: u64) -> Result<(), RestoreError> {
    File::open(dir)
        .and_then(|f| f.set_modified(to_time(secs)))
        .map_err(write_err(dir))
}

/// Makes everything written to the filesystem holding `path` durable (`syncfs`).
fn sync_filesystem(path: &Path) -> Result<(), RestoreError> {
    File::open(path)
        .and_then(|f| rustix::fs::syncfs(&f).map_err(io::Error::from))
        .map_err(write_err(path))
}

// ---------------------------------------------------------------------------------------------
// Apply: move staged data into the storage directory.

/// What the target holds at a path, as far as a restore cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    Absent,
    EmptyDir,
    Dir,
    File,
    Other(&'static str),
}

fn inspect(path: &Path) -> Result<Found, RestoreError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Found::Absent),
        Err(source) => {
            return Err(RestoreError::Write {
                path: path.to_owned(),
                source,
            });
        }
    };
    let ft = meta.file_type();
    Ok(if ft.is_symlink() {
        Found::Other("a symbolic link")
    } else if ft.is_dir() {
        let empty = fs::read_dir(path)
            .map_err(write_err(path))?
            .next()
            .is_none();
        if empty { Found::EmptyDir } else { Found::Dir }
    } else if ft.is_file() {
        Found::File
    } else {
        Found::Other("not a file or directory")
    })
}

fn refuse(path: &Path, why: &str) -> RestoreError {
    RestoreError::Target {
        path: path.to_owned(),
        why: why.into(),
    }
}

/// One step of applying a restore.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Move a staged collection into place (the target is absent or an empty directory).
    Place { staged: PathBuf, target: PathBuf },
    /// Swap a staged collection with the existing one, atomically.
    Exchange { staged: PathBuf, target: PathBuf },
    /// Move staged files over existing ones (`overwrite`) or only where absent.
    Merge {
        staged: PathBuf,
        target: PathBuf,
        overwrite: bool,
    },
    /// Leave an existing collection alone.
    Skip { collection: String, reason: String },
}

/// Plans every step and checks the whole target before anything is changed.
fn plan(spec: &RestoreSpec, staging: &Path) -> Result<Vec<(Option<String>, Step)>, RestoreError> {
    let storage = &spec.storage;
    let collections_dir = storage.join(COLLECTIONS_DIR);
    match inspect(&collections_dir)? {
        Found::Absent | Found::EmptyDir | Found::Dir => {}
        Found::File => return Err(refuse(&collections_dir, "a file, not a directory")),
        Found::Other(why) => return Err(refuse(&collections_dir, why)),
    }
    let mut steps = Vec::new();
    let staged_collections = staging.join(COLLECTIONS_DIR);
    let names = match &spec.selection {
        Selection::Collection { into, .. } => vec![into.clone()],
        Selection::Full => super::archive::list_collections(staging).map_err(write_err(staging))?,
    };
    for name in names {
        let staged = staged_collections.join(&name);
        let target = collections_dir.join(&name);
        let step = match (inspect(&target)?, spec.priority) {
            (Found::Other(why), _) => return Err(refuse(&target, why)),
            (Found::File, _) => return Err(refuse(&target, "a file, not a collection directory")),
            (Found::Absent | Found::EmptyDir, _) => Step::Place { staged, target },
            (Found::Dir, Priority::Replica) => Step::Skip {
                collection: name.clone(),
                reason: format!(
                    "collection {name:?} already exists on this node; priority replica keeps \
                     existing data (use priority snapshot to replace it)"
                ),
            },
            (Found::Dir, Priority::Snapshot) => Step::Exchange { staged, target },
            (Found::Dir, Priority::NoSync) => {
                check_merge(&staged, &target)?;
                Step::Merge {
                    staged,
                    target,
                    overwrite: true,
                }
            }
        };
        steps.push((Some(name), step));
    }
    if spec.selection == Selection::Full {
        if let Some(step) = merge_aliases(storage, staging, spec.priority)? {
            steps.push((None, step));
        }
        for entry in fs::read_dir(staging).map_err(write_err(staging))? {
            let entry = entry.map_err(write_err(staging))?;
            if entry.file_name() == COLLECTIONS_DIR {
                continue;
            }
            let staged = entry.path();
            let target = storage.join(entry.file_name());
            check_merge(&staged, &target)?;
            steps.push((
                None,
                Step::Merge {
                    staged,
                    target,
                    overwrite: spec.priority != Priority::Replica,
                },
            ));
        }
    }
    Ok(steps)
}

/// Checks that staged `staged` can be merged into `target`: no symlinks on the way, and no
/// file where a directory is staged or the other way round.
fn check_merge(staged: &Path, target: &Path) -> Result<(), RestoreError> {
    let staged_is_dir = fs::symlink_metadata(staged)
        .map_err(write_err(staged))?
        .is_dir();
    match (inspect(target)?, staged_is_dir) {
        (Found::Absent, _) => Ok(()),
        (Found::Other(why), _) => Err(refuse(target, why)),
        (Found::File, false) => Ok(()),
        (Found::File, true) => Err(refuse(target, "a file where the snapshot has a directory")),
        (Found::Dir | Found::EmptyDir, false) => {
            Err(refuse(target, "a directory where the snapshot has a file"))
        }
        (Found::Dir | Found::EmptyDir, true) => {
            for entry in fs::read_dir(staged).map_err(write_err(staged))? {
                let entry = entry.map_err(write_err(staged))?;
                check_merge(&entry.path(), &target.join(entry.file_name()))?;
            }
            Ok(())
        }
    }
}

/// For a full restore into a target with aliases, writes the union of the archive's and the
/// target's aliases into the staged file (the priority decides which side wins a conflict)
/// and returns the step that puts it in place.
fn merge_aliases(
    storage: &Path,
    staging: &Path,
    priority: Priority,
) -> Result<Option<Step>, RestoreError> {
    let staged = staging.join(ALIASES_FILE);
    let target = storage.join(ALIASES_FILE);
    if !staged.is_file() || inspect(&target)? != Found::File {
        return Ok(None);
    }
    let read = |path: &Path| -> Result<BTreeMap<String, String>, RestoreError> {
        let bytes = fs::read(path).map_err(write_err(path))?;
        serde_json::from_slice(&bytes)
            .map_err(|_| refuse(path, "not a valid aliases file (JSON object of strings)"))
    };
    let (archive, existing) = (read(&staged)?, read(&target)?);
    let merged = match priority {
        Priority::Replica => archive
            .into_iter()
            .chain(existing)
            .collect::<BTreeMap<_, _>>(),
        Priority::Snapshot | Priority::NoSync => existing.into_iter().chain(archive).collect(),
    };
    let json = serde_json::to_vec(&merged).expect("aliases serialise");
    fs::write(&staged, json).map_err(write_err(&staged))?;
    Ok(Some(Step::Merge {
        staged,
        target,
        overwrite: true,
    }))
}

fn apply(spec: &RestoreSpec, staging: &Path) -> Result<Vec<CollectionResult>, RestoreError> {
    let steps = plan(spec, staging)?;
    let collections_dir = spec.storage.join(COLLECTIONS_DIR);
    // Read before the moves below change it.
    let staged_collections = fs::metadata(staging.join(COLLECTIONS_DIR)).ok();
    let create_collections =
        inspect(&collections_dir)? == Found::Absent && steps.iter().any(|(c, _)| c.is_some());
    if create_collections {
        fs::create_dir(&collections_dir).map_err(write_err(&collections_dir))?;
    }
    let mut results = Vec::new();
    for (collection, step) in steps {
        let reason = match step {
            Step::Place { staged, target } => {
                if inspect(&target)? == Found::EmptyDir {
                    fs::remove_dir(&target).map_err(write_err(&target))?;
                }
                rename(&staged, &target, rustix::fs::RenameFlags::NOREPLACE)?;
                None
            }
            Step::Exchange { staged, target } => {
                rename(&staged, &target, rustix::fs::RenameFlags::EXCHANGE)?;
                None
            }
            Step::Merge {
                staged,
                target,
                overwrite,
            } => {
                merge(&staged, &target, overwrite)?;
                None
            }
            Step::Skip { reason, .. } => Some(reason),
        };
        if let Some(collection) = collection {
            results.push(CollectionResult {
                collection,
                outcome: if reason.is_some() {
                    Outcome::Skipped
                } else {
                    Outcome::Restored
                },
                reason,
            });
        }
    }
    if create_collections && let Some(meta) = staged_collections {
        copy_dir_attributes(&meta, &collections_dir)?;
    }
    sync_filesystem(&spec.storage)?;
    Ok(results)
}

/// Gives `to` the permissions and modification time of `meta`.
fn copy_dir_attributes(meta: &fs::Metadata, to: &Path) -> Result<(), RestoreError> {
    fs::set_permissions(to, meta.permissions()).map_err(write_err(to))?;
    if let Ok(mtime) = meta.modified() {
        File::open(to)
            .and_then(|f| f.set_modified(mtime))
            .map_err(write_err(to))?;
    }
    Ok(())
}

fn rename(from: &Path, to: &Path, flags: rustix::fs::RenameFlags) -> Result<(), RestoreError> {
    use rustix::fs::{CWD, renameat_with};
    renameat_with(CWD, from, CWD, to, flags).map_err(|e| {
        if e == rustix::io::Errno::INVAL && flags.contains(rustix::fs::RenameFlags::EXCHANGE) {
            refuse(
                to,
                "on a filesystem without atomic exchange (renameat2 RENAME_EXCHANGE); \
                 use priority no_sync or restore into an empty target",
            )
        } else {
            RestoreError::Write {
                path: to.to_owned(),
                source: e.into(),
            }
        }
    })
}

/// Moves `staged` into `target`: absent targets take the staged tree whole; directories are
/// merged entry by entry; an existing file is replaced when `overwrite`, else kept.
fn merge(staged: &Path, target: &Path, overwrite: bool) -> Result<(), RestoreError> {
    match inspect(target)? {
        Found::Absent => rename(staged, target, rustix::fs::RenameFlags::NOREPLACE),
        Found::File if overwrite => fs::rename(staged, target).map_err(write_err(target)),
        Found::File => Ok(()),
        Found::Dir | Found::EmptyDir => {
            for entry in fs::read_dir(staged).map_err(write_err(staged))? {
                let entry = entry.map_err(write_err(staged))?;
                merge(&entry.path(), &target.join(entry.file_name()), overwrite)?;
            }
            Ok(())
        }
        Found::Other(why) => Err(refuse(target, why)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_paths_are_refused() {
        assert_eq!(
            safe_components(b"collections/c/a").unwrap(),
            vec![&b"collections"[..], b"c", b"a"]
        );
        assert_eq!(safe_components(b"./collections//c/").unwrap().len(), 2);
        assert!(safe_components(b"/etc/passwd").is_err());
        assert!(safe_components(b"collections/../../x").is_err());
        assert!(safe_components(b"..").is_err());
        assert!(safe_components(b"./").is_err());
        assert!(safe_components(b".snapshot-operator/lock").is_err());
    }

    fn manifest(collection: Option<&str>, collections: &[&str]) -> Manifest {
        Manifest::new(
            collection.map(Into::into),
            "n".into(),
            jiff::Timestamp::UNIX_EPOCH,
            collections.iter().map(|c| c.to_string()).collect(),
            BTreeMap::new(),
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
