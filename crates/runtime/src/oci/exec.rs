//! Extra processes in a running container (`crx-runc exec`).

use std::path::Path;

use crx_proto::{Request, StreamKind};
use serde_json::Value;

use super::container::ContainerDir;
use super::error::{io, OciError};
use super::state::Status;
use crate::agent::Agent;
use crate::monitor::{self, Job};
use crate::record::{RecordError, SandboxFiles};
use crate::relay::{self, PtyEnds, Relay};
use crate::sync::{Report, SyncWriter};
use crate::tty;

/// What `exec` changes in the container's process when no `--process` file is given.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    pub args: Vec<String>,
    /// `KEY=VALUE`, replacing the container's KEY.
    pub env: Vec<String>,
    pub cwd: Option<String>,
    pub user: Option<(u32, Option<u32>)>,
    pub additional_gids: Vec<u32>,
    /// A terminal (`-t`).
    pub terminal: bool,
}

/// The process of an exec: the container's own (env, cwd, user, capabilities...) with
/// `opts` applied, without a terminal.
pub fn process_from(spec: &Value, opts: &ExecOptions) -> Value {
    let mut p = spec["process"].clone();
    if !p.is_object() {
        p = serde_json::json!({"cwd": "/", "user": {"uid": 0, "gid": 0}});
    }
    p["args"] = serde_json::json!(opts.args);
    p["terminal"] = opts.terminal.into();
    if !opts.env.is_empty() {
        let mut env: Vec<String> = p["env"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        for e in &opts.env {
            let key = e.split('=').next().unwrap_or_default();
            env.retain(|x| x.split('=').next() != Some(key));
            env.push(e.clone());
        }
        p["env"] = serde_json::json!(env);
    }
    if let Some(cwd) = &opts.cwd {
        p["cwd"] = cwd.clone().into();
    }
    if let Some((uid, gid)) = opts.user {
        p["user"]["uid"] = uid.into();
        p["user"]["gid"] = gid.unwrap_or(uid).into();
    }
    if !opts.additional_gids.is_empty() {
        p["user"]["additionalGids"] = serde_json::json!(opts.additional_gids);
    }
    p
}

/// The process for `opts` in container `id` (from its saved spec).
pub fn default_process(root: &Path, id: &str, opts: &ExecOptions) -> Result<Value, OciError> {
    let c = ContainerDir::open(root, id)?;
    Ok(process_from(&c.read_config()?, opts))
}

/// Runs `process` in the running container `id`, its stdio being ours (stdin copied until
/// its end), or with `process.terminal` a host pty whose master goes to the socket `console`,
/// and returns its exit code (`128 + N` when killed by signal N). `on_started(agent, id,
/// exec_id)` is called once it runs. The wait ends with an error when the container stops
/// meanwhile (its monitor gone, or a backend of its VM dead: see [`running`]).
pub fn exec(
    root: &Path,
    id: &str,
    process: Value,
    console: Option<&Path>,
    on_started: impl FnOnce(&Agent, &str, &str),
) -> Result<i32, OciError> {
    let c = ContainerDir::open(root, id)?;
    c.load()?
        .expect(&[Status::Running], "exec needs a running container")?;
    let terminal = process["terminal"].as_bool() == Some(true);
    if terminal && console.is_none() {
        return Err(OciError::NoConsoleSocket);
    }
    let exec_id = crate::agent::new_exec_id();
    let agent = Agent::new(c.vsock_path());
    let mut control = agent.control()?;
    let pty = match terminal {
        true => Some(agent.open_stream(id, Some(&exec_id), StreamKind::Pty)?),
        false => None,
    };
    let stdio = match terminal {
        true => None,
        false => Some(relay::open_stdio(&agent, id, Some(&exec_id))?),
    };
    control
        .call(Request::Exec {
            id: id.to_owned(),
            exec_id: exec_id.clone(),
            process,
        })
        .map_err(crate::RuntimeError::from)?;
    let relay = match (pty, stdio, console) {
        (Some(stream), _, Some(console)) => {
            let pair = tty::open_pty()?;
            tty::send_console(console, &pair.master, tty::PTMX_NAME)?;
            drop(pair.master);
            Relay::Pty {
                stream,
                ends: PtyEnds::slave(pair.slave)?,
            }
        }
        (None, Some(streams), _) => Relay::Stdio {
            streams,
            interactive: true,
        },
        _ => return Err(OciError::NoConsoleSocket),
    };
    on_started(&agent, id, &exec_id);
    let alive = || running(&c);
    let status = relay::relay_and_wait(&mut control, &agent, id, Some(&exec_id), relay, alive)?;
    Ok(status.code)
}

/// Whether container `c` still runs as far as the host knows: its monitor lives and has not
/// recorded it stopped or failed.
fn running(c: &ContainerDir) -> bool {
    c.load().is_ok_and(|r| {
        matches!(
            r.oci_status(),
            Status::Created | Status::Running | Status::Paused
        )
    })
}

/// [`exec`] for a process that stands for the exec (crx-runc's `exec` in the foreground, a
/// detached exec's monitor): with `ignore_paused`, a paused container is first waited for
/// (its monitor answers a `wait-unpaused` request once it is resumed or stopped: nothing is
/// polled; the exec counts as started meanwhile, as runc's frozen process does); our signals are forwarded to the process once it runs; `on_started` is
/// told once, `Ok` when it runs or the reason it did not.
pub fn attached(
    root: &Path,
    id: &str,
    process: Value,
    console: Option<&Path>,
    ignore_paused: bool,
    on_started: impl FnOnce(Result<(), String>),
) -> Result<i32, OciError> {
    let mut on_started = Some(on_started);
    let mut tell = |r: Result<(), String>| {
        if let Some(f) = on_started.take() {
            f(r);
        }
    };
    let c = ContainerDir::open(root, id)?;
    if ignore_paused && c.load()?.oci_status() == Status::Paused {
        tell(Ok(()));
        // The monitor answers once it resumed (or stopped) the container, and its socket
        // closes if it dies: either way the state is read again below, by `exec`.
        let _ = super::monitor::request(&c, "wait-unpaused");
    }
    let (tx, rx) = std::sync::mpsc::channel::<(Agent, String, String)>();
    crate::signals::forward(move |sig| {
        if let Ok((agent, id, exec_id)) = rx.try_recv().as_ref() {
            let _ = agent.signal_process(id, Some(exec_id), sig);
        }
    })
    .map_err(OciError::Signals)?;
    let result = exec(root, id, process, console, |agent, id, exec_id| {
        let _ = tx.send((agent.clone(), id.to_owned(), exec_id.to_owned()));
        tell(Ok(()));
    });
    if let Err(e) = &result {
        tell(Err(crx_proto::chain(e)));
    }
    result
}

/// Starts `process` in the running container `id` detached: a monitor ([`Job::Exec`], its
/// stdio ours) runs it and exits with its status. Returns once the process runs (or with why
/// it did not, reported over the monitor's pipe), with the monitor (a child of ours).
pub fn detach(
    root: &Path,
    id: &str,
    process: &Value,
    console: Option<&Path>,
    ignore_paused: bool,
) -> Result<std::process::Child, OciError> {
    let c = ContainerDir::open(root, id)?;
    super::lifecycle::agent(&c)?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let file = c
        .dir
        .join(format!("exec-{}-{nanos:x}.json", std::process::id()));
    let text = serde_json::to_vec(process).expect("json");
    // Private: the process holds its environment.
    crate::paths::write_private(&file, &text).map_err(io(&file))?;
    let job = Job::Exec {
        root: root.to_owned(),
        id: id.to_owned(),
        process: file.clone(),
        console: console.map(Path::to_owned),
        ignore_paused,
    };
    let started = monitor::start(job, false);
    let _ = std::fs::remove_file(&file);
    let started = started.map_err(|source| OciError::ExecFailed {
        id: id.to_owned(),
        source,
    })?;
    Ok(started.child)
}

/// The detached exec's job ([`Job::Exec`]): reads (and removes) the process file, runs it
/// ([`attached`]), reports on `sync` once it runs (or why not), and returns its exit code.
/// Its stdio is the process's: nothing is printed.
pub fn run_detached(
    root: &Path,
    id: &str,
    process: &Path,
    console: Option<&Path>,
    ignore_paused: bool,
    sync: SyncWriter,
) -> i32 {
    let read = std::fs::read(process).map_err(io(process)).and_then(|t| {
        serde_json::from_slice::<Value>(&t).map_err(|source| {
            OciError::Record(RecordError::Corrupt {
                path: process.to_owned(),
                source,
            })
        })
    });
    let _ = std::fs::remove_file(process);
    let process = match read {
        Ok(p) => p,
        Err(e) => {
            sync.failed(&e);
            return 1;
        }
    };
    let report = move |r: Result<(), String>| match r {
        Ok(()) => sync.ready(Vec::new()),
        Err(reason) => sync.report(&Report::Failed { reason }),
    };
    attached(root, id, process, console, ignore_paused, report).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn exec_process_keeps_the_containers_and_applies_options() {
        let spec = json!({"process": {"args": ["sh"], "env": ["PATH=/bin", "A=1"], "cwd": "/",
            "user": {"uid": 0, "gid": 0}, "terminal": true, "capabilities": {"bounding": ["CAP_KILL"]}}});
        let p = process_from(
            &spec,
            &ExecOptions {
                args: vec!["ls".into()],
                env: vec!["A=2".into(), "B=3".into()],
                cwd: Some("/tmp".into()),
                user: Some((5, None)),
                additional_gids: vec![7],
                terminal: false,
            },
        );
        assert_eq!(p["args"], json!(["ls"]));
        assert_eq!(p["env"], json!(["PATH=/bin", "A=2", "B=3"]));
        assert_eq!(p["cwd"], "/tmp");
        assert_eq!(
            p["user"],
            json!({"uid": 5, "gid": 5, "additionalGids": [7]})
        );
        assert_eq!(p["terminal"], false);
        assert_eq!(p["capabilities"]["bounding"], json!(["CAP_KILL"]));
    }
}
