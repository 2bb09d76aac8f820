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

pub mod error;
pub mod mapping;
pub mod spec;

use std::io::Read;
use std::path::PathBuf;

pub use error::{RestoreError, data_err, write_err};
use mapping::Mapping;
pub use spec::{CollectionResult, Limits, Outcome, Priority, RestoreSpec, Restored, Selection};

use super::apply::{self, Fixup};
use super::arrange;
use super::limits;
use super::manifest::{Format, Kind, MANIFEST_ENTRY, MAX_MANIFEST_BYTES, Manifest};
use super::name;
use super::qdrant;
use super::readahead::{self, ChunkReader};
use super::stage::{Scope, StagedDirs, Stager, Tar, current_umask};
use super::untar::{Entry, EntryType, TarError, TarReader};
use super::workspace::Workspace;
use crate::safefs::{self, Dir};

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
        let unpacked = unpack(spec, input, staging, progress)?;
        // An encrypted archive ends with its last chunk, authenticated: nothing may follow.
        if input.read(&mut [0u8; 1]).map_err(TarError::from_io)? != 0 {
            return Err(TarError::Trailer.into());
        }
        Ok(unpacked)
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

/// `inner`, telling `progress` how many bytes were read from it so far (the archive's, as
/// stored: inside a nested tar or an encrypted archive too).
struct Counted<'a, R> {
    inner: R,
    read: u64,
    progress: &'a (dyn Fn(u64) + Sync),
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        (self.progress)(self.read);
        Ok(n)
    }
}

/// Parses the archive from `input` into `staging`, then reads the input to its end.
fn unpack(
    spec: &RestoreSpec,
    input: &mut ChunkReader,
    staging: &Dir,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(Restored, Layout, StagedDirs, usize), RestoreError> {
    let umask = current_umask();
    let mut counted = Counted {
        inner: &mut *input,
        read: 0,
        progress,
    };
    let mut decoded = spec.identities.plaintext(&mut counted)?;
    let mut stager = Stager::new(spec.limits, staging, umask)?;
    let plain: &mut dyn Read = &mut decoded;
    let mut tar: Tar<'_> = TarReader::new(plain);
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
    let (counts, dirs) = stager.finish();
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
