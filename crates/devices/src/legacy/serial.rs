//! The 8250 UART (vm-superio) behind the [`BusDevice`] interface.

use std::io::{self, Write};

use serde::{Deserialize, Serialize};
use vm_superio::serial::NoEvents;
use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::state::DeviceStateError;

/// Bytes the 8250's receive FIFO holds (vm-superio's `FIFO_SIZE`).
const FIFO_SIZE: usize = 64;

/// The 8250's registers and the received bytes the guest has not read (a snapshot's part).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialState {
    /// DLL, DLM.
    pub baud_divisor: [u8; 2],
    /// IER.
    pub interrupt_enable: u8,
    /// IIR.
    pub interrupt_identification: u8,
    /// LCR.
    pub line_control: u8,
    /// LSR.
    pub line_status: u8,
    /// MCR.
    pub modem_control: u8,
    /// MSR.
    pub modem_status: u8,
    /// SCR.
    pub scratch: u8,
    /// The receive FIFO (at most 64 bytes).
    pub in_buffer: Vec<u8>,
}

/// An eventfd that raises an interrupt when written (the VMM registers it as an irqfd) or
/// signals an event to the VMM's event loop.
#[derive(Debug)]
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// COM1: an 8250 whose transmitted bytes go to `out` and whose interrupt is an eventfd.
pub struct Serial {
    uart: vm_superio::Serial<EventFdTrigger, NoEvents, Box<dyn Write + Send>>,
}

impl Serial {
    /// A UART writing to `out`; `irq` is written when the guest should be interrupted.
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> Self {
        Serial {
            uart: vm_superio::Serial::new(EventFdTrigger(irq), out),
        }
    }

    /// Queues host input for the guest to read (returns how many bytes fit in the FIFO).
    pub fn enqueue_input(&mut self, input: &[u8]) -> io::Result<usize> {
        self.uart
            .enqueue_raw_bytes(input)
            .map_err(|e| io::Error::other(e.to_string()))
    }

    /// Free space in the receive FIFO (bytes the guest has not read yet take the rest).
    pub fn input_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// Flushes the output.
    pub fn flush(&mut self) -> io::Result<()> {
        self.uart.writer_mut().flush()
    }

    /// The UART's state for a snapshot.
    pub fn save_state(&self) -> SerialState {
        let s = self.uart.state();
        SerialState {
            baud_divisor: [s.baud_divisor_low, s.baud_divisor_high],
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }

    /// Puts the UART in `state`, keeping its interrupt and output.
    pub fn restore_state(&mut self, state: &SerialState) -> Result<(), DeviceStateError> {
        if state.in_buffer.len() > FIFO_SIZE {
            return Err(DeviceStateError::Mismatch(
                "serial",
                format!("{} bytes in a {FIFO_SIZE}-byte FIFO", state.in_buffer.len()),
            ));
        }
        let irq = |e: io::Error| DeviceStateError::Mismatch("serial", format!("eventfd: {e}"));
        let trigger = self.uart.interrupt_evt().0.try_clone().map_err(irq)?;
        let spare = self.uart.interrupt_evt().0.try_clone().map_err(irq)?;
        let sink: Box<dyn Write + Send> = Box::new(io::sink());
        let old = std::mem::replace(
            &mut self.uart,
            vm_superio::Serial::new(EventFdTrigger(spare), sink),
        );
        let vs = vm_superio::serial::SerialState {
            baud_divisor_low: state.baud_divisor[0],
            baud_divisor_high: state.baud_divisor[1],
            interrupt_enable: state.interrupt_enable,
            interrupt_identification: state.interrupt_identification,
            line_control: state.line_control,
            line_status: state.line_status,
            modem_control: state.modem_control,
            modem_status: state.modem_status,
            scratch: state.scratch,
            in_buffer: state.in_buffer.clone(),
        };
        // Cannot fail: the FIFO length was checked above.
        self.uart = vm_superio::Serial::from_state(
            &vs,
            EventFdTrigger(trigger),
            NoEvents,
            old.into_writer(),
        )
        .map_err(|e| DeviceStateError::Mismatch("serial", e.to_string()))?;
        Ok(())
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if data.len() == 1 && offset < 8 {
            data[0] = self.uart.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() == 1 && offset < 8 {
            // An output error (closed stdout, full disk) must not stop the guest: the console
            // is best effort and the guest cannot do anything about it.
            let _ = self.uart.write(offset as u8, data[0]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn transmitted_bytes_reach_output() {
        let out = Shared::default();
        let irq = EventFd::new(libc_nonblock()).unwrap();
        let mut s = Serial::new(irq.try_clone().unwrap(), Box::new(out.clone()));
        for b in b"hi\n" {
            s.write(0, &[*b]);
        }
        assert_eq!(&*out.0.lock().unwrap(), b"hi\n");
    }

    #[test]
    fn odd_accesses_are_harmless() {
        let irq = EventFd::new(libc_nonblock()).unwrap();
        let mut s = Serial::new(irq, Box::new(io::sink()));
        let mut buf = [0xffu8; 4];
        s.read(0, &mut buf);
        assert_eq!(buf, [0; 4]);
        s.write(100, &[1]);
        s.write(0, &[]);
        s.read(9999, &mut buf[..1]);
        assert_eq!(buf[0], 0);
    }

    #[test]
    fn input_raises_interrupt_when_enabled() {
        let irq = EventFd::new(libc_nonblock()).unwrap();
        let mut s = Serial::new(irq.try_clone().unwrap(), Box::new(io::sink()));
        // IER: enable "received data available" interrupt.
        s.write(1, &[0x01]);
        assert_eq!(s.enqueue_input(b"x").unwrap(), 1);
        assert_eq!(irq.read().unwrap(), 1);
        let mut b = [0u8];
        s.read(0, &mut b);
        assert_eq!(b[0], b'x');
    }

    #[test]
    fn state_round_trips_and_output_is_kept() {
        let out = Shared::default();
        let irq = EventFd::new(libc_nonblock()).unwrap();
        let mut s = Serial::new(irq.try_clone().unwrap(), Box::new(out.clone()));
        s.write(1, &[0x01]);
        s.write(7, &[0x5a]);
        s.enqueue_input(b"ab").unwrap();
        let st = s.save_state();
        assert_eq!(st.scratch, 0x5a);
        assert_eq!(st.in_buffer, b"ab");
        let mut t = Serial::new(irq.try_clone().unwrap(), Box::new(out.clone()));
        t.restore_state(&st).unwrap();
        assert_eq!(t.save_state(), st);
        let mut b = [0u8];
        t.read(0, &mut b);
        assert_eq!(b[0], b'a');
        t.write(0, b"z");
        assert_eq!(&*out.0.lock().unwrap(), b"z");
        let big = SerialState {
            in_buffer: vec![0; 65],
            ..st
        };
        assert!(t.restore_state(&big).is_err());
    }

    fn libc_nonblock() -> i32 {
        // EFD_NONBLOCK == O_NONBLOCK on Linux.
        0o4000
    }
}
