//! The zygote: a single-threaded envbox process that forks sandbox agents.
//!
//! Starting an agent by `execve` costs about 0.8 ms of CPU on every create
//! (the kernel loading a large binary, the dynamic linker relocating it,
//! the Rust runtime starting), a third of a whole create. A process that
//! creates many sandboxes (a training loop, `envbox bench`) instead starts
//! one zygote, once: the envbox binary run as `envbox __zygote`. For each
//! sandbox it forks; the child enters the new namespaces and runs the agent
//! directly, with nothing loaded again.
//!
//! Why a separate process: the creator is multi-threaded (tokio, callers'
//! threads), and the child of a fork of a multi-threaded process may only
//! call async-signal-safe functions until it execs. The zygote never starts
//! a thread, so its children are complete, consistent processes.
//!
//! Ownership: the zygote is the creator's child and exits when the
//! creator's end of its socket closes (the creator exiting, kill -9
//! included). It reaps the agents it forked. Agents outlive it as they
//! outlive a creator that exits: each holds what it needs by fd.
//!
//! Protocol (one `SOCK_SEQPACKET` socketpair, one request at a time):
//! request `[namespaces: i32][targets: i32 × n]` with n fds attached,
//! answer `[pid: i32][errno: i32]` with the agent's pidfd attached.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};

use crate::sys;

/// The hidden subcommand that runs the zygote.
pub const ZYGOTE_SUBCOMMAND: &str = "__zygote";

/// The zygote's end of its socket, by fd number.
const FD_SOCKET: RawFd = 3;

/// At most this many fds go with one request (the receiver's cmsg space).
const MAX_FDS: usize = 16;

/// How much higher than its creator's the zygote's priority is.
const ZYGOTE_NICE_BOOST: i32 = 10;

/// How long the creator waits for the zygote's answer to one fork.
const ANSWER_TIMEOUT_MS: u16 = 10_000;

static DISABLED: AtomicBool = AtomicBool::new(false);

/// Turns the zygote off for this process: agents are exec'd directly (a
/// one-shot CLI would only pay for an extra process).
pub fn disable() {
    DISABLED.store(true, Ordering::Relaxed);
}

/// The creator's handle on its zygote.
struct Zygote {
    /// The agent binary the zygote runs (agents of another binary are
    /// exec'd directly).
    binary: PathBuf,
    sock: OwnedFd,
    pid: i32,
    pidfd: OwnedFd,
    /// The process that started it. A child forked from that process
    /// (without exec) inherits this handle but must not share the socket:
    /// answers would go to whichever process reads first.
    owner: u32,
}

impl Drop for Zygote {
    fn drop(&mut self) {
        // When it is replaced (a broken zygote): kill and reap our own
        // child, by pidfd. A forked copy of the owner only closes its fds.
        if self.owner == std::process::id() {
            let _ = sys::pidfd_send_signal(self.pidfd.as_fd(), libc::SIGKILL);
            let _ = waitpid(nix::unistd::Pid::from_raw(self.pid), None);
        }
    }
}

static ZYGOTE: Mutex<Option<Zygote>> = Mutex::new(None);

/// The pid of this process's zygote, if one is running (tests use it to
/// tell it from a leaked process).
pub fn pid() -> Option<i32> {
    ZYGOTE.lock().unwrap_or_else(|p| p.into_inner()).as_ref().filter(|z| z.owner == std::process::id()).map(|z| z.pid)
}

/// Starts an agent of `binary` in new `namespaces` through the zygote, with
/// `fds` moved onto their target numbers. `None`: no zygote can serve it
/// (turned off, another binary, or it cannot start); the caller execs.
pub(crate) fn spawn(binary: &Path, namespaces: libc::c_int, fds: &[(BorrowedFd<'_>, RawFd)]) -> Option<io::Result<(i32, OwnedFd)>> {
    if DISABLED.load(Ordering::Relaxed) || fds.len() > MAX_FDS {
        return None;
    }
    let mut slot = ZYGOTE.lock().unwrap_or_else(|p| p.into_inner());
    // A zygote that died (killed, say) before it took the request is
    // replaced once per spawn.
    for _ in 0..2 {
        if slot.as_ref().is_some_and(|z| z.owner != std::process::id()) {
            *slot = None;
        }
        if slot.as_ref().is_some_and(|z| z.binary != binary) {
            return None;
        }
        if slot.is_none() {
            match start(binary) {
                Ok(z) => *slot = Some(z),
                Err(_) => break,
            }
        }
        let zygote = slot.as_ref()?;
        match request(zygote, namespaces, fds) {
            Ok(answer) => return Some(answer),
            Err(Failure::NotSent) => *slot = None,
            // It took the request and died: an agent may have been forked
            // with these very fds, so they are not sent again. The create
            // fails; such an agent exits when the creator closes the
            // control channel.
            Err(Failure::Lost(e)) => {
                *slot = None;
                return Some(Err(io::Error::new(e.kind(), format!("the zygote died while starting the agent: {e}"))));
            }
        }
    }
    // A binary that cannot serve as a zygote (an older envbox, say) would
    // cost every create two failed starts: exec agents from now on.
    DISABLED.store(true, Ordering::Relaxed);
    None
}

/// Why a request got no answer.
enum Failure {
    /// The zygote never took it (it was gone already, or died before
    /// reading it).
    NotSent,
    /// The zygote took it and gave no answer.
    Lost(io::Error),
}

/// Execs a new zygote.
fn start(binary: &Path) -> io::Result<Zygote> {
    let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
        .map_err(|e| io::Error::from_raw_os_error(e as i32))?;
    let devnull = File::open("/dev/null")?;
    let fds = [(devnull.as_fd(), 0), (devnull.as_fd(), 1), (devnull.as_fd(), 2), (theirs.as_fd(), FD_SOCKET)];
    let (pid, pidfd) = sys::spawn_with_fds(binary, &["envbox", ZYGOTE_SUBCOMMAND], &fds, 0)?;
    Ok(Zygote { binary: binary.to_path_buf(), sock: ours, pid, pidfd, owner: std::process::id() })
}

/// One fork: the request out, the answer back. A failed fork comes back as
/// `Ok(Err(_))`; `Err(_)` means the zygote is unusable.
fn request(z: &Zygote, namespaces: libc::c_int, fds: &[(BorrowedFd<'_>, RawFd)]) -> Result<io::Result<(i32, OwnedFd)>, Failure> {
    let mut msg = namespaces.to_le_bytes().to_vec();
    for (_, target) in fds {
        msg.extend_from_slice(&target.to_le_bytes());
    }
    let attached: Vec<BorrowedFd<'_>> = fds.iter().map(|(fd, _)| *fd).collect();
    sys::send_with_fds(z.sock.as_fd(), &msg, &attached).map_err(|_| Failure::NotSent)?;
    let mut pfd = [PollFd::new(z.sock.as_fd(), PollFlags::POLLIN)];
    loop {
        match poll(&mut pfd, PollTimeout::from(ANSWER_TIMEOUT_MS)) {
            Ok(0) => return Err(Failure::Lost(io::Error::new(io::ErrorKind::TimedOut, "no answer"))),
            Ok(_) => break,
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(Failure::Lost(io::Error::from_raw_os_error(e as i32))),
        }
    }
    let mut answer = [0u8; 8];
    let mut got = Vec::new();
    let n = match sys::recv_with_fds(z.sock.as_raw_fd(), &mut answer, &mut got) {
        Ok(n) => n,
        // A unix socket closed with unread data resets its peer: the
        // zygote died without reading the request, so nothing was forked.
        Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => return Err(Failure::NotSent),
        Err(e) => return Err(Failure::Lost(e)),
    };
    if n != answer.len() {
        return Err(Failure::Lost(io::Error::new(io::ErrorKind::UnexpectedEof, "it closed its socket")));
    }
    let pid = i32::from_le_bytes([answer[0], answer[1], answer[2], answer[3]]);
    let errno = i32::from_le_bytes([answer[4], answer[5], answer[6], answer[7]]);
    if errno != 0 {
        return Ok(Err(io::Error::from_raw_os_error(errno)));
    }
    match got.pop() {
        Some(pidfd) if pid > 0 => Ok(Ok((pid, pidfd))),
        _ => Err(Failure::Lost(io::Error::new(io::ErrorKind::InvalidData, "its answer has no pidfd"))),
    }
}

/// Entry point of `envbox __zygote`. Returns the process exit code.
pub fn main() -> i32 {
    let Some(sock) = sys::take_inherited_fd(FD_SOCKET) else {
        eprintln!("envbox: `{ZYGOTE_SUBCOMMAND}` is internal: it forks sandbox agents for the process that started it");
        return 2;
    };
    match serve(&sock) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

/// Serves fork requests until the creator's end of the socket closes.
fn serve(sock: &OwnedFd) -> io::Result<()> {
    // Agents inherit the working directory: never pin the creator's.
    std::env::set_current_dir("/")?;
    // Work every agent would repeat, done once here and inherited.
    crate::security::seccomp::compile_default_ahead();
    // Every create of a loaded creator queues on this one process; a
    // higher priority keeps the queue short. Agents go back to ours.
    let nice = sys::nice();
    sys::set_nice(nice - ZYGOTE_NICE_BOOST);
    // Our own PID namespace: after each fork into a new one, the namespace
    // of our next children is set back to it.
    let own_pidns = File::open("/proc/self/ns/pid")?;
    // Exited agents are reaped when SIGCHLD arrives on a signalfd (the
    // signal is blocked here; a forked agent unblocks every signal).
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    mask.thread_block().map_err(|e| io::Error::from_raw_os_error(e as i32))?;
    let sigfd =
        SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC).map_err(|e| io::Error::from_raw_os_error(e as i32))?;
    loop {
        let (sock_ready, child_exited) = {
            let mut pfds = [PollFd::new(sock.as_fd(), PollFlags::POLLIN), PollFd::new(sigfd.as_fd(), PollFlags::POLLIN)];
            match poll(&mut pfds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(io::Error::from_raw_os_error(e as i32)),
            }
            let ready = |p: &PollFd<'_>| p.revents().is_some_and(|r| !r.is_empty());
            (ready(&pfds[0]), ready(&pfds[1]))
        };
        if child_exited {
            while let Ok(Some(_)) = sigfd.read_signal() {}
            reap();
        }
        if !sock_ready {
            continue;
        }
        let mut msg = [0u8; 4 + 4 * MAX_FDS];
        let mut fds = Vec::new();
        let n = match sys::recv_with_fds(sock.as_raw_fd(), &mut msg, &mut fds) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let answer = match parse(&msg[..n], fds.len()) {
            Some((namespaces, targets)) => fork_agent(namespaces, &targets, &fds, &own_pidns, nice),
            None => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        };
        drop(fds);
        let (pid, errno, pidfd) = match answer {
            Ok((pid, pidfd)) => (pid, 0, Some(pidfd)),
            Err(e) => (0, e.raw_os_error().unwrap_or(libc::EIO), None),
        };
        let mut out = pid.to_le_bytes().to_vec();
        out.extend_from_slice(&errno.to_le_bytes());
        let attached: Vec<BorrowedFd<'_>> = pidfd.iter().map(AsFd::as_fd).collect();
        sys::send_with_fds(sock.as_fd(), &out, &attached)?;
    }
}

/// Decodes a request: the namespaces and one target per attached fd.
fn parse(msg: &[u8], nfds: usize) -> Option<(libc::c_int, Vec<RawFd>)> {
    if msg.len() < 4 || msg.len() % 4 != 0 || (msg.len() - 4) / 4 != nfds {
        return None;
    }
    let word = |c: &[u8]| i32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    let namespaces = word(&msg[..4]);
    // Namespace flags only: the zygote unshares what it is given.
    let allowed =
        libc::CLONE_NEWPID | libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS | libc::CLONE_NEWNET | libc::CLONE_NEWCGROUP;
    if namespaces & !allowed != 0 {
        return None;
    }
    let targets: Vec<RawFd> = msg[4..].chunks_exact(4).map(word).collect();
    // Targets are small, distinct fd numbers.
    let distinct = targets.iter().enumerate().all(|(i, t)| !targets[..i].contains(t));
    (distinct && targets.iter().all(|&t| (0..64).contains(&t))).then_some((namespaces, targets))
}

/// Reaps every exited agent.
fn reap() {
    while let Ok(status) = waitpid(None::<nix::unistd::Pid>, Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}

/// Forks one agent into new namespaces. Returns its pid and a pidfd.
fn fork_agent(namespaces: libc::c_int, targets: &[RawFd], fds: &[OwnedFd], own_pidns: &File, nice: i32) -> io::Result<(i32, OwnedFd)> {
    let flags = CloneFlags::from_bits_truncate(namespaces);
    let others = flags - CloneFlags::CLONE_NEWPID;
    // A new PID namespace applies to the children made after unshare, so the
    // agent is the first process, PID 1, of its own.
    let new_pid = flags.contains(CloneFlags::CLONE_NEWPID);
    if new_pid {
        nix::sched::unshare(CloneFlags::CLONE_NEWPID).map_err(|e| io::Error::from_raw_os_error(e as i32))?;
    }
    let forked = sys::fork_single_threaded();
    if new_pid && !matches!(forked, Ok(None)) {
        // In the zygote (never the child: its children belong in its new
        // namespace): back to ours for the next agent.
        if nix::sched::setns(own_pidns.as_fd(), CloneFlags::CLONE_NEWPID).is_err() {
            // Every later agent would be nested one level deeper: this
            // zygote is done. Its creator sees the socket close and starts
            // a fresh one; the agent just forked dies with its namespace.
            if let Ok(Some(pid)) = forked {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            }
            #[allow(clippy::exit)]
            std::process::exit(1);
        }
    }
    match forked? {
        Some(pid) => {
            // The child is not reaped before this: reaping happens only in
            // this (single) thread, later.
            let pidfd = sys::pidfd_open(pid)?;
            Ok((pid, pidfd))
        }
        None => {
            let pairs: Vec<(RawFd, RawFd)> = fds.iter().map(AsRawFd::as_raw_fd).zip(targets.iter().copied()).collect();
            sys::set_nice(nice);
            // `ps` inside and outside shows PID 1 as what it now is.
            let _ = sys::rewrite_cmdline(&["envbox", crate::agent::AGENT_SUBCOMMAND]);
            let code = match sys::install_fds(&pairs)
                .and_then(|()| nix::sched::unshare(others).map_err(|e| io::Error::from_raw_os_error(e as i32)))
            {
                Ok(()) => crate::agent::main(),
                Err(e) => crate::agent::report_startup_failure(&format!("entering the sandbox's namespaces failed: {e}")),
            };
            // The agent's end: never return into the zygote's loop.
            #[allow(clippy::exit)]
            std::process::exit(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    fn msg(words: &[i32]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    #[test]
    fn requests_must_name_one_distinct_small_target_per_fd() {
        assert_eq!(parse(&msg(&[0x20000, 0, 1, 3]), 3), Some((0x20000, vec![0, 1, 3])));
        assert_eq!(parse(&msg(&[0]), 0), Some((0, vec![])));
        assert_eq!(parse(&msg(&[0, 1]), 2), None, "fewer targets than fds");
        assert_eq!(parse(&msg(&[0, 1, 2]), 1), None, "more targets than fds");
        assert_eq!(parse(&msg(&[0, 3, 3]), 2), None, "a target twice");
        assert_eq!(parse(&msg(&[0, -1]), 1), None, "a negative target");
        assert_eq!(parse(&msg(&[0, 64]), 1), None, "a target out of range");
        assert_eq!(parse(&[1, 2, 3], 0), None, "a torn word");
        assert_eq!(parse(&[], 0), None, "no namespaces");
        assert_eq!(parse(&msg(&[libc::CLONE_NEWUSER]), 0), None, "not a namespace it makes");
        assert_eq!(parse(&msg(&[libc::CLONE_FILES | libc::CLONE_NEWNS]), 0), None, "not a namespace flag");
    }
}
