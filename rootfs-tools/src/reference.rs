//! Image references the way Docker spells them: `python:3.12-slim`,
//! `registry.example:5000/team/env:v2`, `alpine@sha256:…`, `localhost/x`.
//!
//! Rules (those of distribution/reference, which `docker pull` uses):
//! - the first `/`-separated component is a registry host only if it contains `.` or `:`, is
//!   `localhost`, or has an uppercase letter; otherwise the registry is `docker.io`;
//! - on `docker.io` a single-component name gets `library/` (`python` → `library/python`),
//!   and `index.docker.io` is the same registry;
//! - repository components are lowercase `[a-z0-9]+` joined by `.`, `_`, `__` or runs of `-`;
//!   the whole repository path is at most 255 characters;
//! - a tag is `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`; no tag and no digest means `latest`;
//! - a digest is `sha256:<64 hex>`; with both (`name:tag@digest`) the digest decides what is
//!   pulled and the tag is kept for display.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::digest::{Digest, DigestError};

/// The registry that names without a host refer to.
pub const DOCKER_HUB: &str = "docker.io";
/// The host that actually serves Docker Hub's v2 API.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";
const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

/// Why an image reference was refused. Every message quotes the input.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    #[error("empty image reference: name an image such as python:3.12-slim")]
    Empty,
    #[error("image reference {input:?} contains whitespace or a control character")]
    BadCharacter { input: String },
    #[error("image reference {input:?} has an empty path component (doubled, leading or trailing '/')")]
    EmptyComponent { input: String },
    #[error(
        "image reference {input:?}: repository component {component:?} is invalid: use lowercase letters, digits and \
         single '.', '_', '__' or '-' separators between them"
    )]
    BadComponent { input: String, component: String },
    #[error("image reference {input:?}: registry host {host:?} is invalid (expected host, host:port or [ipv6]:port)")]
    BadRegistry { input: String, host: String },
    #[error("image reference {input:?}: repository name is longer than {MAX_NAME_LEN} characters")]
    NameTooLong { input: String },
    #[error("image reference {input:?}: tag {tag:?} is invalid: up to 128 of [A-Za-z0-9_.-], not starting with '.' or '-'")]
    BadTag { input: String, tag: String },
    #[error("image reference {input:?}: bad digest")]
    BadDigest {
        input: String,
        #[source]
        source: DigestError,
    },
    #[error("image reference {input:?} has no repository name after the registry host")]
    NoRepository { input: String },
}

/// A parsed, normalised image reference.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// Parses `input` (see the module doc for the rules).
    pub fn parse(input: &str) -> Result<Reference, ReferenceError> {
        if input.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if input.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ReferenceError::BadCharacter { input: input.to_owned() });
        }
        // name[:tag][@digest]: the digest is after the only '@'.
        let (rest, digest) = match input.split_once('@') {
            Some((rest, d)) => {
                let digest = d.parse::<Digest>().map_err(|source| ReferenceError::BadDigest { input: input.to_owned(), source })?;
                (rest, Some(digest))
            }
            None => (input, None),
        };
        // A tag is after the last ':' that follows the last '/' (a ':' before it is a port).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(tag) = tag {
            if !valid_tag(tag) {
                return Err(ReferenceError::BadTag { input: input.to_owned(), tag: tag.to_owned() });
            }
        }
        if name.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if name.split('/').any(str::is_empty) {
            return Err(ReferenceError::EmptyComponent { input: input.to_owned() });
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, path)) if looks_like_host(first) => (first, path),
            _ => (DOCKER_HUB, name),
        };
        if registry != DOCKER_HUB && !valid_host(registry) {
            return Err(ReferenceError::BadRegistry { input: input.to_owned(), host: registry.to_owned() });
        }
        let registry = if registry == "index.docker.io" { DOCKER_HUB } else { registry };
        if path.is_empty() {
            return Err(ReferenceError::NoRepository { input: input.to_owned() });
        }
        for component in path.split('/') {
            if !valid_component(component) {
                return Err(ReferenceError::BadComponent { input: input.to_owned(), component: component.to_owned() });
            }
        }
        let repository = if registry == DOCKER_HUB && !path.contains('/') { format!("library/{path}") } else { path.to_owned() };
        if repository.len() > MAX_NAME_LEN {
            return Err(ReferenceError::NameTooLong { input: input.to_owned() });
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_owned()),
            (None, None) => Some("latest".to_owned()),
            (None, Some(_)) => None,
        };
        Ok(Reference { registry: registry.to_owned(), repository, tag, digest })
    }

    /// Registry as named (`docker.io`, `registry.example:5000`, `localhost`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The `host[:port]` that serves the v2 API (`registry-1.docker.io` for Docker Hub).
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// Repository path (`library/python`, `team/env`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag; `latest` when the input had neither tag nor digest, `None` for a digest-only reference.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The pinned manifest digest, if any.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// What to ask the registry's `/manifests/` endpoint for: the digest if pinned, else the tag.
    pub fn manifest_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_owned(),
        }
    }

    /// The short form `docker images` prints: no `docker.io/`, no `library/`.
    pub fn familiar(&self) -> String {
        let mut s = if self.registry == DOCKER_HUB {
            self.repository.strip_prefix("library/").unwrap_or(&self.repository).to_owned()
        } else {
            format!("{}/{}", self.registry, self.repository)
        };
        push_suffix(&mut s, self.tag.as_deref(), self.digest.as_ref());
        s
    }

    /// `host` with its port stripped, for loopback checks.
    pub fn is_loopback(&self) -> bool {
        is_loopback_host(&self.registry)
    }
}

fn push_suffix(s: &mut String, tag: Option<&str>, digest: Option<&Digest>) {
    if let Some(t) = tag {
        s.push(':');
        s.push_str(t);
    }
    if let Some(d) = digest {
        s.push('@');
        s.push_str(&d.to_string());
    }
}

/// True for `localhost`, `127.x.y.z` and `[::1]`, with or without a port.
pub fn is_loopback_host(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        registry.rsplit_once(':').map_or(registry, |(h, _)| h)
    };
    host == "localhost" || host == "::1" || host.parse::<std::net::Ipv4Addr>().is_ok_and(|a| a.is_loopback())
}

fn looks_like_host(first: &str) -> bool {
    first.contains(['.', ':']) || first == "localhost" || first.chars().any(|c| c.is_ascii_uppercase()) || first.starts_with('[')
}

fn valid_host(host: &str) -> bool {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        // [ipv6]:port
        let Some((addr, after)) = rest.split_once(']') else { return false };
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            p => match p.strip_prefix(':') {
                Some(port) => ("ok", Some(port)),
                None => return false,
            },
        }
    } else {
        match host.rsplit_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (host, None),
        }
    };
    if let Some(port) = port {
        if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) || port.parse::<u16>().is_err() {
            return false;
        }
    }
    !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn valid_component(c: &str) -> bool {
    // [a-z0-9]+ ( ( '.' | '_' | '__' | '-'+ ) [a-z0-9]+ )*
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_TAG_LEN
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter().all(|&x| x.is_ascii_alphanumeric() || x == b'_' || x == b'.' || x == b'-')
}

impl fmt::Display for Reference {
    /// The canonical form, e.g. `docker.io/library/python:3.12-slim`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = format!("{}/{}", self.registry, self.repository);
        push_suffix(&mut s, self.tag.as_deref(), self.digest.as_ref());
        f.write_str(&s)
    }
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reference({self})")
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Reference, ReferenceError> {
        Reference::parse(s)
    }
}

impl Serialize for Reference {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Reference {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Reference, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn p(s: &str) -> Reference {
        Reference::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn parts(s: &str) -> (String, String, Option<String>, Option<String>) {
        let r = p(s);
        (r.registry().to_owned(), r.repository().to_owned(), r.tag().map(str::to_owned), r.digest().map(|d| d.to_string()))
    }

    fn t(reg: &str, repo: &str, tag: Option<&str>, digest: Option<&str>) -> (String, String, Option<String>, Option<String>) {
        (reg.to_owned(), repo.to_owned(), tag.map(str::to_owned), digest.map(str::to_owned))
    }

    #[test]
    fn docker_hub_defaults() {
        assert_eq!(parts("python"), t("docker.io", "library/python", Some("latest"), None));
        assert_eq!(parts("python:3.12-slim"), t("docker.io", "library/python", Some("3.12-slim"), None));
        assert_eq!(parts("library/python:3"), t("docker.io", "library/python", Some("3"), None));
        assert_eq!(parts("team/env"), t("docker.io", "team/env", Some("latest"), None));
        assert_eq!(parts("docker.io/python"), t("docker.io", "library/python", Some("latest"), None));
        assert_eq!(parts("index.docker.io/python"), t("docker.io", "library/python", Some("latest"), None));
        assert_eq!(parts("docker.io/team/env:v2"), t("docker.io", "team/env", Some("v2"), None));
        assert_eq!(p("python").api_host(), "registry-1.docker.io");
        assert_eq!(p("python").to_string(), "docker.io/library/python:latest");
        assert_eq!(p("python:3.12-slim").familiar(), "python:3.12-slim");
        assert_eq!(p("team/env").familiar(), "team/env:latest");
    }

    #[test]
    fn registries_ports_and_localhost() {
        assert_eq!(parts("registry.example:5000/team/env:v2"), t("registry.example:5000", "team/env", Some("v2"), None));
        assert_eq!(parts("registry.example/env"), t("registry.example", "env", Some("latest"), None));
        assert_eq!(parts("localhost/env"), t("localhost", "env", Some("latest"), None));
        assert_eq!(parts("localhost:5000/env:1"), t("localhost:5000", "env", Some("1"), None));
        assert_eq!(parts("127.0.0.1:41234/a/b/c:x"), t("127.0.0.1:41234", "a/b/c", Some("x"), None));
        assert_eq!(parts("[::1]:5000/env"), t("[::1]:5000", "env", Some("latest"), None));
        assert_eq!(parts("Registry/env"), t("Registry", "env", Some("latest"), None));
        assert_eq!(p("registry.example:5000/team/env:v2").api_host(), "registry.example:5000");
        assert_eq!(p("registry.example:5000/team/env:v2").familiar(), "registry.example:5000/team/env:v2");
        // "localhost" alone is a repository on Docker Hub, as with docker
        assert_eq!(parts("localhost"), t("docker.io", "library/localhost", Some("latest"), None));
        // a ':' before the last '/' is a port, not a tag
        assert_eq!(parts("host:5000/env"), t("host:5000", "env", Some("latest"), None));
    }

    #[test]
    fn loopback_detection() {
        for r in ["localhost/x", "localhost:5000/x", "127.0.0.1:5000/x", "127.8.0.1/x", "[::1]:80/x"] {
            assert!(p(r).is_loopback(), "{r}");
        }
        for r in ["x", "registry.example:5000/x", "10.0.0.1:5000/x", "localhost.example/x"] {
            assert!(!p(r).is_loopback(), "{r}");
        }
    }

    #[test]
    fn digests() {
        assert_eq!(parts(&format!("alpine@{D}")), t("docker.io", "library/alpine", None, Some(D)));
        assert_eq!(parts(&format!("alpine:3.20@{D}")), t("docker.io", "library/alpine", Some("3.20"), Some(D)));
        assert_eq!(parts(&format!("localhost:5000/a@{D}")), t("localhost:5000", "a", None, Some(D)));
        assert_eq!(p(&format!("alpine:3.20@{D}")).manifest_ref(), D);
        assert_eq!(p("alpine:3.20").manifest_ref(), "3.20");
        assert_eq!(p(&format!("alpine@{D}")).familiar(), format!("alpine@{D}"));
    }

    #[test]
    fn tags_and_components_at_their_limits() {
        let tag128 = "a".repeat(128);
        assert_eq!(p(&format!("x:{tag128}")).tag(), Some(tag128.as_str()));
        assert_eq!(p("x:_v1.2-rc_3").tag(), Some("_v1.2-rc_3"));
        assert_eq!(p("team/a.b_c__d---e").repository(), "team/a.b_c__d---e");
        // a first component with a dot is a registry host, as with docker
        assert_eq!(p("a.b/c").registry(), "a.b");
        let long = "a".repeat(247); // "library/" + 247 = 255
        assert!(Reference::parse(&long).is_ok());
    }

    #[test]
    fn round_trips_through_display_and_serde() {
        for s in ["python:3.12-slim", "registry.example:5000/team/env:v2", &format!("a:b@{D}"), &format!("localhost/a@{D}")] {
            let r = p(s);
            assert_eq!(p(&r.to_string()), r);
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<Reference>(&json).unwrap(), r);
        }
    }

    #[test]
    fn bad_input_gets_a_clear_error() {
        use ReferenceError as E;
        let err = |s: &str| Reference::parse(s).expect_err(s);
        assert_eq!(err(""), E::Empty);
        assert_eq!(err(":tag"), E::Empty);
        assert!(matches!(err("py thon"), E::BadCharacter { .. }));
        assert!(matches!(err("python\n"), E::BadCharacter { .. }));
        assert!(matches!(err("Python"), E::BadComponent { .. }));
        assert!(matches!(err("docker.io/Team/env"), E::BadComponent { .. }));
        assert!(matches!(err("a//b"), E::EmptyComponent { .. }));
        assert!(matches!(err("/a"), E::EmptyComponent { .. }));
        assert!(matches!(err("a/"), E::EmptyComponent { .. }));
        assert!(matches!(err("-a"), E::BadComponent { .. }));
        assert!(matches!(err("a-"), E::BadComponent { .. }));
        assert!(matches!(err("a..b"), E::BadComponent { .. }));
        assert!(matches!(err("a___b"), E::BadComponent { .. }));
        assert!(matches!(err("a/b!"), E::BadComponent { .. }));
        assert!(matches!(err("python:"), E::BadTag { .. }));
        assert!(matches!(err("python:.x"), E::BadTag { .. }));
        assert!(matches!(err("python:-x"), E::BadTag { .. }));
        assert!(matches!(err("python:a+b"), E::BadTag { .. }));
        assert!(matches!(err(&format!("python:{}", "a".repeat(129))), E::BadTag { .. }));
        assert!(matches!(err("python@sha256:abc"), E::BadDigest { .. }));
        assert!(matches!(err("python@md5:abc"), E::BadDigest { source: DigestError::UnsupportedAlgorithm(_), .. }));
        assert!(matches!(err("python@"), E::BadDigest { .. }));
        assert!(matches!(err(&format!("a@{D}@{D}")), E::BadDigest { .. }));
        assert!(matches!(err("host:port/x"), E::BadRegistry { .. }));
        assert!(matches!(err("host:99999/x"), E::BadRegistry { .. }));
        assert!(matches!(err("-bad.host/x"), E::BadRegistry { .. }));
        assert!(matches!(err("[::1/x"), E::BadRegistry { .. }));
        assert!(matches!(err("[zz]:5000/x"), E::BadRegistry { .. }));
        assert!(matches!(err(&"a".repeat(248)), E::NameTooLong { .. }));
        // messages quote the input and say what would be accepted
        let msg = err("Python:3").to_string();
        assert!(msg.contains("\"Python:3\"") && msg.contains("lowercase"), "{msg}");
    }
}
