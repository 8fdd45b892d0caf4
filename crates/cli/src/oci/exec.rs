//! `crx-runc exec [--process FILE | ID CMD...] [-d] [-t --console-socket S] [--pid-file F]
//! [--cwd D] [--env K=V] [--cap CAP] [--ignore-paused] ID`: a process in a running container.
//! In the foreground it exits with the process's code. With `-d` a hidden `crx-runc __exec`
//! holds the process's stdio (ours) and exits with its status: its pid is the one written to
//! `--pid-file` (containerd's shim waits on it).
//!
//! As runc: without `--process`, the process is the container's own (capabilities included)
//! with `--cap` added to its bounding, effective and permitted sets (and ambient when the
//! container's process has inheritable ones). `--ignore-paused` lets an exec into a paused
//! container wait for it to be resumed and then start (runc's process sits frozen until
//! then; in the guest, a process joining a frozen cgroup would stall libcontainer's exec).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use crx_runtime::oci::exec::{self, ExecOptions};
use crx_runtime::oci::{lifecycle, ContainerDir, Status};

use super::{log, signals, write_pid_file};

pub fn run(root: &Path, a: liboci_cli::Exec) -> Result<i32> {
    if a.preserve_fds > 0 {
        bail!("--preserve-fds: passing extra file descriptors into a microVM is not supported");
    }
    let id = &a.container_id;
    let process = match &a.process {
        Some(p) => {
            let text = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            serde_json::from_slice(&text)
                .with_context(|| format!("{}: not a JSON OCI process", p.display()))?
        }
        None => {
            if a.command.is_empty() {
                bail!("exec: give a command, or --process FILE");
            }
            let caps = a
                .cap
                .iter()
                .map(|c| cap_name(c))
                .collect::<Result<Vec<_>>>()?;
            let opts = ExecOptions {
                args: a.command.clone(),
                env: a.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
                cwd: a.cwd.as_ref().map(|c| c.display().to_string()),
                user: a.user,
                additional_gids: a.additional_gids.clone(),
                terminal: a.tty,
            };
            let mut p = exec::default_process(root, id, &opts)?;
            add_caps(&mut p, &caps);
            p
        }
    };
    let console = match &a.console_socket {
        Some(s) => Some(std::path::absolute(s)?),
        None => None,
    };
    if a.detach {
        return detach(
            root,
            id,
            &process,
            console.as_deref(),
            a.pid_file.as_deref(),
            a.ignore_paused,
        );
    }
    if let Some(p) = &a.pid_file {
        write_pid_file(p, std::process::id())?;
    }
    foreground(
        root,
        id,
        process,
        console.as_deref(),
        a.ignore_paused,
        |_| {},
    )
}

/// A capability as runc takes it (`CAP_NET_ADMIN`, `net_admin`), in the spec's spelling.
fn cap_name(c: &str) -> Result<String> {
    let up = c.trim().to_ascii_uppercase();
    let name = if up.starts_with("CAP_") {
        up
    } else {
        format!("CAP_{up}")
    };
    let plain = name.len() > 4
        && name[4..]
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b == b'_');
    if !plain {
        bail!("--cap {c:?}: not a capability name (e.g. CAP_NET_ADMIN)");
    }
    Ok(name)
}

/// Adds `caps` to `process`'s bounding, effective and permitted sets, and to its ambient set
/// when it has an inheritable set (runc's `exec --cap`; inheritable itself is never widened).
fn add_caps(process: &mut serde_json::Value, caps: &[String]) {
    if caps.is_empty() {
        return;
    }
    if !process["capabilities"].is_object() {
        process["capabilities"] = serde_json::json!({});
    }
    let set = &mut process["capabilities"];
    let mut sets = vec!["bounding", "effective", "permitted"];
    if set["inheritable"].is_array() {
        sets.push("ambient");
    }
    for name in sets {
        if !set[name].is_array() {
            set[name] = serde_json::json!([]);
        }
        if let Some(list) = set[name].as_array_mut() {
            for c in caps {
                if !list.iter().any(|x| x == c.as_str()) {
                    list.push(c.clone().into());
                }
            }
        }
    }
}

/// With `--ignore-paused`: waits while container `id` is paused (it execs once resumed).
fn wait_while_paused(root: &Path, id: &str) -> Result<()> {
    let c = ContainerDir::open(root, id)?;
    while c.load()?.status() == Status::Paused {
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn foreground(
    root: &Path,
    id: &str,
    process: serde_json::Value,
    console: Option<&Path>,
    ignore_paused: bool,
    on_started: impl FnOnce(Result<(), String>),
) -> Result<i32> {
    let mut on_started = Some(on_started);
    if ignore_paused && ContainerDir::open(root, id)?.load()?.status() == Status::Paused {
        // Detached: started as far as the caller is concerned (runc's process is frozen).
        if let Some(f) = on_started.take() {
            f(Ok(()));
        }
        wait_while_paused(root, id)?;
    }
    let (tx, rx) = std::sync::mpsc::channel::<(crx_runtime::agent::Agent, String, String)>();
    signals::forward(move |sig| {
        if let Ok((agent, id, exec_id)) = rx.try_recv().as_ref() {
            let _ = agent.signal_process(id, Some(exec_id), sig);
        }
    })?;
    let result = exec::exec(root, id, process, console, |agent, id, exec_id| {
        let _ = tx.send((agent.clone(), id.to_owned(), exec_id.to_owned()));
        if let Some(f) = on_started.take() {
            f(Ok(()));
        }
    });
    match result {
        Ok(code) => Ok(code),
        Err(e) => {
            if let Some(f) = on_started.take() {
                f(Err(crx_runtime::chain(&e)));
            }
            Err(e.into())
        }
    }
}

/// `__exec ID --process FILE --ready FILE`.
#[derive(Debug, clap::Args)]
pub struct DetachedArgs {
    id: String,
    #[arg(long)]
    process: PathBuf,
    #[arg(long)]
    ready: PathBuf,
    #[arg(long)]
    console_socket: Option<PathBuf>,
    #[arg(long)]
    ignore_paused: bool,
}

pub fn run_detached(root: &Path, a: DetachedArgs) -> Result<i32> {
    let text = std::fs::read(&a.process)?;
    let process = serde_json::from_slice(&text)?;
    let ready = a.ready.clone();
    let report = move |r: Result<(), String>| {
        let text = match r {
            Ok(()) => "ok".to_owned(),
            Err(e) => format!("error: {e}"),
        };
        let tmp = ready.with_extension("tmp");
        let _ = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &ready));
    };
    let console = a.console_socket.as_deref();
    match foreground(root, &a.id, process, console, a.ignore_paused, report) {
        Ok(code) => Ok(code),
        Err(e) => {
            // Our stderr is the process's: the log only.
            log::error_quiet(&format!("{e:#}"));
            Ok(1)
        }
    }
}

fn detach(
    root: &Path,
    id: &str,
    process: &serde_json::Value,
    console: Option<&Path>,
    pid_file: Option<&Path>,
    ignore_paused: bool,
) -> Result<i32> {
    let c = ContainerDir::open(root, id)?;
    lifecycle::agent(&c)?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let base = c.dir.join(format!("exec-{}-{nanos:x}", std::process::id()));
    let (pfile, ready) = (base.with_extension("json"), base.with_extension("ready"));
    std::fs::write(&pfile, serde_json::to_vec(process)?)?;
    let cleanup = || {
        let _ = std::fs::remove_file(&pfile);
        let _ = std::fs::remove_file(&ready);
    };
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("--root").arg(root);
    if let Some(g) = log::global_args() {
        cmd.args(g);
    }
    cmd.args(["__exec", id, "--process"])
        .arg(&pfile)
        .arg("--ready")
        .arg(&ready);
    if let Some(s) = console {
        cmd.arg("--console-socket").arg(s);
    }
    if ignore_paused {
        cmd.arg("--ignore-paused");
    }
    cmd.stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().context("starting the exec process")?;
    let answer = loop {
        if let Ok(t) = std::fs::read_to_string(&ready) {
            break t;
        }
        if let Ok(Some(st)) = child.try_wait() {
            break std::fs::read_to_string(&ready)
                .unwrap_or_else(|_| format!("error: the exec process exited ({st})"));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    cleanup();
    if let Some(e) = answer.strip_prefix("error: ") {
        bail!("exec in {id}: {e}");
    }
    if let Some(p) = pid_file {
        write_pid_file(p, child.id())?;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn exec_caps_join_the_containers_sets() {
        let spec = json!({"process": {"args": ["sh"], "capabilities": {
            "bounding": ["CAP_KILL", "CAP_CHOWN"], "effective": ["CAP_KILL"],
            "permitted": ["CAP_KILL"]}, "execCPUAffinity": {"initial": "7"}}});
        let opts = ExecOptions {
            args: vec!["id".into()],
            ..ExecOptions::default()
        };
        let mut p = exec::process_from(&spec, &opts);
        let caps: Vec<String> = ["net_admin", "CAP_CHOWN"]
            .iter()
            .map(|c| cap_name(c).unwrap())
            .collect();
        add_caps(&mut p, &caps);
        let c = &p["capabilities"];
        assert_eq!(
            c["bounding"],
            json!(["CAP_KILL", "CAP_CHOWN", "CAP_NET_ADMIN"])
        );
        assert_eq!(
            c["effective"],
            json!(["CAP_KILL", "CAP_NET_ADMIN", "CAP_CHOWN"])
        );
        assert_eq!(
            c["permitted"],
            json!(["CAP_KILL", "CAP_NET_ADMIN", "CAP_CHOWN"])
        );
        assert!(c.get("ambient").is_none() && c.get("inheritable").is_none());
        // Passed through as given: the guest clamps it to the VM's CPUs.
        assert_eq!(p["execCPUAffinity"], json!({"initial": "7"}));

        // A process with inheritable capabilities gets them in ambient too (runc 1.1).
        let mut p = json!({"capabilities": {"inheritable": ["CAP_KILL"]}});
        add_caps(&mut p, &caps);
        assert_eq!(p["capabilities"]["inheritable"], json!(["CAP_KILL"]));
        assert_eq!(
            p["capabilities"]["ambient"],
            json!(["CAP_NET_ADMIN", "CAP_CHOWN"])
        );
        // None at all: the --cap ones.
        let mut p = json!({"args": ["id"]});
        add_caps(&mut p, &caps[..1]);
        assert_eq!(p["capabilities"]["effective"], json!(["CAP_NET_ADMIN"]));
        assert!(cap_name("CAP_").is_err() && cap_name("sys admin").is_err());
    }
}
