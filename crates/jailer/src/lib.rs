//! crx-jailer: the confinement every crx-vmm runs in (issue 16, ADR 0010).
//!
//! One call, [`run`], takes a [`Jail`] and, as root: enters new mount, PID, IPC, UTS and
//! network namespaces (or a network namespace the caller names), turns a directory into the
//! process's whole file system (`pivot_root`, with read-only binds of what the program needs
//! and a private `/dev` holding only the device nodes it names), forks the program as PID 1
//! of the new PID namespace, and there drops to an unprivileged uid/gid with no capabilities
//! (bounding, ambient and inheritable sets too), `no_new_privs` and resource limits before
//! `execve`. The jailer stays as the program's parent: it forwards termination signals, and
//! the program is killed if the jailer dies (`PR_SET_PDEATHSIG`), so killing the jailer's pid
//! kills the jailed program.
//!
//! With [`Jail::as_init`] the caller has started the jailer as PID 1 of a new PID namespace
//! already (crx-runtime does, ADR 0018): then nothing forks and nothing waits; the jailer
//! makes the same jail around itself and execs the program in its own place, so the
//! program is the caller's child and no jailer process stays behind. A parent-death signal
//! the caller armed is armed again after the uid change (which clears it), and a caller that
//! died meanwhile is seen through a pidfd taken at the start.
//!
//! Inherited file descriptors pass through unchanged: a caller hands the program its
//! verified boot files, its tap and its sockets that way.

#![deny(unsafe_op_in_unsafe_fn)]

mod mounts;
mod privs;
mod supervise;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;

/// A read-only or writable bind of a host path into the jail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// Host path (file or directory).
    pub source: PathBuf,
    /// Absolute path inside the jail.
    pub target: PathBuf,
    pub read_only: bool,
}

/// A device node of the jail's private `/dev` (a tmpfs), owned by the jail's user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// `/dev/kvm` (10, 232).
    Kvm,
    /// `/dev/net/tun` (10, 200).
    Tun,
    /// `/dev/urandom` (1, 9).
    Urandom,
}

impl Device {
    fn node(self) -> (&'static str, u64, u64) {
        match self {
            Self::Kvm => ("kvm", 10, 232),
            Self::Tun => ("net/tun", 10, 200),
            Self::Urandom => ("urandom", 1, 9),
        }
    }
}

/// Which network namespace the program runs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    /// A new, empty one (loopback only, down).
    New,
    /// The one at this path (e.g. `/proc/PID/ns/net`, `/run/netns/NAME`).
    Join(PathBuf),
}

/// What to confine and how.
#[derive(Debug, Clone)]
pub struct Jail {
    /// The jail's root: becomes `/`. A directory owned by root or by `uid`, writable by no
    /// other user (what the program writes there, e.g. sockets, the host sees).
    pub root: PathBuf,
    pub uid: u32,
    pub gid: u32,
    /// The UTS namespace's hostname.
    pub hostname: String,
    pub binds: Vec<Bind>,
    pub devices: Vec<Device>,
    pub network: Network,
    /// Open files (RLIMIT_NOFILE) and processes/threads of the uid (RLIMIT_NPROC).
    pub max_files: u64,
    pub max_processes: u64,
    /// The program, as a path inside the jail (bind it), and its arguments (argv[1..]).
    pub program: PathBuf,
    pub args: Vec<String>,
    /// The jailer already is PID 1 of a new PID namespace its caller made: it execs the
    /// program in its own place instead of forking it and waiting (checked: refused when
    /// the jailer's pid is not 1).
    pub as_init: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("{0}")]
    Invalid(String),
    #[error("{what}")]
    Setup {
        what: String,
        #[source]
        source: nix::Error,
    },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

pub(crate) fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> JailError {
    let what = what.into();
    move |source| JailError::Setup { what, source }
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> JailError {
    let what = what.into();
    move |source| JailError::Io { what, source }
}

impl Jail {
    /// Checks what can be checked before anything changes.
    pub fn validate(&self) -> Result<(), JailError> {
        let bad = |m: String| Err(JailError::Invalid(m));
        if self.uid == 0 || self.gid == 0 {
            return bad(
                "the jail's uid and gid must not be 0 (root): the point is an unprivileged user"
                    .into(),
            );
        }
        mounts::check_root(&self.root, self.uid)?;
        for b in &self.binds {
            if !b.target.is_absolute() || b.target.components().any(|c| c.as_os_str() == "..") {
                return bad(format!(
                    "bind target {} must be an absolute path without '..'",
                    b.target.display()
                ));
            }
            if !b.source.exists() {
                return bad(format!("bind source {} does not exist", b.source.display()));
            }
        }
        if !self.program.is_absolute() {
            return bad(format!(
                "the program {} must be an absolute path inside the jail",
                self.program.display()
            ));
        }
        if self.hostname.is_empty() || self.hostname.len() > 64 {
            return bad(format!(
                "hostname {:?} must be 1 to 64 bytes",
                self.hostname
            ));
        }
        Ok(())
    }
}

/// Confines and runs the program; returns its exit status as a shell would (128 + signal for a
/// killed program). Errors before the program starts are returned (nothing has run).
pub fn run(jail: &Jail) -> Result<i32, JailError> {
    jail.validate()?;
    // Before anything else (the host's /proc is still mounted): the caller to die with.
    let caller = match jail.as_init {
        true => Some(supervise::Caller::of_init()?),
        false => None,
    };
    let netns: Option<OwnedFd> = match &jail.network {
        Network::New => None,
        Network::Join(p) => Some(mounts::open_ns(p)?),
    };
    let mut flags = CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS;
    if caller.is_none() {
        flags |= CloneFlags::CLONE_NEWPID;
    }
    if netns.is_none() {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    nix::sched::unshare(flags).map_err(sys("unshare(namespaces) (needs root)"))?;
    if let Some(fd) = &netns {
        nix::sched::setns(fd, CloneFlags::CLONE_NEWNET)
            .map_err(sys("joining the network namespace"))?;
    }
    mounts::build(jail)?;
    match caller {
        Some(caller) => Err(privs::enter(jail, &caller)),
        None => supervise::fork_and_wait(|parent| privs::enter(jail, parent)),
    }
}

/// The directory a path inside the jail has on the host, before `pivot_root`.
pub(crate) fn host_path(root: &Path, inside: &Path) -> PathBuf {
    root.join(inside.strip_prefix("/").unwrap_or(inside))
}
