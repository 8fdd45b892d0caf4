//! Host tier: the OCI spec's `linux.seccomp` is enforced (libseccomp, linked statically into
//! crx-init) for the container's process, and a container without a profile is not filtered.
//! The agent installs the profile itself right before execve, for the container's process and
//! for exec'd processes (containers/seccomp.rs), so a profile that blocks what libcontainer
//! calls after its own point of loading (getcwd) still starts the process. crx-init runs as an
//! ordinary root process (tests/common).

use crx_proto::*;
use serde_json::json;

mod common;
use common::*;

/// A busybox container running `cmd` without a terminal, filtered by `seccomp` when given.
fn spec(cmd: &str, seccomp: Option<serde_json::Value>) -> serde_json::Value {
    let mut linux = json!({"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]});
    if let Some(s) = seccomp {
        linux["seccomp"] = s;
    }
    json!({
        "ociVersion": "1.0.2",
        "process": process(cmd, false),
        "root": {"path": "rootfs", "readonly": false},
        "hostname": "ctr",
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": linux
    })
}

/// mkdir fails with EPERM, sethostname kills the process (SIGSYS), everything else is allowed.
fn profile() -> serde_json::Value {
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
            {"names": ["sethostname"], "action": "SCMP_ACT_KILL_PROCESS"}
        ]
    })
}

#[test]
fn seccomp_profiles_filter_the_container() {
    let mut f = Fixture::new();
    let pid = std::process::id();

    // Without a profile, mkdir works.
    let open = format!("open{pid}");
    assert_eq!(f.run(&open, spec("mkdir /tmp/d || exit 42", None)), 0);

    // With it, mkdir gets EPERM...
    let denied = format!("sec{pid}");
    let spec_denied = spec("mkdir /tmp/d || exit 42", Some(profile()));
    assert_eq!(f.run(&denied, spec_denied), 42);
    // ... and sethostname kills the process with SIGSYS.
    let killed = format!("kill{pid}");
    let mut spec_killed = spec("", Some(profile()));
    spec_killed["process"]["args"] = json!(["/bin/hostname", "x"]);
    assert_eq!(f.run(&killed, spec_killed), 128 + libc::SIGSYS);
    // Without CAP_SYS_ADMIN and without noNewPrivileges (podman's default): filtered, and the
    // program holds exactly its capabilities (CAP_CHOWN 0, CAP_KILL 5: 0x21) without
    // no_new_privs; the agent's CAP_SYS_ADMIN for loading the filter is gone after execve.
    let no_admin = format!("noadmin{pid}");
    let mut spec_no_admin = spec(
        "mkdir /tmp/d 2>/dev/null && exit 1; grep -q 'NoNewPrivs:.0' /proc/self/status || exit 3; \
         grep -q 'CapEff:.0000000000000021' /proc/self/status || exit 4; exit 42",
        Some(profile()),
    );
    let caps = json!(["CAP_KILL", "CAP_CHOWN"]);
    spec_no_admin["process"]["capabilities"] =
        json!({"bounding": caps, "effective": caps, "permitted": caps});
    assert_eq!(f.run(&no_admin, spec_no_admin), 42);

    // A profile that does not parse: create fails with a typed error, the agent lives on.
    let bad = spec("true", Some(json!({"defaultAction": "SCMP_ACT_BOGUS"})));
    let e = f.create(&format!("bad{pid}"), bad).unwrap_err();
    assert!(
        matches!(&e, ClientError::Agent(a) if a.kind == ErrorKind::InvalidRequest),
        "{e:?}"
    );
    assert_eq!(f.c.call(Request::Ping).unwrap(), Response::Pong);
    for id in [open, denied, killed, no_admin] {
        f.remove(&id);
    }
    f.shut_down();
}

#[test]
fn exec_processes_get_the_container_profile() {
    let mut f = Fixture::new();
    let pid = std::process::id();
    let filtered = format!("xsec{pid}");
    let open = format!("xopen{pid}");
    for (id, profile) in [(&filtered, Some(profile())), (&open, None)] {
        f.create_start(id, spec("sleep 1000", profile));
    }
    let mkdir = "mkdir /tmp/e || exit 42";
    // Root with every capability (CAP_SYS_ADMIN): filtered, no_new_privs left unset.
    let nnp_unset = "mkdir /tmp/e 2>/dev/null && exit 1; grep -q 'NoNewPrivs:.0' /proc/self/status || exit 3; exit 42";
    assert_eq!(f.exec(&filtered, "e1", process(nnp_unset, false)), 42);
    // Without CAP_SYS_ADMIN and without noNewPrivileges: still filtered, no_new_privs unset, and
    // the program holds exactly its capabilities (CAP_CHOWN 0, CAP_KILL 5: 0x21): the agent's
    // CAP_SYS_ADMIN for loading the filter is gone after execve.
    let no_admin_cmd =
        "mkdir /tmp/e 2>/dev/null && exit 1; grep -q 'NoNewPrivs:.0' /proc/self/status || exit 3; \
        grep -q 'CapEff:.0000000000000021' /proc/self/status || exit 4; exit 42";
    let mut no_admin = process(no_admin_cmd, false);
    let caps = json!(["CAP_KILL", "CAP_CHOWN"]);
    no_admin["capabilities"] = json!({"bounding": caps, "effective": caps, "permitted": caps});
    assert_eq!(f.exec(&filtered, "e2", no_admin), 42);
    // A kill rule kills the exec'd process.
    let mut hostname = process("", false);
    hostname["args"] = json!(["/bin/hostname", "x"]);
    assert_eq!(f.exec(&filtered, "e3", hostname), 128 + libc::SIGSYS);
    // The container without a profile: its exec'd process is not filtered.
    assert_eq!(f.exec(&open, "e1", process(mkdir, false)), 0);

    for id in [filtered, open] {
        f.remove(&id);
    }
    f.shut_down();
}

/// Allows what busybox's `sh` and `pwd` need, except `getcwd`; everything else fails with EPERM.
fn allow_list_without_getcwd() -> serde_json::Value {
    let names = [
        "read",
        "write",
        "readv",
        "writev",
        "pread64",
        "open",
        "openat",
        "close",
        "stat",
        "fstat",
        "lstat",
        "newfstatat",
        "statx",
        "lseek",
        "poll",
        "ppoll",
        "mmap",
        "mprotect",
        "munmap",
        "brk",
        "madvise",
        "rt_sigaction",
        "rt_sigprocmask",
        "rt_sigreturn",
        "sigaltstack",
        "ioctl",
        "access",
        "faccessat",
        "faccessat2",
        "pipe",
        "pipe2",
        "dup",
        "dup2",
        "dup3",
        "fcntl",
        "getpid",
        "getppid",
        "gettid",
        "getuid",
        "geteuid",
        "getgid",
        "getegid",
        "getpgrp",
        "setpgid",
        "getpgid",
        "getsid",
        "clone",
        "clone3",
        "fork",
        "vfork",
        "execve",
        "execveat",
        "exit",
        "exit_group",
        "wait4",
        "waitid",
        "kill",
        "tgkill",
        "uname",
        "chdir",
        "fchdir",
        "readlink",
        "readlinkat",
        "arch_prctl",
        "set_tid_address",
        "set_robust_list",
        "rseq",
        "prlimit64",
        "getrlimit",
        "getrandom",
        "futex",
        "sysinfo",
        "getdents64",
        "umask",
        "clock_gettime",
        "gettimeofday",
        "time",
        "times",
        "nanosleep",
        "clock_nanosleep",
    ];
    json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": names.to_vec(), "action": "SCMP_ACT_ALLOW"}]
    })
}

#[test]
fn profiles_blocking_the_runtimes_own_syscalls_still_start_the_process() {
    let mut f = Fixture::new();
    let pid = std::process::id();
    // `pwd` calls getcwd: it works unfiltered (0), and fails under the profiles (42).
    let pwd = "/bin/busybox pwd >/dev/null || exit 42";
    let getcwd_errno = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": ["getcwd"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
    });
    let cases = [
        (format!("cwd{pid}"), None, 0),
        (format!("cwdno{pid}"), Some(getcwd_errno), 42),
        (
            format!("cwdallow{pid}"),
            Some(allow_list_without_getcwd()),
            42,
        ),
    ];
    for (id, profile, want) in &cases {
        assert_eq!(f.run(id, spec(pwd, profile.clone())), *want, "{id}");
    }
    // An exec'd process under the allow list: started, and filtered too.
    let exec_in = format!("cwdexec{pid}");
    f.create_start(
        &exec_in,
        spec("sleep 1000", Some(allow_list_without_getcwd())),
    );
    assert_eq!(f.exec(&exec_in, "e1", process(pwd, false)), 42);
    for id in cases.into_iter().map(|c| c.0).chain([exec_in]) {
        f.remove(&id);
    }
    f.shut_down();
}
