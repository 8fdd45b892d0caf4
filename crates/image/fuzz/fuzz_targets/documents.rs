//! Manifests, indexes, configs and layout markers through the store's parsers and limit
//! checks; a panic or a document that does not survive a round trip is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| crx_image::fuzzing::fuzz_documents(data));
