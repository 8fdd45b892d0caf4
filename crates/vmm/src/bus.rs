//! Address-range dispatch from vCPU exits to devices (one bus for port I/O, one for MMIO).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crx_devices::bus::BusDevice;

/// A shared device on a bus.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Bus errors.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The range is empty or overlaps a device already on the bus.
    #[error("bus range {base:#x}+{len:#x} is empty or overlaps another device")]
    Overlap {
        /// Base.
        base: u64,
        /// Length.
        len: u64,
    },
}

/// Non-overlapping `[base, base+len)` ranges mapped to devices.
#[derive(Default, Clone)]
pub struct Bus {
    devices: BTreeMap<u64, (u64, SharedDevice)>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `dev` at `[base, base+len)`.
    pub fn insert(&mut self, base: u64, len: u64, dev: SharedDevice) -> Result<(), BusError> {
        let end = base.checked_add(len).filter(|_| len > 0);
        let overlap = match end {
            None => true,
            Some(end) => self
                .devices
                .range(..end)
                .next_back()
                .is_some_and(|(&b, &(l, _))| b + l > base),
        };
        if overlap {
            return Err(BusError::Overlap { base, len });
        }
        self.devices.insert(base, (len, dev));
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(u64, &SharedDevice)> {
        let (&base, (len, dev)) = self.devices.range(..=addr).next_back()?;
        (addr - base < *len).then_some((addr - base, dev))
    }

    /// Dispatches a read; returns false (and zero-fills) when no device claims `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((off, dev)) => {
                // A device that panicked while holding the lock is still usable for the
                // guest's sake: its state is plain data.
                dev.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .read(off, data);
                true
            }
            None => {
                data.fill(0);
                false
            }
        }
    }

    /// Dispatches a write; returns false when no device claims `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((off, dev)) => {
                dev.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .write(off, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Rec(Vec<(u64, Vec<u8>)>);
    impl BusDevice for Rec {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatch_by_range() {
        let mut bus = Bus::new();
        let d = Arc::new(Mutex::new(Rec(vec![])));
        bus.insert(0x100, 0x10, d.clone()).unwrap();
        assert!(bus.write(0x104, &[7]));
        assert!(!bus.write(0x110, &[7]));
        assert!(!bus.write(0xff, &[7]));
        let mut b = [9u8; 2];
        assert!(bus.read(0x10f, &mut b));
        assert_eq!(b, [0xf, 0xf]);
        assert!(!bus.read(0x200, &mut b));
        assert_eq!(b, [0, 0]);
        assert_eq!(d.lock().unwrap().0, vec![(4, vec![7])]);
    }

    #[test]
    fn overlaps_refused() {
        let mut bus = Bus::new();
        let d: SharedDevice = Arc::new(Mutex::new(Rec(vec![])));
        bus.insert(0x100, 0x10, d.clone()).unwrap();
        assert!(bus.insert(0x10f, 1, d.clone()).is_err());
        assert!(bus.insert(0xf8, 0x9, d.clone()).is_err());
        assert!(bus.insert(0x200, 0, d.clone()).is_err());
        assert!(bus.insert(u64::MAX, 2, d.clone()).is_err());
        bus.insert(0x110, 1, d.clone()).unwrap();
        bus.insert(0xf0, 0x10, d).unwrap();
    }
}
