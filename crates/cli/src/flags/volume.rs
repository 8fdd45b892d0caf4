//! `-v HOST:CONTAINER[:ro|rw]`: a host directory or file bind-mounted into the container,
//! shared with the VM over virtio-fs.

use std::path::PathBuf;

use crx_runtime::instance::Volume;

/// Parses one `-v` value: both paths absolute, the host's existing (resolved here, so that the
/// container gets what the user named when the instance was started).
pub fn parse(s: &str) -> Result<Volume, String> {
    let bad = |why: &str| format!("{s:?}: {why} (expected HOST_PATH:CONTAINER_PATH[:ro|rw])");
    let mut parts = s.split(':');
    let (host, container) = match (parts.next(), parts.next()) {
        (Some(h), Some(c)) => (h, c),
        _ => return Err(bad("no container path")),
    };
    let read_only = match parts.next() {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(_) => return Err(bad("the mode must be ro or rw")),
    };
    if parts.next().is_some() {
        return Err(bad("too many ':'"));
    }
    if !host.starts_with('/') || !container.starts_with('/') {
        return Err(bad(
            "both paths must be absolute (named volumes are not supported)",
        ));
    }
    if container.split('/').any(|c| c == "..") {
        return Err(bad("the container path must not contain `..`"));
    }
    let source = std::fs::canonicalize(host).map_err(|e| bad(&format!("{host}: {e}")))?;
    Ok(Volume {
        source,
        destination: PathBuf::from(container),
        read_only,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_modes() {
        let d = tempfile::tempdir().unwrap();
        let host = d.path().to_str().unwrap();
        let v = parse(&format!("{host}:/data")).unwrap();
        assert_eq!(v.source, std::fs::canonicalize(host).unwrap());
        assert_eq!(v.destination, PathBuf::from("/data"));
        assert!(!v.read_only);
        assert!(parse(&format!("{host}:/data:ro")).unwrap().read_only);
        assert!(!parse(&format!("{host}:/data:rw")).unwrap().read_only);
    }

    #[test]
    fn bad_values_say_what_is_expected() {
        let d = tempfile::tempdir().unwrap();
        let host = d.path().to_str().unwrap();
        for s in [
            "/x".to_owned(),
            format!("{host}:data"),
            "vol:/data".to_owned(),
            format!("{host}:/data:rx"),
            format!("{host}:/data:ro:x"),
            format!("{host}:/a/../b"),
            format!("{host}/missing:/data"),
        ] {
            let e = parse(&s).unwrap_err();
            assert!(e.contains("HOST_PATH:CONTAINER_PATH"), "{s}: {e}");
        }
    }
}
