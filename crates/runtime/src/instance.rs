//! Instances: a home, a VMM process, a container created through the agent.

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use crx_image::Store;
use crx_proto::{Request, Rootfs, StreamKind, WritableLayer};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::agent::Agent;
use crate::error::RuntimeError;
use crate::home::{self, Home, Status};
use crate::monitor::MonitorError;
use crate::paths;
use crate::record::{pid_alive, SandboxFiles};
use crate::relay::{self, PtyEnds, Relay};
use crate::sandbox::{self, Sandbox, Streams};
use crate::spec::{self, ProcessOptions};
use crate::trace;
use crate::vm::VmConfig;

/// What `crx run` asks for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunConfig {
    pub image: String,
    pub name: Option<String>,
    pub memory_mib: u32,
    pub vcpus: u32,
    pub process: ProcessOptions,
    /// No streams: the process's output goes to the console; a monitor waits for it
    /// ([`start_detached`]).
    pub detached: bool,
    /// Detached: the monitor removes the home once the container exited.
    pub rm: bool,
    /// The network (`--network`, `-p`): by default crx's CNI bridge ([`crate::net::run`]).
    #[serde(default)]
    pub network: crate::net::run::RunNetwork,
    /// The container's hostname (default: the first 12 characters of its id).
    #[serde(default)]
    pub hostname: Option<String>,
    /// `--dns`, `--add-host` ([`crate::net::etc`]).
    #[serde(default)]
    pub resolution: crate::net::etc::Resolution,
    /// `-v` volumes ([`binds`]).
    #[serde(default)]
    pub volumes: Vec<Volume>,
}

mod binds;
pub use binds::Volume;

pub use crate::agent::agent_timeout;
pub use crate::relay::{open_stdio, Stdio};

/// A started container: its home, its sandbox (the VMM, a child of this process, and the
/// agent), and its streams: stdio or, with `process.terminal`, its pty stream (foreground
/// runs only).
#[derive(Debug)]
pub struct Started {
    pub home: Home,
    pub sandbox: Sandbox,
    pub streams: Streams,
    /// The virtiofsd of the instance's binds (`-v`...), if any: keep it as long as the VM.
    pub binds: Option<crate::virtiofs::Daemon>,
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
    )?;
    let mut guard = Cleanup {
        home: Some(home.dir.clone()),
        vmm: None,
    };
    let result = boot_and_start(home, &image, boot, vmm, process, cfg, &mut guard, on_spawn);
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
    paths::check_socket_paths([&*home.vsock_path()])?;
    let hostname = cfg
        .hostname
        .clone()
        .unwrap_or_else(|| home.state.id.chars().take(12).collect());
    // The instance's namespace prepared by CNI and joined through taps the VMM inherits
    // (undone when the home is removed, or by `guard` if the start fails).
    let network = crate::net::run::setup(&home.dir, &home.state.id, &cfg.network)?;
    let spec = spec::runtime_spec(process, &hostname)?;
    let mut spec = serde_json::to_value(&spec).expect("spec serializes");
    let own: Vec<std::net::IpAddr> = crate::net::run::addresses(&home.dir)
        .iter()
        .map(|ip| ip.address.addr)
        .collect();
    let mut binds = binds::share(&home.dir, cfg, &hostname, &own, &mut spec)?;
    home.write_spec(&spec)?;
    let mut vm = VmConfig {
        vmm,
        boot,
        memory_mib: cfg.memory_mib,
        vcpus: cfg.vcpus,
        disk: image.disk_image.clone(),
        vsock_uds: home.vsock_path(),
        console: home.console_path(),
        vmm_log: home.vmm_log(),
        // A detached instance's VMM is its monitor's child.
        die_with_parent: true,
        boot_timer: trace::enabled(),
        fs: Vec::new(),
        net: network.nics,
    };
    if let Some(d) = &binds {
        vm.add_fs(binds::TAG, d.socket());
    }
    // The measured boot: what this VM boots, as verified (saved with the VMM's pid).
    home.state.boot = Some(vm.boot.digests());
    let mut sandbox = sandbox::boot(&vm, &mut binds.iter_mut().collect::<Vec<_>>(), |pid| {
        guard.vmm = Some(pid);
        home.set_vmm(pid)?;
        on_spawn(pid, &home.dir);
        Ok::<(), RuntimeError>(())
    })?;
    // Only the VMM keeps the taps from here on: they go when it goes.
    vm.net.clear();
    sandbox.configure_network(network.guest)?;
    let id = home.state.id.clone();
    let rootfs = Rootfs {
        device: "/dev/vda".into(),
        fs_type: image.disk_format.extension().into(),
        writable: WritableLayer::Tmpfs { size_bytes: None },
    };
    let streams = sandbox.create(&id, spec, rootfs, cfg.detached)?;
    sandbox.start(&id)?;
    Ok(Started {
        home,
        sandbox,
        streams,
        binds,
    })
}

/// Starts `cfg` (detached) in a monitor of its own (this program again, see
/// [`crate::monitor`]), which boots the VM (its child: it dies with the monitor), creates and
/// starts the container, reports, then waits for it, records its exit code, shuts the VM
/// down and, with `cfg.rm`, removes the home. Returns the instance's id once it runs, or why
/// it did not start (nothing is left then).
pub fn start_detached(root: &Path, cfg: &RunConfig) -> Result<String, MonitorError> {
    let job = crate::monitor::Job::Instance {
        root: root.to_owned(),
        config: Box::new(cfg.clone()),
    };
    let started = crate::monitor::start(job, true)?;
    started
        .id
        .ok_or(MonitorError::Failed("no instance id reported".into()))
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
            let _ = crate::net::run::teardown(&dir);
            // Never recursively through a volume still mounted.
            if binds::unbind(&dir).is_ok() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
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
            Err(_) if !pid_alive(pid) => return,
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
/// the exit code; with `tty`, in a terminal of its own ([`PtyEnds::ours`]).
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
    let spec = home.read_config()?;
    let mut process = spec["process"].clone();
    process["args"] = serde_json::json!(args);
    process["terminal"] = serde_json::json!(tty);
    let exec_id = crate::agent::new_exec_id();
    let id = home.state.id.clone();
    let agent = Agent::new(home.vsock_path());
    let mut control = agent.control()?;
    let relay = if tty {
        let stream = agent.open_stream(&id, Some(&exec_id), StreamKind::Pty)?;
        Relay::Pty {
            stream,
            ends: PtyEnds::ours(interactive)?,
        }
    } else {
        Relay::Stdio {
            streams: open_stdio(&agent, &id, Some(&exec_id))?,
            interactive,
        }
    };
    control.call(Request::Exec {
        id: id.clone(),
        exec_id: exec_id.clone(),
        process,
    })?;
    on_started(&agent, &id, &exec_id);
    let alive = || home.vmm_alive();
    Ok(relay::relay_and_wait(&mut control, &agent, &id, Some(&exec_id), relay, alive)?.code)
}
