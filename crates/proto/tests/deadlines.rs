//! Bounded calls against fake agents on a Unix socket pair: a silent agent, one that drips
//! its answer a byte at a time, and a `Wait` that stays waitable while the peer lives.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::Duration;

use crx_proto::*;

const LIMIT: Duration = Duration::from_millis(300);

/// Reads one request frame from the host side.
fn request(s: &mut UnixStream) -> RequestFrame {
    read_message(s).unwrap().expect("a request")
}

/// A fake agent that answers the handshake, then runs `then` on the stream.
fn agent(then: impl FnOnce(UnixStream) + Send + 'static) -> UnixStream {
    let (host, mut guest) = UnixStream::pair().unwrap();
    thread::spawn(move || {
        let hello = request(&mut guest);
        let ok = ResponseFrame {
            id: hello.id,
            response: Response::HelloOk {
                version: PROTOCOL_VERSION,
            },
        };
        write_message(&mut guest, &ok).unwrap();
        then(guest);
    });
    host
}

/// A fake agent that reads one request and answers it with an internal error carrying
/// `message`, one byte every 20 ms (each read returning at once); it stops when the host goes.
fn dripping_agent(message: String) -> UnixStream {
    agent(move |mut g| {
        let req = request(&mut g);
        let mut frame = Vec::new();
        let resp = ResponseFrame {
            id: req.id,
            response: Response::Error(AgentError::new(ErrorKind::Internal, message)),
        };
        write_message(&mut frame, &resp).unwrap();
        for b in frame {
            if g.write_all(&[b]).is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
    })
}

#[test]
fn a_silent_agent_times_out_the_handshake() {
    let (host, _guest) = UnixStream::pair().unwrap();
    let e = Client::handshake_within(host, LIMIT).unwrap_err();
    assert!(
        matches!(e, ClientError::Timeout { op: "hello", .. }),
        "{e:?}"
    );
}

#[test]
fn a_silent_agent_times_out_a_request_and_breaks_the_connection() {
    let host = agent(|mut g| {
        let _ = request(&mut g);
        // Holds the connection open and says nothing.
        let mut b = [0u8; 1];
        let _ = g.read(&mut b);
    });
    let mut c = Client::handshake_within(host, LIMIT).unwrap();
    let e = c.call_within(Request::Ping, LIMIT).unwrap_err();
    assert!(
        matches!(e, ClientError::Timeout { op: "ping", .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("CRX_AGENT_TIMEOUT"), "{e}");
    assert!(matches!(
        c.call_within(Request::Ping, LIMIT),
        Err(ClientError::Broken)
    ));
}

#[test]
fn a_dripping_agent_times_out() {
    // One byte every 20 ms: 80 s for the whole frame.
    let host = dripping_agent("x".repeat(4000));
    let mut c = Client::handshake_within(host, LIMIT).unwrap();
    let e = c.call_within(Request::Ping, LIMIT).unwrap_err();
    assert!(matches!(e, ClientError::Timeout { .. }), "{e:?}");
}

#[test]
fn a_timely_agent_answers_within_the_limit() {
    let host = agent(|mut g| {
        let req = request(&mut g);
        let resp = ResponseFrame {
            id: req.id,
            response: Response::Pong,
        };
        write_message(&mut g, &resp).unwrap();
    });
    let mut c = Client::handshake_within(host, Duration::from_secs(30)).unwrap();
    let r = c
        .call_within(Request::Ping, Duration::from_secs(30))
        .unwrap();
    assert_eq!(r, Response::Pong);
}

fn wait() -> Request {
    Request::Wait {
        id: "c1".into(),
        exec_id: None,
    }
}

#[test]
fn a_wait_outlasts_the_limit_while_the_peer_lives() {
    let host = agent(|mut g| {
        let req = request(&mut g);
        // Longer than the limit: a process that runs a while.
        thread::sleep(LIMIT * 4);
        let resp = ResponseFrame {
            id: req.id,
            response: Response::Exited(ExitStatus {
                code: 3,
                signal: None,
            }),
        };
        write_message(&mut g, &resp).unwrap();
    });
    let mut c = Client::handshake_within(host, LIMIT).unwrap();
    let mut asked = 0;
    let r = c
        .call_waiting(wait(), LIMIT, Duration::from_millis(20), &mut || {
            asked += 1;
            true
        })
        .unwrap();
    assert_eq!(
        r,
        Response::Exited(ExitStatus {
            code: 3,
            signal: None
        })
    );
    assert!(asked > 0, "liveness was asked while waiting");
}

#[test]
fn a_wait_ends_when_the_peer_is_gone() {
    let host = agent(|mut g| {
        let _ = request(&mut g);
        let mut b = [0u8; 1];
        let _ = g.read(&mut b);
    });
    let mut c = Client::handshake_within(host, LIMIT).unwrap();
    let mut left = 3;
    let e = c
        .call_waiting(wait(), LIMIT, Duration::from_millis(10), &mut || {
            left -= 1;
            left > 0
        })
        .unwrap_err();
    assert!(matches!(e, ClientError::PeerGone { op: "wait" }), "{e:?}");
}

#[test]
fn a_wait_whose_answer_drips_times_out() {
    let host = dripping_agent("y".repeat(4000));
    let mut c = Client::handshake_within(host, LIMIT).unwrap();
    let e = c
        .call_waiting(wait(), LIMIT, Duration::from_millis(10), &mut || true)
        .unwrap_err();
    assert!(
        matches!(e, ClientError::Timeout { op: "wait", .. }),
        "{e:?}"
    );
}
