//! The redirect between an interface and its tap (Kata Containers' "tcfilter" scheme): an
//! ingress qdisc on each, and on each a u32 filter matching every frame with the action
//! `mirred egress redirect` to the other. A frame arriving on the veth leaves through the
//! tap (to crx-vmm, to the guest); a frame the guest sends enters the tap and leaves through
//! the veth. The namespace's own stack sees neither.

use std::io;
use std::path::Path;

use futures_util::TryStreamExt;
use rtnetlink::packet_core::{NetlinkMessage, NLM_F_ACK, NLM_F_REQUEST};
use rtnetlink::packet_route::link::{AfSpecInet6, AfSpecUnspec, In6AddrGenMode, LinkAttribute};
use rtnetlink::packet_route::tc::{TcHandle, TcMessage};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::{Handle, LinkUnspec};

use super::addr::Link;
use super::{nl_err, nl_io, LinkRecord, NetError};

/// The priority of our filters (tc's `pref`): what [`disconnect`] removes where the ingress
/// qdisc was there before us.
pub const PRIORITY: u16 = 0xc3c3;

/// `protocol all` as the kernel reads it from `tcm_info` (ETH_P_ALL in network order).
const ETH_P_ALL: u16 = 0x0003_u16.to_be();

/// `ffff:fff2`: the ingress hook, of an `ingress` qdisc or a `clsact` one.
const INGRESS_PARENT: TcHandle = TcHandle {
    major: 0xffff,
    minor: TcHandle::MIN_INGRESS,
};

/// Whether interface `index` has a qdisc on its ingress hook (`ingress` or `clsact`).
pub async fn has_ingress(h: &Handle, path: &Path, index: u32) -> Result<bool, NetError> {
    let qdiscs: Vec<TcMessage> = h
        .qdisc()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(nl_err(path, "listing qdiscs"))?;
    Ok(qdiscs
        .iter()
        .any(|q| q.header.index == index as i32 && q.header.parent == TcHandle::INGRESS))
}

/// The index of the interface named `name`, if there is one.
pub async fn index_of(h: &Handle, path: &Path, name: &str) -> Result<Option<u32>, NetError> {
    let found: Result<Vec<_>, _> = h
        .link()
        .get()
        .match_name(name)
        .execute()
        .try_collect()
        .await;
    match found {
        Ok(links) => Ok(links.first().map(|l| l.header.index)),
        Err(e) => match nl_io(e) {
            e if e.raw_os_error() == Some(nix::libc::ENODEV) => Ok(None),
            source => Err(NetError::Netlink {
                path: path.to_owned(),
                what: format!("looking up {name}"),
                source,
            }),
        },
    }
}

/// Brings the tap `rec.tap` up with `link`'s MTU and redirects between them both ways.
pub async fn connect(
    h: &Handle,
    path: &Path,
    link: &Link,
    rec: &LinkRecord,
) -> Result<(), NetError> {
    let tap = index_of(h, path, &rec.tap)
        .await?
        .ok_or_else(|| NetError::Tap {
            name: rec.tap.clone(),
            source: io::ErrorKind::NotFound.into(),
        })?;
    let what = |w: &str| format!("{}: {w}", rec.tap);
    quiet(h, tap)
        .await
        .map_err(nl_err(path, what("turning IPv6 address generation off")))?;
    h.link()
        .set(LinkUnspec::new_with_index(tap).mtu(link.mtu).up().build())
        .execute()
        .await
        .map_err(nl_err(path, what("setting the MTU and up")))?;
    h.qdisc()
        .add(tap as i32)
        .ingress()
        .execute()
        .await
        .map_err(nl_err(path, what("adding an ingress qdisc")))?;
    if rec.added_qdisc {
        h.qdisc()
            .add(link.index as i32)
            .ingress()
            .execute()
            .await
            .map_err(nl_err(
                path,
                format!("{}: adding an ingress qdisc", link.name),
            ))?;
    }
    redirect(h, path, link.index, tap, &link.name).await?;
    redirect(h, path, tap, link.index, &rec.tap).await
}

/// Keeps the tap from speaking for itself: without an IPv6 link-local address it sends no
/// router solicitation, DAD or MLD frame of its own to the guest. A kernel without IPv6 has
/// nothing to turn off.
async fn quiet(h: &Handle, tap: u32) -> Result<(), rtnetlink::Error> {
    let off =
        LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(vec![AfSpecInet6::AddrGenMode(
            In6AddrGenMode::None,
        )])]);
    let r = h
        .link()
        .set(
            LinkUnspec::new_with_index(tap)
                .append_extra_attribute(off)
                .build(),
        )
        .execute()
        .await;
    match r {
        Err(rtnetlink::Error::NetlinkError(e)) if -e.raw_code() == nix::libc::EAFNOSUPPORT => {
            Ok(())
        }
        r => r,
    }
}

/// Adds the filter on `from`'s ingress that sends every frame out of `to`.
async fn redirect(h: &Handle, path: &Path, from: u32, to: u32, name: &str) -> Result<(), NetError> {
    let what = || format!("{name}: adding the redirect filter");
    h.traffic_filter(from as i32)
        .add()
        .ingress()
        .priority(PRIORITY)
        .protocol(ETH_P_ALL)
        .redirect(to)
        .map_err(nl_err(path, what()))?
        .execute()
        .await
        .map_err(nl_err(path, what()))
}

/// Undoes [`connect`] as far as it is still there: the tap goes (with its qdisc and filter),
/// and on the interface (the same one: same name and index) the ingress qdisc we added, or
/// else our filter alone. A tap or interface already gone is fine.
pub async fn disconnect(h: &Handle, path: &Path, rec: &LinkRecord) -> Result<(), NetError> {
    if let Some(tap) = index_of(h, path, &rec.tap).await? {
        ignore_gone(h.link().del(tap).execute().await)
            .map_err(nl_err(path, format!("deleting tap {}", rec.tap)))?;
    }
    if index_of(h, path, &rec.name).await? != Some(rec.index) {
        return Ok(());
    }
    let mut msg = TcMessage::with_index(rec.index as i32);
    let request = if rec.added_qdisc {
        msg.header.parent = TcHandle::INGRESS;
        RouteNetlinkMessage::DelQueueDiscipline(msg)
    } else {
        msg.header.parent = INGRESS_PARENT;
        msg.header.info = (u32::from(PRIORITY) << 16) | u32::from(ETH_P_ALL);
        RouteNetlinkMessage::DelTrafficFilter(msg)
    };
    ignore_gone(ack(h, request).await)
        .map_err(nl_err(path, format!("{}: removing the redirect", rec.name)))
}

/// Sends `msg` and waits for the kernel's answer.
async fn ack(h: &Handle, msg: RouteNetlinkMessage) -> Result<(), rtnetlink::Error> {
    let mut req = NetlinkMessage::from(msg);
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    let mut answers = h.clone().request(req)?;
    while let Some(m) = futures_util::StreamExt::next(&mut answers).await {
        if let rtnetlink::packet_core::NetlinkPayload::Error(e) = m.payload {
            if e.code.is_some() {
                return Err(rtnetlink::Error::NetlinkError(e));
            }
        }
    }
    Ok(())
}

/// Success for an object that is already gone (ENOENT, ENODEV; EINVAL: a qdisc or filter
/// the kernel no longer finds under that parent).
fn ignore_gone(r: Result<(), rtnetlink::Error>) -> Result<(), rtnetlink::Error> {
    match r {
        Err(rtnetlink::Error::NetlinkError(e))
            if [nix::libc::ENOENT, nix::libc::ENODEV, nix::libc::EINVAL]
                .contains(&-e.raw_code()) =>
        {
            Ok(())
        }
        r => r,
    }
}
