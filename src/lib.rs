//! envbox: Linux namespace sandboxes for RL and agent-evaluation
//! environments — created, reset and deleted in milliseconds, no daemon.
//!
//! ```no_run
//! use envbox::{Sandbox, SandboxConfig};
//! # fn main() -> envbox::Result<()> {
//! let sb = Sandbox::create(&SandboxConfig::default(), "worker-0")?; // host's /usr, /etc: no download
//! let out = sb.run("cd /tmp && echo hi > f && cat f")?;
//! assert_eq!(out.stdout, b"hi\n");
//! sb.reset()?; // /tmp/f is gone, a fresh shell is ready
//! sb.delete()?; // dropping it does the same
//! # Ok(()) }
//! ```
//!
//! See README.md for the threat model and the benchmark figures.

pub mod agent;
pub mod bench;
pub mod bench_env;
pub mod build;
pub mod cgroup;
pub mod client;
pub mod config;
pub mod error;
pub mod fs;
pub mod http;
pub mod images;
pub mod namespace;
pub mod net;
pub mod sandbox;
pub mod security;
pub mod sys;

pub use client::{load_env, CallError, Env, LoadOptions, Pool};
pub use config::{EnvKind, FsBackend, Image, Limits, Network, RunOptions, SandboxConfig, ServeConfig, Volume};
pub use error::{Error, Result};
pub use sandbox::reclaim::{collect as collect_garbage, Report as GcReport};
pub use sandbox::{list, Chunk, Output, Sandbox, SandboxInfo};

/// Marks the running executable as the envbox CLI, so sandboxes it creates
/// run it as their agent (called by `main`).
pub fn mark_current_exe_as_agent() {
    sandbox::mark_current_exe_as_agent();
}

/// Tells the library that this process creates at most one sandbox (a
/// one-shot command): it then keeps no spare network namespaces and starts
/// no zygote, which would only cost time.
pub fn one_shot_process() {
    namespace::disable_pool();
    sandbox::zygote::disable();
}
