//! An offline image: Debian's static busybox (`/bin/busybox` from busybox-static) and its
//! applet links as one layer, with `Cmd ["sh"]`. Needs no registry.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::digest::Digest;
use crate::layout::{LayerBlob, LayoutError, LayoutWriter};
use crate::oci::RunConfig;

/// Where busybox-static installs it.
pub const DEFAULT_BUSYBOX: &str = "/bin/busybox";
const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, thiserror::Error)]
pub enum BusyboxError {
    #[error("{path} not found (install the Debian package busybox-static)")]
    Missing { path: PathBuf },
    #[error("{path} is dynamically linked (install the Debian package busybox-static, which replaces busybox)")]
    NotStatic { path: PathBuf },
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} --list-full failed")]
    List { path: PathBuf },
    #[error(transparent)]
    Layout(#[from] LayoutError),
}

/// Writes an OCI layout at `dest` holding one image named `ref_name` (e.g. `busybox:latest`)
/// built from the static busybox binary at `busybox`. Returns the manifest digest. The
/// layer is reproducible: owner root, mtime 0.
pub fn build_busybox_layout(
    busybox: &Path,
    dest: &Path,
    ref_name: &str,
) -> Result<Digest, BusyboxError> {
    let rerr = |source| BusyboxError::Read {
        path: busybox.to_owned(),
        source,
    };
    let binary = match fs::read(busybox) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(BusyboxError::Missing {
                path: busybox.to_owned(),
            })
        }
        Err(e) => return Err(rerr(e)),
    };
    if !is_static_elf(&binary) {
        return Err(BusyboxError::NotStatic {
            path: busybox.to_owned(),
        });
    }
    let out = Command::new(busybox)
        .arg("--list-full")
        .output()
        .map_err(rerr)?;
    if !out.status.success() {
        return Err(BusyboxError::List {
            path: busybox.to_owned(),
        });
    }
    let mut applets: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().trim_start_matches('/').to_owned())
        .filter(|l| !l.is_empty() && !l.contains("..") && l != "bin/busybox")
        .collect();
    applets.sort();
    applets.dedup();

    let tar = layer_tar(&binary, &applets).map_err(rerr)?;
    let mut w = LayoutWriter::create(dest)?;
    let run = RunConfig {
        entrypoint: None,
        cmd: Some(vec!["sh".into()]),
        env: Some(vec![PATH_ENV.into()]),
        working_dir: Some("/".into()),
        user: None,
    };
    let digest = w.add_image(Some(ref_name), &run, &[LayerBlob::gzip(&tar)])?;
    w.finish()?;
    Ok(digest)
}

fn layer_tar(binary: &[u8], applets: &[String]) -> io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(size);
        h
    };
    let mut dirs: Vec<String> = [
        "bin", "dev", "etc", "home", "proc", "root", "run", "sbin", "sys", "tmp", "usr", "usr/bin",
        "usr/sbin", "var", "var/tmp",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for a in applets {
        let mut p = Path::new(a).parent();
        while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
            dirs.push(d.to_string_lossy().into_owned());
            p = d.parent();
        }
    }
    dirs.sort();
    dirs.dedup();
    for d in &dirs {
        let mode = if d == "tmp" || d == "var/tmp" {
            0o1777
        } else if d == "root" {
            0o700
        } else {
            0o755
        };
        let mut h = header(tar::EntryType::Directory, mode, 0);
        b.append_data(&mut h, format!("{d}/"), io::empty())?;
    }
    let mut h = header(tar::EntryType::Regular, 0o755, binary.len() as u64);
    b.append_data(&mut h, "bin/busybox", binary)?;
    for a in applets {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        b.append_link(&mut h, a, "/bin/busybox")?;
    }
    let files: [(&str, &str); 4] = [
        (
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        ),
        ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
        ("etc/hostname", "busybox\n"),
        ("etc/hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost\n"),
    ];
    for (name, content) in files {
        let mut h = header(tar::EntryType::Regular, 0o644, content.len() as u64);
        b.append_data(&mut h, name, content.as_bytes())?;
    }
    b.into_inner()
}

/// True for an ELF file with no `PT_INTERP` program header (statically linked).
fn is_static_elf(b: &[u8]) -> bool {
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 || b[5] != 1 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(b[32..40].try_into().expect("8 bytes")) as usize;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    (0..phnum).all(|i| {
        let o = phoff + i * phentsize;
        o + 4 <= b.len() && u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes")) != 3
    })
}
