//! `crx-init --call unix:PATH [--stdin|--stdout|--stderr ID[/EXEC_ID]=FILE]... REQUEST...`: a client
//! for tests and debugging in a guest. Each REQUEST is a crx-proto request as JSON
//! (`{"op":"ping"}`), or `@FILE` holding one. Prints each response as one JSON line; fails
//! (exit 1) if any response is an error. `--stdout c1=FILE` first opens a stdio stream connection
//! for container c1's stdout and copies it to FILE (`--stdin` copies FILE to the container).

use std::fs::File;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::thread::JoinHandle;

use anyhow::{bail, Context, Result};
use crx_proto::{
    read_message, write_message, Client, ClientError, Request, Response, ResponseFrame,
    StreamHeader, StreamKind, PROTOCOL_VERSION,
};

/// Opens a stream connection and starts copying; the thread ends at end of stream.
fn stream(path: &str, kind: StreamKind, spec: &str) -> Result<JoinHandle<()>> {
    let Some((id, file)) = spec.split_once('=') else {
        bail!("stream {spec:?}: expected ID[/EXEC_ID]=FILE");
    };
    let (id, exec_id) = match id.split_once('/') {
        Some((c, e)) => (c, Some(e.to_string())),
        None => (id, None),
    };
    let mut s = UnixStream::connect(path).with_context(|| format!("connecting to {path}"))?;
    let h = StreamHeader {
        version: PROTOCOL_VERSION,
        id: id.to_string(),
        exec_id,
        stream: kind,
    };
    write_message(&mut s, &h)?;
    let r: ResponseFrame = read_message(&mut s)?.context("agent closed the stream")?;
    if r.response != Response::Ok {
        bail!("stream {spec}: {:?}", r.response);
    }
    let file = file.to_string();
    let t = if kind == StreamKind::Stdin {
        let mut f = File::open(&file).with_context(|| format!("opening {file}"))?;
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut f, &mut s);
            let _ = s.shutdown(Shutdown::Write);
        })
    } else {
        let mut f = File::create(&file).with_context(|| format!("creating {file}"))?;
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut s, &mut f);
        })
    };
    Ok(t)
}

/// Runs the requests in order.
pub fn main(addr: &str, args: &[String]) -> Result<ExitCode> {
    let Some(path) = addr.strip_prefix("unix:") else {
        bail!("--call needs a unix:PATH address");
    };
    let mut copies = Vec::new();
    let mut it = args.iter().peekable();
    while let Some(kind) = it.peek().and_then(|a| match a.as_str() {
        "--stdin" => Some(StreamKind::Stdin),
        "--stdout" => Some(StreamKind::Stdout),
        "--stderr" => Some(StreamKind::Stderr),
        _ => None,
    }) {
        it.next();
        let spec = it.next().context("a stream option needs ID=FILE")?;
        let t = stream(path, kind, spec)?;
        // Output copies end at end of stream and are waited for; an input copy may never end
        // (a FIFO kept open) and is not.
        if kind != StreamKind::Stdin {
            copies.push(t);
        }
    }
    let requests: Vec<&String> = it.collect();
    let reqs = requests
        .iter()
        .map(|r| {
            let text = match r.strip_prefix('@') {
                Some(f) => std::fs::read_to_string(f).with_context(|| format!("reading {f}"))?,
                None => r.to_string(),
            };
            crx_proto::decode::<Request>(text.as_bytes()).with_context(|| format!("request {r}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let stream = UnixStream::connect(path).with_context(|| format!("connecting to {path}"))?;
    let mut c = Client::handshake(stream).context("handshake")?;
    let mut failed = false;
    for r in reqs {
        let resp = match c.call(r) {
            Ok(resp) => resp,
            Err(ClientError::Agent(e)) => {
                failed = true;
                Response::Error(e)
            }
            Err(e) => return Err(e).context("agent call"),
        };
        let line = crx_proto::encode(&resp).context("encoding")?;
        println!("{}", String::from_utf8_lossy(&line));
    }
    drop(c);
    for t in copies {
        let _ = t.join();
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
