//! crx-initrd: reproducible `newc` (magic `070701`) initramfs archives in which the data of every
//! regular file starts on a 4 KiB boundary.
//!
//! The alignment is obtained by padding each file's name field with NULs (the kernel accepts a
//! `namesize` that counts trailing NULs; see `README.md` and [`newc`]), and, when the name cannot
//! be padded within `PATH_MAX`, by a harmless filler entry that re-states the file's parent
//! directory. Every archive is padded to 4 KiB so layers can be concatenated page-aligned.
#![forbid(unsafe_code)]

pub mod archive;
pub mod entry;
pub mod newc;
pub mod reader;
pub mod spec;

pub use archive::{Archive, ArchiveError, WriteOptions};
pub use entry::{Entry, EntryKind, FileSource};
pub use reader::{parse, ParsedEntry, ReadError};
pub use spec::{parse_spec, SpecError};

/// The page size every regular file's data is aligned to, and every archive is padded to.
pub const PAGE_SIZE: u64 = 4096;
