//! The hybrid-vsock handshake (Firecracker's): a host connection to a guest port is a Unix
//! socket connection that says `CONNECT <port>\n` and reads `OK <n>\n`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Connects to guest port `port` through the VMM's socket `uds`.
pub fn connect_port(uds: &Path, port: u32) -> std::io::Result<UnixStream> {
    let mut s = UnixStream::connect(uds)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    // One byte at a time: what follows the line is the guest's.
    while line.len() < 64 {
        match s.read(&mut b)? {
            0 => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    "closed during CONNECT",
                ))
            }
            _ if b[0] == b'\n' => break,
            _ => line.push(b[0]),
        }
    }
    if !line.starts_with(b"OK ") {
        return Err(std::io::Error::other(format!(
            "CONNECT answered {:?}",
            String::from_utf8_lossy(&line)
        )));
    }
    Ok(s)
}

/// Reads from `s` until the text holds `needle` or the stream ends; returns what was read.
pub fn read_until(s: &mut UnixStream, needle: &str) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(needle) {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// The handshake against a fake VMM: OK, a refusal, and bytes after the line kept.
    #[test]
    fn connect_reads_the_answer_line_only() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let l = UnixListener::bind(&uds).unwrap();
        let t = std::thread::spawn(move || {
            for answer in [&b"OK 1073741824\nguest"[..], b"NO\n"] {
                let (mut c, _) = l.accept().unwrap();
                let mut req = [0u8; 13];
                c.read_exact(&mut req).unwrap();
                assert_eq!(&req, b"CONNECT 1024\n");
                c.write_all(answer).unwrap();
            }
        });
        let mut s = connect_port(&uds, 1024).unwrap();
        assert_eq!(read_until(&mut s, "guest"), "guest");
        let e = connect_port(&uds, 1024).unwrap_err();
        assert!(e.to_string().contains("NO"), "{e}");
        t.join().unwrap();
    }
}
