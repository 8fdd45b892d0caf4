//! virtio-blk over a raw image file.
//!
//! [`request`] parses descriptor chains into [`request::Request`]s without doing any I/O;
//! [`device`] executes them against a [`device::DiskBackend`] and implements the transport
//! side ([`Block`]).

pub mod device;
pub mod request;

pub use device::{Block, BlockError, DiskBackend, FileDisk, MemDisk, SEG_MAX};
pub use request::{parse_request, Parsed, Request, RequestError, RequestType};

/// Sector size of the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;
/// Queue size of the single request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Length of the GET_ID answer.
pub const ID_BYTES: usize = virtio_bindings::virtio_blk::VIRTIO_BLK_ID_BYTES as usize;

/// Status byte: success.
pub const S_OK: u8 = virtio_bindings::virtio_blk::VIRTIO_BLK_S_OK as u8;
/// Status byte: I/O error (also: read-only device, out of range, malformed request).
pub const S_IOERR: u8 = virtio_bindings::virtio_blk::VIRTIO_BLK_S_IOERR as u8;
/// Status byte: request type not supported.
pub const S_UNSUPP: u8 = virtio_bindings::virtio_blk::VIRTIO_BLK_S_UNSUPP as u8;
