//! Untrusted text (registry answers, archive entry names, tool output about image files) made
//! safe to print: control characters (escape sequences could clear a terminal or set its
//! title) and bidirectional overrides are shown escaped, as `\u{1b}`.

use std::io;

/// `s` with every control character, and every character that reorders or hides text,
/// escaped (`\n`, `\t`, `\u{1b}`, `\u{202e}`); the rest unchanged.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else if is_invisible_format(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// [`escape`] of bytes, invalid UTF-8 shown as U+FFFD.
pub fn escape_bytes(b: &[u8]) -> String {
    escape(&String::from_utf8_lossy(b))
}

/// An I/O error whose message may quote archive content (the tar crate names entries in its
/// errors), with that message escaped; its kind is kept, and an error with nothing to escape
/// is returned as it is.
pub fn escape_io(e: io::Error) -> io::Error {
    let msg = e.to_string();
    let safe = escape(&msg);
    if safe == msg {
        e
    } else {
        io::Error::new(e.kind(), safe)
    }
}

/// Bidirectional embeddings, overrides and isolates, and zero-width characters.
fn is_invisible_format(c: char) -> bool {
    matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{206f}' | '\u{feff}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_and_bidi_characters_are_escaped() {
        assert_eq!(escape("plain text: ok/é"), "plain text: ok/é");
        assert_eq!(
            escape("\x1b[2J\x1b]0;pwned\x07"),
            "\\u{1b}[2J\\u{1b}]0;pwned\\u{7}"
        );
        assert_eq!(escape("a\nb\tc\r"), "a\\nb\\tc\\r");
        assert_eq!(escape("\u{9b}31m"), "\\u{9b}31m");
        assert_eq!(escape("x\u{202e}y"), "x\\u{202e}y");
        assert_eq!(escape_bytes(b"\xff\x1b"), "\u{fffd}\\u{1b}");
        let e = escape_io(io::Error::new(io::ErrorKind::InvalidData, "bad \x1b[2J"));
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert_eq!(e.to_string(), "bad \\u{1b}[2J");
        let e = escape_io(io::Error::from(io::ErrorKind::TimedOut));
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }
}
