//! What an archive holds: entries keyed by a normalized path.

use std::path::PathBuf;

/// Where a regular file's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileSource {
    /// Read from this host file when the archive is written.
    Host(PathBuf),
    /// These bytes.
    Bytes(Vec<u8>),
}

/// The kind of an entry, with what each kind needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File(FileSource),
    Symlink(String),
    CharDev { major: u32, minor: u32 },
    BlockDev { major: u32, minor: u32 },
}

/// One archive entry. `mode` holds the permission bits (`0o7777`); the type bits come from `kind`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: EntryKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl Entry {
    /// A directory owned by root.
    pub fn dir(mode: u32) -> Entry {
        Entry::new(EntryKind::Dir, mode)
    }

    /// A regular file owned by root.
    pub fn file(source: FileSource, mode: u32) -> Entry {
        Entry::new(EntryKind::File(source), mode)
    }

    /// A symbolic link (mode 0777) owned by root.
    pub fn symlink(target: impl Into<String>) -> Entry {
        Entry::new(EntryKind::Symlink(target.into()), 0o777)
    }

    /// An entry of `kind` owned by root.
    pub fn new(kind: EntryKind, mode: u32) -> Entry {
        Entry {
            kind,
            mode: mode & 0o7777,
            uid: 0,
            gid: 0,
        }
    }

    /// Sets the owner.
    pub fn owned_by(mut self, uid: u32, gid: u32) -> Entry {
        self.uid = uid;
        self.gid = gid;
        self
    }

    /// The `newc` mode: type bits and permission bits.
    pub fn cpio_mode(&self) -> u32 {
        use crate::newc::*;
        let t = match self.kind {
            EntryKind::Dir => S_IFDIR,
            EntryKind::File(_) => S_IFREG,
            EntryKind::Symlink(_) => S_IFLNK,
            EntryKind::CharDev { .. } => S_IFCHR,
            EntryKind::BlockDev { .. } => S_IFBLK,
        };
        t | (self.mode & 0o7777)
    }
}

/// Normalizes an archive path: no leading `/`, no empty or `.` components. Returns `None` for
/// the root itself or for a path with a `..` component or a NUL byte.
pub fn normalize(path: &str) -> Option<String> {
    if path.contains('\0') {
        return None;
    }
    let mut parts = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => return None,
            c => parts.push(c),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// The parent of a normalized path (`None` for a top-level path).
pub fn parent(path: &str) -> Option<&str> {
    path.rfind('/').map(|i| &path[..i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes() {
        assert_eq!(normalize("/a//b/./c/").as_deref(), Some("a/b/c"));
        assert_eq!(normalize("/"), None);
        assert_eq!(normalize("a/../b"), None);
        assert_eq!(parent("a/b/c"), Some("a/b"));
        assert_eq!(parent("a"), None);
    }
}
