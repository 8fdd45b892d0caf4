//! Port-forward connections ([`crx_proto::PortHeader`], the CRI's `PortForward`): the host's
//! connection is joined to a TCP connection to the port on the guest's loopback (the guest's
//! network namespace is the pod's), bytes copied both ways, each side's end of input passed on
//! as a half close. A side that fails ends both.

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use nix::sys::socket::{shutdown, Shutdown as How};

/// How long a connection to the guest's port may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A TCP connection to `port` on `127.0.0.1`, else on `::1` (what containerd's CRI dials in a
/// runc pod's namespace); the IPv4 error when neither answers.
pub fn connect(port: u16) -> io::Result<TcpStream> {
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&v4, CONNECT_TIMEOUT).or_else(|e4| {
        let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
        TcpStream::connect_timeout(&v6, CONNECT_TIMEOUT).map_err(|_| e4)
    })
}

/// Copies bytes between `host` (a socket: vsock in the guest) and `tcp` until both
/// directions ended.
pub fn splice(host: OwnedFd, tcp: TcpStream) -> io::Result<()> {
    let host_in = File::from(host.try_clone()?);
    let tcp_out = tcp.try_clone()?;
    let up = std::thread::Builder::new()
        .name("port-forward".into())
        .spawn(move || {
            let mut host_in = host_in;
            let mut tcp_out = tcp_out;
            let r = io::copy(&mut host_in, &mut tcp_out);
            let _ = tcp_out.shutdown(if r.is_ok() {
                Shutdown::Write
            } else {
                Shutdown::Both
            });
            r.is_ok()
        })?;
    let mut tcp_in = tcp;
    let mut host_out = File::from(host.try_clone()?);
    let down = io::copy(&mut tcp_in, &mut host_out);
    let _ = shutdown(
        std::os::fd::AsRawFd::as_raw_fd(&host.as_fd()),
        if down.is_ok() { How::Write } else { How::Both },
    );
    if down.is_err() {
        let _ = tcp_in.shutdown(Shutdown::Both);
    }
    let up_ok = up.join().unwrap_or(false);
    if !up_ok {
        let _ = shutdown(std::os::fd::AsRawFd::as_raw_fd(&host.as_fd()), How::Both);
    }
    down.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::os::unix::net::UnixStream;

    #[test]
    fn bytes_go_both_ways_and_half_closes_pass_through() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = server.local_addr().unwrap().port();
        let echo = std::thread::spawn(move || {
            let (mut s, _) = server.accept().unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap(); // ends at the host's half close
            s.write_all(&got).unwrap();
            s.write_all(b" done").unwrap();
        });
        let (mut host, guest) = UnixStream::pair().unwrap();
        let tcp = connect(port).unwrap();
        let relay = std::thread::spawn(move || splice(OwnedFd::from(guest), tcp));
        host.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        host.shutdown(Shutdown::Write).unwrap();
        let mut back = String::new();
        host.read_to_string(&mut back).unwrap(); // ends at the server's close
        assert_eq!(back, "GET / HTTP/1.0\r\n\r\n done");
        echo.join().unwrap();
        relay.join().unwrap().unwrap();
    }

    #[test]
    fn a_port_nothing_listens_on_is_refused() {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let e = connect(port).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
    }
}
