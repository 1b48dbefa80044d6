//! Creating a sandbox, one straight-line sequence. Every resource is owned by
//! the `Undo` guard until the sandbox is complete, so a failure at any step
//! leaves nothing behind (and a crash leaves only what the garbage collector
//! recognises as dead).

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use super::state::{self, Phase, State, LOG_FILE, SOCKET_FILE};
use super::{cgroup_layout, reclaim, require_root, root_tag, Sandbox, CGROUP_PARENT};
use crate::agent::{self, proto, AgentConfig, StartupReply};
use crate::cgroup::{self, Cgroup};
use crate::config::{validate_name, Network, SandboxConfig};
use crate::error::{Error, Result};
use crate::fs::rootfs;
use crate::sys;

/// How long the agent may take to set the sandbox up.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Set by the envbox CLI's `main`: the running executable can be the agent.
pub static CURRENT_EXE_IS_ENVBOX: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Finds the envbox binary that runs as the sandbox's PID 1.
pub(crate) fn agent_binary(config: &SandboxConfig) -> Result<PathBuf> {
    if let Some(p) = &config.agent {
        return Ok(p.clone());
    }
    if let Some(p) = std::env::var_os("ENVBOX_AGENT").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok();
    if CURRENT_EXE_IS_ENVBOX.load(std::sync::atomic::Ordering::Relaxed) {
        if let Some(exe) = exe {
            return Ok(exe);
        }
    }
    // A program embedding the library: look beside it (cargo puts tests in
    // target/*/deps and examples in target/*/examples), then in PATH.
    let mut candidates = Vec::new();
    if let Some(dir) = exe.as_deref().and_then(Path::parent) {
        candidates.push(dir.join("envbox"));
        if let Some(up) = dir.parent() {
            candidates.push(up.join("envbox"));
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("envbox")));
    }
    candidates.into_iter().find(|c| c.is_file()).ok_or_else(|| Error::AgentBinary {
        hint: "set ENVBOX_AGENT=/path/to/envbox, put envbox in PATH, or set SandboxConfig::agent (build it with `cargo build --release`)"
            .into(),
    })
}

/// What has been made so far; undone on drop unless disarmed.
struct Undo {
    root: PathBuf,
    dir: Option<PathBuf>,
    cgroup: Option<Cgroup>,
    agent: Option<Spawned>,
}

impl Undo {
    fn undo(&mut self) -> Result<()> {
        let mut first_err = None;
        if let Some(agent) = self.agent.take() {
            let _ = sys::pidfd_send_signal(agent.pidfd.as_fd(), libc::SIGKILL);
            super::delete::wait_exit(agent.pid, &agent.pidfd, agent.ours, SETUP_TIMEOUT);
        }
        if let Some(cg) = self.cgroup.take() {
            if let Err(e) = cg.kill_all().and_then(|()| cg.remove()) {
                first_err.get_or_insert(Error::from(e));
            }
        }
        if let Some(dir) = self.dir.take() {
            match state::move_to_trash(&self.root, &dir) {
                Ok(trash) => {
                    let _ = std::fs::remove_dir_all(trash);
                }
                Err(source) => {
                    first_err.get_or_insert(Error::Io { step: "removing a half-created sandbox", name: String::new(), source });
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        let _ = self.undo();
    }
}

/// Returns `primary`, with the cleanup failure attached if there was one
/// (STYLE rule 4: a cleanup error never hides the primary error).
fn fail(undo: &mut Undo, primary: Error) -> Error {
    match undo.undo() {
        Ok(()) => primary,
        Err(cleanup) => Error::WithCleanup { primary: Box::new(primary), cleanup: Box::new(cleanup) },
    }
}

/// The state roots whose garbage was collected by this process already.
static COLLECTED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn collect_garbage_once(root: &Path) {
    let mut done = COLLECTED.lock().unwrap_or_else(|p| p.into_inner());
    if !done.iter().any(|r| r == root) {
        done.push(root.to_path_buf());
        drop(done);
        let _ = reclaim::collect(root);
    }
}

pub(super) fn create(config: &SandboxConfig, name: &str) -> Result<Sandbox> {
    require_root()?;
    let _busy = crate::namespace::busy();
    validate_name(name)?;
    config.validate()?;
    // A bad policy file is refused before anything is started.
    let seccomp = crate::security::seccomp::load(&config.seccomp)?;
    let root = state::ensure_root(&config.root).map_err(|source| Error::StateRoot { path: config.root.clone(), source })?;
    collect_garbage_once(&root);
    let agent_path = agent_binary(config)?;
    let io = |step: &'static str| move |source| Error::Io { step, name: name.to_string(), source };

    // Step 1: claim <root>/<name> with its lock held.
    let (dir, lock) = state::claim_dir(&root, name)
        .map_err(|source| Error::StateRoot { path: root.clone(), source })?
        .ok_or_else(|| Error::AlreadyExists { name: name.to_string() })?;
    let mut undo = Undo { root: root.clone(), dir: Some(dir.clone()), cgroup: None, agent: None };

    // Step 2: what the root filesystem is made of. A store image is pulled
    // or imported when missing; its lease (held by the agent from now on)
    // keeps its layers from `envbox rmi`'s garbage collection.
    let (overlays, image) = match &config.image {
        crate::config::Image::Ref(spec) => {
            let resolved = crate::images::resolve(&root, spec).map_err(|e| fail(&mut undo, e))?;
            (rootfs::layers_plan(&resolved.layers), Some(resolved))
        }
        other => (rootfs::plan(other, &root).map_err(|e| fail(&mut undo, e.into()))?, None),
    };
    // --fs btrfs: the image flattened once into a base subvolume; the
    // sandbox's root is a snapshot of it (the state records the base as
    // the only "lower", for resets).
    let overlays = if config.fs == crate::config::FsBackend::Btrfs {
        if !crate::fs::btrfs::is_btrfs(&root) {
            return Err(fail(
                &mut undo,
                crate::config::ConfigError::BtrfsUnsupported {
                    reason: "needs the state root on a btrfs filesystem (set --root or ENVBOX_ROOT)",
                }
                .into(),
            ));
        }
        let layers: Vec<PathBuf> = overlays[0].lowers.iter().rev().cloned().collect();
        let base = crate::fs::btrfs::base(&root, &layers).map_err(|e| fail(&mut undo, e.into()))?;
        crate::fs::btrfs::snapshot(&base, &dir.join("gen").join("0")).map_err(|e| fail(&mut undo, e.into()))?;
        vec![rootfs::OverlaySpec { target: "/".into(), lowers: vec![base] }]
    } else {
        overlays
    };
    // The image's config under the caller's: its environment first (the
    // caller's variables win), its working directory unless one is given.
    let mut env = image.as_ref().map(|i| i.env.clone()).unwrap_or_default();
    env.retain(|(k, _)| !config.env.iter().any(|(ck, _)| ck == k));
    env.extend(config.env.iter().cloned());
    let image_id = image.as_ref().and_then(|i| i.image_id.clone());
    let image_command = image.as_ref().map(|i| i.command.clone()).unwrap_or_default();
    let working_dir = image.as_ref().and_then(|i| i.working_dir.clone());
    // The user: the caller's, else the image's (a snapshot's: the one its
    // sandbox ran as), else root. The agent looks names up inside.
    let user = config.user.clone().or_else(|| image.as_ref().and_then(|i| i.user.clone()));
    let lease = image.map(|i| i.lease);
    let workdir = match working_dir {
        Some(dir) if config.workdir == "/" && dir.starts_with('/') => dir,
        _ => config.workdir.clone(),
    };

    // Step 3: state.json before any kernel object exists, so a crash from
    // here on leaves something the garbage collector can name.
    let id = format!("{}-{}-{}", root_tag(&root), name, &agent::shell::new_nonce()[..8]);
    let mut st = State {
        name: name.to_string(),
        id: id.clone(),
        phase: Phase::Creating,
        pid: 0,
        start_time: 0,
        created: state::now_unix(),
        config: config.clone(),
        overlays: overlays.clone(),
        snapshot_layers: Vec::new(),
        image_id,
        env: env.clone(),
        workdir: workdir.clone(),
        image_command,
        user: user.clone(),
    };
    st.write(&dir).map_err(|e| fail(&mut undo, io("writing state.json")(e)))?;

    // Step 4: cgroups, only when a limit is asked for. Moving a process
    // into a cgroup costs a global RCU grace period on current kernels
    // (~9 ms here), and without limits nothing needs one: PID 1's death
    // kills the whole PID namespace.
    let limits =
        cgroup::Limits { memory_bytes: config.limits.memory_bytes, cpu_millis: config.limits.cpu_millis, pids_max: config.limits.pids };
    let mut oom_events = None;
    if limits != cgroup::Limits::default() {
        let layout = cgroup_layout().map_err(|e| fail(&mut undo, e))?;
        let cg = Cgroup::create(layout, CGROUP_PARENT, &id, &limits).map_err(|e| fail(&mut undo, e.into()))?;
        oom_events = config.limits.memory_bytes.and(cg.oom_events_path());
        undo.cgroup = Some(cg);
    }

    // Step 5: the agent's endpoints: the socket clients connect to (bound
    // here, so it exists before the agent runs and works whatever network
    // the sandbox has), a control channel, its log, and /dev/null.
    let listener = UnixListener::bind(dir.join(SOCKET_FILE)).map_err(|e| fail(&mut undo, io("binding the agent socket")(e)))?;
    let (mut control, agent_control) = UnixStream::pair().map_err(|e| fail(&mut undo, io("creating the control channel")(e)))?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(dir.join(LOG_FILE))
        .map_err(|e| fail(&mut undo, io("opening the agent log")(e)))?;
    let devnull = File::open("/dev/null").map_err(|e| fail(&mut undo, io("opening /dev/null")(e)))?;
    let env_fds = match &config.serve {
        Some(serve) => Some(EnvFds::open(&dir, serve).map_err(|e| fail(&mut undo, io("binding the environment's endpoints")(e)))?),
        None => None,
    };
    let parent_pidfd = if config.detached {
        None
    } else {
        let me = i32::try_from(std::process::id()).unwrap_or(0);
        Some(sys::pidfd_open(me).map_err(|e| fail(&mut undo, io("opening a pidfd of this process")(e)))?)
    };

    // Step 6: start the agent in new namespaces. The cgroup namespace is
    // not among them: the agent unshares it after joining its cgroups.
    // Its network namespace (--net none) was made ahead of time; the agent
    // joins it.
    let namespaces = libc::CLONE_NEWPID | libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
    let netns = match config.network {
        Network::None => Some(crate::namespace::take_netns().map_err(|e| fail(&mut undo, io("making a network namespace")(e)))?),
        Network::Host => None,
        Network::Egress => {
            let ns = crate::namespace::take_netns().map_err(|e| fail(&mut undo, io("making a network namespace")(e)))?;
            crate::net::setup_egress(std::os::fd::AsFd::as_fd(&ns), &id, &config.egress_allow)
                .map_err(|e| fail(&mut undo, Error::Setup { name: name.to_string(), message: crate::error::chain(&e) }))?;
            Some(ns)
        }
    };
    let inherited = AgentFds {
        devnull: &devnull,
        log: &log,
        control: &agent_control,
        listener: &listener,
        lock: &lock,
        parent: parent_pidfd.as_ref(),
        netns: netns.as_ref(),
        env: env_fds.as_ref(),
        lease: lease.as_ref().map(std::os::fd::AsFd::as_fd),
    };
    let spawned = spawn_agent(&agent_path, namespaces, &inherited).map_err(|e| fail(&mut undo, io("starting the sandbox agent")(e)))?;
    let pid = spawned.pid;
    undo.agent = Some(spawned);
    drop((agent_control, listener, devnull, log, parent_pidfd, netns, env_fds, lease));

    // Step 7: into the cgroups before it does anything.
    if let Some(cg) = &undo.cgroup {
        cg.add_process(pid).map_err(|e| fail(&mut undo, e.into()))?;
    }

    // Step 8: send the config; the agent mounts, pivots and starts the shell.
    let agent_cfg = AgentConfig {
        name: name.to_string(),
        state_dir: dir.clone(),
        overlays,
        volumes: config.volumes.clone(),
        env,
        workdir,
        network: config.network,
        oom_events,
        generation: "0".into(),
        serve: config.serve.clone(),
        disk_bytes: config.limits.disk_bytes,
        fs: config.fs,
        seccomp,
        user,
    };
    proto::write_frame(&mut control, proto::kind::EXEC, &proto::json(&agent_cfg))
        .map_err(|e| fail(&mut undo, io("sending the agent its config")(e)))?;
    let _ = control.set_read_timeout(Some(SETUP_TIMEOUT));
    let reply: StartupReply = match proto::read_frame(&mut control) {
        Ok(Some((_, payload))) => {
            serde_json::from_slice(&payload).unwrap_or(StartupReply { error: Some("undecodable setup reply".into()) })
        }
        Ok(None) => {
            // The log goes away with the half-created sandbox: quote it.
            let log = std::fs::read(dir.join(LOG_FILE)).unwrap_or_default();
            let tail = String::from_utf8_lossy(&log[log.len().saturating_sub(2048)..]).trim().to_string();
            StartupReply { error: Some(format!("the agent exited during setup: {tail}")) }
        }
        Err(e) => StartupReply { error: Some(format!("no answer from the agent during setup: {e}")) },
    };
    if let Some(message) = reply.error {
        return Err(fail(&mut undo, Error::Setup { name: name.to_string(), message }));
    }

    // Step 9: record it as running.
    let start_time = state::process_start_time(pid).unwrap_or(0);
    st.phase = Phase::Running;
    st.pid = pid;
    st.start_time = start_time;
    st.write(&dir).map_err(|e| fail(&mut undo, io("writing state.json")(e)))?;
    proto::write_frame(&mut control, proto::kind::COMMIT, b"").map_err(|e| fail(&mut undo, io("committing the sandbox")(e)))?;
    drop(control);

    // Done: nothing to undo; the agent holds the lock from now on.
    let agent = undo.agent.take().ok_or_else(|| Error::Dead { name: name.to_string() })?;
    undo.cgroup = None;
    undo.dir = None;
    drop(lock);
    Ok(Sandbox {
        name: name.to_string(),
        root,
        dir,
        state: st,
        pidfd: agent.pidfd,
        conn: Mutex::new(None),
        owned: !config.detached,
        parent: agent.ours,
        deleted: false,
    })
}

/// What the agent inherits, by fd number (see the `agent::FD_*` constants).
struct AgentFds<'a> {
    devnull: &'a File,
    log: &'a File,
    control: &'a UnixStream,
    listener: &'a UnixListener,
    lock: &'a File,
    parent: Option<&'a OwnedFd>,
    netns: Option<&'a OwnedFd>,
    env: Option<&'a EnvFds>,
    lease: Option<std::os::fd::BorrowedFd<'a>>,
}

/// The environment's endpoints, made by the host: its unix socket (in the
/// state directory, where clients find it), its published TCP port (bound
/// in the host's network namespace, so it works with `--net none`) and its
/// log file.
struct EnvFds {
    unix: UnixListener,
    tcp: Option<std::net::TcpListener>,
    log: File,
}

impl EnvFds {
    fn open(dir: &Path, serve: &crate::config::ServeConfig) -> std::io::Result<Self> {
        let unix = UnixListener::bind(dir.join(state::ENV_SOCKET_FILE))?;
        let tcp =
            match serve.publish {
                Some(addr) => Some(std::net::TcpListener::bind(addr).map_err(|e| {
                    std::io::Error::new(e.kind(), format!("cannot listen on {addr} for --publish: {e} (is the port in use?)"))
                })?),
                None => None,
            };
        let log = OpenOptions::new().create(true).append(true).mode(0o600).open(dir.join(state::ENV_LOG_FILE))?;
        Ok(EnvFds { unix, tcp, log })
    }
}

/// A started agent: its pid, a pidfd, and whether it is our child (exec'd
/// by us, so we reap it) or the zygote's.
struct Spawned {
    pid: i32,
    pidfd: OwnedFd,
    ours: bool,
}

fn spawn_agent(agent: &Path, namespaces: libc::c_int, fds: &AgentFds<'_>) -> std::io::Result<Spawned> {
    let mut targets = vec![
        (fds.devnull.as_fd(), 0),
        (fds.log.as_fd(), 1),
        (fds.log.as_fd(), 2),
        (fds.control.as_fd(), agent::FD_CONTROL),
        (fds.listener.as_fd(), agent::FD_LISTEN),
        (fds.lock.as_fd(), agent::FD_LOCK),
    ];
    if let Some(p) = fds.parent {
        targets.push((p.as_fd(), agent::FD_PARENT));
    }
    if let Some(n) = fds.netns {
        targets.push((n.as_fd(), agent::FD_NETNS));
    }
    if let Some(lease) = fds.lease {
        targets.push((lease, agent::FD_LEASE));
    }
    if let Some(env) = fds.env {
        targets.push((env.unix.as_fd(), agent::FD_ENV_LISTEN));
        if let Some(t) = &env.tcp {
            targets.push((t.as_fd(), agent::FD_ENV_TCP));
        }
        targets.push((env.log.as_fd(), agent::FD_ENV_LOG));
    }
    // Forked by this process's zygote when it has one (no exec), else
    // exec'd here.
    if let Some(forked) = super::zygote::spawn(agent, namespaces, &targets) {
        return forked.map(|(pid, pidfd)| Spawned { pid, pidfd, ours: false });
    }
    sys::spawn_with_fds(agent, &["envbox", agent::AGENT_SUBCOMMAND], &targets, namespaces).map(|(pid, pidfd)| Spawned {
        pid,
        pidfd,
        ours: true,
    })
}
