//! Reading ahead on a second thread: an archive is read and hashed there in large chunks while
//! the tar parser writes files on the calling thread, so hashing costs no wall time on two
//! cores and slow sources (HTTP, S3) overlap with disk writes. The chunks' buffers go back to
//! the reading thread once consumed: a fresh 1 MiB buffer per chunk cost an `mmap`, 256 page
//! faults and an `munmap`.

use std::io::{self, Read};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use sha2::{Digest, Sha256};

use super::name;

const CHUNK: usize = 1 << 20;
const SLOTS: usize = 4;

/// What the reading thread saw of the whole input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hashed {
    /// Lowercase hex SHA-256 of every byte.
    pub sha256: String,
    /// Number of bytes.
    pub bytes: u64,
}

/// The error `consume` reads when the input holds more than the bytes allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the input holds more than {max} bytes")]
pub struct TooLong {
    pub max: u64,
}

impl TooLong {
    /// The bound, when `error` is this one.
    pub fn of(error: &io::Error) -> Option<u64> {
        error
            .get_ref()
            .and_then(|e| e.downcast_ref::<Self>())
            .map(|e| e.max)
    }
}

/// Runs `consume` over the bytes of `reader`, read and hashed on another thread, which
/// reads no more than `max` bytes of it: an input longer than that reads as an error
/// ([`TooLong`]) once `max` bytes were consumed. Returns what `consume` returned and, when
/// the reading thread reached the end of the input, its hash.
pub fn with_read_ahead<R, T>(
    reader: R,
    max: u64,
    consume: impl FnOnce(&mut ChunkReader) -> T,
) -> (T, Option<Hashed>)
where
    R: Read + Send,
{
    std::thread::scope(|scope| {
        let (tx, rx) = sync_channel(SLOTS);
        // Room for every buffer there is: a return never blocks.
        let (back, returned) = sync_channel(SLOTS + 2);
        let producer = scope.spawn(move || {
            let chunks = Chunks { tx, returned };
            produce(reader.take(max.saturating_add(1)), max, chunks)
        });
        let mut chunks = ChunkReader {
            rx,
            back,
            current: Vec::new(),
            pos: 0,
        };
        let out = consume(&mut chunks);
        // Unblocks the reading thread if it waits for room in the channel.
        drop(chunks);
        (
            out,
            producer.join().expect("the reading thread does not panic"),
        )
    })
}

/// The reading thread's ends: chunks handed on, buffers coming back.
struct Chunks {
    tx: SyncSender<io::Result<Vec<u8>>>,
    returned: Receiver<Vec<u8>>,
}

impl Chunks {
    /// A buffer of [`CHUNK`] bytes: one handed back, else a new one.
    fn buffer(&self) -> Vec<u8> {
        let mut buf = self.returned.try_recv().unwrap_or_default();
        buf.resize(CHUNK, 0);
        buf
    }
}

fn produce<R: Read>(mut reader: R, max: u64, chunks: Chunks) -> Option<Hashed> {
    let tx = &chunks.tx;
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    loop {
        let mut buf = chunks.buffer();
        let n = match fill(&mut reader, &mut buf) {
            Ok(n) => n,
            Err(e) => {
                let _ = tx.send(Err(e));
                return None;
            }
        };
        if bytes + n as u64 > max {
            // What fits is handed on; the byte beyond the bound is an error.
            buf.truncate(usize::try_from(max - bytes).expect("less than a chunk"));
            if !buf.is_empty() {
                let _ = tx.send(Ok(buf));
            }
            let _ = tx.send(Err(io::Error::other(TooLong { max })));
            return None;
        }
        if n == 0 {
            return Some(Hashed {
                sha256: name::hex(&hasher.finalize()),
                bytes,
            });
        }
        buf.truncate(n);
        hasher.update(&buf);
        bytes += n as u64;
        if tx.send(Ok(buf)).is_err() {
            return None;
        }
    }
}

/// Reads until `buf` is full or the input ends; how many bytes it read.
pub fn fill<R: Read>(reader: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The consuming end: a `Read` over the chunks.
pub struct ChunkReader {
    rx: Receiver<io::Result<Vec<u8>>>,
    /// Where consumed chunks' buffers go back to the reading thread.
    back: SyncSender<Vec<u8>>,
    current: Vec<u8>,
    pos: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.pos == self.current.len() {
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    let done = std::mem::replace(&mut self.current, chunk);
                    if done.capacity() != 0 {
                        // Full only if the reading thread is gone: then the buffer is dropped.
                        let _ = self.back.try_send(done);
                    }
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_everything() {
        let data: Vec<u8> = (0..3 * CHUNK + 5).map(|i| (i % 253) as u8).collect();
        let (read, hashed) = with_read_ahead(&data[..], u64::MAX, |r| {
            let mut out = Vec::new();
            r.read_to_end(&mut out).unwrap();
            out
        });
        assert_eq!(read, data);
        let expected = name::hex(&Sha256::digest(&data));
        assert_eq!(
            hashed,
            Some(Hashed {
                sha256: expected,
                bytes: data.len() as u64
            })
        );
    }

    #[test]
    fn stopping_early_gives_no_hash_and_errors_pass_through() {
        let data = vec![1u8; 20 * CHUNK];
        let (_, hashed) = with_read_ahead(&data[..], u64::MAX, |r| {
            let mut first = [0; 10];
            r.read_exact(&mut first).unwrap();
        });
        assert_eq!(hashed, None);

        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::TimedOut, "stalled"))
            }
        }
        let (err, hashed) = with_read_ahead(Failing, u64::MAX, |r| {
            r.read(&mut [0; 4]).unwrap_err().kind()
        });
        assert_eq!(err, io::ErrorKind::TimedOut);
        assert_eq!(hashed, None);
    }

    #[test]
    fn consumed_buffers_are_read_into_again() {
        let data: Vec<u8> = (0..12 * CHUNK + 7).map(|i| (i % 251) as u8).collect();
        // The reading thread's allocations are its buffers: with them handed back, a dozen
        // chunks take no more buffers than are ever in flight.
        let allocated = std::sync::atomic::AtomicUsize::new(0);
        struct Counting<'a, R> {
            inner: R,
            allocated: &'a std::sync::atomic::AtomicUsize,
            seen: std::collections::HashSet<usize>,
        }
        impl<R: Read> Read for Counting<'_, R> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.seen.insert(buf.as_ptr() as usize) {
                    self.allocated
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                self.inner.read(buf)
            }
        }
        let reader = Counting {
            inner: &data[..],
            allocated: &allocated,
            seen: Default::default(),
        };
        let (read, hashed) = with_read_ahead(reader, u64::MAX, |r| {
            let mut out = Vec::new();
            r.read_to_end(&mut out).unwrap();
            out
        });
        assert_eq!(read, data);
        assert_eq!(hashed.map(|h| h.bytes), Some(data.len() as u64));
        let buffers = allocated.into_inner();
        assert!(
            buffers <= SLOTS + 2,
            "{buffers} buffers for 13 chunks, at most {} in flight",
            SLOTS + 2
        );
    }

    #[test]
    fn reads_no_more_than_allowed() {
        let data = vec![7u8; 3 * CHUNK];
        for max in [0, 10, CHUNK as u64, 2 * CHUNK as u64 + 1] {
            let (got, hashed) = with_read_ahead(&data[..], max, |r| {
                let mut out = Vec::new();
                let err = r.read_to_end(&mut out).unwrap_err();
                (out.len() as u64, TooLong::of(&err))
            });
            assert_eq!(got, (max, Some(max)));
            assert_eq!(hashed, None);
        }
        // Exactly the bound: fine.
        let (n, hashed) = with_read_ahead(&data[..], data.len() as u64, |r| {
            std::io::copy(r, &mut std::io::sink()).unwrap()
        });
        assert_eq!(n, data.len() as u64);
        assert!(hashed.is_some());
    }
}
