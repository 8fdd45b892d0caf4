//! What the device needs from its host side: frames in, frames out, offload settings.

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, MutexGuard};

use vm_memory::VolatileSlice;

use super::header::HDR_LEN;

/// The host end of a virtio-net device: a tap, or [`MemBackend`] in tests and fuzzing.
///
/// Frames travel with their 12-byte virtio-net header in front. Both calls are nonblocking:
/// `WouldBlock` means nothing to read, or no room to write now.
pub trait NetBackend: Send {
    /// Reads one frame (header included) into `buf`; returns its length.
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes one frame: its checked header, then its body from guest memory, as one frame.
    fn write_frame(&mut self, frame: &TxFrame<'_>) -> io::Result<()>;
    /// Sets the offloads the host may use in frames it hands the guest (`TUN_F_*`).
    fn set_offload(&mut self, tun_flags: u32) -> io::Result<()>;
    /// The fd the event loop watches (readable: a frame waits; writable: room to write).
    fn raw_fd(&self) -> Option<RawFd>;
}

/// A frame the guest transmits: the virtio-net header as the device copied and checked it (the
/// guest cannot change it afterwards), and the rest of the chain where the guest put it. The
/// body is not interpreted by the VMM: the host kernel copies it once, and checks it itself.
pub struct TxFrame<'a> {
    /// The header, copied.
    pub header: [u8; HDR_LEN],
    /// The Ethernet frame, in guest memory, in chain order.
    pub body: Vec<VolatileSlice<'a>>,
}

impl TxFrame<'_> {
    /// Header and body bytes.
    pub fn len(&self) -> usize {
        HDR_LEN + self.body.iter().map(|s| s.len()).sum::<usize>()
    }

    /// Never: a frame has its header.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The whole frame, copied (tests and the in-memory backend).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = self.header.to_vec();
        for s in &self.body {
            let at = v.len();
            v.resize(at + s.len(), 0);
            s.copy_to(&mut v[at..]);
        }
        v
    }
}

/// What a [`MemBackend`] holds: frames to hand the guest, frames the guest sent, and a
/// limit on how many sent frames it holds before answering `WouldBlock` (a full tap).
#[derive(Debug, Default)]
pub struct MemState {
    /// Frames (with header) the guest will receive, in order.
    pub incoming: VecDeque<Vec<u8>>,
    /// Frames (with header) the guest sent.
    pub sent: Vec<Vec<u8>>,
    /// Sent frames held before writes answer `WouldBlock`.
    pub capacity: usize,
    /// Writes answer this error kind instead (e.g. `InvalidInput`: the kernel refused it).
    pub write_error: Option<io::ErrorKind>,
    /// The last `set_offload` value.
    pub offload: Option<u32>,
}

/// An in-memory backend for tests and fuzzing; clones share their [`MemState`], so a test
/// keeps a handle on the one it gave the device.
#[derive(Debug, Clone, Default)]
pub struct MemBackend {
    state: Arc<Mutex<MemState>>,
    fd: Option<RawFd>,
}

impl MemBackend {
    /// A backend holding at most `capacity` sent frames, reporting `fd` as its fd (any
    /// number: the event-loop side only compares it).
    pub fn new(capacity: usize, fd: Option<RawFd>) -> Self {
        let state = MemState {
            capacity,
            ..MemState::default()
        };
        Self {
            state: Arc::new(Mutex::new(state)),
            fd,
        }
    }

    /// The shared state.
    pub fn state(&self) -> MutexGuard<'_, MemState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl NetBackend for MemBackend {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let frame = self
            .state()
            .incoming
            .pop_front()
            .ok_or_else(|| io::Error::from(io::ErrorKind::WouldBlock))?;
        // Like a tap read into a short buffer: the rest of the frame is lost.
        let n = frame.len().min(buf.len());
        buf[..n].copy_from_slice(&frame[..n]);
        Ok(n)
    }
    fn write_frame(&mut self, frame: &TxFrame<'_>) -> io::Result<()> {
        let mut s = self.state();
        if let Some(kind) = s.write_error {
            return Err(kind.into());
        }
        if s.sent.len() >= s.capacity {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        s.sent.push(frame.to_vec());
        Ok(())
    }
    fn set_offload(&mut self, tun_flags: u32) -> io::Result<()> {
        self.state().offload = Some(tun_flags);
        Ok(())
    }
    fn raw_fd(&self) -> Option<RawFd> {
        self.fd
    }
}
