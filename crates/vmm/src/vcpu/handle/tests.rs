//! [`handle_exit`] on fabricated exits: each kind of exit, no KVM.

use std::cell::{Cell, RefCell};

use super::*;

/// Records the I/O an exit makes; reads answer `0xab`; a reset is pending when asked.
#[derive(Default)]
struct Recorder {
    log: RefCell<Vec<String>>,
    reset_pending: Cell<bool>,
}

impl ExitIo for Recorder {
    fn pio_read(&self, port: u16, data: &mut [u8]) {
        data.fill(0xab);
        self.log
            .borrow_mut()
            .push(format!("in {port:#x} {}", data.len()));
    }
    fn pio_write(&self, port: u16, data: &[u8]) {
        self.log
            .borrow_mut()
            .push(format!("out {port:#x} {data:?}"));
    }
    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        data.fill(0xab);
        self.log
            .borrow_mut()
            .push(format!("load {addr:#x} {}", data.len()));
    }
    fn mmio_write(&self, addr: u64, data: &[u8]) {
        self.log
            .borrow_mut()
            .push(format!("store {addr:#x} {data:?}"));
    }
    fn reset_requested(&self) -> bool {
        self.reset_pending.replace(false)
    }
}

fn log(io: &Recorder) -> Vec<String> {
    io.log.borrow().clone()
}

#[test]
fn port_and_mmio_exits_reach_the_devices_and_resume() {
    let io = Recorder::default();
    assert_eq!(
        handle_exit(0, Ok(VcpuExit::IoOut(0x3f8, b"h")), &io),
        ExitAction::Resume
    );
    let mut byte = [0u8; 1];
    assert_eq!(
        handle_exit(0, Ok(VcpuExit::IoIn(0x3fd, &mut byte)), &io),
        ExitAction::Resume
    );
    assert_eq!(byte, [0xab], "the device's answer is what the guest reads");
    let mut word = [0u8; 4];
    assert_eq!(
        handle_exit(1, Ok(VcpuExit::MmioRead(0xd000_0000, &mut word)), &io),
        ExitAction::Resume
    );
    assert_eq!(word, [0xab; 4]);
    assert_eq!(
        handle_exit(1, Ok(VcpuExit::MmioWrite(0xd000_0070, &[1, 0, 0, 0])), &io),
        ExitAction::Resume
    );
    assert_eq!(
        log(&io),
        [
            "out 0x3f8 [104]",
            "in 0x3fd 1",
            "load 0xd0000000 4",
            "store 0xd0000070 [1, 0, 0, 0]"
        ]
    );
}

#[test]
fn an_i8042_reset_ends_the_vm_at_the_write() {
    let io = Recorder::default();
    // A write to the command port without a pending reset (e.g. a keyboard command) resumes.
    assert_eq!(
        handle_exit(0, Ok(VcpuExit::IoOut(I8042_COMMAND_PORT, &[0xad])), &io),
        ExitAction::Resume
    );
    io.reset_pending.set(true);
    // A pending reset is only looked at on a command-port write.
    assert_eq!(
        handle_exit(0, Ok(VcpuExit::IoOut(0x60, &[0xfe])), &io),
        ExitAction::Resume
    );
    assert_eq!(
        handle_exit(0, Ok(VcpuExit::IoOut(I8042_COMMAND_PORT, &[0xfe])), &io),
        ExitAction::Stop(VmExit::GuestReset)
    );
    assert_eq!(log(&io).len(), 3, "every write reached the device first");
}

#[test]
fn stops_name_their_reason_and_vcpu() {
    let io = Recorder::default();
    let cases: Vec<(VcpuExit<'static>, VmExit)> = vec![
        (VcpuExit::Shutdown, VmExit::TripleFault { vcpu: 2 }),
        (VcpuExit::Hlt, VmExit::GuestPowerOff),
        (VcpuExit::SystemEvent(2, &[]), VmExit::GuestReset),
        (VcpuExit::SystemEvent(1, &[0]), VmExit::GuestPowerOff),
    ];
    for (exit, want) in cases {
        assert_eq!(handle_exit(2, Ok(exit), &io), ExitAction::Stop(want));
    }
    assert!(log(&io).is_empty());
}

#[test]
fn failures_and_unknown_exits_stop_with_a_detail() {
    let io = Recorder::default();
    let detail = |a: ExitAction| match a {
        ExitAction::Stop(VmExit::VcpuFailed { vcpu: 3, detail }) => detail,
        other => panic!("{other:?}"),
    };
    let d = detail(handle_exit(3, Ok(VcpuExit::FailEntry(0x80000021, 7)), &io));
    assert!(
        d.contains("KVM_EXIT_FAIL_ENTRY") && d.contains("0x80000021"),
        "{d}"
    );
    assert!(d.contains("host CPU 7"), "{d}");
    let d = detail(handle_exit(3, Ok(VcpuExit::SystemEvent(9, &[])), &io));
    assert!(d.contains("system event 9"), "{d}");
    let d = detail(handle_exit(3, Ok(VcpuExit::Unknown), &io));
    assert!(d.contains("unexpected KVM exit Unknown"), "{d}");
    let d = detail(handle_exit(
        3,
        Err(kvm_ioctls::Error::new(libc::EFAULT)),
        &io,
    ));
    assert!(d.starts_with("KVM_RUN failed"), "{d}");
}

#[test]
fn interruptions_resume_after_the_stop_check() {
    let io = Recorder::default();
    for errno in [libc::EINTR, libc::EAGAIN] {
        assert_eq!(
            handle_exit(0, Err(kvm_ioctls::Error::new(errno)), &io),
            ExitAction::Interrupted
        );
    }
    assert_eq!(
        handle_exit(0, Ok(VcpuExit::Intr), &io),
        ExitAction::Interrupted
    );
    assert_eq!(
        handle_exit(0, Ok(VcpuExit::InternalError), &io),
        ExitAction::InternalError
    );
}

#[test]
fn internal_errors_show_the_instruction() {
    let e = internal_error(1, KVM_INTERNAL_ERROR_EMULATION, &[], 0x1000, Some(&[0xcc]));
    assert_eq!(e.exit_code(), 4);
    let VmExit::InternalError {
        vcpu: 1,
        suberror: 1,
        detail,
    } = e
    else {
        panic!("{e:?}")
    };
    assert!(
        detail.contains("emulation failure at RIP 0x1000"),
        "{detail}"
    );
    assert!(detail.contains("[cc]"), "{detail}");
    let e = internal_error(0, 3, &[0x10, 0x20], 0x2000, None);
    let VmExit::InternalError { detail, .. } = e else {
        panic!("{e:?}")
    };
    assert_eq!(
        detail,
        "RIP 0x2000, instruction bytes [unreadable], data [0x10, 0x20]"
    );
}

/// With `--snapshot-on-port`, a write to that port stops the vCPU for the snapshot and reaches
/// no device; other ports and reads of it are untouched.
#[test]
fn a_write_to_the_snapshot_port_stops_for_a_snapshot() {
    struct SnapshotPort(Recorder);
    impl ExitIo for SnapshotPort {
        fn pio_read(&self, port: u16, data: &mut [u8]) {
            self.0.pio_read(port, data)
        }
        fn pio_write(&self, port: u16, data: &[u8]) {
            self.0.pio_write(port, data)
        }
        fn mmio_read(&self, addr: u64, data: &mut [u8]) {
            self.0.mmio_read(addr, data)
        }
        fn mmio_write(&self, addr: u64, data: &[u8]) {
            self.0.mmio_write(addr, data)
        }
        fn reset_requested(&self) -> bool {
            false
        }
        fn is_snapshot_port(&self, port: u16) -> bool {
            port == 0x4f0
        }
    }
    let io = SnapshotPort(Recorder::default());
    assert_eq!(
        handle_exit(0, Ok(VcpuExit::IoOut(0x4f0, b"\x01")), &io),
        ExitAction::Stop(VmExit::Snapshot)
    );
    let mut b = [0u8; 1];
    assert_eq!(
        handle_exit(0, Ok(VcpuExit::IoIn(0x4f0, &mut b)), &io),
        ExitAction::Resume
    );
    assert_eq!(
        handle_exit(0, Ok(VcpuExit::IoOut(0x4f1, b"\x01")), &io),
        ExitAction::Resume
    );
    assert_eq!(log(&io.0), vec!["in 0x4f0 1", "out 0x4f1 [1]"]);
    // Without the option (the default), the port is an ordinary one.
    let plain = Recorder::default();
    assert_eq!(
        handle_exit(0, Ok(VcpuExit::IoOut(0x4f0, b"\x01")), &plain),
        ExitAction::Resume
    );
    assert!(VmExit::Snapshot.is_clean());
    assert_eq!(VmExit::SnapshotFailed("x".into()).exit_code(), 6);
}
