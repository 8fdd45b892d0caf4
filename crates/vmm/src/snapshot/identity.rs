//! What a snapshot must match to be restored here: the host CPU (vendor and
//! family/model/stepping: the guest saw this CPU's CPUID and may use what it offers) and the
//! VM's shape (the configuration hash).

use sha2::{Digest, Sha256};

use crate::config::VmConfig;

/// The host CPU as CPUID leaves 0 and 1 name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuIdentity {
    /// The vendor string ("AuthenticAMD", "GenuineIntel").
    pub vendor: [u8; 12],
    /// CPUID.1:EAX, family/model/stepping.
    pub signature: u32,
}

impl CpuIdentity {
    /// This host's CPU.
    pub fn host() -> Self {
        let leaf0 = std::arch::x86_64::__cpuid(0);
        let leaf1 = std::arch::x86_64::__cpuid(1);
        let mut vendor = [0u8; 12];
        vendor[..4].copy_from_slice(&leaf0.ebx.to_le_bytes());
        vendor[4..8].copy_from_slice(&leaf0.edx.to_le_bytes());
        vendor[8..].copy_from_slice(&leaf0.ecx.to_le_bytes());
        CpuIdentity {
            vendor,
            signature: leaf1.eax,
        }
    }

    /// The 16 bytes the header stores.
    pub fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..12].copy_from_slice(&self.vendor);
        b[12..].copy_from_slice(&self.signature.to_le_bytes());
        b
    }

    /// The inverse of [`CpuIdentity::to_bytes`].
    pub fn from_bytes(b: [u8; 16]) -> Self {
        let mut vendor = [0u8; 12];
        vendor.copy_from_slice(&b[..12]);
        CpuIdentity {
            vendor,
            signature: u32::from_le_bytes([b[12], b[13], b[14], b[15]]),
        }
    }
}

impl std::fmt::Display for CpuIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.signature;
        let base_family = (s >> 8) & 0xf;
        let family = match base_family {
            0xf => base_family + ((s >> 20) & 0xff),
            _ => base_family,
        };
        let model = ((s >> 4) & 0xf) | (((s >> 16) & 0xf) << 4);
        let vendor: String = self
            .vendor
            .iter()
            .map(|&c| if c.is_ascii_graphic() { c as char } else { '?' })
            .collect();
        write!(
            f,
            "{vendor} family {family:#x} model {model:#x} stepping {}",
            s & 0xf
        )
    }
}

/// The SHA-256 of the VM's shape: what the guest's state depends on and a restore must
/// recreate the same way (RAM size, vCPUs, which devices in which slots and what the guest reads
/// from their config space). Not hashed: file paths (kernel, initrds, disk images, sockets), the
/// command line (already consumed at boot), the serial destination, and what a restore
/// announces with a configuration-change interrupt: a disk's size, a NIC's MAC (a clone's
/// own; the guest keeps the MAC it read at probe until told otherwise).
pub fn config_hash(cfg: &VmConfig) -> [u8; 32] {
    let mut shape = format!(
        "crx-vm-shape v1\nmemory_mib={}\nvcpus={}\nboot_timer={}\n",
        cfg.memory_mib, cfg.vcpus, cfg.boot_timer
    );
    for d in &cfg.disks {
        shape.push_str(&format!("disk read_only={}\n", d.read_only));
    }
    if let Some(v) = &cfg.vsock {
        shape.push_str(&format!("vsock cid={}\n", v.guest_cid));
    }
    for f in &cfg.fs {
        shape.push_str(&format!("fs tag={}\n", f.tag));
    }
    for n in &cfg.net {
        shape.push_str(&format!("net mtu={:?}\n", n.mtu));
    }
    Sha256::digest(shape.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_round_trips_and_reads() {
        let h = CpuIdentity::host();
        assert_eq!(CpuIdentity::from_bytes(h.to_bytes()), h);
        let amd = CpuIdentity {
            vendor: *b"AuthenticAMD",
            signature: 0x00a0_0f11,
        };
        assert_eq!(
            amd.to_string(),
            "AuthenticAMD family 0x19 model 0x1 stepping 1"
        );
    }

    #[test]
    fn shape_hash_ignores_paths_and_sees_the_shape() {
        let a = VmConfig::new(64, "/a/vmlinux");
        let b = VmConfig::new(64, "/b/vmlinux");
        assert_eq!(config_hash(&a), config_hash(&b));
        let c = VmConfig::new(128, "/a/vmlinux");
        assert_ne!(config_hash(&a), config_hash(&c));
        let d = VmConfig {
            vcpus: 2,
            ..VmConfig::new(64, "/a/vmlinux")
        };
        assert_ne!(config_hash(&a), config_hash(&d));
        // A NIC's MAC is a clone's own; its MTU is the shape.
        let nic = |mac: &str, mtu| crx_vmconfig::NetConfig {
            mac: Some(mac.into()),
            mtu,
            ..Default::default()
        };
        let with = |n| VmConfig {
            net: vec![n],
            ..VmConfig::new(64, "/a/vmlinux")
        };
        let (e, f) = (
            with(nic("02:00:00:00:00:01", None)),
            with(nic("02:00:00:00:00:02", None)),
        );
        assert_eq!(config_hash(&e), config_hash(&f));
        assert_ne!(config_hash(&a), config_hash(&e));
        assert_ne!(
            config_hash(&e),
            config_hash(&with(nic("02:00:00:00:00:01", Some(9000))))
        );
    }
}
