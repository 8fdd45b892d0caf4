//! Read-only disk images of unpacked image trees: erofs (`mkfs.erofs`, erofs-utils) or ext4
//! (`mke2fs -d`, e2fsprogs). See docs/adr/0005-image-disk-format.md for the choice.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::str::FromStr;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{tool} not found (install the Debian package {package})")]
    ToolMissing {
        tool: &'static str,
        package: &'static str,
    },
    #[error("running {tool}")]
    Spawn {
        tool: &'static str,
        #[source]
        source: io::Error,
    },
    /// `stderr` is escaped (it may name files of the image).
    #[error("{tool} failed ({status}): {stderr}")]
    ToolFailed {
        tool: &'static str,
        status: ExitStatus,
        stderr: String,
    },
    #[error("measuring the tree {path:?}")]
    Walk {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("unknown disk format {0:?} (expected erofs or ext4)")]
    UnknownFormat(String),
}

/// The file system of an image's disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DiskFormat {
    /// erofs, uncompressed: the default (smaller and faster to build; see ADR 0004).
    Erofs,
    /// ext4 without a journal, built by `mke2fs -d`.
    Ext4,
}

impl DiskFormat {
    pub const DEFAULT: DiskFormat = DiskFormat::Erofs;

    /// The file-name extension of disks of this format.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Erofs => "erofs",
            Self::Ext4 => "ext4",
        }
    }

    /// The tool that builds it and the Debian package that has the tool.
    pub fn tool(self) -> (&'static str, &'static str) {
        match self {
            Self::Erofs => ("mkfs.erofs", "erofs-utils"),
            Self::Ext4 => ("mke2fs", "e2fsprogs"),
        }
    }
}

impl Default for DiskFormat {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Display for DiskFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.extension())
    }
}

impl FromStr for DiskFormat {
    type Err = DiskError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "erofs" => Ok(Self::Erofs),
            "ext4" => Ok(Self::Ext4),
            _ => Err(DiskError::UnknownFormat(s.to_owned())),
        }
    }
}

/// Holes (apparent size beyond the blocks allocated) from which an erofs disk stores its files
/// in chunks, so that holes stay holes (a flat erofs file stores every zero).
const SPARSE_TREE_HOLES: u64 = 64 << 20;

/// Builds a disk image of `tree` at `out` (overwritten), keeping owners, modes, times, hard
/// links, symlinks, device nodes and the holes of sparse files. The disk is readable by its
/// owner only (mode 0600), whatever the umask.
pub fn build_disk(format: DiskFormat, tree: &Path, out: &Path) -> Result<(), DiskError> {
    match format {
        DiskFormat::Erofs => {
            let usage = TreeUsage::measure(tree)?;
            let mut cmd = tool_command(format)?;
            cmd.arg("--quiet");
            if usage.bytes.saturating_sub(usage.blocks * 4096) >= SPARSE_TREE_HOLES {
                // Chunk-based files (Linux 5.15+): an all-hole chunk takes no space.
                cmd.arg("--chunksize=4096");
            }
            cmd.arg(out).arg(tree);
            run(format.tool().0, cmd)?;
        }
        DiskFormat::Ext4 => build_ext4(tree, out)?,
    }
    fs::set_permissions(out, fs::Permissions::from_mode(0o600)).map_err(|source| DiskError::Walk {
        path: out.to_owned(),
        source,
    })
}

fn build_ext4(tree: &Path, out: &Path) -> Result<(), DiskError> {
    let usage = TreeUsage::measure(tree)?;
    // Data blocks, one inode table slot and directory blocks per inode, plus ext4's fixed
    // overhead (superblocks, bitmaps, group descriptors), with slack for indirect blocks.
    let data = usage.blocks * 4096;
    let inodes = usage.inodes + 64;
    let mut size = data + data / 8 + inodes * 256 + usage.dirs * 4096 + (8 << 20);
    for _ in 0..4 {
        let _ = fs::remove_file(out);
        let mut cmd = tool_command(DiskFormat::Ext4)?;
        cmd.args(["-q", "-F", "-t", "ext4", "-b", "4096", "-m", "0"])
            .args(["-O", "^has_journal,^resize_inode"])
            .args(["-E", "lazy_itable_init=0,root_owner=0:0"])
            .arg("-N")
            .arg(inodes.to_string())
            .arg("-d")
            .arg(tree)
            .arg(out)
            .arg(format!("{}k", size.div_ceil(1024)));
        match run("mke2fs", cmd) {
            Ok(()) => return Ok(()),
            // The estimate was short: grow and retry.
            Err(DiskError::ToolFailed { stderr, .. })
                if stderr.contains("Could not allocate")
                    || stderr.contains("No space left")
                    || stderr.contains("Could not find") =>
            {
                size *= 2;
            }
            Err(e) => return Err(e),
        }
    }
    Err(DiskError::ToolFailed {
        tool: "mke2fs",
        status: ExitStatus::default(),
        stderr: "the tree did not fit after 4 size increases".into(),
    })
}

/// Space a tree needs: 4 KiB blocks of file data, inodes and directories.
#[derive(Debug, Default, Clone, Copy)]
pub struct TreeUsage {
    /// 4 KiB blocks of data: holes of sparse files take none.
    pub blocks: u64,
    pub inodes: u64,
    pub dirs: u64,
    /// Apparent size of the files (holes included).
    pub bytes: u64,
}

impl TreeUsage {
    pub fn measure(tree: &Path) -> Result<Self, DiskError> {
        let mut u = TreeUsage::default();
        let mut seen = std::collections::HashSet::new();
        let mut stack = vec![tree.to_path_buf()];
        let werr = |path: &Path| {
            let path = path.to_owned();
            move |source| DiskError::Walk { path, source }
        };
        while let Some(dir) = stack.pop() {
            u.dirs += 1;
            u.inodes += 1;
            for entry in fs::read_dir(&dir).map_err(werr(&dir))? {
                let entry = entry.map_err(werr(&dir))?;
                let m = entry.metadata().map_err(werr(&entry.path()))?;
                if m.is_dir() {
                    stack.push(entry.path());
                    continue;
                }
                if m.nlink() > 1 && !seen.insert((m.dev(), m.ino())) {
                    continue;
                }
                u.inodes += 1;
                u.bytes += m.len();
                // Allocated blocks, not the apparent size: holes are not stored.
                u.blocks += m.len().min(m.blocks() * 512).div_ceil(4096);
            }
        }
        Ok(u)
    }
}

fn tool_command(format: DiskFormat) -> Result<Command, DiskError> {
    let (tool, package) = format.tool();
    let found = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(tool))
        .chain(
            std::env::var_os("PATH")
                .map(|p| {
                    std::env::split_paths(&p)
                        .map(|d| d.join(tool))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default(),
        )
        .find(|p| p.is_file())
        .ok_or(DiskError::ToolMissing { tool, package })?;
    Ok(Command::new(found))
}

fn run(tool: &'static str, mut cmd: Command) -> Result<(), DiskError> {
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|source| DiskError::Spawn { tool, source })?;
    if out.status.success() {
        Ok(())
    } else {
        let mut stderr = crate::text::escape_bytes(out.stderr.trim_ascii());
        if stderr.is_empty() {
            stderr = crate::text::escape_bytes(out.stdout.trim_ascii());
        }
        Err(DiskError::ToolFailed {
            tool,
            status: out.status,
            stderr,
        })
    }
}
