//! Every message survives a trip through frames; the client handshake and calls work.

use std::io::{Cursor, Read, Write};

use crx_proto::*;

mod common;
use common::{all_requests, all_responses};

#[test]
fn requests_and_responses_round_trip() {
    let mut buf = Vec::new();
    for (i, r) in all_requests().into_iter().enumerate() {
        write_message(
            &mut buf,
            &RequestFrame {
                id: i as u64,
                request: r,
            },
        )
        .unwrap();
    }
    let mut rd = Cursor::new(buf);
    for (i, r) in all_requests().into_iter().enumerate() {
        let f: RequestFrame = read_message(&mut rd).unwrap().unwrap();
        assert_eq!(
            f,
            RequestFrame {
                id: i as u64,
                request: r
            }
        );
    }
    assert!(read_message::<RequestFrame, _>(&mut rd).unwrap().is_none());

    for r in all_responses() {
        let f = ResponseFrame { id: 3, response: r };
        assert_eq!(decode::<ResponseFrame>(&encode(&f).unwrap()).unwrap(), f);
    }
    let h = StreamHeader {
        version: 1,
        id: "c1".into(),
        exec_id: None,
        stream: StreamKind::Stdout,
    };
    assert_eq!(decode::<StreamHeader>(&encode(&h).unwrap()).unwrap(), h);
    let p = PortHeader {
        version: 1,
        forward_port: 8080,
    };
    let text = encode(&p).unwrap();
    assert_eq!(decode::<PortHeader>(&text).unwrap(), p);
    // The two headers cannot be taken for each other.
    assert!(decode::<StreamHeader>(&text).is_err());
    assert!(decode::<PortHeader>(&encode(&h).unwrap()).is_err());
    assert!(decode::<PortHeader>(br#"{"version":1,"forward_port":70000}"#).is_err());
}

#[test]
fn wire_format_is_documented_json() {
    let f = RequestFrame {
        id: 7,
        request: Request::Hello { version: 1 },
    };
    let p = encode(&f).unwrap();
    assert_eq!(p, br#"{"id":7,"request":{"op":"hello","version":1}}"#);
    let mut framed = Vec::new();
    write_message(&mut framed, &f).unwrap();
    assert_eq!(&framed[..4], &(p.len() as u32).to_be_bytes());
    let e: ResponseFrame =
        decode(br#"{"id":0,"response":{"result":"error","kind":"malformed","message":"x"}}"#)
            .unwrap();
    assert_eq!(
        e.response,
        Response::Error(AgentError::new(ErrorKind::Malformed, "x"))
    );
    // Unknown fields are ignored (additions are compatible; incompatible changes bump the version).
    assert!(decode::<RequestFrame>(br#"{"id":1,"request":{"op":"ping","extra":1}}"#).is_ok());
    assert!(decode::<RequestFrame>(br#"{"id":1,"request":{"op":"frobnicate"}}"#).is_err());
}

/// A scripted peer: replies to whatever is written with canned response frames.
struct Scripted {
    replies: Cursor<Vec<u8>>,
    sent: Vec<u8>,
}

impl Read for Scripted {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        self.replies.read(b)
    }
}

impl Write for Scripted {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.sent.write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn client_handshake_and_errors() {
    let mut replies = Vec::new();
    for (id, response) in [
        (1, Response::HelloOk { version: 1 }),
        (2, Response::Pong),
        (
            3,
            Response::Error(AgentError::new(ErrorKind::Unsupported, "no")),
        ),
        (9, Response::Ok),
    ] {
        write_message(&mut replies, &ResponseFrame { id, response }).unwrap();
    }
    let s = Scripted {
        replies: Cursor::new(replies),
        sent: Vec::new(),
    };
    let mut c = Client::handshake(s).unwrap();
    assert_eq!(c.call(Request::Ping).unwrap(), Response::Pong);
    assert!(
        matches!(c.call(Request::Ping), Err(ClientError::Agent(e)) if e.kind == ErrorKind::Unsupported)
    );
    assert!(matches!(
        c.call(Request::Ping),
        Err(ClientError::WrongId { want: 4, got: 9 })
    ));
    assert!(matches!(c.call(Request::Ping), Err(ClientError::Closed)));
}
