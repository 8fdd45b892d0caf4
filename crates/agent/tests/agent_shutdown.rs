//! Host tier: `Shutdown` gives running containers a grace period (SIGTERM, then SIGKILL for
//! what is left): a container that traps SIGTERM gets to run its handler. crx-init runs as an
//! ordinary root process (tests/common).

use crx_proto::*;
use serde_json::json;

mod common;
use common::*;

#[test]
fn shutdown_sends_sigterm_before_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let root = busybox_tree(dir.path());
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let agent = start(&sock);
    let mut c = client(&sock);
    let id = format!("term{}", std::process::id());
    let script = "trap 'echo bye > /out/term; exit 3' TERM; echo up > /out/up; \
                  while :; do sleep 0.1; done";
    c.call(Request::CreateContainer {
        id: id.clone(),
        spec: json!({
            "ociVersion": "1.0.2",
            "process": process(script, false),
            "root": {"path": "rootfs", "readonly": false},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/out", "type": "bind", "source": out, "options": ["rbind", "rw"]}
            ],
            "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}]}
        }),
        rootfs: tree_rootfs(&root),
    })
    .unwrap();
    c.call(Request::Start { id }).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !out.join("up").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the container never ran"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    shut_down(agent, c);
    assert_eq!(std::fs::read_to_string(out.join("term")).unwrap(), "bye\n");
}
