//! Installing the Debian packages a tool needs, when they are missing.

use std::process::Command;
use std::sync::Once;

use anyhow::{bail, Result};

use crate::cmd;

/// Whether Debian package `name` is installed.
pub fn installed(name: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", name])
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("ok installed"))
        .unwrap_or(false)
}

/// Installs those of `packages` that are missing (needs root).
pub fn ensure(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "missing Debian packages: {} (run as root, or apt-get install them)",
            missing.join(" ")
        );
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    static UPDATE: Once = Once::new();
    let mut update = Ok(());
    UPDATE.call_once(|| update = cmd::run(Command::new("apt-get").args(["update", "-qq"])));
    update?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// The Debian packages the whole test suite needs: `.ci/apt-packages`, one per line.
pub fn project_packages() -> Result<Vec<String>> {
    let path = crate::workspace_root().join(".ci/apt-packages");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    Ok(text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim().to_string())
        .filter(|l| !l.is_empty())
        .collect())
}

/// Installs every package in `.ci/apt-packages` that is missing.
pub fn ensure_project_packages() -> Result<()> {
    let packages = project_packages()?;
    ensure(&packages.iter().map(String::as_str).collect::<Vec<_>>())
}
