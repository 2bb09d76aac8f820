//! Limits that count what they claim, against the binary: every byte read from the source
//! counts against `--max-bytes` (headers, padding and entries not restored included, from a
//! file or an endless http stream); sparse files are bounded by their holes and by the disk
//! they take; checksum files are read no further than a checksum is long (S3 listings
//! too); the download deadline covers redirects and headers. Each refusal leaves nothing.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::*;

/// The start of a `products` collection archive (manifest and collection directory), no
/// end marker.
fn head_of_archive() -> Vec<u8> {
    let manifest = manifest_json(Some("products"), &["products"], 1);
    let mut out = raw_tar(&[
        RawEntry::file("snapshot.json", &manifest),
        RawEntry::dir("collections/products/"),
    ]);
    out.truncate(out.len() - 1024);
    out
}

/// An HTTP server answering every request with `start`, then `more(i)` for i = 0, 1, ...
/// for as long as the client reads; counts the bytes it sent.
fn endless(start: Vec<u8>, more: fn(u64) -> Vec<u8>) -> (String, Arc<AtomicU64>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/endless.snapshot", listener.local_addr().unwrap());
    let sent = Arc::new(AtomicU64::new(0));
    let count = sent.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let (start, count) = (start.clone(), count.clone());
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                    line.clear();
                }
                let head = "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n";
                let _ = stream.write_all(head.as_bytes());
                let mut send = |bytes: &[u8]| {
                    count.fetch_add(bytes.len() as u64, Ordering::SeqCst);
                    stream.write_all(bytes).is_ok()
                };
                if !send(&start) {
                    return;
                }
                for i in 0.. {
                    if !send(&more(i)) {
                        return;
                    }
                }
            });
        }
    });
    (url, sent)
}

/// A restore of `location` into `target` as nobody, with `args`; its error.
fn refused(dir: &Path, target: &Path, location: &str, args: &[&str]) -> String {
    let snapshot = format!("{location}:products");
    let mut all = vec!["--snapshot", &snapshot];
    all.extend(args);
    fails(&mut restore_as_nobody(dir, target, &all))
}

/// A 1 KiB file entry of another collection: read past, never restored.
fn other_entry(i: u64) -> Vec<u8> {
    let mut entry = raw_tar(&[RawEntry::file(
        &format!("collections/other/f{i}"),
        &[1; 1024],
    )]);
    entry.truncate(entry.len() - 1024);
    entry
}

/// An empty extension block that says another follows.
fn empty_extension(_: u64) -> Vec<u8> {
    let mut ext = tar::GnuExtSparseHeader::new();
    ext.set_is_extended(true);
    ext.as_bytes().to_vec()
}

#[test]
fn every_byte_read_counts_against_max_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("target");

    // An endless stream of entries the restore does not take: the bound stops it, not the
    // deadline; little more than the bound is read (a few chunks read ahead, socket buffers).
    let (url, sent) = endless(head_of_archive(), other_entry);
    let err = refused(dir.path(), &target, &url, &["--max-bytes", "3000000"]);
    assert!(err.contains("holds more than 3000000 bytes"), "{err}");
    let sent = sent.load(Ordering::SeqCst);
    assert!(sent < 3_000_000 + (16 << 20), "{sent} bytes sent");
    assert!(!target.exists());

    // An entry declaring 1 TiB that is not restored (its data a hole in the file: cheap):
    // refused from its header, not read through.
    let mut archive = head_of_archive();
    let mut big = tar::Header::new_gnu();
    big.as_gnu_mut().unwrap().name[..21].copy_from_slice(b"collections/other/big");
    big.set_size(1 << 40);
    big.set_mode(0o644);
    big.set_cksum();
    archive.extend_from_slice(big.as_bytes());
    let path = dir.path().join("declared.snapshot");
    let file = fs::File::create(&path).unwrap();
    (&file).write_all(&archive).unwrap();
    file.set_len(4 << 30).unwrap();
    let started = std::time::Instant::now();
    let err = refused(
        dir.path(),
        &target,
        &path.display().to_string(),
        &["--max-bytes", "1000000"],
    );
    assert!(err.contains("holds more than 1000000 bytes"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(!target.exists());

    // A directory entry with "data" is no directory.
    let mut archive = head_of_archive();
    let mut d = tar::Header::new_gnu();
    d.as_gnu_mut().unwrap().name[..23].copy_from_slice(b"collections/products/d/");
    d.set_entry_type(tar::EntryType::Directory);
    d.set_size(512);
    d.set_mode(0o755);
    d.set_cksum();
    archive.extend_from_slice(d.as_bytes());
    archive.extend_from_slice(&[0; 512 + 1024]);
    fs::write(&path, &archive).unwrap();
    let err = refused(dir.path(), &target, &path.display().to_string(), &[]);
    assert!(err.contains("a directory with data"), "{err}");

    // An endless chain of empty sparse extension blocks: refused once it is longer than any
    // map needs, under the default limits.
    let mut start = head_of_archive();
    start.extend(sparse_header("collections/products/s", &[], 1 << 20, 0));
    // The header says an extension block follows.
    let at = start.len() - 512;
    start[at + 482] = 1;
    let mut h = tar::Header::from_byte_slice(&start[at..]).clone();
    h.set_cksum();
    start[at..].copy_from_slice(h.as_bytes());
    let (url, sent) = endless(start, empty_extension);
    let err = refused(dir.path(), &target, &url, &[]);
    assert!(
        err.contains("more extension blocks than any sparse map needs"),
        "{err}"
    );
    assert!(sent.load(Ordering::SeqCst) < 32 << 20);
    assert!(!target.exists());
}

/// A collection archive of `files` sparse files, each of `regions` 1-byte regions `stride`
/// bytes apart in a file of `real_size` bytes.
fn sparse_files(files: u64, regions: u64, stride: u64, real_size: u64) -> Vec<u8> {
    let mut out = head_of_archive();
    for f in 0..files {
        let map: Vec<(u64, u64)> = (0..regions).map(|i| (i * stride, 1)).collect();
        out.extend(sparse_header(
            &format!("collections/products/s{f}"),
            &map,
            real_size,
            regions,
        ));
        out.resize(out.len() + regions as usize, 9);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0; 1024]);
    out
}

#[test]
fn sparse_files_are_bounded_by_their_holes_and_their_disk() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("target");
    make_collection(&target, "keep", "k");
    let before = fingerprint(&target);
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        fs::write(&path, bytes).unwrap();
        path.display().to_string()
    };

    // 3.5 KiB for an 8 TiB file: more holes than the default bound (1 TiB).
    let huge = write("huge.snapshot", &sparse_files(1, 1, 4096, 8 << 40));
    assert!(fs::metadata(&huge).unwrap().len() < 4096);
    let err = refused(dir.path(), &target, &huge, &[]);
    assert!(
        err.contains("more than 1099511627776 bytes of holes"),
        "{err}"
    );
    assert_eq!(fingerprint(&target), before);
    // Allowed, it restores, and takes no disk.
    let (arg, max) = (format!("{huge}:products"), (16u64 << 40).to_string());
    let args = ["--snapshot", &arg, "--max-hole-bytes", &max];
    ok(&mut restore_as_nobody(dir.path(), &target, &args));
    let restored = target.join("collections/products/s0");
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(&restored).unwrap();
    assert_eq!(meta.len(), 8 << 40);
    assert!(meta.blocks() * 512 <= 64 << 10);
    fs::remove_dir_all(target.join("collections/products")).unwrap();

    // 1-byte regions a block apart: 8 files of 60 000 regions are a 12 MB archive that
    // would take 1.9 GiB of disk (161 times as much).
    let spread = write(
        "spread.snapshot",
        &sparse_files(8, 60_000, 4096, 60_000 * 4096),
    );
    let size = fs::metadata(&spread).unwrap().len();
    assert!(size < 13 << 20, "{size}");
    let err = refused(
        dir.path(),
        &target,
        &spread,
        &["--max-disk-bytes", "200000000"],
    );
    assert!(
        err.contains("more than 200000000 bytes of disk (--max-disk-bytes)"),
        "{err}"
    );
    assert_eq!(fingerprint(&target), before);

    // By default the bound is the space free where the restore writes: a 64 MiB volume.
    if !is_root() {
        eprintln!("skipping the default disk bound: mounting a small volume needs root");
        return;
    }
    let volume = dir.path().join("volume");
    fs::create_dir_all(&volume).unwrap();
    ok(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64m,mode=0777", "tmpfs"])
        .arg(&volume));
    let err = refused(dir.path(), &volume.join("storage"), &spread, &[]);
    let _ = Command::new("umount").arg(&volume).status();
    assert!(
        err.contains("the space free on the target's filesystem"),
        "{err}"
    );
}

#[test]
fn the_download_deadline_covers_redirects_and_headers() {
    let dir = tempfile::tempdir().unwrap();
    // Ten redirects, each answered after 2.5 s: 25 s before the first byte of the body.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request = String::new();
                reader.read_line(&mut request).unwrap_or(0);
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                    line.clear();
                }
                let hop: u32 = request
                    .split_whitespace()
                    .nth(1)
                    .and_then(|p| p.strip_prefix("/hop/"))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                std::thread::sleep(Duration::from_millis(2500));
                let _ = write!(
                    stream,
                    "HTTP/1.1 302 Found\r\nlocation: /hop/{}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    hop + 1
                );
            });
        }
    });
    let target = dir.path().join("target");
    let started = std::time::Instant::now();
    let err = refused(
        dir.path(),
        &target,
        &format!("{base}/hop/0"),
        &["--download-deadline", "8"],
    );
    assert!(
        err.contains("did not finish within 8s (--download-deadline; redirects and response headers count too)"),
        "{err}"
    );
    // It gave up at the deadline, not after the redirects (25 s) or the redirect limit.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert!(!target.exists());
}

#[test]
fn checksum_files_are_read_no_further_than_a_checksum_is_long() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("storage");
    make_collection(&src, "products", "p");
    let created = create(dir.path(), &src, Some("products"));
    let archive = dir.path().join(archive_path(&created));
    let sidecar = format!("{}.checksum", archive.display());
    let good = fs::read_to_string(&sidecar).unwrap();
    // A 100 MB "checksum" (a hole: cheap) locally: not a checksum, and not read through.
    let file = fs::OpenOptions::new().write(true).open(&sidecar).unwrap();
    file.set_len(100 << 20).unwrap();
    let (status, err, rss_kib) =
        run_measured(bin(dir.path()).args(["snapshot", "list", "-o", "json"]));
    assert!(status.success(), "{err}");
    assert!(rss_kib < 64 << 10, "{rss_kib} KiB");
    let target = dir.path().join("target");
    let err = refused(dir.path(), &target, &archive.display().to_string(), &[]);
    assert!(err.contains("is not a checksum file"), "{err}");
    assert!(!target.exists());
    fs::write(&sidecar, &good).unwrap();

    // On S3: a listing reads a few hundred bytes of each sidecar, whatever its size.
    let Some(env) = s3_env() else { return };
    let prefix = unique_prefix("bounds");
    let mut upload = bin(dir.path());
    env.apply(&mut upload, &prefix);
    ok(upload.args(["snapshot", "upload"]).arg(&archive));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let name = created["name"].as_str().unwrap();
    runtime.block_on(async {
        let s3 =
            snapshot_operator::storage::s3::S3Storage::connect(&env.config(), format!("{prefix}/"))
                .await
                .unwrap();
        let mut big = good.trim().as_bytes().to_vec();
        big.resize(100 << 20, b' ');
        s3.put_object(&format!("products/{name}.checksum"), big.into())
            .await
            .unwrap();
    });
    let proxy = fault_proxy(&env.endpoint, 0);
    let mut list = bin(dir.path());
    env.apply(&mut list, &prefix);
    list.env(
        "SNAPSHOT_OPERATOR__STORAGE__SNAPSHOTS_CONFIG__S3_CONFIG__ENDPOINT_URL",
        &proxy.endpoint,
    );
    let listed: serde_json::Value =
        serde_json::from_str(&ok(list.args(["snapshot", "list", "-o", "json"]))).unwrap();
    assert_eq!(listed[0]["name"], name);
    assert!(listed[0].get("checksum").is_none(), "{listed}");
    let answered = proxy.answered.load(Ordering::SeqCst);
    assert!(answered < 1 << 20, "{answered} bytes answered");
}
