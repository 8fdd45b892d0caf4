//! Events to containerd (TaskCreate, TaskStart, TaskExit...), published on its ttrpc socket.

use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::topics;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::Context;

/// The current time as containerd's timestamps.
pub fn now() -> Timestamp {
    Timestamp::now()
}

/// An event for containerd.
pub enum Event {
    Create {
        id: String,
        bundle: String,
        pid: u32,
        io: (String, String, String, bool),
    },
    Start {
        id: String,
        pid: u32,
    },
    Exit {
        id: String,
        exec_id: String,
        pid: u32,
        status: u32,
        at: Timestamp,
    },
    Delete {
        id: String,
        pid: u32,
        status: u32,
        at: Timestamp,
    },
    ExecAdded {
        id: String,
        exec_id: String,
    },
    ExecStarted {
        id: String,
        exec_id: String,
        pid: u32,
    },
    Paused(String),
    Resumed(String),
    /// The OOM killer killed a process of the container (containerd's CRI then reports the
    /// container's exit reason as `OOMKilled`).
    Oom(String),
}

impl Event {
    fn encode(self) -> (&'static str, Box<dyn MessageDyn>) {
        match self {
            Event::Create {
                id,
                bundle,
                pid,
                io,
            } => {
                let io = TaskIO {
                    stdin: io.0,
                    stdout: io.1,
                    stderr: io.2,
                    terminal: io.3,
                    ..Default::default()
                };
                let e = TaskCreate {
                    container_id: id,
                    bundle,
                    pid,
                    io: Some(io).into(),
                    ..Default::default()
                };
                (topics::TASK_CREATE_EVENT_TOPIC, Box::new(e))
            }
            Event::Start { id, pid } => {
                let e = TaskStart {
                    container_id: id,
                    pid,
                    ..Default::default()
                };
                (topics::TASK_START_EVENT_TOPIC, Box::new(e))
            }
            Event::Exit {
                id,
                exec_id,
                pid,
                status,
                at,
            } => {
                let e = TaskExit {
                    id: if exec_id.is_empty() {
                        id.clone()
                    } else {
                        exec_id
                    },
                    container_id: id,
                    pid,
                    exit_status: status,
                    exited_at: Some(at).into(),
                    ..Default::default()
                };
                (topics::TASK_EXIT_EVENT_TOPIC, Box::new(e))
            }
            Event::Delete {
                id,
                pid,
                status,
                at,
            } => {
                let e = TaskDelete {
                    id: id.clone(),
                    container_id: id,
                    pid,
                    exit_status: status,
                    exited_at: Some(at).into(),
                    ..Default::default()
                };
                (topics::TASK_DELETE_EVENT_TOPIC, Box::new(e))
            }
            Event::ExecAdded { id, exec_id } => {
                let e = TaskExecAdded {
                    container_id: id,
                    exec_id,
                    ..Default::default()
                };
                (topics::TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(e))
            }
            Event::ExecStarted { id, exec_id, pid } => {
                let e = TaskExecStarted {
                    container_id: id,
                    exec_id,
                    pid,
                    ..Default::default()
                };
                (topics::TASK_EXEC_STARTED_EVENT_TOPIC, Box::new(e))
            }
            Event::Paused(id) => {
                let e = TaskPaused {
                    container_id: id,
                    ..Default::default()
                };
                (topics::TASK_PAUSED_EVENT_TOPIC, Box::new(e))
            }
            Event::Resumed(id) => {
                let e = TaskResumed {
                    container_id: id,
                    ..Default::default()
                };
                (topics::TASK_RESUMED_EVENT_TOPIC, Box::new(e))
            }
            Event::Oom(id) => {
                let e = TaskOOM {
                    container_id: id,
                    ..Default::default()
                };
                (topics::TASK_OOM_EVENT_TOPIC, Box::new(e))
            }
        }
    }
}

/// Publishes events for containerd namespace `namespace` (failures are logged: an event
/// containerd misses is not a reason to fail the request).
pub struct Events {
    publisher: Option<RemotePublisher>,
    namespace: String,
}

impl Events {
    pub fn new(namespace: &str, publisher: Option<RemotePublisher>) -> Events {
        Events {
            publisher,
            namespace: namespace.to_owned(),
        }
    }

    pub fn publish(&self, e: Event) {
        let Some(p) = &self.publisher else { return };
        let (topic, msg) = e.encode();
        if let Err(err) = p.publish(Context::default(), topic, &self.namespace, msg) {
            log::warn!("publishing {topic}: {err}");
        }
    }
}
