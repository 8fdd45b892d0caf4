//! The CRI's `PortForward` as a client of kubelet's streaming server uses it: the URL that
//! containerd's CRI answers (its streaming server, plain HTTP on the loopback) upgraded to a
//! WebSocket with the `v4.channel.k8s.io` protocol (RFC 6455 framing, written here: a test
//! needs a few frames). One port: its data on channel 0, its errors on channel 1; each
//! message starts with its channel's number, and each channel's first message is the port
//! (little-endian).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// What came back on each channel.
#[derive(Debug, Default)]
pub struct Forwarded {
    pub data: Vec<u8>,
    pub error: Vec<u8>,
}

/// Opens `url?port=PORT`, sends `payload` to the port, and collects what comes back until
/// the data holds `until`, the connection ends, or `limit` passes.
pub fn exchange(
    url: &str,
    port: u16,
    payload: &[u8],
    until: &str,
    limit: Duration,
) -> Result<Forwarded, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: not a plain http URL"))?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut s = TcpStream::connect(host).map_err(|e| format!("{host}: {e}"))?;
    s.set_read_timeout(Some(limit)).map_err(|e| e.to_string())?;
    let request = format!(
        "GET /{path}?port={port} HTTP/1.1\r\nHost: {host}\r\nOrigin: http://{host}\r\n\
         Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: Y3J4LXBvcnQtZm9yd2FyZA==\r\n\
         Sec-WebSocket-Protocol: v4.channel.k8s.io\r\n\r\n"
    );
    s.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let head = read_head(&mut s)?;
    if !head.starts_with("HTTP/1.1 101") {
        return Err(format!("no WebSocket upgrade: {head}"));
    }
    let mut out = Forwarded::default();
    // Each channel's first message is its port.
    let mut announced = [false; 2];
    let mut sent = false;
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if announced == [true, true] && !sent {
            s.write_all(&client_frame(&[&[0u8], payload].concat()))
                .map_err(|e| e.to_string())?;
            sent = true;
        }
        let Some((opcode, msg)) = read_frame(&mut s)? else {
            break;
        };
        match opcode {
            0x8 => break,
            0x1 | 0x2 if !msg.is_empty() => {
                let ch = usize::from(msg[0]);
                let body = &msg[1..];
                if ch > 1 {
                    return Err(format!("a message on channel {ch}"));
                }
                if !announced[ch] {
                    if body != port.to_le_bytes() {
                        return Err(format!("channel {ch} announced {body:?}, not port {port}"));
                    }
                    announced[ch] = true;
                    continue;
                }
                if ch == 0 {
                    out.data.extend_from_slice(body);
                } else {
                    out.error.extend_from_slice(body);
                }
                if String::from_utf8_lossy(&out.data).contains(until) || !out.error.is_empty() {
                    break;
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// The HTTP response head (up to the empty line).
fn read_head(s: &mut TcpStream) -> Result<String, String> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 << 10 {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            Ok(_) => break,
            Err(e) => return Err(format!("reading the response: {e}")),
        }
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// A masked binary frame (RFC 6455 5.2: a client masks every frame).
fn client_frame(payload: &[u8]) -> Vec<u8> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut f = vec![0x82u8];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 0xffff => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// One frame from the server (unmasked): its opcode and payload; `None` at the end.
fn read_frame(s: &mut TcpStream) -> Result<Option<(u8, Vec<u8>)>, String> {
    let mut h = [0u8; 2];
    match s.read_exact(&mut h) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(format!("reading a frame: {e}")),
    }
    let mut len = u64::from(h[1] & 0x7f);
    if len == 126 {
        let mut l = [0u8; 2];
        s.read_exact(&mut l).map_err(|e| e.to_string())?;
        len = u64::from(u16::from_be_bytes(l));
    } else if len == 127 {
        let mut l = [0u8; 8];
        s.read_exact(&mut l).map_err(|e| e.to_string())?;
        len = u64::from_be_bytes(l);
    }
    if len > 16 << 20 {
        return Err(format!("a frame of {len} bytes"));
    }
    let mut mask = [0u8; 4];
    if h[1] & 0x80 != 0 {
        s.read_exact(&mut mask).map_err(|e| e.to_string())?;
    }
    let mut payload = vec![0u8; len as usize];
    s.read_exact(&mut payload).map_err(|e| e.to_string())?;
    if h[1] & 0x80 != 0 {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
    Ok(Some((h[0] & 0x0f, payload)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_frames_are_masked_binary_frames() {
        let f = client_frame(b"\0hi");
        assert_eq!(&f[..2], &[0x82, 0x83]);
        let mask = &f[2..6];
        let body: Vec<u8> = f[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        assert_eq!(body, b"\0hi");
        assert_eq!(&client_frame(&[0u8; 200])[..4], &[0x82, 0x80 | 126, 0, 200]);
    }
}
