//! The network the host hands the guest (`Request::ConfigureNetwork`): each interface found by
//! its MAC address, renamed, given an MTU and addresses, then the routes (the default route
//! included). crx-init applies it with netlink; `lo` comes up whether or not this arrives.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Most interfaces, addresses per interface and routes one description may hold.
pub const MAX_INTERFACES: usize = 16;
/// See [`MAX_INTERFACES`].
pub const MAX_ADDRESSES: usize = 64;
/// See [`MAX_INTERFACES`].
pub const MAX_ROUTES: usize = 256;

/// An address with its prefix length (`10.0.0.2/24`, `fd00::2/64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpPrefix {
    /// The address.
    pub addr: IpAddr,
    /// Its prefix length (at most 32 for IPv4, 128 for IPv6).
    pub prefix_len: u8,
}

impl IpPrefix {
    /// Whether the prefix length fits the family.
    pub fn is_valid(&self) -> bool {
        self.prefix_len <= if self.addr.is_ipv4() { 32 } else { 128 }
    }
}

/// One guest interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// The MAC address that finds it (`02:00:00:00:00:01`).
    pub mac: String,
    /// The name it gets (`eth0`, or the veth's name in the container's network namespace).
    pub name: String,
    /// Its MTU; the device's own if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Its addresses, IPv4 and IPv6.
    #[serde(default)]
    pub addresses: Vec<IpPrefix>,
    /// For a VM restored from a template: the MAC its NIC had in the template, which finds
    /// it; it then takes `mac` (ADR 0017). Added after version 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_mac: Option<String>,
}

/// One route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// What it reaches; `None` is the default route (of the gateway's family).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<IpPrefix>,
    /// The next hop; `None` for a route to a directly attached network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// The interface (by its new name) the route goes out of.
    pub interface: String,
}

/// The whole description.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkConfig {
    /// The interfaces to configure; others are left alone.
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    /// Routes, added after every interface is up.
    #[serde(default)]
    pub routes: Vec<Route>,
}

/// Why a description is refused (before anything is changed).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NetworkConfigError {
    /// More entries than the limits allow.
    #[error("too many {0} (at most {1})")]
    TooMany(&'static str, usize),
    /// A MAC address that does not parse.
    #[error("interface {0}: MAC address `{1}` is not six hex bytes separated by colons")]
    Mac(usize, String),
    /// A name Linux would refuse.
    #[error(
        "interface {0}: name `{1}` must be 1 to 15 bytes without '/', ':', spaces, and not `lo`"
    )]
    Name(usize, String),
    /// Two interfaces with one MAC or one name.
    #[error("interface {0}: MAC or name also used by interface {1}")]
    Duplicate(usize, usize),
    /// An MTU outside 68..=65535.
    #[error("interface {0}: MTU {1} is outside 68..=65535")]
    Mtu(usize, u32),
    /// A prefix length too long for its family.
    #[error("{0}: prefix length {1} is too long for the address family")]
    Prefix(String, u8),
    /// A route out of an interface the description does not name.
    #[error("route {0}: interface `{1}` is not one of the described interfaces")]
    RouteInterface(usize, String),
    /// A default route needs a gateway; destination and gateway must be of one family.
    #[error("route {0}: a default route needs a gateway, of the destination's family")]
    RouteGateway(usize),
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut b = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut b {
        let p = parts.next().filter(|p| p.len() == 2)?;
        *byte = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(b)
}

fn name_ok(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name != "lo"
        && name != "."
        && name != ".."
        && !name.contains(|c: char| c == '/' || c == ':' || c.is_whitespace() || c == '\0')
}

impl NetworkConfig {
    /// Checks everything that can be checked without the guest's devices.
    pub fn validate(&self) -> Result<(), NetworkConfigError> {
        use NetworkConfigError as E;
        if self.interfaces.len() > MAX_INTERFACES {
            return Err(E::TooMany("interfaces", MAX_INTERFACES));
        }
        if self.routes.len() > MAX_ROUTES {
            return Err(E::TooMany("routes", MAX_ROUTES));
        }
        for (i, iface) in self.interfaces.iter().enumerate() {
            let mac = parse_mac(&iface.mac).ok_or_else(|| E::Mac(i, iface.mac.clone()))?;
            if let Some(t) = iface
                .template_mac
                .as_ref()
                .filter(|t| parse_mac(t).is_none())
            {
                return Err(E::Mac(i, t.clone()));
            }
            if !name_ok(&iface.name) {
                return Err(E::Name(i, iface.name.clone()));
            }
            let clash = self.interfaces[..i]
                .iter()
                .position(|o| o.name == iface.name || parse_mac(&o.mac) == Some(mac));
            if let Some(j) = clash {
                return Err(E::Duplicate(i, j));
            }
            if let Some(mtu) = iface.mtu.filter(|m| !(68..=65535).contains(m)) {
                return Err(E::Mtu(i, mtu));
            }
            if iface.addresses.len() > MAX_ADDRESSES {
                return Err(E::TooMany("addresses", MAX_ADDRESSES));
            }
            if let Some(a) = iface.addresses.iter().find(|a| !a.is_valid()) {
                return Err(E::Prefix(
                    format!("interface {i} address {}", a.addr),
                    a.prefix_len,
                ));
            }
        }
        for (i, r) in self.routes.iter().enumerate() {
            if !self.interfaces.iter().any(|f| f.name == r.interface) {
                return Err(E::RouteInterface(i, r.interface.clone()));
            }
            if let Some(d) = r.destination.filter(|d| !d.is_valid()) {
                return Err(E::Prefix(format!("route {i}"), d.prefix_len));
            }
            let ok = match (r.destination, r.gateway) {
                (None, None) => false,
                (Some(d), Some(g)) => d.addr.is_ipv4() == g.is_ipv4(),
                _ => true,
            };
            if !ok {
                return Err(E::RouteGateway(i));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> IpPrefix {
        let (a, l) = s.split_once('/').unwrap();
        IpPrefix {
            addr: a.parse().unwrap(),
            prefix_len: l.parse().unwrap(),
        }
    }

    fn good() -> NetworkConfig {
        NetworkConfig {
            interfaces: vec![Interface {
                mac: "02:00:00:00:00:01".into(),
                name: "eth0".into(),
                mtu: Some(1400),
                addresses: vec![p("10.0.0.2/24"), p("fd00::2/64")],
                template_mac: None,
            }],
            routes: vec![
                Route {
                    destination: None,
                    gateway: Some("10.0.0.1".parse().unwrap()),
                    interface: "eth0".into(),
                },
                Route {
                    destination: Some(p("192.168.0.0/16")),
                    gateway: None,
                    interface: "eth0".into(),
                },
            ],
        }
    }

    #[test]
    fn a_usual_description_passes_and_round_trips() {
        let c = good();
        c.validate().unwrap();
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<NetworkConfig>(&json).unwrap(), c);
        let req = crate::Request::ConfigureNetwork { network: c };
        let json = serde_json::to_string(&req).unwrap();
        assert!(json.contains(r#""op":"configure_network""#), "{json}");
        assert_eq!(serde_json::from_str::<crate::Request>(&json).unwrap(), req);
    }

    #[test]
    fn bad_descriptions_are_refused() {
        use NetworkConfigError as E;
        type Case = (fn(&mut NetworkConfig), E);
        let cases: Vec<Case> = vec![
            (
                |c| c.interfaces[0].mac = "02:00".into(),
                E::Mac(0, "02:00".into()),
            ),
            (
                |c| c.interfaces[0].template_mac = Some("zz".into()),
                E::Mac(0, "zz".into()),
            ),
            (
                |c| c.interfaces[0].name = "lo".into(),
                E::Name(0, "lo".into()),
            ),
            (
                |c| c.interfaces[0].name = "a/b".into(),
                E::Name(0, "a/b".into()),
            ),
            (|c| c.interfaces[0].mtu = Some(67), E::Mtu(0, 67)),
            (
                |c| c.interfaces[0].addresses.push(p("10.0.0.3/33")),
                E::Prefix("interface 0 address 10.0.0.3".into(), 33),
            ),
            (
                |c| {
                    let mut dup = c.interfaces[0].clone();
                    dup.name = "eth1".into();
                    c.interfaces.push(dup);
                },
                E::Duplicate(1, 0),
            ),
            (
                |c| c.routes[0].interface = "eth9".into(),
                E::RouteInterface(0, "eth9".into()),
            ),
            (|c| c.routes[0].gateway = None, E::RouteGateway(0)),
            (
                |c| c.routes[1].gateway = Some("fd00::1".parse().unwrap()),
                E::RouteGateway(1),
            ),
            (
                |c| c.routes = vec![c.routes[1].clone(); MAX_ROUTES + 1],
                E::TooMany("routes", MAX_ROUTES),
            ),
        ];
        for (change, want) in cases {
            let mut c = good();
            change(&mut c);
            assert_eq!(c.validate(), Err(want));
        }
    }
}
