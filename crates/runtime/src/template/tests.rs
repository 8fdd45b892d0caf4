//! Templates with a stand-in crx-vmm: the build, the publication, the plan, the rebuild.

use std::path::{Path, PathBuf};

use super::*;

/// A boot directory holding `kernel` and `initrd` (and their manifest), verified.
fn boot(dir: &Path) -> crate::boot_files::VerifiedBoot {
    std::fs::write(dir.join("vmlinux"), b"kernel").unwrap();
    std::fs::write(dir.join("base.cpio"), b"initrd").unwrap();
    crate::boot_files::write_manifest(dir).unwrap();
    let files = crate::paths::BootFiles {
        kernel: dir.join("vmlinux"),
        initrd: dir.join("base.cpio"),
    };
    crate::boot_files::verify(&files, None).unwrap()
}

/// A stand-in crx-vmm that, asked for a snapshot on the template port of a config whose
/// init arguments say `crxtemplate=1`, writes a state and a memory file there and exits 0
/// (counting its runs in `runs`); `fail` makes it exit 1 with a line on stderr.
fn fake_vmm(d: &Path, fail: bool) -> PathBuf {
    let script = d.join("fake-vmm");
    let body = if fail {
        "echo 'crx-vmm: error: cannot run the VM: broken' >&2; exit 1".to_owned()
    } else {
        format!(
            "grep -q crxtemplate=1 \"$2\" || exit 3\n\
             [ \"$3\" = --snapshot-on-signal ] || exit 4\n\
             echo state > \"$4/state\"; : > \"$4/memory\"; echo run >> {}",
            d.join("runs").display()
        )
    };
    std::fs::write(&script, format!("#!/bin/sh\n{body}\n")).unwrap();
    crate::paths::set_mode(&script, 0o755).unwrap();
    script
}

fn vm(d: &Path, vmm: PathBuf) -> VmConfig {
    let boot_dir = d.join("boot");
    std::fs::create_dir_all(&boot_dir).unwrap();
    let disk = d.join("disk.erofs");
    std::fs::write(&disk, vec![0u8; 4096]).unwrap();
    VmConfig {
        vmm,
        boot: boot(&boot_dir),
        memory_mib: 128,
        vcpus: 1,
        disk,
        vsock_uds: d.join("home/vm/v.sock"),
        console: d.join("home/console"),
        vmm_log: d.join("home/vmm.log"),
        die_with_parent: false,
        boot_timer: false,
        fs: Vec::new(),
        net: Vec::new(),
    }
}

fn runs(d: &Path) -> usize {
    std::fs::read_to_string(d.join("runs"))
        .unwrap_or_default()
        .lines()
        .count()
}

/// Retries a plan whose fresh script another test's fork may briefly hold open (ETXTBSY).
fn plan_retrying(vm: &VmConfig, root: &Path) -> Plan {
    std::env::set_var("CRX_TEMPLATES", "1");
    for _ in 0..50 {
        match plan_in(vm, root) {
            Plan::Cold(why) if why.contains("Text file busy") => {
                std::thread::sleep(std::time::Duration::from_millis(50))
            }
            p => return p,
        }
    }
    panic!("the stand-in VMM stayed busy");
}

#[test]
fn the_first_boot_builds_and_publishes_the_template_and_later_ones_restore_it() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("templates");
    let v = vm(d.path(), fake_vmm(d.path(), false));
    let Plan::Restore(r) = plan_retrying(&v, &root) else {
        panic!("no template");
    };
    assert_eq!(runs(d.path()), 1);
    assert!(store::complete(&r.dir));
    let key = std::fs::read_to_string(r.dir.join(store::KEY)).unwrap();
    assert!(key.contains("memory_mib=128\nvcpus=1\n"), "{key}");
    assert_eq!(
        r.launch().args(),
        [
            "--restore".to_owned(),
            format!("/proc/self/fd/{}", r.dir_fd.as_raw_fd())
        ]
    );
    assert_eq!(r.launch().fds(), [r.dir_fd.as_raw_fd()]);
    // While one restores, the template cannot be pruned.
    assert!(store::prune(&root, 0, |_| true).unwrap().removed.is_empty());
    drop(r);
    // Another sandbox of the shape restores it without a boot.
    let Plan::Restore(r) = plan_retrying(&v, &root) else {
        panic!("not restored");
    };
    assert_eq!(runs(d.path()), 1);
    // One that did not come up is discarded: later boots go cold without building it again,
    // until gc clears the mark.
    r.discard("the agent did not answer");
    assert!(store::list(&root).is_empty());
    let Plan::Cold(why) = plan_retrying(&v, &root) else {
        panic!("restored a broken template");
    };
    assert!(why.contains("failed to restore before"), "{why}");
    assert!(why.contains("the agent did not answer"), "{why}");
    assert_eq!(runs(d.path()), 1);
    store::prune(&root, u64::MAX, |_| false).unwrap();
    assert!(matches!(plan_retrying(&v, &root), Plan::Restore(_)));
    assert_eq!(runs(d.path()), 2);
    // Another memory size is another template.
    let mut bigger = v.clone();
    bigger.memory_mib = 256;
    assert!(matches!(plan_retrying(&bigger, &root), Plan::Restore(_)));
    assert_eq!((runs(d.path()), store::list(&root).len()), (3, 2));
    // A changed crx-vmm binary is another key: rebuilt.
    let again = std::fs::read(&v.vmm).unwrap();
    let tmp = d.path().join("vmm.new");
    std::fs::write(&tmp, again).unwrap();
    crate::paths::set_mode(&tmp, 0o755).unwrap();
    std::fs::rename(&tmp, &v.vmm).unwrap();
    assert!(matches!(plan_retrying(&v, &root), Plan::Restore(_)));
    assert_eq!(runs(d.path()), 4);
    // No staging left behind.
    let left: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(store::STAGING))
        .collect();
    assert!(left.is_empty());
}

#[test]
fn a_failed_build_boots_cold_saying_why_and_leaves_nothing() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("templates");
    let v = vm(d.path(), fake_vmm(d.path(), true));
    let Plan::Cold(why) = plan_retrying(&v, &root) else {
        panic!("restored from a failed build");
    };
    assert!(
        why.contains("template build failed") && why.contains("broken"),
        "{why}"
    );
    assert!(store::list(&root).is_empty());
    let names: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    assert!(names.is_empty(), "{names:?}");
}

#[test]
fn every_shape_has_a_template_keyed_by_its_slots() {
    std::env::set_var("CRX_TEMPLATES", "1");
    assert_eq!(unfit(), None);
    let d = tempfile::tempdir().unwrap();
    let base = vm(d.path(), fake_vmm(d.path(), false));
    let key = |v: &VmConfig| key::Key::of(v).unwrap().name();
    // A share is a slot: its tag is in the key, its socket (the clone's virtiofsd) is not.
    let mut shared = base.clone();
    shared.add_fs("root", "/run/a/root.sock");
    let mut other_socket = base.clone();
    other_socket.add_fs("root", "/run/b/root.sock");
    let mut other_tag = base.clone();
    other_tag.add_fs("vol0", "/run/a/root.sock");
    assert_ne!(key(&shared), key(&base));
    assert_eq!(key(&shared), key(&other_socket));
    assert_ne!(key(&shared), key(&other_tag));
    // No disk is another shape (a template without the disk slot).
    let mut diskless = shared.clone();
    diskless.disk = PathBuf::new();
    assert_ne!(key(&diskless), key(&shared));
    let mut networked = base.clone();
    let tap: std::os::fd::OwnedFd = File::open("/dev/null").unwrap().into();
    networked.net.push(crate::net::Nic {
        tap: std::sync::Arc::new(tap),
        mac: "02:00:00:00:00:07".into(),
        mtu: 1500,
    });
    // A NIC is a slot of the template: its key says so (and its MTU), not its MAC.
    assert_ne!(key(&networked), key(&base));
    let mut other_mac = networked.clone();
    other_mac.net[0].mac = "02:00:00:00:00:08".into();
    assert_eq!(key(&other_mac), key(&networked));
    let mut other_mtu = networked.clone();
    other_mtu.net[0].mtu = 9000;
    assert_ne!(key(&other_mtu), key(&networked));
    assert_eq!(nic_mac(0), "02:63:72:78:00:00");
    assert_eq!(nic_mac(3), "02:63:72:78:00:03");
}

#[test]
fn a_diskless_clone_is_told_of_no_disk() {
    let d = tempfile::tempdir().unwrap();
    let mut v = vm(d.path(), fake_vmm(d.path(), false));
    v.disk = PathBuf::new();
    match identity(&v).unwrap() {
        crx_proto::Request::Identity {
            entropy,
            disk_sectors,
        } => {
            assert_eq!(entropy.len(), 64);
            assert!(disk_sectors.is_empty());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_template_boot_says_so_to_crx_init_and_crx_vmm() {
    let mut cfg = crx_vmconfig::VmConfig::new(128, "/k");
    cfg.init_args = Some("quiet".into());
    let dir = Path::new("/t/.staging-x-1");
    let l = Launch::Template(dir);
    l.describe(&mut cfg);
    assert_eq!(cfg.init_args.as_deref(), Some("quiet crxtemplate=1"));
    assert_eq!(
        l.args(),
        ["--snapshot-on-signal", "/t/.staging-x-1"].map(String::from)
    );
    let mut plain = crx_vmconfig::VmConfig::new(128, "/k");
    Launch::Boot.describe(&mut plain);
    assert_eq!(plain.init_args, None);
    assert!(Launch::Boot.args().is_empty() && Launch::Boot.fds().is_empty());
}

#[test]
fn a_restored_vm_is_given_host_entropy_and_its_disk_size() {
    let d = tempfile::tempdir().unwrap();
    let v = vm(d.path(), fake_vmm(d.path(), false));
    let (a, b) = (identity(&v).unwrap(), identity(&v).unwrap());
    let crx_proto::Request::Identity {
        entropy,
        disk_sectors,
    } = &a
    else {
        panic!("{a:?}");
    };
    assert_eq!((entropy.len(), disk_sectors.as_slice()), (64, &[8][..]));
    assert_ne!(a, b, "two clones get the same bytes");
}

#[test]
fn gc_calls_templates_of_other_boot_files_or_another_vmm_stale() {
    let key = "crx-template v1\nkernel=k1\ninitrd=i1\nmemory_mib=256\nvmm=1:2:3:4\n";
    let cur = |k: &str, i: &str, v: &str| Some((k.to_owned(), i.to_owned(), v.to_owned()));
    assert!(!stale(key, cur("k1", "i1", "1:2:3:4").as_ref()));
    assert!(stale(key, cur("k2", "i1", "1:2:3:4").as_ref()));
    assert!(stale(key, cur("k1", "i2", "1:2:3:4").as_ref()));
    assert!(stale(key, cur("k1", "i1", "1:2:3:5").as_ref()));
    assert!(!stale(key, None));
}
