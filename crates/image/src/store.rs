//! The image store: blobs, references, and one cached read-only disk per image.
//!
//! On disk, under the root:
//! ```text
//! blobs/sha256/<hex>     verified content (manifests, configs, layers)
//! index.json             reference -> manifest digest (written by atomic rename)
//! disks/<hex>.<format>   one disk image per manifest digest (erofs or ext4)
//! tmp/                   partial downloads and unpack trees (gc empties it)
//! locks/                 gc.lock (shared by every writer, exclusive for gc),
//!                        index.lock, disk-<hex>.lock
//! ```
//! An image is complete when its reference is in `index.json`: that is written last, after
//! every blob is verified and the disk is built, so a killed import or pull leaves nothing
//! that looks complete.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::blobs::{BlobError, BlobStore};
use crate::busybox::{build_busybox_layout, BusyboxError};
use crate::confine::{unmount_detached, NodevMount};
use crate::digest::Digest;
use crate::disk::{build_disk, DiskError, DiskFormat};
use crate::docker_archive::{self, DockerArchiveError};
use crate::index::{IndexError, IndexFile, RefEntry};
use crate::layout::{self, ImportedImage, LayoutError};
use crate::limits::{ImageLimits, LimitError, LimitExceeded};
use crate::lock::FileLock;
use crate::oci::{ConfigFile, Manifest};
use crate::reference::{Reference, ReferenceError};
use crate::registry::{PullOptions, RegistryClient, RegistryError};
use crate::unpack::{unpack_layer_within, UnpackError};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("image store {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("image store {path}: taking a lock")]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: no space left on the device (free space, or remove images and run gc); nothing was stored")]
    NoSpace { path: PathBuf },
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("image {0} not found (pull or import it first; `crx images` lists what there is)")]
    NotFound(String),
    #[error("{0}: the archive names no image (import it under a name of your choice)")]
    Unnamed(PathBuf),
    #[error("{path}: the archive holds {count} images and none is tagged with the tag asked for (give one of its tags)")]
    Ambiguous { path: PathBuf, count: usize },
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error("importing OCI layout")]
    Layout(#[source] LayoutError),
    #[error("building the busybox image")]
    Busybox(#[source] BusyboxError),
    #[error("importing docker archive")]
    DockerArchive(#[source] DockerArchiveError),
    #[error("pulling {reference}")]
    Pull {
        reference: String,
        #[source]
        source: RegistryError,
    },
    #[error("image {manifest}: invalid {what}")]
    BadJson {
        manifest: Digest,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("image {manifest}: unpacking layer {layer}")]
    Unpack {
        manifest: Digest,
        layer: Digest,
        #[source]
        source: UnpackError,
    },
    #[error("image {manifest}: building the {format} disk image")]
    Disk {
        manifest: Digest,
        format: DiskFormat,
        #[source]
        source: DiskError,
    },
    #[error("image store {path}: writing")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("image store limits")]
    Limits(#[source] LimitError),
    /// Past one of the store's [`ImageLimits`]: not named, no disk (blobs fetched before
    /// the limit showed are left for `gc`).
    #[error("image {manifest}: {exceeded}; the image was not stored")]
    Limit {
        manifest: Digest,
        exceeded: LimitExceeded,
    },
}

/// How a store builds disks, and what it accepts.
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreOptions {
    pub disk_format: DiskFormat,
    /// Bounds on configs, layer counts and expanded sizes (`Default`: the built-in limits;
    /// [`Store::open`]: those of the environment, [`ImageLimits::from_env`]).
    pub limits: ImageLimits,
}

/// What a container needs from its image's configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub os: String,
    pub architecture: String,
}

impl From<ConfigFile> for ImageConfig {
    fn from(c: ConfigFile) -> Self {
        let run = c.config.unwrap_or_default();
        Self {
            entrypoint: run.entrypoint.unwrap_or_default(),
            cmd: run.cmd.unwrap_or_default(),
            env: run.env.unwrap_or_default(),
            working_dir: run.working_dir.filter(|w| !w.is_empty()),
            user: run.user.filter(|u| !u.is_empty()),
            os: c.os,
            architecture: c.architecture,
        }
    }
}

/// A stored image, ready to run: its disk image exists.
#[derive(Debug, Clone)]
pub struct Image {
    /// The name it was resolved by (`None` when resolved by bare digest).
    pub reference: Option<Reference>,
    pub manifest_digest: Digest,
    pub config: ImageConfig,
    /// The read-only disk (shared by every instance of the image; never write to it).
    pub disk_image: PathBuf,
    pub disk_format: DiskFormat,
}

/// One line of `list()`.
#[derive(Debug, Clone)]
pub struct ImageSummary {
    pub reference: Reference,
    pub manifest_digest: Digest,
    /// Bytes of the layers as stored (compressed).
    pub size: u64,
    /// The disk image, if built.
    pub disk_image: Option<PathBuf>,
}

/// What `gc` removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    pub blobs_removed: usize,
    pub disks_removed: usize,
    pub tmp_entries_removed: usize,
    pub bytes_freed: u64,
}

/// An image store rooted at a directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    blobs: BlobStore,
    index: IndexFile,
    opts: StoreOptions,
}

impl Store {
    /// Opens (creating if needed) the store at `root` with the default disk format and the
    /// limits of the environment ([`ImageLimits::from_env`]; an unparsable value is an error).
    pub fn open(root: impl AsRef<Path>) -> Result<Self, StoreError> {
        let limits = ImageLimits::from_env().map_err(StoreError::Limits)?;
        Self::open_with(
            root,
            StoreOptions {
                limits,
                ..StoreOptions::default()
            },
        )
    }

    pub fn open_with(root: impl AsRef<Path>, opts: StoreOptions) -> Result<Self, StoreError> {
        let root = root.as_ref().to_path_buf();
        for d in ["blobs/sha256", "disks", "tmp", "locks"] {
            fs::create_dir_all(root.join(d)).map_err(|source| StoreError::Open {
                path: root.clone(),
                source,
            })?;
        }
        Ok(Self {
            blobs: BlobStore::new(root.join("blobs/sha256"), root.join("tmp")),
            index: IndexFile::new(
                root.join("index.json"),
                root.join("locks/index.lock"),
                root.join("tmp"),
            ),
            root,
            opts,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn disk_format(&self) -> DiskFormat {
        self.opts.disk_format
    }

    pub fn limits(&self) -> &ImageLimits {
        &self.opts.limits
    }

    /// The verified blobs (read-only use).
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// Imports every image of an OCI layout (directory or tar, maybe gzipped), named by its
    /// `org.opencontainers.image.ref.name` annotations.
    pub fn import_oci_layout(&self, path: impl AsRef<Path>) -> Result<Vec<Image>, StoreError> {
        self.guard(|| {
            let _gc = self.writer_lock()?;
            let imported = self.import_layout(path.as_ref())?;
            self.commit_all(named(path.as_ref(), imported)?)
        })
    }

    /// Imports the single image of an OCI layout (or the one whose ref name is the tag of
    /// `reference`) under `reference`.
    pub fn import_oci_layout_as(
        &self,
        path: impl AsRef<Path>,
        reference: &str,
    ) -> Result<Image, StoreError> {
        self.guard(|| {
            let reference = Reference::parse(reference)?;
            let _gc = self.writer_lock()?;
            let mut imported = self.import_layout(path.as_ref())?;
            let pick = match imported
                .iter()
                .position(|i| i.names.iter().any(|n| n.tag() == reference.tag()))
            {
                Some(i) => i,
                None if imported.len() == 1 => 0,
                None => {
                    return Err(StoreError::Ambiguous {
                        path: path.as_ref().to_owned(),
                        count: imported.len(),
                    })
                }
            };
            let mut one = imported.swap_remove(pick);
            one.names = vec![reference];
            Ok(self.commit_all(vec![one])?.remove(0))
        })
    }

    /// Builds the offline busybox image from the static binary at `busybox` (Debian's
    /// busybox-static installs `/bin/busybox`) and imports it as `reference`.
    pub fn import_busybox(
        &self,
        busybox: impl AsRef<Path>,
        reference: &str,
    ) -> Result<Image, StoreError> {
        self.guard(|| {
            let reference = Reference::parse(reference)?;
            let _gc = self.writer_lock()?;
            let tmp = self.root.join("tmp");
            let work = tempfile::Builder::new()
                .prefix("busybox-")
                .tempdir_in(&tmp)
                .map_err(|source| StoreError::Write {
                    path: tmp.clone(),
                    source,
                })?;
            let layout_dir = work.path().join("layout");
            build_busybox_layout(busybox.as_ref(), &layout_dir, &reference.to_string())
                .map_err(StoreError::Busybox)?;
            let mut imported = self.import_layout(&layout_dir)?;
            imported[0].names = vec![reference];
            Ok(self.commit_all(imported)?.remove(0))
        })
    }

    /// Imports every image of a `docker save` archive, named by its RepoTags.
    pub fn import_docker_archive(&self, path: impl AsRef<Path>) -> Result<Vec<Image>, StoreError> {
        self.guard(|| {
            let _gc = self.writer_lock()?;
            let imported = docker_archive::import(path.as_ref(), &self.blobs, &self.opts.limits)
                .map_err(StoreError::DockerArchive)?;
            self.commit_all(named(path.as_ref(), imported)?)
        })
    }

    /// Pulls `reference` from its registry (linux/amd64 unless `opts` says otherwise).
    pub fn pull(&self, reference: &str, opts: &PullOptions) -> Result<Image, StoreError> {
        self.guard(|| {
            let reference = Reference::parse(reference)?;
            let perr = |source| StoreError::Pull {
                reference: reference.to_string(),
                source,
            };
            let _gc = self.writer_lock()?;
            let mut client = RegistryClient::new(&reference, opts).map_err(perr)?;
            let (fetched, manifest) = client.image_manifest().map_err(perr)?;
            // Before downloading anything big.
            self.check_manifest(&fetched.digest, &manifest)?;
            client.blob(&self.blobs, &manifest.config).map_err(perr)?;
            for layer in &manifest.layers {
                client.blob(&self.blobs, layer).map_err(perr)?;
            }
            let digest = self.blobs.write_bytes(&fetched.bytes)?;
            debug_assert_eq!(digest, fetched.digest);
            Ok(self
                .commit_all(vec![ImportedImage {
                    names: vec![reference],
                    manifest_digest: digest,
                    manifest,
                }])?
                .remove(0))
        })
    }

    /// Every named image, sorted by reference.
    pub fn list(&self) -> Result<Vec<ImageSummary>, StoreError> {
        let index = self.index.load()?;
        let mut out = Vec::new();
        for (name, entry) in index.references {
            let Ok(reference) = Reference::parse(&name) else {
                continue;
            };
            let size = self
                .manifest(&entry.manifest)
                .map(|m| m.layers.iter().map(|l| l.size).sum())
                .unwrap_or(0);
            let disk = self.disk_path(&entry.manifest);
            out.push(ImageSummary {
                reference,
                manifest_digest: entry.manifest,
                size,
                disk_image: disk.is_file().then_some(disk),
            });
        }
        Ok(out)
    }

    /// Removes a name (or, given a digest, every name of that image). Blobs and disks stay
    /// until `gc`. Returns the names removed.
    pub fn remove(&self, reference: &str) -> Result<Vec<Reference>, StoreError> {
        let removed = if let Some(digest) = parse_digest(reference) {
            self.index.update(|idx| {
                let names: Vec<String> = idx
                    .references
                    .iter()
                    .filter(|(_, e)| e.manifest == digest)
                    .map(|(n, _)| n.clone())
                    .collect();
                for n in &names {
                    idx.references.remove(n);
                }
                names
            })?
        } else {
            let r = Reference::parse(reference)?.to_string();
            self.index
                .update(|idx| idx.references.remove(&r).map(|_| r).into_iter().collect())?
        };
        if removed.is_empty() {
            return Err(StoreError::NotFound(reference.to_owned()));
        }
        Ok(removed
            .iter()
            .filter_map(|n| Reference::parse(n).ok())
            .collect())
    }

    /// Finds an image by name or digest (`sha256:<hex>` or a unique hex prefix of at least
    /// 12 digits), building its disk image if it is missing.
    pub fn resolve(&self, reference: &str) -> Result<Image, StoreError> {
        self.guard(|| {
            let index = self.index.load()?;
            let (name, digest) = if let Some(d) = parse_digest(reference) {
                if !index.references.values().any(|e| e.manifest == d) {
                    return Err(StoreError::NotFound(reference.to_owned()));
                }
                (None, d)
            } else if let Some(d) = hex_prefix(reference).and_then(|p| {
                let hits: HashSet<&Digest> = index
                    .references
                    .values()
                    .map(|e| &e.manifest)
                    .filter(|m| m.hex().starts_with(p))
                    .collect();
                (hits.len() == 1)
                    .then(|| hits.into_iter().next().cloned())
                    .flatten()
            }) {
                (None, d)
            } else {
                let r = Reference::parse(reference)?;
                let entry = index
                    .references
                    .get(&r.to_string())
                    .ok_or_else(|| StoreError::NotFound(r.familiar()))?;
                (Some(r), entry.manifest.clone())
            };
            let _gc = self.writer_lock()?;
            let manifest = self.manifest(&digest)?;
            let config = self.config(&digest, &manifest)?;
            let disk_image = self.ensure_disk(&digest, &manifest, &config)?;
            Ok(Image {
                reference: name,
                manifest_digest: digest,
                config: config.into(),
                disk_image,
                disk_format: self.opts.disk_format,
            })
        })
    }

    /// Removes blobs and disks of images that are neither named nor in `referenced`
    /// (manifest digests of images in use by instances), and empties `tmp/`. Waits for
    /// imports and pulls in progress to finish first.
    pub fn gc(&self, referenced: &[Digest]) -> Result<GcReport, StoreError> {
        let _gc = FileLock::exclusive(&self.root.join("locks/gc.lock")).map_err(|source| {
            StoreError::Lock {
                path: self.root.clone(),
                source,
            }
        })?;
        let mut report = GcReport::default();
        let index = self.index.load()?;
        let keep: HashSet<Digest> = index
            .references
            .values()
            .map(|e| e.manifest.clone())
            .chain(referenced.iter().cloned())
            .collect();
        let mut live: HashSet<Digest> = HashSet::new();
        for m in &keep {
            live.insert(m.clone());
            if let Ok(manifest) = self.manifest(m) {
                live.insert(manifest.config.digest.clone());
                live.extend(manifest.layers.iter().map(|l| l.digest.clone()));
            }
        }
        let werr = |path: &Path| {
            let path = path.to_owned();
            move |source| StoreError::Write { path, source }
        };
        for d in self.blobs.list().map_err(werr(&self.root))? {
            if !live.contains(&d) {
                report.bytes_freed += self.blobs.size(&d).unwrap_or(0);
                self.blobs.remove(&d).map_err(werr(&self.blobs.path(&d)))?;
                report.blobs_removed += 1;
            }
        }
        let disks = self.root.join("disks");
        for entry in fs::read_dir(&disks).map_err(werr(&disks))? {
            let entry = entry.map_err(werr(&disks))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let hex = name.split('.').next().unwrap_or("");
            let keep_it = Digest::from_hex(hex).is_ok_and(|d| keep.contains(&d));
            if !keep_it {
                report.bytes_freed += entry.metadata().map(|m| m.len()).unwrap_or(0);
                remove_any(&entry.path()).map_err(werr(&entry.path()))?;
                report.disks_removed += 1;
            }
        }
        let tmp = self.root.join("tmp");
        for entry in fs::read_dir(&tmp).map_err(werr(&tmp))? {
            let entry = entry.map_err(werr(&tmp))?;
            // An unpack tree left by a process that died still has its nodev mount.
            let tree = entry.path().join("rootfs");
            unmount_detached(&tree).map_err(werr(&tree))?;
            remove_any(&entry.path()).map_err(werr(&entry.path()))?;
            report.tmp_entries_removed += 1;
        }
        let locks = self.root.join("locks");
        for entry in fs::read_dir(&locks).map_err(werr(&locks))?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(hex) = name
                .strip_prefix("disk-")
                .and_then(|n| n.strip_suffix(".lock"))
            {
                if !Digest::from_hex(hex).is_ok_and(|d| keep.contains(&d)) {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        Ok(report)
    }

    /// The disk image path of a manifest (whether or not it is built).
    pub fn disk_path(&self, manifest: &Digest) -> PathBuf {
        self.root.join("disks").join(format!(
            "{}.{}",
            manifest.hex(),
            self.opts.disk_format.extension()
        ))
    }

    /// Imports the linux/amd64 images of the OCI layout at `path` into the blob store, within
    /// the store's limits (not yet named or committed).
    fn import_layout(&self, path: &Path) -> Result<Vec<ImportedImage>, StoreError> {
        layout::import(path, &self.blobs, "linux", "amd64", &self.opts.limits)
            .map_err(StoreError::Layout)
    }

    /// Turns a "no space left" anywhere in an error's chain into `StoreError::NoSpace`.
    fn guard<T>(&self, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
        f().map_err(|e| {
            if is_no_space(&e) {
                StoreError::NoSpace {
                    path: self.root.clone(),
                }
            } else {
                e
            }
        })
    }

    /// Held by every writer; gc takes it exclusively.
    fn writer_lock(&self) -> Result<FileLock, StoreError> {
        FileLock::shared(&self.root.join("locks/gc.lock")).map_err(|source| StoreError::Lock {
            path: self.root.clone(),
            source,
        })
    }

    /// Builds the disks of imported images, then names them in the index (last).
    fn commit_all(&self, imported: Vec<ImportedImage>) -> Result<Vec<Image>, StoreError> {
        let mut out = Vec::new();
        for img in &imported {
            let config = self.config(&img.manifest_digest, &img.manifest)?;
            let disk_image = self.ensure_disk(&img.manifest_digest, &img.manifest, &config)?;
            out.push(Image {
                reference: img.names.first().cloned(),
                manifest_digest: img.manifest_digest.clone(),
                config: config.into(),
                disk_image,
                disk_format: self.opts.disk_format,
            });
        }
        self.index.update(|idx| {
            for img in &imported {
                for n in &img.names {
                    idx.references.insert(
                        n.to_string(),
                        RefEntry {
                            manifest: img.manifest_digest.clone(),
                        },
                    );
                }
            }
        })?;
        Ok(out)
    }

    fn manifest(&self, digest: &Digest) -> Result<Manifest, StoreError> {
        let bytes = self.blobs.read(digest)?;
        serde_json::from_slice(&bytes).map_err(|source| StoreError::BadJson {
            manifest: digest.clone(),
            what: "manifest",
            source,
        })
    }

    /// Refuses an image past the store's limits on layers, config and sizes, from its
    /// manifest alone.
    fn check_manifest(&self, digest: &Digest, manifest: &Manifest) -> Result<(), StoreError> {
        self.opts
            .limits
            .check_manifest(manifest)
            .map_err(|exceeded| StoreError::Limit {
                manifest: digest.clone(),
                exceeded,
            })
    }

    /// The image's config, checked against the limits first (never read whole past them).
    fn config(&self, digest: &Digest, manifest: &Manifest) -> Result<ConfigFile, StoreError> {
        self.check_manifest(digest, manifest)?;
        let size = self.blobs.size(&manifest.config.digest).unwrap_or(0);
        self.opts
            .limits
            .check_config(size)
            .map_err(|exceeded| StoreError::Limit {
                manifest: digest.clone(),
                exceeded,
            })?;
        let bytes = self.blobs.read(&manifest.config.digest)?;
        serde_json::from_slice(&bytes).map_err(|source| StoreError::BadJson {
            manifest: digest.clone(),
            what: "image config",
            source,
        })
    }

    /// Returns the disk of an image, unpacking and building it once (under a per-image lock;
    /// built in `tmp/`, renamed into `disks/`).
    fn ensure_disk(
        &self,
        digest: &Digest,
        manifest: &Manifest,
        config: &ConfigFile,
    ) -> Result<PathBuf, StoreError> {
        let dest = self.disk_path(digest);
        if dest.is_file() {
            owner_only(&dest);
            return Ok(dest);
        }
        let lock_path = self.root.join(format!("locks/disk-{}.lock", digest.hex()));
        let _lock = FileLock::exclusive(&lock_path).map_err(|source| StoreError::Lock {
            path: lock_path.clone(),
            source,
        })?;
        if dest.is_file() {
            return Ok(dest);
        }
        let tmp = self.root.join("tmp");
        let work = tempfile::Builder::new()
            .prefix("disk-")
            .tempdir_in(&tmp)
            .map_err(|source| StoreError::Write {
                path: tmp.clone(),
                source,
            })?;
        let rootfs = work.path().join("rootfs");
        fs::create_dir(&rootfs).map_err(|source| StoreError::Write {
            path: rootfs.clone(),
            source,
        })?;
        // Device nodes of the layers only on a nodev,nosuid mount (crate::confine); dropped
        // (unmounted) before `work` is removed. Without the privilege to mount, the unpacker
        // leaves device nodes out.
        let _nodev = NodevMount::new(&rootfs).ok();
        let diff_ids = config.rootfs.as_ref().map(|r| &r.diff_ids);
        let limits = &self.opts.limits;
        let mut image_left = limits.max_image_bytes;
        for (i, layer) in manifest.layers.iter().enumerate() {
            let file = self.blobs.open(&layer.digest)?;
            let diff_id = diff_ids.and_then(|d| d.get(i));
            let limit = limits.max_layer_bytes.min(image_left);
            let stats = unpack_layer_within(&rootfs, file, diff_id, limit).map_err(|source| {
                let exceeded = match source {
                    UnpackError::TooLarge { .. } if limit < limits.max_layer_bytes => {
                        LimitExceeded::Image {
                            limit: limits.max_image_bytes,
                        }
                    }
                    UnpackError::TooLarge { limit } => LimitExceeded::Layer {
                        layer: layer.digest.clone(),
                        limit,
                    },
                    source => {
                        return StoreError::Unpack {
                            manifest: digest.clone(),
                            layer: layer.digest.clone(),
                            source,
                        }
                    }
                };
                StoreError::Limit {
                    manifest: digest.clone(),
                    exceeded,
                }
            })?;
            image_left = image_left.saturating_sub(stats.bytes);
        }
        let out = work.path().join("disk");
        build_disk(self.opts.disk_format, &rootfs, &out).map_err(|source| StoreError::Disk {
            manifest: digest.clone(),
            format: self.opts.disk_format,
            source,
        })?;
        let werr = |path: &Path| {
            let path = path.to_owned();
            move |source| StoreError::Write { path, source }
        };
        fs::File::open(&out)
            .and_then(|f| f.sync_all())
            .map_err(werr(&out))?;
        fs::rename(&out, &dest).map_err(werr(&dest))?;
        Ok(dest)
    }
}

/// Keeps the named images; none named is an error (they could never be resolved).
fn named(path: &Path, mut imported: Vec<ImportedImage>) -> Result<Vec<ImportedImage>, StoreError> {
    imported.retain(|i| !i.names.is_empty());
    if imported.is_empty() {
        return Err(StoreError::Unnamed(path.to_owned()));
    }
    Ok(imported)
}

fn is_no_space(e: &StoreError) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            if io.kind() == io::ErrorKind::StorageFull || io.raw_os_error() == Some(28) {
                return true;
            }
        }
        if let Some(DiskError::ToolFailed { stderr, .. }) = err.downcast_ref::<DiskError>() {
            if stderr.contains("No space left on device") {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

fn parse_digest(s: &str) -> Option<Digest> {
    s.strip_prefix("sha256:")?;
    s.parse().ok()
}

fn hex_prefix(s: &str) -> Option<&str> {
    (s.len() >= 12
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
    .then_some(s)
}

/// Takes group and other access away from a disk built before disks were private (best
/// effort: a store someone else owns stays as it is).
fn owner_only(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = fs::metadata(p) {
        if m.permissions().mode() & 0o077 != 0 {
            let _ = fs::set_permissions(p, fs::Permissions::from_mode(0o600));
        }
    }
}

fn remove_any(p: &Path) -> io::Result<()> {
    if fs::symlink_metadata(p)?.is_dir() {
        fs::remove_dir_all(p)
    } else {
        fs::remove_file(p)
    }
}
