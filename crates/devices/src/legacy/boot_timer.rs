//! The boot-timer port: the guest writes a 1-byte code, the VMM logs when it arrived.
//!
//! Protocol (`crx_proto::console`): `outb(code, 0x440)`, the codes in `crx_proto::console::mark`
//! (any other value is a custom mark). Each write is logged as
//! `crx_proto::console::mark_line`: `boot-timer: code=N t=<microseconds since VMM process
//! start>`. Reads return 0.

use std::io::Write;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::bus::BusDevice;

/// What the boot timer keeps across a snapshot: how many lines it has logged (its bound).
/// Times after a restore are relative to the restoring process's start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootTimerState {
    /// Lines logged so far.
    pub logged: u32,
}

/// Logs guest boot milestones relative to `start`.
pub struct BootTimer {
    start: Instant,
    out: Box<dyn Write + Send>,
    logged: u32,
}

/// Most lines a guest can make the VMM log: the port is guest-triggerable.
const MAX_LINES: u32 = 1000;

impl BootTimer {
    /// A boot timer measuring from `start` (the VMM process start) and logging to `out`.
    pub fn new(start: Instant, out: Box<dyn Write + Send>) -> Self {
        BootTimer {
            start,
            out,
            logged: 0,
        }
    }

    /// The state for a snapshot.
    pub fn save_state(&self) -> BootTimerState {
        BootTimerState {
            logged: self.logged,
        }
    }

    /// Continues from `state` (any count is valid: past the bound nothing more is logged).
    pub fn restore_state(&mut self, state: &BootTimerState) {
        self.logged = state.logged;
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let us = self.start.elapsed().as_micros();
        if offset != 0 || data.is_empty() || self.logged >= MAX_LINES {
            return;
        }
        self.logged += 1;
        if self.logged == MAX_LINES {
            let _ = writeln!(self.out, "boot-timer: further codes not logged");
        }
        // Logging is best effort: a closed stderr must not stop the guest.
        let _ = writeln!(self.out, "{}", crx_proto::console::mark_line(data[0], us));
        let _ = self.out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
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
    fn writes_are_logged_with_code_and_time() {
        let out = Shared::default();
        let mut t = BootTimer::new(Instant::now(), Box::new(out.clone()));
        t.write(0, &[crx_proto::console::mark::INIT_STARTED]);
        t.write(0, &[42]);
        t.write(3, &[7]);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("boot-timer: code=1 t="), "{text}");
        assert!(lines[1].starts_with("boot-timer: code=42 t="), "{text}");
        let t0: u64 = lines[0].rsplit('=').next().unwrap().parse().unwrap();
        let t1: u64 = lines[1].rsplit('=').next().unwrap().parse().unwrap();
        assert!(t1 >= t0);
        let mut b = [9u8];
        t.read(0, &mut b);
        assert_eq!(b[0], 0);
    }

    #[test]
    fn logging_is_bounded() {
        let out = Shared::default();
        let mut t = BootTimer::new(Instant::now(), Box::new(out.clone()));
        for _ in 0..5000 {
            t.write(0, &[9]);
        }
        let n = String::from_utf8(out.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .count();
        assert_eq!(n as u32, MAX_LINES + 1);
    }
}
