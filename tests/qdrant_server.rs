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

/// A Qdrant server on 127.0.0.1, its storage and snapshots under `dir/<name>/`.
struct Qdrant {
    child: Child,
    url: String,
    storage: PathBuf,
    snapshots: PathBuf,
}

impl Qdrant {
    fn start(binary: &Path, dir: &Path, name: &str, args: &[&str]) -> Self {
        let home = dir.join(name);
        let (storage, snapshots) = (home.join("storage"), home.join("snapshots"));
        std::fs::create_dir_all(&snapshots).unwrap();
        let port = free_ports();
        let log = std::fs::File::create(home.join("qdrant.log")).unwrap();
        let child = Command::new(binary)
            .args(args)
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
        let qdrant = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            storage,
            snapshots,
        };
        qdrant.api(&["wait"]);
        qdrant
    }

    /// Runs `server.py <command> <url> <args...>`; its output.
    fn api(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("python3");
        cmd.arg(API).arg(args[0]).arg(&self.url).args(&args[1..]);
        ok(&mut cmd)
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
