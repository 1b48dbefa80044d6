//! The sandbox settings `envbox create` and `envbox run` share: one declaration, so the two
//! commands cannot drift apart in names, parsers or defaults.

use std::path::Path;

use envbox::config::{self, Image, Limits, Network, SandboxConfig, Seccomp, Volume};

#[derive(clap::Args, Clone)]
pub struct SandboxFlags {
    /// Run the shell, every command and the environment's processes as USER[:GROUP]: names
    /// from the image's /etc/passwd and /etc/group, or numeric ids; default: the image's
    /// User, else root. Volumes and run's --dir must then be readable by that user.
    #[arg(long, value_name = "USER[:GROUP]", value_parser = config::parse_user)]
    pub user: Option<String>,
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(long = "env", short = 'e', value_parser = config::parse_env)]
    pub env: Vec<(String, String)>,
    /// Bind mount HOST:CONTAINER[:ro] (repeatable).
    #[arg(long = "volume", short = 'v')]
    pub volumes: Vec<Volume>,
    /// Memory limit (of each replica for run), e.g. 512m or 2g.
    #[arg(long, visible_alias = "mem-limit", value_parser = config::parse_size)]
    pub memory: Option<u64>,
    /// Size of the writable layer (a tmpfs; ENOSPC when full), e.g. 1g.
    #[arg(long, value_parser = config::parse_size)]
    pub disk: Option<u64>,
    /// CPU limit in CPUs, e.g. 0.5.
    #[arg(long, value_parser = config::parse_cpus)]
    pub cpus: Option<u64>,
    /// Maximum number of processes.
    #[arg(long, value_parser = config::parse_pids)]
    pub pids: Option<u64>,
    /// Network: none (loopback only), host (the host's), or egress (a route out through
    /// the host's NAT, limited by --allow).
    #[arg(long, default_value = "none")]
    pub net: Network,
    /// How the writable root is made: overlayfs, or btrfs (the state root must be on btrfs).
    #[arg(long, default_value = "overlayfs")]
    pub fs: envbox::FsBackend,
    /// --net egress: an allowed destination, CIDR[:PORT[-PORT]] (repeatable; none = all).
    #[arg(long = "allow")]
    pub allow: Vec<envbox::net::AllowRule>,
    /// Seccomp filter of the shell and the environment's processes: off,
    /// default (a deny list like Docker's) or FILE (a seccompiler JSON policy).
    #[arg(long, default_value = "default")]
    pub seccomp: Seccomp,
}

impl SandboxFlags {
    /// A detached sandbox config under `root` on `image` with these settings.
    pub fn config(&self, root: &Path, image: Image, workdir: String) -> SandboxConfig {
        SandboxConfig {
            image,
            workdir,
            env: self.env.clone(),
            volumes: self.volumes.clone(),
            limits: Limits { memory_bytes: self.memory, cpu_millis: self.cpus, pids: self.pids, disk_bytes: self.disk },
            network: self.net,
            egress_allow: self.allow.clone(),
            fs: self.fs,
            root: root.to_path_buf(),
            detached: true,
            seccomp: self.seccomp.clone(),
            user: self.user.clone(),
            ..SandboxConfig::default()
        }
    }
}
