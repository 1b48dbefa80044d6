//! The crate's error type: each module's error, aggregated, plus the errors
//! of the sandbox lifecycle that a caller wants to match on.

use std::path::PathBuf;

use crate::agent::proto::ExecDone;
use crate::cgroup::CgroupError;
use crate::config::ConfigError;
use crate::fs::FsError;
use crate::sandbox::files::FilesError;
use crate::security::seccomp::SeccompError;

pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong in envbox.
#[derive(Debug, thiserror::Error)]
#[allow(clippy::error_impl_error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Files(#[from] FilesError),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    #[error("envbox needs root (it creates namespaces, mounts and cgroups); run it with sudo or as root")]
    NotRoot,
    #[error("sandbox {name:?} already exists; remove it with `envbox rm {name}` or pick another name")]
    AlreadyExists { name: String },
    #[error("no sandbox named {name:?} under {root}; `envbox ps` lists the sandboxes")]
    NotFound { name: String, root: PathBuf },
    #[error("sandbox {name:?} is dead (its PID 1 is gone); remove it with `envbox rm {name}`")]
    Dead { name: String },
    #[error("the state root {path} cannot be used")]
    StateRoot {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot find the envbox binary that runs inside sandboxes: {hint}")]
    AgentBinary { hint: String },
    #[error("{step} for sandbox {name:?} failed")]
    Io {
        step: &'static str,
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("image {spec}: {message}")]
    Image { spec: String, message: String },
    #[error("setting up sandbox {name:?} failed: {message}")]
    Setup { name: String, message: String },
    #[error("the sandbox agent of {name:?} broke the protocol: {message}")]
    Protocol { name: String, message: String },
    #[error("the command timed out after {seconds:.3}s; its processes were killed and the sandbox is still usable")]
    Timeout { seconds: f64, stdout: Vec<u8>, stderr: Vec<u8>, done: Box<ExecDone> },
    #[error("the command was aborted by a reset of the sandbox")]
    AbortedByReset,
    #[error("sandbox {name:?}: {message}")]
    Agent { name: String, message: String },
    #[error("{primary}; cleaning up after it also failed: {cleanup}")]
    WithCleanup { primary: Box<Error>, cleanup: Box<Error> },
}

/// Formats an error with all its sources: "a: b: c".
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        let msg = src.to_string();
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        cur = src.source();
    }
    s
}
