use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;

use super::*;

const BRIDGE_RESULT: &str = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"crx0","mac":"aa:bb:cc:dd:ee:01"},
  {"name":"veth1","mac":"aa:bb:cc:dd:ee:02"},{"name":"eth0","mac":"aa:bb:cc:dd:ee:03","sandbox":"/x"}],
  "ips":[{"interface":2,"address":"10.66.0.5/24","gateway":"10.66.0.1"}],
  "routes":[{"dst":"0.0.0.0/0"}],"dns":{}}"#;

fn list(plugins: Value) -> ConfList {
    let text = json!({"cniVersion": "1.0.0", "name": "t", "plugins": plugins}).to_string();
    ConfList::parse(text.as_bytes(), Path::new("t.conflist")).unwrap()
}

#[test]
fn the_default_kind_of_list_parses() {
    let l = list(
        json!([{"type": "bridge"}, {"type": "portmap", "capabilities": {"portMappings": true}}]),
    );
    assert_eq!(l.name, "t");
    assert_eq!(l.plugins.len(), 2);
}

#[test]
fn bad_lists_are_refused_with_the_reason() {
    let p = Path::new("x.conflist");
    for (text, why) in [
        ("{", "EOF"),
        (
            r#"{"cniVersion":"1.0.0","name":"../n","plugins":[{"type":"b"}]}"#,
            "name",
        ),
        (r#"{"name":"n","plugins":[{"type":"b"}]}"#, "cniVersion"),
        (
            r#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#,
            "plugins",
        ),
        (
            r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"/bin/sh"}]}"#,
            "type",
        ),
        (
            r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":".."}]}"#,
            "type",
        ),
        (
            r#"{"cniVersion":"1.0.0","name":"n","plugins":[{}]}"#,
            "type",
        ),
    ] {
        let e = ConfList::parse(text.as_bytes(), p).unwrap_err().to_string();
        assert!(e.contains(why) && e.contains("x.conflist"), "{text}: {e}");
    }
}

#[test]
fn a_bridge_result_gives_its_address_and_gateway() {
    let r = CniResult::parse(&serde_json::from_str(BRIDGE_RESULT).unwrap()).unwrap();
    assert_eq!(r.ips.len(), 1);
    assert_eq!(r.ips[0].address.addr.to_string(), "10.66.0.5");
    assert_eq!(r.ips[0].address.prefix_len, 24);
    assert_eq!(r.ips[0].gateway, Some("10.66.0.1".parse().unwrap()));
}

#[test]
fn an_old_version_result_and_an_empty_one_parse() {
    let v = json!({"cniVersion": "0.4.0", "ips": [{"version": "6", "address": "fd00::5/64"}]});
    let r = CniResult::parse(&v).unwrap();
    assert_eq!(r.ips[0].address.prefix_len, 64);
    assert_eq!(r.ips[0].gateway, None);
    assert!(CniResult::parse(&json!({"cniVersion": "1.0.0"}))
        .unwrap()
        .ips
        .is_empty());
}

#[test]
fn hostile_results_are_refused() {
    let many: Vec<Value> = (0..=MAX_ENTRIES)
        .map(|_| json!({"address": "10.0.0.1/8"}))
        .collect();
    for v in [
        json!([]),
        json!("x"),
        json!({"ips": []}),
        json!({"cniVersion": 1}),
        json!({"cniVersion": "1.0.0", "ips": {}}),
        json!({"cniVersion": "1.0.0", "ips": many}),
        json!({"cniVersion": "1.0.0", "interfaces": "eth0"}),
        json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.1"}]}),
        json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.1/33"}]}),
        json!({"cniVersion": "1.0.0", "ips": [{"address": "fd00::1/129"}]}),
        json!({"cniVersion": "1.0.0", "ips": [{"address": "x/8"}]}),
        json!({"cniVersion": "1.0.0", "ips": [{"address": 5}]}),
        json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.1/8", "gateway": "g"}]}),
        json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.1/8", "gateway": 1}]}),
    ] {
        assert!(CniResult::parse(&v).is_err(), "{v}");
    }
}

/// Bounded fuzzing: mutated results (bytes flipped, cut, repeated) never panic the parser.
#[test]
fn mutated_results_never_panic() {
    let base = BRIDGE_RESULT.as_bytes();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..20_000 {
        let mut b = base.to_vec();
        for _ in 0..(next() % 8 + 1) {
            let i = (next() as usize) % b.len();
            match next() % 3 {
                0 => b[i] = next() as u8,
                1 => b.truncate(i.max(1)),
                _ => b.insert(i, b"{}[]\",:0/9"[(next() % 10) as usize]),
            }
        }
        if let Ok(v) = serde_json::from_slice::<Value>(&b) {
            let _ = CniResult::parse(&v);
        }
        let _ = failure_message(&b, &b, std::process::ExitStatus::from_raw(256));
    }
}

#[test]
fn plugin_input_has_name_version_prev_result_and_declared_port_mappings() {
    let l = list(
        json!([{"type": "bridge"}, {"type": "portmap", "capabilities": {"portMappings": true}}]),
    );
    let ports = [PortMapping {
        host_port: 8081,
        container_port: 80,
        protocol: Protocol::Tcp,
        host_ip: Some("127.0.0.1".parse().unwrap()),
    }];
    let prev = json!({"cniVersion": "1.0.0"});
    let bridge = plugin_input(&l, &l.plugins[0], None, &ports);
    assert_eq!(bridge["name"], "t");
    assert_eq!(bridge["cniVersion"], "1.0.0");
    assert!(bridge.get("prevResult").is_none() && bridge.get("runtimeConfig").is_none());
    let portmap = plugin_input(&l, &l.plugins[1], Some(&prev), &ports);
    assert_eq!(portmap["prevResult"], prev);
    assert_eq!(
        portmap["runtimeConfig"]["portMappings"],
        json!([{"hostPort": 8081, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"}])
    );
}

#[test]
fn failure_messages_come_from_the_cni_error_or_stderr_and_are_bounded() {
    let st = std::process::ExitStatus::from_raw(256);
    let json = br#"{"code":11,"msg":"failed to allocate","details":"range full"}"#;
    assert_eq!(
        failure_message(json, b"", st),
        "failed to allocate: range full (code 11)"
    );
    assert_eq!(failure_message(b"junk", b" oops\n", st), "oops");
    assert!(failure_message(b"", b"", st).contains('1'));
    let long = failure_message(b"", "\x1b[31m".repeat(400).as_bytes(), st);
    assert!(
        !long.contains('\x1b') && long.chars().count() <= 515,
        "{long}"
    );
}

/// A fake plugin: a shell script that logs its command, env and stdin and answers `reply`.
fn fake_plugin(dir: &Path, name: &str, reply: &str, code: i32) {
    let log = dir.join("log");
    let script = format!(
        "#!/bin/sh\nin=$(cat)\necho \"{name} $CNI_COMMAND $CNI_CONTAINERID $CNI_NETNS $CNI_IFNAME \
         $in\" >> {}\necho '{reply}'\nexit {code}\n",
        log.display()
    );
    let path = dir.join(name);
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn invocation(dir: &Path) -> Invocation {
    Invocation {
        container_id: "abc".into(),
        netns: "/run/ns".into(),
        ifname: "eth0".into(),
        plugin_dirs: vec![dir.join("missing"), dir.to_owned()],
    }
}

#[test]
fn add_chains_results_and_del_runs_in_reverse() {
    let d = tempfile::tempdir().unwrap();
    let one = r#"{"cniVersion":"1.0.0","ips":[{"address":"10.66.0.9/24"}]}"#;
    let two = r#"{"cniVersion":"1.0.0","ips":[{"address":"10.66.0.9/24","gateway":"10.66.0.1"}]}"#;
    fake_plugin(d.path(), "one", one, 0);
    fake_plugin(d.path(), "two", two, 0);
    let l = list(json!([{"type": "one"}, {"type": "two"}]));
    let (raw, r) = add(&l, &invocation(d.path()), &[]).unwrap();
    assert_eq!(r.ips[0].gateway, Some("10.66.0.1".parse().unwrap()));
    del(&l, &invocation(d.path()), &[], Some(&raw)).unwrap();
    let log = std::fs::read_to_string(d.path().join("log")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 4, "{log}");
    assert!(lines[0].starts_with("one ADD abc /run/ns eth0 {"), "{log}");
    assert!(
        lines[1].starts_with("two ADD") && lines[1].contains("10.66.0.9/24"),
        "{log}"
    );
    assert!(
        lines[2].starts_with("two DEL") && lines[2].contains("10.66.0.1"),
        "{log}"
    );
    assert!(lines[3].starts_with("one DEL"), "{log}");
}

#[test]
fn a_failing_plugin_stops_add_and_del_goes_on_past_it() {
    let d = tempfile::tempdir().unwrap();
    fake_plugin(d.path(), "ok", r#"{"cniVersion":"1.0.0"}"#, 0);
    fake_plugin(d.path(), "bad", r#"{"code":7,"msg":"no bridge"}"#, 1);
    let l = list(json!([{"type": "bad"}, {"type": "ok"}]));
    let e = add(&l, &invocation(d.path()), &[]).unwrap_err().to_string();
    assert!(e.contains("`bad` (ADD) failed: no bridge (code 7)"), "{e}");
    let e = del(&l, &invocation(d.path()), &[], None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("`bad` (DEL)"), "{e}");
    let log = std::fs::read_to_string(d.path().join("log")).unwrap();
    assert_eq!(log.lines().count(), 3, "ok's DEL ran too: {log}");
}

#[test]
fn garbage_output_and_a_missing_plugin_are_errors() {
    let d = tempfile::tempdir().unwrap();
    fake_plugin(d.path(), "junk", "not json", 0);
    let e = add(&list(json!([{"type": "junk"}])), &invocation(d.path()), &[]).unwrap_err();
    assert!(matches!(e, CniError::BadResult { .. }), "{e}");
    let e = add(&list(json!([{"type": "nope"}])), &invocation(d.path()), &[]).unwrap_err();
    assert!(e.to_string().contains("containernetworking-plugins"), "{e}");
}
