//! `crx-runc events [--stats] [--interval S] ID`: the container's resource usage as runc's
//! stats events (JSON, one per line): once with `--stats`, else every interval until it stops.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use crx_runtime::oci::{lifecycle, ContainerDir, Status};

pub fn run(root: &Path, a: liboci_cli::Events) -> Result<i32> {
    loop {
        let s = lifecycle::stats(root, &a.container_id)?;
        let event = serde_json::json!({
            "type": "stats",
            "id": a.container_id,
            "data": {
                "cpu": {"usage": {"total": s.cpu_usage_ns}},
                "memory": {"usage": {"usage": s.memory_bytes, "limit": s.memory_limit_bytes}},
                "pids": {"current": s.pids, "limit": s.pids_limit},
            },
        });
        println!("{event}");
        if a.stats {
            return Ok(0);
        }
        std::thread::sleep(Duration::from_secs(u64::from(a.interval.max(1))));
        let c = ContainerDir::open(root, &a.container_id)?;
        if c.load()?.oci_status() == Status::Stopped {
            return Ok(0);
        }
    }
}
