//! Network namespaces made ahead of time.
//!
//! Creating a network namespace runs every per-namespace init of the
//! network stack and is the largest single cost of a create (~0.6–1 ms
//! here). A background thread keeps a few ready — each one with loopback
//! up — and a create hands one to the agent, which joins it with setns.
//! A namespace lives as long as an fd or a process holds it, so the spares
//! die with this process: nothing to clean up after a crash.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};

use nix::fcntl::{open, OFlag};
use nix::sched::{unshare, CloneFlags};
use nix::sys::stat::Mode;

use crate::sys;

/// How many spare namespaces the pool keeps.
pub const SPARES: usize = 4;

struct Pool {
    ready: Mutex<Vec<OwnedFd>>,
    wanted: Condvar,
}

static POOL: OnceLock<Pool> = OnceLock::new();
static DISABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// Creates in progress in this process; the pool refills only when there
/// are none (see [`busy`]).
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Marks a create in progress until dropped.
///
/// Making a network namespace registers hundreds of sysctls and a device
/// under global kernel locks that a create's own steps (a new IPC
/// namespace, /proc and /sys mounts) take too: a refill running beside a
/// create slows it by about half a millisecond here. So the pool refills
/// between creates; under a constant stream of creates it runs dry, and
/// each create makes its own namespace, as without a pool.
pub struct Busy(());

pub fn busy() -> Busy {
    IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
    Busy(())
}

impl Drop for Busy {
    fn drop(&mut self) {
        if IN_FLIGHT.fetch_sub(1, Ordering::SeqCst) == 1 {
            if let Some(pool) = POOL.get() {
                // Under the lock, so the refill thread cannot miss it
                // between its check and its wait.
                let _ready = pool.ready.lock().unwrap_or_else(|p| p.into_inner());
                pool.wanted.notify_one();
            }
        }
    }
}

/// Turns the pool off for this process (a one-shot CLI would only make
/// spares to throw them away).
pub fn disable_pool() {
    DISABLED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Makes one network namespace with loopback up, on a throw-away thread
/// (unshare changes the calling thread's namespace).
fn make() -> std::io::Result<OwnedFd> {
    std::thread::Builder::new()
        .name("envbox-netns".into())
        .spawn(make_here)?
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the namespace thread panicked")))
}

/// Moves the calling thread into a new network namespace, brings its
/// loopback up and returns an fd of it.
fn make_here() -> std::io::Result<OwnedFd> {
    let errno = |e: nix::errno::Errno| std::io::Error::from_raw_os_error(e as i32);
    unshare(CloneFlags::CLONE_NEWNET).map_err(errno)?;
    sys::loopback_up()?;
    open("/proc/thread-self/ns/net", OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty()).map(sys::owned).map_err(errno)
}

fn refill(pool: &'static Pool) {
    // Each namespace is made on this thread, which then goes back to its
    // own: no thread per namespace, and none stays in a sandbox's.
    let Ok(home) = open("/proc/thread-self/ns/net", OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty()).map(sys::owned) else { return };
    loop {
        let mut ready = pool.ready.lock().unwrap_or_else(|p| p.into_inner());
        while ready.len() >= SPARES || IN_FLIGHT.load(Ordering::SeqCst) > 0 {
            ready = pool.wanted.wait(ready).unwrap_or_else(|p| p.into_inner());
        }
        drop(ready);
        let made = make_here();
        if nix::sched::setns(&home, CloneFlags::CLONE_NEWNET).is_err() {
            // Stuck in the new namespace: end this thread (which leaves
            // it) and the refills; takers make their own.
            return;
        }
        match made {
            Ok(ns) => pool.ready.lock().unwrap_or_else(|p| p.into_inner()).push(ns),
            // Cannot make namespaces (no privilege?): takers make their own
            // and report the error; stop trying here.
            Err(_) => return,
        }
    }
}

/// How many spare namespaces (each an open fd) the pool holds right now.
pub fn spares() -> usize {
    POOL.get().map_or(0, |p| p.ready.lock().unwrap_or_else(|p| p.into_inner()).len())
}

/// A fresh network namespace (loopback up) for a new sandbox.
pub fn take_netns() -> std::io::Result<OwnedFd> {
    if DISABLED.load(std::sync::atomic::Ordering::Relaxed) {
        return make();
    }
    let mut started = false;
    let pool = POOL.get_or_init(|| {
        started = true;
        Pool { ready: Mutex::new(Vec::new()), wanted: Condvar::new() }
    });
    if started {
        let _ = std::thread::Builder::new().name("envbox-netns-pool".into()).spawn(move || refill(pool));
    }
    let spare = pool.ready.lock().unwrap_or_else(|p| p.into_inner()).pop();
    match spare {
        Some(ns) => Ok(ns),
        None => make(),
    }
}
