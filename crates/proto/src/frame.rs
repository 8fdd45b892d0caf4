//! Length-prefixed frames: a `u32` big-endian payload length, then the payload.

use std::io::{self, Read, Write};

/// The largest payload a frame may carry (1 MiB). Checked before allocating on read and before
/// writing.
pub const MAX_FRAME_LEN: u32 = 1 << 20;

/// Errors reading or writing frames.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: u64, max: u32 },
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("frame I/O")]
    Io(#[source] io::Error),
}

/// Reads one frame. Returns `Ok(None)` on a clean end of stream (before the first length byte).
/// A length over [`MAX_FRAME_LEN`] is an error and nothing is read past the length; the stream
/// is then out of sync and should be closed.
pub fn read_frame<R: Read>(r: &mut R) -> Result<Option<Vec<u8>>, FrameError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(FrameError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    let len = u32::from_be_bytes(len);
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len: len.into(),
            max: MAX_FRAME_LEN,
        });
    }
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => FrameError::Truncated,
        _ => FrameError::Io(e),
    })?;
    Ok(Some(buf))
}

/// Writes one frame (length, then payload) and flushes.
pub fn write_frame<W: Write>(w: &mut W, payload: &[u8]) -> Result<(), FrameError> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|l| *l <= MAX_FRAME_LEN)
        .ok_or(FrameError::TooLarge {
            len: payload.len() as u64,
            max: MAX_FRAME_LEN,
        })?;
    let mut buf = Vec::with_capacity(4 + payload.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(payload);
    w.write_all(&buf).map_err(FrameError::Io)?;
    w.flush().map_err(FrameError::Io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bounds() {
        let mut v = Vec::new();
        write_frame(&mut v, b"hello").unwrap();
        write_frame(&mut v, b"").unwrap();
        let mut r = &v[..];
        assert_eq!(read_frame(&mut r).unwrap().unwrap(), b"hello");
        assert_eq!(read_frame(&mut r).unwrap().unwrap(), b"");
        assert!(read_frame(&mut r).unwrap().is_none());

        let mut r: &[u8] = &[0, 0];
        assert!(matches!(read_frame(&mut r), Err(FrameError::Truncated)));
        let mut r: &[u8] = &[0, 0, 0, 9, 1];
        assert!(matches!(read_frame(&mut r), Err(FrameError::Truncated)));
        // A 4 GiB length is refused without allocating.
        let mut r: &[u8] = &[0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            read_frame(&mut r),
            Err(FrameError::TooLarge { .. })
        ));
        let big = vec![0u8; MAX_FRAME_LEN as usize + 1];
        assert!(matches!(
            write_frame(&mut Vec::new(), &big),
            Err(FrameError::TooLarge { .. })
        ));
    }
}
