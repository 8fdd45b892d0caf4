//! `crx-runc exec [--process FILE | ID CMD...] [-d] [-t --console-socket S] [--pid-file F]
//! [--cwd D] [--env K=V] ID`: a process in a running container. In the foreground it exits with the process's code. With
//! `-d` a hidden `crx-runc __exec` holds the process's stdio (ours) and exits with its status:
//! its pid is the one written to `--pid-file` (containerd's shim waits on it).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use crx_runtime::oci::exec::{self, ExecOptions};
use crx_runtime::oci::{lifecycle, ContainerDir};

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
            let opts = ExecOptions {
                args: a.command.clone(),
                env: a.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
                cwd: a.cwd.as_ref().map(|c| c.display().to_string()),
                user: a.user,
                additional_gids: a.additional_gids.clone(),
                terminal: a.tty,
            };
            exec::default_process(root, id, &opts)?
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
        );
    }
    if let Some(p) = &a.pid_file {
        write_pid_file(p, std::process::id())?;
    }
    foreground(root, id, process, console.as_deref(), |_| {})
}

fn foreground(
    root: &Path,
    id: &str,
    process: serde_json::Value,
    console: Option<&Path>,
    on_started: impl FnOnce(Result<(), String>),
) -> Result<i32> {
    let (tx, rx) = std::sync::mpsc::channel::<(crx_runtime::agent::Agent, String, String)>();
    signals::forward(move |sig| {
        if let Ok((agent, id, exec_id)) = rx.try_recv().as_ref() {
            let _ = agent.signal_process(id, Some(exec_id), sig);
        }
    })?;
    let mut on_started = Some(on_started);
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
                f(Err(crx_runtime::oci::monitor::chain(&e)));
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
    match foreground(root, &a.id, process, a.console_socket.as_deref(), report) {
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
