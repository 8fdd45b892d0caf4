//! Why a VM configuration was refused.

use std::path::PathBuf;

/// A configuration error; `field` names the offending key as written in the TOML (with an
/// index for list entries, e.g. `disks[1].path`).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}")]
    ReadFile {
        /// The path of the config file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The TOML did not parse, lacked a required key or had unknown keys.
    #[error("cannot parse config file {path}")]
    Parse {
        /// The path of the config file.
        path: PathBuf,
        /// The parse error (names the key and line).
        #[source]
        source: Box<toml::de::Error>,
    },
    /// The configuration has no TOML form (a path that is not UTF-8).
    #[error("cannot write the VM config as TOML")]
    Serialize(#[source] Box<toml::ser::Error>),
    /// The file could not be written.
    #[error("cannot write config file {path}")]
    WriteFile {
        /// The path of the config file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A required key was not given.
    #[error("config field `{field}` is required")]
    Missing {
        /// The config key.
        field: &'static str,
    },
    /// A value is out of range or inconsistent with another.
    #[error("config field `{field}`: {reason}")]
    Invalid {
        /// The config key.
        field: String,
        /// What is wrong and what to do.
        reason: String,
    },
}

impl ConfigError {
    /// The config key an `Invalid` or `Missing` error names.
    pub fn field(&self) -> Option<&str> {
        match self {
            ConfigError::Missing { field } => Some(field),
            ConfigError::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// A `ConfigError::Invalid` for `field`.
pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}
