//! A crx-vmm child for a lab test: console and stderr in files, bounded waits that panic with
//! both, killed when dropped (a failing test leaves no VM behind); the guest agent's control
//! and stream connections over the hybrid vsock.

use std::ffi::OsStr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crx_proto::{
    read_message, write_message, Client, Response, ResponseFrame, StreamHeader, StreamKind,
    AGENT_VSOCK_PORT, PROTOCOL_VERSION,
};

/// A running crx-vmm.
#[derive(Debug)]
pub struct Vm {
    pub child: Child,
    pub spawned: Instant,
    /// The serial console (`--serial file:`), crx-vmm's stderr, and its hybrid vsock socket
    /// (for arguments that give it as `--vsock-uds`).
    pub console: PathBuf,
    pub stderr: PathBuf,
    pub uds: PathBuf,
}

/// What [`Vm::spawn`] boots beyond the kernel and crx-init's base initrd.
#[derive(Debug, Default)]
pub struct VmOpts {
    pub initrds: Vec<PathBuf>,
    pub init_args: Option<String>,
    pub disks: Vec<String>,
    pub vsock: bool,
    /// `--net` flags (`tap=NAME,mac=..`).
    pub net: Vec<String>,
}

impl Vm {
    /// `vmm args --serial file:DIR/NAME.console`, stderr to `DIR/NAME.stderr`; its vsock
    /// socket is to be `DIR/NAME.sock` ([`Vm::uds`]).
    pub fn spawn_vmm<I, S>(vmm: &Path, dir: &Path, name: &str, args: I) -> Vm
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let console = dir.join(format!("{name}.console"));
        let stderr = dir.join(format!("{name}.stderr"));
        let uds = dir.join(format!("{name}.sock"));
        let spawned = Instant::now();
        let child = Command::new(vmm)
            .args(args)
            .arg("--serial")
            .arg(format!("file:{}", console.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", vmm.display()));
        Vm {
            child,
            spawned,
            console,
            stderr,
            uds,
        }
    }

    /// crx-vmm ([`crate::env::vmm_binary`]) booting the boot files (crx-init as PID 1), 256 MiB,
    /// one vCPU, with the boot timer, and `opts`.
    pub fn spawn(dir: &Path, opts: VmOpts) -> Vm {
        let (kernel, base) = crate::env::boot_files();
        let mut args: Vec<std::ffi::OsString> = [
            "--memory-mib",
            "256",
            "--vcpus",
            "1",
            "--boot-timer",
            "--kernel",
        ]
        .map(Into::into)
        .into();
        args.push(kernel.into());
        for i in std::iter::once(&base).chain(&opts.initrds) {
            args.extend(["--initrd".into(), i.into()]);
        }
        if let Some(a) = &opts.init_args {
            args.extend(["--init-args".into(), a.into()]);
        }
        for n in &opts.net {
            args.extend(["--net".into(), n.into()]);
        }
        for d in &opts.disks {
            args.extend(["--disk".into(), d.into()]);
        }
        if opts.vsock {
            let uds = dir.join("vm.sock");
            args.extend([
                "--vsock-cid".into(),
                "3".into(),
                "--vsock-uds".into(),
                uds.into(),
            ]);
        }
        Vm::spawn_vmm(&crate::env::vmm_binary(), dir, "vm", args)
    }

    pub fn console_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.console).unwrap_or_default()).into_owned()
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Console and VMM stderr, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "--- console ---\n{}\n--- crx-vmm stderr ---\n{}",
            self.console_text(),
            self.stderr_text()
        )
    }

    /// Panics with the logs if the VMM has exited or `end` has passed (while `what`).
    pub fn check_alive(&mut self, what: &str, end: Instant) {
        if let Some(st) = self.child.try_wait().unwrap() {
            panic!("crx-vmm exited ({st}) while {what}\n{}", self.logs());
        }
        if Instant::now() > end {
            let _ = self.child.kill();
            let _ = self.child.wait();
            panic!("timed out {what} (crx-vmm killed)\n{}", self.logs());
        }
    }

    /// Waits for the VMM to exit; kills it and panics after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let end = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                eprintln!("VM exited {st} after {:?}", self.spawned.elapsed());
                return st;
            }
            if Instant::now() > end {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "crx-vmm still running after {timeout:?} (killed)\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for `needle` on the console; panics on VMM exit or after `timeout`.
    pub fn wait_console(&mut self, needle: &str, timeout: Duration) {
        let end = Instant::now() + timeout;
        while !self.console_text().contains(needle) {
            self.check_alive(&format!("waiting for {needle:?} on the console"), end);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The value printed as `KEY=value` on the console (`key` with its `=`).
    pub fn value(&self, key: &str) -> String {
        value(&self.console_text(), key)
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("{key} not on the console\n{}", self.logs()))
    }

    /// The `t=` (microseconds since the VMM's main) of boot-timer mark `code`, if printed.
    pub fn boot_mark(&self, code: u8) -> Option<u64> {
        let prefix = format!("boot-timer: code={code} t=");
        self.stderr_text()
            .lines()
            .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
    }

    /// Opens guest port 1024 (the agent), retrying until it listens (or `timeout`).
    pub fn connect(&mut self, timeout: Duration) -> UnixStream {
        let end = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                panic!(
                    "crx-vmm exited ({st}) before the agent answered\n{}",
                    self.logs()
                );
            }
            match crate::vsock::connect_port(&self.uds, AGENT_VSOCK_PORT) {
                Ok(s) => return s,
                Err(e) if Instant::now() > end => {
                    panic!(
                        "agent not reachable after {timeout:?}: {e}\n{}",
                        self.logs()
                    )
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    /// A control connection with the handshake done.
    pub fn client(&mut self, timeout: Duration) -> Client<UnixStream> {
        let s = self.connect(timeout);
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        Client::handshake(s).expect("Hello")
    }

    /// A stdio stream connection for container `id` (exec `exec_id`), accepted by the agent.
    pub fn stream(&mut self, id: &str, exec_id: Option<&str>, kind: StreamKind) -> UnixStream {
        let mut s = self.connect(Duration::from_secs(5));
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        write_message(
            &mut s,
            &StreamHeader {
                version: PROTOCOL_VERSION,
                id: id.into(),
                exec_id: exec_id.map(Into::into),
                stream: kind,
            },
        )
        .unwrap();
        let r: ResponseFrame = read_message(&mut s).unwrap().expect("stream answer");
        assert_eq!(r.response, Response::Ok, "stream {id}/{exec_id:?} {kind:?}");
        s
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The value printed as `KEY=value` in `out` (`key` with its `=`).
pub fn value<'a>(out: &'a str, key: &str) -> Option<&'a str> {
    out.lines()
        .find_map(|l| l.trim_end_matches('\r').strip_prefix(key))
}

#[cfg(test)]
mod tests {
    #[test]
    fn values_are_found_by_key() {
        let out = "boot\r\nMTU=1400\r\nMAC=02:00\n";
        assert_eq!(super::value(out, "MTU="), Some("1400"));
        assert_eq!(super::value(out, "MAC="), Some("02:00"));
        assert_eq!(super::value(out, "X="), None);
    }
}
