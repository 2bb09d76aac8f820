//! Temporary files that any number of processes, on any number of hosts, can create in one
//! directory at once, and that a clean-up never takes for abandoned while their writer lives.
//!
//! The protocol, which every writer and every clean-up follows:
//! * a temporary file is created exclusively and is locked (`flock`) by its writer before
//!   anyone can find it by a name: with `O_TMPFILE` it has no name until the writer links it;
//!   otherwise it gets a random name with `O_EXCL`, and the writer, once it holds the lock,
//!   checks that the name still leads to its file (a clean-up may have removed it in between:
//!   then it takes another name);
//! * the writer holds the lock until it is done with the file, including after linking it
//!   under another name (a published checksum stays locked until its archive is published);
//! * a clean-up removes a file only while it holds its lock itself, and only when the name
//!   still leads to the file it locked ([`remove_if_abandoned`]).
//!
//! Process ids appear nowhere: every mover is PID 1 in its own container.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, FlockOperation, Mode, OFlags};
use rustix::io::Errno;

use super::{Dir, identity};

/// The suffix of named temporary files.
pub const TEMP_SUFFIX: &str = ".partial";

/// A locked temporary file in a directory.
#[derive(Debug)]
pub struct TempFile {
    file: File,
    dir: Dir,
    /// Its random name, or `None` for an `O_TMPFILE` file (which has none).
    name: Option<OsString>,
}

/// A random name: `.` + 16 hex digits + [`TEMP_SUFFIX`].
fn random_name() -> io::Result<OsString> {
    Ok(format!(".{}{TEMP_SUFFIX}", super::random_hex()?).into())
}

/// The `/proc` path through which an unnamed file is linked.
fn proc_path(fd: &impl AsRawFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// Does `name` in `dir` still lead to the file open as `fd`?
fn still_named(dir: &Dir, name: &OsStr, fd: &impl AsFd) -> io::Result<bool> {
    let ours = identity(&rustix::fs::fstat(fd)?);
    Ok(dir.stat(name)?.is_some_and(|st| identity(&st) == ours))
}

impl TempFile {
    /// Creates and locks a new temporary file in `dir`, for reading and writing.
    pub fn create(dir: &Dir) -> io::Result<Self> {
        let mode = Mode::from_raw_mode(0o666);
        let flags = OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC;
        match rustix::fs::openat(dir, ".", flags, mode) {
            Ok(fd) => {
                rustix::fs::flock(&fd, FlockOperation::LockExclusive)?;
                // Linking it needs /proc (linkat with AT_EMPTY_PATH needs a capability).
                if rustix::fs::stat(proc_path(&fd).as_str()).is_ok() {
                    return Ok(Self {
                        file: fd.into(),
                        dir: dir.try_clone()?,
                        name: None,
                    });
                }
            }
            // Filesystems without O_TMPFILE (NFS, some FUSE) refuse it in several ways.
            Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL | Errno::NOENT) => {}
            Err(e) => return Err(e.into()),
        }
        Self::create_named(dir)
    }

    /// [`create`](Self::create) with a random name, where `O_TMPFILE` is not available.
    pub fn create_named(dir: &Dir) -> io::Result<Self> {
        let flags = OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW;
        loop {
            let name = random_name()?;
            let fd: OwnedFd = match rustix::fs::openat(
                dir,
                &name,
                flags | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o666),
            ) {
                Err(Errno::EXIST) => continue,
                other => other?,
            };
            // Blocks only while a clean-up that found it unlocked holds it.
            rustix::fs::flock(&fd, FlockOperation::LockExclusive)?;
            if still_named(dir, &name, &fd)? {
                return Ok(Self {
                    file: fd.into(),
                    dir: dir.try_clone()?,
                    name: Some(name),
                });
            }
        }
    }

    /// The open file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The directory it is in.
    pub fn dir(&self) -> &Dir {
        &self.dir
    }

    /// Links the file as `to_name` in `to`; fails (`AlreadyExists`) rather than replace
    /// anything, and (`CrossesDevices`) when `to` is on another filesystem. The file stays
    /// locked.
    pub fn link(&self, to: &Dir, to_name: impl AsRef<Path>) -> io::Result<()> {
        match &self.name {
            Some(name) => self.dir.link(name, to, to_name),
            None => Ok(rustix::fs::linkat(
                rustix::fs::CWD,
                proc_path(&self.file).as_str(),
                to,
                to_name.as_ref(),
                AtFlags::SYMLINK_FOLLOW,
            )?),
        }
    }
}

impl TempFile {
    /// Renames the file (made by [`create_named`](Self::create_named)) to `to_name` in its
    /// directory, replacing what has that name: a link there is replaced, never followed.
    pub fn persist(&self, to_name: impl AsRef<Path>) -> io::Result<()> {
        let name = self.name.as_ref().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "an unnamed file has no name to rename",
            )
        })?;
        Ok(rustix::fs::renameat(
            &self.dir,
            name,
            &self.dir,
            to_name.as_ref(),
        )?)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(name) = &self.name
            && still_named(&self.dir, name, &self.file).unwrap_or(false)
        {
            let _ = self.dir.remove_file(name);
        }
    }
}

/// Removes `name` from `dir` when it is provably abandoned: nobody holds its lock (its
/// writer would), it is still the file that was locked, and `also` holds once the lock is
/// taken. Links and special files are left alone. Returns whether it was removed.
pub fn remove_if_abandoned(
    dir: &Dir,
    name: &OsStr,
    also: impl FnOnce() -> bool,
) -> io::Result<bool> {
    let flags = OFlags::RDONLY | OFlags::NONBLOCK;
    let file = match dir.open_file(name, flags) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound || super::is_link_refused(&e) => {
            return Ok(false);
        }
        Err(e) => return Err(e),
    };
    if !super::is_file(&rustix::fs::fstat(&file)?) {
        return Ok(false);
    }
    match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(Errno::WOULDBLOCK) => return Ok(false),
        Err(e) => return Err(e.into()),
    }
    if !still_named(dir, name, &file)? || !also() {
        return Ok(false);
    }
    super::ignore_absent(dir.remove_file(name))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn names(dir: &Dir) -> Vec<String> {
        let mut names: Vec<String> = dir
            .entries()
            .unwrap()
            .into_iter()
            .map(|(n, _)| n.to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn temp_files_are_locked_linked_and_cleaned_only_when_abandoned() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Dir::open(tmp.path()).unwrap();
        for named in [false, true] {
            let t = if named {
                TempFile::create_named(&dir).unwrap()
            } else {
                TempFile::create(&dir).unwrap()
            };
            (&t.file).write_all(b"abc").unwrap();
            let temp_name = names(&dir).into_iter().find(|n| n.ends_with(TEMP_SUFFIX));
            assert_eq!(temp_name.is_some(), named);
            if let Some(temp_name) = &temp_name {
                // Locked by its writer: not abandoned.
                assert!(!remove_if_abandoned(&dir, OsStr::new(temp_name), || true).unwrap());
            }
            t.link(&dir, "final").unwrap();
            assert_eq!(
                t.link(&dir, "final").unwrap_err().kind(),
                io::ErrorKind::AlreadyExists
            );
            // Still locked after linking: a clean-up leaves the published name alone too.
            assert!(!remove_if_abandoned(&dir, OsStr::new("final"), || true).unwrap());
            drop(t);
            assert_eq!(names(&dir), ["final"]);
            assert_eq!(std::fs::read(tmp.path().join("final")).unwrap(), b"abc");
            // Unlocked now; `also` still decides.
            assert!(!remove_if_abandoned(&dir, OsStr::new("final"), || false).unwrap());
            assert!(remove_if_abandoned(&dir, OsStr::new("final"), || true).unwrap());
            assert!(names(&dir).is_empty());
        }
        // A file left by a writer that died is removed; a link is not followed.
        std::fs::write(tmp.path().join(".dead.partial"), b"x").unwrap();
        std::fs::write(tmp.path().join("target"), b"keep").unwrap();
        std::os::unix::fs::symlink(tmp.path().join("target"), tmp.path().join(".l.partial"))
            .unwrap();
        assert!(remove_if_abandoned(&dir, OsStr::new(".dead.partial"), || true).unwrap());
        assert!(!remove_if_abandoned(&dir, OsStr::new(".l.partial"), || true).unwrap());
        assert_eq!(std::fs::read(tmp.path().join("target")).unwrap(), b"keep");
    }
}
