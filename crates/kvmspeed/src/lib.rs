//! The KVM speed probe: a calibrated tiny guest, nanoseconds per iteration of a `dec ecx; jnz`
//! loop in real mode. ~1 ns where KVM runs guest code natively, ~1000 ns where it emulates every
//! instruction (a nested KVM under QEMU TCG, as on this project's development machines), which
//! cannot boot Linux in any useful time.
//!
//! Used by `crx-vmm --kvm-speed` (which `crx check` runs, so the runtime links no KVM crate) and
//! by xtask (tier 2 and the benches decide with it whether a Linux guest can boot here).

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit};

/// Why the probe could not measure.
#[derive(Debug, thiserror::Error)]
pub enum SpeedError {
    /// A KVM call failed (no /dev/kvm, no permission, a KVM refusing the tiny guest).
    #[error("{call}: {source}")]
    Kvm {
        /// The device or ioctl.
        call: &'static str,
        /// KVM's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The guest left the loop other than by `hlt`.
    #[error("the calibration guest stopped unexpectedly: {0}")]
    UnexpectedExit(String),
}

/// Below this many nanoseconds per iteration, this KVM runs guest code natively: fast enough to
/// boot Linux.
pub const FAST_ENOUGH_NS: f64 = 50.0;

/// Whether `ns` nanoseconds per iteration ([`loop_speed_ns`]) is fast enough to boot Linux.
pub fn fast_enough(ns: f64) -> bool {
    ns < FAST_ENOUGH_NS
}

/// Nanoseconds per loop iteration, timed on a second run of the loop in the same VM (the first
/// entry's fixed cost, large under nested virtualization, is left out).
pub fn loop_speed_ns() -> Result<f64, SpeedError> {
    const ITERATIONS: u32 = 200_000;
    Ok(run_loop(ITERATIONS)? / f64::from(ITERATIONS))
}

/// Runs the loop `iterations` times in a fresh VM, twice; nanoseconds of the second run.
fn run_loop(iterations: u32) -> Result<f64, SpeedError> {
    const SIZE: usize = 0x1000;
    let e = |call: &'static str| move |source| SpeedError::Kvm { call, source };
    let mut code = vec![0x66, 0xb9];
    code.extend_from_slice(&iterations.to_le_bytes()); // mov ecx, iterations
    code.extend_from_slice(&[0x66, 0x49, 0x75, 0xfc, 0xf4]); // loop: dec ecx; jnz loop; hlt
    let kvm = Kvm::new().map_err(e("/dev/kvm"))?;
    let vm = kvm.create_vm().map_err(e("KVM_CREATE_VM"))?;
    let mut mem = vec![0u8; SIZE * 2];
    let offset = mem.as_ptr().align_offset(SIZE);
    let guest = &mut mem[offset..offset + SIZE];
    guest[..code.len()].copy_from_slice(&code);
    let region = kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: 0,
        memory_size: SIZE as u64,
        userspace_addr: guest.as_mut_ptr() as u64,
        flags: 0,
    };
    // SAFETY: the region is page-aligned memory owned by `mem`, which outlives the VM (the VM
    // and its vCPU are dropped before `mem`, declared earlier, at the end of this function).
    unsafe { vm.set_user_memory_region(region) }.map_err(e("KVM_SET_USER_MEMORY_REGION"))?;
    let mut vcpu = vm.create_vcpu(0).map_err(e("KVM_CREATE_VCPU"))?;
    let mut sregs = vcpu.get_sregs().map_err(e("KVM_GET_SREGS"))?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).map_err(e("KVM_SET_SREGS"))?;
    let mut elapsed = 0.0;
    for _ in 0..2 {
        let mut regs = vcpu.get_regs().map_err(e("KVM_GET_REGS"))?;
        regs.rip = 0;
        regs.rflags = 2;
        vcpu.set_regs(&regs).map_err(e("KVM_SET_REGS"))?;
        let started = std::time::Instant::now();
        loop {
            match vcpu.run().map_err(e("KVM_RUN"))? {
                VcpuExit::Hlt => break,
                VcpuExit::Intr => continue,
                other => return Err(SpeedError::UnexpectedExit(format!("{other:?}"))),
            }
        }
        elapsed = started.elapsed().as_nanos() as f64;
    }
    Ok(elapsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_threshold_splits_native_from_emulated() {
        assert!(fast_enough(1.0));
        assert!(!fast_enough(FAST_ENOUGH_NS));
        assert!(!fast_enough(1000.0));
    }

    /// Tier 2: this host's KVM answers the probe with a positive figure.
    #[test]
    fn kvm_loop_speed_is_measured() {
        let ns = loop_speed_ns().expect("the calibration guest runs to hlt");
        assert!(ns > 0.0 && ns.is_finite(), "{ns}");
    }
}
