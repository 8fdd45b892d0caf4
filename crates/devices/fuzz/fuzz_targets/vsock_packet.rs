//! Hostile TX packets and RX buffers through the vsock device (packet parsing, connection
//! state machine, credit accounting); any panic is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| crx_devices::virtio::fuzzing::fuzz_vsock(data));
