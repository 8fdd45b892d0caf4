//! In the forked child, PID 1 of the new PID namespace: what is left of the host is given up
//! before `execve`: `/proc` of this namespace only, the hostname, resource limits, every
//! capability (bounding, ambient, inheritable, and with the uid change effective and
//! permitted), the supplementary groups, root's uid and gid, and the right to gain privileges.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;

use nix::mount::{mount, MsFlags};
use nix::sys::resource::{setrlimit, Resource};
use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};

use crate::supervise::{unblock_signals, Parent};
use crate::{io, sys, Jail, JailError};

/// Never returns on success (the program runs); the error says which step failed.
pub(crate) fn enter(jail: &Jail, parent: &impl Parent) -> JailError {
    match try_enter(jail, parent) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn try_enter(jail: &Jail, parent: &impl Parent) -> Result<std::convert::Infallible, JailError> {
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(Some("proc"), "/proc", Some("proc"), flags, None::<&str>)
        .map_err(sys("mounting the jail's /proc"))?;
    nix::unistd::sethostname(&jail.hostname).map_err(sys("setting the hostname"))?;
    setrlimit(Resource::RLIMIT_NOFILE, jail.max_files, jail.max_files)
        .map_err(sys("RLIMIT_NOFILE"))?;
    setrlimit(
        Resource::RLIMIT_NPROC,
        jail.max_processes,
        jail.max_processes,
    )
    .map_err(sys("RLIMIT_NPROC"))?;
    drop_bounding_set()?;
    let (uid, gid) = (Uid::from_raw(jail.uid), Gid::from_raw(jail.gid));
    setgroups(&[gid]).map_err(sys("setgroups"))?;
    setresgid(gid, gid, gid).map_err(sys("setresgid"))?;
    setresuid(uid, uid, uid).map_err(sys("setresuid"))?;
    // After the uid change, which clears it.
    if let Some(signal) = parent.death_signal() {
        nix::sys::prctl::set_pdeathsig(Some(signal)).map_err(sys("PR_SET_PDEATHSIG"))?;
        if !parent.is_alive() {
            return Err(JailError::Invalid(
                "the jailer's parent died while the jail was being set up".into(),
            ));
        }
    }
    clear_capabilities()?;
    nix::sys::prctl::set_no_new_privs().map_err(sys("PR_SET_NO_NEW_PRIVS"))?;
    unblock_signals()?;
    let cstr = |b: &[u8]| {
        CString::new(b).map_err(|_| JailError::Invalid("an argument holds a NUL byte".into()))
    };
    let program = cstr(jail.program.as_os_str().as_bytes())?;
    let mut argv = vec![program.clone()];
    for a in &jail.args {
        argv.push(cstr(a.as_bytes())?);
    }
    let env: Vec<CString> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).ok()
        })
        .collect();
    nix::unistd::execve(&program, &argv, &env).map_err(sys(format!(
        "executing {} in the jail",
        jail.program.display()
    )))
}

/// Drops every capability from the bounding set (needs CAP_SETPCAP: done while still root).
fn drop_bounding_set() -> Result<(), JailError> {
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .map_err(io("reading /proc/sys/kernel/cap_last_cap"))?;
    let last: libc::c_ulong = last
        .trim()
        .parse()
        .map_err(|_| JailError::Invalid(format!("cap_last_cap is {last:?}")))?;
    for cap in 0..=last {
        // SAFETY: prctl(PR_CAPBSET_DROP, cap) reads no memory; the result is checked.
        let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        if r != 0 {
            return Err(sys(format!(
                "dropping capability {cap} from the bounding set"
            ))(nix::Error::last()));
        }
    }
    Ok(())
}

/// Empties the ambient set, then every set with capset(2) (the uid change already emptied the
/// effective and permitted sets; the inheritable set survives it).
fn clear_capabilities() -> Result<(), JailError> {
    // SAFETY: prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL) reads no memory.
    let r = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    if r != 0 {
        return Err(sys("clearing the ambient capabilities")(nix::Error::last()));
    }
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: capset(2) with a version-3 header and the two data structs that version takes;
    // both live across the call, and the kernel only reads them (and may write the header's
    // version on mismatch, which is why it is mutable).
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if r != 0 {
        return Err(sys("clearing every capability set (capset)")(
            nix::Error::last(),
        ));
    }
    Ok(())
}
