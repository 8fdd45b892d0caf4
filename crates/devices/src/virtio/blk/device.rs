//! The virtio-blk device: config space, features, and request execution against a disk.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt};

use virtio_queue::Queue;
use vm_memory::Bytes;

use super::request::{parse_request, Request, RequestType};
use super::{ID_BYTES, QUEUE_SIZE, SECTOR_SIZE, S_IOERR, S_OK, S_UNSUPP};
use crate::guest_warn;
use crate::virtio::queue::{add_used, pop_chain, Mem};
use crate::virtio::{read_config_bytes, VirtioDevice, TYPE_BLOCK};

/// Bytes moved between the disk and guest memory per step (a bounce buffer this large is the
/// only allocation per request, whatever length the guest asks for).
const CHUNK: usize = 64 * 1024;

/// Errors opening a block device.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// Reading the image's size failed.
    #[error("cannot read the size of the disk image")]
    ImageSize(#[source] io::Error),
}

/// The storage behind a block device.
pub trait DiskBackend: Send {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` from `offset` (`offset + buf.len() <= size()` is checked by the caller).
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`.
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes previous writes durable.
    fn flush(&mut self) -> io::Result<()>;
}

/// A raw image file.
pub struct FileDisk {
    file: File,
    size: u64,
}

impl FileDisk {
    /// Uses `file` as a raw image; its size is read once, now (by seeking to the end, which
    /// also works for block devices, whose metadata says 0).
    pub fn new(mut file: File) -> Result<Self, BlockError> {
        let size = file.seek(SeekFrom::End(0)).map_err(BlockError::ImageSize)?;
        Ok(Self { file, size })
    }
}

impl DiskBackend for FileDisk {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(&self.file, buf, offset)
    }
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(&self.file, buf, offset)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// An in-memory disk, for tests and fuzzing.
#[derive(Debug, Default, Clone)]
pub struct MemDisk(pub Vec<u8>);

impl DiskBackend for MemDisk {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|o| self.0.get(o..o.checked_add(buf.len())?))
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let dst = usize::try_from(offset)
            .ok()
            .and_then(|o| self.0.get_mut(o..o.checked_add(buf.len())?))
            .ok_or_else(|| io::Error::from(io::ErrorKind::WriteZero))?;
        dst.copy_from_slice(buf);
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Data segments per request the driver may use (`seg_max`): all but the header and status
/// descriptors of a full queue.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;

fn config_space(sectors: u64) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[..8].copy_from_slice(&sectors.to_le_bytes());
    c[12..].copy_from_slice(&SEG_MAX.to_le_bytes());
    c
}

/// A virtio-blk device with one request queue.
pub struct Block {
    disk: Box<dyn DiskBackend>,
    read_only: bool,
    id: [u8; ID_BYTES],
    /// capacity (u64), size_max (u32, unused), seg_max (u32).
    config: [u8; 16],
    bounce: Vec<u8>,
}

impl Block {
    /// A device over a raw image file. The serial (GET_ID) defaults to the file's device and
    /// inode numbers.
    pub fn new(image: File, read_only: bool) -> Result<Self, BlockError> {
        let id = image
            .metadata()
            .map(|m| format!("crx{:x}{:x}", m.dev(), m.ino()))
            .unwrap_or_default();
        let mut dev = Self::with_backend(Box::new(FileDisk::new(image)?), read_only);
        dev.set_id(id.as_bytes());
        Ok(dev)
    }

    /// A device over any backend.
    pub fn with_backend(disk: Box<dyn DiskBackend>, read_only: bool) -> Self {
        // Bytes past the last whole sector are not addressable.
        let sectors = disk.size() / SECTOR_SIZE;
        Self {
            disk,
            read_only,
            id: [0; ID_BYTES],
            config: config_space(sectors),
            bounce: Vec::new(),
        }
    }

    /// Sets the serial returned by GET_ID (truncated to 20 bytes).
    pub fn set_id(&mut self, id: &[u8]) {
        self.id = [0; ID_BYTES];
        let n = id.len().min(ID_BYTES);
        self.id[..n].copy_from_slice(&id[..n]);
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.config[..8]);
        u64::from_le_bytes(b)
    }

    /// Whether the device refuses writes.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Processes every available request; returns whether any completed.
    pub fn process_requests(&mut self, mem: &Mem, queue: &mut Queue) -> bool {
        let mut used = false;
        while let Some(chain) = pop_chain(queue, mem) {
            let head = chain.head_index();
            let parsed = parse_request(mem, chain);
            let (status, data_written) = match parsed.request {
                Ok(req) => self.execute(req),
                Err(e) => {
                    guest_warn!("virtio-blk: malformed request: {e}");
                    (S_IOERR, 0)
                }
            };
            let mut len = 0;
            if let Some(addr) = parsed.status {
                if mem.write_obj(status, addr).is_ok() {
                    len = data_written.saturating_add(1);
                }
            }
            used |= add_used(queue, mem, head, len);
        }
        used
    }

    /// Executes one request; returns the status and the bytes written into guest buffers.
    fn execute(&mut self, mut req: Request<'_>) -> (u8, u32) {
        match req.kind {
            RequestType::In | RequestType::Out => {
                let len = req.data_len() as u64;
                let end = req
                    .sector
                    .checked_mul(SECTOR_SIZE)
                    .and_then(|o| o.checked_add(len));
                let capacity = self.capacity() * SECTOR_SIZE;
                let offset = match end {
                    Some(end) if end <= capacity => req.sector * SECTOR_SIZE,
                    _ => {
                        guest_warn!("virtio-blk: request beyond the end of the disk");
                        return (S_IOERR, 0);
                    }
                };
                if req.kind == RequestType::Out && self.read_only {
                    return (S_IOERR, 0);
                }
                let result = if req.kind == RequestType::In {
                    self.read(&mut req, offset)
                } else {
                    self.write(&mut req, offset).map(|()| 0)
                };
                match result {
                    Ok(written) => (S_OK, written),
                    Err(e) => {
                        guest_warn!("virtio-blk: I/O error at offset {offset}: {e}");
                        (S_IOERR, req.data_out.bytes_written() as u32)
                    }
                }
            }
            RequestType::Flush => {
                if self.read_only {
                    return (S_OK, 0);
                }
                match self.disk.flush() {
                    Ok(()) => (S_OK, 0),
                    Err(e) => {
                        guest_warn!("virtio-blk: flush failed: {e}");
                        (S_IOERR, 0)
                    }
                }
            }
            RequestType::GetId => {
                let n = req.data_out.available_bytes().min(ID_BYTES);
                match req.data_out.write_all(&self.id[..n]) {
                    Ok(()) => (S_OK, n as u32),
                    Err(_) => (S_IOERR, 0),
                }
            }
            RequestType::Unsupported(t) => {
                guest_warn!("virtio-blk: unsupported request type {t}");
                (S_UNSUPP, 0)
            }
        }
    }

    fn bounce(&mut self, len: usize) -> Vec<u8> {
        let mut buf = std::mem::take(&mut self.bounce);
        buf.resize(len.min(CHUNK), 0);
        buf
    }

    fn read(&mut self, req: &mut Request<'_>, mut offset: u64) -> io::Result<u32> {
        let mut buf = self.bounce(req.data_out.available_bytes());
        let result = (|| {
            while req.data_out.available_bytes() > 0 {
                let n = req.data_out.available_bytes().min(buf.len());
                self.disk.read_exact_at(&mut buf[..n], offset)?;
                req.data_out.write_all(&buf[..n])?;
                offset += n as u64;
            }
            Ok(req.data_out.bytes_written() as u32)
        })();
        self.bounce = buf;
        result
    }

    fn write(&mut self, req: &mut Request<'_>, mut offset: u64) -> io::Result<()> {
        let mut buf = self.bounce(req.data_in.available_bytes());
        let result = (|| {
            while req.data_in.available_bytes() > 0 {
                let n = req.data_in.available_bytes().min(buf.len());
                req.data_in.read_exact(&mut buf[..n])?;
                self.disk.write_all_at(&buf[..n], offset)?;
                offset += n as u64;
            }
            Ok(())
        })();
        self.bounce = buf;
        result
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }
    fn features(&self) -> u64 {
        use virtio_bindings::virtio_blk::{
            VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
        };
        let mut f = crate::virtio::VIRTIO_F_VERSION_1
            | (1 << VIRTIO_BLK_F_FLUSH)
            | (1 << VIRTIO_BLK_F_SEG_MAX);
        if self.read_only {
            f |= 1 << VIRTIO_BLK_F_RO;
        }
        f
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }
    fn process_queue(&mut self, mem: &Mem, queues: &mut [Queue], index: usize) -> bool {
        match queues.get_mut(index) {
            Some(q) if index == 0 => self.process_requests(mem, q),
            _ => false,
        }
    }
    fn reset(&mut self) {}
    fn save_state(
        &self,
        _mem: &crate::virtio::Mem,
        _queues: &[virtio_queue::Queue],
    ) -> Result<crate::virtio::VirtioDeviceState, crate::state::DeviceStateError> {
        // Requests complete within one event-loop turn: nothing is in flight between them.
        Ok(crate::virtio::VirtioDeviceState::Block {
            capacity: self.capacity(),
        })
    }
    fn restore_state(
        &mut self,
        state: &crate::virtio::VirtioDeviceState,
    ) -> Result<bool, crate::state::DeviceStateError> {
        match state {
            crate::virtio::VirtioDeviceState::Block { capacity } => {
                Ok(*capacity != self.capacity())
            }
            _ => Err(crate::state::DeviceStateError::Mismatch(
                "virtio-blk",
                "state saved by another kind of device".into(),
            )),
        }
    }
}
