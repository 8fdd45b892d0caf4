//! What a pod may leave behind on the host, counted: processes, mounts, network interfaces
//! (veths, taps, bridges), named network namespaces (`/run/netns`, where containerd's CRI
//! plugin pins a pod's), and entries of state directories. A snapshot is taken before the pod
//! and compared with one after its removal.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where containerd 1.6's CRI plugin (and `ip netns`) pins network namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// The host's countable state at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostState {
    /// User-space processes: pid -> (parent pid, `comm: cmdline`).
    pub processes: BTreeMap<u32, (u32, String)>,
    /// Mount points (`/proc/self/mountinfo`).
    pub mounts: BTreeSet<String>,
    /// Network interfaces of the host's namespace (`/sys/class/net`).
    pub links: BTreeSet<String>,
    /// Named network namespaces.
    pub netns: BTreeSet<String>,
    /// Entries (full paths) of the watched state directories.
    pub entries: BTreeSet<String>,
}

impl HostState {
    /// The host's state now, with the entries of `dirs` (missing ones are empty).
    pub fn take(dirs: &[PathBuf]) -> HostState {
        HostState {
            processes: processes(),
            mounts: lines_field("/proc/self/mountinfo", 4),
            links: names(Path::new("/sys/class/net")),
            netns: names(Path::new(NETNS_DIR)),
            entries: dirs
                .iter()
                .flat_map(|d| {
                    names(d)
                        .into_iter()
                        .map(move |n| format!("{}/{n}", d.display()))
                })
                .collect(),
        }
    }

    /// What exists now that did not in `before`, one line each (`process 123 crx-vmm: ...`,
    /// `mount /x`, `link veth1`, `netns cni-...`, `entry /dir/x`); empty when nothing leaked.
    pub fn leaked_since(&self, before: &HostState) -> Vec<String> {
        let mut out = Vec::new();
        for (pid, (ppid, what)) in &self.processes {
            if !before.processes.contains_key(pid) && !child_of_a_bystander(*ppid, before) {
                out.push(format!("process {pid} {what}"));
            }
        }
        let new = |kind: &str, now: &BTreeSet<String>, then: &BTreeSet<String>| {
            now.difference(then)
                .map(|n| format!("{kind} {n}"))
                .collect::<Vec<_>>()
        };
        out.extend(new("mount", &self.mounts, &before.mounts));
        out.extend(new("link", &self.links, &before.links));
        out.extend(new("netns", &self.netns, &before.netns));
        out.extend(new("entry", &self.entries, &before.entries));
        out
    }
}

/// Whether a new process's parent `ppid` is a bystander that was there before (a shell's
/// periodic `sleep`): not init or a subreaper (where a daemonised shim lands), not
/// containerd (which starts the shims), not this process.
fn child_of_a_bystander(ppid: u32, before: &HostState) -> bool {
    match before.processes.get(&ppid) {
        Some((_, what)) => {
            ppid != 1 && ppid != std::process::id() && !what.starts_with("containerd:")
        }
        None => false,
    }
}

/// Polls until nothing has leaked since `before` (clean-up may finish asynchronously: a
/// shim exits after its last task is deleted), for at most `limit`; returns what is still
/// left (empty: nothing).
pub fn wait_for_no_leaks(before: &HostState, dirs: &[PathBuf], limit: Duration) -> Vec<String> {
    let deadline = Instant::now() + limit;
    loop {
        let left = HostState::take(dirs).leaked_since(before);
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Processes with a command line (kernel threads have none), but this process.
fn processes() -> BTreeMap<u32, (u32, String)> {
    let me = std::process::id();
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if cmdline.is_empty() || pid == me {
            continue;
        }
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // `pid (comm) state ppid ...`: comm may hold spaces and parentheses.
        let ppid = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0);
        out.insert(pid, (ppid, format!("{}: {}", comm.trim(), cmdline.trim())));
    }
    out
}

/// Field `n` (from 0, space-separated) of each line of the file `path`.
fn lines_field(path: &str, n: usize) -> BTreeSet<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(n).map(str::to_owned))
        .collect()
}

/// The entry names of directory `dir` (none when it is missing).
fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_entry_and_a_new_process_are_reported_then_gone() {
        let t = tempfile::tempdir().unwrap();
        let dirs = vec![t.path().to_owned()];
        let before = HostState::take(&dirs);
        assert!(before.mounts.contains("/"), "{:?}", before.mounts);
        assert!(before.links.contains("lo"));
        std::fs::write(t.path().join("left"), "").unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let pid = child.id();
        let mine = format!("process {pid} sleep");
        // (This host's /proc may list a just-spawned child a moment later.)
        let deadline = Instant::now() + Duration::from_secs(10);
        let leaks = loop {
            let leaks = HostState::take(&dirs).leaked_since(&before);
            if leaks.iter().any(|l| l.starts_with(&mine)) || Instant::now() > deadline {
                break leaks;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(leaks.iter().any(|l| l.starts_with(&mine)), "{leaks:?}");
        assert!(
            leaks
                .iter()
                .any(|l| l.ends_with("/left") && l.starts_with("entry ")),
            "{leaks:?}"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        std::fs::remove_file(t.path().join("left")).unwrap();
        let left = wait_for_no_leaks(&before, &dirs, Duration::from_secs(10));
        // Other tests of this binary may start processes meanwhile: only ours must be gone.
        assert!(
            !left
                .iter()
                .any(|l| l.contains("/left") || l.starts_with(&format!("process {pid} "))),
            "{left:?}"
        );
    }
}
