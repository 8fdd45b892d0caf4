//! The boot artefacts `crx` finds by itself: `$CRX_CACHE/boot/vmlinux` (the guest kernel) and
//! `$CRX_CACHE/boot/base.cpio` (the base initrd holding a static crx-init). `boot` is a symlink
//! to a directory keyed by its contents, swapped atomically, so a reader never sees half of it.
//! The directory holds `SHA256SUMS`, the files' digests, which the runtime checks before it
//! hands them to crx-vmm (ADR 0008). Where `CRX_BOOT_SIGNING_KEY` names an ed25519 private
//! key (PEM, `openssl genpkey -algorithm ed25519 -out KEY`), the manifest is signed too
//! (`SHA256SUMS.sig`), for runtimes configured with its public key (`CRX_BOOT_PUBKEY` or
//! `/etc/crx/boot.pub`).

use std::fs;
use std::os::unix::fs::symlink;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result};

use crate::kernel::{self, Flavor};
use crate::{cache, cmd, workspace_root};

/// The (static-pie) guest target: a `--target` build keeps `+crt-static` away from the host's
/// proc-macros and build scripts.
const GUEST_TARGET: &str = "x86_64-unknown-linux-gnu";

pub fn dir() -> PathBuf {
    cache::root().join("boot")
}

/// Builds the guest kernel, a static crx-init and the base initrd, and publishes them.
pub fn ensure() -> Result<PathBuf> {
    let kernel = kernel::ensure(Flavor::Guest)?;
    let init = build_static_init()?;
    let initrd_tool = build_initrd_tool()?;

    let root = cache::root();
    let scratch = cache::staging_dir(&root.join("boot-build"))?;
    let base = scratch.join("base.cpio");
    cmd::run(
        Command::new(&initrd_tool)
            .arg("base")
            .arg("--init")
            .arg(&init)
            .arg("-o")
            .arg(&base),
    )?;
    let base_bytes = fs::read(&base)?;
    let signing = signing_key()?;
    let signer = signing
        .as_ref()
        .map(|k| k.verifying_key().to_bytes().to_vec());
    // (`manifest` keys the layout: directories from before the manifest are not reused; the
    // signer's public key, when signing, makes a directory of its own.)
    let key = cache::key([
        kernel.dir.to_string_lossy().as_bytes(),
        &base_bytes,
        b"manifest",
        signer.as_deref().unwrap_or_default(),
    ]);
    let dest = root.join(format!("boot-{key}"));
    if !dest.exists() {
        let staging = cache::staging_dir(&dest)?;
        fs::rename(&base, staging.join("base.cpio"))?;
        symlink(&kernel.vmlinux, staging.join("vmlinux"))?;
        symlink(&kernel.bzimage, staging.join("bzImage"))?;
        write_manifest(&staging).context("writing the boot files' manifest")?;
        if let Some(k) = &signing {
            sign_manifest(&staging, k).context("signing the boot files' manifest")?;
        }
        cache::publish(&staging, &dest)?;
    }
    fs::remove_dir_all(&scratch)?;
    let link = dir();
    let tmp = root.join(format!("boot.{}.tmp", std::process::id()));
    let _ = fs::remove_file(&tmp);
    symlink(dest.file_name().context("boot dir name")?, &tmp)?;
    fs::rename(&tmp, &link).with_context(|| format!("publishing {}", link.display()))?;
    Ok(link)
}

/// The variable naming the private key that signs the manifest (PEM PKCS#8, ed25519).
const SIGNING_KEY_ENV: &str = "CRX_BOOT_SIGNING_KEY";

/// The signing key `$CRX_BOOT_SIGNING_KEY` names, if set.
fn signing_key() -> Result<Option<ed25519_dalek::SigningKey>> {
    use ed25519_dalek::pkcs8::DecodePrivateKey;
    let Some(path) = std::env::var_os(SIGNING_KEY_ENV).filter(|p| !p.is_empty()) else {
        return Ok(None);
    };
    let path = PathBuf::from(path);
    let pem = fs::read_to_string(&path)
        .with_context(|| format!("{SIGNING_KEY_ENV}: reading {}", path.display()))?;
    let key = ed25519_dalek::SigningKey::from_pkcs8_pem(pem.trim()).map_err(|e| {
        anyhow::anyhow!(
            "{SIGNING_KEY_ENV}: {} is not an ed25519 PEM private key: {e}",
            path.display()
        )
    })?;
    Ok(Some(key))
}

/// Writes `dir/SHA256SUMS.sig`: the 64-byte ed25519 signature of `dir/SHA256SUMS` (what
/// `openssl pkeyutl -sign -rawin` writes; the runtime checks it, `crx_runtime::boot_files`).
fn sign_manifest(dir: &std::path::Path, key: &ed25519_dalek::SigningKey) -> Result<()> {
    use ed25519_dalek::Signer;
    let manifest = fs::read(dir.join("SHA256SUMS"))?;
    let tmp = dir.join(format!(".SHA256SUMS.sig.{}.tmp", std::process::id()));
    fs::write(&tmp, key.sign(&manifest).to_bytes())?;
    fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    fs::rename(&tmp, dir.join("SHA256SUMS.sig"))?;
    Ok(())
}

/// The boot files a boot directory's manifest covers (`crx_runtime::boot_files::BOOT_NAMES`).
const BOOT_NAMES: [&str; 3] = ["vmlinux", "bzImage", "base.cpio"];

/// Writes `dir/SHA256SUMS` in `sha256sum`'s format (`HEX  NAME`), which the runtime verifies
/// the boot files against (`crx_runtime::boot_files::verify`); symbolic links are followed.
fn write_manifest(dir: &std::path::Path) -> Result<()> {
    use sha2::{Digest, Sha256};
    let mut text = String::new();
    for name in BOOT_NAMES {
        let path = dir.join(name);
        let mut file = fs::File::open(&path).with_context(|| format!("{}", path.display()))?;
        let mut h = Sha256::new();
        std::io::copy(&mut file, &mut h).with_context(|| format!("{}", path.display()))?;
        let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        text.push_str(&format!("{hex}  {name}\n"));
    }
    // Readable by all (the boot directory is shared), written whole or not at all.
    let tmp = dir.join(format!(".SHA256SUMS.{}.tmp", std::process::id()));
    fs::write(&tmp, text)?;
    fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    fs::rename(&tmp, dir.join("SHA256SUMS"))?;
    Ok(())
}

fn build_static_init() -> Result<PathBuf> {
    cmd::run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(workspace_root())
            .args([
                "build",
                "--quiet",
                "--release",
                "-p",
                "crx-init",
                "--target",
                GUEST_TARGET,
            ])
            .env("RUSTFLAGS", "-C target-feature=+crt-static"),
    )?;
    Ok(static_init())
}

/// Where `cargo xtask boot` leaves the static crx-init.
pub fn static_init() -> PathBuf {
    workspace_root().join(format!("target/{GUEST_TARGET}/release/crx-init"))
}

fn build_initrd_tool() -> Result<PathBuf> {
    cmd::run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(workspace_root())
            .args(["build", "--quiet", "-p", "crx-initrd"]),
    )?;
    Ok(workspace_root().join("target/debug/crx-initrd"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The manifest is what `sha256sum` writes for the same files (the format the runtime
    /// verifies against), links followed.
    #[test]
    fn the_manifest_is_sha256sums_format() {
        let d = std::env::temp_dir().join(format!("xtask-manifest-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir(&d).unwrap();
        fs::write(d.join("vmlinux"), b"kernel").unwrap();
        fs::write(d.join("real-bz"), b"bz").unwrap();
        symlink("real-bz", d.join("bzImage")).unwrap();
        fs::write(d.join("base.cpio"), b"").unwrap();
        write_manifest(&d).unwrap();
        let ours = fs::read_to_string(d.join("SHA256SUMS")).unwrap();
        let theirs = Command::new("sha256sum")
            .args(BOOT_NAMES)
            .current_dir(&d)
            .output()
            .unwrap();
        assert!(theirs.status.success());
        assert_eq!(ours, String::from_utf8(theirs.stdout).unwrap());
        let mode = fs::metadata(d.join("SHA256SUMS")).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o644
        );
        fs::remove_dir_all(&d).unwrap();
    }

    /// The signature is over the manifest's bytes, by the key, as openssl checks it.
    #[test]
    fn the_signature_verifies_with_openssl() {
        use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
        use ed25519_dalek::pkcs8::EncodePublicKey;
        let d = std::env::temp_dir().join(format!("xtask-sign-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir(&d).unwrap();
        fs::write(d.join("SHA256SUMS"), b"0000  vmlinux\n").unwrap();
        let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
        sign_manifest(&d, &key).unwrap();
        let pem = key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        fs::write(d.join("k.pub"), pem).unwrap();
        let ok = Command::new("openssl")
            .args(["pkeyutl", "-verify", "-rawin", "-pubin", "-inkey", "k.pub"])
            .args(["-in", "SHA256SUMS", "-sigfile", "SHA256SUMS.sig"])
            .current_dir(&d)
            .status()
            .unwrap();
        assert!(ok.success());
        fs::remove_dir_all(&d).unwrap();
    }
}
