//! A quick check that /dev/kvm is there and answers: open it, check the API version and
//! create (then drop) a VM. Used by the lab's init and by the tier-2 runner.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;

use anyhow::{bail, Context, Result};

const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
const KVM_CREATE_VM: libc::c_ulong = 0xAE01;

pub fn probe() -> Result<()> {
    let kvm = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .context("/dev/kvm cannot be opened (is KVM built in and the CPU's SVM/VMX exposed?)")?;
    // SAFETY: KVM_GET_API_VERSION takes no argument and only returns a number.
    let version = unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_GET_API_VERSION, 0) };
    if version != 12 {
        bail!("/dev/kvm answers API version {version}, expected 12");
    }
    // SAFETY: KVM_CREATE_VM takes the machine type (0) and returns a new fd or -1.
    let vm = unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_CREATE_VM, 0) };
    if vm < 0 {
        bail!(
            "/dev/kvm refuses to create a VM: {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: vm is a file descriptor this function owns and closes once.
    unsafe { libc::close(vm) };
    Ok(())
}

/// Nanoseconds per iteration of a `dec ecx; jnz` loop in a tiny guest: ~1 on a KVM that
/// runs guest code natively, ~1000 where KVM emulates every instruction (as on this project's
/// development machines, which therefore cannot boot Linux). The same calibration as `crx check`.
pub fn loop_speed_ns() -> Result<f64> {
    Ok(crx_kvmspeed::loop_speed_ns()?)
}

/// Whether this host's KVM runs guest code fast enough to boot Linux.
pub fn can_boot_linux() -> bool {
    matches!(loop_speed_ns(), Ok(ns) if crx_kvmspeed::fast_enough(ns))
}
