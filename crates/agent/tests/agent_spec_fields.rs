//! Host tier: the OCI spec's newer fields (runtime-spec 1.2/1.3) are applied in the container
//! or refused at create with a reason (containers/spec_fields.rs), and an exec'd process gets
//! the capabilities of its `process` and an `execCPUAffinity` clamped to the machine's CPUs.
//! crx-init runs as an ordinary root process (tests/common).

use std::path::Path;

use crx_proto::*;
use serde_json::json;

mod common;
use common::*;

/// A busybox container running `cmd` in new pid, uts and mount namespaces (plus `extra_ns`).
fn spec(cmd: &str, extra_ns: &[&str]) -> serde_json::Value {
    let mut ns = vec![
        json!({"type": "pid"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
    ];
    ns.extend(extra_ns.iter().map(|t| json!({"type": t})));
    json!({
        "ociVersion": "1.3.0",
        "process": process(cmd, false),
        "root": {"path": "rootfs", "readonly": false},
        "hostname": "ctr",
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"namespaces": ns}
    })
}

/// Runs container `id` to its end and removes it; its exit code.
fn run(f: &mut Fixture, id: &str, spec: serde_json::Value) -> i32 {
    let code = f.run(id, spec);
    f.remove(id);
    code
}

#[test]
fn newer_spec_fields_are_applied_or_refused() {
    let mut f = Fixture::new();
    let pid = std::process::id();

    // domainname, personality LINUX32 (uname -m says i686), scheduler SCHED_BATCH (policy 3 in
    // /proc/PID/stat field 41) with nice 7 (field 19), ioPriority idle.
    let check = r#"
        [ "$(cat /proc/sys/kernel/domainname)" = example.org ] || exit 10
        [ "$(uname -m)" = i686 ] || exit 11
        read -r st < /proc/self/stat; set -- $st
        [ "${19}" = 7 ] || exit 12
        [ "${41}" = 3 ] || exit 13
        ionice -p $$ | grep -q idle || exit 14
        exit 42"#;
    let mut s = spec(check, &[]);
    s["domainname"] = json!("example.org");
    s["linux"]["personality"] = json!({"domain": "LINUX32"});
    s["process"]["scheduler"] = json!({"policy": "SCHED_BATCH", "nice": 7});
    s["process"]["ioPriority"] = json!({"class": "IOPRIO_CLASS_IDLE", "priority": 0});
    assert_eq!(run(&mut f, &format!("new{pid}"), s), 42);

    // Personality flags: refused at create, with the reason, before anything runs.
    let mut flags = spec("true", &[]);
    flags["linux"]["personality"] = json!({"domain": "LINUX", "flags": ["ADDR_NO_RANDOMIZE"]});
    let e = f.create(&format!("flags{pid}"), flags).unwrap_err();
    assert!(
        matches!(&e, ClientError::Agent(a) if a.kind == ErrorKind::Unsupported
            && a.message.contains("personality.flags")),
        "{e:?}"
    );

    // memoryPolicy and timeOffsets follow the kernel: applied where it has NUMA and time
    // namespaces (this host's), refused with the reason where it does not (the CRX guest's).
    let mut mem = spec(
        "grep -q 'bind:0' /proc/self/numa_maps || exit 10; exit 42",
        &[],
    );
    mem["linux"]["memoryPolicy"] = json!({"mode": "MPOL_BIND", "nodes": "0"});
    let mut time = spec(
        "read -r up idle < /proc/uptime; [ ${up%%.*} -ge 1000000 ] || exit 10; exit 42",
        &["time"],
    );
    time["linux"]["timeOffsets"] = json!({"boottime": {"secs": 1000000, "nanosecs": 0}});
    let cases = [
        (
            Path::new("/proc/self/numa_maps").exists(),
            "mem",
            mem,
            "CONFIG_NUMA",
        ),
        (
            Path::new("/proc/self/ns/time").exists(),
            "time",
            time,
            "CONFIG_TIME_NS",
        ),
    ];
    for (supported, name, s, option) in cases {
        let id = format!("{name}{pid}");
        if supported {
            assert_eq!(run(&mut f, &id, s), 42, "{name}");
        } else {
            let e = f.create(&id, s).unwrap_err();
            assert!(
                matches!(&e, ClientError::Agent(a) if a.message.contains(option)),
                "{e:?}"
            );
        }
    }
    assert_eq!(f.c.call(Request::Ping).unwrap(), Response::Pong);
    f.shut_down();
}

#[test]
fn exec_processes_get_their_capabilities_and_a_clamped_affinity() {
    let mut f = Fixture::new();
    let id = format!("caps{}", std::process::id());
    f.create_start(&id, spec("sleep 1000", &[]));

    // CAP_KILL (5) and CAP_NET_RAW (13): CapEff 0x2020, as `exec --cap` asks.
    let mut caps = process(
        "grep -q 'CapEff:.0000000000002020' /proc/self/status || exit 10; exit 42",
        false,
    );
    let set = json!(["CAP_KILL", "CAP_NET_RAW"]);
    caps["capabilities"] = json!({"bounding": set, "effective": set, "permitted": set});
    assert_eq!(f.exec(&id, "e1", caps), 42);

    // An affinity beyond this machine's CPUs: clamped to them (the process runs on every
    // online CPU), where libcontainer alone fails the exec.
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    let cmd = format!(
        "grep -q 'Cpus_allowed_list:.{}$' /proc/self/status || exit 10; exit 42",
        online.trim()
    );
    let mut wide = process(&cmd, false);
    wide["execCPUAffinity"] = json!({"initial": "4000", "final": "0-4000"});
    assert_eq!(f.exec(&id, "e2", wide), 42);

    f.remove(&id);
    f.shut_down();
}
