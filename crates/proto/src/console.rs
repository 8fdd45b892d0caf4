//! What the guest tells the host outside the agent connection, defined once for both sides:
//! the boot-timer marks (one byte written to an I/O port, logged by crx-vmm's device as a line)
//! and a system VM's status line on the serial console.

/// The boot-timer I/O port: unassigned on a PC, one `out` instruction from any guest mode.
pub const BOOT_TIMER_PORT: u16 = 0x440;

/// The console line a template VM's crx-init prints once it may be snapshotted (its agent
/// listening, its container helper started; `crxtemplate=1` on the kernel command line): the
/// runtime then sends crx-vmm (`--snapshot-on-signal`) SIGUSR1 (ADR 0017).
pub const TEMPLATE_READY_LINE: &str = "crx-init: template ready for its snapshot";

/// The boot-timer codes crx-init writes, in boot order (other values are custom marks).
pub mod mark {
    /// crx-init started (PID 1's first instruction of note).
    pub const INIT_STARTED: u8 = 1;
    /// crx-init is ready (agent listening, or the system-VM program about to run).
    pub const READY: u8 = 2;
    /// Between 1 and 2, for the breakdown: the pseudo filesystems are mounted.
    pub const MOUNTED: u8 = 3;
    /// Console, hostname and the reaper thread are set up.
    pub const REAPING: u8 = 4;
    /// The container helper process is started (agent mode; after [`READY`], from a thread).
    pub const HELPER_STARTED: u8 = 5;
}

const MARK_PREFIX: &str = "boot-timer: code=";

/// The line crx-vmm logs for a boot-timer write: `boot-timer: code=N t=MICROS`, the time in
/// microseconds since the VMM process started.
pub fn mark_line(code: u8, micros: u128) -> String {
    format!("{MARK_PREFIX}{code} t={micros}")
}

/// A [`mark_line`] read back: the code and the microseconds; `None` for any other line.
pub fn parse_mark_line(line: &str) -> Option<(u8, u64)> {
    let rest = line.trim_end().strip_prefix(MARK_PREFIX)?;
    let (code, t) = rest.split_once(" t=")?;
    Some((code.parse().ok()?, t.parse().ok()?))
}

const STATUS_PREFIX: &str = "crx-init: exit status ";

/// The line crx-init prints on the console when a system VM's program ended: its exit code,
/// or 128 + the signal that killed it.
pub fn status_line(code: i32) -> String {
    format!("{STATUS_PREFIX}{code}")
}

/// A [`status_line`] read back (trailing `\r`/whitespace ignored); `None` for any other line.
pub fn parse_status_line(line: &str) -> Option<i32> {
    line.trim_end().strip_prefix(STATUS_PREFIX)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip() {
        assert_eq!(mark_line(3, 2_500_000), "boot-timer: code=3 t=2500000");
        assert_eq!(parse_mark_line(&mark_line(255, 7)), Some((255, 7)));
        assert_eq!(status_line(127), "crx-init: exit status 127");
        assert_eq!(parse_status_line(&status_line(-1)), Some(-1));
        assert_eq!(parse_status_line("crx-init: exit status 0\r\n"), Some(0));
    }

    #[test]
    fn other_lines_are_not_marks_or_statuses() {
        for l in [
            "",
            "boot-timer: further codes not logged",
            "boot-timer: code=256 t=1",
            "boot-timer: code=1 t=",
            "boot-timer: code=x t=1",
            "xboot-timer: code=1 t=1",
        ] {
            assert_eq!(parse_mark_line(l), None, "{l}");
        }
        for l in [
            "crx-init: exit status ",
            "crx-init: exit status 1x",
            "exit status 1",
        ] {
            assert_eq!(parse_status_line(l), None, "{l}");
        }
    }
}
