//! The real Qdrant server as the workload: snapshots Qdrant made (collection, shard, full)
//! restored by the binary and loaded by a second Qdrant; our snapshots of a Qdrant's
//! storage recovered by Qdrant through its upload and recover APIs and at startup
//! (`--snapshot`, `--storage-snapshot`), with priorities; compared by point counts, search
//! results and aliases. Qdrant is built once per machine from its source
//! (`../shared/tools/build-qdrant.sh`, into `/var/cache/snapshot-operator/qdrant`); the
//! test script sets `SNAPSHOT_OPERATOR_TEST_QDRANT_SERVER` to the binary, and without it the
//! tier says SKIPPED.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::*;

const API: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/qdrant/server.py");

/// The Qdrant server binary, or `None` after saying the tier is skipped.
fn qdrant_binary() -> Option<PathBuf> {
    match std::env::var_os("SNAPSHOT_OPERATOR_TEST_QDRANT_SERVER") {
        Some(path) => Some(path.into()),
        None => {
            eprintln!(
                "SKIPPED: SNAPSHOT_OPERATOR_TEST_QDRANT_SERVER is not set (build Qdrant with \
                 ../shared/tools/build-qdrant.sh; `make test` then sets it)"
            );
            None
        }
    }
}

/// Two free ports in a row (HTTP and gRPC), below the ephemeral range; never the same two
/// twice in this process (its tests run at once).
fn free_ports() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let free = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
    let base = 20_000 + (std::process::id() % 500) as u16 * 20;
    loop {
        let port = base + NEXT.fetch_add(2, Ordering::SeqCst) % 10_000;
        if free(port) && free(port + 1) {
            return port;
        }
    }
}

/// How a Qdrant server is started, beyond its ports and paths.
#[derive(Default)]
struct Setup {
    args: Vec<String>,
    /// The api-key it requires.
    key: Option<String>,
    /// The CA that signs its certificate (`<home>/tls/`): it serves https.
    ca: Option<PathBuf>,
    env: Vec<(String, String)>,
}

/// A Qdrant server on 127.0.0.1, its storage and snapshots under `dir/<name>/`.
struct Qdrant {
    child: Child,
    url: String,
    /// Its api-key, when it requires one.
    key: Option<String>,
    /// The CA of its certificate, when it serves https.
    ca: Option<PathBuf>,
    storage: PathBuf,
    snapshots: PathBuf,
}

impl Qdrant {
    fn start(binary: &Path, dir: &Path, name: &str, args: &[&str]) -> Self {
        let args = args.iter().map(|a| a.to_string()).collect();
        Self::launch(
            binary,
            dir,
            name,
            Setup {
                args,
                ..Setup::default()
            },
        )
    }

    /// One that requires the api-key `key`.
    fn keyed(binary: &Path, dir: &Path, name: &str, key: &str) -> Self {
        let key = Some(key.into());
        Self::launch(
            binary,
            dir,
            name,
            Setup {
                key,
                ..Setup::default()
            },
        )
    }

    fn launch(binary: &Path, dir: &Path, name: &str, setup: Setup) -> Self {
        let home = dir.join(name);
        let (storage, snapshots) = (home.join("storage"), home.join("snapshots"));
        std::fs::create_dir_all(&snapshots).unwrap();
        let port = free_ports();
        let log = std::fs::File::create(home.join("qdrant.log")).unwrap();
        let mut command = Command::new(binary);
        if let Some(key) = &setup.key {
            command.env("QDRANT__SERVICE__API_KEY", key);
        }
        if setup.ca.is_some() {
            // Its certificate and key at the default paths, tls/cert.pem and tls/key.pem.
            command.env("QDRANT__SERVICE__ENABLE_TLS", "true");
        }
        let child = command
            .args(&setup.args)
            .envs(setup.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&home)
            .env("QDRANT__SERVICE__HOST", "127.0.0.1")
            .env("QDRANT__SERVICE__HTTP_PORT", port.to_string())
            .env("QDRANT__SERVICE__GRPC_PORT", (port + 1).to_string())
            .env("QDRANT__STORAGE__STORAGE_PATH", &storage)
            .env("QDRANT__STORAGE__SNAPSHOTS_PATH", &snapshots)
            .env("QDRANT__TELEMETRY_DISABLED", "true")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let scheme = if setup.ca.is_some() { "https" } else { "http" };
        let qdrant = Self {
            child,
            url: format!("{scheme}://127.0.0.1:{port}"),
            key: setup.key,
            ca: setup.ca,
            storage,
            snapshots,
        };
        qdrant.api(&["wait"]);
        qdrant
    }

    /// Runs `server.py <command> <url> <args...>`; its output.
    fn api(&self, args: &[&str]) -> String {
        ok(&mut self.api_cmd(args))
    }

    fn api_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("python3");
        cmd.arg(API).arg(args[0]).arg(&self.url).args(&args[1..]);
        match &self.key {
            Some(key) => cmd.env("QDRANT_API_KEY", key),
            None => cmd.env_remove("QDRANT_API_KEY"),
        };
        if let Some(ca) = &self.ca {
            cmd.env("QDRANT_CA", ca);
        }
        cmd
    }

    /// The binary running `args` through this Qdrant's API (`--qdrant-url`, its api-key, the
    /// CA of its certificate).
    fn cli(&self, cmd: Command, args: &[&str]) -> Command {
        let mut cmd = cmd;
        cmd.args(args).args(["--qdrant-url", &self.url]);
        if let Some(ca) = &self.ca {
            cmd.arg("--qdrant-ca").arg(ca);
        }
        match &self.key {
            Some(key) => cmd.env("QDRANT_API_KEY", key),
            None => cmd.env_remove("QDRANT_API_KEY"),
        };
        cmd
    }

    fn describe(&self, collection: &str) -> Value {
        serde_json::from_str(&self.api(&["describe", collection])).unwrap()
    }

    /// Stops the server (SIGTERM, then SIGKILL after 30 s) and waits for it.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let started = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            if started.elapsed() > Duration::from_secs(30) {
                let _ = self.child.kill();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Qdrant {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The points and search results of a description (aliases apart).
fn points(described: &Value) -> (Value, Value) {
    (described["count"].clone(), described["queries"].clone())
}

/// A restore by the binary, as nobody (as movers run).
fn restore(dir: &Path, target: &Path, args: &[&str]) {
    ok(&mut restore_as_nobody(dir, target, args));
}

/// A Qdrant with two collections (one of two shards), aliases and payload indexes.
fn filled(binary: &Path, dir: &Path) -> (Qdrant, Value, Value) {
    let a = Qdrant::start(binary, dir, "a", &[]);
    a.api(&["fill", "products", "3000", "1", "2"]);
    a.api(&["fill", "reviews", "800", "2", "1"]);
    let (products, reviews) = (a.describe("products"), a.describe("reviews"));
    assert_eq!(products["count"], 3000);
    assert_eq!(products["aliases"], serde_json::json!(["products-alias"]));
    (a, products, reviews)
}

#[test]
fn snapshots_qdrant_made_restore_and_load_in_another_qdrant() {
    let Some(binary) = qdrant_binary() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (a, products, reviews) = filled(&binary, dir.path());
    let path = |name: &str| dir.path().join(name).display().to_string();
    a.api(&["snapshot", "products", &path("collection.snapshot")]);
    a.api(&["shard-snapshot", "products", "1", &path("shard.snapshot")]);
    a.api(&["full-snapshot", &path("full.snapshot")]);
    a.stop();

    // Its collection snapshot, under another name; its full snapshot, aliases and all.
    let b = dir.path().join("b/storage");
    restore(
        dir.path(),
        &b,
        &[
            "--snapshot",
            &format!("{}:copy", path("collection.snapshot")),
        ],
    );
    restore(
        dir.path(),
        &b,
        &["--storage-snapshot", &path("full.snapshot")],
    );
    let qdrant = Qdrant::start(&binary, dir.path(), "b", &[]);
    assert_eq!(points(&qdrant.describe("copy")), points(&products));
    assert_eq!(qdrant.describe("products"), products);
    assert_eq!(qdrant.describe("reviews"), reviews);
    qdrant.stop();

    // Its shard snapshot as shard 1 of a collection restored without it (replica keeps the
    // shard there, snapshot replaces it).
    let c = dir.path().join("c/storage");
    restore(
        dir.path(),
        &c,
        &[
            "--snapshot",
            &format!("{}:products", path("collection.snapshot")),
        ],
    );
    let shard = &format!("{}:products", path("shard.snapshot"));
    restore(
        dir.path(),
        &c,
        &["--snapshot", shard, "--shard", "1", "--priority", "replica"],
    );
    std::fs::remove_dir_all(c.join("collections/products/1/segments")).unwrap();
    restore(
        dir.path(),
        &c,
        &[
            "--snapshot",
            shard,
            "--shard",
            "1",
            "--priority",
            "snapshot",
        ],
    );
    let qdrant = Qdrant::start(&binary, dir.path(), "c", &[]);
    assert_eq!(points(&qdrant.describe("products")), points(&products));
    qdrant.stop();
}

#[test]
fn our_snapshots_of_a_qdrant_storage_recover_in_qdrant_through_its_api_and_at_startup() {
    let Some(binary) = qdrant_binary() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (a, products, reviews) = filled(&binary, dir.path());
    // Our snapshots of its storage, read while it runs (idle): Qdrant's format.
    let created = create(dir.path(), &a.storage, Some("products"));
    let archive = dir.path().join(archive_path(&created));
    let full = dir
        .path()
        .join(archive_path(&create(dir.path(), &a.storage, None)));
    let listing = ok(Command::new("tar").arg("-tf").arg(&full));
    assert!(listing.contains("products.snapshot"), "{listing}");
    a.stop();
    let archive_text = archive.display().to_string();

    // Uploaded (priority snapshot), recovered from http (priority replica) and from a file
    // in Qdrant's snapshots directory (priority snapshot, over what is there).
    let e = Qdrant::start(&binary, dir.path(), "e", &[]);
    e.api(&["upload", "products", &archive_text, "snapshot"]);
    assert_eq!(points(&e.describe("products")), points(&products));
    let server = serve(std::fs::read(&archive).unwrap(), false);
    let url = format!("{}/good.snapshot", server.base);
    e.api(&["recover", "from-http", &url, "replica"]);
    assert_eq!(points(&e.describe("from-http")), points(&products));
    let inside = e.snapshots.join("ours.snapshot");
    std::fs::copy(&archive, &inside).unwrap();
    let location = format!("file://{}", inside.display());
    e.api(&["recover", "products", &location, "snapshot"]);
    assert_eq!(points(&e.describe("products")), points(&products));
    e.stop();

    // At startup: --snapshot for the collection, --storage-snapshot for the whole storage.
    let f = Qdrant::start(
        &binary,
        dir.path(),
        "f",
        &["--snapshot", &format!("{archive_text}:products")],
    );
    assert_eq!(points(&f.describe("products")), points(&products));
    f.stop();
    let full_text = full.display().to_string();
    let g = Qdrant::start(
        &binary,
        dir.path(),
        "g",
        &["--storage-snapshot", &full_text],
    );
    assert_eq!(g.describe("products"), products);
    assert_eq!(g.describe("reviews"), reviews);
    g.stop();

    // The storage Qdrant recovered at startup snapshots again, and our restore of that
    // loads too: the format goes round.
    let again = dir.path().join(archive_path(&create(
        dir.path(),
        &dir.path().join("g/storage"),
        None,
    )));
    let h = dir.path().join("h/storage");
    restore(
        dir.path(),
        &h,
        &["--storage-snapshot", &again.display().to_string()],
    );
    let qdrant = Qdrant::start(&binary, dir.path(), "h", &[]);
    assert_eq!(qdrant.describe("products"), products);
    qdrant.stop();
}

/// `snapshot create` through `qdrant`'s API (of `collection`, or all), as node `qdrant-0`,
/// by `cmd` (the binary set up for some snapshot storage): its JSON result.
fn create_through(qdrant: &Qdrant, cmd: Command, collection: Option<&str>) -> Value {
    create_as(qdrant, cmd, collection, "qdrant-0")
}

/// [`create_through`], as node `node`.
fn create_as(qdrant: &Qdrant, cmd: Command, collection: Option<&str>, node: &str) -> Value {
    let mut args = vec!["snapshot", "create", "--node", node, "-o", "json"];
    args.extend(collection.iter().flat_map(|c| ["--collection", c]));
    serde_json::from_str(&ok(&mut qdrant.cli(cmd, &args))).unwrap()
}

/// `restore` through `qdrant`'s API of `location` as `collection`, with `priority`.
fn recover_through(
    qdrant: &Qdrant,
    cmd: Command,
    location: &str,
    collection: &str,
    priority: &str,
) {
    let snapshot = format!("{location}:{collection}");
    let args = ["restore", "--snapshot", &snapshot, "--priority", priority];
    ok(&mut qdrant.cli(cmd, &args));
}

#[test]
fn qdrant_s_api_snapshots_a_running_qdrant_and_recovers_what_it_stored_with_each_priority() {
    let Some(binary) = qdrant_binary() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let a = Qdrant::keyed(&binary, cwd, "a", "the-api-key");
    a.api(&["fill", "products", "3000", "1", "2"]);
    a.api(&["fill", "reviews", "500", "2", "1"]);
    let products = a.describe("products");

    // Taken while points keep coming (none of them found by the queries): Qdrant's own
    // consistent snapshot, streamed into the local storage behind our manifest.
    let mut writer = a.api_cmd(&["write", "products", "6"]);
    let writer = writer.stdout(std::process::Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let created = create_through(&a, bin(cwd), Some("products"));
    let written: u64 = String::from_utf8(writer.wait_with_output().unwrap().stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(written > 0);
    let archive = cwd.join(archive_path(&created));
    let made = created["qdrant_snapshot"].as_str().unwrap();
    assert!(made.starts_with("products-"), "{created}");
    // Deleted from Qdrant's disk once stored.
    assert_eq!(a.api(&["snapshots", "products"]).trim(), "[]");
    let listing = ok(Command::new("tar").arg("-tf").arg(&archive));
    assert_eq!(listing.lines().next(), Some("snapshot.json"), "{listing}");
    let bytes = std::fs::read(&archive).unwrap();
    assert_eq!(created["archive"]["checksum"], sha256_hex(&bytes));

    // Our restore of it loads in a Qdrant: the points of that moment, the same answers.
    let archive_text = archive.display().to_string();
    restore(
        cwd,
        &cwd.join("b/storage"),
        &["--snapshot", &format!("{archive_text}:products")],
    );
    let b = Qdrant::start(&binary, cwd, "b", &[]);
    let at_snapshot = b.describe("products");
    let count = at_snapshot["count"].as_u64().unwrap();
    assert!(
        (3000..=3000 + written).contains(&count),
        "{count} of 3000 + {written}"
    );
    assert_eq!(at_snapshot["queries"], products["queries"]);
    b.stop();

    // Uploaded to a running Qdrant, which recovers it with each priority.
    let c = Qdrant::start(&binary, cwd, "c", &[]);
    for priority in ["snapshot", "replica", "no_sync"] {
        recover_through(&c, bin(cwd), &archive_text, "products", priority);
        assert_eq!(
            points(&c.describe("products")),
            points(&at_snapshot),
            "{priority}"
        );
    }
    // By name from the configured storage, into a new collection.
    let name = created["name"].as_str().unwrap();
    recover_through(&c, bin(cwd), name, "copy", "snapshot");
    assert_eq!(points(&c.describe("copy")), points(&at_snapshot));

    // As movers do it (no volume; the api-key from the environment): a report each.
    let log = cwd.join("termination-log");
    let mover = |qdrant: &Qdrant, args: &[&str]| {
        let mut cmd = bin(cwd);
        cmd.arg("mover")
            .arg(args[0])
            .arg("--termination-log")
            .arg(&log);
        let mut cmd = qdrant.cli(cmd, &args[1..]);
        ok(&mut cmd);
        serde_json::from_slice::<Value>(&std::fs::read(&log).unwrap()).unwrap()
    };
    let made = mover(
        &a,
        &[
            "api-snapshot",
            "--collection",
            "reviews",
            "--node",
            "qdrant-1",
        ],
    );
    let key = made["key"].as_str().unwrap();
    assert!(key.starts_with("reviews/reviews-qdrant-1-"), "{made}");
    assert_eq!(a.api(&["snapshots", "reviews"]).trim(), "[]");
    let args = [
        "api-restore",
        "--location",
        key,
        "--collection",
        "reviews",
        "--priority",
        "snapshot",
    ];
    let recovered = mover(&c, &args);
    assert_eq!(recovered["outcome"], "Restored", "{recovered}");
    assert_eq!(recovered["checksum"], made["checksum"]);
    assert_eq!(
        points(&c.describe("reviews")),
        points(&a.describe("reviews"))
    );
    // A file of the mover's machine is not a location it restores from.
    let mut refused = bin(cwd);
    refused
        .arg("mover")
        .arg("api-restore")
        .arg("--termination-log")
        .arg(&log);
    let mut refused = c.cli(
        refused,
        &[
            "--location",
            &archive_text,
            "--collection",
            "x",
            "--priority",
            "snapshot",
        ],
    );
    fails(&mut refused);

    // Through S3 (multipart), when there is a server: snapshot and recover.
    if let Some(env) = s3_env() {
        let prefix = unique_prefix("qdrant-api");
        let s3 = || {
            let mut cmd = bin(cwd);
            env.apply(&mut cmd, &prefix);
            cmd
        };
        let now = a.describe("products");
        let stored = create_through(&a, s3(), Some("products"));
        assert!(
            stored["archive"]["location"]
                .as_str()
                .unwrap()
                .starts_with("s3://")
        );
        recover_through(
            &c,
            s3(),
            stored["name"].as_str().unwrap(),
            "from-s3",
            "snapshot",
        );
        assert_eq!(points(&c.describe("from-s3")), points(&now));
    }

    // Qdrant's full snapshot, through the API: Qdrant recovers it only at startup, so an
    // upload is refused before anything is sent; our restore of it loads with its aliases.
    let full = create_through(&a, bin(cwd), None);
    assert_eq!(a.api(&["snapshots"]).trim(), "[]");
    let full_text = cwd.join(archive_path(&full)).display().to_string();
    let refused = fails(&mut c.cli(
        bin(cwd),
        &["restore", "--snapshot", &format!("{full_text}:products")],
    ));
    assert!(refused.contains("only at startup"), "{refused}");
    restore(
        cwd,
        &cwd.join("d/storage"),
        &["--storage-snapshot", &full_text],
    );
    let d = Qdrant::start(&binary, cwd, "d", &[]);
    assert_eq!(d.describe("products"), a.describe("products"));
    assert_eq!(d.describe("reviews"), a.describe("reviews"));
    d.stop();

    // A wrong api-key, a Qdrant that is not there: each fails saying so, storing nothing
    // and never showing the key.
    let before = ok(bin(cwd).args(["snapshot", "list"]));
    let mut wrong = a.cli(
        bin(cwd),
        &["snapshot", "create", "--collection", "products"],
    );
    let said = fails(wrong.env("QDRANT_API_KEY", "not-the-key"));
    assert!(
        said.contains("HTTP 401") && said.contains("api-key"),
        "{said}"
    );
    assert!(!said.contains("not-the-key"), "{said}");
    let mut gone = bin(cwd);
    gone.args(["snapshot", "create", "--collection", "products"])
        .args(["--qdrant-url", "http://127.0.0.1:9"]);
    let said = fails(&mut gone);
    assert!(said.contains("cannot reach Qdrant"), "{said}");
    let said = fails(&mut a.cli(bin(cwd), &["snapshot", "create", "--collection", "nope"]));
    assert!(said.contains("HTTP 404") && said.contains("nope"), "{said}");
    assert_eq!(ok(bin(cwd).args(["snapshot", "list"])), before);
    c.stop();
    a.stop();
}

/// Makes a CA named `ca` in `dir` and, under `home/tls/` (where Qdrant looks by default), a
/// key and a certificate it signs for 127.0.0.1; the CA's PEM file.
fn signed_for_loopback(dir: &Path, home: &Path, ca: &str) -> PathBuf {
    let tls = home.join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    let openssl = |args: &[&str]| {
        ok(Command::new("openssl").args(args).current_dir(dir));
    };
    let p256 = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let (ca_pem, ca_key) = (format!("{ca}.pem"), format!("{ca}.key"));
    let subject = format!("/CN={ca}");
    openssl(
        &[
            &["req", "-x509", "-days", "2", "-subj", &subject][..],
            &p256,
            &["-keyout", &ca_key, "-out", &ca_pem],
        ]
        .concat(),
    );
    let (key, cert) = (tls.join("key.pem"), tls.join("cert.pem"));
    let (key, cert) = (key.to_str().unwrap(), cert.to_str().unwrap());
    let csr = format!("{ca}-server.csr");
    openssl(
        &[
            &["req", "-subj", "/CN=127.0.0.1"][..],
            &p256,
            &["-keyout", key, "-out", &csr],
        ]
        .concat(),
    );
    let ext = format!("{ca}-server.ext");
    std::fs::write(
        dir.join(&ext),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-days",
        "2",
        "-in",
        &csr,
        "-CA",
        &ca_pem,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-extfile",
        &ext,
        "-out",
        cert,
    ]);
    dir.join(ca_pem)
}

#[test]
fn a_qdrant_serving_https_is_reached_with_the_ca_that_signed_its_certificate() {
    let Some(binary) = qdrant_binary() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let ca = signed_for_loopback(cwd, &cwd.join("t"), "qdrant-ca");
    let setup = Setup {
        ca: Some(ca.clone()),
        ..Setup::default()
    };
    let t = Qdrant::launch(&binary, cwd, "t", setup);
    assert!(t.url.starts_with("https://"), "{}", t.url);
    t.api(&["fill", "products", "400", "3", "1"]);
    let products = t.describe("products");

    // With its CA (--qdrant-ca): snapshot, and recover as another collection.
    let created = create_through(&t, bin(cwd), Some("products"));
    let name = created["name"].as_str().unwrap();
    recover_through(&t, bin(cwd), name, "copy", "snapshot");
    assert_eq!(points(&t.describe("copy")), points(&products));

    // A mover takes the CA's PEM from its environment (set from a Secret).
    let log = cwd.join("termination-log");
    let mut mover = bin(cwd);
    mover
        .args([
            "mover",
            "api-snapshot",
            "--collection",
            "products",
            "--node",
            "qdrant-0",
        ])
        .arg("--termination-log")
        .arg(&log)
        .args(["--qdrant-url", &t.url])
        .env("QDRANT_CA_CERT", std::fs::read_to_string(&ca).unwrap());
    ok(&mut mover);
    let made: Value = serde_json::from_slice(&std::fs::read(&log).unwrap()).unwrap();
    assert_eq!(made.get("error"), None, "{made}");
    assert!(
        made["key"].as_str().unwrap().starts_with("products/"),
        "{made}"
    );
    assert_eq!(t.api(&["snapshots", "products"]).trim(), "[]");

    // Without it, or with another CA, or with what is not a certificate: each fails saying
    // why, and nothing is stored.
    let before = ok(bin(cwd).args(["snapshot", "list"]));
    let create = [
        "snapshot",
        "create",
        "--collection",
        "products",
        "--qdrant-url",
        &t.url,
    ];
    let said = fails(bin(cwd).args(create));
    assert!(
        said.contains("not accepted") && said.contains("give the CA that signed it: --qdrant-ca"),
        "{said}"
    );
    let other = signed_for_loopback(cwd, &cwd.join("elsewhere"), "other-ca");
    let said = fails(bin(cwd).args(create).arg("--qdrant-ca").arg(&other));
    assert!(said.contains("UnknownIssuer"), "{said}");
    let said = fails(
        bin(cwd)
            .args(create)
            .arg("--qdrant-ca")
            .arg(cwd.join("t/tls/key.pem")),
    );
    assert!(
        said.contains("CA certificates given for Qdrant are not usable"),
        "{said}"
    );
    assert_eq!(ok(bin(cwd).args(["snapshot", "list"])), before);
    t.stop();
}

/// A Qdrant cluster of two peers on loopback (raft between them over their p2p ports), the
/// second joining the first.
fn cluster(binary: &Path, dir: &Path) -> (Qdrant, Qdrant) {
    let peer = |name: &str, bootstrap: Option<u16>| {
        let p2p = free_ports();
        let mut args = vec!["--uri".to_string(), format!("http://127.0.0.1:{p2p}")];
        if let Some(first) = bootstrap {
            args.extend(["--bootstrap".into(), format!("http://127.0.0.1:{first}")]);
        }
        let env = vec![
            ("QDRANT__CLUSTER__ENABLED".into(), "true".into()),
            ("QDRANT__CLUSTER__P2P__PORT".into(), p2p.to_string()),
        ];
        let setup = Setup {
            args,
            env,
            ..Setup::default()
        };
        (Qdrant::launch(binary, dir, name, setup), p2p)
    };
    let (first, p2p) = peer("peer-0", None);
    let (second, _) = peer("peer-1", Some(p2p));
    (first, second)
}

/// The shard ids a peer holds of `collection`.
fn local_shards(peer: &Qdrant, collection: &str) -> Vec<u64> {
    serde_json::from_str(&peer.api(&["shards", collection])).unwrap()
}

#[test]
fn a_qdrant_cluster_is_snapshotted_peer_by_peer_and_recovered_so_with_qdrant_s_priorities() {
    let Some(binary) = qdrant_binary() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let (p0, p1) = cluster(&binary, cwd);
    let peers = [(&p0, "qdrant-0"), (&p1, "qdrant-1")];
    let settle = |collection: &str| {
        for (peer, _) in peers {
            peer.api(&["settle", collection]);
        }
    };
    // Once settled, every peer answers with the points and search results of `expected`.
    let every_peer_answers = |collection: &str, expected: &Value| {
        settle(collection);
        for (peer, node) in peers {
            let answers = points(&peer.describe(collection));
            assert_eq!(answers, points(expected), "{node}");
        }
    };

    // Two shards, one on each peer: each peer's archive holds the points of its own shard
    // only (of the other, its placement), and the collection comes back when each is
    // recovered on its peer.
    p0.api(&["fill", "products", "3000", "1", "2", "1"]);
    settle("products");
    let held = [local_shards(&p0, "products"), local_shards(&p1, "products")];
    assert_eq!(held.concat().len(), 2, "{held:?}");
    assert!(held.iter().all(|h| h.len() == 1), "{held:?}");
    let products = p0.describe("products");
    assert_eq!(products["count"], 3000);
    let mut archives = Vec::new();
    for ((peer, node), shards) in peers.iter().zip(&held) {
        let created = create_as(peer, bin(cwd), Some("products"), node);
        let listing = ok(Command::new("tar")
            .arg("-tf")
            .arg(cwd.join(archive_path(&created))));
        for shard in 0..2u64 {
            let segments = format!("{shard}/segments/");
            let present = listing.lines().any(|l| l.starts_with(&segments));
            assert_eq!(present, shards.contains(&shard), "{node}: {listing}");
        }
        assert_eq!(peer.api(&["snapshots", "products"]).trim(), "[]");
        archives.push(created["name"].as_str().unwrap().to_owned());
    }
    p0.api(&["delete", "products", "0", "1000"]);
    p1.api(&["write", "products", "1"]);
    assert_ne!(points(&p0.describe("products")), points(&products));
    for ((peer, _), archive) in peers.iter().zip(&archives) {
        recover_through(peer, bin(cwd), archive, "products", "snapshot");
    }
    every_peer_answers("products", &products);

    // One shard replicated on both peers. `replica` is refused before anything is sent:
    // the other replica's points would win anyway, and Qdrant would stop its consensus on
    // that recovery. `snapshot` makes the archive's points win, on both peers.
    p0.api(&["fill", "reviews", "800", "2", "1", "2"]);
    settle("reviews");
    assert_eq!(local_shards(&p1, "reviews"), [0]);
    let reviews = p0.describe("reviews");
    let archive = create_as(&p0, bin(cwd), Some("reviews"), "qdrant-0");
    let archive = archive["name"].as_str().unwrap();
    p1.api(&["write", "reviews", "1"]);
    let written = p1.describe("reviews");
    assert_ne!(written["count"], reviews["count"]);
    let snapshot = format!("{archive}:reviews");
    let replica = ["restore", "--snapshot", &snapshot, "--priority", "replica"];
    let said = fails(&mut p0.cli(bin(cwd), &replica));
    assert!(
        said.contains("shard 0 of collection reviews has an active replica on another peer"),
        "{said}"
    );
    assert_eq!(points(&p0.describe("reviews")), points(&written));
    recover_through(&p0, bin(cwd), archive, "reviews", "snapshot");
    every_peer_answers("reviews", &reviews);
    // The cluster still agrees on changes (its consensus runs): a new collection on both.
    p1.api(&["fill", "after", "10", "3", "1", "2"]);
    settle("after");
    assert_eq!(local_shards(&p0, "after"), [0]);
    p1.stop();
    p0.stop();
}

#[test]
fn a_restore_through_the_api_clears_uploads_that_killed_restores_left_on_qdrant_s_disk() {
    let Some(binary) = qdrant_binary() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let q = Qdrant::start(&binary, cwd, "q", &[]);
    q.api(&["fill", "products", "300", "4", "1"]);
    let products = q.describe("products");
    let created = create_through(&q, bin(cwd), Some("products"));

    // What a restore killed while Qdrant recovered its upload leaves (its deadline long
    // past), beside the upload of a restore still running elsewhere and a snapshot of the
    // user's.
    let on_disk = q.snapshots.join("products");
    let left = "restore-1000-0123456789abcdef.snapshot";
    let soon = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let running = format!("restore-{soon}-fedcba9876543210.snapshot");
    let archive = std::fs::read(cwd.join(archive_path(&created))).unwrap();
    for name in [left, &running, "mine.snapshot"] {
        std::fs::write(on_disk.join(name), &archive).unwrap();
    }
    let listed = q.api(&["snapshots", "products"]);
    assert!(
        listed.contains(left) && listed.contains(&running),
        "{listed}"
    );

    // The next restore of that collection deletes only the one whose time is up.
    let snapshot = format!("{}:products", created["name"].as_str().unwrap());
    ok(&mut q.cli(bin(cwd), &["restore", "--snapshot", &snapshot]));
    assert_eq!(points(&q.describe("products")), points(&products));
    let mut kept = vec!["mine.snapshot".to_owned(), running];
    kept.sort();
    let listed: Vec<String> = serde_json::from_str(&q.api(&["snapshots", "products"])).unwrap();
    assert_eq!(listed, kept);
    q.stop();
}
