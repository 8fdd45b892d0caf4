//! The decoder never panics: thousands of pseudo-random, truncated and mutated frames from a
//! fixed seed go through the frame reader and the message decoder. (The cargo-fuzz target in
//! `fuzz/` explores the same function with coverage guidance where a nightly toolchain exists.)

use std::io::Cursor;

use crx_proto::*;

mod common;

/// xorshift64*: a fixed-seed generator so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Reads frames from `bytes` until the end or an error, decoding each as every message type.
fn drive(bytes: &[u8]) {
    let mut r = Cursor::new(bytes);
    while let Ok(Some(p)) = read_frame(&mut r) {
        let _ = decode::<RequestFrame>(&p);
        let _ = decode::<ResponseFrame>(&p);
        let _ = decode::<StreamHeader>(&p);
        let _ = decode::<PortHeader>(&p);
    }
}

fn valid_frames() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (i, r) in common::all_requests().into_iter().enumerate() {
        let mut f = Vec::new();
        write_message(
            &mut f,
            &RequestFrame {
                id: i as u64,
                request: r,
            },
        )
        .unwrap();
        out.push(f);
    }
    for r in common::all_responses() {
        let mut f = Vec::new();
        write_message(&mut f, &ResponseFrame { id: 1, response: r }).unwrap();
        out.push(f);
    }
    out
}

#[test]
fn random_truncated_and_mutated_frames_never_panic() {
    let mut rng = Rng(0x5eed_c0de_1234_5678);
    let frames = valid_frames();
    let tokens: &[&[u8]] = &[
        b"{",
        b"}",
        b"[",
        b"]",
        b"\"op\":",
        b"\"ping\"",
        b"\"hello\"",
        b"\"version\":",
        b"-1",
        b"18446744073709551616",
        b"1e999",
        b"null",
        b"\"\\u0000\"",
        b"\"\\ud800\"",
        b",",
        b":",
        b"\"id\":",
        b"\"request\":",
        b"\xff\xfe",
        b"\"result\":\"exited\"",
        b"true",
    ];
    for round in 0..20_000 {
        let base = &frames[rng.below(frames.len())];
        let mut m = base.clone();
        match round % 6 {
            // Pure noise, with a plausible or hostile length prefix.
            0 => {
                let n = rng.below(300);
                m = (0..n).map(|_| rng.next() as u8).collect();
                if rng.below(2) == 0 && m.len() >= 4 {
                    let l = (m.len() - 4) as u32;
                    m[..4].copy_from_slice(&l.to_be_bytes());
                }
            }
            // Truncation anywhere.
            1 => m.truncate(rng.below(base.len() + 1)),
            // Byte flips in the payload (length kept valid).
            2 => {
                for _ in 0..1 + rng.below(8) {
                    let i = 4 + rng.below(m.len() - 4);
                    m[i] = rng.next() as u8;
                }
            }
            // JSON token splicing, length fixed up.
            3 => {
                let mut p = m[4..].to_vec();
                for _ in 0..1 + rng.below(4) {
                    let t = tokens[rng.below(tokens.len())];
                    let at = rng.below(p.len() + 1);
                    if rng.below(2) == 0 {
                        p.splice(at..at, t.iter().copied());
                    } else {
                        let end = (at + rng.below(8)).min(p.len());
                        p.splice(at..end, t.iter().copied());
                    }
                }
                m = (p.len() as u32).to_be_bytes().to_vec();
                m.extend(p);
            }
            // Hostile lengths: huge, off by some, zero.
            4 => {
                let l: u32 = match rng.below(4) {
                    0 => u32::MAX,
                    1 => MAX_FRAME_LEN + 1 + rng.below(1000) as u32,
                    2 => 0,
                    _ => (m.len() as u32)
                        .saturating_sub(4)
                        .wrapping_add(rng.below(9) as u32)
                        .wrapping_sub(4),
                };
                m[..4].copy_from_slice(&l.to_be_bytes());
            }
            // Deep nesting (bounded by serde_json's recursion limit, must not overflow the stack).
            _ => {
                let depth = 1 + rng.below(5000);
                let mut p =
                    b"{\"id\":1,\"request\":{\"op\":\"create_container\",\"id\":\"x\",\"spec\":"
                        .to_vec();
                p.extend(std::iter::repeat_n(b'[', depth));
                p.extend(std::iter::repeat_n(b']', depth));
                p.extend(b"}}");
                m = (p.len() as u32).to_be_bytes().to_vec();
                m.extend(p);
            }
        }
        drive(&m);
        // Also the mutated frame followed by a valid one, as a stream.
        m.extend_from_slice(&frames[0]);
        drive(&m);
    }
}

#[test]
fn valid_frames_still_decode() {
    for f in valid_frames() {
        let p = read_frame(&mut Cursor::new(&f)).unwrap().unwrap();
        assert!(decode::<RequestFrame>(&p).is_ok() || decode::<ResponseFrame>(&p).is_ok());
    }
}
