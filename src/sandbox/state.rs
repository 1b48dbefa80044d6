//! On-disk state of a sandbox: `<root>/<name>/` with `state.json`, `lock`,
//! `agent.sock`, `rootfs/` (a mount point seen only inside the sandbox's
//! mount namespace) and `gen/<n>/` (upper and work dirs of each overlay).
//!
//! The lock file is the liveness test: the sandbox's agent holds an
//! exclusive flock on it for its whole life, so "the lock can be taken"
//! means "nobody owns this sandbox any more", whatever pids were reused.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::SandboxConfig;
use crate::sys;

/// Where a sandbox's lifecycle is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Creating,
    Running,
}

/// `state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub name: String,
    /// Unique per instance: names its cgroups.
    pub id: String,
    pub phase: Phase,
    /// Host pid of the agent (PID 1 of the sandbox); 0 while creating.
    pub pid: i32,
    /// Start time of `pid` in clock ticks since boot (/proc/<pid>/stat field
    /// 22): tells our agent apart from a process that reused its pid.
    pub start_time: u64,
    /// Unix time of creation.
    pub created: u64,
    pub config: SandboxConfig,
    /// The overlay mounts of the root (a reset rebuilds them).
    pub overlays: Vec<crate::fs::rootfs::OverlaySpec>,
    /// Snapshot layers (top first) the current root stands on above the
    /// first overlay's lowers; a reset clears them.
    #[serde(default)]
    pub snapshot_layers: Vec<PathBuf>,
    /// The store image the sandbox was created from, if any.
    #[serde(default)]
    pub image_id: Option<String>,
    /// What the sandbox runs with: its image's environment under the
    /// caller's, and the working directory chosen at create.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    #[serde(default)]
    pub workdir: String,
    /// The image's entrypoint and cmd.
    #[serde(default)]
    pub image_command: Vec<String>,
    /// The user its processes run as, `USER[:GROUP]`, as create chose it:
    /// the caller's, else the image's; `None`: root.
    #[serde(default)]
    pub user: Option<String>,
}

pub const STATE_FILE: &str = "state.json";
pub const LOCK_FILE: &str = "lock";
pub const SOCKET_FILE: &str = "agent.sock";
pub const LOG_FILE: &str = "agent.log";
/// The environment's API socket (/health /methods /call).
pub const ENV_SOCKET_FILE: &str = "env.sock";
/// The environment's output (its worker's or server's stdout and stderr).
pub const ENV_LOG_FILE: &str = "env.log";
/// Prefix of directories being created (not yet published under their name).
pub const CREATING_PREFIX: &str = ".creating-";
/// A directory being given its lock, before it becomes `.creating-…`; the
/// garbage collector leaves it alone while it is young (see `claim_dir`).
pub const CLAIMING_PREFIX: &str = ".claiming-";
pub const TRASH_DIR: &str = ".trash";

impl State {
    pub fn read(dir: &Path) -> io::Result<State> {
        let bytes = fs::read(dir.join(STATE_FILE))?;
        serde_json::from_slice(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// Writes state.json atomically (temp file, then rename).
    pub fn write(&self, dir: &Path) -> io::Result<()> {
        let tmp = dir.join(".state.json.tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(self).map_err(io::Error::other)?)?;
        drop(f);
        fs::rename(tmp, dir.join(STATE_FILE))
    }
}

/// Creates the state root (mode 0700: it holds every sandbox's upper layer
/// and control socket).
pub fn ensure_root(root: &Path) -> io::Result<PathBuf> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(root)?;
    fs::canonicalize(root)
}

/// Opens (creating) a sandbox's lock file.
pub fn open_lock(dir: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).write(true).create(true).mode(0o600).custom_flags(libc::O_CLOEXEC).open(dir.join(LOCK_FILE))
}

/// Tries to take the lock without waiting: `Ok(Some(file))` means nobody
/// holds it (the sandbox is dead or was never finished).
pub fn try_lock(dir: &Path) -> io::Result<Option<File>> {
    let f = open_lock(dir)?;
    match sys::flock(f.as_fd(), libc::LOCK_EX | libc::LOCK_NB) {
        Ok(()) => Ok(Some(f)),
        Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Claims `<root>/<name>`: builds it under a temporary name with its lock
/// held, then publishes it with `renameat2(RENAME_NOREPLACE)`, so two
/// concurrent creates of one name cannot both win and the garbage collector
/// never sees a directory without its lock.
pub fn claim_dir(root: &Path, name: &str) -> io::Result<Option<(PathBuf, File)>> {
    let nonce = crate::agent::shell::new_nonce();
    // The directory gets its lock under a name the collector skips: as
    // `.creating-…` right away, a collector running in another thread
    // between mkdir and flock found the lock free, took the directory for
    // a crashed create and removed it under us (create failed with ENOENT).
    // Named after the claiming process (pid and start time), so the
    // collector can tell a dead claimer's leftover from one in flight.
    let me = std::process::id();
    let started = i32::try_from(me).ok().and_then(process_start_time).unwrap_or(0);
    let staging = root.join(format!("{CLAIMING_PREFIX}{me}-{started}-{nonce}"));
    fs::DirBuilder::new().mode(0o700).create(&staging)?;
    let lock = open_lock(&staging).and_then(|l| sys::flock(l.as_fd(), libc::LOCK_EX).map(|()| l));
    let tmp = root.join(format!("{CREATING_PREFIX}{name}-{nonce}"));
    let lock = match lock.and_then(|l| fs::rename(&staging, &tmp).map(|()| l)) {
        Ok(l) => l,
        Err(e) => {
            let _ = fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    let dir = root.join(name);
    match nix::fcntl::renameat2(None, &tmp, None, &dir, nix::fcntl::RenameFlags::RENAME_NOREPLACE) {
        Ok(()) => Ok(Some((dir, lock))),
        Err(nix::errno::Errno::EEXIST) | Err(nix::errno::Errno::ENOTEMPTY) => {
            let _ = fs::remove_dir_all(&tmp);
            Ok(None)
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            Err(io::Error::from_raw_os_error(e as i32))
        }
    }
}

/// Moves a sandbox directory into the trash (atomic: its name is free at
/// once) and returns the new path.
pub fn move_to_trash(root: &Path, dir: &Path) -> io::Result<PathBuf> {
    let trash = root.join(TRASH_DIR);
    fs::DirBuilder::new().recursive(true).mode(0o700).create(&trash)?;
    let base = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let dst = trash.join(format!("{base}-{}", crate::agent::shell::new_nonce()));
    fs::rename(dir, &dst)?;
    Ok(dst)
}

/// The start time of a process (field 22 of /proc/<pid>/stat), if it exists.
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: skip
    // past the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

/// Unix seconds → RFC 3339 (UTC), without a date library.
pub fn rfc3339(unix: u64) -> String {
    let days = i64::try_from(unix / 86_400).unwrap_or(0);
    let secs = unix % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs % 3600 / 60, secs % 60)
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_597_873), "2026-11-25T09:11:13Z");
    }

    #[test]
    fn start_time_of_self_is_readable_and_missing_pid_is_none() {
        let me = i32::try_from(std::process::id()).unwrap();
        assert!(process_start_time(me).is_some());
        assert!(process_start_time(i32::MAX).is_none());
    }

    #[test]
    fn claiming_a_name_twice_fails_and_locks_exclude() {
        let root = tempfile::tempdir().unwrap();
        let (dir, lock) = claim_dir(root.path(), "a").unwrap().unwrap();
        assert!(claim_dir(root.path(), "a").unwrap().is_none());
        // Held by us: a second open file description cannot take it.
        assert!(try_lock(&dir).unwrap().is_none());
        drop(lock);
        assert!(try_lock(&dir).unwrap().is_some());
        // No temporary directories are left behind.
        let names: Vec<_> = fs::read_dir(root.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a")]);
    }
}
