//! Verified boot files (ADR 0008): the guest kernel and base initrd are checked against the
//! sha256 manifest of their directory (`SHA256SUMS`, written by `cargo xtask boot` through
//! [`write_manifest`]) before crx-vmm gets them.
//!
//! Each file is opened once and checked through that open file: it must be a regular file,
//! owned by root or by us, and not writable by everyone; its digest (read from the open file,
//! or found in the digest cache for the same file identity) must be the manifest's. crx-vmm
//! then opens the very same file through `/proc/self/fd/N` of an inherited descriptor
//! ([`VerifiedFile::vmm_path`]), so a file renamed over the verified one afterwards is never
//! booted. The digests are what the instance or container state records: a measured boot log.
//!
//! The digest cache (a small JSON file in the boot directory, [`cache_path`], written when we
//! may write there, trusted like the manifest beside it) maps a file's
//! identity (device, inode, size, mtime, ctime) to its digest: the second start of the same
//! files reads neither of them. Any change to a file changes its ctime, which userland cannot
//! set, so a stale entry never matches a changed file.
//!
//! Where a public key is configured ([`configured_key`]), the manifest must also carry an
//! ed25519 signature by it ([`signature`]): checked over the very bytes that are then parsed.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::paths::BootFiles;

mod signature;
pub use signature::{
    configured_key, load_public_key, load_signing_key, sign_manifest, DEFAULT_PUBKEY, PUBKEY_ENV,
    SIGNATURE,
};

/// The manifest's name in a boot directory: `sha256sum`'s format (`HEX  NAME` per line), so
/// that `cd BOOT_DIR && sha256sum -c SHA256SUMS` checks it too.
pub const MANIFEST: &str = "SHA256SUMS";

/// The files of a boot directory that [`write_manifest`] lists (those that exist).
pub const BOOT_NAMES: [&str; 3] = ["vmlinux", "bzImage", "base.cpio"];

/// The digest cache's name in a boot directory.
pub const CACHE_FILE: &str = ".crx-digests.json";

/// The most entries the digest cache keeps (older ones are dropped).
const CACHE_MAX: usize = 32;

/// The largest manifest read.
const MANIFEST_MAX: u64 = 64 * 1024;

/// Why a boot file was refused.
#[derive(Debug, thiserror::Error)]
pub enum BootFileError {
    #[error("{path}: no boot manifest: refusing unverified boot files (run `cargo xtask boot`; hand-made boot directories need one too, see crx_runtime::boot_files::write_manifest)")]
    NoManifest {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: line {line} is not `SHA256  NAME`")]
    BadManifest { path: PathBuf, line: usize },
    #[error("{manifest} has no digest for {name}: refusing to boot it unverified (rebuild with `cargo xtask boot`)")]
    NotInManifest { manifest: PathBuf, name: String },
    #[error("{path}: sha256 {actual}, but {manifest} says {expected}: refusing a tampered or stale boot file (rebuild with `cargo xtask boot`)")]
    DigestMismatch {
        path: PathBuf,
        manifest: PathBuf,
        expected: String,
        actual: String,
    },
    #[error(
        "{path} is writable by everyone (mode {mode:o}): refusing it as a boot file (chmod o-w)"
    )]
    WorldWritable { path: PathBuf, mode: u32 },
    #[error("{path} is owned by uid {owner}, neither root nor us (uid {ours}): refusing it as a boot file")]
    ForeignOwner {
        path: PathBuf,
        owner: u32,
        ours: u32,
    },
    #[error("{manifest} is not signed ({} missing), but boot manifests must be signed by {key}: refusing the boot files (sign with `cargo xtask boot` and CRX_BOOT_SIGNING_KEY, ADR 0008)", signature::SIGNATURE)]
    Unsigned { manifest: PathBuf, key: PathBuf },
    #[error("{signature}: not a valid signature of {manifest} by {key}: refusing the boot files")]
    BadSignature {
        signature: PathBuf,
        manifest: PathBuf,
        key: PathBuf,
    },
    #[error("{path}: not an ed25519 key in PEM: {reason}")]
    BadKey { path: PathBuf, reason: String },
    #[error("{0} is not a regular file")]
    NotAFile(PathBuf),
    #[error("{0} changed while it was being verified: try again")]
    Changed(PathBuf),
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BootFileError + '_ {
    move |source| BootFileError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A boot file as it was measured: the path it was found at and its sha256 (hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootDigest {
    pub path: PathBuf,
    pub sha256: String,
}

/// What an instance's or container's state records of its boot files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootDigests {
    pub kernel: BootDigest,
    pub initrd: BootDigest,
}

/// A boot file that passed verification, held open: crx-vmm must boot this open file
/// ([`VerifiedFile::vmm_path`]), not whatever its path names later.
#[derive(Debug, Clone)]
pub struct VerifiedFile {
    /// Where it was found.
    pub path: PathBuf,
    /// Its sha256, hex.
    pub sha256: String,
    /// Whether the digest came from the cache (the file was not read).
    pub cached: bool,
    file: Arc<File>,
}

impl VerifiedFile {
    /// The open file's descriptor: crx-vmm must inherit it ([`crate::child::keep_fds`]).
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// The path crx-vmm opens: the inherited descriptor, i.e. the verified file itself.
    pub fn vmm_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd()))
    }

    /// What the state records.
    pub fn digest(&self) -> BootDigest {
        BootDigest {
            path: self.path.clone(),
            sha256: self.sha256.clone(),
        }
    }
}

/// The kernel and base initrd, verified and held open.
#[derive(Debug, Clone)]
pub struct VerifiedBoot {
    pub kernel: VerifiedFile,
    pub initrd: VerifiedFile,
}

impl VerifiedBoot {
    /// What the state records.
    pub fn digests(&self) -> BootDigests {
        BootDigests {
            kernel: self.kernel.digest(),
            initrd: self.initrd.digest(),
        }
    }

    /// The descriptors crx-vmm inherits.
    pub fn fds(&self) -> [RawFd; 2] {
        [self.kernel.fd(), self.initrd.fd()]
    }
}

/// The digest cache of the boot directory `dir`.
pub fn cache_path(dir: &Path) -> PathBuf {
    dir.join(CACHE_FILE)
}

/// Verifies `boot` (both files in one directory) against that directory's manifest, signed
/// by the [`configured_key`] if there is one; `cache` is the digest cache to use and update
/// ([`cache_path`]), if any.
pub fn verify(boot: &BootFiles, cache: Option<&Path>) -> Result<VerifiedBoot, BootFileError> {
    verify_with_key(boot, cache, configured_key().as_deref())
}

/// [`verify`] with the public key the manifest must be signed by, if any, given.
pub fn verify_with_key(
    boot: &BootFiles,
    cache: Option<&Path>,
    key: Option<&Path>,
) -> Result<VerifiedBoot, BootFileError> {
    // The directory resolved once (`boot` is a symlink that `cargo xtask boot` swaps): the
    // manifest and the files come from the same published directory.
    let parent = boot.kernel.parent().unwrap_or(Path::new("."));
    let dir = std::fs::canonicalize(parent).map_err(io_err(parent))?;
    let manifest_path = dir.join(MANIFEST);
    let bytes = read_manifest(&manifest_path)?;
    if let Some(key) = key {
        signature::check(&manifest_path, &bytes, key)?;
    }
    let manifest = parse_manifest(&manifest_path, &bytes)?;
    let mut known = cache.map(load_cache).unwrap_or_default();
    let before = known.clone();
    let mut one = |found: &Path| -> Result<VerifiedFile, BootFileError> {
        let name = found
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let path = &dir.join(&name);
        let expected = manifest
            .get(&name)
            // (Both files live in the manifest's directory, as `find_boot_files` finds them.)
            .filter(|_| found.parent() == Some(parent))
            .ok_or_else(|| BootFileError::NotInManifest {
                manifest: manifest_path.clone(),
                name: name.clone(),
            })?;
        let file = open_checked(path)?;
        let id = identity(&file.metadata().map_err(io_err(path))?);
        let (sha256, cached) = match known.get(&id) {
            Some(d) => (d.clone(), true),
            None => {
                let d = hash_file(&file, path)?;
                if identity(&file.metadata().map_err(io_err(path))?) != id {
                    return Err(BootFileError::Changed(path.to_owned()));
                }
                known.insert(id, d.clone());
                (d, false)
            }
        };
        if &sha256 != expected {
            return Err(BootFileError::DigestMismatch {
                path: path.to_owned(),
                manifest: manifest_path.clone(),
                expected: expected.clone(),
                actual: sha256,
            });
        }
        Ok(VerifiedFile {
            path: path.to_owned(),
            sha256,
            cached,
            file: Arc::new(file),
        })
    };
    let kernel = one(&boot.kernel)?;
    let initrd = one(&boot.initrd)?;
    if let Some(c) = cache {
        if known != before {
            // The cache only saves work: one that cannot be written costs a re-read next time.
            let _ = save_cache(c, &known, &[&kernel, &initrd]);
        }
    }
    Ok(VerifiedBoot { kernel, initrd })
}

/// Writes `dir/SHA256SUMS` for the [`BOOT_NAMES`] present in `dir` (symbolic links followed),
/// atomically. `cargo xtask boot` and every test or tool that makes a boot directory call this.
pub fn write_manifest(dir: &Path) -> Result<PathBuf, BootFileError> {
    let mut text = String::new();
    for name in BOOT_NAMES {
        let path = dir.join(name);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(&path)(e)),
        };
        text.push_str(&format!("{}  {name}\n", hash_file(&file, &path)?));
    }
    let dest = dir.join(MANIFEST);
    let tmp = dir.join(format!(".{MANIFEST}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, text).map_err(io_err(&tmp))?;
    crate::paths::set_mode(&tmp, 0o644).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, &dest).map_err(io_err(&dest))?;
    Ok(dest)
}

/// The sha256 (hex) of `file`'s contents, read through the open file.
pub fn hash_file(file: &File, path: &Path) -> Result<String, BootFileError> {
    #[cfg(test)]
    tests::HASHED.with(|n| n.set(n.get() + 1));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    loop {
        let n = match file.read_at(&mut buf, off) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(path)(e)),
        };
        h.update(&buf[..n]);
        off += n as u64;
    }
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Opens `path` (following symbolic links) and checks the open file: regular, owned by root or
/// us, not writable by everyone.
fn open_checked(path: &Path) -> Result<File, BootFileError> {
    let mut file = File::open(path).map_err(io_err(path))?;
    let m = file.metadata().map_err(io_err(path))?;
    trusted(path, &m)?;
    if file.as_raw_fd() < 3 {
        // A standard stream's number (ours was closed): the VMM's stdio would replace it.
        file = file.try_clone().map_err(io_err(path))?;
    }
    Ok(file)
}

/// Refuses what is not a regular file, is foreign-owned or writable by everyone.
fn trusted(path: &Path, m: &std::fs::Metadata) -> Result<(), BootFileError> {
    if !m.is_file() {
        return Err(BootFileError::NotAFile(path.to_owned()));
    }
    let ours = nix::unistd::geteuid().as_raw();
    if m.uid() != 0 && m.uid() != ours {
        return Err(BootFileError::ForeignOwner {
            path: path.to_owned(),
            owner: m.uid(),
            ours,
        });
    }
    if m.mode() & 0o002 != 0 {
        return Err(BootFileError::WorldWritable {
            path: path.to_owned(),
            mode: m.mode() & 0o7777,
        });
    }
    Ok(())
}

/// The manifest's bytes at `path` (checked like a boot file).
fn read_manifest(path: &Path) -> Result<Vec<u8>, BootFileError> {
    let file = File::open(path).map_err(|source| BootFileError::NoManifest {
        path: path.to_owned(),
        source,
    })?;
    trusted(path, &file.metadata().map_err(io_err(path))?)?;
    let mut bytes = Vec::new();
    io::Read::read_to_end(&mut io::Read::take(&file, MANIFEST_MAX), &mut bytes)
        .map_err(io_err(path))?;
    Ok(bytes)
}

/// The manifest `bytes` read from `path`: name -> sha256.
fn parse_manifest(path: &Path, bytes: &[u8]) -> Result<BTreeMap<String, String>, BootFileError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| io_err(path)(io::Error::new(io::ErrorKind::InvalidData, e)))?;
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = || BootFileError::BadManifest {
            path: path.to_owned(),
            line: i + 1,
        };
        let (digest, name) = line.split_once(' ').ok_or_else(bad)?;
        // `HEX  NAME` (text mode) or `HEX *NAME` (binary mode), as sha256sum writes.
        let name = name
            .strip_prefix(' ')
            .or_else(|| name.strip_prefix('*'))
            .ok_or_else(bad)?;
        let hex_ok = digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex_ok || name.is_empty() || name.contains('/') {
            return Err(bad());
        }
        out.insert(name.to_owned(), digest.to_ascii_lowercase());
    }
    Ok(out)
}

/// A file's identity: any write, rename over, chmod or chown changes one of these.
fn identity(m: &std::fs::Metadata) -> String {
    format!(
        "{}:{}:{}:{}.{}:{}.{}",
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec()
    )
}

/// The digest cache: identity -> sha256. A cache that is missing, unreadable, corrupt or not
/// ours is empty.
fn load_cache(path: &Path) -> BTreeMap<String, String> {
    let Ok(file) = File::open(path) else {
        return BTreeMap::new();
    };
    match file.metadata() {
        Ok(m) if trusted(path, &m).is_ok() && m.mode() & 0o022 == 0 => {}
        _ => return BTreeMap::new(),
    }
    serde_json::from_reader(io::Read::take(&file, MANIFEST_MAX)).unwrap_or_default()
}

/// Writes the cache (private, atomically), keeping the entries of `now` when it is full.
fn save_cache(
    path: &Path,
    known: &BTreeMap<String, String>,
    now: &[&VerifiedFile],
) -> Result<(), BootFileError> {
    let mut keep = known.clone();
    if keep.len() > CACHE_MAX {
        let ids: Vec<String> = now
            .iter()
            .filter_map(|f| f.file.metadata().ok().map(|m| identity(&m)))
            .collect();
        keep.retain(|id, _| ids.contains(id));
    }
    let text = serde_json::to_vec(&keep).map_err(|e| io_err(path)(e.into()))?;
    let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
    crate::paths::write_private(&tmp, &text).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

#[cfg(test)]
mod tests;
