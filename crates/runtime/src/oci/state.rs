//! A container's record under `--root` (`state.json`, written atomically) and the OCI state
//! derived from it.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::error::{io, OciError};
use crate::home::{pid_alive, process_start_time};

/// The OCI spec version the state reports.
pub const OCI_VERSION: &str = "1.2.0";

/// Where a container's life is, as its writers last recorded it. `create` writes `Creating`;
/// after that the monitor process is the only writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
    /// The monitor failed before the container was created, or a backend of its VM died
    /// (a virtiofsd) and the VM was stopped: `error` says why. Reported as `stopped`.
    Failed,
}

/// The version of the record's format this runtime writes (a record without one is 1).
pub const RECORD_VERSION: u32 = 1;

fn version_1() -> u32 {
    1
}

/// `state.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The format's version ([`RECORD_VERSION`]); a newer one is refused, never misread.
    #[serde(default = "version_1")]
    pub version: u32,
    pub id: String,
    pub bundle: PathBuf,
    /// The bundle's rootfs (absolute).
    pub rootfs: PathBuf,
    /// RFC 3339, UTC.
    pub created: String,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    pub phase: Phase,
    /// The monitor: the host process whose lifetime is the container's (the OCI `pid`), and
    /// its start time (tells it apart from a later process that reused the pid).
    pub monitor_pid: Option<u32>,
    pub monitor_start: Option<u64>,
    pub vmm_pid: Option<u32>,
    pub exit_code: Option<i32>,
    pub exit_signal: Option<i32>,
    pub error: Option<String>,
    /// The kernel and base initrd the VM boots, with their verified sha256 digests (ADR 0008).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<crate::boot_files::BootDigests>,
}

/// The OCI status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Record {
    /// A new record in phase `Creating`.
    pub fn new(
        id: &str,
        bundle: &Path,
        rootfs: &Path,
        annotations: BTreeMap<String, String>,
    ) -> Record {
        Record {
            version: RECORD_VERSION,
            id: id.to_owned(),
            bundle: bundle.to_owned(),
            rootfs: rootfs.to_owned(),
            created: rfc3339(SystemTime::now()),
            annotations,
            phase: Phase::Creating,
            monitor_pid: None,
            monitor_start: None,
            vmm_pid: None,
            exit_code: None,
            exit_signal: None,
            error: None,
            boot: None,
        }
    }

    /// Whether the recorded monitor still runs (not a zombie, not a reused pid).
    pub fn monitor_alive(&self) -> bool {
        match self.monitor_pid {
            Some(pid) => pid_alive(pid) && process_start_time(pid) == self.monitor_start,
            None => false,
        }
    }

    /// The status: what the monitor recorded while it lives, `stopped` once it is gone.
    pub fn status(&self) -> Status {
        if !self.monitor_alive() {
            return Status::Stopped;
        }
        match self.phase {
            Phase::Creating => Status::Creating,
            Phase::Created => Status::Created,
            Phase::Running => Status::Running,
            Phase::Paused => Status::Paused,
            Phase::Stopped | Phase::Failed => Status::Stopped,
        }
    }

    /// The status, which must be one of `ok` ([`OciError::WrongState`] saying `what` else).
    pub fn expect(&self, ok: &[Status], what: &'static str) -> Result<Status, OciError> {
        let status = self.status();
        if !ok.contains(&status) {
            return Err(OciError::WrongState {
                id: self.id.clone(),
                status: status.to_string(),
                what,
            });
        }
        Ok(status)
    }

    /// The OCI state document (runc's fields: the spec's, plus rootfs, created, owner).
    /// With `boot` (the measured boot: boot files and their verified digests) once the VM was
    /// started, an extra field as runc's `rootfs` and `created` are.
    pub fn oci_state(&self) -> serde_json::Value {
        let status = self.status();
        let pid = match status {
            Status::Stopped => 0,
            _ => self.monitor_pid.unwrap_or(0),
        };
        let mut s = serde_json::json!({
            "ociVersion": OCI_VERSION,
            "id": self.id,
            "status": status.as_str(),
            "pid": pid,
            "bundle": self.bundle,
            "rootfs": self.rootfs,
            "created": self.created,
            "owner": "",
            "annotations": self.annotations,
        });
        if let Some(b) = &self.boot {
            s["boot"] = serde_json::json!(b);
        }
        s
    }

    /// Reads `path`: a record of a newer format than ours is an error, never misread.
    pub fn load(path: &Path) -> Result<Record, OciError> {
        let text = fs::read(path).map_err(io(path))?;
        let r: Record = serde_json::from_slice(&text).map_err(|source| OciError::CorruptState {
            path: path.to_owned(),
            source,
        })?;
        if r.version > RECORD_VERSION {
            return Err(OciError::NewerState {
                path: path.to_owned(),
                version: r.version,
            });
        }
        Ok(r)
    }

    /// Writes `path` atomically: a temporary file in the same directory, synced, then renamed
    /// over it. A writer killed at any point leaves the old record or the new one.
    pub fn save(&self, path: &Path) -> Result<(), OciError> {
        let text = serde_json::to_vec_pretty(self).expect("record serializes");
        // Private: the record is part of the container's state (0600 whatever the umask).
        crate::paths::write_atomic(path, &text).map_err(io(path))
    }
}

/// `t` as RFC 3339 UTC with nanoseconds (`2026-11-28T10:24:47.123456789Z`).
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86400, secs % 86400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn record() -> Record {
        Record::new(
            "c1",
            Path::new("/b"),
            Path::new("/b/rootfs"),
            BTreeMap::new(),
        )
    }

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        let t = UNIX_EPOCH + Duration::new(1_795_861_487, 5);
        assert_eq!(rfc3339(t), "2026-11-28T10:24:47.000000005Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert!(rfc3339(leap).starts_with("2000-02-29T00:00:00"));
    }

    #[test]
    fn status_follows_the_monitor() {
        let mut r = record();
        assert_eq!(r.status(), Status::Stopped, "no monitor yet");
        r.monitor_pid = Some(std::process::id());
        r.monitor_start = process_start_time(std::process::id());
        assert_eq!(r.status(), Status::Creating);
        for (phase, want) in [
            (Phase::Created, Status::Created),
            (Phase::Running, Status::Running),
            (Phase::Paused, Status::Paused),
            (Phase::Stopped, Status::Stopped),
            (Phase::Failed, Status::Stopped),
        ] {
            r.phase = phase;
            assert_eq!(r.status(), want);
        }
        r.phase = Phase::Running;
        let s = r.oci_state();
        assert_eq!(s["status"], "running");
        assert_eq!(s["pid"], std::process::id());
        assert_eq!(s["ociVersion"], OCI_VERSION);
        // A reused pid (other start time) is not our monitor.
        r.monitor_start = Some(1);
        assert_eq!(r.status(), Status::Stopped);
        assert_eq!(r.oci_state()["pid"], 0);
    }

    /// The measured boot is kept in the record (an older record without it still loads) and
    /// shown in the OCI state.
    #[test]
    fn the_boot_digests_are_kept_and_shown() {
        use crate::boot_files::{BootDigest, BootDigests};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let mut r = record();
        r.save(&path).unwrap();
        assert!(!fs::read_to_string(&path).unwrap().contains("boot"));
        assert_eq!(Record::load(&path).unwrap().boot, None);
        assert!(r.oci_state().get("boot").is_none());
        let digest = |p: &str, c: char| BootDigest {
            path: p.into(),
            sha256: c.to_string().repeat(64),
        };
        r.boot = Some(BootDigests {
            kernel: digest("/b/vmlinux", 'a'),
            initrd: digest("/b/base.cpio", 'c'),
        });
        r.save(&path).unwrap();
        let back = Record::load(&path).unwrap();
        assert_eq!(back, r);
        let s = back.oci_state();
        assert_eq!(s["boot"]["initrd"]["sha256"], "c".repeat(64));
        assert_eq!(s["boot"]["kernel"]["path"], "/b/vmlinux");
    }

    #[test]
    fn save_is_atomic_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let mut r = record();
        r.save(&path).unwrap();
        assert_eq!(Record::load(&path).unwrap(), r);
        // Concurrent writers and readers: every read sees a whole record.
        std::thread::scope(|s| {
            for i in 0..4 {
                let path = &path;
                let mut r = r.clone();
                s.spawn(move || {
                    for n in 0..200 {
                        r.exit_code = Some(i * 1000 + n);
                        // Per-thread temporary names: the pid is shared, so mimic processes.
                        let tmp_dir = path.parent().unwrap().join(format!("w{i}"));
                        std::fs::create_dir_all(&tmp_dir).unwrap();
                        let mine = tmp_dir.join("state.json");
                        r.save(&mine).unwrap();
                        std::fs::rename(&mine, path).unwrap();
                    }
                });
            }
            for _ in 0..500 {
                Record::load(&path).expect("always a whole record");
            }
        });
        // Only the record is left: no temporary file.
        r.exit_code = Some(7);
        r.save(&path).unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().into_string().unwrap())
            .filter(|n| !n.starts_with('w'))
            .collect();
        assert_eq!(names, vec!["state.json".to_owned()]);
        r.phase = Phase::Stopped;
        assert_ne!(Record::load(&path).unwrap(), r);
    }

    /// A record without a version (an older crx-runc's) is version 1; a newer one is refused.
    #[test]
    fn records_are_versioned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let r = record();
        r.save(&path).unwrap();
        let mut v: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(v["version"], RECORD_VERSION);
        v.as_object_mut().unwrap().remove("version");
        fs::write(&path, v.to_string()).unwrap();
        assert_eq!(Record::load(&path).unwrap().version, 1);
        v["version"] = (RECORD_VERSION + 1).into();
        fs::write(&path, v.to_string()).unwrap();
        assert!(matches!(
            Record::load(&path),
            Err(OciError::NewerState { version, .. }) if version == RECORD_VERSION + 1
        ));
    }

    #[test]
    fn corrupt_state_is_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, b"{\"id\":").unwrap();
        assert!(matches!(
            Record::load(&path),
            Err(OciError::CorruptState { .. })
        ));
    }
}
