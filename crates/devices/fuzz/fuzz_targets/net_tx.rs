//! Hostile TX chains and headers (and RX buffers) through the virtio-net device, with a
//! backend that fills up; any panic is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| crx_devices::virtio::fuzzing::fuzz_net_tx(data));
