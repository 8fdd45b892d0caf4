//! Hostile layer archives (paths, links, whiteouts, extension headers, sparse files,
//! truncation, compression) unpacked next to a canary; a panic, a write outside the root or a
//! multi-line error is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    crx_image::fuzzing::fuzz_layer(data);
});
