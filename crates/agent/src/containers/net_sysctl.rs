//! Network sysctls (`linux.sysctl` keys `net.*`) of a container that shares the VM's network
//! namespace. The host joins a container's network namespace by giving the VM its interfaces
//! (crx-runtime's `net`), so the guest spec has no `network` namespace: the container uses the
//! VM's, which is its alone. libcontainer refuses `net.*` sysctls there ("not allowed in host
//! network namespace", as runc does on a real host), though podman sets one by default
//! (`net.ipv4.ping_group_range`). They belong to the VM's namespace: the helper takes them out
//! of the spec ([`split`]) and writes them under `/proc/sys` itself ([`apply`]).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// Longest key and value taken (a sysctl value is a short line).
const MAX_LEN: usize = 4096;

/// Removes the `net.*` sysctls from `spec` when it has no `network` namespace, and returns
/// them (key, value) in the spec's order. A spec with a network namespace of its own keeps
/// them: libcontainer sets them in that namespace.
pub fn split(spec: &mut Value) -> Vec<(String, String)> {
    let own_netns = spec["linux"]["namespaces"]
        .as_array()
        .is_some_and(|ns| ns.iter().any(|n| n["type"] == "network"));
    if own_netns {
        return Vec::new();
    }
    let Some(sysctl) = spec
        .get_mut("linux")
        .and_then(|l| l.get_mut("sysctl"))
        .and_then(Value::as_object_mut)
    else {
        return Vec::new();
    };
    let keys: Vec<String> = sysctl
        .keys()
        .filter(|k| k.starts_with("net."))
        .cloned()
        .collect();
    keys.into_iter()
        .filter_map(|k| {
            let v = sysctl.remove(&k)?;
            Some((k, v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
        })
        .collect()
}

/// The file of sysctl `key` under `root` (`/proc/sys`): dots become slashes, as runc does;
/// `None` for a key that is not a plain dotted name (no `/`, no empty or `..` part).
pub fn key_path(root: &Path, key: &str) -> Option<PathBuf> {
    let ok = key.len() <= MAX_LEN
        && key.starts_with("net.")
        && key.split('.').all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        });
    ok.then(|| root.join(key.replace('.', "/")))
}

/// Writes each sysctl under `root` (`/proc/sys`); the first that fails fails the whole.
pub fn apply(sysctls: &[(String, String)], root: &Path) -> Result<()> {
    for (key, value) in sysctls {
        let Some(path) = key_path(root, key) else {
            bail!("sysctl {key:?} is not a network sysctl name");
        };
        if value.len() > MAX_LEN || value.contains('\n') {
            bail!("sysctl {key}: value too long or more than one line");
        }
        std::fs::write(&path, value).with_context(|| format!("setting sysctl {key}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn net_sysctls_leave_a_spec_without_a_network_namespace() {
        let mut spec = json!({"linux": {"namespaces": [{"type": "pid"}], "sysctl": {
            "net.ipv4.ping_group_range": "0 0", "kernel.msgmax": "8192",
            "net.ipv4.ip_forward": "1"}}});
        let taken = split(&mut spec);
        assert_eq!(
            taken,
            [
                ("net.ipv4.ip_forward".to_owned(), "1".to_owned()),
                ("net.ipv4.ping_group_range".to_owned(), "0 0".to_owned())
            ]
        );
        assert_eq!(spec["linux"]["sysctl"], json!({"kernel.msgmax": "8192"}));
        // With a network namespace of its own, libcontainer sets them there.
        let mut own = json!({"linux": {"namespaces": [{"type": "network"}],
            "sysctl": {"net.ipv4.ip_forward": "1"}}});
        assert!(split(&mut own).is_empty());
        assert_eq!(own["linux"]["sysctl"]["net.ipv4.ip_forward"], "1");
        assert!(split(&mut json!({})).is_empty());
    }

    #[test]
    fn keys_are_plain_dotted_names_under_net() {
        let root = Path::new("/proc/sys");
        assert_eq!(
            key_path(root, "net.ipv4.conf.eth0.rp_filter").unwrap(),
            Path::new("/proc/sys/net/ipv4/conf/eth0/rp_filter")
        );
        for bad in [
            "kernel.msgmax",
            "net..x",
            "net.ipv4/../../kernel/x",
            "net.",
            "net.a b",
        ] {
            assert!(key_path(root, bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn values_are_written_under_the_root() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("net/ipv4")).unwrap();
        let set = [("net.ipv4.ping_group_range".to_owned(), "0 0".to_owned())];
        apply(&set, d.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(d.path().join("net/ipv4/ping_group_range")).unwrap(),
            "0 0"
        );
        let missing = [("net.nope.x".to_owned(), "1".to_owned())];
        assert!(apply(&missing, d.path()).is_err());
        let two_lines = [("net.ipv4.ping_group_range".to_owned(), "0\n1".to_owned())];
        assert!(apply(&two_lines, d.path()).is_err());
    }
}
