//! The container helper: a single-threaded process (`crx-init --container-helper`, its stdin a
//! Unix socket to the agent) that runs every libcontainer operation and reaps container processes.
//!
//! It serves one request at a time, except `Wait`, whose answer is sent when the process exits,
//! and `WaitOom`, answered when the container's cgroup counts a new OOM kill ([`super::oom`]).
//! Events come from `poll` on the socket, a signalfd for SIGCHLD (blocked since `main`) and
//! the OOM watch's inotify descriptor.

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use crx_proto::{
    decode, read_frame, write_message, AgentError, ErrorKind, ExitStatus, Request, Response,
    ResponseFrame, Rootfs, StreamKind,
};
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::oci_spec::runtime::LinuxSeccomp;
use libcontainer::signal::Signal;
use libcontainer::syscall::syscall::SyscallType;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal as NixSignal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};

use super::fdpass::FdReader;
use super::forward::HelperFrame;
use super::{
    bundle, cgroup_path, net_sysctl, rootfs, seccomp, spec_fields, CGROUP_PARENT, CGROUP_ROOT,
    CONTAINERS_DIR, STATE_DIR,
};

/// Stdio descriptors that came with a request, or the console socket of a process with a
/// terminal (libcontainer makes the pty in the container and sends the master there).
#[derive(Default)]
struct Stdio {
    stdin: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    console_socket: Option<PathBuf>,
}

impl Stdio {
    /// Gives the streams (or the console socket) to a builder.
    fn apply(self, mut b: ContainerBuilder) -> ContainerBuilder {
        // Without a stdin stream the process reads /dev/null: the helper's own stdin is its
        // socket to the agent, which a container must never hold (it could forge replies).
        let null = || std::fs::File::open("/dev/null").ok().map(OwnedFd::from);
        if let Some(fd) = self
            .stdin
            .or_else(|| self.console_socket.is_none().then(null).flatten())
        {
            b = b.with_stdin(fd);
        }
        if let Some(fd) = self.stdout {
            b = b.with_stdout(fd);
        }
        if let Some(fd) = self.stderr {
            b = b.with_stderr(fd);
        }
        if self.console_socket.is_some() {
            b = b.with_console_socket(self.console_socket);
        }
        b
    }
}

/// A process the helper waits for: a container's init or an exec'd process.
#[derive(Default)]
struct Proc {
    pid: Option<i32>,
    exit: Option<ExitStatus>,
    /// Request ids of pending `Wait`s.
    waiters: Vec<u64>,
    /// A duplicate of its stdin stream socket, for `close_stdin`.
    stdin: Option<OwnedFd>,
}

struct Ctr {
    container: Container,
    dir: PathBuf,
    /// The container's seccomp profile, for its exec'd processes.
    seccomp: Option<LinuxSeccomp>,
    init: Proc,
    execs: HashMap<String, Proc>,
}

impl Ctr {
    fn proc_mut(&mut self, exec_id: Option<&str>) -> Option<&mut Proc> {
        match exec_id {
            None => Some(&mut self.init),
            Some(e) => self.execs.get_mut(e),
        }
    }
}

struct Helper {
    out: UnixStream,
    containers: HashMap<String, Ctr>,
    ooms: super::oom::OomWatch,
    /// What the guest kernel offers to the spec's newer fields.
    kernel: spec_fields::Kernel,
}

/// Runs the helper until the agent closes the socket.
pub fn main() -> Result<()> {
    let stdin = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .context("stdin")?;
    let sock = UnixStream::from(stdin);
    nix::sys::prctl::set_child_subreaper(true).context("PR_SET_CHILD_SUBREAPER")?;
    reset_dispositions();
    catch_sigpipe();
    let mut mask = SigSet::empty();
    mask.add(NixSignal::SIGCHLD);
    let sfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .context("signalfd")?;
    if std::env::args().any(|a| a == "--restarted") {
        clean_up_leftovers();
    }
    let mut h = Helper {
        out: sock.try_clone().context("socket")?,
        containers: HashMap::new(),
        ooms: super::oom::OomWatch::new()?,
        kernel: spec_fields::Kernel::probe(),
    };
    let mut reader = FdReader::new(sock);
    loop {
        let (sock_ready, sig_ready, oom_ready) = {
            let mut fds = [
                PollFd::new(reader.socket().as_fd(), PollFlags::POLLIN),
                PollFd::new(sfd.as_fd(), PollFlags::POLLIN),
                PollFd::new(h.ooms.fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e).context("poll"),
            }
            let ready = |f: &PollFd<'_>| f.revents().is_some_and(|r| !r.is_empty());
            (ready(&fds[0]), ready(&fds[1]), ready(&fds[2]))
        };
        if sig_ready {
            while let Ok(Some(_)) = sfd.read_signal() {}
        }
        h.reap();
        if oom_ready {
            for (id, answer) in h.ooms.ready(cgroup_dir) {
                h.reply(id, answer);
            }
        }
        if sock_ready {
            match read_frame(&mut reader) {
                Ok(Some(p)) => match decode::<HelperFrame>(&p) {
                    Ok(f) => {
                        let mut stdio = Stdio {
                            console_socket: f.console_socket,
                            ..Stdio::default()
                        };
                        for kind in f.stdio {
                            let fd = reader.take_fd();
                            match kind {
                                StreamKind::Stdin => stdio.stdin = fd,
                                StreamKind::Stdout => stdio.stdout = fd,
                                StreamKind::Stderr => stdio.stderr = fd,
                                StreamKind::Pty => {}
                            }
                        }
                        // Descriptors no frame claimed are closed.
                        while reader.take_fd().is_some() {}
                        h.handle(f.id, f.request, stdio)
                    }
                    Err(e) => h.reply(
                        0,
                        error(ErrorKind::Malformed, anyhow::Error::from(e).to_string()),
                    ),
                },
                Ok(None) => return Ok(()),
                Err(e) => return Err(e).context("reading from the agent"),
            }
            h.reap();
        }
    }
}

/// Puts every signal back to its default action. An ignored signal stays ignored across fork
/// and exec, so whatever started crx-init (`nohup` ignores SIGHUP) would otherwise leave it
/// ignored in every container process: a terminal's hang-up would not end them.
#[allow(unsafe_code)]
fn reset_dispositions() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler};
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for sig in NixSignal::iterator() {
        if matches!(sig, NixSignal::SIGKILL | NixSignal::SIGSTOP) {
            continue;
        }
        // SAFETY: installs the default action, no handler; no other thread exists yet.
        if let Err(e) = unsafe { sigaction(sig, &default) } {
            eprintln!("crx-init: helper: resetting {sig}: {e}");
        }
    }
}

/// Container processes inherit signal dispositions through libcontainer's fork and their exec,
/// and an ignored SIGPIPE (Rust's runtime ignores it in crx-init) would stay ignored: `yes |
/// head` would print "Broken pipe". A caught signal is reset to its default by exec, so the
/// helper catches SIGPIPE with a handler that does nothing: its own writes still get EPIPE
/// (libcontainer's channels send without MSG_NOSIGNAL), container processes get the default,
/// as under runc.
#[allow(unsafe_code)]
fn catch_sigpipe() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler};
    extern "C" fn nothing(_: libc::c_int) {}
    let act = SigAction::new(
        SigHandler::Handler(nothing),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    // SAFETY: the handler does nothing, so it is async-signal-safe; no other thread exists.
    if let Err(e) = unsafe { sigaction(NixSignal::SIGPIPE, &act) } {
        eprintln!("crx-init: helper: catching SIGPIPE: {e}");
    }
}

fn error(kind: ErrorKind, msg: impl Into<String>) -> Response {
    Response::Error(AgentError::new(kind, msg))
}

fn not_found(id: &str) -> Response {
    error(ErrorKind::NotFound, format!("no container {id}"))
}

/// Container ids as libcontainer accepts them (they also name directories here).
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_+-.".contains(&b))
}

impl Helper {
    fn reply(&mut self, id: u64, response: Response) {
        let _ = write_message(&mut self.out, &ResponseFrame { id, response });
        let _ = self.out.flush();
    }

    fn reap(&mut self) {
        loop {
            let (pid, st) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, ExitStatus { code, signal: None }),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (
                    pid,
                    ExitStatus {
                        code: 128 + sig as i32,
                        signal: Some(sig as i32),
                    },
                ),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(_) => return,
            };
            let mut answers = Vec::new();
            for c in self.containers.values_mut() {
                for p in std::iter::once(&mut c.init).chain(c.execs.values_mut()) {
                    if p.exit.is_none() && p.pid == Some(pid.as_raw()) {
                        p.exit = Some(st);
                        answers.append(&mut p.waiters);
                    }
                }
            }
            for id in answers {
                self.reply(id, Response::Exited(st));
            }
        }
    }

    fn handle(&mut self, id: u64, req: Request, stdio: Stdio) {
        let response = match req {
            Request::Wait { id: cid, exec_id } => {
                let p = self
                    .containers
                    .get_mut(&cid)
                    .and_then(|c| c.proc_mut(exec_id.as_deref()));
                match p {
                    None => not_found(&cid),
                    Some(Proc { exit: Some(st), .. }) => Response::Exited(*st),
                    Some(p) => {
                        p.waiters.push(id);
                        return;
                    }
                }
            }
            Request::WaitOom { id: cid, seen } if self.containers.contains_key(&cid) => {
                match self.ooms.wait(id, &cid, &cgroup_dir(&cid), seen) {
                    Ok(Some(answer)) => answer,
                    Ok(None) => return,
                    Err(e) => error(ErrorKind::Unsupported, format!("{e:#}")),
                }
            }
            Request::WaitOom { id: cid, .. } => not_found(&cid),
            other => self
                .run(other, stdio)
                .unwrap_or_else(|e| error(ErrorKind::InvalidRequest, format!("{e:#}"))),
        };
        self.reply(id, response);
    }

    fn get(&mut self, id: &str) -> Result<&mut Ctr, Response> {
        self.containers.get_mut(id).ok_or_else(|| not_found(id))
    }

    fn run(&mut self, req: Request, stdio: Stdio) -> Result<Response> {
        macro_rules! ctr {
            ($id:expr) => {
                match self.get(&$id) {
                    Ok(c) => c,
                    Err(r) => return Ok(r),
                }
            };
        }
        Ok(match req {
            Request::CreateContainer { id, spec, rootfs } => {
                self.create(&id, &spec, &rootfs, stdio)?
            }
            Request::Start { id } => {
                ctr!(id).container.start()?;
                Response::Ok
            }
            Request::Signal {
                id,
                exec_id: None,
                signal,
                all,
            } => {
                let sig = Signal::try_from(signal)?;
                ctr!(id).container.kill(sig, all)?;
                Response::Ok
            }
            Request::Signal {
                id,
                exec_id: Some(e),
                signal,
                ..
            } => {
                let c = ctr!(id);
                let Some(Proc {
                    pid: Some(pid),
                    exit: None,
                    ..
                }) = c.execs.get(&e)
                else {
                    return Ok(error(
                        ErrorKind::NotFound,
                        format!("no running exec {e} in {id}"),
                    ));
                };
                let sig = NixSignal::try_from(signal)?;
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), sig)?;
                Response::Ok
            }
            Request::Exec {
                id,
                exec_id,
                process,
            } => self.exec(&id, &exec_id, &process, stdio)?,
            Request::Shutdown => {
                self.remove_all();
                Response::Ok
            }
            Request::CloseStdin { id, exec_id } => {
                let c = ctr!(id);
                let Some(p) = c.proc_mut(exec_id.as_deref()) else {
                    return Ok(not_found(&format!("{id}/{}", exec_id.unwrap_or_default())));
                };
                let Some(fd) = p.stdin.take() else {
                    return Ok(error(
                        ErrorKind::InvalidRequest,
                        "this process has no stdin stream (or it was closed already)",
                    ));
                };
                // Shut the socket down for reading: the process reads end-of-file, whoever
                // else holds the socket.
                nix::sys::socket::shutdown(fd.as_raw_fd(), nix::sys::socket::Shutdown::Read)
                    .context("shutting the stdin stream down")?;
                Response::Ok
            }
            Request::Pause { id } => {
                ctr!(id).container.pause()?;
                Response::Ok
            }
            Request::Resume { id } => {
                ctr!(id).container.resume()?;
                Response::Ok
            }
            Request::ListProcesses { id } => {
                ctr!(id);
                Response::Processes {
                    pids: cgroup_pids(&id)?,
                }
            }
            Request::Stats { id } => {
                ctr!(id);
                Response::Stats(super::resources::stats(&cgroup_dir(&id)))
            }
            Request::Update { id, resources } => {
                ctr!(id);
                super::resources::update(&id, &resources)?;
                Response::Ok
            }
            Request::Remove { id, force } => {
                let c = ctr!(id);
                c.container.delete(force)?;
                let c = self.containers.remove(&id).expect("present");
                rootfs::unmount_rootfs(&c.dir);
                let waiters = std::iter::once(c.init)
                    .chain(c.execs.into_values())
                    .flat_map(|p| p.waiters)
                    .chain(self.ooms.removed(&id));
                for w in waiters {
                    self.reply(w, error(ErrorKind::NotFound, format!("{id} was removed")));
                }
                Response::Ok
            }
            other => error(
                ErrorKind::Unsupported,
                format!(
                    "{} is not implemented by the container helper yet",
                    crate::agent::session::op_name(&other)
                ),
            ),
        })
    }

    fn create(
        &mut self,
        id: &str,
        spec: &serde_json::Value,
        r: &Rootfs,
        stdio: Stdio,
    ) -> Result<Response> {
        if !valid_id(id) {
            return Ok(error(
                ErrorKind::InvalidRequest,
                format!("invalid container id {id:?} (letters, digits, _ + - .)"),
            ));
        }
        if self.containers.contains_key(id) {
            return Ok(error(
                ErrorKind::AlreadyExists,
                format!("container {id} exists"),
            ));
        }
        if let Some(why) = spec_fields::refusal(spec, self.kernel) {
            return Ok(error(ErrorKind::Unsupported, why));
        }
        // The profile is installed by the agent's executor right before execve (see
        // containers/seccomp.rs), not by libcontainer.
        let mut spec = spec.clone();
        let profile = seccomp::split_profile(&mut spec)?;
        // `net.*` sysctls of a container in the VM's network namespace are the VM's to set.
        let net_sysctls = net_sysctl::split(&mut spec);
        if profile.is_some() {
            if let Some(process) = spec.get_mut("process") {
                seccomp::keep_sys_admin(process);
            }
        }
        let dir = Path::new(CONTAINERS_DIR).join(id);
        let stdin_dup = stdin_dup(&stdio);
        let built = (|| -> Result<Container> {
            let root = rootfs::mount_rootfs(&dir, r)?;
            rootfs::mount_file_shares(&spec)?;
            net_sysctl::apply(&net_sysctls, Path::new("/proc/sys"))?;
            let bundle = bundle::write_bundle(&dir, id, &spec, &root)?;
            // Streams the host attached replace the helper's own stdio (the console).
            let mut b = stdio.apply(ContainerBuilder::new(id.to_string(), SyscallType::Linux));
            if let Some(profile) = profile.clone() {
                b = b.with_executor(seccomp::SeccompExecutor { profile });
            }
            let c = b
                .with_root_path(STATE_DIR)?
                .validate_id()?
                .as_init(bundle)
                .with_systemd(false)
                .with_detach(true)
                // The guest's root is the initramfs, which pivot_root(2) refuses (EINVAL):
                // move the rootfs and chroot instead (runc --no-pivot). The VM is the boundary.
                .with_no_pivot(true)
                .build()?;
            Ok(c)
        })();
        match built {
            Ok(container) => {
                self.containers.insert(
                    id.to_string(),
                    Ctr {
                        init: Proc {
                            pid: container.pid().map(|p| p.as_raw()),
                            stdin: stdin_dup,
                            ..Proc::default()
                        },
                        container,
                        dir,
                        seccomp: profile,
                        execs: HashMap::new(),
                    },
                );
                Ok(Response::Ok)
            }
            Err(e) => {
                rootfs::unmount_rootfs(&dir);
                let _ = std::fs::remove_dir_all(Path::new(STATE_DIR).join(id));
                Err(e.context(format!("creating container {id}")))
            }
        }
    }
}

impl Helper {
    /// Kills and removes every container (the VM is about to stop): their writable layers are
    /// unmounted so a disk layer is left clean once the agent syncs.
    fn remove_all(&mut self) {
        let ids: Vec<String> = self.containers.keys().cloned().collect();
        // A grace period, as `docker stop`: SIGTERM to every process, then SIGKILL to what is
        // left after SHUTDOWN_GRACE (an emptied cgroup ends the wait early).
        for c in self.containers.values_mut() {
            if let Ok(term) = Signal::try_from(libc::SIGTERM) {
                let _ = c.container.kill(term, true);
            }
        }
        let deadline = std::time::Instant::now() + SHUTDOWN_GRACE;
        while std::time::Instant::now() < deadline
            && ids
                .iter()
                .any(|id| cgroup_pids(id).is_ok_and(|p| !p.is_empty()))
        {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        for id in ids {
            let Some(mut c) = self.containers.remove(&id) else {
                continue;
            };
            if let Ok(sig) = Signal::try_from(9) {
                let _ = c.container.kill(sig, true);
            }
            if let Err(e) = c.container.delete(true) {
                eprintln!("crx-init: removing {id} at shutdown: {e}");
            }
            rootfs::unmount_rootfs(&c.dir);
            eprintln!("crx-init: shutdown: removed container {id}");
            let waiters = std::iter::once(c.init)
                .chain(c.execs.into_values())
                .flat_map(|p| p.waiters);
            for w in waiters {
                self.reply(w, error(ErrorKind::NotFound, "the agent is shutting down"));
            }
        }
    }

    /// Runs `process` (an OCI process) in running container `id` as `exec_id`.
    fn exec(
        &mut self,
        id: &str,
        exec_id: &str,
        process: &serde_json::Value,
        stdio: Stdio,
    ) -> Result<Response> {
        let Some(c) = self.containers.get_mut(id) else {
            return Ok(not_found(id));
        };
        if !valid_id(exec_id) {
            return Ok(error(
                ErrorKind::InvalidRequest,
                format!("invalid exec id {exec_id:?} (letters, digits, _ + - .)"),
            ));
        }
        if c.execs.contains_key(exec_id) {
            return Ok(error(
                ErrorKind::AlreadyExists,
                format!("exec {exec_id} exists in {id}"),
            ));
        }
        let mut process = process.clone();
        spec_fields::clamp_affinity(&mut process, &spec_fields::online_cpus());
        if c.seccomp.is_some() {
            seccomp::keep_sys_admin(&mut process);
        }
        let path = bundle::write_process(&c.dir, exec_id, &process)?;
        let stdin_dup = stdin_dup(&stdio);
        let mut b = stdio.apply(ContainerBuilder::new(id.to_string(), SyscallType::Linux));
        if let Some(profile) = c.seccomp.clone() {
            b = b.with_executor(seccomp::SeccompExecutor { profile });
        }
        let pid = b
            .with_root_path(STATE_DIR)?
            .as_tenant()
            .with_process(Some(path))
            .with_detach(true)
            .build()
            .with_context(|| format!("exec {exec_id} in {id}"))?;
        c.execs.insert(
            exec_id.to_string(),
            Proc {
                pid: Some(pid.as_raw()),
                stdin: stdin_dup,
                ..Proc::default()
            },
        );
        Ok(Response::Ok)
    }
}

/// A duplicate of the stdin stream descriptor, kept for `close_stdin`.
fn stdin_dup(stdio: &Stdio) -> Option<OwnedFd> {
    stdio.stdin.as_ref().and_then(|fd| fd.try_clone().ok())
}

/// After a restart: kills and forgets what the dead helper left (its containers' processes,
/// mounts and libcontainer state), which this helper cannot manage.
fn clean_up_leftovers() {
    if let Ok(cgroups) = std::fs::read_dir(format!("{CGROUP_ROOT}{CGROUP_PARENT}")) {
        for c in cgroups.flatten() {
            let _ = std::fs::write(c.path().join("cgroup.kill"), "1");
        }
    }
    if let Ok(dirs) = std::fs::read_dir(CONTAINERS_DIR) {
        for d in dirs.flatten() {
            rootfs::unmount_rootfs(&d.path());
        }
    }
    let _ = std::fs::remove_dir_all(STATE_DIR);
    eprintln!("crx-init: the container helper restarted: earlier containers were killed");
}

/// How long `Shutdown` lets containers end after SIGTERM before it SIGKILLs them.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// The container's cgroup directory (bundle::write_bundle sets its `cgroupsPath`).
fn cgroup_dir(id: &str) -> PathBuf {
    Path::new(CGROUP_ROOT).join(cgroup_path(id).trim_start_matches('/'))
}

fn cgroup_pids(id: &str) -> Result<Vec<i32>> {
    let p = cgroup_dir(id).join("cgroup.procs");
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids() {
        assert!(super::valid_id("c1_a+b-c.d"));
        assert!(!super::valid_id(".."));
        assert!(!super::valid_id("a/b"));
        assert!(!super::valid_id(""));
    }
}
