//! The OCI runtime's typed errors.

use std::path::PathBuf;

use crate::error::RuntimeError;

/// Errors of the runc-compatible runtime (bundles, state, lifecycle).
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("invalid container id {0:?} (letters, digits, _ + - . only)")]
    BadId(String),
    #[error("container {0} already exists")]
    Exists(String),
    #[error("container {0} does not exist")]
    NotFound(String),
    #[error("bundle {0}: no config.json (make one with `crx-runc spec`)")]
    NoConfig(PathBuf),
    #[error("bundle {path}: config.json is not a valid OCI runtime spec")]
    BadConfig {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("bundle {0}: rootfs {1} is not a directory")]
    NoRootfs(PathBuf, PathBuf),
    #[error("bundle: config.json has no process")]
    NoProcess,
    #[error("bundle: config.json has no ociVersion")]
    NoVersion,
    #[error("bundle: process.args is empty (the container needs a command)")]
    NoArgs,
    #[error("bundle: root.path {0} is a symbolic link (give the directory itself)")]
    RootfsSymlink(PathBuf),
    #[error("bundle: root.path {0} resolves outside the bundle")]
    RootfsEscapes(PathBuf),
    #[error("bundle: {what} hook path {path:?} is not absolute")]
    RelativeHookPath { what: String, path: String },
    #[error("bundle: hostname is {0} bytes long, more than the kernel's 64")]
    HostnameTooLong(usize),
    #[error("bundle: {typ} namespace path {path}")]
    NamespacePath {
        typ: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bundle: {typ} namespace path {path} is not a namespace")]
    NotANamespace { typ: String, path: PathBuf },
    #[error("bundle: {typ} namespace path {path} is a {actual} namespace")]
    NamespaceMismatch {
        typ: String,
        path: PathBuf,
        actual: String,
    },
    #[error(
        "bundle: createContainer hooks are not supported: they would run inside the microVM, \
         where the host's hook binaries are not"
    )]
    CreateContainerHooks,
    #[error("bundle: mount {dest}: unknown mount type {typ:?}")]
    UnknownMountType { dest: String, typ: String },
    #[error("process.terminal is true: give --console-socket (the pty master is sent there)")]
    NoConsoleSocket,
    #[error("--console-socket is given but process.terminal is false")]
    ConsoleWithoutTerminal,
    #[error("the container's terminal")]
    Tty(#[from] crate::tty::TtyError),
    #[error("container {id} is {status}: {what}")]
    WrongState {
        id: String,
        status: String,
        what: &'static str,
    },
    #[error("{what} hook {path} failed: {reason}")]
    Hook {
        what: &'static str,
        path: String,
        reason: String,
    },
    #[error("{} {what} hooks failed: {}", failures.len(), list(failures))]
    Hooks {
        what: &'static str,
        failures: Vec<OciError>,
    },
    #[error("container {id} was not created")]
    MonitorFailed {
        id: String,
        #[source]
        source: crate::monitor::MonitorError,
    },
    #[error("exec in {id}")]
    ExecFailed {
        id: String,
        #[source]
        source: crate::monitor::MonitorError,
    },
    #[error("catching signals (to forward them to the container)")]
    Signals(#[source] std::io::Error),
    #[error("container {id}: monitor: {reason}")]
    Monitor { id: String, reason: String },
    #[error("sharing {dir} with the VM (virtio-fs)")]
    Share {
        dir: PathBuf,
        #[source]
        source: crate::virtiofs::VirtiofsError,
    },
    #[error(transparent)]
    Record(#[from] crate::record::RecordError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
}

/// The runtime's `Io` error for `path` ([`crate::error::io`]).
pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> OciError {
    let io = crate::error::io(path);
    move |source| OciError::Runtime(io(source))
}

/// `errors` on one line, `; ` between them.
fn list(errors: &[OciError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}
