//! The CRI tests' images, offline: Debian's docker-registry on a loopback port, serving the
//! busybox image (Debian's busybox-static, `crx_image::busybox`) and a pause image made the
//! same way (its command `sleep`), pushed with skopeo.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::text;

/// The sandbox (pause) image containerd's CRI plugin is configured with; `registry.k8s.io`
/// is mirrored to the loopback registry.
pub const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.6";
/// The test containers' image; `docker.io` is mirrored to the loopback registry.
pub const BUSYBOX_IMAGE: &str = "docker.io/library/busybox:latest";

/// Debian's docker-registry serving on `127.0.0.1:port`, killed when dropped.
#[derive(Debug)]
pub struct Registry {
    pub port: u16,
    child: Child,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    /// Starts a registry storing its data under `dir` and waits until it answers.
    pub fn start(dir: &Path) -> Registry {
        let port = free_port();
        let config = dir.join("registry.yml");
        let storage = dir.join("registry");
        std::fs::create_dir_all(&storage).unwrap();
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: 127.0.0.1:{port}\n",
                storage.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker-registry (Debian package docker-registry) must be installed");
        let registry = Registry { port, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not listen on 127.0.0.1:{port} within 30 s: {}",
                std::fs::read_to_string(dir.join("registry.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        registry
    }

    /// The registry's address, `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Pushes the OCI layout `layout` (its image tagged `latest`) as `repo:tag`.
    pub fn push(&self, layout: &Path, repo: &str, tag: &str) {
        let out = Command::new("skopeo")
            .args([
                "--insecure-policy",
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
            ])
            .arg(format!("oci:{}:latest", layout.display()))
            .arg(format!("docker://{}/{repo}:{tag}", self.host()))
            .output()
            .expect("skopeo (Debian package skopeo) must be installed");
        assert!(
            out.status.success(),
            "skopeo copy to {repo}:{tag}: {}",
            text(&out.stderr)
        );
    }

    /// Builds and pushes [`BUSYBOX_IMAGE`] and [`PAUSE_IMAGE`] (as `library/busybox:latest`
    /// and `pause:3.6`), working in `dir`.
    pub fn push_test_images(&self, dir: &Path) {
        let busybox = busybox_layout(&dir.join("busybox-layout"));
        self.push(&busybox, "library/busybox", "latest");
        let pause = busybox_layout(&dir.join("pause-layout"));
        set_command(&pause, &["sleep", "2147483647"]);
        self.push(&pause, "pause", "3.6");
    }
}

/// An unused TCP port on 127.0.0.1 (bound, then released for the caller).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding a loopback port")
        .port()
}

/// The offline busybox image as an OCI layout at `dest`, tagged `latest`.
pub fn busybox_layout(dest: &Path) -> PathBuf {
    crx_image::busybox::build_busybox_layout(
        Path::new(crx_image::busybox::DEFAULT_BUSYBOX),
        dest,
        "latest",
    )
    .unwrap_or_else(|e| panic!("building the busybox image: {e}"));
    dest.to_owned()
}

/// Rewrites the one image of the OCI layout `layout` to run `cmd` (its config's `Cmd`): new
/// config and manifest blobs, the index pointing at the new manifest.
pub fn set_command(layout: &Path, cmd: &[&str]) {
    let index_path = layout.join("index.json");
    let mut index: Value = serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let mut manifest: Value =
        serde_json::from_slice(&read_blob(layout, &index["manifests"][0])).unwrap();
    let mut config: Value =
        serde_json::from_slice(&read_blob(layout, &manifest["config"])).unwrap();
    config["config"]["Cmd"] = serde_json::json!(cmd);
    write_blob(layout, &mut manifest["config"], &config);
    write_blob(layout, &mut index["manifests"][0], &manifest);
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
}

fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
    layout.join("blobs/sha256").join(hex)
}

fn read_blob(layout: &Path, desc: &Value) -> Vec<u8> {
    std::fs::read(blob_path(layout, desc["digest"].as_str().unwrap())).unwrap()
}

/// Writes `value` as a blob and points the descriptor `desc` at it.
fn write_blob(layout: &Path, desc: &mut Value, value: &Value) {
    let bytes = serde_json::to_vec(value).unwrap();
    let digest = format!("sha256:{:x}", Sha256::digest(&bytes));
    std::fs::write(blob_path(layout, &digest), &bytes).unwrap();
    desc["digest"] = digest.into();
    desc["size"] = bytes.len().into();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_command_rewrites_config_and_manifest_digests() {
        let t = tempfile::tempdir().unwrap();
        let layout = busybox_layout(&t.path().join("l"));
        let before = std::fs::read_to_string(layout.join("index.json")).unwrap();
        set_command(&layout, &["sleep", "9"]);
        let index: Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        assert_ne!(before, serde_json::to_string(&index).unwrap());
        let manifest_bytes = read_blob(&layout, &index["manifests"][0]);
        assert_eq!(
            index["manifests"][0]["size"].as_u64().unwrap(),
            manifest_bytes.len() as u64
        );
        let manifest: Value = serde_json::from_slice(&manifest_bytes).unwrap();
        let config: Value =
            serde_json::from_slice(&read_blob(&layout, &manifest["config"])).unwrap();
        assert_eq!(config["config"]["Cmd"], serde_json::json!(["sleep", "9"]));
        let digest = format!(
            "sha256:{:x}",
            Sha256::digest(serde_json::to_vec(&config).unwrap())
        );
        assert_eq!(manifest["config"]["digest"], digest.as_str());
    }
}
