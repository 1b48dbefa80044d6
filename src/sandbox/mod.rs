//! The sandbox lifecycle: create, run, files, reset, delete, and garbage
//! collection of what crashed processes left behind. This module sequences
//! the others (fs, cgroup, security, agent); they do not call each other.

pub mod client;
mod create;
mod delete;
pub mod files;
pub mod reclaim;
mod snapshot;
pub mod state;
pub mod zygote;

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use nix::fcntl::{open, OFlag};
use nix::sys::stat::Mode;

use self::client::Connection;
pub use self::client::{Chunk, Output};
use self::files::RootFs;
use self::state::{State, SOCKET_FILE};
use crate::cgroup;
use crate::config::{validate_name, RunOptions, SandboxConfig};
use crate::error::{Error, Result};
use crate::sys;

/// Parent cgroup of every sandbox's cgroup, in every hierarchy.
pub const CGROUP_PARENT: &str = "envbox";

/// Largest file `read_file` returns.
pub const MAX_READ: u64 = 1 << 30;

/// Marks the running executable as able to run the agent (the envbox CLI).
pub fn mark_current_exe_as_agent() {
    create::CURRENT_EXE_IS_ENVBOX.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// A live sandbox.
///
/// Dropping a sandbox that this process created deletes it; one opened with
/// [`Sandbox::open`] is left running.
pub struct Sandbox {
    name: String,
    root: PathBuf,
    dir: PathBuf,
    state: State,
    pidfd: OwnedFd,
    conn: Mutex<Option<Connection>>,
    owned: bool,
    /// We are the agent's parent, so we reap it on delete.
    parent: bool,
    deleted: bool,
}

/// The cgroup layout of this host, detected once.
pub(crate) fn cgroup_layout() -> Result<&'static cgroup::Layout> {
    static LAYOUT: OnceLock<std::result::Result<cgroup::Layout, String>> = OnceLock::new();
    match LAYOUT.get_or_init(|| cgroup::Layout::detect().map_err(|e| crate::error::chain(&e))) {
        Ok(l) => Ok(l),
        Err(message) => Err(Error::Setup { name: String::new(), message: format!("detecting cgroups failed: {message}") }),
    }
}

/// Fails with a clear message unless we run as root.
pub fn require_root() -> Result<()> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(Error::NotRoot)
    }
}

/// A short hash of the state root, so sandboxes of different roots never
/// share a cgroup name (FNV-1a; stable across builds).
pub fn root_tag(root: &Path) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in root.as_os_str().as_encoded_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{h:08x}")
}

impl Sandbox {
    /// Creates a sandbox named `name` (see [`SandboxConfig`]).
    pub fn create(config: &SandboxConfig, name: &str) -> Result<Sandbox> {
        create::create(config, name)
    }

    /// Attaches to a running sandbox (created by this or another process).
    /// Dropping the handle leaves the sandbox running.
    pub fn open(root: impl AsRef<Path>, name: &str) -> Result<Sandbox> {
        validate_name(name)?;
        let root = root.as_ref();
        let dir = root.join(name);
        let not_found = || Error::NotFound { name: name.to_string(), root: root.to_path_buf() };
        let state = State::read(&dir).map_err(|_| not_found())?;
        if state.phase != state::Phase::Running {
            return Err(not_found());
        }
        let pidfd = open_agent_pidfd(&state).ok_or_else(|| Error::Dead { name: name.to_string() })?;
        Ok(Sandbox {
            name: name.to_string(),
            root: root.to_path_buf(),
            dir,
            state,
            pidfd,
            conn: Mutex::new(None),
            owned: false,
            parent: false,
            deleted: false,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The unix socket of the environment's /health /methods /call API
    /// (`None` unless the sandbox serves an environment).
    pub fn env_socket(&self) -> Option<PathBuf> {
        self.state.config.serve.as_ref().map(|_| self.dir.join(state::ENV_SOCKET_FILE))
    }

    /// Host pid of the sandbox's PID 1 (the agent).
    pub fn pid(&self) -> i32 {
        self.state.pid
    }

    /// The sandbox's state directory on the host.
    pub fn state_dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> &SandboxConfig {
        &self.state.config
    }

    /// The cgroup of this sandbox (for limits and statistics).
    pub fn cgroup(&self) -> Result<cgroup::Cgroup> {
        Ok(cgroup::Cgroup::open(cgroup_layout()?, CGROUP_PARENT, &self.state.id)?)
    }

    /// Makes this handle delete the sandbox when dropped (or not).
    pub fn set_delete_on_drop(&mut self, yes: bool) {
        self.owned = yes;
    }

    fn with_conn<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            let conn = Connection::connect(&self.name, &self.dir.join(SOCKET_FILE)).map_err(|source| {
                if self.is_alive() {
                    Error::Io { step: "connecting to the sandbox agent", name: self.name.clone(), source }
                } else {
                    Error::Dead { name: self.name.clone() }
                }
            })?;
            *guard = Some(conn);
        }
        let Some(conn) = guard.as_mut() else { return Err(Error::Dead { name: self.name.clone() }) };
        let result = f(conn);
        // After an I/O error the stream may be mid-frame: start over next time.
        if matches!(result, Err(Error::Io { .. }) | Err(Error::Protocol { .. })) {
            *guard = None;
            if !self.is_alive() {
                return Err(Error::Dead { name: self.name.clone() });
            }
        }
        result
    }

    /// Is the sandbox's PID 1 still running?
    pub fn is_alive(&self) -> bool {
        sys::pidfd_send_signal(self.pidfd.as_fd(), 0).is_ok()
    }

    /// Runs `cmd` in the persistent shell (cwd and exported variables carry
    /// over to the next command).
    pub fn run(&self, cmd: &str) -> Result<Output> {
        self.run_with(cmd, &RunOptions::default())
    }

    /// [`Sandbox::run`] with a timeout: on expiry the command's processes are
    /// killed and `Error::Timeout` carries the partial output.
    pub fn run_with_timeout(&self, cmd: &str, timeout: Duration) -> Result<Output> {
        self.run_with(cmd, &RunOptions { timeout: Some(timeout), ..Default::default() })
    }

    /// [`Sandbox::run`] with options.
    pub fn run_with(&self, cmd: &str, opts: &RunOptions) -> Result<Output> {
        self.with_conn(|c| c.exec(cmd.as_bytes(), opts))
    }

    /// Runs a command and hands its output over as it arrives.
    pub fn run_streaming(&self, cmd: &str, opts: &RunOptions, on_chunk: &mut dyn FnMut(Chunk<'_>)) -> Result<Output> {
        let done = self.with_conn(|c| c.exec_streaming(cmd.as_bytes(), opts, on_chunk))?;
        // The output went to `on_chunk`; the result carries only the status.
        Output::from_done(Vec::new(), Vec::new(), done, opts)
    }

    /// Throws away every filesystem change since create and starts a fresh
    /// shell. Processes are killed; the image is never touched.
    pub fn reset(&self) -> Result<()> {
        // A snapshot left the current root standing on frozen layers; a
        // reset goes back to the create-time layers.
        self.rotate(&[], &[])?;
        // Only once the agent stands on the create-time layers again.
        if let Ok(mut st) = State::read(&self.dir) {
            if !st.snapshot_layers.is_empty() {
                st.snapshot_layers.clear();
                st.write(&self.dir).map_err(|source| Error::Io { step: "writing state.json", name: self.name.clone(), source })?;
            }
        }
        Ok(())
    }

    /// Swaps in a fresh generation: new upper layers over the create-time
    /// lowers, with `extra` (top-first) stacked above the first overlay's
    /// lowers; `leases` go to the agent, held until the next reset.
    /// Returns the generation name.
    fn rotate(&self, extra: &[PathBuf], leases: &[std::os::fd::BorrowedFd<'_>]) -> Result<String> {
        // The new upper layers and the overlays over them are made here, in
        // the host's mount namespace, and handed to the agent as detached
        // mounts; the agent swaps them in and deletes the old layers in the
        // background, so the cost does not grow with what the sandbox wrote.
        let generation = crate::agent::shell::new_nonce()[..16].to_string();
        if self.state.config.fs == crate::config::FsBackend::Btrfs {
            // A fresh snapshot of the base subvolume, handed over as a
            // detached bind mount; the agent destroys the old one.
            let gen_dir = self.dir.join("gen").join(&generation);
            let made = crate::fs::btrfs::snapshot(&self.state.overlays[0].lowers[0], &gen_dir).map_err(Error::from).and_then(|root| {
                sys::newmount::clone_tree(&root.display().to_string()).map_err(|source| Error::Io {
                    step: "cloning the new root",
                    name: self.name.clone(),
                    source,
                })
            });
            let result = made.and_then(|tree| self.with_conn(|c| c.reset(&generation, &[tree], leases)));
            if result.is_err() {
                crate::fs::btrfs::destroy_root(&gen_dir);
                let _ = std::fs::remove_dir_all(&gen_dir);
            }
            return result.map(|_| generation);
        }
        let io = |source| Error::Io { step: "preparing the next upper layer", name: self.name.clone(), source };
        // With --disk, a fresh tmpfs per generation: the old one goes with
        // the old overlay, so a full layer is freed by the reset itself.
        let disk = match self.state.config.limits.disk_bytes {
            Some(size) => Some(crate::fs::overlay::detached_tmpfs(size)?),
            None => None,
        };
        let base = match &disk {
            Some(fd) => PathBuf::from(sys::fd_path(fd.as_fd()).into_string().unwrap_or_default()),
            None => self.dir.join("gen").join(&generation),
        };
        let mut mounts = Vec::with_capacity(self.state.overlays.len());
        let made = (|| -> Result<()> {
            for (i, spec) in self.state.overlays.iter().enumerate() {
                let (upper, work) = (base.join(format!("u{i}")), base.join(format!("w{i}")));
                std::fs::create_dir_all(&upper).map_err(io)?;
                std::fs::create_dir_all(&work).map_err(io)?;
                let above: &[PathBuf] = if i == 0 { extra } else { &[] };
                let lowers: Vec<String> = above.iter().chain(&spec.lowers).map(|l| l.display().to_string()).collect();
                mounts.push(crate::fs::overlay::detached_overlay(&lowers, &upper.display().to_string(), &work.display().to_string())?);
            }
            Ok(())
        })();
        let result = made.and_then(|()| self.with_conn(|c| c.reset(&generation, &mounts, leases)));
        drop((mounts, disk));
        if result.is_err() && self.state.config.limits.disk_bytes.is_none() {
            let _ = std::fs::remove_dir_all(&base);
        }
        result.map(|_| generation)
    }

    /// A round trip to the agent; returns the current filesystem generation.
    pub fn ping(&self) -> Result<String> {
        self.with_conn(|c| c.ping())
    }

    /// The sandbox's root as its own mount namespace sees it, for the file
    /// API (every path is resolved inside it; see `files`).
    fn rootfs(&self) -> Result<RootFs> {
        let path = format!("/proc/{}/root", self.state.pid);
        let fd = open(path.as_str(), OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
            .map(sys::owned)
            .map_err(|_| Error::Dead { name: self.name.clone() })?;
        // The pid could have been reused between the pidfd and the open:
        // if our agent is still alive now, the fd is its root.
        if !self.is_alive() {
            return Err(Error::Dead { name: self.name.clone() });
        }
        Ok(RootFs::new(fd))
    }

    /// Reads a regular file of the sandbox.
    pub fn read_file(&self, path: &str) -> Result<Vec<u8>> {
        Ok(self.rootfs()?.read_file(path, MAX_READ)?)
    }

    /// Writes a file into the sandbox (parents created), mode 0644.
    pub fn write_file(&self, path: &str, data: &[u8]) -> Result<()> {
        Ok(self.rootfs()?.write_file(path, data, 0o644)?)
    }

    /// Copies a host file or directory tree into the sandbox.
    pub fn copy_to(&self, host_src: impl AsRef<Path>, path: &str) -> Result<()> {
        Ok(self.rootfs()?.copy_to(host_src.as_ref(), path)?)
    }

    /// Copies a sandbox file or directory tree to the host.
    pub fn copy_from(&self, path: &str, host_dst: impl AsRef<Path>) -> Result<()> {
        Ok(self.rootfs()?.copy_from(path, host_dst.as_ref())?)
    }

    /// Deletes the sandbox: processes, mounts, cgroups and directories.
    pub fn delete(mut self) -> Result<()> {
        self.delete_inner(delete::Wait::Background)
    }

    /// Like [`Sandbox::delete`], but also waits until its directories are
    /// removed from disk (the CLI uses this; a library caller usually lets
    /// a background thread do it).
    pub fn delete_and_wait(mut self) -> Result<()> {
        self.delete_inner(delete::Wait::Sync)
    }

    fn delete_inner(&mut self, wait: delete::Wait) -> Result<()> {
        if self.deleted {
            return Ok(());
        }
        self.deleted = true;
        *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = None;
        delete::delete(&self.root, &self.dir, &self.state, &self.pidfd, self.parent, wait)
    }

    /// Stops the sandbox and keeps what its processes changed — its current upper layer,
    /// in the overlayfs format — at `dest` (a path that does not exist yet, on the state
    /// root's filesystem), then deletes the rest. `envbox build` makes a RUN step's layer
    /// this way. Needs an overlayfs sandbox on an image, without `--disk`.
    pub fn finish_into(mut self, dest: &Path) -> Result<()> {
        let refuse = |why: &str| Error::Image { spec: format!("the layer of {}", self.name), message: why.to_string() };
        if self.state.overlays.len() != 1 || self.state.config.fs != crate::config::FsBackend::Overlayfs {
            return Err(refuse("only an overlayfs sandbox on an image has one upper layer"));
        }
        if self.state.config.limits.disk_bytes.is_some() {
            return Err(refuse("its upper layer is a --disk tmpfs, which goes away with it"));
        }
        let generation = self.ping()?;
        if generation.is_empty() || !generation.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(refuse("its agent named an invalid generation"));
        }
        let upper = self.dir.join("gen").join(generation).join("u0");
        // Moved while the sandbox lives and its agent holds the state lock, so garbage
        // collection (which takes a dead sandbox's lock) can never remove it first. A
        // process the command left behind may still write into it until the kill below;
        // once `delete` returns the whole PID namespace is gone and the layer is still.
        let kept = std::fs::rename(&upper, dest).map_err(|source| Error::Io {
            step: "keeping the sandbox's upper layer",
            name: self.name.clone(),
            source,
        });
        self.deleted = true;
        *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let deleted = delete::delete(&self.root, &self.dir, &self.state, &self.pidfd, self.parent, delete::Wait::Sync);
        kept?;
        deleted
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if self.owned && !self.deleted {
            let _ = self.delete_inner(delete::Wait::Background);
        }
    }
}

/// A pidfd for the agent in `state`, if that exact process still runs.
fn open_agent_pidfd(state: &State) -> Option<OwnedFd> {
    let fd = sys::pidfd_open(state.pid).ok()?;
    // Same pid, same start time: our agent, not a process that reused it.
    (state::process_start_time(state.pid)? == state.start_time).then_some(fd)
}

/// One row of `envbox ps`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SandboxInfo {
    pub name: String,
    /// "running" or "dead".
    pub state: String,
    /// Host pid of the sandbox's PID 1.
    pub pid: i32,
    pub image: String,
    /// RFC 3339, UTC.
    pub created: String,
    /// The group of replicas it belongs to (`envbox run --replicas`).
    pub group: Option<String>,
    /// The environment it serves: "function" or "http".
    pub serves: Option<crate::config::EnvKind>,
}

/// The running sandboxes that `name` designates: the sandbox of that name,
/// or every member of the group of that name (sorted by name).
pub fn members(root: &Path, name: &str) -> Result<Vec<SandboxInfo>> {
    let all = list(root)?;
    if let Some(one) = all.iter().find(|i| i.name == name && i.group.as_deref() != Some(name)) {
        return Ok(vec![one.clone()]);
    }
    Ok(all.into_iter().filter(|i| i.name == name || i.group.as_deref() == Some(name)).collect())
}

/// Lists the sandboxes under `root`.
pub fn list(root: &Path) -> Result<Vec<SandboxInfo>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(source) => return Err(Error::StateRoot { path: root.to_path_buf(), source }),
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if validate_name(&name).is_err() {
            continue;
        }
        let Ok(st) = State::read(&entry.path()) else { continue };
        if st.phase != state::Phase::Running {
            continue;
        }
        let alive = open_agent_pidfd(&st).is_some();
        out.push(SandboxInfo {
            name,
            state: if alive { "running" } else { "dead" }.to_string(),
            pid: st.pid,
            image: st.config.image.describe(),
            created: state::rfc3339(st.created),
            group: st.config.group.clone(),
            serves: st.config.serve.as_ref().map(|s| s.kind),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}
