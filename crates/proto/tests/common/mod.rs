//! Fixtures shared by the tests.

use crx_proto::*;
use serde_json::json;

pub fn all_requests() -> Vec<Request> {
    let id = || "c1".to_string();
    vec![
        Request::Hello {
            version: PROTOCOL_VERSION,
        },
        Request::Ping,
        Request::CreateContainer {
            id: id(),
            spec: json!({"ociVersion": "1.0.2", "process": {"args": ["/bin/sh"]}}),
            rootfs: Rootfs {
                device: "/dev/vda".into(),
                fs_type: "erofs".into(),
                writable: WritableLayer::Tmpfs {
                    size_bytes: Some(64 << 20),
                },
            },
        },
        Request::CreateContainer {
            id: id(),
            spec: json!({}),
            rootfs: Rootfs {
                device: "/dev/vda".into(),
                fs_type: "ext4".into(),
                writable: WritableLayer::Disk {
                    device: "/dev/vdb".into(),
                    fs_type: "ext4".into(),
                },
            },
        },
        Request::Start { id: id() },
        Request::Exec {
            id: id(),
            exec_id: "e1".into(),
            process: json!({"args": ["ls"]}),
        },
        Request::Signal {
            id: id(),
            exec_id: None,
            signal: 15,
            all: true,
        },
        Request::Wait {
            id: id(),
            exec_id: Some("e1".into()),
        },
        Request::ResizePty {
            id: id(),
            exec_id: None,
            rows: 24,
            cols: 80,
        },
        Request::CloseStdin {
            id: id(),
            exec_id: None,
        },
        Request::ListProcesses { id: id() },
        Request::Pause { id: id() },
        Request::Resume { id: id() },
        Request::Stats { id: id() },
        Request::WaitOom { id: id(), seen: 2 },
        Request::Update {
            id: id(),
            resources: serde_json::json!({"memory": {"limit": 67108864}, "pids": {"limit": 64}}),
        },
        Request::Remove {
            id: id(),
            force: false,
        },
        Request::Shutdown,
    ]
}

pub fn all_responses() -> Vec<Response> {
    vec![
        Response::HelloOk { version: 1 },
        Response::Pong,
        Response::Ok,
        Response::Exited(ExitStatus {
            code: 137,
            signal: Some(9),
        }),
        Response::Processes { pids: vec![1, 7] },
        Response::Stats(ContainerStats {
            cpu_usage_ns: 5,
            memory_bytes: 6,
            pids: 2,
            memory_limit_bytes: Some(1 << 26),
            pids_limit: None,
            oom_kills: 1,
            ..ContainerStats::default()
        }),
        Response::OomKills { count: 3 },
        Response::Error(AgentError::new(ErrorKind::NotFound, "no container c9")),
    ]
}
