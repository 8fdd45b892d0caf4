//! The lab host's root filesystem: Debian (the host's release) made with `debootstrap`,
//! the container tools later tests need, and the lab's init; packed into an ext4 image that
//! the lab boots with `snapshot=on`, so every lab run starts from the same state.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{apt, cache, cmd};

const RECIPE: &str = "crx-lab-rootfs-recipe-1";
pub const INIT: &str = include_str!("lab-init.sh");

/// Installed into the lab with `--no-install-recommends`. Changing it rebuilds the image.
pub const PACKAGES: &[&str] = &[
    "busybox-static",
    "ca-certificates",
    "containernetworking-plugins",
    "containerd",
    "cpio",
    "crun",
    "curl",
    "docker-registry",
    "e2fsprogs",
    "erofs-utils",
    "iperf3",
    "iproute2",
    "iptables",
    "podman",
    "procps",
    "qemu-system-x86",
    "runc",
    "skopeo",
    "strace",
];

/// Where the lab's root image lives in the cache (built or not).
pub fn locate() -> Result<PathBuf> {
    let (suite, mirror) = apt_source()?;
    let mut parts = vec![RECIPE.to_string(), INIT.to_string(), suite, mirror];
    parts.extend(PACKAGES.iter().map(|p| p.to_string()));
    Ok(cache::root()
        .join("rootfs")
        .join(format!("lab-{}", cache::key(&parts))))
}

/// The image file of the lab's root filesystem, built first if the cache lacks it.
pub fn ensure() -> Result<PathBuf> {
    let dir = locate()?;
    let image = dir.join("root.ext4");
    if image.exists() {
        return Ok(image);
    }
    apt::ensure(&["debootstrap", "e2fsprogs"])?;
    let _lock = cache::Lock::acquire("lab-rootfs")?;
    if image.exists() {
        return Ok(image);
    }
    let staging = cache::staging_dir(&dir)?;
    let tree = staging.join("tree");
    let (suite, mirror) = apt_source()?;
    eprintln!(
        "xtask: building the lab root filesystem ({suite}) in {} (once)",
        staging.display()
    );
    cmd::run(
        Command::new("debootstrap")
            .args(["--variant=minbase", &suite])
            .arg(&tree)
            .arg(&mirror)
            .stdout(std::process::Stdio::null()),
    )?;
    install_packages(&tree)?;
    let init = tree.join("sbin/crx-lab-init");
    fs::write(&init, INIT)?;
    cmd::run(Command::new("chmod").arg("0755").arg(&init))?;
    make_image(&tree, &staging.join("root.ext4"))?;
    fs::remove_dir_all(&tree)?;
    cache::publish(&staging, &dir)?;
    Ok(image)
}

fn install_packages(tree: &Path) -> Result<()> {
    // No service may start inside the chroot.
    let policy = tree.join("usr/sbin/policy-rc.d");
    fs::write(&policy, "#!/bin/sh\nexit 101\n")?;
    cmd::run(Command::new("chmod").arg("0755").arg(&policy))?;
    let proc_dir = tree.join("proc");
    cmd::run(
        Command::new("mount")
            .args(["-t", "proc", "proc"])
            .arg(&proc_dir),
    )?;
    let result = cmd::run(
        Command::new("chroot")
            .arg(tree)
            .args(["apt-get", "install", "-y", "-qq", "--no-install-recommends"])
            .args(PACKAGES)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(std::process::Stdio::null()),
    );
    let unmount = cmd::run(Command::new("umount").arg(&proc_dir));
    result?;
    unmount?;
    fs::remove_file(&policy)?;
    cmd::run(Command::new("chroot").arg(tree).args(["apt-get", "clean"]))
}

fn make_image(tree: &Path, image: &Path) -> Result<()> {
    let used = cmd::output(Command::new("du").args(["-sb"]).arg(tree))?;
    let used: u64 = used.split_whitespace().next().unwrap_or("0").parse()?;
    // Room for what tests write to the (snapshotted) root; the file is sparse.
    let size_mib = used / (1 << 20) * 3 / 2 + 2048;
    cmd::run(
        Command::new("mke2fs")
            .args(["-q", "-t", "ext4", "-L", "crx-lab", "-d"])
            .arg(tree)
            .arg(image)
            .arg(format!("{size_mib}M")),
    )
}

/// The Debian suite and archive URL this machine's apt uses (the lab matches the host, so
/// binaries built here run there).
fn apt_source() -> Result<(String, String)> {
    let release = fs::read_to_string("/etc/os-release").context("reading /etc/os-release")?;
    let suite = release
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|s| s.trim_matches('"').to_string())
        .context("/etc/os-release has no VERSION_CODENAME")?;
    let mut sources = String::new();
    for path in [
        "/etc/apt/sources.list.d/debian.sources",
        "/etc/apt/sources.list",
    ] {
        sources.push_str(&fs::read_to_string(path).unwrap_or_default());
        sources.push('\n');
    }
    let mirror = sources.lines().find_map(|l| {
        let l = l.trim();
        if let Some(uris) = l.strip_prefix("URIs:") {
            return uris
                .split_whitespace()
                .find(|u| u.ends_with("/debian") || u.ends_with("/debian/"));
        }
        let mut words = l
            .strip_prefix("deb ")?
            .split_whitespace()
            .filter(|w| !w.starts_with('['));
        let url = words.next()?;
        (words.next()? == suite).then_some(url)
    });
    match mirror {
        Some(m) => Ok((suite, m.to_string())),
        None => bail!("no Debian archive for {suite} in /etc/apt/sources.list(.d): cannot debootstrap the lab"),
    }
}
