//! virtio-net (device type 1) over a TAP device, with the datapath in the VMM's event loop
//! (these hosts have no `/dev/vhost-net`).
//!
//! Split by concern: [`header`] parses and checks the virtio-net header; [`tx`] and [`rx`] are
//! pure queue handlers over a [`NetBackend`] (unit-tested with mocked queues and
//! [`MemBackend`]); [`device`] holds config space, features, activation and which tap
//! readiness the event loop waits for; [`tap`] is the host backend (`/dev/net/tun`).

pub mod backend;
pub mod device;
pub mod header;
pub mod rx;
pub mod tap;
pub mod tx;

use std::fmt;
use std::str::FromStr;

pub use backend::{MemBackend, MemState, NetBackend, TxFrame};
pub use device::{Net, NetOptions, NetStats, RX_BUDGET};
pub use header::{VnetHeader, HDR_LEN};
pub use tap::{Tap, TapError};

/// Queue size of the receive and transmit queues.
pub const QUEUE_SIZE: u16 = 256;
/// Index of the receive queue.
pub const RXQ: usize = 0;
/// Index of the transmit queue.
pub const TXQ: usize = 1;
/// The largest frame after the header: a 64 KiB segmentation-offload frame and its Ethernet
/// header.
pub const MAX_FRAME: usize = 65550;
/// Bytes of config space: mac, status, max_virtqueue_pairs, mtu.
pub const CONFIG_LEN: usize = 12;

/// An Ethernet MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

/// Why a MAC address does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MacError {
    /// Not six colon-separated hex bytes.
    #[error("MAC address `{0}` is not six hex bytes separated by colons (02:00:00:00:00:01)")]
    Syntax(String),
    /// A multicast address cannot name one interface.
    #[error("MAC address `{0}` is a multicast address (the first byte must be even)")]
    Multicast(String),
}

impl MacAddr {
    /// A random locally administered unicast address (02:xx:xx:xx:xx:xx style).
    pub fn random_local() -> Self {
        let mut b = [0u8; 6];
        // SAFETY: `b` is a valid writable buffer of 6 bytes; getrandom writes at most that
        // many. GRND_NONBLOCK: a failure leaves zeros, still a valid local address below.
        unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), libc::GRND_NONBLOCK) };
        b[0] = (b[0] & 0xfc) | 0x02;
        Self(b)
    }
}

impl FromStr for MacAddr {
    type Err = MacError;
    fn from_str(s: &str) -> Result<Self, MacError> {
        let mut b = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut b {
            let p = parts.next().filter(|p| p.len() == 2);
            *byte = p
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .ok_or_else(|| MacError::Syntax(s.to_string()))?;
        }
        if parts.next().is_some() {
            return Err(MacError::Syntax(s.to_string()));
        }
        if b[0] & 1 == 1 {
            return Err(MacError::Multicast(s.to_string()));
        }
        Ok(Self(b))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parses_and_prints() {
        let m: MacAddr = "02:00:0a:FF:00:01".parse().unwrap();
        assert_eq!(m.0, [2, 0, 0xa, 0xff, 0, 1]);
        assert_eq!(m.to_string(), "02:00:0a:ff:00:01");
        for bad in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:01:02",
            "2:0:0:0:0:1",
            "zz:00:00:00:00:01",
        ] {
            assert!(
                matches!(bad.parse::<MacAddr>(), Err(MacError::Syntax(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            "01:00:5e:00:00:01".parse::<MacAddr>(),
            Err(MacError::Multicast(_))
        ));
        let r = MacAddr::random_local();
        assert_eq!(r.0[0] & 3, 2);
    }
}
