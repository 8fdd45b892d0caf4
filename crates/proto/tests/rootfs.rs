//! Root filesystem sources on the wire: virtio-fs tags, the layers without overlay, and the
//! OCI mount entry for extra virtio-fs shares. Earlier encodings are unchanged.

use crx_proto::*;
use serde_json::json;

fn create(rootfs: Rootfs) -> serde_json::Value {
    let r = Request::CreateContainer {
        id: "c".into(),
        spec: json!({}),
        rootfs,
    };
    let v: serde_json::Value = serde_json::from_slice(&encode(&r).unwrap()).unwrap();
    assert_eq!(decode::<Request>(&encode(&r).unwrap()).unwrap(), r);
    v["rootfs"].clone()
}

#[test]
fn virtiofs_rootfs_encodings() {
    let r = Rootfs::virtiofs("root0", WritableLayer::Direct);
    assert!(r.is_virtiofs());
    assert_eq!(
        create(r),
        json!({"device": "root0", "fs_type": "virtiofs", "writable": {"kind": "direct"}})
    );
    assert_eq!(
        create(Rootfs::virtiofs("r", WritableLayer::ReadOnly))["writable"],
        json!({"kind": "read_only"})
    );
    let disk = Rootfs {
        device: "/dev/vda".into(),
        fs_type: "erofs".into(),
        writable: WritableLayer::Tmpfs { size_bytes: None },
    };
    assert!(!disk.is_virtiofs());
    // Version 1's encoding, unchanged.
    assert_eq!(
        create(disk),
        json!({"device": "/dev/vda", "fs_type": "erofs",
               "writable": {"kind": "tmpfs", "size_bytes": null}})
    );
}

#[test]
fn unknown_writable_kind_is_refused() {
    let text = br#"{"op":"create_container","id":"c","spec":{},
        "rootfs":{"device":"t","fs_type":"virtiofs","writable":{"kind":"sideways"}}}"#;
    assert!(decode::<Request>(text).is_err());
}

#[test]
fn virtiofs_mount_entry_for_the_spec() {
    assert_eq!(
        virtiofs_mount("vol1", "/data", true),
        json!({"destination": "/data", "type": "virtiofs", "source": "vol1",
               "options": ["ro", "nosuid", "nodev"]})
    );
    assert_eq!(
        virtiofs_mount("vol2", "/rw", false)["options"][0],
        json!("rw")
    );
}

#[test]
fn shared_file_mount_entries() {
    let m = share_file_mount("files", "f0", "/etc/hosts", true);
    assert_eq!(
        m,
        json!({"destination": "/etc/hosts", "type": "bind",
               "source": "/run/crx/shares/files/f0",
               "options": ["rbind", "ro", "nosuid", "nodev"]})
    );
    assert_eq!(
        shared_file_tag(m["source"].as_str().unwrap()),
        Some("files")
    );
    // A source staged under its own name: `binds/d0/vol`.
    assert_eq!(
        shared_file_tag("/run/crx/shares/binds/d0/vol"),
        Some("binds")
    );
    for bad in [
        "/run/crx/shares/files",
        "/run/crx/shares/../x/f",
        "/run/crx/shares/files/a/../b",
        "/run/crx/shares/files/a//b",
        "/run/crx/sharesx/t/f",
        "/etc/hosts",
        "/run/crx/shares/t/..",
    ] {
        assert_eq!(shared_file_tag(bad), None, "{bad}");
    }
}
