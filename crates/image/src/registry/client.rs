//! A synchronous OCI distribution client: manifests and blobs over HTTP(S), with token auth,
//! bounded retries with exponential backoff, and a deadline on every request (its answer
//! included: a registry that drips bytes cannot hold a pull).
//!
//! Registry answers are untrusted: every body is read with a limit, and what of them reaches
//! an error message is escaped ([`crate::text::escape`]).

use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use super::auth::{parse_challenge, Challenge, Credentials, TokenResponse};
use super::progress::{ProgressMode, ProgressReader};
use crate::blobs::{BlobError, BlobStore, Expected};
use crate::digest::Digest;
use crate::limits::MAX_MANIFEST_BYTES;
use crate::oci;
use crate::reference::Reference;
use crate::text::escape;

/// The largest token-service answer read (tokens are a few KiB).
pub const MAX_TOKEN_BYTES: u64 = 1 << 20;
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

/// How to pull.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// The platform picked from manifest lists.
    pub os: String,
    pub architecture: String,
    /// The deadline of one request, connecting and the whole answer included (manifests,
    /// tokens: a registry that stops answering, or drips, fails after it). A blob's request
    /// has this plus its size at `min_rate`.
    pub timeout: Duration,
    /// The slowest average a blob may arrive at, in bytes per second (default 128 KiB/s, i.e.
    /// 1 Mbit/s: a 100 MB layer may take 20 s + 13 min).
    pub min_rate: u64,
    /// Retries after the first attempt, on 5xx/429 answers and connection errors.
    pub retries: u32,
    /// Delay before the first retry; doubles each time.
    pub backoff: Duration,
    /// `Some(true)`: plain HTTP; `Some(false)`: HTTPS; `None`: HTTP only for loopback registries.
    pub plain_http: Option<bool>,
    pub credentials: Option<Credentials>,
    /// PEM files of extra certificate authorities to trust for HTTPS (besides the Mozilla
    /// roots), for private registries.
    pub ca_certs: Vec<PathBuf>,
    pub progress: ProgressMode,
}

impl Default for PullOptions {
    fn default() -> Self {
        Self {
            os: "linux".into(),
            architecture: "amd64".into(),
            timeout: Duration::from_secs(20),
            min_rate: 128 << 10,
            retries: 3,
            backoff: Duration::from_millis(500),
            plain_http: None,
            credentials: None,
            ca_certs: Vec::new(),
            progress: ProgressMode::Auto,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(
        "{url}: the registry answered {status} {attempts} times (it is failing; try again later)"
    )]
    ServerError {
        url: String,
        status: u16,
        attempts: u32,
    },
    #[error("{url}: timed out: no whole answer within {timeout:?}, {attempts} tries (the registry does not answer, or too slowly; check it or raise the timeout)")]
    Timeout {
        url: String,
        timeout: Duration,
        attempts: u32,
    },
    #[error("{url}: cannot reach the registry after {attempts} tries (check the address, port and network)")]
    Unreachable {
        url: String,
        attempts: u32,
        #[source]
        source: TransportError,
    },
    #[error("{url}: TLS handshake failed (an untrusted certificate? give the registry's CA in ca_certs; a plain-HTTP registry needs plain_http)")]
    Tls {
        url: String,
        #[source]
        source: TransportError,
    },
    #[error("{reference}: not found in the registry (check the repository name and tag)")]
    NotFound { reference: String },
    #[error("{url}: access denied ({status}): the repository does not exist, or it needs credentials with pull access")]
    Unauthorized { url: String, status: u16 },
    /// `body` is escaped, and at most 512 bytes of it.
    #[error("{url}: the registry answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("{url}: unsupported authentication challenge {challenge:?}")]
    BadChallenge { url: String, challenge: String },
    /// `realm` is escaped.
    #[error("{realm}: the token service gave no token")]
    NoToken { realm: String },
    #[error("{realm}: the token service answered more than {MAX_TOKEN_BYTES} bytes (refused)")]
    TokenTooLarge { realm: String },
    #[error("{url}: reading the answer")]
    Body {
        url: String,
        #[source]
        source: io::Error,
    },
    #[error("{url}: manifest larger than {MAX_MANIFEST_BYTES} bytes")]
    ManifestTooLarge { url: String },
    #[error("{reference}: the manifest is not valid JSON")]
    BadManifest {
        reference: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{reference}: the registry sent a manifest with digest {actual}, not the requested one (corrupt or tampered)")]
    ManifestDigestMismatch { reference: String, actual: Digest },
    /// `available` is escaped.
    #[error("{reference}: no {platform} image in the manifest list (it has: {available})")]
    NoPlatform {
        reference: String,
        platform: String,
        available: String,
    },
    #[error("CA certificate file {path}: {reason}")]
    CaCert { path: PathBuf, reason: String },
    #[error("{reference}: nested manifest lists are not supported")]
    NestedIndex { reference: String },
    #[error("blob {digest}")]
    Blob {
        digest: Digest,
        #[source]
        source: BlobError,
    },
}

/// A transport error of the HTTP client, shown escaped: its message can quote what the
/// registry sent (a status line's bytes, for one).
#[derive(Debug)]
pub struct TransportError(pub Box<ureq::Transport>);

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&escape(&self.0.to_string()))
    }
}

impl std::error::Error for TransportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&*self.0)
    }
}

/// A manifest fetched from a registry.
#[derive(Debug)]
pub struct FetchedManifest {
    pub digest: Digest,
    pub bytes: Vec<u8>,
    pub media_type: Option<String>,
}

/// A connection to one repository of one registry.
pub struct RegistryClient<'o> {
    agent: ureq::Agent,
    base: String,
    reference: Reference,
    opts: &'o PullOptions,
    auth: Option<String>,
}

enum Failure {
    Retry(String, Option<u16>, Option<ureq::Transport>),
    Fatal(RegistryError),
}

impl<'o> RegistryClient<'o> {
    pub fn new(reference: &Reference, opts: &'o PullOptions) -> Result<Self, RegistryError> {
        let mut builder = ureq::AgentBuilder::new()
            .timeout_connect(opts.timeout)
            .timeout_read(opts.timeout)
            .timeout_write(opts.timeout)
            .user_agent(concat!("crx-image/", env!("CARGO_PKG_VERSION")));
        if !opts.ca_certs.is_empty() {
            builder = builder.tls_config(tls_config(&opts.ca_certs)?);
        }
        let agent = builder.build();
        let plain = opts
            .plain_http
            .unwrap_or_else(|| reference.is_loopback_registry());
        let scheme = if plain { "http" } else { "https" };
        Ok(Self {
            agent,
            base: format!(
                "{scheme}://{}/v2/{}",
                reference.api_host(),
                reference.repository()
            ),
            reference: reference.clone(),
            opts,
            auth: opts.credentials.as_ref().map(Credentials::basic_header),
        })
    }

    /// The deadline of a blob's request: the request timeout plus its size at the minimum rate.
    fn blob_deadline(&self, size: u64) -> Duration {
        let secs = size / self.opts.min_rate.max(1);
        self.opts.timeout.saturating_add(Duration::from_secs(secs))
    }

    /// GET with auth, retries and backoff; each try, its answer included, within `deadline`.
    fn get(
        &mut self,
        url: &str,
        accept: Option<&str>,
        deadline: Duration,
    ) -> Result<ureq::Response, RegistryError> {
        let attempts = self.opts.retries + 1;
        let mut delay = self.opts.backoff;
        let mut authed = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut req = self.agent.get(url).timeout(deadline);
            if let Some(a) = accept {
                req = req.set("Accept", a);
            }
            if let Some(auth) = &self.auth {
                req = req.set("Authorization", auth);
            }
            let failure = match req.call() {
                Ok(resp) => return Ok(resp),
                Err(ureq::Error::Status(401, resp)) if !authed => {
                    authed = true;
                    attempt -= 1;
                    let challenge = resp.header("www-authenticate").unwrap_or("").to_owned();
                    self.authenticate(url, &challenge)?;
                    continue;
                }
                Err(ureq::Error::Status(status @ (401 | 403), _)) => {
                    return Err(RegistryError::Unauthorized {
                        url: url.to_owned(),
                        status,
                    })
                }
                Err(ureq::Error::Status(404, _)) => {
                    return Err(RegistryError::NotFound {
                        reference: self.reference.to_string(),
                    })
                }
                Err(ureq::Error::Status(status, _)) if status >= 500 || status == 429 => {
                    Failure::Retry(url.to_owned(), Some(status), None)
                }
                Err(ureq::Error::Status(status, resp)) => {
                    let mut body = Vec::new();
                    let _ = resp.into_reader().take(512).read_to_end(&mut body);
                    Failure::Fatal(RegistryError::Status {
                        url: url.to_owned(),
                        status,
                        body: escape(String::from_utf8_lossy(&body).trim()),
                    })
                }
                Err(ureq::Error::Transport(t)) if is_tls(&t) => {
                    Failure::Fatal(RegistryError::Tls {
                        url: url.to_owned(),
                        source: TransportError(Box::new(t)),
                    })
                }
                Err(ureq::Error::Transport(t)) => Failure::Retry(url.to_owned(), None, Some(t)),
            };
            match failure {
                Failure::Fatal(e) => return Err(e),
                Failure::Retry(url, status, transport) => {
                    if attempt >= attempts {
                        return Err(self.give_up(url, status, transport, attempts, deadline));
                    }
                    thread::sleep(delay);
                    delay = delay.saturating_mul(2).min(Duration::from_secs(30));
                }
            }
        }
    }

    fn give_up(
        &self,
        url: String,
        status: Option<u16>,
        transport: Option<ureq::Transport>,
        attempts: u32,
        deadline: Duration,
    ) -> RegistryError {
        match (status, transport) {
            (Some(status), _) => RegistryError::ServerError {
                url,
                status,
                attempts,
            },
            (None, Some(t)) if is_timeout(&t) => RegistryError::Timeout {
                url,
                timeout: deadline,
                attempts,
            },
            (None, Some(t)) => RegistryError::Unreachable {
                url,
                attempts,
                source: TransportError(Box::new(t)),
            },
            (None, None) => RegistryError::ServerError {
                url,
                status: 0,
                attempts,
            },
        }
    }

    /// Answers a 401 challenge: fetches a bearer token, or uses Basic credentials.
    fn authenticate(&mut self, url: &str, challenge: &str) -> Result<(), RegistryError> {
        match parse_challenge(challenge) {
            Some(Challenge::Bearer {
                realm,
                service,
                scope,
            }) => {
                let scope = scope
                    .unwrap_or_else(|| format!("repository:{}:pull", self.reference.repository()));
                let mut token_url = realm.clone();
                token_url.push(if realm.contains('?') { '&' } else { '?' });
                if let Some(s) = &service {
                    token_url.push_str(&format!("service={}&", urlencode(s)));
                }
                token_url.push_str(&format!("scope={}", urlencode(&scope)));
                // The token request carries Basic credentials when there are any.
                self.auth = self
                    .opts
                    .credentials
                    .as_ref()
                    .map(Credentials::basic_header);
                let resp = self.get_no_challenge(&token_url)?;
                let shown = escape(&token_url);
                let mut body = Vec::new();
                resp.into_reader()
                    .take(MAX_TOKEN_BYTES + 1)
                    .read_to_end(&mut body)
                    .map_err(|e| self.body_error(shown.clone(), e, 1, self.opts.timeout))?;
                if body.len() as u64 > MAX_TOKEN_BYTES {
                    return Err(RegistryError::TokenTooLarge {
                        realm: escape(&realm),
                    });
                }
                let parsed: TokenResponse =
                    serde_json::from_slice(&body).map_err(|e| RegistryError::Body {
                        url: shown.clone(),
                        source: io::Error::new(io::ErrorKind::InvalidData, e),
                    })?;
                let token = parsed.into_token().ok_or(RegistryError::NoToken {
                    realm: escape(&realm),
                })?;
                self.auth = Some(format!("Bearer {token}"));
                Ok(())
            }
            Some(Challenge::Basic) if self.opts.credentials.is_some() => {
                self.auth = self
                    .opts
                    .credentials
                    .as_ref()
                    .map(Credentials::basic_header);
                Ok(())
            }
            Some(Challenge::Basic) => Err(RegistryError::Unauthorized {
                url: url.to_owned(),
                status: 401,
            }),
            None => Err(RegistryError::BadChallenge {
                url: url.to_owned(),
                challenge: challenge.to_owned(),
            }),
        }
    }

    /// A failed read of an answer's body: a timeout (the request's deadline passed) or not.
    fn body_error(
        &self,
        url: String,
        e: io::Error,
        attempts: u32,
        deadline: Duration,
    ) -> RegistryError {
        if matches!(
            e.kind(),
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
        ) {
            RegistryError::Timeout {
                url,
                timeout: deadline,
                attempts,
            }
        } else {
            RegistryError::Body {
                url,
                source: crate::text::escape_io(e),
            }
        }
    }

    /// GET with retries but no challenge handling (token endpoints: a 401 there is final).
    /// `url` comes from the registry's challenge: errors show it escaped.
    fn get_no_challenge(&mut self, url: &str) -> Result<ureq::Response, RegistryError> {
        let attempts = self.opts.retries + 1;
        let mut delay = self.opts.backoff;
        let deadline = self.opts.timeout;
        let shown = escape(url);
        for attempt in 1..=attempts {
            let mut req = self.agent.get(url).timeout(deadline);
            if let Some(auth) = &self.auth {
                req = req.set("Authorization", auth);
            }
            let (status, transport) = match req.call() {
                Ok(resp) => return Ok(resp),
                Err(ureq::Error::Status(s, _)) if s >= 500 || s == 429 => (Some(s), None),
                Err(ureq::Error::Status(status, _)) => {
                    return Err(RegistryError::Unauthorized { url: shown, status })
                }
                Err(ureq::Error::Transport(t)) if is_tls(&t) => {
                    return Err(RegistryError::Tls {
                        url: shown,
                        source: TransportError(Box::new(t)),
                    })
                }
                Err(ureq::Error::Transport(t)) => (None, Some(t)),
            };
            if attempt == attempts {
                return Err(self.give_up(shown, status, transport, attempts, deadline));
            }
            thread::sleep(delay);
            delay = delay.saturating_mul(2).min(Duration::from_secs(30));
        }
        unreachable!("the loop returns on its last attempt")
    }

    /// Fetches a manifest (or index) by tag or digest; verifies it when asked by digest.
    pub fn manifest(&mut self, selector: &str) -> Result<FetchedManifest, RegistryError> {
        let url = format!("{}/manifests/{selector}", self.base);
        let deadline = self.opts.timeout;
        let resp = self.get(&url, Some(MANIFEST_ACCEPT), deadline)?;
        let media_type = resp
            .header("content-type")
            .map(|c| c.split(';').next().unwrap_or("").trim().to_owned())
            .filter(|c| !c.is_empty() && c != "application/json" && c != "text/plain");
        let mut bytes = Vec::new();
        resp.into_reader()
            .take(MAX_MANIFEST_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| self.body_error(url.clone(), e, 1, deadline))?;
        if bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(RegistryError::ManifestTooLarge { url });
        }
        let digest = Digest::of(&bytes);
        if let Ok(want) = selector.parse::<Digest>() {
            if want != digest {
                return Err(RegistryError::ManifestDigestMismatch {
                    reference: format!("{}@{want}", self.reference.repository()),
                    actual: digest,
                });
            }
        }
        Ok(FetchedManifest {
            digest,
            bytes,
            media_type,
        })
    }

    /// Resolves the reference to one image manifest for the wanted platform.
    pub fn image_manifest(&mut self) -> Result<(FetchedManifest, oci::Manifest), RegistryError> {
        let reference = self.reference.to_string();
        let bad = |source| RegistryError::BadManifest {
            reference: reference.clone(),
            source,
        };
        let first = self.manifest(&self.reference.manifest_selector())?;
        match oci::ManifestOrIndex::parse(first.media_type.as_deref(), &first.bytes).map_err(bad)? {
            oci::ManifestOrIndex::Manifest(m) => Ok((first, m)),
            oci::ManifestOrIndex::Index(index) => {
                let desc = oci::select_platform(&index, &self.opts.os, &self.opts.architecture)
                    .ok_or_else(|| RegistryError::NoPlatform {
                        reference: reference.clone(),
                        platform: format!("{}/{}", self.opts.os, self.opts.architecture),
                        available: index
                            .manifests
                            .iter()
                            .filter_map(|d| d.platform.as_ref())
                            .map(|p| escape(&format!("{}/{}", p.os, p.architecture)))
                            .collect::<Vec<_>>()
                            .join(", "),
                    })?
                    .clone();
                let fetched = self.manifest(&desc.digest.to_string())?;
                let media = fetched.media_type.clone().or(Some(desc.media_type.clone()));
                match oci::ManifestOrIndex::parse(media.as_deref(), &fetched.bytes).map_err(bad)? {
                    oci::ManifestOrIndex::Manifest(m) => Ok((fetched, m)),
                    oci::ManifestOrIndex::Index(_) => Err(RegistryError::NestedIndex { reference }),
                }
            }
        }
    }

    /// Downloads a blob into the store, verified against its descriptor. Interrupted
    /// downloads are retried from the start; a digest mismatch is not retried.
    pub fn blob(&mut self, blobs: &BlobStore, desc: &oci::Descriptor) -> Result<(), RegistryError> {
        if blobs.contains(&desc.digest) {
            return Ok(());
        }
        let url = format!("{}/blobs/{}", self.base, desc.digest);
        let attempts = self.opts.retries + 1;
        let mut delay = self.opts.backoff;
        let mut attempt = 0;
        let deadline = self.blob_deadline(desc.size);
        loop {
            attempt += 1;
            let resp = self.get(&url, None, deadline)?;
            let label = format!("{} {}", desc.digest.short(), short_media(&desc.media_type));
            let mut reader = ProgressReader::new(
                resp.into_reader(),
                label,
                desc.size,
                self.opts.progress.enabled(),
            );
            let expected = Expected {
                digest: &desc.digest,
                size: Some(desc.size),
            };
            match blobs.write(&mut reader, Some(expected)) {
                Ok(_) => return Ok(()),
                Err(BlobError::ReadSource(_)) if attempt < attempts => {
                    thread::sleep(delay);
                    delay = delay.saturating_mul(2).min(Duration::from_secs(30));
                }
                Err(BlobError::ReadSource(e)) => {
                    return Err(self.body_error(url, e, attempts, deadline))
                }
                Err(source) => {
                    return Err(RegistryError::Blob {
                        digest: desc.digest.clone(),
                        source,
                    })
                }
            }
        }
    }
}

/// The Mozilla roots plus the CAs in `files` (PEM).
fn tls_config(files: &[PathBuf]) -> Result<Arc<rustls::ClientConfig>, RegistryError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for path in files {
        let bad = |reason: String| RegistryError::CaCert {
            path: path.clone(),
            reason,
        };
        let mut n = 0;
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))? {
            let cert = cert.map_err(|e| bad(e.to_string()))?;
            roots.add(cert).map_err(|e| bad(e.to_string()))?;
            n += 1;
        }
        if n == 0 {
            return Err(bad("no PEM certificate in it".into()));
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(
        rustls::crypto::ring::default_provider().into(),
    )
    .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
    .map_err(|e| RegistryError::CaCert {
        path: files[0].clone(),
        reason: e.to_string(),
    })?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

fn short_media(m: &str) -> &str {
    if m.contains("config") {
        "config"
    } else {
        "layer"
    }
}

/// Whether a transport error comes from TLS (certificates, handshake): not worth retrying.
fn is_tls(t: &ureq::Transport) -> bool {
    use std::error::Error as _;
    let mut src = t.source();
    while let Some(s) = src {
        if s.is::<rustls::Error>() {
            return true;
        }
        if let Some(inner) = s.downcast_ref::<io::Error>().and_then(|io| io.get_ref()) {
            if inner.is::<rustls::Error>() {
                return true;
            }
        }
        src = s.source();
    }
    false
}

fn is_timeout(t: &ureq::Transport) -> bool {
    use std::error::Error as _;
    let mut src = t.source();
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<io::Error>() {
            if matches!(
                io.kind(),
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            ) {
                return true;
            }
        }
        src = s.source();
    }
    t.to_string().contains("timed out")
}

fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
