//! The fixed corpus of crafted layers: each an attack a layer may try.

use arbitrary::Unstructured;

use super::layer::{octal, pad, raw_header};

/// Appends a plain entry (name and link as given, mode 0644, `data` as its content).
fn corpus_entry(out: &mut Vec<u8>, kind: u8, name: &[u8], link: &[u8], data: &[u8]) {
    // Fixed bytes for the header fields the generator would pick.
    let fields = [0xa4, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let mut u = Unstructured::new(&fields);
    raw_header(out, kind, name, link, data.len() as u64, &mut u).expect("fixed fields");
    out.extend_from_slice(data);
    pad(out);
}

/// Type, name, link target, data.
type CorpusEntry<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);

/// Crafted layers for [`check_layer`](super::check_layer), named, each an attack a layer may try (also the seed
/// corpus of the cargo-fuzz target). `out`, `up` and `canary` are the lower layer's symlinks
/// out of the root.
pub fn layer_corpus() -> Vec<(&'static str, Vec<u8>)> {
    let layer = |entries: &[CorpusEntry<'_>]| {
        let mut out = Vec::new();
        for (kind, name, link, data) in entries {
            corpus_entry(&mut out, *kind, name, link, data);
        }
        out.extend_from_slice(&[0; 1024]);
        out
    };
    let mut sparse = Vec::new();
    {
        let mut h = tar::Header::new_gnu();
        let g = h.as_gnu_mut().expect("a GNU header");
        g.name[..6].copy_from_slice(b"sparse");
        octal(&mut g.mode, 0o644);
        octal(&mut g.mtime, 0);
        octal(&mut g.sparse[0].offset, 1 << 32);
        octal(&mut g.sparse[0].numbytes, 512);
        octal(&mut g.realsize, (1 << 32) + 512);
        octal(&mut g.size, 512);
        g.typeflag = [b'S'];
        h.set_cksum();
        sparse.extend_from_slice(h.as_bytes());
        sparse.extend_from_slice(&[7; 512]);
        sparse.extend_from_slice(&[0; 1024]);
    }
    let valid = layer(&[
        (b'5', b"etc/", b"", b""),
        (b'0', b"etc/hostname", b"", b"crx\n"),
        (b'2', b"bin", b"usr/bin", b""),
        (b'1', b"etc/hn", b"etc/hostname", b""),
        (b'0', b".wh.link", b"", b""),
        (b'0', b"a/.wh..wh..opq", b"", b""),
    ]);
    let mut truncated = valid.clone();
    truncated.truncate(700);
    vec![
        ("valid", valid),
        ("truncated", truncated),
        ("dotdot", layer(&[(b'0', b"../canary", b"", b"x")])),
        (
            "dotdot deep",
            layer(&[(b'0', b"a/../../canary", b"", b"x")]),
        ),
        (
            "absolute",
            layer(&[(b'0', b"/tmp/crx-fuzz-absolute", b"", b"x")]),
        ),
        (
            "through lower symlink",
            layer(&[(b'0', b"out/x", b"", b"x")]),
        ),
        (
            "through lower dotdot symlink",
            layer(&[(b'0', b"up/canary", b"", b"x")]),
        ),
        (
            "over lower canary link",
            layer(&[(b'0', b"canary", b"", b"x")]),
        ),
        (
            "symlink out then file",
            layer(&[
                (b'2', b"esc", b"../../..", b""),
                (b'0', b"esc/canary", b"", b"x"),
            ]),
        ),
        (
            "symlink to / then file",
            layer(&[(b'2', b"esc", b"/", b""), (b'0', b"esc/x", b"", b"x")]),
        ),
        ("hardlink out", layer(&[(b'1', b"h", b"../canary", b"")])),
        (
            "hardlink through symlink",
            layer(&[(b'1', b"h", b"up/canary", b"")]),
        ),
        (
            "hardlink to lower link",
            layer(&[(b'1', b"h", b"canary", b"")]),
        ),
        ("whiteout dotdot", layer(&[(b'0', b".wh...", b"", b"")])),
        (
            "whiteout naming dotdot",
            layer(&[(b'0', b"../.wh.canary", b"", b"")]),
        ),
        (
            "whiteout naming dotdot deep",
            layer(&[(b'0', b"a/../../.wh.canary", b"", b"")]),
        ),
        ("whiteout out", layer(&[(b'0', b"out/.wh.x", b"", b"")])),
        ("whiteout up", layer(&[(b'0', b"up/.wh.canary", b"", b"")])),
        (
            "opaque out",
            layer(&[(b'0', b"out/.wh..wh..opq", b"", b"")]),
        ),
        (
            "devices",
            layer(&[
                (b'3', b"null", b"", b""),
                (b'4', b"sda", b"", b""),
                (b'6', b"fifo", b"", b""),
            ]),
        ),
        ("huge sparse", sparse),
        ("zstd garbage", vec![0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0]),
        ("empty", Vec::new()),
    ]
}
