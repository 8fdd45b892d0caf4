//! Why a VM stopped, in one line, from its logs (the VMM's log, then the guest console).
//!
//! A guest kernel's panic ends in lines that say nothing ("Kernel Offset: disabled",
//! "---[ end Kernel panic ..."): the reason is the panic line itself, and the first sign of
//! trouble before it (an oops, a BUG) says where it came from.

use std::path::Path;

/// What a panic prints first; the line names the reason.
const PANIC: &str = "Kernel panic - not syncing";

/// The panic's last line, which repeats it.
const PANIC_END: &str = "---[ end ";

/// Lines that start a kernel oops or report the bug behind a panic.
const FIRST_SIGNS: [&str; 4] = [
    "BUG: ",
    "Oops: ",
    "general protection fault",
    "Unable to handle",
];

/// What crx-init prints when something fails (PID 1's death panics the kernel).
const INIT: &str = "crx-init: ";

/// The longest line quoted.
const MAX_CHARS: usize = 600;

/// The reason the VM behind `logs` stopped: a guest kernel panic in any of them (with the
/// first sign before it), else the last non-empty line of the first log that has one.
pub fn why_stopped(logs: &[&Path]) -> Option<String> {
    let texts: Vec<String> = logs
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .collect();
    texts
        .iter()
        .find_map(|t| panic_reason(t))
        .or_else(|| texts.iter().find_map(|t| last_line(t)))
}

/// "Kernel panic - not syncing: ..." (from the last panic in `text`), with the first oops or
/// BUG before it, else crx-init's last complaint.
fn panic_reason(text: &str) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .rposition(|l| l.contains(PANIC) && !l.contains(PANIC_END))?;
    let panic = quote(&lines[at][lines[at].find(PANIC)?..]);
    let before = &lines[..at];
    let oops = before.iter().find_map(|l| {
        let i = FIRST_SIGNS.iter().filter_map(|s| l.find(s)).min()?;
        Some(quote(&l[i..]))
    });
    let init = || {
        let l = before.iter().rev().find(|l| l.contains(INIT))?;
        Some(quote(&l[l.find(INIT)?..]))
    };
    let sign = oops.or_else(init);
    Some(match sign {
        Some(s) => format!("{panic} (after: {s})"),
        None => panic,
    })
}

fn last_line(text: &str) -> Option<String> {
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?;
    Some(quote(line))
}

fn quote(line: &str) -> String {
    line.trim().chars().take(MAX_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logs(texts: &[&str]) -> (tempfile::TempDir, Vec<std::path::PathBuf>) {
        let dir = tempfile::tempdir().unwrap();
        let paths = texts
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let p = dir.path().join(format!("log{i}"));
                std::fs::write(&p, t).unwrap();
                p
            })
            .collect();
        (dir, paths)
    }

    fn why(texts: &[&str]) -> Option<String> {
        let (_dir, paths) = logs(texts);
        why_stopped(&paths.iter().map(|p| p.as_path()).collect::<Vec<_>>())
    }

    #[test]
    fn a_panic_is_named_with_the_oops_before_it_not_the_last_line() {
        let console = "[    1.0] Run /init as init process\n\
            [   19.1] BUG: kernel NULL pointer dereference, address: 0000000000000008\n\
            [   19.2] Oops: 0000 [#1] SMP NOPTI\n\
            [   19.5] Kernel panic - not syncing: Fatal exception in interrupt\n\
            [   19.5] Kernel Offset: disabled\n";
        assert_eq!(
            why(&["", console]).unwrap(),
            "Kernel panic - not syncing: Fatal exception in interrupt \
             (after: BUG: kernel NULL pointer dereference, address: 0000000000000008)"
        );
    }

    #[test]
    fn a_panic_without_a_sign_before_it_is_named_alone() {
        let console =
            "[ 0.5] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000009\n\
            [ 0.5] ---[ end Kernel panic - not syncing: Attempted to kill init! ]---\n";
        assert_eq!(
            why(&["", console]).unwrap(),
            "Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000009"
        );
        let init = format!("crx-init: mounting: EIO\ncrx-init: no agent: EIO\n{console}");
        assert_eq!(
            why(&[&init]).unwrap(),
            "Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000009 \
             (after: crx-init: no agent: EIO)"
        );
    }

    #[test]
    fn without_a_panic_the_last_line_of_the_first_log_that_has_one() {
        assert_eq!(why(&["\n", "boot\nthe end\n\n"]).unwrap(), "the end");
        assert_eq!(why(&["vmm: exit\n", "console\n"]).unwrap(), "vmm: exit");
        assert_eq!(why(&["", " \n"]), None);
        assert_eq!(why(&[]), None);
    }

    #[test]
    fn long_lines_are_cut() {
        let long = "x".repeat(2 * MAX_CHARS);
        assert_eq!(why(&[&long]).unwrap().len(), MAX_CHARS);
    }
}
