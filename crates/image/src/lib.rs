//! CRX's OCI image store (a leaf crate): a content-addressed, verified blob store with a
//! reference index; imports of OCI image layouts and `docker save` archives; pulls from OCI
//! distribution registries; layers unpacked (whiteouts, owners, modes, links) into one
//! read-only disk image (erofs or ext4) per image, cached by manifest digest.
//!
//! ```no_run
//! use crx_image::{PullOptions, Store};
//! let store = Store::open("/var/lib/crx/images")?;
//! let image = store.pull("busybox:latest", &PullOptions::default())?;
//! println!("{} {:?} {}", image.manifest_digest, image.config.cmd, image.disk_image.display());
//! # Ok::<(), crx_image::StoreError>(())
//! ```
#![forbid(unsafe_code)]

pub mod blobs;
pub mod busybox;
pub mod confine;
pub mod digest;
pub mod disk;
pub mod docker_archive;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod index;
pub mod layout;
pub mod limits;
mod lock;
pub mod oci;
pub mod reference;
pub mod registry;
pub mod store;
pub mod text;
pub mod unpack;

pub use busybox::{build_busybox_layout, BusyboxError};
pub use digest::Digest;
pub use disk::{DiskError, DiskFormat};
pub use limits::ImageLimits;
pub use reference::{Reference, ReferenceError};
pub use registry::{Credentials, ProgressMode, PullOptions, RegistryError};
pub use store::{GcReport, Image, ImageConfig, ImageSummary, Store, StoreError, StoreOptions};
