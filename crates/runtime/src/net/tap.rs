//! The tap next to a container's interface: created in the calling thread's network namespace
//! (a thread inside the container's, [`super::netns`]) and not persistent, so it lives exactly
//! as long as a descriptor on it: crx-vmm's, once it has inherited it.
#![allow(unsafe_code)] // TUNSETIFF

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use nix::libc;

use super::NetError;

/// The flags crx-vmm's virtio-net requires of an inherited tap.
const FLAGS: libc::c_int = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;

// TUNSETIFF: _IOW('T', 202, int), linux/if_tun.h; it reads and writes a `struct ifreq`.
nix::ioctl_readwrite_bad!(tun_set_iff, libc::TUNSETIFF, libc::ifreq);

/// Creates the tap `name` (at most 15 bytes) in this thread's network namespace and returns
/// the descriptor that keeps it (close-on-exec: only a child told to inherits it).
pub(super) fn create(name: &str) -> Result<OwnedFd, NetError> {
    let err = |source: std::io::Error| NetError::Tap {
        name: name.to_owned(),
        source,
    };
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(err(std::io::ErrorKind::InvalidInput.into()));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(err)?;
    // SAFETY: all zeroes is a valid `ifreq` (a name of NULs and a zero union).
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = FLAGS as libc::c_short;
    // SAFETY: TUNSETIFF reads one `ifreq` through the pointer and writes the name back;
    // `req` is one and outlives the call; `file` is an open /dev/net/tun.
    unsafe { tun_set_iff(file.as_raw_fd(), &mut req) }.map_err(|e| err(e.into()))?;
    Ok(file.into())
}
