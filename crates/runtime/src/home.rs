//! Instance homes: `<root>/instances/<id>/` holding `state.json`, `config.json` (the OCI spec),
//! `console.log` (the VM's serial console) and `vsock.sock` (the hybrid vsock socket).
//!
//! Homes are private, whatever the umask: the directories 0700, the files 0600 (`config.json`
//! holds the container's environment; crx-vmm makes its socket and console 0600 itself).

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{io, RuntimeError};
use crate::paths;
use crate::record::{Phase, Record, SandboxFiles};

/// crx's own data in the record's annotations: the instance's name, the image reference as
/// the user gave it, its manifest digest, and the container's command line (a JSON array).
pub const NAME: &str = "crx.name";
pub const IMAGE: &str = "crx.image";
pub const MANIFEST_DIGEST: &str = "crx.manifest-digest";
pub const COMMAND: &str = "crx.command";

/// The annotations that carry crx's data about an instance.
pub fn annotations(
    name: &str,
    image: &str,
    manifest_digest: &str,
    command: &[String],
) -> BTreeMap<String, String> {
    let command = serde_json::to_string(command).expect("strings serialize");
    [
        (NAME, name),
        (IMAGE, image),
        (MANIFEST_DIGEST, manifest_digest),
        (COMMAND, &command),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// An instance's state as `ps` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Home made, VMM not started yet.
    Created,
    /// The VMM is alive and no exit was recorded.
    Running,
    /// The container exited with this code (the VMM may still be shutting down).
    Exited(i32),
    /// The VMM is gone and no exit was recorded (a crash or `kill -9`).
    Dead,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Status::Created => write!(f, "created"),
            Status::Running => write!(f, "running"),
            Status::Exited(c) => write!(f, "exited ({c})"),
            Status::Dead => write!(f, "dead"),
        }
    }
}

/// One instance's home directory and its record.
#[derive(Debug, Clone)]
pub struct Home {
    pub dir: PathBuf,
    pub state: Record,
}

impl SandboxFiles for Home {
    fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Home {
    /// Creates a new home under `root` for an instance named `name` (its id when `None`).
    pub fn create(
        root: &Path,
        name: Option<&str>,
        image: &str,
        manifest_digest: &str,
        command: Vec<String>,
    ) -> Result<Home, RuntimeError> {
        let base = paths::instances_dir(root);
        paths::create_private_dir_all(&base).map_err(io(&base))?;
        // Names are checked and taken under a lock: two `run --name x` at once get one x.
        let lock_path = base.join(".lock");
        let lock_file = {
            use std::os::unix::fs::OpenOptionsExt;
            fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(&lock_path)
                .map_err(io(&lock_path))?
        };
        let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| io(&lock_path)(e.into()))?;
        if let Some(n) = name {
            if list(root)?.iter().any(|h| h.name() == n) {
                return Err(RuntimeError::NameInUse(n.to_owned()));
            }
        }
        let id = new_id()?;
        let dir = base.join(&id);
        paths::create_private_dir(&dir).map_err(io(&dir))?;
        let name = name.unwrap_or(&id);
        let annotations = annotations(name, image, manifest_digest, &command);
        let home = Home {
            dir,
            state: Record::new(&id, annotations),
        };
        home.save()?;
        Ok(home)
    }

    /// Loads the home in `dir`.
    pub fn load(dir: &Path) -> Result<Home, RuntimeError> {
        Ok(Home {
            dir: dir.to_owned(),
            state: Record::load(&dir.join("state.json"))?,
        })
    }

    /// Writes `state.json` ([`Record::save`]).
    pub fn save(&self) -> Result<(), RuntimeError> {
        Ok(self.write_record(&self.state)?)
    }

    /// The instance's name.
    pub fn name(&self) -> &str {
        self.annotation(NAME)
    }

    /// The image reference as the user gave it.
    pub fn image(&self) -> &str {
        self.annotation(IMAGE)
    }

    /// The image's manifest digest.
    pub fn manifest_digest(&self) -> &str {
        self.annotation(MANIFEST_DIGEST)
    }

    /// The container's command line.
    pub fn command(&self) -> Vec<String> {
        serde_json::from_str(self.annotation(COMMAND)).unwrap_or_default()
    }

    fn annotation(&self, key: &str) -> &str {
        self.state.annotations.get(key).map_or("", String::as_str)
    }

    /// Writes `config.json`, the OCI spec (private: it holds the container's environment).
    pub fn write_spec(&self, spec: &serde_json::Value) -> Result<(), RuntimeError> {
        let path = self.config_path();
        let text = serde_json::to_vec_pretty(spec).expect("json");
        paths::write_private(&path, &text).map_err(io(&path))
    }

    /// Records the VMM process, and this process as its monitor (the VMM's parent): the VM
    /// runs.
    pub fn set_vmm(&mut self, pid: u32) -> Result<(), RuntimeError> {
        self.state.set_vmm(pid);
        self.state.set_monitor(std::process::id());
        self.state.phase = Phase::Running;
        self.save()
    }

    /// Records the container's exit code.
    pub fn set_exit(&mut self, code: i32) -> Result<(), RuntimeError> {
        self.state.exit_code = Some(code);
        self.state.phase = Phase::Stopped;
        self.save()
    }

    /// Whether the recorded VMM process still runs (not a zombie, not a reused pid).
    pub fn vmm_alive(&self) -> bool {
        self.state.vmm_alive()
    }

    /// The status, by the VMM: crx's view of the record.
    pub fn status(&self) -> Status {
        match (self.state.exit_code, self.state.vmm_pid) {
            (Some(c), _) => Status::Exited(c),
            (None, None) => Status::Created,
            (None, Some(_)) if self.vmm_alive() => Status::Running,
            (None, Some(_)) => Status::Dead,
        }
    }

    /// Removes the home directory.
    pub fn remove(self) -> Result<(), RuntimeError> {
        // Its VMM's cgroup, and whatever still runs there (ADR 0011); best effort: a sweep
        // takes what is left.
        let _ = crate::jail::cgroup::remove(&self.dir.join("vm"));
        // Its binds' host mounts (`-v`) first: a volume is never removed recursively.
        crate::oci::rootfs::unbind_all(&self.dir)
            .map_err(|e| RuntimeError::Volumes(Box::new(e)))?;
        // Its network (CNI `DEL`, the namespace): a failure keeps the home, to be tried again.
        crate::net::run::teardown(&self.dir)?;
        match fs::remove_dir_all(&self.dir) {
            // Removed meanwhile by the instance's own monitor (a boot that failed when
            // `rm -f` killed its VM cleans up after itself): the goal is reached.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            r => r.map_err(io(&self.dir)),
        }
    }
}

/// Every home under `root`, oldest first; unreadable ones are skipped.
pub fn list(root: &Path) -> Result<Vec<Home>, RuntimeError> {
    let base = paths::instances_dir(root);
    let entries = match fs::read_dir(&base) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(&base)(e)),
    };
    let mut homes: Vec<Home> = entries
        .filter_map(Result::ok)
        .filter_map(|e| Home::load(&e.path()).ok())
        .collect();
    homes.sort_by(|a, b| (&a.state.created, &a.state.id).cmp(&(&b.state.created, &b.state.id)));
    Ok(homes)
}

/// The home whose id, id prefix (unique) or name is `key`.
pub fn find(root: &Path, key: &str) -> Result<Home, RuntimeError> {
    let homes = list(root)?;
    if let Some(h) = homes.iter().find(|h| h.state.id == key || h.name() == key) {
        return Ok(h.clone());
    }
    let mut prefixed = homes.into_iter().filter(|h| h.state.id.starts_with(key));
    match (prefixed.next(), prefixed.next()) {
        (Some(h), None) if !key.is_empty() => Ok(h),
        _ => Err(RuntimeError::NoSuchInstance(key.to_owned())),
    }
}

/// How long a home may stay without a VMM before `gc` counts it abandoned (a `crx run` killed
/// while it set the instance up).
pub const ABANDONED_AFTER_SECS: u64 = 600;

/// Removes the homes whose VMM is gone (crashed, killed, or exited), and homes that never got a
/// VMM and are older than [`ABANDONED_AFTER_SECS`]. Returns their ids.
pub fn gc(root: &Path) -> Result<Vec<String>, RuntimeError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut removed = Vec::new();
    for h in list(root)? {
        let gone = h.state.vmm_pid.is_some() && !h.vmm_alive();
        let age = now.saturating_sub(h.state.created_secs());
        let abandoned = h.state.vmm_pid.is_none() && age > ABANDONED_AFTER_SECS;
        if gone || abandoned {
            removed.push(h.state.id.clone());
            h.remove()?;
        }
    }
    Ok(removed)
}

/// A random 12-hex-digit id.
fn new_id() -> Result<String, RuntimeError> {
    let mut b = [0u8; 6];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(io("/dev/urandom"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn home(root: &Path, name: Option<&str>) -> Home {
        Home::create(root, name, "busybox", "sha256:ab", vec!["true".into()]).unwrap()
    }

    #[test]
    fn layout_and_state_round_trip() {
        let root = tempfile::tempdir().unwrap();
        let mut h = home(root.path(), Some("web"));
        assert_eq!(h.dir, root.path().join("instances").join(&h.state.id));
        assert_eq!(h.state.id.len(), 12);
        assert_eq!(h.console_path(), h.dir.join("console.log"));
        assert_eq!(h.status(), Status::Created);
        h.set_exit(3).unwrap();
        let back = Home::load(&h.dir).unwrap();
        assert_eq!(back.state, h.state);
        assert_eq!(back.status(), Status::Exited(3));
    }

    #[test]
    fn names_are_unique_and_found_by_prefix() {
        let root = tempfile::tempdir().unwrap();
        let h = home(root.path(), Some("web"));
        let e = Home::create(root.path(), Some("web"), "x", "d", vec![]).unwrap_err();
        assert!(matches!(e, RuntimeError::NameInUse(_)));
        assert_eq!(find(root.path(), "web").unwrap().state.id, h.state.id);
        assert_eq!(
            find(root.path(), &h.state.id[..5]).unwrap().state.id,
            h.state.id
        );
        assert!(matches!(
            find(root.path(), "nope"),
            Err(RuntimeError::NoSuchInstance(_))
        ));
    }

    #[test]
    fn live_pid_is_running_and_dead_pid_is_collected() {
        let root = tempfile::tempdir().unwrap();
        let mut live = home(root.path(), None);
        live.set_vmm(std::process::id()).unwrap();
        assert_eq!(live.status(), Status::Running);
        // A pid beyond pid_max (4194304) never exists.
        let mut dead = home(root.path(), None);
        dead.set_vmm(4_194_999).unwrap();
        assert_eq!(dead.status(), Status::Dead);
        // A live pid whose start time differs is a reused pid: dead.
        let mut reused = home(root.path(), None);
        reused.state.vmm_pid = Some(std::process::id());
        reused.state.vmm_start = Some(1);
        reused.save().unwrap();
        assert_eq!(reused.status(), Status::Dead);
        let never = home(root.path(), None);
        let mut abandoned = home(root.path(), None);
        let long_ago = SystemTime::now() - std::time::Duration::from_secs(ABANDONED_AFTER_SECS + 1);
        abandoned.state.created = crate::record::rfc3339(long_ago);
        abandoned.save().unwrap();
        let mut removed = gc(root.path()).unwrap();
        removed.sort();
        let mut want = vec![
            dead.state.id.clone(),
            reused.state.id.clone(),
            abandoned.state.id.clone(),
        ];
        want.sort();
        assert_eq!(removed, want);
        let left: Vec<_> = list(root.path())
            .unwrap()
            .into_iter()
            .map(|h| h.state.id)
            .collect();
        assert!(left.contains(&live.state.id) && left.contains(&never.state.id));
        assert_eq!(left.len(), 2);
    }

    #[test]
    fn concurrent_creates_of_one_name_give_one_home() {
        let root = tempfile::tempdir().unwrap();
        let ok: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| Home::create(root.path(), Some("same"), "i", "d", vec![]).is_ok())
                })
                .collect();
            handles
                .into_iter()
                .map(|h| usize::from(h.join().unwrap()))
                .sum()
        });
        assert_eq!(ok, 1);
        assert_eq!(list(root.path()).unwrap().len(), 1);
    }
}
