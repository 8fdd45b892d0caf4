//! The typed messages. Payloads are JSON (serde_json): see `README.md` for why.
//!
//! OCI documents (the runtime spec of `CreateContainer`, the process of `Exec`) travel as raw
//! JSON values: the host passes through what the caller gave, and the agent parses them with the
//! OCI types of the container library it runs, so this leaf crate depends on no OCI crate version.

use serde::{Deserialize, Serialize};

/// A request on the control connection, with the id its response will carry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestFrame {
    pub id: u64,
    pub request: Request,
}

/// A response on the control connection. `id` is the request's, or 0 when the request could
/// not be decoded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseFrame {
    pub id: u64,
    pub response: Response,
}

/// What the host asks of the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// First request on a connection: the host's protocol version.
    Hello { version: u32 },
    /// Liveness check; answered by `Pong`.
    Ping,
    /// Create a container (its init process is created, not started).
    CreateContainer {
        id: String,
        /// The OCI runtime spec (`config.json`) as given by the caller.
        spec: serde_json::Value,
        rootfs: Rootfs,
    },
    /// Start a created container's init process.
    Start { id: String },
    /// Run an extra process in a running container.
    Exec {
        id: String,
        exec_id: String,
        /// The OCI `process` object.
        process: serde_json::Value,
    },
    /// Send a signal to the container's init (`exec_id: None`), an exec'd process, or, with
    /// `all`, every process of the container.
    Signal {
        id: String,
        exec_id: Option<String>,
        signal: i32,
        #[serde(default)]
        all: bool,
    },
    /// Wait for a process to exit; answered by `Exited` when it has.
    Wait { id: String, exec_id: Option<String> },
    /// Resize a process's terminal.
    ResizePty {
        id: String,
        exec_id: Option<String>,
        rows: u16,
        cols: u16,
    },
    /// Close a process's stdin.
    CloseStdin { id: String, exec_id: Option<String> },
    /// The guest pids of a container's processes; answered by `Processes`.
    ListProcesses { id: String },
    /// Freeze every process of a container (cgroup freezer).
    Pause { id: String },
    /// Thaw a paused container.
    Resume { id: String },
    /// Resource usage; answered by `Stats`.
    Stats { id: String },
    /// Wait until the container's cgroup has counted more than `seen` OOM kills (of any of
    /// its processes); answered by `OomKills` with the count then, or `NotFound` once the
    /// container is removed. Added after version 1 as a new value only.
    WaitOom { id: String, seen: u64 },
    /// Change a container's cgroup limits: `resources` is an OCI `linux.resources` object
    /// (what it names changes, the rest stays). Added after version 1 as a new value only.
    Update {
        id: String,
        resources: serde_json::Value,
    },
    /// Delete a stopped container (`force`: kill it first).
    Remove {
        id: String,
        #[serde(default)]
        force: bool,
    },
    /// Configure the guest's interfaces and routes (answered by `Ok` once all of it is
    /// applied). Added after version 1 as a new value only.
    ConfigureNetwork {
        network: crate::network::NetworkConfig,
    },
    /// Stop everything and power off the VM (the agent answers `Ok` first).
    Shutdown,
    /// What makes a VM restored from a template its own (ADR 0017), sent before any container
    /// is created in it: `entropy` (host randomness, 32 to 512 bytes) is added to the guest's
    /// input pool and the CRNG reseeded; the agent then waits (bounded) until each
    /// `disk_sectors[i]` is the size of the guest's i-th virtio disk (`/dev/vda`, `/dev/vdb`,
    /// ...: the sandbox's disks, announced by a configuration-change interrupt at restore).
    /// Answered by `Ok`. Added after version 1 as a new value only.
    Identity {
        entropy: Vec<u8>,
        #[serde(default)]
        disk_sectors: Vec<u64>,
    },
}

/// Where a container's root filesystem comes from.
///
/// `fs_type` [`FS_TYPE_VIRTIOFS`] makes `device` a virtio-fs tag (a host directory shared live
/// by virtiofsd) instead of a guest block device: see [`Rootfs::virtiofs`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rootfs {
    /// The image disk in the guest, e.g. `/dev/vda`; or the virtio-fs tag.
    pub device: String,
    /// Its filesystem type, e.g. `erofs`, `ext4` or `virtiofs`.
    pub fs_type: String,
    /// The writable layer put over it (overlayfs upper), or none.
    pub writable: WritableLayer,
}

/// The `fs_type` of a root filesystem served by virtio-fs; `device` is then the tag.
pub const FS_TYPE_VIRTIOFS: &str = "virtiofs";

impl Rootfs {
    /// A root filesystem that is the virtio-fs share `tag`. `writable` is usually
    /// [`WritableLayer::Direct`] (writes land in the host directory, as with runc) or
    /// [`WritableLayer::ReadOnly`] (the spec's `root.readonly`); `Tmpfs` keeps writes in the VM.
    pub fn virtiofs(tag: impl Into<String>, writable: WritableLayer) -> Self {
        Rootfs {
            device: tag.into(),
            fs_type: FS_TYPE_VIRTIOFS.into(),
            writable,
        }
    }

    /// Whether `device` is a virtio-fs tag.
    pub fn is_virtiofs(&self) -> bool {
        self.fs_type == FS_TYPE_VIRTIOFS
    }
}

/// The writable layer of a container's root filesystem.
///
/// `ReadOnly` and `Direct` were added after protocol version 1 shipped without a version bump:
/// they are new values only (every earlier message decodes as before); an agent that predates
/// them refuses such a request with a decode error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WritableLayer {
    /// A tmpfs, optionally size-limited.
    Tmpfs { size_bytes: Option<u64> },
    /// A second disk holding a filesystem of `fs_type`.
    Disk { device: String, fs_type: String },
    /// No overlay: the root filesystem is mounted read-only as it is (for `root.readonly`).
    ReadOnly,
    /// No overlay: the root filesystem is mounted writable and writes land in it (a virtio-fs
    /// share: the host directory, as runc writes to the bundle's rootfs).
    Direct,
}

/// An OCI `mounts[]` entry that mounts the virtio-fs share `tag` at `destination` in the
/// container: how a bind mount of a host directory reaches a container in the VM (the host
/// shares the directory with virtiofsd under `tag`; libcontainer mounts it with
/// `fsopen("virtiofs")`, source = the tag). Put it in the spec sent with `CreateContainer`.
pub fn virtiofs_mount(tag: &str, destination: &str, read_only: bool) -> serde_json::Value {
    let mut options = vec!["rw"];
    if read_only {
        options[0] = "ro";
    }
    options.extend(["nosuid", "nodev"]);
    serde_json::json!({
        "destination": destination,
        "type": FS_TYPE_VIRTIOFS,
        "source": tag,
        "options": options,
    })
}

/// Where the agent mounts a virtio-fs share whose *files* are bind-mounted into containers:
/// `SHARES_DIR/TAG` (virtio-fs shares directories only, so a host that binds single files
/// puts them in one directory it shares; see [`share_file_mount`]).
pub const SHARES_DIR: &str = "/run/crx/shares";

/// An OCI `mounts[]` entry that bind-mounts `file` of the virtio-fs share `tag` at
/// `destination` in the container: how a bind mount of a single host file (`/etc/hosts`)
/// reaches a container. The agent mounts the share at [`SHARES_DIR`]`/TAG` before
/// libcontainer makes the bind mount. `tag` is a single path component, `file` a relative
/// path of plain components.
pub fn share_file_mount(
    tag: &str,
    file: &str,
    destination: &str,
    read_only: bool,
) -> serde_json::Value {
    let mut options = vec!["rbind", if read_only { "ro" } else { "rw" }];
    options.extend(["nosuid", "nodev"]);
    serde_json::json!({
        "destination": destination,
        "type": "bind",
        "source": format!("{SHARES_DIR}/{tag}/{file}"),
        "options": options,
    })
}

/// The share tag a mount entry's `source` names under [`SHARES_DIR`], if it is a
/// [`share_file_mount`] (a tag, then one or more plain path components: `binds/d0/vol`).
pub fn shared_file_tag(source: &str) -> Option<&str> {
    let rest = source.strip_prefix(SHARES_DIR)?.strip_prefix('/')?;
    let (tag, file) = rest.split_once('/')?;
    let plain = |c: &str| !c.is_empty() && c != "." && c != "..";
    (plain(tag) && file.split('/').all(plain)).then_some(tag)
}

/// The agent's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    /// Handshake accepted: the agent's protocol version.
    HelloOk { version: u32 },
    /// Answer to `Ping`.
    Pong,
    /// The request was carried out.
    Ok,
    /// A process exited (answer to `Wait`).
    Exited(ExitStatus),
    /// Guest pids of a container's processes.
    Processes { pids: Vec<i32> },
    /// Resource usage of a container.
    Stats(ContainerStats),
    /// OOM kills in a container's cgroup since it was created (answer to `WaitOom`).
    OomKills { count: u64 },
    /// The request failed.
    Error(AgentError),
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Exit code, or `128 + signal` when killed by a signal (the shell convention containerd uses).
    pub code: i32,
    /// The signal that killed it, if any.
    pub signal: Option<i32>,
}

/// Whether a process can end by `signal` (what a wait status may report): 1 to 64, less
/// the signals whose default action stops, continues or ignores (SIGCHLD, SIGCONT, SIGSTOP,
/// SIGTSTP, SIGTTIN, SIGTTOU, SIGURG, SIGWINCH).
pub fn is_terminating_signal(signal: i32) -> bool {
    const NOT: [i32; 8] = [17, 18, 19, 20, 21, 22, 23, 28];
    (1..=64).contains(&signal) && !NOT.contains(&signal)
}

impl ExitStatus {
    /// The status as the guest reported it, made safe to act on (it is guest input): a
    /// signal only when a process can end by it ([`is_terminating_signal`]), with the code
    /// `128 + signal`; otherwise no signal and a code in 0..=255 (an impossible one
    /// becomes 255).
    pub fn validated(self) -> ExitStatus {
        match self.signal {
            Some(s) if is_terminating_signal(s) => ExitStatus {
                code: 128 + s,
                signal: Some(s),
            },
            _ => ExitStatus {
                code: if (0..=255).contains(&self.code) {
                    self.code
                } else {
                    255
                },
                signal: None,
            },
        }
    }
}

/// Resource usage counters of a container (cgroup v2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ContainerStats {
    pub cpu_usage_ns: u64,
    pub memory_bytes: u64,
    pub pids: u64,
    /// `memory.max` (None: no limit). Added after version 1 (absent: None).
    #[serde(default)]
    pub memory_limit_bytes: Option<u64>,
    /// `pids.max` (None: no limit). Added after version 1 (absent: None).
    #[serde(default)]
    pub pids_limit: Option<u64>,
    /// The rest were added after version 1 (absent: 0).
    /// CPU time in user and system mode (`cpu.stat`).
    #[serde(default)]
    pub cpu_user_ns: u64,
    #[serde(default)]
    pub cpu_system_ns: u64,
    /// Anonymous, file-backed and inactive file-backed memory (`memory.stat`); the working
    /// set is the usage less the inactive file pages.
    #[serde(default)]
    pub memory_anon_bytes: u64,
    #[serde(default)]
    pub memory_file_bytes: u64,
    #[serde(default)]
    pub memory_inactive_file_bytes: u64,
    /// `memory.events`: times the limit was reached (`max`), the OOM killer was invoked
    /// (`oom`) and killed a process of the container (`oom_kill`), since it was created.
    #[serde(default)]
    pub memory_max_events: u64,
    #[serde(default)]
    pub oom_events: u64,
    #[serde(default)]
    pub oom_kills: u64,
}

/// A typed error from the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct AgentError {
    pub kind: ErrorKind,
    pub message: String,
}

impl AgentError {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> AgentError {
        AgentError {
            kind,
            message: message.into(),
        }
    }
}

/// The classes of agent errors, for the host to act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The frame could not be decoded as a request.
    Malformed,
    /// A request other than `Hello` came before the handshake.
    HandshakeRequired,
    /// The host's protocol version is not the agent's.
    VersionMismatch,
    /// No such container or process.
    NotFound,
    /// A container or exec id already in use.
    AlreadyExists,
    /// Well-formed but invalid here (wrong state, bad spec).
    InvalidRequest,
    /// Understood but not implemented by this agent.
    Unsupported,
    /// The agent failed while carrying it out.
    Internal,
}

/// The first frame on a stdio stream connection (opened by the host, one per stream), then raw
/// bytes. The agent answers with one [`ResponseFrame`] (`Ok` or `Error`, id 0) before the bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamHeader {
    pub version: u32,
    pub id: String,
    /// `None`: the container's init process.
    pub exec_id: Option<String>,
    pub stream: StreamKind,
}

/// The first frame on a port-forward connection (opened by the host, one per forwarded
/// connection: the CRI's `PortForward`), then raw bytes. The agent connects to `port` on the
/// guest's loopback (the pod's network namespace: `127.0.0.1`, else `::1`) and answers with
/// one [`ResponseFrame`] (`Ok`, or `Error` of kind `NotFound` when nothing listens) before
/// the bytes; either side's end of input is passed on as a half close.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortHeader {
    pub version: u32,
    pub forward_port: u16,
}

/// Which stream a stream connection carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamKind {
    Stdin,
    Stdout,
    Stderr,
    /// A terminal: both directions on one connection.
    Pty,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_from_the_guest_are_validated() {
        let st = |code, signal| ExitStatus { code, signal };
        // Real statuses pass through.
        assert_eq!(st(0, None).validated(), st(0, None));
        assert_eq!(st(3, None).validated(), st(3, None));
        assert_eq!(st(137, Some(9)).validated(), st(137, Some(9)));
        assert_eq!(st(143, Some(15)).validated(), st(143, Some(15)));
        assert_eq!(st(0, Some(64)).validated(), st(192, Some(64)));
        // A signal out of range never overflows `128 + signal` and is dropped.
        assert_eq!(st(1, Some(i32::MAX)).validated(), st(1, None));
        assert_eq!(st(-5, Some(i32::MIN)).validated(), st(255, None));
        assert_eq!(st(0, Some(0)).validated(), st(0, None));
        assert_eq!(st(0, Some(65)).validated(), st(0, None));
        // Stop, continue and ignore-by-default signals end no process.
        for s in [17, 18, 19, 20, 21, 22, 23, 28] {
            assert!(!is_terminating_signal(s), "{s}");
            assert_eq!(st(128 + s, Some(s)).validated(), st(128 + s, None));
        }
        // Impossible codes.
        assert_eq!(st(256, None).validated(), st(255, None));
        assert_eq!(st(-1, None).validated(), st(255, None));
    }
}
