//! How the runtime starts its own monitor processes (ADR 0010): it re-executes the running
//! binary with [`MONITOR_ARG`] and a [`Job`]; each binary's `main` first calls [`enter`],
//! which runs the job when it is one. No front-end spawns a monitor or knows its arguments.
//!
//! A job reports "ready" or a typed failure over an inherited pipe ([`crate::sync`]) and the
//! starter waits on it: nothing polls a file. Jobs:
//! - [`Job::Container`]: crx-runc's container monitor ([`crate::oci::monitor::run`]): boots
//!   the VM, creates the container, serves start/pause/resume, exits with its status.
//! - [`Job::Exec`]: a detached exec ([`crate::oci::exec::run_detached`]): holds the process's
//!   stdio and exits with its status.
//! - [`Job::Instance`]: the monitor of a `crx run -d` instance: waits for the container,
//!   records its exit, shuts the VM down (and removes the home with `rm`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::child::keep_fds;
use crate::instance;
use crate::record::pid_alive;
use crate::sync::{self, Report, SyncError, SyncReader, SyncWriter};

/// The hidden first argument that makes a CRX binary run a monitor job.
pub const MONITOR_ARG: &str = "__crx-monitor";

/// What a monitor process does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "job", rename_all = "snake_case")]
pub enum Job {
    /// crx-runc's container monitor, with the pty master sent to `console`
    /// (`process.terminal`).
    Container {
        root: PathBuf,
        id: String,
        console: Option<PathBuf>,
    },
    /// A detached exec of the OCI process in the file `process` (read, then removed).
    Exec {
        root: PathBuf,
        id: String,
        process: PathBuf,
        console: Option<PathBuf>,
        ignore_paused: bool,
    },
    /// A detached `crx run`: its instance, booted and monitored.
    Instance {
        root: PathBuf,
        /// Boxed: the run's flags (network, volumes...) make it the largest job by far.
        config: Box<instance::RunConfig>,
    },
}

/// The job and the number of its sync pipe's write end, as passed on the command line.
#[derive(Debug, Serialize, Deserialize)]
struct Invocation {
    job: Job,
    sync_fd: i32,
}

/// Why a monitor did not come up.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("finding this program to start the monitor")]
    Exe(#[source] std::io::Error),
    #[error("starting the monitor")]
    Spawn(#[source] std::io::Error),
    #[error(transparent)]
    Sync(#[from] SyncError),
    /// It reported a failure (its chain).
    #[error("{0}")]
    Failed(String),
    /// It died before reporting.
    #[error("the monitor exited ({0}) before reporting")]
    Died(std::process::ExitStatus),
}

/// A monitor that reported ready: its process (a child of ours), its warnings and the id of
/// what it made (when it reports one).
#[derive(Debug)]
pub struct Started {
    pub child: Child,
    pub warnings: Vec<String>,
    pub id: Option<String>,
}

/// Starts `job` in a monitor process (this program again, in its own process group, with our
/// stdio, or none with `null_stdio`) and waits for its report. On failure the monitor is
/// reaped (it exits by itself after reporting one).
pub fn start(job: Job, null_stdio: bool) -> Result<Started, MonitorError> {
    let exe = std::env::current_exe().map_err(MonitorError::Exe)?;
    let (reader, writer) = sync::pipe()?;
    let inv = Invocation {
        job,
        sync_fd: writer.raw_fd(),
    };
    let mut cmd = Command::new(exe);
    cmd.arg(MONITOR_ARG)
        .arg(serde_json::to_string(&inv).expect("a job serializes"));
    keep_fds(&mut cmd, vec![writer.raw_fd()]);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    if null_stdio {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
    }
    let mut child = cmd.spawn().map_err(MonitorError::Spawn)?;
    drop(writer); // the monitor's copy alone: its exit is our end-of-file
    wait_report(reader, &mut child).map(|(warnings, id)| Started {
        child,
        warnings,
        id,
    })
}

fn wait_report(
    reader: SyncReader,
    child: &mut Child,
) -> Result<(Vec<String>, Option<String>), MonitorError> {
    let report = reader.wait();
    let failed = |e: MonitorError, child: &mut Child| {
        let _ = child.wait();
        Err(e)
    };
    match report {
        Ok(Report::Ready { warnings, id }) => Ok((warnings, id)),
        Ok(Report::Failed { reason }) => failed(MonitorError::Failed(reason), child),
        Err(SyncError::Gone) => match child.wait() {
            Ok(st) => Err(MonitorError::Died(st)),
            Err(e) => Err(MonitorError::Spawn(e)),
        },
        Err(e) => failed(e.into(), child),
    }
}

/// When this process was started as a monitor (`argv[1]` is [`MONITOR_ARG`]): runs its job
/// and returns the exit code. `None` otherwise: the program goes on as itself.
pub fn enter() -> Option<i32> {
    let mut args = std::env::args_os().skip(1);
    if args.next()? != MONITOR_ARG {
        return None;
    }
    let inv = args
        .next()
        .and_then(|a| serde_json::from_str::<Invocation>(a.to_str()?).ok());
    let Some(inv) = inv else {
        eprintln!("{MONITOR_ARG}: internal: no valid job (started by hand?)");
        return Some(125);
    };
    let sync = match SyncWriter::inherited(inv.sync_fd) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{MONITOR_ARG}: {}", crx_proto::chain(&e));
            return Some(125);
        }
    };
    Some(run(inv.job, sync))
}

fn run(job: Job, sync: SyncWriter) -> i32 {
    match job {
        Job::Container { root, id, console } => {
            crate::oci::monitor::run(&root, &id, console.as_deref(), sync)
        }
        Job::Exec {
            root,
            id,
            process,
            console,
            ignore_paused,
        } => crate::oci::exec::run_detached(
            &root,
            &id,
            &process,
            console.as_deref(),
            ignore_paused,
            sync,
        ),
        Job::Instance { root, config } => instance_monitor(&root, &config, sync),
    }
}

/// The monitor of a detached instance: boots it ([`instance::start`]: its VMM is our child and
/// dies with us), reports its id, then waits for the container, records its exit code, shuts
/// the VM down and, with `rm`, removes the home.
fn instance_monitor(root: &Path, cfg: &instance::RunConfig, sync: SyncWriter) -> i32 {
    let instance::Started {
        mut home,
        sandbox: mut sb,
        binds: _binds,
        ..
    } = match instance::start(root, cfg) {
        Ok(s) => s,
        Err(e) => {
            sync.failed(&e);
            return 1;
        }
    };
    sync.report(&Report::Ready {
        warnings: Vec::new(),
        id: Some(home.state.id.clone()),
    });
    let vmm = sb.vmm.id();
    crate::trim::release_later(vec![vmm], move || pid_alive(vmm));
    let waited = sb.control.wait(&home.state.id, None, || pid_alive(vmm));
    if let Ok(s) = waited {
        let _ = home.set_exit(s.code);
    }
    sb.stop(Duration::from_secs(30));
    if cfg.rm {
        let _ = home.remove();
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_round_trip_on_the_command_line() {
        let job = Job::Exec {
            root: "/run/crx-runc".into(),
            id: "c1".into(),
            process: "/run/crx-runc/c1/exec-1.json".into(),
            console: None,
            ignore_paused: true,
        };
        let text = serde_json::to_string(&Invocation {
            job: job.clone(),
            sync_fd: 5,
        })
        .unwrap();
        let back: Invocation = serde_json::from_str(&text).unwrap();
        assert_eq!((back.job, back.sync_fd), (job, 5));
    }

    /// A test binary is not a CRX program: its monitor dies without a report, which the
    /// starter sees at once as a typed error (no wait on any file).
    #[test]
    fn a_monitor_that_cannot_run_is_reported() {
        let job = Job::Exec {
            root: "/nonexistent".into(),
            id: "x".into(),
            process: "/nonexistent/p.json".into(),
            console: None,
            ignore_paused: false,
        };
        // The test harness takes the arguments as filters, runs nothing and exits.
        match start(job, true) {
            Err(MonitorError::Died(_)) => {}
            other => panic!("{other:?}"),
        }
    }
}
