//! The optional signature over a boot manifest (ADR 0008): an ed25519 signature of
//! `SHA256SUMS`'s bytes in `SHA256SUMS.sig` (the 64 raw bytes `openssl pkeyutl -sign -rawin`
//! writes), checked against a configured public key (a PEM `PUBLIC KEY`, as `openssl pkey
//! -pubout` writes). Where a key is configured ([`configured_key`]) an unsigned manifest or a
//! bad signature refuses the boot files; where none is, the manifest's owner check stands alone.
//!
//! Making a key pair and signing by hand (`cargo xtask boot` signs when
//! `CRX_BOOT_SIGNING_KEY` names the private key):
//!
//! ```text
//! openssl genpkey -algorithm ed25519 -out boot-signing.pem   # keep it private (0600)
//! openssl pkey -in boot-signing.pem -pubout -out /etc/crx/boot.pub
//! openssl pkeyutl -sign -rawin -inkey boot-signing.pem -in SHA256SUMS -out SHA256SUMS.sig
//! ```

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use super::{io_err, trusted, BootFileError, MANIFEST};

/// The signature's name in a boot directory, beside the manifest.
pub const SIGNATURE: &str = "SHA256SUMS.sig";

/// The variable naming the trusted public key (a PEM file).
pub const PUBKEY_ENV: &str = "CRX_BOOT_PUBKEY";

/// The trusted public key used where [`PUBKEY_ENV`] is unset, if it exists.
pub const DEFAULT_PUBKEY: &str = "/etc/crx/boot.pub";

/// The largest key or signature file read.
const KEY_MAX: u64 = 4096;

/// The configured public key: `$CRX_BOOT_PUBKEY` when set (and not empty; a missing file then
/// refuses the boot files), else [`DEFAULT_PUBKEY`] where it exists, else none.
pub fn configured_key() -> Option<PathBuf> {
    match std::env::var_os(PUBKEY_ENV) {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => Some(PathBuf::from(DEFAULT_PUBKEY)).filter(|p| p.exists()),
    }
}

/// Reads at most [`KEY_MAX`] bytes of `path`.
fn read_small(path: &Path) -> Result<Vec<u8>, io::Error> {
    let mut out = Vec::new();
    File::open(path)?.take(KEY_MAX).read_to_end(&mut out)?;
    Ok(out)
}

/// The trusted public key at `path` (checked like a boot file: ours or root's, not writable by
/// everyone).
pub fn load_public_key(path: &Path) -> Result<VerifyingKey, BootFileError> {
    trusted(path, &std::fs::metadata(path).map_err(io_err(path))?)?;
    let text = read_small(path).map_err(io_err(path))?;
    let bad = |reason: String| BootFileError::BadKey {
        path: path.to_owned(),
        reason,
    };
    let text = std::str::from_utf8(&text).map_err(|e| bad(e.to_string()))?;
    VerifyingKey::from_public_key_pem(text.trim()).map_err(|e| bad(e.to_string()))
}

/// The private key at `path` (a PEM `PRIVATE KEY`, as `openssl genpkey -algorithm ed25519`
/// writes).
pub fn load_signing_key(path: &Path) -> Result<SigningKey, BootFileError> {
    let text = read_small(path).map_err(io_err(path))?;
    let bad = |reason: String| BootFileError::BadKey {
        path: path.to_owned(),
        reason,
    };
    let text = std::str::from_utf8(&text).map_err(|e| bad(e.to_string()))?;
    SigningKey::from_pkcs8_pem(text.trim()).map_err(|e| bad(e.to_string()))
}

/// Signs `dir/SHA256SUMS` with `key` into `dir/SHA256SUMS.sig` (readable by all, atomically).
pub fn sign_manifest(dir: &Path, key: &SigningKey) -> Result<PathBuf, BootFileError> {
    let manifest = dir.join(MANIFEST);
    let bytes = std::fs::read(&manifest).map_err(io_err(&manifest))?;
    let dest = dir.join(SIGNATURE);
    let tmp = dir.join(format!(".{SIGNATURE}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, key.sign(&bytes).to_bytes()).map_err(io_err(&tmp))?;
    crate::paths::set_mode(&tmp, 0o644).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, &dest).map_err(io_err(&dest))?;
    Ok(dest)
}

/// Checks that `manifest` (the bytes read from `manifest_path`, the very bytes then parsed) is
/// signed by the public key at `key_path`, the signature being `SHA256SUMS.sig` beside it.
pub(super) fn check(
    manifest_path: &Path,
    manifest: &[u8],
    key_path: &Path,
) -> Result<(), BootFileError> {
    let key = load_public_key(key_path)?;
    let sig_path = manifest_path.with_file_name(SIGNATURE);
    let bytes = match read_small(&sig_path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(BootFileError::Unsigned {
                manifest: manifest_path.to_owned(),
                key: key_path.to_owned(),
            })
        }
        Err(e) => return Err(io_err(&sig_path)(e)),
    };
    let bad = || BootFileError::BadSignature {
        signature: sig_path.clone(),
        manifest: manifest_path.to_owned(),
        key: key_path.to_owned(),
    };
    let sig = Signature::from_slice(&bytes).map_err(|_| bad())?;
    key.verify_strict(manifest, &sig).map_err(|_| bad())
}

#[cfg(test)]
mod tests;
