//! The binary against a hostile workload and hostile archives: symbolic links planted in the
//! target, the storage directory or the snapshots path, before or during a restore;
//! read-only directories and paths given twice in archives GNU tar accepts; huge extension
//! headers and data after the end marker. Restores run as a non-root user when the tests run
//! as root (movers run non-root).

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A test directory with a storage directory `storage` holding `products` and its archive
/// in `./snapshots`; returns the directory and the archive's path.
fn fixture() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("storage");
    make_storage(&src);
    let created = create(dir.path(), &src, Some("products"));
    let archive = dir.path().join(archive_path(&created));
    (dir, archive)
}

/// The manifest and top directory of a `products` collection archive, then `entries`.
fn collection_archive(entries: Vec<RawEntry>) -> Vec<u8> {
    let manifest = manifest_json(Some("products"), &["products"], 1);
    let mut all = vec![
        RawEntry::file("snapshot.json", &manifest),
        RawEntry::dir("collections/products/").mode(0o755),
    ];
    all.extend(entries);
    raw_tar(&all)
}

/// Extracts `archive` with GNU tar into `into` as nobody (when root): the reference.
fn gnu_extract(dir: &Path, archive: &Path, into: &Path) {
    fs::create_dir_all(into).unwrap();
    let mut cmd = Command::new("tar");
    cmd.arg("-xf").arg(archive).arg("-C").arg(into);
    ok(&mut as_nobody(cmd, dir));
}

#[test]
fn links_planted_in_the_restore_workspace_are_never_followed() {
    let (dir, archive) = fixture();
    let snapshots = dir.path().join("snapshots");
    let arg = format!("{}:products", archive.display());
    let before = fingerprint(&snapshots);

    // The workspace itself is a link to the snapshots volume.
    let t1 = dir.path().join("t1");
    fs::create_dir_all(&t1).unwrap();
    symlink(&snapshots, t1.join(".snapshot-operator")).unwrap();
    let err = fails(&mut restore_as_nobody(
        dir.path(),
        &t1,
        &["--snapshot", &arg],
    ));
    assert!(err.contains("symbolic link"), "{err}");
    assert!(
        fs::symlink_metadata(t1.join(".snapshot-operator"))
            .unwrap()
            .is_symlink()
    );

    // Its lock file is a link to an archive (which a truncating open would empty).
    let t2 = dir.path().join("t2");
    fs::create_dir_all(t2.join(".snapshot-operator")).unwrap();
    symlink(&archive, t2.join(".snapshot-operator/lock")).unwrap();
    let err = fails(&mut restore_as_nobody(
        dir.path(),
        &t2,
        &["--snapshot", &arg],
    ));
    assert!(err.contains("symbolic link"), "{err}");

    // Leftovers of an "interrupted restore" are links into the snapshots volume, and a
    // directory holding one: clean-up removes the links, never what they point to.
    let t3 = dir.path().join("t3");
    fs::create_dir_all(t3.join(".snapshot-operator/restore-old")).unwrap();
    symlink(&snapshots, t3.join(".snapshot-operator/restore-dead")).unwrap();
    symlink(
        snapshots.join("products"),
        t3.join(".snapshot-operator/restore-old/products"),
    )
    .unwrap();
    ok(&mut restore_as_nobody(
        dir.path(),
        &t3,
        &["--snapshot", &arg],
    ));
    assert!(!t3.join(".snapshot-operator").exists());
    assert!(t3.join("collections/products/config.json").is_file());

    assert_eq!(
        fingerprint(&snapshots),
        before,
        "the snapshots volume changed"
    );
}

#[test]
fn a_directory_swapped_for_a_link_while_staging_is_never_followed() {
    let (dir, _) = fixture();
    let snapshots = dir.path().join("snapshots");
    let outside = dir.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    let target = dir.path().join("target");
    // The archive arrives through a FIFO, so the test decides when each part arrives.
    let fifo = snapshots.join("pipe.snapshot");
    ok(Command::new("mkfifo").arg(&fifo));
    // The restore reads its source in 1 MiB chunks: the first part sent is 2 MiB, ending
    // inside a large file that follows `sub/first`.
    let whole = collection_archive(vec![
        RawEntry::dir("collections/products/sub/").mode(0o755),
        RawEntry::file("collections/products/sub/first", b"1"),
        RawEntry::file("collections/products/pad", &binary(3 << 20, "pad")),
        RawEntry::file("collections/products/sub/cached", b"2"),
        RawEntry::file("collections/products/other/x", b"3"),
        RawEntry::file("collections/products/sub/reopened", b"4"),
    ]);
    let (first, rest) = whole.split_at(2 << 20);
    let location = format!("file://{}:products", fifo.display());
    let mut cmd = restore_as_nobody(dir.path(), &target, &["--snapshot", &location]);
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    pipe.write_all(first).unwrap();
    pipe.flush().unwrap();

    // Once `sub` is staged, move it away and put a link to the outside in its place.
    let workspace = target.join(".snapshot-operator");
    let started = Instant::now();
    let sub = loop {
        let staged = fs::read_dir(&workspace).ok().and_then(|entries| {
            entries
                .map(|e| e.unwrap().path().join("collections/products/sub"))
                .find(|p| p.join("first").exists())
        });
        if let Some(sub) = staged {
            break sub;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "nothing staged"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    fs::rename(&sub, sub.with_file_name("moved")).unwrap();
    symlink(&outside, &sub).unwrap();
    pipe.write_all(rest).unwrap();
    drop(pipe);

    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the restore went on through the link"
    );
    assert!(err.contains("symbolic link"), "{err}");
    assert!(
        fingerprint(&outside).is_empty(),
        "wrote outside: {:?}",
        fingerprint(&outside)
    );
    assert!(!target.join("collections").exists());
    assert!(!workspace.exists());
}

#[test]
fn snapshot_create_never_follows_a_linked_collections_directory_or_collection() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = dir.path().join("elsewhere");
    make_collection(&elsewhere, "products", "secret");
    let snapshot = |storage: &Path, collection| create_cmd(dir.path(), storage, collection);

    // collections/ is a link: refused for one collection and for the whole storage.
    let s1 = dir.path().join("s1");
    fs::create_dir_all(&s1).unwrap();
    symlink(elsewhere.join("collections"), s1.join("collections")).unwrap();
    for collection in [Some("products"), None] {
        let err = fails(&mut snapshot(&s1, collection));
        assert!(err.contains("symbolic link"), "{err}");
    }

    // A collection is a link: refused by name, skipped (and reported) in a full snapshot.
    let s2 = dir.path().join("s2");
    make_collection(&s2, "real", "r");
    symlink(
        elsewhere.join("collections/products"),
        s2.join("collections/products"),
    )
    .unwrap();
    let err = fails(&mut snapshot(&s2, Some("products")));
    assert!(err.contains("symbolic link"), "{err}");
    let created: serde_json::Value = serde_json::from_str(&ok(&mut snapshot(&s2, None))).unwrap();
    assert_eq!(created["content"]["skipped"][0]["kind"], "symlink");
    let listing = ok(Command::new("tar")
        .arg("-tf")
        .arg(dir.path().join(archive_path(&created))));
    assert!(!listing.contains("products"), "{listing}");

    // The aliases file is a link to a file outside.
    let s3 = dir.path().join("s3");
    make_collection(&s3, "real", "r");
    fs::create_dir_all(s3.join("aliases")).unwrap();
    symlink("/etc/passwd", s3.join("aliases/data.json")).unwrap();
    let err = fails(&mut snapshot(&s3, None));
    assert!(err.contains("symbolic link"), "{err}");
}

#[test]
fn list_download_and_delete_never_follow_a_link_in_the_snapshots_path() {
    let (dir, archive) = fixture();
    let snapshots = dir.path().join("snapshots");
    // Another directory with archives of its own, linked in as a "collection".
    let elsewhere = dir.path().join("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    let name = archive.file_name().unwrap().to_string_lossy().into_owned();
    fs::copy(&archive, elsewhere.join(&name)).unwrap();
    symlink(&elsewhere, snapshots.join("linked")).unwrap();
    // And an archive name that is a link to a file.
    fs::write(dir.path().join("precious"), b"keep").unwrap();
    symlink(
        dir.path().join("precious"),
        snapshots.join("products/evil.snapshot"),
    )
    .unwrap();

    let listed = ok(bin(dir.path()).args(["snapshot", "list", "-o", "json"]));
    assert!(
        !listed.contains("linked") && !listed.contains("evil"),
        "{listed}"
    );
    for key in [
        format!("linked/{name}"),
        "products/evil.snapshot".to_owned(),
    ] {
        let err = fails(bin(dir.path()).args(["snapshot", "delete", &key]));
        assert!(
            err.contains("symbolic link") || err.contains("not found"),
            "{err}"
        );
        let out = dir.path().join("copy");
        fails(
            bin(dir.path())
                .args(["snapshot", "download", &key, "-o"])
                .arg(&out),
        );
        assert!(!out.exists());
    }
    assert!(elsewhere.join(&name).is_file());
    assert_eq!(fs::read(dir.path().join("precious")).unwrap(), b"keep");
}

#[test]
fn movers_stay_inside_their_volume() {
    let (dir, archive) = fixture();
    let volume = dir.path().join("volume");
    let elsewhere = dir.path().join("elsewhere");
    make_storage(&elsewhere);
    fs::create_dir_all(&volume).unwrap();
    // The workload made its storage path a link out of the volume.
    symlink(&elsewhere, volume.join("qdrant")).unwrap();
    let storage = volume.join("qdrant/storage");
    let log = dir.path().join("termination-log");
    let mover = |args: &[&str]| {
        let mut cmd = bin(dir.path());
        cmd.env(
            "SNAPSHOT_OPERATOR__STORAGE__SNAPSHOTS_PATH",
            dir.path().join("snapshots"),
        )
        .arg("mover")
        .args(args)
        .arg("--termination-log")
        .arg(&log)
        .arg("--volume")
        .arg(&volume)
        .arg("--storage-path")
        .arg(&storage);
        as_nobody(cmd, dir.path())
    };
    let before = fingerprint(&elsewhere);
    let err = fails(&mut mover(&[
        "snapshot",
        "--node",
        "n",
        "--collection",
        "products",
    ]));
    assert!(err.contains("symbolic link"), "{err}");
    let location = format!("file://{}", archive.display());
    let err = fails(&mut mover(&[
        "restore",
        "--location",
        &location,
        "--priority",
        "snapshot",
        "--collection",
        "products",
    ]));
    assert!(
        err.contains("symbolic link") || err.contains("outside"),
        "{err}"
    );
    assert_eq!(fingerprint(&elsewhere), before);

    let escape = volume.join("../elsewhere");
    let err = fails(
        bin(dir.path())
            .args(["mover", "snapshot", "--node", "n", "--termination-log"])
            .arg(&log)
            .arg("--volume")
            .arg(&volume)
            .arg("--storage-path")
            .arg(&escape),
    );
    assert!(err.contains("not inside --volume"), "{err}");
}

#[test]
fn read_only_directories_restore_as_gnu_tar_extracts_them_and_leave_no_mess() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("ro.snapshot");
    fs::write(
        &archive,
        collection_archive(vec![
            RawEntry::dir("collections/products/ro/").mode(0o555),
            RawEntry::file("collections/products/ro/f", b"read only").mode(0o444),
            RawEntry::dir("collections/products/ro/deeper/").mode(0o500),
            RawEntry::file("collections/products/ro/deeper/g", b"g"),
            RawEntry::dir("collections/products/noexec/").mode(0o600),
            RawEntry::file("collections/products/noexec/h", b"h"),
            RawEntry::file("collections/products/top", b"top"),
        ]),
    )
    .unwrap();
    // The collection directory itself read-only too, as its last entry says.
    let reference = dir.path().join("gnu");
    gnu_extract(dir.path(), &archive, &reference);
    let want = subtree(&fingerprint(&reference), "collections/products");
    let arg = format!("{}:products", archive.display());
    let target = dir.path().join("target");
    let got = || subtree(&fingerprint(&target), "collections/products");

    // Into an absent collection, then over it (snapshot priority swaps, and removes the old
    // read-only tree), then again with the default: skipped.
    for priority in ["replica", "snapshot", "replica"] {
        ok(&mut restore_as_nobody(
            dir.path(),
            &target,
            &["--snapshot", &arg, "--priority", priority],
        ));
        assert_eq!(got(), want, "priority {priority}");
        assert!(
            !target.join(".snapshot-operator").exists(),
            "{priority} left its workspace"
        );
    }
    // Merging files into read-only directories cannot be done as this user: refused before
    // anything changes (as root it succeeds).
    let before = fingerprint(&target);
    let merged = run(&mut restore_as_nobody(
        dir.path(),
        &target,
        &["--snapshot", &arg, "--priority", "no_sync"],
    ));
    if is_root() {
        let err = String::from_utf8_lossy(&merged.stderr);
        assert!(err.contains("not writable"), "{err}");
        assert_eq!(fingerprint(&target), before);
    }
    // The volume still takes restores.
    let other = format!("{}:other", archive.display());
    ok(&mut restore_as_nobody(
        dir.path(),
        &target,
        &["--snapshot", &other],
    ));
    assert_eq!(subtree(&fingerprint(&target), "collections/other"), want);
    assert!(!target.join(".snapshot-operator").exists());
}

#[test]
fn an_archive_giving_a_path_twice_is_refused_every_time() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("target");
    make_collection(&target, "keep", "k");
    let before = fingerprint(&target);
    let cases = [
        (
            "file-twice",
            vec![
                RawEntry::file("collections/products/f", b"first"),
                RawEntry::file("collections/products/f", b"second"),
            ],
        ),
        (
            "file-then-dir",
            vec![
                RawEntry::file("collections/products/f", b"first"),
                RawEntry::dir("collections/products/f/"),
                RawEntry::file("collections/products/f/g", b"g"),
            ],
        ),
        (
            "large-then-small",
            vec![
                RawEntry::file("collections/products/f", &binary(1 << 20, "big")),
                RawEntry::file("collections/products/f", b"small"),
            ],
        ),
    ];
    for (case, entries) in cases {
        let archive = dir.path().join(format!("{case}.snapshot"));
        fs::write(&archive, collection_archive(entries)).unwrap();
        let arg = format!("{}:products", archive.display());
        for _ in 0..5 {
            let err = fails(&mut restore_as_nobody(
                dir.path(),
                &target,
                &["--snapshot", &arg],
            ));
            assert!(err.contains("given twice"), "{case}: {err}");
            assert_eq!(fingerprint(&target), before, "{case}");
        }
    }
    // A directory given twice is fine: its last entry's mode wins, as with GNU tar.
    let archive = dir.path().join("dir-twice.snapshot");
    fs::write(
        &archive,
        collection_archive(vec![
            RawEntry::dir("collections/products/d/").mode(0o755),
            RawEntry::file("collections/products/d/f", b"f"),
            RawEntry::dir("collections/products/d/").mode(0o750),
        ]),
    )
    .unwrap();
    let reference = dir.path().join("gnu");
    gnu_extract(dir.path(), &archive, &reference);
    ok(&mut restore_as_nobody(
        dir.path(),
        &target,
        &["--snapshot", &format!("{}:products", archive.display())],
    ));
    assert_eq!(
        subtree(&fingerprint(&target), "collections/products"),
        subtree(&fingerprint(&reference), "collections/products")
    );
}

/// A raw header block of type `flag` announcing `size` bytes.
fn header_block(path: &str, flag: u8, size: u64) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.as_gnu_mut().unwrap().name[..path.len()].copy_from_slice(path.as_bytes());
    h.set_entry_type(tar::EntryType::new(flag));
    h.set_mode(0o644);
    h.set_size(size);
    h.set_cksum();
    h.as_bytes().to_vec()
}

#[test]
fn huge_extension_headers_are_refused_before_they_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = collection_archive(vec![]);
    let manifest = &manifest[..manifest.len() - 1024];
    let target = dir.path().join("target");
    for (flag, after_manifest) in [(b'L', true), (b'x', true), (b'K', true), (b'L', false)] {
        // A 1 GiB extension header (its data a hole in the file: cheap to make).
        let archive = dir
            .path()
            .join(format!("huge-{}-{after_manifest}.snapshot", flag as char));
        let mut head = if after_manifest {
            manifest.to_vec()
        } else {
            Vec::new()
        };
        head.extend(header_block("././@LongLink", flag, 1 << 30));
        let file = fs::File::create(&archive).unwrap();
        (&file).write_all(&head).unwrap();
        file.set_len(head.len() as u64 + (1 << 30) + 4096).unwrap();
        let started = Instant::now();
        let (status, err, rss_kib) = if after_manifest {
            let arg = format!("{}:products", archive.display());
            run_measured(
                // Far less than the header announces: refused from its size field all
                // the same, before the bound on the archive's bytes comes into play.
                restore_as_nobody(dir.path(), &target, &["--snapshot", &arg])
                    .arg("--max-bytes")
                    .arg("1000000"),
            )
        } else {
            run_measured(bin(dir.path()).args(["snapshot", "upload"]).arg(&archive))
        };
        assert!(!status.success());
        assert!(err.contains("extension header"), "{err}");
        assert!(rss_kib < 100 << 10, "peak memory {rss_kib} KiB");
        assert!(started.elapsed() < Duration::from_secs(20));
        assert!(!target.exists());
    }
}

#[test]
fn data_after_the_end_marker_is_bounded() {
    let (dir, archive) = fixture();
    let good = fs::read(&archive).unwrap();
    let target = dir.path().join("target");
    let with = |tail: &[u8], name: &str| {
        let path = dir.path().join(name);
        let mut data = good.clone();
        data.extend_from_slice(tail);
        fs::write(&path, data).unwrap();
        format!("{}:products", path.display())
    };
    for (tail, name) in [
        (vec![0u8; 2 << 20], "padded"),
        (b"appended".to_vec(), "junk"),
    ] {
        let arg = with(&tail, name);
        let err = fails(&mut restore_as_nobody(
            dir.path(),
            &target,
            &["--snapshot", &arg],
        ));
        assert!(
            err.contains("follows the end-of-archive marker"),
            "{name}: {err}"
        );
        assert!(!target.exists());
    }
    // Record padding, as tar writers add, is fine.
    let arg = with(&[0u8; 9216], "record");
    ok(&mut restore_as_nobody(
        dir.path(),
        &target,
        &["--snapshot", &arg],
    ));
}

#[test]
fn leftovers_of_interrupted_puts_are_removed_at_the_next_start() {
    let (dir, archive) = fixture();
    let snapshots = dir.path().join("snapshots");
    let leftovers = [
        // A temp file of a put that died, old-style and new-style names.
        ".tmp/1-0.partial",
        ".tmp/.0123456789abcdef.partial",
        // A cross-filesystem copy next to its final name.
        "products/.products-n-2026-01-01-00-00-00.snapshot.partial",
        // A sidecar published just before a crash, without its archive.
        "products/products-n-2026-01-01-00-00-00.snapshot.checksum",
    ];
    for rel in leftovers {
        fs::write(snapshots.join(rel), b"x").unwrap();
    }
    let before = fs::read(&archive).unwrap();
    ok(bin(dir.path()).args(["snapshot", "list"]));
    for rel in leftovers {
        assert!(!snapshots.join(rel).exists(), "{rel} is still there");
    }
    assert_eq!(fs::read(&archive).unwrap(), before);
    let sidecar = format!("{}.checksum", archive.display());
    assert!(
        Path::new(&sidecar).is_file(),
        "a sidecar with its archive was removed"
    );
}

#[test]
fn temp_and_partial_files_are_never_reached_through_a_link() {
    let (dir, archive) = fixture();
    let snapshots = dir.path().join("snapshots");
    // A link planted as the temp path, pointing where other files end in `.partial`.
    let elsewhere = dir.path().join("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    fs::write(elsewhere.join(".precious.partial"), b"keep").unwrap();
    fs::remove_dir_all(snapshots.join(".tmp")).unwrap();
    symlink(&elsewhere, snapshots.join(".tmp")).unwrap();
    for args in [
        &["snapshot", "list"][..],
        &["snapshot", "prune", "--keep-last", "1"],
    ] {
        let err = fails(bin(dir.path()).args(args));
        assert!(err.contains("symbolic link"), "{args:?}: {err}");
        assert_eq!(
            fs::read(elsewhere.join(".precious.partial")).unwrap(),
            b"keep"
        );
    }
    fs::remove_file(snapshots.join(".tmp")).unwrap();

    // A link planted where a download's partial file used to be named: never followed,
    // the file it points to untouched; the download lands where it was asked to.
    let out = dir.path().join("out");
    fs::create_dir_all(&out).unwrap();
    let name = archive.file_name().unwrap().to_string_lossy().into_owned();
    fs::write(dir.path().join("precious"), b"keep").unwrap();
    symlink(
        dir.path().join("precious"),
        out.join(format!(".{name}.partial")),
    )
    .unwrap();
    ok(bin(dir.path())
        .args(["snapshot", "download", &name, "-o"])
        .arg(out.join(&name)));
    assert_eq!(fs::read(dir.path().join("precious")).unwrap(), b"keep");
    assert_eq!(
        fs::read(out.join(&name)).unwrap(),
        fs::read(&archive).unwrap()
    );
    let left: Vec<_> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        left.len(),
        2,
        "the download and the planted link only: {left:?}"
    );
}

#[test]
fn checksum_files_are_never_deleted_alone_nor_uploaded_when_not_checksums() {
    let (dir, archive) = fixture();
    let name = archive.file_name().unwrap().to_string_lossy().into_owned();
    let sidecar = format!("{}.checksum", archive.display());
    for key in [
        format!("products/{name}.checksum"),
        format!("{name}.checksum"),
    ] {
        let err = fails(bin(dir.path()).args(["snapshot", "delete", &key]));
        assert!(
            err.contains("not an archive name") || err.contains("not found"),
            "{err}"
        );
        assert!(archive.is_file() && Path::new(&sidecar).is_file(), "{key}");
    }
    // An archive elsewhere whose sidecar is not a checksum: the upload fails, nothing
    // stored, rather than a fresh checksum taken for the given one.
    let other = dir.path().join("other");
    fs::create_dir_all(&other).unwrap();
    let copy = other.join(name.replace("products-", "products-copy-"));
    fs::copy(&archive, &copy).unwrap();
    let mut junk = b"\0\xff binary junk".to_vec();
    junk.extend_from_slice(&fs::read(&sidecar).unwrap());
    fs::write(format!("{}.checksum", copy.display()), &junk).unwrap();
    let before = ok(bin(dir.path()).args(["snapshot", "list", "-o", "json"]));
    let err = fails(bin(dir.path()).args(["snapshot", "upload"]).arg(&copy));
    assert!(err.contains("is not a checksum file"), "{err}");
    assert_eq!(
        ok(bin(dir.path()).args(["snapshot", "list", "-o", "json"])),
        before
    );
    // Restores from it refuse it too.
    let target = dir.path().join("target");
    let arg = format!("{}:products", copy.display());
    let err = fails(&mut restore_as_nobody(
        dir.path(),
        &target,
        &["--snapshot", &arg],
    ));
    assert!(err.contains("is not a checksum file"), "{err}");
    assert!(!target.exists());
}

/// A tar without its end marker (as the tar crate writes the tars inside Qdrant's
/// snapshots).
fn unterminated(entries: &[RawEntry]) -> Vec<u8> {
    let mut tar = raw_tar(entries);
    tar.truncate(tar.len() - 1024);
    tar
}

/// A Qdrant shard snapshot whose segment `s1` is the tar `segment` (and a WAL file).
fn shard_snapshot(segment: Vec<u8>) -> Vec<u8> {
    raw_tar(&[
        RawEntry::file("segments/s1.tar", &segment),
        RawEntry::file("wal/open-1", b"wal"),
        RawEntry::file("shard_config.json", br#"{"type":"ReplicaSet"}"#),
    ])
}

#[test]
fn hostile_tars_inside_qdrant_snapshots_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("target");
    make_collection(&target, "keep", "k");
    let outside = dir.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    let before = (fingerprint(&target), fingerprint(&outside));
    let file = |p: &str| RawEntry::file(p, b"data");
    let mut huge_name = header_block("././@LongLink", b'L', 1 << 30);
    huge_name.resize(huge_name.len() + 4096, b'a');
    let mut long_entry = unterminated(&[file("snapshot/files/a")]);
    // Its header says 1 MiB of data; the outer entry holds 4 bytes of it.
    long_entry.truncate(512);
    let mut h = tar::Header::from_byte_slice(&long_entry).clone();
    h.set_size(1 << 20);
    h.set_cksum();
    long_entry = h.as_bytes().to_vec();
    long_entry.extend_from_slice(b"data");
    let mut junk_after = raw_tar(&[file("snapshot/files/a")]);
    junk_after.extend_from_slice(b"junk");
    let cases: Vec<(&str, Vec<u8>, Vec<&str>, &str)> = vec![
        (
            "dotdot",
            shard_snapshot(unterminated(&[file("snapshot/files/../../../outside/x")])),
            vec![],
            "a path with `..`",
        ),
        (
            "absolute",
            shard_snapshot(unterminated(&[file("/tmp/evil")])),
            vec![],
            "an absolute path",
        ),
        (
            "symlink",
            shard_snapshot(unterminated(&[RawEntry::special(
                "snapshot/files/l",
                tar::EntryType::Symlink,
                "/etc",
            )])),
            vec![],
            "a symbolic link",
        ),
        (
            "hardlink",
            shard_snapshot(unterminated(&[RawEntry::special(
                "snapshot/files/h",
                tar::EntryType::Link,
                "/etc/passwd",
            )])),
            vec![],
            "a hard link",
        ),
        (
            "device",
            shard_snapshot(unterminated(&[RawEntry::special(
                "snapshot/files/c",
                tar::EntryType::Char,
                "",
            )])),
            vec![],
            "a character device",
        ),
        (
            "extension",
            shard_snapshot(huge_name),
            vec![],
            "extension header",
        ),
        (
            "past-its-end",
            shard_snapshot(long_entry),
            vec![],
            "truncated",
        ),
        (
            "junk",
            shard_snapshot(junk_after),
            vec![],
            "data follows the end-of-archive marker",
        ),
        (
            "twice",
            shard_snapshot(unterminated(&[
                file("snapshot/files/x"),
                file("snapshot/x"),
            ])),
            vec![],
            "given twice",
        ),
        (
            "entries",
            shard_snapshot(unterminated(
                &(0..20)
                    .map(|i| file(&format!("snapshot/files/f{i}")))
                    .collect::<Vec<_>>(),
            )),
            vec!["--max-entries", "10"],
            "more than 10 entries",
        ),
        (
            "not-local",
            raw_tar(&[
                RawEntry::file(
                    "segments/s1.tar",
                    &unterminated(&[file("snapshot/files/a")]),
                ),
                RawEntry::file(
                    "replica_state.json",
                    br#"{"is_local":false,"this_peer_id":1,"peers":{"2":"Active"}}"#,
                ),
            ]),
            vec![],
            "holds no data of",
        ),
    ];
    for (case, bytes, extra, message) in &cases {
        let path = dir.path().join(format!("nested-{case}.snapshot"));
        fs::write(&path, bytes).unwrap();
        let arg = format!("{}:products", path.display());
        let mut args = vec!["--snapshot", &arg, "--priority", "snapshot"];
        args.extend(extra.iter());
        let err = fails(&mut restore_as_nobody(dir.path(), &target, &args));
        assert!(err.contains(message), "{case}: {err}");
        assert_eq!(
            (fingerprint(&target), fingerprint(&outside)),
            before,
            "{case} changed something"
        );
        assert!(!Path::new("/tmp/evil").exists());
        let left: Vec<_> = fs::read_dir(target.join(".snapshot-operator"))
            .map(|d| d.map(|e| e.unwrap().file_name()).collect())
            .unwrap_or_default();
        assert!(left.iter().all(|n| n == "lock"), "{case} left {left:?}");
    }
    // Deeper than 256 once unpacked: a path the tar inside says is shallow enough.
    let deep_nested = {
        let mut parts = vec!["snapshot/files".to_owned()];
        parts.extend((0..252).map(|i| format!("{}", i % 10)));
        let path = parts.join("/");
        let mut entry = Vec::new();
        let mut long = tar::Header::new_gnu();
        long.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
        long.set_entry_type(tar::EntryType::GNULongName);
        long.set_size(path.len() as u64 + 1);
        long.set_cksum();
        entry.extend_from_slice(long.as_bytes());
        entry.extend_from_slice(path.as_bytes());
        entry.push(0);
        entry.resize(entry.len().div_ceil(512) * 512, 0);
        entry.extend(header_block("x", b'0', 1));
        entry.extend_from_slice(b"x");
        entry.resize(entry.len().div_ceil(512) * 512, 0);
        entry
    };
    let path = dir.path().join("nested-deeper.snapshot");
    fs::write(&path, shard_snapshot(deep_nested)).unwrap();
    let arg = format!("{}:products", path.display());
    let err = fails(&mut restore_as_nobody(
        dir.path(),
        &target,
        &["--snapshot", &arg],
    ));
    assert!(err.contains("deeper than 256"), "{err}");
    assert_eq!((fingerprint(&target), fingerprint(&outside)), before);

    // Full snapshots whose config names what is not there, or names that are not names.
    let collection = raw_tar(&[
        RawEntry::file("config.json", b"{}"),
        RawEntry::file(
            "0/segments/s1.tar",
            &unterminated(&[file("snapshot/files/a")]),
        ),
    ]);
    for (case, config, message) in [
        (
            "missing",
            r#"{"collections_mapping":{"a":"gone.snapshot"}}"#,
            "missing",
        ),
        (
            "escape",
            r#"{"collections_mapping":{"a":"../a.snapshot"}}"#,
            "single path component",
        ),
        (
            "bad-name",
            r#"{"collections_mapping":{"..":"a.snapshot"}}"#,
            "is `.` or `..`",
        ),
        (
            "bad-alias",
            r#"{"collections_mapping":{"a":"a.snapshot"},"collections_aliases":{"x/y":"a"}}"#,
            "contains '/'",
        ),
    ] {
        let full = raw_tar(&[
            RawEntry::file("a.snapshot", &collection),
            RawEntry::file("config.json", config.as_bytes()),
        ]);
        let path = dir.path().join(format!("full-{case}.snapshot"));
        fs::write(&path, full).unwrap();
        let mut args = vec!["--storage-snapshot".to_owned(), path.display().to_string()];
        args.extend(["--priority".into(), "snapshot".into()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let err = fails(&mut restore_as_nobody(dir.path(), &target, &args));
        assert!(err.contains(message), "{case}: {err}");
        assert_eq!(
            (fingerprint(&target), fingerprint(&outside)),
            before,
            "{case}"
        );
    }
}
