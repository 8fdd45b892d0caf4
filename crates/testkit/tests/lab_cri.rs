//! Kubernetes pods through containerd 1.6's CRI plugin, driven as kubelet drives it (the
//! pod scenario of `crx_testkit::cri_pod`), with Debian's CNI plugins and a loopback
//! registry: with containerd's own `runc` handler (the baseline, which proves the harness)
//! and with the `crx` handler (containerd-shim-crx-v2: the pod in one microVM). Inside the
//! nested lab (tier 3): `cargo xtask lab -- target/debug/deps/lab_cri-HASH lab_`.

use std::path::PathBuf;

use crx_testkit::cri_env::{shim_binary, CriLab};
use crx_testkit::cri_pod;

#[test]
fn lab_cri_runc_pod_of_two_containers() {
    let lab = CriLab::start(None);
    let mut cri = lab.client();
    let pod = cri_pod::start(&lab, &mut cri, "runc", "two", &[]);
    assert_eq!(
        pod.new_processes("containerd-shim"),
        1,
        "one runc shim for the pod"
    );
    pod.check_shared_network_volume_hostname(&mut cri);
    pod.check_exec_sync(&mut cri);
    pod.check_log_file();
    pod.check_stats(&mut cri);
    pod.check_exit_code_and_restart(&lab, &mut cri, "runc");
    pod.check_oom_killed(&lab, &mut cri, "runc");
    pod.check_pod_network(&mut cri);
    pod.check_port_forward(&mut cri);
    pod.remove_and_check_leaks(&lab, &mut cri);
}

#[test]
fn lab_cri_crx_pod_of_two_containers_in_one_vm() {
    let lab = CriLab::start(Some(&shim_binary()));
    let mut cri = lab.client();
    let state = [PathBuf::from("/run/crx-shim")];
    let pod = cri_pod::start(&lab, &mut cri, "crx", "two", &state);
    assert_eq!(
        pod.new_processes("containerd-shim"),
        1,
        "one shim for the pod"
    );
    assert_eq!(pod.new_processes("crx-vmm"), 1, "one VM for the pod");
    pod.check_shared_network_volume_hostname(&mut cri);
    pod.check_exec_sync(&mut cri);
    pod.check_log_file();
    pod.check_stats(&mut cri);
    pod.check_exit_code_and_restart(&lab, &mut cri, "crx");
    pod.check_oom_killed(&lab, &mut cri, "crx");
    assert_eq!(pod.new_processes("crx-vmm"), 1, "still one VM for the pod");
    pod.check_pod_network(&mut cri);
    pod.check_port_forward(&mut cri);
    pod.remove_and_check_leaks(&lab, &mut cri);
}

/// `kill -9` of a pod's crx-vmm, then of another pod's shim: containerd's CRI reports every
/// container exited and the pod not ready, and removing the pod leaves nothing. A killed VM
/// is a kill of its containers (137); of a dead shim containerd's CRI knows no status and
/// says 255 (its "unknown", whatever the shim's `delete` answers, as with runc's shim).
#[test]
fn lab_cri_crx_pods_killed_with_their_vm_or_shim() {
    let lab = CriLab::start(Some(&shim_binary()));
    let mut cri = lab.client();
    let state = [PathBuf::from("/run/crx-shim")];
    let kills = [
        ("vmkill", "crx-vmm", 137),
        ("shimkill", "containerd-shim", 255),
    ];
    for (name, comm, code) in kills {
        let pod = cri_pod::start(&lab, &mut cri, "crx", name, &state);
        pod.check_killed(&lab, &mut cri, comm, code);
        pod.remove_and_check_leaks(&lab, &mut cri);
    }
}
