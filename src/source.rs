//! Where a restore reads its archive from: a local path, a name in the configured storage,
//! `file://` (inside the snapshots path only), `http(s)://` (streamed, with an optional
//! `api-key` header and an inactivity timeout) or `s3://bucket/key`.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::TryStreamExt;
use reqwest::Url;
use tokio_util::io::StreamReader;

use crate::config::S3Config;
use crate::engine::name;
use crate::storage::s3::S3Storage;
use crate::storage::{Reader, Storage, StorageError, validate_key};

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

/// Options for `http(s)://` sources.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Sent as the `api-key` header (as Qdrant expects).
    pub api_key: Option<String>,
    /// A download with no data for this long fails.
    pub timeout: Duration,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            api_key: None,
            timeout: Duration::from_secs(60),
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
    pub http: HttpOptions,
    /// The configured S3 connection, reused for `s3://` locations; without one they use the
    /// SDK's environment (AWS_ENDPOINT_URL, AWS_REGION, credentials chain).
    pub s3: Option<S3Storage>,
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

/// Opens `location` for reading.
pub async fn open(
    location: &Location,
    checksum: Option<&str>,
    ctx: &Context,
) -> Result<Opened, SourceError> {
    match location {
        Location::Local(text) => {
            let path = Path::new(text);
            if path.is_file() {
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
            let checksum = expected_checksum(&info.location, checksum, info.checksum)?;
            let (reader, size) = ctx.storage.get(&key).await?;
            Ok(Opened {
                reader,
                size: Some(size),
                checksum,
                location: info.location,
            })
        }
        Location::File(path) => {
            let root =
                std::fs::canonicalize(&ctx.snapshots_path).map_err(|source| SourceError::Open {
                    path: ctx.snapshots_path.clone(),
                    source,
                })?;
            let real = std::fs::canonicalize(path).map_err(|source| SourceError::Open {
                path: path.clone(),
                source,
            })?;
            if !real.starts_with(&root) {
                return Err(SourceError::OutsideSnapshots { path: real, root });
            }
            open_file(&real, checksum).await
        }
        Location::Http(url) => open_http(url, checksum, &ctx.http).await,
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
            let sidecar = s3.object_checksum(key).await?;
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

/// Opens a local archive, with the checksum from `<path>.checksum` when present.
pub async fn open_file(path: &Path, checksum: Option<&str>) -> Result<Opened, SourceError> {
    let open_err = |source| SourceError::Open {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(open_err)?;
    let size = file.metadata().map_err(open_err)?.len();
    let mut sidecar_path = path.as_os_str().to_owned();
    sidecar_path.push(name::CHECKSUM_EXT);
    let sidecar = tokio::fs::read_to_string(&sidecar_path)
        .await
        .ok()
        .and_then(|t| name::parse_checksum(&t));
    let location = path.display().to_string();
    Ok(Opened {
        reader: Reader::File(file),
        size: Some(size),
        checksum: expected_checksum(&location, checksum, sidecar)?,
        location,
    })
}

async fn open_http(
    url: &Url,
    checksum: Option<&str>,
    opts: &HttpOptions,
) -> Result<Opened, SourceError> {
    let http_err = |source| SourceError::Http {
        url: url.to_string(),
        source,
    };
    crate::tls::install_crypto_provider();
    let client = reqwest::Client::builder()
        .connect_timeout(opts.timeout)
        .read_timeout(opts.timeout)
        .build()
        .map_err(http_err)?;
    let mut request = client.get(url.clone());
    if let Some(key) = &opts.api_key {
        request = request.header("api-key", key);
    }
    let response = request.send().await.map_err(http_err)?;
    let status = response.status();
    if !status.is_success() {
        let hint = match status.as_u16() {
            401 | 403 => " (check --api-key)",
            404 => " (check the URL)",
            _ => "",
        };
        return Err(SourceError::HttpStatus {
            url: url.to_string(),
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
