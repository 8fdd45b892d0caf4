//! Wires the crx-devices virtio-mmio devices into a VM: slots in the MMIO hole, KVM irqfds and
//! ioeventfds (registered here, never in crx-devices), event-loop subscribers, and the kernel
//! command-line fragments that tell Linux where the devices are.

use std::fs::File;
use std::sync::{Arc, Mutex};

use crx_devices::virtio::blk::Block;
use crx_devices::virtio::fs::Fs;
use crx_devices::virtio::rng::Rng;
use crx_devices::virtio::vsock::Vsock;
use crx_devices::virtio::{
    cmdline_fragment, EventFd, MmioTransport, VirtioDevice, VirtioSubscriber, MMIO_SIZE,
    QUEUE_NOTIFY_OFFSET,
};
use kvm_ioctls::{IoEventAddress, VmFd};
use vm_memory::GuestMemoryMmap;

use crate::bus::Bus;
use crate::config::VmConfig;
use crate::event_loop::Subscriber;
use crate::layout::{GSI_MAX, VIRTIO_GSI_START, VIRTIO_MMIO_SIZE, VIRTIO_MMIO_START};

mod net;

/// Errors attaching virtio devices.
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    /// A disk image could not be opened.
    #[error("cannot open disk image {0}")]
    OpenDisk(String, #[source] std::io::Error),
    /// The block device refused the image.
    #[error("disk image {0}")]
    Block(String, #[source] crx_devices::virtio::blk::BlockError),
    /// The vsock device could not be created (e.g. its socket path).
    #[error("vsock device")]
    Vsock(#[source] crx_devices::virtio::vsock::VsockError),
    /// A virtio-fs backend could not be reached or refused the negotiation.
    #[error("virtio-fs `{0}`: vhost-user socket {1}")]
    FsConnect(
        String,
        String,
        #[source] crx_devices::virtio::fs::ConnectError,
    ),
    /// The virtio-fs device could not be created.
    #[error("virtio-fs `{0}`")]
    Fs(String, #[source] crx_devices::virtio::fs::FsError),
    /// A virtio-net device could not be set up.
    #[error(transparent)]
    Net(#[from] net::NetAttachError),
    /// The transport could not be created.
    #[error("virtio-mmio transport")]
    Transport(#[source] crx_devices::virtio::TransportError),
    /// An eventfd could not be created.
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    /// KVM_IRQFD / KVM_IOEVENTFD.
    #[error("{0} failed")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    /// More devices than interrupt lines.
    #[error("too many virtio devices: at most {} fit", GSI_MAX - VIRTIO_GSI_START + 1)]
    TooMany,
    /// The MMIO bus refused the slot.
    #[error(transparent)]
    Bus(#[from] crate::bus::BusError),
}

/// What attaching produced for the rest of the VM setup.
#[derive(Default)]
pub struct Attached {
    /// Kernel command-line fragments (`virtio_mmio.device=...`).
    pub cmdline: Vec<String>,
    /// Event-loop subscribers, one per device.
    pub subscribers: Vec<Subscriber>,
    /// Writable disk images, to `sync_data` at shutdown.
    pub flush_files: Vec<File>,
    /// Each transport, in slot order, for snapshots.
    pub transports: Vec<crate::snapshot::devices::SharedTransport>,
}

struct Attacher<'a> {
    vm: &'a VmFd,
    mem: &'a GuestMemoryMmap,
    mmio: &'a mut Bus,
    next: u32,
    out: Attached,
}

impl Attacher<'_> {
    fn add<D: VirtioDevice + 'static>(&mut self, dev: D) -> Result<(), VirtioError> {
        let gsi = VIRTIO_GSI_START + self.next;
        if gsi > GSI_MAX {
            return Err(VirtioError::TooMany);
        }
        let base = VIRTIO_MMIO_START + u64::from(self.next) * VIRTIO_MMIO_SIZE;
        self.next += 1;
        let irq = Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(VirtioError::EventFd)?);
        self.vm
            .register_irqfd(&irq, gsi)
            .map_err(|e| VirtioError::Kvm("KVM_IRQFD", e))?;
        let t = MmioTransport::new(dev, self.mem.clone(), irq).map_err(VirtioError::Transport)?;
        for (i, evt) in t.queue_evts().iter().enumerate() {
            self.vm
                .register_ioevent(
                    evt,
                    &IoEventAddress::Mmio(base + QUEUE_NOTIFY_OFFSET),
                    i as u32,
                )
                .map_err(|e| VirtioError::Kvm("KVM_IOEVENTFD", e))?;
        }
        let t = Arc::new(Mutex::new(t));
        self.mmio.insert(base, MMIO_SIZE, t.clone())?;
        self.out.transports.push(t.clone());
        self.out
            .subscribers
            .push(Arc::new(Mutex::new(VirtioSubscriber::new(t))));
        self.out.cmdline.push(cmdline_fragment(base, gsi));
        Ok(())
    }
}

/// Creates the configured disks, vsock, virtio-fs and virtio-net devices, plus one virtio-rng, in that order (so disk `i` is
/// `/dev/vda`, `/dev/vdb`, ... in configuration order).
pub fn attach(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    cfg: &VmConfig,
    mmio: &mut Bus,
) -> Result<Attached, VirtioError> {
    let mut a = Attacher {
        vm,
        mem,
        mmio,
        next: 0,
        out: Attached::default(),
    };
    for d in &cfg.disks {
        let name = d.path.display().to_string();
        let file = crate::inherited::open(&d.path, !d.read_only)
            .map_err(|e| VirtioError::OpenDisk(name.clone(), e))?;
        if !d.read_only {
            let dup = file
                .try_clone()
                .map_err(|e| VirtioError::OpenDisk(name.clone(), e))?;
            a.out.flush_files.push(dup);
        }
        let blk = Block::new(file, d.read_only).map_err(|e| VirtioError::Block(name, e))?;
        a.add(blk)?;
    }
    if let Some(v) = &cfg.vsock {
        let dev = Vsock::new(u64::from(v.guest_cid), &v.uds_path).map_err(VirtioError::Vsock)?;
        a.add(dev)?;
    }
    for f in &cfg.fs {
        let queues = Fs::queue_count();
        let conn = crx_devices::virtio::fs::connect(&f.socket, queues).map_err(|e| {
            VirtioError::FsConnect(f.tag.clone(), f.socket.display().to_string(), e)
        })?;
        let dev = Fs::new(&f.tag, Box::new(conn)).map_err(|e| VirtioError::Fs(f.tag.clone(), e))?;
        a.add(dev)?;
    }
    for dev in net::devices(&cfg.net)? {
        a.add(dev)?;
    }
    a.add(Rng::new())?;
    Ok(a.out)
}
