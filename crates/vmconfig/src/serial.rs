//! The `[serial]` section: where the guest's 8250 console goes.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{invalid, ConfigError};

/// Where the guest's 8250 serial console goes.
///
/// In TOML: `[serial]` with `output = "stdout" | "file" | "off"` and, for a file, `path`
/// (`path` alone means a file).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "SerialToml", into = "SerialToml")]
pub enum SerialOutput {
    /// The VMM's standard output.
    #[default]
    Stdout,
    /// Appended to a file (created if missing).
    File(PathBuf),
    /// Discarded (the device still exists, so the guest does not block).
    Off,
}

/// The `[serial]` table as written.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SerialToml {
    /// `stdout`, `file` or `off`.
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<String>,
    /// Required with `output = "file"`, refused otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<PathBuf>,
}

impl TryFrom<SerialToml> for SerialOutput {
    type Error = ConfigError;

    fn try_from(s: SerialToml) -> Result<Self, ConfigError> {
        match (s.output.as_deref(), s.path) {
            (None | Some("stdout"), None) => Ok(SerialOutput::Stdout),
            (Some("off"), None) => Ok(SerialOutput::Off),
            (Some("file") | None, Some(p)) => Ok(SerialOutput::File(p)),
            (Some("file"), None) => Err(invalid("serial.path", "required with output = \"file\"")),
            (Some(o @ ("stdout" | "off")), Some(_)) => Err(invalid(
                "serial.path",
                format!("overlaps with output = \"{o}\": set output = \"file\" or drop path"),
            )),
            (Some(o), _) => Err(invalid(
                "serial.output",
                format!("`{o}` is not one of stdout, file, off"),
            )),
        }
    }
}

impl From<SerialOutput> for SerialToml {
    fn from(s: SerialOutput) -> Self {
        let (output, path) = match s {
            SerialOutput::Stdout => ("stdout", None),
            SerialOutput::File(p) => ("file", Some(p)),
            SerialOutput::Off => ("off", None),
        };
        SerialToml {
            output: Some(output.to_owned()),
            path,
        }
    }
}

impl SerialOutput {
    /// Parses the command-line form: `stdout`, `off` or `file:PATH`.
    pub fn parse_flag(s: &str) -> Result<Self, ConfigError> {
        match s {
            "stdout" => Ok(SerialOutput::Stdout),
            "off" => Ok(SerialOutput::Off),
            _ => match s.strip_prefix("file:") {
                Some(p) if !p.is_empty() => Ok(SerialOutput::File(PathBuf::from(p))),
                _ => Err(invalid(
                    "serial",
                    format!("`{s}` is not one of stdout, off, file:PATH"),
                )),
            },
        }
    }
}
