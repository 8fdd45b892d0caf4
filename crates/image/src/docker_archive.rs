//! `docker save` archives (`manifest.json` + config and layer files), optionally gzipped.
//! Each image becomes an OCI manifest in the store; its layers and config keep their bytes.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::blobs::{BlobError, BlobStore};
use crate::digest::Digest;
use crate::layout::ImportedImage;
use crate::limits::{ImageLimits, LimitExceeded, MAX_MANIFEST_BYTES};
use crate::oci::{self, Descriptor, Manifest};
use crate::reference::{Reference, ReferenceError};
use crate::text::escape_io;
use crate::unpack::decompress;

#[derive(Debug, thiserror::Error)]
pub enum DockerArchiveError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: not a docker archive (no manifest.json)")]
    NoManifest { path: PathBuf },
    #[error("{path}: invalid manifest.json")]
    BadManifest {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: manifest.json names {file:?}, which the archive does not hold")]
    MissingFile { path: PathBuf, file: String },
    #[error("{path}: storing {file:?}")]
    Blob {
        path: PathBuf,
        file: String,
        #[source]
        source: BlobError,
    },
    #[error("{path}: repo tag {tag:?}")]
    BadTag {
        path: PathBuf,
        tag: String,
        #[source]
        source: ReferenceError,
    },
    #[error("{path}: the archive holds no images")]
    Empty { path: PathBuf },
    #[error(
        "{path}: {file:?} has more than {limit} bytes (refused: the archive may be malicious)"
    )]
    TooLarge {
        path: PathBuf,
        file: String,
        limit: u64,
    },
    #[error("{path}: image of {config:?}: {exceeded}; the image was not stored")]
    Limit {
        path: PathBuf,
        config: String,
        exceeded: LimitExceeded,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// Imports every image of a `docker save` archive into `blobs`, within `limits` (a file
/// larger than any blob of an image within them is refused before it is stored).
pub fn import(
    path: &Path,
    blobs: &BlobStore,
    limits: &ImageLimits,
) -> Result<Vec<ImportedImage>, DockerArchiveError> {
    let rerr = |source| DockerArchiveError::Read {
        path: path.to_owned(),
        source: escape_io(source),
    };
    let max_blob = limits
        .max_layer_bytes
        .max(limits.max_config_bytes)
        .max(MAX_MANIFEST_BYTES);
    let file = File::open(path).map_err(rerr)?;
    let mut archive = tar::Archive::new(decompress(file).map_err(rerr)?);
    let mut files: HashMap<String, (Digest, u64)> = HashMap::new();
    let mut links: HashMap<String, String> = HashMap::new();
    let mut manifest_json = None;
    for entry in archive.entries().map_err(rerr)? {
        let mut entry = entry.map_err(rerr)?;
        let name = normalize(&String::from_utf8_lossy(&entry.path_bytes()));
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            if let Some(target) = entry.link_name_bytes() {
                let target = String::from_utf8_lossy(&target).into_owned();
                let resolved = if kind.is_symlink() {
                    match name.rsplit_once('/') {
                        Some((dir, _)) => normalize(&format!("{dir}/{target}")),
                        None => normalize(&target),
                    }
                } else {
                    normalize(&target)
                };
                links.insert(name, resolved);
            }
            continue;
        }
        if !kind.is_file() {
            continue;
        }
        let limit = if name == "manifest.json" {
            MAX_MANIFEST_BYTES
        } else {
            max_blob
        };
        if entry.size() > limit {
            return Err(DockerArchiveError::TooLarge {
                path: path.to_owned(),
                file: name,
                limit,
            });
        }
        if name == "manifest.json" {
            let mut b = Vec::new();
            entry.read_to_end(&mut b).map_err(rerr)?;
            manifest_json = Some(b);
            continue;
        }
        let (digest, size) =
            blobs
                .write(&mut entry, None)
                .map_err(|source| DockerArchiveError::Blob {
                    path: path.to_owned(),
                    file: name.clone(),
                    source,
                })?;
        files.insert(name, (digest, size));
    }
    let manifest_json = manifest_json.ok_or_else(|| DockerArchiveError::NoManifest {
        path: path.to_owned(),
    })?;
    let entries: Vec<Entry> = serde_json::from_slice(&manifest_json).map_err(|source| {
        DockerArchiveError::BadManifest {
            path: path.to_owned(),
            source,
        }
    })?;
    let lookup = |file: &str| -> Result<(Digest, u64), DockerArchiveError> {
        let mut name = normalize(file);
        for _ in 0..8 {
            if let Some(f) = files.get(&name) {
                return Ok(f.clone());
            }
            match links.get(&name) {
                Some(t) => name = t.clone(),
                None => break,
            }
        }
        Err(DockerArchiveError::MissingFile {
            path: path.to_owned(),
            file: file.to_owned(),
        })
    };
    let mut out = Vec::new();
    for e in entries {
        let (cdigest, csize) = lookup(&e.config)?;
        let mut layers = Vec::new();
        for l in &e.layers {
            let (digest, size) = lookup(l)?;
            layers.push(Descriptor {
                media_type: layer_media_type(blobs, &digest),
                digest,
                size,
                platform: None,
                annotations: BTreeMap::new(),
            });
        }
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(oci::MEDIA_OCI_MANIFEST.into()),
            config: Descriptor {
                media_type: oci::MEDIA_OCI_CONFIG.into(),
                digest: cdigest,
                size: csize,
                platform: None,
                annotations: BTreeMap::new(),
            },
            layers,
            annotations: BTreeMap::new(),
        };
        limits
            .check_manifest(&manifest)
            .map_err(|exceeded| DockerArchiveError::Limit {
                path: path.to_owned(),
                config: e.config.clone(),
                exceeded,
            })?;
        let bytes = serde_json::to_vec(&manifest).expect("manifest serializes");
        let manifest_digest =
            blobs
                .write_bytes(&bytes)
                .map_err(|source| DockerArchiveError::Blob {
                    path: path.to_owned(),
                    file: "manifest".into(),
                    source,
                })?;
        let mut names = Vec::new();
        for tag in e.repo_tags.unwrap_or_default() {
            names.push(
                Reference::parse(&tag).map_err(|source| DockerArchiveError::BadTag {
                    path: path.to_owned(),
                    tag: tag.clone(),
                    source,
                })?,
            );
        }
        out.push(ImportedImage {
            names,
            manifest_digest,
            manifest,
        });
    }
    if out.is_empty() {
        return Err(DockerArchiveError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(out)
}

/// `a/./b/../c` -> `a/c`, without a leading `./` or `/`.
fn normalize(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}

fn layer_media_type(blobs: &BlobStore, digest: &Digest) -> String {
    let mut head = [0u8; 4];
    let n = blobs
        .open(digest)
        .ok()
        .and_then(|mut f| f.read(&mut head).ok())
        .unwrap_or(0);
    if head[..n].starts_with(&[0x1f, 0x8b]) {
        oci::MEDIA_OCI_LAYER_GZIP.into()
    } else if head[..n].starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        "application/vnd.oci.image.layer.v1.tar+zstd".into()
    } else {
        oci::MEDIA_OCI_LAYER.into()
    }
}
