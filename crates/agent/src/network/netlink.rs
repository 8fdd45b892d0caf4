//! A small blocking rtnetlink client: one request at a time, replies collected until the
//! kernel's acknowledgement or the end of a dump.

use std::io;
use std::net::IpAddr;

use netlink_packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::Socket;

use crx_proto::network::IpPrefix;

/// One link as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Current name.
    pub name: String,
    /// Hardware address, when it is an Ethernet one.
    pub mac: Option<[u8; 6]>,
    /// Administratively up.
    pub up: bool,
    /// Current MTU.
    pub mtu: Option<u32>,
}

/// An open NETLINK_ROUTE socket.
pub struct Netlink {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

fn family(ip: &IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

impl Netlink {
    /// Opens and binds the socket.
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        Ok(Self {
            socket,
            seq: 0,
            buf: vec![0; 64 * 1024],
        })
    }

    /// Sends `msg` with `flags` and returns the messages of the reply.
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        let mut req = NetlinkMessage::from(msg);
        self.seq = self.seq.wrapping_add(1);
        req.header.flags = NLM_F_REQUEST | flags;
        req.header.sequence_number = self.seq;
        req.finalize();
        let mut out = vec![0; req.header.length as usize];
        req.serialize(&mut out);
        self.socket.send(&out, 0)?;
        let mut replies = Vec::new();
        loop {
            let n = self.socket.recv(&mut &mut self.buf[..], 0)?;
            let mut off = 0;
            while off < n {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[off..n])
                    .map_err(|e| io::Error::other(format!("malformed netlink reply: {e}")))?;
                let len = msg.header.length as usize;
                if msg.header.sequence_number == self.seq {
                    match msg.payload {
                        NetlinkPayload::Done(_) => return Ok(replies),
                        NetlinkPayload::Error(e) => {
                            return match e.code {
                                None => Ok(replies),
                                Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                            }
                        }
                        NetlinkPayload::InnerMessage(m) => replies.push(m),
                        _ => {}
                    }
                }
                if len == 0 {
                    break;
                }
                off += len;
            }
        }
    }

    /// Every link.
    pub fn links(&mut self) -> io::Result<Vec<Link>> {
        let replies = self.request(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link_of(l)),
                _ => None,
            })
            .collect())
    }

    /// Changes link `index`: `up` (when given), `name`, `mtu`.
    pub fn set_link(
        &mut self,
        index: u32,
        up: Option<bool>,
        name: Option<&str>,
        mtu: Option<u32>,
    ) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        if let Some(up) = up {
            m.header.change_mask |= LinkFlags::Up;
            if up {
                m.header.flags |= LinkFlags::Up;
            }
        }
        if let Some(name) = name {
            m.attributes.push(LinkAttribute::IfName(name.to_owned()));
        }
        if let Some(mtu) = mtu {
            m.attributes.push(LinkAttribute::Mtu(mtu));
        }
        self.request(RouteNetlinkMessage::SetLink(m), NLM_F_ACK)
            .map(drop)
    }

    /// Gives link `index` the MAC address `mac`.
    pub fn set_address(&mut self, index: u32, mac: [u8; 6]) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::Address(mac.to_vec()));
        self.request(RouteNetlinkMessage::SetLink(m), NLM_F_ACK)
            .map(drop)
    }

    /// Adds (or replaces) an address on link `index`.
    pub fn add_address(&mut self, index: u32, a: &IpPrefix) -> io::Result<()> {
        let mut m = AddressMessage::default();
        m.header.family = family(&a.addr);
        m.header.prefix_len = a.prefix_len;
        m.header.index = index;
        m.attributes.push(AddressAttribute::Local(a.addr));
        m.attributes.push(AddressAttribute::Address(a.addr));
        if let IpAddr::V4(v4) = a.addr {
            let host_bits = u32::MAX.checked_shr(u32::from(a.prefix_len)).unwrap_or(0);
            let brd = std::net::Ipv4Addr::from(u32::from(v4) | host_bits);
            m.attributes.push(AddressAttribute::Broadcast(brd));
        }
        self.request(
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(drop)
    }

    /// Every address of link `index` (the tests read back what `apply` did).
    #[cfg(test)]
    pub fn addresses(&mut self, index: u32) -> io::Result<Vec<IpPrefix>> {
        let replies = self.request(
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        for m in replies {
            let RouteNetlinkMessage::NewAddress(a) = m else {
                continue;
            };
            if a.header.index != index {
                continue;
            }
            for attr in &a.attributes {
                if let AddressAttribute::Address(ip) = attr {
                    out.push(IpPrefix {
                        addr: *ip,
                        prefix_len: a.header.prefix_len,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Adds (or replaces) a route in the main table out of link `index`: `dest` `None` is the
    /// default route of the gateway's family.
    pub fn add_route(
        &mut self,
        index: u32,
        dest: Option<IpPrefix>,
        gateway: Option<IpAddr>,
    ) -> io::Result<()> {
        let Some(fam_ip) = dest.map(|d| d.addr).or(gateway) else {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        };
        let mut m = RouteMessage::default();
        m.header.address_family = family(&fam_ip);
        m.header.destination_prefix_length = dest.map_or(0, |d| d.prefix_len);
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = RouteProtocol::Boot;
        m.header.scope = if gateway.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        m.header.kind = RouteType::Unicast;
        if let Some(d) = dest {
            m.attributes
                .push(RouteAttribute::Destination(RouteAddress::from(d.addr)));
        }
        if let Some(g) = gateway {
            m.attributes
                .push(RouteAttribute::Gateway(RouteAddress::from(g)));
        }
        m.attributes.push(RouteAttribute::Oif(index));
        self.request(
            RouteNetlinkMessage::NewRoute(m),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(drop)
    }

    /// The main table's routes out of link `index`, as (destination, gateway).
    #[cfg(test)]
    pub fn routes(&mut self, index: u32) -> io::Result<Vec<(Option<IpPrefix>, Option<IpAddr>)>> {
        let mut out = Vec::new();
        for fam in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut q = RouteMessage::default();
            q.header.address_family = fam;
            for m in self.request(RouteNetlinkMessage::GetRoute(q), NLM_F_DUMP)? {
                let RouteNetlinkMessage::NewRoute(r) = m else {
                    continue;
                };
                if r.header.table != RouteHeader::RT_TABLE_MAIN
                    || !r.attributes.contains(&RouteAttribute::Oif(index))
                {
                    continue;
                }
                let ip = |a: &RouteAddress| match a {
                    RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
                    RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
                    _ => None,
                };
                let mut dest = None;
                let mut gw = None;
                for a in &r.attributes {
                    match a {
                        RouteAttribute::Destination(d) => {
                            dest = ip(d).map(|addr| IpPrefix {
                                addr,
                                prefix_len: r.header.destination_prefix_length,
                            })
                        }
                        RouteAttribute::Gateway(g) => gw = ip(g),
                        _ => {}
                    }
                }
                out.push((dest, gw));
            }
        }
        Ok(out)
    }
}

fn link_of(l: LinkMessage) -> Link {
    let mut link = Link {
        index: l.header.index,
        name: String::new(),
        mac: None,
        up: l.header.flags.contains(LinkFlags::Up),
        mtu: None,
    };
    for a in l.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n,
            LinkAttribute::Address(b) => link.mac = <[u8; 6]>::try_from(b.as_slice()).ok(),
            LinkAttribute::Mtu(m) => link.mtu = Some(m),
            _ => {}
        }
    }
    link
}
