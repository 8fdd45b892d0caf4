//! A strict `newc` reader: used by the tests and by `crx-initrd list` to check alignment.
//! It never panics on malformed input. Concatenated archives (NUL padding between a
//! `TRAILER!!!` and the next header, as the kernel accepts) are read as one sequence.

use crate::newc::{align_up, n_align, Header, HEADER_LEN, MAX_NAMESIZE, TRAILER};

/// Errors from reading an archive.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReadError {
    #[error("offset {0}: bad newc header (magic 070701 and hex fields expected)")]
    BadHeader(u64),
    #[error("offset {0}: entry runs past the end of the archive")]
    Truncated(u64),
    #[error("offset {0}: name size {1} out of range 1..=4096")]
    BadNameSize(u64, u32),
    #[error("offset {0}: name is not NUL-terminated or not UTF-8")]
    BadName(u64),
    #[error("offset {0}: non-NUL bytes after the trailer are not 4-byte aligned")]
    BrokenPadding(u64),
    #[error("archive ends without a TRAILER!!! entry")]
    NoTrailer,
}

/// One entry as found in an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedEntry {
    /// The name, trailing NULs removed.
    pub name: String,
    /// The header as stored.
    pub header: Header,
    /// Offset of the header in the archive.
    pub offset: u64,
    /// Offset of the data in the archive.
    pub data_offset: u64,
    /// The data (file contents, symlink target).
    pub data: Vec<u8>,
}

impl ParsedEntry {
    /// Whether this is the end-of-archive marker.
    pub fn is_trailer(&self) -> bool {
        self.name == TRAILER
    }
}

/// Parses every entry (trailers included) of one archive or of several concatenated ones.
pub fn parse(bytes: &[u8]) -> Result<Vec<ParsedEntry>, ReadError> {
    let mut out = Vec::new();
    let mut pos: u64 = 0;
    let len = bytes.len() as u64;
    let slice = |from: u64, n: u64| -> Option<&[u8]> {
        let end = from.checked_add(n)?;
        (end <= len).then(|| &bytes[from as usize..end as usize])
    };
    let mut after_trailer = false;
    loop {
        if after_trailer {
            while pos < len && bytes[pos as usize] == 0 {
                pos += 1;
            }
            if pos == len {
                return Ok(out);
            }
            if !pos.is_multiple_of(4) {
                return Err(ReadError::BrokenPadding(pos));
            }
        }
        let hb = slice(pos, HEADER_LEN).ok_or(if after_trailer || pos > 0 {
            ReadError::NoTrailer
        } else {
            ReadError::Truncated(pos)
        })?;
        let h = Header::decode(hb).ok_or(ReadError::BadHeader(pos))?;
        if h.namesize == 0 || u64::from(h.namesize) > MAX_NAMESIZE {
            return Err(ReadError::BadNameSize(pos, h.namesize));
        }
        let name_at = pos + HEADER_LEN;
        let raw = slice(name_at, u64::from(h.namesize)).ok_or(ReadError::Truncated(pos))?;
        if raw.last() != Some(&0) {
            return Err(ReadError::BadName(pos));
        }
        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        let name = std::str::from_utf8(&raw[..end]).map_err(|_| ReadError::BadName(pos))?;
        let data_offset = name_at + n_align(u64::from(h.namesize));
        let data = slice(data_offset, u64::from(h.filesize)).ok_or(ReadError::Truncated(pos))?;
        let e = ParsedEntry {
            name: name.to_string(),
            header: h,
            offset: pos,
            data_offset,
            data: data.to_vec(),
        };
        after_trailer = e.is_trailer();
        out.push(e);
        pos = align_up(data_offset + u64::from(h.filesize), 4);
        if !after_trailer && pos >= len {
            return Err(ReadError::NoTrailer);
        }
    }
}
