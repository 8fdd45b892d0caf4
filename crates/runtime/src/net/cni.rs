//! CNI plugins, run as the CNI specification (1.0) says: the plugin named by each entry of a
//! network configuration list (`.conflist`) is executed from the plugin directories with the
//! entry on stdin (plus the list's `name` and `cniVersion`, the previous plugin's result as
//! `prevResult`, and the `runtimeConfig` of the capabilities it declares) and `CNI_COMMAND`,
//! `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME` and `CNI_PATH` in its environment. `ADD` runs
//! the plugins in order, each given the result so far; `DEL` runs them in reverse with the
//! result `ADD` returned, and goes on past a plugin that fails (everything is to be removed).
//!
//! A plugin's output is untrusted input: read up to [`MAX_OUTPUT`] bytes, within
//! [`PLUGIN_TIMEOUT`], parsed into typed, bounded values ([`CniResult`]); a failure is the
//! plugin's own error message (`{"code", "msg", "details"}`) or the end of its stderr.

use std::io::{Read, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crx_proto::network::IpPrefix;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Most bytes read from a plugin's stdout or stderr.
pub const MAX_OUTPUT: u64 = 1 << 20;
/// How long one plugin may run.
pub const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Most plugins in a list, interfaces and addresses in a result.
pub const MAX_ENTRIES: usize = 64;

/// Why a CNI operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("CNI configuration {path}")]
    ReadConfig {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("CNI configuration {path}: {reason}")]
    BadConfig { path: PathBuf, reason: String },
    #[error(
        "CNI plugin `{plugin}` not found in {dirs} (install Debian's containernetworking-plugins, \
         set CRX_CNI_PATH, or run with --network none)"
    )]
    PluginNotFound { plugin: String, dirs: String },
    #[error("running CNI plugin {path}")]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("CNI plugin `{plugin}` ({command}) ran longer than {PLUGIN_TIMEOUT:?} and was killed")]
    Timeout {
        plugin: String,
        command: &'static str,
    },
    #[error("CNI plugin `{plugin}` ({command}) failed: {message}")]
    Failed {
        plugin: String,
        command: &'static str,
        message: String,
    },
    #[error("CNI plugin `{plugin}` ({command}) returned a bad result: {reason}")]
    BadResult {
        plugin: String,
        command: &'static str,
        reason: String,
    },
}

/// A network configuration list, checked: a name, a version and the plugins' entries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfList {
    pub name: String,
    pub cni_version: String,
    /// Each plugin's entry as written (its `type` checked to be a plain file name).
    pub plugins: Vec<Value>,
}

impl ConfList {
    /// Parses and checks a `.conflist` (`path` is named in errors).
    pub fn parse(text: &[u8], path: &Path) -> Result<ConfList, CniError> {
        let bad = |reason: &str| CniError::BadConfig {
            path: path.to_owned(),
            reason: reason.to_owned(),
        };
        let v: Value = serde_json::from_slice(text).map_err(|e| bad(&e.to_string()))?;
        let name = v["name"].as_str().filter(|n| name_ok(n));
        let name = name.ok_or_else(|| bad("`name` must be a plain name"))?;
        let version = v["cniVersion"]
            .as_str()
            .ok_or_else(|| bad("no `cniVersion`"))?;
        let plugins = v["plugins"].as_array().filter(|p| !p.is_empty());
        let plugins = plugins.ok_or_else(|| bad("`plugins` must be a non-empty list"))?;
        if plugins.len() > MAX_ENTRIES {
            return Err(bad("too many plugins"));
        }
        if plugins
            .iter()
            .any(|p| !p["type"].as_str().is_some_and(name_ok))
        {
            return Err(bad("every plugin needs a `type` that is a plain file name"));
        }
        Ok(ConfList {
            name: name.to_owned(),
            cni_version: version.to_owned(),
            plugins: plugins.clone(),
        })
    }

    /// Reads and checks the `.conflist` at `path`.
    pub fn load(path: &Path) -> Result<ConfList, CniError> {
        let text = std::fs::read(path).map_err(|source| CniError::ReadConfig {
            path: path.to_owned(),
            source,
        })?;
        ConfList::parse(&text, path)
    }
}

/// A network or plugin name: a plain file name of letters, digits, `-`, `_` and `.`.
fn name_ok(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 128
        && n != "."
        && n != ".."
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A published port (`runtimeConfig.portMappings` of the plugins with that capability).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    /// `tcp` or `udp`.
    pub protocol: Protocol,
    /// The host address it listens on; every address when absent.
    #[serde(rename = "hostIP", default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<IpAddr>,
}

/// A port's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

/// One address of a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultIp {
    pub address: IpPrefix,
    pub gateway: Option<IpAddr>,
}

/// What `ADD` returned, as far as crx uses it: the addresses (IPv4 and IPv6 with their
/// prefix) and their gateways.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    pub ips: Vec<ResultIp>,
}

impl CniResult {
    /// Parses a plugin's result (untrusted): an object with `cniVersion`, at most
    /// [`MAX_ENTRIES`] interfaces and addresses, each address `ADDR/PREFIX` valid for its
    /// family, a gateway an address.
    pub fn parse(v: &Value) -> Result<CniResult, String> {
        if !v.is_object() || !v["cniVersion"].is_string() {
            return Err("not an object with a `cniVersion`".into());
        }
        for key in ["interfaces", "ips", "routes"] {
            match &v[key] {
                Value::Null => {}
                Value::Array(a) if a.len() <= MAX_ENTRIES => {}
                _ => return Err(format!("`{key}` is not a list of at most {MAX_ENTRIES}")),
            }
        }
        let ips = v["ips"].as_array().into_iter().flatten();
        let ips = ips.map(parse_ip).collect::<Result<Vec<_>, _>>()?;
        Ok(CniResult { ips })
    }
}

fn parse_ip(ip: &Value) -> Result<ResultIp, String> {
    let text = ip["address"].as_str().unwrap_or_default();
    let address = parse_prefix(text).ok_or_else(|| format!("bad address {text:?}"))?;
    let gateway = match &ip["gateway"] {
        Value::Null => None,
        g => Some(
            g.as_str()
                .and_then(|g| g.parse().ok())
                .ok_or_else(|| format!("bad gateway {g}"))?,
        ),
    };
    Ok(ResultIp { address, gateway })
}

/// `10.0.0.2/24` as an address and its prefix length (valid for the family).
pub fn parse_prefix(s: &str) -> Option<IpPrefix> {
    let (addr, len) = s.split_once('/')?;
    let p = IpPrefix {
        addr: addr.parse().ok()?,
        prefix_len: len.parse().ok()?,
    };
    p.is_valid().then_some(p)
}

/// Who the plugins work for: the container, its namespace and interface, where they live.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub container_id: String,
    pub netns: PathBuf,
    pub ifname: String,
    pub plugin_dirs: Vec<PathBuf>,
}

/// `ADD`: runs the plugins of `list` in order, each given the result so far; returns the last
/// plugin's result (raw, for `DEL`) and its parsed form. On error nothing is undone here:
/// the caller runs [`del`], as the specification asks after a failed `ADD`.
pub fn add(
    list: &ConfList,
    inv: &Invocation,
    ports: &[PortMapping],
) -> Result<(Value, CniResult), CniError> {
    let mut prev: Option<Value> = None;
    for plugin in &list.plugins {
        let input = plugin_input(list, plugin, prev.as_ref(), ports);
        let out = exec(plugin_type(plugin), "ADD", inv, &input)?;
        let bad = |reason: String| CniError::BadResult {
            plugin: plugin_type(plugin).to_owned(),
            command: "ADD",
            reason,
        };
        let v: Value = serde_json::from_slice(&out).map_err(|e| bad(e.to_string()))?;
        CniResult::parse(&v).map_err(bad)?;
        prev = Some(v);
    }
    let last = prev.unwrap_or_else(|| json!({ "cniVersion": list.cni_version }));
    let parsed = CniResult::parse(&last).unwrap_or_default();
    Ok((last, parsed))
}

/// `DEL`: runs the plugins of `list` in reverse order with `prev` (what `ADD` returned, if it
/// got that far); all of them run, and the first failure is returned.
pub fn del(
    list: &ConfList,
    inv: &Invocation,
    ports: &[PortMapping],
    prev: Option<&Value>,
) -> Result<(), CniError> {
    let mut first = None;
    for plugin in list.plugins.iter().rev() {
        let input = plugin_input(list, plugin, prev, ports);
        if let Err(e) = exec(plugin_type(plugin), "DEL", inv, &input) {
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

fn plugin_type(plugin: &Value) -> &str {
    plugin["type"].as_str().unwrap_or_default()
}

/// A plugin's stdin: its entry, the list's name and version, `prevResult`, and the
/// `runtimeConfig` of the capabilities it declares (`portMappings`).
pub fn plugin_input(
    list: &ConfList,
    plugin: &Value,
    prev: Option<&Value>,
    ports: &[PortMapping],
) -> Value {
    let mut v = plugin.clone();
    v["name"] = json!(list.name);
    v["cniVersion"] = json!(list.cni_version);
    if let Some(p) = prev {
        v["prevResult"] = p.clone();
    }
    if plugin["capabilities"]["portMappings"] == json!(true) && !ports.is_empty() {
        v["runtimeConfig"]["portMappings"] = json!(ports);
    }
    v
}

/// The plugin binary `name` in `dirs`.
fn find(name: &str, dirs: &[PathBuf]) -> Result<PathBuf, CniError> {
    dirs.iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| CniError::PluginNotFound {
            plugin: name.to_owned(),
            dirs: join_dirs(dirs),
        })
}

fn join_dirs(dirs: &[PathBuf]) -> String {
    let dirs: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    dirs.join(":")
}

/// Runs plugin `name` for `command` with `input` on stdin; its stdout on success.
fn exec(
    name: &str,
    command: &'static str,
    inv: &Invocation,
    input: &Value,
) -> Result<Vec<u8>, CniError> {
    let path = find(name, &inv.plugin_dirs)?;
    let mut child = Command::new(&path)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &inv.container_id)
        .env("CNI_NETNS", &inv.netns)
        .env("CNI_IFNAME", &inv.ifname)
        .env("CNI_PATH", join_dirs(&inv.plugin_dirs))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| CniError::Spawn {
            path: path.clone(),
            source,
        })?;
    let stdin = child.stdin.take();
    let body = serde_json::to_vec(input).unwrap_or_default();
    std::thread::spawn(move || stdin.map(|mut s| s.write_all(&body)));
    let out = reader(child.stdout.take());
    let err = reader(child.stderr.take());
    let deadline = Instant::now() + PLUGIN_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(CniError::Timeout {
                    plugin: name.to_owned(),
                    command,
                });
            }
        }
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    if status.success() {
        return Ok(stdout);
    }
    Err(CniError::Failed {
        plugin: name.to_owned(),
        command,
        message: failure_message(&stdout, &stderr, status),
    })
}

/// Reads up to [`MAX_OUTPUT`] bytes of `pipe` on a thread (then drains the rest unread).
fn reader<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.by_ref().take(MAX_OUTPUT).read_to_end(&mut buf);
            let _ = std::io::copy(&mut p, &mut std::io::sink());
        }
        buf
    })
}

/// A failed plugin's message: its CNI error (`msg`, `details`, `code`) or its stderr's end,
/// printable and at most 512 characters.
pub fn failure_message(stdout: &[u8], stderr: &[u8], status: std::process::ExitStatus) -> String {
    let from_json = serde_json::from_slice::<Value>(stdout).ok().and_then(|v| {
        let msg = v["msg"].as_str()?.to_owned();
        let details = v["details"].as_str().filter(|d| !d.is_empty());
        let code = v["code"]
            .as_u64()
            .map_or(String::new(), |c| format!(" (code {c})"));
        Some(match details {
            Some(d) => format!("{msg}: {d}{code}"),
            None => format!("{msg}{code}"),
        })
    });
    let text = from_json.unwrap_or_else(|| {
        let e = String::from_utf8_lossy(stderr);
        let e = e.trim();
        if e.is_empty() {
            format!("{status}")
        } else {
            e.to_owned()
        }
    });
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    match clean.char_indices().nth(512) {
        Some((i, _)) => format!("{}...", &clean[..i]),
        None => clean,
    }
}

#[cfg(test)]
mod tests;
