//! `crx run`'s own network (`--network bridge`, the default): a network namespace per
//! instance (`HOME/netns`, kept by a bind mount as `ip netns add` does), prepared by the CNI
//! plugins of a network configuration list (CNI `ADD`, [`super::cni`]) before the VM boots,
//! then joined by the VM through the same tap and tc redirects as crx-runc's ([`super::attach`],
//! ADR 0015). [`teardown`] undoes it all (tap and filters, CNI `DEL`, the namespace) when the
//! home is removed: `crx rm`, `crx gc`, the end of a `--rm` run, a failed start.
//!
//! The list is `$CRX_CNI_CONF` or [`DEFAULT_CONFLIST`]; crx installs its default there when the
//! file is missing ([`DEFAULT_CONFLIST_TEXT`]: a `crx0` bridge on [`DEFAULT_SUBNET`], host-local
//! addresses, portmap for `-p`, firewall). A user edits that file, or points `CRX_CNI_CONF` at
//! another list, to change the network; its plugins are looked up in `$CRX_CNI_PATH`
//! (colon-separated) or [`DEFAULT_PLUGIN_DIRS`]. The list in effect at `ADD` is kept in the
//! instance's record (`cni.json`) and used again for `DEL`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::cni::{self, ConfList, Invocation, PortMapping, ResultIp};
use super::{netns, Attached, NetError};

/// The namespace's bind mount in the instance's home.
pub const NETNS: &str = "netns";
/// What CNI `DEL` needs, in the instance's home.
pub const CNI_RECORD: &str = "cni.json";
/// The container's interface in the namespace (the guest's NIC gets its name).
pub const IFNAME: &str = "eth0";
/// Where crx's network configuration list is (and is installed when missing).
pub const DEFAULT_CONFLIST: &str = "/etc/crx/net.d/crx.conflist";
/// Where CNI plugins are looked for (Debian's containernetworking-plugins, then upstream's).
pub const DEFAULT_PLUGIN_DIRS: [&str; 2] = ["/usr/lib/cni", "/opt/cni/bin"];
/// The private /24 of the default `crx0` bridge.
pub const DEFAULT_SUBNET: &str = "10.66.0.0/24";

/// The default list: the `crx0` bridge (the gateway, masquerading outgoing traffic), an
/// address from host-local's range, portmap for published ports, and firewall rules that let
/// the bridge's traffic through the host's FORWARD chain.
pub const DEFAULT_CONFLIST_TEXT: &str = r#"{
  "cniVersion": "1.0.0",
  "name": "crx",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "crx0",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "routes": [{ "dst": "0.0.0.0/0" }],
        "ranges": [[{ "subnet": "10.66.0.0/24", "gateway": "10.66.0.1" }]]
      }
    },
    { "type": "portmap", "capabilities": { "portMappings": true }, "snat": true },
    { "type": "firewall" }
  ]
}
"#;

/// How an instance is networked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// The CNI network of crx's list (by default the `crx0` bridge).
    #[default]
    Bridge,
    /// Loopback only.
    None,
}

/// What `crx run` asks of the network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunNetwork {
    pub mode: NetworkMode,
    /// Published ports (`-p`).
    pub ports: Vec<PortMapping>,
}

/// What `DEL` needs, saved before `ADD` (a failed or interrupted `ADD` is undone too).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CniRecord {
    pub conflist: ConfList,
    pub container_id: String,
    pub ifname: String,
    pub plugin_dirs: Vec<PathBuf>,
    pub ports: Vec<PortMapping>,
    /// The result of `ADD`, once it succeeded.
    pub result: Option<Value>,
    /// Its addresses (`crx inspect`).
    pub ips: Vec<ResultIp>,
}

/// The list in effect: `$CRX_CNI_CONF` or [`DEFAULT_CONFLIST`], installed from
/// [`DEFAULT_CONFLIST_TEXT`] when the file is missing.
pub fn conflist() -> Result<ConfList, NetError> {
    let path =
        std::env::var_os("CRX_CNI_CONF").map_or_else(|| DEFAULT_CONFLIST.into(), PathBuf::from);
    install_default(&path)?;
    Ok(ConfList::load(&path)?)
}

/// Writes the default list at `path` unless a file is there.
pub fn install_default(path: &Path) -> Result<(), NetError> {
    if path.exists() {
        return Ok(());
    }
    let err = |source| NetError::Record {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    crate::paths::write_atomic(path, DEFAULT_CONFLIST_TEXT.as_bytes()).map_err(err)?;
    crate::paths::set_mode(path, 0o644).map_err(err)
}

/// The plugin directories: `$CRX_CNI_PATH` (colon-separated) or [`DEFAULT_PLUGIN_DIRS`].
pub fn plugin_dirs() -> Vec<PathBuf> {
    match std::env::var("CRX_CNI_PATH") {
        Ok(p) if !p.is_empty() => std::env::split_paths(&p).collect(),
        _ => DEFAULT_PLUGIN_DIRS.iter().map(PathBuf::from).collect(),
    }
}

/// Networks the instance `id` whose home is `dir` as `net` asks: nothing for `none` (the VM's
/// loopback), else its namespace, CNI `ADD` and the VM's taps. On error everything is undone.
pub fn setup(dir: &Path, id: &str, net: &RunNetwork) -> Result<Attached, NetError> {
    if net.mode == NetworkMode::None {
        return Ok(Attached::default());
    }
    setup_with(dir, id, &net.ports, conflist()?, plugin_dirs())
}

/// [`setup`] of a CNI network with the list `conflist` and plugins from `plugin_dirs`.
pub fn setup_with(
    dir: &Path,
    id: &str,
    ports: &[PortMapping],
    conflist: ConfList,
    plugin_dirs: Vec<PathBuf>,
) -> Result<Attached, NetError> {
    let rec = CniRecord {
        conflist,
        container_id: id.to_owned(),
        ifname: IFNAME.to_owned(),
        plugin_dirs,
        ports: ports.to_vec(),
        result: None,
        ips: Vec::new(),
    };
    let done = add_and_attach(dir, rec);
    if done.is_err() {
        let _ = teardown(dir);
    }
    done
}

fn add_and_attach(dir: &Path, mut rec: CniRecord) -> Result<Attached, NetError> {
    let ns = dir.join(NETNS);
    netns::create(&ns)?;
    let record = dir.join(CNI_RECORD);
    save(&record, &rec)?;
    let inv = invocation(&rec, &ns);
    let (raw, parsed) = cni::add(&rec.conflist, &inv, &rec.ports)?;
    rec.result = Some(raw);
    rec.ips = parsed.ips;
    save(&record, &rec)?;
    super::attach(&ns, &dir.join(super::RECORD))
}

fn invocation(rec: &CniRecord, netns: &Path) -> Invocation {
    Invocation {
        container_id: rec.container_id.clone(),
        netns: netns.to_owned(),
        ifname: rec.ifname.clone(),
        plugin_dirs: rec.plugin_dirs.clone(),
    }
}

/// Undoes [`setup`] for the home `dir`: the taps' tc redirects, CNI `DEL` (the address lease,
/// the bridge's veth, port forwarding and firewall rules), the namespace. Every step runs; the
/// first failure is returned (and the record kept, so that it can be tried again).
/// One at a time per home (a `flock` on the home directory itself): `crx rm -f` and the
/// instance's own monitor (whose boot fails when its VM is killed) may both tear down, and two
/// `DEL`s at once fail on each other's half-deleted veth.
pub fn teardown(dir: &Path) -> Result<(), NetError> {
    let home = match std::fs::File::open(dir) {
        Ok(f) => f,
        // The home is gone: removed by whoever tore it down first.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(NetError::Record {
                path: dir.to_owned(),
                source,
            })
        }
    };
    let _held =
        nix::fcntl::Flock::lock(home, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| {
            NetError::Record {
                path: dir.to_owned(),
                source: e.into(),
            }
        })?;
    let mut first = super::detach(&dir.join(super::RECORD)).err();
    let record = dir.join(CNI_RECORD);
    let ns = dir.join(NETNS);
    if let Some(rec) = load(&record)? {
        // A namespace already gone (its mount undone) is named as none: the plugins then
        // release what lives outside it alone.
        let alive = netns::open_if_alive(&ns, None).ok().flatten().is_some();
        let inv = invocation(&rec, if alive { &ns } else { Path::new("") });
        match cni::del(&rec.conflist, &inv, &rec.ports, rec.result.as_ref()) {
            Ok(()) => remove(&record)?,
            Err(e) => {
                first.get_or_insert(e.into());
            }
        }
    }
    if let Err(e) = netns::destroy(&ns) {
        first.get_or_insert(e);
    }
    first.map_or(Ok(()), Err)
}

/// The addresses CNI gave the instance whose home is `dir` (none without a network).
pub fn addresses(dir: &Path) -> Vec<ResultIp> {
    record(dir).map(|r| r.ips).unwrap_or_default()
}

/// The network record of the instance whose home is `dir`, if it has a CNI network.
pub fn record(dir: &Path) -> Option<CniRecord> {
    load(&dir.join(CNI_RECORD)).ok().flatten()
}

fn load(path: &Path) -> Result<Option<CniRecord>, NetError> {
    let err = |source| NetError::Record {
        path: path.to_owned(),
        source,
    };
    match std::fs::read(path) {
        Ok(t) => Ok(Some(serde_json::from_slice(&t).map_err(|e| err(e.into()))?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(err(e)),
    }
}

fn save(path: &Path, rec: &CniRecord) -> Result<(), NetError> {
    let err = |source| NetError::Record {
        path: path.to_owned(),
        source,
    };
    let text = serde_json::to_vec_pretty(rec).map_err(|e| err(e.into()))?;
    crate::paths::write_atomic(path, &text).map_err(err)
}

fn remove(path: &Path) -> Result<(), NetError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(NetError::Record {
            path: path.to_owned(),
            source: e,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod plugins;
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_list_parses_and_names_the_crx0_bridge_on_its_subnet() {
        let l = ConfList::parse(DEFAULT_CONFLIST_TEXT.as_bytes(), Path::new("d")).unwrap();
        assert_eq!(l.name, "crx");
        assert_eq!(l.plugins[0]["bridge"], "crx0");
        assert_eq!(
            l.plugins[0]["ipam"]["ranges"][0][0]["subnet"],
            DEFAULT_SUBNET
        );
        let types: Vec<&str> = l
            .plugins
            .iter()
            .map(|p| p["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["bridge", "portmap", "firewall"]);
    }

    #[test]
    fn install_default_writes_once_and_keeps_a_users_list() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("net.d/crx.conflist");
        install_default(&path).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            DEFAULT_CONFLIST_TEXT
        );
        std::fs::write(&path, "mine").unwrap();
        install_default(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "mine");
    }

    #[test]
    fn none_sets_up_nothing_and_teardown_of_nothing_is_success() {
        let d = tempfile::tempdir().unwrap();
        let net = RunNetwork {
            mode: NetworkMode::None,
            ports: Vec::new(),
        };
        let a = setup(d.path(), "id", &net).unwrap();
        assert!(a.nics.is_empty());
        teardown(d.path()).unwrap();
        assert!(addresses(d.path()).is_empty());
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }

    /// `crx rm -f` and a monitor whose boot failed may tear one home down at once: the second
    /// waits for the first; a home already removed is done.
    #[test]
    fn teardowns_of_one_home_take_turns() {
        use nix::fcntl::{Flock, FlockArg};
        let d = tempfile::tempdir().unwrap();
        let dir = std::fs::File::open(d.path()).unwrap();
        let held = Flock::lock(dir, FlockArg::LockExclusive).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let path = d.path().to_owned();
        std::thread::spawn(move || tx.send(teardown(&path).is_ok()).unwrap());
        let waited = rx.recv_timeout(std::time::Duration::from_millis(300));
        assert!(waited.is_err(), "ran while another teardown held the home");
        drop(held);
        let done = rx.recv_timeout(std::time::Duration::from_secs(10));
        assert_eq!(done, Ok(true));
        teardown(&d.path().join("gone")).unwrap();
    }
}
