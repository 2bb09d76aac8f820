//! Where a restore reads its archive from: a local path, a name in the configured storage,
//! `file://` (inside the snapshots path only), `http(s)://` (streamed, with an optional
//! `api-key` header sent only to the location's origin) or `s3://bucket/key`.
//!
//! Every remote stream (http(s), S3) is [`Paced`]: it fails when nothing arrives for a while,
//! when it takes longer than a deadline in all, or when its average rate falls below a
//! minimum, so that a source trickling one byte a second cannot hold a restore forever.

use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use futures_util::TryStreamExt;
use reqwest::Url;
use rustix::fs::OFlags;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::{Instant, Sleep};
use tokio_util::io::StreamReader;

use crate::config::S3Config;
use crate::engine::name;
use crate::safefs::Dir;
use crate::storage::s3::S3Storage;
use crate::storage::{Reader, Storage, StorageError, validate_key};

/// Redirects followed from an http(s) location.
const MAX_REDIRECTS: usize = 10;

/// A parsed restore location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A local file path, or else a key in the configured storage.
    Local(String),
    /// `file://` URL: a local file inside the snapshots path.
    File(PathBuf),
    /// `http://` or `https://` URL.
    Http(Url),
    /// `s3://bucket/key`.
    S3 { bucket: String, key: String },
}

/// Why a location cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("invalid location {location:?}: {why}")]
    Invalid { location: String, why: String },
    #[error(
        "refused: {path} is outside the snapshots path {root}; file:// locations must be \
         inside it (copy the archive there, or give a plain path)"
    )]
    OutsideSnapshots { path: PathBuf, root: PathBuf },
    #[error("{location} not found: it is neither a local file nor a snapshot in {storage}")]
    NotFound { location: String, storage: String },
    #[error("failed to open {path}")]
    Open { path: PathBuf, source: io::Error },
    #[error("failed to download {url}")]
    Http { url: String, source: reqwest::Error },
    #[error("refused the redirect from {from} to {to}: {why}")]
    Redirect {
        from: String,
        to: String,
        why: &'static str,
    },
    #[error("{url} answered {status}{hint}")]
    HttpStatus {
        url: String,
        status: reqwest::StatusCode,
        hint: &'static str,
    },
    #[error("checksums disagree for {location}: given {given}, its checksum file says {sidecar}")]
    ChecksumConflict {
        location: String,
        given: String,
        sidecar: String,
    },
    #[error("invalid checksum {0:?}: expected 64 hexadecimal digits (SHA-256)")]
    BadChecksum(String),
    #[error(
        "the download from {location} did not finish within {secs}s (--download-deadline; \
         redirects and response headers count too)"
    )]
    Deadline { location: String, secs: u64 },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl Location {
    /// Parses a location as users write it.
    pub fn parse(text: &str) -> Result<Self, SourceError> {
        let invalid = |why: &str| SourceError::Invalid {
            location: text.into(),
            why: why.into(),
        };
        let Some((scheme, rest)) = text.split_once("://") else {
            if text.is_empty() {
                return Err(invalid("empty"));
            }
            return Ok(Self::Local(text.into()));
        };
        match scheme.to_ascii_lowercase().as_str() {
            "file" => {
                let url = Url::parse(text).map_err(|e| invalid(&e.to_string()))?;
                let path = url
                    .to_file_path()
                    .map_err(|()| invalid("not a local file URL (file:///absolute/path)"))?;
                Ok(Self::File(path))
            }
            "http" | "https" => Ok(Self::Http(
                Url::parse(text).map_err(|e| invalid(&e.to_string()))?,
            )),
            "s3" => {
                let (bucket, key) = rest
                    .split_once('/')
                    .filter(|(b, k)| !b.is_empty() && !k.is_empty())
                    .ok_or_else(|| invalid("expected s3://bucket/key"))?;
                Ok(Self::S3 {
                    bucket: bucket.into(),
                    key: key.into(),
                })
            }
            other => Err(invalid(&format!(
                "unsupported scheme {other:?}; use a path, a snapshot name, file://, http(s):// or s3://"
            ))),
        }
    }
}

/// Bounds on a download from a remote source (http(s), S3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    /// A download that receives nothing for this long fails; the minimum rate applies once
    /// this long has passed.
    pub stall: Duration,
    /// A download that has not finished after this long fails.
    pub deadline: Duration,
    /// A download whose average rate since its start falls below this (bytes per second)
    /// fails; 0 for no minimum.
    pub min_rate: u64,
}

impl Default for Pace {
    fn default() -> Self {
        Self {
            stall: Duration::from_secs(60),
            deadline: Duration::from_secs(24 * 3600),
            min_rate: 64 << 10,
        }
    }
}

/// What a restore needs to resolve locations.
#[derive(Debug, Clone)]
pub struct Context {
    /// The configured storage (names are looked up there).
    pub storage: Arc<dyn Storage>,
    /// `file://` locations must resolve inside this directory.
    pub snapshots_path: PathBuf,
    /// Sent as the `api-key` header (as Qdrant expects) to the origin of http(s) locations.
    pub api_key: Option<String>,
    /// Bounds on remote downloads.
    pub pace: Pace,
    /// The configured S3 connection, reused for `s3://` locations; without one they use the
    /// SDK's environment (AWS_ENDPOINT_URL, AWS_REGION, credentials chain).
    pub s3: Option<S3Storage>,
    /// Whether a plain location may name a file of this machine (the CLI), or only a name
    /// in the storage (a mover: its files are not the requester's to read).
    pub local_files: bool,
}

/// An archive ready to be read.
pub struct Opened {
    pub reader: Reader,
    /// Its size, when known (for progress).
    pub size: Option<u64>,
    /// The checksum to verify: the one given, else the sidecar's, if any.
    pub checksum: Option<String>,
    /// Where it comes from, for messages.
    pub location: String,
}

/// Checks a user-given checksum and reconciles it with the sidecar's.
pub fn expected_checksum(
    location: &str,
    given: Option<&str>,
    sidecar: Option<String>,
) -> Result<Option<String>, SourceError> {
    let given = given
        .map(|g| name::parse_checksum(g).ok_or_else(|| SourceError::BadChecksum(g.into())))
        .transpose()?;
    match (given, sidecar) {
        (Some(g), Some(s)) if g != s => Err(SourceError::ChecksumConflict {
            location: location.into(),
            given: g,
            sidecar: s,
        }),
        (Some(g), _) => Ok(Some(g)),
        (None, s) => Ok(s),
    }
}

/// Opens `location` for reading; remote streams are paced by `ctx.pace`, its deadline
/// counted from now: connecting, redirects and response headers take from it too.
pub async fn open(
    location: &Location,
    checksum: Option<&str>,
    ctx: &Context,
) -> Result<Opened, SourceError> {
    let started = Instant::now();
    let mut opened = within_deadline(ctx.pace, started, location_text(location), async {
        open_unpaced(location, checksum, ctx).await
    })
    .await?;
    opened.reader = paced(opened.reader, ctx.pace, &opened.location, started);
    Ok(opened)
}

fn location_text(location: &Location) -> String {
    match location {
        Location::Local(text) => text.clone(),
        Location::File(path) => path.display().to_string(),
        Location::Http(url) => url.to_string(),
        Location::S3 { bucket, key } => format!("s3://{bucket}/{key}"),
    }
}

/// Runs `work` (opening a download) within what is left of `pace`'s deadline since
/// `started`.
pub async fn within_deadline<T, E: From<SourceError>>(
    pace: Pace,
    started: Instant,
    location: String,
    work: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    match tokio::time::timeout_at(started + pace.deadline, work).await {
        Ok(result) => result,
        Err(_) => Err(SourceError::Deadline {
            location,
            secs: pace.deadline.as_secs(),
        }
        .into()),
    }
}

/// A stream bounded by `pace` since `started`; local files are read as they are.
pub fn paced(reader: Reader, pace: Pace, location: &str, started: Instant) -> Reader {
    match reader {
        Reader::Stream(stream) => Reader::stream(Paced::new(stream, pace, location, started)),
        local => local,
    }
}

async fn open_unpaced(
    location: &Location,
    checksum: Option<&str>,
    ctx: &Context,
) -> Result<Opened, SourceError> {
    match location {
        Location::Local(text) => {
            let path = Path::new(text);
            if ctx.local_files && path.is_file() {
                return open_file(path, checksum).await;
            }
            let key = resolve_key(ctx.storage.as_ref(), text).await?;
            let info = ctx
                .storage
                .head(&key)
                .await?
                .ok_or_else(|| SourceError::NotFound {
                    location: text.clone(),
                    storage: ctx.storage.location(""),
                })?;
            let sidecar = ctx.storage.sidecar(&key).await?;
            let sidecar = sidecar.expected(&ctx.storage.location(&name::checksum_key(&key)))?;
            let checksum = expected_checksum(&info.location, checksum, sidecar)?;
            let (reader, size) = ctx.storage.get(&key).await?;
            Ok(Opened {
                reader,
                size: Some(size),
                checksum,
                location: info.location,
            })
        }
        Location::File(path) => open_in_snapshots(path, checksum, &ctx.snapshots_path),
        Location::Http(url) => open_http(url, checksum, ctx).await,
        Location::S3 { bucket, key } => {
            let s3 = match &ctx.s3 {
                Some(s3) => s3.with_bucket(bucket),
                None => {
                    let config = S3Config {
                        bucket: bucket.clone(),
                        ..S3Config::default()
                    };
                    S3Storage::connect(&config, String::new()).await?
                }
            };
            let location = s3.location(key);
            let sidecar = s3
                .object_sidecar(key)
                .await?
                .expected(&s3.location(&name::checksum_key(key)))?;
            let checksum = expected_checksum(&location, checksum, sidecar)?;
            let (reader, size) = s3.get_object(key).await?;
            Ok(Opened {
                reader,
                size: Some(size),
                checksum,
                location,
            })
        }
    }
}

/// Opens a `file://` location, which must resolve inside the snapshots path: once resolved,
/// the file and its sidecar are opened from the snapshots directory without following links.
fn open_in_snapshots(
    path: &Path,
    checksum: Option<&str>,
    snapshots: &Path,
) -> Result<Opened, SourceError> {
    let open_err = |path: &Path| {
        let path = path.to_owned();
        move |source| SourceError::Open { path, source }
    };
    let root = std::fs::canonicalize(snapshots).map_err(open_err(snapshots))?;
    let real = std::fs::canonicalize(path).map_err(open_err(path))?;
    let Ok(rel) = real.strip_prefix(&root) else {
        return Err(SourceError::OutsideSnapshots { path: real, root });
    };
    let dir = Dir::open(&root).map_err(open_err(&root))?;
    let file = dir
        .open_file(rel, OFlags::RDONLY)
        .map_err(open_err(&real))?;
    let size = file.metadata().map_err(open_err(&real))?.len();
    let mut sidecar_rel = rel.as_os_str().to_owned();
    sidecar_rel.push(name::CHECKSUM_EXT);
    let sidecar_path = root.join(&sidecar_rel);
    let sidecar = read_sidecar(
        dir.open_file(Path::new(&sidecar_rel), OFlags::RDONLY | OFlags::NONBLOCK),
        &sidecar_path,
    )?;
    let location = real.display().to_string();
    Ok(Opened {
        reader: Reader::File(file),
        size: Some(size),
        checksum: expected_checksum(&location, checksum, sidecar)?,
        location,
    })
}

/// The checksum in the sidecar at `path`, opened as `file`: none when there is no sidecar;
/// one that is not a checksum file is an error, never taken for a missing one.
fn read_sidecar(
    file: io::Result<std::fs::File>,
    path: &Path,
) -> Result<Option<String>, SourceError> {
    use std::io::Read;
    let open_err = |source| SourceError::Open {
        path: path.to_owned(),
        source,
    };
    let file = match file {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(open_err(e)),
    };
    let mut bytes = Vec::new();
    let regular = file.metadata().map_err(open_err)?.is_file();
    if regular {
        file.take(name::MAX_CHECKSUM_FILE + 1)
            .read_to_end(&mut bytes)
            .map_err(open_err)?;
    }
    let location = path.display().to_string();
    let sidecar = if regular {
        crate::storage::Sidecar::of(&bytes)
    } else {
        crate::storage::Sidecar::Invalid
    };
    Ok(sidecar.expected(&location)?)
}

/// Finds the key of a snapshot given by name (`name`, or `collection/name`) in storage.
pub async fn resolve_key(storage: &dyn Storage, text: &str) -> Result<String, SourceError> {
    let mut found = Vec::new();
    for key in name::candidate_keys(text) {
        if validate_key(&key).is_ok() && storage.head(&key).await?.is_some() {
            found.push(key);
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(SourceError::NotFound {
            location: text.into(),
            storage: storage.location(""),
        }),
        _ => Err(SourceError::Invalid {
            location: text.into(),
            why: format!(
                "ambiguous: it names {}; give collection/name",
                found.join(" and ")
            ),
        }),
    }
}

/// Opens a local archive that a user named, with the checksum from `<path>.checksum` when
/// present.
pub async fn open_file(path: &Path, checksum: Option<&str>) -> Result<Opened, SourceError> {
    let open_err = |source| SourceError::Open {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(open_err)?;
    let size = file.metadata().map_err(open_err)?.len();
    let mut sidecar_path = path.as_os_str().to_owned();
    sidecar_path.push(name::CHECKSUM_EXT);
    let sidecar = read_sidecar(
        std::fs::File::options()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&sidecar_path),
        Path::new(&sidecar_path),
    )?;
    let location = path.display().to_string();
    Ok(Opened {
        reader: Reader::File(file),
        size: Some(size),
        checksum: expected_checksum(&location, checksum, sidecar)?,
        location,
    })
}

/// Where a redirect from `from` leads: the `api-key` goes only to the origin of the location
/// given (scheme, host and port); a redirect from https to http is refused.
fn redirect_target(from: &Url, header: Option<&str>) -> Result<Url, SourceError> {
    let refused = |to: String, why| SourceError::Redirect {
        from: from.to_string(),
        to,
        why,
    };
    let header = header.ok_or_else(|| refused(String::new(), "no Location header"))?;
    let to = from
        .join(header)
        .map_err(|_| refused(header.to_owned(), "not a valid URL"))?;
    if from.scheme() == "https" && to.scheme() != "https" {
        return Err(refused(to.to_string(), "it leaves https"));
    }
    if !matches!(to.scheme(), "http" | "https") {
        return Err(refused(to.to_string(), "not an http(s) URL"));
    }
    Ok(to)
}

async fn open_http(
    url: &Url,
    checksum: Option<&str>,
    ctx: &Context,
) -> Result<Opened, SourceError> {
    let http_err = |url: &Url| {
        let url = url.to_string();
        move |source| SourceError::Http { url, source }
    };
    crate::tls::install_crypto_provider();
    let client = reqwest::Client::builder()
        .connect_timeout(ctx.pace.stall)
        .read_timeout(ctx.pace.stall)
        // Redirects are followed below, where the api-key stays with its origin.
        .redirect(reqwest::redirect::Policy::none())
        .referer(false)
        .build()
        .map_err(http_err(url))?;
    let origin = url.origin();
    let mut current = url.clone();
    let mut redirects = 0;
    let response = loop {
        let mut request = client.get(current.clone());
        match &ctx.api_key {
            Some(key) if current.origin() == origin => request = request.header("api-key", key),
            Some(_) => tracing::info!(url = %current, "not sending the api-key to another origin"),
            None => {}
        }
        let response = request.send().await.map_err(http_err(&current))?;
        if !response.status().is_redirection() {
            break response;
        }
        redirects += 1;
        if redirects > MAX_REDIRECTS {
            return Err(SourceError::Redirect {
                from: url.to_string(),
                to: current.to_string(),
                why: "too many redirects",
            });
        }
        let header = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok());
        current = redirect_target(&current, header)?;
    };
    let status = response.status();
    if !status.is_success() {
        let hint = match status.as_u16() {
            401 | 403 => " (check --api-key)",
            404 => " (check the URL)",
            _ => "",
        };
        return Err(SourceError::HttpStatus {
            url: current.to_string(),
            status,
            hint,
        });
    }
    let size = response.content_length();
    let stream = response.bytes_stream().map_err(|e| {
        let kind = if e.is_timeout() {
            io::ErrorKind::TimedOut
        } else {
            io::ErrorKind::Other
        };
        io::Error::new(kind, e)
    });
    Ok(Opened {
        reader: Reader::stream(StreamReader::new(stream)),
        size,
        checksum: expected_checksum(url.as_str(), checksum, None)?,
        location: url.to_string(),
    })
}

/// A remote stream bounded by a [`Pace`]: one timer, set to the earliest moment the stream
/// would break a bound (the deadline, `stall` after the last byte, or the moment the
/// average rate since the start falls below the minimum), and moved on as bytes arrive.
pub struct Paced<R> {
    inner: R,
    pace: Pace,
    location: String,
    start: Instant,
    bytes: u64,
    timer: Pin<Box<Sleep>>,
    /// The bound the timer is set for.
    bound: Bound,
}

/// A bound of a [`Pace`] (ordered as it is reported when two break at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Bound {
    Deadline,
    Stall,
    Rate,
}

impl<R> Paced<R> {
    /// `inner` bounded by `pace`, counted from `start` (when the download began).
    pub fn new(inner: R, pace: Pace, location: &str, start: Instant) -> Self {
        let mut paced = Self {
            inner,
            pace,
            location: location.to_owned(),
            start,
            bytes: 0,
            timer: Box::pin(tokio::time::sleep_until(start)),
            bound: Bound::Stall,
        };
        paced.arm(Instant::now());
        paced
    }

    /// Sets the timer for the earliest bound that breaks unless more bytes arrive, the last
    /// byte having arrived at `last`.
    fn arm(&mut self, last: Instant) {
        let mut next = [
            (self.start + self.pace.deadline, Bound::Deadline),
            (last + self.pace.stall, Bound::Stall),
        ];
        if self.pace.min_rate > 0 {
            let earned = Duration::from_secs_f64(self.bytes as f64 / self.pace.min_rate as f64);
            next[1] = next[1].min((self.start + self.pace.stall + earned, Bound::Rate));
        }
        let (at, bound) = next[0].min(next[1]);
        self.bound = bound;
        self.timer.as_mut().reset(at);
    }

    /// The error of the bound the timer was set for.
    fn broken(&self) -> io::Error {
        let why = match self.bound {
            Bound::Deadline => format!(
                "it did not finish within {}s (--download-deadline)",
                self.pace.deadline.as_secs()
            ),
            Bound::Rate => format!(
                "{} bytes in {:.0}s is below the minimum average rate of {} bytes/s \
                 (--min-download-rate)",
                self.bytes,
                self.start.elapsed().as_secs_f64(),
                self.pace.min_rate
            ),
            Bound::Stall => format!(
                "nothing arrived for {}s (--download-timeout)",
                self.pace.stall.as_secs()
            ),
        };
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the download from {} is too slow: {why}", self.location),
        )
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Paced<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // A bound broken while bytes kept coming fails too (the timer is only polled when
        // the stream waits).
        if self.timer.deadline() <= Instant::now() {
            return Poll::Ready(Err(self.broken()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len() - before;
                if n > 0 {
                    self.bytes += n as u64;
                    self.arm(Instant::now());
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match self.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(self.broken())),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_by_scheme() {
        assert_eq!(
            Location::parse("x.snapshot").unwrap(),
            Location::Local("x.snapshot".into())
        );
        assert_eq!(
            Location::parse("file:///snapshots/a%20b.snapshot").unwrap(),
            Location::File("/snapshots/a b.snapshot".into())
        );
        assert!(matches!(
            Location::parse("https://h:6333/x.snapshot").unwrap(),
            Location::Http(_)
        ));
        assert_eq!(
            Location::parse("s3://bucket/a/b.snapshot").unwrap(),
            Location::S3 {
                bucket: "bucket".into(),
                key: "a/b.snapshot".into()
            }
        );
        for bad in ["", "s3://bucket", "s3:///key", "ftp://h/x", "file://host/x"] {
            assert!(Location::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn redirects_resolve_and_never_leave_https() {
        let from = Url::parse("https://h:6333/a/x.snapshot").unwrap();
        let to = |h: &str| redirect_target(&from, Some(h));
        assert_eq!(
            to("y.snapshot").unwrap().as_str(),
            "https://h:6333/a/y.snapshot"
        );
        assert_eq!(
            to("https://s3.example/b?sig=1").unwrap().as_str(),
            "https://s3.example/b?sig=1"
        );
        for bad in ["http://h:6333/a/x.snapshot", "file:///etc/passwd"] {
            assert!(
                matches!(to(bad), Err(SourceError::Redirect { .. })),
                "{bad}"
            );
        }
        assert!(redirect_target(&from, None).is_err());
    }

    #[test]
    fn given_checksum_must_agree_with_the_sidecar() {
        let a = "a".repeat(64);
        let b = "b".repeat(64);
        assert_eq!(expected_checksum("l", None, None).unwrap(), None);
        assert_eq!(
            expected_checksum("l", Some(&a.to_uppercase()), None).unwrap(),
            Some(a.clone())
        );
        assert_eq!(
            expected_checksum("l", None, Some(b.clone())).unwrap(),
            Some(b.clone())
        );
        assert!(matches!(
            expected_checksum("l", Some(&a), Some(b)),
            Err(SourceError::ChecksumConflict { .. })
        ));
        assert!(matches!(
            expected_checksum("l", Some("xyz"), None),
            Err(SourceError::BadChecksum(_))
        ));
    }
}
