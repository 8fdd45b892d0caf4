//! `crx-runc update [--resources FILE|-] [--memory N] [--cpu-quota N] ... ID`: new cgroup limits
//! for the container, applied in the guest (the VM's own size does not change: a memory limit
//! above the VM's RAM, or more CPUs than it has, cannot take effect).

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};

pub fn run(root: &Path, a: liboci_cli::Update) -> Result<i32> {
    let resources = match &a.resources {
        Some(p) => read_resources(p)?,
        None => from_flags(&a)?,
    };
    crx_runtime::oci::lifecycle::update(root, &a.container_id, resources)?;
    Ok(0)
}

fn read_resources(p: &Path) -> Result<Value> {
    let mut text = String::new();
    if p == Path::new("-") {
        std::io::stdin().read_to_string(&mut text)?;
    } else {
        text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    }
    let v: Value = serde_json::from_str(&text).context("the resources are not JSON")?;
    if !v.is_object() {
        bail!("the resources must be a JSON object (an OCI linux.resources)");
    }
    Ok(v)
}

/// runc's flags as an OCI `linux.resources` object (only what was given).
fn from_flags(a: &liboci_cli::Update) -> Result<Value> {
    if a.l3_cache_schema.is_some() || a.mem_bw_schema.is_some() {
        bail!("Intel RDT is not supported (no resctrl in the VM)");
    }
    let mut r = Map::new();
    let mut put = |section: &str, key: &str, v: Option<Value>| {
        if let Some(v) = v {
            let s = r.entry(section).or_insert_with(|| json!({}));
            s[key] = v;
        }
    };
    put("memory", "limit", a.memory.map(|v| json!(v)));
    put(
        "memory",
        "reservation",
        a.memory_reservation.map(|v| json!(v)),
    );
    put("memory", "swap", a.memory_swap.map(|v| json!(v)));
    put("cpu", "shares", a.cpu_share.map(|v| json!(v)));
    put("cpu", "quota", a.cpu_quota.map(|v| json!(v)));
    put("cpu", "period", a.cpu_period.map(|v| json!(v)));
    put("cpu", "realtimePeriod", a.cpu_rt_period.map(|v| json!(v)));
    put("cpu", "realtimeRuntime", a.cpu_rt_runtime.map(|v| json!(v)));
    put("cpu", "cpus", a.cpuset_cpus.clone().map(Value::from));
    put("cpu", "mems", a.cpuset_mems.clone().map(Value::from));
    put("blockIO", "weight", a.blkio_weight.map(|v| json!(v)));
    put("pids", "limit", a.pids_limit.map(|v| json!(v)));
    if r.is_empty() {
        bail!("nothing to update: give --resources or a limit flag (see --help)");
    }
    Ok(Value::Object(r))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        u: liboci_cli::Update,
    }

    fn flags(args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let c = Cli::try_parse_from(std::iter::once("update").chain(args.iter().copied()))?;
        super::from_flags(&c.u)
    }

    #[test]
    fn flags_become_linux_resources() {
        let v = flags(&[
            "--memory",
            "1048576",
            "--cpu-quota",
            "50000",
            "--pids-limit",
            "9",
            "c",
        ]);
        assert_eq!(
            v.unwrap(),
            serde_json::json!({"memory": {"limit": 1048576}, "cpu": {"quota": 50000},
                               "pids": {"limit": 9}})
        );
        assert!(flags(&["c"]).is_err());
        assert!(flags(&["--l3-cache-schema", "x", "c"]).is_err());
    }
}
