//! Files with holes (Qdrant preallocates its WAL and mmap'd storage): archived as GNU sparse
//! entries that GNU tar and the tar crate (Qdrant's own unpacker) read, restored with their
//! holes from a file, http and S3 in every priority; hostile sparse maps are refused; GNU
//! tar's own sparse archives restore too.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// Writes a file of `size` bytes that is a hole except for `chunks` (offset, data).
fn sparse_file(path: &Path, size: u64, chunks: &[(u64, Vec<u8>)]) {
    use std::os::unix::fs::FileExt;
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = fs::File::create(path).unwrap();
    file.set_len(size).unwrap();
    for (at, data) in chunks {
        file.write_all_at(data, *at).unwrap();
    }
}

/// A collection shaped like Qdrant's: a preallocated WAL segment, an mmap'd chunk with many
/// data regions (more than a header's map holds), a file ending in data, one all hole, and
/// dense files.
fn sparse_collection(storage: &Path, name: &str, salt: &str) {
    let c = storage.join("collections").join(name);
    sparse_file(
        &c.join("0/wal/open-1"),
        32 << 20,
        &[(0, binary(10_000, salt)), (5 << 20, binary(70_000, salt))],
    );
    let regions: Vec<(u64, Vec<u8>)> = (0..40)
        .map(|i| {
            (
                i * (256 << 10),
                binary(4096 + i as usize, &format!("{salt}{i}")),
            )
        })
        .collect();
    sparse_file(&c.join("0/segments/s/vectors.mmap"), 16 << 20, &regions);
    sparse_file(
        &c.join("0/segments/s/tail"),
        3 << 20,
        &[((3 << 20) - 100, vec![7; 100])],
    );
    sparse_file(&c.join("0/wal/open-2"), 32 << 20, &[]);
    write(
        &c.join("config.json"),
        format!("{{\"{salt}\":1}}").as_bytes(),
        0o644,
    );
    write(&c.join("0/segments/s/dense"), &binary(300_000, salt), 0o600);
}

/// Bytes the files under `path` take on disk (`du`).
fn disk_usage(path: &Path) -> u64 {
    let out = ok(Command::new("du").args(["-s", "--block-size=1"]).arg(path));
    out.split_whitespace().next().unwrap().parse().unwrap()
}

/// The files of `a` and `b` (under `collections/<name>`) hold the same bytes, and `b` takes
/// no more than 5% more disk than `a`.
fn assert_same_and_as_sparse(a: &Path, b: &Path) {
    assert_eq!(fingerprint(a), fingerprint(b));
    let (used_a, used_b) = (disk_usage(a), disk_usage(b));
    assert!(
        used_b <= used_a + used_a / 20,
        "{} takes {used_b} bytes on disk, {} only {used_a}",
        b.display(),
        a.display()
    );
}

fn created_archive(dir: &Path, created: &serde_json::Value) -> PathBuf {
    dir.join(archive_path(created))
}

#[test]
fn sparse_files_archive_and_restore_with_their_holes_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("storage");
    sparse_collection(&src, "products", "p");
    let coll = src.join("collections/products");
    let created = create(dir.path(), &src, Some("products"));
    assert_eq!(created["content"]["sparse_files"], 4, "{created}");
    let archive = created_archive(dir.path(), &created);
    let stored = disk_usage(&coll);
    let size = fs::metadata(&archive).unwrap().len();
    // The archive is the size of the data (with headers, maps and padding), not 83 MiB.
    assert!(
        size <= stored + stored / 20,
        "archive {size} bytes for {stored} of data"
    );

    // GNU tar lists the real sizes, and extracts the same bytes (with -S, the same holes).
    let listing = ok(Command::new("tar").arg("-tvf").arg(&archive));
    assert!(listing.contains(&(32u64 << 20).to_string()), "{listing}");
    for (flags, sparse) in [("-xSf", true), ("-xf", false)] {
        let out = dir.path().join(format!("gnu{flags}"));
        fs::create_dir_all(&out).unwrap();
        ok(Command::new("tar")
            .arg(flags)
            .arg(&archive)
            .arg("-C")
            .arg(&out));
        let extracted = out.join("collections/products");
        assert_eq!(fingerprint(&coll), fingerprint(&extracted), "tar {flags}");
        if sparse {
            assert_same_and_as_sparse(&coll, &extracted);
        }
    }
    // The tar crate (what Qdrant unpacks snapshots with) reads the same bytes.
    let out = dir.path().join("tar-crate");
    tar::Archive::new(fs::File::open(&archive).unwrap())
        .unpack(&out)
        .unwrap();
    assert_eq!(
        subtree(&fingerprint(&out.join("collections/products")), "0"),
        subtree(&fingerprint(&coll), "0")
    );

    // Our restore, as nobody: into an absent collection, then over it with each priority
    // that writes (snapshot swaps, no_sync writes over).
    let target = dir.path().join("target");
    let arg = format!("{}:products", archive.display());
    for priority in ["replica", "snapshot", "no_sync"] {
        let mut cmd = bin(dir.path());
        cmd.args(["restore", "--storage-path"]).arg(&target).args([
            "--snapshot",
            &arg,
            "--priority",
            priority,
        ]);
        ok(&mut as_nobody(cmd, dir.path()));
        assert_same_and_as_sparse(&coll, &target.join("collections/products"));
    }

    // From http: the same holes.
    let server = serve(fs::read(&archive).unwrap(), false);
    let from_http = dir.path().join("from-http");
    let mut cmd = bin(dir.path());
    cmd.args(["restore", "--storage-path"])
        .arg(&from_http)
        .args([
            "--snapshot",
            &format!("{}/good.snapshot:products", server.base),
        ]);
    ok(&mut as_nobody(cmd, dir.path()));
    assert_same_and_as_sparse(&coll, &from_http.join("collections/products"));

    // From S3.
    if let Some(env) = s3_env() {
        let (prefix, name) = env.upload(dir.path(), "sparse", &archive);
        let from_s3 = dir.path().join("from-s3");
        let mut cmd = bin(dir.path());
        env.apply(&mut cmd, &prefix);
        cmd.args(["restore", "--storage-path"])
            .arg(&from_s3)
            .args(["--snapshot", &format!("{name}:products")]);
        ok(&mut as_nobody(cmd, dir.path()));
        assert_same_and_as_sparse(&coll, &from_s3.join("collections/products"));
    }
}

#[test]
fn gnu_tars_own_sparse_archives_restore_with_their_holes() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("storage");
    sparse_collection(&src, "products", "g");
    fs::write(
        src.join("snapshot.json"),
        manifest_json(Some("products"), &["products"], 1),
    )
    .unwrap();
    let archive = dir.path().join("gnu.snapshot");
    ok(Command::new("tar")
        .args(["--format=gnu", "-cSf"])
        .arg(&archive)
        .arg("-C")
        .arg(&src)
        .args(["snapshot.json", "collections/products"]));
    let target = dir.path().join("target");
    let arg = format!("{}:products", archive.display());
    ok(&mut restore_as_nobody(
        dir.path(),
        &target,
        &["--snapshot", &arg],
    ));
    assert_same_and_as_sparse(
        &src.join("collections/products"),
        &target.join("collections/products"),
    );
}

/// A collection archive holding one GNU sparse entry with this map, real size and stored
/// data, written header by header.
fn sparse_archive(map: &[(u64, u64)], real_size: u64, stored: u64) -> Vec<u8> {
    let manifest = manifest_json(Some("products"), &["products"], 1);
    let mut out = raw_tar(&[
        RawEntry::file("snapshot.json", &manifest),
        RawEntry::dir("collections/products/"),
    ]);
    out.truncate(out.len() - 1024);
    out.extend(sparse_header(
        "collections/products/big",
        map,
        real_size,
        stored,
    ));
    out.resize(out.len() + stored as usize, 7);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out.extend_from_slice(&[0; 1024]);
    out
}

#[test]
fn hostile_sparse_maps_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("target");
    make_collection(&target, "keep", "k");
    let before = fingerprint(&target);
    let many: Vec<(u64, u64)> = (0..70_000u64).map(|i| (i * 1024, 512)).collect();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "past-the-end",
            sparse_archive(&[(0, 512), (1 << 20, 512)], 1 << 19, 1024),
            "past the file's size",
        ),
        (
            "overlapping",
            sparse_archive(&[(0, 1024), (512, 512)], 1 << 20, 1536),
            "out of order or overlapping",
        ),
        (
            "out-of-order",
            sparse_archive(&[(4096, 512), (0, 512)], 1 << 20, 1024),
            "out of order or overlapping",
        ),
        (
            "short",
            sparse_archive(&[(0, 512), (4096, 512)], 1 << 20, 512),
            "does not add up",
        ),
        (
            "huge",
            sparse_archive(&many, 1 << 30, 70_000 * 512),
            "too many regions",
        ),
        (
            "over-the-limit",
            sparse_archive(&[(0, 512)], 1 << 40, 512),
            "more than 1000000 bytes",
        ),
    ];
    for (case, bytes, message) in cases {
        let path = dir.path().join(format!("{case}.snapshot"));
        fs::File::create(&path).unwrap().write_all(&bytes).unwrap();
        // The map of 70 000 regions alone is 1.7 MB: the bound on the bytes read would
        // refuse it before its regions are counted.
        let max = if case == "huge" {
            "100000000"
        } else {
            "1000000"
        };
        let mut cmd = bin(dir.path());
        cmd.args(["restore", "--max-bytes", max, "--storage-path"])
            .arg(&target)
            .args(["--snapshot", &format!("{}:products", path.display())]);
        let err = fails(&mut as_nobody(cmd, dir.path()));
        assert!(err.contains(message), "{case}: {err}");
        assert_eq!(fingerprint(&target), before, "{case} changed the target");
    }
    // A well-formed map restores, its holes as holes.
    let path = dir.path().join("good.snapshot");
    fs::write(
        &path,
        sparse_archive(&[(0, 512), (1 << 20, 512)], 8 << 20, 1024),
    )
    .unwrap();
    let mut cmd = bin(dir.path());
    cmd.args(["restore", "--storage-path"])
        .arg(&target)
        .args(["--snapshot", &format!("{}:products", path.display())]);
    ok(&mut as_nobody(cmd, dir.path()));
    let big = target.join("collections/products/big");
    let meta = fs::metadata(&big).unwrap();
    assert_eq!(meta.len(), 8 << 20);
    assert!(meta.blocks() * 512 < 64 << 10, "{} blocks", meta.blocks());
    let data = fs::read(&big).unwrap();
    assert!(
        data[..512].iter().all(|b| *b == 7)
            && data[(1 << 20)..(1 << 20) + 512].iter().all(|b| *b == 7)
    );
    assert!(data[512..1 << 20].iter().all(|b| *b == 0));
}
