//! Every limit of the archive format, defined once: the writer ([`super::archive`]) and the
//! reader ([`super::untar`], [`super::restore`]) use the same constants and the same checks,
//! so that whatever `snapshot create` writes, a restore reads; and the bounds a restore puts
//! on an untrusted archive ([`Limits`]).

/// The tar block size.
pub const BLOCK: u64 = 512;
/// Largest extension header (GNU long name or link, PAX record set) read into memory, and so
/// the longest path an archive may hold (with its terminating NUL).
pub const MAX_EXTENSION: u64 = 64 << 10;
/// Most extension headers in a row (before one entry).
pub const MAX_EXTENSIONS: usize = 8;
/// Most bytes after the end-of-archive marker, which must all be zero.
pub const MAX_TRAILER: u64 = 1 << 20;
/// Most data regions of a sparse file. A file with more is written with neighbouring
/// regions merged (its smallest holes written as zeros) until it has this many.
pub const MAX_SPARSE_REGIONS: usize = 1 << 16;
/// Most entries in a sparse map: its data regions, and an empty last one marking the size
/// of a file that ends in a hole (as GNU tar writes it).
pub const MAX_SPARSE_ENTRIES: usize = MAX_SPARSE_REGIONS + 1;
/// Sparse map entries in a GNU header, and in each extension block after it.
pub const SPARSE_IN_HEADER: usize = 4;
pub const SPARSE_IN_EXTENSION: usize = 21;
/// Most extension blocks after a sparse header: enough for [`MAX_SPARSE_ENTRIES`].
pub const MAX_SPARSE_EXTENSIONS: usize =
    (MAX_SPARSE_ENTRIES - SPARSE_IN_HEADER).div_ceil(SPARSE_IN_EXTENSION);
/// Deepest path in an archive (components); every level holds a descriptor open.
pub const MAX_DEPTH: usize = 256;
/// Largest manifest (`snapshot.json`) written or read.
pub const MAX_MANIFEST_BYTES: u64 = 16 << 20;
/// The block size disk use is counted in: a file's data takes whole blocks of this size.
pub const DISK_BLOCK: u64 = 4096;

/// The components of an archive path, refusing anything that could leave the target or
/// that the reader does not take: absolute paths, `..`, empty paths, paths into the restore
/// workspace, paths deeper than [`MAX_DEPTH`] and paths longer than a long-name extension
/// holds. The writer checks every path it writes with it.
pub fn path_components(raw: &[u8]) -> Result<Vec<&[u8]>, &'static str> {
    if raw.first() == Some(&b'/') {
        return Err("an absolute path");
    }
    if raw.len() as u64 >= MAX_EXTENSION {
        return Err("a path longer than 65535 bytes");
    }
    let mut parts = Vec::new();
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err("a path with `..`"),
            p => parts.push(p),
        }
    }
    if parts.len() > MAX_DEPTH {
        return Err("a path deeper than 256 directories");
    }
    match parts.first() {
        None => Err("an empty path"),
        Some(first) if *first == super::WORKSPACE_DIR.as_bytes() => {
            Err("inside the reserved workspace")
        }
        Some(_) => Ok(parts),
    }
}

/// The sparse map written for a file of `size` bytes with data `regions` (in order, not
/// overlapping, at most [`MAX_SPARSE_REGIONS`]): the regions, and an empty last one at the
/// size when the file ends in a hole. At most [`MAX_SPARSE_ENTRIES`] entries.
pub fn sparse_map(regions: &[(u64, u64)], size: u64) -> Vec<(u64, u64)> {
    debug_assert!(regions.len() <= MAX_SPARSE_REGIONS);
    let mut map = regions.to_vec();
    if map.last().is_none_or(|(at, len)| at + len < size) {
        map.push((size, 0));
    }
    map
}

/// `regions` merged into at most `max` regions: each run of neighbours becomes one region
/// from its first start to its last end (the holes inside it are then stored as zeros).
/// The smallest holes go first, so the most space stays a hole.
pub fn merge_regions(regions: &[(u64, u64)], max: usize) -> Vec<(u64, u64)> {
    if regions.len() <= max || max == 0 {
        return regions.to_vec();
    }
    // Keep the (max - 1) largest gaps as holes; fill the others.
    let mut gaps: Vec<(u64, usize)> = regions
        .windows(2)
        .enumerate()
        .map(|(i, w)| (w[1].0 - (w[0].0 + w[0].1), i))
        .collect();
    gaps.sort_by_key(|&(gap, i)| (std::cmp::Reverse(gap), i));
    let mut kept: Vec<usize> = gaps[..max - 1].iter().map(|&(_, i)| i).collect();
    kept.sort_unstable();
    let mut merged = Vec::with_capacity(max);
    let mut start = 0;
    for i in kept.into_iter().chain([regions.len() - 1]) {
        let (first, last) = (regions[start], regions[i]);
        merged.push((first.0, last.0 + last.1 - first.0));
        start = i + 1;
    }
    merged
}

/// Bytes of disk the data `regions` of a file take at most: each region rounded out to
/// whole [`DISK_BLOCK`]s, a block shared by two regions counted once.
pub fn disk_use(regions: &[(u64, u64)]) -> u64 {
    let mut blocks = 0u64;
    let mut last_end = None::<u64>;
    for &(at, len) in regions.iter().filter(|(_, len)| *len > 0) {
        let mut first = at / DISK_BLOCK;
        let end = (at + len).div_ceil(DISK_BLOCK);
        if last_end.is_some_and(|e| e > first) {
            first = last_end.unwrap_or(first);
        }
        blocks += end.saturating_sub(first);
        last_end = Some(end.max(last_end.unwrap_or(0)));
    }
    blocks.saturating_mul(DISK_BLOCK)
}

/// Bounds on an untrusted archive: what it may make a restore read, create and allocate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most entries (files and directories) an archive may hold.
    pub max_entries: u64,
    /// Most bytes read from the source (the whole archive: headers, padding and entries not
    /// restored included), and most bytes of files restored (their apparent sizes, holes
    /// included).
    pub max_bytes: u64,
    /// Most bytes of holes the restored files may have in all (their apparent size beyond
    /// the data stored, which `max_bytes` bounds).
    pub max_hole_bytes: u64,
    /// Most bytes of disk the restored files may take (their data in whole 4 KiB blocks);
    /// `None`: the space free on the target's filesystem when the restore starts.
    pub max_disk_bytes: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_entries: 100_000_000,
            max_bytes: 16 << 40,
            max_hole_bytes: 1 << 40,
            max_disk_bytes: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_refused_as_the_reader_refuses_them() {
        assert_eq!(
            path_components(b"collections/c/a").unwrap(),
            vec![&b"collections"[..], b"c", b"a"]
        );
        assert_eq!(path_components(b"./collections//c/").unwrap().len(), 2);
        for bad in [
            &b"/etc/passwd"[..],
            b"collections/../../x",
            b"..",
            b"./",
            b".snapshot-operator/lock",
        ] {
            assert!(path_components(bad).is_err(), "{bad:?}");
        }
        let deep = "d/".repeat(MAX_DEPTH);
        assert!(path_components(deep.as_bytes()).is_ok());
        assert!(path_components(format!("{deep}x").as_bytes()).is_err());
        let long = "a/".repeat(MAX_EXTENSION as usize / 2);
        assert!(
            path_components(&long.as_bytes()[1..]).is_err(),
            "deeper than allowed"
        );
        let long = "a".repeat(MAX_EXTENSION as usize - 1);
        assert!(path_components(long.as_bytes()).is_ok());
        assert!(path_components(format!("{long}b").as_bytes()).is_err());
    }

    #[test]
    fn a_sparse_map_at_the_limit_fits_its_extension_blocks() {
        let regions: Vec<(u64, u64)> = (0..MAX_SPARSE_REGIONS as u64)
            .map(|i| (i * 8192, 4096))
            .collect();
        let map = sparse_map(&regions, MAX_SPARSE_REGIONS as u64 * 8192 + 1);
        assert_eq!(map.len(), MAX_SPARSE_ENTRIES);
        let blocks = (map.len() - SPARSE_IN_HEADER).div_ceil(SPARSE_IN_EXTENSION);
        assert_eq!(blocks, MAX_SPARSE_EXTENSIONS);
        // Ending in data: no marker.
        assert_eq!(sparse_map(&[(0, 10), (4096, 10)], 4106).len(), 2);
    }

    #[test]
    fn merging_fills_the_smallest_holes_first() {
        let regions = [(0, 10), (20, 10), (1000, 10), (1015, 5), (5000, 1)];
        assert_eq!(merge_regions(&regions, 5), regions);
        assert_eq!(merge_regions(&regions, 3), [(0, 30), (1000, 20), (5000, 1)]);
        assert_eq!(merge_regions(&regions, 1), [(0, 5001)]);
        let many: Vec<(u64, u64)> = (0..100u64).map(|i| (i * 100, 1)).collect();
        let merged = merge_regions(&many, 7);
        assert_eq!(merged.len(), 7);
        assert_eq!(merged[0].0, 0);
        let last = merged.last().unwrap();
        assert_eq!(last.0 + last.1, 9901);
        // Every byte of data stays inside a region.
        for (at, len) in many {
            assert!(merged.iter().any(|(m, l)| *m <= at && at + len <= m + l));
        }
    }

    #[test]
    fn disk_use_counts_whole_blocks_once() {
        assert_eq!(disk_use(&[]), 0);
        assert_eq!(disk_use(&[(0, 1)]), 4096);
        assert_eq!(disk_use(&[(0, 4096)]), 4096);
        assert_eq!(disk_use(&[(4095, 2)]), 8192);
        // Two regions in one block: one block.
        assert_eq!(disk_use(&[(0, 1), (100, 1)]), 4096);
        // 1-byte regions a block apart: a block each.
        let spread: Vec<(u64, u64)> = (0..10u64).map(|i| (i * 4096, 1)).collect();
        assert_eq!(disk_use(&spread), 10 * 4096);
        assert_eq!(disk_use(&[(0, 0), (8192, 0)]), 0);
    }
}
