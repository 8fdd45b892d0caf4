//! The `[[net]]` section: one virtio-net device per entry, backed by a tap the VMM attaches to
//! by name or receives as an inherited file descriptor.

use serde::{Deserialize, Serialize};

use crate::error::{invalid, ConfigError};

/// Longest interface name Linux accepts (IFNAMSIZ - 1).
pub const MAX_TAP_NAME_LEN: usize = 15;
/// Smallest MTU offered to a guest (the IPv4 minimum).
pub const MIN_MTU: u16 = 68;

/// One virtio-net device. Exactly one of `tap` and `tap_fd` says where its frames go.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// The tap to attach to by name (created if missing, which needs CAP_NET_ADMIN; a tap the
    /// VMM creates disappears with it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
    /// An open tap the VMM inherits (opened with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, e.g. in
    /// the container's network namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap_fd: Option<i32>,
    /// The guest's MAC address (`02:00:00:00:00:01`); a random local one if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The MTU offered to the guest; the guest's default (1500) if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
}

/// Parses `aa:bb:cc:dd:ee:ff` into bytes (`None`: not six colon-separated hex bytes): the
/// one parser, the agent protocol's, so that a MAC the VM config takes is one the guest's
/// network description takes too.
pub use crx_proto::network::parse_mac;

impl NetConfig {
    /// Parses the command-line form: `tap=NAME` or `fd=N`, then optional `,mac=MAC` and
    /// `,mtu=N`.
    pub fn parse_flag(s: &str) -> Result<Self, ConfigError> {
        let mut c = NetConfig::default();
        for part in s.split(',') {
            let bad = || {
                invalid(
                    "net",
                    format!("`{part}` in `{s}` is not KEY=VALUE with KEY tap, fd, mac or mtu"),
                )
            };
            let (k, v) = part.split_once('=').ok_or_else(bad)?;
            match k {
                "tap" => c.tap = Some(v.to_owned()),
                "fd" => c.tap_fd = Some(v.parse().map_err(|_| bad())?),
                "mac" => c.mac = Some(v.to_owned()),
                "mtu" => c.mtu = Some(v.parse().map_err(|_| bad())?),
                _ => return Err(bad()),
            }
        }
        Ok(c)
    }

    /// The MAC address as bytes, if given and valid.
    pub fn mac_bytes(&self) -> Option<[u8; 6]> {
        self.mac.as_deref().and_then(parse_mac)
    }

    /// Checks entry `i` alone: one backend, a valid name, MAC and MTU.
    pub fn validate(&self, i: usize) -> Result<(), ConfigError> {
        match (&self.tap, self.tap_fd) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(invalid(
                    format!("net[{i}]"),
                    "give exactly one of `tap` (a name) and `tap_fd` (an inherited fd)",
                ))
            }
            (Some(name), None) => {
                let ok = !name.is_empty()
                    && name.len() <= MAX_TAP_NAME_LEN
                    && !name.contains(['/', '\0', ' ', ':']);
                if !ok {
                    return Err(invalid(
                        format!("net[{i}].tap"),
                        format!("{name:?} must be 1 to {MAX_TAP_NAME_LEN} bytes without '/', ':', spaces or NUL"),
                    ));
                }
            }
            (None, Some(fd)) if fd < 3 => {
                return Err(invalid(
                    format!("net[{i}].tap_fd"),
                    format!(
                        "{fd} is stdin, stdout, stderr or invalid: pass the tap as fd 3 or above"
                    ),
                ))
            }
            (None, Some(_)) => {}
        }
        if let Some(mac) = &self.mac {
            match parse_mac(mac) {
                None => {
                    return Err(invalid(
                        format!("net[{i}].mac"),
                        format!("`{mac}` is not six hex bytes separated by colons"),
                    ))
                }
                Some(b) if b[0] & 1 == 1 => {
                    return Err(invalid(
                        format!("net[{i}].mac"),
                        format!("`{mac}` is a multicast address (the first byte must be even)"),
                    ))
                }
                Some(_) => {}
            }
        }
        if let Some(mtu) = self.mtu {
            if mtu < MIN_MTU {
                return Err(invalid(
                    format!("net[{i}].mtu"),
                    format!("{mtu} is below {MIN_MTU}"),
                ));
            }
        }
        Ok(())
    }
}

/// Across entries: each tap, fd and MAC is used once.
pub(crate) fn validate_distinct(nets: &[NetConfig]) -> Result<(), ConfigError> {
    /// A key an entry must not share, by the field it comes from.
    fn keys(n: &NetConfig) -> [(&'static str, Option<String>); 3] {
        [
            ("tap", n.tap.clone()),
            ("tap_fd", n.tap_fd.map(|fd| fd.to_string())),
            ("mac", n.mac_bytes().map(|b| format!("{b:?}"))),
        ]
    }
    for (i, n) in nets.iter().enumerate() {
        for (what, key) in keys(n) {
            let Some(key) = key else { continue };
            let same = |e: &NetConfig| {
                keys(e)
                    .iter()
                    .any(|(w, k)| *w == what && k.as_ref() == Some(&key))
            };
            if let Some(j) = nets[..i].iter().position(same) {
                return Err(invalid(
                    format!("net[{i}].{what}"),
                    format!("is also net[{j}].{what}: one device per tap and per MAC"),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(e: ConfigError) -> String {
        e.field().unwrap().to_owned()
    }

    #[test]
    fn flag_forms() {
        let c = NetConfig::parse_flag("tap=tap0,mac=02:00:00:00:00:01,mtu=9000").unwrap();
        assert_eq!(c.tap.as_deref(), Some("tap0"));
        assert_eq!(c.mac_bytes(), Some([2, 0, 0, 0, 0, 1]));
        assert_eq!(c.mtu, Some(9000));
        c.validate(0).unwrap();
        let c = NetConfig::parse_flag("fd=5").unwrap();
        assert_eq!(c.tap_fd, Some(5));
        c.validate(0).unwrap();
        for bad in ["tap", "fd=x", "mtu=99999", "speed=10", ""] {
            assert!(NetConfig::parse_flag(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn entries_are_checked() {
        let ok = NetConfig::parse_flag("tap=t0").unwrap();
        let cases = [
            ("fd=4,tap=t0", "net[0]"),
            ("mac=02:00:00:00:00:01", "net[0]"),
            ("tap=a/b", "net[0].tap"),
            ("tap=sixteen-chars-xx", "net[0].tap"),
            ("fd=2", "net[0].tap_fd"),
            ("tap=t0,mac=01:00:5e:00:00:01", "net[0].mac"),
            ("tap=t0,mac=02:00:00:00:00", "net[0].mac"),
            ("tap=t0,mtu=67", "net[0].mtu"),
        ];
        for (flag, want) in cases {
            let c = NetConfig::parse_flag(flag).unwrap();
            let e = c.validate(0).expect_err(flag);
            assert_eq!(field(e), want, "{flag}");
        }
        ok.validate(0).unwrap();
    }

    #[test]
    fn taps_fds_and_macs_are_used_once() {
        let p = |s| NetConfig::parse_flag(s).unwrap();
        assert!(validate_distinct(&[p("tap=a"), p("tap=b"), p("fd=3"), p("fd=4")]).is_ok());
        let e = validate_distinct(&[p("tap=a"), p("tap=b"), p("tap=a")]).unwrap_err();
        assert_eq!(field(e), "net[2].tap");
        let e = validate_distinct(&[p("fd=3"), p("fd=3")]).unwrap_err();
        assert_eq!(field(e), "net[1].tap_fd");
        let e = validate_distinct(&[
            p("tap=a,mac=02:00:00:00:00:01"),
            p("tap=b,mac=02:00:00:00:00:01"),
        ])
        .unwrap_err();
        assert_eq!(field(e), "net[1].mac");
    }
}
