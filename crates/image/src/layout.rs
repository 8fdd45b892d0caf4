//! OCI image layouts: importing them (a directory or a tar archive, optionally gzipped) and
//! writing them (for offline images and tests).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::blobs::{BlobError, BlobStore, Expected};
use crate::digest::Digest;
use crate::limits::{ImageLimits, LimitExceeded, MAX_MANIFEST_BYTES};
use crate::oci::{self, ConfigFile, Descriptor, Manifest, ManifestOrIndex, RunConfig};
use crate::reference::{Reference, ReferenceError};
use crate::text::escape_io;
use crate::unpack::decompress;

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("{path}: not an OCI image layout ({why})")]
    NotALayout { path: PathBuf, why: &'static str },
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: invalid {what}")]
    BadJson {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: blob {digest} is missing from the archive")]
    MissingBlob { path: PathBuf, digest: Digest },
    #[error("{path}: blob {digest}")]
    Blob {
        path: PathBuf,
        digest: Digest,
        #[source]
        source: BlobError,
    },
    #[error("{path}: no {platform} image in the image index")]
    NoPlatform { path: PathBuf, platform: String },
    #[error("{path}: the layout holds no images")]
    Empty { path: PathBuf },
    #[error("{path}: image name {name:?}")]
    BadName {
        path: PathBuf,
        name: String,
        #[source]
        source: ReferenceError,
    },
    #[error("writing the layout {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {what} has more than {limit} bytes (refused: the archive may be malicious)")]
    TooLarge {
        path: PathBuf,
        what: String,
        limit: u64,
    },
    #[error("{path}: image {manifest}: {exceeded}; the image was not stored")]
    Limit {
        path: PathBuf,
        manifest: Digest,
        exceeded: LimitExceeded,
    },
}

/// An image found in an archive, its blobs already in the store.
#[derive(Debug, Clone)]
pub struct ImportedImage {
    /// Names from the archive (may be empty).
    pub names: Vec<Reference>,
    pub manifest_digest: Digest,
    pub manifest: Manifest,
}

/// Imports the images of an OCI layout directory or tar archive into `blobs`, verifying every
/// blob. Images are picked for `os`/`arch` from nested indexes. Within `limits`: an image past
/// them is refused before its layers are copied, a blob of a tar larger than any image may
/// hold before it is stored.
pub fn import(
    path: &Path,
    blobs: &BlobStore,
    os: &str,
    arch: &str,
    limits: &ImageLimits,
) -> Result<Vec<ImportedImage>, LayoutError> {
    let rerr = |source| LayoutError::Read {
        path: path.to_owned(),
        source,
    };
    let meta = fs::metadata(path).map_err(rerr)?;
    let (index_bytes, dir) = if meta.is_dir() {
        let marker = path.join("oci-layout");
        if !marker.is_file() {
            return Err(LayoutError::NotALayout {
                path: path.to_owned(),
                why: "no oci-layout file",
            });
        }
        let file = File::open(path.join("index.json")).map_err(rerr)?;
        let index = read_capped(path, "index.json", file)?;
        (index, Some(path.to_owned()))
    } else {
        (read_tar(path, blobs, limits)?, None)
    };
    let index: oci::Index =
        serde_json::from_slice(&index_bytes).map_err(|source| LayoutError::BadJson {
            path: path.to_owned(),
            what: "index.json",
            source,
        })?;
    let mut src = Source { path, dir, blobs };
    let mut out = Vec::new();
    for desc in &index.manifests {
        let mut names = Vec::new();
        if let Some(n) = desc
            .annotations
            .get(oci::ANNOTATION_CONTAINERD_NAME)
            .or_else(|| desc.annotations.get(oci::ANNOTATION_REF_NAME))
        {
            names.push(name_from_annotation(path, n)?);
        }
        let (digest, manifest) = src.resolve_manifest(desc, os, arch, 0)?;
        limits
            .check_manifest(&manifest)
            .map_err(|exceeded| LayoutError::Limit {
                path: path.to_owned(),
                manifest: digest.clone(),
                exceeded,
            })?;
        src.ensure(&manifest.config)?;
        for l in &manifest.layers {
            src.ensure(l)?;
        }
        out.push(ImportedImage {
            names,
            manifest_digest: digest,
            manifest,
        });
    }
    if out.is_empty() {
        return Err(LayoutError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(out)
}

/// `org.opencontainers.image.ref.name` is a full reference (`busybox:1`, `r.io/a/b:t`) or,
/// as skopeo and umoci write it, a bare tag; a bare tag is named after the archive's file
/// name (`busybox.tar` with tag `1` is `busybox:1`).
fn name_from_annotation(path: &Path, n: &str) -> Result<Reference, LayoutError> {
    let full = if n.contains(':') || n.contains('/') || n.contains('@') {
        n.to_owned()
    } else {
        let stem = path
            .file_name()
            .and_then(|s| s.to_str())
            .unwrap_or("image")
            .trim_end_matches(".gz")
            .trim_end_matches(".tgz")
            .trim_end_matches(".tar")
            .to_ascii_lowercase();
        format!("{stem}:{n}")
    };
    Reference::parse(&full).map_err(|source| LayoutError::BadName {
        path: path.to_owned(),
        name: full,
        source,
    })
}

/// At most [`MAX_MANIFEST_BYTES`] of `reader` (JSON documents of an archive).
fn read_capped(path: &Path, what: &str, reader: impl Read) -> Result<Vec<u8>, LayoutError> {
    let mut b = Vec::new();
    reader
        .take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut b)
        .map_err(|e| LayoutError::Read {
            path: path.to_owned(),
            source: escape_io(e),
        })?;
    if b.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(LayoutError::TooLarge {
            path: path.to_owned(),
            what: what.to_owned(),
            limit: MAX_MANIFEST_BYTES,
        });
    }
    Ok(b)
}

/// Streams a layout tar: every `blobs/sha256/<hex>` entry goes into the store (verified
/// against its name); returns `index.json`.
fn read_tar(path: &Path, blobs: &BlobStore, limits: &ImageLimits) -> Result<Vec<u8>, LayoutError> {
    let rerr = |source| LayoutError::Read {
        path: path.to_owned(),
        source: escape_io(source),
    };
    // The largest blob any image within the limits can have.
    let max_blob = limits
        .max_layer_bytes
        .max(limits.max_config_bytes)
        .max(MAX_MANIFEST_BYTES);
    let file = File::open(path).map_err(rerr)?;
    let mut archive = tar::Archive::new(decompress(file).map_err(rerr)?);
    let mut index = None;
    let mut marker = false;
    for entry in archive.entries().map_err(rerr)? {
        let mut entry = entry.map_err(rerr)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let name = name.trim_start_matches("./");
        if name == "index.json" {
            index = Some(read_capped(path, "index.json", &mut entry)?);
        } else if name == "oci-layout" {
            marker = true;
        } else if let Some(hex) = name.strip_prefix("blobs/sha256/") {
            let Ok(digest) = Digest::from_hex(hex) else {
                continue;
            };
            let size = entry.size();
            if size > max_blob {
                return Err(LayoutError::TooLarge {
                    path: path.to_owned(),
                    what: format!("blob {digest}"),
                    limit: max_blob,
                });
            }
            blobs
                .write(
                    &mut entry,
                    Some(Expected {
                        digest: &digest,
                        size: Some(size),
                    }),
                )
                .map_err(|source| LayoutError::Blob {
                    path: path.to_owned(),
                    digest: digest.clone(),
                    source,
                })?;
        }
    }
    match (index, marker) {
        (Some(i), true) => Ok(i),
        (_, false) => Err(LayoutError::NotALayout {
            path: path.to_owned(),
            why: "no oci-layout file in the archive",
        }),
        (None, true) => Err(LayoutError::NotALayout {
            path: path.to_owned(),
            why: "no index.json in the archive",
        }),
    }
}

struct Source<'a> {
    path: &'a Path,
    /// The layout directory; `None` for a tar whose blobs are already in the store.
    dir: Option<PathBuf>,
    blobs: &'a BlobStore,
}

impl Source<'_> {
    /// Puts the blob of `desc` into the store (verified), unless it is there.
    fn ensure(&mut self, desc: &Descriptor) -> Result<(), LayoutError> {
        let berr = |source| LayoutError::Blob {
            path: self.path.to_owned(),
            digest: desc.digest.clone(),
            source,
        };
        if self.blobs.contains(&desc.digest) {
            if self.blobs.size(&desc.digest) != Some(desc.size) {
                return Err(berr(BlobError::SizeMismatch {
                    digest: desc.digest.clone(),
                    expected: desc.size,
                    actual: self.blobs.size(&desc.digest).unwrap_or(0),
                }));
            }
            return Ok(());
        }
        let Some(dir) = &self.dir else {
            return Err(LayoutError::MissingBlob {
                path: self.path.to_owned(),
                digest: desc.digest.clone(),
            });
        };
        let p = dir.join("blobs/sha256").join(desc.digest.hex());
        let mut f = File::open(&p).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                LayoutError::MissingBlob {
                    path: self.path.to_owned(),
                    digest: desc.digest.clone(),
                }
            } else {
                LayoutError::Read { path: p, source: e }
            }
        })?;
        let expected = Expected {
            digest: &desc.digest,
            size: Some(desc.size),
        };
        self.blobs.write(&mut f, Some(expected)).map_err(berr)?;
        Ok(())
    }

    fn resolve_manifest(
        &mut self,
        desc: &Descriptor,
        os: &str,
        arch: &str,
        depth: u32,
    ) -> Result<(Digest, Manifest), LayoutError> {
        // Read whole below: bounded first.
        if desc.size > MAX_MANIFEST_BYTES {
            return Err(LayoutError::TooLarge {
                path: self.path.to_owned(),
                what: format!("manifest {}", desc.digest),
                limit: MAX_MANIFEST_BYTES,
            });
        }
        self.ensure(desc)?;
        let bytes = self
            .blobs
            .read(&desc.digest)
            .map_err(|source| LayoutError::Blob {
                path: self.path.to_owned(),
                digest: desc.digest.clone(),
                source,
            })?;
        let bad = |source| LayoutError::BadJson {
            path: self.path.to_owned(),
            what: "manifest",
            source,
        };
        match ManifestOrIndex::parse(Some(&desc.media_type), &bytes).map_err(bad)? {
            ManifestOrIndex::Manifest(m) => Ok((desc.digest.clone(), m)),
            ManifestOrIndex::Index(index) if depth < 2 => {
                let inner = oci::select_platform(&index, os, arch)
                    .ok_or_else(|| LayoutError::NoPlatform {
                        path: self.path.to_owned(),
                        platform: format!("{os}/{arch}"),
                    })?
                    .clone();
                self.resolve_manifest(&inner, os, arch, depth + 1)
            }
            ManifestOrIndex::Index(_) => Err(LayoutError::NoPlatform {
                path: self.path.to_owned(),
                platform: format!("{os}/{arch}"),
            }),
        }
    }
}

/// A layer to put in a new image: its (maybe compressed) bytes and what they are.
#[derive(Debug, Clone)]
pub struct LayerBlob {
    pub media_type: String,
    pub bytes: Vec<u8>,
    /// The digest of the uncompressed tar.
    pub diff_id: Digest,
}

impl LayerBlob {
    /// An uncompressed tar layer.
    pub fn tar(bytes: Vec<u8>) -> Self {
        Self {
            media_type: oci::MEDIA_OCI_LAYER.into(),
            diff_id: Digest::of(&bytes),
            bytes,
        }
    }

    /// A tar layer, gzip-compressed here.
    pub fn gzip(tar: &[u8]) -> Self {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(tar).expect("writing to memory");
        Self {
            media_type: oci::MEDIA_OCI_LAYER_GZIP.into(),
            diff_id: Digest::of(tar),
            bytes: enc.finish().expect("writing to memory"),
        }
    }
}

/// Writes an OCI image layout directory.
#[derive(Debug)]
pub struct LayoutWriter {
    dir: PathBuf,
    manifests: Vec<Descriptor>,
}

impl LayoutWriter {
    /// Creates (or reuses) the layout directory `dir`.
    pub fn create(dir: &Path) -> Result<Self, LayoutError> {
        let werr = |source| LayoutError::Write {
            path: dir.to_owned(),
            source,
        };
        fs::create_dir_all(dir.join("blobs/sha256")).map_err(werr)?;
        fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(werr)?;
        Ok(Self {
            dir: dir.to_owned(),
            manifests: Vec::new(),
        })
    }

    /// Adds a blob; returns its descriptor.
    pub fn add_blob(&self, media_type: &str, bytes: &[u8]) -> Result<Descriptor, LayoutError> {
        let digest = Digest::of(bytes);
        let p = self.dir.join("blobs/sha256").join(digest.hex());
        fs::write(&p, bytes).map_err(|source| LayoutError::Write { path: p, source })?;
        Ok(Descriptor {
            media_type: media_type.into(),
            digest,
            size: bytes.len() as u64,
            platform: None,
            annotations: BTreeMap::new(),
        })
    }

    /// Adds a linux/amd64 image with these layers (bottom first) and run config, named
    /// `ref_name` in the index. Returns the manifest digest.
    pub fn add_image(
        &mut self,
        ref_name: Option<&str>,
        run: &RunConfig,
        layers: &[LayerBlob],
    ) -> Result<Digest, LayoutError> {
        let config = ConfigFile {
            architecture: "amd64".into(),
            os: "linux".into(),
            config: Some(run.clone()),
            rootfs: Some(oci::RootFs {
                kind: "layers".into(),
                diff_ids: layers.iter().map(|l| l.diff_id.clone()).collect(),
            }),
        };
        let config_bytes = serde_json::to_vec(&config).expect("config serializes");
        let config_desc = self.add_blob(oci::MEDIA_OCI_CONFIG, &config_bytes)?;
        let mut layer_descs = Vec::new();
        for l in layers {
            layer_descs.push(self.add_blob(&l.media_type, &l.bytes)?);
        }
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(oci::MEDIA_OCI_MANIFEST.into()),
            config: config_desc,
            layers: layer_descs,
            annotations: BTreeMap::new(),
        };
        let bytes = serde_json::to_vec(&manifest).expect("manifest serializes");
        let mut desc = self.add_blob(oci::MEDIA_OCI_MANIFEST, &bytes)?;
        desc.platform = Some(oci::Platform {
            architecture: "amd64".into(),
            os: "linux".into(),
            variant: None,
        });
        if let Some(n) = ref_name {
            desc.annotations
                .insert(oci::ANNOTATION_REF_NAME.into(), n.to_owned());
        }
        let digest = desc.digest.clone();
        self.manifests.push(desc);
        Ok(digest)
    }

    /// Writes `index.json`.
    pub fn finish(self) -> Result<PathBuf, LayoutError> {
        let index = oci::Index {
            schema_version: 2,
            media_type: Some(oci::MEDIA_OCI_INDEX.into()),
            manifests: self.manifests,
        };
        let p = self.dir.join("index.json");
        fs::write(&p, serde_json::to_vec(&index).expect("index serializes"))
            .map_err(|source| LayoutError::Write { path: p, source })?;
        Ok(self.dir)
    }
}
