//! The layer spec: a line format listing what a layer holds.
//!
//! ```text
//! # comment
//! dir     /PATH [MODE] [UID GID]
//! file    /PATH HOSTSRC [MODE] [UID GID]      # MODE defaults to the host file's
//! symlink /PATH TARGET [UID GID]
//! nod     /PATH MODE c|b MAJOR MINOR [UID GID]
//! tree    /PATH HOSTDIR                       # copy a host tree (host modes, owner root)
//! busybox /PATH HOSTSRC                       # busybox at PATH plus a symlink per applet
//! binary  /PATH HOSTSRC                       # a dynamic executable plus the libraries `ldd` lists
//! ```
//!
//! MODE is octal. `${NAME}` is replaced by a definition given to [`parse_spec`]; relative host
//! paths are relative to the spec file's directory.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::archive::{Archive, ArchiveError};
use crate::entry::{Entry, EntryKind, FileSource};

/// Errors from reading a layer spec.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("line {line}: {msg}")]
    Syntax { line: usize, msg: String },
    #[error("line {line}: `${{{name}}}` is not defined (pass -D {name}=VALUE)")]
    Undefined { line: usize, name: String },
    #[error("line {line}")]
    Archive {
        line: usize,
        #[source]
        source: ArchiveError,
    },
    #[error("line {line}: running `ldd {}` to list its libraries", .path.display())]
    Ldd {
        line: usize,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("line {line}: running `{} --list-full` to list busybox applets", .path.display())]
    Applets {
        line: usize,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Parses `text` (a spec whose relative host paths are relative to `base`) into an archive.
pub fn parse_spec(
    text: &str,
    base: &Path,
    defines: &BTreeMap<String, String>,
) -> Result<Archive, SpecError> {
    let mut a = Archive::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let content = raw.split('#').next().unwrap_or("");
        let expanded = expand(content, defines, line)?;
        let words: Vec<&str> = expanded.split_whitespace().collect();
        let Some((&cmd, args)) = words.split_first() else {
            continue;
        };
        apply(&mut a, cmd, args, base, line)?;
    }
    Ok(a)
}

fn syntax(line: usize, msg: impl Into<String>) -> SpecError {
    SpecError::Syntax {
        line,
        msg: msg.into(),
    }
}

fn expand(s: &str, defines: &BTreeMap<String, String>, line: usize) -> Result<String, SpecError> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let j = after
            .find('}')
            .ok_or_else(|| syntax(line, "unterminated `${`"))?;
        let name = &after[..j];
        let v = defines.get(name).ok_or_else(|| SpecError::Undefined {
            line,
            name: name.to_string(),
        })?;
        out.push_str(v);
        rest = &after[j + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn octal(s: &str, line: usize) -> Result<u32, SpecError> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| syntax(line, format!("bad mode {s:?} (octal, at most 7777)")))
}

fn number(s: &str, line: usize) -> Result<u32, SpecError> {
    s.parse()
        .map_err(|_| syntax(line, format!("bad number {s:?}")))
}

/// Optional trailing `UID GID`.
fn owner(rest: &[&str], line: usize) -> Result<(u32, u32), SpecError> {
    match rest {
        [] => Ok((0, 0)),
        [u, g] => Ok((number(u, line)?, number(g, line)?)),
        _ => Err(syntax(
            line,
            "trailing arguments (expected UID GID or nothing)",
        )),
    }
}

fn apply(
    a: &mut Archive,
    cmd: &str,
    args: &[&str],
    base: &Path,
    line: usize,
) -> Result<(), SpecError> {
    let host = |p: &str| base.join(p);
    let ar = |source| SpecError::Archive { line, source };
    match (cmd, args) {
        ("dir", [path, rest @ ..]) => {
            let (mode, rest) = match rest.split_first() {
                Some((m, r)) => (octal(m, line)?, r),
                None => (0o755, rest),
            };
            let (u, g) = owner(rest, line)?;
            a.insert(path, Entry::dir(mode).owned_by(u, g)).map_err(ar)
        }
        ("file", [path, src, rest @ ..]) => {
            let src = host(src);
            let (mode, rest) = match rest.split_first() {
                Some((m, r)) => (octal(m, line)?, r),
                None => {
                    use std::os::unix::fs::PermissionsExt;
                    let meta = fs::metadata(&src).map_err(|source| {
                        ar(ArchiveError::ReadSource {
                            path: src.clone(),
                            source,
                        })
                    })?;
                    (meta.permissions().mode() & 0o7777, rest)
                }
            };
            let (u, g) = owner(rest, line)?;
            let e = Entry::file(FileSource::Host(src), mode).owned_by(u, g);
            a.insert(path, e).map_err(ar)
        }
        ("symlink", [path, target, rest @ ..]) => {
            let (u, g) = owner(rest, line)?;
            a.insert(path, Entry::symlink(*target).owned_by(u, g))
                .map_err(ar)
        }
        ("nod", [path, mode, t, major, minor, rest @ ..]) => {
            let (major, minor) = (number(major, line)?, number(minor, line)?);
            let kind = match *t {
                "c" => EntryKind::CharDev { major, minor },
                "b" => EntryKind::BlockDev { major, minor },
                _ => return Err(syntax(line, "device type must be c or b")),
            };
            let (u, g) = owner(rest, line)?;
            let e = Entry::new(kind, octal(mode, line)?).owned_by(u, g);
            a.insert(path, e).map_err(ar)
        }
        ("tree", [path, src]) => a.add_host_tree(path, &host(src)).map_err(ar),
        ("busybox", [path, src]) => busybox(a, path, &host(src), line),
        ("binary", [path, src]) => binary(a, path, &host(src), line),
        _ => Err(syntax(
            line,
            format!(
                "unknown directive or wrong arguments: {cmd} {}",
                args.join(" ")
            ),
        )),
    }
}

/// Installs busybox at `path` and a symlink to it for every applet it lists, except where the
/// layer already has an entry.
fn busybox(a: &mut Archive, path: &str, src: &Path, line: usize) -> Result<(), SpecError> {
    let ar = |source| SpecError::Archive { line, source };
    let applets_err = |source| SpecError::Applets {
        line,
        path: src.to_path_buf(),
        source,
    };
    let out = Command::new(src)
        .arg("--list-full")
        .output()
        .map_err(applets_err)?;
    if !out.status.success() {
        return Err(applets_err(std::io::Error::other(format!(
            "exited with {}",
            out.status
        ))));
    }
    a.insert(path, Entry::file(FileSource::Host(src.into()), 0o755))
        .map_err(ar)?;
    let target = format!("/{}", path.trim_start_matches('/'));
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        let applet = applet.trim();
        if !applet.is_empty() {
            a.insert_if_absent(applet, Entry::symlink(target.as_str()))
                .map_err(ar)?;
        }
    }
    Ok(())
}

/// Installs the executable `src` at `path` (host mode) and each shared library `ldd` lists at its
/// host path (libraries already in the layer are kept). `ldd` may run the program's loader: only
/// use it on trusted binaries. A static executable has no libraries.
fn binary(a: &mut Archive, path: &str, src: &Path, line: usize) -> Result<(), SpecError> {
    use std::os::unix::fs::PermissionsExt;
    let ar = |source| SpecError::Archive { line, source };
    let ldd_err = |source| SpecError::Ldd {
        line,
        path: src.to_path_buf(),
        source,
    };
    let meta = fs::metadata(src).map_err(|source| {
        ar(ArchiveError::ReadSource {
            path: src.to_path_buf(),
            source,
        })
    })?;
    let out = Command::new("ldd").arg(src).output().map_err(ldd_err)?;
    let text = String::from_utf8_lossy(&out.stdout);
    let libs = if out.status.success() {
        ldd_paths(&text).map_err(|m| ldd_err(std::io::Error::other(m)))?
    } else if String::from_utf8_lossy(&out.stderr).contains("not a dynamic executable")
        || text.contains("statically linked")
    {
        Vec::new()
    } else {
        return Err(ldd_err(std::io::Error::other(format!(
            "exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))));
    };
    let mode = meta.permissions().mode() & 0o7777;
    a.insert(path, Entry::file(FileSource::Host(src.into()), mode))
        .map_err(ar)?;
    for lib in libs {
        let e = Entry::file(FileSource::Host(lib.clone()), 0o755);
        a.insert_if_absent(&lib.to_string_lossy(), e).map_err(ar)?;
    }
    Ok(())
}

/// The absolute library paths in `ldd` output; an unresolved library is an error.
pub fn ldd_paths(text: &str) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for l in text.lines() {
        let l = l.trim();
        let target = match l.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    return Err(format!("library {} not found", name.trim()));
                }
                rest
            }
            None => l,
        };
        let p = target.split_whitespace().next().unwrap_or("");
        if p.starts_with('/') {
            out.push(PathBuf::from(p));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ldd_output() {
        let t = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x7f)\n\t/lib64/ld-linux-x86-64.so.2 (0x7f)\n";
        assert_eq!(
            ldd_paths(t).unwrap(),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
        assert!(ldd_paths("\tlibfoo.so => not found\n").is_err());
    }
}
