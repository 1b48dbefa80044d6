//! A blocking client for the Registry HTTP API v2 (the distribution spec): ping, the token
//! handshake of public registries, basic auth from a docker-style credentials file,
//! manifests and indexes, blobs with sha256 verification, retries and `Range` resume; and
//! for push, blob existence checks, monolithic blob uploads and manifest uploads.
//!
//! Plain http is used only for loopback registries and those named insecure; others must
//! speak https (rustls with the webpki roots).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;

use crate::digest::{Digest, Hasher};
use crate::error::Result;
use crate::oci::{self, Descriptor, ManifestKind, Platform};
use crate::reference::{is_loopback_host, Reference, DOCKER_HUB};
use crate::store::{BlobSource, LayerSpec, OpenedBlob};
use crate::unpack::Limits;

/// How to pull.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Platform to pick from a multi-platform image; `None` = the host's (linux/amd64 here).
    pub platform: Option<Platform>,
    /// `host[:port]` of registries that may be reached over plain http (besides loopback).
    pub insecure_registries: Vec<String>,
    /// A docker-style `config.json` with `auths`. `None`: `$ENVBOX_AUTH_FILE`, else
    /// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`, if present.
    pub credentials_file: Option<PathBuf>,
    /// Caps for unpacking each layer.
    pub limits: Limits,
    /// Layers fetched and unpacked at once.
    pub parallel: usize,
    /// Show a progress bar when stderr is a terminal.
    pub progress: bool,
    /// Attempts per request after the first, for transport errors, 5xx and 429.
    pub retries: u32,
    pub connect_timeout: Duration,
    /// Idle time on a read before the transfer counts as failed (and is retried/resumed).
    pub read_timeout: Duration,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            platform: None,
            insecure_registries: Vec::new(),
            credentials_file: None,
            limits: Limits::default(),
            parallel: 4,
            progress: true,
            retries: 4,
            connect_timeout: Duration::from_secs(15),
            read_timeout: Duration::from_secs(60),
        }
    }
}

/// Why talking to a registry failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot reach {url}: check the registry name and the network")]
    Transport {
        url: String,
        #[source]
        source: Box<ureq::Error>,
    },
    #[error("cannot reach registry {registry} over https; plain http is used only for loopback registries and those named insecure (PullOptions::insecure_registries)")]
    HttpsRequired {
        registry: String,
        #[source]
        source: Box<ureq::Error>,
    },
    #[error("{url}: HTTP {status}{hint}{body}")]
    Status { url: String, status: u16, hint: &'static str, body: String },
    #[error("{url}: HTTP 401 (access denied: check the credentials file, or whether the image is private)")]
    Unauthorized { url: String, challenge: String },
    #[error("registry {registry} requires authentication: put credentials for it in {file} (docker login format: {{\"auths\":{{\"{registry}\":{{\"auth\":\"base64(user:password)\"}}}}}})")]
    AuthRequired { registry: String, file: String },
    #[error("registry {registry} answered 401 with a challenge this client does not understand: {challenge:?}")]
    BadChallenge { registry: String, challenge: String },
    #[error("credentials file {path}: {what}")]
    Credentials { path: PathBuf, what: String },
    #[error("manifest of {reference} has digest {actual}, expected {expected}: the registry served corrupt or tampered data; nothing was stored")]
    ManifestDigest { reference: String, expected: Digest, actual: Digest },
    #[error("blob {expected} of {reference} has digest {actual}: the registry served corrupt or tampered data; nothing was stored")]
    BlobDigest { reference: String, expected: Digest, actual: Digest },
    #[error("blob {digest} of {reference} is {actual} bytes, the manifest says {expected}: corrupt or tampered; nothing was stored")]
    BlobSize { reference: String, digest: Digest, expected: u64, actual: u64 },
    #[error("{reference} has no image for {want} (it has: {available})")]
    NoPlatform { reference: String, want: String, available: String },
    #[error("{reference}: {what} is not valid JSON of the expected shape")]
    BadJson {
        reference: String,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{reference}: {what}")]
    Unsupported { reference: String, what: String },
    #[error(
        "{reference}: layer {digest} is {size} bytes, over the {limit}-byte limit (Limits::max_bytes); raise it if the image is legitimate"
    )]
    BlobTooLarge { reference: String, digest: Digest, size: u64, limit: u64 },
    #[error("{step} {path}")]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("not authorized to push to {registry}/{repository} (HTTP {status} from {url}): log in (put credentials for {registry} in {file}, docker login format) or check that they allow pushing to this repository")]
    PushDenied { registry: String, repository: String, url: String, status: u16, file: String },
    #[error("registry {registry} refused the repository name {repository:?} (HTTP {status} from {url}{body}): check the name; some registries need the repository (or its project/namespace) created before a push")]
    RepositoryRejected { registry: String, repository: String, url: String, status: u16, body: String },
    #[error("{url}: HTTP 202 without a Location header: the registry did not start an upload session")]
    NoUploadLocation { url: String },
    #[error("registry {registry} gave the upload location {location}, plain http, while it is reached over https: refusing to send the blob unencrypted")]
    InsecureUploadLocation { registry: String, location: String },
    #[error("registry says blob {digest} does not match its digest (HTTP {status} from {url}{body}): it changed in transit or on disk; push again")]
    UploadDigest { url: String, digest: Digest, status: u16, body: String },
    #[error("registry refused the manifest of {reference} (HTTP {status}{body}): a bug in the pushed manifest, or a registry that does not take OCI image manifests")]
    ManifestRejected { reference: String, status: u16, body: String },
    #[error("registry stored the manifest of {reference} as {actual}, but the manifest sent has digest {expected}: the registry changed it; pull by tag, or push again")]
    PushedManifestDigest { reference: String, expected: Digest, actual: Digest },
}

type RResult<T> = std::result::Result<T, RegistryError>;

/// A `WWW-Authenticate` challenge: scheme and parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: String,
    pub params: BTreeMap<String, String>,
}

/// Parses `Bearer realm="https://auth.example/token",service="reg",scope="repository:a:pull,push"`.
/// Values may be quoted (with `\"` escapes, commas allowed inside) or bare tokens.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = match header.split_once(char::is_whitespace) {
        Some((s, r)) => (s, r.trim_start()),
        None => (header, ""),
    };
    if scheme.is_empty() {
        return None;
    }
    let mut params = BTreeMap::new();
    let b = rest.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && (b[i] == b',' || b[i].is_ascii_whitespace()) {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let ks = i;
        while i < b.len() && b[i] != b'=' && b[i] != b',' {
            i += 1;
        }
        let key = rest[ks..i].trim().to_ascii_lowercase();
        if i >= b.len() || b[i] != b'=' {
            return None;
        }
        i += 1;
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let mut val = String::new();
        if i < b.len() && b[i] == b'"' {
            i += 1;
            let mut closed = false;
            while i < b.len() {
                match b[i] {
                    b'\\' if i + 1 < b.len() => {
                        val.push(char::from(b[i + 1]));
                        i += 2;
                    }
                    b'"' => {
                        i += 1;
                        closed = true;
                        break;
                    }
                    _ => {
                        // push the whole UTF-8 char
                        let ch = rest[i..].chars().next()?;
                        val.push(ch);
                        i += ch.len_utf8();
                    }
                }
            }
            if !closed {
                return None;
            }
        } else {
            let vs = i;
            while i < b.len() && b[i] != b',' {
                i += 1;
            }
            val = rest[vs..i].trim().to_owned();
        }
        if key.is_empty() {
            return None;
        }
        params.insert(key, val);
    }
    Some(Challenge { scheme: scheme.to_ascii_lowercase(), params })
}

/// Finds `user:password` for `registry` in a docker-style config.json.
pub fn lookup_credentials(config_json: &[u8], registry: &str) -> std::result::Result<Option<(String, String)>, String> {
    #[derive(Deserialize)]
    struct File {
        #[serde(default)]
        auths: BTreeMap<String, Entry>,
    }
    #[derive(Deserialize)]
    struct Entry {
        auth: Option<String>,
        username: Option<String>,
        password: Option<String>,
    }
    let f: File = serde_json::from_slice(config_json).map_err(|e| format!("not valid JSON: {e}"))?;
    let wanted: Vec<&str> =
        if registry == DOCKER_HUB { vec!["docker.io", "index.docker.io", "registry-1.docker.io"] } else { vec![registry] };
    for (key, entry) in &f.auths {
        let host = key.trim_start_matches("https://").trim_start_matches("http://");
        let host = host.split('/').next().unwrap_or("");
        if !wanted.contains(&host) {
            continue;
        }
        if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
            return Ok(Some((u.clone(), p.clone())));
        }
        if let Some(a) = &entry.auth {
            let raw = base64::engine::general_purpose::STANDARD.decode(a.trim()).map_err(|_| format!("auths.{key}.auth is not base64"))?;
            let s = String::from_utf8(raw).map_err(|_| format!("auths.{key}.auth is not UTF-8"))?;
            let (u, p) = s.split_once(':').ok_or_else(|| format!("auths.{key}.auth is not base64 of user:password"))?;
            return Ok(Some((u.to_owned(), p.to_owned())));
        }
    }
    Ok(None)
}

fn default_credentials_file() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ENVBOX_AUTH_FILE").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(p));
    }
    if let Some(d) = std::env::var_os("DOCKER_CONFIG").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(d).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
}

/// The token scopes to ask for. A pull asks for what the challenge names (or
/// `repository:<repo>:pull`); a push always asks for `repository:<repo>:pull,push`, plus a
/// different scope the challenge names, so one token serves the checks and the uploads.
pub(crate) fn token_scopes(challenge_scope: Option<&str>, repository: &str, push: bool) -> Vec<String> {
    if !push {
        return vec![challenge_scope.map_or_else(|| format!("repository:{repository}:pull"), str::to_owned)];
    }
    let ours = format!("repository:{repository}:pull,push");
    match challenge_scope {
        Some(c) if c != ours => vec![ours, c.to_owned()],
        _ => vec![ours],
    }
}

/// The body of a push-side request. A file is opened again for each attempt.
#[derive(Clone, Copy)]
pub(crate) enum Body<'a> {
    None,
    Bytes(&'a [u8]),
    File { path: &'a Path, size: u64 },
}

impl Body<'_> {
    fn len(&self) -> u64 {
        match self {
            Body::None => 0,
            Body::Bytes(b) => b.len() as u64,
            Body::File { size, .. } => *size,
        }
    }
}

/// Which push request failed with an unexpected status: it decides what a 400 or 404 means.
#[derive(Clone, Copy)]
enum PushStep<'a> {
    Check,
    StartUpload,
    Upload(&'a Digest),
    Manifest,
}

/// A connection to one repository of one registry.
pub(crate) struct Registry {
    agent: ureq::Agent,
    base: String,
    reference: Reference,
    /// Connected to push: the token handshake asks for push access too.
    push: bool,
    creds: Option<(String, String)>,
    creds_file: String,
    authorization: Mutex<Option<String>>,
    retries: u32,
    /// A layer blob larger than this is refused before downloading (the unpack cap).
    max_blob: u64,
    /// Loopback or named insecure: plain http (registry and token realm) is acceptable.
    plain_ok: bool,
    progress: Option<indicatif::MultiProgress>,
}

fn status_hint(status: u16) -> &'static str {
    match status {
        401 | 403 => " (access denied: check the credentials file, or whether the image is private)",
        404 => " (not found: check the image name and tag)",
        429 => " (rate limited by the registry: wait, or log in for a higher limit)",
        500..=599 => " (registry error: try again later)",
        _ => "",
    }
}

fn transient(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::Transport(_) => true,
        ureq::Error::Status(s, _) => *s == 429 || *s >= 500,
    }
}

impl Registry {
    /// Connects: picks https or (loopback/insecure only) http, reads credentials, and does
    /// the auth handshake on the `/v2/` ping.
    pub fn connect(reference: &Reference, opts: &PullOptions) -> Result<Registry> {
        Registry::connect_with(reference, opts, false)
    }

    /// [`Registry::connect`] for a push: tokens are asked for with push access.
    pub fn connect_for_push(reference: &Reference, opts: &PullOptions) -> Result<Registry> {
        Registry::connect_with(reference, opts, true)
    }

    fn connect_with(reference: &Reference, opts: &PullOptions, push: bool) -> Result<Registry> {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(opts.connect_timeout)
            .timeout_read(opts.read_timeout)
            // a stalled peer must not hang an upload (or a request) for ever
            .timeout_write(opts.read_timeout)
            .redirects(8)
            .user_agent(concat!("envbox/", env!("CARGO_PKG_VERSION")))
            .build();
        let host = reference.api_host();
        let creds_path = opts.credentials_file.clone().or_else(default_credentials_file);
        let creds = match &creds_path {
            Some(p) => match fs::read(p) {
                Ok(b) => {
                    lookup_credentials(&b, reference.registry()).map_err(|what| RegistryError::Credentials { path: p.clone(), what })?
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound && opts.credentials_file.is_none() => None,
                Err(source) => return Err(RegistryError::Io { step: "reading credentials file", path: p.clone(), source }.into()),
            },
            None => None,
        };
        let progress = (opts.progress && io::stderr().is_terminal()).then(indicatif::MultiProgress::new);
        let mut reg = Registry {
            agent,
            base: format!("https://{host}"),
            reference: reference.clone(),
            push,
            creds,
            creds_file: creds_path.map_or_else(|| "~/.docker/config.json".into(), |p| p.display().to_string()),
            authorization: Mutex::new(None),
            retries: opts.retries,
            max_blob: opts.limits.max_bytes,
            plain_ok: is_loopback_host(host) || opts.insecure_registries.iter().any(|r| r == host || r == reference.registry()),
            progress,
        };
        let plain_ok = reg.plain_ok;
        // The https probe is not retried where plain http is allowed: a registry that speaks
        // only http fails the TLS handshake at once, and waiting would only delay the fallback.
        let probe_tries = if plain_ok { 0 } else { reg.retries };
        let ping = match reg.raw_get_tries("/v2/", None, None, probe_tries) {
            Err(RegistryError::Transport { .. }) if plain_ok => {
                reg.base = format!("http://{host}");
                reg.raw_get("/v2/", None, None)
            }
            Err(RegistryError::Transport { source, .. }) => {
                return Err(RegistryError::HttpsRequired { registry: host.to_owned(), source }.into());
            }
            other => other,
        };
        match ping {
            Ok(_) => {}
            Err(RegistryError::Unauthorized { .. }) => {} // answered at the first real request
            Err(e) => return Err(e.into()),
        }
        Ok(reg)
    }

    fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        }
    }

    /// One GET with retries on transient errors; no auth handling.
    fn raw_get(&self, path: &str, accept: Option<&str>, range: Option<u64>) -> RResult<ureq::Response> {
        self.raw_get_tries(path, accept, range, self.retries)
    }

    fn raw_get_tries(&self, path: &str, accept: Option<&str>, range: Option<u64>, retries: u32) -> RResult<ureq::Response> {
        let url = self.url(path);
        let mut attempt = 0;
        loop {
            let mut req = self.agent.get(&url);
            if let Some(a) = accept {
                req = req.set("Accept", a);
            }
            if let Some(auth) = self.authorization.lock().expect("auth lock").clone() {
                req = req.set("Authorization", &auth);
            }
            if let Some(from) = range {
                req = req.set("Range", &format!("bytes={from}-"));
            }
            match req.call() {
                Ok(r) => return Ok(r),
                Err(e) if transient(&e) && attempt < retries => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(200 << attempt.min(5)));
                }
                Err(ureq::Error::Status(status, resp)) => {
                    let challenge = resp.header("www-authenticate").map(str::to_owned);
                    let mut body = String::new();
                    let _ = resp.into_reader().take(512).read_to_string(&mut body);
                    let body = if body.trim().is_empty() { String::new() } else { format!(": {}", body.trim()) };
                    if status == 401 {
                        return Err(RegistryError::Unauthorized { url, challenge: challenge.unwrap_or_default() });
                    }
                    return Err(RegistryError::Status { url, status, hint: status_hint(status), body });
                }
                Err(e) => return Err(RegistryError::Transport { url, source: Box::new(e) }),
            }
        }
    }

    /// GET with auth: on 401, answers the challenge (token or basic) once and retries.
    fn get(&self, path: &str, accept: Option<&str>, range: Option<u64>) -> RResult<ureq::Response> {
        match self.raw_get(path, accept, range) {
            Err(RegistryError::Unauthorized { challenge, .. }) => {
                self.authenticate(&challenge)?;
                self.raw_get(path, accept, range)
            }
            other => other,
        }
    }

    fn authenticate(&self, challenge: &str) -> RResult<()> {
        let registry = self.reference.registry().to_owned();
        let c = parse_challenge(challenge)
            .ok_or_else(|| RegistryError::BadChallenge { registry: registry.clone(), challenge: challenge.into() })?;
        let basic =
            self.creds.as_ref().map(|(u, p)| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))));
        let header = match c.scheme.as_str() {
            "basic" => basic.ok_or_else(|| RegistryError::AuthRequired { registry: registry.clone(), file: self.creds_file.clone() })?,
            "bearer" => {
                let realm = c
                    .params
                    .get("realm")
                    .ok_or_else(|| RegistryError::BadChallenge { registry: registry.clone(), challenge: challenge.into() })?;
                if realm.starts_with("http://") && !self.plain_ok {
                    return Err(RegistryError::BadChallenge {
                        registry,
                        challenge: format!("{challenge} (a token realm over plain http is refused for a registry reached over https)"),
                    });
                }
                let mut req = self.agent.get(realm);
                for scope in token_scopes(c.params.get("scope").map(String::as_str), self.reference.repository(), self.push) {
                    req = req.query("scope", &scope);
                }
                if let Some(service) = c.params.get("service") {
                    req = req.query("service", service);
                }
                if let Some(b) = &basic {
                    req = req.set("Authorization", b);
                }
                let resp = req.call().map_err(|e| match e {
                    ureq::Error::Status(401 | 403, _) => {
                        RegistryError::AuthRequired { registry: registry.clone(), file: self.creds_file.clone() }
                    }
                    e => RegistryError::Transport { url: realm.clone(), source: Box::new(e) },
                })?;
                #[derive(Deserialize)]
                struct Token {
                    token: Option<String>,
                    access_token: Option<String>,
                }
                let mut body = Vec::new();
                resp.into_reader().take(1 << 20).read_to_end(&mut body).map_err(|source| RegistryError::Io {
                    step: "reading token from",
                    path: realm.into(),
                    source,
                })?;
                let t: Token = serde_json::from_slice(&body).map_err(|source| RegistryError::BadJson {
                    reference: self.reference.to_string(),
                    what: "token response",
                    source,
                })?;
                let t = t.token.or(t.access_token).ok_or_else(|| RegistryError::BadChallenge {
                    registry: registry.clone(),
                    challenge: "token response without token".into(),
                })?;
                format!("Bearer {t}")
            }
            _ => return Err(RegistryError::BadChallenge { registry, challenge: challenge.into() }),
        };
        *self.authorization.lock().expect("auth lock") = Some(header);
        Ok(())
    }

    /// Fetches a manifest by tag or digest, verifying its digest when one is known (asked
    /// for, or announced in `Docker-Content-Digest`). Returns (digest, bytes, content type).
    fn manifest(&self, reference: &str, expected: Option<&Digest>) -> RResult<(Digest, Vec<u8>, Option<String>)> {
        let path = format!("/v2/{}/manifests/{reference}", self.reference.repository());
        let resp = self.get(&path, Some(oci::MANIFEST_ACCEPT), None)?;
        let ctype = resp.header("content-type").map(str::to_owned);
        let announced = resp.header("docker-content-digest").and_then(|d| d.parse::<Digest>().ok());
        let mut bytes = Vec::new();
        resp.into_reader().take(8 << 20).read_to_end(&mut bytes).map_err(|source| RegistryError::Io {
            step: "reading manifest",
            path: self.url(&path).into(),
            source,
        })?;
        let actual = Digest::of(&bytes);
        if let Some(exp) = expected.or(announced.as_ref()) {
            if *exp != actual {
                return Err(RegistryError::ManifestDigest { reference: self.reference.to_string(), expected: exp.clone(), actual });
            }
        }
        Ok((actual, bytes, ctype))
    }

    /// Resolves the reference to a single-platform image manifest.
    pub fn resolve(&self, platform: &Platform) -> Result<(Digest, Vec<u8>, oci::Manifest)> {
        let r = self.reference.to_string();
        let (mut digest, mut bytes, mut ctype) = self.manifest(&self.reference.manifest_ref(), self.reference.digest())?;
        for _ in 0..4 {
            let kind = ManifestKind::parse(&bytes, ctype.as_deref()).map_err(|source| RegistryError::BadJson {
                reference: r.clone(),
                what: "manifest",
                source,
            })?;
            match kind {
                ManifestKind::Image(m) => {
                    if m.schema_version != 2 {
                        return Err(RegistryError::Unsupported { reference: r, what: "schema1 manifests are not supported".into() }.into());
                    }
                    return Ok((digest, bytes, m));
                }
                ManifestKind::Index(i) => {
                    let Some(d) = oci::select_platform(&i, platform) else {
                        let available: Vec<String> = i
                            .manifests
                            .iter()
                            .filter_map(|d| d.platform.as_ref())
                            .map(|p| {
                                format!("{}/{}{}", p.os, p.architecture, p.variant.as_ref().map(|v| format!("/{v}")).unwrap_or_default())
                            })
                            .collect();
                        return Err(RegistryError::NoPlatform {
                            reference: r,
                            want: format!("{}/{}", platform.os, platform.architecture),
                            available: available.join(", "),
                        }
                        .into());
                    };
                    let d = d.digest.clone();
                    (digest, bytes, ctype) = self.manifest(&d.to_string(), Some(&d))?;
                }
            }
        }
        Err(RegistryError::Unsupported { reference: r, what: "image indexes nested too deep".into() }.into())
    }

    /// A small blob (the config) in memory, verified.
    pub fn small_blob(&self, desc: &Descriptor) -> Result<Vec<u8>> {
        let path = format!("/v2/{}/blobs/{}", self.reference.repository(), desc.digest);
        let resp = self.get(&path, None, None)?;
        let mut bytes = Vec::new();
        resp.into_reader().take(desc.size.min(64 << 20) + 1).read_to_end(&mut bytes).map_err(|source| RegistryError::Io {
            step: "reading blob",
            path: self.url(&path).into(),
            source,
        })?;
        let actual = Digest::of(&bytes);
        if actual != desc.digest {
            return Err(RegistryError::BlobDigest { reference: self.reference.to_string(), expected: desc.digest.clone(), actual }.into());
        }
        Ok(bytes)
    }

    /// Downloads a blob to `dest`, resuming with `Range` after a broken transfer, and
    /// verifies its size and digest.
    fn download(&self, desc: &Descriptor, dest: &Path) -> RResult<()> {
        let path = format!("/v2/{}/blobs/{}", self.reference.repository(), desc.digest);
        let io_err = |step| move |source| RegistryError::Io { step, path: dest.to_path_buf(), source };
        let mut file = File::create(dest).map_err(io_err("creating"))?;
        let mut hasher = Hasher::default();
        let mut have: u64 = 0;
        let bar = self.progress.as_ref().map(|m| {
            let b = m.add(indicatif::ProgressBar::new(desc.size));
            b.set_style(
                indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
                    .expect("template")
                    .progress_chars("=> "),
            );
            b.set_prefix(desc.digest.hex()[..12].to_owned());
            b
        });
        let mut failures = 0;
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let resp = self.get(&path, None, (have > 0).then_some(have))?;
            if have > 0 && resp.status() != 206 {
                // The server ignored Range: start over.
                file = File::create(dest).map_err(io_err("truncating"))?;
                hasher = Hasher::default();
                have = 0;
            }
            let mut reader = resp.into_reader();
            let res: io::Result<()> = loop {
                match reader.read(&mut buf) {
                    Ok(0) => break Ok(()),
                    Ok(n) => {
                        if let Err(e) = file.write_all(&buf[..n]) {
                            return Err(io_err("writing")(e));
                        }
                        hasher.update(&buf[..n]);
                        have += n as u64;
                        if let Some(b) = &bar {
                            b.set_position(have);
                        }
                        if have > desc.size {
                            break Ok(());
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(e),
                }
            };
            match res {
                Ok(()) if have >= desc.size => break,
                // A short body or a broken connection: resume from what we have.
                Ok(()) | Err(_) if failures < self.retries => {
                    failures += 1;
                    std::thread::sleep(Duration::from_millis(100 << failures.min(5)));
                }
                Ok(()) => break,
                Err(e) => return Err(io_err("downloading blob to")(e)),
            }
        }
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        if have != desc.size {
            return Err(RegistryError::BlobSize {
                reference: self.reference.to_string(),
                digest: desc.digest.clone(),
                expected: desc.size,
                actual: have,
            });
        }
        let actual = hasher.finish();
        if actual != desc.digest {
            return Err(RegistryError::BlobDigest { reference: self.reference.to_string(), expected: desc.digest.clone(), actual });
        }
        Ok(())
    }
}

/// The push side: existence checks, uploads and the manifest. Every request answers a 401
/// challenge once ([`Registry::send`]); each step is retried whole on transient errors.
impl Registry {
    /// Whether `url` goes to the registry itself (and so may carry its `Authorization`).
    fn same_origin(&self, url: &str) -> bool {
        url.strip_prefix(&self.base).is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'))
    }

    /// One request, answering a 401 challenge once; returns the response whatever its status
    /// (the caller decides what each means). Only a transport failure is an error.
    fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Body<'_>,
        bar: Option<&indicatif::ProgressBar>,
    ) -> RResult<ureq::Response> {
        let mut answered = false;
        loop {
            let mut req = self.agent.request(method, url);
            for (k, v) in headers {
                req = req.set(k, v);
            }
            if self.same_origin(url) {
                if let Some(auth) = self.authorization.lock().expect("auth lock").clone() {
                    req = req.set("Authorization", &auth);
                }
            }
            let res = match body {
                Body::None => req.call(),
                Body::Bytes(b) => req.send_bytes(b),
                Body::File { path, size } => {
                    let f = File::open(path).map_err(|source| RegistryError::Io { step: "opening", path: path.to_path_buf(), source })?;
                    // a known length: sent as is, not chunked
                    let req = req.set("Content-Length", &size.to_string());
                    match bar {
                        Some(b) => {
                            b.set_position(0);
                            req.send(b.wrap_read(f))
                        }
                        None => req.send(f),
                    }
                }
            };
            let resp = match res {
                Ok(r) | Err(ureq::Error::Status(_, r)) => r,
                Err(e) => return Err(RegistryError::Transport { url: url.to_owned(), source: Box::new(e) }),
            };
            if resp.status() == 401 && !answered && self.same_origin(url) {
                let challenge = resp.header("www-authenticate").unwrap_or_default().to_owned();
                self.authenticate(&challenge)?;
                answered = true;
                continue;
            }
            return Ok(resp);
        }
    }

    /// Runs `step` again after a transport error, a 429 or a 5xx, up to `retries` times.
    fn with_retries<T>(&self, mut step: impl FnMut() -> RResult<T>) -> RResult<T> {
        let mut attempt = 0;
        loop {
            match step() {
                Err(e) if attempt < self.retries && retryable(&e) => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(200 << attempt.min(5)));
                }
                r => return r,
            }
        }
    }

    /// The error for an unexpected status of a push request.
    fn push_error(&self, url: &str, resp: ureq::Response, step: PushStep<'_>) -> RegistryError {
        let status = resp.status();
        let mut text = String::new();
        let _ = resp.into_reader().take(2048).read_to_string(&mut text);
        let body = if text.trim().is_empty() { String::new() } else { format!(": {}", text.trim()) };
        let (registry, repository, url) = (self.reference.registry().to_owned(), self.reference.repository().to_owned(), url.to_owned());
        match (status, step) {
            (401 | 403, _) => RegistryError::PushDenied { registry, repository, url, status, file: self.creds_file.clone() },
            (404, PushStep::StartUpload | PushStep::Manifest) => {
                RegistryError::RepositoryRejected { registry, repository, url, status, body }
            }
            (400, PushStep::StartUpload) if text.contains("NAME_INVALID") => {
                RegistryError::RepositoryRejected { registry, repository, url, status, body }
            }
            (400, PushStep::Upload(d)) if text.contains("DIGEST_INVALID") => {
                RegistryError::UploadDigest { url, digest: d.clone(), status, body }
            }
            (400, PushStep::Manifest) => RegistryError::ManifestRejected { reference: self.reference.to_string(), status, body },
            _ => {
                let hint = match status {
                    429 | 500..=599 => status_hint(status),
                    _ => "",
                };
                RegistryError::Status { url, status, hint, body }
            }
        }
    }

    /// Whether the repository has blob `digest` (`HEAD /v2/<repo>/blobs/<digest>`).
    pub(crate) fn blob_exists(&self, digest: &Digest) -> RResult<bool> {
        let url = self.url(&format!("/v2/{}/blobs/{digest}", self.reference.repository()));
        self.with_retries(|| {
            let resp = self.send("HEAD", &url, &[], Body::None, None)?;
            match resp.status() {
                200 => Ok(true),
                404 => Ok(false),
                _ => Err(self.push_error(&url, resp, PushStep::Check)),
            }
        })
    }

    /// Where to `PUT` the blob, from the `Location` of a new upload session (absolute, or
    /// relative to `start`), with `digest` added to its query.
    fn upload_url(&self, start: &str, location: &str, digest: &Digest) -> RResult<String> {
        let url = if location.starts_with("http://") || location.starts_with("https://") {
            if location.starts_with("http://") && !self.plain_ok {
                return Err(RegistryError::InsecureUploadLocation {
                    registry: self.reference.registry().to_owned(),
                    location: location.to_owned(),
                });
            }
            location.to_owned()
        } else if location.starts_with('/') {
            format!("{}{location}", self.base)
        } else {
            let dir = start.rsplit_once('/').map_or(start, |(d, _)| d);
            format!("{dir}/{location}")
        };
        let sep = if url.contains('?') { '&' } else { '?' };
        Ok(format!("{url}{sep}digest={digest}"))
    }

    /// Uploads a blob in one piece: `POST /v2/<repo>/blobs/uploads/`, then `PUT` the bytes to
    /// the session's location. A failed attempt starts a new session.
    pub(crate) fn upload_blob(&self, digest: &Digest, body: Body<'_>) -> RResult<()> {
        let start = self.url(&format!("/v2/{}/blobs/uploads/", self.reference.repository()));
        let bar = self.progress.as_ref().map(|m| {
            let b = m.add(indicatif::ProgressBar::new(body.len()));
            b.set_style(
                indicatif::ProgressStyle::with_template("{prefix} push [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
                    .expect("template")
                    .progress_chars("=> "),
            );
            b.set_prefix(digest.hex()[..12].to_owned());
            b
        });
        let res = self.with_retries(|| {
            let resp = self.send("POST", &start, &[], Body::Bytes(&[]), None)?;
            if resp.status() != 202 {
                return Err(self.push_error(&start, resp, PushStep::StartUpload));
            }
            let location = resp.header("location").ok_or_else(|| RegistryError::NoUploadLocation { url: start.clone() })?.to_owned();
            let put = self.upload_url(&start, &location, digest)?;
            let resp = self.send("PUT", &put, &[("Content-Type", "application/octet-stream")], body, bar.as_ref())?;
            if !(200..300).contains(&resp.status()) {
                return Err(self.push_error(&put, resp, PushStep::Upload(digest)));
            }
            match resp.header("docker-content-digest").map(str::parse::<Digest>) {
                Some(Ok(d)) if d != *digest => Err(RegistryError::UploadDigest {
                    url: put.clone(),
                    digest: digest.clone(),
                    status: resp.status(),
                    body: format!(": stored as {d}"),
                }),
                _ => Ok(()),
            }
        });
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        res
    }

    /// `PUT /v2/<repo>/manifests/<tag>`; checks the digest the registry announces.
    pub(crate) fn put_manifest(&self, tag: &str, bytes: &[u8], media_type: &str) -> RResult<()> {
        let url = self.url(&format!("/v2/{}/manifests/{tag}", self.reference.repository()));
        let sent = Digest::of(bytes);
        self.with_retries(|| {
            let resp = self.send("PUT", &url, &[("Content-Type", media_type)], Body::Bytes(bytes), None)?;
            if !(200..300).contains(&resp.status()) {
                return Err(self.push_error(&url, resp, PushStep::Manifest));
            }
            match resp.header("docker-content-digest").map(str::parse::<Digest>) {
                Some(Ok(d)) if d != sent => {
                    Err(RegistryError::PushedManifestDigest { reference: self.reference.to_string(), expected: sent.clone(), actual: d })
                }
                _ => Ok(()),
            }
        })
    }
}

/// Worth another attempt: the network, a rate limit or a registry error.
fn retryable(e: &RegistryError) -> bool {
    match e {
        RegistryError::Transport { .. } => true,
        RegistryError::Status { status, .. } => *status == 429 || *status >= 500,
        _ => false,
    }
}

impl BlobSource for Registry {
    fn open_layer(&self, layer: &LayerSpec, scratch: &Path) -> Result<OpenedBlob> {
        let desc = layer.blob.as_ref().expect("registry layers have descriptors");
        if !oci::is_layer_media_type(&desc.media_type) && !desc.media_type.is_empty() {
            return Err(RegistryError::Unsupported {
                reference: self.reference.to_string(),
                what: format!("layer {} has media type {}, which is not an image layer", desc.digest, desc.media_type),
            }
            .into());
        }
        if desc.size > self.max_blob {
            return Err(RegistryError::BlobTooLarge {
                reference: self.reference.to_string(),
                digest: desc.digest.clone(),
                size: desc.size,
                limit: self.max_blob,
            }
            .into());
        }
        let dest = scratch.join("blob");
        self.download(desc, &dest)?;
        let f = File::open(&dest).map_err(|source| RegistryError::Io { step: "opening", path: dest.clone(), source })?;
        Ok(OpenedBlob { reader: Box::new(f), verified: true })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/python:pull""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.params["realm"], "https://auth.docker.io/token");
        assert_eq!(c.params["service"], "registry.docker.io");
        assert_eq!(c.params["scope"], "repository:library/python:pull");
        // commas inside quotes, escapes, bare values, odd spacing, case
        let c =
            parse_challenge(r#"bearer  Realm = "https://a/t" , scope="repository:a:pull,push",  error=insufficient_scope, x="q\"uote""#)
                .unwrap();
        assert_eq!(c.params["realm"], "https://a/t");
        assert_eq!(c.params["scope"], "repository:a:pull,push");
        assert_eq!(c.params["error"], "insufficient_scope");
        assert_eq!(c.params["x"], "q\"uote");
        let c = parse_challenge(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!(c.scheme, "basic");
        assert_eq!(c.params["realm"], "Registry Realm");
        assert_eq!(parse_challenge("Basic").unwrap().params.len(), 0);
        assert!(parse_challenge("").is_none());
        assert!(parse_challenge(r#"Bearer realm="unterminated"#).is_none());
        assert!(parse_challenge("Bearer realm").is_none());
    }

    #[test]
    fn token_scopes_for_pull_and_push() {
        // pull: unchanged, the challenge's scope or pull on the repository
        assert_eq!(token_scopes(None, "team/x", false), vec!["repository:team/x:pull"]);
        assert_eq!(token_scopes(Some("repository:team/x:pull"), "team/x", false), vec!["repository:team/x:pull"]);
        // push: always pull,push on the repository, plus a different scope the challenge names
        assert_eq!(token_scopes(None, "team/x", true), vec!["repository:team/x:pull,push"]);
        assert_eq!(token_scopes(Some("repository:team/x:pull,push"), "team/x", true), vec!["repository:team/x:pull,push"]);
        assert_eq!(
            token_scopes(Some("repository:team/x:pull"), "team/x", true),
            vec!["repository:team/x:pull,push", "repository:team/x:pull"]
        );
    }

    #[test]
    fn credentials_lookup() {
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cr:et");
        let cfg = format!(
            r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{auth}"}},"registry.example:5000":{{"username":"bob","password":"pw"}},"bad.example":{{"auth":"!!"}}}}}}"#
        );
        assert_eq!(lookup_credentials(cfg.as_bytes(), "docker.io").unwrap(), Some(("alice".into(), "s3cr:et".into())));
        assert_eq!(lookup_credentials(cfg.as_bytes(), "registry.example:5000").unwrap(), Some(("bob".into(), "pw".into())));
        assert_eq!(lookup_credentials(cfg.as_bytes(), "other.example").unwrap(), None);
        assert!(lookup_credentials(cfg.as_bytes(), "bad.example").unwrap_err().contains("base64"));
        assert!(lookup_credentials(b"{", "x").is_err());
        assert_eq!(lookup_credentials(b"{}", "x").unwrap(), None);
    }
}
