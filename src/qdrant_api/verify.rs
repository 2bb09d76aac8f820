//! A download checked against what Qdrant said of the snapshot: its size and SHA-256, as the
//! bytes go past; the end of the stream is an error when they differ, so storage keeps
//! nothing of it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, ReadBuf};

use super::client::Described;

/// `inner`, checked against `expected` at its end.
pub struct Verified<R> {
    inner: R,
    expected: Described,
    hasher: Sha256,
    seen: u64,
}

impl<R> Verified<R> {
    pub fn new(inner: R, expected: Described) -> Self {
        Self {
            inner,
            expected,
            hasher: Sha256::new(),
            seen: 0,
        }
    }

    /// What is wrong with the whole stream, if anything (pure).
    fn mismatch(&self) -> Option<String> {
        let name = &self.expected.name;
        if self.seen != self.expected.size {
            return Some(format!(
                "Qdrant's snapshot {name} is {} bytes, but {} came",
                self.expected.size, self.seen
            ));
        }
        let expected = self.expected.checksum.as_deref()?;
        let actual = hex(&self.hasher.clone().finalize());
        (!actual.eq_ignore_ascii_case(expected)).then(|| {
            format!("Qdrant's snapshot {name} has SHA-256 {expected}, but what came has {actual}")
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl<R: AsyncRead + Unpin> AsyncRead for Verified<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                if new.is_empty() && buf.remaining() > 0 {
                    if let Some(why) = this.mismatch() {
                        return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, why)));
                    }
                } else {
                    this.hasher.update(new);
                    this.seen += new.len() as u64;
                    // More than Qdrant said: fail now rather than store without end.
                    if this.seen > this.expected.size {
                        let why = this.mismatch().expect("the sizes differ");
                        // An error hands on no data.
                        buf.set_filled(before);
                        return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, why)));
                    }
                }
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn described(size: u64, checksum: Option<&str>) -> Described {
        Described {
            name: "c.snapshot".into(),
            size,
            checksum: checksum.map(Into::into),
        }
    }

    async fn read(data: &'static [u8], expected: Described) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        Verified::new(data, expected)
            .read_to_end(&mut out)
            .await
            .map(|_| out)
    }

    #[tokio::test]
    async fn a_download_must_be_the_snapshot_qdrant_described() {
        let sum = hex(&Sha256::digest(b"abc"));
        assert_eq!(
            read(b"abc", described(3, Some(&sum))).await.unwrap(),
            b"abc"
        );
        assert_eq!(read(b"abc", described(3, None)).await.unwrap(), b"abc");
        let long = read(b"abcd", described(3, Some(&sum))).await.unwrap_err();
        assert!(
            long.to_string().contains("is 3 bytes, but 4 came"),
            "{long}"
        );
        let short = read(b"ab", described(3, Some(&sum))).await.unwrap_err();
        assert!(
            short.to_string().contains("is 3 bytes, but 2 came"),
            "{short}"
        );
        let other = hex(&Sha256::digest(b"abd"));
        let wrong = read(b"abc", described(3, Some(&other))).await.unwrap_err();
        assert_eq!(wrong.kind(), io::ErrorKind::InvalidData);
        assert!(wrong.to_string().contains(&other), "{wrong}");
        let upper = sum.to_uppercase();
        assert!(read(b"abc", described(3, Some(&upper))).await.is_ok());
    }
}
