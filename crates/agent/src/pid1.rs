//! What PID 1 sets up before anything runs, and how it ends the VM.

use std::fs;
use std::os::fd::AsRawFd;

use nix::mount::{mount, MsFlags};
use nix::sys::reboot::{reboot, RebootMode};

/// One mount PID 1 makes.
struct Mount {
    fstype: &'static str,
    target: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
    /// A VM without it still works (the kernel may lack the option).
    optional: bool,
}

const fn m(fstype: &'static str, target: &'static str, data: Option<&'static str>) -> Mount {
    Mount {
        fstype,
        target,
        flags: MsFlags::MS_NOSUID
            .union(MsFlags::MS_NODEV)
            .union(MsFlags::MS_NOEXEC),
        data,
        optional: false,
    }
}

/// The mounts, in order (devtmpfs first: the console and `/dev/port` live there).
fn mounts() -> [Mount; 8] {
    let nosuid = MsFlags::MS_NOSUID;
    [
        Mount {
            flags: nosuid,
            ..m("devtmpfs", "/dev", Some("mode=0755"))
        },
        m("proc", "/proc", None),
        m("sysfs", "/sys", None),
        Mount {
            flags: nosuid | MsFlags::MS_NODEV,
            ..m("tmpfs", "/run", Some("mode=0755"))
        },
        Mount {
            flags: nosuid | MsFlags::MS_NODEV,
            ..m("tmpfs", "/tmp", Some("mode=1777"))
        },
        Mount {
            optional: true,
            ..m("cgroup2", "/sys/fs/cgroup", None)
        },
        Mount {
            flags: nosuid | MsFlags::MS_NOEXEC,
            optional: true,
            ..m(
                "devpts",
                "/dev/pts",
                Some("newinstance,ptmxmode=0666,mode=0620"),
            )
        },
        Mount {
            flags: nosuid | MsFlags::MS_NODEV,
            optional: true,
            ..m("tmpfs", "/dev/shm", Some("mode=1777"))
        },
    ]
}

/// Mounts proc, sys, devtmpfs, /run, /tmp, cgroup2 (and devpts, /dev/shm). Failures are
/// reported on the console and do not stop the boot.
pub fn mount_all() {
    for mt in mounts() {
        let _ = fs::create_dir_all(mt.target);
        if let Err(e) = mount(
            Some(mt.fstype),
            mt.target,
            Some(mt.fstype),
            mt.flags,
            mt.data,
        ) {
            if e != nix::errno::Errno::EBUSY && !(mt.optional && e == nix::errno::Errno::ENODEV) {
                eprintln!("crx-init: mount {} on {}: {e}", mt.fstype, mt.target);
            }
        }
    }
}

/// Makes sure fds 0, 1, 2 are open: the kernel opens /dev/console for init only if the initramfs
/// has it; otherwise open it from devtmpfs now. Call after /proc is mounted.
pub fn ensure_console() {
    let open = |fd: i32| std::path::Path::new(&format!("/proc/self/fd/{fd}")).exists();
    let missing: Vec<i32> = (0..3).filter(|fd| !open(*fd)).collect();
    if missing.is_empty() {
        return;
    }
    let Ok(f) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    else {
        return;
    };
    for fd in missing {
        let _ = match fd {
            0 => nix::unistd::dup2_stdin(&f),
            1 => nix::unistd::dup2_stdout(&f),
            _ => nix::unistd::dup2_stderr(&f),
        };
    }
    // If the console landed on 0, 1 or 2 itself, it is one of the standard descriptors now.
    if f.as_raw_fd() < 3 {
        std::mem::forget(f);
    }
}

/// Sets the hostname.
pub fn set_hostname(name: &str) {
    if let Err(e) = nix::unistd::sethostname(name) {
        eprintln!("crx-init: sethostname {name}: {e}");
    }
}

/// Syncs and resets the VM (the VMM stops on reset). Never returns.
pub fn power_off() -> ! {
    nix::unistd::sync();
    let _ = reboot(RebootMode::RB_AUTOBOOT);
    // reboot(2) only returns on error (not PID 1 in the init namespace, or no CAP_SYS_BOOT).
    eprintln!("crx-init: reboot failed; halting here");
    loop {
        std::thread::park();
    }
}
