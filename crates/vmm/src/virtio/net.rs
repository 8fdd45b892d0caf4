//! The `[[net]]` entries as devices: each tap opened (by name) or taken over (an inherited
//! fd), its MAC and MTU, UDP fragmentation offload offered where the host's tap takes it.

use std::os::fd::OwnedFd;

use crx_devices::virtio::net::{MacAddr, Net, NetOptions, Tap, TapError};

use crate::config::NetConfig;

/// Errors turning a `[[net]]` entry into a device.
#[derive(Debug, thiserror::Error)]
pub enum NetAttachError {
    /// The tap could not be opened or is not usable.
    #[error("net[{0}]: tap {1}")]
    Tap(usize, String, #[source] TapError),
    /// The inherited fd is not open.
    #[error("net[{0}]: tap_fd {1} is not an open file descriptor (was it passed to crx-vmm?)")]
    Fd(usize, i32, #[source] std::io::Error),
}

/// One device per entry, in order (the guest names them eth0, eth1, ...).
pub fn devices(nets: &[NetConfig]) -> Result<Vec<Net>, NetAttachError> {
    nets.iter().enumerate().map(|(i, n)| device(i, n)).collect()
}

fn device(i: usize, n: &NetConfig) -> Result<Net, NetAttachError> {
    let tap = match (&n.tap, n.tap_fd) {
        (_, Some(fd)) => {
            let what = format!("fd {fd}");
            Tap::from_fd(dup_inherited(i, fd)?).map_err(|e| NetAttachError::Tap(i, what, e))?
        }
        (Some(name), None) => {
            Tap::open(name).map_err(|e| NetAttachError::Tap(i, name.clone(), e))?
        }
        // Refused by validation; a tap name nobody has is the closest meaning.
        (None, None) => Tap::open("").map_err(|e| NetAttachError::Tap(i, String::new(), e))?,
    };
    let opts = NetOptions {
        mac: n.mac_bytes().map_or_else(MacAddr::random_local, MacAddr),
        mtu: n.mtu,
        ufo: tap.supports_ufo(),
    };
    log::info!("net[{i}]: tap {} for MAC {}", tap.name(), opts.mac);
    Ok(Net::new(Box::new(tap), opts))
}

/// A close-on-exec duplicate of inherited fd `fd` ([`crate::inherited::dup`]).
fn dup_inherited(i: usize, fd: i32) -> Result<OwnedFd, NetAttachError> {
    crate::inherited::dup(fd).map_err(|e| NetAttachError::Fd(i, fd, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inherited_fd_must_be_an_open_tap() {
        let not_open = NetConfig {
            tap_fd: Some(999),
            ..NetConfig::default()
        };
        assert!(matches!(
            devices(&[not_open]),
            Err(NetAttachError::Fd(0, 999, _))
        ));
        let file = std::fs::File::open("/dev/null").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        let not_tap = NetConfig {
            tap_fd: Some(fd),
            ..NetConfig::default()
        };
        let e = devices(&[not_tap]).err().unwrap();
        assert!(
            matches!(e, NetAttachError::Tap(0, _, TapError::NotTun(_))),
            "{e}"
        );
        // The inherited number stays open.
        drop(e);
        assert!(file.metadata().is_ok());
    }
}
