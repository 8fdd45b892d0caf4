//! Child processes that must not outlive the process that started them.
#![allow(unsafe_code)]

use std::os::unix::process::CommandExt;
use std::process::Command;

/// Makes the child started by `cmd` die (SIGKILL) when this process dies, whatever kills it,
/// including a death between fork and the child's prctl. A child born in a PID namespace of
/// its own ([`crate::jail::spawn_as_init`]) sees no parent (`getppid` is 0): it asks a pidfd
/// of this process instead.
pub fn die_with_parent(cmd: &mut Command) {
    let parent = std::process::id();
    let pidfd = own_pidfd();
    // SAFETY: the closure runs in the forked child before exec and only makes async-signal-safe
    // system calls (prctl, getppid, poll, _exit); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
            // The parent may have died before prctl: then nobody would kill us.
            let alive = match nix::unistd::getppid().as_raw() as u32 {
                0 => pidfd.as_ref().is_none_or(|fd| {
                    let mut fds = [nix::libc::pollfd {
                        fd: std::os::fd::AsRawFd::as_raw_fd(fd),
                        events: nix::libc::POLLIN,
                        revents: 0,
                    }];
                    nix::libc::poll(fds.as_mut_ptr(), 1, 0) == 0
                }),
                ppid => ppid == parent,
            };
            if !alive {
                nix::libc::_exit(1);
            }
            Ok(())
        });
    }
}

/// A pidfd of this process (readable once it has exited), close-on-exec; none on a kernel
/// without pidfd_open (before 5.3).
fn own_pidfd() -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open(2) takes a pid and flags and reads no memory; the result is checked.
    let fd = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_pidfd_open,
            std::process::id() as nix::libc::pid_t,
            0,
        )
    };
    // SAFETY: a new descriptor that nothing else owns.
    (fd >= 0).then(|| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// Lets the child started by `cmd` inherit the descriptors `fds` at the same numbers: their
/// close-on-exec flag is cleared in the child alone (no other child of ours inherits them).
pub fn keep_fds(cmd: &mut Command, fds: Vec<std::os::fd::RawFd>) {
    // SAFETY: the closure runs in the forked child before exec and only calls fcntl, which is
    // async-signal-safe; it allocates nothing (the Vec was made before the fork).
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &fds {
                if nix::libc::fcntl(fd, nix::libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Makes the child started by `cmd` join the cgroup whose `cgroup.procs` is open as `procs`
/// before it execs (writing "0" moves the writer), so it and all it starts are born there.
pub fn join_cgroup(cmd: &mut Command, procs: std::fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: the closure runs in the forked child before exec and only calls write(2), which
    // is async-signal-safe; it allocates nothing. `procs` is moved into the closure, so the
    // descriptor stays open until the command is dropped.
    unsafe {
        cmd.pre_exec(move || {
            if nix::libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    const CHILD_ENV: &str = "CRX_TEST_DIE_WITH_PARENT_CHILD";

    /// Run twice: as the test, it starts this test binary again as a parent process; that
    /// parent starts `sleep` with [`die_with_parent`], prints its pid and exits. The `sleep`
    /// must then die.
    #[test]
    fn the_child_dies_with_its_parent() {
        if std::env::var_os(CHILD_ENV).is_some() {
            let mut cmd = Command::new("sleep");
            cmd.arg("60");
            die_with_parent(&mut cmd);
            let child = cmd.spawn().unwrap();
            println!("PID {}", child.id());
            std::process::exit(0);
        }
        let mut parent = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child::tests::the_child_dies_with_its_parent",
                "--nocapture",
            ])
            .env(CHILD_ENV, "1")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let pid: u32 = BufReader::new(parent.stdout.take().unwrap())
            .lines()
            .map_while(Result::ok)
            .find_map(|l| l.strip_prefix("PID ").and_then(|p| p.trim().parse().ok()))
            .expect("the parent printed its child's pid");
        parent.wait().unwrap();
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Gone, or a zombie waiting for init to reap it.
            if stat.is_empty() || stat.contains(") Z") {
                break;
            }
            assert!(Instant::now() < end, "sleep {pid} outlived its parent");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
