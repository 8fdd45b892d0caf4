//! Project tooling (not shipped): guest and lab kernels, the lab's root filesystem, the
//! nested KVM lab, and the test tiers. `cargo xtask --help` lists the commands.

pub mod apt;
pub mod arrows;
pub mod bench_confine;
pub mod bench_lab;
pub mod bench_net;
pub mod bench_oci;
#[cfg(feature = "pod-bench")]
pub mod bench_pod;
pub mod bench_run;
pub mod bench_template;
pub mod bench_vmm;
pub mod bench_warm;
pub mod boot;
pub mod cache;
pub mod cmd;
pub mod crx;
pub mod guest_boot;
pub mod kernel;
pub mod kvm;
pub mod lab;
pub mod monitor;
pub mod rootfs;
pub mod tiers;
pub mod timed;
pub mod virtiofsd;

use std::path::PathBuf;

/// The workspace root (this crate's parent directory).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}
