//! A one-line-per-blob download indicator on stderr, shown only when stderr is a terminal.

use std::io::{self, IsTerminal, Read, Write};
use std::time::{Duration, Instant};

/// When to show download progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProgressMode {
    /// On stderr when stderr is a terminal.
    #[default]
    Auto,
    Never,
}

impl ProgressMode {
    pub fn enabled(self) -> bool {
        self == Self::Auto && io::stderr().is_terminal()
    }
}

/// Counts bytes read and redraws `label  12.3/45.6 MiB` at most ten times a second.
pub struct ProgressReader<R> {
    inner: R,
    label: String,
    total: u64,
    done: u64,
    last: Option<Instant>,
    enabled: bool,
    finished: bool,
}

impl<R: Read> ProgressReader<R> {
    pub fn new(inner: R, label: String, total: u64, enabled: bool) -> Self {
        Self {
            inner,
            label,
            total,
            done: 0,
            last: None,
            enabled,
            finished: false,
        }
    }

    fn draw(&mut self, force: bool) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        if !force
            && self
                .last
                .is_some_and(|t| now - t < Duration::from_millis(100))
        {
            return;
        }
        self.last = Some(now);
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let mut err = io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[K{}  {:.1}/{:.1} MiB",
            self.label,
            mib(self.done),
            mib(self.total)
        );
        if force {
            let _ = writeln!(err);
        }
        let _ = err.flush();
    }
}

impl<R: Read> Read for ProgressReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        if n == 0 {
            if !self.finished {
                self.finished = true;
                self.draw(true);
            }
        } else {
            self.draw(false);
        }
        Ok(n)
    }
}
