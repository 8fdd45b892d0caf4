//! The test tiers, run in order by `cargo xtask test` (the README's test command):
//!
//! 1. unit: every test whose name contains none of `kvm_`, `lab_`, `labhost_`; no KVM.
//! 2. host KVM: tests named `kvm_*` (tiny hand-made guests) on this host's /dev/kvm.
//! 3. lab: the lab's own tests (`labhost_*`, on the host, booting the lab), then every
//!    `kvm_*` and `lab_*` test run *inside* the nested lab, on its /dev/kvm.
//!
//! A tier that cannot run fails with the reason; nothing is skipped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::kernel::{self, Flavor};
use crate::{apt, boot, cmd, kvm, lab, rootfs, timed, workspace_root};

#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// Run only these tiers (1 = unit, 2 = host KVM, 3 = lab); repeatable. Default: all.
    #[arg(long)]
    pub tier: Vec<u8>,
    /// Time limit for one lab run, in seconds; a retry gets at most what is left of
    /// [`TIER3_BUDGET`]. The tier takes 30-32 minutes on a 2-core machine (2026-12-06: 1886 s
    /// for 27 binaries, in a limit of 35 minutes), so 42. A lab host that wedges (seen on
    /// 2026-11-29: no output for 20 minutes, qemu busy) is normally caught sooner, by the lab's
    /// watchdog on console silence (3 minutes, see lab.rs), and retried while the budget
    /// allows.
    #[arg(long, default_value_t = 2520)]
    pub lab_timeout: u64,
}

const NON_UNIT: [&str; 3] = ["kvm_", "lab_", "labhost_"];

/// Exit status of the tier-3 script when a test binary failed and the lab host's kernel had
/// oopsed (a fault of the emulated CPU, ADR 0001), as opposed to a failing test.
const LAB_HOST_OOPS: i32 = 86;
/// Runs of the lab tests when the lab host itself fails (never when a test fails).
const LAB_ATTEMPTS: u32 = 3;
/// What the lab runs of tier 3 may take together: CI has 90 minutes in all, about 20 of them
/// before the first lab run (the README's first command, clippy, tiers 1 and 2, the lab
/// host's own tests): 20 + 62 < 90.
const TIER3_BUDGET: Duration = Duration::from_secs(62 * 60);
/// No retry with less than this left of [`TIER3_BUDGET`].
const MIN_ATTEMPT: Duration = Duration::from_secs(5 * 60);
/// Time limit of one test binary inside the lab: a hang fails it instead of the whole lab.
const BINARY_TIMEOUT_S: u64 = 900;

pub fn run(args: &TestArgs) -> Result<i32> {
    let tiers = if args.tier.is_empty() {
        vec![1, 2, 3]
    } else {
        args.tier.clone()
    };
    apt::ensure_project_packages()?;
    let mut results = Vec::new();
    for tier in tiers {
        let started = Instant::now();
        eprintln!("\n==== tier {tier}: {} ====", title(tier)?);
        let outcome = match tier {
            1 => tier1(),
            2 => tier2(),
            3 => tier3(args),
            _ => unreachable!(),
        };
        let passed = match outcome {
            Ok(passed) => passed,
            Err(e) => {
                eprintln!("tier {tier} could not run: {e:#}");
                false
            }
        };
        eprintln!(
            "==== tier {tier}: {} in {:.0}s ====",
            if passed { "PASSED" } else { "FAILED" },
            started.elapsed().as_secs_f64()
        );
        results.push((tier, passed));
    }
    let failed = results.iter().filter(|(_, p)| !p).count();
    eprintln!();
    for (tier, passed) in &results {
        eprintln!(
            "tier {tier} ({}): {}",
            title(*tier)?,
            if *passed { "passed" } else { "FAILED" }
        );
    }
    println!("tiers: {} passed, {failed} failed", results.len() - failed);
    Ok(if failed == 0 { 0 } else { 1 })
}

fn title(tier: u8) -> Result<&'static str> {
    Ok(match tier {
        1 => "unit tests, no KVM",
        2 => "tiny guests on this host's /dev/kvm",
        3 => "nested KVM lab",
        _ => bail!("there is no tier {tier} (tiers are 1, 2 and 3)"),
    })
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(workspace_root());
    c
}

fn status_ok(c: &mut Command) -> Result<bool> {
    Ok(c.status()
        .with_context(|| format!("starting {}", cmd::describe(c)))?
        .success())
}

fn tier1() -> Result<bool> {
    let mut c = cargo();
    c.args(["test", "--workspace", "--no-fail-fast", "--"]);
    for p in NON_UNIT {
        c.args(["--skip", p]);
    }
    status_ok(&mut c)
}

fn tier2() -> Result<bool> {
    kvm::probe().context("tier 2 needs this host's /dev/kvm")?;
    status_ok(cargo().args([
        "test",
        "--workspace",
        "--no-fail-fast",
        "--",
        "kvm_",
        "--skip",
        "labhost_",
    ]))
}

fn tier3(args: &TestArgs) -> Result<bool> {
    kernel::ensure(Flavor::Guest)?;
    kernel::ensure(Flavor::Lab)?;
    rootfs::ensure()?;
    crate::virtiofsd::ensure()?;
    let boot = boot::ensure()?;
    let host_tests = cargo()
        .args(["test", "--workspace", "--no-fail-fast", "--", "labhost_"])
        .env("CRX_GUEST_KERNEL", boot.join("bzImage"))
        .env("CRX_INIT_STATIC", boot::static_init())
        .status()?;
    if !host_tests.success() {
        return Ok(false);
    }
    let binaries = lab_test_binaries()?;
    if binaries.is_empty() {
        bail!("no test named kvm_* or lab_* was found to run in the lab");
    }
    // Each binary has a time limit (past it, `xtask timed` prints the state of its processes
    // before killing them) and its time recorded; a failure that comes with an oops of the lab
    // host's kernel exits LAB_HOST_OOPS, so that the run can be told apart from a failing test.
    let dir = workspace_root().join("target").join("crx-lab");
    std::fs::create_dir_all(&dir)?;
    let record = dir.join("tier3-times.txt");
    let xtask = own_copy(&dir)?;
    let mut opts = lab::Options {
        timeout: Duration::from_secs(args.lab_timeout),
        env: vec![("RUST_BACKTRACE".into(), "1".into())],
        cwd: Some(workspace_root()),
        ..lab::Options::default()
    };
    // The script goes in a file of the (shared) build directory: the lab's kernel command
    // line, which carries the command, holds only about 2 KiB.
    let file = dir.join("tier3.sh");
    let command = ["sh".into(), file.to_string_lossy().into_owned()];
    let started = Instant::now();
    // A new attempt runs only the binaries that have not passed yet.
    let mut remaining = binaries;
    for attempt in 1..=LAB_ATTEMPTS {
        let left = TIER3_BUDGET.saturating_sub(started.elapsed());
        opts.timeout = Duration::from_secs(args.lab_timeout).min(left);
        std::fs::write(&file, tier3_script(&remaining, &xtask, &record))?;
        let _ = std::fs::remove_file(&record);
        let code = lab::run(&command, &opts)?;
        // Where the time went, written by the lab on the shared build directory.
        let times = std::fs::read_to_string(&record).unwrap_or_default();
        eprintln!(
            "\ntier 3, attempt {attempt}: time per test binary in the lab\n{}",
            timed::time_table(&times)
        );
        if code == 0 {
            return Ok(true);
        }
        let lab_failed = code == LAB_HOST_OOPS || code == lab::LAB_FAILED;
        let passed = timed::passed(&times);
        remaining.retain(|(_, exe)| {
            let name = exe.file_name().unwrap_or_default().to_string_lossy();
            !passed.contains(&name.as_ref())
        });
        let left = TIER3_BUDGET.saturating_sub(started.elapsed());
        if !lab_failed || attempt == LAB_ATTEMPTS || left < MIN_ATTEMPT {
            return Ok(false);
        }
        eprintln!(
            "\ntier 3: THE LAB HOST FAILED (exit {code}: its kernel oopsed, or the lab died or \
             timed out), not a test; QEMU's TCG SVM emulation does this now and then (ADR \
             0001). Running the {} lab test binaries that have not passed again: attempt {} \
             of {LAB_ATTEMPTS}, within the {} s left.\n",
            remaining.len(),
            attempt + 1,
            left.as_secs()
        );
    }
    Ok(false)
}

/// A copy of this xtask binary in `dir`, for the lab to run: `cargo test --workspace` may have
/// rebuilt `target/debug/xtask` meanwhile (other features unified), and the running binary's
/// path then names a deleted file. `/proc/self/exe` still reads the running one.
fn own_copy(dir: &Path) -> Result<PathBuf> {
    let dest = dir.join("xtask");
    let partial = dir.join("xtask.partial");
    std::fs::copy("/proc/self/exe", &partial).context("copying /proc/self/exe")?;
    std::fs::rename(&partial, &dest).with_context(|| format!("publishing {}", dest.display()))?;
    Ok(dest)
}

/// The script tier 3 runs in the lab: each binary under `xtask timed`, in order.
fn tier3_script(binaries: &[(PathBuf, PathBuf)], xtask: &Path, record: &Path) -> String {
    let mut script = String::new();
    for (dir, exe) in binaries {
        let name = exe.file_name().unwrap_or_default().to_string_lossy();
        script.push_str(&format!(
            "echo '--- {name}'\n\
             {} timed --sysrq --limit {BINARY_TIMEOUT_S} --record {} --dir {} -- {} kvm_ lab_ --skip labhost_ || {{\n\
             rc=$?\n\
             if dmesg | grep -q -e 'stack guard page was hit' -e 'Oops:'; then\n\
             echo 'crx-lab: the lab host kernel oopsed'; exit {LAB_HOST_OOPS}; fi\n\
             exit $rc\n}}\n",
            cmd::shell_quote(&xtask.to_string_lossy()),
            cmd::shell_quote(&record.to_string_lossy()),
            cmd::shell_quote(&dir.to_string_lossy()),
            cmd::shell_quote(&exe.to_string_lossy()),
        ));
    }
    script
}

/// Test executables (with their package directories) that hold `kvm_*` or `lab_*` tests.
fn lab_test_binaries() -> Result<Vec<(PathBuf, PathBuf)>> {
    let out =
        cmd::output(cargo().args(["test", "--workspace", "--no-run", "--message-format=json"]))?;
    let mut found = BTreeMap::new();
    for line in out.lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" || msg["profile"]["test"] != true {
            continue;
        }
        let (Some(exe), Some(manifest)) =
            (msg["executable"].as_str(), msg["manifest_path"].as_str())
        else {
            continue;
        };
        let exe = PathBuf::from(exe);
        let list = cmd::output(Command::new(&exe).args(["--list", "--format", "terse"]))?;
        let wanted = list
            .lines()
            .filter_map(|l| l.strip_suffix(": test"))
            .any(|name| {
                (name.contains("kvm_") || name.contains("lab_")) && !name.contains("labhost_")
            });
        if wanted {
            let dir = PathBuf::from(manifest)
                .parent()
                .map(PathBuf::from)
                .unwrap_or_default();
            found.insert(exe, dir);
        }
    }
    Ok(found.into_iter().map(|(exe, dir)| (dir, exe)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tier3_script_times_each_binary_and_stops_at_the_first_failure() {
        let binaries = [
            (PathBuf::from("/w/a"), PathBuf::from("/t/one-1")),
            (PathBuf::from("/w/b c"), PathBuf::from("/t/two-2")),
        ];
        let script = tier3_script(&binaries, Path::new("/x/xtask"), Path::new("/r/times"));
        let syntax = Command::new("sh")
            .args(["-n", "-c", &script])
            .status()
            .unwrap();
        assert!(syntax.success(), "{script}");
        for (dir, exe) in ["/w/a /t/one-1", "'/w/b c' /t/two-2"]
            .iter()
            .map(|s| s.rsplit_once(' ').unwrap())
        {
            let line = format!(
                "/x/xtask timed --sysrq --limit {BINARY_TIMEOUT_S} --record /r/times --dir {dir} \
                 -- {exe} kvm_ lab_ --skip labhost_ || {{"
            );
            assert!(script.contains(&line), "{line}\n{script}");
        }
        assert_eq!(script.matches("exit $rc").count(), 2, "{script}");
    }
}
