//! The OCI lifecycle over containers under a root: create, start, kill, delete, pause,
//! resume, and the agent queries (processes, stats).

use std::path::Path;
use std::process::Child;
use std::time::Duration;

use crx_proto::{ContainerStats, Request, Response};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::bundle::Bundle;
use super::cgroup;
use super::container::{ContainerDir, Lock};
use super::error::{io as io_err, OciError};
use super::hooks::{self, HookKind};
use super::monitor as oci_monitor;
use super::state::{Record, Status};
use crate::agent::Agent;
use crate::instance::wait_gone;
use crate::monitor::{self, Job};
use crate::record::{pid_alive, SandboxFiles};

/// A created container: its record and its monitor (a child of the caller), and the
/// monitor's warnings (for the caller to log: the monitor's stderr is the container's).
#[derive(Debug)]
pub struct Created {
    pub dir: ContainerDir,
    pub record: Record,
    pub monitor: Child,
    pub warnings: Vec<String>,
}

/// Creates container `id` from the bundle in `bundle_dir` (with `process.terminal`, its pty
/// master goes to the socket `console`): checks the bundle, makes the container's directory
/// ([`prepare`]), starts its monitor (this program again, [`crate::monitor`]: it boots the VM,
/// creates the container in it, and reports over a pipe), then runs the `prestart` and
/// `createRuntime` hooks. The monitor's stdio is ours. On any error nothing is left: the
/// monitor and VM are killed and the directory removed.
pub fn create(
    root: &Path,
    id: &str,
    bundle_dir: &Path,
    console: Option<&Path>,
) -> Result<Created, OciError> {
    let bundle = Bundle::load(bundle_dir)?;
    match (bundle.terminal(), console) {
        (true, None) => return Err(OciError::NoConsoleSocket),
        (false, Some(_)) => return Err(OciError::ConsoleWithoutTerminal),
        _ => {}
    }
    let (c, _lock) = prepare(root, id, &bundle)?;
    let mut child = None;
    let result = create_in(root, &c, &bundle, console, &mut child);
    match result {
        Ok((record, warnings)) => Ok(Created {
            dir: c,
            record,
            monitor: child.expect("spawned"),
            warnings,
        }),
        Err(e) => {
            if let Some(mut m) = child {
                let _ = m.kill();
                let _ = m.wait();
            }
            destroy(&c, c.record().ok().flatten().as_ref());
            let _ = crate::net::detach(&c.dir.join(crate::net::RECORD));
            if let Some(dir) = cgroup::host_dir(&bundle.spec) {
                cgroup::remove(&dir);
            }
            let _ = c.remove();
            Err(e)
        }
    }
}

/// Makes container `id`'s directory, locked, with the bundle's spec (`config.json`) and a
/// record in phase `Creating`; on error nothing is left.
pub fn prepare(root: &Path, id: &str, bundle: &Bundle) -> Result<(ContainerDir, Lock), OciError> {
    let (c, lock) = ContainerDir::create(root, id)?;
    let write = || {
        let text = serde_json::to_vec_pretty(&bundle.spec).expect("json");
        let cfg = c.config_path();
        // Private (0600): the spec holds the container's environment, i.e. secrets.
        crate::paths::write_private(&cfg, &text).map_err(io_err(&cfg))?;
        let mut rec = Record::new(&c.id, bundle.annotations.clone());
        rec.bundle = Some(bundle.dir.clone());
        rec.rootfs = Some(bundle.rootfs.clone());
        c.save(&rec)
    };
    if let Err(e) = write() {
        let _ = c.remove();
        return Err(e);
    }
    Ok((c, lock))
}

fn create_in(
    root: &Path,
    c: &ContainerDir,
    bundle: &Bundle,
    console: Option<&Path>,
    child: &mut Option<Child>,
) -> Result<(Record, Vec<String>), OciError> {
    let job = Job::Container {
        root: root.to_owned(),
        id: c.id.clone(),
        console: console.map(Path::to_owned),
    };
    let started = monitor::start(job, false).map_err(|source| OciError::MonitorFailed {
        id: c.id.clone(),
        source,
    })?;
    *child = Some(started.child);
    let rec = c.load()?;
    let state = rec.oci_state();
    hooks::run(&bundle.spec, HookKind::Prestart, &state)?;
    hooks::run(&bundle.spec, HookKind::CreateRuntime, &state)?;
    Ok((rec, started.warnings))
}

/// Kills what runs for `c` (the VMM, then the monitor) and waits until it is gone.
fn destroy(c: &ContainerDir, rec: Option<&Record>) {
    let Some(rec) = rec else { return };
    if let Some(pid) = rec.vmm_pid.filter(|p| pid_alive(*p) && rec.monitor_alive()) {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        wait_gone(pid, Duration::from_secs(5));
    }
    if rec.monitor_alive() {
        if let Some(pid) = rec.monitor_pid {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            wait_gone(pid, Duration::from_secs(5));
        }
    }
    let _ = c;
}

/// The container `id`, locked, and its record, whose status must be one of `ok`.
fn locked(
    root: &Path,
    id: &str,
    ok: &[Status],
    what: &'static str,
) -> Result<(ContainerDir, Lock, Record), OciError> {
    let c = ContainerDir::open(root, id)?;
    let lock = c.lock()?;
    let rec = c.load()?;
    rec.expect(ok, what)?;
    Ok((c, lock, rec))
}

/// Starts a created container, then runs the `poststart` hooks; a failing hook is returned
/// as a warning (`Ok(Some)`), as the spec says.
pub fn start(root: &Path, id: &str) -> Result<Option<OciError>, OciError> {
    let (c, _lock, _) = locked(
        root,
        id,
        &[Status::Created],
        "only a created container starts",
    )?;
    let spec = c.read_config()?;
    oci_monitor::request(&c, "start")?;
    let rec = c.load()?;
    Ok(hooks::run_warn(
        &spec,
        HookKind::Poststart,
        &rec.oci_state(),
    ))
}

/// Pauses (freezes) a running container.
pub fn pause(root: &Path, id: &str) -> Result<(), OciError> {
    let what = "only a running container pauses";
    let (c, _lock, _) = locked(root, id, &[Status::Running], what)?;
    oci_monitor::request(&c, "pause")
}

/// Resumes a paused container.
pub fn resume(root: &Path, id: &str) -> Result<(), OciError> {
    let what = "only a paused container resumes";
    let (c, _lock, _) = locked(root, id, &[Status::Paused], what)?;
    oci_monitor::request(&c, "resume")
}

const LIVE: &[Status] = &[Status::Created, Status::Running, Status::Paused];

/// Sends `signal` to the container's init (`all`: every process of the container). A
/// created container whose VM boots at `start` has no process yet: its monitor ends it for a
/// signal that would end a process, as runc's waiting init would end.
pub fn signal(root: &Path, id: &str, signal: i32, all: bool) -> Result<(), OciError> {
    let c = ContainerDir::open(root, id)?;
    let rec = c.load()?;
    rec.expect(LIVE, "container not running")?;
    if rec.vmm_pid.is_none() {
        return oci_monitor::request(&c, &format!("kill {signal}"));
    }
    agent_call(
        &c,
        Request::Signal {
            id: id.to_owned(),
            exec_id: None,
            signal,
            all,
        },
    )?;
    Ok(())
}

/// Deletes container `id`: a stopped or created one, or (with `force`) any; the VM is torn
/// down, the `poststop` hooks run, and the directory goes. A failing hook is returned as a
/// warning. With `force`, a missing container is not an error.
pub fn delete(root: &Path, id: &str, force: bool) -> Result<Option<OciError>, OciError> {
    let c = match ContainerDir::open(root, id) {
        Ok(c) => c,
        Err(OciError::NotFound(_)) if force => return Ok(None),
        Err(e) => return Err(e),
    };
    let _lock = match c.lock() {
        Ok(l) => l,
        Err(OciError::NotFound(_)) if force => return Ok(None),
        Err(e) => return Err(e),
    };
    let rec = c.record()?;
    if let Some(r) = &rec {
        let status = r.oci_status();
        if !force && matches!(status, Status::Running | Status::Paused) {
            return Err(OciError::WrongState {
                id: id.to_owned(),
                status: status.to_string(),
                what: "stop it first or use delete --force",
            });
        }
    }
    destroy(&c, rec.as_ref());
    // The taps went with the VMM; the redirects on the namespace's interfaces go now.
    crate::net::detach(&c.dir.join(crate::net::RECORD))?;
    let warning = match (&rec, c.read_config()) {
        (Some(r), Ok(spec)) => {
            let mut state = r.oci_state();
            state["status"] = "stopped".into();
            state["pid"] = 0.into();
            hooks::run_warn(&spec, HookKind::Poststop, &state)
        }
        _ => None,
    };
    if let Some(dir) = c.read_config().ok().as_ref().and_then(cgroup::host_dir) {
        cgroup::remove(&dir);
    }
    c.remove()?;
    Ok(warning)
}

/// The OCI state of `id` (a directory that `create` left without a record, because it was
/// killed, is `stopped`).
pub fn state(root: &Path, id: &str) -> Result<serde_json::Value, OciError> {
    let c = ContainerDir::open(root, id)?;
    Ok(match c.record()? {
        Some(r) => r.oci_state(),
        None => serde_json::json!({
            "ociVersion": super::state::OCI_VERSION, "id": id, "status": "stopped", "pid": 0,
            "bundle": "", "annotations": {},
        }),
    })
}

/// The guest pids of the container's processes.
pub fn processes(root: &Path, id: &str) -> Result<Vec<i32>, OciError> {
    let c = ContainerDir::open(root, id)?;
    match agent_call(&c, Request::ListProcesses { id: id.to_owned() })? {
        Response::Processes { pids } => Ok(pids),
        other => Err(unexpected(&c, other)),
    }
}

/// The container's resource usage.
pub fn stats(root: &Path, id: &str) -> Result<ContainerStats, OciError> {
    let c = ContainerDir::open(root, id)?;
    match agent_call(&c, Request::Stats { id: id.to_owned() })? {
        Response::Stats(s) => Ok(s),
        other => Err(unexpected(&c, other)),
    }
}

/// Applies new cgroup limits (an OCI `linux.resources` object) to a live container.
pub fn update(root: &Path, id: &str, resources: serde_json::Value) -> Result<(), OciError> {
    let (c, _lock, _) = locked(
        root,
        id,
        LIVE,
        "a stopped container has no limits to update",
    )?;
    match agent_call(
        &c,
        Request::Update {
            id: id.to_owned(),
            resources,
        },
    )? {
        Response::Ok => Ok(()),
        other => Err(unexpected(&c, other)),
    }
}

/// The agent of a container whose VM runs.
pub fn agent(c: &ContainerDir) -> Result<Agent, OciError> {
    let rec = c.load()?;
    let status = rec.expect(LIVE, "its VM is not running")?;
    if rec.vmm_pid.is_none() {
        return Err(OciError::WrongState {
            id: c.id.clone(),
            status: status.to_string(),
            what: "its VM boots at start",
        });
    }
    Ok(Agent::new(c.vsock_path()))
}

fn agent_call(c: &ContainerDir, req: Request) -> Result<Response, OciError> {
    let mut ctl = agent(c)?.control()?;
    Ok(ctl.call(req).map_err(crate::RuntimeError::from)?)
}

fn unexpected(c: &ContainerDir, r: Response) -> OciError {
    OciError::Monitor {
        id: c.id.clone(),
        reason: format!("unexpected agent answer {r:?}"),
    }
}
