//! Staging an untrusted archive: each entry of the tar, and of the tars inside it (Qdrant's
//! segments, a full snapshot's collection snapshots), read once, checked (paths, kinds,
//! sparse maps) and bounded ([`Limits`]), then written where its layout puts it in the
//! staging directory. Every directory is created from its parent's descriptor without
//! following links; files are created exclusively, so an archive holding a path twice is
//! refused. Nothing of the target changes here.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::flush::{Flusher, KICK_EVERY, start_writeback};
use super::limits::{self, Limits};
use super::qdrant::{self, Place};
use super::restore::error::{RestoreError, data_err, write_err};
use super::restore::mapping::Mapping;
use super::untar::{Entry, EntryType, SparseMap, TarReader};
use crate::safefs::Dir;

const COPY_BUF: usize = 1 << 20;

/// A tar of the archive, or a tar inside it: one type for all, read through one another.
pub type Tar<'r> = TarReader<&'r mut dyn Read>;

/// Staged directories (relative to the staging root) with their mode and time from the
/// archive; the last entry for a directory wins, as with GNU tar.
pub type StagedDirs = BTreeMap<PathBuf, (u32, u64)>;

/// Where the entries of a tar go.
pub enum Scope<'a> {
    /// Our own layout: the storage directory's paths, as the selection maps them.
    Files(&'a Mapping),
    /// A Qdrant snapshot unpacked below `prefix` as Qdrant's recovery would unpack it;
    /// `top`: the archive itself (where a full snapshot holds its collection snapshots).
    Qdrant { prefix: PathBuf, top: bool },
    /// A segment tar, unpacked into the segment's directory.
    Segment(PathBuf),
}

/// What becomes of one entry.
enum Target {
    Skip,
    Stage(PathBuf),
    /// A tar to unpack, as the scope given.
    Nested(Scope<'static>),
}

fn joined(prefix: &Path, parts: &[&[u8]]) -> PathBuf {
    let mut path = prefix.to_owned();
    for part in parts {
        path.push(OsStr::from_bytes(part));
    }
    path
}

impl Scope<'_> {
    fn target(&self, parts: &[&[u8]], is_file: bool) -> Result<Target, &'static str> {
        Ok(match self {
            Self::Files(mapping) => match mapping.map(parts)? {
                Some(rel) => Target::Stage(rel),
                None => Target::Skip,
            },
            Self::Qdrant { prefix, top } => match qdrant::place(parts, is_file, *top) {
                Place::At(at) => Target::Stage(joined(prefix, &at)),
                Place::Drop => Target::Skip,
                Place::SegmentTar(dir) => Target::Nested(Scope::Segment(joined(prefix, &dir))),
                Place::CollectionTar(name) => Target::Nested(Scope::Qdrant {
                    prefix: joined(prefix, &[name]),
                    top: false,
                }),
            },
            Self::Segment(dir) => match qdrant::in_segment_tar(parts) {
                Place::At(at) => Target::Stage(joined(dir, &at)),
                _ => Target::Skip,
            },
        })
    }
}

/// What was staged.
#[derive(Debug, Default)]
pub struct Counts {
    pub files: u64,
    /// Bytes of the files staged, holes included.
    pub data_bytes: u64,
}

/// Stages the entries of one archive (and of the tars inside it).
pub struct Stager<'a> {
    limits: Limits,
    staging: &'a Dir,
    tree: StagingTree,
    dirs: StagedDirs,
    budget: Budget,
    flusher: Flusher,
    buf: Vec<u8>,
    umask: u32,
    counts: Counts,
    /// How much deeper than staged entries end up once arranged ([`super::arrange`]).
    deeper: usize,
}

impl<'a> Stager<'a> {
    pub fn new(limits: Limits, staging: &'a Dir, umask: u32) -> Result<Self, RestoreError> {
        Ok(Self {
            limits,
            staging,
            tree: StagingTree::new(staging).map_err(write_err(staging.path()))?,
            dirs: StagedDirs::new(),
            budget: Budget::new(limits, staging)?,
            flusher: Flusher::start(staging),
            buf: vec![0; COPY_BUF],
            umask,
            counts: Counts::default(),
            deeper: 0,
        })
    }

    /// Says how much deeper than staged the entries end up once arranged.
    pub fn arranged_deeper(&mut self, by: usize) {
        self.deeper = by;
    }

    /// Stages `first` (an entry already read) and the rest of `tar`'s entries as `scope`
    /// says; `outer`: `tar` is the archive itself (whose bytes are bounded and reported).
    pub fn entries(
        &mut self,
        tar: &mut Tar<'_>,
        first: Option<Entry>,
        scope: &Scope<'_>,
        outer: bool,
    ) -> Result<(), RestoreError> {
        let mut next = first;
        loop {
            let entry = match next.take() {
                Some(entry) => entry,
                None => match tar.next_entry()? {
                    Some(entry) => entry,
                    None => return Ok(()),
                },
            };
            self.entry(tar, &entry, scope, outer)?;
        }
    }

    fn entry(
        &mut self,
        tar: &mut Tar<'_>,
        entry: &Entry,
        scope: &Scope<'_>,
        outer: bool,
    ) -> Result<(), RestoreError> {
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
        // The bytes of a tar inside the archive are the archive's: bounded as they are read.
        self.budget.read(outer.then(|| tar.position()), entry)?;
        match scope.target(&parts, !is_dir).map_err(hostile)? {
            Target::Skip => Ok(()),
            Target::Stage(rel) => {
                // Where it lands counts too: a tar inside may put it deeper than it says, and
                // arranging may put it deeper still.
                let staged = rel.as_os_str().as_bytes();
                let depth = limits::path_components(staged).map_err(hostile)?.len();
                if depth + self.deeper > limits::MAX_DEPTH {
                    return Err(hostile("a path deeper than 256 directories once restored"));
                }
                self.stage(tar, entry, rel, is_dir)
            }
            Target::Nested(nested) => {
                if let Scope::Segment(dir) | Scope::Qdrant { prefix: dir, .. } = &nested {
                    self.tree
                        .dir(dir)
                        .map_err(twice(&hostile, self.staging, dir))?;
                }
                let mut inner: Tar<'_> = TarReader::nested(tar as &mut dyn Read, entry.size);
                self.entries(&mut inner, None, &nested, false)?;
                // What follows its end marker: zero padding at most.
                inner.finish()?;
                Ok(())
            }
        }
    }

    /// Writes one entry at `rel` of the staging directory.
    fn stage(
        &mut self,
        tar: &mut Tar<'_>,
        entry: &Entry,
        rel: PathBuf,
        is_dir: bool,
    ) -> Result<(), RestoreError> {
        let hostile = |why: &str| RestoreError::Hostile {
            path: String::from_utf8_lossy(&entry.path).into_owned(),
            why: why.into(),
        };
        // A sparse file counts with its holes: it is that large once restored.
        let size = match (&entry.sparse, is_dir) {
            (_, true) => 0,
            (Some(map), false) => map.real_size,
            (None, false) => entry.size,
        };
        if self.counts.data_bytes.saturating_add(size) > self.limits.max_bytes {
            return Err(RestoreError::TooLarge {
                max: self.limits.max_bytes,
            });
        }
        self.budget.staged(entry)?;
        if is_dir {
            self.tree
                .dir(&rel)
                .map_err(twice(&hostile, self.staging, &rel))?;
            self.dirs.insert(rel, (entry.mode & 0o1777, entry.mtime));
            return Ok(());
        }
        let name = rel
            .file_name()
            .expect("paths have a last component")
            .to_owned();
        let parent = rel.parent().unwrap_or(Path::new(""));
        let dir = self
            .tree
            .dir(parent)
            .map_err(twice(&hostile, self.staging, parent))?;
        let path = self.staging.join(&rel);
        let perm = entry.mode & 0o777;
        let (umask, buf) = (self.umask, &mut self.buf);
        write_file(
            dir,
            &name,
            &path,
            perm,
            entry.mtime,
            umask,
            |file| match &entry.sparse {
                Some(map) => write_sparse(tar, file, map, buf, &path),
                None => copy(tar, file, buf, &path),
            },
        )?;
        self.counts.files += 1;
        self.counts.data_bytes += size;
        self.flusher.wrote(size);
        Ok(())
    }

    /// What was staged, and the directories' modes and times.
    pub fn finish(self) -> (Counts, StagedDirs) {
        (self.counts, self.dirs)
    }
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

    /// Counts an entry, refusing it when the archive holds too many or, for an entry of the
    /// archive itself whose header ends at `position`, when its data would take the archive
    /// past its size bound (before any of it is read).
    fn read(&mut self, position: Option<u64>, entry: &Entry) -> Result<(), RestoreError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(RestoreError::TooManyEntries {
                max: self.limits.max_entries,
            });
        }
        let Some(position) = position else {
            return Ok(());
        };
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
    fn staged(&mut self, entry: &Entry) -> Result<(), RestoreError> {
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
    root: Dir,
    chain: Vec<(OsString, Dir)>,
}

impl StagingTree {
    fn new(root: &Dir) -> io::Result<Self> {
        Ok(Self {
            root: root.try_clone()?,
            chain: Vec::new(),
        })
    }

    /// The directory `rel` of the staging tree, created where missing with the default mode
    /// (`0777` through the umask, as `mkdir -p` and GNU tar do; an entry of the archive for
    /// it sets its mode later).
    fn dir(&mut self, rel: &Path) -> io::Result<&Dir> {
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
            self.chain.push(((*part).to_owned(), dir));
        }
        Ok(self.chain.last().map_or(&self.root, |(_, dir)| dir))
    }
}

/// The error of creating `rel` of the staging directory when something is there already.
fn twice<'e>(
    hostile: &'e dyn Fn(&str) -> RestoreError,
    staging: &Dir,
    rel: &Path,
) -> impl FnOnce(io::Error) -> RestoreError + 'e {
    let path = staging.join(rel);
    move |e: io::Error| match e.kind() {
        io::ErrorKind::AlreadyExists | io::ErrorKind::NotADirectory => {
            hostile("given twice in the archive (or as a file and as a directory)")
        }
        _ => write_err(&path)(e),
    }
}

/// A tar entry's modification time.
fn to_time(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

/// Creates the file `name` in `dir` (`path` for messages) with permission bits `perm` and
/// modification time `mtime`, its content written by `content`. The file must not exist:
/// an archive that holds a path twice is refused.
fn write_file(
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
pub(super) fn current_umask() -> u32 {
    let mode = rustix::fs::Mode::from_bits_truncate(0o022);
    let old = rustix::process::umask(mode);
    rustix::process::umask(old);
    old.bits()
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
