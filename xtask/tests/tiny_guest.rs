//! The tiny-guest KVM test of the foundation: the same code runs on this host's /dev/kvm
//! (tier 2, where guest instructions are emulated) and inside the nested lab (tier 3), so the
//! two tiers are compared on one program. It prints how long the guest ran in each.

use std::time::Instant;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit};

const MEM_SIZE: usize = 0x10000;
const CODE_ADDR: u64 = 0x1000;
const RESULT_ADDR: usize = 0x500;
const PORT: u16 = 0x10;

/// 16-bit real-mode code: sum 1..=100 into AX, store it at 0x500, `out 0x10, al`, `hlt`.
const CODE: &[u8] = &[
    0x31, 0xc0, // xor ax, ax
    0xb9, 0x64, 0x00, // mov cx, 100
    0x01, 0xc8, // loop: add ax, cx
    0x49, // dec cx
    0x75, 0xfb, // jnz loop
    0xa3, 0x00, 0x05, // mov [0x500], ax
    0xe6, 0x10, // out 0x10, al
    0xf4, // hlt
];

struct GuestMemory {
    ptr: *mut u8,
}

impl GuestMemory {
    fn new() -> GuestMemory {
        // SAFETY: an anonymous private mapping with no address hint; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                MEM_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED, "mmap of guest memory failed");
        GuestMemory { ptr: ptr.cast() }
    }

    fn slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr maps MEM_SIZE bytes that live as long as self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, MEM_SIZE) }
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in new(); no slice outlives self.
        unsafe { libc::munmap(self.ptr.cast(), MEM_SIZE) };
    }
}

#[test]
fn kvm_tiny_guest_runs_to_hlt_and_writes_its_result() {
    let kvm =
        Kvm::new().expect("/dev/kvm must be usable for this test (tier 2 and the lab need KVM)");
    let vm = kvm.create_vm().expect("KVM_CREATE_VM");
    let mut mem = GuestMemory::new();
    mem.slice()[CODE_ADDR as usize..CODE_ADDR as usize + CODE.len()].copy_from_slice(CODE);
    let region = kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: 0,
        memory_size: MEM_SIZE as u64,
        userspace_addr: mem.ptr as u64,
        flags: 0,
    };
    // SAFETY: the region maps memory owned by `mem`, which outlives the VM.
    unsafe { vm.set_user_memory_region(region) }.expect("KVM_SET_USER_MEMORY_REGION");

    let mut vcpu = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
    let mut sregs = vcpu.get_sregs().expect("KVM_GET_SREGS");
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).expect("KVM_SET_SREGS");
    let mut regs = vcpu.get_regs().expect("KVM_GET_REGS");
    regs.rip = CODE_ADDR;
    regs.rflags = 2;
    vcpu.set_regs(&regs).expect("KVM_SET_REGS");

    let started = Instant::now();
    let mut out = Vec::new();
    let mut exits = 0;
    loop {
        exits += 1;
        assert!(exits < 100, "the tiny guest did not halt");
        match vcpu.run().expect("KVM_RUN") {
            VcpuExit::IoOut(port, data) => out.push((port, data.to_vec())),
            VcpuExit::Hlt => break,
            other => panic!("unexpected exit: {other:?}"),
        }
    }
    let elapsed = started.elapsed();
    let where_ = if std::env::var_os("CRX_IN_LAB").is_some() {
        "nested lab"
    } else {
        "host"
    };
    println!(
        "tiny guest on the {where_}'s /dev/kvm: {} exits in {elapsed:?}",
        exits
    );

    assert_eq!(out, vec![(PORT, vec![0xba])], "the guest's port write");
    let sum = u16::from_le_bytes([mem.slice()[RESULT_ADDR], mem.slice()[RESULT_ADDR + 1]]);
    assert_eq!(sum, 5050, "the sum the guest stored in memory");
}

#[test]
fn kvm_loop_speed_calibration_runs_a_guest_loop() {
    let ns = xtask::kvm::loop_speed_ns().expect("the calibration guest runs to hlt");
    let where_ = if std::env::var_os("CRX_IN_LAB").is_some() {
        "nested lab"
    } else {
        "host"
    };
    println!("{where_}'s /dev/kvm: {ns:.1} ns per guest loop iteration");
    assert!(ns > 0.0 && ns.is_finite());
}
