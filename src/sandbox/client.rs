//! The host side of the agent protocol: run a command, reset, ping.

use std::io::{self, BufReader, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::agent::proto::{self, kind, AgentError, ErrorKind, ExecDone, ExecRequest, ResetDone, ResetRequest};
use crate::config::RunOptions;
use crate::error::{Error, Result};

/// A piece of output as it arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk<'a> {
    Stdout(&'a [u8]),
    Stderr(&'a [u8]),
}

/// The result of a finished command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
    /// The memory limit was hit and the kernel killed a process of the command.
    pub oom_killed: bool,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// The shell exited (e.g. `exit 3`) or was killed: the next command runs
    /// in a fresh shell (cwd and exported variables start over).
    pub shell_restarted: bool,
    pub duration: Duration,
}

impl Output {
    pub fn success(&self) -> bool {
        self.exit_code == 0
    }

    /// stdout as text (lossy), for logs and assertions.
    pub fn stdout_str(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.stdout)
    }

    /// stderr as text (lossy).
    pub fn stderr_str(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.stderr)
    }

    /// The result of a finished command, or `Error::Timeout` (with the
    /// output collected so far) when it timed out.
    pub(crate) fn from_done(stdout: Vec<u8>, stderr: Vec<u8>, d: ExecDone, opts: &RunOptions) -> Result<Output> {
        if d.timed_out {
            let seconds = opts.timeout.map(|t| t.as_secs_f64()).unwrap_or(0.0);
            return Err(Error::Timeout { seconds, stdout, stderr, done: Box::new(d) });
        }
        Ok(Output {
            stdout,
            stderr,
            exit_code: d.exit_code,
            oom_killed: d.oom_killed,
            stdout_truncated: d.stdout_truncated,
            stderr_truncated: d.stderr_truncated,
            shell_restarted: d.shell_restarted,
            duration: Duration::from_micros(d.duration_us),
        })
    }
}

/// A connection to one sandbox's agent.
pub struct Connection {
    name: String,
    stream: BufReader<UnixStream>,
}

fn proto_err(name: &str, message: impl Into<String>) -> Error {
    Error::Protocol { name: name.to_string(), message: message.into() }
}

impl Connection {
    pub fn connect(name: &str, socket: &std::path::Path) -> io::Result<Connection> {
        let stream = UnixStream::connect(socket)?;
        Ok(Connection { name: name.to_string(), stream: BufReader::with_capacity(128 * 1024, stream) })
    }

    fn io_err(&self, step: &'static str) -> impl FnOnce(io::Error) -> Error + '_ {
        move |source| Error::Io { step, name: self.name.clone(), source }
    }

    fn agent_error(&self, payload: &[u8]) -> Error {
        match serde_json::from_slice::<AgentError>(payload) {
            Ok(e) if e.kind == ErrorKind::AbortedByReset => Error::AbortedByReset,
            Ok(e) => Error::Agent { name: self.name.clone(), message: e.message },
            Err(_) => proto_err(&self.name, "undecodable error reply"),
        }
    }

    fn read(&mut self, step: &'static str) -> Result<(u8, Vec<u8>)> {
        match proto::read_frame(&mut self.stream) {
            Ok(Some(f)) => Ok(f),
            Ok(None) => Err(Error::Io {
                step,
                name: self.name.clone(),
                source: io::Error::new(io::ErrorKind::UnexpectedEof, "the sandbox agent closed the connection (the sandbox died)"),
            }),
            Err(e) => Err(self.io_err(step)(e)),
        }
    }

    /// Runs a command, handing output to `on_chunk` as it arrives.
    pub fn exec_streaming(&mut self, cmd: &[u8], opts: &RunOptions, on_chunk: &mut dyn FnMut(Chunk<'_>)) -> Result<ExecDone> {
        if cmd.len() > proto::MAX_COMMAND {
            return Err(proto_err(&self.name, format!("the command is {} bytes; the limit is {}", cmd.len(), proto::MAX_COMMAND)));
        }
        let req =
            ExecRequest { timeout_ms: opts.timeout.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)), max_output: opts.max_output };
        let payload = proto::encode_exec(&req, cmd);
        let sock = self.stream.get_mut();
        proto::write_frame(sock, kind::EXEC, &payload).map_err(|source| Error::Io {
            step: "sending a command",
            name: self.name.clone(),
            source,
        })?;
        sock.flush().map_err(|source| Error::Io { step: "sending a command", name: self.name.clone(), source })?;
        loop {
            let (k, payload) = self.read("reading command output")?;
            match k {
                kind::STDOUT => on_chunk(Chunk::Stdout(&payload)),
                kind::STDERR => on_chunk(Chunk::Stderr(&payload)),
                kind::DONE => {
                    return serde_json::from_slice(&payload).map_err(|e| proto_err(&self.name, format!("bad completion record: {e}")));
                }
                kind::ERROR => return Err(self.agent_error(&payload)),
                other => return Err(proto_err(&self.name, format!("unexpected frame kind {other} during a command"))),
            }
        }
    }

    /// Runs a command and collects its output.
    pub fn exec(&mut self, cmd: &[u8], opts: &RunOptions) -> Result<Output> {
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        let done = self.exec_streaming(cmd, opts, &mut |c| match c {
            Chunk::Stdout(b) => stdout.extend_from_slice(b),
            Chunk::Stderr(b) => stderr.extend_from_slice(b),
        })?;
        Output::from_done(stdout, stderr, done, opts)
    }

    /// Resets the sandbox's filesystem and shell onto `mounts` (detached
    /// overlays over generation `generation`'s upper layers).
    /// Sends a reset with the new overlay mounts and, after them, `leases`
    /// for the agent to hold until the next reset.
    pub fn reset(&mut self, generation: &str, mounts: &[OwnedFd], leases: &[BorrowedFd<'_>]) -> Result<ResetDone> {
        let payload = proto::json(&ResetRequest { generation: generation.to_string(), leases: leases.len() });
        let mut frame = Vec::new();
        proto::write_frame(&mut frame, kind::RESET, &payload).map_err(self.io_err("sending a reset"))?;
        let fds: Vec<_> = mounts.iter().map(|m| m.as_fd()).chain(leases.iter().copied()).collect();
        let sock = self.stream.get_mut();
        let sent = crate::sys::send_with_fds(sock.as_fd(), &frame, &fds).map_err(|source| Error::Io {
            step: "sending a reset",
            name: self.name.clone(),
            source,
        })?;
        sock.write_all(&frame[sent..]).map_err(|source| Error::Io { step: "sending a reset", name: self.name.clone(), source })?;
        let (k, payload) = self.read("waiting for the reset")?;
        match k {
            kind::RESET_DONE => serde_json::from_slice(&payload).map_err(|e| proto_err(&self.name, format!("bad reset reply: {e}"))),
            kind::ERROR => Err(self.agent_error(&payload)),
            other => Err(proto_err(&self.name, format!("unexpected frame kind {other} after a reset"))),
        }
    }

    /// Round trip to the agent; returns the filesystem generation.
    pub fn ping(&mut self) -> Result<String> {
        let sock = self.stream.get_mut();
        proto::write_frame(sock, kind::PING, b"{}").map_err(|source| Error::Io { step: "pinging", name: self.name.clone(), source })?;
        let (k, payload) = self.read("waiting for a ping reply")?;
        if k != kind::PONG {
            return Err(proto_err(&self.name, format!("unexpected frame kind {k} after a ping")));
        }
        let pong: proto::Pong = serde_json::from_slice(&payload).map_err(|e| proto_err(&self.name, format!("bad ping reply: {e}")))?;
        Ok(pong.generation)
    }
}
