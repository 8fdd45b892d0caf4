//! Instances: a home, a VMM process, a container created through the agent.

use std::io::{self, IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crx_image::Store;
use crx_proto::{Request, Response, Rootfs, StreamKind, WritableLayer};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::agent::{Agent, Control};
use crate::error::{io, RuntimeError};
use crate::home::{self, Home, Status};
use crate::paths;
use crate::spec::{self, ProcessOptions};
use crate::trace;
use crate::tty;
use crate::vm::VmConfig;

/// What `crx run` asks for.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub image: String,
    pub name: Option<String>,
    pub memory_mib: u32,
    pub vcpus: u32,
    pub process: ProcessOptions,
    pub detached: bool,
    /// Detached: the monitor removes the home once the container exited.
    pub rm: bool,
}

pub use crate::agent::agent_timeout;

/// A started container: its home, its VMM (a child of this process), the agent, and its
/// stdio streams or, with `process.terminal`, its pty stream (foreground runs only).
#[derive(Debug)]
pub struct Started {
    pub home: Home,
    pub vmm: Child,
    pub agent: Agent,
    pub control: Control,
    pub stdio: Option<Stdio>,
    pub pty: Option<UnixStream>,
}

/// The host ends of a process's stdio streams.
#[derive(Debug)]
pub struct Stdio {
    pub stdin: UnixStream,
    pub stdout: UnixStream,
    pub stderr: UnixStream,
}

/// The image store under `root`.
pub fn open_store(root: &Path) -> Result<Store, RuntimeError> {
    Ok(Store::open(paths::images_dir(root))?)
}

/// Creates the home, boots the VM, creates and starts the container. On error nothing is left
/// (the VMM is killed, the home removed).
pub fn start(root: &Path, cfg: &RunConfig) -> Result<Started, RuntimeError> {
    start_with(root, cfg, |_, _| {})
}

/// [`start`], calling `on_spawn(vmm_pid, home_dir)` as soon as the VMM runs (so that a signal
/// handler can clean up a boot that is interrupted).
pub fn start_with(
    root: &Path,
    cfg: &RunConfig,
    on_spawn: impl FnOnce(u32, &Path),
) -> Result<Started, RuntimeError> {
    let store = open_store(root)?;
    let image = store.resolve(&cfg.image)?;
    let boot = paths::verified_boot_files()?;
    let vmm = paths::find_vmm()?;
    let process = spec::process(&image.config, &cfg.process)?;
    let command = process.args().clone().unwrap_or_default();
    let home = Home::create(
        root,
        cfg.name.as_deref(),
        &cfg.image,
        &image.manifest_digest.to_string(),
        command,
        cfg.detached,
    )?;
    let mut guard = Cleanup {
        home: Some(home.dir.clone()),
        vmm: None,
    };
    let result = boot_and_start(home, &image, boot, vmm, process, cfg, &mut guard, on_spawn)
        .and_then(|s| {
            if cfg.detached {
                start_monitor(root, &s.home, cfg.rm)?;
            }
            Ok(s)
        });
    if result.is_ok() {
        guard.home = None;
        guard.vmm = None;
    }
    result
}

#[allow(clippy::too_many_arguments)]
fn boot_and_start(
    mut home: Home,
    image: &crx_image::Image,
    boot: crate::boot_files::VerifiedBoot,
    vmm: PathBuf,
    process: oci_spec::runtime::Process,
    cfg: &RunConfig,
    guard: &mut Cleanup,
    on_spawn: impl FnOnce(u32, &Path),
) -> Result<Started, RuntimeError> {
    let sock = home.vsock_path();
    if sock.as_os_str().len() > 107 {
        return Err(RuntimeError::SocketPathTooLong(sock));
    }
    let hostname: String = home.state.id.chars().take(12).collect();
    let spec = spec::runtime_spec(process, &hostname)?;
    let spec = serde_json::to_value(&spec).expect("spec serializes");
    home.write_spec(&spec)?;
    let vm = VmConfig {
        vmm,
        boot,
        memory_mib: cfg.memory_mib,
        vcpus: cfg.vcpus,
        disk: image.disk_image.clone(),
        vsock_uds: home.vsock_path(),
        console: home.console_path(),
        vmm_log: home.dir.join("vmm.log"),
        die_with_parent: !cfg.detached,
        boot_timer: trace::enabled(),
        fs: Vec::new(),
    };
    // The measured boot: what this VM boots, as verified (saved with the VMM's pid).
    home.state.boot = Some(vm.boot.digests());
    let mut child = vm.spawn()?;
    guard.vmm = Some(child.id());
    home.set_vmm(child.id())?;
    on_spawn(child.id(), &home.dir);
    let spawned_ms = trace::now_ms();
    trace::mark("vmm spawned");
    let agent = Agent::new(home.vsock_path());
    let mut control =
        agent.wait_ready(agent_timeout(), &vm.vmm_log, &home.console_path(), || {
            matches!(child.try_wait(), Ok(None))
        })?;
    if trace::enabled() {
        let log = std::fs::read_to_string(&vm.vmm_log).unwrap_or_default();
        for (code, ms) in trace::boot_timer_marks(&log) {
            let phase = match code {
                1 => "kernel booted (guest init started)",
                2 => "guest agent up",
                _ => continue,
            };
            trace::mark_at(phase, spawned_ms + ms);
        }
    }
    trace::mark("agent ready");
    let id = home.state.id.clone();
    let (stdio, pty) = match (cfg.detached, cfg.process.terminal) {
        (true, _) => (None, None),
        (false, false) => (Some(open_stdio(&agent, &id, None)?), None),
        (false, true) => (None, Some(agent.open_stream(&id, None, StreamKind::Pty)?)),
    };
    control.call(Request::CreateContainer {
        id: id.clone(),
        spec,
        rootfs: Rootfs {
            device: "/dev/vda".into(),
            fs_type: image.disk_format.extension().into(),
            writable: WritableLayer::Tmpfs { size_bytes: None },
        },
    })?;
    control.call(Request::Start { id })?;
    trace::mark("container started");
    Ok(Started {
        home,
        vmm: child,
        agent,
        control,
        stdio,
        pty,
    })
}

/// Starts the monitor of the detached instance `home` (this program again, see
/// [`crate::monitor`]): it records the container's exit, shuts the VM down and, with `rm`,
/// removes the home. Returns once it holds the agent's connection.
fn start_monitor(root: &Path, home: &Home, rm: bool) -> Result<(), RuntimeError> {
    let job = crate::monitor::Job::Instance {
        root: root.to_owned(),
        id: home.state.id.clone(),
        rm,
    };
    crate::monitor::start(job, true)
        .map(drop)
        .map_err(|e| RuntimeError::Io {
            path: "the instance's monitor".into(),
            source: io::Error::other(crx_proto::chain(&e)),
        })
}

/// Opens stdin, stdout and stderr streams of `id` (or its exec).
pub fn open_stdio(agent: &Agent, id: &str, exec_id: Option<&str>) -> Result<Stdio, RuntimeError> {
    Ok(Stdio {
        stdin: agent.open_stream(id, exec_id, StreamKind::Stdin)?,
        stdout: agent.open_stream(id, exec_id, StreamKind::Stdout)?,
        stderr: agent.open_stream(id, exec_id, StreamKind::Stderr)?,
    })
}

/// Kills the VMM and removes the home of a start that failed half-way.
struct Cleanup {
    home: Option<PathBuf>,
    vmm: Option<u32>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(pid) = self.vmm.take() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(Pid::from_raw(pid as i32), None);
        }
        if let Some(dir) = self.home.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Copies the process's stdout and stderr to ours and (with `interactive`) our stdin to it,
/// ending its stdin at our end of file (at once without `interactive`), then waits for the
/// process on `control` and returns its exit code. Output that arrives after the exit is
/// drained for up to two seconds.
pub fn pump_and_wait(
    control: &mut Control,
    id: &str,
    exec_id: Option<&str>,
    stdio: Stdio,
    interactive: bool,
) -> Result<i32, RuntimeError> {
    pump_and_wait_while(control, id, exec_id, stdio, interactive, || true).map(|s| s.code)
}

/// [`pump_and_wait`] whose wait also ends when `alive()` says the VM is gone (see
/// [`Control::wait_while`]); the whole exit status, validated.
pub fn pump_and_wait_while(
    control: &mut Control,
    id: &str,
    exec_id: Option<&str>,
    stdio: Stdio,
    interactive: bool,
    alive: impl FnMut() -> bool,
) -> Result<crx_proto::ExitStatus, RuntimeError> {
    let (done_tx, done_rx) = mpsc::channel();
    for (src, is_err) in [(stdio.stdout, false), (stdio.stderr, true)] {
        let tx = done_tx.clone();
        thread::spawn(move || {
            let _ = copy_out(src, is_err);
            let _ = tx.send(());
        });
    }
    // End of our stdin is a half-close of the stream: the VMM passes it on as a vsock
    // SHUTDOWN, and the process reads what was sent, then end-of-file. (The agent's
    // `close_stdin` would drop data still in flight.)
    let stdin = stdio.stdin;
    if interactive {
        let mut sink = stdin.try_clone().map_err(|source| RuntimeError::Stream {
            what: "stdin".into(),
            source,
        })?;
        thread::spawn(move || {
            let _ = io::copy(&mut io::stdin().lock(), &mut sink);
            let _ = sink.shutdown(std::net::Shutdown::Write);
        });
    } else {
        let _ = stdin.shutdown(std::net::Shutdown::Write);
    }
    let status = wait_status(control, id, exec_id, alive)?;
    drop(stdin);
    let deadline = Instant::now() + Duration::from_secs(2);
    for _ in 0..2 {
        let left = deadline.saturating_duration_since(Instant::now());
        if done_rx.recv_timeout(left).is_err() {
            break;
        }
    }
    Ok(status)
}

/// [`pump_and_wait`] for a process with a terminal: its pty stream is relayed with our stdout
/// and (with `interactive`) our stdin, which is put in raw mode when it is a terminal (restored
/// when this returns, whichever way); the window size of our terminal (stdin's, else stdout's)
/// is sent at start and when it changes (see [`tty::pump`]).
pub fn pump_tty_and_wait(
    control: &mut Control,
    agent: &Agent,
    id: &str,
    exec_id: Option<&str>,
    pty: UnixStream,
    interactive: bool,
) -> Result<i32, RuntimeError> {
    let dup = |fd: std::os::fd::BorrowedFd<'_>, what: &str| {
        fd.try_clone_to_owned()
            .map_err(|source| RuntimeError::Stream {
                what: what.into(),
                source,
            })
    };
    let (stdin, stdout) = (io::stdin(), io::stdout());
    let _raw = if interactive && stdin.is_terminal() {
        let raw = tty::RawMode::enter(stdin.as_fd()).map_err(|e| RuntimeError::Stream {
            what: "our terminal (raw mode)".into(),
            source: io::Error::other(e),
        })?;
        Some(raw)
    } else {
        None
    };
    let size_of = if stdin.is_terminal() {
        Some(dup(stdin.as_fd(), "stdin")?)
    } else if stdout.is_terminal() {
        Some(dup(stdout.as_fd(), "stdout")?)
    } else {
        None
    };
    let input = if interactive {
        Some(dup(stdin.as_fd(), "stdin")?)
    } else {
        None
    };
    let output = dup(stdout.as_fd(), "stdout")?;
    let resize = tty::agent_resizer(agent.clone(), id.to_owned(), exec_id.map(str::to_owned));
    let (done_tx, done_rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tty::pump(input, output, pty, size_of, resize);
        let _ = done_tx.send(());
    });
    let code = wait_code(control, id, exec_id)?;
    let _ = done_rx.recv_timeout(Duration::from_secs(2));
    Ok(code)
}

/// Waits for the process on `control`; its exit code (validated: guest input).
fn wait_code(control: &mut Control, id: &str, exec_id: Option<&str>) -> Result<i32, RuntimeError> {
    Ok(wait_status(control, id, exec_id, || true)?.code)
}

/// Waits for the process on `control` while `alive()` says its VM runs (see
/// [`Control::wait_while`]); its exit status, validated ([`crx_proto::ExitStatus::validated`]).
pub fn wait_status(
    control: &mut Control,
    id: &str,
    exec_id: Option<&str>,
    alive: impl FnMut() -> bool,
) -> Result<crx_proto::ExitStatus, RuntimeError> {
    let request = Request::Wait {
        id: id.to_owned(),
        exec_id: exec_id.map(str::to_owned),
    };
    match control.wait_while(request, alive)? {
        Response::Exited(s) => {
            trace::mark("exit seen");
            Ok(s.validated())
        }
        other => Err(RuntimeError::Agent(crx_proto::ClientError::Unexpected(
            Box::new(other),
        ))),
    }
}

/// Copies `src` to our stdout or stderr until end-of-file. When ours is closed (`crx run |
/// head -1`) the rest is read and dropped, so that the container never blocks on a full stream.
fn copy_out(mut src: UnixStream, is_err: bool) -> io::Result<()> {
    let mut buf = [0u8; 16384];
    let mut broken = false;
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        if broken {
            continue;
        }
        let written = if is_err {
            let mut e = io::stderr().lock();
            e.write_all(&buf[..n]).and_then(|()| e.flush())
        } else {
            let mut o = io::stdout().lock();
            o.write_all(&buf[..n]).and_then(|()| o.flush())
        };
        broken = written.is_err();
    }
}

/// Asks the agent to stop everything and reset the VM, then waits up to `grace` for the VMM
/// to exit (it is killed after that).
pub fn shutdown(agent: &Agent, vmm_pid: u32, grace: Duration) {
    if let Ok(mut c) = agent.control() {
        let _ = c.call(Request::Shutdown);
    }
    wait_gone(vmm_pid, grace);
}

/// Waits for `pid` to exit (reaping it when it is our child), SIGKILLing it after `grace`.
pub fn wait_gone(pid: u32, grace: Duration) {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let p = Pid::from_raw(pid as i32);
    let deadline = Instant::now() + grace;
    let mut killed = false;
    loop {
        match waitpid(p, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(_) => return,
            // Not our child: watch /proc.
            Err(_) if !home::pid_alive(pid) => return,
            Err(_) => {}
        }
        if Instant::now() > deadline && !killed {
            let _ = kill(p, Signal::SIGKILL);
            killed = true;
        }
        if Instant::now() > deadline + Duration::from_secs(5) {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `signal` to the container of the running instance `key`.
pub fn signal(root: &Path, key: &str, signal: i32) -> Result<Home, RuntimeError> {
    let home = running(root, key)?;
    let id = home.state.id.clone();
    Agent::new(home.vsock_path())
        .control()?
        .call(Request::Signal {
            id,
            exec_id: None,
            signal,
            all: false,
        })?;
    Ok(home)
}

/// The home of `key`, which must be running.
pub fn running(root: &Path, key: &str) -> Result<Home, RuntimeError> {
    let home = home::find(root, key)?;
    if home.status() != Status::Running {
        return Err(RuntimeError::NotRunning(home.state.id));
    }
    Ok(home)
}

/// Removes instance `key`; a running one only with `force` (its VMM is killed).
pub fn remove(root: &Path, key: &str, force: bool) -> Result<Home, RuntimeError> {
    let home = home::find(root, key)?;
    if home.vmm_alive() {
        if !force && home.status() == Status::Running {
            return Err(RuntimeError::Running(home.state.id));
        }
        if let Some(pid) = home.state.vmm_pid {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            wait_gone(pid, Duration::from_secs(5));
        }
    }
    home.clone().remove()?;
    Ok(home)
}

/// Runs `args` in the running instance `key` (its container's env, cwd and user) and returns
/// the exit code; with `tty`, in a terminal of its own ([`pump_tty_and_wait`]).
/// `on_started(agent, id, exec_id)` is called once the process runs (to forward signals to it).
pub fn exec(
    root: &Path,
    key: &str,
    args: Vec<String>,
    interactive: bool,
    tty: bool,
    on_started: impl FnOnce(&Agent, &str, &str),
) -> Result<i32, RuntimeError> {
    let home = running(root, key)?;
    let path = home.spec_path();
    let text = std::fs::read(&path).map_err(io(&path))?;
    let spec: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|source| RuntimeError::CorruptState { path, source })?;
    let mut process = spec["process"].clone();
    process["args"] = serde_json::json!(args);
    process["terminal"] = serde_json::json!(tty);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let exec_id = format!("exec-{}-{nanos:x}", std::process::id());
    let id = home.state.id.clone();
    let agent = Agent::new(home.vsock_path());
    let mut control = agent.control()?;
    enum Attach {
        Stdio(Stdio),
        Pty(UnixStream),
    }
    let attach = if tty {
        Attach::Pty(agent.open_stream(&id, Some(&exec_id), StreamKind::Pty)?)
    } else {
        Attach::Stdio(open_stdio(&agent, &id, Some(&exec_id))?)
    };
    control.call(Request::Exec {
        id: id.clone(),
        exec_id: exec_id.clone(),
        process,
    })?;
    on_started(&agent, &id, &exec_id);
    match attach {
        Attach::Stdio(stdio) => {
            pump_and_wait(&mut control, &id, Some(&exec_id), stdio, interactive)
        }
        Attach::Pty(pty) => {
            pump_tty_and_wait(&mut control, &agent, &id, Some(&exec_id), pty, interactive)
        }
    }
}
