//! `crx-runc exec [--process FILE | ID CMD...] [-d] [-t --console-socket S] [--pid-file F]
//! [--cwd D] [--env K=V] [--cap CAP] [--ignore-paused] ID`: a process in a running container.
//! In the foreground it exits with the process's code. With `-d` a monitor started by the
//! runtime holds the process's stdio (ours) and exits with its status: its pid is the one
//! written to `--pid-file` (containerd's shim waits on it).
//!
//! As runc: without `--process`, the process is the container's own (capabilities included)
//! with `--cap` added to its bounding, effective and permitted sets (and ambient when the
//! container's process has inheritable ones). `--ignore-paused` lets an exec into a paused
//! container wait for it to be resumed and then start (runc's process sits frozen until
//! then; in the guest, a process joining a frozen cgroup would stall libcontainer's exec).

use std::path::Path;

use anyhow::{bail, Context, Result};
use crx_runtime::oci::exec::{self, ExecOptions};

use super::write_pid_file;

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
    foreground(root, id, process, console.as_deref(), a.ignore_paused)
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

fn foreground(
    root: &Path,
    id: &str,
    process: serde_json::Value,
    console: Option<&Path>,
    ignore_paused: bool,
) -> Result<i32> {
    Ok(exec::attached(
        root,
        id,
        process,
        console,
        ignore_paused,
        |_| {},
    )?)
}

fn detach(
    root: &Path,
    id: &str,
    process: &serde_json::Value,
    console: Option<&Path>,
    pid_file: Option<&Path>,
    ignore_paused: bool,
) -> Result<i32> {
    let child = exec::detach(root, id, process, console, ignore_paused)?;
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
