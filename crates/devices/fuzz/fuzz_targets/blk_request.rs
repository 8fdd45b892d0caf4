//! Hostile descriptor chains and request headers through the virtio-blk parser and executor;
//! any panic is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| crx_devices::virtio::fuzzing::fuzz_blk(data));
