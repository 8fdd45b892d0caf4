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
        .spawn(move || copy_half(host_in, &tcp_out, |how| tcp_out.shutdown(how)))?;
    let host_out = File::from(host.try_clone()?);
    let raw = std::os::fd::AsRawFd::as_raw_fd(&host.as_fd());
    copy_half(&tcp, host_out, |how| {
        let how = match how {
            Shutdown::Read => How::Read,
            Shutdown::Write => How::Write,
            Shutdown::Both => How::Both,
        };
        shutdown(raw, how).map_err(io::Error::from)
    });
    let _ = up.join();
    Ok(())
}

/// Copies `from` to `to` until the end of `from`, then ends `to`'s output (`end(Write)`); on
/// an error ends `to` both ways, which ends the other direction's copy too.
fn copy_half(
    mut from: impl io::Read,
    mut to: impl io::Write,
    end: impl Fn(Shutdown) -> io::Result<()>,
) {
    let _ = match io::copy(&mut from, &mut to) {
        Ok(_) => end(Shutdown::Write),
        Err(_) => end(Shutdown::Both),
    };
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
