//! Qdrant's REST API, the calls snapshots need: make, download and delete a snapshot, list
//! collections and aliases, upload a snapshot to recover. Every answer is Qdrant's envelope
//! (`{"result": …, "status": "ok", "time": …}`); a refusal says what Qdrant answered. The
//! api-key goes in the `api-key` header and nowhere else (never in a message).

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use reqwest::{Method, RequestBuilder, Response, Url};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::engine::restore::Priority;

/// What a snapshot is of.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "scope")]
pub enum Scope {
    /// One collection (`/collections/{c}/snapshots`).
    Collection { collection: String },
    /// One shard of a collection (`/collections/{c}/shards/{n}/snapshots`).
    Shard { collection: String, shard: u32 },
    /// The whole storage (`/snapshots`), which Qdrant recovers only at startup.
    Full,
}

impl Scope {
    /// A collection, or (`shard`) one shard of it.
    pub fn of(collection: String, shard: Option<u32>) -> Self {
        match shard {
            None => Self::Collection { collection },
            Some(shard) => Self::Shard { collection, shard },
        }
    }

    /// Its collection (none for the whole storage).
    pub fn collection(&self) -> Option<&str> {
        match self {
            Self::Collection { collection } | Self::Shard { collection, .. } => Some(collection),
            Self::Full => None,
        }
    }

    /// The path segments of its snapshots.
    fn segments(&self) -> Vec<String> {
        match self {
            Self::Collection { collection } => {
                vec!["collections".into(), collection.clone(), "snapshots".into()]
            }
            Self::Shard { collection, shard } => vec![
                "collections".into(),
                collection.clone(),
                "shards".into(),
                shard.to_string(),
                "snapshots".into(),
            ],
            Self::Full => vec!["snapshots".into()],
        }
    }
}

/// A snapshot Qdrant made (its `SnapshotDescription`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Described {
    pub name: String,
    pub size: u64,
    /// SHA-256, lowercase hex (Qdrant since 1.5).
    #[serde(default)]
    pub checksum: Option<String>,
}

/// Why a call to Qdrant failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid Qdrant URL {url:?}: {why}")]
    Url { url: String, why: &'static str },
    #[error("cannot reach Qdrant at {url} (is the URL right, and is Qdrant up?)")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("Qdrant at {url} shows a certificate that is not accepted: {why}{hint}")]
    Untrusted {
        url: String,
        why: String,
        hint: &'static str,
    },
    #[error("the CA certificates given for Qdrant are not usable: {why} (give PEM certificates)")]
    Ca { why: String },
    #[error("Qdrant did not answer {what} at {url} within {secs} s")]
    Timeout {
        what: String,
        url: String,
        secs: u64,
    },
    #[error("Qdrant refused {what} at {url}: HTTP {status}: {answer}{hint}")]
    Refused {
        what: String,
        url: String,
        status: u16,
        answer: String,
        hint: &'static str,
    },
    #[error("Qdrant's answer to {what} at {url} is not what its API returns: {why}")]
    Answer {
        what: String,
        url: String,
        why: String,
    },
}

/// The longest answer of Qdrant's kept for a message.
const MAX_ANSWER: usize = 1000;
/// The most of an answer read (a listing of many collections is far less): a Qdrant that
/// answers without end cannot fill the mover's memory.
const MAX_BODY: usize = 16 << 20;

/// How a Qdrant is reached besides its URL.
#[derive(Clone, Default)]
pub struct Access {
    /// Its api-key (its `service.api_key`).
    pub api_key: Option<String>,
    /// PEM certificates of the CAs its certificate is checked against, besides the system's.
    pub ca_pem: Option<Vec<u8>>,
}

/// The certificates of a PEM bundle (pure): at least one, each a certificate.
fn certificates(pem: &[u8]) -> Result<Vec<reqwest::Certificate>, ApiError> {
    let bad = |why: String| ApiError::Ca { why };
    let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no -----BEGIN CERTIFICATE----- block in it".into()));
    }
    Ok(certs)
}

/// Whether `e` failed on the server's certificate: why (rustls's words), and what to check.
fn untrusted(e: &reqwest::Error) -> Option<(String, &'static str)> {
    use rustls::CertificateError as Cert;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cause {
        if let Some(tls @ rustls::Error::InvalidCertificate(why)) = err.downcast_ref() {
            let hint = match why {
                Cert::UnknownIssuer | Cert::BadSignature => {
                    " (give the CA that signed it: --qdrant-ca FILE, or caSecret in the \
                     resource's qdrant)"
                }
                Cert::NotValidForName | Cert::NotValidForNameContext { .. } => {
                    " (the certificate must name the address Qdrant is reached at)"
                }
                _ => " (check Qdrant's certificate: its dates and its uses)",
            };
            return Some((tls.to_string(), hint));
        }
        // An io::Error's `source` skips the error it wraps.
        let wrapped = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref());
        cause = match wrapped {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
}

/// A Qdrant server's REST API.
#[derive(Clone)]
pub struct Qdrant {
    base: Url,
    api_key: Option<String>,
    http: reqwest::Client,
    /// How long a call may take (making a snapshot of a large collection takes minutes).
    timeout: Duration,
}

impl std::fmt::Debug for Qdrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qdrant")
            .field("base", &self.base.as_str())
            .field("api_key", &self.api_key.as_ref().map(|_| "…"))
            .finish()
    }
}

/// Checks a Qdrant URL: http(s), no user or password, no query (pure).
pub fn parse_url(text: &str) -> Result<Url, ApiError> {
    let invalid = |why| ApiError::Url {
        url: text.into(),
        why,
    };
    let mut url = Url::parse(text).map_err(|_| invalid("not a URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("use http:// or https://"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            "give the api-key with --qdrant-api-key, not in the URL",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("it takes no query or fragment"));
    }
    if url.cannot_be_a_base() || url.host().is_none() {
        return Err(invalid("it names no host"));
    }
    let path = url.path().trim_end_matches('/').to_owned();
    url.set_path(&path);
    Ok(url)
}

impl Qdrant {
    /// The API at `url` (see [`parse_url`]) reached with `access`, calls taking at most
    /// `timeout`.
    pub fn new(url: &str, access: Access, timeout: Duration) -> Result<Self, ApiError> {
        let base = parse_url(url)?;
        let roots = match &access.ca_pem {
            Some(pem) => certificates(pem)?,
            None => Vec::new(),
        };
        crate::tls::install_crypto_provider();
        let http = reqwest::Client::builder()
            .tls_certs_merge(roots)
            .connect_timeout(Duration::from_secs(10))
            // Qdrant answers where it is asked; a redirect would carry the api-key elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .referer(false)
            .build()
            .map_err(|source| match &access.ca_pem {
                // What fails here with a CA given is the CA (a block that is no certificate).
                Some(_) => ApiError::Ca {
                    why: crate::format::error_line(&source),
                },
                None => ApiError::Unreachable {
                    url: base.to_string(),
                    source,
                },
            })?;
        Ok(Self {
            base,
            api_key: access.api_key,
            http,
            timeout,
        })
    }

    /// The URL of `segments` under the base (each segment escaped).
    fn url(&self, segments: &[String]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("a checked base")
            .pop_if_empty()
            .extend(segments);
        url
    }

    fn request(&self, method: Method, url: Url) -> RequestBuilder {
        let request = self.http.request(method, url);
        match &self.api_key {
            Some(key) => request.header("api-key", key),
            None => request,
        }
    }

    /// Sends `request` (`what`, at `url`) and checks that Qdrant accepted it.
    async fn send(
        &self,
        what: &str,
        url: &Url,
        request: RequestBuilder,
        timeout: Option<Duration>,
    ) -> Result<Response, ApiError> {
        let request = match timeout {
            Some(t) => request.timeout(t),
            None => request,
        };
        let response = request
            .send()
            .await
            .map_err(|e| self.failed(what, url, e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = body_of(response, MAX_ANSWER * 4).await.unwrap_or_default();
        Err(ApiError::Refused {
            what: what.into(),
            url: url.to_string(),
            status: status.as_u16(),
            answer: answer_of(&body),
            hint: hint_for(status.as_u16()),
        })
    }

    fn failed(&self, what: &str, url: &Url, e: reqwest::Error) -> ApiError {
        if e.is_timeout() {
            return ApiError::Timeout {
                what: what.into(),
                url: url.to_string(),
                secs: self.timeout.as_secs(),
            };
        }
        if let Some((why, hint)) = untrusted(&e) {
            return ApiError::Untrusted {
                url: url.to_string(),
                why,
                hint,
            };
        }
        ApiError::Unreachable {
            url: url.to_string(),
            source: e,
        }
    }

    /// A call whose answer's `result` is a `T`.
    async fn call<T: DeserializeOwned>(
        &self,
        what: &str,
        request: (Method, Url),
        body: Option<Value>,
    ) -> Result<T, ApiError> {
        let (method, url) = request;
        let mut builder = self.request(method, url.clone());
        if let Some(body) = &body {
            builder = builder
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string());
        }
        let response = self.send(what, &url, builder, Some(self.timeout)).await?;
        let bytes = body_of(response, MAX_BODY)
            .await
            .map_err(|e| self.failed(what, &url, e))?;
        result_of(&bytes).map_err(|why| ApiError::Answer {
            what: what.into(),
            url: url.to_string(),
            why,
        })
    }

    /// Makes a snapshot of `scope` and waits for it.
    pub async fn create_snapshot(&self, scope: &Scope) -> Result<Described, ApiError> {
        let mut url = self.url(&scope.segments());
        url.query_pairs_mut().append_pair("wait", "true");
        self.call("making a snapshot", (Method::POST, url), None)
            .await
    }

    /// Streams the snapshot `name` of `scope`.
    pub async fn download(
        &self,
        scope: &Scope,
        name: &str,
    ) -> Result<impl Stream<Item = reqwest::Result<Bytes>> + Send + use<>, ApiError> {
        let url = self.url(&[scope.segments(), vec![name.into()]].concat());
        // The bytes as stored: a compressed answer would not be the checksummed file.
        let request = self
            .request(Method::GET, url.clone())
            .header(reqwest::header::ACCEPT_ENCODING, "identity");
        let response = self
            .send("downloading a snapshot", &url, request, None)
            .await?;
        Ok(response.bytes_stream())
    }

    /// The snapshots of `scope` on Qdrant's disk.
    pub async fn snapshots(&self, scope: &Scope) -> Result<Vec<Described>, ApiError> {
        let url = self.url(&scope.segments());
        self.call("listing snapshots", (Method::GET, url), None)
            .await
    }

    /// The shards of `collection` this peer holds that have an active replica on another
    /// peer: none outside a cluster, or when the collection is not there.
    pub async fn replicated_elsewhere(&self, collection: &str) -> Result<Vec<u32>, ApiError> {
        let url = self.url(&["collections".into(), collection.into(), "cluster".into()]);
        let what = "reading the collection's cluster placement";
        match self.call::<Placement>(what, (Method::GET, url), None).await {
            Ok(placement) => Ok(placement.replicated_elsewhere()),
            Err(ApiError::Refused { status: 404, .. }) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// How long one call may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Deletes the snapshot `name` of `scope` from Qdrant's disk.
    pub async fn delete_snapshot(&self, scope: &Scope, name: &str) -> Result<(), ApiError> {
        let mut url = self.url(&[scope.segments(), vec![name.into()]].concat());
        url.query_pairs_mut().append_pair("wait", "true");
        let _: Value = self
            .call("deleting a snapshot", (Method::DELETE, url), None)
            .await?;
        Ok(())
    }

    /// The names of its collections, sorted.
    pub async fn collections(&self) -> Result<Vec<String>, ApiError> {
        #[derive(Deserialize)]
        struct Listed {
            collections: Vec<Named>,
        }
        #[derive(Deserialize)]
        struct Named {
            name: String,
        }
        let url = self.url(&["collections".into()]);
        let listed: Listed = self
            .call("listing collections", (Method::GET, url), None)
            .await?;
        let mut names: Vec<String> = listed.collections.into_iter().map(|c| c.name).collect();
        names.sort();
        Ok(names)
    }

    /// Its aliases (`alias -> collection`).
    pub async fn aliases(&self) -> Result<BTreeMap<String, String>, ApiError> {
        #[derive(Deserialize)]
        struct Listed {
            aliases: Vec<Alias>,
        }
        #[derive(Deserialize)]
        struct Alias {
            alias_name: String,
            collection_name: String,
        }
        let url = self.url(&["aliases".into()]);
        let listed: Listed = self
            .call("listing aliases", (Method::GET, url), None)
            .await?;
        Ok(listed
            .aliases
            .into_iter()
            .map(|a| (a.alias_name, a.collection_name))
            .collect())
    }

    /// Uploads `body` (an archive) as the snapshot `name` of `scope` for Qdrant to recover
    /// with `priority`, checking it against `checksum` first; waits for the recovery.
    /// Qdrant keeps the uploaded file among the scope's snapshots: delete it after.
    pub async fn upload<S>(
        &self,
        (scope, name): (&Scope, &str),
        body: S,
        (priority, checksum): (Option<Priority>, Option<&str>),
    ) -> Result<(), ApiError>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + 'static,
    {
        if *scope == Scope::Full {
            return Err(ApiError::Url {
                url: self.base.to_string(),
                why: "Qdrant recovers a full snapshot only at startup (--storage-snapshot)",
            });
        }
        let mut url = self.url(&[scope.segments(), vec!["upload".into()]].concat());
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("wait", "true");
            if let Some(p) = priority {
                query.append_pair("priority", p.name());
            }
            if let Some(sum) = checksum {
                query.append_pair("checksum", sum);
            }
        }
        let (content_type, body) = multipart("snapshot", name, body);
        let request = self
            .request(Method::POST, url.clone())
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(reqwest::Body::wrap_stream(body));
        let what = "recovering an uploaded snapshot";
        let response = self.send(what, &url, request, Some(self.timeout)).await?;
        let bytes = body_of(response, MAX_BODY)
            .await
            .map_err(|e| self.failed(what, &url, e))?;
        let _: Value = result_of(&bytes).map_err(|why| ApiError::Answer {
            what: what.into(),
            url: url.to_string(),
            why,
        })?;
        Ok(())
    }
}

/// Where a collection's shards are (Qdrant's `CollectionClusterInfo`, what is needed of it).
#[derive(Debug, Deserialize)]
struct Placement {
    local_shards: Vec<LocalShard>,
    remote_shards: Vec<RemoteShard>,
}

#[derive(Debug, Deserialize)]
struct LocalShard {
    shard_id: u32,
}

#[derive(Debug, Deserialize)]
struct RemoteShard {
    shard_id: u32,
    state: String,
}

impl Placement {
    /// The local shards with an active replica on another peer (pure).
    fn replicated_elsewhere(&self) -> Vec<u32> {
        let active = |shard: u32| {
            (self.remote_shards.iter()).any(|r| r.shard_id == shard && r.state == "Active")
        };
        let local = self.local_shards.iter().map(|l| l.shard_id);
        local.filter(|&shard| active(shard)).collect()
    }
}

/// A multipart form of one file field `field` named `file`, streaming `body`: its content
/// type and the stream.
fn multipart<S>(
    field: &str,
    file: &str,
    body: S,
) -> (
    String,
    impl Stream<Item = std::io::Result<Bytes>> + Send + use<S>,
)
where
    S: Stream<Item = std::io::Result<Bytes>> + Send + 'static,
{
    use futures_util::StreamExt;
    // Random enough that no archive holds it by chance; a collision only fails the upload.
    let boundary = format!("snapshot-operator-{}", random_hex());
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{file}\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    );
    let tail = format!("\r\n--{boundary}--\r\n");
    let stream = futures_util::stream::once(async move { Ok(Bytes::from(head)) })
        .chain(body)
        .chain(futures_util::stream::once(
            async move { Ok(Bytes::from(tail)) },
        ));
    (format!("multipart/form-data; boundary={boundary}"), stream)
}

/// 32 random hexadecimal digits.
pub fn random_hex() -> String {
    let mut bytes = [0u8; 16];
    rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty())
        .expect("the kernel gives random bytes");
    format!("{:032x}", u128::from_le_bytes(bytes))
}

/// The first `most` bytes of an answer (the rest is not read).
async fn body_of(mut response: Response, most: usize) -> reqwest::Result<Vec<u8>> {
    let mut body = Vec::new();
    while body.len() < most {
        let Some(chunk) = response.chunk().await? else {
            break;
        };
        body.extend_from_slice(&chunk[..chunk.len().min(most - body.len())]);
    }
    Ok(body)
}

/// The `result` of Qdrant's envelope (pure).
fn result_of<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    #[derive(Deserialize)]
    struct Envelope<T> {
        result: T,
    }
    serde_json::from_slice::<Envelope<T>>(bytes)
        .map(|e| e.result)
        .map_err(|e| format!("{e} in {}", answer_of(bytes)))
}

/// What Qdrant said in a refusal (pure): the `status.error` of its envelope, else the text
/// (its auth layer answers in plain text), shortened.
fn answer_of(body: &[u8]) -> String {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let text = match json.as_ref().and_then(|j| j["status"]["error"].as_str()) {
        Some(error) => error.to_owned(),
        None => String::from_utf8_lossy(body).trim().to_owned(),
    };
    if text.is_empty() {
        return "(no message)".into();
    }
    match text.char_indices().nth(MAX_ANSWER) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// What to check, for a refusal's status (pure).
fn hint_for(status: u16) -> &'static str {
    match status {
        401 | 403 => " (check the api-key: --qdrant-api-key or QDRANT_API_KEY)",
        404 => " (check the collection's name and the URL)",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_paths_escaped() {
        assert!(parse_url("http://qdrant-0.qdrant:6333").is_ok());
        assert_eq!(
            parse_url("https://q.example/base/").unwrap().as_str(),
            "https://q.example/base"
        );
        for bad in [
            "qdrant:6333",
            "ftp://q:21",
            "http://user:key@q:6333",
            "http://q:6333/?api-key=x",
            "file:///tmp",
        ] {
            assert!(matches!(parse_url(bad), Err(ApiError::Url { .. })), "{bad}");
        }
        let api = Qdrant::new(
            "http://q:6333/base",
            Access::default(),
            Duration::from_secs(1),
        )
        .unwrap();
        let scope = Scope::Shard {
            collection: "a b".into(),
            shard: 2,
        };
        let url = api.url(&[scope.segments(), vec!["x/../y".into()]].concat());
        assert_eq!(
            url.as_str(),
            "http://q:6333/base/collections/a%20b/shards/2/snapshots/x%2F..%2Fy"
        );
        assert_eq!(
            api.url(&Scope::Full.segments()).as_str(),
            "http://q:6333/base/snapshots"
        );
    }

    #[test]
    fn answers_are_read_from_the_envelope_and_refusals_say_what_qdrant_said() {
        let described: Described = result_of(
            br#"{"result":{"name":"c-1-2026.snapshot","creation_time":"2026-12-03T10:00:00","size":42,"checksum":"ab"},"status":"ok","time":0.1}"#,
        )
        .unwrap();
        assert_eq!(described.name, "c-1-2026.snapshot");
        assert_eq!(
            (described.size, described.checksum.as_deref()),
            (42, Some("ab"))
        );
        assert!(
            result_of::<Described>(b"<html>")
                .unwrap_err()
                .contains("<html>")
        );
        assert_eq!(
            answer_of(
                br#"{"status":{"error":"Not found: Collection `x` doesn't exist!"},"time":0}"#
            ),
            "Not found: Collection `x` doesn't exist!"
        );
        assert_eq!(
            answer_of(b"Must provide an API key or an Authorization bearer token\n"),
            "Must provide an API key or an Authorization bearer token"
        );
        assert_eq!(answer_of(b""), "(no message)");
        assert_eq!(answer_of(&[b'x'; 5000]).chars().count(), MAX_ANSWER + 1);
        assert!(hint_for(401).contains("api-key"));
    }

    #[test]
    fn shards_replicated_elsewhere_are_local_ones_with_an_active_replica_on_another_peer() {
        let placement: Placement = result_of(
            br#"{"result":{"peer_id":1,"shard_count":3,
              "local_shards":[{"shard_id":0,"points_count":5,"state":"Active"},
                              {"shard_id":1,"points_count":5,"state":"Active"}],
              "remote_shards":[{"shard_id":0,"peer_id":2,"state":"Active"},
                               {"shard_id":1,"peer_id":2,"state":"Dead"},
                               {"shard_id":2,"peer_id":2,"state":"Active"}],
              "shard_transfers":[]},"status":"ok","time":0}"#,
        )
        .unwrap();
        assert_eq!(placement.replicated_elsewhere(), [0]);
    }

    #[tokio::test]
    async fn an_answer_without_end_is_read_no_further_than_a_bound() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 4096];
            let _ = conn.read(&mut request).await;
            let head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n{\"result\": \"";
            conn.write_all(head).await.unwrap();
            let block = vec![b'x'; 1 << 20];
            // Until the client stops reading.
            while conn.write_all(&block).await.is_ok() {}
        });
        let api = Qdrant::new(
            &format!("http://127.0.0.1:{port}"),
            Access::default(),
            Duration::from_secs(30),
        )
        .unwrap();
        let scope = Scope::Collection {
            collection: "c".into(),
        };
        match api.create_snapshot(&scope).await {
            Err(ApiError::Answer { why, .. }) => assert!(why.contains("EOF"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cas_are_pem_certificates() {
        for bad in [
            &b""[..],
            b"not a certificate",
            b"-----BEGIN CERTIFICATE-----\nxx",
        ] {
            let made = Qdrant::new(
                "https://q:6333",
                Access {
                    api_key: None,
                    ca_pem: Some(bad.to_vec()),
                },
                Duration::from_secs(1),
            );
            assert!(matches!(made, Err(ApiError::Ca { .. })), "{bad:?}");
        }
    }

    #[test]
    fn the_api_key_is_never_shown() {
        let api = Qdrant::new(
            "http://q:6333",
            Access {
                api_key: Some("secret-key".into()),
                ca_pem: None,
            },
            Duration::from_secs(1),
        )
        .unwrap();
        assert!(!format!("{api:?}").contains("secret-key"));
    }
}
