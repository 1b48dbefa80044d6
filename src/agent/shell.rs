//! The persistent shell and its signal-pipe protocol.
//!
//! The shell reads commands on stdin; each command is sent as one line
//!
//! ```text
//! { eval '<command, single-quoted>'; } </dev/null 3>&-; command printf '%s %d\n' <nonce> "$?" >&3
//! ```
//!
//! - the command runs in the shell itself (`eval`), so `cd` and `export`
//!   persist; quoting is ours, so the line always parses, and a syntax error
//!   in the command is an error of `eval` (exit 2), never a hang;
//! - its stdin is /dev/null: it cannot read later commands (SECURITY.md S7);
//! - fd 3, the signal pipe, is closed for the command and close-on-exec in
//!   the shell, so no child process can write to it (S6);
//! - the completion record carries a fresh random nonce that appears in no
//!   argv and no environment; any other text on fd 3 is ignored, and output
//!   on stdout/stderr is never taken for completion.
//!
//! What the protocol does not stop: shell code in the command itself (not a
//! child process) runs inside the shell, so it could find the saved copy of
//! fd 3 and the nonce in the shell's memory. That only lets a command lie
//! about its own completion, which it could do anyway by choosing its exit
//! status; it cannot reach the host or other commands.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::process::{Command, Stdio};

use tokio::net::unix::pipe;

use super::user::{self, User};
use crate::security::{self, UserIds};
use crate::sys;

/// A running shell process and our ends of its pipes.
pub struct Shell {
    pub pid: i32,
    pub stdin: pipe::Sender,
    pub stdout: pipe::Receiver,
    pub stderr: pipe::Receiver,
    pub signal: pipe::Receiver,
    /// Bytes read from the signal pipe that do not form a full line yet.
    pub signal_buf: Vec<u8>,
}

/// How the shell is started.
pub struct ShellSpec<'a> {
    pub env: &'a [(String, String)],
    pub workdir: &'a str,
    /// The user it runs as; `None`: root.
    pub user: Option<&'a User>,
}

/// The default PATH of the shell.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub fn pipe_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| io::Error::from_raw_os_error(e as i32))
}

/// Picks bash when the image has it, else sh.
fn shell_program() -> (&'static str, &'static [&'static str]) {
    if std::fs::metadata("/bin/bash").is_ok() {
        ("/bin/bash", &["--noprofile", "--norc"])
    } else {
        ("/bin/sh", &[])
    }
}

/// Starts a shell with reduced privileges in its own session.
pub fn spawn(spec: &ShellSpec<'_>) -> io::Result<Shell> {
    let (stdin_r, stdin_w) = pipe_pair()?;
    let (stdout_r, stdout_w) = pipe_pair()?;
    let (stderr_r, stderr_w) = pipe_pair()?;
    let (signal_r, signal_w) = pipe_pair()?;
    let (program, args) = shell_program();
    let mut cmd = Command::new(program);
    cmd.args(args).env_clear().env("PATH", DEFAULT_PATH);
    for (k, v) in user::base_env(spec.user) {
        cmd.env(k, v);
    }
    for (k, v) in spec.env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::from(stdin_r)).stdout(Stdio::from(stdout_w)).stderr(Stdio::from(stderr_w));
    confine(&mut cmd, vec![(signal_w.as_raw_fd(), 3)], open_workdir(spec.workdir)?, spec.user.map(|u| &u.ids));
    let child = cmd.spawn()?;
    drop(signal_w);
    // The std Child handle is not used to wait: the agent, as PID 1, reaps
    // every process itself (waitpid(-1)).
    let pid = i32::try_from(child.id()).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    Ok(Shell {
        pid,
        stdin: pipe::Sender::from_owned_fd(stdin_w)?,
        stdout: pipe::Receiver::from_owned_fd(stdout_r)?,
        stderr: pipe::Receiver::from_owned_fd(stderr_r)?,
        signal: pipe::Receiver::from_owned_fd(signal_r)?,
        signal_buf: Vec::new(),
    })
}

/// Opens `dir` as a child's working directory: resolved by the kernel in
/// one `openat2` call as if the agent's root (the sandbox) were `/`, with
/// magic links refused. `/`, when `dir` is missing or not a directory.
///
/// Never hand a path to `Command::current_dir`: the child would resolve it
/// itself, after fork and before exec, while it still holds the agent's
/// close-on-exec O_PATH handles of host directories. A workdir of
/// `/proc/self/fd/N`, or one that a command replaced with a symlink to it
/// before the shell was respawned, would then put the shell's cwd on the
/// host (runc's CVE-2024-21626; SECURITY.md F14, S11).
pub fn open_workdir(dir: &str) -> io::Result<OwnedFd> {
    let root = OwnedFd::from(std::fs::File::open("/")?);
    let Ok(path) = std::ffi::CString::new(dir) else { return Ok(root) };
    let resolve = sys::openat2::RESOLVE_IN_ROOT | sys::openat2::RESOLVE_NO_MAGICLINKS;
    match sys::openat2::openat2(root.as_fd(), &path, libc::O_PATH | libc::O_DIRECTORY, 0, resolve) {
        Ok(fd) => Ok(fd),
        Err(_) => Ok(root),
    }
}

/// Makes `cmd` start the way every process the agent runs for the user
/// starts: in the directory `cwd` (from [`open_workdir`]), `fds` (source,
/// target) dup'ed into place, a session of its own,
/// a normal OOM score, the default capability set, no_new_privs, the
/// user's groups and ids when `user` is given (`security::switch_user`;
/// a non-zero uid keeps no capability), a non-dumpable exec and, last of
/// all, the seccomp filter the agent prepared (`security::seccomp`).
///
/// The ids are resolved before the fork (`agent::user`): the hook only
/// copies them into syscalls.
pub fn confine(cmd: &mut Command, fds: Vec<(RawFd, RawFd)>, cwd: OwnedFd, user: Option<&UserIds>) {
    let user = user.cloned();
    let hook = move || -> io::Result<()> {
        nix::unistd::fchdir(cwd.as_raw_fd()).map_err(|e| io::Error::from_raw_os_error(e as i32))?;
        for &(src, dst) in &fds {
            crate::sys::dup2_inheritable(src, dst)?;
        }
        nix::unistd::setsid().map_err(|e| io::Error::from_raw_os_error(e as i32))?;
        // The agent protects itself from the OOM killer; its children must
        // not inherit that, or an OOM would pick nothing killable.
        std::fs::write("/proc/self/oom_score_adj", "0")?;
        security::drop_privileges().map_err(io::Error::other)?;
        if let Some(ids) = &user {
            if !ids.uid.is_root() {
                give_output_pipes(ids)?;
            }
            // Last use of CAP_SETGID and CAP_SETUID: a non-zero uid drops
            // every capability here.
            security::switch_user(ids).map_err(io::Error::other)?;
        }
        // The exec'd program will not be dumpable, so what it runs cannot
        // open its /proc/<pid>/fd/* (the command stream on stdin, the
        // signal pipe) or its memory (the nonce) (SECURITY.md P8, S6, S7).
        // Before the filter, which a policy file could make deny prctl.
        // For a non-zero uid, `switch_user` has arranged that already.
        if user.as_ref().map_or(true, |ids| ids.uid.is_root()) {
            sys::make_next_exec_undumpable()?;
        }
        // Last: from here on mount, ptrace, unshare… fail with EPERM.
        security::seccomp::apply()?;
        Ok(())
    };
    crate::sys::set_pre_exec(cmd, hook);
}

/// Hands the pipes on stdout and stderr (made by the agent, so owned by
/// root, mode 0600) to the user, as runc's `fixStdioPermissions` does: a
/// program that reopens its output by path (`echo x > /dev/stdout`, a log
/// file named /dev/stderr) opens `/proc/self/fd/N`, which checks the pipe's
/// owner. Only pipes: /dev/null stays root's. stdin is left alone: the
/// shell's is the command stream, and what it runs gets /dev/null.
/// Allocation-free: runs in the pre-exec hook, before `switch_user`
/// (needs CAP_CHOWN).
fn give_output_pipes(ids: &UserIds) -> io::Result<()> {
    for fd in [1, 2] {
        let st = nix::sys::stat::fstat(fd).map_err(|e| io::Error::from_raw_os_error(e as i32))?;
        if st.st_mode & libc::S_IFMT == libc::S_IFIFO {
            nix::unistd::fchown(fd, Some(ids.uid), Some(ids.gid)).map_err(|e| io::Error::from_raw_os_error(e as i32))?;
        }
    }
    Ok(())
}

/// Single-quotes `cmd` for the shell: `'` becomes `'\''`. Any byte string
/// without NUL survives this exactly, newlines included.
pub fn quote(cmd: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(cmd.len() + 16);
    out.push(b'\'');
    for &b in cmd {
        if b == b'\'' {
            out.extend_from_slice(b"'\\''");
        } else {
            out.push(b);
        }
    }
    out.push(b'\'');
    out
}

/// The line that runs `cmd` and reports `nonce exit_code` on fd 3.
pub fn command_line(cmd: &[u8], nonce: &str) -> Vec<u8> {
    let mut line = b"{ eval ".to_vec();
    line.extend_from_slice(&quote(cmd));
    line.extend_from_slice(b"; } </dev/null 3>&-; command printf '%s %d\\n' ");
    line.extend_from_slice(nonce.as_bytes());
    // The blank line after the record is deliberate: after a syntax error
    // inside eval, bash (5.2) swallows the next line it reads; without a
    // spare one it would eat the next command.
    line.extend_from_slice(b" \"$?\" >&3\n\n");
    line
}

/// A fresh 128-bit nonce, hex encoded.
pub fn new_nonce() -> String {
    let mut b = [0u8; 16];
    if getrandom::getrandom(&mut b).is_err() {
        // getrandom cannot fail on Linux ≥ 3.17 once the pool is ready; fall
        // back to something unique per command rather than panicking.
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        b = t.to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Looks for `nonce <code>` among the complete lines in `buf`; consumes
/// every complete line (forged or stale records are dropped).
pub fn take_completion(buf: &mut Vec<u8>, nonce: &str) -> Option<i32> {
    let mut found = None;
    while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
        let line: Vec<u8> = buf.drain(..=pos).collect();
        let line = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
        if let Some((n, code)) = line.split_once(' ') {
            if n == nonce {
                if let Ok(code) = code.trim().parse::<i32>() {
                    found = Some(code);
                }
            }
        }
    }
    // A runaway writer cannot grow the buffer without bound.
    if buf.len() > 4096 {
        buf.clear();
    }
    found
}

impl Shell {
    /// Reads what is available on the signal pipe; `Ok(false)` on EOF.
    pub fn read_signal(&mut self) -> io::Result<bool> {
        let mut buf = [0u8; 512];
        loop {
            match self.signal.try_read(&mut buf) {
                Ok(0) => return Ok(false),
                Ok(n) => self.signal_buf.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_quotes_newlines_and_binary() {
        assert_eq!(quote(b"it's"), b"'it'\\''s'".to_vec());
        assert_eq!(quote(b""), b"''".to_vec());
        let line = command_line(b"echo 'a'\nfalse", "n1");
        let s = String::from_utf8(line).unwrap();
        assert!(s.starts_with("{ eval 'echo '\\''a'\\''\nfalse'; }"));
        assert!(s.ends_with(" n1 \"$?\" >&3\n\n"));
    }

    #[test]
    fn completion_requires_the_nonce() {
        let mut buf = b"forged 0\nabc 3\npartial".to_vec();
        assert_eq!(take_completion(&mut buf, "abc"), Some(3));
        assert_eq!(buf, b"partial");
        let mut buf = b"xyz 0\n".to_vec();
        assert_eq!(take_completion(&mut buf, "abc"), None);
        assert!(buf.is_empty());
        let mut buf = vec![b'x'; 10_000];
        assert_eq!(take_completion(&mut buf, "abc"), None);
        assert!(buf.is_empty(), "an endless line must not grow the buffer");
    }

    #[test]
    fn nonces_are_fresh() {
        let a = new_nonce();
        assert_eq!(a.len(), 32);
        assert_ne!(a, new_nonce());
    }
}
