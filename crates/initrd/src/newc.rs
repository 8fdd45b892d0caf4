//! The `newc` header format and the layout arithmetic that aligns file data.
//!
//! An entry is a 110-byte ASCII header (`070701` then thirteen 8-digit hex fields), the name
//! (`namesize` bytes, NUL included), NUL padding to a multiple of 4 counted from the start of the
//! header, the data (`filesize` bytes), then NUL padding to a multiple of 4.
//!
//! Linux's unpacker (`init/initramfs.c`, 6.12) reads `N_ALIGN(namesize)` name bytes, where
//! `N_ALIGN(len) = ((len + 1) & !3) + 2` (110 + `N_ALIGN` is a multiple of 4), requires only
//! `0 < namesize <= PATH_MAX` (4096) and `name[namesize - 1] == 0`, then uses the name as a C
//! string. So a name followed by extra NULs, counted in `namesize`, names the same file: that is
//! how the data of a file is pushed to the next 4 KiB boundary.

/// `newc` magic without checksums.
pub const MAGIC: &[u8; 6] = b"070701";
/// Length of a `newc` header.
pub const HEADER_LEN: u64 = 110;
/// Largest `namesize` the kernel accepts (`PATH_MAX`, NUL included).
pub const MAX_NAMESIZE: u64 = 4096;
/// The name of the entry that ends an archive.
pub const TRAILER: &str = "TRAILER!!!";

/// File type bits of `mode`.
pub const S_IFMT: u32 = 0o170_000;
/// Directory.
pub const S_IFDIR: u32 = 0o040_000;
/// Regular file.
pub const S_IFREG: u32 = 0o100_000;
/// Symbolic link.
pub const S_IFLNK: u32 = 0o120_000;
/// Character device.
pub const S_IFCHR: u32 = 0o020_000;
/// Block device.
pub const S_IFBLK: u32 = 0o060_000;

/// The kernel's `N_ALIGN`: bytes taken by a name of `namesize` bytes plus its padding.
pub const fn n_align(namesize: u64) -> u64 {
    ((namesize + 1) & !3) + 2
}

/// Rounds `v` up to a multiple of `to` (a power of two).
pub const fn align_up(v: u64, to: u64) -> u64 {
    (v + to - 1) & !(to - 1)
}

/// The header fields of one entry (the name is written separately).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    pub ino: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub mtime: u32,
    pub filesize: u32,
    pub devmajor: u32,
    pub devminor: u32,
    pub rdevmajor: u32,
    pub rdevminor: u32,
    pub namesize: u32,
    pub check: u32,
}

impl Header {
    /// The 110-byte ASCII encoding.
    pub fn encode(&self) -> [u8; HEADER_LEN as usize] {
        let fields = [
            self.ino,
            self.mode,
            self.uid,
            self.gid,
            self.nlink,
            self.mtime,
            self.filesize,
            self.devmajor,
            self.devminor,
            self.rdevmajor,
            self.rdevminor,
            self.namesize,
            self.check,
        ];
        let mut out = [0u8; HEADER_LEN as usize];
        out[..6].copy_from_slice(MAGIC);
        for (i, f) in fields.iter().enumerate() {
            let hex = format!("{f:08X}");
            out[6 + i * 8..14 + i * 8].copy_from_slice(hex.as_bytes());
        }
        out
    }

    /// Decodes a header; `None` if the magic or a hex field is malformed.
    pub fn decode(b: &[u8]) -> Option<Header> {
        if b.len() < HEADER_LEN as usize || &b[..6] != MAGIC {
            return None;
        }
        let mut f = [0u32; 13];
        for (i, slot) in f.iter_mut().enumerate() {
            let s = std::str::from_utf8(&b[6 + i * 8..14 + i * 8]).ok()?;
            *slot = u32::from_str_radix(s, 16).ok()?;
        }
        Some(Header {
            ino: f[0],
            mode: f[1],
            uid: f[2],
            gid: f[3],
            nlink: f[4],
            mtime: f[5],
            filesize: f[6],
            devmajor: f[7],
            devminor: f[8],
            rdevmajor: f[9],
            rdevminor: f[10],
            namesize: f[11],
            check: f[12],
        })
    }
}

/// The `namesize` to give a file entry whose header starts at `offset` (a multiple of 4) so that
/// its data starts on a `page` boundary, or `None` if the name (of `name_len` bytes, NUL not
/// counted) does not fit in the room left before that boundary within `MAX_NAMESIZE`.
///
/// The returned value `n` satisfies `offset + HEADER_LEN + n_align(n) ≡ 0 (mod page)` and
/// `n_align(n) == n`: the name field is the name, then NULs, with no further padding.
pub fn aligned_namesize(offset: u64, name_len: u64, page: u64) -> Option<u64> {
    debug_assert_eq!(offset % 4, 0);
    let room = (page - (offset + HEADER_LEN) % page) % page;
    // offset ≡ 0 and HEADER_LEN ≡ 2 (mod 4), so room ≡ 2 (mod 4) and n_align(room) == room.
    (room > name_len && room <= MAX_NAMESIZE).then_some(room)
}

/// Splits `gap` bytes of name fields between a filler entry and the file that follows it, so that
/// the filler's name field is at least `n_align(filler_min)` and the file's at least
/// `n_align(file_min)`, both `≡ 2 (mod 4)` and no larger than `MAX_NAMESIZE`.
/// Returns `(filler_namesize, file_namesize)` or `None` when impossible.
pub fn split_gap(gap: u64, filler_min: u64, file_min: u64) -> Option<(u64, u64)> {
    let fmin = n_align(filler_min);
    let nmin = n_align(file_min);
    if gap < fmin + nmin || !gap.is_multiple_of(4) {
        return None;
    }
    let max_field = MAX_NAMESIZE - 2; // largest value ≡ 2 (mod 4) not above MAX_NAMESIZE
    let file = (gap - fmin).min(max_field);
    let filler = gap - file;
    (filler <= max_field && file >= nmin).then_some((filler, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let h = Header {
            ino: 7,
            mode: S_IFREG | 0o755,
            nlink: 1,
            filesize: 0xdead_beef,
            namesize: 5,
            ..Header::default()
        };
        let enc = h.encode();
        assert_eq!(&enc[..6], b"070701");
        assert_eq!(Header::decode(&enc), Some(h));
    }

    #[test]
    fn n_align_matches_kernel() {
        for n in 1..5000u64 {
            let a = n_align(n);
            assert!(
                a >= n && (HEADER_LEN + a).is_multiple_of(4) && a - n < 4,
                "n={n} a={a}"
            );
        }
    }

    #[test]
    fn aligned_namesize_aligns() {
        for off in (0..3 * 4096u64).step_by(4) {
            for len in [1u64, 5, 60, 300] {
                if let Some(n) = aligned_namesize(off, len, 4096) {
                    assert_eq!(n_align(n), n);
                    assert!(n > len && n <= MAX_NAMESIZE);
                    assert_eq!((off + HEADER_LEN + n) % 4096, 0);
                }
            }
        }
    }

    #[test]
    fn split_gap_works() {
        for gap in (8..9000u64).step_by(4) {
            if let Some((a, b)) = split_gap(gap, 10, 20) {
                assert_eq!(a + b, gap);
                assert!(a % 4 == 2 && b % 4 == 2);
                assert!(a >= n_align(10) && b >= n_align(20));
                assert!(a <= MAX_NAMESIZE && b <= MAX_NAMESIZE);
            }
        }
    }
}
