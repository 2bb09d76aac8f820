//! Whatever `snapshot create` writes, a restore reads back as it was: a property test over
//! random trees (sizes, holes at random places, long names, deep paths, empty files and
//! directories, files larger than 8 GiB), and the binary at and around every limit the
//! writer and the reader share (sparse regions, path depth and length).
//!
//! The property test runs `SNAPSHOT_OPERATOR_ROUNDTRIP_CASES` random trees (default 8) from
//! `SNAPSHOT_OPERATOR_ROUNDTRIP_SEED` (default fixed); a failure prints the seed and case
//! that made it. A longer run: `SNAPSHOT_OPERATOR_ROUNDTRIP_CASES=500 cargo test --test
//! roundtrip`.

mod common;

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, SeekFrom};
use snapshot_operator::engine::archive::{self, CreateSpec};
use snapshot_operator::engine::limits::{MAX_DEPTH, MAX_SPARSE_REGIONS};
use snapshot_operator::engine::manifest::Format;
use snapshot_operator::engine::restore::{self, Limits, Priority, RestoreSpec, Selection};
use snapshot_operator::safefs::Anchored;

use common::*;

/// A small deterministic generator (xorshift64*): the same seed, the same trees.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| (self.next() >> 56) as u8).collect()
    }
}

/// What a file holds: `size` bytes, holes but for `writes` (offset, data).
#[derive(Debug)]
struct Content {
    size: u64,
    writes: Vec<(u64, Vec<u8>)>,
}

/// A tree to make: directories and files by path components.
#[derive(Debug)]
enum Item {
    Dir(Vec<OsString>, u32),
    File(Vec<OsString>, u32, Content),
}

fn component(rng: &mut Rng) -> OsString {
    let len = match rng.below(10) {
        0 => 255,
        1 => 1 + rng.below(254) as usize,
        _ => 1 + rng.below(12) as usize,
    };
    // Any byte but NUL and '/': names need not be UTF-8.
    let name: Vec<u8> = (0..len)
        .map(|_| match rng.below(20) {
            0 => 0x80 + rng.below(0x80) as u8,
            1 => b' ' + rng.below(16) as u8,
            _ => b'a' + rng.below(26) as u8,
        })
        .map(|b| if b == b'/' { b'_' } else { b })
        .collect();
    match name.as_slice() {
        b"." | b".." => OsString::from("dot"),
        _ => OsString::from(OsStr::from_bytes(&name)),
    }
}

fn content(rng: &mut Rng) -> Content {
    const K: u64 = 4096;
    match rng.below(6) {
        0 => Content {
            size: 0,
            writes: vec![],
        },
        1 | 2 => {
            let size = if rng.chance(10) {
                (1 << 20) + rng.below(3 << 20)
            } else {
                rng.below(300_000)
            };
            Content {
                size,
                writes: vec![(0, rng.bytes(size as usize))],
            }
        }
        // Holes at random places: data written at any offset, of any length, the file
        // ending in a hole or in data; sometimes larger than 8 GiB (base-256 numbers).
        _ => {
            let size = if rng.chance(8) {
                (8 << 30) + rng.below(2 << 30)
            } else {
                rng.below(64 << 20) + 1
            };
            let mut writes = Vec::new();
            for _ in 0..rng.below(40) {
                let at = rng.below(size);
                let len = (1 + rng.below(3 * K)).min(size - at);
                writes.push((at, rng.bytes(len as usize)));
            }
            if rng.chance(30) {
                let len = (1 + rng.below(K)).min(size);
                writes.push((size - len, rng.bytes(len as usize)));
            }
            Content { size, writes }
        }
    }
}

fn mode(rng: &mut Rng, dir: bool) -> u32 {
    let modes: &[u32] = if dir {
        &[0o755, 0o700, 0o750, 0o555, 0o1777]
    } else {
        &[0o644, 0o600, 0o755, 0o444, 0o640]
    };
    modes[rng.below(modes.len() as u64) as usize]
}

/// Adds to `items` up to `entries` random directories (`dirs` in a hundred of them, their
/// modes from `dir_mode`) and files below the directory `base`, and in `deep` of a hundred
/// cases a chain of directories to a file as deep as an archive path may be.
fn random_subtree(
    rng: &mut Rng,
    items: &mut Vec<Item>,
    base: Vec<OsString>,
    (entries, dirs_percent, deep): (u64, u64, u64),
    dir_mode: fn(&mut Rng) -> u32,
) {
    let mut dirs = vec![base];
    for _ in 0..rng.below(entries) {
        let mut path = dirs[rng.below(dirs.len() as u64) as usize].clone();
        path.push(component(rng));
        if items
            .iter()
            .any(|i| matches!(i, Item::Dir(p, _) | Item::File(p, _, _) if *p == path))
        {
            continue;
        }
        if rng.chance(dirs_percent) {
            items.push(Item::Dir(path.clone(), dir_mode(rng)));
            dirs.push(path);
        } else {
            items.push(Item::File(path, mode(rng, false), content(rng)));
        }
    }
    if rng.chance(deep) {
        // The file itself the last component, at most MAX_DEPTH of them.
        let mut path = dirs.last().cloned().unwrap_or_default();
        let depth = MAX_DEPTH - rng.below(3) as usize;
        while path.len() < depth - 1 {
            path.push(OsString::from(format!("d{}", path.len())));
            items.push(Item::Dir(path.clone(), 0o755));
        }
        path.push(OsString::from("deepest"));
        items.push(Item::File(path, 0o644, content(rng)));
    }
}

/// A random storage directory: collections of nested directories and files, one of them
/// sometimes as deep as an archive path may be.
fn random_tree(rng: &mut Rng) -> Vec<Item> {
    let mut items = Vec::new();
    for c in 0..1 + rng.below(3) {
        let base = vec![
            OsString::from("collections"),
            OsString::from(format!("c{c}")),
        ];
        items.push(Item::Dir(base.clone(), mode(rng, true)));
        random_subtree(rng, &mut items, base, (30, 35, 25), |rng| mode(rng, true));
    }
    items
}

/// A random Qdrant storage directory: collections as the Qdrant server keeps them (a
/// `config.json`, shards with `shard_config.json`, segments of random content, a WAL),
/// some of their paths as deep as a restore takes.
fn random_qdrant_tree(rng: &mut Rng) -> Vec<Item> {
    let name = |s: &str| OsString::from(s);
    let mut items = Vec::new();
    for c in 0..1 + rng.below(3) {
        let base = vec![name("collections"), name(&format!("q{c}"))];
        items.push(Item::Dir(base.clone(), 0o755));
        let mut config = base.clone();
        config.push(name("config.json"));
        items.push(Item::File(
            config,
            0o644,
            Content {
                size: 2,
                writes: vec![(0, b"{}".to_vec())],
            },
        ));
        for shard in 0..1 + rng.below(2) {
            let mut shard_dir = base.clone();
            shard_dir.push(name(&shard.to_string()));
            items.push(Item::Dir(shard_dir.clone(), mode(rng, true) | 0o700));
            let mut file = shard_dir.clone();
            file.push(name("shard_config.json"));
            items.push(Item::File(
                file,
                0o644,
                Content {
                    size: 2,
                    writes: vec![(0, b"{}".to_vec())],
                },
            ));
            let mut wal = shard_dir.clone();
            wal.push(name("wal"));
            items.push(Item::Dir(wal.clone(), 0o755));
            wal.push(name("open-1"));
            items.push(Item::File(wal, 0o644, content(rng)));
            let mut segments = shard_dir.clone();
            segments.push(name("segments"));
            items.push(Item::Dir(segments.clone(), 0o755));
            for s in 0..rng.below(4) {
                let mut segment = segments.clone();
                segment.push(name(&format!("{:08x}-{s}", rng.next() as u32)));
                items.push(Item::Dir(segment.clone(), mode(rng, true) | 0o700));
                let dir_mode = |rng: &mut Rng| mode(rng, true) | 0o700;
                random_subtree(rng, &mut items, segment, (12, 30, 20), dir_mode);
            }
        }
    }
    items
}

/// Opens (creating when asked) the directory `parts` beneath `root`, one component at a
/// time: paths deeper than a syscall takes are made and read the way the engine does.
fn open_at(root: &OwnedFd, parts: &[OsString], create: bool) -> OwnedFd {
    let mut fd =
        rustix::fs::openat(root, ".", OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty()).unwrap();
    for part in parts {
        if create {
            match rustix::fs::mkdirat(&fd, part.as_os_str(), Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => panic!("mkdir {part:?}: {e}"),
            }
        }
        fd = rustix::fs::openat(
            &fd,
            part.as_os_str(),
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW,
            Mode::empty(),
        )
        .unwrap();
    }
    fd
}

fn make(root: &Path, items: &[Item]) {
    std::fs::create_dir_all(root).unwrap();
    let top = rustix::fs::open(root, OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty()).unwrap();
    for item in items {
        if let Item::File(path, mode, content) = item {
            let (name, parents) = path.split_last().unwrap();
            let dir = open_at(&top, parents, true);
            let fd = rustix::fs::openat(
                &dir,
                name.as_os_str(),
                OFlags::CREATE | OFlags::WRONLY | OFlags::EXCL,
                Mode::from_raw_mode(0o600),
            )
            .unwrap();
            let file = File::from(fd);
            file.set_len(content.size).unwrap();
            for (at, data) in &content.writes {
                file.write_all_at(data, *at).unwrap();
            }
            rustix::fs::fchmod(&file, Mode::from_raw_mode(*mode)).unwrap();
        } else if let Item::Dir(path, _) = item {
            open_at(&top, path, true);
        }
    }
    // Directory modes last, deepest first (a read-only one would refuse its content).
    let mut dirs: Vec<(&Vec<OsString>, u32)> = items
        .iter()
        .filter_map(|i| match i {
            Item::Dir(p, m) => Some((p, *m)),
            Item::File(..) => None,
        })
        .collect();
    dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    for (path, mode) in dirs {
        let dir = open_at(&top, path, false);
        rustix::fs::fchmod(&dir, Mode::from_raw_mode(mode)).unwrap();
    }
}

/// What a file or directory is, as compared: kind, mode, time (files), size, data regions
/// (from `SEEK_DATA`/`SEEK_HOLE`) and a digest of every byte.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Dir {
        mode: u32,
    },
    File {
        mode: u32,
        mtime: i64,
        size: u64,
        regions: Vec<(u64, u64)>,
        digest: String,
    },
}

fn regions_of(file: &File, size: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < size {
        let Ok(start) = rustix::fs::seek(file, SeekFrom::Data(pos)) else {
            break;
        };
        let end = rustix::fs::seek(file, SeekFrom::Hole(start))
            .unwrap()
            .min(size);
        out.push((start, end - start));
        pos = end;
    }
    out
}

/// A digest of every byte of a file, holes read as zeros, whatever its layout: of each
/// 4 KiB block of its data regions that is not all zero, its place and its bytes (a hole
/// and written zeros digest alike; holes themselves are compared by their regions).
fn digest_of(file: &File, size: u64, regions: &[(u64, u64)]) -> String {
    use sha2::Digest;
    const B: u64 = 4096;
    let mut hasher = sha2::Sha256::new();
    hasher.update(size.to_le_bytes());
    let mut buf = vec![0u8; B as usize];
    let mut next = 0u64;
    for &(at, len) in regions {
        for block in (at / B).max(next)..(at + len).div_ceil(B) {
            let want = (size - block * B).min(B) as usize;
            file.read_exact_at(&mut buf[..want], block * B).unwrap();
            if buf[..want].iter().any(|b| *b != 0) {
                hasher.update(block.to_le_bytes());
                hasher.update(&buf[..want]);
            }
            next = block + 1;
        }
    }
    snapshot_operator::engine::name::hex(&hasher.finalize())
}

/// Every entry below `root`, by path bytes.
fn seen(root: &Path) -> BTreeMap<Vec<u8>, Seen> {
    fn walk(dir: &OwnedFd, prefix: Vec<u8>, out: &mut BTreeMap<Vec<u8>, Seen>) {
        let mut entries = Vec::new();
        let mut list = rustix::fs::Dir::read_from(dir).unwrap();
        while let Some(entry) = list.read() {
            let name = entry.unwrap().file_name().to_bytes().to_vec();
            if name != b"." && name != b".." {
                entries.push(name);
            }
        }
        for name in entries {
            let st = rustix::fs::statat(dir, OsStr::from_bytes(&name), AtFlags::SYMLINK_NOFOLLOW)
                .unwrap();
            let mut path = prefix.clone();
            path.extend_from_slice(&name);
            let mode = st.st_mode & 0o7777;
            if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                out.insert(path.clone(), Seen::Dir { mode });
                let sub = rustix::fs::openat(
                    dir,
                    OsStr::from_bytes(&name),
                    OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW,
                    Mode::empty(),
                )
                .unwrap();
                path.push(b'/');
                walk(&sub, path, out);
            } else {
                let fd = rustix::fs::openat(
                    dir,
                    OsStr::from_bytes(&name),
                    OFlags::RDONLY | OFlags::NOFOLLOW,
                    Mode::empty(),
                )
                .unwrap();
                let file = File::from(fd);
                let meta = file.metadata().unwrap();
                let regions = regions_of(&file, meta.len());
                out.insert(
                    path,
                    Seen::File {
                        mode,
                        mtime: meta.mtime(),
                        size: meta.len(),
                        digest: digest_of(&file, meta.len(), &regions),
                        regions,
                    },
                );
            }
        }
    }
    let top = rustix::fs::open(root, OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty()).unwrap();
    let mut out = BTreeMap::new();
    walk(&top, Vec::new(), &mut out);
    out
}

/// Data regions as the engine stores them: out to 512-byte blocks (within the size).
fn as_stored(regions: &[(u64, u64)], size: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &(at, len) in regions {
        let (start, end) = (at / 512 * 512, (at + len).div_ceil(512) * 512);
        let end = end.min(size);
        match out.last_mut() {
            Some((a, l)) if *a + *l >= start => *l = end.max(*a + *l) - *a,
            _ => out.push((start, end - start)),
        }
    }
    out
}

/// Archives `storage` with the engine into `archive` in `format`, and restores it into
/// `target`.
fn round_trip(storage: &Path, archive: &Path, target: &Path, format: Format) -> Result<(), String> {
    let spec = CreateSpec {
        storage: Anchored::trusted(storage.to_owned()),
        collection: None,
        node: "n0".into(),
        created_at: jiff::Timestamp::now(),
        identity: None,
        exclude: Vec::new(),
        format: Some(format),
    };
    let manifest = archive::plan(&spec).map_err(|e| e.to_string())?;
    assert_eq!(manifest.format, format);
    let mut out = std::io::BufWriter::new(File::create(archive).unwrap());
    archive::write_archive(&spec, &manifest, &mut out, &|_| {}).map_err(|e| e.to_string())?;
    out.flush().unwrap();
    drop(out);
    let spec = RestoreSpec {
        storage: Anchored::trusted(target.to_owned()),
        selection: Selection::Full,
        priority: Some(Priority::Snapshot),
        checksum: None,
        limits: Limits::default(),
        shard: None,
        identities: Default::default(),
    };
    restore::restore(&spec, File::open(archive).unwrap(), &|_| {})
        .map(drop)
        .map_err(|e| format!("the restore refused what create wrote: {e}"))
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Random trees (`make` of what `generate` gives) archived in `format` and restored come
/// back byte for byte and hole for hole.
fn property(format: Format, generate: fn(&mut Rng) -> Vec<Item>) {
    let seed = env_u64("SNAPSHOT_OPERATOR_ROUNDTRIP_SEED", 0x5eed_2026_1202);
    let cases = env_u64("SNAPSHOT_OPERATOR_ROUNDTRIP_CASES", 8);
    for case in 0..cases {
        let mut rng = Rng(seed ^ (case + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let dir = tempfile::tempdir().unwrap();
        let (storage, target) = (dir.path().join("storage"), dir.path().join("target"));
        let items = generate(&mut rng);
        make(&storage, &items);
        let archive = dir.path().join("a.snapshot");
        if let Err(e) = round_trip(&storage, &archive, &target, format) {
            panic!("seed {seed:#x} case {case} ({format:?}): {e}");
        }
        let (before, after) = (seen(&storage), seen(&target));
        assert_eq!(
            before.keys().collect::<Vec<_>>(),
            after.keys().collect::<Vec<_>>(),
            "seed {seed:#x} case {case} ({format:?}): the same paths"
        );
        // Holes come back where they were: the data regions as stored (whole 512-byte
        // blocks), the same bytes everywhere.
        let stored = |seen: &Seen| match seen.clone() {
            Seen::File {
                mode,
                mtime,
                size,
                regions,
                digest,
            } => Seen::File {
                mode,
                mtime,
                size,
                regions: as_stored(&regions, size),
                digest,
            },
            dir => dir,
        };
        for (path, was) in &before {
            assert_eq!(
                stored(&after[path]),
                stored(was),
                "seed {seed:#x} case {case} ({format:?}): {}",
                String::from_utf8_lossy(path)
            );
        }
    }
}

#[test]
fn any_tree_the_engine_archives_restores_byte_for_byte_and_hole_for_hole() {
    property(Format::Files, random_tree);
}

#[test]
fn any_qdrant_storage_archived_in_qdrants_format_restores_byte_for_byte() {
    property(Format::Qdrant, random_qdrant_tree);
}

/// A file of `size` bytes holding a block of data every 8 KiB for `regions` blocks, the
/// last one at the end when `ends_in_data`.
fn striped(path: &Path, regions: u64, ends_in_data: bool) {
    let size = if ends_in_data {
        regions * 8192 - 4096
    } else {
        regions * 8192
    };
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = File::create(path).unwrap();
    file.set_len(size).unwrap();
    let block: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    for i in 0..regions {
        file.write_all_at(&block, i * 8192).unwrap();
    }
}

#[test]
fn files_at_and_around_the_region_limit_restore_with_the_binary_as_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("storage");
    let c = src.join("collections/products");
    let max = MAX_SPARSE_REGIONS as u64;
    // The limit with a trailing hole (the closing entry of the map makes it one more), the
    // limit ending in data, and one more than the limit.
    striped(&c.join("at-limit-hole"), max, false);
    striped(&c.join("at-limit-data"), max, true);
    striped(&c.join("over-limit"), max + 1, false);
    let created = create(dir.path(), &src, Some("products"));
    assert_eq!(created["content"]["sparse_files"], 3, "{created}");
    let archive = dir.path().join(archive_path(&created));
    let target = dir.path().join("target");
    let arg = format!("{}:products", archive.display());
    ok(&mut restore_as_nobody(
        dir.path(),
        &target,
        &["--snapshot", &arg],
    ));
    let (before, after) = (seen(&c), seen(&target.join("collections/products")));
    for name in ["at-limit-hole", "at-limit-data", "over-limit"] {
        let (
            Seen::File {
                size,
                regions,
                digest,
                ..
            },
            Seen::File {
                size: s2,
                regions: r2,
                digest: d2,
                ..
            },
        ) = (&before[name.as_bytes()], &after[name.as_bytes()])
        else {
            panic!("{name} is not a file");
        };
        assert_eq!((size, digest), (s2, d2), "{name}: the same bytes");
        if name == "over-limit" {
            // Its smallest holes were written as zeros: as many regions as a map holds.
            assert_eq!(r2.len(), MAX_SPARSE_REGIONS, "{name}");
        } else {
            assert_eq!(regions, r2, "{name}: hole for hole");
        }
    }
}

#[test]
fn paths_past_the_readers_limits_are_refused_at_create_not_at_restore() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("storage");
    let top = {
        std::fs::create_dir_all(&src).unwrap();
        rustix::fs::open(&src, OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty()).unwrap()
    };
    // collections/products/d.../file: exactly MAX_DEPTH components restores.
    let mut parts: Vec<OsString> = vec!["collections".into(), "products".into()];
    while parts.len() < MAX_DEPTH - 1 {
        parts.push(format!("d{}", parts.len()).into());
    }
    let deepest = open_at(&top, &parts, true);
    let fd = rustix::fs::openat(
        &deepest,
        "file",
        OFlags::CREATE | OFlags::WRONLY,
        Mode::from_raw_mode(0o644),
    )
    .unwrap();
    File::from(fd).write_all(b"at the limit").unwrap();
    let created = create(dir.path(), &src, Some("products"));
    let archive = dir.path().join(archive_path(&created));
    let target = dir.path().join("target");
    let arg = format!("{}:products", archive.display());
    ok(&mut restore_as_nobody(
        dir.path(),
        &target,
        &["--snapshot", &arg],
    ));
    assert_eq!(seen(&src).len(), seen(&target).len());

    // One level deeper: create refuses, naming the path, and stores nothing.
    rustix::fs::mkdirat(&deepest, "one-more", Mode::from_raw_mode(0o755)).unwrap();
    let more = open_at(&deepest, &["one-more".into()], false);
    rustix::fs::openat(
        &more,
        "x",
        OFlags::CREATE | OFlags::WRONLY,
        Mode::from_raw_mode(0o644),
    )
    .unwrap();
    let listed = |cwd: &Path| ok(bin(cwd).args(["snapshot", "list", "-o", "json"]));
    let before = listed(dir.path());
    let err = fails(&mut create_cmd(dir.path(), &src, Some("products")));
    assert!(
        err.contains("deeper than 256") && err.contains("no restore accepts"),
        "{err}"
    );
    assert_eq!(listed(dir.path()), before, "nothing stored");
    rustix::fs::unlinkat(&more, "x", AtFlags::empty()).unwrap();
    rustix::fs::unlinkat(&deepest, "one-more", AtFlags::REMOVEDIR).unwrap();

    // Long names: 255 directories of 255-byte names restore (65 280 bytes of path); at 256
    // the directory's path (65 536 bytes with its slash) is longer than a long-name header
    // holds, and create refuses it.
    let long = |i: usize| OsString::from(format!("{i:03}{}", "n".repeat(252)));
    let storage = dir.path().join("long");
    std::fs::create_dir_all(&storage).unwrap();
    let root =
        rustix::fs::open(&storage, OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty()).unwrap();
    let names: Vec<OsString> = (0..255).map(long).collect();
    let last = open_at(&root, &names, true);
    let fd = rustix::fs::openat(
        &last,
        "f",
        OFlags::CREATE | OFlags::WRONLY,
        Mode::from_raw_mode(0o644),
    )
    .unwrap();
    File::from(fd).write_all(b"long").unwrap();
    rustix::fs::unlinkat(&last, "f", AtFlags::empty()).unwrap();
    let created = create(dir.path(), &storage, None);
    let archive = dir.path().join(archive_path(&created));
    let target = dir.path().join("long-target");
    let arg = archive.display().to_string();
    ok(&mut restore_as_nobody(
        dir.path(),
        &target,
        &["--storage-snapshot", &arg],
    ));
    assert_eq!(seen(&storage), seen(&target));
    rustix::fs::mkdirat(&last, long(255).as_os_str(), Mode::from_raw_mode(0o755)).unwrap();
    let err = fails(&mut create_cmd(dir.path(), &storage, None));
    assert!(err.contains("longer than 65535 bytes"), "{err}");
}
