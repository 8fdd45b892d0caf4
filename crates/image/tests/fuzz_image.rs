//! The image fuzz targets (`crx_image::fuzzing`, also run by cargo-fuzz from `fuzz/`) on a
//! fixed corpus of crafted inputs plus a few thousand generated ones from a fixed seed, so that
//! CI catches a panic or a broken property without a nightly toolchain. `CRX_FUZZ_ITERS`
//! raises the generated count, `CRX_FUZZ_SEED` changes the inputs, for a longer local run.

use crx_image::fuzzing::{check_layer, fuzz_documents, fuzz_layer, fuzz_registry, LayerOutcome};
use crx_image::unpack::UnpackError;

/// xorshift64*: a fixed-seed generator so failures reproduce (the failing input is printed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn bytes(&mut self, max_len: usize) -> Vec<u8> {
        let len = (self.next() as usize) % max_len;
        (0..len).map(|_| (self.next() >> 24) as u8).collect()
    }
}

fn iterations(default: usize) -> usize {
    std::env::var("CRX_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `target` on `n` inputs from `seed`, printing the input that panicked.
fn run<T>(seed: u64, n: usize, max_len: usize, mut target: impl FnMut(&[u8]) -> T) -> Vec<T> {
    // `CRX_FUZZ_SEED` explores other inputs in a local run.
    let seed = seed
        ^ std::env::var("CRX_FUZZ_SEED")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    let mut rng = Rng(seed);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let input = rng.bytes(max_len);
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| target(&input))) {
            Ok(v) => out.push(v),
            Err(e) => {
                eprintln!(
                    "fuzz input {i} of seed {seed:#x} panicked ({} bytes): {input:02x?}",
                    input.len()
                );
                std::panic::resume_unwind(e)
            }
        }
    }
    out
}

/// Generated layers per run.
const LAYER_INPUTS: usize = 3000;
/// Generated documents and registry answers per run (each target).
const DOCUMENT_INPUTS: usize = 10_000;

#[test]
fn generated_layers_stay_in_their_root() {
    let outcomes = run(0x5eed_1a7e, iterations(LAYER_INPUTS), 4096, fuzz_layer);
    // The generator must reach both sides, and the confinement checks, not just the tar
    // reader's first error.
    let unpacked = outcomes
        .iter()
        .filter(|o| matches!(o, LayerOutcome::Unpacked(s) if s.entries > 0))
        .count();
    let escapes = outcomes
        .iter()
        .filter(|o| matches!(o, LayerOutcome::Refused(UnpackError::PathEscape { .. })))
        .count();
    assert!(unpacked > outcomes.len() / 20, "{unpacked} layers unpacked");
    assert!(escapes > outcomes.len() / 20, "{escapes} escapes refused");
}

#[test]
fn generated_documents_parse_or_fail_cleanly() {
    run(
        0x5eed_d0c5,
        iterations(DOCUMENT_INPUTS),
        1024,
        fuzz_documents,
    );
}

#[test]
fn generated_registry_answers_parse_or_fail_cleanly() {
    run(0x5eed_4e61, iterations(DOCUMENT_INPUTS), 512, fuzz_registry);
}

#[test]
fn crafted_layers_are_refused_or_confined() {
    for (name, archive) in crx_image::fuzzing::layer_corpus() {
        let outcome = check_layer(&archive);
        let refused = |o: &LayerOutcome| matches!(o, LayerOutcome::Refused(_));
        match name {
            "valid" => assert!(
                matches!(&outcome, LayerOutcome::Unpacked(s) if s.entries == 6),
                "{name}: {outcome:?}"
            ),
            "dotdot"
            | "dotdot deep"
            | "absolute"
            | "whiteout dotdot"
            | "whiteout naming dotdot"
            | "whiteout naming dotdot deep"
            | "hardlink out"
            | "huge sparse"
            | "truncated" => {
                assert!(refused(&outcome), "{name}: {outcome:?}")
            }
            _ => {}
        }
    }
}

#[test]
fn crafted_documents_parse_or_fail_cleanly() {
    let digest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    let docs = [
        format!(r#"{{"schemaVersion":2,"config":{{"mediaType":"x","digest":"{digest}","size":0}},"layers":[]}}"#),
        format!(r#"{{"schemaVersion":2,"manifests":[{{"digest":"{digest}","size":1,"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#),
        format!(r#"{{"architecture":"amd64","os":"linux","config":{{"Cmd":["sh"]}},"rootfs":{{"type":"layers","diff_ids":["{digest}"]}}}}"#),
        r#"{"schemaVersion":2,"config":{"digest":"sha256:../../etc/passwd","size":-1},"layers":[]}"#.to_owned(),
        r#"{"schemaVersion":2,"layers":[{"size":18446744073709551615}]}"#.to_owned(),
        format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)),
        "\"\u{1b}]0;pwned\u{7}\"".to_owned(),
        String::new(),
    ];
    for d in &docs {
        for media in [
            None,
            Some("application/vnd.oci.image.index.v1+json"),
            Some("text/html"),
        ] {
            crx_image::fuzzing::check_document(media, d.as_bytes());
        }
    }
}

/// Generated image archives per run.
const ARCHIVE_INPUTS: usize = 1500;

#[test]
fn generated_archives_import_or_fail_cleanly() {
    run(
        0x5eed_a7c4,
        iterations(ARCHIVE_INPUTS),
        2048,
        crx_image::fuzzing::fuzz_archive,
    );
}
