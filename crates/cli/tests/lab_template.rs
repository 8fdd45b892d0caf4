//! `crx run` from a VM template (ADR 0017), in the nested lab (tier 3): the first run of a
//! shape builds the template, later ones restore it; a restored container answers, runs,
//! keeps time; clones differ in their randomness and boot id; ten sandboxes restored from one
//! template each run a container. Templates go to a fresh `CRX_TEMPLATE_DIR` per test binary.
//! `--network none`; the default network's NIC and a `-v` share are slots of their own
//! templates (ADR 0017).
//! Templates are on by default (ADR 0017, State): these tests run `crx` without setting
//! `CRX_TEMPLATES`.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

struct Lab {
    root: PathBuf,
    templates: PathBuf,
    _dir: tempfile::TempDir,
}

static LAB: OnceLock<Lab> = OnceLock::new();
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
/// Every `crx` run of this binary and its stderr (with `CRX_TRACE=1`: which path each boot
/// took, and why a restore failed), printed by a failing check.
static HISTORY: Mutex<String> = Mutex::new(String::new());

/// The runs so far, and the template cache's marks, for a failure message.
fn history(lab: &Lab) -> String {
    let mut s = HISTORY.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for e in std::fs::read_dir(&lab.templates)
        .into_iter()
        .flatten()
        .flatten()
    {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "broken") {
            let why = std::fs::read_to_string(&p).unwrap_or_default();
            s.push_str(&format!("== mark {}: {why}\n", p.display()));
        }
    }
    s
}

fn lab() -> (&'static Lab, MutexGuard<'static, ()>) {
    let guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lab = LAB.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let lab = Lab {
            root: dir.path().join("root"),
            templates: dir.path().join("templates"),
            _dir: dir,
        };
        let out = crx(&lab, &["load", "--busybox"]);
        assert!(out.status.success(), "load: {}", text(&out.stderr));
        // The first run of the shape builds the template, then restores from it (whichever
        // test comes first).
        let (out, err) = run(&lab, &[], &["echo", "first"]);
        assert_eq!(out, "first\n");
        assert!(err.contains("template: building"), "{err}");
        assert!(err.contains("template: restoring"), "{err}");
        assert!(err.contains("identity given"), "{err}");
        lab
    });
    (lab, guard)
}

fn crx(lab: &Lab, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_crx"))
        .arg("--root")
        .arg(&lab.root)
        .args(args)
        .env("CRX_TEMPLATE_DIR", &lab.templates)
        // Templates are on by default: nothing turns them on here.
        .env_remove("CRX_TEMPLATES")
        .env("CRX_TRACE", "1")
        .env_remove("CRX_COLD")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let mut h = HISTORY.lock().unwrap_or_else(|e| e.into_inner());
    h.push_str(&format!(
        "== crx {args:?}: {}\n{}",
        out.status,
        text(&out.stderr)
    ));
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `crx run --rm --network none busybox ARGS`, which must succeed; (stdout, stderr).
fn run(lab: &Lab, extra: &[&str], args: &[&str]) -> (String, String) {
    let mut all = vec!["run", "--rm", "--network", "none"];
    all.extend_from_slice(extra);
    all.push("busybox");
    all.extend_from_slice(args);
    let out = crx(lab, &all);
    let (o, e) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "crx {all:?}: {}\n{o}\n{e}\nall runs:\n{}",
        out.status,
        history(lab)
    );
    (o, e)
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// What a clone prints: its time, 16 random bytes, its boot id.
const PROBE: &str = "date +%s; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; \
                     cat /proc/sys/kernel/random/boot_id";

fn probe(lab: &Lab) -> (f64, f64, Vec<String>, String) {
    let before = now();
    let (out, err) = run(lab, &[], &["sh", "-c", PROBE]);
    let after = now();
    assert!(
        err.contains("template: restoring"),
        "not restored; all runs:\n{}",
        history(lab)
    );
    let lines: Vec<String> = out.lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 3, "{out}");
    (before, after, lines, err)
}

#[test]
fn lab_template_restored_containers_answer_keep_time_and_differ() {
    let (lab, _g) = lab();
    // A later run restores the template, without building it again.
    let (out, err) = run(lab, &[], &["echo", "second"]);
    assert_eq!(out, "second\n");
    assert!(!err.contains("template: building"), "{err}");
    assert!(err.contains("template: restoring"), "{err}");
    assert!(err.contains("identity given"), "{err}");
    // An old template: its clock must move on by the time it spent on disk.
    std::thread::sleep(Duration::from_secs(30));
    let (b1, a1, one, _) = probe(lab);
    let guest: f64 = one[0].parse().unwrap();
    // `date +%s` truncates: the guest's second may start up to 1 s before ours.
    assert!(
        guest >= b1.floor() - 1.0 && guest <= a1 + 1.0,
        "guest time {guest} outside [{b1}, {a1}] +- 1 s"
    );
    let (_, _, two, err) = probe(lab);
    assert!(!err.contains("template: building"), "rebuilt:\n{err}");
    assert_eq!(one[1].len(), 32, "{one:?}");
    assert_ne!(
        one[1], two[1],
        "two clones read the same /dev/urandom bytes"
    );
    assert_eq!(one[2].len(), 36, "{one:?}");
    assert_ne!(one[2], two[2], "two clones have the same boot id");
    // --cold boots the kernel, and says so.
    let (out, err) = run(lab, &["--cold"], &["echo", "cold"]);
    assert_eq!(out, "cold\n");
    assert!(err.contains("template: cold boot: CRX_COLD=1"), "{err}");
    // crx check reports the cache.
    let out = crx(lab, &["check"]);
    let check = text(&out.stdout);
    assert!(check.contains("templates: 1 in"), "{check}");
}

/// `crx run`'s default network: the VM's NIC is a slot of a template of its own shape. The
/// first run builds it, the next restores it; the clone's NIC has the clone's MAC (not the
/// slot's) and the address CNI leased it. (lab_run_net's runs restore too: the default
/// network's reachability, both ways, is tested there.)
#[test]
fn lab_template_a_nic_is_a_slot_the_clone_fills() {
    let (lab, _g) = lab();
    let script = "cat /sys/class/net/eth0/address; ip -o -4 addr show eth0";
    for round in 0..2 {
        let out = crx(lab, &["run", "--rm", "busybox", "sh", "-c", script]);
        let (o, e) = (text(&out.stdout), text(&out.stderr));
        assert!(
            out.status.success(),
            "round {round}: {}\n{o}\n{e}\nall runs:\n{}",
            out.status,
            history(lab)
        );
        assert!(e.contains("template: restoring"), "round {round}: {e}");
        let mac = o.lines().next().unwrap_or_default();
        assert_eq!(mac.len(), 17, "{o}");
        assert!(!mac.starts_with("02:63:72:78"), "the slot's MAC kept: {o}");
        assert!(o.contains("inet 10.66.0."), "{o}");
    }
    // The other tests count the `--network none` template alone.
    for e in std::fs::read_dir(&lab.templates).unwrap().flatten() {
        let key = std::fs::read_to_string(e.path().join("key")).unwrap_or_default();
        if key.contains(",net:") {
            std::fs::remove_dir_all(e.path()).unwrap();
        }
    }
}

/// A virtio-fs share (`-v`) is a slot of the template too: each clone's own virtiofsd serves its
/// own host directory, read and written through the restored VM. A template that then fails to
/// restore (its state file damaged) is discarded and marked, and the run boots cold with a new
/// virtiofsd (the first served the failed VMM and ended with it).
#[test]
fn lab_template_a_share_is_a_slot_the_clone_fills() {
    let (lab, _g) = lab();
    let host = tempfile::tempdir().unwrap();
    let fs_templates = || {
        std::fs::read_dir(&lab.templates)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let key = std::fs::read_to_string(p.join("key")).unwrap_or_default();
                key.contains(",fs:")
            })
            .collect::<Vec<_>>()
    };
    let mut damaged = Vec::new();
    for round in 0..3 {
        if round == 2 {
            damaged = fs_templates();
            for t in &damaged {
                std::fs::write(t.join("state"), "damaged").unwrap();
            }
        }
        let dir = host.path().join(format!("vol{round}"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("in"), format!("host says {round}\n")).unwrap();
        let vol = format!("{}:/data", dir.display());
        let script = format!("cat /data/in; echo clone {round} > /data/out");
        let (o, e) = run(lab, &["-v", &vol], &["sh", "-c", &script]);
        let path = match round {
            2 => "template: restore failed, booting cold",
            _ => "template: restoring",
        };
        assert!(
            e.contains(path),
            "round {round}: no {path:?}: {e}\nall runs:\n{}",
            history(lab)
        );
        assert_eq!(o, format!("host says {round}\n"));
        let out = std::fs::read_to_string(dir.join("out")).unwrap();
        assert_eq!(out, format!("clone {round}\n"));
    }
    assert_eq!(damaged.len(), 1, "{damaged:?}");
    assert!(fs_templates().is_empty(), "the failed template is removed");
    let mark = damaged[0].with_extension("broken");
    let why = std::fs::read_to_string(&mark).unwrap();
    assert!(why.contains("the VM stopped"), "{why}");
    // The other tests count the plain `--network none` template alone.
    std::fs::remove_file(&mark).unwrap();
}

#[test]
fn lab_template_ten_sandboxes_from_one_template_each_run_a_container() {
    let (lab, _g) = lab();
    let names: Vec<String> = (0..10).map(|i| format!("clone{i}")).collect();
    for n in &names {
        let out = crx(
            lab,
            &[
                "run",
                "-d",
                "--network",
                "none",
                "--name",
                n,
                "busybox",
                "sleep",
                "600",
            ],
        );
        let err = text(&out.stderr);
        assert!(out.status.success(), "{n}: {err}");
    }
    for n in &names {
        let out = crx(lab, &["exec", n, "echo", n]);
        assert_eq!(text(&out.stdout).trim(), n, "{}", text(&out.stderr));
    }
    let dirs: Vec<_> = std::fs::read_dir(&lab.templates)
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("state").exists())
        .collect();
    assert_eq!(
        dirs.len(),
        1,
        "one template for the ten; all runs:\n{}",
        history(lab)
    );
    for n in &names {
        let out = crx(lab, &["rm", "-f", n]);
        assert!(out.status.success(), "rm {n}: {}", text(&out.stderr));
    }
}
