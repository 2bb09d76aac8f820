//! Helpers shared by the black-box tests: trees, fingerprints, the binary, raw tar archives,
//! test servers (HTTP, S3, a fault proxy) and upload bodies.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::oneshot;

/// What a tree holds at one path: kind, permission bits, content, modification time (files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir {
        mode: u32,
    },
    File {
        mode: u32,
        data: Vec<u8>,
        mtime: i64,
    },
    Symlink {
        target: PathBuf,
    },
}

pub type Fingerprint = BTreeMap<String, Node>;

/// Every entry below `root` (relative paths), recursively.
pub fn fingerprint(root: &Path) -> Fingerprint {
    let mut out = BTreeMap::new();
    if root.exists() {
        walk(root, root, &mut out);
    }
    out
}

fn walk(root: &Path, dir: &Path, out: &mut Fingerprint) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let rel = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let meta = fs::symlink_metadata(&path).unwrap();
        let mode = meta.permissions().mode() & 0o7777;
        if meta.file_type().is_symlink() {
            out.insert(
                rel,
                Node::Symlink {
                    target: fs::read_link(&path).unwrap(),
                },
            );
        } else if meta.is_dir() {
            out.insert(rel, Node::Dir { mode });
            walk(root, &path, out);
        } else {
            out.insert(
                rel,
                Node::File {
                    mode,
                    data: fs::read(&path).unwrap(),
                    mtime: meta.mtime(),
                },
            );
        }
    }
}

pub fn write(path: &Path, data: &[u8], mode: u32) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, data).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A Qdrant-like collection with awkward content: modes, empty file and directory, binary
/// data, a path longer than 100 bytes, non-ASCII names.
pub fn make_collection(storage: &Path, name: &str, salt: &str) {
    let c = storage.join("collections").join(name);
    write(
        &c.join("config.json"),
        format!("{{\"salt\":\"{salt}\"}}").as_bytes(),
        0o644,
    );
    write(
        &c.join("0/segments/seg-a/vectors.bin"),
        &binary(70_000, salt),
        0o600,
    );
    write(&c.join("0/segments/seg-a/empty"), b"", 0o640);
    write(
        &c.join("0/wal/open-1"),
        format!("wal {salt}").as_bytes(),
        0o755,
    );
    write(&c.join("ünïcødé/файл.txt"), salt.as_bytes(), 0o644);
    let long = "d".repeat(60);
    write(
        &c.join(format!("{long}/{long}/leaf-{salt}.dat")),
        salt.repeat(50).as_bytes(),
        0o644,
    );
    fs::create_dir_all(c.join("0/empty-dir")).unwrap();
    fs::set_permissions(c.join("0/wal"), fs::Permissions::from_mode(0o700)).unwrap();
}

/// A storage directory with two collections, aliases and a top-level file.
pub fn make_storage(storage: &Path) {
    make_collection(storage, "products", "p1");
    make_collection(storage, "reviews", "r1");
    write(
        &storage.join("aliases/data.json"),
        br#"{"catalog":"products"}"#,
        0o644,
    );
    write(&storage.join("raft_state.json"), b"{\"term\":1}", 0o600);
}

pub fn binary(len: usize, salt: &str) -> Vec<u8> {
    let seed = salt
        .bytes()
        .fold(7u32, |a, b| a.wrapping_mul(31).wrapping_add(b as u32));
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
        .collect()
}

/// The subset of a fingerprint under `prefix/`, with the prefix removed.
pub fn subtree(fp: &Fingerprint, prefix: &str) -> Fingerprint {
    let p = format!("{prefix}/");
    fp.iter()
        .filter_map(|(k, v)| k.strip_prefix(&p).map(|rest| (rest.to_owned(), v.clone())))
        .collect()
}

/// The binary under test, run in `cwd` with a clean configuration environment.
pub fn bin(cwd: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_snapshot-operator"));
    cmd.current_dir(cwd);
    for (key, _) in std::env::vars() {
        if key.starts_with("SNAPSHOT_OPERATOR") {
            cmd.env_remove(key);
        }
    }
    cmd.env("SNAPSHOT_OPERATOR_LOG", "warn");
    cmd
}

/// Is the test running as root (as CI does)?
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// `cmd` run as PID 1 of a new PID namespace (`unshare --fork --pid --mount-proc`), as a mover
/// is in its container; it prints `pid=<its pid>` on standard error first. Without root, a
/// user namespace makes that possible.
pub fn as_pid1(cmd: &Command) -> Command {
    let mut wrapped = Command::new("unshare");
    if !is_root() {
        wrapped.args(["--user", "--map-root-user"]);
    }
    wrapped.args(["--fork", "--pid", "--mount-proc", "sh", "-c"]);
    wrapped.arg(r#"echo "pid=$$" >&2; exec "$0" "$@""#);
    wrapped.arg(cmd.get_program()).args(cmd.get_args());
    carry_over(cmd, &mut wrapped);
    wrapped
}

/// The user commands run as under [`as_nobody`].
pub const NOBODY: u32 = 65534;

/// `cmd` run as nobody (`setpriv`, uid and gid 65534, no supplementary groups) when the tests
/// run as root, as movers run as a non-root user; `tree` (the test's directory) is given to
/// nobody first. Unchanged when the tests do not run as root.
pub fn as_nobody(cmd: Command, tree: &Path) -> Command {
    if !is_root() {
        return cmd;
    }
    give_to(tree, NOBODY);
    let id = NOBODY.to_string();
    let mut wrapped = Command::new("setpriv");
    wrapped
        .args(["--reuid", &id, "--regid", &id, "--clear-groups", "--"])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    carry_over(&cmd, &mut wrapped);
    wrapped
}

/// Makes `uid` the owner of everything under `path` (links themselves, not their targets),
/// walking from each directory's descriptor: trees deeper than a path may be long too.
pub fn give_to(path: &Path, uid: u32) {
    use rustix::fs::{AtFlags, FileType, Mode, OFlags};
    fn chown_in(dir: &std::os::fd::OwnedFd, uid: u32) {
        let ids = Some(rustix::process::Uid::from_raw(uid));
        let gid = Some(rustix::process::Gid::from_raw(uid));
        let mut names = Vec::new();
        let mut list = rustix::fs::Dir::read_from(dir).unwrap();
        while let Some(Ok(entry)) = list.read() {
            let name = entry.file_name().to_owned();
            if name.as_bytes() != b"." && name.as_bytes() != b".." {
                names.push((name, entry.file_type()));
            }
        }
        // What vanished meanwhile (a live workload's temporary files) needs no owner.
        let gone = |e: &rustix::io::Errno| *e == rustix::io::Errno::NOENT;
        for (name, kind) in names {
            match rustix::fs::chownat(dir, &name, ids, gid, AtFlags::SYMLINK_NOFOLLOW) {
                Err(e) if gone(&e) => continue,
                other => other.unwrap(),
            }
            if kind == FileType::Directory {
                let flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW;
                match rustix::fs::openat(dir, &name, flags, Mode::empty()) {
                    Err(e) if gone(&e) => {}
                    other => chown_in(&other.unwrap(), uid),
                }
            }
        }
    }
    std::os::unix::fs::lchown(path, Some(uid), Some(uid)).unwrap();
    if fs::symlink_metadata(path).unwrap().is_dir() {
        let flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW;
        chown_in(&rustix::fs::open(path, flags, Mode::empty()).unwrap(), uid);
    }
}

/// Gives `to` the environment changes and working directory of `from`.
fn carry_over(from: &Command, to: &mut Command) {
    for (key, value) in from.get_envs() {
        match value {
            Some(value) => to.env(key, value),
            None => to.env_remove(key),
        };
    }
    if let Some(dir) = from.get_current_dir() {
        to.current_dir(dir);
    }
}

/// Runs `cmd` and returns its output and peak resident memory (KiB), from `wait4` (which
/// reaps the child instead of `Child::wait`).
#[allow(clippy::zombie_processes)]
pub fn run_measured(cmd: &mut Command) -> (std::process::ExitStatus, String, i64) {
    use std::os::unix::process::ExitStatusExt;
    let child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let mut stderr = child.stderr.unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut err).unwrap();
    let mut status = 0;
    // SAFETY: a plain wait for our own child; `usage` is written by the kernel.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid);
    (
        std::process::ExitStatus::from_raw(status),
        err,
        usage.ru_maxrss,
    )
}

/// Runs and returns the output, whatever the exit status.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("the binary runs")
}

/// Runs and asserts success; returns standard output.
pub fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs and asserts failure; returns standard error.
pub fn fails(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        !out.status.success(),
        "{cmd:?} should fail: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).unwrap()
}

/// `snapshot create` of `storage` (one collection, or all), on node `node-0`, JSON output.
pub fn create_cmd(cwd: &Path, storage: &Path, collection: Option<&str>) -> Command {
    let mut cmd = bin(cwd);
    cmd.args([
        "snapshot",
        "create",
        "--node",
        "node-0",
        "-o",
        "json",
        "--storage-path",
    ])
    .arg(storage);
    if let Some(c) = collection {
        cmd.args(["--collection", c]);
    }
    cmd
}

/// Creates a snapshot and returns its JSON result.
pub fn create(cwd: &Path, storage: &Path, collection: Option<&str>) -> serde_json::Value {
    serde_json::from_str(&ok(&mut create_cmd(cwd, storage, collection))).unwrap()
}

/// `snapshot create` of the collection `products` of `storage`, as node `n0`, by `cmd` (the
/// binary set up for some snapshot storage): its JSON result.
pub fn create_products(mut cmd: Command, storage: &Path) -> serde_json::Value {
    cmd.args(["snapshot", "create", "--collection", "products"])
        .args(["--node", "n0", "-o", "json", "--storage-path"])
        .arg(storage);
    serde_json::from_str(&ok(&mut cmd)).unwrap()
}

/// The local path of a created archive.
pub fn archive_path(created: &serde_json::Value) -> PathBuf {
    PathBuf::from(created["archive"]["location"].as_str().unwrap())
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    snapshot_operator::engine::name::hex(&sha2::Sha256::digest(data))
}

/// One entry of a hand-made archive.
pub struct RawEntry {
    pub path: Vec<u8>,
    pub kind: tar::EntryType,
    pub data: Vec<u8>,
    pub link: Vec<u8>,
    pub mode: u32,
}

impl RawEntry {
    pub fn file(path: &str, data: &[u8]) -> Self {
        Self {
            path: path.into(),
            kind: tar::EntryType::Regular,
            data: data.to_vec(),
            link: Vec::new(),
            mode: 0o644,
        }
    }
    pub fn dir(path: &str) -> Self {
        Self {
            path: path.into(),
            kind: tar::EntryType::Directory,
            data: Vec::new(),
            link: Vec::new(),
            mode: 0o644,
        }
    }
    pub fn special(path: &str, kind: tar::EntryType, link: &str) -> Self {
        Self {
            path: path.into(),
            kind,
            data: Vec::new(),
            link: link.into(),
            mode: 0o644,
        }
    }
    /// The same entry with permission bits `mode`.
    pub fn mode(self, mode: u32) -> Self {
        Self { mode, ..self }
    }
}

/// A manifest for a collection archive.
pub fn manifest_json(collection: Option<&str>, collections: &[&str], version: u32) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "format_version": version,
        "kind": if collection.is_some() { "collection" } else { "full" },
        "collection": collection,
        "node": "node-0",
        "created_at": "2026-11-25T10:00:00Z",
        "tool": "test",
        "tool_version": "0",
        "collections": collections,
        "aliases": {},
    }))
    .unwrap()
}

/// A tar archive with exactly these entries, written header by header (no path checks).
pub fn raw_tar(entries: &[RawEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut h = tar::Header::new_gnu();
        {
            let gnu = h.as_gnu_mut().unwrap();
            gnu.name[..e.path.len()].copy_from_slice(&e.path);
            gnu.linkname[..e.link.len()].copy_from_slice(&e.link);
        }
        h.set_entry_type(e.kind);
        h.set_mode(e.mode);
        h.set_size(e.data.len() as u64);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(&e.data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0; 1024]);
    out
}

/// The header of a GNU sparse entry at `path` with this map (as given, unchecked), real size
/// and stored data size, with its extension blocks: what precedes its data.
pub fn sparse_header(path: &str, map: &[(u64, u64)], real_size: u64, stored: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let mut h = tar::Header::new_gnu();
    let (first, rest) = map.split_at(map.len().min(4));
    {
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..path.len()].copy_from_slice(path.as_bytes());
        for (entry, (at, len)) in gnu.sparse.iter_mut().zip(first) {
            entry.set_offset(*at);
            entry.set_length(*len);
        }
        gnu.set_is_extended(!rest.is_empty());
        gnu.set_real_size(real_size);
    }
    h.set_entry_type(tar::EntryType::GNUSparse);
    h.set_mode(0o644);
    h.set_size(stored);
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    let blocks: Vec<&[(u64, u64)]> = rest.chunks(21).collect();
    for (i, chunk) in blocks.iter().enumerate() {
        let mut ext = tar::GnuExtSparseHeader::new();
        for (entry, (at, len)) in ext.sparse.iter_mut().zip(chunk.iter()) {
            entry.set_offset(*at);
            entry.set_length(*len);
        }
        ext.set_is_extended(i + 1 < blocks.len());
        out.extend_from_slice(ext.as_bytes());
    }
    out
}

/// A request a test HTTP server received: its path, its `api-key` header and its `Referer`
/// header.
pub type Received = (String, Option<String>, Option<String>);

/// A test HTTP server, and what it was asked.
pub struct HttpServer {
    pub base: String,
    pub requests: Arc<std::sync::Mutex<Vec<Received>>>,
}

/// Serves `archive` at `/good.snapshot` (requiring `api-key: secret` when `api_key`); a copy
/// that stalls after half its body at `/stall.snapshot`; one that trickles a byte every
/// 50 ms at `/trickle.snapshot`; `/redirect?to=URL` answers 302 to `URL`; everything else
/// is 404.
pub fn serve(archive: Vec<u8>, api_key: bool) -> HttpServer {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let archive = Arc::new(archive);
    let requests: Arc<std::sync::Mutex<Vec<_>>> = Arc::default();
    let log = requests.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let archive = archive.clone();
            let log = log.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request = String::new();
                let (mut key, mut referer) = (None, None);
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    let header = |name: &str| {
                        let (n, v) = line.split_once(':')?;
                        n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
                    };
                    key = key.or_else(|| header("api-key"));
                    referer = referer.or_else(|| header("referer"));
                    if request.is_empty() {
                        request = line;
                    }
                }
                let path = request.split_whitespace().nth(1).unwrap_or("").to_owned();
                log.lock()
                    .unwrap()
                    .push((path.clone(), key.clone(), referer));
                let head = |status: &str, len: usize| {
                    format!(
                        "HTTP/1.1 {status}\r\ncontent-length: {len}\r\nconnection: close\r\n\r\n"
                    )
                };
                match path.as_str() {
                    "/good.snapshot" if api_key && key.as_deref() != Some("secret") => {
                        let _ = stream.write_all(head("401 Unauthorized", 0).as_bytes());
                    }
                    "/good.snapshot" => {
                        let _ = stream.write_all(head("200 OK", archive.len()).as_bytes());
                        let _ = stream.write_all(&archive);
                    }
                    "/stall.snapshot" => {
                        let _ = stream.write_all(head("200 OK", archive.len()).as_bytes());
                        let _ = stream.write_all(&archive[..archive.len() / 2]);
                        let _ = stream.flush();
                        std::thread::sleep(std::time::Duration::from_secs(60));
                    }
                    "/trickle.snapshot" => {
                        let _ = stream.write_all(head("200 OK", archive.len()).as_bytes());
                        for byte in archive.iter() {
                            if stream.write_all(&[*byte]).is_err() {
                                break;
                            }
                            std::thread::sleep(std::time::Duration::from_millis(50));
                        }
                    }
                    p if p.starts_with("/redirect?to=") => {
                        let to = &p["/redirect?to=".len()..];
                        let _ = write!(
                            stream,
                            "HTTP/1.1 302 Found\r\nlocation: {to}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        );
                    }
                    _ => {
                        let _ = stream.write_all(head("404 Not Found", 0).as_bytes());
                    }
                }
            });
        }
    });
    HttpServer { base, requests }
}

/// The test S3 server's settings, when one is configured (`scripts/s3-server.sh`).
pub struct S3Env {
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    pub bucket: String,
}

/// The S3 server of the environment, or `None` (after saying why the S3 part is skipped).
pub fn s3_env() -> Option<S3Env> {
    let var = |name: &str| std::env::var(format!("SNAPSHOT_OPERATOR_TEST_S3_{name}")).ok();
    match var("ENDPOINT") {
        Some(endpoint) => Some(S3Env {
            endpoint,
            access_key: var("ACCESS_KEY").expect("SNAPSHOT_OPERATOR_TEST_S3_ACCESS_KEY"),
            secret_key: var("SECRET_KEY").expect("SNAPSHOT_OPERATOR_TEST_S3_SECRET_KEY"),
            bucket: var("BUCKET").unwrap_or_else(|| "snapshots".into()),
        }),
        None => {
            eprintln!(
                "skipping the S3 part: SNAPSHOT_OPERATOR_TEST_S3_ENDPOINT is not set \
                 (`make test` starts a local S3 server and sets it)"
            );
            None
        }
    }
}

/// A key prefix no other test uses.
pub fn unique_prefix(test: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{test}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

impl S3Env {
    /// Library configuration for this server.
    pub fn config(&self) -> snapshot_operator::config::S3Config {
        use snapshot_operator::config::{S3Config, Secret};
        S3Config {
            bucket: self.bucket.clone(),
            region: Some("us-east-1".into()),
            access_key: Some(Secret::new(&self.access_key)),
            secret_key: Some(Secret::new(&self.secret_key)),
            endpoint_url: Some(self.endpoint.clone()),
            force_path_style: Some(true),
            part_size_mib: Some(5),
            upload_concurrency: Some(2),
            abort_incomplete_uploads_after_secs: None,
            ..S3Config::default()
        }
    }

    /// Uploads `archive` (`snapshot upload`) under a new prefix for `test`; returns the
    /// prefix and the archive's name there.
    pub fn upload(&self, cwd: &Path, test: &str, archive: &Path) -> (String, String) {
        let prefix = unique_prefix(test);
        let mut upload = bin(cwd);
        self.apply(&mut upload, &prefix);
        ok(upload.args(["snapshot", "upload"]).arg(archive));
        let name = archive.file_name().unwrap().to_string_lossy().into_owned();
        (prefix, name)
    }

    /// Configures the binary to use this server, archives under `prefix`.
    pub fn apply(&self, cmd: &mut Command, prefix: &str) {
        let c = "SNAPSHOT_OPERATOR__STORAGE__SNAPSHOTS_CONFIG";
        cmd.env("SNAPSHOT_OPERATOR__STORAGE__SNAPSHOTS_PATH", prefix)
            .env(format!("{c}__SNAPSHOTS_STORAGE"), "s3")
            .env(format!("{c}__S3_CONFIG__BUCKET"), &self.bucket)
            .env(format!("{c}__S3_CONFIG__ENDPOINT_URL"), &self.endpoint)
            .env(format!("{c}__S3_CONFIG__ACCESS_KEY"), &self.access_key)
            .env(format!("{c}__S3_CONFIG__SECRET_KEY"), &self.secret_key)
            .env(format!("{c}__S3_CONFIG__PART_SIZE_MIB"), "5")
            .env_remove("AWS_CA_BUNDLE");
    }
}

/// A TCP proxy to `target` that answers the first `failures` requests itself with
/// `503 SlowDown` (as a throttled S3 does) and forwards everything else, counting the bytes
/// the server answered.
pub struct FaultProxy {
    pub endpoint: String,
    pub injected: std::sync::Arc<std::sync::atomic::AtomicU32>,
    pub answered: Arc<AtomicU64>,
}

pub fn fault_proxy(target: &str, failures: u32) -> FaultProxy {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::atomic::{AtomicU32, Ordering};
    let target = target.trim_start_matches("http://").to_owned();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let injected = std::sync::Arc::new(AtomicU32::new(0));
    let counter = injected.clone();
    let answered = Arc::new(AtomicU64::new(0));
    let tally = answered.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { continue };
            if counter.load(Ordering::SeqCst) < failures {
                counter.fetch_add(1, Ordering::SeqCst);
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && client.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let body = "<?xml version=\"1.0\"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
                let _ = write!(
                    client,
                    "HTTP/1.1 503 Slow Down\r\ncontent-type: application/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                continue;
            }
            let Ok(server) = TcpStream::connect(&target) else {
                continue;
            };
            let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let mut server = server;
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c2, &mut server);
                let _ = server.shutdown(std::net::Shutdown::Write);
            });
            let tally = tally.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 16 << 10];
                loop {
                    let n = match s2.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    tally.fetch_add(n as u64, Ordering::SeqCst);
                    if client.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = client.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    FaultProxy {
        endpoint,
        injected,
        answered,
    }
}

/// A TCP proxy to `target` that passes requests on at once and answers at most
/// `bytes_per_sec` (a slow link); returns its endpoint.
pub fn throttled_proxy(target: &str, bytes_per_sec: u64) -> String {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    let target = target.trim_start_matches("http://").to_owned();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let Ok(server) = TcpStream::connect(&target) else {
                continue;
            };
            let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (mut client, mut server) = (client, server);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c2, &mut server);
                let _ = server.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                let pause = std::time::Duration::from_secs_f64(1024.0 / bytes_per_sec as f64);
                loop {
                    let n = match s2.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if client.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    std::thread::sleep(pause);
                }
                let _ = client.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    endpoint
}

/// A body that yields `data[..at]`, then waits until its gate opens (the sender [`Gated::new`]
/// returns fires), then yields the rest; counts the bytes it has given out.
pub struct Gated {
    head: io::Cursor<Vec<u8>>,
    tail: io::Cursor<Vec<u8>>,
    gate: Option<oneshot::Receiver<()>>,
    given: Arc<AtomicU64>,
}

impl Gated {
    /// The body, the sender that opens its gate, and its count of bytes given out.
    pub fn new(data: &[u8], at: usize) -> (Self, oneshot::Sender<()>, Arc<AtomicU64>) {
        let (open, gate) = oneshot::channel();
        let given = Arc::default();
        let body = Self {
            head: io::Cursor::new(data[..at].to_vec()),
            tail: io::Cursor::new(data[at..].to_vec()),
            gate: Some(gate),
            given: Arc::clone(&given),
        };
        (body, open, given)
    }
}

impl AsyncRead for Gated {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        if (self.head.position() as usize) < self.head.get_ref().len() {
            let r = Pin::new(&mut self.head).poll_read(cx, buf);
            let n = (buf.filled().len() - before) as u64;
            self.given.fetch_add(n, Ordering::SeqCst);
            return r;
        }
        if let Some(gate) = self.gate.as_mut() {
            match std::future::Future::poll(Pin::new(gate), cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(_) => self.gate = None,
            }
        }
        Pin::new(&mut self.tail).poll_read(cx, buf)
    }
}

/// Creates an archive of a collection `products` of node `n0` in the storage `cli`
/// configures, and downloads it to `cwd/base.snapshot`; its name and the download.
pub fn downloaded_products(cwd: &Path, cli: &dyn Fn() -> Command) -> (String, PathBuf) {
    let src = cwd.join("prune-source");
    make_collection(&src, "products", "p");
    let created = create_products(cli(), &src);
    let name = created["name"].as_str().unwrap().to_owned();
    let base = cwd.join("base.snapshot");
    ok(cli()
        .args([
            "snapshot",
            "download",
            "--collection",
            "products",
            &name,
            "-o",
        ])
        .arg(&base));
    (name, base)
}

/// A restore by the binary into `target` with `args`, as nobody when the tests run as root
/// (as movers run); `cwd` is given to nobody.
pub fn restore_as_nobody(cwd: &Path, target: &Path, args: &[&str]) -> Command {
    let mut cmd = bin(cwd);
    cmd.args(["restore", "--storage-path"])
        .arg(target)
        .args(args);
    as_nobody(cmd, cwd)
}

/// Puts into the storage `cli` configures one archive of collection `products` of node `n0`
/// for each time of `times` (`YYYY-MM-DD-HH-MM-SS`, UTC), named as if taken then: one real
/// archive, downloaded, deleted from the storage and uploaded under each name.
pub fn archives_taken_at(cwd: &Path, cli: &dyn Fn() -> Command, times: &[&str]) {
    let (name, base) = downloaded_products(cwd, cli);
    ok(cli().args(["snapshot", "delete", "--collection", "products", &name]));
    let forged = cwd.join("forged");
    fs::create_dir_all(&forged).unwrap();
    for time in times {
        let file = forged.join(format!("products-n0-{time}.snapshot"));
        fs::copy(&base, &file).unwrap();
        ok(cli().args(["snapshot", "upload"]).arg(&file));
    }
}

/// `snapshot prune` on the storage `cli` configures, keeping two days of archives: a dry
/// run deletes nothing, the real one the three archives no rule keeps, with their
/// checksums; without a rule it refuses. Returns the keys left.
pub fn prune_keeps_two_days(cwd: &Path, cli: &dyn Fn() -> Command) -> Vec<String> {
    let times = [
        "2026-03-01-02-00-00",
        "2026-03-01-14-00-00",
        "2026-03-02-02-00-00",
        "2026-03-03-02-00-00",
        "2026-03-03-14-00-00",
    ];
    archives_taken_at(cwd, cli, &times);
    let keys = || -> Vec<String> {
        let listed: serde_json::Value =
            serde_json::from_str(&ok(cli().args(["snapshot", "list", "-o", "json"]))).unwrap();
        listed
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["key"].as_str().unwrap().to_owned())
            .collect()
    };
    let refused = fails(cli().args(["snapshot", "prune"]));
    assert!(refused.contains("at least one --keep-"), "{refused}");
    let plan: serde_json::Value = serde_json::from_str(&ok(cli().args([
        "snapshot",
        "prune",
        "--keep-daily",
        "2",
        "--dry-run",
        "-o",
        "json",
    ])))
    .unwrap();
    let removed: Vec<&str> = plan
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["keep"] == false)
        .map(|p| p["key"].as_str().unwrap())
        .collect();
    let key = |t: &str| format!("products/products-n0-{t}.snapshot");
    assert_eq!(removed, [key(times[0]), key(times[1]), key(times[3])]);
    assert_eq!(keys().len(), 5, "a dry run deletes nothing");
    let text = ok(cli().args(["snapshot", "prune", "--keep-daily", "2"]));
    assert!(text.contains("removed") && text.contains("daily"), "{text}");
    let left = keys();
    assert_eq!(left, [key(times[2]), key(times[4])]);
    left
}
