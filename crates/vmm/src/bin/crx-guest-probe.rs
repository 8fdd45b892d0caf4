//! `crx-guest-probe`: a guest-side helper for crx-vmm's lab tests (runs inside a microVM).
//!
//! - `crx-guest-probe listen PORT`: accepts one vsock connection on PORT and echoes it.
//! - `crx-guest-probe connect CID PORT`: connects to CID:PORT (retrying for 30 s) and echoes.
//!
//! Echo: everything read is written back; at the peer's end of stream the write side is shut
//! down. Prints `probe: echoed N bytes fnv1a=X` on stdout.

use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

fn sockaddr(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain old data; all-zero is a valid value.
    let mut a: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    a.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    a.svm_cid = cid;
    a.svm_port = port;
    a
}

fn socket() -> Result<i32> {
    // SAFETY: plain syscall, no pointers.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("socket(AF_VSOCK)");
    }
    Ok(fd)
}

fn listen(port: u32) -> Result<std::net::TcpStream> {
    let fd = socket()?;
    let a = sockaddr(libc::VMADDR_CID_ANY, port);
    let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: `a` is a valid sockaddr_vm of `len` bytes.
    if unsafe { libc::bind(fd, (&a as *const libc::sockaddr_vm).cast(), len) } < 0 {
        return Err(std::io::Error::last_os_error()).context("bind");
    }
    // SAFETY: plain syscall on our fd.
    if unsafe { libc::listen(fd, 1) } < 0 {
        return Err(std::io::Error::last_os_error()).context("listen");
    }
    println!("probe: listening on {port}");
    // SAFETY: null address pointers are allowed by accept.
    let c = unsafe { libc::accept(fd, std::ptr::null_mut(), std::ptr::null_mut()) };
    if c < 0 {
        return Err(std::io::Error::last_os_error()).context("accept");
    }
    // SAFETY: `c` is a fresh connected socket fd that we own.
    Ok(unsafe { std::net::TcpStream::from_raw_fd(c) })
}

fn connect(cid: u32, port: u32) -> Result<std::net::TcpStream> {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let fd = socket()?;
        let a = sockaddr(cid, port);
        let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
        // SAFETY: `a` is a valid sockaddr_vm of `len` bytes.
        if unsafe { libc::connect(fd, (&a as *const libc::sockaddr_vm).cast(), len) } == 0 {
            // SAFETY: `fd` is a connected socket fd that we own.
            return Ok(unsafe { std::net::TcpStream::from_raw_fd(fd) });
        }
        let e = std::io::Error::last_os_error();
        // SAFETY: closing our own fd.
        unsafe { libc::close(fd) };
        if Instant::now() > end {
            return Err(e).context(format!("connect {cid}:{port}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `std::net::TcpStream` is used as a thin fd wrapper: read, write and shutdown are plain
/// socket calls and work on any stream socket.
fn echo(mut s: std::net::TcpStream) -> Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let (mut n, mut h) = (0u64, 0xcbf2_9ce4_8422_2325u64);
    loop {
        let r = s.read(&mut buf).context("read")?;
        if r == 0 {
            break;
        }
        for b in &buf[..r] {
            h = (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
        s.write_all(&buf[..r]).context("write")?;
        n += r as u64;
    }
    s.shutdown(std::net::Shutdown::Write).context("shutdown")?;
    println!("probe: echoed {n} bytes fnv1a={h:016x}");
    // Wait for the peer to close so that the last bytes are not lost to a reset.
    let _ = s.read(&mut buf);
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let s = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["listen", port] => listen(port.parse()?)?,
        ["connect", cid, port] => connect(cid.parse()?, port.parse()?)?,
        _ => bail!("usage: crx-guest-probe listen PORT | connect CID PORT"),
    };
    echo(s)
}
