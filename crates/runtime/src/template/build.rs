//! Building a template: boot the VM once with an empty disk, empty shares and `crxtemplate=1`; once crx-init
//! says on the console that its agent listens, ask crx-vmm (`--snapshot-on-signal`) for the
//! snapshot with SIGUSR1 (it writes it and exits 0), then publish the staging directory by rename, under the key's
//! exclusive lock so that two builders never race.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::key::Key;
use super::store::{self, KEY, PLACEHOLDER, STAGING};
use super::{Launch, TemplateError};
use crate::vm::VmConfig;

/// How long after crx-init's ready line the snapshot is asked for.
const SETTLE: Duration = Duration::from_millis(300);

/// Builds `key`'s template from `vm` under `root` unless it exists; its directory.
pub fn ensure(vm: &VmConfig, key: &Key, root: &Path) -> Result<PathBuf, TemplateError> {
    crate::paths::create_private_dir_all(root).map_err(|e| io_err(root, e))?;
    crate::paths::set_mode(root, 0o755).map_err(|e| io_err(root, e))?;
    let name = key.name();
    let _lock = store::lock(root, &name, true, true)?;
    let dir = root.join(&name);
    if store::complete(&dir) {
        return Ok(dir);
    }
    let staging = root.join(format!("{STAGING}{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir(&staging).map_err(|e| io_err(&staging, e))?;
    let built = boot_and_snapshot(vm, &staging);
    if let Err(e) = built {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    publish(&staging, &dir, key)?;
    Ok(dir)
}

fn io_err(p: &Path, source: std::io::Error) -> TemplateError {
    TemplateError::Io {
        path: p.to_owned(),
        source,
    }
}

/// The template VM: `vm`'s kernel, initrd, memory and vCPUs; an empty disk in the disk slot
/// (if `vm` has a disk); its console and log in `staging`, its sockets in `sockets` (a local
/// directory: the cache may be a filesystem without Unix sockets, as the nested lab's 9p
/// share); its NICs' slots (taps connected to nothing, the slots' MACs, the same MTUs); its
/// shares' slots (`shares`, the same tags); no boot timer.
fn template_vm(
    vm: &VmConfig,
    staging: &Path,
    sockets: &Path,
    shares: Vec<crate::vm::FsShare>,
) -> Result<VmConfig, TemplateError> {
    let mut t = vm.clone();
    if vm.has_disk() {
        t.disk = staging.join(PLACEHOLDER);
    }
    t.vsock_uds = sockets.join("v.sock");
    t.console = staging.join("console");
    t.vmm_log = staging.join("vmm.log");
    t.die_with_parent = true;
    t.boot_timer = false;
    t.fs = shares;
    t.net = vm
        .net
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let tap = crate::net::unconnected_tap()
                .map_err(|e| TemplateError::Build(format!("a NIC slot: {}", crate::chain(&e))))?;
            Ok(crate::net::Nic {
                tap: std::sync::Arc::new(tap),
                mac: super::nic_mac(i),
                mtu: n.mtu,
            })
        })
        .collect::<Result<_, TemplateError>>()?;
    Ok(t)
}

/// Boots the template VM and waits (bounded by the agent timeout) for crx-vmm to write the
/// snapshot into `staging` and exit 0. Unjailed (seccomp on): it runs only the verified
/// kernel and initrd and no container, and writes its snapshot where a jail's user could not.
fn boot_and_snapshot(vm: &VmConfig, staging: &Path) -> Result<(), TemplateError> {
    let name = staging.file_name().unwrap_or_default().to_string_lossy();
    let sockets = std::env::temp_dir().join(format!("crx-template{name}"));
    let _ = std::fs::remove_dir_all(&sockets);
    crate::paths::create_private_dir(&sockets).map_err(|e| io_err(&sockets, e))?;
    let r = share_slots(vm, &sockets).and_then(|(daemons, shares)| {
        let r = template_vm(vm, staging, &sockets, shares).and_then(|t| boot_in(&t, staging));
        drop(daemons);
        r
    });
    let _ = std::fs::remove_dir_all(&sockets);
    r
}

/// One virtiofsd per share of `vm`, each serving an empty read-only directory under `sockets`:
/// the template's share slots, with `vm`'s tags. The guest never mounts them (crx-init mounts
/// shares when a container is created), so they are never asked anything.
fn share_slots(
    vm: &VmConfig,
    sockets: &Path,
) -> Result<(Vec<crate::virtiofs::Daemon>, Vec<crate::vm::FsShare>), TemplateError> {
    let mut daemons = Vec::new();
    let mut shares = Vec::new();
    for (i, f) in vm.fs.iter().enumerate() {
        let empty = sockets.join(format!("share{i}"));
        std::fs::create_dir(&empty).map_err(|e| io_err(&empty, e))?;
        let d = crate::virtiofs::Daemon::spawn(&empty, &sockets.join(format!("fs{i}.sock")), true)
            .map_err(|e| TemplateError::Build(format!("a share slot: {}", crate::chain(&e))))?;
        shares.push(crate::vm::FsShare {
            tag: f.tag.clone(),
            socket: d.socket().to_owned(),
        });
        daemons.push(d);
    }
    Ok((daemons, shares))
}

fn boot_in(t: &VmConfig, staging: &Path) -> Result<(), TemplateError> {
    if t.has_disk() {
        std::fs::File::create(&t.disk).map_err(|e| io_err(&t.disk, e))?;
    }
    let start = Instant::now();
    let mut child = t.spawn_as(
        false,
        crate::jail::seccomp_enabled(),
        &Launch::Template(staging),
    )?;
    let limit = crate::agent::agent_timeout();
    let (mut ready, mut asked) = (None::<Instant>, false);
    let why = loop {
        match child.try_wait() {
            Ok(Some(s)) if s.success() && store::complete(staging) => {
                crate::trace::mark(&format!(
                    "template snapshot written ({:.0} ms after the boot began)",
                    start.elapsed().as_secs_f64() * 1000.0
                ));
                return Ok(());
            }
            Ok(Some(s)) => break format!("crx-vmm exited ({s})"),
            Ok(None) => {}
            Err(e) => break format!("waiting for crx-vmm: {e}"),
        }
        if ready.is_none() {
            let console = std::fs::read_to_string(&t.console).unwrap_or_default();
            if console.contains(crx_proto::console::TEMPLATE_READY_LINE) {
                ready = Some(Instant::now());
            }
        }
        // Once crx-init said it is ready, it is about to wait in accept (its vCPU idle in the
        // kernel): the snapshot is asked for a moment later, once.
        if ready.is_some_and(|r| r.elapsed() >= SETTLE) && !asked {
            asked = true;
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            if let Err(e) = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGUSR1) {
                break format!("cannot signal crx-vmm: {e}");
            }
        }
        if start.elapsed() > limit {
            break format!("no snapshot after {}s", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = child.kill();
    let _ = child.wait();
    let last = crate::vmlog::why_stopped(&[&t.vmm_log, &t.console]).unwrap_or_default();
    Err(TemplateError::Build(format!("{why}: {last}")))
}

/// Makes `staging` readable by every jail's user (a restore maps it read-only), records the
/// key, and renames it to `dir` (an incomplete `dir` left by a crash is replaced).
fn publish(staging: &Path, dir: &Path, key: &Key) -> Result<(), TemplateError> {
    for f in ["vm.toml", crate::jail::CONFINEMENT_FILE] {
        let _ = std::fs::remove_file(staging.join(f));
    }
    std::fs::write(staging.join(KEY), &key.text).map_err(|e| io_err(staging, e))?;
    let rd = std::fs::read_dir(staging).map_err(|e| io_err(staging, e))?;
    for e in rd.flatten() {
        crate::paths::set_mode(&e.path(), 0o644).map_err(|err| io_err(&e.path(), err))?;
    }
    crate::paths::set_mode(staging, 0o755).map_err(|e| io_err(staging, e))?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| io_err(dir, e))?;
    }
    std::fs::rename(staging, dir).map_err(|e| io_err(dir, e))?;
    if let Some(parent) = dir.parent() {
        let _ = std::fs::File::open(parent).and_then(|f| f.sync_all());
    }
    store::touch(dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_published_template_is_readable_and_keyed() {
        let d = tempfile::tempdir().unwrap();
        let staging = d.path().join(".staging-k-1");
        std::fs::create_dir(&staging).unwrap();
        for f in [
            store::STATE,
            store::MEMORY,
            PLACEHOLDER,
            "v.sock",
            "vm.toml",
        ] {
            std::fs::write(staging.join(f), b"x").unwrap();
        }
        crate::paths::set_mode(&staging, 0o700).unwrap();
        let key = Key {
            text: "crx-template v1\n".into(),
        };
        let dir = d.path().join("k");
        std::fs::create_dir(&dir).unwrap(); // a crashed build's leftover
        publish(&staging, &dir, &key).unwrap();
        assert!(!staging.exists() && store::complete(&dir));
        assert!(!dir.join("vm.toml").exists());
        assert_eq!(std::fs::read_to_string(dir.join(KEY)).unwrap(), key.text);
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o755);
        assert_eq!(mode(&dir.join(store::MEMORY)), 0o644);
    }
}
