//! Host readiness checks for `crx check`.

use std::path::Path;

use crate::paths;

/// One check's outcome.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
    pub fix: Option<String>,
}

fn check(name: &'static str, ok: bool, detail: String, fix: &str) -> Check {
    Check {
        name,
        ok,
        detail,
        fix: Some(fix.to_owned()),
    }
}

/// Whether VMMs run jailed (ADR 0011), and the jailer that does it.
fn jail() -> Check {
    if !crate::jail::enabled() {
        let detail = "off: VMMs run unconfined (CRX_JAIL=0, or not root)";
        return check("jail", true, detail.into(), "");
    }
    match paths::find_vmm().and_then(|vmm| crate::jail::find_jailer(&vmm)) {
        Ok(p) => check("jail", true, format!("on: {}", p.display()), ""),
        Err(e) => check(
            "jail",
            false,
            e.to_string(),
            "`cargo build -p crx-jailer` and keep crx-jailer next to crx-vmm, or set CRX_JAILER",
        ),
    }
}

/// Whether jailed VMMs get a cgroup v2 of their own ([`crate::jail::cgroup`]); without a
/// usable hierarchy they run without one (a degrade, said here and recorded per VM).
fn sandbox_cgroups() -> Check {
    match crate::jail::cgroup::find() {
        Ok(h) => check(
            "sandbox cgroups",
            true,
            format!(
                "cgroup v2 at {} (memory, pids{}): each jailed VMM in {}/{}/NAME",
                h.root.display(),
                if h.cpu { ", cpu" } else { "" },
                h.root.display(),
                crate::jail::cgroup::PARENT
            ),
            "",
        ),
        Err(why) => check(
            "sandbox cgroups",
            true,
            format!("off: {why}; VMMs run without per-sandbox memory/pids/cpu limits"),
            "",
        ),
    }
}

/// Whether crx-vmm's seccomp filters are on for the VMMs started now.
fn seccomp() -> Check {
    let detail = if crate::jail::seccomp_enabled() {
        "on: crx-vmm's filters per thread (ADR 0010)"
    } else {
        "OFF: CRX_SECCOMP=0 starts crx-vmm with --no-seccomp (for debugging only)"
    };
    check("seccomp", true, detail.into(), "")
}

/// The instances under `root` whose VMM was started without seccomp or without the jail (as
/// their `confinement.json` records).
fn unconfined_instances(root: &Path) -> Check {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(paths::instances_dir(root)) {
        for e in entries.filter_map(Result::ok) {
            if let Some(c) = crate::jail::Confinement::load(&e.path()) {
                let missing = c.missing();
                if !missing.is_empty() {
                    let id: String = e.file_name().to_string_lossy().chars().take(12).collect();
                    found.push(format!("{id} (no {})", missing.join(", no ")));
                }
            }
        }
    }
    found.sort();
    let detail = if found.is_empty() {
        "none: every instance's VMM ran jailed with its seccomp filters".to_owned()
    } else {
        format!("started without a layer: {}", found.join("; "))
    };
    check("unconfined instances", true, detail, "")
}

/// The KVM speed probe, run by `crx-vmm --kvm-speed` (the runtime links no KVM crate).
fn kvm_speed() -> Check {
    let measured = paths::find_vmm()
        .map_err(|e| e.to_string())
        .and_then(|vmm| {
            let out = std::process::Command::new(&vmm)
                .arg("--kvm-speed")
                .stdin(std::process::Stdio::null())
                .output()
                .map_err(|e| format!("{}: {e}", vmm.display()))?;
            let stdout = String::from_utf8_lossy(&out.stdout);
            match stdout.trim().parse::<f64>() {
                Ok(ns) if out.status.success() => Ok(ns),
                _ => Err(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
            }
        });
    match measured {
        Ok(ns) if ns < FAST_ENOUGH_NS => check("kvm speed", true, format!("{ns:.1} ns per guest loop iteration: fast enough to boot Linux"), ""),
        Ok(ns) => check(
            "kvm speed",
            false,
            format!("{ns:.0} ns per guest loop iteration: this KVM emulates guest instructions (~1 us each) and cannot boot Linux"),
            "use a host with hardware virtualization (nested virtualization enabled); on this project's machines run crx inside the nested lab: `cargo xtask lab -- target/debug/crx ...`",
        ),
        Err(e) => check("kvm speed", false, format!("the calibration guest failed: {e}"), "check dmesg for KVM errors (and that crx-vmm is found: see below)"),
    }
}

/// The template cache (ADR 0017) and whether the shape of `crx run --network none` has its
/// template (a VM with a NIC, as `crx run`'s default bridge network gives, boots cold).
fn templates() -> Check {
    let vm = paths::verified_boot_files()
        .ok()
        .zip(paths::find_vmm().ok())
        .map(|(boot, vmm)| crate::vm::VmConfig {
            vmm,
            boot,
            memory_mib: 256,
            vcpus: 1,
            disk: "disk".into(),
            vsock_uds: Default::default(),
            console: Default::default(),
            vmm_log: Default::default(),
            die_with_parent: false,
            boot_timer: false,
            fs: Vec::new(),
            net: Vec::new(),
        });
    let detail = format!(
        "{}; VMs with a virtio-fs share boot cold",
        crate::template::status(vm.as_ref())
    );
    check("templates", true, detail, "")
}

/// Nanoseconds per iteration under which KVM runs guest code natively (as in `crx-kvmspeed`).
const FAST_ENOUGH_NS: f64 = 50.0;

/// Every check, in order.
pub fn run_all(root: &Path) -> Vec<Check> {
    let mut out = Vec::new();
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm");
    out.push(match &kvm {
        Ok(_) => check("kvm", true, "/dev/kvm opens read-write".into(), ""),
        Err(e) => check(
            "kvm",
            false,
            format!("/dev/kvm: {e}"),
            "enable virtualization (SVM/VMX) in the firmware or the hypervisor, load kvm_amd/kvm_intel, and add the user to the kvm group (or run as root)",
        ),
    });
    if kvm.is_ok() {
        out.push(kvm_speed());
    }
    out.push(match paths::verified_boot_files() {
        Ok(b) => check("kernel and initrd", true, format!("{} and {}, verified against their manifest{}", b.kernel.path.display(), b.initrd.path.display(), signed_by()), ""),
        Err(e) => check("kernel and initrd", false, e.to_string(), "run `cargo xtask boot` (or set CRX_BOOT_DIR to a directory holding vmlinux, base.cpio and their SHA256SUMS)"),
    });
    out.push(match paths::find_vmm() {
        Ok(p) => check("crx-vmm", true, p.display().to_string(), ""),
        Err(e) => check(
            "crx-vmm",
            false,
            e.to_string(),
            "`cargo build -p crx-vmm` and keep crx-vmm next to crx, or set CRX_VMM",
        ),
    });
    out.push(jail());
    let tool = [
        "/usr/bin/mkfs.erofs",
        "/usr/sbin/mkfs.erofs",
        "/sbin/mkfs.erofs",
    ]
    .iter()
    .find(|p| Path::new(p).exists());
    out.push(match tool {
        Some(p) => check("image disks", true, format!("{p} present"), ""),
        None => check(
            "image disks",
            false,
            "mkfs.erofs not found: images cannot be imported".into(),
            "apt-get install erofs-utils",
        ),
    });
    out.push(sandbox_cgroups());
    out.push(templates());
    out.push(seccomp());
    out.push(unconfined_instances(root));
    let dir = existing_ancestor(root);
    out.push(match nix::sys::statvfs::statvfs(&dir) {
        Ok(s) => {
            let free = s.blocks_available() * s.fragment_size();
            let gib = free as f64 / (1u64 << 30) as f64;
            check(
                "disk space",
                free >= 1 << 30,
                format!("{gib:.1} GiB free under {}", dir.display()),
                "free space there, `crx gc --images`, or point --root / CRX_ROOT elsewhere",
            )
        }
        Err(e) => check(
            "disk space",
            false,
            format!("{}: {e}", dir.display()),
            "create the state root or choose another with --root",
        ),
    });
    out
}

fn existing_ancestor(p: &Path) -> std::path::PathBuf {
    p.ancestors()
        .find(|a| a.exists())
        .unwrap_or(Path::new("/"))
        .to_owned()
}

/// How the boot manifest's signature was checked, for the "kernel and initrd" line.
fn signed_by() -> String {
    match crate::boot_files::configured_key() {
        Some(key) => format!(", its signature checked with {}", key.display()),
        None => " (no public key configured: its signature is not checked, ADR 0008)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jail::{Confinement, JailRecord};

    #[test]
    fn instances_started_without_a_layer_are_named() {
        let t = tempfile::tempdir().unwrap();
        let none = unconfined_instances(t.path());
        assert!(none.detail.starts_with("none"), "{}", none.detail);
        let jail = JailRecord {
            jailer: "/j".into(),
            uid: 7,
            root: "/r".into(),
        };
        let record = |seccomp: bool, jail: Option<JailRecord>| Confinement {
            seccomp,
            jail,
            cgroup: None,
            cgroup_off: Some("test".into()),
        };
        for (id, c) in [
            ("aaaaaaaaaaaaaaaa", record(true, Some(jail.clone()))),
            ("bbbbbbbbbbbbbbbb", record(false, Some(jail))),
            ("cccccccccccccccc", record(false, None)),
        ] {
            let dir = paths::instances_dir(t.path()).join(id);
            std::fs::create_dir_all(&dir).unwrap();
            c.save(&dir).unwrap();
        }
        let c = unconfined_instances(t.path());
        assert_eq!(
            c.detail,
            "started without a layer: bbbbbbbbbbbb (no seccomp); cccccccccccc (no seccomp, no jail)"
        );
    }
}
