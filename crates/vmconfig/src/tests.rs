//! Parsing, round trips and per-section validation.

use super::*;
use std::fs;
use std::io::Write;

fn tmpfile(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    let p = dir.path().join(name);
    fs::File::create(&p).unwrap().write_all(b"x").unwrap();
    p
}

/// Parses and validates.
fn load(text: &str) -> Result<VmConfig, ConfigError> {
    let c = VmConfig::from_toml(text)?;
    c.validate()?;
    Ok(c)
}

/// The field a refusal names; a parse error's message stands in (section conversions such
/// as `[serial]`'s report through the TOML parser).
fn field_of(e: ConfigError) -> String {
    match &e {
        ConfigError::Parse { source, .. } => {
            let msg = source.to_string();
            let start = msg.find("config field `").expect("a config field") + 14;
            msg[start..].split('`').next().unwrap().to_owned()
        }
        _ => e
            .field()
            .unwrap_or_else(|| panic!("unexpected {e}"))
            .to_owned(),
    }
}

#[test]
fn full_file_parses() {
    let d = tempfile::tempdir().unwrap();
    let k = tmpfile(&d, "vmlinux");
    let i1 = tmpfile(&d, "a.cpio");
    let i2 = tmpfile(&d, "b.cpio");
    let disk = tmpfile(&d, "disk.img");
    let text = format!(
        r#"
memory_mib = 256
vcpus = 2
kernel = "{}"
initrds = ["{}", "{}"]
init_args = "crxrun=/bin/x"
boot_timer = true
[[disks]]
path = "{}"
read_only = true
[vsock]
guest_cid = 3
uds_path = "{}"
[serial]
output = "off"
"#,
        k.display(),
        i1.display(),
        i2.display(),
        disk.display(),
        d.path().join("v.sock").display()
    );
    let c = load(&text).unwrap();
    assert_eq!(c.memory_mib, 256);
    assert_eq!(c.vcpus, 2);
    assert_eq!(c.initrds, vec![i1, i2]);
    assert_eq!(c.init_args.as_deref(), Some("crxrun=/bin/x"));
    assert!(c.disks[0].read_only);
    assert_eq!(c.vsock.unwrap().guest_cid, 3);
    assert_eq!(c.serial, SerialOutput::Off);
    assert!(c.boot_timer);
    assert_eq!(c.cmdline, DEFAULT_CMDLINE);
}

#[test]
fn defaults_are_those_of_new() {
    let c = VmConfig::from_toml("memory_mib = 64\nkernel = \"/k\"\n").unwrap();
    assert_eq!(c, VmConfig::new(64, "/k"));
}

/// Every section survives TOML and back, whatever its values.
#[test]
fn configurations_round_trip_through_toml() {
    let mut full = VmConfig::new(512, "/boot/vmlinux");
    full.vcpus = 4;
    full.initrds = vec!["/a.cpio".into(), "/b dir/b.cpio".into()];
    full.cmdline = "console=ttyS0 quiet \"x\"".into();
    full.init_args = Some("crxrun=/bin/sh crxarg=-c".into());
    full.boot_timer = true;
    full.copy_boot_files = true;
    full.disks = vec![
        DiskConfig::parse_flag("/img/root.img:ro"),
        DiskConfig::parse_flag("/img/data.img"),
    ];
    full.vsock = Some(VsockConfig {
        guest_cid: 3,
        uds_path: "/run/v.sock".into(),
    });
    full.fs = vec![FsConfig::parse_flag("root=/run/root.sock").unwrap()];
    let mut serials = vec![SerialOutput::Off, SerialOutput::File("/run/console".into())];
    serials.push(SerialOutput::Stdout);
    for serial in serials {
        for c in [
            VmConfig {
                serial: serial.clone(),
                ..full.clone()
            },
            VmConfig {
                serial: serial.clone(),
                ..VmConfig::new(1, "/k")
            },
        ] {
            let text = c.to_toml().unwrap();
            assert_eq!(VmConfig::from_toml(&text).unwrap(), c, "{text}");
        }
    }
    // A front-end's partial config (no kernel yet) too.
    let partial = VmConfig::new(8, "");
    let text = partial.to_toml().unwrap();
    assert!(!text.contains("kernel"), "{text}");
    assert_eq!(VmConfig::from_toml(&text).unwrap(), partial);
}

#[test]
fn written_files_are_private_and_read_back() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("vm.toml");
    fs::write(&p, "old").unwrap();
    let mut c = VmConfig::new(16, "/k");
    c.serial = SerialOutput::File(d.path().join("console"));
    c.write_private(&p).unwrap();
    assert_eq!(VmConfig::read(&p).unwrap(), c);
    assert_eq!(
        fs::metadata(&p).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let left: Vec<_> = fs::read_dir(d.path()).unwrap().collect();
    assert_eq!(left.len(), 1, "no temporary file is left behind");
    let e = c
        .write_private(&d.path().join("missing/vm.toml"))
        .unwrap_err();
    assert!(matches!(e, ConfigError::WriteFile { .. }), "{e}");
    assert!(matches!(
        VmConfig::read(&d.path().join("nope.toml")),
        Err(ConfigError::ReadFile { .. })
    ));
}

#[test]
fn zero_memory_and_vcpus_name_the_field() {
    let d = tempfile::tempdir().unwrap();
    let k = tmpfile(&d, "vmlinux");
    let t = format!("memory_mib = 0\nkernel = \"{}\"\n", k.display());
    assert_eq!(field_of(load(&t).unwrap_err()), "memory_mib");
    let t = format!("memory_mib = 8\nvcpus = 0\nkernel = \"{}\"\n", k.display());
    assert_eq!(field_of(load(&t).unwrap_err()), "vcpus");
    let t = format!(
        "memory_mib = 8\nvcpus = 255\nkernel = \"{}\"\n",
        k.display()
    );
    assert_eq!(field_of(load(&t).unwrap_err()), "vcpus");
    let t = format!(
        "memory_mib = {}\nkernel = \"{}\"\n",
        MAX_MEMORY_MIB + 1,
        k.display()
    );
    assert_eq!(field_of(load(&t).unwrap_err()), "memory_mib");
}

#[test]
fn missing_files_name_the_field() {
    let e = load("memory_mib = 8\nkernel = \"/nonexistent/vmlinux\"\n").unwrap_err();
    assert!(e.to_string().contains("`kernel`"), "{e}");
    let d = tempfile::tempdir().unwrap();
    let k = tmpfile(&d, "vmlinux");
    let t = format!(
        "memory_mib = 8\nkernel = \"{}\"\ninitrds = [\"{}\", \"/nope.cpio\"]\n",
        k.display(),
        k.display()
    );
    assert_eq!(field_of(load(&t).unwrap_err()), "initrds[1]");
    let t = format!(
        "memory_mib = 8\nkernel = \"{}\"\n[[disks]]\npath = \"/nope.img\"\n",
        k.display()
    );
    assert_eq!(field_of(load(&t).unwrap_err()), "disks[0].path");
}

#[test]
fn missing_required_fields() {
    let e = VmConfig::from_toml("kernel = \"/x\"").unwrap_err();
    assert!(format!("{:?}", e).contains("memory_mib"), "{e:?}");
    let e = load("memory_mib = 4").unwrap_err();
    assert!(matches!(e, ConfigError::Missing { field: "kernel" }), "{e}");
}

#[test]
fn overlapping_options_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let k = tmpfile(&d, "vmlinux");
    let disk = tmpfile(&d, "disk.img");
    let base = format!("memory_mib = 8\nkernel = \"{}\"\n", k.display());
    let cases = [
        (
            "[serial]\noutput = \"stdout\"\npath = \"/tmp/s.log\"\n".to_owned(),
            "serial.path",
        ),
        ("[serial]\noutput = \"tty\"\n".to_owned(), "serial.output"),
        ("[serial]\noutput = \"file\"\n".to_owned(), "serial.path"),
        (
            format!(
                "[[disks]]\npath = \"{0}\"\n[[disks]]\npath = \"{0}\"\n",
                disk.display()
            ),
            "disks[1].path",
        ),
        (
            format!("[[disks]]\npath = \"{}\"\nread_only = true\n", k.display()),
            "disks[0].path",
        ),
        (
            format!("[serial]\npath = \"{}\"\n", k.display()),
            "serial.path",
        ),
        (
            format!(
                "[serial]\npath = \"{}\"\n",
                d.path().join("no/dir/c").display()
            ),
            "serial.path",
        ),
        (
            format!(
                "[[disks]]\npath = \"{0}\"\n[vsock]\nguest_cid = 3\nuds_path = \"{0}\"\n",
                disk.display()
            ),
            "vsock.uds_path",
        ),
    ];
    for (text, field) in cases {
        assert_eq!(
            field_of(load(&format!("{base}{text}")).unwrap_err()),
            field,
            "{text}"
        );
    }
}

#[test]
fn a_disk_that_is_a_boot_file_or_another_disk_by_any_name_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let k = tmpfile(&d, "vmlinux");
    let i = tmpfile(&d, "base.cpio");
    let disk = tmpfile(&d, "disk.img");
    let (k_link, i_link, disk_link) = (
        d.path().join("k-link.img"),
        d.path().join("i-link.img"),
        d.path().join("disk-link.img"),
    );
    fs::hard_link(&k, &k_link).unwrap();
    fs::hard_link(&i, &i_link).unwrap();
    fs::hard_link(&disk, &disk_link).unwrap();
    let base = format!(
        "memory_mib = 8\nkernel = \"{}\"\ninitrds = [\"{}\"]\n",
        k.display(),
        i.display()
    );
    for (links, field) in [
        (vec![&k_link], "disks[0].path"),
        (vec![&i_link], "disks[0].path"),
        (vec![&disk, &disk_link], "disks[1].path"),
    ] {
        let mut t = base.clone();
        for l in links {
            t.push_str(&format!("[[disks]]\npath = \"{}\"\n", l.display()));
        }
        assert_eq!(field_of(load(&t).unwrap_err()), field, "{t}");
    }
    // A serial file that is a hard link of the kernel would be written into it.
    let t = format!("{base}[serial]\npath = \"{}\"\n", k_link.display());
    assert_eq!(field_of(load(&t).unwrap_err()), "serial.path");
    // A distinct file is fine.
    let t = format!("{base}[[disks]]\npath = \"{}\"\n", disk.display());
    load(&t).unwrap();
}

#[test]
fn bad_values_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let k = tmpfile(&d, "vmlinux");
    let base = format!("memory_mib = 8\nkernel = \"{}\"\n", k.display());
    let t = format!("{base}[vsock]\nguest_cid = 2\nuds_path = \"/tmp/crx-x.sock\"\n");
    assert_eq!(field_of(load(&t).unwrap_err()), "vsock.guest_cid");
    let t = format!(
        "{base}[vsock]\nguest_cid = 3\nuds_path = \"{}\"\n",
        k.display()
    );
    assert_eq!(field_of(load(&t).unwrap_err()), "vsock.uds_path");
    for extra in [
        "bogus = 1\n",
        "[serial]\nbogus = 1\n",
        "[vsock]\nguest_cid = 3\n",
    ] {
        assert!(
            matches!(
                load(&format!("{base}{extra}")),
                Err(ConfigError::Parse { .. })
            ),
            "{extra}"
        );
    }
    let t = format!("{base}cmdline = \"a\\u0000b\"\n");
    assert_eq!(field_of(load(&t).unwrap_err()), "cmdline");
    let t = format!("{base}init_args = \"a\\u0000b\"\n");
    assert_eq!(field_of(load(&t).unwrap_err()), "init_args");
    assert!(SerialOutput::parse_flag("tty").is_err());
    assert!(SerialOutput::parse_flag("file:").is_err());
    assert_eq!(
        SerialOutput::parse_flag("file:/x").unwrap(),
        SerialOutput::File("/x".into())
    );
    assert_eq!(
        DiskConfig::parse_flag("/a.img:ro"),
        DiskConfig {
            path: "/a.img".into(),
            read_only: true
        }
    );
}

#[test]
fn fs_entries_parse_and_bad_ones_name_the_field() {
    let d = tempfile::tempdir().unwrap();
    let k = tmpfile(&d, "vmlinux");
    let sock = d.path().join("fs.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let base = format!("memory_mib = 8\nkernel = \"{}\"\n", k.display());
    let entry = |tag: &str, socket: &Path| {
        format!(
            "[[fs]]\ntag = \"{tag}\"\nsocket = \"{}\"\n",
            socket.display()
        )
    };
    let sock2 = d.path().join("fs2.sock");
    let _listener2 = std::os::unix::net::UnixListener::bind(&sock2).unwrap();
    let t = format!("{base}{}{}", entry("root", &sock), entry("data", &sock2));
    let cfg = load(&t).unwrap();
    assert!(
        !cfg.maps_boot_files(),
        "RAM shared with a backend: boot files are copied"
    );
    assert!(load(&base).unwrap().maps_boot_files());
    assert_eq!(
        cfg.fs,
        [
            FsConfig {
                tag: "root".into(),
                socket: sock.clone()
            },
            FsConfig {
                tag: "data".into(),
                socket: sock2.clone()
            }
        ]
    );
    assert!(FsConfig::parse_flag("no-socket").is_err());
    assert!(FsConfig::parse_flag("tag=").is_err());

    let cases = [
        (entry("", &sock), "fs[0].tag"),
        (entry(&"t".repeat(37), &sock), "fs[0].tag"),
        (
            format!("{}{}", entry("a", &sock), entry("a", &sock2)),
            "fs[1].tag",
        ),
        (entry("a", &d.path().join("missing.sock")), "fs[0].socket"),
        (
            format!("{}{}", entry("a", &sock), entry("b", &sock)),
            "fs[1].socket",
        ),
        (entry("a", &k), "fs[0].socket"),
    ];
    for (text, field) in cases {
        assert_eq!(
            field_of(load(&format!("{base}{text}")).unwrap_err()),
            field,
            "{text}"
        );
    }
    let t = format!(
        "{base}[[fs]]\ntag = \"a\"\nsocket = \"{}\"\nbogus = 1\n",
        sock.display()
    );
    assert!(matches!(load(&t), Err(ConfigError::Parse { .. })));
    // 36 bytes is the limit.
    assert!(load(&format!("{base}{}", entry(&"t".repeat(36), &sock))).is_ok());
}

/// Sections check themselves: a caller building one by hand can check it alone.
#[test]
fn sections_validate_alone() {
    let d = tempfile::tempdir().unwrap();
    assert_eq!(
        DiskConfig::parse_flag("/nope.img")
            .validate(2)
            .unwrap_err()
            .field(),
        Some("disks[2].path")
    );
    let v = VsockConfig {
        guest_cid: 3,
        uds_path: d.path().join("v.sock"),
    };
    v.validate().unwrap();
    let f = FsConfig {
        tag: "x".into(),
        socket: d.path().join("none.sock"),
    };
    assert_eq!(f.validate(4).unwrap_err().field(), Some("fs[4].socket"));
}

/// Hostile TOML (truncated, binary, deeply nested) is refused with an error, never a panic.
#[test]
fn garbage_is_refused_without_panic() {
    let d = tempfile::tempdir().unwrap();
    let k = tmpfile(&d, "vmlinux");
    let good = format!(
        "memory_mib = 8\nkernel = \"{}\"\n[serial]\noutput = \"off\"\n[[disks]]\npath = \"/x\"\n",
        k.display()
    );
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for n in 0..2000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut bytes = good.clone().into_bytes();
        let cut = (seed as usize) % (bytes.len() + 1);
        bytes.truncate(cut);
        if n % 2 == 0 {
            bytes.push((seed >> 32) as u8);
        }
        let text = String::from_utf8_lossy(&bytes);
        if let Ok(c) = VmConfig::from_toml(&text) {
            let _ = c.validate();
        }
    }
    let deep = "a = ".to_owned() + &"[".repeat(10_000);
    assert!(VmConfig::from_toml(&deep).is_err());
}
