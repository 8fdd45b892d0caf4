//! The container's seccomp profile, applied to exec'd processes too.
//!
//! libcontainer 0.7's tenant builder (exec) rebuilds the spec's `linux` section without
//! `seccomp`, so on its own an exec'd process would run unfiltered while runc filters it. This
//! executor installs the container's profile itself, in the exec'd process, from `validate`:
//! libcontainer calls it after the namespaces are joined and the capabilities dropped, just
//! before it reports the process ready, so a failure still fails the exec request.
//!
//! Installing a filter takes `no_new_privs` or `CAP_SYS_ADMIN`. runc, for a process without
//! `noNewPrivileges`, installs it before dropping capabilities; libcontainer offers no hook
//! there, so a process that holds neither gets `no_new_privs` set first (setuid binaries then
//! gain no privileges in it, documented in crates/agent/README.md).

use libcontainer::oci_spec::runtime::{LinuxSeccomp, Spec};
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};

/// The capability's bit number (linux/capability.h).
const CAP_SYS_ADMIN: u32 = 21;

/// Runs the exec'd process as libcontainer's default executor does, filtered by `profile`.
#[derive(Clone)]
pub struct SeccompExecutor {
    pub profile: LinuxSeccomp,
}

impl Executor for SeccompExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)?;
        let refuse = |what: String| ExecutorValidationError::ArgValidationError(what);
        if !may_install_filter() {
            nix::sys::prctl::set_no_new_privs()
                .map_err(|e| refuse(format!("setting no_new_privs for seccomp: {e}")))?;
        }
        let notify = libcontainer::seccomp::initialize_seccomp(&self.profile)
            .map_err(|e| refuse(format!("installing the container's seccomp profile: {e}")))?;
        if let Some(fd) = notify {
            // No listener serves an exec'd process: its notify rules then fail with ENOSYS.
            let _ = nix::unistd::close(fd);
        }
        Ok(())
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

/// The container's seccomp profile, from its bundle's `config.json`.
pub fn container_profile(config: &std::path::Path) -> anyhow::Result<Option<LinuxSeccomp>> {
    let spec = Spec::load(config)?;
    Ok(spec.linux().as_ref().and_then(|l| l.seccomp().clone()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_effective_capabilities() {
        let status = "Name:\tsh\nCapInh:\t0000000000000000\nCapEff:\t00000000a80425fb\n";
        assert_eq!(super::cap_eff(status), Some(0xa80425fb));
        assert_eq!(super::cap_eff("Name:\tsh\n"), None);
        assert_eq!(super::cap_eff("CapEff:\tzz\n"), None);
    }
}
