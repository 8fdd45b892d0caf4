//! Device state for VM snapshots: what each device saves and how a restore refuses state that
//! does not fit it. The state types live next to their devices (`legacy::SerialState`,
//! `legacy::I8042State`, `legacy::BootTimerState`, `virtio::TransportState`); crx-vmm encodes
//! them (serde) into the snapshot's state file. A snapshot file is input from disk: every
//! restore checks what it is given (sizes, indices, queue addresses) and never panics on it.

/// Why a device's state could not be saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum DeviceStateError {
    /// The device has state this version cannot save (a live connection, a backend process).
    #[error("{0} cannot be snapshotted: {1}")]
    NotSnapshottable(&'static str, &'static str),
    /// The saved state does not fit the device it is restored into.
    #[error("{0}: saved state does not fit: {1}")]
    Mismatch(&'static str, String),
}
