//! `crx load`: import an image: `--busybox` (offline, from Debian's busybox-static), or FILE
//! (an OCI layout directory or archive, or a `docker save` archive).

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use crx_image::layout::LayoutError;
use crx_image::StoreError;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Build the busybox image from this static binary (default /bin/busybox).
    #[arg(long, num_args = 0..=1, default_missing_value = "/bin/busybox", conflicts_with = "file")]
    busybox: Option<PathBuf>,
    /// The name to give the image (busybox: default busybox:latest).
    #[arg(long)]
    tag: Option<String>,
    /// An OCI layout (directory, .tar, .tar.gz) or a docker archive.
    file: Option<PathBuf>,
}

pub fn run(root: &Path, a: Args) -> Result<i32> {
    let store = crx_runtime::instance::open_store(root)?;
    let images = match (a.busybox, a.file) {
        (Some(bin), _) => {
            let tag = a.tag.as_deref().unwrap_or("busybox:latest");
            vec![store.import_busybox(&bin, tag)?]
        }
        (None, Some(file)) => match &a.tag {
            Some(tag) => vec![store.import_oci_layout_as(&file, tag)?],
            None => match store.import_oci_layout(&file) {
                Ok(i) => i,
                Err(_) if !file.exists() => bail!("{}: no such file or directory", file.display()),
                // An OCI layout past a limit is not worth a second try as a docker archive.
                Err(oci) if is_limit(&oci) => return Err(oci.into()),
                Err(oci) => store.import_docker_archive(&file).map_err(|docker| {
                    anyhow::anyhow!(
                        "{}: neither an OCI layout ({}) nor a docker archive ({})",
                        file.display(),
                        crx_runtime::chain(&oci),
                        crx_runtime::chain(&docker)
                    )
                })?,
            },
        },
        (None, None) => bail!("give a file to load, or --busybox (apt-get install busybox-static)"),
    };
    for i in images {
        let name = i.reference.map(|r| r.familiar()).unwrap_or_default();
        println!("loaded {name} {}", i.manifest_digest);
    }
    Ok(0)
}

/// Whether an import failed on one of the store's limits (the archive was read as what it is).
fn is_limit(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Limit { .. }
            | StoreError::Layout(LayoutError::Limit { .. } | LayoutError::TooLarge { .. })
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_errors_are_told_apart() {
        let exceeded = crx_image::limits::LimitExceeded::Layers {
            count: 300,
            limit: 128,
        };
        let manifest = crx_image::Digest::of(b"m");
        assert!(is_limit(&StoreError::Limit {
            manifest: manifest.clone(),
            exceeded: exceeded.clone(),
        }));
        assert!(is_limit(&StoreError::Layout(LayoutError::Limit {
            path: "x".into(),
            manifest,
            exceeded,
        })));
        assert!(!is_limit(&StoreError::Layout(LayoutError::NotALayout {
            path: "x".into(),
            why: "no oci-layout file",
        })));
    }
}
