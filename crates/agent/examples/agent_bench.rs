//! Agent benchmark, run inside the nested lab: prints numbers, asserts nothing about time.
//!
//! ```sh
//! cargo build -p crx-init --examples && cargo build -p crx-vmm -p xtask
//! target/debug/xtask lab -- target/debug/examples/agent_bench --runs 5
//! ```
//!
//! Per run, one fresh VM (crx-vmm, project kernel, base.cpio, a busybox ext4 image on
//! /dev/vda) in agent mode:
//! - guest kernel start -> `Run /init` (the kernel's printk timestamp on the console);
//! - VMM main -> crx-init start and -> agent ready (boot-timer marks 1 and 2, host clock), and
//!   their difference, broken down by marks 3 (mounted) and 4 (reaper), and agent ready ->
//!   container helper started (mark 5, on a thread after ready);
//! - VMM spawn -> handshake answered on the host;
//! - ping round trips (`--pings`, default 200): median and p90;
//! - a container `cat /proc/uptime`: create request -> first stdout byte on the host (create
//!   and start requests included), for the VM's first container and a second one;
//!
//! and the baseline in the same invocation: Debian's `runc run` of an OCI bundle (`runc spec`
//! plus edits) holding the same busybox tree, spawn -> first stdout byte.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crx_proto::{Request, Response, StreamKind};
use crx_testkit::vm::{Vm, VmOpts};
use crx_testkit::{agent, env, vsock};

fn main() {
    let mut runs = 5usize;
    let mut pings = 200usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "--pings" => pings = args.next().and_then(|v| v.parse().ok()).expect("--pings N"),
            _ => panic!("usage: agent_bench [--runs N] [--pings N]"),
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = agent::busybox_tree(dir.path());
    let img = dir.path().join("rootfs.ext4");
    agent::ext4_image(&tree, &img);
    println!(
        "crx-vmm {} (runs {runs}, pings {pings} per run)",
        env::vmm_binary().display()
    );

    let mut s = Samples::default();
    for i in 0..runs {
        let vmdir = dir.path().join(format!("vm{i}"));
        std::fs::create_dir(&vmdir).unwrap();
        crx_run(&vmdir, &img, pings, &mut s);
    }
    let mut runc_ms = Vec::new();
    for i in 0..runs {
        match runc_run(dir.path(), &tree, i) {
            Ok(ms) => runc_ms.push(ms),
            Err(e) => {
                println!("runc: {e}");
                break;
            }
        }
    }

    println!("{:<52} {:>10} {:>10} {:>10}", "ms", "median", "p90", "min");
    row(
        "guest: kernel start -> Run /init (printk)",
        &mut s.kernel_to_init,
    );
    row("VMM main -> crx-init start (mark 1)", &mut s.mark1);
    row("VMM main -> agent ready (mark 2)", &mut s.mark2);
    row(
        "crx-init start -> agent ready (2 - 1)",
        &mut s.init_to_ready,
    );
    let names = [
        "  of which: init start -> mounted (3 - 1)",
        "  mounted -> console, hostname, reaper (4 - 3)",
        "  -> vsock listening (2 - 4)",
        "agent ready -> container helper started (5 - 2)",
    ];
    for (name, v) in names.iter().zip(s.steps.iter_mut()) {
        row(name, v);
    }
    row("host: spawn -> handshake answered", &mut s.handshake);
    row("ping round trip", &mut s.ping);
    row(
        "crx: create -> first output byte (1st container)",
        &mut s.first,
    );
    row(
        "crx: create -> first output byte (2nd container)",
        &mut s.second,
    );
    row(
        "crx: guest uptime at container's cat (s*1000)",
        &mut s.uptime,
    );
    row(
        "runc run (lab host): spawn -> first output byte",
        &mut runc_ms,
    );
    if !runc_ms.is_empty() {
        let r = median(&mut runc_ms);
        println!(
            "ratio crx/runc (median): 1st container {:.2}, 2nd container {:.2}",
            median(&mut s.first) / r,
            median(&mut s.second) / r
        );
    }
}

#[derive(Default)]
struct Samples {
    kernel_to_init: Vec<f64>,
    mark1: Vec<f64>,
    mark2: Vec<f64>,
    init_to_ready: Vec<f64>,
    /// crx-init's steps: marks 1 -> 3 -> 4 -> 2 -> 5.
    steps: [Vec<f64>; 4],
    handshake: Vec<f64>,
    ping: Vec<f64>,
    first: Vec<f64>,
    second: Vec<f64>,
    uptime: Vec<f64>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn crx_run(dir: &Path, img: &Path, pings: usize, s: &mut Samples) {
    let mut vm = Vm::spawn(
        dir,
        VmOpts {
            vsock: true,
            disks: vec![format!("{}:ro", img.display())],
            ..VmOpts::default()
        },
    );
    let mut c = vm.client(Duration::from_secs(120));
    s.handshake.push(ms(vm.spawned.elapsed()));
    for _ in 0..pings {
        let t = Instant::now();
        assert_eq!(c.call(Request::Ping).unwrap(), Response::Pong);
        s.ping.push(ms(t.elapsed()));
    }
    for (n, id) in ["b1", "b2"].iter().enumerate() {
        let mut out = vm.stream(id, None, StreamKind::Stdout);
        let t = Instant::now();
        c.call(Request::CreateContainer {
            id: id.to_string(),
            spec: agent::spec("cat /proc/uptime"),
            rootfs: agent::rootfs_vda(),
        })
        .unwrap();
        c.call(Request::Start { id: id.to_string() }).unwrap();
        let mut b = [0u8; 1];
        assert_eq!(out.read(&mut b).unwrap(), 1, "{}", vm.logs());
        let d = ms(t.elapsed());
        let rest = vsock::read_until(&mut out, "\n");
        if n == 0 {
            s.first.push(d);
            let up = format!("{}{rest}", b[0] as char);
            if let Some(v) = up
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<f64>().ok())
            {
                s.uptime.push(v * 1e3);
            }
        } else {
            s.second.push(d);
        }
        c.call(Request::Wait {
            id: id.to_string(),
            exec_id: None,
        })
        .unwrap();
        c.call(Request::Remove {
            id: id.to_string(),
            force: false,
        })
        .unwrap();
    }
    assert_eq!(c.call(Request::Shutdown).unwrap(), Response::Ok);
    // Closing our end lets the agent reset at once (it waits up to 1 s for that).
    drop(c);
    let st = vm.wait(Duration::from_secs(60));
    assert!(st.success(), "crx-vmm: {st}\n{}", vm.logs());
    let (m1, m2) = (vm.boot_mark(1), vm.boot_mark(2));
    if let (Some(a), Some(b)) = (m1, m2) {
        s.mark1.push(a as f64 / 1e3);
        s.mark2.push(b as f64 / 1e3);
        s.init_to_ready.push((b - a) as f64 / 1e3);
    }
    let marks: Option<Vec<u64>> = [1, 3, 4, 2, 5].iter().map(|&m| vm.boot_mark(m)).collect();
    if let Some(t) = marks {
        for (i, w) in t.windows(2).enumerate() {
            s.steps[i].push(w[1].saturating_sub(w[0]) as f64 / 1e3);
        }
    }
    // `[    2.912345] Run /init as init process`
    if let Some(t) = vm.console_text().lines().find_map(|l| {
        let (ts, rest) = l.trim_start_matches('[').split_once(']')?;
        rest.contains("Run /init as init process")
            .then(|| ts.trim().parse::<f64>().ok())?
    }) {
        s.kernel_to_init.push(t * 1e3);
    }
}

/// `runc run` of a bundle holding the busybox tree: spawn -> first stdout byte, in ms.
fn runc_run(dir: &Path, tree: &Path, i: usize) -> Result<f64, String> {
    let bundle = dir.join(format!("bundle{i}"));
    std::fs::create_dir(&bundle).unwrap();
    let st = Command::new("cp")
        .arg("-a")
        .arg(tree)
        .arg(bundle.join("rootfs"))
        .status()
        .unwrap();
    assert!(st.success());
    let out = Command::new("runc")
        .arg("spec")
        .current_dir(&bundle)
        .output()
        .map_err(|e| format!("runc spec: {e} (apt package runc)"))?;
    if !out.status.success() {
        return Err(format!(
            "runc spec: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let cfg = bundle.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
    spec["process"]["terminal"] = false.into();
    spec["process"]["args"] = serde_json::json!(["/bin/sh", "-c", "cat /proc/uptime"]);
    spec["process"]["env"] = serde_json::json!(["PATH=/bin"]);
    spec["hostname"] = "ctr".into();
    std::fs::write(&cfg, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();

    let root = dir.join("runc-root");
    let t = Instant::now();
    let mut child = Command::new("runc")
        .arg("--root")
        .arg(&root)
        .arg("run")
        .arg("--bundle")
        .arg(&bundle)
        .arg(format!("bench{i}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("runc run: {e}"))?;
    let mut b = [0u8; 1];
    let n = child.stdout.as_mut().unwrap().read(&mut b).unwrap_or(0);
    let d = ms(t.elapsed());
    let out = child.wait_with_output().unwrap();
    if n == 0 || !out.status.success() {
        return Err(format!(
            "runc run: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(d)
}

fn median(v: &mut [f64]) -> f64 {
    pct(v, 50)
}

fn pct(v: &mut [f64], p: usize) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) * p).div_ceil(100)]
}

fn row(name: &str, v: &mut [f64]) {
    if v.is_empty() {
        println!("{name:<52} {:>10}", "n/a");
        return;
    }
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    println!(
        "{name:<52} {:>10.2} {:>10.2} {:>10.2}",
        median(v),
        pct(v, 90),
        min
    );
}
