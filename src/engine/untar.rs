//! Reading untrusted tar archives: a streaming reader of ustar, GNU and PAX headers in which
//! every header is bounded before it is read into memory.
//!
//! * GNU long names and links (`L`, `K`) and PAX headers (`x`, `g`) are read whole only up to
//!   [`MAX_EXTENSION`] bytes, and at most [`MAX_EXTENSIONS`] of them in a row; beyond, the
//!   archive is refused.
//! * After the end-of-archive marker (the first zero block) come at most [`MAX_TRAILER`]
//!   bytes, all zero (the second zero block and the record padding tar writers add);
//!   anything else is refused.
//! * Numbers are octal or GNU base-256; header checksums are verified.
//! * GNU sparse files (type `S`, as `tar -cS` writes them and the tar crate reads them) come
//!   with their map of data regions, at most [`MAX_SPARSE_ENTRIES`] entries in at most
//!   [`MAX_SPARSE_EXTENSIONS`] extension blocks (the writer's limits), checked to be in
//!   order, not overlapping, inside the file and adding up to the data stored. The PAX forms
//!   of sparse files are not read.
//!
//! The reader only reads: what an entry may be (files and directories only, paths that stay
//! inside the target) is for the caller to decide.

use std::io::{self, Read};

pub use super::limits::{BLOCK, MAX_EXTENSION, MAX_EXTENSIONS, MAX_TRAILER};
use super::limits::{
    MAX_SPARSE_ENTRIES, MAX_SPARSE_EXTENSIONS, SPARSE_IN_EXTENSION, SPARSE_IN_HEADER,
};

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryType {
    File,
    Directory,
    Symlink,
    HardLink,
    CharDevice,
    BlockDevice,
    Fifo,
    /// A sparse file in a PAX form (`GNU.sparse.*` records), which is not read.
    PaxSparse,
    /// Any other type flag.
    Other(u8),
}

impl EntryType {
    fn from_flag(flag: u8) -> Self {
        match flag {
            b'0' | 0 | b'7' => Self::File,
            b'5' => Self::Directory,
            b'2' => Self::Symlink,
            b'1' => Self::HardLink,
            b'3' => Self::CharDevice,
            b'4' => Self::BlockDevice,
            b'6' => Self::Fifo,
            // Old GNU sparse entries are files, with a map (see `TarReader::sparse_map`).
            b'S' => Self::File,
            other => Self::Other(other),
        }
    }

    /// What it is, for messages.
    pub fn describe(self) -> String {
        match self {
            Self::File => "a regular file".into(),
            Self::Directory => "a directory".into(),
            Self::Symlink => "a symbolic link".into(),
            Self::HardLink => "a hard link".into(),
            Self::CharDevice => "a character device".into(),
            Self::BlockDevice => "a block device".into(),
            Self::Fifo => "a FIFO".into(),
            Self::PaxSparse => "a sparse file in PAX form (not supported; use GNU format)".into(),
            Self::Other(flag) => format!(
                "an entry of tar type {:?}, not a file or directory",
                char::from(flag)
            ),
        }
    }
}

/// The header of an entry, extensions applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The path as stored (not checked).
    pub path: Vec<u8>,
    pub kind: EntryType,
    /// Mode bits (permissions and set-id bits).
    pub mode: u32,
    /// Modification time, seconds since the epoch (0 when before it).
    pub mtime: u64,
    /// Bytes of data that follow the header.
    pub size: u64,
    /// For a sparse file: where its data goes, and its size.
    pub sparse: Option<SparseMap>,
}

/// The layout of a sparse file: its data regions (offset, length), in order and not
/// overlapping, whose lengths add up to the entry's data; everything else is a hole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SparseMap {
    pub regions: Vec<(u64, u64)>,
    /// The file's size, holes included.
    pub real_size: u64,
}

/// Why an archive cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum TarError {
    #[error("failed to read the archive (is it a snapshot archive, and complete?)")]
    Read { source: io::Error },
    #[error("the archive ends before its end-of-archive marker: it is truncated")]
    Truncated,
    #[error("the archive has a damaged tar header at byte {offset}: {why} (is it a tar archive?)")]
    BadHeader { offset: u64, why: &'static str },
    #[error(
        "refused: the tar extension header at byte {offset} is {size} bytes (at most \
         {MAX_EXTENSION} are read); nothing was changed"
    )]
    ExtensionTooLarge { offset: u64, size: u64 },
    #[error(
        "refused: more than {MAX_EXTENSIONS} tar extension headers in a row at byte {offset}; \
         nothing was changed"
    )]
    TooManyExtensions { offset: u64 },
    #[error(
        "refused: data follows the end-of-archive marker (more than {MAX_TRAILER} bytes, or not \
         zero padding); nothing was changed"
    )]
    Trailer,
    #[error("refused: the sparse map of the entry at byte {offset} {why}; nothing was changed")]
    BadSparse { offset: u64, why: &'static str },
}

impl TarError {
    pub(crate) fn from_io(source: io::Error) -> Self {
        if source.kind() == io::ErrorKind::UnexpectedEof {
            Self::Truncated
        } else {
            Self::Read { source }
        }
    }
}

/// Extension values that apply to the next entry.
#[derive(Debug, Default)]
struct Pending {
    path: Option<Vec<u8>>,
    size: Option<u64>,
    mtime: Option<u64>,
    sparse: bool,
}

/// A streaming reader of the entries of a tar archive. [`Read`] reads the data of the entry
/// last returned by [`next_entry`](Self::next_entry).
pub struct TarReader<R> {
    inner: R,
    /// Bytes consumed from `inner`.
    pos: u64,
    /// Data bytes of the current entry not yet read.
    left: u64,
    /// Padding after the current entry's data.
    pad: u64,
    /// For a tar inside a tar: its size, whose end, between entries, ends it as an end
    /// marker would (the tars inside Qdrant's snapshots, written by the tar crate, have none).
    size: Option<u64>,
}

impl<R: Read> TarReader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            pos: 0,
            left: 0,
            pad: 0,
            size: None,
        }
    }

    /// A reader of a tar of `size` bytes inside a tar (the data of one entry, whose size the
    /// outer tar fixes): its end marker may be missing, the end of that data ending it.
    pub fn nested(inner: R, size: u64) -> Self {
        Self {
            size: Some(size),
            ..Self::new(inner)
        }
    }

    /// Bytes of the archive consumed so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The next entry's header (what is left of the current entry's data is skipped), or
    /// `None` at the end-of-archive marker.
    pub fn next_entry(&mut self) -> Result<Option<Entry>, TarError> {
        let rest = self.left + self.pad;
        self.skip(rest)?;
        self.left = 0;
        self.pad = 0;
        let mut pending = Pending::default();
        let mut extensions = 0;
        loop {
            let offset = self.pos;
            let mut block = [0u8; BLOCK as usize];
            if extensions == 0 && self.size == Some(offset) {
                return Ok(None);
            }
            self.read_exact(&mut block)?;
            if block.iter().all(|b| *b == 0) {
                return Ok(None);
            }
            let bad = |why| TarError::BadHeader { offset, why };
            if !checksum_ok(&block) {
                return Err(bad("its checksum does not match"));
            }
            let flag = block[156];
            let size = number(&block[124..136]).ok_or_else(|| bad("invalid size"))?;
            if matches!(flag, b'L' | b'K' | b'x' | b'g') {
                extensions += 1;
                if extensions > MAX_EXTENSIONS {
                    return Err(TarError::TooManyExtensions { offset });
                }
                if size > MAX_EXTENSION {
                    return Err(TarError::ExtensionTooLarge { offset, size });
                }
                let mut data = vec![0; size as usize];
                self.read_exact(&mut data)?;
                self.skip(padding(size))?;
                match flag {
                    b'L' => pending.path = Some(until_nul(&data).to_vec()),
                    b'x' => pax(&data, &mut pending).map_err(bad)?,
                    // A long link name (links are refused anyway) or global PAX values.
                    _ => {}
                }
                continue;
            }
            let mut kind = EntryType::from_flag(flag);
            if pending.sparse && kind == EntryType::File {
                kind = EntryType::PaxSparse;
            }
            let size = pending.size.unwrap_or(size);
            let sparse = if flag == b'S' {
                Some(self.sparse_map(&block, offset, size)?)
            } else {
                None
            };
            let mode = number(&block[100..108]).ok_or_else(|| bad("invalid mode"))?;
            let mtime = match pending.mtime {
                Some(mtime) => mtime,
                None => number(&block[136..148]).ok_or_else(|| bad("invalid time"))?,
            };
            self.left = size;
            self.pad = padding(size);
            return Ok(Some(Entry {
                path: pending.path.unwrap_or_else(|| header_path(&block)),
                kind,
                mode: u32::try_from(mode & 0o7777).expect("masked"),
                mtime,
                size,
                sparse,
            }));
        }
    }

    /// The map of an old GNU sparse entry: four entries in its header, then extension
    /// blocks of 21 while the previous block says more follow.
    fn sparse_map(
        &mut self,
        block: &[u8; BLOCK as usize],
        offset: u64,
        stored: u64,
    ) -> Result<SparseMap, TarError> {
        let bad = |why| TarError::BadSparse { offset, why };
        let real_size = number(&block[483..495]).ok_or_else(|| bad("has an invalid size"))?;
        let mut regions = Vec::new();
        sparse_entries(&block[386..386 + SPARSE_IN_HEADER * 24], &mut regions).map_err(bad)?;
        let mut extended = block[482] == 1;
        let mut blocks = 0;
        while extended {
            if regions.len() > MAX_SPARSE_ENTRIES {
                return Err(bad("has too many regions"));
            }
            // Empty extension blocks count too: a chain of them is bounded like a full one.
            blocks += 1;
            if blocks > MAX_SPARSE_EXTENSIONS {
                return Err(bad("has more extension blocks than any sparse map needs"));
            }
            let mut ext = [0u8; BLOCK as usize];
            self.read_exact(&mut ext)?;
            sparse_entries(&ext[..SPARSE_IN_EXTENSION * 24], &mut regions).map_err(bad)?;
            extended = ext[SPARSE_IN_EXTENSION * 24] == 1;
        }
        if regions.len() > MAX_SPARSE_ENTRIES {
            return Err(bad("has too many regions"));
        }
        let (mut end, mut total) = (0u64, 0u64);
        for (at, len) in &regions {
            if *at < end {
                return Err(bad("has regions out of order or overlapping"));
            }
            end = at
                .checked_add(*len)
                .ok_or_else(|| bad("points past any file size"))?;
            total += len;
        }
        if end > real_size {
            return Err(bad("points past the file's size"));
        }
        if total != stored {
            return Err(bad("does not add up to the data stored"));
        }
        // A last, empty region marks the size (as GNU tar writes it); it holds nothing.
        regions.retain(|(_, len)| *len > 0);
        Ok(SparseMap { regions, real_size })
    }

    /// After [`next_entry`](Self::next_entry) returned `None`: reads what follows the end
    /// marker, which must be zero padding of at most [`MAX_TRAILER`] bytes. Returns the
    /// number of bytes read.
    pub fn finish(mut self) -> Result<u64, TarError> {
        let mut buf = [0u8; 64 << 10];
        let mut trailing = 0u64;
        loop {
            let n = match self.inner.read(&mut buf) {
                Ok(0) => return Ok(trailing),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(TarError::from_io(e)),
            };
            trailing += n as u64;
            self.pos += n as u64;
            if trailing > MAX_TRAILER || buf[..n].iter().any(|b| *b != 0) {
                return Err(TarError::Trailer);
            }
        }
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), TarError> {
        self.inner.read_exact(buf).map_err(TarError::from_io)?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn skip(&mut self, n: u64) -> Result<(), TarError> {
        let skipped =
            io::copy(&mut (&mut self.inner).take(n), &mut io::sink()).map_err(TarError::from_io)?;
        self.pos += skipped;
        if skipped < n {
            return Err(TarError::Truncated);
        }
        Ok(())
    }
}

impl<R: Read> Read for TarReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = usize::try_from(self.left)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.left -= n as u64;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Appends the used entries (offset, length: 12 bytes each) of a sparse map block; an entry
/// that starts with a NUL is unused (as the tar crate and GNU tar read them).
fn sparse_entries(fields: &[u8], regions: &mut Vec<(u64, u64)>) -> Result<(), &'static str> {
    for entry in fields.chunks_exact(24) {
        if entry[0] == 0 || entry[12] == 0 {
            continue;
        }
        let at = number(&entry[..12]).ok_or("has an invalid offset")?;
        let len = number(&entry[12..]).ok_or("has an invalid length")?;
        regions.push((at, len));
    }
    Ok(())
}

fn padding(size: u64) -> u64 {
    (BLOCK - size % BLOCK) % BLOCK
}

fn until_nul(bytes: &[u8]) -> &[u8] {
    bytes.split(|b| *b == 0).next().unwrap_or_default()
}

/// The header's own path: `prefix/name` in POSIX ustar headers, `name` otherwise.
fn header_path(block: &[u8; BLOCK as usize]) -> Vec<u8> {
    let name = until_nul(&block[..100]);
    let prefix = until_nul(&block[345..500]);
    if &block[257..263] == b"ustar\0" && !prefix.is_empty() {
        [prefix, b"/", name].concat()
    } else {
        name.to_vec()
    }
}

/// The header checksum matches (unsigned sum, or the signed sum of old writers).
fn checksum_ok(block: &[u8; BLOCK as usize]) -> bool {
    let Some(stored) = number(&block[148..156]) else {
        return false;
    };
    let (mut unsigned, mut signed) = (0u64, 0i64);
    for (i, b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { *b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    stored == unsigned || i64::try_from(stored).is_ok_and(|s| s == signed)
}

/// A numeric field: octal digits (space or NUL padded), or GNU base-256 (high bit set).
fn number(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        // Base-256, big-endian; a negative value (0xff lead) is refused.
        if field[0] == 0xff {
            return None;
        }
        let mut value = u64::from(field[0] & 0x7f);
        for b in &field[1..] {
            value = value.checked_mul(256)?.checked_add(u64::from(*b))?;
        }
        return Some(value);
    }
    let text = field
        .iter()
        .skip_while(|b| **b == b' ' || **b == 0)
        .take_while(|b| **b != b' ' && **b != 0);
    let mut value = 0u64;
    for b in text {
        if !(b'0'..=b'7').contains(b) {
            return None;
        }
        value = value.checked_mul(8)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(value)
}

/// Applies the PAX records (`<len> <key>=<value>\n`) of an `x` header to the next entry.
fn pax(mut data: &[u8], pending: &mut Pending) -> Result<(), &'static str> {
    const BAD: &str = "an invalid PAX record";
    while !data.is_empty() {
        let space = data.iter().position(|b| *b == b' ').ok_or(BAD)?;
        let len: usize = std::str::from_utf8(&data[..space])
            .ok()
            .and_then(|t| t.parse().ok())
            .ok_or(BAD)?;
        if len <= space + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(BAD);
        }
        let record = &data[space + 1..len - 1];
        data = &data[len..];
        let eq = record.iter().position(|b| *b == b'=').ok_or(BAD)?;
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        let text = || std::str::from_utf8(value).map_err(|_| BAD);
        match key {
            b"path" => pending.path = Some(value.to_vec()),
            b"size" => pending.size = Some(text()?.parse().map_err(|_| BAD)?),
            b"mtime" => {
                let whole = text()?.split('.').next().unwrap_or_default();
                let secs: i64 = whole.parse().map_err(|_| BAD)?;
                pending.mtime = Some(u64::try_from(secs).unwrap_or(0));
            }
            k if k.starts_with(b"GNU.sparse.") => pending.sparse = true,
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(path: &str, flag: u8, size: u64) -> [u8; 512] {
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_entry_type(tar::EntryType::new(flag));
        h.set_mode(0o640);
        h.set_mtime(1_700_000_000);
        h.set_size(size);
        h.set_cksum();
        *h.as_bytes()
    }

    fn entry(out: &mut Vec<u8>, path: &str, flag: u8, data: &[u8]) {
        out.extend_from_slice(&header(path, flag, data.len() as u64));
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }

    fn pax_record(key: &str, value: &str) -> String {
        let body = format!(" {key}={value}\n");
        let mut len = body.len() + 1;
        while len.to_string().len() + body.len() != len {
            len += 1;
        }
        format!("{len}{body}")
    }

    /// Every entry with its data, and the trailing byte count.
    type AllEntries = (Vec<(Entry, Vec<u8>)>, u64);

    fn read_all(archive: &[u8]) -> Result<AllEntries, TarError> {
        let mut r = TarReader::new(archive);
        let mut out = Vec::new();
        while let Some(e) = r.next_entry()? {
            let mut data = Vec::new();
            r.read_to_end(&mut data).map_err(TarError::from_io)?;
            out.push((e, data));
        }
        let trailing = r.finish()?;
        Ok((out, trailing))
    }

    #[test]
    fn reads_gnu_long_names_pax_and_base256_and_agrees_with_the_tar_crate() {
        let mut a = Vec::new();
        let long = format!("{}/file", "d".repeat(150));
        entry(
            &mut a,
            "././@LongLink",
            b'L',
            format!("{long}\0").as_bytes(),
        );
        entry(&mut a, "short", b'0', b"hello");
        let pax = pax_record("path", "pax/name") + &pax_record("mtime", "1800000000.5");
        entry(&mut a, "PaxHeaders/x", b'x', pax.as_bytes());
        entry(&mut a, "ignored", b'5', b"");
        entry(
            &mut a,
            "g",
            b'g',
            pax_record("comment", "global").as_bytes(),
        );
        let mut big = header("big", b'0', 0);
        big[124..136].copy_from_slice(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3]);
        let mut h = tar::Header::from_byte_slice(&big).clone();
        h.set_cksum();
        a.extend_from_slice(h.as_bytes());
        a.extend_from_slice(b"abc");
        a.resize(a.len().div_ceil(512) * 512, 0);
        a.extend_from_slice(&[0; 1024 + 8192]);

        let (entries, trailing) = read_all(&a).unwrap();
        assert_eq!(trailing, 1024 + 8192 - 512);
        let got: Vec<(String, EntryType, u64, Vec<u8>)> = entries
            .iter()
            .map(|(e, d)| {
                (
                    String::from_utf8_lossy(&e.path).into(),
                    e.kind,
                    e.mtime,
                    d.clone(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (
                    long.clone(),
                    EntryType::File,
                    1_700_000_000,
                    b"hello".to_vec()
                ),
                (
                    "pax/name".into(),
                    EntryType::Directory,
                    1_800_000_000,
                    vec![]
                ),
                (
                    "big".into(),
                    EntryType::File,
                    1_700_000_000,
                    b"abc".to_vec()
                ),
            ]
        );
        assert_eq!(entries[0].0.mode, 0o640);
        // The tar crate reads the same archive the same way.
        let mut theirs = tar::Archive::new(&a[..]);
        let paths: Vec<String> = theirs
            .entries()
            .unwrap()
            .map(Result::unwrap)
            .filter(|e| e.header().entry_type() != tar::EntryType::XGlobalHeader)
            .map(|e| e.path().unwrap().display().to_string())
            .collect();
        assert_eq!(paths, [long.as_str(), "pax/name", "big"]);
    }

    #[test]
    fn bounds_every_header_and_the_trailer() {
        // A huge long name is refused from its header, before its data is read.
        let mut a = header("././@LongLink", b'L', 1 << 30).to_vec();
        a.extend_from_slice(&[b'a'; 4096]);
        assert!(matches!(
            read_all(&a),
            Err(TarError::ExtensionTooLarge { offset: 0, size }) if size == 1 << 30
        ));
        let mut a = Vec::new();
        for _ in 0..=MAX_EXTENSIONS {
            entry(&mut a, "g", b'g', b"");
        }
        assert!(matches!(
            read_all(&a),
            Err(TarError::TooManyExtensions { .. })
        ));

        let mut good = Vec::new();
        entry(&mut good, "f", b'0', b"x");
        good.extend_from_slice(&[0; 1024]);
        let mut junk = good.clone();
        junk.extend_from_slice(b"more");
        assert!(matches!(read_all(&junk), Err(TarError::Trailer)));
        let mut padded = good.clone();
        padded.resize(good.len() + MAX_TRAILER as usize, 0);
        assert!(matches!(read_all(&padded), Err(TarError::Trailer)));
        padded.truncate(good.len() - 512 + MAX_TRAILER as usize);
        assert!(read_all(&padded).is_ok());

        assert!(matches!(
            read_all(&good[..512 + 100]),
            Err(TarError::Truncated)
        ));
        assert!(matches!(read_all(&good[..1024]), Err(TarError::Truncated)));
        let mut damaged = good.clone();
        damaged[10] ^= 1;
        assert!(matches!(
            read_all(&damaged),
            Err(TarError::BadHeader { offset: 0, .. })
        ));
    }

    #[test]
    fn numbers_parse_as_tar_writes_them() {
        assert_eq!(number(b"0000644\0"), Some(0o644));
        assert_eq!(number(b"  644 \0"), Some(0o644));
        assert_eq!(number(b"\0\0\0\0"), Some(0));
        assert_eq!(number(b"0009"), None);
        assert_eq!(number(&[0x80, 0, 1, 0]), Some(256));
        assert_eq!(number(&[0xff, 0xff]), None);
        assert_eq!(
            number(&[0x80, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            None
        );
    }
}
