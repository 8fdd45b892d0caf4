//! Building an archive in memory (paths and sources) and writing it out reproducibly.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::entry::{normalize, parent, Entry, EntryKind, FileSource};
use crate::newc::{self, align_up, aligned_namesize, n_align, split_gap, Header, HEADER_LEN};
use crate::PAGE_SIZE;

/// Errors from building or writing an archive.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("invalid archive path {0:?} (use a path without `..` or NUL, other than `/`)")]
    InvalidPath(String),
    #[error("duplicate entry /{0} (each path may be given once)")]
    Duplicate(String),
    #[error("/{0} is needed as a directory but the archive holds a non-directory there")]
    ParentNotDir(String),
    #[error("reading host file {}", path.display())]
    ReadSource {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("host file {} changed size while being archived", .0.display())]
    SourceChanged(PathBuf),
    #[error("/{0} is 4 GiB or larger, which a newc archive cannot hold")]
    TooLarge(String),
    #[error("/{0}: path too long to align (names are limited to PATH_MAX)")]
    NameTooLong(String),
    #[error("{}: unsupported file type in a host tree (only directories, files, symlinks)", .0.display())]
    UnsupportedType(PathBuf),
    #[error("{}: symlink target is not UTF-8", .0.display())]
    NonUtf8(PathBuf),
    #[error("writing the archive")]
    Write(#[source] io::Error),
}

/// How an archive is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriteOptions {
    /// The mtime of every entry (e.g. `SOURCE_DATE_EPOCH`; 0 by default).
    pub mtime: u32,
}

/// An archive being built: entries keyed by normalized path (no leading `/`), written sorted.
/// Missing parent directories are added (mode 0755, root) when the archive is written.
#[derive(Debug, Clone, Default)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

/// Mode and owner used for the root directory (`.`) when it is re-stated as a filler entry.
const ROOT_DIR: Entry = Entry {
    kind: EntryKind::Dir,
    mode: 0o755,
    uid: 0,
    gid: 0,
};

impl Archive {
    /// An empty archive.
    pub fn new() -> Archive {
        Archive::default()
    }

    /// Adds `entry` at `path`; a path given twice is an error.
    pub fn insert(&mut self, path: &str, entry: Entry) -> Result<(), ArchiveError> {
        let p = normalize(path).ok_or_else(|| ArchiveError::InvalidPath(path.to_string()))?;
        if self.entries.contains_key(&p) {
            return Err(ArchiveError::Duplicate(p));
        }
        self.entries.insert(p, entry);
        Ok(())
    }

    /// Adds `entry` at `path` unless something is already there; returns whether it was added.
    pub fn insert_if_absent(&mut self, path: &str, entry: Entry) -> Result<bool, ArchiveError> {
        let p = normalize(path).ok_or_else(|| ArchiveError::InvalidPath(path.to_string()))?;
        if self.entries.contains_key(&p) {
            return Ok(false);
        }
        self.entries.insert(p, entry);
        Ok(true)
    }

    /// Copies the host directory tree `host` to `dst` (directories, files, symlinks; permission
    /// bits from the host, owner root). `dst` itself becomes a directory with `host`'s mode.
    pub fn add_host_tree(&mut self, dst: &str, host: &Path) -> Result<(), ArchiveError> {
        let read_err = |path: &Path, source| ArchiveError::ReadSource {
            path: path.to_path_buf(),
            source,
        };
        let meta = fs::symlink_metadata(host).map_err(|e| read_err(host, e))?;
        let mode = meta.permissions().mode();
        let ft = meta.file_type();
        if ft.is_dir() {
            if normalize(dst).is_some() {
                self.insert(dst, Entry::dir(mode))?;
            }
            let mut names = Vec::new();
            for de in fs::read_dir(host).map_err(|e| read_err(host, e))? {
                names.push(de.map_err(|e| read_err(host, e))?.file_name());
            }
            names.sort();
            for name in names {
                let Some(n) = name.to_str() else {
                    return Err(ArchiveError::NonUtf8(host.join(&name)));
                };
                self.add_host_tree(&format!("{dst}/{n}"), &host.join(n))?;
            }
            Ok(())
        } else if ft.is_file() {
            self.insert(dst, Entry::file(FileSource::Host(host.into()), mode))
        } else if ft.is_symlink() {
            let t = fs::read_link(host).map_err(|e| read_err(host, e))?;
            let t = t
                .into_os_string()
                .into_string()
                .map_err(|_| ArchiveError::NonUtf8(host.into()))?;
            self.insert(dst, Entry::symlink(t))
        } else {
            debug_assert!(
                ft.is_fifo() || ft.is_socket() || ft.is_block_device() || ft.is_char_device()
            );
            Err(ArchiveError::UnsupportedType(host.into()))
        }
    }

    /// The explicit entries, sorted by path.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// All entries that will be written: the explicit ones plus missing parent directories.
    fn resolved(&self) -> Result<BTreeMap<String, Entry>, ArchiveError> {
        let mut all = self.entries.clone();
        for path in self.entries.keys() {
            let mut p = parent(path);
            while let Some(dir) = p {
                match all.get(dir) {
                    Some(e) if e.kind == EntryKind::Dir => {}
                    Some(_) => return Err(ArchiveError::ParentNotDir(dir.to_string())),
                    None => {
                        all.insert(dir.to_string(), Entry::dir(0o755));
                    }
                }
                p = parent(dir);
            }
        }
        Ok(all)
    }

    /// Writes the archive to `w` and returns its length (a multiple of [`PAGE_SIZE`]).
    pub fn write_to<W: Write>(&self, w: W, opts: WriteOptions) -> Result<u64, ArchiveError> {
        let all = self.resolved()?;
        let inos: BTreeMap<&str, u32> = all
            .keys()
            .zip(2u32..)
            .map(|(k, i)| (k.as_str(), i))
            .collect();
        let mut out = Out { w, pos: 0 };
        for (path, entry) in &all {
            let ino = inos[path.as_str()];
            write_entry(&mut out, path, entry, ino, &all, &inos, opts)?;
        }
        let trailer = Header {
            nlink: 1,
            namesize: newc::TRAILER.len() as u32 + 1,
            ..Header::default()
        };
        out.record(&trailer, newc::TRAILER, &[])?;
        let end = align_up(out.pos, PAGE_SIZE);
        out.zeros(end - out.pos)?;
        Ok(out.pos)
    }

    /// The archive as bytes.
    pub fn to_bytes(&self, opts: WriteOptions) -> Result<Vec<u8>, ArchiveError> {
        let mut v = Vec::new();
        self.write_to(&mut v, opts)?;
        Ok(v)
    }
}

fn write_entry<W: Write>(
    out: &mut Out<W>,
    path: &str,
    entry: &Entry,
    ino: u32,
    all: &BTreeMap<String, Entry>,
    inos: &BTreeMap<&str, u32>,
    opts: WriteOptions,
) -> Result<(), ArchiveError> {
    let mut h = Header {
        ino,
        mode: entry.cpio_mode(),
        uid: entry.uid,
        gid: entry.gid,
        nlink: 1,
        mtime: opts.mtime,
        namesize: path.len() as u32 + 1,
        ..Header::default()
    };
    match &entry.kind {
        EntryKind::Dir => {
            h.nlink = 2;
            out.record(&h, path, &[])
        }
        EntryKind::Symlink(target) => {
            h.filesize = target.len() as u32;
            out.record(&h, path, target.as_bytes())
        }
        EntryKind::CharDev { major, minor } | EntryKind::BlockDev { major, minor } => {
            h.rdevmajor = *major;
            h.rdevminor = *minor;
            out.record(&h, path, &[])
        }
        EntryKind::File(src) => {
            let size = match src {
                FileSource::Bytes(b) => b.len() as u64,
                FileSource::Host(p) => fs::metadata(p)
                    .map_err(|source| ArchiveError::ReadSource {
                        path: p.clone(),
                        source,
                    })?
                    .len(),
            };
            h.filesize = u32::try_from(size).map_err(|_| ArchiveError::TooLarge(path.into()))?;
            let name_len = path.len() as u64;
            h.namesize = match aligned_namesize(out.pos, name_len, PAGE_SIZE) {
                Some(n) => n as u32,
                None => write_filler(out, path, all, inos, opts)? as u32,
            };
            out.header_and_name(&h, path)?;
            debug_assert_eq!(out.pos % PAGE_SIZE, 0);
            match src {
                FileSource::Bytes(b) => out.bytes(b)?,
                FileSource::Host(p) => out.copy_file(p, size)?,
            }
            out.pad4()
        }
    }
}

/// Writes a filler entry re-stating the parent directory of `path` (identical metadata, so
/// unpacking it again changes nothing), sized so that the file entry that follows can align
/// its data. Returns the `namesize` the file entry must use.
fn write_filler<W: Write>(
    out: &mut Out<W>,
    path: &str,
    all: &BTreeMap<String, Entry>,
    inos: &BTreeMap<&str, u32>,
    opts: WriteOptions,
) -> Result<u64, ArchiveError> {
    let (dir, entry, ino) = match parent(path) {
        Some(d) => (d, &all[d], inos[d]),
        None => (".", &ROOT_DIR, 1),
    };
    let too_long = || ArchiveError::NameTooLong(path.to_string());
    let filler_min = dir.len() as u64 + 1;
    let file_min = path.len() as u64 + 1;
    let data = align_up(
        out.pos + 2 * HEADER_LEN + n_align(filler_min) + n_align(file_min),
        PAGE_SIZE,
    );
    let gap = data - out.pos - 2 * HEADER_LEN;
    let (filler_n, file_n) = split_gap(gap, filler_min, file_min).ok_or_else(too_long)?;
    let h = Header {
        ino,
        mode: entry.cpio_mode(),
        uid: entry.uid,
        gid: entry.gid,
        nlink: 2,
        mtime: opts.mtime,
        namesize: filler_n as u32,
        ..Header::default()
    };
    out.header_and_name(&h, dir)?;
    Ok(file_n)
}

/// The output stream and its position.
struct Out<W> {
    w: W,
    pos: u64,
}

impl<W: Write> Out<W> {
    fn bytes(&mut self, b: &[u8]) -> Result<(), ArchiveError> {
        self.w.write_all(b).map_err(ArchiveError::Write)?;
        self.pos += b.len() as u64;
        Ok(())
    }

    fn zeros(&mut self, n: u64) -> Result<(), ArchiveError> {
        const Z: [u8; 4096] = [0; 4096];
        let mut left = n;
        while left > 0 {
            let k = left.min(Z.len() as u64);
            self.bytes(&Z[..k as usize])?;
            left -= k;
        }
        Ok(())
    }

    fn pad4(&mut self) -> Result<(), ArchiveError> {
        self.zeros(align_up(self.pos, 4) - self.pos)
    }

    /// Header, then the name NUL-padded to `h.namesize` bytes, then padding to 4.
    fn header_and_name(&mut self, h: &Header, name: &str) -> Result<(), ArchiveError> {
        debug_assert!(u64::from(h.namesize) > name.len() as u64);
        self.bytes(&h.encode())?;
        self.bytes(name.as_bytes())?;
        self.zeros(u64::from(h.namesize) - name.len() as u64)?;
        self.pad4()
    }

    fn record(&mut self, h: &Header, name: &str, data: &[u8]) -> Result<(), ArchiveError> {
        self.header_and_name(h, name)?;
        self.bytes(data)?;
        self.pad4()
    }

    fn copy_file(&mut self, p: &Path, size: u64) -> Result<(), ArchiveError> {
        let err = |source| ArchiveError::ReadSource {
            path: p.to_path_buf(),
            source,
        };
        let f = fs::File::open(p).map_err(err)?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut r = f.take(size);
        let mut copied = 0u64;
        loop {
            let n = r.read(&mut buf).map_err(err)?;
            if n == 0 {
                break;
            }
            self.bytes(&buf[..n])?;
            copied += n as u64;
        }
        if copied != size {
            return Err(ArchiveError::SourceChanged(p.to_path_buf()));
        }
        Ok(())
    }
}
