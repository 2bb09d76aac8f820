//! S3 storage (AWS, MinIO, Ceph, SeaweedFS, ...): archives under `<prefix>/<key>`.
//!
//! A put reads the archive stream in parts of `part_size` bytes and uploads them while it
//! reads the next, with at most `concurrency` parts in memory, hashing as it goes; once all
//! parts are in, it writes the `.checksum` sidecar object and only then completes the
//! multipart upload, which makes the archive visible. Any failure, a checksum
//! mismatch or an interruption aborts the multipart upload (retrying the abort while the
//! server is unreachable), so nothing is left behind: no object, no dangling upload. Every
//! archive, a small one too, is a multipart upload, started before its name is claimed:
//! whatever a writer killed at any moment leaves (an upload, its claimed sidecar) is found
//! by the next writer's sweep of stale uploads, which removes both.
//!
//! Requests are retried with exponential backoff on throttling, 5xx and connection errors by
//! the SDK's standard retry policy. Credentials come from the configuration or the SDK's
//! default chain (environment, web identity, instance metadata), and never appear in errors.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use jiff::Timestamp;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::task::JoinSet;

use super::sse::Sse;
use super::{
    Naming, ObjectInfo, Reader, Sidecar, Storage, StorageError, check_digest, is_archive_key,
    validate_archive_key, validate_folder, validate_key,
};
use crate::config::S3Config;
use crate::engine::name;

/// Default multipart part size.
pub const DEFAULT_PART_SIZE: usize = 16 << 20;
/// Default number of parts uploaded at once.
pub const DEFAULT_CONCURRENCY: usize = 4;
/// S3's smallest part (all but the last).
const MIN_PART_SIZE: usize = 5 << 20;
/// S3's largest number of parts in one upload.
const MAX_PARTS: i32 = 10_000;
/// Default age after which a multipart upload is taken for abandoned.
pub const DEFAULT_STALE_UPLOAD_AGE: Duration = Duration::from_secs(6 * 3600);
/// How long an abort is retried while the server does not answer.
const ABORT_PATIENCE: Duration = Duration::from_secs(120);

/// `$request` (a request builder on an object) with the SSE-C headers of `$sse`: every
/// request that reads or writes an object's data carries them.
macro_rules! sse_c {
    ($request:expr, $sse:expr) => {{
        let c = $sse.customer();
        $request
            .set_sse_customer_algorithm(c.algorithm)
            .set_sse_customer_key(c.key)
            .set_sse_customer_key_md5(c.md5)
    }};
}

/// `$request` (a write of an object) encrypted as `$sse` says: SSE-S3 or SSE-KMS, or SSE-C.
macro_rules! sse_on_write {
    ($request:expr, $sse:expr) => {{
        let (mode, kms_key) = $sse.on_write();
        sse_c!($request, $sse)
            .set_server_side_encryption(mode)
            .set_ssekms_key_id(kms_key)
    }};
}

/// Archives in an S3 bucket.
#[derive(Debug, Clone)]
pub struct S3Storage {
    client: Client,
    bucket: String,
    /// Key prefix, empty or ending in `/`.
    prefix: String,
    /// The endpoint, for messages.
    endpoint: String,
    part_size: usize,
    concurrency: usize,
    /// Multipart uploads older than this are aborted by the next put (`None`: never).
    stale_upload_age: Option<Duration>,
    /// The server-side encryption of what it writes.
    sse: Arc<Sse>,
}

/// The key prefix for a `snapshots_path`: `./snapshots` and `/snapshots/` give `snapshots/`.
pub fn prefix_of(path: &str) -> String {
    let trimmed = path
        .trim_start_matches("./")
        .trim_matches('/')
        .trim_start_matches("./");
    match trimmed {
        "" | "." => String::new(),
        p => format!("{p}/"),
    }
}

/// The S3 client of `config`: its credentials, region and endpoint, with retries and
/// timeouts; else what is wrong with `config`.
async fn sdk_client(config: &S3Config) -> Result<Client, &'static str> {
    crate::tls::install_crypto_provider();
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    // The region: configured, else the environment's, else us-east-1 (which S3-compatible
    // servers accept) -- never a slow instance-metadata lookup.
    let region = config
        .region
        .clone()
        .or_else(|| std::env::var("AWS_REGION").ok())
        .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
        .unwrap_or_else(|| "us-east-1".to_owned());
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .region(Region::new(region));
    match (&config.access_key, &config.secret_key) {
        (Some(access), Some(secret)) => {
            loader = loader.credentials_provider(Credentials::new(
                access.expose(),
                secret.expose(),
                None,
                None,
                "snapshot-operator configuration",
            ));
        }
        (None, None) => {}
        _ => return Err("set both access_key and secret_key, or neither"),
    }
    if let Some(url) = &config.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    let shared = loader.load().await;
    let builder = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(config.force_path_style.unwrap_or(
            // S3-compatible servers usually need path-style addressing.
            config.endpoint_url.is_some() || std::env::var_os("AWS_ENDPOINT_URL").is_some(),
        ))
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(5)
                .with_initial_backoff(Duration::from_millis(200)),
        )
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(10))
                .read_timeout(Duration::from_secs(120))
                .build(),
        )
        .interceptor(super::sse::OneOfRepeatedHeaders)
        .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired);
    Ok(Client::from_conf(builder.build()))
}

/// What went wrong talking to S3: the request, where, the endpoint and what the server
/// answered (its error code, kept for the few answers this backend acts on).
#[derive(Debug, thiserror::Error)]
#[error("S3 request {op} on {location} (endpoint {endpoint}) failed: {detail}")]
struct S3Error {
    op: &'static str,
    location: String,
    endpoint: String,
    code: Option<String>,
    detail: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl From<S3Error> for StorageError {
    fn from(e: S3Error) -> Self {
        StorageError::Backend(Box::new(e))
    }
}

impl S3Error {
    /// Is `e` S3's answer `code`?
    fn is_code(e: &StorageError, code: &str) -> bool {
        matches!(e, StorageError::Backend(b)
            if b.downcast_ref::<S3Error>().is_some_and(|s3| s3.code.as_deref() == Some(code)))
    }
}

/// The configuration names S3 storage without saying which (no `s3_config`).
pub(super) fn unconfigured() -> StorageError {
    S3Error {
        op: "configure",
        location: "s3://".into(),
        endpoint: "-".into(),
        code: None,
        detail: "snapshots_storage is s3 but s3_config is missing".into(),
        source: None,
    }
    .into()
}

impl S3Storage {
    /// Connects to the bucket of `config`, keys under `prefix` (see [`prefix_of`]).
    pub async fn connect(config: &S3Config, prefix: String) -> Result<Self, StorageError> {
        let endpoint = config
            .endpoint_url
            .clone()
            .unwrap_or_else(|| "AWS S3".to_owned());
        let invalid = |detail: &str| {
            S3Error {
                op: "configure",
                location: format!("s3://{}/{prefix}", config.bucket),
                endpoint: endpoint.clone(),
                code: None,
                detail: detail.into(),
                source: None,
            }
            .into()
        };
        if config.bucket.is_empty() {
            return Err(invalid("no bucket configured (s3_config.bucket)"));
        }
        let part_size = config
            .part_size_mib
            .map_or(DEFAULT_PART_SIZE, |mib| (mib as usize) << 20);
        if part_size < MIN_PART_SIZE {
            return Err(invalid(
                "part_size_mib must be at least 5 (S3's smallest part)",
            ));
        }
        let concurrency = config.upload_concurrency.unwrap_or(DEFAULT_CONCURRENCY);
        if concurrency == 0 {
            return Err(invalid("upload_concurrency must be at least 1"));
        }
        let sse = Sse::of(config).map_err(invalid)?;
        let client = sdk_client(config).await.map_err(invalid)?;
        Ok(Self {
            client,
            bucket: config.bucket.clone(),
            prefix,
            endpoint,
            part_size,
            concurrency,
            stale_upload_age: match config.abort_incomplete_uploads_after_secs {
                None => Some(DEFAULT_STALE_UPLOAD_AGE),
                Some(0) => None,
                Some(secs) => Some(Duration::from_secs(secs)),
            },
            sse: Arc::new(sse),
        })
    }

    /// The same connection on another bucket, with no prefix (for `s3://bucket/key` sources).
    pub fn with_bucket(&self, bucket: &str) -> Self {
        Self {
            bucket: bucket.to_owned(),
            prefix: String::new(),
            ..self.clone()
        }
    }

    /// The first `len` bytes of any object under the prefix (fewer when it is shorter).
    async fn read_prefix(&self, key: &str, len: u64) -> Result<Vec<u8>, StorageError> {
        let mut out = self.get_range(key, Some((0, len.max(1))), None).await?;
        let most = usize::try_from(len).unwrap_or(usize::MAX);
        let mut bytes = Vec::new();
        // A server that ignores the range would send everything: read no more than asked.
        while bytes.len() < most {
            let Some(chunk) = out.body.next().await else {
                break;
            };
            let chunk = chunk.map_err(|e| StorageError::Io {
                op: "read",
                location: self.location(key),
                source: std::io::Error::other(e),
            })?;
            bytes.extend_from_slice(&chunk);
        }
        bytes.truncate(most);
        Ok(bytes)
    }

    fn object(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn error<E>(&self, op: &'static str, key: &str, err: SdkError<E>) -> StorageError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let code = err.code().map(str::to_owned);
        let detail = match &err {
            SdkError::ServiceError(service) => {
                let e = service.err();
                let code = e.code().unwrap_or("error");
                let hint = match code {
                    "NoSuchBucket" => " (create the bucket, or fix s3_config.bucket)",
                    "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "AccessDenied" => {
                        " (check the access key and secret key)"
                    }
                    _ => "",
                };
                format!(
                    "{code}: {}{hint} (HTTP {})",
                    e.message().unwrap_or(""),
                    service.raw().status().as_u16()
                )
            }
            SdkError::DispatchFailure(_) => {
                "cannot reach the endpoint (is it right, and is the server up?)".into()
            }
            SdkError::TimeoutError(_) => "timed out".into(),
            other => DisplayErrorContext(other).to_string(),
        };
        S3Error {
            op,
            location: self.location(key),
            endpoint: self.endpoint.clone(),
            code,
            detail,
            source: Some(Box::new(err)),
        }
        .into()
    }

    /// The archive (or any object) at `key`, if it exists.
    async fn head_object(
        &self,
        key: &str,
    ) -> Result<Option<(u64, Option<Timestamp>)>, StorageError> {
        let head = self.client.head_object().bucket(&self.bucket);
        match sse_c!(head.key(self.object(key)), self.sse).send().await {
            Ok(out) => Ok(Some((
                u64::try_from(out.content_length().unwrap_or(0)).unwrap_or(0),
                out.last_modified()
                    .and_then(|t| Timestamp::from_second(t.secs()).ok()),
            ))),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
            Err(e) => Err(self.error("HeadObject", key, e)),
        }
    }

    /// Reads the sidecar of `key`: a ranged read of no more than a checksum file can hold.
    async fn read_sidecar(&self, key: &str) -> Result<Sidecar, StorageError> {
        let sidecar = name::checksum_key(key);
        match self
            .read_prefix(&sidecar, name::MAX_CHECKSUM_FILE + 1)
            .await
        {
            Ok(bytes) => Ok(Sidecar::of(&bytes)),
            Err(StorageError::NotFound { .. }) => Ok(Sidecar::Missing),
            // An empty object (a name claimed by a writer still at work) has no byte to
            // range over: not a checksum.
            Err(e) if S3Error::is_code(&e, "InvalidRange") => Ok(Sidecar::Invalid),
            Err(e) => Err(e),
        }
    }

    /// Streams any object of the bucket (under the prefix), with its size. Objects larger
    /// than a part are fetched as ranges in parallel and handed out in order, with at most
    /// `concurrency` parts in memory (two when it is 1: one is fetched while one is read).
    pub async fn get_object(&self, key: &str) -> Result<(Reader, u64), StorageError> {
        let part = self.part_size as u64;
        let first = match self.get_range(key, Some((0, part)), None).await {
            // An empty object has no first byte to range over.
            Err(e) if S3Error::is_code(&e, "InvalidRange") => {
                self.get_range(key, None, None).await?
            }
            other => other?,
        };
        let total = first
            .content_range()
            .and_then(|r| r.rsplit('/').next())
            .and_then(|t| t.parse::<u64>().ok())
            .or_else(|| first.content_length().and_then(|l| u64::try_from(l).ok()))
            .unwrap_or(0);
        if total <= part {
            return Ok((Reader::stream(first.body.into_async_read()), total));
        }
        let etag = first.e_tag().map(str::to_owned);
        let head = tokio::spawn(async move { segments(first.body).await });
        let this = self.clone();
        let key = key.to_owned();
        let rest = futures_util::stream::iter((1..total.div_ceil(part)).map(move |i| {
            let (this, key, etag) = (this.clone(), key.clone(), etag.clone());
            let range = (i * part, part.min(total - i * part));
            tokio::spawn(async move {
                let out = this.get_range(&key, Some(range), etag.as_deref()).await?;
                segments(out.body).await
            })
        }));
        let ranges = futures_util::stream::iter([head])
            .chain(rest)
            // Ranges in flight, plus the one being read: `concurrency` parts in memory.
            .buffered(self.concurrency.saturating_sub(1).max(1))
            .flat_map(|joined| {
                futures_util::stream::iter(match joined {
                    Ok(Ok(segments)) => segments.into_iter().map(Ok).collect(),
                    Ok(Err(e)) => vec![Err(std::io::Error::other(e))],
                    Err(e) => vec![Err(std::io::Error::other(e))],
                })
            });
        let body = ranges;
        Ok((
            Reader::stream(tokio_util::io::StreamReader::new(Box::pin(body))),
            total,
        ))
    }

    /// `GetObject`, of `(offset, length)` when given, of that version (`etag`) when given.
    async fn get_range(
        &self,
        key: &str,
        range: Option<(u64, u64)>,
        etag: Option<&str>,
    ) -> Result<aws_sdk_s3::operation::get_object::GetObjectOutput, StorageError> {
        let get = self.client.get_object().bucket(&self.bucket);
        sse_c!(get.key(self.object(key)), self.sse)
            .set_range(range.map(|(start, len)| format!("bytes={start}-{}", start + len - 1)))
            .set_if_match(etag.map(str::to_owned))
            .send()
            .await
            .map_err(|e| {
                if e.as_service_error().is_some_and(|s| s.is_no_such_key()) {
                    StorageError::NotFound {
                        location: self.location(key),
                    }
                } else {
                    self.error("GetObject", key, e)
                }
            })
    }

    /// The sidecar of any object.
    pub async fn object_sidecar(&self, key: &str) -> Result<Sidecar, StorageError> {
        self.read_sidecar(key).await
    }

    /// The archives under `prefix`, by key, from the listing alone: their checksums not read
    /// (`checksum` is `None`; [`Self::object_sidecar`] reads one).
    async fn listing(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(self.object(prefix))
            .into_paginator()
            .send();
        let mut found = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.error("ListObjectsV2", prefix, e))?;
            for object in page.contents() {
                let Some(key) = object.key().and_then(|k| k.strip_prefix(&self.prefix)) else {
                    continue;
                };
                if is_archive_key(key) && validate_key(key).is_ok() {
                    found.push(ObjectInfo {
                        key: key.to_owned(),
                        location: self.location(key),
                        size: u64::try_from(object.size().unwrap_or(0)).unwrap_or(0),
                        modified: object
                            .last_modified()
                            .and_then(|t| Timestamp::from_second(t.secs()).ok()),
                        checksum: None,
                    });
                }
            }
        }
        found.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(found)
    }

    /// Writes one small object of the bucket (under the prefix), replacing it; `Storage::put`
    /// stores an archive with its sidecar.
    pub async fn put_object(&self, key: &str, data: Bytes) -> Result<(), StorageError> {
        self.put_request(key)
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|e| self.error("PutObject", key, e))?;
        Ok(())
    }

    /// Creates the object `key` only if it does not exist (`If-None-Match: *`); `false` when
    /// it does. Servers that ignore the condition overwrite (see the README).
    async fn create_small(&self, key: &str, data: Bytes) -> Result<bool, StorageError> {
        match self
            .put_request(key)
            .if_none_match("*")
            .body(ByteStream::from(data))
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if precondition_failed(&e) => Ok(false),
            Err(e) => Err(self.error("PutObject", key, e)),
        }
    }

    /// A PutObject of `key`, encrypted as configured.
    fn put_request(
        &self,
        key: &str,
    ) -> aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder {
        let put = self.client.put_object().bucket(&self.bucket);
        sse_on_write!(put.key(self.object(key)), self.sse)
    }

    /// Deletes one object of the bucket (under the prefix), there or not; `Storage::delete`
    /// deletes an archive with its sidecar.
    pub async fn delete_object(&self, key: &str) -> Result<(), StorageError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.object(key))
            .send()
            .await
            .map_err(|e| self.error("DeleteObject", key, e))?;
        Ok(())
    }

    /// Starts the archive's multipart upload under the first free key of `naming` and claims
    /// the key: creates its sidecar, empty until the digest is known, only if no writer has
    /// (`If-None-Match: *`). Whoever created the sidecar owns the key; the others abort their
    /// upload and take the next one. The upload comes first, so that every claim a writer
    /// leaves behind has an upload the stale sweep finds.
    async fn claim(&self, naming: Naming<'_>, guard: &mut PutGuard) -> Result<(), StorageError> {
        for attempt in 0.. {
            let Some(key) = naming(attempt) else { break };
            validate_archive_key(&key)?;
            // An archive written by another tool may have no sidecar.
            if self.head_object(&key).await?.is_some() {
                continue;
            }
            let create = self.client.create_multipart_upload().bucket(&self.bucket);
            let created = sse_on_write!(create.key(self.object(&key)), self.sse)
                .send()
                .await
                .map_err(|e| self.error("CreateMultipartUpload", &key, e))?;
            let upload_id = created.upload_id().unwrap_or_default().to_owned();
            guard.key.clone_from(&key);
            guard.upload_id = Some(upload_id.clone());
            let sidecar = name::checksum_key(&key);
            if self.create_small(&sidecar, Bytes::new()).await? {
                guard.claim = Some(sidecar);
                return Ok(());
            }
            guard.upload_id = None;
            self.abort(&key, &upload_id).await;
        }
        Err(StorageError::Exists {
            location: naming(0).map(|k| self.location(&k)).unwrap_or_default(),
        })
    }

    /// Aborts multipart uploads under the prefix started longer ago than the configured age
    /// (uploads whose writer died: SIGKILL, or the server down for longer than the abort was
    /// retried), and deletes the name each one claimed when its archive never appeared and
    /// no younger upload is at work on it. Failures are logged: a bucket lifecycle rule is
    /// the second line of defence.
    async fn abort_stale_uploads(&self) {
        let Some(age) = self.stale_upload_age else {
            return;
        };
        let cutoff = Timestamp::now()
            .checked_sub(jiff::SignedDuration::try_from(age).unwrap_or(jiff::SignedDuration::MAX))
            .unwrap_or(Timestamp::MIN);
        let uploads = match self.uploads().await {
            Ok(uploads) => uploads,
            Err(e) => {
                tracing::warn!(error = %e, "could not list abandoned multipart uploads");
                return;
            }
        };
        let (stale, live): (Vec<_>, Vec<_>) = uploads
            .into_iter()
            .partition(|(_, _, started)| *started < cutoff);
        for (object, upload_id, _) in &stale {
            let aborted = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(object)
                .upload_id(upload_id)
                .send()
                .await;
            match aborted {
                Ok(_) => tracing::info!(key = object, "aborted an abandoned multipart upload"),
                Err(e) => {
                    tracing::warn!(key = object, error = %DisplayErrorContext(&e), "could not abort an abandoned multipart upload");
                    continue;
                }
            }
            let Some(key) = object.strip_prefix(&self.prefix) else {
                continue;
            };
            if validate_archive_key(key).is_err() || live.iter().any(|(o, _, _)| o == object) {
                continue;
            }
            match self.head_object(key).await {
                Ok(None) => {}
                _ => continue,
            }
            let claim = name::checksum_key(key);
            match self.delete_object(&claim).await {
                Ok(()) => {
                    tracing::info!(key = claim, "removed the name an abandoned upload claimed")
                }
                Err(e) => {
                    tracing::warn!(key = claim, error = %e, "could not remove the name an abandoned upload claimed")
                }
            }
        }
    }

    /// Multipart uploads under the prefix (object key, upload id, when started).
    async fn uploads(&self) -> Result<Vec<(String, String, Timestamp)>, StorageError> {
        let mut found = Vec::new();
        let (mut key_marker, mut id_marker) = (None, None);
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(&self.prefix)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(id_marker.take())
                .send()
                .await
                .map_err(|e| self.error("ListMultipartUploads", "", e))?;
            for upload in page.uploads() {
                let started = upload
                    .initiated()
                    .and_then(|t| Timestamp::from_second(t.secs()).ok());
                if let (Some(key), Some(id), Some(started)) =
                    (upload.key(), upload.upload_id(), started)
                {
                    found.push((key.to_owned(), id.to_owned(), started));
                }
            }
            if !page.is_truncated().unwrap_or(false) {
                return Ok(found);
            }
            key_marker = page.next_key_marker().map(str::to_owned);
            id_marker = page.next_upload_id_marker().map(str::to_owned);
            if key_marker.is_none() && id_marker.is_none() {
                return Ok(found);
            }
        }
    }

    /// Uploads the archive `body` as the parts of the upload `guard` holds; returns size and
    /// digest once the archive is complete (its sidecar written, then the upload completed).
    async fn upload(
        &self,
        mut body: Box<dyn AsyncRead + Send + Unpin>,
        expected: Option<&str>,
        guard: &mut PutGuard,
    ) -> Result<(u64, String), StorageError> {
        let key = guard.key.clone();
        let key = key.as_str();
        let upload_id = guard.upload_id.clone().unwrap_or_default();
        let mut hasher = Sha256::new();
        let mut parts = JoinSet::new();
        let mut done: Vec<CompletedPart> = Vec::new();
        let first = read_part(&mut body, self.part_size)
            .await
            .map_err(|source| StorageError::Body { source })?;
        hasher.update(&first);
        let mut size = first.len() as u64;
        let mut next = Some(first);
        let mut number = 0i32;
        let result: Result<String, StorageError> = async {
            while let Some(part) = next.take() {
                number += 1;
                if number > MAX_PARTS {
                    return Err(self.too_many_parts(key));
                }
                let this = self.clone();
                let (key, id) = (key.to_owned(), upload_id.clone());
                parts.spawn(async move { this.upload_part(&key, &id, number, part).await });
                // The part read next takes a slot too: at most `concurrency` parts in memory.
                while parts.len() >= self.concurrency {
                    done.push(joined(parts.join_next().await)?);
                }
                let chunk = read_part(&mut body, self.part_size)
                    .await
                    .map_err(|source| StorageError::Body { source })?;
                if !chunk.is_empty() {
                    hasher.update(&chunk);
                    size += chunk.len() as u64;
                    next = Some(chunk);
                }
            }
            while let Some(joined_part) = parts.join_next().await {
                done.push(joined(Some(joined_part))?);
            }
            let digest = name::hex(&hasher.finalize());
            check_digest(&self.location(key), expected, &digest)?;
            Ok(digest)
        }
        .await;
        let digest = match result {
            Ok(digest) => digest,
            Err(e) => {
                parts.abort_all();
                return Err(e);
            }
        };
        done.sort_by_key(|p| p.part_number());
        self.complete(key, &upload_id, done, &digest).await?;
        guard.upload_id = None;
        guard.claim = None;
        Ok((size, digest))
    }

    /// An archive larger than S3 takes in parts of the configured size.
    fn too_many_parts(&self, key: &str) -> StorageError {
        S3Error {
            op: "UploadPart",
            location: self.location(key),
            endpoint: self.endpoint.clone(),
            code: None,
            detail: format!(
                "the archive is larger than {MAX_PARTS} parts of {} MiB; raise \
                 s3_config.part_size_mib",
                self.part_size >> 20
            ),
            source: None,
        }
        .into()
    }

    /// Completes the upload `upload_id` of `key` from its parts `done`: the claimed sidecar
    /// gets the digest, then the archive appears (only if absent).
    async fn complete(
        &self,
        key: &str,
        upload_id: &str,
        done: Vec<CompletedPart>,
        digest: &str,
    ) -> Result<(), StorageError> {
        let sidecar = name::checksum_key(key);
        self.put_object(&sidecar, Bytes::from(digest.to_owned()))
            .await?;
        let completed = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(self.object(key))
            .if_none_match("*")
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(done))
                    .build(),
            )
            .send()
            .await;
        match completed {
            Ok(_) => Ok(()),
            Err(e) if precondition_failed(&e) => Err(StorageError::Exists {
                location: self.location(key),
            }),
            Err(e) => Err(self.error("CompleteMultipartUpload", key, e)),
        }
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        data: Bytes,
    ) -> Result<CompletedPart, StorageError> {
        let part = self.client.upload_part().bucket(&self.bucket);
        let out = sse_c!(part.key(self.object(key)), self.sse)
            .upload_id(upload_id)
            .part_number(number)
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|e| self.error("UploadPart", key, e))?;
        Ok(CompletedPart::builder()
            .part_number(number)
            .set_e_tag(out.e_tag().map(str::to_owned))
            .build())
    }

    /// Aborts a multipart upload, retrying while the server is unreachable.
    async fn abort(&self, key: &str, upload_id: &str) {
        let started = std::time::Instant::now();
        let mut delay = Duration::from_millis(500);
        loop {
            let result = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(self.object(key))
                .upload_id(upload_id)
                .send()
                .await;
            match result {
                Ok(_) => return,
                Err(e) if e.as_service_error().is_some() => {
                    // NoSuchUpload and the like: nothing is left to abort.
                    tracing::debug!(key, error = %DisplayErrorContext(&e), "abort refused");
                    return;
                }
                Err(e) if started.elapsed() > ABORT_PATIENCE => {
                    tracing::error!(
                        location = %self.location(key),
                        upload_id,
                        error = %DisplayErrorContext(&e),
                        "could not abort a multipart upload; remove it with a bucket lifecycle rule"
                    );
                    return;
                }
                Err(_) => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    /// Multipart uploads in progress under the prefix (key, upload id).
    pub async fn uploads_in_progress(&self) -> Result<Vec<(String, String)>, StorageError> {
        let out = self
            .client
            .list_multipart_uploads()
            .bucket(&self.bucket)
            .prefix(&self.prefix)
            .send()
            .await
            .map_err(|e| self.error("ListMultipartUploads", "", e))?;
        Ok(out
            .uploads()
            .iter()
            .map(|u| {
                (
                    u.key().unwrap_or_default().to_owned(),
                    u.upload_id().unwrap_or_default().to_owned(),
                )
            })
            .collect())
    }
}

/// The whole body of a response, as the segments it arrived in (no copy).
async fn segments(body: ByteStream) -> Result<Vec<Bytes>, StorageError> {
    body.collect()
        .await
        .map(|b| b.into_segments().collect())
        .map_err(|e| StorageError::Body {
            source: std::io::Error::other(e),
        })
}

fn joined(
    part: Option<Result<Result<CompletedPart, StorageError>, tokio::task::JoinError>>,
) -> Result<CompletedPart, StorageError> {
    match part {
        Some(Ok(result)) => result,
        Some(Err(e)) => Err(StorageError::Body {
            source: std::io::Error::other(e),
        }),
        None => Err(StorageError::Body {
            source: std::io::Error::other("part upload vanished"),
        }),
    }
}

/// Reads up to `size` bytes (less only at the end of the stream).
async fn read_part(
    body: &mut (dyn AsyncRead + Send + Unpin),
    size: usize,
) -> std::io::Result<Bytes> {
    let mut buf = BytesMut::with_capacity(size);
    while buf.len() < size {
        let n = body.read_buf(&mut buf).await?;
        if n == 0 {
            break;
        }
    }
    Ok(buf.freeze())
}

/// What a put has claimed in the bucket: the key's sidecar and, once started, its multipart
/// upload. A put that fails releases its claim itself ([`S3Storage::release`]); one that is
/// cancelled (its future dropped on SIGINT/SIGTERM) leaves the guard to abort the upload and
/// delete the claim in the background, which the process waits for via [`cleanups`].
struct PutGuard {
    storage: S3Storage,
    key: String,
    /// The sidecar, while it is claimed and not yet published with its archive.
    claim: Option<String>,
    upload_id: Option<String>,
}

impl Drop for PutGuard {
    fn drop(&mut self) {
        if self.claim.is_none() && self.upload_id.is_none() {
            return;
        }
        let storage = self.storage.clone();
        let (key, claim, id) = (self.key.clone(), self.claim.take(), self.upload_id.take());
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            cleanups().spawn_on(
                async move {
                    if let Some(id) = id {
                        storage.abort(&key, &id).await;
                    }
                    if let Some(claim) = claim {
                        let _ = storage.delete_object(&claim).await;
                    }
                },
                &handle,
            );
        }
    }
}

/// Did a conditional request fail its condition (the object exists)?
fn precondition_failed<E: ProvideErrorMetadata>(err: &SdkError<E>) -> bool {
    match err {
        SdkError::ServiceError(service) => {
            matches!(service.raw().status().as_u16(), 412 | 409)
                || matches!(
                    service.err().code(),
                    Some("PreconditionFailed" | "ConditionalRequestConflict")
                )
        }
        _ => false,
    }
}

/// Clean-up work (aborting uploads) that must finish before the process exits.
pub fn cleanups() -> &'static tokio_util::task::TaskTracker {
    static TRACKER: std::sync::OnceLock<tokio_util::task::TaskTracker> = std::sync::OnceLock::new();
    TRACKER.get_or_init(tokio_util::task::TaskTracker::new)
}

#[async_trait]
impl Storage for S3Storage {
    fn location(&self, key: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.object(key))
    }

    async fn put(
        &self,
        naming: Naming<'_>,
        body: Reader,
        checksum: Option<&str>,
    ) -> Result<ObjectInfo, StorageError> {
        self.abort_stale_uploads().await;
        let mut guard = PutGuard {
            storage: self.clone(),
            key: String::new(),
            claim: None,
            upload_id: None,
        };
        let stored = match self.claim(naming, &mut guard).await {
            Ok(()) => self.upload(body.into_async(), checksum, &mut guard).await,
            Err(e) => Err(e),
        };
        if stored.is_err() {
            // Release the claim now, so that a retry may take the name; the upload still
            // open is aborted in the background (retried while the server is unreachable).
            if let Some(claim) = guard.claim.take() {
                let _ = self.delete_object(&claim).await;
            }
        }
        let key = guard.key.clone();
        drop(guard);
        let (size, digest) = stored?;
        let location = self.location(&key);
        Ok(ObjectInfo::stored(key, location, size, digest))
    }

    async fn get(&self, key: &str) -> Result<(Reader, u64), StorageError> {
        validate_key(key)?;
        self.get_object(key).await
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StorageError> {
        validate_key(key)?;
        let Some((size, modified)) = self.head_object(key).await? else {
            return Ok(None);
        };
        Ok(Some(ObjectInfo {
            key: key.to_owned(),
            location: self.location(key),
            size,
            modified,
            checksum: self.read_sidecar(key).await?.valid(),
        }))
    }

    async fn sidecar(&self, key: &str) -> Result<Sidecar, StorageError> {
        validate_key(key)?;
        self.read_sidecar(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        let mut found = self.listing(prefix).await?;
        let keys: Vec<String> = found.iter().map(|info| info.key.clone()).collect();
        let sidecars: Vec<Result<Sidecar, StorageError>> = futures_util::stream::iter(keys)
            .map(|key| {
                let this = self.clone();
                async move { this.read_sidecar(&key).await }
            })
            .buffered(8)
            .collect()
            .await;
        for (info, sidecar) in found.iter_mut().zip(sidecars) {
            info.checksum = sidecar?.valid();
        }
        Ok(found)
    }

    async fn list_archives(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        self.listing(prefix).await
    }

    async fn read_start(&self, key: &str, len: u64) -> Result<Vec<u8>, StorageError> {
        validate_key(key)?;
        self.read_prefix(key, len).await
    }

    /// `ListObjectsV2` with a delimiter: one entry per folder, whatever it holds.
    async fn folders(&self) -> Result<Vec<String>, StorageError> {
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&self.prefix)
            .delimiter("/")
            .into_paginator()
            .send();
        let mut found = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.error("ListObjectsV2", "", e))?;
            let names = page.common_prefixes().iter().filter_map(|p| {
                let name = p.prefix()?.strip_prefix(&self.prefix)?;
                Some(name.strip_suffix('/')?.to_owned())
            });
            found.extend(names.filter(|n| name::validate("folder", n).is_ok()));
        }
        found.sort();
        Ok(found)
    }

    /// Keys under `<prefix><folder>/`.
    fn within(&self, folder: &str) -> Result<Arc<dyn Storage>, StorageError> {
        validate_folder(folder)?;
        Ok(Arc::new(Self {
            prefix: format!("{}{folder}/", self.prefix),
            ..self.clone()
        }))
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        validate_archive_key(key)?;
        if self.head_object(key).await?.is_none() {
            return Err(StorageError::NotFound {
                location: self.location(key),
            });
        }
        self.delete_object(key).await?;
        self.delete_object(&name::checksum_key(key)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_come_from_the_snapshots_path() {
        assert_eq!(prefix_of("./snapshots"), "snapshots/");
        assert_eq!(prefix_of("/a/b/"), "a/b/");
        assert_eq!(prefix_of(""), "");
        assert_eq!(prefix_of("."), "");
        assert_eq!(prefix_of("./"), "");
    }
}
