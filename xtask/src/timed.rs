//! `xtask timed`: runs one test binary inside the lab with a time limit (tier 3's script calls
//! it). A binary past its limit is not just killed: first the state of every process it
//! started (each thread's state and the system call it waits in, its kernel stack where the
//! kernel shows one) and the tails of recent guest consoles are printed, so that a hang can be
//! diagnosed from the CI log. Its elapsed time is appended to a record file, from which the
//! host prints tier 3's time table.

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};

/// Exit status for a binary stopped at its time limit (as coreutils' `timeout`).
pub const TIMED_OUT: i32 = 124;
/// Set in the binary's environment: its descendants inherit it, even those that leave its
/// process tree (daemons re-parented to init), which is how they are found.
const TAG: &str = "CRX_TIMED_TAG";

/// What to run and where its time goes.
#[derive(Debug, clap::Args)]
pub struct TimedArgs {
    /// Time limit in seconds.
    #[arg(long)]
    pub limit: u64,
    /// Append `NAME SECONDS STATUS` to this file when the binary ends.
    #[arg(long)]
    pub record: Option<PathBuf>,
    /// The name recorded (default: the program's file name).
    #[arg(long)]
    pub name: Option<String>,
    /// Working directory.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// On a timeout, also have the kernel dump every task (`echo t > /proc/sysrq-trigger`)
    /// and print the end of its log: for the lab, whose kernel log is the lab's alone.
    #[arg(long)]
    pub sysrq: bool,
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// Runs the command; returns its exit status (128 + signal if killed), or [`TIMED_OUT`].
pub fn run(args: &TimedArgs) -> Result<i32> {
    let started = Instant::now();
    let tag = format!("{}-{}", std::process::id(), now_ns());
    let mut cmd = Command::new(&args.command[0]);
    cmd.args(&args.command[1..]).env(TAG, &tag).process_group(0);
    if let Some(dir) = &args.dir {
        cmd.current_dir(dir);
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", args.command[0]))?;
    let limit = Duration::from_secs(args.limit);
    let code = loop {
        if let Some(st) = child.try_wait()? {
            break st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0));
        }
        if started.elapsed() >= limit {
            let mut o = std::io::stdout().lock();
            let _ = writeln!(
                o,
                "crx-lab: {} still running after {}s: the state of its processes, then it is killed",
                args.command[0], args.limit
            );
            let _ = o.write_all(dump(child.id(), &tag, args.sysrq).as_bytes());
            let _ = o.flush();
            drop(o);
            let left = kill_all(child.id(), &tag);
            let _ = child.try_wait();
            if !left.is_empty() {
                println!("crx-lab: still alive 10 s after SIGKILL (stuck in the kernel): {left:?}");
            }
            break TIMED_OUT;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if let Some(record) = &args.record {
        let name = args.name.clone().unwrap_or_else(|| {
            Path::new(&args.command[0])
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        let line = format!("{name} {:.1} {code}\n", started.elapsed().as_secs_f64());
        let written = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(record)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        // The binary's status matters more than its time: a failed record only warns.
        if let Err(e) = written {
            eprintln!(
                "crx-lab: cannot record the time in {}: {e}",
                record.display()
            );
        }
    }
    Ok(code)
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// One process of /proc: pid, parent, and whether it carries `tag` in its environment.
struct Proc {
    pid: u32,
    ppid: u32,
    tagged: bool,
}

fn processes(tag: &str) -> Vec<Proc> {
    let wanted = format!("{TAG}={tag}");
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(ppid) = stat_field(&stat, 1).and_then(|p| p.parse().ok()) else {
            continue;
        };
        let environ = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let tagged = environ.split(|b| *b == 0).any(|v| v == wanted.as_bytes());
        out.push(Proc { pid, ppid, tagged });
    }
    out
}

/// `root` and every process descended from it or carrying `tag`, parents first.
fn family(root: u32, tag: &str) -> Vec<u32> {
    let all = processes(tag);
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        for p in &all {
            if p.ppid == parent && !found.contains(&p.pid) {
                found.push(p.pid);
            }
        }
        i += 1;
    }
    for p in &all {
        if p.tagged && !found.contains(&p.pid) {
            found.push(p.pid);
        }
    }
    found
}

/// Field `n` after the command name of a /proc stat line (0 = state, 1 = ppid, ...).
fn stat_field(stat: &str, n: usize) -> Option<&str> {
    let (_, rest) = stat.rsplit_once(") ")?;
    rest.split(' ').nth(n)
}

/// x86-64 system calls a stuck thread is commonly found in.
fn syscall_name(nr: i64) -> &'static str {
    match nr {
        0 => "read",
        1 => "write",
        3 => "close",
        7 => "poll",
        9 => "mmap",
        11 => "munmap",
        16 => "ioctl",
        17 => "pread64",
        18 => "pwrite64",
        19 => "readv",
        20 => "writev",
        23 => "select",
        35 => "nanosleep",
        43 => "accept",
        44 => "sendto",
        45 => "recvfrom",
        46 => "sendmsg",
        47 => "recvmsg",
        61 => "wait4",
        62 => "kill",
        74 => "fsync",
        75 => "fdatasync",
        82 => "rename",
        87 => "unlink",
        165 => "mount",
        166 => "umount2",
        202 => "futex",
        230 => "clock_nanosleep",
        231 => "exit_group",
        232 => "epoll_wait",
        247 => "waitid",
        257 => "openat",
        270 => "pselect6",
        271 => "ppoll",
        281 => "epoll_pwait",
        288 => "accept4",
        _ => "?",
    }
}

/// `/proc/.../syscall` made readable: `ioctl(0x9, 0xae80, ...)` or what the kernel wrote.
fn describe_syscall(raw: &str) -> String {
    let fields: Vec<&str> = raw.split_whitespace().collect();
    match fields.first().and_then(|nr| nr.parse::<i64>().ok()) {
        Some(nr) if nr >= 0 && fields.len() >= 4 => format!(
            "{}({}, {}, {}, ...)",
            syscall_name(nr),
            fields[1],
            fields[2],
            fields[3]
        )
        .replace("?(", &format!("syscall {nr}(")),
        Some(-1) => "not in a system call".into(),
        _ => raw.trim().to_string(),
    }
}

/// The state of `root`'s processes and their threads, the kernel's task dump where it has
/// one, and the tails of guest consoles written in the last 30 minutes.
fn dump(root: u32, tag: &str, sysrq: bool) -> String {
    let mut s = String::new();
    for pid in family(root, tag) {
        let dir = format!("/proc/{pid}");
        let cmdline = fs::read(format!("{dir}/cmdline"))
            .map(|c| {
                String::from_utf8_lossy(&c)
                    .split('\0')
                    .filter(|a| !a.is_empty())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        let _ = writeln!(s, "--- pid {pid}: {}", truncate(&cmdline, 200));
        let tasks = fs::read_dir(format!("{dir}/task"))
            .into_iter()
            .flatten()
            .flatten();
        for task in tasks {
            let t = task.path();
            let read = |f: &str| fs::read_to_string(t.join(f)).unwrap_or_default();
            let stat = read("stat");
            let comm = read("comm");
            let state = stat_field(&stat, 0).unwrap_or("?");
            let _ = writeln!(
                s,
                "    tid {} ({}) state {state}: {}",
                task.file_name().to_string_lossy(),
                comm.trim(),
                describe_syscall(&read("syscall"))
            );
            let wchan = read("wchan");
            if !wchan.is_empty() && wchan != "0" {
                let _ = writeln!(s, "      wchan {wchan}");
            }
            for frame in read("stack").lines() {
                let _ = writeln!(s, "      {frame}");
            }
        }
    }
    if sysrq {
        match fs::write("/proc/sysrq-trigger", "t") {
            Ok(()) => {
                let dmesg = Command::new("dmesg").output().map(|o| o.stdout);
                let dmesg = String::from_utf8_lossy(dmesg.as_deref().unwrap_or_default());
                let lines: Vec<&str> = dmesg.lines().collect();
                let _ = writeln!(
                    s,
                    "--- the kernel's task dump (sysrq t): the last 300 lines of dmesg"
                );
                for l in &lines[lines.len().saturating_sub(300)..] {
                    let _ = writeln!(s, "{l}");
                }
            }
            Err(e) => {
                let _ = writeln!(s, "--- no kernel task dump: /proc/sysrq-trigger: {e}");
            }
        }
    }
    for console in recent_consoles(Path::new("/tmp"), Duration::from_secs(30 * 60)) {
        let text = fs::read(&console).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let lines: Vec<&str> = text.lines().collect();
        let _ = writeln!(s, "--- {} (last 40 lines)", console.display());
        for l in &lines[lines.len().saturating_sub(40)..] {
            let _ = writeln!(s, "    {}", l.trim_end_matches('\r'));
        }
    }
    s
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Files named `console` (where the tests put a guest's serial console) at most three levels
/// under `dir`, modified within `recent`.
fn recent_consoles(dir: &Path, recent: Duration) -> Vec<PathBuf> {
    fn walk(dir: &Path, depth: u32, recent: Duration, out: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            let path = entry.path();
            if meta.is_dir() && depth > 1 {
                walk(&path, depth - 1, recent, out);
            } else if meta.is_file() && entry.file_name() == "console" {
                let fresh = meta
                    .modified()
                    .ok()
                    .and_then(|m| m.elapsed().ok())
                    .is_some_and(|age| age <= recent);
                if fresh {
                    out.push(path);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, 3, recent, &mut out);
    out.sort();
    out
}

/// SIGKILLs `root`'s family; returns those still alive (not zombies) 10 s later.
fn kill_all(root: u32, tag: &str) -> Vec<u32> {
    let pids = family(root, tag);
    for &pid in &pids {
        // SAFETY: kill(2) has no memory-safety preconditions; the pids are processes this
        // binary started (its tree or its tag), at worst already gone.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let alive: Vec<u32> = pids
            .iter()
            .copied()
            .filter(|pid| {
                fs::read_to_string(format!("/proc/{pid}/stat"))
                    .ok()
                    .and_then(|st| stat_field(&st, 0).map(|s| s != "Z" && s != "X"))
                    .unwrap_or(false)
            })
            .collect();
        if alive.is_empty() || Instant::now() > end {
            return alive;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The lines `run` records (`NAME SECONDS STATUS`) as (seconds, status, name); others skipped.
fn records(record: &str) -> Vec<(f64, i32, &str)> {
    record
        .lines()
        .filter_map(|l| {
            let mut f = l.rsplitn(3, ' ');
            let code = f.next()?.parse().ok()?;
            let secs = f.next()?.parse().ok()?;
            Some((secs, code, f.next()?))
        })
        .collect()
}

/// The names that `run` recorded as passed (status 0).
pub fn passed(record: &str) -> Vec<&str> {
    records(record)
        .into_iter()
        .filter_map(|(_, code, name)| (code == 0).then_some(name))
        .collect()
}

/// Tier 3's time table from the lines `run` records (`NAME SECONDS STATUS`), slowest first.
pub fn time_table(record: &str) -> String {
    let mut rows = records(record);
    rows.sort_by(|a, b| b.0.total_cmp(&a.0));
    let total: f64 = rows.iter().map(|r| r.0).sum();
    let mut s = String::new();
    for (secs, code, name) in &rows {
        let status = match *code {
            0 => "ok".to_string(),
            TIMED_OUT => "TIMED OUT".to_string(),
            c => format!("FAILED ({c})"),
        };
        let _ = writeln!(s, "{secs:>7.0}s  {status:<11} {name}");
    }
    let _ = writeln!(s, "{total:>7.0}s  in all ({} binaries)", rows.len());
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(limit: u64, record: Option<PathBuf>, command: &[&str]) -> TimedArgs {
        TimedArgs {
            limit,
            record,
            name: None,
            dir: None,
            sysrq: false,
            command: command.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn a_binary_in_time_keeps_its_status_and_is_recorded() {
        let tmp = std::env::temp_dir().join(format!("crx-timed-test-{}", std::process::id()));
        let _ = fs::remove_file(&tmp);
        let code = run(&args(60, Some(tmp.clone()), &["sh", "-c", "exit 3"])).unwrap();
        assert_eq!(code, 3);
        let code = run(&args(60, Some(tmp.clone()), &["true"])).unwrap();
        assert_eq!(code, 0);
        // A record that cannot be written does not change the status.
        let nowhere = tmp.join("no-such-dir/times");
        assert_eq!(
            run(&args(60, Some(nowhere), &["sh", "-c", "exit 4"])).unwrap(),
            4
        );
        let record = fs::read_to_string(&tmp).unwrap();
        let _ = fs::remove_file(&tmp);
        let lines: Vec<&str> = record.lines().collect();
        assert_eq!(lines.len(), 2, "{record}");
        assert!(
            lines[0].starts_with("sh ") && lines[0].ends_with(" 3"),
            "{record}"
        );
        assert!(
            lines[1].starts_with("true ") && lines[1].ends_with(" 0"),
            "{record}"
        );
    }

    #[test]
    fn a_binary_past_its_limit_is_killed_with_its_children() {
        // A grandchild whose parent exited (re-parented to init, out of the tree): found by
        // its tag.
        let pidfile = std::env::temp_dir().join(format!("crx-timed-pid-{}", std::process::id()));
        let script = format!(
            "sh -c 'sleep 600 & echo $! > {}'; exec sleep 600",
            pidfile.display()
        );
        let code = run(&args(1, None, &["sh", "-c", &script])).unwrap();
        assert_eq!(code, TIMED_OUT);
        let grandchild: u32 = fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let _ = fs::remove_file(&pidfile);
        let state = fs::read_to_string(format!("/proc/{grandchild}/stat"))
            .ok()
            .and_then(|s| stat_field(&s, 0).map(String::from));
        assert!(
            matches!(state.as_deref(), None | Some("Z")),
            "the grandchild {grandchild} survived: {state:?}"
        );
    }

    #[test]
    fn the_dump_names_each_thread_and_its_system_call() {
        let mut child = Command::new("sleep").arg("600").spawn().unwrap();
        // Until it sleeps, the thread may still be in execve or the loader.
        let end = Instant::now() + Duration::from_secs(20);
        let text = loop {
            let text = dump(child.id(), "no-such-tag", false);
            if text.contains("nanosleep(") || Instant::now() > end {
                break text;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            text.contains(&format!("--- pid {}: sleep 600", child.id())),
            "{text}"
        );
        assert!(
            text.contains("(sleep) state S: clock_nanosleep(") || text.contains("nanosleep("),
            "{text}"
        );
    }

    #[test]
    fn syscalls_are_described() {
        assert_eq!(
            describe_syscall("16 0x9 0xae80 0x0 0x0 0x0 0x0 0x7ffd 0x7f00\n"),
            "ioctl(0x9, 0xae80, 0x0, ...)"
        );
        assert_eq!(
            describe_syscall("999 0x1 0x2 0x3 0x0 0x0 0x0 0x7ffd 0x7f00"),
            "syscall 999(0x1, 0x2, 0x3, ...)"
        );
        assert_eq!(describe_syscall("-1 0x7ffd 0x7f00"), "not in a system call");
        assert_eq!(describe_syscall("running\n"), "running");
    }

    #[test]
    fn only_binaries_recorded_as_passed_are_passed() {
        let record = "lab_a-1 10.2 0\nlab_b-2 300.0 124\nbad line\nkvm_c 5 101\nlab d-3 1 0\n";
        assert_eq!(passed(record), ["lab_a-1", "lab d-3"]);
        assert!(passed("").is_empty());
    }

    #[test]
    fn the_time_table_lists_the_slowest_first_with_a_total() {
        let table = time_table("lab_a-1 10.2 0\nlab_b-2 300.0 124\nbad line\nkvm_c 5 101\n");
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines,
            [
                "    300s  TIMED OUT   lab_b-2",
                "     10s  ok          lab_a-1",
                "      5s  FAILED (101) kvm_c",
                "    315s  in all (3 binaries)",
            ]
        );
    }
}
