//! What the lab benchmarks share: a release build (also `bench vmm`'s), the outer half
//! that builds and starts them, and the inner half's scratch directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::{boot, cmd, lab, workspace_root};

/// Builds release `crx` and `crx-vmm` and the boot artefacts, then runs
/// `xtask bench NAME --inner --runs=RUNS` in the lab with `CRX_BOOT_DIR` and `env` set.
pub fn outer(name: &str, runs: usize, mut env: Vec<(String, String)>) -> Result<i32> {
    build_release(&["crx", "crx-vmm", "crx-jailer"])?;
    let boot_dir = boot::ensure()?;
    env.push((
        "CRX_BOOT_DIR".into(),
        boot_dir.to_string_lossy().into_owned(),
    ));
    let exe = std::env::current_exe()?.to_string_lossy().into_owned();
    // Rebuilt meanwhile (a shared target directory): the new binary at the same path.
    let exe = exe.strip_suffix(" (deleted)").unwrap_or(&exe).to_owned();
    let cmd = [
        exe,
        "bench".into(),
        name.into(),
        "--inner".into(),
        format!("--runs={runs}"),
    ];
    let opts = lab::Options {
        env,
        ..lab::Options::default()
    };
    lab::run(&cmd, &opts)
}

/// `cargo build --release` of `packages`.
pub fn build_release(packages: &[&str]) -> Result<()> {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(workspace_root())
        .args(["build", "--release", "--quiet"]);
    for p in packages {
        c.args(["-p", p]);
    }
    cmd::run(&mut c)
}

/// Runs `measure` in a fresh scratch directory named after the benchmark, removed after.
pub fn in_scratch(
    name: &str,
    runs: usize,
    measure: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let work = std::env::temp_dir().join(format!("crx-bench-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let result = measure(&work);
    let _ = std::fs::remove_dir_all(&work);
    result
}

/// The release `crx`, `crx-vmm` and `crx-jailer` and the boot files installed under `work` (the
/// lab host's own disk, as on a real host: run from the lab's 9p share, every start of a
/// binary read its pages through 9p, about 0.3 s of a warm `crx run`), and a state root
/// holding the offline busybox image: what the `crx run` benchmarks start from. Every later
/// `crx` of this process boots from the installed boot files (`CRX_BOOT_DIR`).
pub fn crx_with_busybox(work: &Path) -> Result<(PathBuf, PathBuf)> {
    let bin = work.join("bin");
    std::fs::create_dir_all(&bin)?;
    for b in ["crx", "crx-vmm", "crx-jailer"] {
        let from = workspace_root().join("target/release").join(b);
        std::fs::copy(&from, bin.join(b))
            .with_context(|| format!("installing {}", from.display()))?;
    }
    if let Some(from) = std::env::var_os("CRX_BOOT_DIR") {
        let boot = work.join("boot");
        std::fs::create_dir_all(&boot)?;
        for e in std::fs::read_dir(&from)? {
            let e = e?;
            let name = e.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue; // the digest cache: of the files where they were
            }
            std::fs::copy(e.path(), boot.join(&name))
                .with_context(|| format!("installing {}", e.path().display()))?;
        }
        std::env::set_var("CRX_BOOT_DIR", &boot);
    }
    let crx = bin.join("crx");
    let root = work.join("state");
    cmd::run(
        Command::new(&crx)
            .arg("--root")
            .arg(&root)
            .args(["load", "--busybox"])
            .stdout(Stdio::null()),
    )?;
    Ok((crx, root))
}
