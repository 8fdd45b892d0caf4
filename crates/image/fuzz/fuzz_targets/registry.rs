//! Registry answers short of HTTP: authentication challenges, token bodies, manifest bodies
//! under a claimed content type, digests and references; a panic is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| crx_image::fuzzing::fuzz_registry(data));
