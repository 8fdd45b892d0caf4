//! OCI hooks, run on the host: `prestart` and `createRuntime` by `create`, `poststart` by
//! `start`, `poststop` by `delete`. Each gets the container's state JSON on stdin.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;

use super::error::OciError;

/// The hook lists crx-runc runs on the host (`createContainer` and `startContainer` would run
/// in the container's namespaces, inside the VM: not supported).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    Prestart,
    CreateRuntime,
    Poststart,
    Poststop,
}

impl HookKind {
    /// The key in `spec.hooks`.
    pub fn key(self) -> &'static str {
        match self {
            HookKind::Prestart => "prestart",
            HookKind::CreateRuntime => "createRuntime",
            HookKind::Poststart => "poststart",
            HookKind::Poststop => "poststop",
        }
    }
}

#[derive(Debug, Deserialize)]
struct Hook {
    path: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: Vec<String>,
    timeout: Option<u64>,
}

/// Runs the `kind` hooks of `spec` in order, each with `state` on stdin; the first failure
/// (spawn error, non-zero exit, timeout) is returned and the rest do not run: for `prestart`
/// and `createRuntime`, whose failure fails `create` (the spec).
pub fn run(spec: &Value, kind: HookKind, state: &Value) -> Result<(), OciError> {
    let input = serde_json::to_vec(state).expect("state serializes");
    for h in &list(spec, kind)? {
        run_one(h, &input).map_err(|reason| failed(kind, h, reason))?;
    }
    Ok(())
}

/// Runs every `kind` hook of `spec` in order, each with `state` on stdin, a failing one not
/// stopping the others: for `poststart` and `poststop`, whose failures are warnings (the spec).
/// `None` when all succeeded; else the failure, or [`OciError::Hooks`] when several failed.
pub fn run_warn(spec: &Value, kind: HookKind, state: &Value) -> Option<OciError> {
    let hooks = match list(spec, kind) {
        Ok(h) => h,
        Err(e) => return Some(e),
    };
    let input = serde_json::to_vec(state).expect("state serializes");
    let mut failures: Vec<OciError> = hooks
        .iter()
        .filter_map(|h| run_one(h, &input).err().map(|r| failed(kind, h, r)))
        .collect();
    match failures.len() {
        0 => None,
        1 => failures.pop(),
        _ => Some(OciError::Hooks {
            what: kind.key(),
            failures,
        }),
    }
}

/// The `kind` hooks of `spec` (none when the list is absent).
fn list(spec: &Value, kind: HookKind) -> Result<Vec<Hook>, OciError> {
    match spec["hooks"].get(kind.key()) {
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| OciError::Hook {
            what: kind.key(),
            path: "?".into(),
            reason: format!("malformed hook list: {e}"),
        }),
        None => Ok(Vec::new()),
    }
}

fn failed(kind: HookKind, h: &Hook, reason: String) -> OciError {
    OciError::Hook {
        what: kind.key(),
        path: h.path.clone(),
        reason,
    }
}

fn run_one(h: &Hook, input: &[u8]) -> Result<(), String> {
    let mut cmd = Command::new(&h.path);
    if let Some((first, rest)) = h.args.split_first() {
        std::os::unix::process::CommandExt::arg0(&mut cmd, first);
        cmd.args(rest);
    }
    cmd.env_clear();
    for e in &h.env {
        if let Some((k, v)) = e.split_once('=') {
            cmd.env(k, v);
        }
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin is fine.
        let _ = stdin.write_all(input);
    }
    let mut stderr = child.stderr.take();
    let deadline = h
        .timeout
        .map(|s| Instant::now() + Duration::from_secs(s.max(1)));
    let status = loop {
        if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
            break st;
        }
        if deadline.is_some_and(|d| Instant::now() > d) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("timed out after {} s", h.timeout.unwrap_or(0)));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    if status.success() {
        return Ok(());
    }
    let mut msg = String::new();
    if let Some(e) = stderr.as_mut() {
        let _ = e.take(4096).read_to_string(&mut msg);
    }
    let msg = msg.trim().replace('\n', " ");
    Err(if msg.is_empty() {
        format!("{status}")
    } else {
        format!("{status}: {msg}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hooks_get_state_args_and_env() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        let script = format!("cat > {o}; echo \"$0 $1 $X\" >> {o}", o = out.display());
        let spec = json!({"hooks": {"prestart": [
            {"path": "/bin/sh", "args": ["hookname", "-c", script, "zero", "one"], "env": ["X=y"]}
        ]}});
        run(&spec, HookKind::Prestart, &json!({"id": "c1"})).unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        assert_eq!(text, "{\"id\":\"c1\"}zero one y\n");
        // Other kinds: nothing to run.
        run(&spec, HookKind::Poststop, &json!({})).unwrap();
    }

    #[test]
    fn failing_and_slow_hooks_are_errors() {
        let spec = json!({"hooks": {"poststart": [
            {"path": "/bin/sh", "args": ["sh", "-c", "echo boom >&2; exit 3"]}]}});
        let e = run(&spec, HookKind::Poststart, &json!({})).unwrap_err();
        let e = e.to_string();
        assert!(e.contains("boom") && e.contains("poststart"), "{e}");
        let spec = json!({"hooks": {"poststop": [
            {"path": "/bin/sleep", "args": ["sleep", "10"], "timeout": 1}]}});
        let t = Instant::now();
        let e = run(&spec, HookKind::Poststop, &json!({})).unwrap_err();
        assert!(e.to_string().contains("timed out"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));
        let spec = json!({"hooks": {"prestart": [{"path": "/nonexistent/hook"}]}});
        assert!(run(&spec, HookKind::Prestart, &json!({})).is_err());
    }

    #[test]
    fn prestart_stops_at_a_failure_poststart_and_poststop_run_on() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        let mark = |n: &str| {
            json!({"path": "/bin/sh",
                "args": ["sh", "-c", format!("echo {n} >> {}", out.display())]})
        };
        let fail = |n: &str| json!({"path": "/bin/sh", "args": ["sh", "-c", format!("echo {n} >&2; exit 1")]});
        let hooks = json!([fail("first"), mark("a"), {"path": "/nonexistent/hook"}, mark("b")]);
        for kind in [HookKind::Poststart, HookKind::Poststop] {
            let _ = std::fs::remove_file(&out);
            let spec = json!({"hooks": {kind.key(): hooks}});
            let w = run_warn(&spec, kind, &json!({})).expect("a warning");
            let w = w.to_string();
            assert!(w.contains("2 ") && w.contains(kind.key()), "{w}");
            assert!(
                w.contains("first") && w.contains("/nonexistent/hook"),
                "{w}"
            );
            assert_eq!(std::fs::read_to_string(&out).unwrap(), "a\nb\n", "{kind:?}");
        }
        let spec = json!({"hooks": {"poststart": [fail("only"), mark("c")]}});
        let w = run_warn(&spec, HookKind::Poststart, &json!({})).unwrap();
        assert!(matches!(w, OciError::Hook { .. }), "{w}");
        let spec = json!({"hooks": {"poststop": [mark("d")]}});
        assert!(run_warn(&spec, HookKind::Poststop, &json!({})).is_none());
        // prestart: the first failure is the error, the rest do not run.
        let _ = std::fs::remove_file(&out);
        let spec = json!({"hooks": {"prestart": [fail("p"), mark("e")]}});
        assert!(run(&spec, HookKind::Prestart, &json!({})).is_err());
        assert!(!out.exists());
    }
}
