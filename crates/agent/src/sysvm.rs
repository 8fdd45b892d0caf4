//! System-VM mode: run one program with the console as its stdio, then report how it ended.
//!
//! The report is one line on the console (stdout), which the host reads from the serial log
//! (`crx_proto::console::status_line`):
//!
//! ```text
//! crx-init: exit status N
//! ```
//!
//! N is the exit code, or 128 + the signal number when a signal killed it (shell convention);
//! 127 when the program could not be found, 126 when it could not be executed otherwise.

use std::io::Write;
use std::process::Command;

use crate::reaper::Reaper;

/// The environment the program starts with (plus `crxenv=` additions).
const BASE_ENV: [(&str, &str); 3] = [
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("HOME", "/"),
    ("TERM", "linux"),
];

/// Runs `prog args` with `env`, waits for it, prints the status line, returns the status.
pub fn run(reaper: &Reaper, prog: &str, args: &[String], env: &[(String, String)]) -> i32 {
    let mut cmd = Command::new(prog);
    cmd.args(args).env_clear().envs(BASE_ENV);
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    let code = match reaper.spawn(&mut cmd) {
        Ok(pid) => {
            let st = reaper.wait(pid);
            if let Some(sig) = st.signal {
                println!("crx-init: {prog} killed by signal {sig}");
            }
            st.code
        }
        Err(e) => {
            println!("crx-init: cannot run {prog}: {e}");
            if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            }
        }
    };
    println!("{}", crx_proto::console::status_line(code));
    let _ = std::io::stdout().flush();
    code
}
