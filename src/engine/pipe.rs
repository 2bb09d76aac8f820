//! A bounded pipe from blocking code (the tar writer) to async code (a storage upload).
//!
//! The writer sends chunks of [`CHUNK`] bytes over a channel of a few slots, so memory stays
//! bounded whatever the archive size. A writer dropped without [`PipeWriter::finish`] (its
//! producer failed or panicked) makes the reader fail instead of ending cleanly, so a storage
//! backend never publishes a truncated archive.

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
}

/// The async end: an `AsyncRead`.
pub type PipeReader = StreamReader<ChunkStream, Bytes>;

/// The chunks of a pipe as a stream.
pub struct ChunkStream(mpsc::Receiver<io::Result<Bytes>>);

impl Stream for ChunkStream {
    type Item = io::Result<Bytes>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

/// A pipe holding at most `slots` chunks in flight (plus one being filled).
pub fn pipe(slots: usize) -> (PipeWriter, PipeReader) {
    let (tx, rx) = mpsc::channel(slots);
    let writer = PipeWriter {
        tx,
        buf: BytesMut::with_capacity(CHUNK),
        finished: false,
    };
    (writer, StreamReader::new(ChunkStream(rx)))
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
        self.buf.reserve(CHUNK);
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
        let (mut w, mut r) = pipe(2);
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

        let (mut w, mut r) = pipe(2);
        tokio::task::spawn_blocking(move || {
            w.write_all(b"partial").unwrap();
            drop(w);
        });
        let mut got = Vec::new();
        let err = r.read_to_end(&mut got).await.unwrap_err();
        assert!(err.to_string().contains("not completed"), "{err}");
    }
}
