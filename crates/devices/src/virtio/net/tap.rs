//! The TAP backend: `/dev/net/tun` with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, a 12-byte
//! virtio-net header on every frame, nonblocking.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::backend::{NetBackend, TxFrame};
use super::header::HDR_LEN;

/// Errors opening a tap.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// `/dev/net/tun` could not be opened.
    #[error("cannot open /dev/net/tun (is the tun module loaded?)")]
    OpenTun(#[source] io::Error),
    /// The name does not fit an interface name.
    #[error("tap name `{0}` must be 1 to 15 bytes without '/' or NUL")]
    Name(String),
    /// TUNSETIFF failed.
    #[error("cannot attach to tap `{0}` (creating one needs CAP_NET_ADMIN; an existing one must be a tap owned by this user)")]
    Attach(String, #[source] io::Error),
    /// TUNGETIFF on a passed fd failed.
    #[error("the given fd is not a tun/tap device")]
    NotTun(#[source] io::Error),
    /// A passed fd lacks a flag the device needs.
    #[error("the given tap was opened with flags {0:#x}; IFF_TAP, IFF_NO_PI and IFF_VNET_HDR are required")]
    Flags(u16),
    /// An ioctl that configures the tap failed.
    #[error("{0} on the tap failed")]
    Ioctl(&'static str, #[source] io::Error),
}

/// Flags every tap of ours has.
const TAP_FLAGS: libc::c_int = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;

/// An open tap.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

fn ifreq_with_name(name: &str) -> Result<libc::ifreq, TapError> {
    let bytes = name.as_bytes();
    if bytes.is_empty()
        || bytes.len() >= libc::IFNAMSIZ
        || bytes.iter().any(|&b| b == 0 || b == b'/')
    {
        return Err(TapError::Name(name.to_string()));
    }
    // SAFETY: `ifreq` is plain old data (integers, arrays, a union of such); all zeroes is a
    // valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

fn ifreq_name(req: &libc::ifreq) -> String {
    let bytes: Vec<u8> = req
        .ifr_name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

impl Tap {
    /// Attaches to the tap `name`, creating it if it does not exist (which needs
    /// CAP_NET_ADMIN; a tap created this way disappears when the fd closes).
    pub fn open(name: &str) -> Result<Self, TapError> {
        let mut req = ifreq_with_name(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        req.ifr_ifru.ifru_flags = TAP_FLAGS as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes one `ifreq`, which `req` is and outlives the call.
        cvt(unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) })
            .map_err(|e| TapError::Attach(name.to_string(), e))?;
        Self::finish(file, ifreq_name(&req))
    }

    /// Uses a tap another process opened (e.g. in the container's network namespace) and
    /// passed in; it must have been opened with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`.
    pub fn from_fd(fd: OwnedFd) -> Result<Self, TapError> {
        let file = File::from(fd);
        // SAFETY: as above, all zeroes is a valid `ifreq`.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        // SAFETY: TUNGETIFF writes one `ifreq` into `req`, which outlives the call.
        cvt(unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNGETIFF, &mut req) })
            .map_err(TapError::NotTun)?;
        // SAFETY: TUNGETIFF filled the flags member of the union.
        let flags = unsafe { req.ifr_ifru.ifru_flags } as u16;
        if i32::from(flags) & TAP_FLAGS != TAP_FLAGS {
            return Err(TapError::Flags(flags));
        }
        // SAFETY: F_GETFL/F_SETFL on an fd this function owns; no memory is passed.
        let set_nonblock = unsafe {
            let fl = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
            cvt(fl).and_then(|fl| {
                cvt(libc::fcntl(
                    file.as_raw_fd(),
                    libc::F_SETFL,
                    fl | libc::O_NONBLOCK,
                ))
            })
        };
        set_nonblock.map_err(|e| TapError::Ioctl("F_SETFL O_NONBLOCK", e))?;
        Self::finish(file, ifreq_name(&req))
    }

    fn finish(file: File, name: String) -> Result<Self, TapError> {
        let size = HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer, valid for the call.
        cvt(unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &size) })
            .map_err(|e| TapError::Ioctl("TUNSETVNETHDRSZ", e))?;
        let tap = Self { file, name };
        tap.offload(0)
            .map_err(|e| TapError::Ioctl("TUNSETOFFLOAD", e))?;
        Ok(tap)
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the host kernel takes `TUN_F_UFO` (offer UDP fragmentation offload then).
    /// Leaves the offloads cleared.
    pub fn supports_ufo(&self) -> bool {
        let ok = self.offload(libc::TUN_F_CSUM | libc::TUN_F_UFO).is_ok();
        let _ = self.offload(0);
        ok
    }

    fn offload(&self, flags: u32) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is passed.
        cvt(unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        })
        .map(drop)
    }
}

impl NetBackend for Tap {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the duration of the call.
        let n = unsafe { libc::read(self.file.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
    fn write_frame(&mut self, frame: &TxFrame<'_>) -> io::Result<()> {
        let mut iov = Vec::with_capacity(1 + frame.body.len());
        iov.push(libc::iovec {
            iov_base: frame.header.as_ptr() as *mut libc::c_void,
            iov_len: frame.header.len(),
        });
        for s in &frame.body {
            iov.push(libc::iovec {
                iov_base: s.ptr_guard().as_ptr().cast_mut().cast(),
                iov_len: s.len(),
            });
        }
        let count = libc::c_int::try_from(iov.len())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: each iovec is valid for reads of its length for the duration of the call: the
        // header is ours, the body slices are guest RAM mappings that `frame` borrows (writev
        // only reads them; the guest changing them meanwhile changes only the frame's bytes).
        let n = unsafe { libc::writev(self.file.as_raw_fd(), iov.as_ptr(), count) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        // A tap takes a frame whole or not at all.
        Ok(())
    }
    fn set_offload(&mut self, tun_flags: u32) -> io::Result<()> {
        self.offload(tun_flags)
    }
    fn raw_fd(&self) -> Option<RawFd> {
        Some(self.file.as_raw_fd())
    }
}
