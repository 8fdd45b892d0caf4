//! The one on-disk record of a sandbox (one microVM, its monitor, its VMM) and its container:
//! `state.json` in the sandbox's directory, for every front-end. `crx` keeps its instances
//! under `<root>/instances/<id>/` ([`crate::home`]), crx-runc its containers under
//! `<root>/<id>/` ([`crate::oci::container`]); both write this record, the same way:
//! atomically ([`paths::write_atomic`]: a writer killed at any point leaves the old record or
//! the new one), versioned (a newer version is refused in one line, never misread).
//!
//! What only one front-end needs rides in `annotations` (crx's image and command: see
//! [`crate::home`]), or in optional fields that the other leaves out (crx-runc's bundle). Each
//! front-end reads the record its own way: crx by its VMM ([`crate::home::Status`]), crx-runc
//! by its monitor ([`crate::oci::Status`]).
//!
//! Version 2 folded crx's version-1 `InstanceState` into this record; such a record is still
//! read (converted, see [`InstanceV1`]), as is crx-runc's version 1, a subset of this one.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::boot_files::BootDigests;
use crate::paths;

/// The version of the record's format this runtime writes (a record without one is 1).
pub const RECORD_VERSION: u32 = 2;

/// Where a sandbox's life is, as its writers last recorded it. The starter writes `Creating`;
/// after that the monitor (the process owning the VMM) is the only writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
    /// The monitor failed before the container was created, or a backend of its VM died
    /// (a virtiofsd) and the VM was stopped: `error` says why.
    Failed,
}

/// `state.json`. New fields are optional (an `Option`, or `#[serde(default)]`), so that an
/// older record still loads; a change that an older runtime would misread bumps [`RECORD_VERSION`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The format's version ([`RECORD_VERSION`]); a newer one is refused, never misread.
    #[serde(default = "version_1")]
    pub version: u32,
    pub id: String,
    /// RFC 3339, UTC, fixed width (so that it sorts as time does): see [`rfc3339`].
    pub created: String,
    /// The OCI annotations (crx-runc: the bundle's), and crx's own data (`crx.*`).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// The OCI bundle and its rootfs (absolute), for a crx-runc container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<PathBuf>,
    pub phase: Phase,
    /// The monitor: the host process whose lifetime is the sandbox's, the VMM's parent (the
    /// OCI `pid`), and its start time (clock ticks after boot, from /proc), which tells it
    /// apart from a later process that reused the pid.
    pub monitor_pid: Option<u32>,
    pub monitor_start: Option<u64>,
    /// The crx-vmm process and its start time.
    pub vmm_pid: Option<u32>,
    pub vmm_start: Option<u64>,
    /// The container's exit, once seen.
    pub exit_code: Option<i32>,
    pub exit_signal: Option<i32>,
    /// Why the sandbox failed (phase `Failed`).
    pub error: Option<String>,
    /// The kernel and base initrd the VM boots, with their verified sha256 digests (ADR 0008).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<BootDigests>,
}

fn version_1() -> u32 {
    1
}

/// Why a record could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state file {path} is corrupt")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("state file {path} has format version {version}, newer than this runtime's {RECORD_VERSION}: use the crx that wrote it")]
    Newer { path: PathBuf, version: u32 },
}

impl RecordError {
    /// Whether the record does not exist (yet, or any more).
    pub fn is_missing(&self) -> bool {
        matches!(self, RecordError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

impl Record {
    /// A new record in phase `Creating`, created now.
    pub fn new(id: &str, annotations: BTreeMap<String, String>) -> Record {
        Record {
            version: RECORD_VERSION,
            id: id.to_owned(),
            created: rfc3339(SystemTime::now()),
            annotations,
            bundle: None,
            rootfs: None,
            phase: Phase::Creating,
            monitor_pid: None,
            monitor_start: None,
            vmm_pid: None,
            vmm_start: None,
            exit_code: None,
            exit_signal: None,
            error: None,
            boot: None,
        }
    }

    /// Records `pid` as the monitor, with its start time.
    pub fn set_monitor(&mut self, pid: u32) {
        self.monitor_pid = Some(pid);
        self.monitor_start = process_start_time(pid);
    }

    /// Records `pid` as the VMM, with its start time.
    pub fn set_vmm(&mut self, pid: u32) {
        self.vmm_pid = Some(pid);
        self.vmm_start = process_start_time(pid);
    }

    /// Whether the recorded monitor still runs (not a zombie, not a reused pid).
    pub fn monitor_alive(&self) -> bool {
        self.monitor_pid
            .is_some_and(|pid| pid_alive(pid) && process_start_time(pid) == self.monitor_start)
    }

    /// Whether the recorded VMM still runs (not a zombie, not a reused pid; a record without
    /// the start time trusts the pid).
    pub fn vmm_alive(&self) -> bool {
        self.vmm_pid.is_some_and(|pid| {
            pid_alive(pid)
                && (self.vmm_start.is_none() || process_start_time(pid) == self.vmm_start)
        })
    }

    /// When the record was created, in seconds since the epoch (0 when unreadable).
    pub fn created_secs(&self) -> u64 {
        rfc3339_secs(&self.created).unwrap_or(0)
    }

    /// Reads `path`: a record of a newer format is an error, never misread; crx's version 1
    /// instance record is converted.
    pub fn load(path: &Path) -> Result<Record, RecordError> {
        let text = fs::read(path).map_err(|source| RecordError::Io {
            path: path.to_owned(),
            source,
        })?;
        let corrupt = |source| RecordError::Corrupt {
            path: path.to_owned(),
            source,
        };
        let v: serde_json::Value = serde_json::from_slice(&text).map_err(corrupt)?;
        let version = v.get("version").and_then(|v| v.as_u64()).unwrap_or(1);
        if version > u64::from(RECORD_VERSION) {
            return Err(RecordError::Newer {
                path: path.to_owned(),
                version: u32::try_from(version).unwrap_or(u32::MAX),
            });
        }
        if v.get("phase").is_none() && v.get("image").is_some() {
            return serde_json::from_value::<InstanceV1>(v)
                .map(Record::from)
                .map_err(corrupt);
        }
        serde_json::from_value(v).map_err(corrupt)
    }

    /// Writes `path` atomically and durably ([`paths::write_atomic`]), private (0600).
    pub fn save(&self, path: &Path) -> Result<(), RecordError> {
        let text = serde_json::to_vec_pretty(self).expect("a record serializes");
        paths::write_atomic(path, &text).map_err(|source| RecordError::Io {
            path: path.to_owned(),
            source,
        })
    }
}

/// crx's instance record before version 2 (read, converted, never written).
#[derive(Debug, Deserialize)]
pub struct InstanceV1 {
    id: String,
    name: String,
    image: String,
    manifest_digest: String,
    command: Vec<String>,
    created: u64,
    vmm_pid: Option<u32>,
    vmm_start_time: Option<u64>,
    exit_code: Option<i32>,
    #[serde(default)]
    boot: Option<BootDigests>,
}

impl From<InstanceV1> for Record {
    fn from(o: InstanceV1) -> Record {
        let annotations =
            crate::home::annotations(&o.name, &o.image, &o.manifest_digest, &o.command);
        let phase = match (o.exit_code, o.vmm_pid) {
            (Some(_), _) => Phase::Stopped,
            (None, Some(_)) => Phase::Running,
            (None, None) => Phase::Creating,
        };
        Record {
            created: rfc3339(UNIX_EPOCH + Duration::from_secs(o.created)),
            phase,
            vmm_pid: o.vmm_pid,
            vmm_start: o.vmm_start_time,
            exit_code: o.exit_code,
            boot: o.boot,
            ..Record::new(&o.id, annotations)
        }
    }
}

/// The files of a sandbox's directory, the same for both front-ends.
pub trait SandboxFiles {
    /// The sandbox's directory.
    fn dir(&self) -> &Path;

    /// Its record ([`Record`]).
    fn state_path(&self) -> PathBuf {
        self.dir().join("state.json")
    }
    /// The container's OCI spec (private: it holds the container's environment).
    fn config_path(&self) -> PathBuf {
        self.dir().join("config.json")
    }
    /// The VM's serial console.
    fn console_path(&self) -> PathBuf {
        self.dir().join("console.log")
    }
    /// crx-vmm's own log.
    fn vmm_log(&self) -> PathBuf {
        self.dir().join("vmm.log")
    }
    /// The hybrid vsock socket, in the VM's own directory: a jailed VMM's root
    /// ([`crate::jail`]).
    fn vsock_path(&self) -> PathBuf {
        self.dir().join("vm").join("vsock.sock")
    }

    /// Reads the record.
    fn read_record(&self) -> Result<Record, RecordError> {
        Record::load(&self.state_path())
    }
    /// Writes the record.
    fn write_record(&self, r: &Record) -> Result<(), RecordError> {
        r.save(&self.state_path())
    }
    /// Reads the OCI spec as it was saved.
    fn read_config(&self) -> Result<serde_json::Value, RecordError> {
        let path = self.config_path();
        let text = fs::read(&path).map_err(|source| RecordError::Io {
            path: path.clone(),
            source,
        })?;
        serde_json::from_slice(&text).map_err(|source| RecordError::Corrupt { path, source })
    }
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

/// The whole seconds since the epoch of an [`rfc3339`] time (`None` when it is not one).
pub fn rfc3339_secs(s: &str) -> Option<u64> {
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || s.get(10..11) != Some("T") {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86400 + hh * 3600 + mm * 60 + ss).ok()
}

/// Boot digests for tests (`a`/`c` repeated for the kernel/initrd).
#[cfg(test)]
pub(crate) fn test_digests() -> BootDigests {
    let digest = |p: &str, c: char| crate::boot_files::BootDigest {
        path: p.into(),
        sha256: c.to_string().repeat(64),
    };
    BootDigests {
        kernel: digest("/b/vmlinux", 'a'),
        initrd: digest("/b/base.cpio", 'c'),
    }
}

#[cfg(test)]
mod tests;
