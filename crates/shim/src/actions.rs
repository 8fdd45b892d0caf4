//! The `start` and `delete` actions: `start` groups the containers of a pod onto one serving
//! shim (by the CRI sandbox id annotation; a container without it is its own pod), `delete`
//! cleans up after a shim that died (no VM, virtiofsd, mount, tap or state left).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use containerd_shim as shim;
use shim::{publisher::RemotePublisher, DeleteResponse, ExitSignal, Flags, StartOpts};

use crx_runtime::pod::{self, PodDir};

/// The annotation naming a container's pod (CRI).
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// The annotation saying whether a container is the pod's sandbox or one of its containers.
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";

/// The shim as containerd's `start` and `delete` actions see it.
pub struct CrxShim {
    namespace: String,
    id: String,
    bundle: PathBuf,
    /// containerd's address (the pod's shim socket is named after it).
    address: String,
}

/// The pod (sandbox id) of the container whose spec is `spec`; its own id without one.
pub fn sandbox_of(spec: &serde_json::Value, id: &str) -> String {
    spec["annotations"][SANDBOX_ID]
        .as_str()
        .filter(|s| !s.is_empty())
        .unwrap_or(id)
        .to_owned()
}

/// The spec of the bundle `dir` (`config.json`); `Null` when unreadable.
pub fn read_spec(dir: &Path) -> serde_json::Value {
    std::fs::read(dir.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_slice(&t).ok())
        .unwrap_or_default()
}

/// The `start` action as containerd 1.6 and 1.7 speak it: the serving shim of the pod started
/// (or found: `serve` exits at once when the pod's shim answers on the address), and its
/// address printed plain on stdout (the crate's `start` prints containerd 2's JSON instead).
pub fn start(flags: &Flags) -> anyhow::Result<()> {
    use std::io::Write;
    let bundle = match flags.bundle.is_empty() {
        true => std::env::current_dir()?,
        false => PathBuf::from(&flags.bundle),
    };
    let grouping = sandbox_of(&read_spec(&bundle), &flags.id);
    let opts = StartOpts {
        id: flags.id.clone(),
        publish_binary: flags.publish_binary.clone(),
        address: flags.address.clone(),
        ttrpc_address: std::env::var("TTRPC_ADDRESS").unwrap_or_default(),
        namespace: flags.namespace.clone(),
        debug: flags.debug,
        ..Default::default()
    };
    let (_pid, address) = shim::spawn(opts, &grouping, Vec::new())?;
    shim::util::write_address(&address)?;
    let mut out = std::io::stdout().lock();
    out.write_all(address.as_bytes())?;
    out.flush()?;
    Ok(())
}

impl shim::Shim for CrxShim {
    type T = crate::service::Service;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut shim::Config) -> Self {
        let bundle = match args.bundle.is_empty() {
            true => std::env::current_dir().unwrap_or_default(),
            false => PathBuf::from(&args.bundle),
        };
        CrxShim {
            namespace: args.namespace.clone(),
            id: args.id.clone(),
            bundle,
            address: args.address.clone(),
        }
    }

    fn start_shim(&mut self, opts: StartOpts) -> Result<String, shim::Error> {
        let spec = read_spec(&self.bundle);
        let grouping = sandbox_of(&spec, &opts.id);
        let (_pid, address) = shim::spawn(opts, &grouping, Vec::new())?;
        shim::util::write_address(&address)?;
        Ok(address)
    }

    fn delete_shim(&mut self) -> Result<DeleteResponse, shim::Error> {
        let spec = read_spec(&self.bundle);
        let sandbox = sandbox_of(&spec, &self.id);
        let dir = PodDir::new(Path::new(crate::STATE_ROOT), &self.namespace, &sandbox);
        // containerd runs `delete` for every task of a dead shim at once: the pod's clean-up
        // and its containers' must not undo the same mounts and directories together.
        let _lock = lock_state_root()?;
        let cleaned = if sandbox == self.id {
            remove_dead_socket(&shim::socket_address(
                &self.address,
                &self.namespace,
                &sandbox,
            ));
            pod::cleanup(&dir)
        } else {
            pod::share::remove(&dir.share(), &self.id)
        };
        crate::mounts::unmount_rootfs(&self.bundle);
        cleaned.map_err(|e| shim::Error::Other(crx_proto::chain(&e)))?;
        Ok(DeleteResponse {
            exit_status: 128 + 9,
            exited_at: Some(crate::events::now()).into(),
            ..Default::default()
        })
    }

    fn wait(&mut self) {
        // The serving shim is `serve::run`; this path only starts and deletes.
        ExitSignal::default().wait();
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        crate::service::Service::new(&self.namespace, publisher, Arc::new(ExitSignal::default()))
    }
}

/// The state root, locked (exclusively, until dropped) against other `delete` actions.
fn lock_state_root() -> Result<std::fs::File, shim::Error> {
    let root = Path::new(crate::STATE_ROOT);
    let locked = std::fs::create_dir_all(root)
        .and_then(|()| std::fs::File::open(root))
        .and_then(|f| f.lock().map(|()| f));
    locked.map_err(|e| shim::Error::Other(format!("locking {}: {e}", root.display())))
}

/// Removes the pod's shim socket `address` (`unix://PATH`) that a killed shim left, unless a
/// shim answers there.
fn remove_dead_socket(address: &str) {
    let path = address.trim_start_matches("unix://");
    if std::os::unix::net::UnixStream::connect(path).is_err() {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pods_are_grouped_by_the_sandbox_annotation() {
        let s = json!({"annotations": {SANDBOX_ID: "pod1", CONTAINER_TYPE: "container"}});
        assert_eq!(sandbox_of(&s, "c1"), "pod1");
        assert_eq!(sandbox_of(&json!({}), "c1"), "c1");
        assert_eq!(
            sandbox_of(&json!({"annotations": {SANDBOX_ID: ""}}), "c1"),
            "c1"
        );
        assert_eq!(
            sandbox_of(&json!({"annotations": {SANDBOX_ID: 3}}), "c1"),
            "c1"
        );
    }
}
