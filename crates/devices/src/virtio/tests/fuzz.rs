//! Runs the fuzz targets on a few thousand pseudo-random inputs from a fixed seed, so the
//! panic-freedom property is checked in CI without cargo-fuzz.

use crate::virtio::fuzzing::{fuzz_blk, fuzz_vsock};

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
