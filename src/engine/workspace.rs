//! The restore workspace: `<storage>/.snapshot-operator/`, on the same filesystem as the
//! target so that staged data moves into place by `rename`.
//!
//! One restore at a time holds its lock (`flock` on `lock`, released by the kernel even on
//! SIGKILL); whoever takes the lock first removes what an interrupted restore left behind.
//! The workload owns the volume, so the workspace, its lock and everything in it are reached
//! from the storage directory's descriptor without following links: a link planted there
//! makes the restore fail, and clean-up removes a link, never what it points to.

use std::fs::File;
use std::io;
use std::path::PathBuf;

use rustix::fs::FlockOperation;

use super::WORKSPACE_DIR;
use crate::safefs::{self, Dir};

const LOCK_FILE: &str = "lock";
/// Times the lock is taken again when the workspace vanished under it (a restore that held
/// it finished and removed it while this one waited).
const ATTEMPTS: usize = 3;

/// A locked workspace.
#[derive(Debug)]
pub struct Workspace {
    root: Dir,
    dir: Dir,
    lock: File,
}

/// Why the workspace could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("another restore is running into {storage}; wait for it to finish")]
    Busy { storage: PathBuf },
    #[error("failed to prepare the restore workspace {path}")]
    Io { path: PathBuf, source: io::Error },
}

impl Workspace {
    /// Creates (if needed), locks and cleans the workspace of the storage directory `root`.
    pub fn open(root: &Dir) -> Result<Self, WorkspaceError> {
        let path = root.join(WORKSPACE_DIR);
        let io_err = |source| WorkspaceError::Io {
            path: path.clone(),
            source,
        };
        for _ in 0..ATTEMPTS {
            match root.create_dir(WORKSPACE_DIR, 0o700) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err(e)),
            }
            let dir = root.open_dir(WORKSPACE_DIR).map_err(io_err)?;
            let lock = dir.open_or_create_file(LOCK_FILE, 0o600).map_err(io_err)?;
            match rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {}
                Err(rustix::io::Errno::WOULDBLOCK) => {
                    return Err(WorkspaceError::Busy {
                        storage: root.path().to_owned(),
                    });
                }
                Err(e) => return Err(io_err(e.into())),
            }
            let here = |d: &Dir, name: &str, fd: &dyn std::os::fd::AsFd| -> io::Result<bool> {
                let ours = safefs::identity(&rustix::fs::fstat(fd)?);
                Ok(d.stat(name)?
                    .is_some_and(|st| safefs::identity(&st) == ours))
            };
            if !(here(root, WORKSPACE_DIR, &dir).map_err(io_err)?
                && here(&dir, LOCK_FILE, &lock).map_err(io_err)?)
            {
                continue;
            }
            let workspace = Self {
                root: root.try_clone().map_err(io_err)?,
                dir,
                lock,
            };
            workspace.clean(true);
            return Ok(workspace);
        }
        Err(WorkspaceError::Busy {
            storage: root.path().to_owned(),
        })
    }

    /// Removes everything but the lock; failures are logged (they cost space, and the next
    /// restore tries again). `leftovers`: what is removed was left by an interrupted restore
    /// (worth saying), not this restore's own staging.
    fn clean(&self, leftovers: bool) {
        let entries = match self.dir.entries() {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(path = %self.dir.path().display(), error = %e, "cannot list the restore workspace");
                return;
            }
        };
        for (name, _) in entries {
            if name == LOCK_FILE {
                continue;
            }
            let path = self.dir.join(&name);
            if leftovers {
                tracing::info!(path = %path.display(), "removing what an interrupted restore left");
            }
            if let Err(e) = self.dir.remove_tree(&name) {
                tracing::warn!(path = %path.display(), error = %e, "could not remove it");
            }
        }
    }

    /// A new, empty staging directory inside the workspace.
    pub fn staging(&self) -> Result<Dir, WorkspaceError> {
        let name = safefs::random_hex()
            .map(|hex| format!("restore-{hex}"))
            .map_err(|source| WorkspaceError::Io {
                path: self.dir.path().to_owned(),
                source,
            })?;
        self.dir
            .create_dir(&name, 0o700)
            .map_err(|source| WorkspaceError::Io {
                path: self.dir.join(&name),
                source,
            })
    }

    /// Removes the workspace (lock included) after a restore. What cannot be removed stays
    /// for the next restore to remove, and is logged.
    pub fn close(self) {
        self.clean(false);
        let removed = safefs::ignore_absent(self.dir.remove_file(LOCK_FILE))
            .and_then(|()| safefs::ignore_absent(self.root.remove_dir(WORKSPACE_DIR)));
        if let Err(e) = removed {
            tracing::warn!(path = %self.dir.path().display(), error = %e, "could not remove the restore workspace");
        }
        drop(self.lock);
    }
}
