//! What the vmm's tiny-guest test binaries (`tiny_guests`, `snapshot`) share: the kvm_ tier's
//! check for a usable /dev/kvm and one crx-vmm run with its output.

use std::process::{Command, Stdio};

pub const VMM: &str = env!("CARGO_BIN_EXE_crx-vmm");

pub fn require_kvm() {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        panic!(
            "this kvm_ test needs /dev/kvm ({e}); run it on a host with KVM, or run only the \
             non-kvm tier with `cargo test -- --skip kvm_`"
        );
    }
}

pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

pub fn run_vmm(args: &[&str]) -> Output {
    let out = Command::new(VMM)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("spawn crx-vmm");
    Output {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
