//! runc's logging, which callers parse: `--log FILE` and `--log-format text|json`.
//!
//! As runc (logrus): each line is `time="..." level=error msg="..."` (text) or
//! `{"level":"error","msg":"...","time":"..."}` (json), written to the log file, or to stderr
//! when no `--log` is given. A fatal error is also printed on stderr as a plain line when the
//! log is a file (runc's `fatal`), so both conmon (the log) and a person (stderr) see it. The
//! message of an error is its whole cause chain on one line (anyhow's `{:#}`), control
//! characters escaped.

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

/// One log line as logrus writes it (without the newline).
fn format_line(level: &str, msg: &str, time: &str, json: bool) -> String {
    if json {
        serde_json::json!({"level": level, "msg": msg, "time": time}).to_string()
    } else {
        format!(
            "time={} level={level} msg={}",
            quote_if_needed(time),
            quote_if_needed(msg)
        )
    }
}

/// A logrus text value: bare when made of `[A-Za-z0-9-._/@^+]` only, else quoted as Go's `%q`
/// does (`"`, `\` and control characters escaped; nothing raw reaches a terminal).
fn quote_if_needed(s: &str) -> String {
    let bare = |c: char| c.is_ascii_alphanumeric() || "-._/@^+".contains(c);
    if !s.is_empty() && s.chars().all(bare) {
        return s.to_owned();
    }
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            '\n' => q.push_str("\\n"),
            '\r' => q.push_str("\\r"),
            '\t' => q.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                q.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() => q.push_str(&format!("\\u{:04x}", c as u32)),
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

/// Writes a line to the log: the file when given, else stderr. Whether it went to stderr.
fn write(level: &str, msg: &str) -> bool {
    let time = crx_runtime::record::rfc3339(std::time::SystemTime::now());
    let json = LOGGER.get().is_some_and(|l| l.json);
    let line = format_line(level, msg, &time, json);
    match LOGGER.get().and_then(|l| l.file.as_ref()) {
        Some(path) => {
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                let _ = writeln!(f, "{line}");
            }
            false
        }
        None => {
            eprintln!("{line}");
            true
        }
    }
}

/// A plain stderr line (runc's `fatal` beside a log file): escaped, one line.
fn plain(level: &str, msg: &str) {
    let q = quote_if_needed(msg);
    let inner = q
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(&q);
    eprintln!("crx-runc: {level}: {}", inner.replace("\\\"", "\""));
}

/// An error: the log, and stderr (the log line itself without `--log`).
pub fn error(msg: &str) {
    if !write("error", msg) {
        plain("error", msg);
    }
}

/// A warning: the log (stderr without `--log`).
pub fn warn(msg: &str) {
    write("warning", msg);
}

/// With `--debug`: the log (stderr without `--log`).
pub fn debug(msg: &str) {
    if LOGGER.get().is_some_and(|l| l.debug) {
        write("debug", msg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_logrus_lines() {
        let t = "2026-12-04T17:00:00.000000000Z";
        assert_eq!(
            format_line("error", "container c1: mount \"/x\": EPERM", t, false),
            format!("time=\"{t}\" level=error msg=\"container c1: mount \\\"/x\\\": EPERM\"")
        );
        assert_eq!(
            format_line("debug", "plain", t, false),
            format!("time=\"{t}\" level=debug msg=plain")
        );
        let v: serde_json::Value =
            serde_json::from_str(&format_line("error", "a: b", t, true)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"level": "error", "msg": "a: b", "time": t})
        );
    }

    #[test]
    fn control_characters_never_reach_the_terminal_raw() {
        let q = quote_if_needed("bad\u{1b}]0;title\u{7}\nnext\u{9b}");
        assert_eq!(q, "\"bad\\x1b]0;title\\x07\\nnext\\u009b\"");
        assert_eq!(quote_if_needed(""), "\"\"");
    }
}
