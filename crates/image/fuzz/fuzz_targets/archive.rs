//! `docker save` archives and OCI layout tars (documents naming present, missing, wrong or
//! linked blobs) through both importers into an empty store; a panic, a multi-line error, an
//! imported image lacking a blob, or a store blob that does not hash to its name is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| crx_image::fuzzing::fuzz_archive(data));
