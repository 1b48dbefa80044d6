//! `envbox create NAME [options]`

use std::path::Path;

use envbox::config::{self, Image, Limits, Network, SandboxConfig, Seccomp, Volume};
use envbox::{Result, Sandbox};

#[derive(clap::Args)]
pub struct Args {
    /// Sandbox name: [A-Za-z0-9][A-Za-z0-9_.-]{0,63}.
    name: String,
    /// Image: a registry reference (python:3.12-slim, pulled when missing), oci:PATH[:TAG],
    /// docker-archive:PATH, or a root filesystem directory; default: the host's system, read-only.
    #[arg(long)]
    image: Option<String>,
    /// Working directory inside the sandbox (created if missing).
    #[arg(long, default_value = "/")]
    workdir: String,
    /// Run the shell (and every command) as USER[:GROUP]: names from the image's
    /// /etc/passwd and /etc/group, or numeric ids; default: the image's User, else root.
    #[arg(long, value_name = "USER[:GROUP]", value_parser = config::parse_user)]
    user: Option<String>,
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(long = "env", value_parser = config::parse_env)]
    env: Vec<(String, String)>,
    /// Bind mount HOST:CONTAINER[:ro] (repeatable).
    #[arg(long = "volume", short = 'v')]
    volumes: Vec<Volume>,
    /// Memory limit, e.g. 512m or 2g.
    #[arg(long, value_parser = config::parse_size)]
    memory: Option<u64>,
    /// Size of the sandbox's writable layer (a tmpfs; ENOSPC when full), e.g. 1g.
    #[arg(long, value_parser = config::parse_size)]
    disk: Option<u64>,
    /// CPU limit in CPUs, e.g. 0.5.
    #[arg(long, value_parser = config::parse_cpus)]
    cpus: Option<u64>,
    /// Maximum number of processes.
    #[arg(long, value_parser = config::parse_pids)]
    pids: Option<u64>,
    /// Network: none (loopback only), host (the host's), or egress (a route out through
    /// the host's NAT, limited by --allow).
    #[arg(long, default_value = "none")]
    net: Network,
    /// How the writable root is made: overlayfs, or btrfs (the state root must be on btrfs).
    #[arg(long, default_value = "overlayfs")]
    fs: envbox::FsBackend,
    /// --net egress: an allowed destination, CIDR[:PORT[-PORT]] (repeatable; none = all).
    #[arg(long = "allow")]
    allow: Vec<envbox::net::AllowRule>,
    /// Seccomp filter of the shell and the environment's processes: off,
    /// default (a deny list like Docker's) or FILE (a seccompiler JSON policy).
    #[arg(long, default_value = "default")]
    seccomp: Seccomp,
    /// Print {"name","pid"} as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(root: &Path, a: Args) -> Result<i32> {
    let cfg = SandboxConfig {
        image: a.image.as_deref().map(Image::parse).unwrap_or(Image::Host),
        workdir: a.workdir,
        env: a.env,
        volumes: a.volumes,
        limits: Limits { memory_bytes: a.memory, cpu_millis: a.cpus, pids: a.pids, disk_bytes: a.disk },
        network: a.net,
        egress_allow: a.allow.clone(),
        fs: a.fs,
        root: root.to_path_buf(),
        detached: true,
        seccomp: a.seccomp,
        user: a.user,
        ..Default::default()
    };
    let sb = Sandbox::create(&cfg, &a.name)?;
    if a.json {
        super::print_json(&serde_json::json!({ "name": sb.name(), "pid": sb.pid() }));
    } else {
        println!("{}", sb.name());
    }
    Ok(0)
}
