//! The interface between a vCPU's port-I/O or MMIO exit and a device.

/// A device on the port-I/O or MMIO bus. `offset` is relative to the device's base address.
///
/// Implementations must tolerate any `offset` and any `data.len()` the guest chooses:
/// unknown accesses read as zeros and writes to them are ignored.
pub trait BusDevice: Send {
    /// The guest reads `data.len()` bytes at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// The guest writes `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}
