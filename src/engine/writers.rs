//! Parallel writers for small files: the tar parser hands small files (read into memory) to a
//! few threads that create them, so file creation, the costly part of restoring many small
//! files, uses every core. Memory stays bounded by the queue length times the size limit.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::{Scope, ScopedJoinHandle};
use std::time::{Duration, SystemTime};

use super::restore::error::{RestoreError, write_err};
use crate::safefs::Dir;

/// Files up to this size go to the writers; larger ones are streamed by the parser.
pub const SMALL_FILE: u64 = 256 << 10;
/// Files queued per writer.
const QUEUE: usize = 32;

/// A file to create: `name` in `dir`, `path` for messages.
pub struct SmallFile {
    pub dir: Arc<Dir>,
    pub name: OsString,
    pub path: PathBuf,
    pub data: Vec<u8>,
    pub perm: u32,
    pub mtime: u64,
}

/// The writer threads of one restore.
pub struct Writers<'scope> {
    senders: Vec<SyncSender<SmallFile>>,
    threads: Vec<ScopedJoinHandle<'scope, ()>>,
    next: usize,
    error: Arc<Mutex<Option<RestoreError>>>,
}

impl<'scope> Writers<'scope> {
    /// Starts `n` writers in `scope`.
    pub fn start<'env>(scope: &'scope Scope<'scope, 'env>, n: usize, umask: u32) -> Self {
        let error: Arc<Mutex<Option<RestoreError>>> = Arc::default();
        let mut senders = Vec::new();
        let mut threads = Vec::new();
        for _ in 0..n {
            let (tx, rx) = sync_channel::<SmallFile>(QUEUE);
            let error = error.clone();
            senders.push(tx);
            threads.push(scope.spawn(move || {
                for file in rx {
                    let written = write_file(
                        &file.dir,
                        &file.name,
                        &file.path,
                        file.perm,
                        file.mtime,
                        umask,
                        |f| {
                            std::io::Write::write_all(f, &file.data).map_err(|source| {
                                RestoreError::Write {
                                    path: file.path.clone(),
                                    source,
                                }
                            })
                        },
                    );
                    if let Err(e) = written {
                        error.lock().expect("not poisoned").get_or_insert(e);
                        return;
                    }
                }
            }));
        }
        Self {
            senders,
            threads,
            next: 0,
            error,
        }
    }

    /// Queues a file; fails with the first error a writer met.
    pub fn write(&mut self, file: SmallFile) -> Result<(), RestoreError> {
        self.check()?;
        let i = self.next;
        self.next = (self.next + 1) % self.senders.len();
        if self.senders[i].send(file).is_err() {
            // That writer stopped on an error.
            self.check()?;
        }
        Ok(())
    }

    fn check(&self) -> Result<(), RestoreError> {
        match self.error.lock().expect("not poisoned").take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Waits for every queued file; fails with the first error a writer met.
    pub fn finish(self) -> Result<(), RestoreError> {
        drop(self.senders);
        for thread in self.threads {
            thread.join().expect("writers do not panic");
        }
        match self.error.lock().expect("not poisoned").take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// A tar entry's modification time.
pub fn to_time(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

/// Creates the file `name` in `dir` (`path` for messages) with permission bits `perm` and
/// modification time `mtime`, its content written by `content`. The file must not exist:
/// an archive that holds a path twice is refused.
pub fn write_file(
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
