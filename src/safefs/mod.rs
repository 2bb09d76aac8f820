//! Filesystem access beneath a directory descriptor, never following a symbolic link.
//!
//! The workload owns the volumes the engine reads and writes and can plant symbolic links
//! there at any moment, so every path below a trusted directory is opened from a [`Dir`]:
//! resolved with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` where the kernel has it,
//! else one component at a time with `O_NOFOLLOW | O_DIRECTORY`. A link on the way is an
//! error ([`is_link_refused`]), never followed. Operations on a last component (`unlinkat`,
//! `renameat2`, `linkat`, `fstatat`) act on a link itself, never on what it points to.
//!
//! Only the directory a user names (a `--storage-path`, a snapshots path) is opened as given,
//! links included ([`Dir::open`]); everything below it goes through this module.

mod temp;

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, ResolveFlags, Stat};
use rustix::io::Errno;

pub use temp::{TEMP_SUFFIX, TempFile, remove_if_abandoned};

/// Set once `openat2` turned out to be unavailable (old kernel, or filtered by seccomp).
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// The error of a path that runs into a symbolic link.
#[derive(Debug)]
struct LinkRefused;

impl fmt::Display for LinkRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a symbolic link is in the way (links are never followed)")
    }
}

impl std::error::Error for LinkRefused {}

fn link_refused() -> io::Error {
    io::Error::other(LinkRefused)
}

/// Did an operation fail because a symbolic link was in its way?
pub fn is_link_refused(error: &io::Error) -> bool {
    error.get_ref().is_some_and(|e| e.is::<LinkRefused>())
}

/// The components of a relative path: plain names only (`.` is skipped).
fn components(rel: &Path) -> io::Result<Vec<&OsStr>> {
    rel.components()
        .filter(|c| *c != Component::CurDir)
        .map(|c| match c {
            Component::Normal(name) => Ok(name),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a plain relative path", rel.display()),
            )),
        })
        .collect()
}

/// A last component's file type, without following it.
fn type_at(dir: BorrowedFd<'_>, name: &OsStr) -> Option<FileType> {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .ok()
        .map(|st| FileType::from_raw_mode(st.st_mode))
}

/// Turns the error of opening `name` in `dir` into [`LinkRefused`] when a link is the cause.
fn refine(dir: BorrowedFd<'_>, name: &OsStr, errno: Errno) -> io::Error {
    if matches!(errno, Errno::LOOP | Errno::NOTDIR) && type_at(dir, name) == Some(FileType::Symlink)
    {
        return link_refused();
    }
    errno.into()
}

/// Opens `rel` beneath `dir` (`O_NOFOLLOW` and `O_CLOEXEC` added), following no link.
fn open_beneath(dir: BorrowedFd<'_>, rel: &Path, flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
    let parts = components(rel)?;
    let flags = flags | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    let Some((last, parents)) = parts.split_last() else {
        return Ok(rustix::fs::openat(dir, ".", flags, mode)?);
    };
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        let joined: PathBuf = parts.iter().collect();
        let resolve =
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        match rustix::fs::openat2(dir, &joined, flags, mode, resolve) {
            Ok(fd) => return Ok(fd),
            Err(Errno::NOSYS | Errno::PERM) => NO_OPENAT2.store(true, Ordering::Relaxed),
            // The walk below fails too, naming the cause precisely (a link, or what else).
            Err(_) => {}
        }
    }
    walk(dir, parents, last, flags, mode)
}

/// [`open_beneath`] one component at a time, for kernels without `openat2`.
fn walk(
    dir: BorrowedFd<'_>,
    parents: &[&OsStr],
    last: &OsStr,
    flags: OFlags,
    mode: Mode,
) -> io::Result<OwnedFd> {
    let mut held: Option<OwnedFd> = None;
    for part in parents {
        let cur = held.as_ref().map_or(dir, |fd| fd.as_fd());
        let through = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let next = rustix::fs::openat(cur, *part, through, Mode::empty())
            .map_err(|e| refine(cur, part, e))?;
        held = Some(next);
    }
    let cur = held.as_ref().map_or(dir, |fd| fd.as_fd());
    rustix::fs::openat(cur, last, flags, mode).map_err(|e| refine(cur, last, e))
}

/// The parent part and the last component of a relative path.
fn split(rel: &Path) -> io::Result<(PathBuf, &OsStr)> {
    let mut parts = components(rel)?;
    let last = parts.pop().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "an empty path names no entry")
    })?;
    Ok((parts.into_iter().collect(), last))
}

/// An open directory, with its path for messages.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

impl AsFd for Dir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Dir {
    /// Opens the directory a user named, as given (links in `path` are followed).
    pub fn open(path: &Path) -> io::Result<Self> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        Ok(Self {
            fd: rustix::fs::open(path, flags, Mode::empty())?,
            path: path.to_owned(),
        })
    }

    /// Its path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of `rel` inside it, for messages.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }

    /// Another descriptor of the same directory.
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            fd: self.fd.try_clone()?,
            path: self.path.clone(),
        })
    }

    /// Opens the directory `rel` beneath this one.
    pub fn open_dir(&self, rel: impl AsRef<Path>) -> io::Result<Self> {
        let rel = rel.as_ref();
        let fd = open_beneath(
            self.as_fd(),
            rel,
            OFlags::RDONLY | OFlags::DIRECTORY,
            Mode::empty(),
        )?;
        Ok(Self {
            fd,
            path: self.join(rel),
        })
    }

    /// Opens the directory `rel`, creating it and its missing parents with `mode` (through
    /// the umask).
    pub fn create_dir_all(&self, rel: impl AsRef<Path>, mode: u32) -> io::Result<Self> {
        let rel = rel.as_ref();
        let mut cur = self.try_clone()?;
        for part in components(rel)? {
            match rustix::fs::mkdirat(&cur, part, Mode::from_raw_mode(mode)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(refine(cur.as_fd(), part, e)),
            }
            cur = cur.open_dir(part)?;
        }
        Ok(cur)
    }

    /// Creates the directory `name`, which must not exist yet, and opens it.
    pub fn create_dir(&self, name: impl AsRef<Path>, mode: u32) -> io::Result<Self> {
        let name = name.as_ref();
        rustix::fs::mkdirat(self, name, Mode::from_raw_mode(mode))?;
        self.open_dir(name)
    }

    /// Opens the file `rel` with `flags` (`O_NOFOLLOW` and `O_CLOEXEC` are added).
    pub fn open_file(&self, rel: impl AsRef<Path>, flags: OFlags) -> io::Result<File> {
        self.open_file_mode(rel.as_ref(), flags, 0)
    }

    /// Opens the file `name` for reading and writing, creating it with `mode` when absent
    /// (never truncating it).
    pub fn open_or_create_file(&self, name: impl AsRef<Path>, mode: u32) -> io::Result<File> {
        self.open_file_mode(name.as_ref(), OFlags::RDWR | OFlags::CREATE, mode)
    }

    /// Creates the file `name`, which must not exist yet (`O_EXCL`), for writing.
    pub fn create_file(&self, name: impl AsRef<Path>, mode: u32) -> io::Result<File> {
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL;
        self.open_file_mode(name.as_ref(), flags, mode)
    }

    fn open_file_mode(&self, rel: &Path, flags: OFlags, mode: u32) -> io::Result<File> {
        let fd = open_beneath(self.as_fd(), rel, flags, Mode::from_raw_mode(mode))?;
        Ok(fd.into())
    }

    /// What is at `rel`, a link itself rather than what it points to; `None` when absent.
    pub fn stat(&self, rel: impl AsRef<Path>) -> io::Result<Option<Stat>> {
        let (parent, name) = split(rel.as_ref())?;
        let held;
        let dir = if parent.as_os_str().is_empty() {
            self.as_fd()
        } else {
            let flags = OFlags::PATH | OFlags::DIRECTORY;
            match open_beneath(self.as_fd(), &parent, flags, Mode::empty()) {
                Ok(fd) => {
                    held = fd;
                    held.as_fd()
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            }
        };
        match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(st)),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// This directory's own metadata.
    pub fn metadata(&self) -> io::Result<Stat> {
        Ok(rustix::fs::fstat(self)?)
    }

    /// The entries of this directory (without `.` and `..`) and their types (a link is a
    /// link).
    pub fn entries(&self) -> io::Result<Vec<(OsString, FileType)>> {
        let mut dir = rustix::fs::Dir::read_from(self)?;
        let mut out = Vec::new();
        while let Some(entry) = dir.read() {
            let entry = entry?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes());
            if name == "." || name == ".." {
                continue;
            }
            let mut kind = entry.file_type();
            if kind == FileType::Unknown {
                kind = type_at(self.as_fd(), name).unwrap_or(FileType::Unknown);
            }
            out.push((name.to_owned(), kind));
        }
        Ok(out)
    }

    /// Removes the file (or link) `name`.
    pub fn remove_file(&self, name: impl AsRef<Path>) -> io::Result<()> {
        Ok(rustix::fs::unlinkat(self, name.as_ref(), AtFlags::empty())?)
    }

    /// Removes the empty directory `name`.
    pub fn remove_dir(&self, name: impl AsRef<Path>) -> io::Result<()> {
        Ok(rustix::fs::unlinkat(
            self,
            name.as_ref(),
            AtFlags::REMOVEDIR,
        )?)
    }

    /// Removes `name` and, when it is a directory, everything in it; absent is fine. Links
    /// are removed, never followed; directories are made writable before they are emptied.
    pub fn remove_tree(&self, name: impl AsRef<Path>) -> io::Result<()> {
        let name = name.as_ref();
        match self.stat(name)? {
            None => return Ok(()),
            Some(st) if FileType::from_raw_mode(st.st_mode) != FileType::Directory => {
                return ignore_absent(self.remove_file(name));
            }
            Some(_) => {}
        }
        // Depth first without recursion: a stack of open directories, each with its name in
        // the one below it and the entries still to remove.
        let top = self.open_writable_dir(name)?;
        let entries = top.entries()?;
        let mut stack = vec![(top, name.as_os_str().to_owned(), entries)];
        while let Some((dir, _, entries)) = stack.last_mut() {
            match entries.pop() {
                Some((entry, FileType::Directory)) => {
                    let sub = dir.open_writable_dir(&entry)?;
                    let sub_entries = sub.entries()?;
                    stack.push((sub, entry, sub_entries));
                }
                Some((entry, _)) => ignore_absent(dir.remove_file(&entry))?,
                None => {
                    let (_, done, _) = stack.pop().expect("the stack is not empty");
                    let parent = stack.last().map_or(self, |(dir, _, _)| dir);
                    ignore_absent(parent.remove_dir(&done))?;
                }
            }
        }
        Ok(())
    }

    /// Opens the directory `name` and gives its owner full access to it, so its entries can
    /// be removed (a directory without read permission is opened by its descriptor path).
    fn open_writable_dir(&self, name: impl AsRef<Path>) -> io::Result<Self> {
        let name = name.as_ref();
        let dir = match self.open_dir(name) {
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                let flags = OFlags::PATH | OFlags::DIRECTORY;
                let fd = open_beneath(self.as_fd(), name, flags, Mode::empty())?;
                let proc_path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
                rustix::fs::chmod(proc_path.as_str(), Mode::from_raw_mode(0o700))?;
                self.open_dir(name)?
            }
            other => other?,
        };
        let mode = dir.metadata()?.st_mode;
        if mode & 0o700 != 0o700 {
            // Not the owner: removing will say what is wrong.
            let _ = rustix::fs::fchmod(&dir, Mode::from_raw_mode((mode | 0o700) & 0o7777));
        }
        Ok(dir)
    }

    /// Moves `name` to `to_name` in `to`, with `renameat2` flags.
    pub fn rename(
        &self,
        name: impl AsRef<Path>,
        to: &Dir,
        to_name: impl AsRef<Path>,
        flags: RenameFlags,
    ) -> io::Result<()> {
        Ok(rustix::fs::renameat_with(
            self,
            name.as_ref(),
            to,
            to_name.as_ref(),
            flags,
        )?)
    }

    /// Makes `name` also known as `to_name` in `to` (a hard link; fails when it exists).
    pub fn link(
        &self,
        name: impl AsRef<Path>,
        to: &Dir,
        to_name: impl AsRef<Path>,
    ) -> io::Result<()> {
        Ok(rustix::fs::linkat(
            self,
            name.as_ref(),
            to,
            to_name.as_ref(),
            AtFlags::empty(),
        )?)
    }

    /// Can this process create and remove entries here (write and search permission)?
    pub fn writable(&self) -> io::Result<bool> {
        let access = rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK;
        match rustix::fs::accessat(self, ".", access, AtFlags::EACCESS) {
            Ok(()) => Ok(true),
            Err(Errno::ACCESS | Errno::ROFS | Errno::PERM) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Sets this directory's permission bits.
    pub fn set_mode(&self, mode: u32) -> io::Result<()> {
        Ok(rustix::fs::fchmod(self, Mode::from_raw_mode(mode))?)
    }

    /// Sets this directory's modification time (seconds since the epoch).
    pub fn set_mtime(&self, secs: u64) -> io::Result<()> {
        let time = rustix::fs::Timespec {
            tv_sec: i64::try_from(secs).unwrap_or(i64::MAX),
            tv_nsec: 0,
        };
        let times = rustix::fs::Timestamps {
            last_access: rustix::fs::Timespec {
                tv_sec: 0,
                tv_nsec: rustix::fs::UTIME_OMIT,
            },
            last_modification: time,
        };
        Ok(rustix::fs::futimens(self, &times)?)
    }

    /// Makes this directory's entries durable (`fsync` of the directory).
    pub fn sync(&self) -> io::Result<()> {
        Ok(rustix::fs::fsync(self)?)
    }

    /// Makes everything written to this directory's filesystem durable (`syncfs`).
    pub fn sync_filesystem(&self) -> io::Result<()> {
        Ok(rustix::fs::syncfs(self)?)
    }
}

/// A directory to work in, given as a `base` that a user named (opened as given, links
/// followed) and a path `beneath` it that is resolved without following any link: a mover's
/// volume mount and the storage directory inside the volume. On the command line the whole
/// path is the user's own (`beneath` is empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchored {
    pub base: PathBuf,
    pub beneath: PathBuf,
}

impl Anchored {
    /// A directory named by the user, trusted as a whole.
    pub fn trusted(path: impl Into<PathBuf>) -> Self {
        Self {
            base: path.into(),
            beneath: PathBuf::new(),
        }
    }

    /// `path` inside the volume mounted at `volume`; `None` when it is not inside it.
    pub fn within(volume: &Path, path: &Path) -> Option<Self> {
        let beneath = path.strip_prefix(volume).ok()?;
        components(beneath).ok()?;
        Some(Self {
            base: volume.to_owned(),
            beneath: beneath.to_owned(),
        })
    }

    /// The whole path, for messages.
    pub fn path(&self) -> PathBuf {
        if self.beneath.as_os_str().is_empty() {
            self.base.clone()
        } else {
            self.base.join(&self.beneath)
        }
    }

    /// Opens the directory.
    pub fn open(&self) -> io::Result<Dir> {
        let base = Dir::open(&self.base)?;
        if self.beneath.as_os_str().is_empty() {
            return Ok(base);
        }
        base.open_dir(&self.beneath)
    }

    /// Opens the directory, creating it (and missing parents) when absent; tells whether the
    /// directory itself was created.
    pub fn open_or_create(&self) -> io::Result<(Dir, bool)> {
        if self.beneath.as_os_str().is_empty() {
            let created = !self.base.exists();
            std::fs::create_dir_all(&self.base)?;
            return Ok((Dir::open(&self.base)?, created));
        }
        let base = Dir::open(&self.base)?;
        let created = base.stat(&self.beneath)?.is_none();
        Ok((base.create_dir_all(&self.beneath, 0o777)?, created))
    }

    /// Removes the directory, which must be empty (undoing [`open_or_create`](Self::open_or_create)).
    pub fn remove_empty(&self) -> io::Result<()> {
        if self.beneath.as_os_str().is_empty() {
            return std::fs::remove_dir(&self.base);
        }
        let (parent, name) = split(&self.beneath)?;
        Dir::open(&self.base)?.open_dir(parent)?.remove_dir(name)
    }
}

/// 16 random hexadecimal digits, for names no other process or host picks.
pub fn random_hex() -> io::Result<String> {
    let mut bytes = [0u8; 8];
    rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty())?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// `Ok` when the error is only that the entry was already gone.
pub fn ignore_absent(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Is this the type of a directory?
pub fn is_dir(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::Directory
}

/// Is this the type of a regular file?
pub fn is_file(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
}

/// Is this the type of a symbolic link?
pub fn is_symlink(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::Symlink
}

/// Device and inode: what identifies a file whatever its name.
pub fn identity(st: &Stat) -> (u64, u64) {
    (st.st_dev, st.st_ino)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn setup() -> (tempfile::TempDir, Dir) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/f"), b"data").unwrap();
        std::fs::create_dir_all(tmp.path().join("outside")).unwrap();
        std::fs::write(tmp.path().join("outside/secret"), b"secret").unwrap();
        symlink(tmp.path().join("outside"), root.join("a/link")).unwrap();
        symlink(tmp.path().join("outside/secret"), root.join("a/flink")).unwrap();
        let dir = Dir::open(&root).unwrap();
        (tmp, dir)
    }

    /// Both ways of resolving: `openat2`, and the walk used where the kernel lacks it.
    #[test]
    fn links_are_refused_on_the_way_and_at_the_end() {
        let (_tmp, dir) = setup();
        assert!(dir.open_file("a/b/f", OFlags::RDONLY).is_ok());
        for rel in ["a/link/secret", "a/flink", "a/link"] {
            let err = dir.open_file(rel, OFlags::RDONLY).unwrap_err();
            assert!(is_link_refused(&err), "{rel}: {err}");
        }
        assert!(is_link_refused(&dir.open_dir("a/link").unwrap_err()));
        assert!(dir.open_file("../x", OFlags::RDONLY).is_err());
        assert!(dir.open_file("/etc/passwd", OFlags::RDONLY).is_err());

        let fd = dir.as_fd();
        let walked = |rel: &str| {
            let parts: Vec<&str> = rel.split('/').collect();
            let (last, parents) = parts.split_last().unwrap();
            let parents: Vec<&OsStr> = parents.iter().map(OsStr::new).collect();
            let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            walk(fd, &parents, OsStr::new(last), flags, Mode::empty())
        };
        assert!(walked("a/b/f").is_ok());
        for rel in ["a/link/secret", "a/flink"] {
            let err = walked(rel).unwrap_err();
            assert!(is_link_refused(&err), "{rel}: {err}");
        }
    }

    #[test]
    fn stat_sees_links_and_absence() {
        let (_tmp, dir) = setup();
        assert!(is_symlink(&dir.stat("a/link").unwrap().unwrap()));
        assert!(is_dir(&dir.stat("a/b").unwrap().unwrap()));
        assert!(dir.stat("a/none").unwrap().is_none());
        assert!(dir.stat("none/x").unwrap().is_none());
        assert!(is_link_refused(&dir.stat("a/link/secret").unwrap_err()));
    }

    #[test]
    fn create_dir_all_refuses_links_and_remove_tree_never_follows_them() {
        let (tmp, dir) = setup();
        assert!(is_link_refused(
            &dir.create_dir_all("a/link/new", 0o755).unwrap_err()
        ));
        assert!(!tmp.path().join("outside/new").exists());
        let made = dir.create_dir_all("x/y/z", 0o755).unwrap();
        assert!(made.path().ends_with("x/y/z"));
        // A read-only directory holding a file, and links to the outside.
        std::fs::write(dir.join("x/y/z/f"), b"1").unwrap();
        symlink(tmp.path().join("outside"), dir.join("x/y/out")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join("x/y/z"), std::fs::Permissions::from_mode(0o555))
            .unwrap();
        std::fs::set_permissions(dir.join("x/y"), std::fs::Permissions::from_mode(0o500)).unwrap();
        dir.remove_tree("x").unwrap();
        assert!(!dir.join("x").exists());
        dir.remove_tree("a").unwrap();
        assert!(!dir.join("a").exists());
        assert_eq!(
            std::fs::read(tmp.path().join("outside/secret")).unwrap(),
            b"secret"
        );
        dir.remove_tree("absent").unwrap();
    }
}
