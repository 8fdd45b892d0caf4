//! Helpers shared by the integration tests: layer and layout builders, tool checks, a real
//! loopback registry (Debian's docker-registry), a tiny scripted HTTP stub, disk extraction.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crx_image::layout::{LayerBlob, LayoutWriter};
use crx_image::oci::RunConfig;
use crx_image::DiskFormat;

/// Fails (never skips) when a tool is missing, naming the Debian package that has it.
pub fn require_tool(tool: &str, package: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        let p = Path::new(dir).join(tool);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "{tool} is missing: install the Debian package {package} (apt-get install -y {package})"
    );
}

#[allow(unused_imports)] // not every test binary uses it
pub use crx_proto::chain;

pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Builds a layer tar entry by entry.
pub struct Tar {
    b: tar::Builder<Vec<u8>>,
}

impl Default for Tar {
    fn default() -> Self {
        Self::new()
    }
}

impl Tar {
    pub fn new() -> Self {
        Self {
            b: tar::Builder::new(Vec::new()),
        }
    }

    fn header(kind: tar::EntryType, mode: u32, uid: u64, gid: u64, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(1_700_000_000);
        h.set_size(size);
        h
    }

    pub fn dir(mut self, path: &str, mode: u32) -> Self {
        let mut h = Self::header(tar::EntryType::Directory, mode, 0, 0, 0);
        self.b.append_data(&mut h, path, std::io::empty()).unwrap();
        self
    }

    pub fn file(self, path: &str, content: &str) -> Self {
        self.file_owned(path, content, 0o644, 0, 0)
    }

    pub fn file_owned(mut self, path: &str, content: &str, mode: u32, uid: u64, gid: u64) -> Self {
        let mut h = Self::header(
            tar::EntryType::Regular,
            mode,
            uid,
            gid,
            content.len() as u64,
        );
        self.b
            .append_data(&mut h, path, content.as_bytes())
            .unwrap();
        self
    }

    /// A file with PAX records (e.g. `SCHILY.xattr.user.x`, `uid`).
    pub fn file_with_pax(mut self, path: &str, content: &str, pax: &[(&str, &[u8])]) -> Self {
        self.b.append_pax_extensions(pax.iter().copied()).unwrap();
        let mut h = Self::header(tar::EntryType::Regular, 0o644, 0, 0, content.len() as u64);
        self.b
            .append_data(&mut h, path, content.as_bytes())
            .unwrap();
        self
    }

    /// A file whose name is written raw into the header (no checks by the tar crate).
    pub fn raw_file(mut self, path: &str, content: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Regular, 0o644, 0, 0, content.len() as u64);
        let name = &mut h.as_old_mut().name;
        name.fill(0);
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        self.b.append(&h, content.as_bytes()).unwrap();
        self
    }

    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0, 0, 0);
        self.b.append_link(&mut h, path, target).unwrap();
        self
    }

    pub fn hardlink(mut self, path: &str, target: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Link, 0o644, 0, 0, 0);
        self.b.append_link(&mut h, path, target).unwrap();
        self
    }

    pub fn fifo(mut self, path: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Fifo, 0o600, 0, 0, 0);
        self.b.append_data(&mut h, path, std::io::empty()).unwrap();
        self
    }

    /// A character (`block` false) or block device node.
    pub fn device(mut self, path: &str, block: bool, major: u32, minor: u32) -> Self {
        let kind = if block {
            tar::EntryType::Block
        } else {
            tar::EntryType::Char
        };
        let mut h = Self::header(kind, 0o666, 0, 0, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.b.append_data(&mut h, path, std::io::empty()).unwrap();
        self
    }

    /// A GNU sparse file of `size` bytes: all hole but `tail` at its very end.
    pub fn sparse(mut self, path: &str, size: u64, tail: &[u8; 512]) -> Self {
        let mut h = Self::header(tar::EntryType::GNUSparse, 0o644, 0, 0, 512);
        h.set_path(path).unwrap();
        let gnu = h.as_gnu_mut().unwrap();
        let octal = |field: &mut [u8], v: u64| {
            let s = format!("{v:0width$o}", width = field.len() - 1);
            field[..s.len()].copy_from_slice(s.as_bytes());
            field[s.len()] = 0;
        };
        octal(&mut gnu.realsize, size);
        octal(&mut gnu.sparse[0].offset, size - 512);
        octal(&mut gnu.sparse[0].numbytes, 512);
        h.set_cksum();
        self.b.append(&h, &tail[..]).unwrap();
        self
    }

    /// A file of `len` zero bytes.
    pub fn zeros(mut self, path: &str, len: usize) -> Self {
        let mut h = Self::header(tar::EntryType::Regular, 0o644, 0, 0, len as u64);
        self.b
            .append_data(&mut h, path, std::io::repeat(0).take(len as u64))
            .unwrap();
        self
    }

    pub fn finish(self) -> Vec<u8> {
        self.b.into_inner().unwrap()
    }
}

pub fn run_config(cmd: &[&str]) -> RunConfig {
    RunConfig {
        entrypoint: None,
        cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
        env: Some(vec!["PATH=/bin".into(), "GREETING=hello".into()]),
        working_dir: Some("/srv".into()),
        user: Some("1000:1000".into()),
    }
}

/// A two-layer image: a base (gzip) and an upper layer (plain tar) with a whiteout.
pub fn sample_layers(marker: &str) -> Vec<LayerBlob> {
    let base = Tar::new()
        .dir("bin/", 0o755)
        .dir("etc/", 0o755)
        .dir("srv/", 0o755)
        .file_owned("bin/tool", "#!/bin/sh\necho tool\n", 0o4755, 0, 0)
        .file("etc/marker", marker)
        .file("etc/old", "to be deleted\n")
        .file_owned("srv/owned", "owned by 1000\n", 0o640, 1000, 1001)
        .symlink("bin/link", "tool")
        .hardlink("bin/hard", "bin/tool")
        .finish();
    let upper = Tar::new()
        .dir("etc/", 0o755)
        .file("etc/.wh.old", "")
        .file("etc/new", "added in layer 2\n")
        .finish();
    vec![LayerBlob::gzip(&base), LayerBlob::tar(upper)]
}

/// Writes an OCI layout at `dir` with one image named `ref_name`.
pub fn sample_layout(dir: &Path, ref_name: &str, marker: &str) -> crx_image::Digest {
    let mut w = LayoutWriter::create(dir).unwrap();
    let d = w
        .add_image(
            Some(ref_name),
            &run_config(&["/bin/tool", "arg"]),
            &sample_layers(marker),
        )
        .unwrap();
    w.finish().unwrap();
    d
}

/// Tars a directory (e.g. an OCI layout) into `out`.
pub fn tar_dir(dir: &Path, out: &Path) {
    let f = std::fs::File::create(out).unwrap();
    let mut b = tar::Builder::new(f);
    b.append_dir_all(".", dir).unwrap();
    b.finish().unwrap();
}

/// Extracts a disk image to `dest` with the file system's own tools.
pub fn extract_disk(format: DiskFormat, disk: &Path, dest: &Path) {
    match format {
        DiskFormat::Erofs => {
            let fsck = require_tool("fsck.erofs", "erofs-utils");
            run(Command::new(fsck)
                .arg(format!("--extract={}", dest.display()))
                .arg(disk));
        }
        DiskFormat::Ext4 => {
            let debugfs = require_tool("debugfs", "e2fsprogs");
            std::fs::create_dir_all(dest).unwrap();
            run(Command::new(&debugfs)
                .arg("-R")
                .arg(format!("rdump / {}", dest.display()))
                .arg(disk));
            let fsck = require_tool("e2fsck", "e2fsprogs");
            run(Command::new(fsck).arg("-fn").arg(disk));
        }
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Debian's docker-registry on a random loopback port, storage in a tempdir; killed on drop.
pub struct Registry {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Self {
        Self::start_with_tls(None)
    }

    /// With `tls = Some((certificate, key))` the registry serves HTTPS.
    pub fn start_with_tls(tls: Option<(&Path, &Path)>) -> Self {
        let bin = require_tool("docker-registry", "docker-registry");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let cfg = dir.path().join("config.yml");
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        );
        if let Some((cert, key)) = tls {
            yaml.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ));
        }
        std::fs::write(&cfg, yaml).unwrap();
        let child = Command::new(bin)
            .arg("serve")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let r = Registry {
            port,
            child,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                if tls.is_some() {
                    return r;
                }
                let _ = s.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n");
                let mut buf = String::new();
                let _ = s.read_to_string(&mut buf);
                if buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200") {
                    return r;
                }
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Pushes `oci:<layout>:<tag>` to `<this registry>/<name>` with skopeo.
    pub fn push(&self, layout: &Path, tag: &str, name: &str, all: bool) {
        self.push_with(layout, tag, name, all, &[]);
    }

    /// `push` with extra skopeo copy flags (e.g. `--format v2s2` for Docker manifests).
    pub fn push_with(&self, layout: &Path, tag: &str, name: &str, all: bool, extra: &[&str]) {
        let skopeo = require_tool("skopeo", "skopeo");
        let mut cmd = Command::new(skopeo);
        cmd.args([
            "--insecure-policy",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
        ]);
        cmd.args(extra);
        if all {
            cmd.arg("--all");
        }
        cmd.arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{name}", self.host()));
        run(&mut cmd);
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A request the stub saw.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
}

/// What the stub does with a request.
pub enum Reply {
    Send {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Sends the status line and headers claiming `len` bytes, then only `body`, then closes.
    Truncated { len: usize, body: Vec<u8> },
    /// Accepts and never answers.
    Hang,
    /// Sends these bytes as the whole answer, then closes.
    Raw(Vec<u8>),
    /// Sends the status line and headers at once, then the body one byte per `every`.
    Drip {
        content_type: String,
        body: Vec<u8>,
        every: Duration,
    },
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Reply::Send {
            status,
            headers: vec![],
            body: vec![],
        }
    }
    pub fn ok(content_type: &str, body: Vec<u8>) -> Self {
        Reply::Send {
            status: 200,
            headers: vec![("Content-Type".into(), content_type.into())],
            body,
        }
    }
}

/// A scripted HTTP/1.1 server on a random loopback port (one thread per connection).
pub struct Stub {
    pub port: u16,
    pub hits: Arc<AtomicUsize>,
}

impl Stub {
    pub fn start(handler: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(AtomicUsize::new(0));
        let handler = Arc::new(handler);
        let h2 = hits.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let handler = handler.clone();
                let hits = h2.clone();
                std::thread::spawn(move || serve(conn, &*handler, &hits));
            }
        });
        Stub { port, hits }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn serve(conn: TcpStream, handler: &(dyn Fn(&Request) -> Reply + Send + Sync), hits: &AtomicUsize) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut conn = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_owned();
        let path = parts.next().unwrap_or("").to_owned();
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
        }
        hits.fetch_add(1, Ordering::SeqCst);
        let req = Request {
            method,
            path,
            headers,
        };
        match handler(&req) {
            Reply::Send {
                status,
                headers,
                body,
            } => {
                let mut out = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n", body.len());
                for (k, v) in headers {
                    out.push_str(&format!("{k}: {v}\r\n"));
                }
                out.push_str("\r\n");
                if conn.write_all(out.as_bytes()).is_err() {
                    return;
                }
                if req.method != "HEAD" && conn.write_all(&body).is_err() {
                    return;
                }
            }
            Reply::Truncated { len, body } => {
                let _ = conn.write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
                    )
                    .as_bytes(),
                );
                let _ = conn.write_all(&body);
                return;
            }
            Reply::Hang => {
                std::thread::sleep(Duration::from_secs(120));
                return;
            }
            Reply::Raw(bytes) => {
                let _ = conn.write_all(&bytes);
                return;
            }
            Reply::Drip {
                content_type,
                body,
                every,
            } => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                if conn.write_all(head.as_bytes()).is_err() {
                    return;
                }
                for b in body {
                    std::thread::sleep(every);
                    if conn.write_all(&[b]).is_err() {
                        return;
                    }
                }
                return;
            }
        }
    }
}

/// Serves the images of an OCI layout directory as a registry would (manifests by tag or
/// digest, blobs by digest). `tweak` may replace a blob's bytes (to corrupt it).
pub fn layout_reply(
    layout: &Path,
    req: &Request,
    tweak: &dyn Fn(&str, Vec<u8>) -> Vec<u8>,
) -> Reply {
    let path = req.path.split('?').next().unwrap_or("");
    let Some(rest) = path.strip_prefix("/v2/") else {
        return Reply::status(404);
    };
    if rest.is_empty() {
        return Reply::ok("application/json", b"{}".to_vec());
    }
    if let Some((_, sel)) = rest.rsplit_once("/manifests/") {
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        let desc = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| {
                d["digest"] == sel || d["annotations"]["org.opencontainers.image.ref.name"] == sel
            })
            .cloned();
        let (digest, media) = match desc {
            Some(d) => (
                d["digest"].as_str().unwrap().to_owned(),
                d["mediaType"].as_str().unwrap().to_owned(),
            ),
            None if sel.starts_with("sha256:") => (
                sel.to_owned(),
                "application/vnd.oci.image.manifest.v1+json".to_owned(),
            ),
            None => return Reply::status(404),
        };
        let p = layout.join("blobs/sha256").join(&digest[7..]);
        return match std::fs::read(p) {
            Ok(b) => Reply::ok(&media, b),
            Err(_) => Reply::status(404),
        };
    }
    if let Some((_, digest)) = rest.rsplit_once("/blobs/") {
        let p = layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"));
        return match std::fs::read(p) {
            Ok(b) => Reply::ok("application/octet-stream", tweak(digest, b)),
            Err(_) => Reply::status(404),
        };
    }
    Reply::status(404)
}

/// Every entry (relative path) under `dir`, recursively, sorted.
pub fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Nothing that looks complete: no names, no disks, nothing in tmp/.
pub fn assert_nothing_complete(store: &crx_image::Store) {
    assert!(store.list().unwrap().is_empty());
    assert_eq!(
        std::fs::read_dir(store.root().join("disks"))
            .unwrap()
            .count(),
        0
    );
    let tmp = tmp_entries(store.root());
    assert!(tmp.is_empty(), "{tmp:?}");
}

/// Files under a store's tmp/ (should be none after any operation ends).
pub fn tmp_entries(store_root: &Path) -> Vec<String> {
    tree(&store_root.join("tmp"))
}

/// The full mode (with setuid/setgid/sticky bits, which extraction tools drop) of `path`
/// inside a disk image: ext4 through `debugfs stat`, erofs through a read-only loop mount.
pub fn disk_mode(format: DiskFormat, disk: &Path, path: &str) -> u32 {
    match format {
        DiskFormat::Ext4 => {
            let debugfs = require_tool("debugfs", "e2fsprogs");
            let out = run(Command::new(debugfs)
                .arg("-R")
                .arg(format!("stat {path}"))
                .arg(disk));
            let mode = out
                .split("Mode:")
                .nth(1)
                .and_then(|s| s.split_whitespace().next())
                .unwrap_or_else(|| panic!("no mode in debugfs output: {out}"));
            u32::from_str_radix(mode, 8).unwrap()
        }
        DiskFormat::Erofs => {
            let mnt = tempfile::tempdir().unwrap();
            let st = Command::new("mount")
                .args(["-t", "erofs", "-o", "loop,ro"])
                .arg(disk)
                .arg(mnt.path())
                .status()
                .unwrap();
            assert!(
                st.success(),
                "mounting an erofs image failed: this test needs root, loop devices and erofs support in the host kernel"
            );
            use std::os::unix::fs::MetadataExt;
            let mode = std::fs::symlink_metadata(mnt.path().join(path.trim_start_matches('/')))
                .map(|m| m.mode() & 0o7777);
            let _ = Command::new("umount").arg(mnt.path()).status();
            mode.unwrap()
        }
    }
}

/// A test CA and a server certificate for 127.0.0.1 signed by it (openssl):
/// returns (ca.pem, server.pem, server.key).
pub fn make_certs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let openssl = require_tool("openssl", "openssl");
    let p = |n: &str| dir.join(n);
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(Command::new(&openssl)
        .args(["req", "-x509"])
        .args(ec)
        .arg("-keyout")
        .arg(p("ca.key"))
        .arg("-out")
        .arg(p("ca.pem"))
        .args(["-days", "2", "-subj", "/CN=crx-test-ca"]));
    run(Command::new(&openssl)
        .arg("req")
        .args(ec)
        .arg("-keyout")
        .arg(p("srv.key"))
        .arg("-out")
        .arg(p("srv.csr"))
        .args(["-subj", "/CN=127.0.0.1"]));
    std::fs::write(
        p("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(Command::new(&openssl)
        .args(["x509", "-req", "-in"])
        .arg(p("srv.csr"))
        .arg("-CA")
        .arg(p("ca.pem"))
        .arg("-CAkey")
        .arg(p("ca.key"))
        .args(["-CAcreateserial", "-days", "2", "-extfile"])
        .arg(p("ext.cnf"))
        .arg("-out")
        .arg(p("srv.pem")));
    (p("ca.pem"), p("srv.pem"), p("srv.key"))
}
