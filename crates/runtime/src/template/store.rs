//! The template cache: one directory per key under [`root`], published by rename, each with a
//! lock file beside it (`NAME.lock`: exclusive to build or remove it, shared while a VM is
//! restored from it), pruned by `crx gc` and a size limit.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use super::TemplateError;

/// The files of a published template.
pub const STATE: &str = "state";
pub const MEMORY: &str = "memory";
/// The empty disk the template booted with (its slot is the sandbox's disk after restore).
pub const PLACEHOLDER: &str = "placeholder";
/// The key's text.
pub const KEY: &str = "key";
/// Touched at each restore: the least recently used template is pruned first.
pub const USED: &str = "used";
/// Prefix of a build in progress (or left by a builder that died).
pub const STAGING: &str = ".staging-";

/// The mark of a key whose template failed to restore (`NAME.broken`).
pub fn broken_mark(root: &Path, name: &str) -> PathBuf {
    root.join(format!("{name}.broken"))
}

/// The cache: `$CRX_TEMPLATE_DIR`, else `/var/cache/crx/templates`.
pub fn root() -> PathBuf {
    std::env::var_os("CRX_TEMPLATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/crx/templates"))
}

/// The size limit of the cache in bytes allocated (`CRX_TEMPLATE_MAX_MIB`, default 4096).
pub fn limit_bytes() -> u64 {
    std::env::var("CRX_TEMPLATE_MAX_MIB")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(4096)
        << 20
}

fn io(p: &Path) -> impl FnOnce(std::io::Error) -> TemplateError + '_ {
    move |source| TemplateError::Io {
        path: p.to_owned(),
        source,
    }
}

/// A lock on template `name` (released when dropped).
pub struct Lock(#[allow(dead_code)] Flock<File>);

/// Locks template `name` under `root`: `exclusive` to build or remove it, else shared (a
/// restore). With `wait` false, `None` when another holds it.
pub fn lock(
    root: &Path,
    name: &str,
    exclusive: bool,
    wait: bool,
) -> Result<Option<Lock>, TemplateError> {
    let p = root.join(format!("{name}.lock"));
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
        .map_err(io(&p))?;
    let arg = match (exclusive, wait) {
        (true, true) => FlockArg::LockExclusive,
        (true, false) => FlockArg::LockExclusiveNonblock,
        (false, true) => FlockArg::LockShared,
        (false, false) => FlockArg::LockSharedNonblock,
    };
    match Flock::lock(f, arg) {
        Ok(l) => Ok(Some(Lock(l))),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) if !wait => Ok(None),
        Err((_, e)) => Err(io(&p)(e.into())),
    }
}

/// Whether `dir` holds a complete template (its state file is written last).
pub fn complete(dir: &Path) -> bool {
    std::fs::metadata(dir.join(STATE)).is_ok_and(|m| m.len() > 0)
}

/// One template in the cache.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub dir: PathBuf,
    /// Bytes allocated on disk (the memory file is sparse).
    pub bytes: u64,
    /// Last use (or publication), seconds since the epoch.
    pub used: i64,
    /// The key's text.
    pub key: String,
}

/// The complete templates under `root`, least recently used first.
pub fn list(root: &Path) -> Vec<Entry> {
    let Ok(rd) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut out: Vec<Entry> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_owned();
            let dir = e.path();
            if name.starts_with('.') || name.ends_with(".lock") || !complete(&dir) {
                return None;
            }
            let used = std::fs::metadata(dir.join(USED)).map_or(0, |m| m.mtime());
            Some(Entry {
                key: std::fs::read_to_string(dir.join(KEY)).unwrap_or_default(),
                bytes: allocated(&dir),
                name,
                dir,
                used,
            })
        })
        .collect();
    out.sort_by_key(|e| (e.used, e.name.clone()));
    out
}

/// Bytes allocated by the files of `dir`.
fn allocated(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.blocks() * 512)
                .sum()
        })
        .unwrap_or(0)
}

/// Marks `dir` used now.
pub fn touch(dir: &Path) {
    let _ = File::create(dir.join(USED));
}

/// Removes template `name` if no VM is being restored from it (VMs already running keep
/// their mapping of its memory file: it is unlinked, never truncated). Returns whether it went.
pub fn remove(root: &Path, name: &str) -> Result<bool, TemplateError> {
    let Some(_l) = lock(root, name, true, false)? else {
        return Ok(false);
    };
    let dir = root.join(name);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io(&dir)(e)),
    }
}

/// What [`prune`] removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Names of templates removed.
    pub removed: Vec<String>,
    /// Staging directories of dead builders removed.
    pub staging: usize,
    pub bytes_freed: u64,
}

/// Removes the templates `stale` says are out of date, the least recently used ones while the
/// cache is over `limit` bytes, staging directories no builder holds, and broken marks.
pub fn prune(
    root: &Path,
    limit: u64,
    stale: impl Fn(&Entry) -> bool,
) -> Result<Pruned, TemplateError> {
    let mut out = Pruned::default();
    let entries = list(root);
    let mut total: u64 = entries.iter().map(|e| e.bytes).sum();
    for e in &entries {
        if (stale(e) || total > limit) && remove(root, &e.name)? {
            total = total.saturating_sub(e.bytes);
            out.bytes_freed += e.bytes;
            out.removed.push(e.name.clone());
        }
    }
    if let Ok(rd) = std::fs::read_dir(root) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.ends_with(".broken") {
                let _ = std::fs::remove_file(e.path());
                continue;
            }
            let Some(rest) = n.strip_prefix(STAGING) else {
                continue;
            };
            // `.staging-NAME-PID`: gone when no builder holds NAME's lock.
            let name = rest.rsplit_once('-').map_or(rest, |(n, _)| n);
            if let Some(_l) = lock(root, name, true, false)? {
                if std::fs::remove_dir_all(e.path()).is_ok() {
                    out.staging += 1;
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(root: &Path, name: &str, bytes: usize, used: i64) {
        let d = root.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(STATE), b"s").unwrap();
        std::fs::write(d.join(MEMORY), vec![1u8; bytes]).unwrap();
        std::fs::write(d.join(KEY), format!("crx-template v1\nkernel={name}\n")).unwrap();
        touch(&d);
        let t = nix::sys::time::TimeSpec::new(used, 0);
        nix::sys::stat::utimensat(
            None,
            &d.join(USED),
            &t,
            &t,
            nix::sys::stat::UtimensatFlags::FollowSymlink,
        )
        .unwrap();
    }

    #[test]
    fn the_least_recently_used_go_first_until_under_the_limit() {
        let d = tempfile::tempdir().unwrap();
        fake(d.path(), "old", 64 << 10, 100);
        fake(d.path(), "mid", 64 << 10, 200);
        fake(d.path(), "new", 64 << 10, 300);
        // Incomplete: not listed, not counted.
        std::fs::create_dir(d.path().join("half")).unwrap();
        let names: Vec<_> = list(d.path()).into_iter().map(|e| e.name).collect();
        assert_eq!(names, ["old", "mid", "new"]);
        let p = prune(d.path(), 150 << 10, |_| false).unwrap();
        assert_eq!(p.removed, ["old"]);
        assert!(p.bytes_freed >= 64 << 10);
        let p = prune(d.path(), u64::MAX, |e| e.key.contains("kernel=new")).unwrap();
        assert_eq!(p.removed, ["new"]);
        let names: Vec<_> = list(d.path()).into_iter().map(|e| e.name).collect();
        assert_eq!(names, ["mid"]);
    }

    #[test]
    fn a_template_in_use_is_kept_and_a_dead_builders_staging_removed() {
        let d = tempfile::tempdir().unwrap();
        fake(d.path(), "busy", 4096, 1);
        let held = lock(d.path(), "busy", false, true).unwrap().unwrap();
        assert!(!remove(d.path(), "busy").unwrap());
        let p = prune(d.path(), 0, |_| true).unwrap();
        assert!(p.removed.is_empty());
        drop(held);
        std::fs::create_dir(d.path().join(".staging-abc-123")).unwrap();
        std::fs::create_dir(d.path().join(".staging-xyz-9")).unwrap();
        let building = lock(d.path(), "xyz", true, true).unwrap().unwrap();
        let p = prune(d.path(), 0, |_| true).unwrap();
        assert_eq!(
            (p.removed.as_slice(), p.staging),
            (&["busy".to_owned()][..], 1)
        );
        assert!(d.path().join(".staging-xyz-9").exists());
        drop(building);
    }
}
