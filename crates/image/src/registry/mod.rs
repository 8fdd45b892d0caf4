//! Pulling images from OCI distribution registries.

pub mod auth;
pub mod client;
pub mod progress;

pub use auth::Credentials;
pub use client::{PullOptions, RegistryClient, RegistryError};
pub use progress::ProgressMode;
