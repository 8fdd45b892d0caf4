//! The reference index: `index.json`, mapping normalized references (`docker.io/library/busybox:latest`)
//! to manifest digests. Read freely (writes are atomic renames); changed under `index.lock`.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::lock::FileLock;

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("reading the image index {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the image index {path} is not valid JSON (restore it or remove it and re-import images)"
    )]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("writing the image index {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// One reference in the index.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RefEntry {
    /// The image manifest (platform-specific, never an index).
    pub manifest: Digest,
}

/// The content of `index.json`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct RefIndex {
    pub version: u32,
    pub references: BTreeMap<String, RefEntry>,
}

/// The index file of a store.
#[derive(Debug, Clone)]
pub struct IndexFile {
    path: PathBuf,
    lock: PathBuf,
    tmp: PathBuf,
}

impl IndexFile {
    pub fn new(path: PathBuf, lock: PathBuf, tmp: PathBuf) -> Self {
        Self { path, lock, tmp }
    }

    /// The current index (empty when the file does not exist yet).
    pub fn load(&self) -> Result<RefIndex, IndexError> {
        match fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| IndexError::Parse {
                path: self.path.clone(),
                source,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(RefIndex {
                version: 1,
                references: BTreeMap::new(),
            }),
            Err(source) => Err(IndexError::Read {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// Loads, changes and atomically rewrites the index under its lock.
    pub fn update<T>(&self, f: impl FnOnce(&mut RefIndex) -> T) -> Result<T, IndexError> {
        let werr = |source| IndexError::Write {
            path: self.path.clone(),
            source,
        };
        let _lock = FileLock::exclusive(&self.lock).map_err(werr)?;
        let mut index = self.load()?;
        let out = f(&mut index);
        index.version = 1;
        let mut tmp = tempfile::Builder::new()
            .prefix("index-")
            .tempfile_in(&self.tmp)
            .map_err(werr)?;
        let json = serde_json::to_vec_pretty(&index).expect("index serializes");
        tmp.write_all(&json).map_err(werr)?;
        tmp.as_file().sync_all().map_err(werr)?;
        tmp.persist(&self.path).map_err(|e| werr(e.error))?;
        Ok(out)
    }
}
