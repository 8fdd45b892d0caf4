//! The crx-initrd command line: base, build, list; SOURCE_DATE_EPOCH; exit codes.

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_crx-initrd"))
}

#[test]
fn base_build_list_and_reproducibility() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = |args: &[&str], epoch: Option<&str>| {
        let mut c = bin();
        c.args(args).current_dir(d).env_remove("SOURCE_DATE_EPOCH");
        if let Some(e) = epoch {
            c.env("SOURCE_DATE_EPOCH", e);
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    run(
        &["base", "--init", "/bin/true", "-o", "a.cpio"],
        Some("1700000000"),
    );
    run(
        &["base", "--init", "/bin/true", "-o", "b.cpio"],
        Some("1700000000"),
    );
    run(
        &[
            "base",
            "--init",
            "/bin/true",
            "-o",
            "c.cpio",
            "--mtime",
            "5",
        ],
        Some("1700000000"),
    );
    let a = std::fs::read(d.join("a.cpio")).unwrap();
    assert_eq!(a, std::fs::read(d.join("b.cpio")).unwrap());
    assert_ne!(a, std::fs::read(d.join("c.cpio")).unwrap());
    assert_eq!(a.len() % 4096, 0);
    let entries = crx_initrd::parse(&a).unwrap();
    assert!(entries
        .iter()
        .all(|e| e.header.mtime == 1_700_000_000 || e.is_trailer()));

    std::fs::write(
        d.join("l.spec"),
        "file /etc/motd motd 0644\nsymlink /etc/issue motd\n",
    )
    .unwrap();
    std::fs::write(d.join("motd"), "hi\n").unwrap();
    run(&["build", "l.spec", "-o", "l.cpio"], None);
    let list = run(&["list", "l.cpio"], None);
    let text = String::from_utf8(list.stdout).unwrap();
    assert!(
        text.contains("etc/motd") && text.contains("@4096"),
        "{text}"
    );

    // Errors: exit 2 with a message naming the problem.
    std::fs::write(d.join("bad.spec"), "file /x ${MISSING}\n").unwrap();
    let out = bin()
        .args(["build", "bad.spec", "-o", "x.cpio"])
        .current_dir(d)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("-D MISSING=VALUE"));

    // A misaligned file makes `list` exit 1: shift a valid archive by 4 bytes of a fake entry.
    let mut shifted = Vec::new();
    let mut pad = crx_initrd::newc::Header {
        nlink: 1,
        mode: 0o040755,
        namesize: 2,
        ..Default::default()
    }
    .encode()
    .to_vec();
    pad.extend(b"a\0");
    shifted.extend(&pad);
    shifted.extend(std::fs::read(d.join("l.cpio")).unwrap());
    std::fs::write(d.join("s.cpio"), shifted).unwrap();
    let out = bin()
        .args(["list", "s.cpio"])
        .current_dir(d)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
