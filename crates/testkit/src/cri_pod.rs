//! The pod scenario of the CRI tests, step by step, for any runtime handler: a pod of two
//! busybox containers (a web server and a client) sharing a host directory, driven as
//! kubelet drives containerd. Each step asserts; a handler's test runs the steps it passes.

use std::path::PathBuf;
use std::time::Duration;

use k8s_cri::v1::{
    ContainerConfig, ContainerState, LinuxContainerConfig, LinuxContainerResources,
    PodSandboxConfig, PodSandboxState,
};

use crate::cri::{container_config, pod_config, Cri};
use crate::cri_env::{CriLab, BRIDGE};
use crate::cri_images::BUSYBOX_IMAGE;
use crate::cri_leaks::{wait_for_no_leaks, HostState};
use crate::text;

/// The server's port in the pod, and the host port mapped to it (portmap).
pub const SERVER_PORT: i32 = 8080;
pub const HOST_PORT: i32 = 18080;
/// What the server serves.
pub const PAGE: &str = "hello-from-the-pod";
/// How soon containerd must see the containers of a pod whose VM or shim was killed exit.
pub const KILLED_SEEN_WITHIN: Duration = Duration::from_secs(30);
/// The memory limit of the container that the OOM killer must kill.
pub const OOM_LIMIT: i64 = 24 << 20;
/// The server's first log line.
pub const SERVER_STARTED: &str = "server-started";

/// A running pod of the scenario: its ids, configuration and shared directory, and the
/// host's state before it (for leak counting).
#[derive(Debug)]
pub struct Pod {
    pub id: String,
    pub config: PodSandboxConfig,
    pub hostname: String,
    pub log_dir: PathBuf,
    /// The emptyDir-like volume: a host directory bound at `/shared` in both containers.
    pub shared: PathBuf,
    pub server: String,
    pub client: String,
    /// The host's state before the pod, and the directories counted in it.
    pub before: HostState,
    pub dirs: Vec<PathBuf>,
}

/// containerd's state directories a pod's leftovers would be in (`extra`: the handler's).
pub fn state_dirs(lab: &CriLab, extra: &[PathBuf]) -> Vec<PathBuf> {
    let [root, state] = lab.containerd_dirs();
    let cri = "io.containerd.grpc.v1.cri";
    let mut dirs = vec![
        state.join("io.containerd.runtime.v2.task/k8s.io"),
        root.join(cri).join("sandboxes"),
        root.join(cri).join("containers"),
        state.join(cri).join("sandboxes"),
        state.join(cri).join("containers"),
        lab.dir().join("ipam/crx-test"),
    ];
    dirs.extend_from_slice(extra);
    dirs
}

/// RunPodSandbox (handler `handler`, pod `name`, host port mapped) -> PullImage ->
/// CreateContainer x2 -> StartContainer x2; the host's state is taken first.
pub fn start(lab: &CriLab, cri: &mut Cri, handler: &str, name: &str, extra: &[PathBuf]) -> Pod {
    let dirs = state_dirs(lab, extra);
    let uid = format!("{name}-{handler}");
    let hostname = format!("pod-{name}");
    let log_dir = lab.logs.join(&uid);
    let shared = lab.dir().join(format!("shared-{uid}"));
    std::fs::create_dir_all(&log_dir).unwrap();
    std::fs::create_dir_all(&shared).unwrap();
    let before = HostState::take(&dirs);
    step(handler, "RunPodSandbox");
    let config = pod_config(name, &uid, &hostname, &log_dir, &[(HOST_PORT, SERVER_PORT)]);
    let id = cri
        .run_pod(&config, handler)
        .unwrap_or_else(|e| panic!("{handler}: RunPodSandbox: {e}\n{}", lab.containerd_log()));
    step(handler, "PullImage, CreateContainer x2, StartContainer x2");
    cri.pull(BUSYBOX_IMAGE)
        .unwrap_or_else(|e| panic!("PullImage {BUSYBOX_IMAGE}: {e}"));
    let server_script = format!(
        "mkdir -p /www && echo {PAGE} > /www/index.html && hostname > /shared/server-hostname \
         && echo {SERVER_STARTED} && exec httpd -f -p {SERVER_PORT} -h /www"
    );
    let mut pod = Pod {
        id,
        config,
        hostname,
        log_dir,
        shared,
        server: String::new(),
        client: String::new(),
        before,
        dirs,
    };
    pod.server = pod.run(
        lab,
        cri,
        "server",
        0,
        &["sh", "-c", &server_script],
        handler,
    );
    pod.client = pod.run(
        lab,
        cri,
        "client",
        0,
        &[
            "sh",
            "-c",
            "echo client > /shared/from-client; exec sleep 100000",
        ],
        handler,
    );
    pod
}

impl Pod {
    /// CreateContainer (`name`, attempt `attempt`, `/shared` bound) + StartContainer.
    pub fn run(
        &self,
        lab: &CriLab,
        cri: &mut Cri,
        name: &str,
        attempt: u32,
        command: &[&str],
        handler: &str,
    ) -> String {
        let config = self.config(name, attempt, command);
        self.run_config(lab, cri, config, handler)
    }

    /// The configuration [`Pod::run`] creates a container with.
    fn config(&self, name: &str, attempt: u32, command: &[&str]) -> ContainerConfig {
        let mut config = container_config(
            name,
            BUSYBOX_IMAGE,
            command,
            &[(self.shared.as_path(), "/shared")],
        );
        if let Some(m) = config.metadata.as_mut() {
            m.attempt = attempt;
        }
        config.log_path = format!("{name}-{attempt}.log");
        config
    }

    /// CreateContainer of `config` + StartContainer.
    fn run_config(
        &self,
        lab: &CriLab,
        cri: &mut Cri,
        config: ContainerConfig,
        handler: &str,
    ) -> String {
        let name = config.metadata.as_ref().map_or("", |m| m.name.as_str());
        let name = name.to_owned();
        let id = cri
            .create(&self.id, config, &self.config)
            .unwrap_or_else(|e| {
                panic!(
                    "{handler}: CreateContainer {name}: {e}\n{}",
                    lab.containerd_log()
                )
            });
        cri.start(&id).unwrap_or_else(|e| {
            panic!(
                "{handler}: StartContainer {name}: {e}\n{}",
                lab.containerd_log()
            )
        });
        id
    }

    /// How many processes named `comm` (15 bytes at most, as the kernel keeps it) run now
    /// that did not before the pod.
    pub fn new_processes(&self, comm: &str) -> usize {
        self.new_pids(comm).len()
    }

    /// The pids of [`Pod::new_processes`].
    pub fn new_pids(&self, comm: &str) -> Vec<u32> {
        HostState::take(&[])
            .processes
            .into_iter()
            .filter(|(pid, (_, p))| {
                p.split(':').next() == Some(comm) && !self.before.processes.contains_key(pid)
            })
            .map(|(pid, _)| pid)
            .collect()
    }

    /// `kill -9` of the pod's one new process named `comm` (its crx-vmm, or its shim): soon
    /// after, both containers are reported exited with `code` and the pod not ready, as
    /// kubelet needs to see them to restart the pod, instead of a hang.
    pub fn check_killed(&self, lab: &CriLab, cri: &mut Cri, comm: &str, code: i32) {
        step("", &format!("kill -9 {comm}"));
        let pids = self.new_pids(comm);
        assert_eq!(pids.len(), 1, "one {comm} for the pod: {pids:?}");
        let pid = nix::unistd::Pid::from_raw(pids[0] as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
        for id in [&self.server, &self.client] {
            let s = cri
                .wait_state(id, ContainerState::ContainerExited, KILLED_SEEN_WITHIN)
                .unwrap();
            assert_eq!(
                (s.state, s.exit_code),
                (ContainerState::ContainerExited as i32, code),
                "{id} after kill -9 of {comm}: {s:?}\n{}",
                lab.containerd_log()
            );
        }
        let deadline = std::time::Instant::now() + KILLED_SEEN_WITHIN;
        loop {
            let p = cri.pod_status(&self.id).expect("PodSandboxStatus");
            if p.state == PodSandboxState::SandboxNotready as i32 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the pod after kill -9 of {comm}: {p:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// ExecSync of `cmd` in `id`, which must succeed; its stdout.
    pub fn exec_ok(&self, cri: &mut Cri, id: &str, cmd: &[&str]) -> String {
        let r = cri
            .exec_sync(id, cmd, 120)
            .unwrap_or_else(|e| panic!("ExecSync {cmd:?}: {e}"));
        assert_eq!(
            r.exit_code,
            0,
            "ExecSync {cmd:?}: stdout {} stderr {}",
            text(&r.stdout),
            text(&r.stderr)
        );
        text(&r.stdout)
    }

    /// The client reaches the server on localhost; both see the pod's hostname and the
    /// shared directory.
    pub fn check_shared_network_volume_hostname(&self, cri: &mut Cri) {
        step("", "localhost, hostname, shared volume");
        let url = format!("http://127.0.0.1:{SERVER_PORT}/");
        let got = self.exec_ok(
            cri,
            &self.client,
            &[
                "sh",
                "-c",
                &format!(
                    "for i in $(seq 60); do wget -q -O - {url} && exit 0; sleep 1; done; exit 1"
                ),
            ],
        );
        assert!(got.contains(PAGE), "client fetching {url}: {got}");
        for id in [&self.server, &self.client] {
            let h = self.exec_ok(cri, id, &["hostname"]);
            assert_eq!(h.trim(), self.hostname, "hostname in {id}");
        }
        let from_server = self.exec_ok(cri, &self.client, &["cat", "/shared/server-hostname"]);
        assert_eq!(from_server.trim(), self.hostname);
        let on_host = std::fs::read_to_string(self.shared.join("from-client")).unwrap();
        assert_eq!(on_host.trim(), "client");
        self.exec_ok(
            cri,
            &self.server,
            &["sh", "-c", "echo back > /shared/from-server"],
        );
        let back = std::fs::read_to_string(self.shared.join("from-server")).unwrap();
        assert_eq!(back.trim(), "back");
    }

    /// ExecSync reports a command's stdout, stderr and exit code.
    pub fn check_exec_sync(&self, cri: &mut Cri) {
        step("", "ExecSync");
        let r = cri
            .exec_sync(
                &self.client,
                &["sh", "-c", "echo to-out; echo to-err >&2; exit 7"],
                60,
            )
            .expect("ExecSync");
        assert_eq!(r.exit_code, 7);
        assert_eq!(text(&r.stdout), "to-out\n");
        assert_eq!(text(&r.stderr), "to-err\n");
    }

    /// The server's first line reaches its CRI log file (`TIME stdout F LINE`).
    pub fn check_log_file(&self) {
        step("", "CRI log file");
        let path = self.log_dir.join("server-0.log");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let log = std::fs::read_to_string(&path).unwrap_or_default();
            if log
                .lines()
                .any(|l| l.contains(" stdout F ") && l.ends_with(SERVER_STARTED))
            {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} lacks `{SERVER_STARTED}` after 60 s: {log:?}",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// ContainerStats of the server: CPU time and memory in use, both non-zero.
    pub fn check_stats(&self, cri: &mut Cri) {
        step("", "ContainerStats");
        let s = cri.stats(&self.server).expect("ContainerStats");
        let cpu = s
            .cpu
            .as_ref()
            .and_then(|c| c.usage_core_nano_seconds.as_ref())
            .map(|v| v.value)
            .unwrap_or(0);
        let mem = s
            .memory
            .as_ref()
            .and_then(|m| m.working_set_bytes.as_ref())
            .map(|v| v.value)
            .unwrap_or(0);
        assert!(cpu > 0 && mem > 0, "ContainerStats: {s:?}");
    }

    /// A third container exiting 3 is reported as 3 while the server keeps running; created
    /// again (attempt 1, as kubelet restarts it), it runs.
    pub fn check_exit_code_and_restart(&self, lab: &CriLab, cri: &mut Cri, handler: &str) {
        step(handler, "exit code 3, sibling running, created again");
        let quitter = self.run(lab, cri, "quitter", 0, &["sh", "-c", "exit 3"], handler);
        let s = exited(cri, &quitter);
        assert_eq!(s.exit_code, 3, "{s:?}");
        self.assert_server_runs(cri, "its sibling exited");
        assert!(self
            .exec_ok(cri, &self.server, &["cat", "/www/index.html"])
            .contains(PAGE));
        let again = self.run(
            lab,
            cri,
            "quitter",
            1,
            &["sh", "-c", "echo again > /shared/again; exec sleep 100000"],
            handler,
        );
        let s = cri
            .wait_state(
                &again,
                ContainerState::ContainerRunning,
                Duration::from_secs(60),
            )
            .unwrap();
        assert_eq!(s.state, ContainerState::ContainerRunning as i32, "{s:?}");
        assert_eq!(
            self.exec_ok(cri, &again, &["cat", "/shared/again"]).trim(),
            "again"
        );
    }

    /// A container that outgrows its memory limit is killed by the OOM killer and reported
    /// so (exit 137, reason `OOMKilled`, which containerd's CRI sets on `TaskOOM`), while the
    /// server keeps running.
    pub fn check_oom_killed(&self, lab: &CriLab, cri: &mut Cri, handler: &str) {
        step(handler, "OOM kill reported as OOMKilled");
        // busybox dd allocates its 64 MiB block and fills it: past the 24 MiB limit.
        let dd = ["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"];
        let hog = self.run_limited(lab, cri, "hog", &dd, handler);
        exited(cri, &hog);
        // The OOM event and the exit reach containerd's CRI by two paths (an event, a task
        // wait): the reason may follow the exit by a moment, as it may with runc.
        let s = wait_oom_reason(cri, &hog, Duration::from_secs(10));
        assert_eq!(
            (s.exit_code, s.reason.as_str()),
            (137, "OOMKilled"),
            "{s:?}\n{}",
            lab.containerd_log()
        );
        self.assert_server_runs(cri, "its sibling's OOM kill");

        // A process that is not the container's init killed by the OOM killer: no exit tells
        // it, the event does (kubelet is not polling stats here), while the container runs.
        step(
            handler,
            "OOM kill of a child reported while the container runs",
        );
        let script = "dd if=/dev/zero of=/dev/null bs=64M count=1; echo survived; exec sleep 600";
        let child = self.run_limited(lab, cri, "oomchild", &["sh", "-c", script], handler);
        let s = wait_oom_reason(cri, &child, Duration::from_secs(30));
        assert_eq!(
            (s.state, s.reason.as_str()),
            (ContainerState::ContainerRunning as i32, "OOMKilled"),
            "{s:?}\n{}",
            lab.containerd_log()
        );
        cri.stop_and_remove(&child, 0).unwrap();
    }

    /// CreateContainer + StartContainer of `command` as `name`, its memory limited to
    /// [`OOM_LIMIT`].
    fn run_limited(
        &self,
        lab: &CriLab,
        cri: &mut Cri,
        name: &str,
        command: &[&str],
        handler: &str,
    ) -> String {
        let mut config = self.config(name, 0, command);
        config.linux = Some(LinuxContainerConfig {
            resources: Some(LinuxContainerResources {
                memory_limit_in_bytes: OOM_LIMIT,
                ..Default::default()
            }),
            ..Default::default()
        });
        self.run_config(lab, cri, config, handler)
    }

    /// The server still runs, after `what`.
    fn assert_server_runs(&self, cri: &mut Cri, what: &str) {
        let server = cri.status(&self.server).unwrap();
        assert_eq!(
            server.state,
            ContainerState::ContainerRunning as i32,
            "the server after {what}: {server:?}"
        );
    }

    /// The lab host reaches the server at the pod's IP, and through the mapped host port on
    /// 127.0.0.1.
    pub fn check_pod_network(&self, cri: &mut Cri) {
        step("", "pod IP and host port");
        let ip = cri.pod_ip(&self.id).expect("PodSandboxStatus");
        assert!(ip.starts_with("10.88.77."), "pod IP {ip:?}");
        for url in [
            format!("http://{ip}:{SERVER_PORT}/"),
            format!("http://127.0.0.1:{HOST_PORT}/"),
        ] {
            let page = crate::net::fetch(&url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert!(page.contains(PAGE), "{url}: {page}");
        }
    }

    /// `PortForward` to the server's port, as `kubectl port-forward` gets it: the page over the
    /// streaming server's WebSocket; a port nothing listens on gives an error, not a page.
    pub fn check_port_forward(&self, cri: &mut Cri) {
        step("", "PortForward");
        let get = b"GET / HTTP/1.0\r\n\r\n";
        let limit = Duration::from_secs(60);
        let url = cri
            .port_forward(&self.id, SERVER_PORT)
            .expect("PortForward");
        let port = SERVER_PORT as u16;
        let got = crate::cri_portforward::exchange(&url, port, get, PAGE, limit)
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        let page = String::from_utf8_lossy(&got.data);
        assert!(
            page.contains(PAGE),
            "{url}: {page}\nerror channel: {}",
            String::from_utf8_lossy(&got.error)
        );
        let url = cri.port_forward(&self.id, 8099).expect("PortForward");
        let got = crate::cri_portforward::exchange(&url, 8099, get, PAGE, limit)
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        assert!(
            !String::from_utf8_lossy(&got.data).contains(PAGE),
            "port 8099 answered"
        );
        assert!(!got.error.is_empty(), "port 8099: no error reported");
    }

    /// StopPodSandbox + RemovePodSandbox, then nothing of the pod left on the host.
    pub fn remove_and_check_leaks(self, lab: &CriLab, cri: &mut Cri) {
        step("", "StopPodSandbox, RemovePodSandbox, leftovers");
        cri.stop_and_remove_pod(&self.id)
            .unwrap_or_else(|e| panic!("Stop/RemovePodSandbox: {e}\n{}", lab.containerd_log()));
        assert!(!cri.pods().unwrap().contains(&self.id));
        let mut left = wait_for_no_leaks(&self.before, &self.dirs, Duration::from_secs(60));
        // The bridge CNI made for the first pod stays, as CNI's bridge plugin leaves it, and
        // host-local keeps its lock and last reserved address (not an address in use).
        left.retain(|l| {
            *l != format!("link {BRIDGE}")
                && !l.ends_with("/lock")
                && !l.contains("/last_reserved_ip.")
        });
        assert!(
            left.is_empty(),
            "left on the host after RemovePodSandbox: {left:#?}"
        );
    }
}

/// The status of container `id` once exited (within two minutes, else a failure).
fn exited(cri: &mut Cri, id: &str) -> k8s_cri::v1::ContainerStatus {
    let s = cri
        .wait_state(
            id,
            ContainerState::ContainerExited,
            Duration::from_secs(120),
        )
        .unwrap();
    assert_eq!(s.state, ContainerState::ContainerExited as i32, "{s:?}");
    s
}

/// `id`'s status once its reason is `OOMKilled`, or the last one seen within `limit`.
fn wait_oom_reason(cri: &mut Cri, id: &str, limit: Duration) -> k8s_cri::v1::ContainerStatus {
    let deadline = std::time::Instant::now() + limit;
    let mut s = cri.status(id).unwrap();
    while s.reason != "OOMKilled" && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        s = cri.status(id).unwrap();
    }
    s
}

/// Says which step runs (a hang shows where it is).
fn step(handler: &str, what: &str) {
    eprintln!("cri pod {handler}: {what}");
}
