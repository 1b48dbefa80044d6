//! Network namespaces made ahead of time.
//!
//! Creating a network namespace runs every per-namespace init of the
//! network stack and is the largest single cost of a create (~0.6–1 ms
//! here). A background thread keeps a few ready — each one with loopback
//! up — and a create hands one to the agent, which joins it with setns.
//! A namespace lives as long as an fd or a process holds it, so the spares
//! die with this process: nothing to clean up after a crash.

use std::os::fd::OwnedFd;
use std::sync::{Condvar, Mutex, OnceLock};

use nix::fcntl::{open, OFlag};
use nix::sched::{unshare, CloneFlags};
use nix::sys::stat::Mode;

use crate::sys;

/// How many spare namespaces the pool keeps.
const SPARES: usize = 4;

struct Pool {
    ready: Mutex<Vec<OwnedFd>>,
    wanted: Condvar,
}

static POOL: OnceLock<Pool> = OnceLock::new();
static DISABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

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
        .spawn(|| -> std::io::Result<OwnedFd> {
            unshare(CloneFlags::CLONE_NEWNET).map_err(|e| std::io::Error::from_raw_os_error(e as i32))?;
            sys::loopback_up()?;
            open("/proc/thread-self/ns/net", OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
                .map(sys::owned)
                .map_err(|e| std::io::Error::from_raw_os_error(e as i32))
        })?
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the namespace thread panicked")))
}

fn refill(pool: &'static Pool) {
    loop {
        let mut ready = pool.ready.lock().unwrap_or_else(|p| p.into_inner());
        while ready.len() >= SPARES {
            ready = pool.wanted.wait(ready).unwrap_or_else(|p| p.into_inner());
        }
        drop(ready);
        match make() {
            Ok(ns) => pool.ready.lock().unwrap_or_else(|p| p.into_inner()).push(ns),
            // Cannot make namespaces (no privilege?): takers make their own
            // and report the error; stop trying here.
            Err(_) => return,
        }
    }
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
    pool.wanted.notify_one();
    match spare {
        Some(ns) => Ok(ns),
        None => make(),
    }
}
