//! Deleting a sandbox: kill its PID 1 (the kernel then kills everything in
//! its PID namespace, and its mount namespace — with every overlay — goes
//! away with the last process), remove its cgroups, then its directories.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use super::state::{self, State};
use super::{cgroup_layout, CGROUP_PARENT};
use crate::cgroup::Cgroup;
use crate::error::{Error, Result};
use crate::sys;

/// Whether delete waits for the directory removal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Remove the directories on a background thread (anything left when
    /// the process exits is collected by the next envbox start).
    Background,
    Sync,
}

/// Waits until the process behind `pidfd` has exited.
pub(super) fn wait_exit(pid: i32, pidfd: &OwnedFd, parent: bool, timeout: Duration) -> bool {
    if parent {
        // Ours: reap it, so it leaves no zombie.
        return nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None).is_ok();
    }
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [nix::poll::PollFd::new(pidfd.as_fd(), nix::poll::PollFlags::POLLIN)];
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)) {
            Ok(n) if n > 0 => return true,
            Ok(_) if left.is_zero() => return false,
            _ => {}
        }
    }
}

/// Removes cgroups and directories of a sandbox whose processes are gone.
/// `lock` must be held by the caller (or the sandbox never ran).
pub(super) fn remove_leftovers(root: &Path, dir: &Path, st: Option<&State>, wait: Wait) -> Result<()> {
    let mut first_err: Option<Error> = None;
    if let Some(st) = st {
        let cg = cgroup_layout().and_then(|l| Cgroup::open(l, CGROUP_PARENT, &st.id).map_err(Error::from));
        if let Err(e) = cg.and_then(|cg| cg.kill_all().and_then(|()| cg.remove()).map_err(Error::from)) {
            first_err = Some(e);
        }
    }
    let btrfs = st.is_some_and(|s| s.config.fs == crate::config::FsBackend::Btrfs);
    match state::move_to_trash(root, dir) {
        // Subvolumes go with one ioctl each, not file by file.
        Ok(trash) if btrfs => {
            crate::fs::btrfs::destroy_generations(&trash);
            let _ = std::fs::remove_dir_all(trash);
        }
        Ok(trash) if wait == Wait::Sync => {
            let _ = std::fs::remove_dir_all(trash);
        }
        Ok(trash) => {
            let _ = std::thread::Builder::new().name("envbox-rm".into()).spawn(move || {
                let _ = std::fs::remove_dir_all(trash);
            });
        }
        Err(source) if source.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            first_err.get_or_insert(Error::Io { step: "removing the state directory", name: dir.display().to_string(), source });
        }
    }
    first_err.map_or(Ok(()), Err)
}

pub(super) fn delete(root: &Path, dir: &Path, st: &State, pidfd: &OwnedFd, parent: bool, wait: Wait) -> Result<()> {
    // Step 1: SIGKILL PID 1 through its pidfd (never a reused pid). ESRCH:
    // it is already gone, which is what we want.
    let _ = sys::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL);
    // Step 2: its exit implies every process of the namespace is dead.
    if !wait_exit(st.pid, pidfd, parent, Duration::from_secs(10)) {
        return Err(Error::Io {
            step: "waiting for the sandbox to exit",
            name: st.name.clone(),
            source: std::io::Error::new(std::io::ErrorKind::TimedOut, format!("pid {} (pidfd {}) did not exit", st.pid, pidfd.as_raw_fd())),
        });
    }
    // Step 3: the lock, so a concurrent garbage collection keeps off.
    let deadline = Instant::now() + Duration::from_secs(5);
    let _lock = loop {
        match state::try_lock(dir) {
            Ok(Some(l)) => break Some(l),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_micros(200)),
            // Someone else is deleting it, or it is gone already.
            _ => break None,
        }
    };
    // Step 4: cgroups, then directories.
    remove_leftovers(root, dir, Some(st), wait)
}
