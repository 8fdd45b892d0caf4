//! A pure virtio-blk request parser: descriptor chain in, typed request out, no disk I/O.
//!
//! The parser makes no assumption about framing (virtio 1.x, 2.7.4): the 16-byte header is
//! the first 16 readable bytes wherever the descriptors split them, the status is the last
//! writable byte, and the data is what lies between.

use virtio_queue::{Reader, Writer};
use vm_memory::{Address, ByteValued, GuestAddress, Le32, Le64};

use super::SECTOR_SIZE;
use crate::virtio::queue::{Chain, Mem};

/// The request header the driver puts first in each chain.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct RequestHeader {
    /// `VIRTIO_BLK_T_*`.
    pub type_: Le32,
    /// Reserved (ioprio in legacy devices).
    pub reserved: Le32,
    /// First sector of the transfer, in 512-byte units.
    pub sector: Le64,
}

// SAFETY: `RequestHeader` is `repr(C)`, made only of plain little-endian integers, and has no
// padding (4 + 4 + 8 bytes), so every byte pattern is a valid value.
unsafe impl ByteValued for RequestHeader {}

/// The operation a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestType {
    /// Read sectors into the guest's buffers.
    In,
    /// Write the guest's buffers to sectors.
    Out,
    /// Make previous writes durable.
    Flush,
    /// Return the device's serial (20 bytes).
    GetId,
    /// Any other type: answered with `S_UNSUPP`.
    Unsupported(u32),
}

impl From<u32> for RequestType {
    fn from(t: u32) -> Self {
        use virtio_bindings::virtio_blk::*;
        match t {
            VIRTIO_BLK_T_IN => Self::In,
            VIRTIO_BLK_T_OUT => Self::Out,
            VIRTIO_BLK_T_FLUSH => Self::Flush,
            VIRTIO_BLK_T_GET_ID => Self::GetId,
            other => Self::Unsupported(other),
        }
    }
}

/// Why a chain is not a valid request.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    /// The chain's buffers are not in guest memory or add up to more than 4 GiB.
    #[error("descriptor chain does not map to guest memory")]
    BadChain,
    /// Fewer than 16 readable bytes.
    #[error("request header shorter than 16 bytes")]
    ShortHeader,
    /// No writable byte for the status.
    #[error("no writable status byte")]
    NoStatus,
    /// The data length of a read or write is not a whole number of sectors.
    #[error("data length {0} is not a multiple of 512")]
    UnalignedLength(usize),
    /// A read or write of data in the wrong direction (e.g. IN with no writable data).
    #[error("data buffers have the wrong direction for {0:?}")]
    WrongDirection(RequestType),
}

/// A well-formed request, borrowing the guest's buffers.
pub struct Request<'a> {
    /// What to do.
    pub kind: RequestType,
    /// First sector (meaningful for IN/OUT).
    pub sector: u64,
    /// For OUT: the data to write.
    pub data_in: Reader<'a>,
    /// For IN and GET_ID: where to put the data.
    pub data_out: Writer<'a>,
}

impl Request<'_> {
    /// Length of the transfer in bytes.
    pub fn data_len(&self) -> usize {
        match self.kind {
            RequestType::Out => self.data_in.available_bytes(),
            _ => self.data_out.available_bytes(),
        }
    }
}

/// The result of parsing one chain: where the status goes (if anywhere) and the request.
pub struct Parsed<'a> {
    /// Guest address of the status byte: the last byte of the last writable descriptor.
    /// Known even when the rest of the chain is unusable, so errors can be reported.
    pub status: Option<GuestAddress>,
    /// The request, or why it is malformed.
    pub request: Result<Request<'a>, RequestError>,
}

/// Parses one descriptor chain. Never panics and never touches the disk.
pub fn parse_request<'a>(mem: &'a Mem, chain: Chain<'a>) -> Parsed<'a> {
    let status = chain
        .clone()
        .writable()
        .last()
        .filter(|d| d.len() > 0)
        .and_then(|d| d.addr().checked_add(u64::from(d.len()) - 1));
    let request = match (Reader::new(mem, chain.clone()), Writer::new(mem, chain)) {
        (Ok(mut reader), Ok(mut writer)) if status.is_some() => {
            // The data part is everything writable but the status byte.
            let len = writer.available_bytes();
            match writer.split_at(len.saturating_sub(1)) {
                Ok(_status) => parse_with(&mut reader, writer),
                Err(_) => Err(RequestError::BadChain),
            }
        }
        (Ok(_), Ok(_)) => Err(RequestError::NoStatus),
        _ => Err(RequestError::BadChain),
    };
    Parsed { status, request }
}

fn parse_with<'a>(
    reader: &mut Reader<'a>,
    data_out: Writer<'a>,
) -> Result<Request<'a>, RequestError> {
    let header: RequestHeader = reader.read_obj().map_err(|_| RequestError::ShortHeader)?;
    let kind = RequestType::from(header.type_.to_native());
    let data_in = reader.clone();
    let request = Request {
        kind,
        sector: header.sector.to_native(),
        data_in,
        data_out,
    };
    match kind {
        RequestType::In | RequestType::Out => {
            let (len, wrong) = if kind == RequestType::In {
                (
                    request.data_out.available_bytes(),
                    request.data_in.available_bytes() != 0,
                )
            } else {
                (
                    request.data_in.available_bytes(),
                    request.data_out.available_bytes() != 0,
                )
            };
            if wrong {
                return Err(RequestError::WrongDirection(kind));
            }
            if !(len as u64).is_multiple_of(SECTOR_SIZE) {
                return Err(RequestError::UnalignedLength(len));
            }
        }
        RequestType::GetId | RequestType::Flush | RequestType::Unsupported(_) => {}
    }
    Ok(request)
}
