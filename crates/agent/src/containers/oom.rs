//! `WaitOom`: the OOM kills of a container's cgroup, told as they happen (containerd's
//! `TaskOOM`, which kubelet reports as `OOMKilled`), also when the process killed is not the
//! container's init. cgroup v2 reports a change of `memory.events` as a modification of the
//! file: an inotify watch on it wakes the helper, which then reads the `oom_kill` count.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use anyhow::{Context, Result};
use crx_proto::Response;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

/// The pending `WaitOom` requests and the inotify instance that wakes them.
pub struct OomWatch {
    inotify: Inotify,
    /// By container id: (request id, the count the host has seen).
    waiters: HashMap<String, Vec<(u64, u64)>>,
}

/// The `oom_kill` count of the cgroup v2 directory `dir` (0 when it cannot be read).
pub fn oom_kills(dir: &Path) -> u64 {
    super::resources::stats(dir).oom_kills
}

impl OomWatch {
    pub fn new() -> Result<OomWatch> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .context("inotify_init")?;
        Ok(OomWatch {
            inotify,
            waiters: HashMap::new(),
        })
    }

    /// What the helper polls: readable when a watched `memory.events` changed.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.inotify.as_fd()
    }

    /// Request `req` waits for more than `seen` OOM kills in container `id`, whose cgroup is
    /// `dir`: the answer now when there are, else `None` (kept until [`OomWatch::ready`] or
    /// [`OomWatch::removed`] answers it). A cgroup without `memory.events` (no memory
    /// controller) is an error: nothing would ever wake the request.
    pub fn wait(&mut self, req: u64, id: &str, dir: &Path, seen: u64) -> Result<Option<Response>> {
        let events = dir.join("memory.events");
        self.inotify
            .add_watch(&events, AddWatchFlags::IN_MODIFY)
            .with_context(|| format!("watching {}", events.display()))?;
        // Read after the watch is in place: a kill between the two is not missed.
        let count = oom_kills(dir);
        if count > seen {
            return Ok(Some(Response::OomKills { count }));
        }
        self.waiters
            .entry(id.to_owned())
            .or_default()
            .push((req, seen));
        Ok(None)
    }

    /// After [`OomWatch::fd`] was readable: drains it and returns the requests now answered
    /// (`dir_of` gives a container's cgroup directory).
    pub fn ready(&mut self, dir_of: impl Fn(&str) -> std::path::PathBuf) -> Vec<(u64, Response)> {
        while self.inotify.read_events().is_ok_and(|e| !e.is_empty()) {}
        let mut answers = Vec::new();
        for (id, waiting) in &mut self.waiters {
            let count = oom_kills(&dir_of(id));
            waiting.retain(|&(req, seen)| {
                let due = count > seen;
                if due {
                    answers.push((req, Response::OomKills { count }));
                }
                !due
            });
        }
        self.waiters.retain(|_, w| !w.is_empty());
        answers
    }

    /// Container `id` was removed: the requests that waited on it.
    pub fn removed(&mut self, id: &str) -> Vec<u64> {
        self.waiters
            .remove(id)
            .unwrap_or_default()
            .into_iter()
            .map(|(req, _)| req)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in cgroup directory: a `memory.events` file with `oom_kill N`.
    fn write_events(dir: &Path, kills: u64) {
        let text = format!("low 0\nhigh 0\nmax 3\noom 1\noom_kill {kills}\n");
        std::fs::write(dir.join("memory.events"), text).unwrap();
    }

    #[test]
    fn a_waiter_is_answered_when_the_count_passes_what_it_saw() {
        let d = tempfile::tempdir().unwrap();
        write_events(d.path(), 1);
        let mut w = OomWatch::new().unwrap();
        // Already past: answered at once.
        let now = w.wait(7, "c1", d.path(), 0).unwrap();
        assert_eq!(now, Some(Response::OomKills { count: 1 }));
        // Not yet: kept; a change of the file wakes it.
        assert_eq!(w.wait(8, "c1", d.path(), 1).unwrap(), None);
        let dir = d.path().to_owned();
        assert!(w.ready(|_| dir.clone()).is_empty(), "no new kill yet");
        write_events(d.path(), 2);
        let mut fds = [nix::poll::PollFd::new(w.fd(), nix::poll::PollFlags::POLLIN)];
        let n = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(5000u16)).unwrap();
        assert_eq!(n, 1, "inotify woke");
        let dir = d.path().to_owned();
        assert_eq!(
            w.ready(|_| dir.clone()),
            vec![(8, Response::OomKills { count: 2 })]
        );
        assert!(w.removed("c1").is_empty(), "answered, not waiting");
        assert_eq!(w.wait(9, "c1", d.path(), 2).unwrap(), None);
        assert_eq!(w.removed("c1"), vec![9]);
    }

    #[test]
    fn a_cgroup_without_memory_events_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let mut w = OomWatch::new().unwrap();
        assert!(w.wait(1, "c1", d.path(), 0).is_err());
    }
}
