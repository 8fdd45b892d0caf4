use super::*;

fn record() -> Record {
    Record::new("c1", BTreeMap::new())
}

#[test]
fn rfc3339_known_dates_and_back() {
    assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
    let t = UNIX_EPOCH + Duration::new(1_795_861_487, 5);
    assert_eq!(rfc3339(t), "2026-11-28T10:24:47.000000005Z");
    let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
    assert!(rfc3339(leap).starts_with("2000-02-29T00:00:00"));
    for secs in [
        0,
        951_782_400,
        1_795_861_487,
        4_102_444_800,
        86_399,
        68_256_000,
    ] {
        let s = rfc3339(UNIX_EPOCH + Duration::new(secs, 999));
        assert_eq!(rfc3339_secs(&s), Some(secs), "{s}");
    }
    for bad in [
        "",
        "2026-13-01T00:00:00Z",
        "2026-11-28 10:24:47Z",
        "20x6-11-28T10:24:47Z",
    ] {
        assert_eq!(rfc3339_secs(bad), None, "{bad}");
    }
}

/// Every record of this version reads back as written, and its creation time sorts as text.
#[test]
fn save_is_atomic_and_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let mut r = record();
    r.save(&path).unwrap();
    assert_eq!(Record::load(&path).unwrap(), r);
    // Concurrent writers and readers: every read sees a whole record.
    std::thread::scope(|s| {
        for i in 0..4 {
            let path = &path;
            let mut r = r.clone();
            s.spawn(move || {
                for n in 0..200 {
                    r.exit_code = Some(i * 1000 + n);
                    // Per-thread temporary names: the pid is shared, so mimic processes.
                    let tmp_dir = path.parent().unwrap().join(format!("w{i}"));
                    fs::create_dir_all(&tmp_dir).unwrap();
                    let mine = tmp_dir.join("state.json");
                    r.save(&mine).unwrap();
                    fs::rename(&mine, path).unwrap();
                }
            });
        }
        for _ in 0..500 {
            Record::load(&path).expect("always a whole record");
        }
    });
    // Only the record is left: no temporary file.
    r.exit_code = Some(7);
    r.save(&path).unwrap();
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().into_string().unwrap())
        .filter(|n| !n.starts_with('w'))
        .collect();
    assert_eq!(names, vec!["state.json".to_owned()]);
    r.phase = Phase::Stopped;
    assert_ne!(Record::load(&path).unwrap(), r);
}

/// A record without a version is 1 (crx-runc's version 1 is a subset of this one); a newer one
/// is refused in one line naming both versions.
#[test]
fn records_are_versioned() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let r = record();
    r.save(&path).unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    assert_eq!(v["version"], RECORD_VERSION);
    v.as_object_mut().unwrap().remove("version");
    fs::write(&path, v.to_string()).unwrap();
    assert_eq!(Record::load(&path).unwrap().version, 1);
    v["version"] = (RECORD_VERSION + 1).into();
    fs::write(&path, v.to_string()).unwrap();
    let e = Record::load(&path).unwrap_err();
    assert!(
        matches!(e, RecordError::Newer { version, .. } if version == RECORD_VERSION + 1),
        "{e:?}"
    );
    assert!(!e.to_string().contains('\n'), "{e}");
}

/// crx-runc's version-1 record, as it wrote it, loads unchanged.
#[test]
fn crx_runc_version_1_loads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let v1 = serde_json::json!({
        "version": 1, "id": "c1", "bundle": "/b", "rootfs": "/b/rootfs",
        "created": "2026-11-28T00:00:00.000000000Z", "annotations": {"a": "b"},
        "phase": "running", "monitor_pid": 10, "monitor_start": 20, "vmm_pid": 11,
        "exit_code": null, "exit_signal": null, "error": null,
    });
    fs::write(&path, v1.to_string()).unwrap();
    let r = Record::load(&path).unwrap();
    assert_eq!(r.bundle.as_deref(), Some(Path::new("/b")));
    assert_eq!(
        (r.phase, r.monitor_pid, r.vmm_pid),
        (Phase::Running, Some(10), Some(11))
    );
    assert_eq!(r.annotations["a"], "b");
    assert_eq!(r.vmm_start, None);
}

/// crx's version-1 instance record is converted: its own data into annotations.
#[test]
fn crx_instance_version_1_is_converted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let v1 = serde_json::json!({
        "version": 1, "id": "abc", "name": "web", "image": "busybox",
        "manifest_digest": "sha256:ab", "command": ["sleep", "9"], "created": 1_795_861_487u64,
        "detached": true, "vmm_pid": 12, "vmm_start_time": 34, "exit_code": 3,
    });
    fs::write(&path, v1.to_string()).unwrap();
    let r = Record::load(&path).unwrap();
    assert_eq!((r.id.as_str(), r.phase), ("abc", Phase::Stopped));
    assert_eq!(r.created, "2026-11-28T10:24:47.000000000Z");
    assert_eq!(r.created_secs(), 1_795_861_487);
    assert_eq!(
        (r.vmm_pid, r.vmm_start, r.exit_code),
        (Some(12), Some(34), Some(3))
    );
    let h = crate::home::Home {
        dir: dir.path().to_owned(),
        state: r,
    };
    assert_eq!((h.name(), h.image()), ("web", "busybox"));
    assert_eq!(h.manifest_digest(), "sha256:ab");
    assert_eq!(h.command(), vec!["sleep".to_owned(), "9".to_owned()]);
}

#[test]
fn corrupt_state_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    fs::write(&path, b"{\"id\":").unwrap();
    assert!(matches!(
        Record::load(&path),
        Err(RecordError::Corrupt { .. })
    ));
    let missing = Record::load(&dir.path().join("nope")).unwrap_err();
    assert!(missing.is_missing());
}

/// The measured boot is kept in the record (an older record without it still loads).
#[test]
fn the_boot_digests_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let mut r = record();
    r.save(&path).unwrap();
    assert!(!fs::read_to_string(&path).unwrap().contains("boot"));
    assert_eq!(Record::load(&path).unwrap().boot, None);
    r.boot = Some(test_digests());
    r.save(&path).unwrap();
    assert_eq!(Record::load(&path).unwrap(), r);
}

#[test]
fn live_and_reused_pids() {
    let me = std::process::id();
    let mut r = record();
    assert!(!r.monitor_alive() && !r.vmm_alive());
    r.set_monitor(me);
    r.set_vmm(me);
    assert!(r.monitor_alive() && r.vmm_alive());
    // A reused pid (another start time) is not ours.
    r.monitor_start = Some(1);
    r.vmm_start = Some(1);
    assert!(!r.monitor_alive() && !r.vmm_alive());
    // A pid beyond pid_max (4194304) never exists.
    r.set_vmm(4_194_999);
    assert!(!r.vmm_alive());
}

#[test]
fn zombie_is_not_alive() {
    let mut c = std::process::Command::new("true").spawn().unwrap();
    let pid = c.id();
    // Until it has exited, without reaping it: a zombie.
    use nix::sys::wait::{waitid, Id, WaitPidFlag};
    let pidfd = nix::unistd::Pid::from_raw(pid as i32);
    waitid(Id::Pid(pidfd), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT).unwrap();
    assert!(!pid_alive(pid), "a zombie counts as dead");
    c.wait().unwrap();
}
