//! The serving shim: the task service on containerd's socket for the pod, under the task
//! API's v2 method names (containerd 1.6 and 1.7) as well as v3 (containerd 2), which the
//! `containerd-shim` crate alone registers.

use std::collections::HashMap;
use std::os::fd::IntoRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;

use anyhow::Context as _;
use containerd_shim as shim;
use shim::protos::shim_sync::create_task;
use shim::protos::ttrpc::{MethodHandler, Server};
use shim::publisher::RemotePublisher;
use shim::{ExitSignal, Flags};

use crate::service::Service;

type Methods = HashMap<String, Box<dyn MethodHandler + Send + Sync>>;

/// The methods of `svc` under the v3 names and the same under the v2 names.
fn methods(svc: Arc<Service>) -> Methods {
    let v3 = create_task(svc.clone());
    let v2: Methods = create_task(svc)
        .into_iter()
        .map(|(k, h)| {
            (
                k.replace("/containerd.task.v3.Task/", "/containerd.task.v2.Task/"),
                h,
            )
        })
        .collect();
    v3.into_iter().chain(v2).collect()
}

/// Serves the pod's task service on `flags.socket` until `Shutdown` with no container left.
pub fn run(flags: &Flags) -> anyhow::Result<()> {
    if flags.socket.is_empty() {
        anyhow::bail!("-socket is required");
    }
    let path = flags.socket.trim_start_matches("unix://").to_owned();
    let listener = match bind(&path)? {
        Some(l) => l,
        None => {
            // The pod's shim already serves there: containerd gets its address.
            shim::util::write_address(&flags.socket)?;
            server_started();
            return Ok(());
        }
    };
    let _ = shim::logger::init(flags.debug, "info", &flags.namespace, &flags.id);
    let publisher = std::env::var("TTRPC_ADDRESS")
        .ok()
        .and_then(|a| RemotePublisher::new(a).ok());
    let exit = Arc::new(ExitSignal::default());
    let svc = Arc::new(Service::with_events(
        &flags.namespace,
        publisher,
        exit.clone(),
    ));
    let mut server = Server::new()
        .add_listener(listener.into_raw_fd())?
        .register_service(methods(svc));
    server.start().context("starting the ttrpc server")?;
    server_started();
    exit.wait();
    server.shutdown();
    let _ = std::fs::remove_file(&path);
    Ok(())
}

/// Binds `path`; `None` when a live shim serves there already (a stale socket is replaced).
fn bind(path: &str) -> anyhow::Result<Option<UnixListener>> {
    if let Some(dir) = std::path::Path::new(path).parent() {
        std::fs::create_dir_all(dir)?;
    }
    match UnixListener::bind(path) {
        Ok(l) => Ok(Some(l)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            if UnixStream::connect(path).is_ok() {
                return Ok(None);
            }
            std::fs::remove_file(path)?;
            Ok(Some(UnixListener::bind(path).context(path.to_owned())?))
        }
        Err(e) => Err(e).context(path.to_owned()),
    }
}

/// Tells the `start` action that the server runs: our stdout (its pipe) becomes stderr.
fn server_started() {
    use std::os::fd::AsFd;
    let err = std::io::stderr();
    let mut out = std::io::stdout();
    let _ = std::io::Write::flush(&mut out);
    let _ = nix::unistd::dup2(
        std::os::fd::AsRawFd::as_raw_fd(&err.as_fd()),
        std::os::fd::AsRawFd::as_raw_fd(&out.as_fd()),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// containerd 1.6 calls the v2 names, containerd 2 the v3 ones: every method has both.
    #[test]
    fn every_method_is_served_under_v2_and_v3() {
        let svc = Arc::new(Service::with_events("t", None, Arc::default()));
        let m = methods(svc);
        for name in [
            "Create", "Start", "Delete", "Kill", "Exec", "Wait", "State", "Shutdown",
        ] {
            for v in ["v2", "v3"] {
                let key = format!("/containerd.task.{v}.Task/{name}");
                assert!(m.contains_key(&key), "{key}");
            }
        }
        assert_eq!(m.len() % 2, 0);
    }
}
