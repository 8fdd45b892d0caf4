//! A CRI v1 client (the `k8s-cri` crate, tonic) over containerd's unix socket, driven as
//! kubelet drives it, blocking: each call runs on the client's own single-threaded tokio
//! runtime. RPC failures come back as [`tonic::Status`], for tests that expect them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::Status;

/// Every RPC's deadline: a pod's first container boots a VM under nested emulation.
const RPC_TIMEOUT: Duration = Duration::from_secs(300);

/// A connected CRI client (runtime and image services).
pub struct Cri {
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

impl std::fmt::Debug for Cri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cri")
    }
}

impl Cri {
    /// Connects to the CRI server listening on the unix socket `socket`.
    pub fn connect(socket: &Path) -> Cri {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let path: PathBuf = socket.to_owned();
        let channel = rt
            .block_on(
                Endpoint::from_static("http://[::]:50051")
                    .timeout(RPC_TIMEOUT)
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move {
                            let s = tokio::net::UnixStream::connect(path).await?;
                            Ok::<_, std::io::Error>(TokioIo::new(s))
                        }
                    })),
            )
            .unwrap_or_else(|e| panic!("connecting to the CRI socket {}: {e}", socket.display()));
        Cri {
            rt,
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        }
    }

    /// `Version`: the runtime's name and version.
    pub fn version(&mut self) -> Result<VersionResponse, Status> {
        let req = VersionRequest {
            version: "v1".into(),
        };
        Ok(self.rt.block_on(self.runtime.version(req))?.into_inner())
    }

    /// `PullImage` of `image`; returns the image reference (digest).
    pub fn pull(&mut self, image: &str) -> Result<String, Status> {
        let req = PullImageRequest {
            image: Some(image_spec(image)),
            ..Default::default()
        };
        Ok(self
            .rt
            .block_on(self.images.pull_image(req))?
            .into_inner()
            .image_ref)
    }

    /// `RunPodSandbox` of `config` with runtime handler `handler`; returns the pod's id.
    pub fn run_pod(&mut self, config: &PodSandboxConfig, handler: &str) -> Result<String, Status> {
        let req = RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        };
        Ok(self
            .rt
            .block_on(self.runtime.run_pod_sandbox(req))?
            .into_inner()
            .pod_sandbox_id)
    }

    /// `PodSandboxStatus` of `pod`.
    pub fn pod_status(&mut self, pod: &str) -> Result<PodSandboxStatus, Status> {
        let req = PodSandboxStatusRequest {
            pod_sandbox_id: pod.into(),
            verbose: false,
        };
        let resp = self.rt.block_on(self.runtime.pod_sandbox_status(req))?;
        resp.into_inner()
            .status
            .ok_or_else(|| Status::internal("PodSandboxStatus without a status"))
    }

    /// The pod's IP address (CNI's), as `PodSandboxStatus` reports it.
    pub fn pod_ip(&mut self, pod: &str) -> Result<String, Status> {
        Ok(self
            .pod_status(pod)?
            .network
            .map(|n| n.ip)
            .unwrap_or_default())
    }

    /// `StopPodSandbox` then `RemovePodSandbox` of `pod`.
    pub fn stop_and_remove_pod(&mut self, pod: &str) -> Result<(), Status> {
        let id = pod.to_owned();
        self.rt
            .block_on(self.runtime.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            }))?;
        self.rt.block_on(
            self.runtime
                .remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id }),
        )?;
        Ok(())
    }

    /// `CreateContainer` of `config` in `pod` (created from `pod_config`); returns its id.
    pub fn create(
        &mut self,
        pod: &str,
        config: ContainerConfig,
        pod_config: &PodSandboxConfig,
    ) -> Result<String, Status> {
        let req = CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config),
            sandbox_config: Some(pod_config.clone()),
        };
        Ok(self
            .rt
            .block_on(self.runtime.create_container(req))?
            .into_inner()
            .container_id)
    }

    /// `StartContainer`.
    pub fn start(&mut self, id: &str) -> Result<(), Status> {
        let req = StartContainerRequest {
            container_id: id.into(),
        };
        self.rt.block_on(self.runtime.start_container(req))?;
        Ok(())
    }

    /// `StopContainer` with a grace period of `timeout_s`, then `RemoveContainer`.
    pub fn stop_and_remove(&mut self, id: &str, timeout_s: i64) -> Result<(), Status> {
        self.rt
            .block_on(self.runtime.stop_container(StopContainerRequest {
                container_id: id.into(),
                timeout: timeout_s,
            }))?;
        self.rt
            .block_on(self.runtime.remove_container(RemoveContainerRequest {
                container_id: id.into(),
            }))?;
        Ok(())
    }

    /// `ContainerStatus`.
    pub fn status(&mut self, id: &str) -> Result<ContainerStatus, Status> {
        let req = ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        };
        let resp = self.rt.block_on(self.runtime.container_status(req))?;
        resp.into_inner()
            .status
            .ok_or_else(|| Status::internal("ContainerStatus without a status"))
    }

    /// Polls `ContainerStatus` until the container is in `state`, for at most `limit`;
    /// returns the last status either way (the caller asserts on it).
    pub fn wait_state(
        &mut self,
        id: &str,
        state: ContainerState,
        limit: Duration,
    ) -> Result<ContainerStatus, Status> {
        let deadline = Instant::now() + limit;
        loop {
            let s = self.status(id)?;
            if s.state == state as i32 || Instant::now() > deadline {
                return Ok(s);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `ExecSync` of `cmd` in container `id`, with a timeout of `timeout_s` seconds.
    pub fn exec_sync(
        &mut self,
        id: &str,
        cmd: &[&str],
        timeout_s: i64,
    ) -> Result<ExecSyncResponse, Status> {
        let req = ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: timeout_s,
        };
        Ok(self.rt.block_on(self.runtime.exec_sync(req))?.into_inner())
    }

    /// `ContainerStats`.
    pub fn stats(&mut self, id: &str) -> Result<ContainerStats, Status> {
        let req = ContainerStatsRequest {
            container_id: id.into(),
        };
        let resp = self.rt.block_on(self.runtime.container_stats(req))?;
        resp.into_inner()
            .stats
            .ok_or_else(|| Status::internal("ContainerStats without stats"))
    }

    /// `PortForward` of `port` in `pod`: the streaming server's URL to open.
    pub fn port_forward(&mut self, pod: &str, port: i32) -> Result<String, Status> {
        let req = PortForwardRequest {
            pod_sandbox_id: pod.into(),
            port: vec![port],
        };
        Ok(self
            .rt
            .block_on(self.runtime.port_forward(req))?
            .into_inner()
            .url)
    }

    /// `ListPodSandbox`: every pod's id.
    pub fn pods(&mut self) -> Result<Vec<String>, Status> {
        let req = ListPodSandboxRequest { filter: None };
        let resp = self.rt.block_on(self.runtime.list_pod_sandbox(req))?;
        Ok(resp.into_inner().items.into_iter().map(|p| p.id).collect())
    }
}

/// An image reference as CRI takes it.
pub fn image_spec(image: &str) -> ImageSpec {
    ImageSpec {
        image: image.into(),
        ..Default::default()
    }
}

/// A pod as kubelet describes one: `name` in namespace `crx-test`, uid `uid`, hostname
/// `hostname`, logs under `log_dir`, cgroup parent `/crx-test/pod-UID` (cgroupfs), the
/// host's ports `ports` (host, container) mapped over TCP on every host address.
pub fn pod_config(
    name: &str,
    uid: &str,
    hostname: &str,
    log_dir: &Path,
    ports: &[(i32, i32)],
) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: uid.into(),
            namespace: "crx-test".into(),
            attempt: 0,
        }),
        hostname: hostname.into(),
        log_directory: log_dir.to_string_lossy().into_owned(),
        port_mappings: ports
            .iter()
            .map(|&(host, container)| PortMapping {
                protocol: Protocol::Tcp as i32,
                container_port: container,
                host_port: host,
                host_ip: String::new(),
            })
            .collect(),
        labels: HashMap::from([("crx-test".to_string(), name.to_string())]),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: format!("/crx-test/pod-{uid}"),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Pod as i32,
                    pid: NamespaceMode::Container as i32,
                    ipc: NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A container `name` of `image` running `command`, logging to `NAME.log` (relative to the
/// pod's log directory), with host directories bound as `mounts` (host, container path).
pub fn container_config(
    name: &str,
    image: &str,
    command: &[&str],
    mounts: &[(&Path, &str)],
) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(image_spec(image)),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        mounts: mounts
            .iter()
            .map(|(host, path)| Mount {
                container_path: path.to_string(),
                host_path: host.to_string_lossy().into_owned(),
                ..Default::default()
            })
            .collect(),
        labels: HashMap::from([("crx-test".to_string(), name.to_string())]),
        ..Default::default()
    }
}
