//! The runtime's typed errors.

use std::path::PathBuf;

/// Errors of instance and container operations.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("guest kernel or base initrd not found ({missing}): run `cargo xtask boot` (or set CRX_BOOT_DIR)")]
    BootFilesMissing { missing: String },
    #[error(transparent)]
    BootFile(#[from] crate::boot_files::BootFileError),
    #[error(
        "crx-vmm not found next to {exe} (build it with `cargo build -p crx-vmm` or set CRX_VMM)"
    )]
    VmmMissing { exe: PathBuf },
    #[error("crx-jailer not found at {looked} (build it with `cargo build -p crx-jailer`, set CRX_JAILER, or CRX_JAIL=0 to run VMMs unconfined, for debugging only)")]
    JailerMissing { looked: PathBuf },
    #[error("internal: a VMM's jail must be its own `vm` directory, not {dir}")]
    JailDir { dir: PathBuf },
    #[error("writing the VM config {path}")]
    VmConfig {
        path: PathBuf,
        #[source]
        source: crx_vmconfig::ConfigError,
    },
    #[error("starting crx-vmm {path}")]
    SpawnVmm {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the VM stopped before its agent answered: {reason} (`crx check` tells whether this host's KVM can boot Linux)")]
    VmExited { reason: String },
    #[error("the guest agent did not answer within {secs} s: {reason} (raise CRX_AGENT_TIMEOUT on a slow host; `crx check` tells whether KVM is emulated)")]
    AgentTimeout { secs: u64, reason: String },
    #[error("talking to the guest agent")]
    Agent(#[from] crx_proto::ClientError),
    #[error("agent stream {what}")]
    Stream {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("vsock handshake refused: {0:?}")]
    VsockRefused(String),
    #[error("no instance {0:?} (see `crx ps -a`)")]
    NoSuchInstance(String),
    #[error("instance name {0:?} already in use (remove it with `crx rm`)")]
    NameInUse(String),
    #[error("instance {0} is running (stop it with `crx kill`, or use `crx rm -f`)")]
    Running(String),
    #[error("instance {0} is not running")]
    NotRunning(String),
    #[error("{0}: too long for a Unix socket path (at most 107 bytes): use a shorter --root")]
    SocketPathTooLong(PathBuf),
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Record(#[from] crate::record::RecordError),
    #[error("building the OCI spec")]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Image(#[from] crx_image::StoreError),
    #[error("the instance's network")]
    Net(#[from] crate::net::NetError),
    #[error("the instance's volumes")]
    Volumes(#[source] Box<crate::oci::error::OciError>),
    #[error("volume {0}: its source is gone")]
    VolumeGone(String),
    #[error("restarting a virtio-fs share's daemon for a cold boot after a failed restore")]
    Reshare(#[source] crate::virtiofs::VirtiofsError),
}

/// Errors building an OCI runtime spec from an image config and flags.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("no command: the image has no entrypoint or cmd; give one after the image name")]
    NoCommand,
    #[error("bad environment entry {0:?}: expected KEY=VALUE")]
    BadEnv(String),
    #[error("user {0:?}: only numeric UID[:GID] is supported in the guest (no passwd lookups)")]
    BadUser(String),
    #[error("working directory {0:?} must be absolute")]
    BadWorkdir(String),
    #[error("oci-spec")]
    Oci(#[from] oci_spec::OciSpecError),
}

/// `Io` for `path`.
pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let path = path.into();
    move |source| RuntimeError::Io { path, source }
}
