//! Instance homes: `<root>/instances/<id>/` holding `state.json`, `config.json` (the OCI spec),
//! `console.log` (the VM's serial console) and `vsock.sock` (the hybrid vsock socket).
//!
//! Homes are private, whatever the umask: the directories 0700, the files 0600 (`config.json`
//! holds the container's environment; crx-vmm makes its socket and console 0600 itself).

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{io, RuntimeError};
use crate::paths;

/// The version of `state.json`'s format this runtime writes (a record without one is 1).
pub const STATE_VERSION: u32 = 1;

fn version_1() -> u32 {
    1
}

/// What `state.json` records about an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceState {
    /// The format's version ([`STATE_VERSION`]); a newer one is refused, never misread.
    #[serde(default = "version_1")]
    pub version: u32,
    pub id: String,
    pub name: String,
    /// The image reference as the user gave it.
    pub image: String,
    pub manifest_digest: String,
    /// The container's command line.
    pub command: Vec<String>,
    /// Seconds since the epoch.
    pub created: u64,
    pub detached: bool,
    /// The crx-vmm process and its start time (clock ticks after boot, from /proc), which tells
    /// it apart from a later process that reused the pid.
    pub vmm_pid: Option<u32>,
    pub vmm_start_time: Option<u64>,
    /// The container's exit code once seen.
    pub exit_code: Option<i32>,
    /// The kernel and base initrd the VM boots, with their verified sha256 digests (ADR 0008).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<crate::boot_files::BootDigests>,
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

/// One instance's home directory.
#[derive(Debug, Clone)]
pub struct Home {
    pub dir: PathBuf,
    pub state: InstanceState,
}

impl Home {
    pub fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }
    pub fn spec_path(&self) -> PathBuf {
        self.dir.join("config.json")
    }
    pub fn console_path(&self) -> PathBuf {
        self.dir.join("console.log")
    }
    pub fn vsock_path(&self) -> PathBuf {
        // In the VM's own directory: a jailed VMM's root (crate::jail).
        self.dir.join("vm").join("vsock.sock")
    }

    /// Creates a new home under `root` for an instance named `name` (its id when `None`).
    pub fn create(
        root: &Path,
        name: Option<&str>,
        image: &str,
        manifest_digest: &str,
        command: Vec<String>,
        detached: bool,
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
            if list(root)?.iter().any(|h| h.state.name == n) {
                return Err(RuntimeError::NameInUse(n.to_owned()));
            }
        }
        let id = new_id()?;
        let dir = base.join(&id);
        paths::create_private_dir(&dir).map_err(io(&dir))?;
        let home = Home {
            dir,
            state: InstanceState {
                version: STATE_VERSION,
                name: name.map_or_else(|| id.clone(), str::to_owned),
                id,
                image: image.to_owned(),
                manifest_digest: manifest_digest.to_owned(),
                command,
                created: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                detached,
                vmm_pid: None,
                vmm_start_time: None,
                exit_code: None,
                boot: None,
            },
        };
        home.save()?;
        Ok(home)
    }

    /// Loads the home in `dir`.
    pub fn load(dir: &Path) -> Result<Home, RuntimeError> {
        let path = dir.join("state.json");
        let text = fs::read(&path).map_err(io(&path))?;
        let state: InstanceState = serde_json::from_slice(&text)
            .and_then(|s: InstanceState| match s.version {
                v if v > STATE_VERSION => Err(serde::de::Error::custom(format!(
                    "format version {v} is newer than this crx's {STATE_VERSION}"
                ))),
                _ => Ok(s),
            })
            .map_err(|source| RuntimeError::CorruptState { path, source })?;
        Ok(Home {
            dir: dir.to_owned(),
            state,
        })
    }

    /// Writes `state.json` atomically and durably ([`paths::write_atomic`]).
    pub fn save(&self) -> Result<(), RuntimeError> {
        let path = self.state_path();
        let text = serde_json::to_vec_pretty(&self.state).expect("state serializes");
        paths::write_atomic(&path, &text).map_err(io(&path))
    }

    /// Writes `config.json`, the OCI spec (private: it holds the container's environment).
    pub fn write_spec(&self, spec: &serde_json::Value) -> Result<(), RuntimeError> {
        let path = self.spec_path();
        let text = serde_json::to_vec_pretty(spec).expect("json");
        paths::write_private(&path, &text).map_err(io(&path))
    }

    /// Records the VMM process.
    pub fn set_vmm(&mut self, pid: u32) -> Result<(), RuntimeError> {
        self.state.vmm_pid = Some(pid);
        self.state.vmm_start_time = process_start_time(pid);
        self.save()
    }

    /// Records the container's exit code.
    pub fn set_exit(&mut self, code: i32) -> Result<(), RuntimeError> {
        self.state.exit_code = Some(code);
        self.save()
    }

    /// Whether the recorded VMM process still runs (not a zombie, not a reused pid).
    pub fn vmm_alive(&self) -> bool {
        match self.state.vmm_pid {
            Some(pid) => {
                pid_alive(pid)
                    && (self.state.vmm_start_time.is_none()
                        || process_start_time(pid) == self.state.vmm_start_time)
            }
            None => false,
        }
    }

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
    homes.sort_by(|a, b| (a.state.created, &a.state.id).cmp(&(b.state.created, &b.state.id)));
    Ok(homes)
}

/// The home whose id, id prefix (unique) or name is `key`.
pub fn find(root: &Path, key: &str) -> Result<Home, RuntimeError> {
    let homes = list(root)?;
    if let Some(h) = homes
        .iter()
        .find(|h| h.state.id == key || h.state.name == key)
    {
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
        let abandoned =
            h.state.vmm_pid.is_none() && now.saturating_sub(h.state.created) > ABANDONED_AFTER_SECS;
        if gone || abandoned {
            removed.push(h.state.id.clone());
            h.remove()?;
        }
    }
    Ok(removed)
}

/// Whether `pid` is a live (non-zombie) process.
pub fn pid_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !matches!(stat_fields(&s).first(), Some(&"Z") | Some(&"X")),
        Err(_) => false,
    }
}

/// Field 22 of `/proc/PID/stat` (start time in clock ticks).
pub fn process_start_time(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_fields(&s).get(19)?.parse().ok()
}

/// The fields of a stat line after `(comm)`: state is index 0.
fn stat_fields(s: &str) -> Vec<&str> {
    s.rfind(')')
        .map(|i| s[i + 1..].split_whitespace().collect())
        .unwrap_or_default()
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
        Home::create(
            root,
            name,
            "busybox",
            "sha256:ab",
            vec!["true".into()],
            false,
        )
        .unwrap()
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

    /// A record without a version (an older crx's) is version 1; a newer one is refused.
    #[test]
    fn state_is_versioned() {
        let root = tempfile::tempdir().unwrap();
        let h = home(root.path(), None);
        let mut v: serde_json::Value =
            serde_json::from_slice(&fs::read(h.state_path()).unwrap()).unwrap();
        assert_eq!(v["version"], STATE_VERSION);
        v.as_object_mut().unwrap().remove("version");
        fs::write(h.state_path(), v.to_string()).unwrap();
        assert_eq!(Home::load(&h.dir).unwrap().state.version, 1);
        v["version"] = (STATE_VERSION + 1).into();
        fs::write(h.state_path(), v.to_string()).unwrap();
        let e = Home::load(&h.dir).unwrap_err();
        assert!(crx_proto::chain(&e).contains("newer"), "{e}");
    }

    #[test]
    fn names_are_unique_and_found_by_prefix() {
        let root = tempfile::tempdir().unwrap();
        let h = home(root.path(), Some("web"));
        let e = Home::create(root.path(), Some("web"), "x", "d", vec![], false).unwrap_err();
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
        reused.state.vmm_start_time = Some(1);
        reused.save().unwrap();
        assert_eq!(reused.status(), Status::Dead);
        let never = home(root.path(), None);
        let mut abandoned = home(root.path(), None);
        abandoned.state.created -= ABANDONED_AFTER_SECS + 1;
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
                    s.spawn(|| {
                        Home::create(root.path(), Some("same"), "i", "d", vec![], false).is_ok()
                    })
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

    #[test]
    fn zombie_is_not_alive() {
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let pid = c.id();
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(!pid_alive(pid), "a zombie counts as dead");
        c.wait().unwrap();
    }
}
