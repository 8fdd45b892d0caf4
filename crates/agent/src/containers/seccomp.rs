//! The container's seccomp profile, installed by the agent right before `execve`, for the
//! container's process and for exec'd processes.
//!
//! libcontainer 0.7 loads the init's filter (`linux.seccomp`) in the middle of its own set-up:
//! without `noNewPrivileges` before it drops the capabilities, and then it still calls `capset`,
//! `getcwd` (its `verify_cwd`), writes its channel and accepts on its start socket. A profile
//! whose ERRNO rules block one of those (e.g. `getcwd`) failed the start ("failed to unix
//! syscall") where crun starts the process. Its tenant builder (exec) drops `linux.seccomp`.
//!
//! So the agent takes the profile out of the spec libcontainer sees ([`split_profile`]) and
//! [`SeccompExecutor`] installs it: `validate` (before the process reports ready, so a profile
//! that cannot load fails the create or exec request) compiles and loads it in a forked child
//! as a dry run; `exec` loads it and calls `execvp`, after the start signal and the
//! startContainer hooks: only libseccomp's clean-up and `execve` run under the filter.
//!
//! Loading a filter takes `no_new_privs` or `CAP_SYS_ADMIN`. runc, without `noNewPrivileges`,
//! loads before dropping the capabilities; here the process keeps `CAP_SYS_ADMIN` in its
//! effective and permitted sets only ([`keep_sys_admin`]), never in the bounding, inheritable
//! or ambient sets, so `execve` drops it (root's new permitted set is bounding | inheritable |
//! ambient; anyone else's is limited by them too): the program runs with exactly the spec's
//! capabilities and without `no_new_privs`, as under runc. A process that still holds neither
//! gets `no_new_privs` set first.
//!
//! Profiles with `SCMP_ACT_NOTIFY` rules are refused at create (containers/spec_fields.rs):
//! their listener is a host socket, out of the guest's reach.

use std::io::Read;

use libcontainer::oci_spec::runtime::{LinuxSeccomp, Spec};
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::ForkResult;
use serde_json::Value;

/// The capability's bit number (linux/capability.h).
const CAP_SYS_ADMIN: u32 = 21;

/// Runs the process as libcontainer's default executor does, filtered by `profile`, which is
/// loaded right before `execvp`.
#[derive(Clone)]
pub struct SeccompExecutor {
    pub profile: LinuxSeccomp,
}

impl Executor for SeccompExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        install(&self.profile).map_err(ExecutorError::Other)?;
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)?;
        dry_run(&self.profile).map_err(ExecutorValidationError::ArgValidationError)
    }
}

/// Loads `profile` into this process (setting `no_new_privs` first when it may not otherwise).
fn install(profile: &LinuxSeccomp) -> Result<(), String> {
    if !may_install_filter() {
        nix::sys::prctl::set_no_new_privs()
            .map_err(|e| format!("setting no_new_privs for seccomp: {e}"))?;
    }
    let notify = libcontainer::seccomp::initialize_seccomp(profile)
        .map_err(|e| format!("installing the container's seccomp profile: {e}"))?;
    if let Some(fd) = notify {
        // Refused at create; were one here, no listener serves it: ENOSYS.
        let _ = nix::unistd::close(fd);
    }
    Ok(())
}

/// Installs `profile` in a forked child, which then exits: `Err` with the reason when it
/// cannot be loaded. The child reports a failure on a pipe and exits 1 before any filter is in
/// force; once loaded, whatever ends it (exit 0, or a signal if the profile blocks `exit_group`)
/// means success.
fn dry_run(profile: &LinuxSeccomp) -> Result<(), String> {
    let (r, w) = nix::unistd::pipe().map_err(|e| format!("seccomp dry run: pipe: {e}"))?;
    // SAFETY: the container's process is single-threaded here (libcontainer's init or tenant
    // process, cloned from the single-threaded helper), so the child may run any code.
    match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Child) => {
            drop(r);
            let code = match install(profile) {
                Ok(()) => 0,
                Err(e) => {
                    let _ = nix::unistd::write(&w, e.as_bytes());
                    1
                }
            };
            // SAFETY: _exit ends the child at once, without running the parent's atexit state.
            unsafe { libc::_exit(code) }
        }
        Ok(ForkResult::Parent { child }) => {
            drop(w);
            let mut msg = String::new();
            let _ = std::fs::File::from(r).read_to_string(&mut msg);
            loop {
                match waitpid(child, None) {
                    Ok(WaitStatus::Exited(_, 1)) => return Err(msg),
                    Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) => return Ok(()),
                    Err(nix::errno::Errno::EINTR) | Ok(_) => continue,
                    Err(e) => return Err(format!("seccomp dry run: waitpid: {e}")),
                }
            }
        }
        Err(e) => Err(format!("seccomp dry run: fork: {e}")),
    }
}

/// Whether this process may load a seccomp filter: `no_new_privs` set or `CAP_SYS_ADMIN`
/// effective.
fn may_install_filter() -> bool {
    if nix::sys::prctl::get_no_new_privs().unwrap_or(false) {
        return true;
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    cap_eff(&status).is_some_and(|caps| caps & (1 << CAP_SYS_ADMIN) != 0)
}

/// The `CapEff:` mask of a `/proc/PID/status` text.
fn cap_eff(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// Takes `linux.seccomp` out of `spec` for [`SeccompExecutor`] to install; an error when it
/// does not parse.
pub fn split_profile(spec: &mut Value) -> anyhow::Result<Option<LinuxSeccomp>> {
    let Some(linux) = spec.get_mut("linux").and_then(Value::as_object_mut) else {
        return Ok(None);
    };
    let Some(raw) = linux.get("seccomp").filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let profile: LinuxSeccomp = serde_json::from_value(raw.clone())
        .map_err(|e| anyhow::anyhow!("linux.seccomp does not parse: {e}"))?;
    linux.remove("seccomp");
    Ok(Some(profile))
}

/// Lets an OCI process (JSON) that is to load its own filter keep `CAP_SYS_ADMIN` until its
/// `execve`: added to its effective and permitted sets (where listed) unless it sets
/// `noNewPrivileges`; its bounding, inheritable and ambient sets are left alone, so `execve`
/// drops it again (see the module doc).
pub fn keep_sys_admin(process: &mut Value) {
    if process["noNewPrivileges"] == Value::Bool(true) {
        return;
    }
    let Some(caps) = process
        .get_mut("capabilities")
        .and_then(Value::as_object_mut)
    else {
        // No capabilities object: libcontainer leaves the process every capability.
        return;
    };
    for set in ["effective", "permitted"] {
        if let Some(list) = caps.get_mut(set).and_then(Value::as_array_mut) {
            if !list.iter().any(|c| c == "CAP_SYS_ADMIN") {
                list.push(Value::String("CAP_SYS_ADMIN".into()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_the_effective_capabilities() {
        let status = "Name:\tsh\nCapInh:\t0000000000000000\nCapEff:\t00000000a80425fb\n";
        assert_eq!(cap_eff(status), Some(0xa80425fb));
        assert_eq!(cap_eff("Name:\tsh\n"), None);
        assert_eq!(cap_eff("CapEff:\tzz\n"), None);
    }

    #[test]
    fn the_profile_leaves_the_spec_libcontainer_sees() {
        let profile = json!({"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["getcwd"], "action": "SCMP_ACT_ERRNO"}]});
        let mut spec = json!({"linux": {"seccomp": profile, "namespaces": []}});
        let p = split_profile(&mut spec).unwrap().unwrap();
        assert_eq!(p.syscalls().as_ref().map(Vec::len), Some(1));
        assert_eq!(spec, json!({"linux": {"namespaces": []}}));
        assert!(split_profile(&mut spec).unwrap().is_none());
        assert!(split_profile(&mut json!({})).unwrap().is_none());
    }

    #[test]
    fn a_bad_profile_is_an_error() {
        let mut spec = json!({"linux": {"seccomp": {"defaultAction": "SCMP_ACT_BOGUS"}}});
        let e = split_profile(&mut spec).unwrap_err().to_string();
        assert!(e.contains("linux.seccomp"), "{e}");
    }

    #[test]
    fn sys_admin_is_kept_until_execve_only() {
        let caps = json!(["CAP_KILL"]);
        let mut p = json!({"capabilities": {"bounding": caps, "effective": caps,
                                            "permitted": caps, "inheritable": caps}});
        keep_sys_admin(&mut p);
        let both = json!(["CAP_KILL", "CAP_SYS_ADMIN"]);
        assert_eq!(p["capabilities"]["effective"], both);
        assert_eq!(p["capabilities"]["permitted"], both);
        assert_eq!(p["capabilities"]["bounding"], caps);
        assert_eq!(p["capabilities"]["inheritable"], caps);
        // Idempotent; no_new_privs or no capabilities object: unchanged.
        let before = p.clone();
        keep_sys_admin(&mut p);
        assert_eq!(p, before);
        let mut nnp = json!({"noNewPrivileges": true, "capabilities": {"effective": caps}});
        keep_sys_admin(&mut nnp);
        assert_eq!(nnp["capabilities"]["effective"], caps);
        let mut all = json!({"args": ["sh"]});
        keep_sys_admin(&mut all);
        assert_eq!(all, json!({"args": ["sh"]}));
    }
}
