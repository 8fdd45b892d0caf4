//! Bounds on what an image may make the store hold: images are untrusted input (a 10 KB
//! sparse tar can claim a 2 GiB file, a 9 MB gzip layer can expand to 4 GB).
//!
//! A store takes its limits from [`StoreOptions`](crate::StoreOptions); [`Store::open`]
//! (crate::Store::open) reads them from the environment ([`ImageLimits::from_env`]).

use std::fmt;

use crate::digest::Digest;
use crate::oci::Manifest;

/// Environment variable: the most one layer may expand to (bytes, or with a K/M/G/T suffix).
pub const ENV_MAX_LAYER_BYTES: &str = "CRX_IMAGE_MAX_LAYER_BYTES";
/// Environment variable: the most all layers of an image may expand to, together.
pub const ENV_MAX_IMAGE_BYTES: &str = "CRX_IMAGE_MAX_IMAGE_BYTES";
/// Environment variable: the largest image configuration blob.
pub const ENV_MAX_CONFIG_BYTES: &str = "CRX_IMAGE_MAX_CONFIG_BYTES";
/// Environment variable: the most layers an image may have.
pub const ENV_MAX_LAYERS: &str = "CRX_IMAGE_MAX_LAYERS";

/// The largest manifest (or index, or `index.json`/`manifest.json` of an archive) read.
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// What one image may expand to. The expanded size of a layer is its uncompressed tar stream
/// plus the holes of its sparse entries (a sparse file counts at its apparent size, though it
/// is stored with its holes); the image's is the sum over its layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    /// Default 8 GiB.
    pub max_layer_bytes: u64,
    /// Default 16 GiB.
    pub max_image_bytes: u64,
    /// Default 8 MiB (Docker Hub's largest configs are a few hundred KiB).
    pub max_config_bytes: u64,
    /// Default 128 (overlayfs-based runtimes stop at 127 or 128).
    pub max_layers: usize,
}

impl Default for ImageLimits {
    fn default() -> Self {
        Self {
            max_layer_bytes: 8 << 30,
            max_image_bytes: 16 << 30,
            max_config_bytes: 8 << 20,
            max_layers: 128,
        }
    }
}

/// An environment variable with a value that is not a size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}={value:?}: expected a positive number of bytes, optionally with a K, M, G or T suffix (binary units)")]
pub struct LimitError {
    pub var: &'static str,
    pub value: String,
}

/// What an image went past.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitExceeded {
    #[error("layer {layer} expands to more than {limit} bytes, the limit per layer (raise {ENV_MAX_LAYER_BYTES} to allow it)")]
    Layer { layer: Digest, limit: u64 },
    #[error("its layers expand to more than {limit} bytes, the limit per image (raise {ENV_MAX_IMAGE_BYTES} to allow it)")]
    Image { limit: u64 },
    #[error("its config blob has {size} bytes, more than the limit of {limit} (raise {ENV_MAX_CONFIG_BYTES} to allow it)")]
    Config { size: u64, limit: u64 },
    #[error("it has {count} layers, more than the limit of {limit} (raise {ENV_MAX_LAYERS} to allow it)")]
    Layers { count: usize, limit: usize },
}

impl ImageLimits {
    /// Checks what a manifest alone tells: the number of layers, the config's size, and the
    /// layers' (compressed) sizes, which their expanded sizes cannot be below.
    pub fn check_manifest(&self, manifest: &Manifest) -> Result<(), LimitExceeded> {
        if manifest.layers.len() > self.max_layers {
            return Err(LimitExceeded::Layers {
                count: manifest.layers.len(),
                limit: self.max_layers,
            });
        }
        self.check_config(manifest.config.size)?;
        let mut total = 0u64;
        for layer in &manifest.layers {
            if layer.size > self.max_layer_bytes {
                return Err(LimitExceeded::Layer {
                    layer: layer.digest.clone(),
                    limit: self.max_layer_bytes,
                });
            }
            total = total.saturating_add(layer.size);
        }
        if total > self.max_image_bytes {
            return Err(LimitExceeded::Image {
                limit: self.max_image_bytes,
            });
        }
        Ok(())
    }

    /// Checks the size of a config blob.
    pub fn check_config(&self, size: u64) -> Result<(), LimitExceeded> {
        if size > self.max_config_bytes {
            return Err(LimitExceeded::Config {
                size,
                limit: self.max_config_bytes,
            });
        }
        Ok(())
    }

    /// The defaults, each overridden by its environment variable when set
    /// ([`ENV_MAX_LAYER_BYTES`], [`ENV_MAX_IMAGE_BYTES`], [`ENV_MAX_CONFIG_BYTES`],
    /// [`ENV_MAX_LAYERS`]).
    pub fn from_env() -> Result<Self, LimitError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// [`from_env`](Self::from_env) over any lookup (tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, LimitError> {
        let mut l = Self::default();
        let size = |var: &'static str, into: &mut u64| -> Result<(), LimitError> {
            if let Some(v) = get(var) {
                *into = parse_size(&v).ok_or(LimitError { var, value: v })?;
            }
            Ok(())
        };
        size(ENV_MAX_LAYER_BYTES, &mut l.max_layer_bytes)?;
        size(ENV_MAX_IMAGE_BYTES, &mut l.max_image_bytes)?;
        size(ENV_MAX_CONFIG_BYTES, &mut l.max_config_bytes)?;
        let mut layers = l.max_layers as u64;
        size(ENV_MAX_LAYERS, &mut layers)?;
        l.max_layers = usize::try_from(layers).unwrap_or(usize::MAX);
        Ok(l)
    }
}

impl fmt::Display for ImageLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "layer {} B, image {} B, config {} B, {} layers",
            self.max_layer_bytes, self.max_image_bytes, self.max_config_bytes, self.max_layers
        )
    }
}

/// `123`, `64K`, `8G`, `1T` (binary units, `KiB`/`KB`/`k` alike); 0 and overflow are `None`.
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (num, unit) = s.split_at(digits);
    let num: u64 = num.parse().ok()?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return None,
    };
    let v = num.checked_mul(1u64 << shift)?;
    (v > 0).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("123"), Some(123));
        assert_eq!(parse_size("64K"), Some(64 << 10));
        assert_eq!(parse_size("8g"), Some(8 << 30));
        assert_eq!(parse_size(" 2 GiB "), Some(2 << 30));
        assert_eq!(parse_size("1T"), Some(1 << 40));
        for bad in [
            "",
            "0",
            "-1",
            "1.5G",
            "12Q",
            "99999999999999999999",
            "20000000T",
        ] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }

    #[test]
    fn environment_overrides_defaults_and_bad_values_are_named() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(
            ImageLimits::from_lookup(env(&[])).unwrap(),
            ImageLimits::default()
        );
        let l = ImageLimits::from_lookup(env(&[
            (ENV_MAX_LAYER_BYTES, "1G"),
            (ENV_MAX_IMAGE_BYTES, "3G"),
            (ENV_MAX_CONFIG_BYTES, "64K"),
            (ENV_MAX_LAYERS, "16"),
        ]))
        .unwrap();
        assert_eq!(
            l,
            ImageLimits {
                max_layer_bytes: 1 << 30,
                max_image_bytes: 3 << 30,
                max_config_bytes: 64 << 10,
                max_layers: 16,
            }
        );
        let e = ImageLimits::from_lookup(env(&[(ENV_MAX_LAYERS, "lots")])).unwrap_err();
        assert_eq!(e.var, ENV_MAX_LAYERS);
        assert!(
            e.to_string().contains("CRX_IMAGE_MAX_LAYERS=\"lots\""),
            "{e}"
        );
    }
}
