//! crx-runc's view of a container's record ([`crate::record`]): the OCI status, read by its
//! monitor, and the OCI state document.

pub use crate::record::{rfc3339, Phase, Record};

use super::error::OciError;

/// The OCI spec version the state reports.
pub const OCI_VERSION: &str = "1.2.0";

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
    /// The OCI status: what the monitor recorded while it lives, `stopped` once it is gone
    /// (`failed` is reported `stopped`).
    pub fn oci_status(&self) -> Status {
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

    /// The OCI status, which must be one of `ok` ([`OciError::WrongState`] saying `what` else).
    pub fn expect(&self, ok: &[Status], what: &'static str) -> Result<Status, OciError> {
        let status = self.oci_status();
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
    /// With `boot` (the measured boot: boot files and their verified digests) once `create`
    /// verified them, an extra field as runc's `rootfs` and `created` are.
    pub fn oci_state(&self) -> serde_json::Value {
        let status = self.oci_status();
        let pid = match status {
            Status::Stopped => 0,
            _ => self.monitor_pid.unwrap_or(0),
        };
        let mut s = serde_json::json!({
            "ociVersion": OCI_VERSION,
            "id": self.id,
            "status": status.as_str(),
            "pid": pid,
            "bundle": self.bundle.clone().unwrap_or_default(),
            "rootfs": self.rootfs.clone().unwrap_or_default(),
            "created": self.created,
            "owner": "",
            "annotations": self.annotations,
        });
        if let Some(b) = &self.boot {
            s["boot"] = serde_json::json!(b);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn record() -> Record {
        let mut r = Record::new("c1", BTreeMap::new());
        r.bundle = Some("/b".into());
        r.rootfs = Some("/b/rootfs".into());
        r
    }

    #[test]
    fn status_follows_the_monitor() {
        let mut r = record();
        assert_eq!(r.oci_status(), Status::Stopped, "no monitor yet");
        r.set_monitor(std::process::id());
        assert_eq!(r.oci_status(), Status::Creating);
        for (phase, want) in [
            (Phase::Created, Status::Created),
            (Phase::Running, Status::Running),
            (Phase::Paused, Status::Paused),
            (Phase::Stopped, Status::Stopped),
            (Phase::Failed, Status::Stopped),
        ] {
            r.phase = phase;
            assert_eq!(r.oci_status(), want);
        }
        r.phase = Phase::Running;
        let s = r.oci_state();
        assert_eq!(s["status"], "running");
        assert_eq!(s["pid"], std::process::id());
        assert_eq!(s["ociVersion"], OCI_VERSION);
        assert_eq!(s["bundle"], "/b");
        assert_eq!(s["rootfs"], "/b/rootfs");
        // A reused pid (other start time) is not our monitor.
        r.monitor_start = Some(1);
        assert_eq!(r.oci_status(), Status::Stopped);
        assert_eq!(r.oci_state()["pid"], 0);
    }

    /// The measured boot is shown in the OCI state once recorded.
    #[test]
    fn the_boot_digests_are_shown() {
        let mut r = record();
        assert!(r.oci_state().get("boot").is_none());
        r.boot = Some(crate::record::test_digests());
        let s = r.oci_state();
        assert_eq!(s["boot"]["initrd"]["sha256"], "c".repeat(64));
        assert_eq!(s["boot"]["kernel"]["path"], "/b/vmlinux");
    }

    #[test]
    fn wrong_state_names_the_status() {
        let e = record()
            .expect(&[Status::Running], "only running")
            .unwrap_err();
        assert_eq!(e.to_string(), "container c1 is stopped: only running");
    }
}
