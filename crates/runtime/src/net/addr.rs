//! The interfaces of a container's network namespace, their addresses and routes, read over
//! rtnetlink and turned into the description the guest applies (`configure_network`).
//!
//! What is handed on: each Ethernet interface but `lo` and taps (its MAC, name, MTU), its
//! global addresses (link-local ones the guest makes itself from the same MAC), and the main
//! table's unicast routes out of those interfaces, the default route included, but not the
//! routes the kernel derived from an address (the guest's kernel derives them again).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use crx_proto::network::{Interface, IpPrefix, NetworkConfig, Route, MAX_INTERFACES};
use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use rtnetlink::packet_route::link::{
    InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkLayerType, LinkMessage,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteType,
};
use rtnetlink::{Handle, RouteMessageBuilder};

use super::{nl_err, NetError};

/// An interface of the namespace that the VM connects to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Link {
    pub index: u32,
    pub name: String,
    pub mac: [u8; 6],
    pub mtu: u32,
}

impl Link {
    pub fn mac_string(&self) -> String {
        let m = self.mac;
        format!(
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }

    /// The MTU as crx-vmm's device offers it (68..=65535).
    pub fn mtu_u16(&self) -> u16 {
        u16::try_from(self.mtu).unwrap_or(u16::MAX).max(68)
    }
}

/// What a namespace holds: the interfaces to connect and the guest's description of them.
#[derive(Debug)]
pub(super) struct Found {
    pub links: Vec<Link>,
    pub guest: NetworkConfig,
}

/// Reads the interfaces, addresses and routes of the namespace the handle's socket is in
/// (`path`, named in errors).
pub(super) async fn read(h: &Handle, path: &Path) -> Result<Found, NetError> {
    let msgs: Vec<LinkMessage> = h
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(nl_err(path, "listing interfaces"))?;
    let links: Vec<Link> = msgs.iter().filter_map(link_of).collect();
    if links.len() > MAX_INTERFACES {
        return Err(NetError::TooManyInterfaces {
            path: path.to_owned(),
            count: links.len(),
            max: MAX_INTERFACES,
        });
    }
    let addrs: Vec<AddressMessage> = h
        .address()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(nl_err(path, "listing addresses"))?;
    let mut routes: Vec<RouteMessage> = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(nl_err(path, "listing IPv4 routes"))?;
    let v6: Result<Vec<RouteMessage>, _> = h
        .route()
        .get(RouteMessageBuilder::<Ipv6Addr>::new().build())
        .execute()
        .try_collect()
        .await;
    match v6 {
        Ok(r) => routes.extend(r),
        // A kernel without IPv6 has no IPv6 routes.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -nix::libc::EAFNOSUPPORT => {}
        Err(e) => return Err(nl_err(path, "listing IPv6 routes")(e)),
    }
    Ok(Found {
        guest: describe(&links, &addrs, &routes),
        links,
    })
}

/// The interface a link message describes, if the VM connects to it: an Ethernet interface
/// that is neither the loopback nor a tun/tap (ours, or another VM's), with a MAC.
pub(super) fn link_of(m: &LinkMessage) -> Option<Link> {
    if m.header.flags.contains(LinkFlags::Loopback)
        || m.header.link_layer_type != LinkLayerType::Ether
    {
        return None;
    }
    let (mut name, mut mac, mut mtu) = (None, None, 1500);
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Address(b) => mac = <[u8; 6]>::try_from(b.as_slice()).ok(),
            LinkAttribute::Mtu(v) => mtu = *v,
            LinkAttribute::LinkInfo(infos) if infos.contains(&LinkInfo::Kind(InfoKind::Tun)) => {
                return None
            }
            _ => {}
        }
    }
    let mac = mac.filter(|m| m.iter().any(|&b| b != 0))?;
    Some(Link {
        index: m.header.index,
        name: name?,
        mac,
        mtu,
    })
}

/// The interface index and address of a global address message (link-local and host
/// addresses are left out).
pub(super) fn address_of(m: &AddressMessage) -> Option<(u32, IpPrefix)> {
    if m.header.scope != AddressScope::Universe {
        return None;
    }
    let (mut local, mut address) = (None, None);
    for a in &m.attributes {
        match a {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            _ => {}
        }
    }
    // IFA_LOCAL is the interface's own address where both are given (point-to-point).
    let addr = local.or(address)?;
    let p = IpPrefix {
        addr,
        prefix_len: m.header.prefix_len,
    };
    p.is_valid().then_some((m.header.index, p))
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some((*v4).into()),
        RouteAddress::Inet6(v6) => Some((*v6).into()),
        _ => None,
    }
}

/// A main-table unicast route out of one of `links`, as the guest adds it; routes the kernel
/// derived from addresses, source-specific and multipath routes, and device-only default
/// routes are left out.
pub(super) fn route_of(m: &RouteMessage, links: &[Link]) -> Option<Route> {
    let h = &m.header;
    let main = m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Table(t) => Some(*t),
        _ => None,
    });
    if main.unwrap_or(u32::from(h.table)) != u32::from(RouteHeader::RT_TABLE_MAIN)
        || h.kind != RouteType::Unicast
        || h.protocol == RouteProtocol::Kernel
        || h.source_prefix_length != 0
    {
        return None;
    }
    let (mut dst, mut gateway, mut oif) = (None, None, None);
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => dst = Some(route_ip(d)?),
            RouteAttribute::Gateway(g) => gateway = Some(route_ip(g)?),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::MultiPath(_) => return None,
            _ => {}
        }
    }
    let interface = links.iter().find(|l| Some(l.index) == oif)?.name.clone();
    let destination = match (dst, h.destination_prefix_length) {
        (_, 0) => None,
        (Some(addr), prefix_len) => Some(IpPrefix { addr, prefix_len }),
        (None, _) => return None,
    };
    if destination.is_none() && gateway.is_none() {
        return None;
    }
    Some(Route {
        destination,
        gateway,
        interface,
    })
}

/// The guest's description of `links` with their addresses and routes.
pub(super) fn describe(
    links: &[Link],
    addrs: &[AddressMessage],
    routes: &[RouteMessage],
) -> NetworkConfig {
    let found: Vec<(u32, IpPrefix)> = addrs.iter().filter_map(address_of).collect();
    let interfaces = links
        .iter()
        .map(|l| Interface {
            mac: l.mac_string(),
            name: l.name.clone(),
            mtu: Some(l.mtu),
            addresses: found
                .iter()
                .filter(|(i, _)| *i == l.index)
                .map(|(_, p)| *p)
                .collect(),
            template_mac: None,
        })
        .collect();
    let mut routes: Vec<Route> = routes.iter().filter_map(|r| route_of(r, links)).collect();
    // Routes through a gateway need the route to the gateway first: direct ones first.
    routes.sort_by_key(|r| r.gateway.is_some());
    NetworkConfig { interfaces, routes }
}
