use std::process::Command;

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey};

use super::super::tests::boot_dir;
use super::super::{verify_with_key, BootFileError, MANIFEST};
use super::*;

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

/// Writes `key`'s public half as PEM at `path`.
fn write_public(path: &Path, key: &SigningKey) {
    let pem = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    std::fs::write(path, pem).unwrap();
}

/// A boot directory in `d/boot` and the public key of `key(1)` at `d/trusted.pub`.
fn setup(d: &Path) -> (crate::paths::BootFiles, PathBuf) {
    let boot = d.join("boot");
    std::fs::create_dir(&boot).unwrap();
    let files = boot_dir(&boot);
    let pubkey = d.join("trusted.pub");
    write_public(&pubkey, &key(1));
    (files, pubkey)
}

fn one_line(e: &BootFileError) -> String {
    let msg = e.to_string();
    assert!(!msg.contains('\n'), "{msg}");
    msg
}

#[test]
fn a_manifest_signed_by_the_configured_key_verifies() {
    let d = tempfile::tempdir().unwrap();
    let (files, pubkey) = setup(d.path());
    let sig = sign_manifest(files.kernel.parent().unwrap(), &key(1)).unwrap();
    assert_eq!(std::fs::read(&sig).unwrap().len(), 64);
    let v = verify_with_key(&files, None, Some(&pubkey)).unwrap();
    assert_eq!(v.initrd.path, files.initrd);
}

#[test]
fn an_unsigned_manifest_with_a_configured_key_is_refused_in_one_line() {
    let d = tempfile::tempdir().unwrap();
    let (files, pubkey) = setup(d.path());
    // Without a key the same directory boots (the signature is optional).
    verify_with_key(&files, None, None).unwrap();
    let e = verify_with_key(&files, None, Some(&pubkey)).unwrap_err();
    assert!(matches!(e, BootFileError::Unsigned { .. }), "{e:?}");
    let msg = one_line(&e);
    assert!(
        msg.contains(MANIFEST) && msg.contains("not signed"),
        "{msg}"
    );
    assert!(msg.contains(&pubkey.display().to_string()), "{msg}");
}

#[test]
fn a_signature_by_another_key_is_refused_naming_the_file() {
    let d = tempfile::tempdir().unwrap();
    let (files, pubkey) = setup(d.path());
    let sig = sign_manifest(files.kernel.parent().unwrap(), &key(2)).unwrap();
    let e = verify_with_key(&files, None, Some(&pubkey)).unwrap_err();
    assert!(matches!(e, BootFileError::BadSignature { .. }), "{e:?}");
    assert!(one_line(&e).contains(&sig.display().to_string()), "{e}");
}

#[test]
fn a_manifest_rewritten_after_signing_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let (files, pubkey) = setup(d.path());
    let dir = files.kernel.parent().unwrap();
    sign_manifest(dir, &key(1)).unwrap();
    // The attacker swaps the initrd and writes a matching manifest, but cannot sign it.
    std::fs::write(&files.initrd, b"evil initrd").unwrap();
    crate::boot_files::write_manifest(dir).unwrap();
    let e = verify_with_key(&files, None, Some(&pubkey)).unwrap_err();
    assert!(matches!(e, BootFileError::BadSignature { .. }), "{e:?}");
}

#[test]
fn a_garbled_signature_or_key_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let (files, pubkey) = setup(d.path());
    let dir = files.kernel.parent().unwrap();
    std::fs::write(dir.join(SIGNATURE), b"short").unwrap();
    let e = verify_with_key(&files, None, Some(&pubkey)).unwrap_err();
    assert!(matches!(e, BootFileError::BadSignature { .. }), "{e:?}");

    sign_manifest(dir, &key(1)).unwrap();
    std::fs::write(&pubkey, b"not a key\n").unwrap();
    let e = verify_with_key(&files, None, Some(&pubkey)).unwrap_err();
    assert!(matches!(e, BootFileError::BadKey { .. }), "{e:?}");
    one_line(&e);
    // A configured key that does not exist refuses too: never a silent downgrade.
    let e = verify_with_key(&files, None, Some(&d.path().join("gone.pub"))).unwrap_err();
    assert!(matches!(e, BootFileError::Io { .. }), "{e:?}");
}

#[test]
fn a_world_writable_key_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let (files, pubkey) = setup(d.path());
    sign_manifest(files.kernel.parent().unwrap(), &key(1)).unwrap();
    crate::paths::set_mode(&pubkey, 0o666).unwrap();
    let e = verify_with_key(&files, None, Some(&pubkey)).unwrap_err();
    assert!(matches!(e, BootFileError::WorldWritable { .. }), "{e:?}");
}

#[test]
fn a_private_key_round_trips_through_pem() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("signing.pem");
    std::fs::write(
        &path,
        key(3).to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes(),
    )
    .unwrap();
    assert_eq!(
        load_signing_key(&path).unwrap().to_bytes(),
        key(3).to_bytes()
    );
    std::fs::write(
        &path,
        b"-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    assert!(matches!(
        load_signing_key(&path),
        Err(BootFileError::BadKey { .. })
    ));
}

/// The documented openssl commands (module docs, ADR 0008) make keys and signatures that we
/// accept, and openssl accepts ours.
#[test]
fn openssl_keys_and_signatures_interoperate() {
    let openssl = ["/usr/bin/openssl", "/bin/openssl"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .expect("openssl (Debian package openssl) for the documented key commands");
    let d = tempfile::tempdir().unwrap();
    let boot = d.path().join("boot");
    std::fs::create_dir(&boot).unwrap();
    let files = boot_dir(&boot);
    let run = |args: &[&str]| {
        let out = Command::new(openssl)
            .args(args)
            .current_dir(d.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    run(&["genpkey", "-algorithm", "ed25519", "-out", "signing.pem"]);
    run(&[
        "pkey",
        "-in",
        "signing.pem",
        "-pubout",
        "-out",
        "trusted.pub",
    ]);
    let pubkey = d.path().join("trusted.pub");
    // openssl's signature, our check.
    run(&[
        "pkeyutl",
        "-sign",
        "-rawin",
        "-inkey",
        "signing.pem",
        "-in",
        "boot/SHA256SUMS",
        "-out",
        "boot/SHA256SUMS.sig",
    ]);
    verify_with_key(&files, None, Some(&pubkey)).unwrap();
    // Our signature with openssl's key, openssl's check.
    std::fs::remove_file(boot.join(SIGNATURE)).unwrap();
    let signing = load_signing_key(&d.path().join("signing.pem")).unwrap();
    sign_manifest(&boot, &signing).unwrap();
    run(&[
        "pkeyutl",
        "-verify",
        "-rawin",
        "-pubin",
        "-inkey",
        "trusted.pub",
        "-in",
        "boot/SHA256SUMS",
        "-sigfile",
        "boot/SHA256SUMS.sig",
    ]);
    verify_with_key(&files, None, Some(&pubkey)).unwrap();
}
