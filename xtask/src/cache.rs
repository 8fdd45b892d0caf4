//! The cache directory shared by every checkout on this machine: kernel sources and builds,
//! the lab root filesystem. Entries are keyed by a hash of their inputs and published by
//! an atomic rename, so a killed build never leaves anything that looks complete.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

/// `$CRX_CACHE`, else `/var/cache/crx` for root, else `~/.cache/crx`.
pub fn root() -> PathBuf {
    if let Some(dir) = std::env::var_os("CRX_CACHE") {
        return PathBuf::from(dir);
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/cache/crx");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    PathBuf::from(home).join(".cache/crx")
}

/// A short, stable content key: the first 16 hex digits of SHA-256 over `parts`.
pub fn key<I, T>(parts: I) -> String
where
    I: IntoIterator<Item = T>,
    T: AsRef<[u8]>,
{
    let mut hasher = Sha256::new();
    for part in parts {
        let part = part.as_ref();
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    let digest = hasher.finalize();
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// An exclusive lock on `name` in the cache, held until dropped. Two builds of the same
/// entry wait for each other instead of racing.
pub struct Lock(#[allow(dead_code)] File);

impl Lock {
    pub fn acquire(name: &str) -> Result<Lock> {
        let dir = root().join("locks");
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(name);
        let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        if file.try_lock().is_err() {
            eprintln!(
                "xtask: waiting for another process building {name} ({})",
                path.display()
            );
            file.lock()
                .with_context(|| format!("locking {}", path.display()))?;
        }
        Ok(Lock(file))
    }
}

/// A fresh, empty staging directory beside `dest` (removing any left by a killed build).
pub fn staging_dir(dest: &Path) -> Result<PathBuf> {
    let mut name = dest
        .file_name()
        .context("cache path has no name")?
        .to_os_string();
    name.push(".partial");
    let staging = dest.with_file_name(name);
    if staging.exists() {
        fs::remove_dir_all(&staging)
            .with_context(|| format!("removing stale {}", staging.display()))?;
    }
    fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
    Ok(staging)
}

/// Publishes a finished staging directory as `dest` in one rename.
pub fn publish(staging: &Path, dest: &Path) -> Result<()> {
    fs::rename(staging, dest)
        .with_context(|| format!("publishing {} as {}", staging.display(), dest.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_depends_on_every_part_and_its_boundaries() {
        assert_eq!(key(["a", "b"]), key(["a", "b"]));
        assert_ne!(key(["a", "b"]), key(["a", "c"]));
        assert_ne!(key(["ab", ""]), key(["a", "b"]));
        assert_eq!(key(["x"]).len(), 16);
    }
}
