//! The only place in envbox with `unsafe`: thin, documented wrappers over the
//! syscalls that neither `std` nor `nix` wraps the way we need.
//!
//! Every function here does one syscall (or one tightly bound sequence, such as
//! the clone-then-exec child) and returns `std::io::Result` / `nix::Result`, so
//! callers name the step that failed in their own error types.

pub mod btrfs;
pub mod openat2;

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};

/// What the child of [`spawn_in_namespaces`] does between `clone` and `execve`.
///
/// Everything is prepared by the parent (C strings, the fd table), because the
/// child shares the parent's memory (`CLONE_VM`) and must not allocate.
pub struct SpawnSpec {
    /// The executable, as a host path.
    pub path: CString,
    /// `argv`, including `argv[0]`.
    pub argv: Vec<CString>,
    /// The complete environment of the child.
    pub envp: Vec<CString>,
    /// `(source fd, target fd)`: each source is `dup2`ed onto its target.
    /// Sources must all be above every target (see [`dup_above`]).
    pub fds: Vec<(RawFd, RawFd)>,
    /// `CLONE_NEW*` flags.
    pub namespaces: libc::c_int,
}

/// Block of memory shared by parent and child across `clone(CLONE_VM)`.
struct ChildArgs<'a> {
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    fds: &'a [(RawFd, RawFd)],
    /// Set by the child when `execve` (or a `dup2`) fails.
    errno: AtomicI32,
}

/// Size of the stack the child runs on until it calls `execve`.
const CHILD_STACK_SIZE: usize = 64 * 1024;

extern "C" fn spawn_child(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` points at the `ChildArgs` that `spawn_in_namespaces` keeps
    // alive on its stack; the parent is suspended (CLONE_VFORK) until this child
    // has exec'd or exited, so the borrow cannot dangle.
    let args = unsafe { &*(arg as *const ChildArgs<'_>) };
    let mut max_target = 2;
    for &(src, dst) in args.fds {
        // SAFETY: plain dup2 on fds the parent owns; async-signal-safe.
        if unsafe { libc::dup2(src, dst) } < 0 {
            args.errno.store(io::Error::last_os_error().raw_os_error().unwrap_or(libc::EBADF), Ordering::SeqCst);
            // SAFETY: _exit is async-signal-safe and never returns.
            unsafe { libc::_exit(127) };
        }
        max_target = max_target.max(dst);
    }
    // Close every other inherited fd: nothing of the host's leaks into the
    // sandbox (SECURITY.md L1): the gaps between targets, then everything
    // above them. The flag is 0, so the close is immediate.
    for fd in 0..max_target {
        if !args.fds.iter().any(|&(_, dst)| dst == fd) {
            // SAFETY: closing an fd of this (child) process; EBADF is fine.
            unsafe { libc::close(fd) };
        }
    }
    // SAFETY: close_range only closes fds of this (child) process.
    unsafe {
        libc::syscall(libc::SYS_close_range, max_target + 1, libc::c_uint::MAX, 0);
    }
    // SAFETY: the pointers come from CStrings and NULL-terminated pointer
    // arrays that outlive the child (the parent is suspended until exec).
    unsafe { libc::execve(args.path, args.argv, args.envp) };
    args.errno.store(io::Error::last_os_error().raw_os_error().unwrap_or(libc::ENOEXEC), Ordering::SeqCst);
    // SAFETY: _exit is async-signal-safe and never returns.
    unsafe { libc::_exit(127) }
}

/// Starts `spec.path` in new namespaces, like `posix_spawn` with clone flags.
///
/// Uses `clone(CLONE_VM | CLONE_VFORK | CLONE_PIDFD | namespaces)`: the child
/// shares our memory and the calling thread is suspended until it has called
/// `execve`, so there is no page-table copy of a large parent and no
/// allocation in the child. Returns the host pid and a pidfd for it.
pub fn spawn_in_namespaces(spec: &SpawnSpec) -> io::Result<(i32, OwnedFd)> {
    let argv: Vec<*const libc::c_char> = spec.argv.iter().map(|s| s.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
    let envp: Vec<*const libc::c_char> = spec.envp.iter().map(|s| s.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
    let args = ChildArgs { path: spec.path.as_ptr(), argv: argv.as_ptr(), envp: envp.as_ptr(), fds: &spec.fds, errno: AtomicI32::new(0) };
    let mut stack = vec![0u8; CHILD_STACK_SIZE];
    let mut pidfd: libc::c_int = -1;
    let flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | spec.namespaces | libc::SIGCHLD;

    // Block all signals so that no handler of ours runs in the child while it
    // shares our memory; the agent resets its mask right after exec.
    let mut old_mask = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    let mut all = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigfillset initialises `all`; pthread_sigmask writes `old_mask`.
    unsafe {
        libc::sigfillset(all.as_mut_ptr());
        libc::pthread_sigmask(libc::SIG_SETMASK, all.as_ptr(), old_mask.as_mut_ptr());
    }
    // SAFETY: the stack pointer is the top of a live, 16-byte aligned buffer
    // (the stack grows down on every Linux target we build for); `args`
    // outlives the child because CLONE_VFORK suspends us until it exec'd or
    // exited; with CLONE_PIDFD the kernel writes the pidfd into `pidfd`.
    let pid = unsafe {
        let top = stack.as_mut_ptr().add(CHILD_STACK_SIZE);
        let top = top.sub(top as usize % 16);
        libc::clone(spawn_child, top.cast(), flags, std::ptr::addr_of!(args) as *mut libc::c_void, std::ptr::addr_of_mut!(pidfd))
    };
    let clone_err = io::Error::last_os_error();
    // SAFETY: restores the mask saved above.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, old_mask.as_ptr(), std::ptr::null_mut());
    }
    drop(stack);
    if pid < 0 {
        return Err(clone_err);
    }
    // SAFETY: the kernel returned a fresh pidfd that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    let errno = args.errno.load(Ordering::SeqCst);
    if errno != 0 {
        // The child has already exited; reap it so it leaves no zombie.
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
        return Err(io::Error::from_raw_os_error(errno));
    }
    Ok((pid, pidfd))
}

/// [`spawn_in_namespaces`] with an empty environment, `fds` moved onto
/// their target numbers, and every other fd closed.
pub fn spawn_with_fds(
    path: &std::path::Path,
    argv: &[&str],
    fds: &[(BorrowedFd<'_>, RawFd)],
    namespaces: libc::c_int,
) -> io::Result<(i32, OwnedFd)> {
    let cstr = |b: &[u8]| CString::new(b).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL));
    // Sources are duplicated above every target first, so the dup2 calls in
    // the child cannot clobber each other.
    let keep = fds.iter().map(|&(fd, target)| Ok((dup_above(fd, 16)?, target))).collect::<io::Result<Vec<_>>>()?;
    let spec = SpawnSpec {
        path: cstr(path.as_os_str().as_encoded_bytes())?,
        argv: argv.iter().map(|a| cstr(a.as_bytes())).collect::<io::Result<_>>()?,
        envp: Vec::new(),
        fds: keep.iter().map(|(fd, target)| (fd.as_raw_fd(), *target)).collect(),
        namespaces,
    };
    spawn_in_namespaces(&spec)
}

/// Duplicates `fd` to a new close-on-exec fd numbered at least `min`.
pub fn dup_above(fd: BorrowedFd<'_>, min: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC creates a new fd that we own from here on.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `new` is a fresh fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Takes ownership of an fd inherited at a fixed number (the agent's fds 3..).
///
/// Returns `None` when nothing is open there.
pub fn take_inherited_fd(fd: RawFd) -> Option<OwnedFd> {
    // SAFETY: F_GETFD only queries the fd table.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return None;
    }
    // SAFETY: F_SETFD sets close-on-exec on an fd we are about to own.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    // SAFETY: the fd was handed to this process at exec and nothing else
    // in the process claims it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The calling thread's nice value (Linux keeps one per thread). It cannot
/// fail for the caller itself.
pub fn nice() -> i32 {
    // SAFETY: getpriority only reads the caller's scheduling attributes.
    unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
}

/// Sets the calling thread's nice value (clamped to -20..=19), which the
/// threads and processes it starts inherit; a failure (no privilege to
/// raise it) leaves it as it was.
pub fn set_nice(value: i32) {
    // SAFETY: setpriority on our own process.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, value.clamp(-20, 19));
    }
}

/// `fork(2)`, for a process that has exactly one thread (the zygote).
///
/// Returns `Some(pid)` in the parent and `None` in the child. With one
/// thread no lock can be held by a thread that the child lacks, so the
/// child may allocate and run ordinary code, which is not true after a fork
/// of a multi-threaded process; hence the check, which refuses otherwise.
pub fn fork_single_threaded() -> io::Result<Option<i32>> {
    let threads = std::fs::read_dir("/proc/thread-self/..")?.count();
    if threads != 1 {
        return Err(io::Error::other(format!("refusing to fork a process with {threads} threads")));
    }
    // SAFETY: the process is single-threaded (checked above), so the child
    // is a complete copy of a consistent process.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(None),
        pid => Ok(Some(pid)),
    }
}

/// Rewrites this process's command line (what `/proc/<pid>/cmdline` and
/// `ps` show) in place to `args`, NUL-separated; the rest of the original
/// area is zeroed. Fails with EINVAL when `args` does not fit.
pub fn rewrite_cmdline(args: &[&str]) -> io::Result<()> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name, which may contain anything but ends
    // at the last ')': field 3 (state) is index 0; arg_start and arg_end
    // are fields 48 and 49.
    let fields: Vec<&str> = stat.rsplit_once(") ").map(|(_, rest)| rest.split(' ').collect()).unwrap_or_default();
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<usize>().ok());
    let (Some(start), Some(end)) = (field(48), field(49)) else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    let mut new: Vec<u8> = args.iter().flat_map(|a| a.bytes().chain(std::iter::once(0))).collect();
    let len = end.checked_sub(start).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    if new.len() > len || args.iter().any(|a| a.contains('\0')) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    new.resize(len, 0);
    // SAFETY: [start, end) is the argument area the kernel set up for this
    // process at exec (on its stack, writable), as it reports it; nothing
    // else is written, and what Rust's args() points at stays NUL-terminated.
    unsafe { std::ptr::copy_nonoverlapping(new.as_ptr(), start as *mut u8, len) };
    Ok(())
}

/// Moves fds onto fixed numbers, `(source, target)` each, and closes every
/// other fd of the process: what a freshly forked agent inherits.
pub fn install_fds(pairs: &[(RawFd, RawFd)]) -> io::Result<()> {
    let max_target = pairs.iter().map(|&(_, t)| t).max().unwrap_or(2).max(2);
    // First every source above every target, so no dup2 clobbers a source
    // that is still to be moved.
    let mut high = Vec::with_capacity(pairs.len());
    for &(src, target) in pairs {
        // SAFETY: F_DUPFD_CLOEXEC creates a new fd in our own table.
        let fd = unsafe { libc::fcntl(src, libc::F_DUPFD_CLOEXEC, max_target + 1) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        high.push((fd, target));
    }
    for &(src, target) in &high {
        // SAFETY: dup2 onto a number of our own table (the old fd there, if
        // any, is closed: nothing of it is wanted).
        if unsafe { libc::dup2(src, target) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    for fd in 0..max_target {
        if !pairs.iter().any(|&(_, t)| t == fd) {
            // SAFETY: closing an fd of our own table; EBADF is fine.
            unsafe { libc::close(fd) };
        }
    }
    let first = libc::c_uint::try_from(max_target + 1).unwrap_or(3);
    // SAFETY: close_range only closes fds of our own table.
    unsafe {
        libc::syscall(libc::SYS_close_range, first, libc::c_uint::MAX, 0);
    }
    Ok(())
}

/// `pidfd_open(2)`: a stable handle on a process, immune to pid reuse.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel returned a fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `pidfd_send_signal(2)`.
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: plain syscall; a null siginfo means "as if by kill(2)".
    let rc = unsafe { libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), signal, std::ptr::null::<libc::siginfo_t>(), 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `close_range(first, ~0, CLOSE_RANGE_CLOEXEC)`: marks every fd from `first`
/// on close-on-exec, so nothing of ours survives the next `execve`.
pub fn cloexec_from(first: RawFd) {
    let first = libc::c_uint::try_from(first).unwrap_or(3);
    // SAFETY: only changes flags in our own fd table.
    unsafe {
        libc::syscall(libc::SYS_close_range, first, libc::c_uint::MAX, libc::CLOSE_RANGE_CLOEXEC);
    }
}

/// `flock(2)` on an fd.
pub fn flock(fd: BorrowedFd<'_>, op: libc::c_int) -> io::Result<()> {
    loop {
        // SAFETY: flock only takes an advisory lock on an fd we borrow.
        let rc = unsafe { libc::flock(fd.as_raw_fd(), op) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Brings the loopback interface of the current network namespace up.
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: socket() returns a new fd or -1.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `sock` is a fresh fd that we own.
    let sock = unsafe { OwnedFd::from_raw_fd(sock) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = libc::c_char::from_ne_bytes([*src]);
    }
    // SAFETY: SIOCGIFFLAGS reads the flags of the interface named in `req`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the union field was just filled by SIOCGIFFLAGS.
    unsafe {
        req.ifr_ifru.ifru_flags |= libc::c_short::try_from(libc::IFF_UP | libc::IFF_RUNNING).unwrap_or(1);
    }
    // SAFETY: SIOCSIFFLAGS sets the flags of the interface named in `req`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `kill(-1, SIGKILL)` from a PID-namespace init: every other process in the
/// namespace dies; the caller survives.
pub fn kill_all_but_self() {
    // SAFETY: kill with pid -1 and a valid signal number.
    unsafe { libc::kill(-1, libc::SIGKILL) };
}

/// Clears the signal mask (the spawner blocks all signals across clone).
pub fn unblock_all_signals() {
    let mut empty = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises `empty` before it is used.
    unsafe {
        libc::sigemptyset(empty.as_mut_ptr());
        libc::pthread_sigmask(libc::SIG_SETMASK, empty.as_ptr(), std::ptr::null_mut());
    }
}

/// Sets `O_NONBLOCK` on an fd.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL only change the file status flags.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A path like `/proc/self/fd/N` that names an open fd; used as a mount
/// source or target so that the kernel acts on the object we resolved safely,
/// not on whatever a path string points to later.
pub fn fd_path(fd: BorrowedFd<'_>) -> CString {
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default()
}

/// `dup2(src, dst)` that leaves `dst` inheritable even when `src == dst`
/// (where dup2 is a no-op and would keep close-on-exec).
pub fn dup2_inheritable(src: RawFd, dst: RawFd) -> io::Result<()> {
    if src == dst {
        // SAFETY: clears FD_CLOEXEC on an fd we own.
        if unsafe { libc::fcntl(dst, libc::F_SETFD, 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
        return Ok(());
    }
    // SAFETY: dup2 on fds owned by this process.
    if unsafe { libc::dup2(src, dst) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes the coming `execve` leave this process **not dumpable**, so that
/// nothing it later forks can open its `/proc/<pid>/{mem,fd/*,environ}`.
///
/// Why it is needed: a dumpable process is reachable through procfs by
/// every process with the same uid and capabilities, and exec always makes
/// a process dumpable again, so `PR_SET_DUMPABLE` before exec is lost. The
/// kernel does set an exec'd process non-dumpable (`suid_dumpable`, 0 by
/// default) when the exec changes its credentials: `begin_new_exec` and
/// `commit_creds` check euid, egid, **fsuid**, fsgid and the capabilities.
/// exec resets fsuid to euid, so an fsuid other than 0 right before exec is
/// such a change, and no privilege is gained by it (NNP is untouched).
///
/// The fsuid switch runs with `SECBIT_NO_SETUID_FIXUP` so the effective set
/// keeps DAC_OVERRIDE & co. until exec (exec still finds 0700 binaries), and
/// the securebits are restored at once, so nothing is inherited.
/// Needs CAP_SETPCAP. Allocation-free: runs in a pre-exec hook.
pub fn make_next_exec_undumpable() -> io::Result<()> {
    const SECBIT_NO_SETUID_FIXUP: libc::c_ulong = 1 << 2;
    const OVERFLOW_UID: u32 = 65534;
    // SAFETY: PR_GET_SECUREBITS takes no pointer; it returns the bits or -1.
    let old = unsafe { libc::prctl(libc::PR_GET_SECUREBITS, 0, 0, 0, 0) };
    let old = libc::c_ulong::try_from(old).map_err(|_| io::Error::last_os_error())?;
    // SAFETY: PR_SET_SECUREBITS takes integers only.
    if unsafe { libc::prctl(libc::PR_SET_SECUREBITS, old | SECBIT_NO_SETUID_FIXUP, 0, 0, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: setfsuid takes an integer and returns the previous fsuid.
    unsafe { libc::setfsuid(OVERFLOW_UID) };
    // SAFETY: an invalid id (-1) makes setfsuid only report the current one.
    let now = unsafe { libc::setfsuid(u32::MAX) };
    // SAFETY: as above: restore the securebits we found.
    if unsafe { libc::prctl(libc::PR_SET_SECUREBITS, old, 0, 0, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    if u32::try_from(now).ok() != Some(OVERFLOW_UID) {
        return Err(io::Error::from_raw_os_error(libc::EPERM));
    }
    Ok(())
}

/// Registers a hook that runs in the child between fork and exec.
///
/// The child has one thread, a copy of the caller's; other threads of the
/// caller (the agent's commit and gc threads, a multi-threaded host
/// program) are not copied, so a lock one of them held at fork time stays
/// locked in the child. glibc's fork takes and resets its malloc locks
/// around the fork, so the small allocations the hooks make are safe; the
/// hooks take no other lock and touch no shared state.
pub fn set_pre_exec<F>(cmd: &mut std::process::Command, hook: F)
where
    F: FnMut() -> io::Result<()> + Send + Sync + 'static,
{
    use std::os::unix::process::CommandExt;
    // SAFETY: see above: the hook runs in the forked child, allocates
    // only through glibc's fork-safe malloc and takes no other lock.
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// `setns(fd, CLONE_NEWNET)` on a raw fd: for pre-exec hooks, which run in
/// a forked child where the fd is the parent's, borrowed.
pub fn setns_net(fd: RawFd) -> io::Result<()> {
    // SAFETY: setns only reads the fd; a bad one gives EBADF.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Takes ownership of a raw fd that a nix call just returned to us.
pub fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: callers pass fds freshly returned by open(2)-like calls, which
    // nothing else in the process owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// The new mount API (fsopen/fsconfig/fsmount/move_mount): a mount made as
/// a detached fd in one process and attached by another, in another mount
/// namespace. A reset needs it: the overlay's layers are host paths, which
/// only a process in the host's mount namespace can name, while the mount
/// must land in the sandbox's namespace.
pub mod newmount {
    use std::ffi::CString;
    use std::io;
    use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

    const FSOPEN_CLOEXEC: libc::c_uint = 1;
    const FSCONFIG_SET_FLAG: libc::c_uint = 0;
    const FSCONFIG_SET_STRING: libc::c_uint = 1;
    const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
    const FSMOUNT_CLOEXEC: libc::c_uint = 1;
    const MOUNT_ATTR_NOSUID: libc::c_uint = 0x2;
    const MOUNT_ATTR_NODEV: libc::c_uint = 0x4;
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

    fn cstring(s: &str) -> io::Result<CString> {
        CString::new(s).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
    }

    fn fd_result(rc: libc::c_long) -> io::Result<OwnedFd> {
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = RawFd::try_from(rc).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
        // SAFETY: the kernel returned a fresh fd that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// `fsopen(fstype)`: a filesystem context to configure.
    pub fn fsopen(fstype: &str) -> io::Result<OwnedFd> {
        let name = cstring(fstype)?;
        // SAFETY: `name` is a valid C string for the duration of the call.
        fd_result(unsafe { libc::syscall(libc::SYS_fsopen, name.as_ptr(), FSOPEN_CLOEXEC) })
    }

    fn fsconfig(fd: BorrowedFd<'_>, cmd: libc::c_uint, key: Option<&CString>, value: Option<&CString>) -> io::Result<()> {
        let key = key.map_or(std::ptr::null(), |k| k.as_ptr());
        let value = value.map_or(std::ptr::null(), |v| v.as_ptr());
        // SAFETY: key/value are null or valid C strings that outlive the call.
        let rc = unsafe { libc::syscall(libc::SYS_fsconfig, fd.as_raw_fd(), cmd, key, value, 0) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// `fsconfig(FSCONFIG_SET_STRING, key, value)`.
    pub fn set_string(fd: BorrowedFd<'_>, key: &str, value: &str) -> io::Result<()> {
        fsconfig(fd, FSCONFIG_SET_STRING, Some(&cstring(key)?), Some(&cstring(value)?))
    }

    /// `fsconfig(FSCONFIG_SET_FLAG, key)`.
    pub fn set_flag(fd: BorrowedFd<'_>, key: &str) -> io::Result<()> {
        fsconfig(fd, FSCONFIG_SET_FLAG, Some(&cstring(key)?), None)
    }

    /// `fsconfig(FSCONFIG_CMD_CREATE)` then `fsmount(nosuid, nodev)`: a
    /// detached mount, attached nowhere until `attach`.
    pub fn create_and_mount(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
        fsconfig(fd, FSCONFIG_CMD_CREATE, None, None)?;
        // SAFETY: plain syscall on an fd we borrow.
        fd_result(unsafe { libc::syscall(libc::SYS_fsmount, fd.as_raw_fd(), FSMOUNT_CLOEXEC, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV) })
    }

    /// `open_tree(path, OPEN_TREE_CLONE)`: a detached copy of the mount
    /// tree at `path` (a bind mount not attached anywhere), then made
    /// nosuid and nodev with `mount_setattr`.
    pub fn clone_tree(path: &str) -> io::Result<OwnedFd> {
        const OPEN_TREE_CLONE: libc::c_uint = 1;
        const OPEN_TREE_CLOEXEC: libc::c_uint = libc::O_CLOEXEC as libc::c_uint;
        /// `struct mount_attr`.
        #[repr(C)]
        struct MountAttr {
            attr_set: u64,
            attr_clr: u64,
            propagation: u64,
            userns_fd: u64,
        }
        let path = cstring(path)?;
        // SAFETY: plain syscall; `path` is a NUL-terminated string that
        // outlives it.
        let tree =
            fd_result(unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC) })?;
        let attr = MountAttr { attr_set: u64::from(MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV), attr_clr: 0, propagation: 0, userns_fd: 0 };
        let empty = c"";
        // SAFETY: plain syscall on the fd we own; `attr` and `empty` live
        // for the call and the size passed is the struct's.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                tree.as_raw_fd(),
                empty.as_ptr(),
                libc::AT_EMPTY_PATH,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(tree)
    }

    /// `move_mount(mount_fd, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH)`:
    /// attaches a detached mount at `target` in the caller's namespace.
    pub fn attach(mount: BorrowedFd<'_>, target: &str) -> io::Result<()> {
        let empty = cstring("")?;
        let target = cstring(target)?;
        // SAFETY: both strings are valid C strings that outlive the call.
        let rc = unsafe {
            libc::syscall(libc::SYS_move_mount, mount.as_raw_fd(), empty.as_ptr(), libc::AT_FDCWD, target.as_ptr(), MOVE_MOUNT_F_EMPTY_PATH)
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Sends `data` with `fds` attached (SCM_RIGHTS) on a unix socket.
/// Returns how many bytes went out.
pub fn send_with_fds(sock: BorrowedFd<'_>, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let iov = [io::IoSlice::new(data)];
    let cmsg = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &cmsg };
    sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None).map_err(|e| io::Error::from_raw_os_error(e as i32))
}

/// Receives into `buf`, appending any fds that came along (close-on-exec)
/// to `fds`. Returns the number of bytes read (0 at end of stream).
pub fn recv_with_fds(sock: RawFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut cmsg = nix::cmsg_space!([RawFd; 16]);
    let mut iov = [io::IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(sock, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT)
        .map_err(|e| io::Error::from_raw_os_error(e as i32))?;
    let n = msg.bytes;
    for c in msg.cmsgs().map_err(|e| io::Error::from_raw_os_error(e as i32))? {
        if let ControlMessageOwned::ScmRights(received) = c {
            fds.extend(received.into_iter().map(owned));
        }
    }
    Ok(n)
}
