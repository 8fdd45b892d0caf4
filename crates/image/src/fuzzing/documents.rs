//! Hostile JSON documents (manifests, indexes, configs, layout markers, token answers) and
//! registry header values, built from a vocabulary of the real keys and values so that the
//! parsers get past the first field.

use arbitrary::{Result, Unstructured};
use serde_json::{Map, Value};

use crate::digest::Digest;
use crate::limits::ImageLimits;
use crate::oci::{self, ConfigFile, Descriptor, Index, LayoutMarker, Manifest, ManifestOrIndex};
use crate::reference::Reference;
use crate::registry::auth::{parse_challenge, Challenge, TokenResponse};
use crate::text::escape;

const KEYS: &[&str] = &[
    "schemaVersion",
    "mediaType",
    "config",
    "layers",
    "manifests",
    "digest",
    "size",
    "platform",
    "annotations",
    "architecture",
    "os",
    "variant",
    "rootfs",
    "type",
    "diff_ids",
    "Cmd",
    "Entrypoint",
    "Env",
    "WorkingDir",
    "User",
    "imageLayoutVersion",
    "token",
    "access_token",
    oci::ANNOTATION_REF_NAME,
];

const STRINGS: &[&str] = &[
    oci::MEDIA_OCI_MANIFEST,
    oci::MEDIA_OCI_INDEX,
    oci::MEDIA_OCI_CONFIG,
    oci::MEDIA_OCI_LAYER,
    oci::MEDIA_DOCKER_MANIFEST,
    oci::MEDIA_DOCKER_LIST,
    "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
    "sha256:",
    "sha512:00",
    "linux",
    "amd64",
    "arm64",
    "layers",
    "1.0.0",
    "busybox:latest",
    "",
    "\u{1b}]0;title\u{7}\u{202e}",
];

/// A JSON value, mostly objects with the documents' own keys, at most `depth` deep.
fn value(u: &mut Unstructured<'_>, depth: u32) -> Result<Value> {
    let top = if depth == 0 { 6 } else { 9 };
    Ok(match u.int_in_range(0..=top)? {
        0 => Value::Null,
        1 => Value::Bool(u.arbitrary()?),
        2 => Value::from(u.int_in_range(0..=3u64)?),
        3 => match u.int_in_range(0..=2u8)? {
            0 => Value::from(u.arbitrary::<i64>()?),
            1 => Value::from(u.arbitrary::<u64>()?),
            _ => Value::from(u.arbitrary::<f64>()?),
        },
        4 | 5 => Value::from(*u.choose(STRINGS)?),
        6 => Value::from(u.arbitrary::<String>()?),
        7 => {
            let n = u.int_in_range(0..=4u8)?;
            Value::Array((0..n).map(|_| value(u, depth - 1)).collect::<Result<_>>()?)
        }
        _ => Value::Object(object(u, depth - 1)?),
    })
}

fn object(u: &mut Unstructured<'_>, depth: u32) -> Result<Map<String, Value>> {
    let mut m = Map::new();
    for _ in 0..u.int_in_range(0..=7u8)? {
        let k = if u.ratio(1, 10)? {
            u.arbitrary::<String>()?
        } else {
            (*u.choose(KEYS)?).to_owned()
        };
        m.insert(k, value(u, depth)?);
    }
    Ok(m)
}

/// A document: a generated object, maybe cut or with a byte changed, or raw bytes.
pub(super) fn document(u: &mut Unstructured<'_>) -> Result<Vec<u8>> {
    if u.ratio(1, 8)? {
        return Ok(u.arbitrary::<&[u8]>()?.to_vec());
    }
    let mut b = serde_json::to_vec(&Value::Object(object(u, 3)?)).expect("a Value serialises");
    match u.int_in_range(0..=9u8)? {
        0 => b.truncate(u.int_in_range(0..=b.len())?),
        1 if !b.is_empty() => {
            let i = u.choose_index(b.len())?;
            b[i] = u.arbitrary()?;
        }
        _ => {}
    }
    Ok(b)
}

/// Parses `bytes` as `T`; if it parses, its serialisation must parse back to the same value.
fn round_trip<T>(bytes: &[u8]) -> Option<T>
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let v: T = serde_json::from_slice(bytes).ok()?;
    let again: T = serde_json::from_slice(&serde_json::to_vec(&v).expect("serialises"))
        .expect("a parsed document serialises to one that parses");
    assert_eq!(v, again, "a document changed through a round trip");
    Some(v)
}

/// Fuzz target: manifests, indexes, configs and layout markers, with and without a media
/// type, through the store's parsers and limit checks; see [`check_document`].
pub fn fuzz_documents(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(bytes) = document(&mut u) else { return };
    let media = match u.int_in_range(0..=3u8) {
        Ok(0) => None,
        Ok(1) => u.arbitrary::<&str>().ok(),
        _ => u.choose(STRINGS).ok().copied(),
    };
    check_document(media, &bytes);
}

/// Parses `bytes` (with the media type a registry or layout gave, if any) as every document
/// kind. Panics if a parser panics, if a parsed document does not serialise back to an equal
/// one, if a platform pick is wrong, or if an error is not one line.
pub fn check_document(media: Option<&str>, bytes: &[u8]) {
    let tiny = ImageLimits {
        max_layer_bytes: 1,
        max_image_bytes: 2,
        max_config_bytes: 1,
        max_layers: 1,
    };
    match ManifestOrIndex::parse(media, bytes) {
        Ok(ManifestOrIndex::Manifest(m)) => {
            for limits in [ImageLimits::default(), tiny] {
                if let Err(e) = limits.check_manifest(&m) {
                    super::assert_one_line(&e);
                }
            }
            let again: Manifest =
                serde_json::from_slice(&serde_json::to_vec(&m).expect("serialises"))
                    .expect("a parsed manifest serialises to one that parses");
            assert_eq!(again.config, m.config);
            assert_eq!(again.layers, m.layers);
        }
        Ok(ManifestOrIndex::Index(i)) => {
            if let Some(d) = oci::select_platform(&i, "linux", "amd64") {
                let p = d
                    .platform
                    .as_ref()
                    .expect("a selected manifest has a platform");
                assert!(p.os == "linux" && p.architecture == "amd64");
            }
            let again: Index = serde_json::from_slice(&serde_json::to_vec(&i).expect("serialises"))
                .expect("a parsed index serialises to one that parses");
            assert_eq!(again.manifests, i.manifests);
        }
        Err(e) => super::assert_one_line(&e),
    }
    let _ = round_trip::<ConfigFile>(bytes);
    let _ = round_trip::<Descriptor>(bytes);
    let _ = serde_json::from_slice::<LayoutMarker>(bytes);
    if let Ok(d) = serde_json::from_slice::<Digest>(bytes) {
        assert_eq!(d.hex().len(), 64);
        assert_eq!(d.to_string().parse::<Digest>().ok(), Some(d));
    }
}

/// A string of the characters a challenge header is made of (and some it should not hold).
fn header_text(u: &mut Unstructured<'_>) -> Result<String> {
    const PARTS: &[&str] = &[
        "Bearer",
        "bearer",
        "Basic",
        " ",
        ",",
        "=",
        "\"",
        "\\",
        "realm",
        "service",
        "scope",
        "https://auth.example/token",
        "repository:library/busybox:pull",
        "\t",
        "\u{0}",
        "é",
    ];
    let mut s = String::new();
    for _ in 0..u.int_in_range(0..=24u8)? {
        if u.ratio(1, 6)? {
            s.push(u.arbitrary::<char>()?);
        } else {
            s.push_str(u.choose(PARTS)?);
        }
    }
    Ok(s)
}

fn quote(s: &str) -> String {
    let mut q = String::from("\"");
    for c in s.chars() {
        if c == '"' || c == '\\' {
            q.push('\\');
        }
        q.push(c);
    }
    q.push('"');
    q
}

/// Fuzz target: what a registry answers with, short of HTTP itself: `WWW-Authenticate`
/// challenges (a well-formed one must parse to its parameters), token answers, manifest
/// bodies under the content type the registry claims, digests and references it names, and
/// the escaping every such text goes through before it is printed.
pub fn fuzz_registry(data: &[u8]) {
    let mut u = Unstructured::new(data);
    if let Ok(h) = header_text(&mut u) {
        let _ = parse_challenge(&h);
        assert!(!escape(&h).chars().any(char::is_control));
    }
    // A well-formed challenge with hostile (quoted) values.
    if let (Ok(realm), Ok(service)) = (u.arbitrary::<String>(), header_text(&mut u)) {
        let (realm, service) = (realm.trim().to_owned(), service.trim().to_owned());
        if !realm.is_empty() {
            let h = format!("Bearer realm={},service={}", quote(&realm), quote(&service));
            assert_eq!(
                parse_challenge(&h),
                Some(Challenge::Bearer {
                    realm,
                    service: Some(service),
                    scope: None
                }),
                "{h:?}"
            );
        }
    }
    if let Ok(body) = document(&mut u) {
        if let Ok(t) = serde_json::from_slice::<TokenResponse>(&body) {
            assert!(t.into_token().is_none_or(|t| !t.is_empty()));
        }
        let content_type = u
            .choose(STRINGS)
            .ok()
            .copied()
            .filter(|_| u.ratio(1, 2).unwrap_or(false));
        check_document(content_type, &body);
    }
    if let Ok(s) = u.arbitrary::<&str>() {
        if let Ok(d) = s.parse::<Digest>() {
            assert_eq!(d.to_string().parse::<Digest>().ok(), Some(d));
        }
        match Reference::parse(s) {
            Ok(r) => {
                let again = Reference::parse(&r.to_string());
                assert_eq!(again.as_ref().ok(), Some(&r), "{s:?} -> {r}");
            }
            Err(e) => super::assert_one_line(&e),
        }
        assert!(!escape(s).chars().any(char::is_control));
    }
}
