//! The content-addressed blob store: `blobs/sha256/<hex>`, every blob verified on write.
//!
//! A blob is written to a temporary file under the store's `tmp/`, hashed as it is written,
//! synced, and renamed into place only when its digest (and size, when known) match. A
//! mismatch or an interrupted write leaves nothing under `blobs/`.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::digest::{Digest, HashingWriter};

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error(
        "blob {expected}: content has digest {actual} (corrupt or truncated; nothing was stored)"
    )]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("blob {digest}: expected {expected} bytes, got {actual} (corrupt or truncated; nothing was stored)")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("blob {0} is not in the store (re-import or re-pull the image)")]
    Missing(Digest),
    #[error("blob {digest} in the store is corrupt (run gc and re-import or re-pull the image)")]
    Corrupt { digest: Digest },
    #[error("reading the content of a blob")]
    ReadSource(#[source] io::Error),
    #[error("writing blob file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading blob file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What a blob is expected to be.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    pub digest: &'a Digest,
    pub size: Option<u64>,
}

/// The blob directory of a store.
#[derive(Debug, Clone)]
pub struct BlobStore {
    dir: PathBuf,
    tmp: PathBuf,
}

impl BlobStore {
    /// Blobs live in `dir`; partial writes in `tmp` (same file system, for atomic renames).
    pub fn new(dir: PathBuf, tmp: PathBuf) -> Self {
        Self { dir, tmp }
    }

    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(digest.hex())
    }

    pub fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// Writes the content of `reader`, verifying it against `expected` when given, and
    /// returns its digest and size. Reads at most one byte past an expected size.
    pub fn write(
        &self,
        reader: &mut dyn Read,
        expected: Option<Expected<'_>>,
    ) -> Result<(Digest, u64), BlobError> {
        let werr = |path: &Path| {
            let path = path.to_owned();
            move |source| BlobError::Write { path, source }
        };
        let tmp = tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(&self.tmp)
            .map_err(werr(&self.tmp))?;
        let mut out = HashingWriter::new(BufWriter::new(tmp.as_file()));
        let limit = expected.and_then(|e| e.size).map_or(u64::MAX, |s| s + 1);
        copy(&mut reader.take(limit), &mut out).map_err(|e| match e {
            CopyError::Read(e) => BlobError::ReadSource(e),
            CopyError::Write(e) => BlobError::Write {
                path: tmp.path().to_owned(),
                source: e,
            },
        })?;
        let (digest, size, mut buf) = out.finish();
        buf.flush().map_err(werr(tmp.path()))?;
        drop(buf);
        if let Some(exp) = expected {
            if let Some(want) = exp.size {
                if want != size {
                    return Err(BlobError::SizeMismatch {
                        digest: exp.digest.clone(),
                        expected: want,
                        actual: size,
                    });
                }
            }
            if *exp.digest != digest {
                return Err(BlobError::DigestMismatch {
                    expected: exp.digest.clone(),
                    actual: digest,
                });
            }
        }
        let dest = self.path(&digest);
        if dest.is_file() {
            return Ok((digest, size));
        }
        tmp.as_file().sync_all().map_err(werr(tmp.path()))?;
        tmp.persist(&dest).map_err(|e| BlobError::Write {
            path: dest.clone(),
            source: e.error,
        })?;
        Ok((digest, size))
    }

    /// Writes `bytes` (content known to be whole) and returns its digest.
    pub fn write_bytes(&self, bytes: &[u8]) -> Result<Digest, BlobError> {
        Ok(self.write(&mut &bytes[..], None)?.0)
    }

    /// Opens a blob for reading.
    pub fn open(&self, digest: &Digest) -> Result<File, BlobError> {
        let path = self.path(digest);
        File::open(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                BlobError::Missing(digest.clone())
            } else {
                BlobError::Read { path, source: e }
            }
        })
    }

    /// Reads a (small) blob whole, re-verifying its digest.
    pub fn read(&self, digest: &Digest) -> Result<Vec<u8>, BlobError> {
        let mut f = self.open(digest)?;
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes)
            .map_err(|source| BlobError::Read {
                path: self.path(digest),
                source,
            })?;
        if Digest::of(&bytes) != *digest {
            return Err(BlobError::Corrupt {
                digest: digest.clone(),
            });
        }
        Ok(bytes)
    }

    /// The size of a stored blob.
    pub fn size(&self, digest: &Digest) -> Option<u64> {
        fs::metadata(self.path(digest)).ok().map(|m| m.len())
    }

    /// Every blob in the store.
    pub fn list(&self) -> io::Result<Vec<Digest>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            if let Some(d) = entry
                .file_name()
                .to_str()
                .and_then(|n| Digest::from_hex(n).ok())
            {
                out.push(d);
            }
        }
        Ok(out)
    }

    pub fn remove(&self, digest: &Digest) -> io::Result<()> {
        fs::remove_file(self.path(digest))
    }
}

enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

fn copy(r: &mut dyn Read, w: &mut dyn Write) -> Result<u64, CopyError> {
    let mut buf = vec![0u8; 128 * 1024];
    let mut total = 0;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        w.write_all(&buf[..n]).map_err(CopyError::Write)?;
        total += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, BlobStore) {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("b")).unwrap();
        fs::create_dir_all(t.path().join("t")).unwrap();
        let s = BlobStore::new(t.path().join("b"), t.path().join("t"));
        (t, s)
    }

    #[test]
    fn mismatch_leaves_nothing() {
        let (t, s) = store();
        let want = Digest::of(b"right");
        let e = s
            .write(
                &mut &b"wrong"[..],
                Some(Expected {
                    digest: &want,
                    size: Some(5),
                }),
            )
            .unwrap_err();
        assert!(matches!(e, BlobError::DigestMismatch { .. }), "{e}");
        let e = s
            .write(
                &mut &b"righ"[..],
                Some(Expected {
                    digest: &want,
                    size: Some(5),
                }),
            )
            .unwrap_err();
        assert!(matches!(e, BlobError::SizeMismatch { .. }), "{e}");
        assert_eq!(fs::read_dir(t.path().join("b")).unwrap().count(), 0);
        assert_eq!(fs::read_dir(t.path().join("t")).unwrap().count(), 0);
        let (d, n) = s
            .write(
                &mut &b"right"[..],
                Some(Expected {
                    digest: &want,
                    size: Some(5),
                }),
            )
            .unwrap();
        assert_eq!((d.clone(), n), (want, 5));
        assert_eq!(s.read(&d).unwrap(), b"right");
        assert_eq!(s.list().unwrap(), vec![d]);
    }
}
