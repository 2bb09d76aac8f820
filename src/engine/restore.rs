//! Restoring archives: read and check an untrusted archive into a staging directory, verify
//! its checksum, then move the staged data into the storage directory according to the
//! priority (DESIGN §5). Nothing in the target changes until the whole archive has been read,
//! checked and made durable; a refused archive changes nothing.
//!
//! Archives come in our own layout (the storage directory's paths, [`Format::Files`]) or in
//! Qdrant's ([`super::qdrant`]): ours in Qdrant's layout ([`Format::Qdrant`]), and any
//! collection, shard or full snapshot Qdrant made, recognised from its entries (it has no
//! manifest). Qdrant's are staged as Qdrant's recovery unpacks them, segment tars and
//! collection snapshots read as streams inside the archive, then arranged as the storage
//! directory holds them ([`super::arrange`]) before anything in the target changes.
//!
//! The target belongs to the workload, which may plant symbolic links there before or during
//! a restore: every directory and file the restore creates, opens, changes or removes is
//! reached from the storage directory's descriptor without following links
//! ([`crate::safefs`]). Staged files are created exclusively, so an archive holding a path
//! twice is refused.

use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::apply::{self, Fixup};
use super::archive::COLLECTIONS_DIR;
use super::arrange;
use super::limits;
use super::manifest::{Format, Kind, MANIFEST_ENTRY, MAX_MANIFEST_BYTES, Manifest};
use super::name::{self, NameError};
use super::qdrant;
use super::readahead::{self, ChunkReader};
use super::stage::{Scope, StagedDirs, Stager, Tar, current_umask};
use super::untar::{Entry, EntryType, TarError, TarReader};
use super::workspace::{Workspace, WorkspaceError};
use super::writers::Writers;
use crate::safefs::{self, Anchored, Dir};

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
    /// For a Qdrant shard snapshot: the shard of the collection it is restored as (default
    /// 0); other archives refuse it.
    pub shard: Option<u32>,
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
    /// The archive's manifest; none for a snapshot Qdrant made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest: Option<Manifest>,
    /// What Qdrant snapshot it was, when it was in Qdrant's layout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qdrant: Option<qdrant::Kind>,
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
    #[error(
        "the archive is not a snapshot: it does not start with {MANIFEST_ENTRY} (ours), nor does \
         it hold a Qdrant snapshot (a collection's config.json and shards, a shard's segments/, \
         or a full snapshot's config.json)"
    )]
    NotASnapshot,
    #[error("refused: {what} of the archive is {why}; nothing was changed")]
    Qdrant { what: String, why: String },
    #[error("--shard goes with a Qdrant shard snapshot; this archive is a {found} snapshot")]
    NotAShard { found: &'static str },
    #[error("the archive's {MANIFEST_ENTRY} is not valid")]
    BadManifest { source: serde_json::Error },
    #[error(
        "the archive has format version {found}; this snapshot-operator reads versions 1 and 2: \
         use a newer snapshot-operator"
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

pub fn write_err(path: &Path) -> impl FnOnce(io::Error) -> RestoreError + use<> {
    let path = path.to_owned();
    move |source| RestoreError::Write { path, source }
}

/// An error reading an entry's data: the end of the input is a truncated archive.
pub fn data_err(source: io::Error) -> RestoreError {
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
                    let collections =
                        apply::apply(spec, &root, &staging, &staged.fixups, staged.shard)?;
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
    /// The shard of the collection a Qdrant shard snapshot is restored as.
    shard: Option<u32>,
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
    let (mut restored, layout, mut dirs, deeper) = parsed.map_err(past_the_bound)?;
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
    let shard = match layout {
        Layout::Files(mapping) => {
            if spec.shard.is_some() {
                return Err(RestoreError::NotAShard { found: "files" });
            }
            mapping.check_present(staging)?;
            None
        }
        Layout::Qdrant => {
            let arranged = arrange::arrange(
                staging,
                restored.manifest.as_ref(),
                &spec.selection,
                spec.shard,
                deeper,
            )?;
            restored.qdrant = Some(arranged.kind);
            dirs = arranged.moved(dirs);
            arranged.shard
        }
    };
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
    Ok(Staged {
        restored,
        fixups,
        shard,
    })
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

/// How an archive's entries were staged.
enum Layout {
    /// Our own: the storage directory's paths, mapped for the selection.
    Files(Mapping),
    /// Qdrant's: below [`arrange::STAGED`] as Qdrant's recovery unpacks it.
    Qdrant,
}

/// Parses the archive from `input` into `staging`, then reads the input to its end.
fn unpack(
    spec: &RestoreSpec,
    input: &mut ChunkReader,
    staging: &Dir,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(Restored, Layout, StagedDirs, usize), RestoreError> {
    let umask = current_umask();
    std::thread::scope(|scope| {
        let writers = Writers::start(scope, WRITERS, umask);
        let mut stager = Stager::new(spec.limits, staging, writers, umask, progress)?;
        let input: &mut dyn Read = input;
        let mut tar: Tar<'_> = TarReader::new(input);
        let staged: Result<_, RestoreError> = (|| {
            let (manifest, first) = match read_first(&mut tar)? {
                First::Manifest(manifest) => (Some(*manifest), None),
                First::Entry(entry) => (None, Some(entry)),
            };
            let layout = match manifest.as_ref().map(|m| m.format) {
                Some(Format::Files) => {
                    let manifest = manifest.as_ref().expect("a files manifest");
                    Layout::Files(Mapping::new(manifest, &spec.selection)?)
                }
                Some(Format::Qdrant) | None => Layout::Qdrant,
            };
            // What Qdrant snapshot it is, as far as its start says: its paths are checked
            // at the depth that kind puts them, and only a full snapshot holds collection
            // snapshots at its top.
            let known = match (&manifest, &first) {
                (Some(manifest), _) => Some(match manifest.kind {
                    Kind::Collection => qdrant::Kind::Collection,
                    Kind::Full => qdrant::Kind::Full,
                }),
                (None, Some(entry)) => {
                    let parts = limits::path_components(&entry.path).unwrap_or_default();
                    qdrant::kind_from_first(&parts, entry.kind == EntryType::File)
                }
                (None, None) => None,
            };
            let scope = match &layout {
                Layout::Files(mapping) => Scope::Files(mapping),
                Layout::Qdrant => Scope::Qdrant {
                    prefix: PathBuf::from(arrange::STAGED),
                    top: known.is_none_or(|k| k == qdrant::Kind::Full),
                },
            };
            let deeper = match &layout {
                Layout::Files(_) => 0,
                Layout::Qdrant if spec.shard.is_some() => arrange::deeper(None),
                Layout::Qdrant => arrange::deeper(known),
            };
            stager.arranged_deeper(deeper);
            stager.entries(&mut tar, first, &scope, true)?;
            Ok((manifest, layout, deeper))
        })();
        // The writers finish (and say their first error) whatever happened.
        let finished = stager.finish();
        let (manifest, layout, deeper) = staged?;
        let (counts, dirs) = finished?;
        // What follows the end marker: a little zero padding at most (the checksum covers it).
        tar.finish()?;
        let restored = Restored {
            manifest,
            qdrant: None,
            checksum: String::new(),
            archive_bytes: 0,
            data_bytes: counts.data_bytes,
            files: counts.files,
            collections: Vec::new(),
        };
        Ok((restored, layout, dirs, deeper))
    })
}

/// What an archive starts with: our manifest, or (a snapshot Qdrant made) its first entry.
enum First {
    Manifest(Box<Manifest>),
    Entry(Entry),
}

/// What an archive is, from its start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Described {
    /// One of ours, with its manifest.
    Ours(Box<Manifest>),
    /// A snapshot Qdrant made, of the kind its first entry says (when it says).
    Qdrant(Option<qdrant::Kind>),
}

/// Reads the start of an archive (and nothing more): its manifest, or what Qdrant snapshot
/// it is.
pub fn describe<R: Read>(reader: R) -> Result<Described, RestoreError> {
    let mut reader = reader;
    let input: &mut dyn Read = &mut reader;
    Ok(match read_first(&mut TarReader::new(input))? {
        First::Manifest(manifest) => Described::Ours(manifest),
        First::Entry(entry) => {
            let parts = limits::path_components(&entry.path).unwrap_or_default();
            Described::Qdrant(qdrant::kind_from_first(
                &parts,
                entry.kind == EntryType::File,
            ))
        }
    })
}

/// Reads the manifest at the start of an archive (and nothing more); an archive without
/// one (Qdrant's) is refused.
pub fn manifest_of<R: Read>(reader: R) -> Result<Manifest, RestoreError> {
    match describe(reader)? {
        Described::Ours(manifest) => Ok(*manifest),
        Described::Qdrant(_) => Err(RestoreError::NoManifest),
    }
}

fn read_first(tar: &mut Tar<'_>) -> Result<First, RestoreError> {
    let entry = tar.next_entry()?.ok_or(RestoreError::NotASnapshot)?;
    if entry.path != MANIFEST_ENTRY.as_bytes() {
        return Ok(First::Entry(entry));
    }
    if entry.kind != EntryType::File || entry.size > MAX_MANIFEST_BYTES {
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
    let manifest: Manifest = match version.format_version {
        1 | 2 => {
            serde_json::from_slice(&json).map_err(|source| RestoreError::BadManifest { source })?
        }
        found => return Err(RestoreError::UnknownVersion { found }),
    };
    for c in &manifest.collections {
        name::validate("collection", c)?;
    }
    let inconsistent = |detail: &str| RestoreError::InconsistentManifest {
        kind: manifest.kind,
        detail: detail.into(),
    };
    if manifest.format.version() != manifest.format_version {
        return Err(inconsistent("its format and its version disagree"));
    }
    match (manifest.kind, &manifest.collection) {
        (Kind::Collection, Some(c)) if manifest.collections == [c.clone()] => {}
        (Kind::Collection, _) => return Err(inconsistent("collection / collections")),
        (Kind::Full, None) => {}
        (Kind::Full, Some(_)) => return Err(inconsistent("a collection is set")),
    }
    Ok(First::Manifest(Box::new(manifest)))
}

/// Maps archive paths to staging paths for the selection.
#[derive(Debug)]
pub struct Mapping {
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
    pub fn map(&self, parts: &[&[u8]]) -> Result<Option<PathBuf>, &'static str> {
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

pub fn to_time(secs: u64) -> SystemTime {
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
            std::collections::BTreeMap::new(),
            None,
            Format::Files,
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
