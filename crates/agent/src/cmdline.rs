//! The keys crx-init reads from the kernel command line (`/proc/cmdline`).
//!
//! - `crxrun=/path`: system-VM mode: run this program, report its exit status, power off.
//! - `crxarg=VALUE` (repeatable, in order): its arguments (`argv[1..]`).
//! - `crxenv=NAME=VALUE` (repeatable): extra environment for it.
//! - `crxhostname=NAME`: the guest hostname (default `crx`).
//! - `crxtemplate=1`: a template boot: stop for a snapshot once ready (`crate::identity`).
//!
//! Values with spaces are double-quoted as the kernel allows: `crxarg="a b"`. The kernel strips
//! no quotes from `/proc/cmdline`, so they are removed here, as the kernel's `next_arg` does.

/// What the command line asks of crx-init.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Config {
    pub run: Option<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub hostname: Option<String>,
    pub template: bool,
}

/// Splits a kernel command line into parameters: whitespace separates them except inside double
/// quotes, and quotes are removed.
pub fn split(cmdline: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

/// Parses the keys crx-init knows; everything else is ignored.
pub fn parse(cmdline: &str) -> Config {
    let mut c = Config::default();
    for p in split(cmdline) {
        let Some((k, v)) = p.split_once('=') else {
            continue;
        };
        match k {
            "crxrun" => c.run = Some(v.to_string()),
            "crxarg" => c.args.push(v.to_string()),
            "crxenv" => {
                if let Some((n, val)) = v.split_once('=') {
                    c.env.push((n.to_string(), val.to_string()));
                }
            }
            "crxhostname" => c.hostname = Some(v.to_string()),
            "crxtemplate" => c.template = v == "1",
            _ => {}
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_keys_in_order() {
        let c = parse(
            "console=ttyS0 reboot=t crxrun=/bin/busybox crxarg=sh crxarg=-c \
             crxarg=\"echo hi; exit 3\" crxenv=A=1=2 crxhostname=lab quiet\n",
        );
        assert_eq!(c.run.as_deref(), Some("/bin/busybox"));
        assert_eq!(c.args, ["sh", "-c", "echo hi; exit 3"]);
        assert_eq!(c.env, [("A".to_string(), "1=2".to_string())]);
        assert_eq!(c.hostname.as_deref(), Some("lab"));
        assert_eq!(parse("console=ttyS0"), Config::default());
        assert_eq!(split("a=\"\" \"b c\"  d"), ["a=", "b c", "d"]);
    }
}
