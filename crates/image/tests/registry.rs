//! Pulls from a real registry on loopback (Debian's docker-registry, images pushed with skopeo)
//! and from scripted stubs: bearer auth, 500s, a hanging server, corrupt and truncated blobs.

mod common;

use std::fs;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{
    assert_nothing_complete, layout_reply, sample_layout, tmp_entries, Registry, Reply, Stub,
};
use crx_image::blobs::BlobError;
use crx_image::layout::{LayerBlob, LayoutWriter};
use crx_image::registry::RegistryError;
use crx_image::{Digest, ProgressMode, PullOptions, Store, StoreError};

fn opts() -> PullOptions {
    PullOptions {
        timeout: Duration::from_secs(5),
        retries: 2,
        backoff: Duration::from_millis(10),
        progress: ProgressMode::Never,
        ..PullOptions::default()
    }
}

fn pull_error(e: StoreError) -> RegistryError {
    match e {
        StoreError::Pull { source, .. } => source,
        other => panic!("expected a pull error, got {other:?}"),
    }
}

#[test]
fn pull_by_tag_and_digest_from_loopback_registry() {
    let reg = Registry::start();
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    sample_layout(&layout, "v1", "pulled\n");
    // skopeo compresses the plain-tar layer on push, so the registry's manifest differs
    // from the layout's; the layers' diff_ids (checked on unpack) stay the same.
    reg.push(&layout, "v1", "team/app:v1", false);

    let store = Store::open(t.path().join("store")).unwrap();
    let name = format!("{}/team/app:v1", reg.host());
    let img = store.pull(&name, &opts()).unwrap();
    let digest = img.manifest_digest.clone();
    assert_eq!(img.config.cmd, vec!["/bin/tool", "arg"]);
    let out = t.path().join("x");
    common::extract_disk(img.disk_format, &img.disk_image, &out);
    assert_eq!(
        fs::read_to_string(out.join("etc/marker")).unwrap(),
        "pulled\n"
    );
    assert!(!out.join("etc/old").exists());

    let by_digest = format!("{}/team/app@{digest}", reg.host());
    let img2 = store.pull(&by_digest, &opts()).unwrap();
    assert_eq!(img2.disk_image, img.disk_image, "one disk per manifest");
    assert_eq!(store.resolve(&by_digest).unwrap().manifest_digest, digest);
    assert_eq!(store.list().unwrap().len(), 2);

    // The same image with a Docker schema 2 manifest.
    reg.push_with(
        &layout,
        "v1",
        "team/app:docker",
        false,
        &["--format", "v2s2"],
    );
    let docker = store
        .pull(&format!("{}/team/app:docker", reg.host()), &opts())
        .unwrap();
    let raw = store.blobs().read(&docker.manifest_digest).unwrap();
    assert!(
        String::from_utf8_lossy(&raw)
            .contains("application/vnd.docker.distribution.manifest.v2+json"),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    assert_eq!(docker.config.cmd, img.config.cmd);
    let out = t.path().join("docker");
    common::extract_disk(docker.disk_format, &docker.disk_image, &out);
    assert_eq!(
        fs::read_to_string(out.join("etc/marker")).unwrap(),
        "pulled\n"
    );

    let e = pull_error(
        store
            .pull(&format!("{}/team/app:nosuchtag", reg.host()), &opts())
            .unwrap_err(),
    );
    assert!(matches!(e, RegistryError::NotFound { .. }), "{e}");
    assert!(e.to_string().contains("nosuchtag"), "{e}");
}

#[test]
fn manifest_list_resolves_to_linux_amd64() {
    let reg = Registry::start();
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    let mut w = LayoutWriter::create(&layout).unwrap();
    let layer = |m: &str| {
        vec![LayerBlob::gzip(
            &common::Tar::new().file("which", m).finish(),
        )]
    };
    let rc = common::run_config(&["x"]);
    let arm = w.add_image(None, &rc, &layer("arm64")).unwrap();
    let amd = w.add_image(None, &rc, &layer("amd64")).unwrap();
    w.finish().unwrap();
    // Replace index.json with one entry: a nested index of the two platforms.
    let size = |d: &Digest| {
        fs::metadata(layout.join("blobs/sha256").join(d.hex()))
            .unwrap()
            .len()
    };
    let nested = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": arm.to_string(), "size": size(&arm),
             "platform": {"os": "linux", "architecture": "arm64"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": amd.to_string(), "size": size(&amd),
             "platform": {"os": "linux", "architecture": "amd64"}},
        ]
    });
    let w = LayoutWriter::create(&layout).unwrap();
    let desc = w
        .add_blob(
            "application/vnd.oci.image.index.v1+json",
            &serde_json::to_vec(&nested).unwrap(),
        )
        .unwrap();
    let top = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": desc.media_type, "digest": desc.digest.to_string(), "size": desc.size,
                       "annotations": {"org.opencontainers.image.ref.name": "multi"}}]
    });
    fs::write(layout.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    reg.push(&layout, "multi", "multi:1", true);

    let store = Store::open(t.path().join("store")).unwrap();
    let img = store
        .pull(&format!("{}/multi:1", reg.host()), &opts())
        .unwrap();
    assert_eq!(img.manifest_digest, amd);
    // The same multi-platform layout imports locally too.
    let local = store.import_oci_layout(&layout).unwrap();
    assert_eq!(local[0].manifest_digest, amd);

    let arm_opts = PullOptions {
        architecture: "s390x".into(),
        ..opts()
    };
    let e = pull_error(
        store
            .pull(&format!("{}/multi:1", reg.host()), &arm_opts)
            .unwrap_err(),
    );
    assert!(matches!(e, RegistryError::NoPlatform { .. }), "{e}");
    assert!(e.to_string().contains("linux/arm64"), "{e}");
}

#[test]
fn concurrent_pulls_of_one_image_end_with_one_copy() {
    let reg = Registry::start();
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    sample_layout(&layout, "v1", "race\n");
    reg.push(&layout, "v1", "race:v1", false);
    let root = t.path().join("store");
    let name = format!("{}/race:v1", reg.host());
    let barrier = Arc::new(Barrier::new(3));
    let handles: Vec<_> = (0..3)
        .map(|_| {
            let (root, name, barrier) = (root.clone(), name.clone(), barrier.clone());
            std::thread::spawn(move || {
                let store = Store::open(&root).unwrap();
                barrier.wait();
                store.pull(&name, &opts()).unwrap()
            })
        })
        .collect();
    let digests: Vec<Digest> = handles
        .into_iter()
        .map(|h| h.join().unwrap().manifest_digest)
        .collect();
    assert!(digests.iter().all(|d| *d == digests[0]), "{digests:?}");
    let store = Store::open(&root).unwrap();
    assert_eq!(store.list().unwrap().len(), 1);
    assert_eq!(fs::read_dir(root.join("disks")).unwrap().count(), 1);
    assert!(tmp_entries(&root).is_empty());
}

#[test]
fn bearer_token_challenge_is_answered() {
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    let digest = sample_layout(&layout, "v1", "auth\n");
    let port = Arc::new(std::sync::OnceLock::<u16>::new());
    let p2 = port.clone();
    let token_hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let th = token_hits.clone();
    let l = layout.clone();
    let stub = Stub::start(move |req| {
        if req.path.starts_with("/token") {
            th.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            assert!(req.path.contains("service=stub"), "{}", req.path);
            assert!(
                req.path.contains("scope=repository%3Asecret%3Apull"),
                "{}",
                req.path
            );
            return Reply::ok("application/json", br#"{"token":"good-token"}"#.to_vec());
        }
        if req.headers.get("authorization").map(String::as_str) != Some("Bearer good-token") {
            return Reply::Send {
                status: 401,
                headers: vec![(
                    "WWW-Authenticate".into(),
                    format!(
                        r#"Bearer realm="http://127.0.0.1:{}/token",service="stub",scope="repository:secret:pull""#,
                        p2.get().unwrap()
                    ),
                )],
                body: vec![],
            };
        }
        layout_reply(&l, req, &|_, b| b)
    });
    port.set(stub.port).unwrap();
    let store = Store::open(t.path().join("store")).unwrap();
    let img = store
        .pull(&format!("127.0.0.1:{}/secret:v1", stub.port), &opts())
        .unwrap();
    assert_eq!(img.manifest_digest, digest);
    assert_eq!(token_hits.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[test]
fn registry_answering_500_is_retried_then_fails_clearly() {
    let stub = Stub::start(|_| Reply::status(500));
    let t = tempfile::tempdir().unwrap();
    let store = Store::open(t.path()).unwrap();
    let start = Instant::now();
    let e = pull_error(
        store
            .pull(&format!("127.0.0.1:{}/app:1", stub.port), &opts())
            .unwrap_err(),
    );
    assert!(
        matches!(
            e,
            RegistryError::ServerError {
                status: 500,
                attempts: 3,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(stub.hits(), 3, "one try and two retries");
    assert!(e.to_string().contains("500"), "{e}");
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_nothing_complete(&store);
}

#[test]
fn hanging_registry_times_out() {
    let stub = Stub::start(|_| Reply::Hang);
    let t = tempfile::tempdir().unwrap();
    let store = Store::open(t.path()).unwrap();
    let o = PullOptions {
        timeout: Duration::from_millis(700),
        retries: 1,
        ..opts()
    };
    let start = Instant::now();
    let e = pull_error(
        store
            .pull(&format!("127.0.0.1:{}/app:1", stub.port), &o)
            .unwrap_err(),
    );
    let took = start.elapsed();
    assert!(
        matches!(e, RegistryError::Timeout { attempts: 2, .. }),
        "{e}"
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(e.to_string().contains("timed out"), "{e}");
    assert_nothing_complete(&store);
}

#[test]
fn unreachable_registry_fails_clearly() {
    let port = common::free_port();
    let t = tempfile::tempdir().unwrap();
    let store = Store::open(t.path()).unwrap();
    let e = pull_error(
        store
            .pull(&format!("127.0.0.1:{port}/app:1"), &opts())
            .unwrap_err(),
    );
    assert!(
        matches!(e, RegistryError::Unreachable { attempts: 3, .. }),
        "{e}"
    );
}

fn layer_digest(layout: &Path) -> String {
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let m = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("blobs/sha256").join(&m[7..])).unwrap())
            .unwrap();
    manifest["layers"][0]["digest"].as_str().unwrap().to_owned()
}

#[test]
fn corrupt_blob_is_refused_and_leaves_nothing() {
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    sample_layout(&layout, "v1", "corrupt\n");
    let bad = layer_digest(&layout);
    let l = layout.clone();
    let bad2 = bad.clone();
    let stub = Stub::start(move |req| {
        layout_reply(&l, req, &|d, mut b| {
            if d == bad2 {
                let i = b.len() / 2;
                b[i] ^= 0xff;
            }
            b
        })
    });
    let store = Store::open(t.path().join("store")).unwrap();
    let e = pull_error(
        store
            .pull(&format!("127.0.0.1:{}/app:v1", stub.port), &opts())
            .unwrap_err(),
    );
    assert!(
        matches!(
            e,
            RegistryError::Blob {
                source: BlobError::DigestMismatch { .. },
                ..
            }
        ),
        "{e:?}"
    );
    let bad: Digest = bad.parse().unwrap();
    assert!(!store.blobs().contains(&bad));
    assert_nothing_complete(&store);
    let e = store
        .resolve(&format!("127.0.0.1:{}/app:v1", stub.port))
        .unwrap_err();
    assert!(matches!(e, StoreError::NotFound(_)), "{e}");
}

#[test]
fn truncated_download_is_retried_then_leaves_nothing() {
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    sample_layout(&layout, "v1", "trunc\n");
    let bad = layer_digest(&layout);
    let l = layout.clone();
    let stub = Stub::start(move |req| {
        if req.path.ends_with(&bad) {
            let b = fs::read(l.join("blobs/sha256").join(&bad[7..])).unwrap();
            return Reply::Truncated {
                len: b.len(),
                body: b[..b.len() / 2].to_vec(),
            };
        }
        layout_reply(&l, req, &|_, b| b)
    });
    let store = Store::open(t.path().join("store")).unwrap();
    let e = store
        .pull(&format!("127.0.0.1:{}/app:v1", stub.port), &opts())
        .unwrap_err();
    assert!(matches!(e, StoreError::Pull { .. }), "{e}");
    assert_nothing_complete(&store);
    // gc removes the verified blobs the failed pull left (manifest, config).
    let report = store.gc(&[]).unwrap();
    assert!(report.blobs_removed >= 1, "{report:?}");
    assert!(store.blobs().list().unwrap().is_empty());
}

#[test]
fn https_registry_with_a_private_ca() {
    let t = tempfile::tempdir().unwrap();
    let (ca, cert, key) = common::make_certs(t.path());
    let reg = Registry::start_with_tls(Some((&cert, &key)));
    let layout = t.path().join("layout");
    sample_layout(&layout, "v1", "tls\n");
    reg.push(&layout, "v1", "secure:v1", false);
    let store = Store::open(t.path().join("store")).unwrap();
    let name = format!("{}/secure:v1", reg.host());
    let https = PullOptions {
        plain_http: Some(false),
        ..opts()
    };
    // Without the CA the certificate is refused, at once (not retried).
    let e = pull_error(store.pull(&name, &https).unwrap_err());
    assert!(matches!(e, RegistryError::Tls { .. }), "{e:?}");
    assert!(e.to_string().contains("ca_certs"), "{e}");
    let chain = format!("{:?}", std::error::Error::source(&e));
    assert!(chain.contains("UnknownIssuer"), "{chain}");
    // Plain HTTP against an HTTPS registry fails too.
    let plain = PullOptions {
        plain_http: Some(true),
        retries: 0,
        ..opts()
    };
    assert!(store.pull(&name, &plain).is_err());
    let with_ca = PullOptions {
        ca_certs: vec![ca],
        ..https
    };
    let img = store.pull(&name, &with_ca).unwrap();
    assert_eq!(img.config.cmd, vec!["/bin/tool", "arg"]);
    // A CA file that holds no certificate.
    let bad = PullOptions {
        ca_certs: vec![key],
        ..opts()
    };
    let e = pull_error(store.pull(&name, &bad).unwrap_err());
    assert!(matches!(e, RegistryError::CaCert { .. }), "{e}");
}

#[test]
fn a_dripping_registry_is_bounded_by_the_request_deadline() {
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    sample_layout(&layout, "v1", "drip\n");
    let o = PullOptions {
        timeout: Duration::from_millis(1500),
        retries: 0,
        ..opts()
    };
    // The manifest, one byte every 50 ms: each read is quick, the whole is not.
    let l = layout.clone();
    let stub = Stub::start(move |req| match layout_reply(&l, req, &|_, b| b) {
        Reply::Send { body, headers, .. } if req.path.contains("/manifests/") => Reply::Drip {
            content_type: headers[0].1.clone(),
            body,
            every: Duration::from_millis(50),
        },
        other => other,
    });
    let store = Store::open(t.path().join("store")).unwrap();
    let e = pull_error(
        store
            .pull(&format!("127.0.0.1:{}/app:v1", stub.port), &o)
            .unwrap_err(),
    );
    assert!(matches!(e, RegistryError::Timeout { .. }), "{e:?}");
    assert!(e.to_string().contains("timed out"), "{e}");
    assert_nothing_complete(&store);

    // A blob, dripped: its deadline is the timeout plus its size at the minimum rate.
    let l = layout.clone();
    let stub = Stub::start(move |req| match layout_reply(&l, req, &|_, b| b) {
        Reply::Send { body, .. } if req.path.contains("/blobs/") => Reply::Drip {
            content_type: "application/octet-stream".into(),
            body,
            every: Duration::from_millis(50),
        },
        other => other,
    });
    let fast = PullOptions {
        min_rate: 1 << 20,
        ..o
    };
    let e = pull_error(
        store
            .pull(&format!("127.0.0.1:{}/app:v1", stub.port), &fast)
            .unwrap_err(),
    );
    assert!(matches!(e, RegistryError::Timeout { .. }), "{e:?}");
    assert_nothing_complete(&store);
}

#[test]
fn the_token_answer_is_read_with_a_limit() {
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    sample_layout(&layout, "v1", "token\n");
    let port = Arc::new(std::sync::OnceLock::<u16>::new());
    let p2 = port.clone();
    let l = layout.clone();
    let stub = Stub::start(move |req| {
        if req.path.starts_with("/token") {
            let mut body = br#"{"token":"good-token","pad":""#.to_vec();
            body.extend(std::iter::repeat_n(b'x', 2 << 20));
            body.extend_from_slice(br#""}"#);
            return Reply::ok("application/json", body);
        }
        if req.headers.get("authorization").map(String::as_str) != Some("Bearer good-token") {
            return Reply::Send {
                status: 401,
                headers: vec![(
                    "WWW-Authenticate".into(),
                    format!(
                        r#"Bearer realm="http://127.0.0.1:{}/token",service="stub""#,
                        p2.get().unwrap()
                    ),
                )],
                body: vec![],
            };
        }
        layout_reply(&l, req, &|_, b| b)
    });
    port.set(stub.port).unwrap();
    let store = Store::open(t.path().join("store")).unwrap();
    let e = pull_error(
        store
            .pull(&format!("127.0.0.1:{}/secret:v1", stub.port), &opts())
            .unwrap_err(),
    );
    assert!(matches!(e, RegistryError::TokenTooLarge { .. }), "{e:?}");
    assert_nothing_complete(&store);
}

#[test]
fn a_large_config_or_too_many_layers_are_refused_before_any_blob_is_fetched() {
    use crx_image::limits::LimitExceeded;
    use crx_image::{ImageLimits, StoreOptions};
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    let mut w = LayoutWriter::create(&layout).unwrap();
    let mut rc = common::run_config(&["x"]);
    rc.env = Some(vec![format!("BIG={}", "x".repeat(8192))]);
    let layer = |m: &str| LayerBlob::tar(common::Tar::new().file("f", m).finish());
    w.add_image(Some("big"), &rc, &[layer("a")]).unwrap();
    w.add_image(
        Some("many"),
        &common::run_config(&["x"]),
        &[layer("1"), layer("2"), layer("3")],
    )
    .unwrap();
    w.finish().unwrap();
    let blob_hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (l, hits) = (layout.clone(), blob_hits.clone());
    let stub = Stub::start(move |req| {
        if req.path.contains("/blobs/") {
            hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        layout_reply(&l, req, &|_, b| b)
    });
    let store = Store::open_with(
        t.path().join("store"),
        StoreOptions {
            limits: ImageLimits {
                max_config_bytes: 4096,
                max_layers: 2,
                ..ImageLimits::default()
            },
            ..StoreOptions::default()
        },
    )
    .unwrap();
    for (tag, want) in [("big", "CONFIG"), ("many", "LAYERS")] {
        let e = store
            .pull(&format!("127.0.0.1:{}/app:{tag}", stub.port), &opts())
            .unwrap_err();
        assert!(
            e.to_string().contains(&format!("CRX_IMAGE_MAX_{want}")),
            "{e}"
        );
        let StoreError::Limit { exceeded, .. } = e else {
            panic!("{e:?}")
        };
        assert!(
            matches!(
                (tag, exceeded),
                ("big", LimitExceeded::Config { .. }) | ("many", LimitExceeded::Layers { .. })
            ),
            "{tag}"
        );
    }
    assert_eq!(blob_hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_nothing_complete(&store);
}

#[test]
fn registry_text_in_errors_is_escaped() {
    let evil = "\x1b]0;pwned\x07\x1b[2J\u{9b}31m";
    let body = evil.as_bytes().to_vec();
    let stub = Stub::start(move |_| Reply::Send {
        status: 400,
        headers: vec![],
        body: body.clone(),
    });
    let t = tempfile::tempdir().unwrap();
    let store = Store::open(t.path()).unwrap();
    let e = store
        .pull(&format!("127.0.0.1:{}/app:1", stub.port), &opts())
        .unwrap_err();
    let text = common::chain(&e);
    assert!(text.contains("400"), "{text}");
    assert!(
        !text.chars().any(|c| c.is_control()),
        "control characters in {text:?}"
    );
    assert!(text.contains("\\u{1b}]0;pwned"), "{text}");

    // A status line the HTTP client quotes in its error ("\x1bc" resets a terminal).
    let stub = Stub::start(|_| Reply::Raw(b"HTTP/1.1 1\x1bc OK\r\n\r\n".to_vec()));
    let e = store
        .pull(&format!("127.0.0.1:{}/app:1", stub.port), &opts())
        .unwrap_err();
    let text = common::chain(&e);
    assert!(text.contains("status"), "{text}");
    assert!(
        !text.chars().any(|c| c.is_control()),
        "control characters in {text:?}"
    );

    // Platform names of a manifest list.
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{}", "a".repeat(64)), "size": 1,
            "platform": {"os": evil, "architecture": "amd64"}}]
    });
    let bytes = serde_json::to_vec(&index).unwrap();
    let stub =
        Stub::start(move |_| Reply::ok("application/vnd.oci.image.index.v1+json", bytes.clone()));
    let e = store
        .pull(&format!("127.0.0.1:{}/app:1", stub.port), &opts())
        .unwrap_err();
    let text = common::chain(&e);
    assert!(text.contains("no linux/amd64 image"), "{text}");
    assert!(
        !text.chars().any(|c| c.is_control()),
        "control characters in {text:?}"
    );
}
