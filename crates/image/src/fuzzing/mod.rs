//! Entry points of the cargo-fuzz targets in `crates/image/fuzz` and of the seeded tier-1 tests
//! in `tests/fuzz_image.rs` (only with the `fuzzing` feature). Each takes arbitrary bytes,
//! builds hostile input from them through [`arbitrary::Unstructured`] (a layer archive, a JSON
//! document, a registry answer) and runs the parser on it. A panic is a bug, and so is a
//! broken property: each target checks one (a layer never writes outside its root, a parsed
//! document serialises back to itself, an error is one line), panicking when it does not hold.

mod archive;
mod corpus;
mod documents;
mod layer;

pub use archive::{check_archive, fuzz_archive};
pub use corpus::layer_corpus;
pub use documents::{check_document, fuzz_documents, fuzz_registry};
pub use layer::{check_layer, fuzz_layer, LayerOutcome};

/// Panics unless `e` (a parser's error) reads as one non-empty line, as the CLI prints it.
fn assert_one_line(e: &dyn std::error::Error) {
    let s = e.to_string();
    assert!(
        !s.is_empty() && !s.contains('\n') && !s.contains('\r'),
        "error is not one line: {s:?}"
    );
}

/// A scratch directory, in memory where there is a tmpfs (a few thousand trees on a busy disk
/// take minutes).
fn scratch_dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    let parent = if shm.is_dir() {
        shm.to_owned()
    } else {
        std::env::temp_dir()
    };
    tempfile::Builder::new()
        .prefix("crx-image-fuzz")
        .tempdir_in(parent)
        .expect("a scratch directory")
}
