//! A template's key: what its snapshot depends on, hashed into its directory's name.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::vm::VmConfig;

/// Bumped when what a template holds changes meaning (its layout, the agent's snapshot point).
pub const KEY_VERSION: u32 = 1;

/// What a template was built from, as text (kept in the template as `key`) and its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    /// One `name=value` line per input.
    pub text: String,
}

impl Key {
    /// The key of `vm`'s template: its verified kernel and initrd (sha256), memory, vCPUs,
    /// device shape (a read-only disk or none, the vsock device, share tags, NIC MTUs),
    /// and the crx-vmm binary (device, inode, size and modification time: a rebuilt or replaced
    /// binary is another template). `None` when the binary cannot be read.
    pub fn of(vm: &VmConfig) -> Option<Key> {
        let d = vm.boot.digests();
        let vmm = binary_identity(&vm.vmm)?;
        // NIC slots: what the guest read at probe besides the MAC (a clone's own).
        let nics: String = vm
            .net
            .iter()
            .map(|n| format!(",net:mtu{}", n.mtu))
            .collect();
        // Share slots: the tag the guest read at probe (a clone's share is its own).
        let shares: String = vm.fs.iter().map(|f| format!(",fs:{}", f.tag)).collect();
        let disk = if vm.has_disk() { "disk:ro," } else { "" };
        let text = format!(
            "crx-template v{KEY_VERSION}\nkernel={}\ninitrd={}\nmemory_mib={}\nvcpus={}\n\
             devices={disk}vsock:{}{shares}{nics}\nvmm={vmm}\ncpu={}\n",
            d.kernel.sha256,
            d.initrd.sha256,
            vm.memory_mib,
            vm.vcpus,
            crate::vm::GUEST_CID,
            host_cpu(),
        );
        Some(Key { text })
    }

    /// The directory name: 32 hex digits of the text's sha256.
    pub fn name(&self) -> String {
        let h = Sha256::digest(self.text.as_bytes());
        h.iter().take(16).map(|b| format!("{b:02x}")).collect()
    }

    /// The value of input `field` (`kernel`, `vmm`, ...).
    pub fn field<'a>(text: &'a str, field: &str) -> Option<&'a str> {
        text.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix('='))
    }
}

/// This host's CPU as a snapshot records it (vendor, family, model, stepping): crx-vmm refuses
/// a snapshot from another, so another CPU has another template.
fn host_cpu() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == name).then(|| v.trim().to_owned())
            })
            .unwrap_or_default()
    };
    let f: Vec<String> = ["vendor_id", "cpu family", "model", "stepping"]
        .iter()
        .map(|n| field(n))
        .collect();
    f.join("/")
}

/// `DEV:INO:SIZE:MTIME_NS` of a file, following links (crx-vmm is found by path).
pub fn binary_identity(p: &Path) -> Option<String> {
    let m = std::fs::metadata(p).ok()?;
    let mtime = m.mtime() as i128 * 1_000_000_000 + i128::from(m.mtime_nsec());
    Some(format!("{}:{}:{}:{mtime}", m.dev(), m.ino(), m.size()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_read_back_and_names_are_32_hex_digits() {
        let k = Key {
            text: "crx-template v1\nkernel=abc\nvmm=1:2:3:4\n".into(),
        };
        assert_eq!(Key::field(&k.text, "kernel"), Some("abc"));
        assert_eq!(Key::field(&k.text, "vmm"), Some("1:2:3:4"));
        assert_eq!(Key::field(&k.text, "kern"), None);
        assert_eq!(k.name().len(), 32);
        assert!(k.name().chars().all(|c| c.is_ascii_hexdigit()));
        let other = Key {
            text: k.text.replace("abc", "abd"),
        };
        assert_ne!(k.name(), other.name());
    }

    #[test]
    fn a_rewritten_binary_has_another_identity() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("crx-vmm");
        std::fs::write(&p, b"one").unwrap();
        let a = binary_identity(&p).unwrap();
        std::fs::write(&p, b"three").unwrap();
        assert_ne!(a, binary_identity(&p).unwrap());
        assert_eq!(binary_identity(&d.path().join("none")), None);
    }
}
