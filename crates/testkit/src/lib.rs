//! Scaffolding for the lab tests of several crates, once: a dev-dependency only (never a
//! normal one: nothing shipped links it).
//!
//! - [`env`]: what a lab test needs from the lab (the guest kernel, the boot files, crx-vmm,
//!   busybox, /dev/kvm), each a failure with what to do when missing, never a skip.
//! - [`busybox`]: busybox trees (a container rootfs), OCI bundles of them, and initrds whose
//!   `/init` is a shell script.
//! - [`vm`]: a crx-vmm child with its console and stderr in files, killed when dropped; the
//!   agent's control and stream connections.
//! - [`vsock`]: the hybrid-vsock `CONNECT` handshake.
//! - [`agent`]: what a test hands the guest agent (an ext4 busybox disk, specs, processes).
//! - [`net`]: a tap on the lab host.
//! - [`containerd`]: a private containerd, and `ctr` against it bounded in time.
//! - With the feature `cri`: [`cri`], a CRI v1 client over containerd's socket;
//!   [`cri_env`], containerd with its CRI plugin, CNI and runtime handlers of the test's own;
//!   [`cri_images`], the offline images in a loopback registry; [`cri_leaks`], what a pod
//!   leaves on the host, counted; [`cri_pod`], the pod scenario of the CRI tests, step by step;
//!   [`cri_portforward`], `PortForward`'s streaming URL used as kubelet's clients do.
//! - [`output_within`]: a command run to its end within a time limit, a hang reported.
//! - [`Lab`]: a temporary state root, held under the one-VM lock ([`one_vm`]), as a child
//!   subreaper; [`text`], [`code`], [`merge`]: output and JSON helpers.

pub mod agent;
pub mod busybox;
pub mod containerd;
#[cfg(feature = "cri")]
pub mod cri;
#[cfg(feature = "cri")]
pub mod cri_env;
#[cfg(feature = "cri")]
pub mod cri_images;
#[cfg(feature = "cri")]
pub mod cri_leaks;
#[cfg(feature = "cri")]
pub mod cri_pod;
#[cfg(feature = "cri")]
pub mod cri_portforward;
pub mod env;
pub mod net;
pub mod vm;
pub mod vsock;
mod within;

pub use within::output_within;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};

use serde_json::Value;

static ONE_VM: Mutex<()> = Mutex::new(());

/// The process-wide one-VM lock: the lab has two slow emulated cores, so a test binary boots
/// one VM at a time (a failed test's poisoned lock is taken over).
pub fn one_vm() -> MutexGuard<'static, ()> {
    ONE_VM.lock().unwrap_or_else(|e| e.into_inner())
}

/// A lab test's directory (its state root is `root/`), held under [`one_vm`]. The test
/// process becomes a child subreaper (as conmon and containerd's shim are): monitors whose
/// starter exited become its children.
#[derive(Debug)]
pub struct Lab {
    pub dir: tempfile::TempDir,
    _one_vm: MutexGuard<'static, ()>,
}

impl Lab {
    pub fn new() -> Lab {
        let g = one_vm();
        nix::sys::prctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
        Lab {
            dir: tempfile::tempdir().expect("a temporary directory"),
            _one_vm: g,
        }
    }

    /// The state root (`--root`).
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// `program --root ROOT args`, stdin closed.
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        command(program, &self.root(), args)
    }

    /// [`Lab::command`], run to its end.
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        self.command(program, args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {program}: {e}"))
    }
}

impl Default for Lab {
    fn default() -> Lab {
        Lab::new()
    }
}

/// `program --root root args`.
pub fn command(program: &str, root: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(program);
    c.arg("--root").arg(root).args(args);
    c
}

/// Bytes as text (lossy).
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A finished command's exit code (-1 when a signal ended it).
pub fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

/// Merges `b` into `a`: objects key by key, anything else replaced.
pub fn merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patches_objects_and_replaces_the_rest() {
        let mut a = json!({"a": {"b": 1, "c": [1]}, "d": 2});
        merge(&mut a, json!({"a": {"c": [2], "e": null}, "f": "x"}));
        assert_eq!(
            a,
            json!({"a": {"b": 1, "c": [2], "e": null}, "d": 2, "f": "x"})
        );
    }
}
