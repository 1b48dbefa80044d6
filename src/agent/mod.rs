//! The sandbox agent: PID 1 inside the sandbox (the envbox binary, run with
//! the hidden `__agent` subcommand).
//!
//! It sets the sandbox up (mounts, pivot_root), reaps every orphan, keeps
//! the persistent shell, serves commands and resets on a unix socket that
//! the host bound in the sandbox's state directory, and exits when the
//! process that created the sandbox dies (unless the sandbox is detached).
//! Its root is the sandbox, it keeps its capabilities (a reset mounts), it is
//! not dumpable and it is immune to the OOM killer; what it runs is not.

pub mod dispatch;
pub mod proto;
pub mod setup;
pub mod shell;
pub mod user;
pub mod worker;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use self::proto::{kind, AgentError, ErrorKind, ExecDone, ExecRequest, Pong, ResetDone};
use self::setup::HostHandles;
use self::shell::Shell;
use crate::config::{Network, Volume};
use crate::fs::rootfs::OverlaySpec;
use crate::sys;

/// Fd numbers the agent inherits from the host.
pub const FD_CONTROL: RawFd = 3;
/// The listening unix socket of the sandbox (bound by the host).
pub const FD_LISTEN: RawFd = 4;
/// The sandbox's lock file, held (shared with the host's create) for the
/// agent's whole life: "lock held" means "sandbox alive".
pub const FD_LOCK: RawFd = 5;
/// A pidfd of the creating process; present unless the sandbox is detached.
pub const FD_PARENT: RawFd = 6;
/// The sandbox's network namespace, made ahead by the host; present with
/// `--net none`.
pub const FD_NETNS: RawFd = 7;

/// The environment's unix socket (bound by the host), when it serves one.
pub const FD_ENV_LISTEN: RawFd = 8;
/// The environment's published TCP port (bound by the host), if any.
pub const FD_ENV_TCP: RawFd = 9;
/// The environment's log file (opened by the host, append-only).
pub const FD_ENV_LOG: RawFd = 10;

/// A lease on the sandbox's store image (a shared flock), held for the
/// agent's whole life so the image's layers are never collected under it.
pub const FD_LEASE: RawFd = 11;

/// Cap on the environment's log file.
const ENV_LOG_CAP: u64 = 32 << 20;

/// The hidden subcommand that runs the agent.
pub const AGENT_SUBCOMMAND: &str = "__agent";

/// Everything the agent needs, sent by the host over the control socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentConfig {
    pub name: String,
    pub state_dir: PathBuf,
    pub overlays: Vec<OverlaySpec>,
    pub volumes: Vec<Volume>,
    pub env: Vec<(String, String)>,
    pub workdir: String,
    pub network: Network,
    /// The memory cgroup file that counts OOM kills, when a memory limit is set.
    pub oom_events: Option<PathBuf>,
    /// Name of the first generation's directory under `gen/`.
    pub generation: String,
    /// The environment to serve, if any.
    #[serde(default)]
    pub serve: Option<crate::config::ServeConfig>,
    /// Size of the tmpfs that holds the upper layers (`--disk`); `None`:
    /// they live in the state directory.
    #[serde(default)]
    pub disk_bytes: Option<u64>,
    /// How the root is made (btrfs: the host made `gen/0/root`, a snapshot).
    #[serde(default)]
    pub fs: crate::config::FsBackend,
    /// The seccomp filter of the shell, the env worker and the env server.
    #[serde(default)]
    pub seccomp: crate::security::seccomp::SeccompPolicy,
    /// The user they run as, `USER[:GROUP]`, resolved by the agent in the
    /// sandbox's /etc/passwd and /etc/group (see [`user`]); `None`: root.
    #[serde(default)]
    pub user: Option<String>,
}

/// The agent's answer to the setup.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StartupReply {
    pub error: Option<String>,
}

/// Processes whose exit status the reaper keeps (the shell, the worker).
static WATCHED: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());
/// Exit statuses of reaped watched processes, by pid.
static EXITS: Mutex<BTreeMap<i32, i32>> = Mutex::new(BTreeMap::new());

/// Asks the reaper to keep `pid`'s exit status for [`take_exit`].
pub fn watch_pid(pid: i32) {
    if let Ok(mut w) = WATCHED.lock() {
        w.insert(pid);
    }
}

/// The exit status of a watched process, once reaped.
fn take_exit(pid: i32) -> Option<i32> {
    EXITS.lock().ok().and_then(|mut m| m.remove(&pid))
}

/// Waits up to `wait` for a watched process to be reaped.
pub async fn wait_exit(pid: i32, wait: Duration) -> Option<i32> {
    let deadline = Instant::now() + wait;
    loop {
        reap_all_nonblocking();
        if let Some(code) = take_exit(pid) {
            return Some(code);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn status_code(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, sig, _) => Some(128 + sig as i32),
        _ => None,
    }
}

fn record_exit(status: WaitStatus) {
    if let (Some(pid), Some(code)) = (status.pid(), status_code(status)) {
        let watched = WATCHED.lock().is_ok_and(|mut w| w.remove(&pid.as_raw()));
        if watched {
            if let Ok(mut m) = EXITS.lock() {
                m.insert(pid.as_raw(), code);
            }
        }
    }
}

/// Reaps every exited child without blocking (PID 1's duty: orphans of the
/// whole sandbox are re-parented to us).
pub fn reap_all_nonblocking() {
    while let Ok(status) = waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL)) {
        if status == WaitStatus::StillAlive {
            break;
        }
        record_exit(status);
    }
}

/// Reaps until no child is left (after `kill(-1, SIGKILL)`).
fn reap_all_blocking() {
    while let Ok(status) = waitpid(None::<Pid>, Some(WaitPidFlag::__WALL)) {
        record_exit(status);
    }
}

/// Entry point of `envbox __agent`. Returns the process exit code.
pub fn main() -> i32 {
    sys::unblock_all_signals();
    let _ = nix::sys::prctl::set_dumpable(false);
    let _ = std::fs::write("/proc/self/oom_score_adj", "-1000");
    let Some(control) = sys::take_inherited_fd(FD_CONTROL) else {
        eprintln!("envbox: `{AGENT_SUBCOMMAND}` is internal: it is the PID 1 of a sandbox and is started by `envbox create`");
        return 2;
    };
    let listen = sys::take_inherited_fd(FD_LISTEN);
    let lock = sys::take_inherited_fd(FD_LOCK);
    let parent = sys::take_inherited_fd(FD_PARENT);
    let env_fds = (sys::take_inherited_fd(FD_ENV_LISTEN), sys::take_inherited_fd(FD_ENV_TCP), sys::take_inherited_fd(FD_ENV_LOG));
    // Never used, only held: see FD_LEASE.
    let lease = sys::take_inherited_fd(FD_LEASE);
    if let Some(netns) = sys::take_inherited_fd(FD_NETNS) {
        if let Err(e) = nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET) {
            let mut control = StdUnixStream::from(control);
            return startup_failed(&mut control, &format!("joining the sandbox's network namespace failed: {e}"));
        }
    }
    let mut control = StdUnixStream::from(control);
    let cfg: AgentConfig = match proto::read_frame(&mut control) {
        Ok(Some((_, payload))) => match serde_json::from_slice(&payload) {
            Ok(cfg) => cfg,
            Err(e) => return startup_failed(&mut control, &format!("bad agent config: {e}")),
        },
        // The creator died before sending the config: nothing to do.
        _ => return 1,
    };
    let Some(listen) = listen else { return startup_failed(&mut control, "no listening socket was passed") };
    // Compiled once, here: the pre-exec hooks of the children only install it.
    if let Err(e) = crate::security::seccomp::prepare(&cfg.seccomp) {
        return startup_failed(&mut control, &crate::error::chain(&e));
    }
    // The shell is made non-dumpable through suid_dumpable (see
    // sys::make_next_exec_undumpable); 1 ("debug") defeats that.
    if std::fs::read_to_string("/proc/sys/fs/suid_dumpable").is_ok_and(|v| v.trim() == "1") {
        eprintln!("envbox: fs.suid_dumpable is 1: commands can open the shell's /proc/<pid>/fd and memory; set it to 0");
    }
    // The OOM counter lives in the host's cgroupfs: open it before pivot_root.
    let oom = cfg.oom_events.as_ref().and_then(|p| File::open(p).ok());
    let handles = match setup::setup(&cfg) {
        Ok(h) => h,
        Err(e) => return startup_failed(&mut control, &crate::error::chain(&e)),
    };
    // Inside the sandbox's root now: its own user database names the user,
    // once, before anything runs (an unknown name fails the create).
    let user = match cfg.user.as_deref().map(user::resolve_in_sandbox).transpose() {
        Ok(u) => u,
        Err(e) => return startup_failed(&mut control, &crate::error::chain(&e)),
    };
    // The shell's pipes register with the runtime's reactor.
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return startup_failed(&mut control, &format!("starting the agent's runtime failed: {e}")),
    };
    let _guard = rt.enter();
    let env = match &cfg.serve {
        Some(serve) => match EnvEndpoints::new(serve, &cfg, user.clone(), env_fds, oom.as_ref()) {
            Ok(e) => Some(e),
            Err(e) => return startup_failed(&mut control, &format!("setting up the environment's endpoints failed: {e}")),
        },
        None => None,
    };
    let mut manager = Manager::new(cfg, handles, user, oom, env.as_ref().map(|e| e.dispatcher.clone()));
    let reply = proto::json(&StartupReply { error: None });
    if proto::write_frame(&mut control, kind::PONG, &reply).is_err() {
        return 1;
    }
    // The host records the sandbox as running and then commits. A creator
    // that dies before (kill -9 of `envbox create` mid-way) would leave a
    // running sandbox that nobody lists or owns: without the commit, the
    // agent exits, and the next garbage collection removes the rest.
    let _ = std::thread::Builder::new().name("envbox-commit".into()).spawn(move || {
        if !matches!(proto::read_frame(&mut control), Ok(Some((kind::COMMIT, _)))) {
            #[allow(clippy::exit)]
            std::process::exit(1);
        }
    });
    // The sandbox is up; the shell starts while the host finishes create
    // (a first command waits for it). Should it fail to start, the next
    // command tries again and reports why.
    let _ = manager.ensure_shell();
    let code = run_event_loop(&rt, manager, listen, lock, parent, env);
    drop(lease);
    code
}

/// The environment's dispatcher and the sockets it serves on.
struct EnvEndpoints {
    dispatcher: Rc<dispatch::Dispatcher>,
    unix: std::os::unix::net::UnixListener,
    tcp: Option<std::net::TcpListener>,
}

impl EnvEndpoints {
    fn new(
        serve: &crate::config::ServeConfig,
        cfg: &AgentConfig,
        user: Option<user::User>,
        fds: (Option<OwnedFd>, Option<OwnedFd>, Option<OwnedFd>),
        oom: Option<&File>,
    ) -> std::io::Result<Self> {
        let (unix, tcp, log) = fds;
        let unix = std::os::unix::net::UnixListener::from(unix.ok_or_else(|| std::io::Error::other("no environment socket was passed"))?);
        unix.set_nonblocking(true)?;
        let tcp = tcp.map(std::net::TcpListener::from);
        if let Some(t) = &tcp {
            t.set_nonblocking(true)?;
        }
        let log = File::from(log.ok_or_else(|| std::io::Error::other("no environment log was passed"))?);
        let sink = worker::LogSink::new(log, ENV_LOG_CAP);
        let spec = worker::ProcessSpec { python: serve.python.clone(), app_dir: serve.app_dir.clone(), env: cfg.env.clone(), user };
        let backend = if dispatch::uses_worker(serve.kind) {
            let oom = oom.and_then(|f| f.try_clone().ok());
            dispatch::Backend::Function(worker::Worker::new(spec, sink, oom))
        } else {
            dispatch::Backend::Http(worker::Upstream::new(spec, serve.command.clone(), serve.upstream_port, sink))
        };
        Ok(EnvEndpoints { dispatcher: dispatch::Dispatcher::new(serve.clone(), backend), unix, tcp })
    }
}

/// Reports a failure before [`main`] could start (the zygote's child could
/// not enter its namespaces) on the control channel at [`FD_CONTROL`].
pub fn report_startup_failure(message: &str) -> i32 {
    match sys::take_inherited_fd(FD_CONTROL) {
        Some(control) => startup_failed(&mut StdUnixStream::from(control), message),
        None => 1,
    }
}

fn startup_failed(control: &mut StdUnixStream, message: &str) -> i32 {
    let _ = proto::write_frame(control, kind::ERROR, &proto::json(&StartupReply { error: Some(message.to_string()) }));
    let _ = control.flush();
    1
}

fn run_event_loop(
    rt: &tokio::runtime::Runtime,
    manager: Manager,
    listen: OwnedFd,
    lock: Option<OwnedFd>,
    parent: Option<OwnedFd>,
    env: Option<EnvEndpoints>,
) -> i32 {
    let local = tokio::task::LocalSet::new();
    local.block_on(rt, async move {
        if let Some(env) = env {
            start_backend(&env.dispatcher);
            if let Ok(l) = UnixListener::from_std(env.unix) {
                tokio::task::spawn_local(dispatch::accept_unix(env.dispatcher.clone(), l));
            }
            if let Some(t) = env.tcp.and_then(|t| tokio::net::TcpListener::from_std(t).ok()) {
                tokio::task::spawn_local(dispatch::accept_tcp(env.dispatcher.clone(), t));
            }
        }
        // Held until we exit: the host's "is it alive" test.
        let _lock = lock;
        let std_listener = std::os::unix::net::UnixListener::from(listen);
        if std_listener.set_nonblocking(true).is_err() {
            return 1;
        }
        let Ok(listener) = UnixListener::from_std(std_listener) else { return 1 };
        let (tx, rx) = mpsc::unbounded_channel();
        let generation = manager.generation.clone();
        tokio::task::spawn_local(manager.run(rx));
        tokio::task::spawn_local(reaper());
        if let Some(parent) = parent {
            // The creator's pidfd becomes readable when it exits (kill -9
            // included): take the sandbox down with it. A plain thread: it
            // only blocks in poll(2).
            let _ = std::thread::Builder::new().name("envbox-parent".into()).spawn(move || {
                let mut fds = [nix::poll::PollFd::new(std::os::fd::AsFd::as_fd(&parent), nix::poll::PollFlags::POLLIN)];
                while !matches!(nix::poll::poll(&mut fds, nix::poll::PollTimeout::NONE), Ok(n) if n > 0) {}
                // PID 1 exiting takes the whole sandbox down: that is the point.
                #[allow(clippy::exit)]
                std::process::exit(0);
            });
        }
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::task::spawn_local(serve_connection(stream, tx.clone(), generation.clone()));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    })
}

/// Starts the environment's worker or server.
fn start_backend(d: &dispatch::Dispatcher) {
    match &d.backend {
        dispatch::Backend::Function(w) => w.start(),
        dispatch::Backend::Http(u) => u.start(),
    }
}

/// Reads one frame, collecting the fds that arrive with it (SCM_RIGHTS).
async fn read_frame_with_fds(stream: &UnixStream, fds: &mut Vec<OwnedFd>) -> std::io::Result<Option<(u8, Vec<u8>)>> {
    async fn fill(stream: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> std::io::Result<bool> {
        let mut got = 0;
        while got < buf.len() {
            stream.readable().await?;
            let fd = std::os::fd::AsRawFd::as_raw_fd(stream);
            match stream.try_io(tokio::io::Interest::READABLE, || sys::recv_with_fds(fd, &mut buf[got..], fds)) {
                Ok(0) if got == 0 => return Ok(false),
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
    let mut head = [0u8; 5];
    if !fill(stream, &mut head, fds).await? {
        return Ok(None);
    }
    let (k, len) = proto::parse_header(head)?;
    let mut payload = vec![0u8; len];
    if !fill(stream, &mut payload, fds).await? && len > 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(Some((k, payload)))
}

async fn reaper() {
    let Ok(mut sig) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()) else { return };
    loop {
        sig.recv().await;
        reap_all_nonblocking();
    }
}

/// One request for the manager, with the connection's write half to answer
/// on (handed back when done, so output streams without an extra copy).
struct Job {
    kind: u8,
    payload: Vec<u8>,
    /// File descriptors that came with the request (a reset's mounts).
    fds: Vec<OwnedFd>,
    writer: OwnedWriteHalf,
    done: oneshot::Sender<OwnedWriteHalf>,
}

async fn serve_connection(stream: UnixStream, jobs: mpsc::UnboundedSender<Job>, generation: Rc<std::cell::RefCell<String>>) {
    let (reader, mut writer) = stream.into_split();
    loop {
        let mut fds = Vec::new();
        let (k, payload) = match read_frame_with_fds(reader.as_ref(), &mut fds).await {
            Ok(Some(frame)) => frame,
            Ok(None) => return,
            Err(e) => {
                let err = AgentError { kind: ErrorKind::BadRequest, message: format!("bad frame: {e}") };
                let _ = proto::write_frame_async(&mut writer, kind::ERROR, &proto::json(&err)).await;
                return;
            }
        };
        match k {
            kind::PING => {
                let pong = Pong { generation: generation.borrow().clone() };
                if proto::write_frame_async(&mut writer, kind::PONG, &proto::json(&pong)).await.is_err() {
                    return;
                }
            }
            kind::EXEC | kind::RESET => {
                let (done, back) = oneshot::channel();
                if jobs.send(Job { kind: k, payload, fds, writer, done }).is_err() {
                    return;
                }
                match back.await {
                    Ok(w) => writer = w,
                    Err(_) => return,
                }
            }
            other => {
                let err = AgentError { kind: ErrorKind::BadRequest, message: format!("unknown request kind {other}") };
                if proto::write_frame_async(&mut writer, kind::ERROR, &proto::json(&err)).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// How a command's wait ended.
enum Completion {
    /// The shell reported the command's exit code.
    Code(i32),
    /// The shell is gone (exit, exec, killed) or its signal pipe broke.
    ShellGone,
    /// Timed out, or the client went away: the command must stop. Killing
    /// only its child processes is not enough (in `sleep 9; rm -rf /x` the
    /// shell would go on with the rest of the list, and a builtin loop has
    /// no child at all), so the shell goes too and the next command gets a
    /// fresh one.
    Killed,
    /// A reset arrived and preempts the command.
    Aborted,
}

/// Owns the shell and the filesystem generation; runs jobs one at a time.
struct Manager {
    cfg: AgentConfig,
    handles: HostHandles,
    /// The user the shell runs as (`None`: root), resolved at start.
    user: Option<user::User>,
    shell: Option<Shell>,
    generation: Rc<std::cell::RefCell<String>>,
    pending: VecDeque<Job>,
    oom: Option<File>,
    env: Option<Rc<dispatch::Dispatcher>>,
    /// Leases on the snapshot layers of the current root.
    leases: Vec<OwnedFd>,
}

/// Output accounting for one stream of one command.
#[derive(Default)]
struct StreamState {
    sent: u64,
    truncated: bool,
    eof: bool,
}

impl Manager {
    fn new(
        cfg: AgentConfig,
        handles: HostHandles,
        user: Option<user::User>,
        oom: Option<File>,
        env: Option<Rc<dispatch::Dispatcher>>,
    ) -> Self {
        let generation = Rc::new(std::cell::RefCell::new(cfg.generation.clone()));
        Manager { cfg, handles, user, shell: None, generation, pending: VecDeque::new(), oom, env, leases: Vec::new() }
    }

    fn ensure_shell(&mut self) -> std::io::Result<()> {
        if self.shell.is_none() {
            let sh = shell::spawn(&shell::ShellSpec { env: &self.cfg.env, workdir: &self.cfg.workdir, user: self.user.as_ref() })?;
            watch_pid(sh.pid);
            self.shell = Some(sh);
        }
        Ok(())
    }

    fn oom_kills(&mut self) -> Option<u64> {
        let f = self.oom.as_mut()?;
        let mut text = String::new();
        f.rewind().ok()?;
        f.read_to_string(&mut text).ok()?;
        text.lines().find_map(|l| l.strip_prefix("oom_kill ")).and_then(|n| n.trim().parse().ok())
    }

    async fn run(mut self, mut jobs: mpsc::UnboundedReceiver<Job>) {
        loop {
            let job = match self.pending.pop_front() {
                Some(j) => j,
                None => match jobs.recv().await {
                    Some(j) => j,
                    None => return,
                },
            };
            let Job { kind: k, payload, fds, mut writer, done } = job;
            if k == kind::RESET {
                self.reset(&payload, fds, &mut writer).await;
            } else {
                match proto::decode_exec(&payload) {
                    Ok((req, cmd)) => {
                        let cmd = cmd.to_vec();
                        self.exec(req, &cmd, &mut writer, &mut jobs).await;
                    }
                    Err(message) => {
                        let err = AgentError { kind: ErrorKind::BadRequest, message };
                        let _ = proto::write_frame_async(&mut writer, kind::ERROR, &proto::json(&err)).await;
                    }
                }
            }
            let _ = done.send(writer);
        }
    }

    /// Ends the current shell and returns its exit code.
    fn finish_shell(&mut self, force: bool) -> i32 {
        let Some(sh) = self.shell.take() else { return 137 };
        let pid = Pid::from_raw(sh.pid);
        if let Some(code) = take_exit(sh.pid) {
            return code;
        }
        if force {
            let _ = kill(pid, Signal::SIGKILL);
        }
        // Its signal pipe closed, so it is exiting; if it closed the pipe
        // but lives on, it is broken: kill it rather than wait forever.
        for _ in 0..200 {
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_micros(250)),
                Ok(status) => return status_code(status).unwrap_or(137),
                Err(_) => return take_exit(sh.pid).unwrap_or(137),
            }
        }
        let _ = kill(pid, Signal::SIGKILL);
        waitpid(pid, None).ok().and_then(status_code).unwrap_or(137)
    }

    async fn send(writer: &mut OwnedWriteHalf, k: u8, payload: &[u8], client_gone: &mut bool) {
        if !*client_gone && proto::write_frame_async(writer, k, payload).await.is_err() {
            *client_gone = true;
        }
    }

    /// Reads what is available on one output pipe and forwards it.
    async fn forward(
        pipe: &tokio::net::unix::pipe::Receiver,
        k: u8,
        state: &mut StreamState,
        cap: u64,
        writer: &mut OwnedWriteHalf,
        client_gone: &mut bool,
        buf: &mut [u8],
    ) {
        loop {
            match pipe.try_read(buf) {
                Ok(0) => {
                    state.eof = true;
                    return;
                }
                Ok(n) => {
                    let room = usize::try_from(cap.saturating_sub(state.sent)).unwrap_or(usize::MAX);
                    let keep = n.min(room);
                    if keep < n {
                        state.truncated = true;
                    }
                    if keep > 0 {
                        state.sent += keep as u64;
                        Self::send(writer, k, &buf[..keep], client_gone).await;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    state.eof = true;
                    return;
                }
            }
        }
    }

    async fn exec(&mut self, req: ExecRequest, cmd: &[u8], writer: &mut OwnedWriteHalf, jobs: &mut mpsc::UnboundedReceiver<Job>) {
        let start = Instant::now();
        if let Err(e) = self.ensure_shell() {
            let err = AgentError { kind: ErrorKind::ShellSpawn, message: format!("starting the shell failed: {e}") };
            let _ = proto::write_frame_async(writer, kind::ERROR, &proto::json(&err)).await;
            return;
        }
        let oom_before = self.oom_kills();
        let nonce = shell::new_nonce();
        let line = shell::command_line(cmd, &nonce);
        let cap = req.max_output;
        let mut out = StreamState::default();
        let mut err = StreamState::default();
        let mut client_gone = false;
        let mut timed_out = false;
        let deadline = req.timeout_ms.map(|ms| tokio::time::Instant::now() + Duration::from_millis(ms));
        let mut buf = vec![0u8; 64 * 1024];
        let completion = {
            let Some(sh) = self.shell.as_mut() else { return };
            use tokio::io::AsyncWriteExt;
            if sh.stdin.write_all(&line).await.is_err() {
                Completion::ShellGone
            } else {
                loop {
                    if client_gone {
                        break Completion::Killed;
                    }
                    tokio::select! {
                        biased;
                        r = sh.signal.readable() => {
                            if r.is_err() { break Completion::ShellGone; }
                            match sh.read_signal() {
                                Ok(true) => {
                                    if let Some(code) = shell::take_completion(&mut sh.signal_buf, &nonce) {
                                        break Completion::Code(code);
                                    }
                                }
                                _ => break Completion::ShellGone,
                            }
                        }
                        r = sh.stdout.readable(), if !out.eof => {
                            if r.is_err() { out.eof = true; continue; }
                            Self::forward(&sh.stdout, kind::STDOUT, &mut out, cap, writer, &mut client_gone, &mut buf).await;
                        }
                        r = sh.stderr.readable(), if !err.eof => {
                            if r.is_err() { err.eof = true; continue; }
                            Self::forward(&sh.stderr, kind::STDERR, &mut err, cap, writer, &mut client_gone, &mut buf).await;
                        }
                        _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {
                            timed_out = true;
                            break Completion::Killed;
                        }
                        job = jobs.recv() => match job {
                            Some(j) if j.kind == kind::RESET => {
                                self.pending.push_front(j);
                                break Completion::Aborted;
                            }
                            Some(j) => self.pending.push_back(j),
                            None => {}
                        },
                    }
                }
            }
        };
        // Whatever the command wrote before it finished is in the pipes now.
        if let Some(sh) = self.shell.as_ref() {
            if !out.eof {
                Self::forward(&sh.stdout, kind::STDOUT, &mut out, cap, writer, &mut client_gone, &mut buf).await;
            }
            if !err.eof {
                Self::forward(&sh.stderr, kind::STDERR, &mut err, cap, writer, &mut client_gone, &mut buf).await;
            }
        }
        let (exit_code, shell_restarted) = match completion {
            Completion::Code(code) => (code, false),
            Completion::ShellGone => (self.finish_shell(false), true),
            Completion::Killed => {
                // Everything but us, the shell included, in one sweep (the
                // same kill(-1) as a reset: forks cannot outrun it).
                sys::kill_all_but_self();
                reap_all_blocking();
                (self.finish_shell(true), true)
            }
            Completion::Aborted => {
                let err =
                    AgentError { kind: ErrorKind::AbortedByReset, message: "the command was aborted by a reset of the sandbox".into() };
                Self::send(writer, kind::ERROR, &proto::json(&err), &mut client_gone).await;
                return;
            }
        };
        let oom_killed = match (oom_before, self.oom_kills()) {
            (Some(a), Some(b)) => b > a,
            _ => false,
        };
        let done = ExecDone {
            exit_code,
            timed_out,
            oom_killed,
            stdout_truncated: out.truncated,
            stderr_truncated: err.truncated,
            shell_restarted,
            duration_us: u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX),
        };
        Self::send(writer, kind::DONE, &proto::json(&done), &mut client_gone).await;
    }

    async fn reset(&mut self, payload: &[u8], mounts: Vec<OwnedFd>, writer: &mut OwnedWriteHalf) {
        let start = Instant::now();
        let req: proto::ResetRequest = match serde_json::from_slice(payload) {
            Ok(r) => r,
            Err(e) => {
                let err = AgentError { kind: ErrorKind::BadRequest, message: format!("bad reset request: {e}") };
                let _ = proto::write_frame_async(writer, kind::ERROR, &proto::json(&err)).await;
                return;
            }
        };
        let new = req.generation;
        let mut mounts = mounts;
        if new.is_empty() || !new.bytes().all(|b| b.is_ascii_alphanumeric()) || mounts.len() != self.cfg.overlays.len() + req.leases {
            let err = AgentError {
                kind: ErrorKind::BadRequest,
                message: format!("a reset needs an alphanumeric generation and {} overlay mounts", self.cfg.overlays.len()),
            };
            let _ = proto::write_frame_async(writer, kind::ERROR, &proto::json(&err)).await;
            return;
        }
        // Every process but us dies first: nothing may hold the old layers
        // or write into them while they are swapped (SECURITY.md S9).
        self.shell = None;
        if let Some(env) = &self.env {
            match &env.backend {
                dispatch::Backend::Function(w) => w.stop("the call was aborted by a reset of the sandbox"),
                dispatch::Backend::Http(u) => u.stop(),
            }
        }
        sys::kill_all_but_self();
        reap_all_blocking();
        let old = self.generation.borrow().clone();
        let leases = mounts.split_off(self.cfg.overlays.len());
        let old_root = match setup::reset(&self.cfg, &self.handles, &new, &mounts) {
            Ok(fd) => fd,
            Err(e) => {
                let err = AgentError { kind: ErrorKind::ResetFailed, message: crate::error::chain(&e) };
                let _ = proto::write_frame_async(writer, kind::ERROR, &proto::json(&err)).await;
                // A half-swapped root is not a sandbox anyone should use: exit,
                // which takes every process down; the host reports it dead.
                #[allow(clippy::exit)]
                std::process::exit(1);
            }
        };
        // Held until the next reset: the snapshot layers the new root
        // stands on must outlive their tags (see images::snapshot).
        self.leases = leases;
        drop(mounts);
        *self.generation.borrow_mut() = new.clone();
        let done = ResetDone { duration_us: u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX), generation: new };
        let _ = proto::write_frame_async(writer, kind::RESET_DONE, &proto::json(&done)).await;
        // After the reply: the fresh shell starts while the caller moves on
        // (its next command waits for it; a failure to start is reported
        // there), and the old upper layer, which can be huge, is deleted
        // off the hot path.
        if let Some(env) = &self.env {
            start_backend(env);
        }
        let _ = self.ensure_shell();
        let old_dir = setup::gen_dir(&self.handles, &old);
        let _ = std::thread::Builder::new().name("envbox-gc".into()).spawn(move || {
            // The last reference to the old overlay goes here, not on the
            // reset's path: its teardown costs one eviction per file.
            drop(old_root);
            // A btrfs generation is a subvolume: one ioctl deletes it all.
            crate::fs::btrfs::destroy_root(std::path::Path::new(&old_dir));
            let _ = std::fs::remove_dir_all(old_dir);
        });
    }
}
