//! The processes that host a user's environment inside the sandbox, and
//! their supervision by the agent.
//!
//! - [`Worker`]: a python3 process running the embedded `worker.py`, which
//!   imports env.py and runs calls (the pipe protocol is documented at the
//!   top of worker.py). Calls are multiplexed by id, so many run at once.
//!   When it dies, every call in flight fails with "environment process
//!   died" (and "out of memory" when the memory cgroup counted an OOM
//!   kill), and a fresh worker starts.
//! - [`Upstream`]: the server of an HTTP environment (uvicorn serving
//!   env.py's `app`, or the image's own command), restarted when it exits.
//!
//! Both write their stdout and stderr into the sandbox's environment log
//! through [`LogSink`], which caps its size.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot, Notify};

use super::shell::{self, pipe_pair, DEFAULT_PATH};
use crate::sys;

/// The worker's source, run with `python3 -u -c`.
pub const WORKER_PY: &str = include_str!("worker.py");

/// Largest frame the worker may send (a result is one frame).
const MAX_FRAME: usize = 1 << 30;
/// Restarts allowed within [`CRASH_WINDOW`] before the next one waits.
const CRASH_BURST: u32 = 5;
const CRASH_WINDOW: Duration = Duration::from_secs(10);
const CRASH_BACKOFF: Duration = Duration::from_secs(1);

/// Appends the environment's output to its log file, truncating it when it
/// passes the cap so a chatty environment cannot fill the host's disk.
pub struct LogSink {
    file: RefCell<File>,
    written: Cell<u64>,
    cap: u64,
}

impl LogSink {
    pub fn new(file: File, cap: u64) -> Rc<Self> {
        let written = file.metadata().map(|m| m.len()).unwrap_or(0);
        Rc::new(LogSink { file: RefCell::new(file), written: Cell::new(written), cap })
    }

    fn write(&self, data: &[u8]) {
        let mut f = self.file.borrow_mut();
        if self.written.get() + data.len() as u64 > self.cap {
            // O_APPEND: after truncation, writes go to the new end.
            let _ = f.set_len(0);
            let note = format!("[envbox: the log passed {} MiB and was truncated]\n", self.cap >> 20);
            let _ = f.write_all(note.as_bytes());
            self.written.set(note.len() as u64);
        }
        if f.write_all(data).is_ok() {
            self.written.set(self.written.get() + data.len() as u64);
        }
    }

    /// Copies a process's output pipe into the log until it closes; then
    /// tells `on_eof`.
    fn pump(self: &Rc<Self>, pipe: pipe::Receiver, on_eof: impl FnOnce() + 'static) {
        let sink = self.clone();
        tokio::task::spawn_local(async move {
            let mut pipe = pipe;
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match pipe.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => sink.write(&buf[..n]),
                }
            }
            on_eof();
        });
    }
}

/// How the environment's processes are started.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    /// The python interpreter (a path, or a name looked up in PATH).
    pub python: Option<String>,
    pub app_dir: String,
    pub env: Vec<(String, String)>,
    /// The user they run as; `None`: root.
    pub user: Option<super::user::User>,
}

impl ProcessSpec {
    fn python(&self) -> String {
        if let Some(p) = &self.python {
            return p.clone();
        }
        ["/usr/local/bin/python3", "/usr/bin/python3", "/bin/python3"]
            .iter()
            .find(|p| std::fs::metadata(p).is_ok())
            .map_or_else(|| "python3".to_string(), |p| (*p).to_string())
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env_clear().env("PATH", DEFAULT_PATH);
        for (k, v) in super::user::base_env(self.user.as_ref()) {
            cmd.env(k, v);
        }
        cmd.env("PYTHONDONTWRITEBYTECODE", "1");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    fn user_ids(&self) -> Option<&crate::security::UserIds> {
        self.user.as_ref().map(|u| &u.ids)
    }
}

/// The worker's answer to one call.
#[derive(Debug)]
pub enum Outcome {
    /// The method returned; its result, serialized.
    Ok(Box<RawValue>),
    /// The reference's error answer: status and JSON body.
    Failed { status: u16, body: Vec<u8> },
    /// The worker died (or was stopped) with the call in flight.
    Died { message: String, oom: bool },
}

/// Where the worker is in its life.
#[derive(Clone)]
pub enum Status {
    Starting,
    Ready(Rc<Ready>),
    /// env.py could not be loaded (or python could not start): the JSON
    /// body of the 503 every call gets, until the next reset.
    Failed(Rc<Vec<u8>>),
    Stopped,
}

/// What a loaded worker reported.
pub struct Ready {
    /// The exact body of GET /methods.
    pub methods: Vec<u8>,
    /// Method names that get a `POST /{name}` route.
    pub routes: HashSet<String>,
}

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(default)]
    id: u64,
    #[serde(default)]
    ok: bool,
    #[serde(borrow, default)]
    result: Option<&'a RawValue>,
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    detail: Option<String>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
    #[serde(borrow, default)]
    methods: Option<&'a RawValue>,
    #[serde(default)]
    routes: Vec<String>,
}

/// The python worker and the calls in flight on it.
pub struct Worker {
    spec: ProcessSpec,
    log: Rc<LogSink>,
    oom: RefCell<Option<File>>,
    status: RefCell<Status>,
    changed: Notify,
    inflight: RefCell<HashMap<u64, oneshot::Sender<Outcome>>>,
    next_id: Cell<u64>,
    /// Bumped at every start and stop, so the tasks of an old worker
    /// cannot touch the state of the next one.
    epoch: Cell<u64>,
    tx: RefCell<Option<mpsc::UnboundedSender<Vec<u8>>>>,
    pid: Cell<i32>,
    crashes: Cell<(Instant, u32)>,
}

/// A JSON error body in the reference's shape (`detail`), plus envbox's
/// structured `error` object.
pub fn error_body(detail: &str, kind: &str, message: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "detail": detail,
        "status": "error",
        "error": {"type": kind, "message": message, "kind": kind},
    }))
    .unwrap_or_default()
}

impl Worker {
    pub fn new(spec: ProcessSpec, log: Rc<LogSink>, oom: Option<File>) -> Rc<Self> {
        Rc::new(Worker {
            spec,
            log,
            oom: RefCell::new(oom),
            status: RefCell::new(Status::Stopped),
            changed: Notify::new(),
            inflight: RefCell::new(HashMap::new()),
            next_id: Cell::new(1),
            epoch: Cell::new(0),
            tx: RefCell::new(None),
            pid: Cell::new(0),
            crashes: Cell::new((Instant::now(), 0)),
        })
    }

    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    fn set_status(&self, s: Status) {
        *self.status.borrow_mut() = s;
        self.changed.notify_waiters();
    }

    /// Waits up to `wait` for the worker to leave `Starting`.
    pub async fn settled(&self, wait: Duration) -> Status {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let s = self.status();
            if !matches!(s, Status::Starting) {
                return s;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.status();
            }
        }
    }

    fn oom_kills(&self) -> Option<u64> {
        let mut guard = self.oom.borrow_mut();
        let f = guard.as_mut()?;
        let mut text = String::new();
        f.rewind().ok()?;
        f.read_to_string(&mut text).ok()?;
        text.lines().find_map(|l| l.strip_prefix("oom_kill ")).and_then(|n| n.trim().parse().ok())
    }

    /// Starts a fresh worker (the old one, if any, must be gone).
    pub fn start(self: &Rc<Self>) {
        let epoch = self.epoch.get() + 1;
        self.epoch.set(epoch);
        self.set_status(Status::Starting);
        match self.spawn(epoch) {
            Ok(()) => {}
            Err(e) => {
                let python = self.spec.python();
                let msg =
                    format!("cannot start the environment's python ({python}): {e}; the image needs python3 (or set the interpreter)");
                self.set_status(Status::Failed(Rc::new(error_body(&msg, "WorkerStart", &msg))));
            }
        }
    }

    fn spawn(self: &Rc<Self>, epoch: u64) -> io::Result<()> {
        let (req_r, req_w) = pipe_pair()?;
        let (resp_r, resp_w) = pipe_pair()?;
        let (out_r, out_w) = pipe_pair()?;
        // Above every target, so the dup2s in the child cannot clobber
        // each other.
        let req_r = sys::dup_above(req_r.as_fd(), 16)?;
        let resp_w = sys::dup_above(resp_w.as_fd(), 16)?;
        let env_py = format!("{}/env.py", self.spec.app_dir.trim_end_matches('/'));
        let mut cmd = self.spec.command(&self.spec.python());
        cmd.arg("-u").arg("-c").arg(WORKER_PY).arg(env_py);
        cmd.stdout(Stdio::from(out_w.try_clone()?)).stderr(Stdio::from(out_w));
        shell::confine(
            &mut cmd,
            vec![(req_r.as_raw_fd(), 3), (resp_w.as_raw_fd(), 4)],
            shell::open_workdir(&self.spec.app_dir)?,
            self.spec.user_ids(),
        );
        let child = cmd.spawn()?;
        drop(cmd); // closes our copies of the child's ends
        drop((req_r, resp_w));
        let pid = i32::try_from(child.id()).unwrap_or(0);
        super::watch_pid(pid);
        self.pid.set(pid);
        let (tx, rx) = mpsc::unbounded_channel();
        *self.tx.borrow_mut() = Some(tx);
        tokio::task::spawn_local(write_frames(pipe::Sender::from_owned_fd(req_w)?, rx));
        tokio::task::spawn_local(self.clone().read_frames(epoch, pipe::Receiver::from_owned_fd(resp_r)?, pid));
        self.log.pump(pipe::Receiver::from_owned_fd(out_r)?, || {});
        Ok(())
    }

    async fn read_frames(self: Rc<Self>, epoch: u64, mut pipe: pipe::Receiver, pid: i32) {
        let oom_before = self.oom_kills();
        let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
        let mut chunk = vec![0u8; 64 * 1024];
        'read: loop {
            // Every complete frame in the buffer first.
            let mut used = 0;
            while buf.len() - used >= 4 {
                let len = u32::from_be_bytes([buf[used], buf[used + 1], buf[used + 2], buf[used + 3]]) as usize;
                if len > MAX_FRAME {
                    break 'read; // a broken worker: treated as dead below
                }
                if buf.len() - used - 4 < len {
                    break;
                }
                if self.epoch.get() == epoch {
                    self.handle_frame(&buf[used + 4..used + 4 + len]);
                }
                used += 4 + len;
            }
            buf.drain(..used);
            match pipe.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        if self.epoch.get() != epoch {
            return; // stopped on purpose (a reset): nothing to report
        }
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        let code = super::wait_exit(pid, Duration::from_millis(200)).await;
        let oom = matches!((oom_before, self.oom_kills()), (Some(a), Some(b)) if b > a);
        let how = match code {
            Some(c) if c > 128 => format!("killed by signal {}", c - 128),
            Some(c) => format!("exit status {c}"),
            None => "it closed its pipe".to_string(),
        };
        let message = if oom {
            format!("environment process died ({how}): out of memory; it was restarted")
        } else {
            format!("environment process died ({how}); it was restarted")
        };
        // A reset may have started a fresh worker during the wait above.
        if self.epoch.get() != epoch {
            return;
        }
        self.fail_inflight(&message, oom);
        match self.status() {
            // It never loaded: report that, and do not loop on restarts.
            Status::Starting => {
                let msg = format!("the environment process exited before loading env.py ({how}); its output is in `envbox logs`");
                self.set_status(Status::Failed(Rc::new(error_body(&msg, "LoadError", &msg))));
                return;
            }
            // env.py failed to load (reported): a restart would fail the same way.
            Status::Failed(_) => return,
            _ => {}
        }
        let (since, n) = self.crashes.get();
        let n = if since.elapsed() > CRASH_WINDOW { 1 } else { n + 1 };
        self.crashes.set((if n == 1 { Instant::now() } else { since }, n));
        self.set_status(Status::Starting);
        if n > CRASH_BURST {
            tokio::time::sleep(CRASH_BACKOFF).await;
            if self.epoch.get() != epoch {
                return;
            }
        }
        self.start();
    }

    fn handle_frame(&self, bytes: &[u8]) {
        let Ok(frame) = serde_json::from_slice::<Frame<'_>>(bytes) else { return };
        match frame.kind {
            "result" => {
                let Some(tx) = self.inflight.borrow_mut().remove(&frame.id) else { return };
                let outcome = if frame.ok {
                    Outcome::Ok(frame.result.map_or_else(|| RawValue::from_string("null".into()).unwrap_or_default(), RawValue::to_owned))
                } else {
                    let mut body = br#"{"detail":"#.to_vec();
                    body.extend_from_slice(&serde_json::to_vec(&frame.detail.unwrap_or_default()).unwrap_or_default());
                    body.extend_from_slice(br#","status":"error","error":"#);
                    body.extend_from_slice(frame.error.map_or("null", RawValue::get).as_bytes());
                    body.push(b'}');
                    Outcome::Failed { status: frame.status.unwrap_or(500), body }
                };
                let _ = tx.send(outcome);
            }
            "ready" => {
                let methods = frame.methods.map_or(br#"{"methods":[]}"#.to_vec(), |m| m.get().as_bytes().to_vec());
                self.set_status(Status::Ready(Rc::new(Ready { methods, routes: frame.routes.into_iter().collect() })));
            }
            "load_error" => {
                let detail = format!("env.py failed to load: {}", frame.error.map_or("", RawValue::get));
                let mut body = br#"{"detail":"#.to_vec();
                body.extend_from_slice(&serde_json::to_vec(&detail).unwrap_or_default());
                body.extend_from_slice(br#","status":"error","error":"#);
                body.extend_from_slice(frame.error.map_or("null", RawValue::get).as_bytes());
                body.push(b'}');
                self.set_status(Status::Failed(Rc::new(body)));
            }
            _ => {}
        }
    }

    fn fail_inflight(&self, message: &str, oom: bool) {
        let calls: Vec<_> = self.inflight.borrow_mut().drain().collect();
        for (_, tx) in calls {
            let _ = tx.send(Outcome::Died { message: message.to_string(), oom });
        }
    }

    /// Sends a call; the receiver gets its outcome. The worker must be ready.
    pub fn call(&self, method: &str, args: &RawValue, kwargs: &RawValue) -> (u64, oneshot::Receiver<Outcome>) {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let (tx, rx) = oneshot::channel();
        let mut frame = Vec::with_capacity(64 + method.len() + args.get().len() + kwargs.get().len());
        frame.extend_from_slice(&[0; 4]);
        frame.extend_from_slice(br#"{"type":"call","id":"#);
        frame.extend_from_slice(id.to_string().as_bytes());
        frame.extend_from_slice(br#","method":"#);
        frame.extend_from_slice(&serde_json::to_vec(method).unwrap_or_default());
        frame.extend_from_slice(br#","args":"#);
        frame.extend_from_slice(args.get().as_bytes());
        frame.extend_from_slice(br#","kwargs":"#);
        frame.extend_from_slice(kwargs.get().as_bytes());
        frame.push(b'}');
        let len = u32::try_from(frame.len() - 4).unwrap_or(u32::MAX);
        frame[..4].copy_from_slice(&len.to_be_bytes());
        let sent = self.tx.borrow().as_ref().is_some_and(|t| t.send(frame).is_ok());
        if sent {
            self.inflight.borrow_mut().insert(id, tx);
        } else {
            let _ = tx.send(Outcome::Died { message: "environment process is not running".into(), oom: false });
        }
        (id, rx)
    }

    /// Gives up on a call: an async method is cancelled; a sync one runs to
    /// its end and its result is dropped.
    pub fn cancel(&self, id: u64) {
        if self.inflight.borrow_mut().remove(&id).is_some() {
            let body = format!(r#"{{"type":"cancel","id":{id}}}"#);
            let mut frame = u32::try_from(body.len()).unwrap_or(0).to_be_bytes().to_vec();
            frame.extend_from_slice(body.as_bytes());
            if let Some(t) = self.tx.borrow().as_ref() {
                let _ = t.send(frame);
            }
        }
    }

    /// Forgets the worker without restarting it (a reset kills every
    /// process itself and then calls [`Worker::start`]).
    pub fn stop(&self, reason: &str) {
        self.epoch.set(self.epoch.get() + 1);
        *self.tx.borrow_mut() = None;
        self.fail_inflight(reason, false);
        self.set_status(Status::Stopped);
    }
}

async fn write_frames(mut pipe: pipe::Sender, mut rx: mpsc::UnboundedReceiver<Vec<u8>>) {
    while let Some(mut batch) = rx.recv().await {
        // Coalesce what is queued into one write.
        while batch.len() < 64 * 1024 {
            match rx.try_recv() {
                Ok(more) => batch.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        if pipe.write_all(&batch).await.is_err() {
            return;
        }
    }
}

/// The server process of an HTTP environment, restarted when it exits.
pub struct Upstream {
    spec: ProcessSpec,
    command: Option<Vec<String>>,
    pub port: u16,
    log: Rc<LogSink>,
    epoch: Cell<u64>,
}

impl Upstream {
    pub fn new(spec: ProcessSpec, command: Option<Vec<String>>, port: u16, log: Rc<LogSink>) -> Rc<Self> {
        Rc::new(Upstream { spec, command, port, log, epoch: Cell::new(0) })
    }

    pub fn start(self: &Rc<Self>) {
        let epoch = self.epoch.get() + 1;
        self.epoch.set(epoch);
        let argv = self.command.clone().unwrap_or_else(|| {
            let port = self.port.to_string();
            let python = self.spec.python();
            [python.as_str(), "-m", "uvicorn", "env:app", "--host", "127.0.0.1", "--port", &port].iter().map(|s| (*s).to_string()).collect()
        });
        let spawned = (|| -> io::Result<OwnedFd> {
            let (out_r, out_w) = pipe_pair()?;
            let mut cmd = self.spec.command(&argv[0]);
            cmd.args(&argv[1..]).env("PORT", self.port.to_string());
            cmd.stdout(Stdio::from(out_w.try_clone()?)).stderr(Stdio::from(out_w));
            shell::confine(&mut cmd, Vec::new(), shell::open_workdir(&self.spec.app_dir)?, self.spec.user_ids());
            let child = cmd.spawn()?;
            super::watch_pid(i32::try_from(child.id()).unwrap_or(0));
            Ok(out_r)
        })();
        let me = self.clone();
        let restart = move || {
            tokio::task::spawn_local(async move {
                tokio::time::sleep(CRASH_BACKOFF).await;
                if me.epoch.get() == epoch {
                    me.start();
                }
            });
        };
        match spawned.and_then(pipe::Receiver::from_owned_fd) {
            Ok(out) => self.log.pump(out, restart),
            Err(e) => {
                self.log.write(format!("[envbox: cannot start the environment's server {argv:?}: {e}]\n").as_bytes());
                restart();
            }
        }
    }

    pub fn stop(&self) {
        self.epoch.set(self.epoch.get() + 1);
    }
}
