//! The devices crx-vmm emulates, as a snapshot sees them: handles kept by the VM so that their
//! state can be saved once the vCPUs stopped, and restored before they start.

use std::sync::{Arc, Mutex, MutexGuard};

use crx_devices::legacy::{BootTimer, Serial, I8042};
use crx_devices::virtio::TransportSnapshot;

use super::state::DevicesState;
use super::SnapshotError;

/// A shared virtio-mmio transport, whatever its device.
pub type SharedTransport = Arc<Mutex<dyn TransportSnapshot>>;

/// Handles on every device of a VM.
pub struct Devices {
    /// COM1.
    pub serial: Arc<Mutex<Serial>>,
    /// The i8042.
    pub i8042: Arc<Mutex<I8042>>,
    /// The boot-timer port, if configured.
    pub boot_timer: Option<Arc<Mutex<BootTimer>>>,
    /// The virtio-mmio devices in slot order.
    pub virtio: Vec<SharedTransport>,
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Devices {
    /// Every device's state; the first device that cannot be snapshotted fails it.
    pub fn save(&self) -> Result<DevicesState, SnapshotError> {
        let virtio = self
            .virtio
            .iter()
            .map(|t| lock(t).save_state())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(DevicesState {
            serial: lock(&self.serial).save_state(),
            i8042: lock(&self.i8042).save_state(),
            boot_timer: self.boot_timer.as_ref().map(|b| lock(b).save_state()),
            virtio,
        })
    }

    /// Restores `state` into these devices (same shape: the config hash matched).
    pub fn restore(&self, state: &DevicesState) -> Result<(), SnapshotError> {
        if state.virtio.len() != self.virtio.len() {
            return Err(SnapshotError::Mismatch(format!(
                "{} virtio devices saved, {} configured",
                state.virtio.len(),
                self.virtio.len()
            )));
        }
        lock(&self.serial).restore_state(&state.serial)?;
        lock(&self.i8042).restore_state(&state.i8042)?;
        if let (Some(b), Some(s)) = (&self.boot_timer, &state.boot_timer) {
            lock(b).restore_state(s);
        }
        for (t, s) in self.virtio.iter().zip(&state.virtio) {
            lock(t).restore_state(s)?;
        }
        Ok(())
    }

    /// Raises again the interrupts the restore raised (or the snapshot held pending): call
    /// once the IOAPIC, PICs and LAPICs have their state, which dropped the earlier ones.
    pub fn reassert_interrupts(&self) {
        for t in &self.virtio {
            lock(t).reassert_interrupt();
        }
    }
}
