//! A bounded pipe from blocking code (the tar writer) to a storage backend.
//!
//! The writer sends chunks of [`CHUNK`] bytes over a channel of a few slots, so memory stays
//! bounded whatever the archive size. A writer dropped without [`PipeWriter::finish`] (its
//! producer failed or panicked) makes the reader fail instead of ending cleanly, so a storage
//! backend never publishes a truncated archive.
//!
//! A consumer that takes the chunks themselves ([`Chunks::next_blocking`], local storage)
//! writes them without copying and gives their buffers back ([`Chunks::recycle`]): a fresh
//! 1 MiB buffer per chunk is an `mmap`, a page fault per 4 KiB and an `munmap`, which cost
//! as much system time as writing the archive. Async consumers (S3) read it as a stream.

use std::io::{self, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use tokio::sync::mpsc;
use tokio_util::io::StreamReader;

/// Size of the chunks sent through the pipe.
pub const CHUNK: usize = 1 << 20;

/// The blocking end.
pub struct PipeWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: BytesMut,
    finished: bool,
    /// Buffers the consumer gave back.
    spare: std::sync::mpsc::Receiver<BytesMut>,
}

/// The consuming end.
pub struct Chunks {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    spare: std::sync::mpsc::SyncSender<BytesMut>,
}

impl Chunks {
    /// The next chunk, waiting for it (on a blocking thread); `None` at the end.
    pub fn next_blocking(&mut self) -> Option<io::Result<Bytes>> {
        self.rx.blocking_recv()
    }

    /// Gives a chunk's buffer back to the writer for the next chunk.
    pub fn recycle(&self, chunk: Bytes) {
        if let Ok(mut buf) = chunk.try_into_mut() {
            buf.clear();
            let _ = self.spare.try_send(buf);
        }
    }

    /// The chunks as an `AsyncRead` (their buffers are not given back).
    pub fn into_async(self) -> StreamReader<ChunkStream, Bytes> {
        StreamReader::new(ChunkStream(self.rx))
    }
}

/// The chunks of a pipe as a stream.
pub struct ChunkStream(mpsc::Receiver<io::Result<Bytes>>);

impl Stream for ChunkStream {
    type Item = io::Result<Bytes>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

/// A pipe holding at most `slots` chunks in flight (plus one being filled).
pub fn pipe(slots: usize) -> (PipeWriter, Chunks) {
    let (tx, rx) = mpsc::channel(slots);
    let (spare_tx, spare_rx) = std::sync::mpsc::sync_channel(slots + 1);
    let writer = PipeWriter {
        tx,
        buf: BytesMut::with_capacity(CHUNK),
        finished: false,
        spare: spare_rx,
    };
    (
        writer,
        Chunks {
            rx,
            spare: spare_tx,
        },
    )
}

impl PipeWriter {
    fn send(&mut self, item: io::Result<Bytes>) -> io::Result<()> {
        self.tx.blocking_send(item).map_err(|_| {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the archive consumer stopped reading",
            )
        })
    }

    fn send_buf(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = self.buf.split().freeze();
        self.buf = self
            .spare
            .try_recv()
            .unwrap_or_else(|_| BytesMut::with_capacity(CHUNK));
        self.send(Ok(chunk))
    }

    /// Sends what is buffered and ends the stream cleanly.
    pub fn finish(mut self) -> io::Result<()> {
        self.send_buf()?;
        self.finished = true;
        Ok(())
    }
}

impl Write for PipeWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.send_buf()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for PipeWriter {
    fn drop(&mut self) {
        if !self.finished {
            // The reader may be gone already; nothing else to do then.
            let _ = self.tx.blocking_send(Err(io::Error::other(
                "the archive was not completed (its writer failed)",
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bytes_cross_in_order_and_an_unfinished_writer_is_an_error() {
        let (mut w, r) = pipe(2);
        let mut r = r.into_async();
        let data: Vec<u8> = (0..3 * CHUNK + 17).map(|i| (i % 251) as u8).collect();
        let expected = data.clone();
        let t = tokio::task::spawn_blocking(move || {
            w.write_all(&data).unwrap();
            w.finish().unwrap();
        });
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        t.await.unwrap();
        assert_eq!(got, expected);

        let (mut w, r) = pipe(2);
        let mut r = r.into_async();
        tokio::task::spawn_blocking(move || {
            w.write_all(b"partial").unwrap();
            drop(w);
        });
        let mut got = Vec::new();
        let err = r.read_to_end(&mut got).await.unwrap_err();
        assert!(err.to_string().contains("not completed"), "{err}");
    }

    #[test]
    fn recycled_buffers_come_back_and_carry_the_right_bytes() {
        let (mut w, mut r) = pipe(2);
        let chunk = |i: usize| -> Vec<u8> { (0..CHUNK).map(|j| ((i + j) % 251) as u8).collect() };
        // A chunk is sent once full; the buffer given back is the one the chunk after next
        // is written into (the next one was taken when the first was sent).
        let mut pointers = Vec::new();
        for i in 0..4 {
            w.write_all(&chunk(i)).unwrap();
            let got = r.next_blocking().unwrap().unwrap();
            assert_eq!(got[..], chunk(i)[..]);
            pointers.push(got.as_ptr());
            r.recycle(got);
        }
        assert_eq!(pointers[2], pointers[0], "the first buffer was not reused");
        assert_eq!(pointers[3], pointers[1], "the second buffer was not reused");
        w.finish().unwrap();
        assert!(r.next_blocking().is_none());
    }
}
