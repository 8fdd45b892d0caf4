//! The i8042 keyboard controller, emulated far enough that Linux's i8042 driver initialises
//! without timeouts (reading the controller configuration byte, "CTR", otherwise costs two
//! 500 ms polls at boot) and that the CPU-reset command (0xFE written to port 0x64) reaches the
//! VMM, which treats it as a clean guest shutdown. There is no keyboard behind it: keyboard
//! commands are acknowledged (0xFA) and nothing is ever typed.
//!
//! Ports (offsets from 0x60): 0 = data, 4 = status (read) / command (write).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::state::DeviceStateError;

/// The controller's registers and pending output (a snapshot's part).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct I8042State {
    /// Status register.
    pub status: u8,
    /// Controller configuration byte.
    pub ctr: u8,
    /// Output port.
    pub outp: u8,
    /// A command waiting for its data byte.
    pub pending_cmd: Option<u8>,
    /// Bytes waiting for the guest (at most 16).
    pub out: Vec<u8>,
}

const OFS_DATA: u64 = 0;
const OFS_STATUS: u64 = 4;

/// Status: output buffer full (the guest may read port 0x60).
const SB_OUT_DATA_AVAIL: u8 = 0x01;
/// Status: system flag (POST passed).
const SB_SYSTEM: u8 = 0x04;
/// Status: the last write went to the command port (the next data byte is its argument).
const SB_CMD_DATA: u8 = 0x08;
/// Status: keyboard not inhibited.
const SB_KBD_ENABLED: u8 = 0x10;

/// CTR: keyboard interrupt enabled.
const CB_KBD_INT: u8 = 0x01;
/// CTR: system flag.
const CB_POST_OK: u8 = 0x04;
/// CTR: keyboard clock disabled.
const CB_KBD_DISABLE: u8 = 0x10;
/// CTR: aux (mouse) clock disabled.
const CB_AUX_DISABLE: u8 = 0x20;
/// CTR: scancode translation.
const CB_XLATE: u8 = 0x40;

const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_DISABLE_AUX: u8 = 0xa7;
const CMD_ENABLE_AUX: u8 = 0xa8;
const CMD_TEST_AUX: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_TEST_KBD: u8 = 0xab;
const CMD_DISABLE_KBD: u8 = 0xad;
const CMD_ENABLE_KBD: u8 = 0xae;
const CMD_READ_OUTP: u8 = 0xd0;
const CMD_WRITE_OUTP: u8 = 0xd1;
const CMD_WRITE_KBD_OUT: u8 = 0xd2;
const CMD_RESET_CPU: u8 = 0xfe;

const SELF_TEST_OK: u8 = 0x55;
const PORT_TEST_OK: u8 = 0x00;
const KBD_ACK: u8 = 0xfa;
const KBD_RESET: u8 = 0xff;
const KBD_SELF_TEST_OK: u8 = 0xaa;
const KBD_GET_ID: u8 = 0xf2;

/// Bytes the controller can hold for the guest (more are dropped).
const OUT_CAPACITY: usize = 16;

/// i8042 at ports 0x60-0x64.
pub struct I8042 {
    reset_evt: EventFd,
    kbd_irq: Option<EventFd>,
    status: u8,
    ctr: u8,
    outp: u8,
    pending_cmd: Option<u8>,
    out: VecDeque<u8>,
}

impl I8042 {
    /// A controller that writes `reset_evt` on the reset command; no keyboard interrupt.
    pub fn new(reset_evt: EventFd) -> Self {
        I8042 {
            reset_evt,
            kbd_irq: None,
            status: SB_SYSTEM | SB_KBD_ENABLED,
            ctr: CB_KBD_INT | CB_POST_OK | CB_XLATE | CB_AUX_DISABLE,
            outp: 0x01,
            pending_cmd: None,
            out: VecDeque::with_capacity(OUT_CAPACITY),
        }
    }

    /// Raises `irq` (the VMM registers it as an irqfd for GSI 1) when a keyboard-port reply is
    /// ready and the guest enabled the keyboard interrupt.
    pub fn with_kbd_interrupt(mut self, irq: EventFd) -> Self {
        self.kbd_irq = Some(irq);
        self
    }

    /// The controller's state for a snapshot.
    pub fn save_state(&self) -> I8042State {
        I8042State {
            status: self.status,
            ctr: self.ctr,
            outp: self.outp,
            pending_cmd: self.pending_cmd,
            out: self.out.iter().copied().collect(),
        }
    }

    /// Puts the controller in `state`.
    pub fn restore_state(&mut self, state: &I8042State) -> Result<(), DeviceStateError> {
        if state.out.len() > OUT_CAPACITY {
            return Err(DeviceStateError::Mismatch(
                "i8042",
                format!("{} pending bytes, at most {OUT_CAPACITY}", state.out.len()),
            ));
        }
        self.status = state.status;
        self.ctr = state.ctr;
        self.outp = state.outp;
        self.pending_cmd = state.pending_cmd;
        self.out = state.out.iter().copied().collect();
        Ok(())
    }

    fn push(&mut self, b: u8) {
        if self.out.len() < OUT_CAPACITY {
            self.out.push_back(b);
        }
        self.status |= SB_OUT_DATA_AVAIL;
    }

    /// A reply from the controller itself: replaces anything stale.
    fn reply(&mut self, b: u8) {
        self.out.clear();
        self.push(b);
    }

    /// Replies from the (absent) keyboard arrive like keyboard data: with an interrupt.
    fn kbd_reply(&mut self, bytes: &[u8]) {
        self.out.clear();
        for &b in bytes {
            self.push(b);
        }
        self.kbd_interrupt();
    }

    fn kbd_interrupt(&self) {
        if self.ctr & CB_KBD_INT != 0 {
            if let Some(irq) = &self.kbd_irq {
                // Fails only on counter overflow: an interrupt is pending anyway.
                let _ = irq.write(1);
            }
        }
    }

    fn command(&mut self, cmd: u8) {
        self.status |= SB_CMD_DATA;
        match cmd {
            CMD_READ_CTR => self.reply(self.ctr),
            CMD_WRITE_CTR | CMD_WRITE_OUTP | CMD_WRITE_KBD_OUT => self.pending_cmd = Some(cmd),
            CMD_READ_OUTP => self.reply(self.outp),
            CMD_SELF_TEST => self.reply(SELF_TEST_OK),
            CMD_TEST_KBD | CMD_TEST_AUX => self.reply(PORT_TEST_OK),
            CMD_DISABLE_KBD => self.ctr |= CB_KBD_DISABLE,
            CMD_ENABLE_KBD => self.ctr &= !CB_KBD_DISABLE,
            CMD_DISABLE_AUX => self.ctr |= CB_AUX_DISABLE,
            CMD_ENABLE_AUX => self.ctr &= !CB_AUX_DISABLE,
            CMD_RESET_CPU => {
                // Fails only on counter overflow: a reset request is already pending.
                let _ = self.reset_evt.write(1);
            }
            _ => {}
        }
    }

    fn data(&mut self, b: u8) {
        self.status &= !SB_CMD_DATA;
        match self.pending_cmd.take() {
            Some(CMD_WRITE_CTR) => self.ctr = b,
            Some(CMD_WRITE_OUTP) => self.outp = b,
            Some(_) => {
                // CMD_WRITE_KBD_OUT: the byte appears as if the keyboard sent it.
                self.kbd_reply(&[b]);
            }
            None => match b {
                KBD_RESET => self.kbd_reply(&[KBD_ACK, KBD_SELF_TEST_OK]),
                KBD_GET_ID => self.kbd_reply(&[KBD_ACK, 0xab, 0x83]),
                _ => self.kbd_reply(&[KBD_ACK]),
            },
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some(first) = data.first_mut() else {
            return;
        };
        match offset {
            OFS_STATUS => *first = self.status,
            OFS_DATA => {
                *first = self.out.pop_front().unwrap_or(0);
                if self.out.is_empty() {
                    self.status &= !SB_OUT_DATA_AVAIL;
                } else {
                    self.kbd_interrupt();
                }
            }
            _ => {}
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let &[value] = data else {
            return;
        };
        match offset {
            OFS_STATUS => self.command(value),
            OFS_DATA => self.data(value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONBLOCK: i32 = 0o4000;

    fn dev() -> (I8042, EventFd, EventFd) {
        let reset = EventFd::new(NONBLOCK).unwrap();
        let irq = EventFd::new(NONBLOCK).unwrap();
        let d = I8042::new(reset.try_clone().unwrap()).with_kbd_interrupt(irq.try_clone().unwrap());
        (d, reset, irq)
    }

    fn rd(d: &mut I8042, off: u64) -> u8 {
        let mut b = [0u8];
        d.read(off, &mut b);
        b[0]
    }

    #[test]
    fn reset_command_signals_event() {
        let (mut d, evt, _) = dev();
        d.write(0, &[0xfe]);
        assert!(evt.read().is_err(), "a keyboard byte must not reset");
        d.write(4, &[0x20]);
        assert!(evt.read().is_err(), "other commands must not reset");
        d.write(4, &[0xfe]);
        assert_eq!(evt.read().unwrap(), 1);
    }

    #[test]
    fn linux_init_sequence_gets_answers() {
        let (mut d, _, _) = dev();
        // i8042_flush: nothing to read.
        assert_eq!(rd(&mut d, 4) & SB_OUT_DATA_AVAIL, 0);
        // Read CTR.
        d.write(4, &[CMD_READ_CTR]);
        assert_ne!(rd(&mut d, 4) & SB_OUT_DATA_AVAIL, 0);
        let ctr = rd(&mut d, 0);
        assert_eq!(ctr & CB_KBD_INT, CB_KBD_INT);
        assert_eq!(rd(&mut d, 4) & SB_OUT_DATA_AVAIL, 0);
        // Write CTR, read it back.
        d.write(4, &[CMD_WRITE_CTR]);
        assert_ne!(rd(&mut d, 4) & SB_CMD_DATA, 0);
        d.write(0, &[0x45]);
        d.write(4, &[CMD_READ_CTR]);
        assert_eq!(rd(&mut d, 0), 0x45);
        // Self tests.
        d.write(4, &[CMD_SELF_TEST]);
        assert_eq!(rd(&mut d, 0), SELF_TEST_OK);
        d.write(4, &[CMD_TEST_KBD]);
        assert_eq!(rd(&mut d, 0), PORT_TEST_OK);
        // Output port round trip.
        d.write(4, &[CMD_WRITE_OUTP]);
        d.write(0, &[0x03]);
        d.write(4, &[CMD_READ_OUTP]);
        assert_eq!(rd(&mut d, 0), 0x03);
    }

    #[test]
    fn keyboard_commands_are_acked_with_interrupt() {
        let (mut d, _, irq) = dev();
        d.write(0, &[KBD_RESET]);
        assert_eq!(irq.read().unwrap(), 1);
        assert_eq!(rd(&mut d, 0), KBD_ACK);
        assert_eq!(irq.read().unwrap(), 1, "more data: interrupt again");
        assert_eq!(rd(&mut d, 0), KBD_SELF_TEST_OK);
        assert_eq!(rd(&mut d, 4) & SB_OUT_DATA_AVAIL, 0);
        // With the keyboard interrupt disabled in the CTR, no interrupt.
        d.write(4, &[CMD_WRITE_CTR]);
        d.write(0, &[0]);
        d.write(0, &[0xed]);
        assert!(irq.read().is_err());
        assert_eq!(rd(&mut d, 0), KBD_ACK);
    }

    #[test]
    fn state_round_trips() {
        let (mut d, _, _) = dev();
        d.write(4, &[CMD_WRITE_CTR]);
        d.write(0, &[0x45]);
        d.write(4, &[CMD_READ_CTR]);
        d.write(4, &[CMD_WRITE_OUTP]);
        let st = d.save_state();
        assert_eq!(st.pending_cmd, Some(CMD_WRITE_OUTP));
        let (mut e, _, _) = dev();
        e.restore_state(&st).unwrap();
        assert_eq!(e.save_state(), st);
        assert_eq!(rd(&mut e, 0), 0x45);
        let big = I8042State {
            out: vec![0; 17],
            ..st
        };
        assert!(e.restore_state(&big).is_err());
    }

    #[test]
    fn odd_accesses_are_harmless() {
        let (mut d, evt, _) = dev();
        let mut b = [0xffu8; 2];
        d.read(0, &mut b);
        assert_eq!(b, [0, 0]);
        d.read(9, &mut b[..0]);
        d.write(4, &[0xfe, 0xfe]);
        d.write(4, &[]);
        d.write(u64::MAX, &[0xfe]);
        assert!(evt.read().is_err());
        for i in 0..100u8 {
            d.write(0, &[i]);
        }
        assert_eq!(rd(&mut d, 0), KBD_ACK);
    }
}
