//! `SandboxConfig` and friends: plain serde data, validated with clear errors.
//!
//! Nothing here touches the kernel; the sandbox module turns a validated
//! config into syscalls.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub type Result<T> = std::result::Result<T, ConfigError>;

/// A config value that cannot be used, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid sandbox name {name:?}: {reason} (use 1-64 characters from [A-Za-z0-9_.-], starting with a letter or digit)")]
    InvalidName { name: String, reason: &'static str },
    #[error("invalid size {input:?}: {reason} (examples: 512m, 2g, 1048576)")]
    InvalidSize { input: String, reason: &'static str },
    #[error("invalid cpu count {input:?}: {reason} (examples: 0.5, 2)")]
    InvalidCpus { input: String, reason: &'static str },
    #[error("invalid pids limit {input:?}: must be a whole number of at least 1")]
    InvalidPids { input: String },
    #[error("invalid environment variable {input:?}: expected KEY=VALUE with a non-empty KEY without '=' or NUL")]
    InvalidEnv { input: String },
    #[error("invalid volume {input:?}: {reason} (expected HOST:CONTAINER or HOST:CONTAINER:ro, both absolute paths)")]
    InvalidVolume { input: String, reason: &'static str },
    #[error("invalid network mode {input:?}: expected none, host or egress")]
    InvalidNetwork { input: String },
    #[error("--allow only applies to --net egress (with none there is no route out, with host no filter)")]
    AllowWithoutEgress,
    #[error("invalid working directory {path:?}: it must be an absolute path inside the sandbox without NUL")]
    InvalidWorkdir { path: String },
    #[error("image directory {path} does not exist or is not a directory: pass --image DIR with a root filesystem (it must contain bin/ or usr/), or leave --image out to use the host's system directories")]
    MissingImage { path: PathBuf },
    #[error("image directory {path} does not look like a root filesystem (no bin/, usr/ or etc/ in it)")]
    NotARootfs { path: PathBuf },
    #[error(
        "image path {path} contains ':', ',' or a newline, which overlayfs cannot take in a layer path; move or link the image elsewhere"
    )]
    UnusableImagePath { path: PathBuf },
    #[error("volume source {path} does not exist on the host")]
    MissingVolumeSource { path: PathBuf },
    #[error("invalid --fs {input:?}: expected overlayfs or btrfs")]
    InvalidFs { input: String },
    #[error("--fs btrfs {reason}")]
    BtrfsUnsupported { reason: &'static str },
    #[error("invalid image {input:?}: {reason}")]
    InvalidImage { input: String, reason: String },
    #[error("invalid environment type {input:?}: expected function or http")]
    InvalidEnvKind { input: String },
    #[error("invalid publish address {input:?}: expected IP:PORT on a loopback or local address, e.g. 127.0.0.1:8000")]
    InvalidPublish { input: String },
    #[error("invalid seccomp setting {input:?}: expected off, default or the path of a seccompiler JSON policy file")]
    InvalidSeccomp { input: String },
    #[error("invalid environment server setting: {reason}")]
    InvalidServe { reason: String },
    #[error("invalid user {input:?}: {reason} (expected USER[:GROUP], names or numeric ids, e.g. nobody, 1000:1000 or app:staff)")]
    InvalidUser { input: String, reason: &'static str },
}

/// What the sandbox's root filesystem is made of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "path")]
pub enum Image {
    /// The embedded default: a read-only view of the host's system
    /// directories (/usr, /bin, /lib*, /etc with secrets masked).
    Host,
    /// A root filesystem directory, used read-only as the overlay's lower layer.
    Dir(PathBuf),
    /// An image: a registry reference (`python:3.12-slim`,
    /// `registry.example:5000/team/env:v2`, pulled into the image store
    /// under the state root when missing) or a local source
    /// (`oci:PATH[:TAG]`, `docker-archive:PATH`). Its layers are the
    /// overlay's lower layers, shared by every sandbox on it.
    Ref(String),
}

impl Image {
    /// A short, human-readable description for `envbox ps`.
    pub fn describe(&self) -> String {
        match self {
            Image::Host => "host".to_string(),
            Image::Dir(p) => p.display().to_string(),
            Image::Ref(r) => r.clone(),
        }
    }

    /// Parses `--image`: a path (absolute, `./`, `../`, or an existing
    /// directory) or `dir:PATH` is a root filesystem directory; anything
    /// else is an image reference or a local image source.
    pub fn parse(spec: &str) -> Image {
        let path = spec.strip_prefix("dir:").unwrap_or(spec);
        let looks_like_path = spec.starts_with("dir:") || spec.starts_with('/') || spec.starts_with("./") || spec.starts_with("../");
        if looks_like_path || (!spec.contains(':') && Path::new(spec).is_dir()) {
            Image::Dir(absolute(Path::new(path)))
        } else if let Some(rest) = spec.strip_prefix("oci:").or_else(|| spec.strip_prefix("docker-archive:")) {
            // Local sources name host paths: make them absolute now.
            let prefix = &spec[..spec.len() - rest.len()];
            if rest.starts_with('/') {
                Image::Ref(spec.to_string())
            } else {
                Image::Ref(format!("{prefix}{}", absolute(Path::new(rest)).display()))
            }
        } else {
            Image::Ref(spec.to_string())
        }
    }

    /// Checks that a directory image exists and looks like a root filesystem.
    pub fn validate(&self) -> Result<()> {
        if let Image::Ref(spec) = self {
            return crate::images::check_spec(spec).map_err(|reason| ConfigError::InvalidImage { input: spec.clone(), reason });
        }
        let Image::Dir(path) = self else { return Ok(()) };
        if !path.is_dir() {
            return Err(ConfigError::MissingImage { path: path.clone() });
        }
        // overlayfs separates layers with ':' and options with ','.
        if path.as_os_str().as_encoded_bytes().iter().any(|b| matches!(b, b':' | b',' | b'\n')) {
            return Err(ConfigError::UnusableImagePath { path: path.clone() });
        }
        if !["bin", "usr", "etc"].iter().any(|d| path.join(d).exists()) {
            return Err(ConfigError::NotARootfs { path: path.clone() });
        }
        Ok(())
    }
}

/// How the sandbox's writable root is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsBackend {
    /// overlayfs: the image's layers below, the sandbox's upper directory
    /// above.
    #[default]
    Overlayfs,
    /// A btrfs snapshot of the image flattened into a subvolume (the state
    /// root must be on btrfs).
    Btrfs,
}

impl std::str::FromStr for FsBackend {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "overlayfs" | "overlay" => Ok(FsBackend::Overlayfs),
            "btrfs" => Ok(FsBackend::Btrfs),
            _ => Err(ConfigError::InvalidFs { input: s.to_string() }),
        }
    }
}

/// Network mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Network {
    /// A private network namespace holding only loopback.
    #[default]
    None,
    /// Share the host's network namespace.
    Host,
    /// A private network namespace with a route out through the host (NAT),
    /// limited to `SandboxConfig::egress_allow` when that is not empty.
    Egress,
}

impl std::str::FromStr for Network {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(Network::None),
            "host" => Ok(Network::Host),
            "egress" => Ok(Network::Egress),
            _ => Err(ConfigError::InvalidNetwork { input: s.to_string() }),
        }
    }
}

/// A host directory or file bind-mounted into the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub host: PathBuf,
    pub container: String,
    pub read_only: bool,
}

impl std::str::FromStr for Volume {
    type Err = ConfigError;
    /// Parses `HOST:CONTAINER[:ro|:rw]`.
    fn from_str(s: &str) -> Result<Self> {
        let bad = |reason| ConfigError::InvalidVolume { input: s.to_string(), reason };
        let parts: Vec<&str> = s.split(':').collect();
        let (host, container, read_only) = match parts.as_slice() {
            [h, c] => (*h, *c, false),
            [h, c, "ro"] => (*h, *c, true),
            [h, c, "rw"] => (*h, *c, false),
            [_, _, _] => return Err(bad("the mode must be ro or rw")),
            _ => return Err(bad("wrong number of ':'-separated fields")),
        };
        if !host.starts_with('/') || !container.starts_with('/') {
            return Err(bad("paths must be absolute"));
        }
        if s.contains('\0') {
            return Err(bad("paths must not contain NUL"));
        }
        Ok(Volume { host: PathBuf::from(host), container: container.to_string(), read_only })
    }
}

/// Resource limits, enforced with cgroups.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Limits {
    /// Memory limit in bytes (swap is not allowed on top).
    pub memory_bytes: Option<u64>,
    /// CPU limit in thousandths of a CPU (500 = half a CPU).
    pub cpu_millis: Option<u64>,
    /// Maximum number of processes and threads.
    pub pids: Option<u64>,
    /// Size of the sandbox's writable layer: its upper directories live on
    /// a tmpfs of this size (a fresh one per generation), so filling it
    /// gives ENOSPC instead of filling the host's disk. Its pages count
    /// towards the memory limit.
    #[serde(default)]
    pub disk_bytes: Option<u64>,
}

/// Everything needed to create a sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxConfig {
    pub image: Image,
    /// Working directory inside the sandbox; created when missing.
    pub workdir: String,
    /// Extra environment variables for the shell (on top of PATH, HOME, TERM).
    pub env: Vec<(String, String)>,
    pub volumes: Vec<Volume>,
    pub limits: Limits,
    pub network: Network,
    /// The state root (default /run/envbox, or `ENVBOX_ROOT`).
    pub root: PathBuf,
    /// When false (the library default), the sandbox dies with the process
    /// that created it, even on kill -9. The CLI creates detached sandboxes.
    pub detached: bool,
    /// The envbox binary that runs as the sandbox's PID 1. `None`: found
    /// automatically (see `agent_binary`).
    pub agent: Option<PathBuf>,
    /// Serve an environment (env.py) with the /health /methods /call API.
    #[serde(default)]
    pub serve: Option<ServeConfig>,
    /// How the writable root is made.
    #[serde(default)]
    pub fs: FsBackend,
    /// `Network::Egress` only: the destinations allowed (all when empty).
    #[serde(default)]
    pub egress_allow: Vec<crate::net::AllowRule>,
    /// The group the sandbox belongs to (the replicas of `envbox run
    /// --replicas N` share one, so `envbox call GROUP` reaches any of them).
    #[serde(default)]
    pub group: Option<String>,
    /// The seccomp filter of the shell, the env worker and the env server.
    #[serde(default)]
    pub seccomp: Seccomp,
    /// The user the shell, the env worker and the env server run as:
    /// `USER[:GROUP]`, names or numeric ids, looked up in the sandbox's own
    /// /etc/passwd and /etc/group. `None`: the image's `User` if it has
    /// one, else root.
    #[serde(default)]
    pub user: Option<String>,
}

/// Which seccomp filter the processes run for the user get (the agent
/// itself is never filtered). See `security::seccomp`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Seccomp {
    /// No filter: only the capability drop and no_new_privs.
    Off,
    /// The built-in deny list (Docker's default profile, in spirit).
    #[default]
    Default,
    /// A policy file in seccompiler's JSON format, read and checked on the
    /// host at create time.
    File(PathBuf),
}

impl std::str::FromStr for Seccomp {
    type Err = ConfigError;
    /// `off`, `default`, or a path to a policy file.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "off" => Ok(Seccomp::Off),
            "default" => Ok(Seccomp::Default),
            "" => Err(ConfigError::InvalidSeccomp { input: s.to_string() }),
            path => Ok(Seccomp::File(absolute(Path::new(path)))),
        }
    }
}

/// How an environment is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnvKind {
    /// env.py holds an `Actor` class and/or module functions; the agent's
    /// dispatcher runs them in a python3 worker.
    #[default]
    Function,
    /// The environment is its own HTTP server (a FastAPI app in env.py, or
    /// a server command); the dispatcher proxies to it.
    Http,
}

impl std::str::FromStr for EnvKind {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "function" | "function_based" => Ok(EnvKind::Function),
            "http" | "http_based" => Ok(EnvKind::Http),
            _ => Err(ConfigError::InvalidEnvKind { input: s.to_string() }),
        }
    }
}

impl EnvKind {
    /// The reference's build-time detection: `http` when env.py mentions
    /// FastAPI and assigns `app`, else `function`.
    pub fn detect(env_py: &str) -> EnvKind {
        if env_py.contains("FastAPI") && (env_py.contains("app = ") || env_py.contains("app=")) {
            EnvKind::Http
        } else {
            EnvKind::Function
        }
    }
}

/// The environment served by a sandbox's dispatcher.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServeConfig {
    pub kind: EnvKind,
    /// The environment's directory inside the sandbox (holds env.py).
    pub app_dir: String,
    /// The python interpreter inside the sandbox; `None`: python3 from PATH.
    pub python: Option<String>,
    /// `Http` only: the server command; `None`: uvicorn serving `env:app`.
    pub command: Option<Vec<String>>,
    /// `Http` only: the port the environment's server listens on inside the
    /// sandbox's loopback.
    pub upstream_port: u16,
    /// Also serve the API on this TCP address (bound by the host, so it
    /// works with `--net none`).
    pub publish: Option<std::net::SocketAddr>,
    /// Largest request body accepted.
    pub max_body: u64,
}

/// Default cap on a request body of the dispatcher.
pub const DEFAULT_MAX_BODY: u64 = 64 << 20;

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            kind: EnvKind::Function,
            app_dir: "/app".into(),
            python: None,
            command: None,
            upstream_port: 8000,
            publish: None,
            max_body: DEFAULT_MAX_BODY,
        }
    }
}

impl ServeConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: &str| Err(ConfigError::InvalidServe { reason: reason.to_string() });
        if !self.app_dir.starts_with('/') || self.app_dir.contains('\0') {
            return bad("the app directory must be an absolute path inside the sandbox");
        }
        if self.max_body < 1024 || self.max_body > 1 << 30 {
            return bad("the request body limit must be between 1 KiB and 1 GiB");
        }
        if self.upstream_port == 0 {
            return bad("the upstream port must not be 0");
        }
        if let Some(cmd) = &self.command {
            if cmd.is_empty() || cmd.iter().any(|a| a.contains('\0')) {
                return bad("the server command must be non-empty and without NUL");
            }
        }
        Ok(())
    }
}

/// Parses `--publish`: `IP:PORT`, or a bare `PORT` meaning 127.0.0.1:PORT.
pub fn parse_publish(input: &str) -> Result<std::net::SocketAddr> {
    let bad = || ConfigError::InvalidPublish { input: input.to_string() };
    if let Ok(port) = input.parse::<u16>() {
        return Ok(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    }
    input.parse().map_err(|_| bad())
}

/// Default state root.
pub const DEFAULT_ROOT: &str = "/run/envbox";

/// The state root from `ENVBOX_ROOT`, else [`DEFAULT_ROOT`].
pub fn default_root() -> PathBuf {
    std::env::var_os("ENVBOX_ROOT").filter(|v| !v.is_empty()).map(PathBuf::from).unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT))
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            image: Image::Host,
            workdir: "/".to_string(),
            env: Vec::new(),
            volumes: Vec::new(),
            limits: Limits::default(),
            network: Network::None,
            root: default_root(),
            detached: false,
            agent: None,
            serve: None,
            group: None,
            seccomp: Seccomp::Default,
            egress_allow: Vec::new(),
            fs: FsBackend::Overlayfs,
            user: None,
        }
    }
}

impl SandboxConfig {
    /// A config for a root filesystem directory.
    pub fn with_image_dir(dir: impl Into<PathBuf>) -> Self {
        SandboxConfig { image: Image::Dir(dir.into()), ..Default::default() }
    }

    /// Checks everything that can be checked without creating anything.
    pub fn validate(&self) -> Result<()> {
        self.image.validate()?;
        if !self.workdir.starts_with('/') || self.workdir.contains('\0') {
            return Err(ConfigError::InvalidWorkdir { path: self.workdir.clone() });
        }
        for (k, v) in &self.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                return Err(ConfigError::InvalidEnv { input: format!("{k}={v}") });
            }
        }
        for v in &self.volumes {
            if !v.host.exists() {
                return Err(ConfigError::MissingVolumeSource { path: v.host.clone() });
            }
        }
        if let Some(serve) = &self.serve {
            serve.validate()?;
        }
        if !self.egress_allow.is_empty() && self.network != Network::Egress {
            return Err(ConfigError::AllowWithoutEgress);
        }
        if self.fs == FsBackend::Btrfs {
            if self.image == Image::Host {
                return Err(ConfigError::BtrfsUnsupported {
                    reason: "needs an image (--image REF or DIR), not the host's system directories",
                });
            }
            if self.limits.disk_bytes.is_some() {
                return Err(ConfigError::BtrfsUnsupported {
                    reason: "and --disk cannot be combined (use a btrfs quota on the state root)",
                });
            }
        }
        if let Some(group) = &self.group {
            validate_name(group)?;
        }
        if let Some(user) = &self.user {
            parse_user(user)?;
        }
        Ok(())
    }
}

/// Validates a sandbox name: it becomes a directory, a cgroup and a hostname.
pub fn validate_name(name: &str) -> Result<()> {
    let bad = |reason| Err(ConfigError::InvalidName { name: name.to_string(), reason });
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > 64 {
        return bad("it is longer than 64 characters");
    }
    if !name.as_bytes()[0].is_ascii_alphanumeric() {
        return bad("it must start with a letter or digit");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-') {
        return bad("it contains a character outside [A-Za-z0-9_.-]");
    }
    Ok(())
}

/// Parses a size such as `512m`, `2G`, `1.5g`, `64k` or `1048576` (bytes).
pub fn parse_size(input: &str) -> Result<u64> {
    let bad = |reason| ConfigError::InvalidSize { input: input.to_string(), reason };
    let s = input.trim().to_ascii_lowercase();
    let s = s.strip_suffix("ib").or_else(|| s.strip_suffix('b')).unwrap_or(&s);
    let (num, mult) = match s.chars().last() {
        Some('k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('m') => (&s[..s.len() - 1], 1 << 20),
        Some('g') => (&s[..s.len() - 1], 1 << 30),
        Some('t') => (&s[..s.len() - 1], 1 << 40),
        Some(c) if c.is_ascii_digit() => (s, 1),
        _ => return Err(bad("unknown unit (use k, m, g or t)")),
    };
    if num.is_empty() || !num.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(bad("not a number"));
    }
    let bytes = if let Ok(n) = num.parse::<u64>() {
        n.checked_mul(mult).ok_or_else(|| bad("too large"))?
    } else {
        let f: f64 = num.parse().map_err(|_| bad("not a number"))?;
        let b = (f * mult as f64).round();
        if !(0.0..1.8e19).contains(&b) {
            return Err(bad("too large"));
        }
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let b = b as u64;
        b
    };
    if bytes < 1 << 20 {
        return Err(bad("must be at least 1m"));
    }
    Ok(bytes)
}

/// Parses a CPU count such as `0.5` or `2` into thousandths of a CPU.
pub fn parse_cpus(input: &str) -> Result<u64> {
    let bad = |reason| ConfigError::InvalidCpus { input: input.to_string(), reason };
    let f: f64 = input.trim().parse().map_err(|_| bad("not a number"))?;
    if !f.is_finite() || f < 0.01 {
        return Err(bad("must be at least 0.01"));
    }
    if f > 4096.0 {
        return Err(bad("too large"));
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let millis = (f * 1000.0).round() as u64;
    Ok(millis)
}

/// Parses a pids limit.
pub fn parse_pids(input: &str) -> Result<u64> {
    match input.trim().parse::<u64>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(ConfigError::InvalidPids { input: input.to_string() }),
    }
}

/// Parses `KEY=VALUE`.
pub fn parse_env(input: &str) -> Result<(String, String)> {
    match input.split_once('=') {
        Some((k, v)) if !k.is_empty() && !k.contains('\0') && !v.contains('\0') => Ok((k.to_string(), v.to_string())),
        _ => Err(ConfigError::InvalidEnv { input: input.to_string() }),
    }
}

/// The largest uid or gid a user spec may name (runc's limit: ids above
/// it are negative to some tools, and -1 means "unchanged" to setresuid).
pub const MAX_ID: u32 = 0x7fff_ffff;

/// Checks the syntax of a user spec, `USER[:GROUP]`: no NUL or other
/// control character, no empty part, at most one ':', numeric ids in
/// range. Names are looked up later, inside the sandbox.
pub fn parse_user(input: &str) -> Result<String> {
    let bad = |reason| Err(ConfigError::InvalidUser { input: input.to_string(), reason });
    if input.chars().any(char::is_control) {
        return bad("it contains NUL or another control character");
    }
    let (user, group) = match input.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (input, None),
    };
    if user.is_empty() {
        return bad("the user is empty");
    }
    if group.is_some_and(|g| g.contains(':')) {
        return bad("it has more than one ':'");
    }
    if group == Some("") {
        return bad("the group after ':' is empty");
    }
    for part in std::iter::once(user).chain(group) {
        if part.bytes().all(|b| b.is_ascii_digit()) && part.parse::<u32>().map_or(true, |id| id > MAX_ID) {
            return bad("a numeric id is out of range (0 to 2147483647)");
        }
    }
    Ok(input.to_string())
}

/// Options for one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunOptions {
    /// Kill the command's processes after this long and return `Error::Timeout`.
    pub timeout: Option<Duration>,
    /// Keep at most this many bytes of each of stdout and stderr; the rest is
    /// drained and dropped, and the output is marked truncated.
    pub max_output: u64,
}

/// Default cap on each output stream of one command.
pub const DEFAULT_MAX_OUTPUT: u64 = 256 << 20;

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions { timeout: None, max_output: DEFAULT_MAX_OUTPUT }
    }
}

/// Makes a path absolute against the current directory without touching
/// the filesystem (for `--image` and `--root` given relatively).
pub fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units_and_reject_garbage() {
        assert_eq!(parse_size("512m").unwrap(), 512 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("1.5g").unwrap(), 3 << 29);
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        for bad in ["", "m", "12x", "-5m", "1k", "abc", "1.2.3g", "99999999999999t"] {
            assert!(parse_size(bad).is_err(), "{bad:?} should be rejected");
        }
        let msg = parse_size("12x").unwrap_err().to_string();
        assert!(msg.contains("12x") && msg.contains("512m"), "{msg}");
    }

    #[test]
    fn cpus_and_pids_parse() {
        assert_eq!(parse_cpus("0.5").unwrap(), 500);
        assert_eq!(parse_cpus("2").unwrap(), 2000);
        assert!(parse_cpus("0").is_err());
        assert!(parse_cpus("NaN").is_err());
        assert!(parse_cpus("x").is_err());
        assert_eq!(parse_pids("256").unwrap(), 256);
        assert!(parse_pids("0").is_err());
        assert!(parse_pids("-1").is_err());
    }

    #[test]
    fn names_are_checked() {
        for good in ["a", "demo", "worker-0", "A.b_c-9", &"x".repeat(64)] {
            validate_name(good).unwrap();
        }
        for bad in ["", ".", "..", "-x", "a/b", "../x", "é", "a b", &"x".repeat(65), "a\0b"] {
            assert!(validate_name(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn volumes_parse() {
        let v: Volume = "/data:/mnt/data:ro".parse().unwrap();
        assert_eq!(v, Volume { host: "/data".into(), container: "/mnt/data".into(), read_only: true });
        let v: Volume = "/data:/d".parse().unwrap();
        assert!(!v.read_only);
        for bad in ["/data", "data:/d", "/data:d", "/a:/b:rx", "/a:/b:ro:x"] {
            assert!(bad.parse::<Volume>().is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn env_parses() {
        assert_eq!(parse_env("A=b=c").unwrap(), ("A".into(), "b=c".into()));
        assert_eq!(parse_env("A=").unwrap(), ("A".into(), "".into()));
        assert!(parse_env("=x").is_err());
        assert!(parse_env("noequals").is_err());
    }

    #[test]
    fn user_specs_are_checked() {
        for good in ["nobody", "0", "1234:5678", "app:staff", "app:0", "2147483647"] {
            assert_eq!(parse_user(good).unwrap(), good);
        }
        for (bad, why) in [
            ("", "the user is empty"),
            (":staff", "the user is empty"),
            ("app:", "the group after ':' is empty"),
            ("a:b:c", "more than one ':'"),
            ("a\0b", "control character"),
            ("a\nb", "control character"),
            ("4294967295", "out of range"),
            ("1:99999999999", "out of range"),
        ] {
            let msg = parse_user(bad).unwrap_err().to_string();
            assert!(msg.contains(why) && msg.contains("USER[:GROUP]"), "{bad:?}: {msg}");
        }
        let cfg = SandboxConfig { user: Some("a:b:c".into()), ..Default::default() };
        assert!(cfg.validate().unwrap_err().to_string().contains("invalid user"));
    }

    #[test]
    fn missing_image_is_a_clear_error() {
        let cfg = SandboxConfig::with_image_dir("/nonexistent/rootfs");
        let msg = cfg.validate().unwrap_err().to_string();
        assert!(msg.contains("/nonexistent/rootfs") && msg.contains("does not exist"), "{msg}");
    }
}
