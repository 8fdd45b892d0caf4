//! Stdio and pty stream connections waiting for the container or process they name.
//!
//! The host opens one connection per stream and sends a `StreamHeader` first; the agent keeps the
//! socket here until the request that starts that process (`create_container`, `exec`) takes it:
//! a stdio stream goes to the container helper, which makes it the process's stdin, stdout or
//! stderr; a `pty` stream is relayed with the process's terminal by the agent.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Mutex;

use crx_proto::StreamKind;

type Key = (String, Option<String>, StreamKind);

/// The registry of stream sockets, by container id, exec id and stream.
#[derive(Default)]
pub struct Streams {
    map: Mutex<HashMap<Key, OwnedFd>>,
}

/// Streams one process may have, in the order the helper expects them.
pub const STDIO: [StreamKind; 3] = [StreamKind::Stdin, StreamKind::Stdout, StreamKind::Stderr];

impl Streams {
    /// Keeps `fd` for `(id, exec_id, kind)` (a second one for the same key replaces the first)
    /// if `acknowledge` succeeds. `acknowledge` runs with the registry locked, so the peer can
    /// learn of the registration only once it is visible, and no `take` can hand the socket to
    /// a process (whose output would then precede the acknowledgement) before it is written.
    pub fn register(
        &self,
        id: String,
        exec_id: Option<String>,
        kind: StreamKind,
        fd: OwnedFd,
        acknowledge: impl FnOnce() -> bool,
    ) -> bool {
        let mut m = self.lock();
        let ok = acknowledge();
        if ok {
            m.insert((id, exec_id, kind), fd);
        }
        ok
    }

    /// Takes the streams registered for a process: stdio (in [`STDIO`] order), then pty.
    pub fn take(&self, id: &str, exec_id: Option<&str>) -> Vec<(StreamKind, OwnedFd)> {
        let mut m = self.lock();
        STDIO
            .iter()
            .chain(&[StreamKind::Pty])
            .filter_map(|k| {
                m.remove(&(id.to_string(), exec_id.map(str::to_string), *k))
                    .map(|fd| (*k, fd))
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, OwnedFd>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}
