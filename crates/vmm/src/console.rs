//! Host standard input -> the guest's serial console (when the console is on stdout).

use std::io::Write;
use std::os::unix::io::RawFd;
use std::sync::{Arc, Mutex};

use crx_devices::legacy::Serial;
use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

const STDIN: RawFd = 0;

/// Feeds bytes read from stdin into the UART's receive FIFO. Input the FIFO cannot take is
/// dropped (the console is for debugging; the agent channel is vsock). Stops at EOF.
pub struct StdinToSerial {
    serial: Arc<Mutex<Serial>>,
}

impl StdinToSerial {
    /// A subscriber for `serial`.
    pub fn new(serial: Arc<Mutex<Serial>>) -> Self {
        StdinToSerial { serial }
    }
}

impl MutEventSubscriber for StdinToSerial {
    fn init(&mut self, ops: &mut EventOps) {
        // Regular files and /dev/null cannot be watched (EPERM): no input then, by design.
        let _ = ops.add(Events::new_raw(STDIN, EventSet::IN));
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut buf = [0u8; 64];
        // SAFETY: reads at most `buf.len()` bytes into a live local buffer from fd 0, which
        // stays open for the process's life; epoll said it is readable, so this does not block
        // for long. The result is checked.
        let n = unsafe { libc::read(STDIN, buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 {
            let mut serial = self.serial.lock().unwrap_or_else(|p| p.into_inner());
            let _ = serial.enqueue_input(&buf[..n as usize]);
            return;
        }
        let again =
            n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock;
        if !again {
            // EOF or error: stop watching (a hung-up terminal would otherwise spin the loop).
            if ops.remove(events).is_err() {
                let _ = writeln!(std::io::stderr(), "crx-vmm: cannot stop watching stdin");
            }
        }
    }
}
