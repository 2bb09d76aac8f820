//! A minimal streaming tar writer: GNU headers, long names as GNU long-name entries,
//! files with holes as GNU sparse entries (as `tar -cS` writes them), every limit the
//! reader has respected ([`super::limits`]); and the size an entry takes, known before it is
//! written, for tars inside a tar.

use std::fs::File;
use std::io::{self, Write};

use super::limits::{self, BLOCK};

const COPY_BUF: usize = 1 << 20;
const B: usize = BLOCK as usize;

/// Why copying a file into the archive failed.
pub enum FileCopyError {
    Read(io::Error),
    /// The file is shorter than its entry says: it changed.
    Short,
    Write(io::Error),
}

/// The bytes of padding after `len` bytes of data.
fn padding(len: u64) -> u64 {
    len.next_multiple_of(BLOCK) - len
}

/// Bytes the header(s) of an entry at `path` take: a long-name entry first when the path
/// does not fit the header's 100 bytes.
pub fn header_size(path: &[u8]) -> u64 {
    let long = (path.len() + 1) as u64;
    BLOCK
        + if path.len() > 100 {
            BLOCK + long + padding(long)
        } else {
            0
        }
}

/// Bytes an entry at `path` holding `data` bytes takes, headers and padding included.
pub fn entry_size(path: &[u8], data: u64) -> u64 {
    header_size(path) + data + padding(data)
}

/// Bytes a sparse entry at `path` takes for a file of `size` bytes with data `regions`.
pub fn sparse_entry_size(path: &[u8], size: u64, regions: &[(u64, u64)]) -> u64 {
    let map = limits::sparse_map(regions, size);
    let extensions = map.len().saturating_sub(limits::SPARSE_IN_HEADER);
    let blocks = extensions.div_ceil(limits::SPARSE_IN_EXTENSION) as u64;
    let stored: u64 = map.iter().map(|(_, len)| len).sum();
    entry_size(path, stored) + blocks * BLOCK
}

/// Bytes of the end-of-archive marker.
pub const END: u64 = 2 * BLOCK;

/// A minimal streaming tar writer (GNU headers, long names as GNU long-name entries).
pub struct TarWriter<W: Write> {
    out: W,
    buf: Vec<u8>,
}

impl<W: Write> TarWriter<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            buf: vec![0; COPY_BUF],
        }
    }

    pub fn header(
        &mut self,
        path: &[u8],
        kind: tar::EntryType,
        mode: u32,
        mtime: u64,
        size: u64,
    ) -> io::Result<()> {
        self.header_with(path, kind, mode, mtime, size, |_| {})
    }

    /// Writes the header of an entry (after a long-name entry when `path` needs one), with
    /// `extra` filling GNU fields beyond the common ones.
    fn header_with(
        &mut self,
        path: &[u8],
        kind: tar::EntryType,
        mode: u32,
        mtime: u64,
        size: u64,
        extra: impl FnOnce(&mut tar::GnuHeader),
    ) -> io::Result<()> {
        if path.len() > 100 {
            let mut data = path.to_vec();
            data.push(0);
            let mut long = tar::Header::new_gnu();
            long.as_gnu_mut().expect("gnu header").name[..13].copy_from_slice(b"././@LongLink");
            self.raw_header(
                &mut long,
                tar::EntryType::GNULongName,
                0o644,
                0,
                data.len() as u64,
            )?;
            self.out.write_all(&data)?;
            self.pad(data.len() as u64)?;
        }
        let mut h = tar::Header::new_gnu();
        let n = path.len().min(100);
        let gnu = h.as_gnu_mut().expect("gnu header");
        gnu.name[..n].copy_from_slice(&path[..n]);
        extra(gnu);
        self.raw_header(&mut h, kind, mode, mtime, size)
    }

    fn raw_header(
        &mut self,
        h: &mut tar::Header,
        kind: tar::EntryType,
        mode: u32,
        mtime: u64,
        size: u64,
    ) -> io::Result<()> {
        h.set_entry_type(kind);
        h.set_mode(mode & 0o7777);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(mtime);
        h.set_size(size);
        h.set_cksum();
        self.out.write_all(h.as_bytes())
    }

    fn pad(&mut self, len: u64) -> io::Result<()> {
        let rem = (len % BLOCK) as usize;
        if rem != 0 {
            self.out.write_all(&[0; B][..B - rem])?;
        }
        Ok(())
    }

    pub fn append_bytes(
        &mut self,
        path: &[u8],
        mode: u32,
        mtime: u64,
        data: &[u8],
    ) -> io::Result<()> {
        self.header(
            path,
            tar::EntryType::Regular,
            mode,
            mtime,
            data.len() as u64,
        )?;
        self.out.write_all(data)?;
        self.pad(data.len() as u64)
    }

    pub fn append_dir(&mut self, path: &[u8], mode: u32, mtime: u64) -> io::Result<()> {
        self.header(path, tar::EntryType::Directory, mode, mtime, 0)
    }

    /// Writes a file entry of `size` bytes read from `file`; a file shorter than that is an
    /// error (it changed), bytes beyond it are not read.
    pub fn append_file(
        &mut self,
        path: &[u8],
        mode: u32,
        mtime: u64,
        size: u64,
        file: &File,
        mut on_read: impl FnMut(u64),
    ) -> Result<(), FileCopyError> {
        self.header(path, tar::EntryType::Regular, mode, mtime, size)
            .map_err(FileCopyError::Write)?;
        self.copy_range(file, 0, size, &mut on_read)?;
        self.pad(size).map_err(FileCopyError::Write)
    }

    /// Copies `len` bytes of `file` from `at` into the archive; a file shorter than that is
    /// an error (it changed).
    fn copy_range(
        &mut self,
        file: &File,
        at: u64,
        len: u64,
        on_read: &mut impl FnMut(u64),
    ) -> Result<(), FileCopyError> {
        use std::os::unix::fs::FileExt;
        let mut done = 0u64;
        while done < len {
            let want = usize::try_from(len - done)
                .unwrap_or(usize::MAX)
                .min(self.buf.len());
            let n = match file.read_at(&mut self.buf[..want], at + done) {
                Ok(0) => return Err(FileCopyError::Short),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(FileCopyError::Read(e)),
            };
            self.out
                .write_all(&self.buf[..n])
                .map_err(FileCopyError::Write)?;
            done += n as u64;
            on_read(n as u64);
        }
        Ok(())
    }

    /// Writes a GNU sparse entry: the header with the first regions of the map, extension
    /// blocks with the rest, then the data of each region read from `file`. The map ends at
    /// the file's size (an empty last region marks it when the file ends in a hole).
    #[allow(clippy::too_many_arguments)]
    pub fn append_sparse(
        &mut self,
        path: &[u8],
        mode: u32,
        mtime: u64,
        size: u64,
        regions: &[(u64, u64)],
        file: &File,
        mut on_read: impl FnMut(u64),
    ) -> Result<(), FileCopyError> {
        let map = limits::sparse_map(regions, size);
        let set = |entry: &mut tar::GnuSparseHeader, (at, len): (u64, u64)| {
            entry.set_offset(at);
            entry.set_length(len);
        };
        let stored: u64 = map.iter().map(|(_, len)| len).sum();
        let (first, rest) = map.split_at(map.len().min(limits::SPARSE_IN_HEADER));
        self.header_with(
            path,
            tar::EntryType::GNUSparse,
            mode,
            mtime,
            stored,
            |gnu| {
                for (entry, region) in gnu.sparse.iter_mut().zip(first) {
                    set(entry, *region);
                }
                gnu.set_is_extended(!rest.is_empty());
                gnu.set_real_size(size);
            },
        )
        .map_err(FileCopyError::Write)?;
        let blocks: Vec<&[(u64, u64)]> = rest.chunks(limits::SPARSE_IN_EXTENSION).collect();
        for (i, chunk) in blocks.iter().enumerate() {
            let mut ext = tar::GnuExtSparseHeader::new();
            for (entry, region) in ext.sparse.iter_mut().zip(chunk.iter()) {
                set(entry, *region);
            }
            ext.set_is_extended(i + 1 < blocks.len());
            self.out
                .write_all(ext.as_bytes())
                .map_err(FileCopyError::Write)?;
        }
        for &(at, len) in &map {
            self.copy_range(file, at, len, &mut on_read)?;
        }
        self.pad(stored).map_err(FileCopyError::Write)
    }

    /// Writes the end-of-archive marker (two zero blocks) and flushes.
    pub fn finish(&mut self) -> io::Result<()> {
        self.end()?;
        self.out.flush()
    }

    /// Writes the end-of-archive marker of a tar (in a tar: no flush).
    pub fn end(&mut self) -> io::Result<()> {
        self.out.write_all(&[0; 2 * B])
    }
}
