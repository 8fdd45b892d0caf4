//! The virtio-net header (virtio 1.x `struct virtio_net_hdr_v1`, 12 bytes, little-endian) and
//! the checks a guest's TX header passes before its frame reaches the tap.
//!
//! The tap (opened with `IFF_VNET_HDR` and a 12-byte header size) reads the same layout: the
//! first ten bytes are `struct virtio_net_hdr`, the last two (`num_buffers`) it skips on write
//! and leaves untouched on read.

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_UFO,
    VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_GSO_UDP,
};
use vm_memory::{ByteValued, Le16};

/// Length of the header in front of every frame, both directions.
pub const HDR_LEN: usize = 12;
/// Offset of `num_buffers` in the header.
pub const NUM_BUFFERS_OFFSET: usize = 10;
/// An Ethernet header: the shortest frame worth sending.
pub const ETH_HLEN: usize = 14;

/// `struct virtio_net_hdr_v1`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct VnetHeader {
    /// `VIRTIO_NET_HDR_F_*`.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*`, possibly with the ECN bit.
    pub gso_type: u8,
    /// Length of the headers to copy into each segment (a hint).
    pub hdr_len: Le16,
    /// Payload bytes per segment.
    pub gso_size: Le16,
    /// Where checksumming starts, from the start of the frame.
    pub csum_start: Le16,
    /// Where the checksum goes, from `csum_start`.
    pub csum_offset: Le16,
    /// RX only: how many buffers the frame spans (mergeable receive buffers).
    pub num_buffers: Le16,
}

// SAFETY: `VnetHeader` is `repr(C)` and made of `u8`s and little-endian `u16`s laid out
// without padding (1 + 1 + 5 * 2 = 12 bytes), so every byte pattern is a valid value.
unsafe impl ByteValued for VnetHeader {}

impl VnetHeader {
    /// Parses the first [`HDR_LEN`] bytes of `buf` (`None` if shorter).
    pub fn parse(buf: &[u8]) -> Option<Self> {
        let bytes = buf.get(..HDR_LEN)?;
        Self::from_slice(bytes).copied()
    }
}

/// Why a guest's TX header is refused (the frame is dropped).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    /// A flag other than NEEDS_CSUM (DATA_VALID and RSC_INFO are for received frames).
    #[error("header flags {0:#x} are not valid on transmit")]
    Flags(u8),
    /// NEEDS_CSUM without VIRTIO_NET_F_CSUM negotiated.
    #[error("checksum offload used but not negotiated")]
    CsumNotNegotiated,
    /// The checksum field lies outside the frame.
    #[error("checksum at {start}+{offset} outside the {len}-byte frame")]
    CsumOutside {
        /// `csum_start`.
        start: u16,
        /// `csum_offset`.
        offset: u16,
        /// The frame's length.
        len: usize,
    },
    /// A GSO type (or the ECN bit) the driver did not negotiate.
    #[error("segmentation type {0:#x} not negotiated")]
    Gso(u8),
    /// Segmentation without a segment size.
    #[error("segmentation with a zero segment size")]
    GsoSize,
    /// Segmentation without NEEDS_CSUM (virtio 1.x 5.1.6.2: the driver must set it).
    #[error("segmentation without checksum offload")]
    GsoWithoutCsum,
    /// `hdr_len` beyond the frame.
    #[error("header length {0} beyond the {1}-byte frame")]
    HdrLen(u16, usize),
}

/// The transmit offloads the driver negotiated, each with its dependencies (virtio 1.x
/// 5.1.3.1: HOST_TSO4/6 and HOST_UFO need CSUM).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxOffloads {
    /// VIRTIO_NET_F_CSUM.
    pub csum: bool,
    /// VIRTIO_NET_F_HOST_TSO4.
    pub tso4: bool,
    /// VIRTIO_NET_F_HOST_TSO6.
    pub tso6: bool,
    /// VIRTIO_NET_F_HOST_UFO.
    pub ufo: bool,
}

impl TxOffloads {
    /// The offloads in `acked` features that the driver may use.
    pub fn from_features(acked: u64) -> Self {
        let has = |bit: u32| acked & (1 << bit) != 0;
        let csum = has(VIRTIO_NET_F_CSUM);
        Self {
            csum,
            tso4: csum && has(VIRTIO_NET_F_HOST_TSO4),
            tso6: csum && has(VIRTIO_NET_F_HOST_TSO6),
            ufo: csum && has(VIRTIO_NET_F_HOST_UFO),
        }
    }
}

/// Checks a TX header against the negotiated offloads and the length of the frame after it.
/// The kernel checks the header again when the tap gets it; this check makes the device's
/// answer independent of the host kernel and never lets an unnegotiated offload through.
pub fn check_tx(h: &VnetHeader, frame_len: usize, off: TxOffloads) -> Result<(), HeaderError> {
    let needs_csum = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
    if h.flags & !needs_csum != 0 {
        return Err(HeaderError::Flags(h.flags));
    }
    if h.flags & needs_csum != 0 {
        if !off.csum {
            return Err(HeaderError::CsumNotNegotiated);
        }
        let (start, offset) = (h.csum_start.to_native(), h.csum_offset.to_native());
        // The 16-bit checksum field must lie inside the frame.
        if usize::from(start) + usize::from(offset) + 2 > frame_len {
            return Err(HeaderError::CsumOutside {
                start,
                offset,
                len: frame_len,
            });
        }
    }
    let allowed = match u32::from(h.gso_type) {
        VIRTIO_NET_HDR_GSO_NONE => return Ok(()),
        VIRTIO_NET_HDR_GSO_TCPV4 => off.tso4,
        VIRTIO_NET_HDR_GSO_TCPV6 => off.tso6,
        VIRTIO_NET_HDR_GSO_UDP => off.ufo,
        // Other types, and the ECN bit (HOST_ECN is never offered).
        _ => false,
    };
    if !allowed {
        return Err(HeaderError::Gso(h.gso_type));
    }
    if h.gso_size.to_native() == 0 {
        return Err(HeaderError::GsoSize);
    }
    if h.flags & needs_csum == 0 {
        return Err(HeaderError::GsoWithoutCsum);
    }
    if usize::from(h.hdr_len.to_native()) > frame_len {
        return Err(HeaderError::HdrLen(h.hdr_len.to_native(), frame_len));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: TxOffloads = TxOffloads {
        csum: true,
        tso4: true,
        tso6: true,
        ufo: true,
    };

    fn hdr(flags: u8, gso_type: u8, gso_size: u16, start: u16, offset: u16) -> VnetHeader {
        VnetHeader {
            flags,
            gso_type,
            hdr_len: 54.into(),
            gso_size: gso_size.into(),
            csum_start: start.into(),
            csum_offset: offset.into(),
            num_buffers: 0.into(),
        }
    }

    #[test]
    fn plain_frames_pass_without_offloads() {
        assert_eq!(
            check_tx(&hdr(0, 0, 0, 0, 0), 60, TxOffloads::default()),
            Ok(())
        );
    }

    #[test]
    fn checksum_offload_needs_negotiation_and_a_field_inside_the_frame() {
        let h = hdr(1, 0, 0, 34, 16);
        assert_eq!(
            check_tx(&h, 60, TxOffloads::default()),
            Err(HeaderError::CsumNotNegotiated)
        );
        assert_eq!(check_tx(&h, 52, ALL), Ok(()));
        assert!(matches!(
            check_tx(&h, 51, ALL),
            Err(HeaderError::CsumOutside { .. })
        ));
        // Offsets that would overflow a u16 sum.
        assert!(matches!(
            check_tx(&hdr(1, 0, 0, u16::MAX, u16::MAX), 65_000, ALL),
            Err(HeaderError::CsumOutside { .. })
        ));
    }

    #[test]
    fn receive_only_flags_are_refused() {
        assert_eq!(
            check_tx(&hdr(2, 0, 0, 0, 0), 60, ALL),
            Err(HeaderError::Flags(2))
        );
        assert_eq!(
            check_tx(&hdr(0xff, 0, 0, 0, 0), 60, ALL),
            Err(HeaderError::Flags(0xff))
        );
    }

    #[test]
    fn segmentation_follows_the_negotiated_types() {
        let tcp4 = hdr(1, 1, 1448, 34, 16);
        assert_eq!(check_tx(&tcp4, 9000, ALL), Ok(()));
        let only_v6 = TxOffloads { tso4: false, ..ALL };
        assert_eq!(check_tx(&tcp4, 9000, only_v6), Err(HeaderError::Gso(1)));
        // ECN bit, unknown types, USO (5: not offered).
        for t in [0x81, 2, 5, 0x7f] {
            assert_eq!(
                check_tx(&hdr(1, t, 1448, 34, 16), 9000, ALL),
                Err(HeaderError::Gso(t))
            );
        }
        assert_eq!(
            check_tx(&hdr(1, 4, 0, 54, 16), 9000, ALL),
            Err(HeaderError::GsoSize)
        );
        assert_eq!(
            check_tx(&hdr(0, 4, 1448, 0, 0), 9000, ALL),
            Err(HeaderError::GsoWithoutCsum)
        );
        assert_eq!(
            check_tx(&hdr(1, 1, 1448, 34, 16), 53, ALL),
            Err(HeaderError::HdrLen(54, 53))
        );
    }

    #[test]
    fn offloads_need_their_dependencies() {
        use virtio_bindings::virtio_net::*;
        let tso_only = (1u64 << VIRTIO_NET_F_HOST_TSO4) | (1 << VIRTIO_NET_F_HOST_UFO);
        assert_eq!(TxOffloads::from_features(tso_only), TxOffloads::default());
        let with_csum = tso_only | (1 << VIRTIO_NET_F_CSUM);
        let off = TxOffloads::from_features(with_csum);
        assert!(off.csum && off.tso4 && off.ufo && !off.tso6);
    }

    #[test]
    fn parses_the_wire_layout() {
        let mut raw = [0u8; 14];
        raw[0] = 1;
        raw[1] = 4;
        raw[4..6].copy_from_slice(&1448u16.to_le_bytes());
        raw[10..12].copy_from_slice(&3u16.to_le_bytes());
        let h = VnetHeader::parse(&raw).unwrap();
        assert_eq!((h.flags, h.gso_type), (1, 4));
        assert_eq!(h.gso_size.to_native(), 1448);
        assert_eq!(h.num_buffers.to_native(), 3);
        assert_eq!(VnetHeader::parse(&raw[..11]), None);
    }
}
