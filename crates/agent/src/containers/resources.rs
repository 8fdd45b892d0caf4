//! `Update`: new cgroup limits for a running container (runc's `update`), applied by
//! libcgroups to the cgroup the helper gave it (`/crx/ID`, see [`super::bundle`]).

use std::path::Path;

use anyhow::{Context, Result};
use crx_proto::ContainerStats;
use libcgroups::common::{create_cgroup_manager, CgroupConfig, CgroupManager, ControllerOpt};
use libcontainer::oci_spec::runtime::LinuxResources;

/// Applies `resources` (an OCI `linux.resources` object) to container `id`'s cgroup.
pub fn update(id: &str, resources: &serde_json::Value) -> Result<()> {
    let resources: LinuxResources =
        serde_json::from_value(resources.clone()).context("linux.resources does not parse")?;
    let manager = create_cgroup_manager(CgroupConfig {
        cgroup_path: super::cgroup_path(id).into(),
        systemd_cgroup: false,
        container_name: id.to_owned(),
    })
    .context("opening the container's cgroup")?;
    manager
        .apply(&ControllerOpt {
            resources: &resources,
            disable_oom_killer: false,
            oom_score_adj: None,
            freezer_state: None,
        })
        .context("applying the new limits")
}

/// The usage counters, limits and memory events of the cgroup v2 directory `dir`.
pub fn stats(dir: &Path) -> ContainerStats {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    let num = |f: &str| read(f).trim().parse().unwrap_or(0);
    // "max" (or a missing file) is no limit.
    let limit = |f: &str| read(f).trim().parse().ok();
    let (cpu, memory, events) = (read("cpu.stat"), read("memory.stat"), read("memory.events"));
    ContainerStats {
        cpu_usage_ns: keyed(&cpu, "usage_usec") * 1000,
        cpu_user_ns: keyed(&cpu, "user_usec") * 1000,
        cpu_system_ns: keyed(&cpu, "system_usec") * 1000,
        memory_bytes: num("memory.current"),
        memory_anon_bytes: keyed(&memory, "anon"),
        memory_file_bytes: keyed(&memory, "file"),
        memory_inactive_file_bytes: keyed(&memory, "inactive_file"),
        memory_max_events: keyed(&events, "max"),
        oom_events: keyed(&events, "oom"),
        oom_kills: keyed(&events, "oom_kill"),
        pids: num("pids.current"),
        memory_limit_bytes: limit("memory.max"),
        pids_limit: limit("pids.max"),
    }
}

/// The number on the line `KEY N` of a cgroup file of such lines (0 when there is none).
fn keyed(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn stats_read_counters_and_limits() {
        let d = tempfile::tempdir().unwrap();
        let w = |f: &str, v: &str| std::fs::write(d.path().join(f), v).unwrap();
        w("cpu.stat", "usage_usec 1500\nuser_usec 1000\n");
        w("memory.current", "4096\n");
        w("pids.current", "3\n");
        w("memory.max", "67108864\n");
        w("pids.max", "max\n");
        w(
            "memory.stat",
            "anon 1024\nfile 2048\nkernel 64\nactive_file 1536\ninactive_file 512\n",
        );
        w(
            "memory.events",
            "low 0\nhigh 0\nmax 7\noom 2\noom_kill 1\noom_group_kill 0\n",
        );
        let s = super::stats(d.path());
        assert_eq!(s.cpu_usage_ns, 1_500_000);
        assert_eq!((s.cpu_user_ns, s.cpu_system_ns), (1_000_000, 0));
        let memory = (s.memory_anon_bytes, s.memory_file_bytes);
        assert_eq!((memory, s.memory_inactive_file_bytes), ((1024, 2048), 512));
        assert_eq!((s.memory_max_events, s.oom_events, s.oom_kills), (7, 2, 1));
        assert_eq!((s.memory_bytes, s.pids), (4096, 3));
        assert_eq!((s.memory_limit_bytes, s.pids_limit), (Some(67108864), None));
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(
            super::stats(empty.path()),
            crx_proto::ContainerStats::default()
        );
    }
}
