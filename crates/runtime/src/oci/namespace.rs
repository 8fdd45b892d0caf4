//! Namespaces given by `path`: checked on the host, then a fresh namespace or none in the guest.
//!
//! A `path` names a namespace of the host (another container's, a CNI network's, the host's
//! own), and no process in the VM can join a namespace of the host's kernel. So each one is
//! checked at `create` (the file must be a namespace of the declared type, as the kernel's
//! `setns` would demand) and then, in the guest:
//!
//! - `uts` and `mount` become a fresh namespace: the hostname must apply (as runc sets it in
//!   the namespace it joins) and the rootfs needs a mount namespace of its own;
//! - `network`, `ipc`, `pid`, `cgroup`, `user` and `time` are dropped: the container shares the
//!   VM's, which only this container uses (its network is the VM's network; its user is the
//!   VM's root user; its clocks and cgroup view are the VM's).
//!
//! `network` is dropped with or without a path: the VM is the container's network boundary.
//! Its NICs are joined to the namespace given by path on the host ([`crate::net`]), and
//! without one it has only its loopback, up, which a fresh namespace in the guest would lack.
#![allow(unsafe_code)] // NS_GET_NSTYPE

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use serde_json::Value;

use super::error::OciError;

/// The namespace types of the spec with their `CLONE_NEW*` flag (what `NS_GET_NSTYPE` answers)
/// and whether a `path` becomes a fresh namespace in the guest (else: the VM's).
const TYPES: [(&str, i32, bool); 8] = [
    ("pid", 0x2000_0000, false),
    ("network", 0x4000_0000, false),
    ("mount", 0x0002_0000, true),
    ("ipc", 0x0800_0000, false),
    ("uts", 0x0400_0000, true),
    ("user", 0x1000_0000, false),
    ("cgroup", 0x0200_0000, false),
    ("time", 0x0000_0080, false),
];

/// What a namespace `path` becomes in the guest, for `features`.
pub const IN_GUEST: &str = "a namespace path must name a namespace of its type (checked on the \
    host at create, NS_GET_NSTYPE) but cannot be joined across the VM boundary: uts and mount \
    become a new namespace in the guest (the hostname applies), network, ipc, pid, cgroup, user \
    and time are the VM's, which only this container uses; a network namespace path is joined \
    by the VM's NICs (a tap per interface, tc redirects), without one the VM has loopback only";

// NS_GET_NSTYPE: _IO(0xb7, 0x3), linux/nsfs.h.
nix::ioctl_none!(ns_get_nstype, 0xb7, 0x3);

/// The `linux.namespaces` entries of `spec` with a non-empty `path`: (type, path).
fn with_path(spec: &Value) -> impl Iterator<Item = (&str, &str)> {
    spec["linux"]["namespaces"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| Some((n["type"].as_str()?, n["path"].as_str()?)))
        .filter(|(_, p)| !p.is_empty())
}

/// Checks every namespace `path` of `spec`: it opens and is a namespace of its entry's type.
pub fn check_paths(spec: &Value) -> Result<(), OciError> {
    for (typ, path) in with_path(spec) {
        check(typ, Path::new(path))?;
    }
    Ok(())
}

/// Checks that `path` is a namespace of type `typ` (a spec name: `network`, `uts`...).
fn check(typ: &str, path: &Path) -> Result<(), OciError> {
    let want = TYPES.iter().find(|t| t.0 == typ).map(|t| t.1);
    let f = File::open(path).map_err(|source| OciError::NamespacePath {
        typ: typ.to_owned(),
        path: path.to_owned(),
        source,
    })?;
    // SAFETY: NS_GET_NSTYPE takes no argument; it only reads the type of the namespace the
    // open file `f` refers to (ENOTTY, EINVAL or another errno for any other file).
    let got = unsafe { ns_get_nstype(f.as_raw_fd()) }.map_err(|_| OciError::NotANamespace {
        typ: typ.to_owned(),
        path: path.to_owned(),
    })?;
    if Some(got) == want {
        return Ok(());
    }
    let actual = TYPES
        .iter()
        .find(|t| t.1 == got)
        .map_or_else(|| format!("{got:#x}"), |t| t.0.to_owned());
    Err(OciError::NamespaceMismatch {
        typ: typ.to_owned(),
        path: path.to_owned(),
        actual,
    })
}

/// Rewrites a spec's `linux.namespaces` for the guest: entries with a path become fresh
/// namespaces (`uts`, `mount`: the path removed) or are dropped (the others); `network` is
/// always dropped (the VM's); a type already listed without a path is not repeated.
pub fn for_guest(namespaces: &mut Vec<Value>) {
    let fresh = |typ: &str| TYPES.iter().any(|t| t.0 == typ && t.2);
    let mut seen: Vec<String> = Vec::new();
    namespaces.retain_mut(|n| {
        let has_path = n["path"].as_str().is_some_and(|p| !p.is_empty());
        let typ = n["type"].as_str().unwrap_or_default().to_owned();
        if typ == "network" {
            return false;
        }
        if has_path {
            if !fresh(&typ) {
                return false;
            }
            if let Some(o) = n.as_object_mut() {
                o.remove("path");
            }
        }
        if seen.contains(&typ) {
            return false;
        }
        seen.push(typ);
        true
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(typ: &str, path: &str) -> Value {
        json!({"linux": {"namespaces": [{"type": "pid"}, {"type": typ, "path": path}]}})
    }

    #[test]
    fn paths_must_be_namespaces_of_their_type() {
        for (typ, file) in [
            ("uts", "uts"),
            ("network", "net"),
            ("ipc", "ipc"),
            ("mount", "mnt"),
            ("pid", "pid"),
            ("cgroup", "cgroup"),
            ("user", "user"),
        ] {
            check_paths(&spec(typ, &format!("/proc/self/ns/{file}"))).unwrap();
        }
        let e = check_paths(&spec("uts", "/proc/self/ns/net")).unwrap_err();
        assert!(
            matches!(&e, OciError::NamespaceMismatch { actual, .. } if actual == "network"),
            "{e}"
        );
        assert!(
            e.to_string()
                .contains("uts namespace path /proc/self/ns/net"),
            "{e}"
        );
        let e = check_paths(&spec("network", "/proc/self/status")).unwrap_err();
        assert!(matches!(e, OciError::NotANamespace { .. }), "{e}");
        let e = check_paths(&spec("ipc", "/nonexistent/ns")).unwrap_err();
        assert!(matches!(e, OciError::NamespacePath { .. }), "{e}");
        // An empty path is no path.
        check_paths(&spec("network", "")).unwrap();
    }

    #[test]
    fn paths_become_fresh_namespaces_or_the_vms() {
        let mut ns: Vec<Value> = [
            "pid", "network", "mount", "ipc", "uts", "user", "cgroup", "time",
        ]
        .iter()
        .map(|t| json!({"type": t, "path": format!("/proc/1/ns/{t}")}))
        .collect();
        ns.push(json!({"type": "ipc"}));
        ns.push(json!({"type": "uts", "path": ""}));
        ns.push(json!({"type": "network"}));
        for_guest(&mut ns);
        assert_eq!(
            ns,
            vec![
                json!({"type": "mount"}),
                json!({"type": "uts"}),
                json!({"type": "ipc"})
            ]
        );
    }
}
