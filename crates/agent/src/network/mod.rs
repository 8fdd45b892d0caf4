//! The guest's network: `lo` up at boot, and the interfaces and routes the host describes
//! (`Request::ConfigureNetwork`), applied with rtnetlink (no `ip` binary in the guest).

mod netlink;
#[cfg(test)]
#[allow(unsafe_code)] // a tap and a network namespace for the tests
mod tests;

use std::collections::HashMap;
use std::io;

use crx_proto::network::{parse_mac, NetworkConfig, NetworkConfigError};

pub use netlink::Netlink;

/// Why the network could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The description itself is wrong.
    #[error("invalid network description")]
    Invalid(#[source] NetworkConfigError),
    /// No interface has this MAC address (the VM has no such NIC).
    #[error("no interface has MAC address {0}")]
    NoSuchMac(String),
    /// A netlink request failed.
    #[error("{0}")]
    Netlink(String, #[source] io::Error),
}

impl NetworkError {
    /// How the agent reports it to the host.
    pub fn kind(&self) -> crx_proto::ErrorKind {
        match self {
            NetworkError::Invalid(_) => crx_proto::ErrorKind::InvalidRequest,
            NetworkError::NoSuchMac(_) => crx_proto::ErrorKind::NotFound,
            NetworkError::Netlink(..) => crx_proto::ErrorKind::Internal,
        }
    }
}

fn nl_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> NetworkError {
    let what = what.into();
    move |e| NetworkError::Netlink(what, e)
}

/// Brings the loopback interface up (every VM has one, described or not).
pub fn loopback_up() -> Result<(), NetworkError> {
    let mut nl = Netlink::open().map_err(nl_err("opening a netlink socket"))?;
    let links = nl.links().map_err(nl_err("listing links"))?;
    let lo = links
        .iter()
        .find(|l| l.name == "lo")
        .ok_or_else(|| NetworkError::Netlink("lo".into(), io::ErrorKind::NotFound.into()))?;
    nl.set_link(lo.index, Some(true), None, None)
        .map_err(nl_err("bringing lo up"))
}

/// Applies `cfg`: each interface found by MAC (its template's, in a VM restored from a
/// template: it then takes its own), renamed, its MTU set, up, its addresses added; then the
/// routes. Checked first: an invalid description changes nothing.
pub fn apply(cfg: &NetworkConfig) -> Result<(), NetworkError> {
    cfg.validate().map_err(NetworkError::Invalid)?;
    let mut nl = Netlink::open().map_err(nl_err("opening a netlink socket"))?;
    let links = nl.links().map_err(nl_err("listing links"))?;
    let mut index_of = HashMap::new();
    for iface in &cfg.interfaces {
        let mac = parse_mac(&iface.mac);
        let template = iface.template_mac.as_deref().and_then(parse_mac);
        let with = |m: Option<[u8; 6]>| links.iter().find(|l| m.is_some() && l.mac == m);
        // Found by the template's MAC, or by its own once it has it (applied again).
        let link = with(template)
            .or_else(|| with(mac))
            .ok_or_else(|| NetworkError::NoSuchMac(iface.mac.clone()))?;
        let i = link.index;
        let new_mac = mac.filter(|m| link.mac != Some(*m));
        if link.name != iface.name || new_mac.is_some() {
            // A link is renamed, and a virtio NIC given another MAC, only while down.
            nl.set_link(i, Some(false), None, None)
                .map_err(nl_err(format!("{}: down", link.name)))?;
        }
        if let Some(m) = new_mac {
            nl.set_address(i, m)
                .map_err(nl_err(format!("{}: MAC address {}", link.name, iface.mac)))?;
        }
        if link.name != iface.name {
            nl.set_link(i, None, Some(&iface.name), None)
                .map_err(nl_err(format!("{}: rename to {}", link.name, iface.name)))?;
        }
        if iface.mtu.is_some() {
            nl.set_link(i, None, None, iface.mtu)
                .map_err(nl_err(format!("{}: mtu", iface.name)))?;
        }
        nl.set_link(i, Some(true), None, None)
            .map_err(nl_err(format!("{}: up", iface.name)))?;
        for a in &iface.addresses {
            nl.add_address(i, a).map_err(nl_err(format!(
                "{}: address {}/{}",
                iface.name, a.addr, a.prefix_len
            )))?;
        }
        index_of.insert(iface.name.as_str(), i);
    }
    for (n, r) in cfg.routes.iter().enumerate() {
        // Validation made sure the interface is described.
        let Some(&i) = index_of.get(r.interface.as_str()) else {
            continue;
        };
        nl.add_route(i, r.destination, r.gateway)
            .map_err(nl_err(format!("route {n} via {}", r.interface)))?;
    }
    Ok(())
}
