//! The restore workspace: `<storage>/.snapshot-operator/`, on the same filesystem as the
//! target so that staged data moves into place by `rename`.
//!
//! One restore at a time holds its lock (`flock`, released by the kernel even on SIGKILL);
//! whoever takes the lock first removes what an interrupted restore left behind.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use rustix::fs::FlockOperation;

use super::WORKSPACE_DIR;

const LOCK_FILE: &str = "lock";

/// A locked workspace.
#[derive(Debug)]
pub struct Workspace {
    dir: PathBuf,
    lock: Option<File>,
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
    /// Creates (if needed), locks and cleans the workspace of `storage`, creating `storage`
    /// itself when it does not exist yet.
    pub fn open(storage: &Path) -> Result<Self, WorkspaceError> {
        let dir = storage.join(WORKSPACE_DIR);
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| WorkspaceError::Io { path, source }
        };
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = File::create(&lock_path).map_err(io_err(&lock_path))?;
        match rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                return Err(WorkspaceError::Busy {
                    storage: storage.to_owned(),
                });
            }
            Err(e) => return Err(io_err(&lock_path)(e.into())),
        }
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            if entry.file_name() != LOCK_FILE {
                let path = entry.path();
                tracing::info!(path = %path.display(), "removing what an interrupted restore left");
                remove_all(&path).map_err(io_err(&path))?;
            }
        }
        Ok(Self {
            dir,
            lock: Some(lock),
        })
    }

    /// A new, empty staging directory inside the workspace.
    pub fn staging(&self) -> Result<PathBuf, WorkspaceError> {
        let path = self.dir.join(format!("restore-{}", std::process::id()));
        fs::create_dir(&path).map_err(|source| WorkspaceError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }

    /// Removes the workspace (lock included) after a restore.
    pub fn close(mut self) -> Result<(), WorkspaceError> {
        let result = remove_all(&self.dir).map_err(|source| WorkspaceError::Io {
            path: self.dir.clone(),
            source,
        });
        self.lock.take();
        result
    }
}

/// Removes a file or a directory tree; absent is fine.
pub fn remove_all(path: &Path) -> io::Result<()> {
    let result = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}
