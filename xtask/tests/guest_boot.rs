//! The guest kernel boots to a trivial init: under QEMU TCG on the host (tier 3's host part)
//! and under QEMU with the lab host's KVM (inside the lab).

use xtask::guest_boot;
use xtask::kernel::{self, Flavor};

fn boot(accel: &str) {
    let kernel = kernel::ensure(Flavor::Guest).expect("the guest kernel (cargo xtask kernel)");
    let initrd = guest_boot::busybox_initrd().expect("the busybox initrd");
    let boot = guest_boot::boot_once(&kernel.bzimage, &initrd, accel).expect("boot to init");
    println!(
        "guest kernel under QEMU -accel {accel}: init at guest uptime {:?}, {:?} wall",
        boot.guest_uptime, boot.wall
    );
    assert!(boot.guest_uptime.as_nanos() > 0 && boot.guest_uptime < boot.wall * 4);
}

#[test]
fn labhost_guest_kernel_boots_to_init_under_qemu_tcg() {
    boot("tcg");
}

#[test]
fn lab_guest_kernel_boots_to_init_under_qemu_with_the_labs_kvm() {
    boot("kvm");
}
