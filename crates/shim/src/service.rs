//! The task service (ttrpc) of a pod's shim: each request checked against the pod's state
//! ([`crate::task`]), carried out by the guest agent, and told to containerd as events.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use containerd_shim as shim;
use shim::api;
use shim::protos::protobuf::well_known_types::any::Any;
use shim::protos::protobuf::Message;
use shim::protos::ttrpc::{self, Code};
use shim::protos::types::task::{ProcessInfo, Status};
use shim::publisher::RemotePublisher;
use shim::{ExitSignal, TtrpcContext, TtrpcResult};

use crx_proto::{Request, Response};
use crx_runtime::pod::PodDir;

use crate::actions::{read_spec, sandbox_of, CONTAINER_TYPE};
use crate::events::{Event, Events};
use crate::stdio::Paths;
use crate::task::{Container, Phase, PodHandle, Proc};

/// The pod's shim state, shared by the request threads and the exit watchers.
pub struct Inner {
    pub state: Mutex<State>,
    pub changed: Condvar,
    pub events: Events,
    exit: Arc<ExitSignal>,
    namespace: String,
}

#[derive(Default)]
pub struct State {
    pub pod: Option<PodHandle>,
    pub containers: HashMap<String, Container>,
}

/// The task service.
#[derive(Clone)]
pub struct Service {
    pub inner: Arc<Inner>,
}

pub fn err(code: Code, msg: impl std::fmt::Display) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg.to_string()))
}

fn internal(e: impl std::fmt::Display) -> ttrpc::Error {
    err(Code::INTERNAL, e)
}

fn agent_err(e: impl std::error::Error) -> ttrpc::Error {
    err(Code::UNKNOWN, crx_proto::chain(&e))
}

pub fn not_found(id: &str) -> ttrpc::Error {
    err(Code::NOT_FOUND, format!("{id}: not found"))
}

impl State {
    /// Container `id`, or NOT_FOUND.
    pub fn container(&self, id: &str) -> TtrpcResult<&Container> {
        self.containers.get(id).ok_or_else(|| not_found(id))
    }

    /// Container `id` and its process `exec_id` (empty: its init), or NOT_FOUND naming the
    /// one missing.
    pub fn process(&self, id: &str, exec_id: &str) -> TtrpcResult<(&Container, &Proc)> {
        let c = self.container(id)?;
        let p = c.proc(exec_id).ok_or_else(|| not_found(exec_id))?;
        Ok((c, p))
    }
}

impl Service {
    pub fn new(namespace: &str, publisher: RemotePublisher, exit: Arc<ExitSignal>) -> Service {
        Service::with_events(namespace, Some(publisher), exit)
    }

    pub fn with_events(
        namespace: &str,
        publisher: Option<RemotePublisher>,
        exit: Arc<ExitSignal>,
    ) -> Service {
        Service {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                changed: Condvar::new(),
                events: Events::new(namespace, publisher),
                exit,
                namespace: namespace.to_owned(),
            }),
        }
    }
}

impl Inner {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The pod, which must be booted.
    pub fn pod(&self) -> TtrpcResult<PodHandle> {
        self.lock()
            .pod
            .clone()
            .ok_or_else(|| err(Code::FAILED_PRECONDITION, "the pod has no VM"))
    }
}

impl shim::Task for Service {
    fn connect(
        &self,
        _: &TtrpcContext,
        _: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = self.inner.lock().pod.as_ref().map_or(0, |p| p.vmm_pid);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    fn create(
        &self,
        _: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let pid = crate::service_create::create(&self.inner, &req)?;
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    fn start(&self, _: &TtrpcContext, req: api::StartRequest) -> TtrpcResult<api::StartResponse> {
        let pod = self.inner.pod()?;
        let (is_sandbox, process, paths) = {
            let s = self.inner.lock();
            let (c, p) = s.process(&req.id, &req.exec_id)?;
            if p.phase != Phase::Created {
                return Err(err(
                    Code::FAILED_PRECONDITION,
                    format!("{}: not created", req.id),
                ));
            }
            (c.is_sandbox, p.process.clone(), p.paths.clone())
        };
        let copies = match (&*req.exec_id, is_sandbox) {
            ("", true) => None,
            ("", false) => {
                let mut ctl = pod.agent.control().map_err(agent_err)?;
                ctl.call(Request::Start { id: req.id.clone() })
                    .map_err(agent_err)?;
                None
            }
            (exec_id, _) => {
                let process = process.ok_or_else(|| not_found(exec_id))?;
                Some(crate::service_create::exec(
                    &pod, &req.id, exec_id, process, &paths,
                )?)
            }
        };
        if req.exec_id.is_empty() {
            pod.trim_later();
        }
        {
            let mut s = self.inner.lock();
            if let Some(p) = s
                .containers
                .get_mut(&req.id)
                .and_then(|c| c.proc_mut(&req.exec_id))
            {
                p.phase = Phase::Running;
                if copies.is_some() {
                    p.copies = copies;
                }
            }
        }
        let pid = pod.vmm_pid;
        if req.exec_id.is_empty() {
            match is_sandbox {
                true => crate::exits::watch_sandbox(self.inner.clone(), pod, req.id.clone()),
                false => {
                    crate::exits::watch_ooms(self.inner.clone(), pod.clone(), req.id.clone());
                    crate::exits::watch(self.inner.clone(), pod, req.id.clone(), String::new())
                }
            }
            self.inner.events.publish(Event::Start { id: req.id, pid });
        } else {
            crate::exits::watch(self.inner.clone(), pod, req.id.clone(), req.exec_id.clone());
            self.inner.events.publish(Event::ExecStarted {
                id: req.id,
                exec_id: req.exec_id,
                pid,
            });
        }
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn delete(
        &self,
        _: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        crate::service_create::delete(&self.inner, &req.id, &req.exec_id)
    }

    fn exec(&self, _: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        let spec = req
            .spec
            .as_ref()
            .map(|a| a.value.as_slice())
            .unwrap_or_default();
        let process: serde_json::Value = serde_json::from_slice(spec)
            .map_err(|e| err(Code::INVALID_ARGUMENT, format!("exec process: {e}")))?;
        {
            let mut s = self.inner.lock();
            let c = s
                .containers
                .get_mut(&req.id)
                .ok_or_else(|| not_found(&req.id))?;
            if c.init.phase != Phase::Running || c.is_sandbox {
                return Err(err(
                    Code::FAILED_PRECONDITION,
                    format!("{}: not running", req.id),
                ));
            }
            if c.execs.contains_key(&req.exec_id) || req.exec_id.is_empty() {
                return Err(err(Code::ALREADY_EXISTS, format!("exec {:?}", req.exec_id)));
            }
            let mut p = Proc::new(Paths {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            });
            p.process = Some(process);
            c.execs.insert(req.exec_id.clone(), p);
        }
        self.inner.events.publish(Event::ExecAdded {
            id: req.id,
            exec_id: req.exec_id,
        });
        Ok(api::Empty::default())
    }

    fn resize_pty(&self, _: &TtrpcContext, req: api::ResizePtyRequest) -> TtrpcResult<api::Empty> {
        let pod = self.inner.pod()?;
        let clamp = |v: u32| v.min(u16::MAX as u32) as u16;
        let r = Request::ResizePty {
            id: req.id,
            exec_id: (!req.exec_id.is_empty()).then_some(req.exec_id),
            rows: clamp(req.height),
            cols: clamp(req.width),
        };
        call_ok(&pod, r)
    }

    fn close_io(&self, _: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        let mut s = self.inner.lock();
        let c = s
            .containers
            .get_mut(&req.id)
            .ok_or_else(|| not_found(&req.id))?;
        let p = c
            .proc_mut(&req.exec_id)
            .ok_or_else(|| not_found(&req.exec_id))?;
        if let Some(copies) = &mut p.copies {
            copies.close_stdin();
        }
        Ok(api::Empty::default())
    }

    fn kill(&self, _: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let (is_sandbox, stopped) = {
            let s = self.inner.lock();
            let (c, p) = s.process(&req.id, &req.exec_id)?;
            (c.is_sandbox, p.exit.is_some())
        };
        if stopped {
            return Err(err(Code::NOT_FOUND, "process already finished"));
        }
        if is_sandbox && req.exec_id.is_empty() {
            if req.signal != 0 {
                let signal = req.signal.min(127);
                let inner = self.inner.clone();
                std::thread::spawn(move || inner.exited(&req.id, "", 128 + signal));
            }
            return Ok(api::Empty::default());
        }
        let pod = self.inner.pod()?;
        let signal =
            i32::try_from(req.signal).map_err(|_| err(Code::INVALID_ARGUMENT, "signal"))?;
        call_ok(
            &pod,
            Request::Signal {
                id: req.id,
                exec_id: (!req.exec_id.is_empty()).then_some(req.exec_id),
                signal,
                all: req.all,
            },
        )
    }

    fn pids(&self, _: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        let pod = self.inner.pod()?;
        let is_sandbox = self.inner.lock().container(&req.id)?.is_sandbox;
        let pids = match is_sandbox {
            true => vec![pod.vmm_pid as i32],
            false => match call(&pod, Request::ListProcesses { id: req.id })? {
                Response::Processes { pids } => pids,
                other => return Err(internal(format!("unexpected agent answer {other:?}"))),
            },
        };
        let processes = pids
            .into_iter()
            .filter_map(|p| u32::try_from(p).ok())
            .map(|pid| ProcessInfo {
                pid,
                ..Default::default()
            })
            .collect();
        Ok(api::PidsResponse {
            processes,
            ..Default::default()
        })
    }

    fn pause(&self, _: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        self.freeze(&req.id, true)
    }

    fn resume(&self, _: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        self.freeze(&req.id, false)
    }

    fn update(&self, _: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<api::Empty> {
        let pod = self.inner.pod()?;
        let value = req
            .resources
            .as_ref()
            .map(|a| a.value.as_slice())
            .unwrap_or_default();
        let resources: serde_json::Value = serde_json::from_slice(value)
            .map_err(|e| err(Code::INVALID_ARGUMENT, format!("resources: {e}")))?;
        call_ok(
            &pod,
            Request::Update {
                id: req.id,
                resources,
            },
        )
    }

    fn wait(&self, _: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        let (code, at) = self.inner.wait_exit(&req.id, &req.exec_id)?;
        Ok(api::WaitResponse {
            exit_status: code,
            exited_at: Some(at).into(),
            ..Default::default()
        })
    }

    fn state(&self, _: &TtrpcContext, req: api::StateRequest) -> TtrpcResult<api::StateResponse> {
        let s = self.inner.lock();
        let pid = s.pod.as_ref().map_or(0, |p| p.vmm_pid);
        let (c, p) = s.process(&req.id, &req.exec_id)?;
        let status = match p.phase {
            Phase::Created => Status::CREATED,
            Phase::Running => Status::RUNNING,
            Phase::Paused => Status::PAUSED,
            Phase::Stopped => Status::STOPPED,
        };
        Ok(api::StateResponse {
            id: req.id.clone(),
            bundle: c.bundle.display().to_string(),
            pid,
            status: status.into(),
            stdin: p.paths.stdin.clone(),
            stdout: p.paths.stdout.clone(),
            stderr: p.paths.stderr.clone(),
            terminal: p.paths.terminal,
            exit_status: p.exit.as_ref().map_or(0, |e| e.0),
            exited_at: p.exit.as_ref().map(|e| e.1.clone()).into(),
            exec_id: req.exec_id,
            ..Default::default()
        })
    }

    fn stats(&self, _: &TtrpcContext, req: api::StatsRequest) -> TtrpcResult<api::StatsResponse> {
        let pod = self.inner.pod()?;
        let stats = stats(&pod, &req.id)?;
        self.inner.note_ooms(&req.id, stats.oom_kills);
        let metrics = crate::service_create::metrics(&stats);
        let any = Any {
            type_url: "io.containerd.cgroups.v2.Metrics".into(),
            value: metrics.write_to_bytes().map_err(internal)?,
            ..Default::default()
        };
        Ok(api::StatsResponse {
            stats: Some(any).into(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _: &TtrpcContext, _: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        if self.inner.lock().containers.is_empty() {
            self.inner.exit.signal();
        }
        Ok(api::Empty::default())
    }
}

impl Service {
    fn freeze(&self, id: &str, pause: bool) -> TtrpcResult<api::Empty> {
        let pod = self.inner.pod()?;
        let (from, to) = match pause {
            true => (Phase::Running, Phase::Paused),
            false => (Phase::Paused, Phase::Running),
        };
        let is_sandbox = {
            let s = self.inner.lock();
            let c = s.container(id)?;
            if c.init.phase != from {
                return Err(err(
                    Code::FAILED_PRECONDITION,
                    format!("{id}: is {:?}", c.init.phase),
                ));
            }
            c.is_sandbox
        };
        if !is_sandbox {
            let r = match pause {
                true => Request::Pause { id: id.to_owned() },
                false => Request::Resume { id: id.to_owned() },
            };
            call_ok(&pod, r)?;
        }
        if let Some(c) = self.inner.lock().containers.get_mut(id) {
            c.init.phase = to;
        }
        self.inner.events.publish(match pause {
            true => Event::Paused(id.to_owned()),
            false => Event::Resumed(id.to_owned()),
        });
        Ok(api::Empty::default())
    }
}

/// One agent request on a new control connection.
pub fn call(pod: &PodHandle, r: Request) -> TtrpcResult<Response> {
    let mut ctl = pod.agent.control().map_err(agent_err)?;
    ctl.call(r).map_err(agent_err)
}

/// Container `id`'s cgroup counters, as the agent reads them in the guest.
pub fn stats(pod: &PodHandle, id: &str) -> TtrpcResult<crx_proto::ContainerStats> {
    match call(pod, Request::Stats { id: id.to_owned() })? {
        Response::Stats(s) => Ok(s),
        other => Err(internal(format!("unexpected agent answer {other:?}"))),
    }
}

fn call_ok(pod: &PodHandle, r: Request) -> TtrpcResult<api::Empty> {
    call(pod, r).map(|_| api::Empty::default())
}

/// The pod directory of sandbox `id` in `namespace`.
pub fn pod_dir(namespace: &str, id: &str) -> PodDir {
    PodDir::new(std::path::Path::new(crate::STATE_ROOT), namespace, id)
}

impl Inner {
    pub fn namespace(&self) -> &str {
        &self.namespace
    }
}

/// Whether the spec is the pod's sandbox (pause) container, and its pod's id.
pub fn kind(spec: &serde_json::Value, id: &str) -> (bool, String) {
    let is_sandbox = spec["annotations"][CONTAINER_TYPE] == "sandbox";
    (is_sandbox, sandbox_of(spec, id))
}

/// The bundle's spec, which must be an object.
pub fn bundle(dir: &str) -> TtrpcResult<(PathBuf, serde_json::Value)> {
    let dir = PathBuf::from(dir);
    let spec = read_spec(&dir);
    if !spec.is_object() {
        return Err(err(
            Code::INVALID_ARGUMENT,
            format!("{}: no config.json", dir.display()),
        ));
    }
    Ok((dir, spec))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shim::Task;

    fn ctx() -> TtrpcContext {
        TtrpcContext {
            fd: -1,
            cancel_rx: crossbeam::channel::never(),
            conn_ctx: Default::default(),
            mh: Default::default(),
            res_tx: std::sync::mpsc::channel().0,
            metadata: Default::default(),
            timeout_nano: 0,
        }
    }

    fn code(e: ttrpc::Error) -> Code {
        match e {
            ttrpc::Error::RpcStatus(s) => s.code(),
            other => panic!("{other:?}"),
        }
    }

    /// Requests for what does not exist fail with their code, and a shim with no container
    /// left exits on `Shutdown`.
    #[test]
    fn requests_without_a_pod_fail_cleanly() {
        let exit = Arc::new(ExitSignal::default());
        let svc = Service::with_events("t", None, exit.clone());
        let dir = tempfile::tempdir().unwrap();
        let create = api::CreateTaskRequest {
            id: "c1".into(),
            bundle: dir.path().display().to_string(),
            ..Default::default()
        };
        assert_eq!(
            code(svc.create(&ctx(), create).unwrap_err()),
            Code::INVALID_ARGUMENT
        );
        let kill = api::KillRequest {
            id: "c1".into(),
            signal: 9,
            ..Default::default()
        };
        assert_eq!(code(svc.kill(&ctx(), kill).unwrap_err()), Code::NOT_FOUND);
        let state = api::StateRequest {
            id: "c1".into(),
            ..Default::default()
        };
        assert_eq!(code(svc.state(&ctx(), state).unwrap_err()), Code::NOT_FOUND);
        assert_eq!(
            code(svc.pids(&ctx(), api::PidsRequest::default()).unwrap_err()),
            Code::FAILED_PRECONDITION
        );
        svc.shutdown(&ctx(), api::ShutdownRequest::default())
            .unwrap();
        exit.wait();
    }
}
