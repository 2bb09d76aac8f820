//! Early writeback: while a restore extracts, a helper thread asks the kernel (`syncfs`) to
//! write what is staged so far, so the disk works during extraction and the final `syncfs`
//! that makes the restore durable has little left to do; large files also start their own
//! writeback as they are written.

use std::fs::File;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread::JoinHandle;

use crate::safefs::Dir;

/// Bytes written (each file counting at least a page) between two early flushes.
const FLUSH_EVERY: u64 = 64 << 20;
const PAGE: u64 = 4096;

/// Starts background flushes of the filesystem holding a directory.
pub struct Flusher {
    tx: Option<SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
    pending: u64,
}

impl Flusher {
    /// A flusher for the filesystem of `dir`; does nothing when its descriptor cannot be
    /// duplicated (the final, checked `syncfs` still makes the data durable).
    pub fn start(dir: &Dir) -> Self {
        let Ok(fd) = dir.try_clone() else {
            return Self {
                tx: None,
                thread: None,
                pending: 0,
            };
        };
        let (tx, rx) = sync_channel::<()>(1);
        let thread = std::thread::spawn(move || {
            while rx.recv().is_ok() {
                // Errors surface in the final, checked syncfs.
                let _ = rustix::fs::syncfs(&fd);
            }
        });
        Self {
            tx: Some(tx),
            thread: Some(thread),
            pending: 0,
        }
    }

    /// Records a written file of `bytes`; starts a flush when enough has accumulated.
    pub fn wrote(&mut self, bytes: u64) {
        self.pending += bytes.max(PAGE);
        if self.pending >= FLUSH_EVERY {
            self.pending = 0;
            if let Some(tx) = &self.tx {
                // A flush already queued will cover this data too.
                let _ = tx.try_send(());
            }
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Bytes of a large file written between two [`start_writeback`] calls.
pub const KICK_EVERY: u64 = 8 << 20;

/// Asks the kernel to start writing `len` bytes of `file` from `offset` to disk, without
/// waiting, so that writing a large file overlaps reading the archive and the final `syncfs`
/// has little left. A failure only loses the head start: the final `syncfs` is checked.
pub fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: a plain syscall on a file descriptor that `file` keeps open; no memory is passed.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}
