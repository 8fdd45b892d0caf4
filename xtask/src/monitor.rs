//! The lab's QEMU monitor, on a socket pair (no socket file on the host): when the lab host is
//! stuck, where its vCPUs are. Each vCPU's instruction pointer and the kernel addresses found
//! on its stack are named from the lab kernel's `vmlinux` (built without KASLR), a poor man's
//! backtrace of a kernel that cannot print its own any more.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// The host's end of the monitor; QEMU holds the other.
pub struct Monitor {
    sock: UnixStream,
}

/// QEMU's end, to be inherited by QEMU as file descriptor [`QemuEnd::fd`].
pub struct QemuEnd {
    sock: UnixStream,
}

impl QemuEnd {
    /// The descriptor number QEMU finds it at (the child keeps it open across exec).
    pub fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// QEMU's arguments for a human monitor on this descriptor.
    pub fn qemu_args(&self) -> [String; 4] {
        [
            "-chardev".into(),
            format!("socket,id=crxmon,fd={}", self.fd()),
            "-mon".into(),
            "chardev=crxmon,mode=readline".into(),
        ]
    }
}

/// A connected pair: the host's end and QEMU's. Both are close-on-exec; the child clears the
/// flag on QEMU's end between fork and exec.
pub fn pair() -> Result<(Monitor, QemuEnd)> {
    let (a, b) = UnixStream::pair().context("creating the monitor's socket pair")?;
    a.set_read_timeout(Some(Duration::from_millis(300)))?;
    Ok((Monitor { sock: a }, QemuEnd { sock: b }))
}

impl Monitor {
    /// Sends one command and returns what came back until the monitor went quiet (at most
    /// `limit`).
    fn command(&mut self, cmd: &str, limit: Duration) -> String {
        let _ = self.drain(Duration::from_millis(300));
        if self.sock.write_all(format!("{cmd}\n").as_bytes()).is_err() {
            return String::new();
        }
        self.drain(limit)
    }

    fn drain(&mut self, limit: Duration) -> String {
        let end = Instant::now() + limit;
        let mut out = Vec::new();
        let mut buf = [0u8; 65536];
        while Instant::now() < end {
            match self.sock.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                // Quiet for the read timeout: the answer is complete once something came.
                Err(_) if !out.is_empty() => break,
                Err(_) => {}
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Sends the lab host a non-maskable interrupt (QEMU delivers it through each vCPU's
    /// LINT1; Linux takes it on the boot CPU and logs it as of unknown reason).
    pub fn nmi(&mut self) {
        let _ = self.command("nmi", Duration::from_secs(1));
    }

    /// Where each of the lab's `cpus` vCPUs is, named from `vmlinux`: one block per vCPU.
    pub fn vcpu_report(&mut self, cpus: u32, vmlinux: &Path) -> String {
        let symbols = Symbols::load(vmlinux);
        let regs = self.command("info registers -a", Duration::from_secs(5));
        let mut report = String::new();
        for cpu in 0..cpus {
            let (rip, rsp) = registers(&regs, cpu);
            report.push_str(&format!(
                "  vCPU {cpu}: RIP {} (RSP {})\n",
                rip.map_or("?".into(), |r| symbols.describe(r)),
                rsp.map_or("?".into(), |r| format!("{r:#x}"))
            ));
            let Some(rsp) = rsp else { continue };
            // `x` reads through the page tables of the monitor's current vCPU.
            let _ = self.command(&format!("cpu {cpu}"), Duration::from_secs(2));
            let stack = self.command(&format!("x /64gx {rsp:#x}"), Duration::from_secs(3));
            let frames: Vec<String> = hex_words(&stack)
                .filter(|w| symbols.in_text(*w))
                .map(|w| symbols.describe(w))
                .collect();
            report.push_str(&format!(
                "    kernel text addresses on its stack: {}\n",
                if frames.is_empty() {
                    "none".into()
                } else {
                    frames.join(" <- ")
                }
            ));
        }
        report
    }
}

/// RIP and RSP of `cpu` in the output of `info registers -a`.
fn registers(text: &str, cpu: u32) -> (Option<u64>, Option<u64>) {
    let header = format!("CPU#{cpu}");
    let Some(start) = text.find(&header) else {
        return (None, None);
    };
    let block = &text[start + header.len()..];
    let block = &block[..block.find("CPU#").unwrap_or(block.len())];
    let reg = |name: &str| {
        let at = block.find(&format!("{name}="))? + name.len() + 1;
        u64::from_str_radix(block.get(at..at + 16)?, 16).ok()
    };
    (reg("RIP"), reg("RSP"))
}

/// The 64-bit words of an `x /Ngx` dump (`ADDR: 0xWORD 0xWORD`).
fn hex_words(text: &str) -> impl Iterator<Item = u64> + '_ {
    text.lines()
        .filter_map(|l| l.split_once(": "))
        .flat_map(|(_, words)| words.split_whitespace())
        .filter_map(|w| u64::from_str_radix(w.strip_prefix("0x")?, 16).ok())
}

/// Text symbols of a kernel, sorted by address.
struct Symbols {
    text: Vec<(u64, String)>,
    end: u64,
}

impl Symbols {
    fn load(vmlinux: &Path) -> Symbols {
        let out = Command::new("nm")
            .arg("-n")
            .arg(vmlinux)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        Symbols::parse(&out)
    }

    /// `nm -n` output: `ADDRESS TYPE NAME`; text symbols only.
    fn parse(nm: &str) -> Symbols {
        let mut text = Vec::new();
        let mut end = 0;
        for line in nm.lines() {
            let mut f = line.split_whitespace();
            let (Some(addr), Some(kind), Some(name)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            let Ok(addr) = u64::from_str_radix(addr, 16) else {
                continue;
            };
            if name == "_etext" {
                end = addr;
            } else if matches!(kind, "t" | "T" | "w" | "W") {
                text.push((addr, name.to_string()));
            }
        }
        text.sort();
        Symbols { text, end }
    }

    fn in_text(&self, addr: u64) -> bool {
        self.text.first().is_some_and(|(start, _)| addr >= *start) && addr < self.end
    }

    /// `0xADDR (symbol+0xOFF)`, or the bare address outside the kernel's text.
    fn describe(&self, addr: u64) -> String {
        if !self.in_text(addr) {
            return format!("{addr:#x}");
        }
        let i = self.text.partition_point(|(a, _)| *a <= addr);
        match i.checked_sub(1).and_then(|i| self.text.get(i)) {
            Some((start, name)) => format!("{addr:#x} ({name}+{:#x})", addr - start),
            None => format!("{addr:#x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NM: &str = "ffffffff81000000 T _stext\n\
                      ffffffff81000100 t helper\n\
                      ffffffff81074c56 T stop_this_cpu\n\
                      ffffffff81200000 D some_data\n\
                      ffffffff81800000 T _etext\n";

    #[test]
    fn addresses_are_named_within_the_kernel_text_only() {
        let s = Symbols::parse(NM);
        assert_eq!(
            s.describe(0xffffffff81074caf),
            "0xffffffff81074caf (stop_this_cpu+0x59)"
        );
        assert_eq!(
            s.describe(0xffffffff81000104),
            "0xffffffff81000104 (helper+0x4)"
        );
        assert_eq!(s.describe(0xffffffff81800000), "0xffffffff81800000");
        assert_eq!(s.describe(0x1234), "0x1234");
        assert!(!s.in_text(0xffa0000000003fd8));
    }

    #[test]
    fn registers_and_stack_words_are_read_from_the_monitor() {
        // As QEMU 7.2's `info registers -a` and `x /4gx $rsp` print them (readline echo
        // before).
        let regs = "info registers -a\x1b[K\r\n\r\nCPU#0\r\n\
                    RAX=0000000000000000 RBX=ff11000007a00000\r\n\
                    RSI=00000000000000ff RDI=00000000000000f0 RBP=0000000000000000 RSP=ffa0000000003fd8\r\n\
                    RIP=ffffffff81074caf RFL=00000046 [---Z-P-] CPL=0\r\n\
                    CPU#1\r\nRSP=ffa0000000013e00\r\nRIP=ffffffff81000104 RFL=00000046\r\n";
        assert_eq!(
            registers(regs, 0),
            (Some(0xffffffff81074caf), Some(0xffa0000000003fd8))
        );
        assert_eq!(
            registers(regs, 1),
            (Some(0xffffffff81000104), Some(0xffa0000000013e00))
        );
        assert_eq!(registers(regs, 2), (None, None));
        let stack = "x /4gx $rsp\r\n\
                     ffa0000000003fd8: 0x0000000000000000 0xffffffff81074caf\r\n\
                     ffa0000000003fe8: 0xffffffff81000104 0x0000000000000010\r\n(qemu) ";
        let words: Vec<u64> = hex_words(stack).collect();
        assert_eq!(words, [0, 0xffffffff81074caf, 0xffffffff81000104, 0x10]);
    }

    #[test]
    fn a_qemu_monitor_on_the_socket_pair_answers() {
        let (mut mon, qemu_end) = pair().unwrap();
        let fd = qemu_end.fd();
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-M", "microvm,acpi=off", "-nodefaults", "-no-user-config"])
            .args(["-display", "none", "-accel", "tcg", "-m", "64M", "-S"])
            .args(qemu_end.qemu_args())
            .stdout(std::process::Stdio::null());
        // SAFETY: fcntl(2) on an fd of the child's own, between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().unwrap();
        drop(qemu_end);
        let regs = mon.command("info registers -a", Duration::from_secs(10));
        let _ = child.kill();
        let _ = child.wait();
        // Stopped (-S) at the reset vector, in real mode.
        assert!(
            regs.contains("CPU#0") && regs.contains("EIP=0000fff0"),
            "{regs}"
        );
    }
}
