//! VM templates (ADR 0017): for each key (kernel, initrd, memory, vCPUs, device shape, crx-vmm
//! binary, host CPU: [`key::Key`]) one VM booted once to "agent ready" and snapshotted
//! (crx-vmm's format, ADR 0014), kept in the cache ([`store`]). A sandbox whose VM has that
//! shape is restored from it instead of booting: its memory mapped copy-on-write from the one
//! memory file (every clone shares the pages none of them wrote), its own disk put into the
//! template's disk slot (a configuration-change interrupt announces its size), its own vsock
//! socket (the guest's connections reset), then its own randomness (the agent's `Identity`).
//!
//! [`plan`] decides, for every sandbox boot ([`crate::sandbox::boot`]): restore, building the
//! template first when it is missing, or boot cold and say why (`CRX_TRACE=1`): `CRX_COLD=1`
//! (`crx run --cold`), templates off, or a failed build. A VM's NICs are slots of the template
//! (taps connected to nothing, MACs of [`nic_mac`]): a clone gets its own taps at restore, and
//! the guest its own MACs with its network's description (`Interface::template_mac`). Its
//! virtio-fs shares are slots too: the template's virtiofsd serves an empty directory under the
//! share's tag and is never asked anything (the guest mounts nothing before the snapshot), so
//! the clone's own virtiofsd takes the rings over at restore; such a clone's RAM is a copy of
//! the template's (its backend maps it: crx-vmm's shared memfd), not a copy-on-write mapping.

pub mod build;
pub mod key;
pub mod store;

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use crate::vm::VmConfig;

/// Template errors.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// A file of the cache.
    #[error("template cache: {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Starting the template's VMM.
    #[error("template boot")]
    Spawn(#[source] Box<crate::RuntimeError>),
    /// The template VM did not snapshot itself.
    #[error("template build failed: {0}")]
    Build(String),
}

impl From<crate::RuntimeError> for TemplateError {
    fn from(e: crate::RuntimeError) -> Self {
        TemplateError::Spawn(Box::new(e))
    }
}

/// How crx-vmm starts (an argument of [`VmConfig::spawn_as`]).
#[derive(Debug)]
pub enum Launch<'a> {
    /// Boot the kernel.
    Boot,
    /// Boot a template: crx-vmm writes the snapshot here on SIGUSR1, which the builder sends
    /// once crx-init said it is ready.
    Template(&'a Path),
    /// Restore the template whose directory this descriptor is (crx-vmm inherits it and
    /// reads `/proc/self/fd/N/state`: no bind into a jail needed; files 0644, directory 0755).
    Restore(&'a File),
}

impl Launch<'_> {
    /// crx-vmm's extra arguments.
    pub(crate) fn args(&self) -> Vec<String> {
        match self {
            Launch::Boot => Vec::new(),
            Launch::Template(dir) => vec!["--snapshot-on-signal".into(), dir.display().to_string()],
            Launch::Restore(f) => vec![
                "--restore".into(),
                format!("/proc/self/fd/{}", f.as_raw_fd()),
            ],
        }
    }

    /// The descriptors crx-vmm must inherit for it.
    pub(crate) fn fds(&self) -> Vec<RawFd> {
        match self {
            Launch::Restore(f) => vec![f.as_raw_fd()],
            _ => Vec::new(),
        }
    }

    /// Adjusts the VM description: a template boot tells crx-init so on the command line.
    pub(crate) fn describe(&self, cfg: &mut crx_vmconfig::VmConfig) {
        if let Launch::Template(_) = self {
            let args = cfg.init_args.take().unwrap_or_default();
            cfg.init_args = Some(format!("{args} crxtemplate=1").trim().to_owned());
        }
    }
}

/// A template a VM is restored from: its directory, open, and a shared lock on it (held until
/// the VM answers, so that `crx gc` does not remove it under a starting VMM).
#[derive(Debug)]
pub struct Restore {
    pub name: String,
    pub dir: PathBuf,
    dir_fd: File,
    _lock: LockHolder,
}

struct LockHolder(#[allow(dead_code)] store::Lock);

impl std::fmt::Debug for LockHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Lock")
    }
}

impl Restore {
    /// How crx-vmm is started for it.
    pub fn launch(&self) -> Launch<'_> {
        Launch::Restore(&self.dir_fd)
    }

    /// Removes the template (a VM restored from it did not answer) and marks its key broken:
    /// later boots of the shape boot cold, without building it again, until `crx gc` clears
    /// the mark (or an input changes, which is another key). Kept while another VM is being
    /// restored from it. The mark holds `why` (with the time and the process that wrote it),
    /// which later cold boots of the shape give as their reason.
    pub fn discard(self, why: &str) {
        let Restore {
            name, dir, _lock, ..
        } = self;
        drop(_lock);
        crate::trace::mark(&format!("template: {name} discarded"));
        if let Some(root) = dir.parent() {
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let note = format!(
                "at {stamp} (unix time), process {}: {why}\n",
                std::process::id()
            );
            let _ = std::fs::write(store::broken_mark(root, &name), note);
            let _ = store::remove(root, &name);
        }
    }
}

/// What a sandbox boot does.
#[derive(Debug)]
pub enum Plan {
    /// Boot the kernel, for this reason.
    Cold(String),
    /// Restore this template.
    Restore(Restore),
}

/// The MAC of a template's NIC slot `i` (locally administered; a clone's NIC is told its own).
pub fn nic_mac(i: usize) -> String {
    format!("02:63:72:78:{:02x}:{:02x}", (i >> 8) & 0xff, i & 0xff)
}

/// Whether cold boots are forced (`CRX_COLD=1`; `crx run --cold` sets it).
pub fn forced_cold() -> bool {
    std::env::var_os("CRX_COLD").is_some_and(|v| !v.is_empty() && v != "0")
}

/// Whether templates are on: by default, since the whole suite passed with them in the
/// nested lab (ADR 0017, "State"); `CRX_TEMPLATES=0` turns them off.
pub fn enabled() -> bool {
    std::env::var_os("CRX_TEMPLATES").is_none_or(|v| v != "0")
}

/// Why no VM may come from a template now, if none may: every shape can (its disk, shares and
/// NICs are slots of its template).
pub fn unfit() -> Option<&'static str> {
    if forced_cold() {
        return Some("CRX_COLD=1");
    }
    if !enabled() {
        return Some("templates are off (CRX_TEMPLATES=0)");
    }
    None
}

/// Decides how `vm` starts; builds its template first when it is missing (the first sandbox
/// of a shape pays one cold boot and a snapshot). Every cold reason is traced.
pub fn plan(vm: &VmConfig) -> Plan {
    let p = plan_in(vm, &store::root());
    match &p {
        Plan::Cold(why) => crate::trace::mark(&format!("template: cold boot: {why}")),
        Plan::Restore(r) => crate::trace::mark(&format!("template: restoring {}", r.name)),
    }
    p
}

fn plan_in(vm: &VmConfig, root: &Path) -> Plan {
    if let Some(why) = unfit() {
        return Plan::Cold(why.into());
    }
    let Some(key) = key::Key::of(vm) else {
        return Plan::Cold(format!("{} cannot be read", vm.vmm.display()));
    };
    let name = key.name();
    let dir = root.join(&name);
    let mark = store::broken_mark(root, &name);
    if mark.exists() {
        let why = std::fs::read_to_string(&mark).unwrap_or_default();
        return Plan::Cold(format!(
            "template {name} failed to restore before (`crx gc` lets it be built again): {}",
            why.trim()
        ));
    }
    if !store::complete(&dir) {
        crate::trace::mark(&format!("template: building {name}"));
        match build::ensure(vm, &key, root) {
            Ok(_) => {
                let _ = store::prune(root, store::limit_bytes(), |_| false);
            }
            Err(e) => return Plan::Cold(crate::chain(&e)),
        }
    }
    let opened = store::lock(root, &name, false, true).and_then(|lock| {
        let f = File::open(&dir).map_err(|source| TemplateError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok((lock, f))
    });
    match opened {
        Ok((Some(lock), dir_fd)) if store::complete(&dir) => {
            store::touch(&dir);
            Plan::Restore(Restore {
                name,
                dir,
                dir_fd,
                _lock: LockHolder(lock),
            })
        }
        Ok(_) => Plan::Cold("the template was removed meanwhile".into()),
        Err(e) => Plan::Cold(crate::chain(&e)),
    }
}

/// The `Identity` request that makes a restored VM its own: 64 bytes from the host's
/// `getrandom` (through /dev/urandom) and its disk's size in sectors (if it has one).
pub fn identity(vm: &VmConfig) -> Result<crx_proto::Request, crate::RuntimeError> {
    use std::io::Read;
    let mut entropy = vec![0u8; 64];
    let urandom = Path::new("/dev/urandom");
    File::open(urandom)
        .and_then(|mut f| f.read_exact(&mut entropy))
        .map_err(crate::error::io(urandom))?;
    let mut disk_sectors = Vec::new();
    if vm.has_disk() {
        let len = std::fs::metadata(&vm.disk)
            .map_err(crate::error::io(&vm.disk))?
            .len();
        disk_sectors.push(len / 512);
    }
    Ok(crx_proto::Request::Identity {
        entropy,
        disk_sectors,
    })
}

/// `crx gc`: removes the templates whose kernel, initrd or crx-vmm is no longer the current
/// one (when those can be found), the least recently used ones over the size limit, and
/// staging directories of dead builders; templates a VM is being restored from stay.
pub fn gc() -> Result<store::Pruned, TemplateError> {
    let current = crate::paths::verified_boot_files()
        .ok()
        .zip(crate::paths::find_vmm().ok())
        .and_then(|(boot, vmm)| {
            let d = boot.digests();
            Some((
                d.kernel.sha256,
                d.initrd.sha256,
                key::binary_identity(&vmm)?,
            ))
        });
    store::prune(&store::root(), store::limit_bytes(), |e| {
        stale(&e.key, current.as_ref())
    })
}

/// Whether a template's key names other boot files or another crx-vmm than `current`
/// (kernel, initrd, vmm); nothing is stale when the current ones are unknown.
fn stale(key: &str, current: Option<&(String, String, String)>) -> bool {
    let Some((kernel, initrd, vmm)) = current else {
        return false;
    };
    key::Key::field(key, "kernel") != Some(kernel)
        || key::Key::field(key, "initrd") != Some(initrd)
        || key::Key::field(key, "vmm") != Some(vmm)
}

/// The template state for `crx check`: the cache, what it holds, and the current key's.
pub fn status(vm: Option<&VmConfig>) -> String {
    let root = store::root();
    let all = store::list(&root);
    let mib = all.iter().map(|e| e.bytes).sum::<u64>() as f64 / f64::from(1 << 20);
    let mut s = format!(
        "{} in {} ({mib:.1} MiB allocated, limit {} MiB)",
        all.len(),
        root.display(),
        store::limit_bytes() >> 20
    );
    if let Some(k) = vm.and_then(key::Key::of) {
        let here = store::complete(&root.join(k.name()));
        s.push_str(&format!(
            "; the shape of `crx run --network none` ({} MiB, {} vCPU): {}",
            vm.map_or(0, |v| v.memory_mib),
            vm.map_or(0, |v| v.vcpus),
            if here {
                "template ready"
            } else {
                "no template yet (the next run builds it)"
            }
        ));
    }
    if forced_cold() {
        s.push_str("; CRX_COLD=1: every boot is cold");
    } else if !enabled() {
        s.push_str("; off (CRX_TEMPLATES=0)");
    }
    s
}

#[cfg(test)]
mod tests;
