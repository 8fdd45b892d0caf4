//! A container's network on the host side: the VM joins the network namespace that podman,
//! containerd or CNI prepared, without changing what they set up (ADR 0015).
//!
//! For every interface of that namespace but `lo` (a veth such as `eth0`, holding the IP the
//! tool allocated), [`attach`] creates a tap in the same namespace (`IFF_TAP | IFF_NO_PI |
//! IFF_VNET_HDR`, kept open: crx-vmm inherits it, since it runs in a network namespace of its
//! own) and redirects every frame between the two with tc (an ingress qdisc on each and a
//! match-all u32 filter with `mirred egress redirect`, the scheme of Kata Containers), then
//! describes the veth (its MAC, MTU, addresses and routes) for the guest's
//! `configure_network`: the guest's NIC has the veth's MAC and IP, so the tool's bridge, port
//! forwarding and firewall rules reach it as they would reach a runc container. The veth keeps
//! its addresses: tc takes every frame at its ingress before the namespace's own stack sees
//! one, so nothing there answers for the guest, and the namespace stays as the tool made it.
//!
//! What was changed is recorded first (`net.json` in the container's directory); [`detach`]
//! undoes it (the tap, our filter, the ingress qdisc if we added it) and tolerates a namespace
//! or veth that the tool already removed.
//!
//! - [`netns`]: running netlink work on a thread inside a namespace.
//! - [`tap`]: the tap device.
//! - [`tc`]: the ingress qdiscs and redirect filters.
//! - [`addr`]: links, addresses and routes, read and turned into the guest's description.
//! - [`etc`]: the container's `/etc/hosts`, `/etc/resolv.conf` and `/etc/hostname`.
//! - [`cni`]: CNI plugins run as the CNI specification says (`ADD`, `DEL`, their results).
//! - [`portfwd`]: the CRI's `PortForward` (dials to the pod namespace's loopback) carried into
//!   the guest.
//! - [`run`]: `crx run`'s own network: a namespace per instance prepared by CNI, then joined
//!   by the VM through [`attach`] as crx-runc's are.

mod addr;
pub mod cni;
pub mod etc;
mod netns;
pub mod portfwd;
pub mod run;
mod tap;
mod tc;
#[cfg(test)]
#[allow(unsafe_code)] // network namespaces for the tests
mod tests;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crx_proto::network::NetworkConfig;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use netns::run_in;

/// Taps are named this and their interface's position (`crxtap0`).
pub const TAP_PREFIX: &str = "crxtap";

/// The name of the record [`attach`] writes in a container's directory.
pub const RECORD: &str = "net.json";

/// Why a container's network could not be set up or removed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(
        "the spec has no network namespace (host networking): a VM cannot share the host's \
         network stack; give the container a network namespace (not --network host)"
    )]
    HostNetwork,
    #[error(
        "network namespace path {0} is the host's own: a VM cannot share the host's network \
         stack; give the container a network namespace of its own"
    )]
    HostNamespace(PathBuf),
    #[error("network namespace {path}")]
    Netns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("network namespace {path}: {what}")]
    Netlink {
        path: PathBuf,
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("creating tap {name} in the network namespace")]
    Tap {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("network namespace {path} has {count} interfaces besides lo, more than {max}")]
    TooManyInterfaces {
        path: PathBuf,
        count: usize,
        max: usize,
    },
    #[error("network record {path}")]
    Record {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("port forwarding: {0}")]
    PortForward(String),
    #[error("the thread working in network namespace {0} panicked")]
    Thread(PathBuf),
    #[error(transparent)]
    Cni(#[from] cni::CniError),
}

/// What a spec asks of the container's network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpecNetwork {
    /// No `network` namespace entry: the host's stack, which a VM cannot share.
    Host,
    /// A `network` entry without a path: a fresh namespace, i.e. a VM with loopback only.
    Loopback,
    /// A `network` entry with a path: the namespace the tool prepared, joined by the VM.
    Namespace(PathBuf),
}

/// What `spec` (an OCI runtime spec) asks of the network.
pub fn from_spec(spec: &Value) -> SpecNetwork {
    let entry = spec["linux"]["namespaces"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["type"] == "network");
    match entry.and_then(|n| n.get("path")).and_then(Value::as_str) {
        None if entry.is_none() => SpecNetwork::Host,
        Some(p) if !p.is_empty() => SpecNetwork::Namespace(p.into()),
        _ => SpecNetwork::Loopback,
    }
}

/// Refuses a spec whose network is the host's: no `network` namespace, or the path of the
/// namespace this process or init is in.
pub fn check_spec(spec: &Value) -> Result<(), NetError> {
    match from_spec(spec) {
        SpecNetwork::Host => Err(NetError::HostNetwork),
        SpecNetwork::Namespace(ns) if netns::is_hosts(&ns)? => Err(NetError::HostNamespace(ns)),
        _ => Ok(()),
    }
}

/// The network of a container whose spec is `spec` and whose state is in `dir`: refused for
/// the host's ([`check_spec`]), nothing for a fresh namespace (the VM's loopback), else the
/// namespace given by path joined ([`attach`], recorded as `dir/`[`RECORD`]).
pub fn join(spec: &Value, dir: &Path) -> Result<Attached, NetError> {
    check_spec(spec)?;
    match from_spec(spec) {
        SpecNetwork::Namespace(ns) => attach(&ns, &dir.join(RECORD)),
        _ => Ok(Attached::default()),
    }
}

/// For a `network` entry without a path ([`SpecNetwork::Loopback`]): moves this process (the
/// container's monitor, whose pid is the container's) into a fresh network namespace, as runc
/// gives its container one. A tool that configures `/proc/PID/ns/net` after create
/// (`ctr run --cni`, an OCI hook) then works on that namespace, never on the host's stack,
/// and the VM, booted at `start`, joins what it finds there ([`attach`]).
/// Call it on the main thread: `/proc/PID/ns/net` is the main thread's namespace.
pub fn own_namespace_if_unpathed(spec: &Value) -> Result<(), NetError> {
    if from_spec(spec) != SpecNetwork::Loopback {
        return Ok(());
    }
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| NetError::Netns {
        path: "/proc/self/ns/net".into(),
        source: e.into(),
    })
}

/// A tap in a network namespace of its own, connected to nothing: a template VM's NIC slot
/// (ADR 0017; a clone gets its own tap at restore). The namespace lives as long as the tap.
pub fn unconnected_tap() -> Result<OwnedFd, NetError> {
    std::thread::spawn(|| {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| NetError::Netns {
            path: "/proc/thread-self/ns/net".into(),
            source: e.into(),
        })?;
        tap::create("crxtpl0")
    })
    .join()
    .map_err(|_| NetError::Thread("a template's own".into()))?
}

/// A VM NIC connected to an interface of the container's namespace: crx-vmm inherits the
/// tap and offers the guest the interface's MAC and MTU.
#[derive(Debug, Clone)]
pub struct Nic {
    pub tap: Arc<OwnedFd>,
    pub mac: String,
    pub mtu: u16,
}

/// A namespace the VM is connected to: its NICs, and what the guest configures on them.
#[derive(Debug, Default)]
pub struct Attached {
    pub nics: Vec<Nic>,
    pub guest: NetworkConfig,
}

/// What [`attach`] changed in a namespace (saved before the change, as [`RECORD`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub netns: PathBuf,
    /// The namespace's identity (device, inode) when it was joined: a path that names
    /// another namespace by then (`/proc/PID/ns/net` of a reused pid) is left alone.
    #[serde(default)]
    pub id: Option<(u64, u64)>,
    pub links: Vec<LinkRecord>,
}

/// One interface connected to a tap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkRecord {
    /// The interface (a veth) and its index when it was connected.
    pub name: String,
    pub index: u32,
    /// The tap created next to it.
    pub tap: String,
    /// Whether its ingress qdisc was added by us (removed again) or was there (kept: only our
    /// filter is removed).
    pub added_qdisc: bool,
}

/// Connects a VM to the network namespace `netns`: a tap and the tc redirects per interface,
/// recorded in `record` first. On error whatever was changed is undone.
pub fn attach(netns: &Path, record: &Path) -> Result<Attached, NetError> {
    let ns = netns::open(netns)?;
    let id = netns::id(&ns, netns)?;
    let ns_path = netns.to_owned();
    let rec_path = record.to_owned();
    let result = run_in(ns, netns, move |h| async move {
        let found = addr::read(&h, &ns_path).await?;
        let mut rec = Record {
            netns: ns_path.clone(),
            id: Some(id),
            links: Vec::new(),
        };
        for (i, link) in found.links.iter().enumerate() {
            rec.links.push(LinkRecord {
                name: link.name.clone(),
                index: link.index,
                tap: format!("{TAP_PREFIX}{i}"),
                added_qdisc: !tc::has_ingress(&h, &ns_path, link.index).await?,
            });
        }
        save(&rec_path, &rec)?;
        let mut nics = Vec::new();
        for (link, lr) in found.links.iter().zip(&rec.links) {
            let fd = tap::create(&lr.tap)?;
            tc::connect(&h, &ns_path, link, lr).await?;
            nics.push(Nic {
                tap: Arc::new(fd),
                mac: link.mac_string(),
                mtu: link.mtu_u16(),
            });
        }
        Ok(Attached {
            nics,
            guest: found.guest,
        })
    });
    if result.is_err() {
        let _ = detach(record);
    }
    result
}

/// Undoes what [`attach`] recorded in `record` and removes the record; nothing recorded, or a
/// namespace already gone, is success.
pub fn detach(record: &Path) -> Result<(), NetError> {
    let rec: Record = match std::fs::read(record) {
        Ok(text) => serde_json::from_slice(&text).map_err(|e| NetError::Record {
            path: record.to_owned(),
            source: e.into(),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(NetError::Record {
                path: record.to_owned(),
                source,
            })
        }
    };
    if let Some(ns) = netns::open_if_alive(&rec.netns, rec.id)? {
        let path = rec.netns.clone();
        run_in(ns, &rec.netns, move |h| async move {
            for link in &rec.links {
                tc::disconnect(&h, &path, link).await?;
            }
            Ok(())
        })?;
    }
    match std::fs::remove_file(record) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(NetError::Record {
            path: record.to_owned(),
            source: e,
        }),
        _ => Ok(()),
    }
}

fn save(path: &Path, rec: &Record) -> Result<(), NetError> {
    let text = serde_json::to_vec_pretty(rec).map_err(|e| NetError::Record {
        path: path.to_owned(),
        source: e.into(),
    })?;
    crate::paths::write_atomic(path, &text).map_err(|source| NetError::Record {
        path: path.to_owned(),
        source,
    })
}

/// An rtnetlink error as an `io::Error` (the kernel's errno where it gave one).
fn nl_io(e: rtnetlink::Error) -> std::io::Error {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io(),
        other => std::io::Error::other(other.to_string()),
    }
}

/// `NetError::Netlink` for `what` in namespace `path`.
fn nl_err(path: &Path, what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetError {
    let (path, what) = (path.to_owned(), what.into());
    move |e| NetError::Netlink {
        path,
        what,
        source: nl_io(e),
    }
}
