//! Parsers of `crx run`'s structured flags, one per file (clap `value_parser`s, unit-tested).
//!
//! - [`publish`]: `-p [IP:]HOST:CONTAINER[/tcp|udp]`.
//! - [`network`]: `--network bridge|none`.
//! - [`add_host`]: `--add-host NAME:IP`.
//! - [`volume`]: `-v HOST:CONTAINER[:ro|rw]`.

pub mod add_host;
pub mod network;
pub mod publish;
pub mod volume;
