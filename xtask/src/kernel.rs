//! Reproducible guest and lab-host kernels from Debian's `linux-source-6.12`, built once per
//! (fragments, source version) and cached.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{apt, cache, cmd, workspace_root};

/// Bump when the build recipe below changes in a way that changes the output.
const RECIPE: &str = "crx-kernel-recipe-1";
const SOURCE_PACKAGE: &str = "linux-source-6.12";
const BUILD_PACKAGES: &[&str] = &[
    SOURCE_PACKAGE,
    "flex",
    "bison",
    "bc",
    "libelf-dev",
    "libssl-dev",
    "make",
    "gcc",
    "xz-utils",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Flavor {
    /// The microVM guest kernel.
    Guest,
    /// The nested lab's host kernel: the guest config plus KVM.
    Lab,
}

impl Flavor {
    pub fn name(self) -> &'static str {
        match self {
            Flavor::Guest => "guest",
            Flavor::Lab => "lab",
        }
    }

    /// The config fragments merged over tinyconfig, in order.
    pub fn fragments(self) -> Vec<PathBuf> {
        let dir = workspace_root().join("kernel");
        match self {
            Flavor::Guest => vec![dir.join("guest.config")],
            Flavor::Lab => vec![dir.join("guest.config"), dir.join("lab.config")],
        }
    }
}

/// A built kernel in the cache.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub dir: PathBuf,
    pub bzimage: PathBuf,
    pub vmlinux: PathBuf,
}

impl Kernel {
    fn at(dir: PathBuf) -> Kernel {
        Kernel {
            bzimage: dir.join("bzImage"),
            vmlinux: dir.join("vmlinux"),
            dir,
        }
    }
}

pub fn source_version() -> Result<String> {
    // Inside the lab the package is not installed; the host passes its version on.
    if let Ok(v) = std::env::var("CRX_LINUX_SOURCE_VERSION") {
        return Ok(v);
    }
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", SOURCE_PACKAGE])
        .output();
    match out {
        Ok(o) if o.status.success() && !o.stdout.is_empty() => Ok(String::from_utf8(o.stdout)?),
        _ => bail!(
            "{SOURCE_PACKAGE} is not installed (run `cargo xtask kernel` as root to install it)"
        ),
    }
}

/// Where the kernel for `flavor` lives in the cache (built or not).
pub fn locate(flavor: Flavor) -> Result<Kernel> {
    let version = source_version()?;
    let mut parts = vec![
        RECIPE.as_bytes().to_vec(),
        flavor.name().into(),
        version.into_bytes(),
    ];
    for f in flavor.fragments() {
        parts.push(fs::read(&f).with_context(|| format!("reading {}", f.display()))?);
    }
    let key = cache::key(&parts);
    Ok(Kernel::at(
        cache::root()
            .join("kernels")
            .join(format!("{}-{key}", flavor.name())),
    ))
}

/// The kernel for `flavor`, built first if the cache does not have it.
pub fn ensure(flavor: Flavor) -> Result<Kernel> {
    if let Ok(kernel) = locate(flavor) {
        if kernel.bzimage.exists() {
            return Ok(kernel);
        }
    }
    apt::ensure(BUILD_PACKAGES)?;
    let kernel = locate(flavor)?;
    let _lock = cache::Lock::acquire(&format!("kernel-{}", flavor.name()))?;
    if kernel.bzimage.exists() {
        return Ok(kernel); // built by whoever held the lock
    }
    let src = source_tree()?;
    let staging = cache::staging_dir(&kernel.dir)?;
    eprintln!(
        "xtask: building the {} kernel in {} (a few minutes, once)",
        flavor.name(),
        staging.display()
    );
    build(&src, &staging, &flavor.fragments())?;
    let obj = staging.join("obj");
    fs::copy(obj.join("arch/x86/boot/bzImage"), staging.join("bzImage"))?;
    fs::copy(obj.join("vmlinux"), staging.join("vmlinux"))?;
    fs::copy(obj.join(".config"), staging.join("config"))?;
    fs::remove_dir_all(&obj)?;
    cache::publish(&staging, &kernel.dir)?;
    eprintln!(
        "xtask: {} kernel ready: {}",
        flavor.name(),
        kernel.dir.display()
    );
    Ok(kernel)
}

/// The unpacked kernel source, extracted once per package version.
fn source_tree() -> Result<PathBuf> {
    let version = source_version()?;
    let dest = cache::root()
        .join("src")
        .join(format!("{SOURCE_PACKAGE}_{version}"));
    if dest.join("Makefile").exists() {
        return Ok(dest);
    }
    let _lock = cache::Lock::acquire("kernel-source")?;
    if dest.join("Makefile").exists() {
        return Ok(dest);
    }
    let staging = cache::staging_dir(&dest)?;
    let tarball = format!("/usr/src/{SOURCE_PACKAGE}.tar.xz");
    eprintln!("xtask: unpacking {tarball}");
    cmd::run(
        Command::new("tar")
            .args(["xf", &tarball, "--strip-components=1", "-C"])
            .arg(&staging),
    )?;
    cache::publish(&staging, &dest)?;
    Ok(dest)
}

fn make(src: &Path, obj: &Path) -> Command {
    let mut c = Command::new("make");
    c.arg("-C").arg(src).arg(format!("O={}", obj.display()));
    // Reproducible: no build host, user or time in the image.
    c.env("KBUILD_BUILD_TIMESTAMP", "1970-01-01")
        .env("KBUILD_BUILD_USER", "crx")
        .env("KBUILD_BUILD_HOST", "crx")
        .env("KBUILD_BUILD_VERSION", "1");
    c
}

fn build(src: &Path, out: &Path, fragments: &[PathBuf]) -> Result<()> {
    let obj = out.join("obj");
    fs::create_dir_all(&obj)?;
    cmd::run(make(src, &obj).args(["-s", "tinyconfig"]))?;
    cmd::run(
        Command::new(src.join("scripts/kconfig/merge_config.sh"))
            .args(["-m", "-O"])
            .arg(&obj)
            .arg(obj.join(".config"))
            .args(fragments)
            .stdout(std::process::Stdio::null()),
    )?;
    cmd::run(make(src, &obj).args(["-s", "olddefconfig"]))?;
    let config = fs::read_to_string(obj.join(".config"))?;
    let mut missing = Vec::new();
    for f in fragments {
        missing.extend(missing_options(&fs::read_to_string(f)?, &config));
    }
    if !missing.is_empty() {
        bail!(
            "the final kernel .config lacks options the fragments require:\n  {}",
            missing.join("\n  ")
        );
    }
    let jobs = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    cmd::run(make(src, &obj).args(["-s", &format!("-j{jobs}"), "bzImage"]))
}

/// Lines of `fragment` (`CONFIG_X=v` or `# CONFIG_X is not set`) that `config` does not honour.
pub fn missing_options(fragment: &str, config: &str) -> Vec<String> {
    let set = |name: &str| {
        config
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
    };
    let mut missing = Vec::new();
    for line in fragment.lines().map(str::trim) {
        if let Some(name) = line
            .strip_prefix("# ")
            .and_then(|l| l.strip_suffix(" is not set"))
        {
            if let Some(v) = set(name) {
                missing.push(format!("{name} should be unset but is {v}"));
            }
        } else if let Some((name, want)) =
            line.split_once('=').filter(|_| line.starts_with("CONFIG_"))
        {
            match set(name) {
                Some(v) if v == want => {}
                Some(v) => missing.push(format!("{name}={want} (final .config has {v})")),
                None => missing.push(format!("{name}={want} (not set: a dependency is missing)")),
            }
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_options_names_each_unhonoured_line() {
        let fragment = "# comment\nCONFIG_A=y\nCONFIG_B=y\nCONFIG_N=4\n# CONFIG_PCI is not set\n";
        let config = "CONFIG_A=y\nCONFIG_N=8\nCONFIG_PCI=y\n";
        let missing = missing_options(fragment, config);
        assert_eq!(missing.len(), 3, "{missing:?}");
        assert!(missing[0].starts_with("CONFIG_B=y"));
        assert!(missing[1].contains("has 8"));
        assert!(missing[2].starts_with("CONFIG_PCI should be unset"));
        assert!(missing_options(fragment, "CONFIG_A=y\nCONFIG_B=y\nCONFIG_N=4\n").is_empty());
    }

    #[test]
    fn option_prefixes_do_not_match_longer_names() {
        assert_eq!(missing_options("CONFIG_A=y\n", "CONFIG_AB=y\n").len(), 1);
    }
}
