//! VM snapshots (docs/snapshot-format.md, ADR 0014): a paused VM written to a directory as a
//! state file (header, postcard-encoded [`state::VmState`], SHA-256) and a memory file (guest
//! RAM, sparse), and restored in a new crx-vmm process that maps the memory file copy-on-write.
//!
//! Trigger: `crx-vmm ... --snapshot-on-port PORT DIR` (the guest asks) or
//! `--snapshot-on-signal DIR` (SIGUSR1: the host asks) opens `DIR/state` and `DIR/memory`
//! before the guest runs (the seccomp filters allow no open later); a guest write to port PORT,
//! or SIGUSR1, stops the vCPUs, each saves its own state on its thread,
//! the main thread adds the KVM VM's and the devices' state, writes the memory then the state
//! file, and the process exits 0. `crx-vmm ... --restore DIR` (with the same VM shape) builds
//! the VM from the snapshot instead of booting a kernel.

pub mod devices;
pub mod format;
pub mod identity;
pub mod kvm_vm;
pub mod memory;
pub mod msrs;
pub mod state;
pub mod vcpu;

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::config::VmConfig;
use format::{Expect, FormatError};
use state::VmState;

/// The state file's name in a snapshot directory.
pub const STATE_FILE: &str = "state";
/// The memory file's name in a snapshot directory.
pub const MEMORY_FILE: &str = "memory";

/// Snapshot and restore errors (each displays as one line, with its cause after it).
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A file of the snapshot.
    #[error("snapshot {0}: {1}")]
    Io(&'static str, PathBuf, #[source] std::io::Error),
    /// Writing a prepared file.
    #[error("cannot write the snapshot's {0} file")]
    Write(&'static str, #[source] std::io::Error),
    /// The state file was refused.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// A KVM VM call.
    #[error("{0} failed")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    /// A vCPU's state.
    #[error("vCPU {0} state")]
    Vcpu(u8, #[source] vcpu::VcpuStateError),
    /// A vCPU did not report its state.
    #[error("vCPU {0} stopped without saving its state")]
    VcpuMissing(u8),
    /// A device refused.
    #[error(transparent)]
    Device(#[from] crx_devices::state::DeviceStateError),
    /// Mapping guest RAM.
    #[error(transparent)]
    Memory(#[from] crate::memory::MemoryError),
    /// The snapshot does not fit this VM.
    #[error("snapshot does not fit this VM: {0}")]
    Mismatch(String),
}

/// What this host and configuration require of a snapshot.
pub fn expect_for(cfg: &VmConfig) -> Expect {
    Expect {
        cpu: identity::CpuIdentity::host(),
        config: identity::config_hash(cfg),
    }
}

/// A snapshot destination, opened before the guest runs: a guest write to `port` (if set) or
/// SIGUSR1 to the VMM writes it.
#[derive(Debug)]
pub struct SnapshotTarget {
    /// The port whose write asks for the snapshot (`None`: SIGUSR1 only).
    pub port: Option<u16>,
    /// The directory.
    pub dir: PathBuf,
    /// Guest RAM in bytes.
    pub memory_bytes: u64,
    /// What the header records: this host's CPU, the VM's shape.
    pub expect: Expect,
    state: File,
    memory: File,
}

impl SnapshotTarget {
    /// Creates `dir` if needed and creates its state file empty and its memory file sized for
    /// `cfg`'s RAM (a hole until written): a snapshot there before this one is gone, and until
    /// the state file is written the directory holds no valid snapshot. Old files are unlinked,
    /// never truncated: VMs restored from them keep their (mapped) memory file intact.
    pub fn prepare(dir: &Path, port: Option<u16>, cfg: &VmConfig) -> Result<Self, SnapshotError> {
        let memory_bytes = cfg.memory_mib << 20;
        std::fs::create_dir_all(dir).map_err(|e| SnapshotError::Io("directory", dir.into(), e))?;
        let open = |name: &'static str| {
            let p = dir.join(name);
            match std::fs::remove_file(&p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(SnapshotError::Io(name, p, e));
                }
                _ => {}
            }
            OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&p)
                .map_err(|e| SnapshotError::Io(name, p, e))
        };
        let state = open(STATE_FILE)?;
        let memory = open(MEMORY_FILE)?;
        memory
            .set_len(memory::file_len(memory_bytes))
            .map_err(|e| SnapshotError::Io(MEMORY_FILE, dir.join(MEMORY_FILE), e))?;
        Ok(SnapshotTarget {
            port,
            dir: dir.into(),
            memory_bytes,
            expect: expect_for(cfg),
            state,
            memory,
        })
    }

    /// Writes guest RAM, then the state (memory first: a state file present means the memory
    /// file under it is whole), each made durable. Needs no open: seccomp allows it.
    pub fn write(
        &self,
        state: &VmState,
        mem: &vm_memory::GuestMemoryMmap,
    ) -> Result<(), SnapshotError> {
        memory::write(mem, &self.memory).map_err(|e| SnapshotError::Write(MEMORY_FILE, e))?;
        self.memory
            .sync_data()
            .map_err(|e| SnapshotError::Write(MEMORY_FILE, e))?;
        let bytes = format::encode(state, &self.expect)?;
        self.state
            .write_all_at(&bytes, 0)
            .map_err(|e| SnapshotError::Write(STATE_FILE, e))?;
        self.state
            .sync_data()
            .map_err(|e| SnapshotError::Write(STATE_FILE, e))
    }
}

/// A snapshot read back: its state, and its memory file (to map).
pub struct Loaded {
    /// The decoded state.
    pub state: VmState,
    /// The memory file, its length checked against the state.
    pub memory: File,
}

/// Reads and checks the snapshot in `dir` against `expect`.
pub fn load(dir: &Path, expect: &Expect) -> Result<Loaded, SnapshotError> {
    let sp = dir.join(STATE_FILE);
    let f = File::open(&sp).map_err(|e| SnapshotError::Io(STATE_FILE, sp.clone(), e))?;
    let limit = (format::HEADER_LEN + format::SUM_LEN) as u64 + format::MAX_PAYLOAD + 1;
    let mut bytes = Vec::new();
    f.take(limit)
        .read_to_end(&mut bytes)
        .map_err(|e| SnapshotError::Io(STATE_FILE, sp, e))?;
    let state = format::decode(&bytes, expect)?;
    let mp = dir.join(MEMORY_FILE);
    let memory = File::open(&mp).map_err(|e| SnapshotError::Io(MEMORY_FILE, mp.clone(), e))?;
    let len = memory
        .metadata()
        .map_err(|e| SnapshotError::Io(MEMORY_FILE, mp, e))?
        .len();
    let want = memory::file_len(state.memory_bytes);
    if len != want {
        return Err(SnapshotError::Mismatch(format!(
            "memory file is {len} bytes, the state says {want}"
        )));
    }
    Ok(Loaded { state, memory })
}
