//! The OCI spec's newer fields (runtime-spec 1.2/1.3), and seccomp notify: applied in the guest
//! or refused at create with a one-line reason, never silently ignored.
//!
//! libcontainer 0.7 applies `process.ioPriority`, `process.scheduler`, `linux.personality`
//! (its domain; it has no flags), `domainname` (in a new UTS namespace), `linux.memoryPolicy`,
//! `linux.timeOffsets` (in a new time namespace) and, for exec'd processes,
//! `process.execCPUAffinity` (the spec makes it not applicable to the init). What needs the guest
//! kernel is checked against the running kernel ([`Kernel::probe`]): the CRX guest kernel has
//! time namespaces but no NUMA (`set_mempolicy`), so `memoryPolicy` is refused there. An
//! `execCPUAffinity` naming CPUs the VM lacks is clamped to the online CPUs ([`clamp_affinity`]).

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

/// What the running kernel offers to the fields above.
#[derive(Clone, Copy, Debug)]
pub struct Kernel {
    /// `CONFIG_NUMA`: `set_mempolicy(2)` exists (`/proc/self/numa_maps` is there).
    pub numa: bool,
    /// `CONFIG_TIME_NS`: time namespaces (`/proc/self/ns/time` is there).
    pub time_ns: bool,
}

impl Kernel {
    /// Probes the running kernel (needs `/proc`).
    pub fn probe() -> Self {
        Kernel {
            numa: Path::new("/proc/self/numa_maps").exists(),
            time_ns: Path::new("/proc/self/ns/time").exists(),
        }
    }
}

/// Why `spec` (a container's OCI spec) cannot run in this guest, if it cannot.
pub fn refusal(spec: &Value, kernel: Kernel) -> Option<String> {
    let linux = &spec["linux"];
    if !linux["memoryPolicy"].is_null() && !kernel.numa {
        return Some(
            "linux.memoryPolicy is not supported: the guest kernel has no NUMA \
             (CONFIG_NUMA), so set_mempolicy(2) cannot apply it"
                .into(),
        );
    }
    let time_ns = linux["namespaces"]
        .as_array()
        .is_some_and(|n| n.iter().any(|ns| ns["type"] == "time"));
    let offsets = linux["timeOffsets"]
        .as_object()
        .is_some_and(|o| !o.is_empty());
    if (time_ns || offsets) && !kernel.time_ns {
        let what = if offsets {
            "linux.timeOffsets"
        } else {
            "a time namespace"
        };
        return Some(format!(
            "{what} is not supported: the guest kernel has no time namespaces (CONFIG_TIME_NS)"
        ));
    }
    let seccomp = &linux["seccomp"];
    let notify = seccomp["defaultAction"] == "SCMP_ACT_NOTIFY"
        || seccomp["syscalls"]
            .as_array()
            .is_some_and(|s| s.iter().any(|r| r["action"] == "SCMP_ACT_NOTIFY"));
    if notify {
        return Some(
            "linux.seccomp SCMP_ACT_NOTIFY is not supported: its listener (listenerPath) is on \
             the host, out of the microVM's reach"
                .into(),
        );
    }
    let flags = &linux["personality"]["flags"];
    if flags.as_array().is_some_and(|f| !f.is_empty()) {
        return Some(format!(
            "linux.personality.flags {flags} are not supported (only the domain is applied)"
        ));
    }
    None
}

/// Clamps an OCI process's `execCPUAffinity` (`initial`, `final`) to the CPUs in `online`:
/// CPUs the VM lacks are left out, and a list with none of its CPUs left is dropped (the
/// process then runs on every CPU of the VM, as when it is absent).
pub fn clamp_affinity(process: &mut Value, online: &BTreeSet<u32>) {
    let Some(aff) = process
        .get_mut("execCPUAffinity")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    for key in ["initial", "final"] {
        let Some(list) = aff.get(key).and_then(Value::as_str) else {
            continue;
        };
        let Some(cpus) = parse_cpu_list(list) else {
            // Not a CPU list: libcontainer refuses it with its own message.
            continue;
        };
        let kept: BTreeSet<u32> = cpus.intersection(online).copied().collect();
        if kept.is_empty() {
            aff.remove(key);
        } else {
            aff.insert(key.into(), Value::String(format_cpu_list(&kept)));
        }
    }
}

/// The online CPUs of this machine (`/sys/devices/system/cpu/online`), or CPU 0 alone when
/// that cannot be read.
pub fn online_cpus() -> BTreeSet<u32> {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|s| parse_cpu_list(&s))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| BTreeSet::from([0]))
}

/// Upper bound on a CPU id in a list (the kernel's NR_CPUS is at most 8192).
const MAX_CPU: u32 = 8191;

/// Parses a CPU list such as `0-3,7`; `None` when it is not one.
pub fn parse_cpu_list(s: &str) -> Option<BTreeSet<u32>> {
    let mut set = BTreeSet::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        let (lo, hi): (u32, u32) = match part.split_once('-') {
            Some((a, b)) => (a.trim().parse().ok()?, b.trim().parse().ok()?),
            None => {
                let c: u32 = part.trim().parse().ok()?;
                (c, c)
            }
        };
        if lo > hi || hi > MAX_CPU {
            return None;
        }
        set.extend(lo..=hi);
    }
    Some(set)
}

/// Formats CPUs as a list with ranges (`0-3,7`).
fn format_cpu_list(cpus: &BTreeSet<u32>) -> String {
    let mut parts = Vec::new();
    let mut it = cpus.iter().copied().peekable();
    while let Some(lo) = it.next() {
        let mut hi = lo;
        while it.peek() == Some(&(hi + 1)) {
            hi += 1;
            it.next();
        }
        parts.push(if lo == hi {
            lo.to_string()
        } else {
            format!("{lo}-{hi}")
        });
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const GUEST: Kernel = Kernel {
        numa: false,
        time_ns: false,
    };
    const FULL: Kernel = Kernel {
        numa: true,
        time_ns: true,
    };

    #[test]
    fn memory_policy_needs_numa() {
        let spec = json!({"linux": {"memoryPolicy": {"mode": "MPOL_BIND", "nodes": "0"}}});
        let why = refusal(&spec, GUEST).unwrap();
        assert!(
            why.contains("linux.memoryPolicy") && why.contains("CONFIG_NUMA"),
            "{why}"
        );
        assert_eq!(refusal(&spec, FULL), None);
    }

    #[test]
    fn time_namespaces_need_the_kernel_option() {
        let ns = json!({"linux": {"namespaces": [{"type": "pid"}, {"type": "time"}]}});
        let why = refusal(&ns, GUEST).unwrap();
        assert!(why.starts_with("a time namespace") && why.contains("CONFIG_TIME_NS"));
        let mut offsets = ns.clone();
        offsets["linux"]["timeOffsets"] = json!({"boottime": {"secs": 100, "nanosecs": 0}});
        assert!(refusal(&offsets, GUEST)
            .unwrap()
            .starts_with("linux.timeOffsets"));
        assert_eq!(refusal(&offsets, FULL), None);
        // Without either, nothing to refuse.
        assert_eq!(refusal(&json!({"linux": {}}), GUEST), None);
    }

    #[test]
    fn personality_flags_are_refused_the_domain_is_not() {
        let domain = json!({"linux": {"personality": {"domain": "LINUX32"}}});
        assert_eq!(refusal(&domain, GUEST), None);
        let flags =
            json!({"linux": {"personality": {"domain": "LINUX", "flags": ["ADDR_NO_RANDOMIZE"]}}});
        let why = refusal(&flags, FULL).unwrap();
        assert!(why.contains("ADDR_NO_RANDOMIZE"), "{why}");
        assert!(!why.contains('\n'));
    }

    #[test]
    fn seccomp_notify_is_refused() {
        let rule = json!({"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"});
        let spec = json!({"linux": {"seccomp": {"defaultAction": "SCMP_ACT_ALLOW",
            "listenerPath": "/run/l.sock", "syscalls": [rule]}}});
        let why = refusal(&spec, FULL).unwrap();
        assert!(why.contains("SCMP_ACT_NOTIFY"), "{why}");
        let errno = json!({"linux": {"seccomp": {"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]}}});
        assert_eq!(refusal(&errno, FULL), None);
    }

    #[test]
    fn newer_fields_the_guest_applies_pass() {
        let spec = json!({
            "domainname": "example.org",
            "process": {"ioPriority": {"class": "IOPRIO_CLASS_BE", "priority": 6},
                        "scheduler": {"policy": "SCHED_BATCH", "nice": 5}},
            "linux": {"namespaces": [{"type": "uts"}], "personality": {"domain": "LINUX"}}
        });
        assert_eq!(refusal(&spec, GUEST), None);
    }

    #[test]
    fn cpu_lists_parse_and_format() {
        assert_eq!(
            parse_cpu_list("0-3,7\n"),
            Some(BTreeSet::from([0, 1, 2, 3, 7]))
        );
        assert_eq!(parse_cpu_list(""), Some(BTreeSet::new()));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
        assert_eq!(parse_cpu_list("0-99999"), None);
        assert_eq!(
            format_cpu_list(&BTreeSet::from([0, 1, 2, 5, 7, 8])),
            "0-2,5,7-8"
        );
    }

    #[test]
    fn exec_affinity_is_clamped_to_the_vm() {
        let online = BTreeSet::from([0, 1]);
        let mut p = json!({"execCPUAffinity": {"initial": "0-3,6", "final": "1,5"}});
        clamp_affinity(&mut p, &online);
        assert_eq!(
            p["execCPUAffinity"],
            json!({"initial": "0-1", "final": "1"})
        );
        // Only CPUs the VM lacks: the list is dropped.
        let mut p = json!({"execCPUAffinity": {"initial": "4-7", "final": "1"}});
        clamp_affinity(&mut p, &online);
        assert_eq!(p["execCPUAffinity"], json!({"final": "1"}));
        let mut none = json!({"args": ["sh"]});
        clamp_affinity(&mut none, &online);
        assert_eq!(none, json!({"args": ["sh"]}));
    }
}
