//! virtiofsd (the Rust vhost-user-fs daemon from crates.io), built once into the cache.
//!
//! `$CRX_CACHE/virtiofsd-<version>/bin/virtiofsd` is where crx-runtime looks for it (after
//! `$CRX_VIRTIOFSD`). Debian's qemu ships an old C `/usr/lib/qemu/virtiofsd`: it is never used.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result};

use crate::{apt, cache, cmd};

/// The pinned version: 1.14.0 builds with this project's rustc (1.95) and uses the rust-vmm
/// crates of the same generation as crx-vmm (vhost 0.16, vm-memory 0.17).
pub const VERSION: &str = "1.14.0";

/// Debian packages its build links against (also listed in `.ci/apt-packages`).
pub const BUILD_DEPS: &[&str] = &["libseccomp-dev", "libcap-ng-dev", "pkg-config"];

/// The cache directory of the pinned version (what `ensure` publishes).
pub fn dir() -> PathBuf {
    cache::root().join(format!("virtiofsd-{VERSION}"))
}

/// The binary, building it first if the cache does not hold it yet. A second call returns at
/// once; two concurrent calls build it once.
pub fn ensure() -> Result<PathBuf> {
    let dest = dir();
    let bin = dest.join("bin/virtiofsd");
    if bin.is_file() {
        return Ok(bin);
    }
    let _lock = cache::Lock::acquire(&format!("virtiofsd-{VERSION}"))?;
    if bin.is_file() {
        return Ok(bin);
    }
    apt::ensure(BUILD_DEPS)?;
    let staging = cache::staging_dir(&dest)?;
    eprintln!("xtask: building virtiofsd {VERSION} from crates.io (a few minutes)");
    cmd::run(
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args(["install", "virtiofsd", "--locked", "--version", VERSION])
            .arg("--root")
            .arg(&staging)
            // Not this workspace's target directory (nor one a caller set): the install uses
            // its own lock file and is removed once installed.
            .env("CARGO_TARGET_DIR", staging.join("build")),
    )
    .context("cargo install virtiofsd")?;
    std::fs::remove_dir_all(staging.join("build")).context("removing the build directory")?;
    cache::publish(&staging, &dest)?;
    Ok(bin)
}
