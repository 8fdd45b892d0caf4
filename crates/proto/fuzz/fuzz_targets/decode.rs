//! Feeds arbitrary bytes to the frame reader and every message decoder; any panic is a bug.
#![no_main]

use crx_proto::{decode, read_frame, RequestFrame, ResponseFrame, StreamHeader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut r = std::io::Cursor::new(data);
    while let Ok(Some(p)) = read_frame(&mut r) {
        let _ = decode::<RequestFrame>(&p);
        let _ = decode::<ResponseFrame>(&p);
        let _ = decode::<StreamHeader>(&p);
    }
    let _ = decode::<RequestFrame>(data);
});
