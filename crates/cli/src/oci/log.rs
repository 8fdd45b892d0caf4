//! runc's `--log FILE` and `--log-format text|json`: errors (and with `--debug`, debug lines)
//! go to stderr and, when a log file is given, to it (conmon and the shims read it back).

use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

#[derive(Debug)]
struct Logger {
    file: Option<PathBuf>,
    json: bool,
    debug: bool,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

pub fn init(g: &liboci_cli::GlobalOpts) {
    let _ = LOGGER.set(Logger {
        file: g.log.clone(),
        json: g.log_format.as_deref() == Some("json"),
        debug: g.debug,
    });
}

fn write(level: &str, msg: &str, stderr: bool) {
    let msg = msg.replace('\n', " ");
    if stderr {
        eprintln!("crx-runc: {msg}");
    }
    let Some(l) = LOGGER.get() else { return };
    let Some(path) = &l.file else { return };
    let time = crx_runtime::oci::state::rfc3339(std::time::SystemTime::now());
    let line = if l.json {
        serde_json::json!({"level": level, "msg": msg, "time": time}).to_string()
    } else {
        format!("time=\"{time}\" level={level} msg={msg:?}")
    };
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{line}");
    }
}

/// An error: stderr and the log.
pub fn error(msg: &str) {
    write("error", msg, true);
}

/// A warning: stderr and the log.
pub fn warn(msg: &str) {
    write("warning", msg, true);
}

/// An error of a process whose stderr belongs to the container (the monitor): the log only.
pub fn error_quiet(msg: &str) {
    write("error", msg, false);
}

/// A warning of a process whose stderr belongs to the container: the log only.
pub fn warn_quiet(msg: &str) {
    write("warning", msg, false);
}

/// With `--debug`: stderr and the log.
pub fn debug(msg: &str) {
    if LOGGER.get().is_some_and(|l| l.debug) {
        write("debug", msg, true);
    }
}

/// The global flags that pass the log settings on to a child crx-runc.
pub fn global_args() -> Option<Vec<String>> {
    let l = LOGGER.get()?;
    let mut v = Vec::new();
    if let Some(f) = &l.file {
        v.push("--log".to_owned());
        v.push(f.display().to_string());
    }
    if l.json {
        v.push("--log-format".to_owned());
        v.push("json".to_owned());
    }
    if l.debug {
        v.push("--debug".to_owned());
    }
    Some(v)
}
