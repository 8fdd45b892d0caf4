//! Legacy PC devices on the port-I/O bus: the 8250 serial console, the i8042 controller
//! (only its CPU-reset command), and crx's boot-timer port.
//!
//! | device     | ports         | interrupt |
//! |------------|---------------|-----------|
//! | COM1 8250  | 0x3f8-0x3ff   | GSI 4     |
//! | i8042      | 0x60-0x64     | GSI 1     |
//! | boot timer | 0x440 (1 byte)| none      |

mod boot_timer;
mod i8042;
mod serial;

pub use boot_timer::{BootTimer, BootTimerState};
pub use i8042::{I8042State, I8042};
pub use serial::{EventFdTrigger, Serial, SerialState};

/// COM1 base port.
pub const COM1_PORT: u64 = 0x3f8;
/// COM1 port count.
pub const COM1_LEN: u64 = 8;
/// COM1 interrupt line (IOAPIC pin / PIC IRQ).
pub const COM1_GSI: u32 = 4;
/// i8042 base port (data port 0x60; 0x64 is the command/status port at offset 4).
pub const I8042_PORT: u64 = 0x60;
/// i8042 port count.
pub const I8042_LEN: u64 = 5;
/// i8042 keyboard interrupt line.
pub const I8042_KBD_GSI: u32 = 1;
/// The boot-timer port: unassigned on a PC, and reachable with one `out` instruction from any
/// guest mode (Firecracker's boot timer is an MMIO page instead).
pub const BOOT_TIMER_PORT: u64 = crx_proto::console::BOOT_TIMER_PORT as u64;
/// Boot-timer port count.
pub const BOOT_TIMER_LEN: u64 = 1;
