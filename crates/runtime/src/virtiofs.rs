//! Host directories shared live with a VM over virtio-fs: one virtiofsd per directory.
//!
//! ```ignore
//! let d = virtiofs::Daemon::spawn(&bundle_rootfs, &dir.join("root.fs.sock"), false)?;
//! vm.add_fs("root", d.socket());           // [[fs]] tag = "root" in vm.toml
//! // the agent mounts it: crx_proto::Rootfs::virtiofs("root", WritableLayer::Direct)
//! ```
//!
//! virtiofsd is the Rust daemon from crates.io that `cargo xtask virtiofsd` builds into the
//! cache (never Debian's old C `/usr/lib/qemu/virtiofsd`). It exits by itself when the VMM,
//! its only client, disconnects; dropping a [`Daemon`] kills and reaps it in any case.
//!
//! Its confinement (issue 16, ADR 0011): as root, virtiofsd's own namespace sandbox (new
//! mount, PID and network namespaces, the shared directory as its `/`), its seccomp filter
//! with the kill action (`--seccomp kill`, explicit), no bounding set, `no_new_privs`, and
//! only the capabilities a share needs ([`DaemonOptions::drop_caps`]). It stays root in the
//! host's user namespace: a writable share (a container's rootfs) holds files of many owners
//! and creates files as the guest's uid/gid, which needs `chown`, `setuid`, `setgid`, `fowner`,
//! `fsetid` and `dac_override` over the host's ids.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The virtiofsd version `cargo xtask virtiofsd` installs (`$CRX_CACHE/virtiofsd-VERSION`).
pub const VIRTIOFSD_VERSION: &str = "1.14.0";

/// How long [`Daemon::spawn`] waits for the socket to appear.
pub const SOCKET_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors starting virtiofsd.
#[derive(Debug, thiserror::Error)]
pub enum VirtiofsError {
    /// No binary at `$CRX_VIRTIOFSD` or in the cache.
    #[error(
        "virtiofsd not found (tried {tried}): run `cargo xtask virtiofsd` or set CRX_VIRTIOFSD"
    )]
    NotFound {
        /// The paths looked at.
        tried: String,
    },
    /// The shared directory is not a directory.
    #[error("{0}: not a directory, cannot share it")]
    NotADirectory(PathBuf),
    /// The socket path exists already.
    #[error("{0} already exists (a daemon is running there, or a stale socket: remove it)")]
    SocketExists(PathBuf),
    /// Spawning the process failed.
    #[error("starting virtiofsd {path}")]
    Spawn {
        /// The binary.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The daemon exited before its socket appeared.
    #[error("virtiofsd exited ({status}) before listening on {socket}: {log}")]
    Exited {
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The socket it was to create.
        socket: PathBuf,
        /// The end of its log.
        log: String,
    },
    /// The socket did not appear in time.
    #[error("virtiofsd made no socket {0} within {SOCKET_TIMEOUT:?}")]
    Timeout(PathBuf),
    /// Opening the log file failed.
    #[error("{path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// The guest's caching of the share (virtiofsd `--cache`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Cache {
    /// Metadata cached for 1 s, file data with close-to-open consistency: a host write shows
    /// in the guest within a second, or at the next open; guest writes reach the host at once.
    /// The default: every kind of `mmap` works (see ADR 0006 for the measurements).
    #[default]
    Auto,
    /// Nothing cached in the guest: every access asks the host (immediate coherence both ways;
    /// files are read with direct I/O; shared writable mmap fails with ENODEV).
    Never,
    /// Everything cached (only for directories nothing else changes).
    Always,
}

impl Cache {
    fn arg(self) -> &'static str {
        match self {
            Cache::Auto => "--cache=auto",
            Cache::Never => "--cache=never",
            Cache::Always => "--cache=always",
        }
    }
}

/// How virtiofsd isolates itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sandbox {
    /// Its own mount namespace with the shared directory as `/` (needs root or user
    /// namespaces): the default for root.
    Namespace,
    /// None: the daemon sees the whole host (it still resolves guest paths under the shared
    /// directory). The default when not root.
    None,
}

/// What [`Daemon::spawn_with`] starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonOptions {
    /// Refuse every change (`--readonly`): the guest gets EROFS.
    pub readonly: bool,
    /// Guest caching.
    pub cache: Cache,
    /// Isolation.
    pub sandbox: Sandbox,
    /// Where its stderr goes (default: discarded).
    pub log: Option<PathBuf>,
    /// The virtiofsd binary (default: [`find_virtiofsd`]).
    pub binary: Option<PathBuf>,
    /// Tell the guest which directories are mount points, which it then mounts as submounts
    /// of their own (distinct device numbers) whose root is `/` in its mountinfo (default);
    /// without, the share is one file system in the guest.
    pub announce_submounts: bool,
    /// Drop the capabilities the share does not need (`--modcaps`; the default as root):
    /// `setfcap` always (the guest sets no file capability on a host file); read-only, every
    /// capability that changes owners, modes, identities or makes nodes, keeping only
    /// `dac_override` and `dac_read_search`. A writable share keeps `mknod`: an OCI rootfs
    /// without a `/dev` mount gets its default device nodes made in it, as runc makes them
    /// (the guest's kernel, not virtiofsd, opens a device node it finds on a share).
    pub drop_caps: bool,
}

impl Default for DaemonOptions {
    fn default() -> Self {
        DaemonOptions {
            readonly: false,
            cache: Cache::default(),
            sandbox: if running_as_root() {
                Sandbox::Namespace
            } else {
                Sandbox::None
            },
            log: None,
            binary: None,
            announce_submounts: true,
            drop_caps: running_as_root(),
        }
    }
}

/// virtiofsd's `--modcaps` for a share (see [`DaemonOptions::drop_caps`]).
pub fn modcaps(readonly: bool) -> &'static str {
    if readonly {
        "--modcaps=-chown:-fowner:-fsetid:-setgid:-setuid:-mknod:-setfcap"
    } else {
        "--modcaps=-setfcap"
    }
}

/// Whether this process runs as root (the owner of `/proc/self` is the effective uid).
fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// `$CRX_VIRTIOFSD`, else `$CRX_CACHE/virtiofsd-VERSION/bin/virtiofsd`, else the same under
/// `/var/cache/crx`.
pub fn find_virtiofsd() -> Result<PathBuf, VirtiofsError> {
    let mut tried = Vec::new();
    if let Some(p) = std::env::var_os("CRX_VIRTIOFSD") {
        // Given explicitly: no fallback past it.
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(VirtiofsError::NotFound {
                tried: format!("CRX_VIRTIOFSD={}", p.display()),
            })
        };
    }
    let rel = format!("virtiofsd-{VIRTIOFSD_VERSION}/bin/virtiofsd");
    let mut caches = Vec::new();
    if let Some(c) = std::env::var_os("CRX_CACHE") {
        caches.push(PathBuf::from(c));
    }
    caches.push(PathBuf::from("/var/cache/crx"));
    for c in caches {
        let p = c.join(&rel);
        if p.is_file() {
            return Ok(p);
        }
        tried.push(p.display().to_string());
    }
    Err(VirtiofsError::NotFound {
        tried: tried.join(", "),
    })
}

/// The virtiofsd arguments for sharing `dir` on `socket`.
pub fn args(dir: &Path, socket: &Path, opts: &DaemonOptions) -> Vec<String> {
    let mut a = vec![
        "--socket-path".into(),
        socket.display().to_string(),
        "--shared-dir".into(),
        dir.display().to_string(),
        opts.cache.arg().into(),
        "--sandbox".into(),
        match opts.sandbox {
            Sandbox::Namespace => "namespace",
            Sandbox::None => "none",
        }
        .into(),
        "--seccomp".into(),
        "kill".into(),
    ];
    if opts.readonly {
        a.push("--readonly".into());
    }
    if opts.drop_caps {
        a.push(modcaps(opts.readonly).into());
    }
    if !opts.announce_submounts {
        a.push("--no-announce-submounts".into());
    }
    a
}

/// A running virtiofsd serving one directory; killed and reaped when dropped.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    socket: PathBuf,
    dir: PathBuf,
    opts: DaemonOptions,
}

impl Daemon {
    /// Shares `dir` on the vhost-user socket `socket` (which must not exist; its directory
    /// must), read-only if asked, with the default options; returns once the socket exists.
    pub fn spawn(dir: &Path, socket: &Path, readonly: bool) -> Result<Daemon, VirtiofsError> {
        let opts = DaemonOptions {
            readonly,
            ..DaemonOptions::default()
        };
        Self::spawn_with(dir, socket, &opts)
    }

    /// [`Daemon::spawn`] with every option.
    pub fn spawn_with(
        dir: &Path,
        socket: &Path,
        opts: &DaemonOptions,
    ) -> Result<Daemon, VirtiofsError> {
        if !dir.is_dir() {
            return Err(VirtiofsError::NotADirectory(dir.to_owned()));
        }
        if socket.exists() {
            return Err(VirtiofsError::SocketExists(socket.to_owned()));
        }
        let mut d = Daemon {
            child: start(dir, socket, opts)?,
            socket: socket.to_owned(),
            dir: dir.to_owned(),
            opts: opts.clone(),
        };
        d.wait_socket()?;
        Ok(d)
    }

    /// Replaces this daemon with a new one for the same directory, socket and options (the
    /// VMM it served is gone, and it exits with its client): the old one is killed if need
    /// be and reaped, its socket removed; returns once the new socket exists.
    pub fn respawn(&mut self) -> Result<(), VirtiofsError> {
        self.end();
        self.child = start(&self.dir, &self.socket, &self.opts)?;
        self.wait_socket()
    }

    /// Kills the daemon if it runs, reaps it, removes its socket and pid file.
    fn end(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
        // virtiofsd's lock file beside the socket, left behind when it is killed.
        let mut pid = self.socket.clone().into_os_string();
        pid.push(".pid");
        let _ = std::fs::remove_file(pid);
    }

    fn wait_socket(&mut self) -> Result<(), VirtiofsError> {
        let log = self.opts.log.as_deref();
        let end = Instant::now() + SOCKET_TIMEOUT;
        while !self.socket.exists() {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = log
                    .and_then(|p| std::fs::read_to_string(p).ok())
                    .unwrap_or_default();
                let tail = log.lines().last().unwrap_or("").to_owned();
                return Err(VirtiofsError::Exited {
                    status,
                    socket: self.socket.clone(),
                    log: tail,
                });
            }
            if Instant::now() > end {
                return Err(VirtiofsError::Timeout(self.socket.clone()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// The vhost-user socket to give crx-vmm (`VmConfig::add_fs`).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The daemon's host pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it is still running (it exits when the VMM disconnects).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// How it ended, once it has (reaped then); `None` while it runs.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits up to `timeout` for it to exit by itself (after the VM is gone), then kills it;
    /// reaps it and removes the socket (and virtiofsd's `SOCKET.pid`) either way.
    pub fn stop(mut self, timeout: Duration) {
        let end = Instant::now() + timeout;
        while Instant::now() < end && self.is_running() {
            std::thread::sleep(Duration::from_millis(10));
        }
        // Drop kills (if still running), reaps and removes the socket.
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.end();
    }
}

/// Starts virtiofsd for `dir` on `socket` with `opts` (stderr to the log, if any).
fn start(dir: &Path, socket: &Path, opts: &DaemonOptions) -> Result<Child, VirtiofsError> {
    let bin = match &opts.binary {
        Some(b) => b.clone(),
        None => find_virtiofsd()?,
    };
    let stderr = match &opts.log {
        Some(p) => Stdio::from(crate::paths::create_private_file(p).map_err(|source| {
            VirtiofsError::Io {
                path: p.clone(),
                source,
            }
        })?),
        None => Stdio::null(),
    };
    let mut cmd = Command::new(&bin);
    // Until the VMM connects, nothing else would end a daemon whose starter died.
    crate::child::die_with_parent(&mut cmd);
    cmd.args(args(dir, socket, opts))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .map_err(|source| VirtiofsError::Spawn { path: bin, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_follow_the_options() {
        let o = DaemonOptions {
            readonly: true,
            cache: Cache::Never,
            sandbox: Sandbox::None,
            log: None,
            binary: None,
            announce_submounts: false,
            drop_caps: true,
        };
        assert_eq!(
            args(Path::new("/srv/d"), Path::new("/run/s.sock"), &o),
            [
                "--socket-path",
                "/run/s.sock",
                "--shared-dir",
                "/srv/d",
                "--cache=never",
                "--sandbox",
                "none",
                "--seccomp",
                "kill",
                "--readonly",
                "--modcaps=-chown:-fowner:-fsetid:-setgid:-setuid:-mknod:-setfcap",
                "--no-announce-submounts"
            ]
        );
        let d = DaemonOptions {
            sandbox: Sandbox::Namespace,
            ..DaemonOptions::default()
        };
        let a = args(Path::new("/d"), Path::new("/s"), &d);
        assert!(a.contains(&"--cache=auto".to_string()));
        assert!(a.contains(&"namespace".to_string()));
        assert!(!a.contains(&"--readonly".to_string()));
        let rw = DaemonOptions {
            drop_caps: true,
            ..DaemonOptions::default()
        };
        let a = args(Path::new("/d"), Path::new("/s"), &rw);
        assert!(a.contains(&"--modcaps=-setfcap".to_string()), "{a:?}");
    }

    #[test]
    fn bad_directory_or_existing_socket_is_refused_before_spawning() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("file");
        std::fs::write(&f, "x").unwrap();
        assert!(matches!(
            Daemon::spawn(&f, &t.path().join("s"), false),
            Err(VirtiofsError::NotADirectory(_))
        ));
        assert!(matches!(
            Daemon::spawn(t.path(), &f, false),
            Err(VirtiofsError::SocketExists(_))
        ));
    }

    /// A stand-in daemon: creates the socket path (and a `.pid` file, as virtiofsd does), then
    /// sleeps; or exits 3 at once with a message when the path contains "fail".
    fn fake_daemon(dir: &Path) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join("fake-virtiofsd");
        std::fs::write(
            &p,
            "#!/bin/sh\ncase \"$2\" in *fail*) echo cannot share >&2; exit 3;; esac\n\
             touch \"$2.pid\" \"$2\"\nexec sleep 60\n",
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn spawn_waits_for_the_socket_and_drop_reaps_and_cleans_up() {
        let t = tempfile::tempdir().unwrap();
        let opts = DaemonOptions {
            binary: Some(fake_daemon(t.path())),
            log: Some(t.path().join("log")),
            ..DaemonOptions::default()
        };
        let sock = t.path().join("ok.sock");
        let mut d = Daemon::spawn_with(t.path(), &sock, &opts).unwrap();
        assert_eq!(d.socket(), sock);
        assert!(sock.exists());
        assert!(d.is_running());
        let pid = d.pid() as i32;
        drop(d);
        assert!(!sock.exists(), "socket removed");
        assert!(!t.path().join("ok.sock.pid").exists(), "pid file removed");
        // Reaped: the pid no longer names our child.
        let reaped = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
        assert!(reaped.is_err(), "{reaped:?}");

        match Daemon::spawn_with(t.path(), &t.path().join("fail.sock"), &opts) {
            Err(VirtiofsError::Exited { status, log, .. }) => {
                assert_eq!(status.code(), Some(3));
                assert_eq!(log, "cannot share");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn respawn_replaces_a_daemon_on_the_same_socket() {
        let t = tempfile::tempdir().unwrap();
        let opts = DaemonOptions {
            binary: Some(fake_daemon(t.path())),
            ..DaemonOptions::default()
        };
        let sock = t.path().join("ok.sock");
        let mut d = Daemon::spawn_with(t.path(), &sock, &opts).unwrap();
        let old = d.pid() as i32;
        d.respawn().unwrap();
        assert_ne!(d.pid() as i32, old);
        assert!(d.is_running() && sock.exists());
        let reaped = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(old), None);
        assert!(reaped.is_err(), "the old daemon is reaped: {reaped:?}");
        // One whose old daemon already exited (as virtiofsd does after its VMM) too.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(d.pid() as i32),
            nix::sys::signal::SIGTERM,
        )
        .unwrap();
        d.respawn().unwrap();
        assert!(d.is_running() && sock.exists());
    }
}
