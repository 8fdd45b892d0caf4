//! Runs the fuzz targets on a fixed corpus and a few thousand pseudo-random inputs from a fixed
//! seed, so the panic-freedom property is checked in CI without cargo-fuzz.

use vm_memory::{Bytes, GuestAddress};

use crate::virtio::blk::{S_IOERR, S_OK, S_UNSUPP};
use crate::virtio::fuzzing::{fuzz_blk, fuzz_net_tx, fuzz_vsock, run_blk, run_net_tx, DATA, QSIZE};

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn input(&mut self, max_len: usize) -> Vec<u8> {
        let len = (self.next() as usize) % max_len;
        // Mix uniformly random bytes with runs of small values, which are likelier to form
        // valid-looking descriptors.
        (0..len)
            .map(|_| {
                let x = self.next();
                if x & 3 == 0 {
                    (x >> 8) as u8 & 0x3
                } else {
                    (x >> 16) as u8
                }
            })
            .collect()
    }
}

/// Inputs per target; `CRX_FUZZ_ITERS` raises it for a longer local run.
fn iterations() -> usize {
    std::env::var("CRX_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
}

#[test]
fn blk_random_inputs() {
    let mut rng = XorShift(0x5eed_b10c);
    for _ in 0..iterations() {
        fuzz_blk(&rng.input(1024));
    }
}

#[test]
fn vsock_random_inputs() {
    let mut rng = XorShift(0x5eed_50c7);
    for _ in 0..iterations() {
        fuzz_vsock(&rng.input(1024));
    }
}

#[test]
fn net_tx_random_inputs() {
    let mut rng = XorShift(0x5eed_00e7);
    for _ in 0..iterations() {
        fuzz_net_tx(&rng.input(1024));
    }
}

/// One `fuzz_net_tx` input: every feature acked, a backend holding `capacity` frames, a TX
/// chain of `pieces` descriptors over the payload at `DATA`, and the payload.
fn net_tx_input(capacity: u8, pieces: &[u16], payload: &[u8]) -> Vec<u8> {
    let mut input = vec![0xff, 0xff, 0xff, 0xff, capacity];
    // RX queue: every descriptor empty, nothing available.
    for _ in 0..QSIZE {
        input.extend(desc(2, 0, 0, 0));
    }
    input.push(0);
    // TX queue: one chain over the payload.
    let mut at = 0u64;
    for i in 0..usize::from(QSIZE) {
        match pieces.get(i) {
            Some(&len) => {
                let more = i + 1 < pieces.len();
                input.extend(desc(u8::from(more), at, len, (i + 1) as u8));
                at += u64::from(len);
            }
            None => input.extend(desc(0, 0, 0, 0)),
        }
    }
    input.extend([1, 0]); // one chain, at head 0
    input.push(0); // no host frames
    input.extend_from_slice(payload);
    input
}

#[test]
fn net_tx_corpus() {
    // A plain frame in odd pieces, a frame with a checksum request beyond its end, one with
    // segmentation, a chain shorter than a header, and a full backend.
    let mut frame = vec![0u8; 12 + 60];
    frame[24..26].copy_from_slice(&[0x88, 0xb5]);
    let mut bad_csum = frame.clone();
    bad_csum[0] = 1;
    bad_csum[6..8].copy_from_slice(&200u16.to_le_bytes());
    let mut gso = frame.clone();
    gso[..10].copy_from_slice(&[1, 4, 54, 0, 0xa8, 5, 34, 0, 16, 0]);
    let none: Vec<Vec<u8>> = Vec::new();
    for (input, want) in [
        (net_tx_input(1, &[8, 8, 56], &frame), vec![frame.clone()]),
        (net_tx_input(1, &[72], &bad_csum), none.clone()),
        (net_tx_input(1, &[72], &gso), vec![gso.clone()]),
        (net_tx_input(1, &[16], &frame), none.clone()),
        // Full at first; sent once the backend drains.
        (net_tx_input(0, &[72], &frame), vec![frame.clone()]),
    ] {
        fuzz_net_tx(&input);
        assert_eq!(run_net_tx(&input), want);
    }
    for input in [Vec::new(), vec![0xff; 2048], vec![0; 2048]] {
        fuzz_net_tx(&input);
    }
}

/// Where the corpus puts a request's data buffer and status byte (offsets from `DATA`).
const BUF: u64 = 0x100;
const STATUS: u64 = 0x400;

/// One descriptor in `fuzz_blk`'s input encoding: `mode` 0x41 + flags << 2 (an address inside
/// guest memory, a 16-bit length), the address as a multiple of 8 past `DATA`, the length, next.
fn desc(flags: u8, at: u64, len: u16, next: u8) -> Vec<u8> {
    let at = u16::try_from(at / 8).expect("inside the data area");
    let mut d = vec![0x41 | (flags << 2)];
    d.extend_from_slice(&at.to_le_bytes());
    d.extend_from_slice(&len.to_le_bytes());
    d.push(next);
    d
}

/// An input for `fuzz_blk`: a header, data and status chain (or `chain` as given) at head 0,
/// and the request header `kind`, `sector` as the payload.
fn blk_input(read_only: bool, chain: &[Vec<u8>], kind: u32, sector: u64) -> Vec<u8> {
    let mut input = vec![u8::from(read_only)];
    for i in 0..usize::from(QSIZE) {
        input.extend(chain.get(i).cloned().unwrap_or_else(|| desc(0, 0, 0, 0)));
    }
    input.extend([1, 0]); // one request, at head 0
    input.extend_from_slice(&kind.to_le_bytes());
    input.extend_from_slice(&0u32.to_le_bytes());
    input.extend_from_slice(&sector.to_le_bytes());
    // The status byte starts as none the device writes, so that S_OK (0) is its answer.
    input.resize(input.len() - 16 + STATUS as usize, 0);
    input.push(0xee);
    input
}

fn request_chain(data_flags: u8) -> Vec<Vec<u8>> {
    const NEXT: u8 = 1;
    const WRITE: u8 = 2;
    vec![
        desc(NEXT, 0, 16, 1),
        desc(NEXT | data_flags, BUF, 512, 2),
        desc(WRITE, STATUS, 1, 0),
    ]
}

#[test]
fn blk_corpus() {
    const WRITE: u8 = 2;
    let read = request_chain(WRITE);
    let write = request_chain(0);
    let cases: Vec<(&str, Vec<u8>, Option<u8>)> = vec![
        ("read", blk_input(false, &read, 0, 0), Some(S_OK)),
        ("write", blk_input(false, &write, 1, 1), Some(S_OK)),
        (
            "write read-only",
            blk_input(true, &write, 1, 0),
            Some(S_IOERR),
        ),
        (
            "read past the end",
            blk_input(false, &read, 0, 1 << 40),
            Some(S_IOERR),
        ),
        ("flush", blk_input(false, &read, 4, 0), Some(S_OK)),
        (
            "unknown type",
            blk_input(false, &read, 0xdead, 0),
            Some(S_UNSUPP),
        ),
        // A chain whose header descriptor loops onto itself.
        ("loop", blk_input(false, &[desc(1, 0, 16, 0)], 0, 0), None),
        ("empty", Vec::new(), None),
        ("zeros", vec![0; 1024], None),
        ("ones", vec![0xff; 1024], None),
    ];
    for (name, input, want) in cases {
        fuzz_blk(&input);
        let mem = run_blk(&input);
        if let Some(want) = want {
            let got: u8 = mem
                .read_obj(GuestAddress(DATA + STATUS))
                .expect("status byte");
            assert_eq!(got, want, "{name}");
        }
    }
}

#[test]
fn vsock_corpus() {
    for input in [
        Vec::new(),
        vec![0; 2048],
        vec![0xff; 2048],
        vec![3; 2048],
        vec![0x21; 4096],
    ] {
        fuzz_vsock(&input);
    }
}
