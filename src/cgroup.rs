//! Per-sandbox cgroups: cpu, memory and pids limits, a kill-all and an
//! "is it empty" signal, on pure cgroup v2, pure v1 and hybrid hosts.
//!
//! The kernel binds each controller to exactly one hierarchy, so each one is
//! taken from cgroup v2 if the cgroup2 root lists it in `cgroup.controllers`,
//! and otherwise from the v1 hierarchy that mounts it. Hybrid hosts (a tmpfs at
//! `/sys/fs/cgroup` holding v1 hierarchies plus a cgroup2 mount at
//! `/sys/fs/cgroup/unified`) need both at once.
//!
//! Whenever a cgroup2 mount exists the sandbox also gets a cgroup in it, even
//! with no controllers there: the core files `cgroup.kill` and `cgroup.events`
//! work in every v2 cgroup and give a race-free kill-all and an exact
//! "populated" flag (SECURITY.md invariant 5).
//!
//! A sandbox lives at `<hierarchy mount>/<parent>/<name>` in every hierarchy it
//! uses. The runtime must never be inside one: `add_process` refuses pid 0
//! (which means "the writer") and `kill_all` refuses to run if it finds the
//! calling process among the members.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

/// Result of every fallible cgroup operation.
pub type Result<T> = std::result::Result<T, CgroupError>;

/// CFS period for the cpu limit: 100 ms, the kernel default, so `cpu_millis`
/// maps to a quota of `cpu_millis * 100` µs.
const CPU_PERIOD_US: u64 = 100_000;
/// The kernel rejects CFS quotas below 1 ms.
const MIN_CPU_QUOTA_US: u64 = 1_000;
/// How long `kill_all` waits for SIGKILLed tasks to leave the cgroup. Exit of
/// a large process (freeing its memory) can take tens of milliseconds.
const KILL_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest sleep between two polls in `kill_all`.
const KILL_POLL_MAX: Duration = Duration::from_millis(50);
/// Sleeps between `rmdir` attempts that fail with EBUSY (31 ms in total): a
/// task that was just killed may still be leaving.
const RMDIR_BACKOFF_MS: [u64; 5] = [1, 2, 4, 8, 16];
/// Longest accepted name component, as for any file name.
const MAX_NAME_LEN: usize = 255;
const MOUNTINFO: &str = "/proc/self/mountinfo";

/// What went wrong, named after the step that failed, with its path and value.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A sandbox or parent name that could escape its hierarchy or is not a
    /// plain name.
    #[error("invalid cgroup name {name:?}: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A limit the kernel would reject or that overflows.
    #[error("invalid {limit} limit {value}: {reason}")]
    InvalidLimit {
        /// Which field of [`Limits`].
        limit: &'static str,
        /// The requested value.
        value: u64,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// Writing pid 0 to `cgroup.procs` would move the caller itself.
    #[error("invalid pid {pid} for cgroup.procs (must be > 0; 0 would move the runtime itself)")]
    InvalidPid {
        /// The rejected pid.
        pid: i32,
    },
    /// A limit was requested but the host has no such controller.
    #[error(
        "a {controller} limit was requested, but this host has no {controller} cgroup controller \
         (not in the cgroup2 root's cgroup.controllers, and no cgroup v1 hierarchy mounts it); \
         found: {layout}"
    )]
    NoController {
        /// The missing controller, e.g. "memory".
        controller: &'static str,
        /// [`Layout::describe`] of what was found.
        layout: String,
    },
    /// A line of `/proc/self/mountinfo` did not have the documented format.
    #[error("parsing mountinfo line {line_no} {line:?}: {reason}")]
    ParseMountinfo {
        /// 1-based line number.
        line_no: usize,
        /// The offending line.
        line: String,
        /// What was missing.
        reason: &'static str,
    },
    /// `mkdir` of a cgroup (or of one of its parents) failed.
    #[error("creating cgroup directory {path}")]
    Mkdir {
        /// The directory.
        path: PathBuf,
        /// The OS error (EEXIST for a leftover sandbox cgroup).
        #[source]
        source: io::Error,
    },
    /// Writing a control file failed.
    #[error("writing {value:?} to {path}")]
    WriteFile {
        /// The control file.
        path: PathBuf,
        /// What was written.
        value: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Reading a control file (or mountinfo) failed.
    #[error("reading {path}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Listing a cgroup directory failed.
    #[error("listing cgroup directory {path}")]
    ReadDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A control file held something other than what the kernel documents.
    #[error("unexpected line {line:?} in {path}")]
    ParseFile {
        /// The file.
        path: PathBuf,
        /// The offending line.
        line: String,
    },
    /// Moving a process into a cgroup failed.
    #[error("adding pid {pid} to {path}")]
    AddProcess {
        /// The `cgroup.procs` file.
        path: PathBuf,
        /// The process.
        pid: i32,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Writing "1" to `cgroup.kill` failed.
    #[error("killing the cgroup through {path}")]
    Kill {
        /// The `cgroup.kill` file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `kill(pid, SIGKILL)` of a member failed (other than ESRCH).
    #[error("kill({pid}, SIGKILL) of a member listed in {path}")]
    Signal {
        /// The process.
        pid: i32,
        /// The `cgroup.procs` file it was listed in.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `kill_all` found the calling process inside the cgroup; killing it
    /// would take down the runtime (SECURITY.md invariant 5).
    #[error("refusing to kill cgroup {path}: it contains this process (pid {pid})")]
    SelfInside {
        /// The `cgroup.procs` file that lists it.
        path: PathBuf,
        /// This process's pid.
        pid: i32,
    },
    /// Members survived SIGKILL for longer than the bound.
    #[error("cgroup {path} still has processes {pids:?} {waited:?} after SIGKILL")]
    NotEmpty {
        /// The first directory of the cgroup.
        path: PathBuf,
        /// The survivors last seen (empty if only `cgroup.events` said so).
        pids: Vec<i32>,
        /// How long we waited.
        waited: Duration,
    },
    /// `rmdir` of a cgroup directory failed (EBUSY after the retries).
    #[error("removing cgroup directory {path}")]
    Remove {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `create` failed, and removing what it had created failed too.
    #[error("creating the cgroup failed, and removing the part already created failed too: {cleanup}")]
    CreateCleanup {
        /// The error that made `create` give up.
        #[source]
        primary: Box<CgroupError>,
        /// The error from the cleanup.
        cleanup: Box<CgroupError>,
    },
}

/// Resource limits of one sandbox; `None` leaves the resource unlimited and
/// does not require the controller.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    /// Memory (RAM; swap is disabled for the sandbox) in bytes.
    pub memory_bytes: Option<u64>,
    /// CPU bandwidth in thousandths of a CPU: 500 = half a CPU, 2000 = two.
    /// At least 10 (the kernel's 1 ms minimum quota per 100 ms period).
    pub cpu_millis: Option<u64>,
    /// Maximum number of tasks (processes and threads).
    pub pids_max: Option<u64>,
}

/// The controllers envbox limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Controller {
    /// `memory`
    Memory,
    /// `cpu` (CFS bandwidth)
    Cpu,
    /// `pids`
    Pids,
}

impl Controller {
    /// Every controller, in the order limits are applied.
    pub const ALL: [Controller; 3] = [Controller::Memory, Controller::Cpu, Controller::Pids];

    /// The kernel's name, as in `cgroup.controllers` and v1 mount options.
    pub fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Cpu => "cpu",
            Controller::Pids => "pids",
        }
    }
}

/// A directory on a cgroup v1 or v2 hierarchy: a mount point in [`Layout`],
/// a sandbox's directory in [`Cgroup`]. The version decides the file names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// A cgroup v1 hierarchy.
    V1(PathBuf),
    /// The cgroup v2 (unified) hierarchy.
    V2(PathBuf),
}

impl Hierarchy {
    /// The directory.
    pub fn path(&self) -> &Path {
        match self {
            Hierarchy::V1(p) | Hierarchy::V2(p) => p,
        }
    }

    /// Whether this is cgroup v2.
    pub fn is_v2(&self) -> bool {
        matches!(self, Hierarchy::V2(_))
    }

    fn with_path(&self, path: PathBuf) -> Hierarchy {
        match self {
            Hierarchy::V1(_) => Hierarchy::V1(path),
            Hierarchy::V2(_) => Hierarchy::V2(path),
        }
    }
}

/// Where each controller lives on this host, found once and passed to every
/// [`Cgroup`] operation.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    memory: Option<Hierarchy>,
    cpu: Option<Hierarchy>,
    pids: Option<Hierarchy>,
    unified: Option<PathBuf>,
    /// A plain directory tree standing in for cgroupfs (tests): no kernel
    /// decides which optional files exist, and control files are real files
    /// that must be unlinked before `rmdir`.
    emulated: bool,
}

impl Layout {
    /// The host's layout, from `/proc/self/mountinfo` and the cgroup2 root's
    /// `cgroup.controllers`.
    pub fn detect() -> Result<Layout> {
        let mountinfo = fs::read_to_string(MOUNTINFO).map_err(|source| CgroupError::ReadFile { path: PathBuf::from(MOUNTINFO), source })?;
        Layout::from_mountinfo(&mountinfo, |mount| fs::read_to_string(mount.join("cgroup.controllers")).ok())
    }

    /// Parses mountinfo text. `read_controllers` gets the cgroup2 mount point
    /// and returns its `cgroup.controllers` (None if unreadable, meaning no
    /// controllers). The first mount of each hierarchy wins.
    pub fn from_mountinfo(mountinfo: &str, read_controllers: impl Fn(&Path) -> Option<String>) -> Result<Layout> {
        let mut unified: Option<PathBuf> = None;
        let mut v1: BTreeMap<Controller, PathBuf> = BTreeMap::new();
        for (idx, line) in mountinfo.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let bad = |reason: &'static str| CgroupError::ParseMountinfo { line_no: idx + 1, line: line.to_owned(), reason };
            // proc(5): "id parent major:minor root mountpoint options [optional...] - fstype source superoptions"
            let (before, after) = line.split_once(" - ").ok_or_else(|| bad("no \" - \" separator"))?;
            let mount_point = before.split(' ').nth(4).ok_or_else(|| bad("fewer than 6 fields before the separator"))?;
            let mut tail = after.split(' ');
            let fstype = tail.next().ok_or_else(|| bad("no filesystem type"))?;
            let super_options = tail.nth(1).ok_or_else(|| bad("no super options after the separator"))?;
            match fstype {
                "cgroup2" => {
                    unified.get_or_insert_with(|| unescape_mount_path(mount_point));
                }
                "cgroup" => {
                    for option in super_options.split(',') {
                        if let Some(c) = Controller::ALL.into_iter().find(|c| c.name() == option) {
                            v1.entry(c).or_insert_with(|| unescape_mount_path(mount_point));
                        }
                    }
                }
                _ => {}
            }
        }
        let v2_controllers: BTreeSet<String> = unified
            .as_deref()
            .and_then(read_controllers)
            .map(|text| text.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
        let pick = |c: Controller| match &unified {
            Some(u) if v2_controllers.contains(c.name()) => Some(Hierarchy::V2(u.clone())),
            _ => v1.get(&c).cloned().map(Hierarchy::V1),
        };
        Ok(Layout { memory: pick(Controller::Memory), cpu: pick(Controller::Cpu), pids: pick(Controller::Pids), unified, emulated: false })
    }

    /// A layout on a plain directory tree, for tests: controllers in `v2` live
    /// in `root/unified`, the others in v1 hierarchies `root/<controller>`.
    /// The cgroup2 mount `root/unified` exists if `unified` is true or `v2` is
    /// not empty. Optional control files (`memory.swap.max`,
    /// `memory.memsw.limit_in_bytes`) count as present.
    pub fn with_root(root: &Path, v2: &[Controller], unified: bool) -> Layout {
        let unified_dir = root.join("unified");
        let pick =
            |c: Controller| Some(if v2.contains(&c) { Hierarchy::V2(unified_dir.clone()) } else { Hierarchy::V1(root.join(c.name())) });
        Layout {
            memory: pick(Controller::Memory),
            cpu: pick(Controller::Cpu),
            pids: pick(Controller::Pids),
            unified: (unified || !v2.is_empty()).then(|| unified_dir.clone()),
            emulated: true,
        }
    }

    /// The hierarchy holding `controller`, if the host has it.
    pub fn hierarchy(&self, controller: Controller) -> Option<&Hierarchy> {
        match controller {
            Controller::Memory => self.memory.as_ref(),
            Controller::Cpu => self.cpu.as_ref(),
            Controller::Pids => self.pids.as_ref(),
        }
    }

    /// The cgroup2 mount point, if any (with or without controllers).
    pub fn unified(&self) -> Option<&Path> {
        self.unified.as_deref()
    }

    /// One line for error messages and diagnostics, e.g. "memory: v1
    /// /sys/fs/cgroup/memory, cpu: v2 /sys/fs/cgroup, pids: none, unified:
    /// /sys/fs/cgroup".
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for c in Controller::ALL {
            let _ = match self.hierarchy(c) {
                Some(Hierarchy::V1(p)) => write!(out, "{}: v1 {}, ", c.name(), p.display()),
                Some(Hierarchy::V2(p)) => write!(out, "{}: v2 {}, ", c.name(), p.display()),
                None => write!(out, "{}: none, ", c.name()),
            };
        }
        match &self.unified {
            Some(p) => {
                let _ = write!(out, "unified: {}", p.display());
            }
            None => out.push_str("unified: none"),
        }
        out
    }

    fn require(&self, controller: Controller) -> Result<&Hierarchy> {
        self.hierarchy(controller).ok_or_else(|| CgroupError::NoController { controller: controller.name(), layout: self.describe() })
    }

    /// Every distinct mount point in use.
    fn mounts(&self) -> Vec<&Path> {
        let mut out: Vec<&Path> = Vec::new();
        let all =
            self.unified.as_deref().into_iter().chain(Controller::ALL.into_iter().filter_map(|c| self.hierarchy(c).map(Hierarchy::path)));
        for p in all {
            if !out.contains(&p) {
                out.push(p);
            }
        }
        out
    }
}

/// Best-effort usage figures; `None` where the host does not provide one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Current memory use (v2 `memory.current`, v1 `memory.usage_in_bytes`).
    pub memory_current_bytes: Option<u64>,
    /// Highest memory use seen (v2 `memory.peak`, v1 `memory.max_usage_in_bytes`).
    pub memory_peak_bytes: Option<u64>,
    /// Tasks now in the cgroup (`pids.current`).
    pub pids_current: Option<u64>,
    /// CPU time used (v2 `cpu.stat` `usage_usec`, which the unified cgroup has
    /// even without the cpu controller; else v1 `cpuacct.usage` / 1000).
    pub cpu_usage_usec: Option<u64>,
    /// CFS periods in which the sandbox was throttled (`cpu.stat` `nr_throttled`).
    pub cpu_nr_throttled: Option<u64>,
    /// OOM kills inside the sandbox (see [`Cgroup::oom_kills`]).
    pub oom_kills: Option<u64>,
}

/// One sandbox's cgroup: its directory in each hierarchy it uses.
#[derive(Debug, Clone, PartialEq)]
pub struct Cgroup {
    unified: Option<PathBuf>,
    memory: Option<Hierarchy>,
    cpu: Option<Hierarchy>,
    pids: Option<Hierarchy>,
    emulated: bool,
}

impl Cgroup {
    /// Creates `<hierarchy mount>/<parent>/<name>` in the unified hierarchy
    /// (if any) and in the hierarchy of each controller a limit asks for, and
    /// writes the limits. Either the whole cgroup exists afterwards or none of
    /// what this call created does. A leftover cgroup of the same name is an
    /// error (EEXIST), never reused: it may still hold processes.
    pub fn create(layout: &Layout, parent: &str, name: &str, limits: &Limits) -> Result<Cgroup> {
        validate_parent(parent)?;
        validate_name(name)?;
        // Resolve every hierarchy and value before touching the filesystem,
        // so that a missing controller or a bad limit leaves nothing behind.
        let memory = limits.memory_bytes.map(|bytes| layout.require(Controller::Memory).map(|h| (h, bytes))).transpose()?;
        let cpu = limits
            .cpu_millis
            .map(|millis| {
                let quota = cpu_quota_us(millis)?;
                layout.require(Controller::Cpu).map(|h| (h, quota))
            })
            .transpose()?;
        let pids = limits.pids_max.map(|max| layout.require(Controller::Pids).map(|h| (h, max))).transpose()?;

        // v2 controllers must be enabled in cgroup.subtree_control of every
        // ancestor before the leaf gets their files (cgroup-v2.rst "Enabling
        // and Disabling"). These ancestors are shared, so this is not undone.
        let v2_needed: Vec<Controller> = [
            (Controller::Memory, memory.map(|(h, _)| h)),
            (Controller::Cpu, cpu.map(|(h, _)| h)),
            (Controller::Pids, pids.map(|(h, _)| h)),
        ]
        .into_iter()
        .filter_map(|(c, h)| h.filter(|h| h.is_v2()).map(|_| c))
        .collect();
        if let Some(unified) = &layout.unified {
            if !v2_needed.is_empty() {
                enable_controllers(unified, parent, &v2_needed)?;
            }
        }

        let mut created: Vec<PathBuf> = Vec::new();
        let built = build(layout, parent, name, memory, cpu, pids, &mut created);
        match built {
            Ok(cgroup) => Ok(cgroup),
            Err(primary) => {
                // Never leave half a cgroup: remove what this call created,
                // newest first, and report both errors if that fails too.
                let mut cleanup_err = None;
                for dir in created.iter().rev() {
                    if let Err(e) = remove_tree(dir, layout.emulated) {
                        cleanup_err.get_or_insert(e);
                    }
                }
                Err(match cleanup_err {
                    None => primary,
                    Some(cleanup) => CgroupError::CreateCleanup { primary: Box::new(primary), cleanup: Box::new(cleanup) },
                })
            }
        }
    }

    /// The cgroup `create` made under the same names, e.g. for delete or
    /// garbage collection from another process. Only reads: a hierarchy is
    /// included when its directory exists. Fails only on an invalid name.
    pub fn open(layout: &Layout, parent: &str, name: &str) -> Result<Cgroup> {
        validate_parent(parent)?;
        validate_name(name)?;
        let existing = |mount: &Path| Some(leaf_path(mount, parent, name)).filter(|d| d.is_dir());
        let controller = |c: Controller| layout.hierarchy(c).and_then(|h| existing(h.path()).map(|d| h.with_path(d)));
        Ok(Cgroup {
            unified: layout.unified.as_deref().and_then(existing),
            memory: controller(Controller::Memory),
            cpu: controller(Controller::Cpu),
            pids: controller(Controller::Pids),
            emulated: layout.emulated,
        })
    }

    /// Moves `pid` (the whole thread group) into the cgroup in every
    /// hierarchy, the unified one first so that `kill_all` can reach it as
    /// early as possible.
    pub fn add_process(&self, pid: i32) -> Result<()> {
        if pid <= 0 {
            return Err(CgroupError::InvalidPid { pid });
        }
        let value = pid.to_string();
        for dir in self.dirs() {
            let path = dir.join("cgroup.procs");
            write_raw(&path, &value, true).map_err(|source| CgroupError::AddProcess { path, pid, source })?;
        }
        Ok(())
    }

    /// The directories of this cgroup, unified first, without duplicates.
    pub fn dirs(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = Vec::new();
        let all = self.unified.iter().chain([&self.memory, &self.cpu, &self.pids].into_iter().flatten().map(|h| match h {
            Hierarchy::V1(p) | Hierarchy::V2(p) => p,
        }));
        for p in all {
            if !out.contains(p) {
                out.push(p.clone());
            }
        }
        out
    }

    /// The file whose "oom_kill N" line counts OOM kills in this cgroup: v2
    /// `memory.events`, v1 `memory.oom_control` (kernel 4.13+). None without a
    /// memory cgroup.
    pub fn oom_events_path(&self) -> Option<PathBuf> {
        self.memory.as_ref().map(|h| match h {
            Hierarchy::V2(d) => d.join("memory.events"),
            Hierarchy::V1(d) => d.join("memory.oom_control"),
        })
    }

    /// OOM kills so far, to tell "killed by the OOM killer" from other
    /// SIGKILLs. None without a memory cgroup or if the kernel does not count.
    pub fn oom_kills(&self) -> Result<Option<u64>> {
        let Some(path) = self.oom_events_path() else {
            return Ok(None);
        };
        Ok(read_optional(&path)?.and_then(|text| Cgroup::parse_oom_kill(&text)))
    }

    /// The value of the "oom_kill N" line (not "oom_kill_disable").
    pub fn parse_oom_kill(text: &str) -> Option<u64> {
        keyed_value(text, "oom_kill")
    }

    /// Members of the cgroup and of any child cgroups, over every hierarchy,
    /// sorted and deduplicated. A removed cgroup has none.
    pub fn procs(&self) -> Result<Vec<i32>> {
        Ok(collect_procs(&self.dirs())?.into_keys().collect())
    }

    /// Whether any task is still inside: the unified `cgroup.events`
    /// "populated" flag (which covers descendants and is exact), plus the
    /// members of v1-only directories.
    pub fn is_populated(&self) -> Result<bool> {
        let mut v1_dirs = self.dirs();
        if let Some(unified) = &self.unified {
            v1_dirs.retain(|d| d != unified);
            let events = unified.join("cgroup.events");
            match read_optional(&events)? {
                Some(text) => {
                    if keyed_value(&text, "populated").is_some_and(|v| v != 0) {
                        return Ok(true);
                    }
                }
                // No cgroup.events (kernel < 4.19 or an emulated tree).
                None => v1_dirs.push(unified.clone()),
            }
        }
        Ok(!collect_procs(&v1_dirs)?.is_empty())
    }

    /// SIGKILLs everything inside and waits (at most ~2 s) until it is empty.
    ///
    /// With a unified cgroup that has `cgroup.kill` (kernel 5.14+), the kernel
    /// kills the whole subtree, including tasks forking concurrently. Members
    /// of v1-only directories (or all members, without `cgroup.kill`) get
    /// `kill(pid, SIGKILL)`, round after round, until none is left. Those pids
    /// are ours: they were read from our own cgroup's `cgroup.procs`.
    pub fn kill_all(&self) -> Result<()> {
        // The caller inside its own sandbox cgroup would kill itself.
        let me = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
        if let Some(path) = collect_procs(&self.dirs())?.remove(&me) {
            return Err(CgroupError::SelfInside { path, pid: me });
        }
        let start = Instant::now();
        let mut delay = Duration::from_millis(1);
        let kill_file = self.unified.as_ref().map(|u| u.join("cgroup.kill")).filter(|p| p.is_file());
        loop {
            // 1. Ask the kernel to kill the unified subtree (idempotent).
            let mut kernel_covered = BTreeMap::new();
            if let (Some(path), Some(unified)) = (&kill_file, &self.unified) {
                write_raw(path, "1", false).map_err(|source| CgroupError::Kill { path: path.clone(), source })?;
                kernel_covered = collect_procs(std::slice::from_ref(unified))?;
            }
            // 2. Signal every member the kernel did not cover.
            let members = collect_procs(&self.dirs())?;
            for (&pid, path) in &members {
                if kernel_covered.contains_key(&pid) {
                    continue;
                }
                match signal::kill(Pid::from_raw(pid), Signal::SIGKILL) {
                    Ok(()) | Err(Errno::ESRCH) => {}
                    Err(errno) => return Err(CgroupError::Signal { pid, path: path.clone(), source: io::Error::from(errno) }),
                }
            }
            // 3. Done once the tasks have left (exit, not reaping, removes them).
            if !self.is_populated()? {
                return Ok(());
            }
            let waited = start.elapsed();
            if waited >= KILL_TIMEOUT {
                return Err(CgroupError::NotEmpty {
                    path: self.dirs().into_iter().next().unwrap_or_default(),
                    pids: members.into_keys().collect(),
                    waited,
                });
            }
            thread::sleep(delay);
            delay = (delay * 2).min(KILL_POLL_MAX);
        }
    }

    /// Removes every directory of the cgroup, child cgroups first. A missing
    /// directory counts as removed, so this is idempotent; EBUSY (a killed
    /// task still leaving) is retried for ~30 ms, then returned naming the
    /// directory. Keeps going after an error and returns the first one.
    pub fn remove(&self) -> Result<()> {
        let mut first_err = None;
        for dir in self.dirs() {
            if let Err(e) = remove_tree(&dir, self.emulated) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Usage figures for diagnostics; never fails, missing figures are None.
    pub fn stats(&self) -> Stats {
        let num = |dir: &Path, file: &str| fs::read_to_string(dir.join(file)).ok().and_then(|t| t.trim().parse::<u64>().ok());
        let keyed = |dir: &Path, file: &str, key: &str| fs::read_to_string(dir.join(file)).ok().and_then(|t| keyed_value(&t, key));
        let (memory_current_bytes, memory_peak_bytes) = match &self.memory {
            Some(Hierarchy::V2(d)) => (num(d, "memory.current"), num(d, "memory.peak")),
            Some(Hierarchy::V1(d)) => (num(d, "memory.usage_in_bytes"), num(d, "memory.max_usage_in_bytes")),
            None => (None, None),
        };
        let cpu_usage_usec = self.unified.as_deref().and_then(|u| keyed(u, "cpu.stat", "usage_usec")).or_else(|| match &self.cpu {
            Some(Hierarchy::V1(d)) => num(d, "cpuacct.usage").map(|ns| ns / 1000),
            _ => None,
        });
        Stats {
            memory_current_bytes,
            memory_peak_bytes,
            pids_current: self.pids.as_ref().and_then(|h| num(h.path(), "pids.current")),
            cpu_usage_usec,
            cpu_nr_throttled: self.cpu.as_ref().and_then(|h| keyed(h.path(), "cpu.stat", "nr_throttled")),
            oom_kills: self.oom_kills().ok().flatten(),
        }
    }

    /// Names of child cgroups of `<parent>` in any hierarchy that start with
    /// `prefix`, sorted: the garbage collector's view of possible orphans.
    /// Unreadable hierarchies and invalid names are skipped.
    pub fn list(layout: &Layout, parent: &str, prefix: &str) -> Vec<String> {
        if validate_parent(parent).is_err() {
            return Vec::new();
        }
        let mut names = BTreeSet::new();
        for mount in layout.mounts() {
            let Ok(entries) = fs::read_dir(parent_path(mount, parent)) else {
                continue;
            };
            for entry in entries.flatten() {
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                if let Ok(name) = entry.file_name().into_string() {
                    if name.starts_with(prefix) && validate_name(&name).is_ok() {
                        names.insert(name);
                    }
                }
            }
        }
        names.into_iter().collect()
    }
}

/// Makes the leaf directories and writes the limits, recording each
/// directory it creates in `created` so that the caller can undo them.
fn build(
    layout: &Layout,
    parent: &str,
    name: &str,
    memory: Option<(&Hierarchy, u64)>,
    cpu: Option<(&Hierarchy, u64)>,
    pids: Option<(&Hierarchy, u64)>,
    created: &mut Vec<PathBuf>,
) -> Result<Cgroup> {
    let emulated = layout.emulated;
    // 1. The unified cgroup, for cgroup.kill and cgroup.events, even when no
    //    controller is on v2.
    let unified = match &layout.unified {
        Some(mount) => Some(make_leaf(mount, parent, name, created)?),
        None => None,
    };

    // 2. Memory. Swap is disabled so a memory bomb is OOM-killed instead of
    //    thrashing the host: v2 memory.swap.max=0, v1 memsw = the RAM limit
    //    (written after memory.limit_in_bytes, which must stay <= memsw).
    let memory = match memory {
        Some((h, bytes)) => {
            let dir = make_leaf(h.path(), parent, name, created)?;
            let value = bytes.to_string();
            match h {
                Hierarchy::V2(_) => {
                    write_file(&dir.join("memory.max"), &value)?;
                    write_optional(&dir.join("memory.swap.max"), "0", emulated)?;
                }
                Hierarchy::V1(_) => {
                    write_file(&dir.join("memory.limit_in_bytes"), &value)?;
                    write_optional(&dir.join("memory.memsw.limit_in_bytes"), &value, emulated)?;
                }
            }
            Some(h.with_path(dir))
        }
        None => None,
    };

    // 3. CPU bandwidth: quota per 100 ms period. On v1 the period is written
    //    first because the kernel checks quota against it.
    let cpu = match cpu {
        Some((h, quota)) => {
            let dir = make_leaf(h.path(), parent, name, created)?;
            match h {
                Hierarchy::V2(_) => {
                    write_file(&dir.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
                }
                Hierarchy::V1(_) => {
                    write_file(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                    write_file(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
                }
            }
            Some(h.with_path(dir))
        }
        None => None,
    };

    // 4. Tasks: same file on v1 and v2.
    let pids = match pids {
        Some((h, max)) => {
            let dir = make_leaf(h.path(), parent, name, created)?;
            write_file(&dir.join("pids.max"), &max.to_string())?;
            Some(h.with_path(dir))
        }
        None => None,
    };

    Ok(Cgroup { unified, memory, cpu, pids, emulated })
}

/// `cpu_millis` as a CFS quota in µs per `CPU_PERIOD_US`.
fn cpu_quota_us(millis: u64) -> Result<u64> {
    let bad = |reason| CgroupError::InvalidLimit { limit: "cpu_millis", value: millis, reason };
    let quota = millis.checked_mul(CPU_PERIOD_US / 1000).ok_or_else(|| bad("too large"))?;
    if quota < MIN_CPU_QUOTA_US {
        return Err(bad("below 10 (the kernel's minimum quota is 1 ms per 100 ms period)"));
    }
    Ok(quota)
}

/// Enables `needed` in `cgroup.subtree_control` of the cgroup2 root and of
/// every level down to `parent`, creating the levels, writing only the
/// controllers not yet enabled.
fn enable_controllers(unified: &Path, parent: &str, needed: &[Controller]) -> Result<()> {
    let mut dir = unified.to_path_buf();
    let mut levels = parent_components(parent).peekable();
    loop {
        let path = dir.join("cgroup.subtree_control");
        let enabled = read_optional(&path)?.unwrap_or_default();
        let missing: Vec<String> =
            needed.iter().filter(|c| !enabled.split_whitespace().any(|e| e == c.name())).map(|c| format!("+{}", c.name())).collect();
        if !missing.is_empty() {
            write_file(&path, &missing.join(" "))?;
        }
        match levels.next() {
            Some(component) => {
                dir.push(component);
                mkdir(&dir, true)?;
            }
            None => return Ok(()),
        }
    }
}

/// Creates `<mount>/<parent>` (shared, may exist) and then the leaf
/// `<mount>/<parent>/<name>` (must not exist), unless this create call made
/// it already (v2 controllers share the unified directory).
fn make_leaf(mount: &Path, parent: &str, name: &str, created: &mut Vec<PathBuf>) -> Result<PathBuf> {
    let leaf = leaf_path(mount, parent, name);
    if created.contains(&leaf) {
        return Ok(leaf);
    }
    let mut dir = mount.to_path_buf();
    for component in parent_components(parent) {
        dir.push(component);
        mkdir(&dir, true)?;
    }
    mkdir(&leaf, false)?;
    created.push(leaf.clone());
    Ok(leaf)
}

fn mkdir(path: &Path, exist_ok: bool) -> Result<()> {
    match fs::create_dir(path) {
        Err(e) if exist_ok && e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        result => result.map_err(|source| CgroupError::Mkdir { path: path.to_path_buf(), source }),
    }
}

fn parent_components(parent: &str) -> impl Iterator<Item = &str> {
    parent.split('/').filter(|c| !c.is_empty())
}

fn parent_path(mount: &Path, parent: &str) -> PathBuf {
    let mut dir = mount.to_path_buf();
    dir.extend(parent_components(parent));
    dir
}

fn leaf_path(mount: &Path, parent: &str, name: &str) -> PathBuf {
    parent_path(mount, parent).join(name)
}

/// A single directory name that cannot climb out of its hierarchy or clash
/// with control files' dotted names at the start: `[A-Za-z0-9._-]`, not
/// starting with '.', at most 255 bytes.
fn validate_name(name: &str) -> Result<()> {
    let bad = |reason| Err(CgroupError::InvalidName { name: name.to_owned(), reason });
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("longer than 255 bytes");
    }
    if name.starts_with('.') {
        return bad("starts with '.'");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
        return bad("only ASCII letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

/// A relative path of valid names separated by single '/'; empty means the
/// hierarchy root.
fn validate_parent(parent: &str) -> Result<()> {
    if parent.is_empty() {
        return Ok(());
    }
    for component in parent.split('/') {
        if component.is_empty() {
            return Err(CgroupError::InvalidName { name: parent.to_owned(), reason: "parent must be relative, without empty components" });
        }
        validate_name(component)?;
    }
    Ok(())
}

/// Writes `value` in one `write(2)`, as cgroupfs requires. `create` is for
/// emulated trees: on cgroupfs the file always exists.
fn write_raw(path: &Path, value: &str, create: bool) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).create(create).truncate(true).open(path)?;
    file.write_all(value.as_bytes())
}

fn write_file(path: &Path, value: &str) -> Result<()> {
    write_raw(path, value, true).map_err(|source| CgroupError::WriteFile { path: path.to_path_buf(), value: value.to_owned(), source })
}

/// Writes a file the kernel may not provide (e.g. no swap accounting):
/// absent means there is nothing to limit.
fn write_optional(path: &Path, value: &str, emulated: bool) -> Result<()> {
    match write_raw(path, value, emulated) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        result => result.map_err(|source| CgroupError::WriteFile { path: path.to_path_buf(), value: value.to_owned(), source }),
    }
}

/// Reads a file, `None` if it (or its cgroup) does not exist.
fn read_optional(path: &Path) -> Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CgroupError::ReadFile { path: path.to_path_buf(), source }),
    }
}

/// The number after `key` in "key N" lines (cgroup.events, memory.events,
/// memory.oom_control, cpu.stat).
fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next() == Some(key)).then(|| words.next()?.parse().ok()).flatten()
    })
}

/// `dir` and all its descendant directories, parents before children. A
/// missing `dir` gives nothing.
fn subtree(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match fs::read_dir(&d) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(CgroupError::ReadDir { path: d, source }),
        };
        for entry in entries {
            let entry = entry.map_err(|source| CgroupError::ReadDir { path: d.clone(), source })?;
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
        // A directory is recorded when popped, before its children are.
        out.push(d);
    }
    Ok(out)
}

/// Members of `dirs` and their descendants, each with the `cgroup.procs`
/// file it was first seen in.
fn collect_procs(dirs: &[PathBuf]) -> Result<BTreeMap<i32, PathBuf>> {
    let mut out = BTreeMap::new();
    for dir in dirs {
        for d in subtree(dir)? {
            let path = d.join("cgroup.procs");
            let Some(text) = read_optional(&path)? else {
                continue;
            };
            for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
                let pid: i32 = line.parse().map_err(|_| CgroupError::ParseFile { path: path.clone(), line: line.to_owned() })?;
                out.entry(pid).or_insert_with(|| path.clone());
            }
        }
    }
    Ok(out)
}

/// Removes `dir` and its child cgroups, deepest first.
fn remove_tree(dir: &Path, emulated: bool) -> Result<()> {
    for d in subtree(dir)?.iter().rev() {
        if emulated {
            remove_plain_files(d)?;
        }
        rmdir_retrying(d)?;
    }
    Ok(())
}

/// Emulated trees only: cgroupfs control files vanish with `rmdir`, plain
/// files must be unlinked first.
fn remove_plain_files(dir: &Path) -> Result<()> {
    let remove_err = |path: PathBuf, source| CgroupError::Remove { path, source };
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(CgroupError::ReadDir { path: dir.to_path_buf(), source }),
    };
    for entry in entries {
        let entry = entry.map_err(|source| remove_err(dir.to_path_buf(), source))?;
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            fs::remove_file(entry.path()).map_err(|source| remove_err(entry.path(), source))?;
        }
    }
    Ok(())
}

/// `rmdir`, treating ENOENT as done and retrying EBUSY briefly.
fn rmdir_retrying(dir: &Path) -> Result<()> {
    let mut backoff = RMDIR_BACKOFF_MS.iter();
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => match backoff.next() {
                Some(&ms) => thread::sleep(Duration::from_millis(ms)),
                None => return Err(CgroupError::Remove { path: dir.to_path_buf(), source: e }),
            },
            Err(source) => return Err(CgroupError::Remove { path: dir.to_path_buf(), source }),
        }
    }
}

/// Undoes mountinfo's octal escapes (`\040` for space, `\011`, `\012`, `\134`).
fn unescape_mount_path(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            let code = bytes.get(i + 1..i + 4).and_then(|digits| {
                digits.iter().try_fold(0u16, |acc, &d| (b'0'..=b'7').contains(&d).then(|| acc * 8 + u16::from(d - b'0')))
            });
            if let Some(byte) = code.and_then(|c| u8::try_from(c).ok()) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    PathBuf::from(OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Child, Command, ExitStatus, Stdio};
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Mutex;

    use super::*;

    // ---- fake-hierarchy unit tests (no root needed) ----

    /// The cgroup lines of this machine's /proc/self/mountinfo (hybrid: v1
    /// hierarchies on a tmpfs plus an empty-ish cgroup2 at .../unified).
    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    const PURE_V2: &str = "\
22 1 259:1 / / rw,relatime shared:1 - ext4 /dev/root rw
30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    const PURE_V1: &str = "\
25 18 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
27 25 0:24 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
30 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,cpu,cpuacct
31 25 0:28 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,memory
33 25 0:30 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:17 - cgroup cgroup rw,pids
34 25 0:31 / /sys/fs/cgroup/cpuset rw,nosuid,nodev,noexec,relatime shared:18 - cgroup cgroup rw,cpuset
";

    const NO_CGROUPS: &str = "\
22 1 259:1 / / rw,relatime shared:1 - ext4 /dev/root rw
23 22 0:5 / /proc rw,nosuid,nodev,noexec,relatime shared:2 - proc proc rw
";

    fn v1(p: &str) -> Option<Hierarchy> {
        Some(Hierarchy::V1(PathBuf::from(p)))
    }

    fn v2(p: &str) -> Option<Hierarchy> {
        Some(Hierarchy::V2(PathBuf::from(p)))
    }

    /// `Layout::with_root` with its mount points created, as if mounted.
    fn fake_layout(root: &Path, v2: &[Controller], unified: bool) -> Layout {
        let layout = Layout::with_root(root, v2, unified);
        for mount in layout.mounts() {
            fs::create_dir_all(mount).unwrap();
        }
        layout
    }

    fn all_limits() -> Limits {
        Limits { memory_bytes: Some(64 << 20), cpu_millis: Some(500), pids_max: Some(20) }
    }

    fn read(path: &Path) -> String {
        fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
    }

    /// File names directly in `dir`, sorted.
    fn files_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_type().unwrap().is_file())
            .map(|e| e.file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn mountinfo_hybrid_machine_takes_controllers_from_v1() {
        for controllers in ["", "hugetlb\n"] {
            let layout = Layout::from_mountinfo(HYBRID, |p| {
                assert_eq!(p, Path::new("/sys/fs/cgroup/unified"));
                Some(controllers.to_owned())
            })
            .unwrap();
            assert_eq!(layout.hierarchy(Controller::Memory), v1("/sys/fs/cgroup/memory").as_ref());
            assert_eq!(layout.hierarchy(Controller::Cpu), v1("/sys/fs/cgroup/cpu").as_ref());
            assert_eq!(layout.hierarchy(Controller::Pids), v1("/sys/fs/cgroup/pids").as_ref());
            assert_eq!(layout.unified(), Some(Path::new("/sys/fs/cgroup/unified")));
            assert_eq!(
                layout.describe(),
                "memory: v1 /sys/fs/cgroup/memory, cpu: v1 /sys/fs/cgroup/cpu, \
                 pids: v1 /sys/fs/cgroup/pids, unified: /sys/fs/cgroup/unified"
            );
        }
    }

    #[test]
    fn mountinfo_pure_v2() {
        let layout = Layout::from_mountinfo(PURE_V2, |_| Some("cpuset cpu io memory hugetlb pids rdma misc\n".to_owned())).unwrap();
        for c in Controller::ALL {
            assert_eq!(layout.hierarchy(c), v2("/sys/fs/cgroup").as_ref(), "{c:?}");
        }
        assert_eq!(layout.unified(), Some(Path::new("/sys/fs/cgroup")));
        assert_eq!(
            layout.describe(),
            "memory: v2 /sys/fs/cgroup, cpu: v2 /sys/fs/cgroup, pids: v2 /sys/fs/cgroup, unified: /sys/fs/cgroup"
        );
    }

    #[test]
    fn mountinfo_v2_missing_controller_is_none() {
        let layout = Layout::from_mountinfo(PURE_V2, |_| Some("memory pids".to_owned())).unwrap();
        assert_eq!(layout.hierarchy(Controller::Cpu), None);
        // An unreadable cgroup.controllers means no v2 controllers.
        let layout = Layout::from_mountinfo(PURE_V2, |_| None).unwrap();
        assert_eq!(layout.hierarchy(Controller::Memory), None);
        assert_eq!(layout.unified(), Some(Path::new("/sys/fs/cgroup")));
    }

    #[test]
    fn mountinfo_pure_v1_with_comounted_cpu() {
        let layout = Layout::from_mountinfo(PURE_V1, |_| panic!("no cgroup2 mount to read")).unwrap();
        assert_eq!(layout.hierarchy(Controller::Memory), v1("/sys/fs/cgroup/memory").as_ref());
        assert_eq!(layout.hierarchy(Controller::Cpu), v1("/sys/fs/cgroup/cpu,cpuacct").as_ref());
        assert_eq!(layout.hierarchy(Controller::Pids), v1("/sys/fs/cgroup/pids").as_ref());
        assert_eq!(layout.unified(), None);
    }

    #[test]
    fn mountinfo_without_cgroups_gives_no_controller_errors() {
        let layout = Layout::from_mountinfo(NO_CGROUPS, |_| None).unwrap();
        assert_eq!(layout.describe(), "memory: none, cpu: none, pids: none, unified: none");
        let dir = tempfile::tempdir().unwrap();
        for (limits, want) in [
            (Limits { memory_bytes: Some(1 << 20), ..Limits::default() }, "memory"),
            (Limits { cpu_millis: Some(100), ..Limits::default() }, "cpu"),
            (Limits { pids_max: Some(1), ..Limits::default() }, "pids"),
        ] {
            let err = Cgroup::create(&layout, "envbox", "sb", &limits).unwrap_err();
            match &err {
                CgroupError::NoController { controller, .. } => assert_eq!(*controller, want),
                other => panic!("{other:?}"),
            }
            let msg = err.to_string();
            assert!(msg.contains(&format!("no {want} cgroup controller")), "{msg}");
        }
        // Without limits there is nothing to create, and that is fine.
        let cg = Cgroup::create(&layout, "envbox", "sb", &Limits::default()).unwrap();
        assert!(cg.dirs().is_empty());
        assert!(fs::read_dir(dir.path()).unwrap().next().is_none());
    }

    #[test]
    fn mountinfo_escapes_and_errors() {
        let text = "41 31 0:38 / /run/my\\040cg\\134x rw - cgroup2 cgroup2 rw\n";
        let layout = Layout::from_mountinfo(text, |_| None).unwrap();
        assert_eq!(layout.unified(), Some(Path::new("/run/my cg\\x")));

        let err = Layout::from_mountinfo("1 2 3\n", |_| None).unwrap_err();
        assert!(matches!(err, CgroupError::ParseMountinfo { line_no: 1, .. }), "{err:?}");
        let err = Layout::from_mountinfo("\n1 2 0:1 / - cgroup2 x\n", |_| None).unwrap_err();
        assert!(matches!(err, CgroupError::ParseMountinfo { line_no: 2, .. }), "{err:?}");
    }

    #[test]
    fn create_v1_writes_exactly_the_limit_files() {
        let root = tempfile::tempdir().unwrap();
        let layout = fake_layout(root.path(), &[], false);
        let cg = Cgroup::create(&layout, "envbox", "sb1", &all_limits()).unwrap();
        let r = root.path();
        assert_eq!(cg.dirs(), vec![r.join("memory/envbox/sb1"), r.join("cpu/envbox/sb1"), r.join("pids/envbox/sb1")]);
        let mem = r.join("memory/envbox/sb1");
        assert_eq!(files_in(&mem), ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"]);
        assert_eq!(read(&mem.join("memory.limit_in_bytes")), "67108864");
        assert_eq!(read(&mem.join("memory.memsw.limit_in_bytes")), "67108864");
        let cpu = r.join("cpu/envbox/sb1");
        assert_eq!(files_in(&cpu), ["cpu.cfs_period_us", "cpu.cfs_quota_us"]);
        assert_eq!(read(&cpu.join("cpu.cfs_period_us")), "100000");
        assert_eq!(read(&cpu.join("cpu.cfs_quota_us")), "50000");
        let pids = r.join("pids/envbox/sb1");
        assert_eq!(files_in(&pids), ["pids.max"]);
        assert_eq!(read(&pids.join("pids.max")), "20");
        assert!(!r.join("unified/envbox").exists());
        // No subtree_control on v1.
        assert!(files_in(&r.join("memory/envbox")).is_empty());
        assert_eq!(cg.oom_events_path(), Some(r.join("memory/envbox/sb1/memory.oom_control")));

        cg.remove().unwrap();
        for d in cg.dirs() {
            assert!(!d.exists(), "{}", d.display());
        }
        assert!(r.join("memory/envbox").is_dir(), "the shared parent stays");
        cg.remove().unwrap();
    }

    #[test]
    fn create_v2_enables_controllers_and_writes_limits() {
        let root = tempfile::tempdir().unwrap();
        let layout = fake_layout(root.path(), &Controller::ALL, true);
        let cg = Cgroup::create(&layout, "envbox/pool", "sb1", &all_limits()).unwrap();
        let u = root.path().join("unified");
        assert_eq!(cg.dirs(), vec![u.join("envbox/pool/sb1")]);
        for level in ["", "envbox", "envbox/pool"] {
            assert_eq!(read(&u.join(level).join("cgroup.subtree_control")), "+memory +cpu +pids", "level {level:?}");
        }
        let leaf = u.join("envbox/pool/sb1");
        assert_eq!(files_in(&leaf), ["cpu.max", "memory.max", "memory.swap.max", "pids.max"]);
        assert_eq!(read(&leaf.join("memory.max")), "67108864");
        assert_eq!(read(&leaf.join("memory.swap.max")), "0");
        assert_eq!(read(&leaf.join("cpu.max")), "50000 100000");
        assert_eq!(read(&leaf.join("pids.max")), "20");
        assert_eq!(cg.oom_events_path(), Some(leaf.join("memory.events")));
        assert_eq!(Cgroup::open(&layout, "envbox/pool", "sb1").unwrap(), cg);
        cg.remove().unwrap();
        assert!(!leaf.exists());
    }

    #[test]
    fn create_v2_enables_only_missing_and_needed_controllers() {
        let root = tempfile::tempdir().unwrap();
        let u = root.path().join("unified");
        fs::create_dir_all(u.join("envbox")).unwrap();
        // The kernel's format when reading: names without '+'.
        fs::write(u.join("cgroup.subtree_control"), "cpu memory pids\n").unwrap();
        fs::write(u.join("envbox/cgroup.subtree_control"), "memory\n").unwrap();
        let layout = fake_layout(root.path(), &Controller::ALL, true);
        let limits = Limits { memory_bytes: Some(1 << 20), pids_max: Some(3), ..Limits::default() };
        Cgroup::create(&layout, "envbox", "sb", &limits).unwrap();
        assert_eq!(read(&u.join("cgroup.subtree_control")), "cpu memory pids\n");
        assert_eq!(read(&u.join("envbox/cgroup.subtree_control")), "+pids");
        assert!(!u.join("envbox/sb/cpu.max").exists());
    }

    #[test]
    fn create_hybrid_uses_unified_for_kill_and_v1_for_limits() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let layout = fake_layout(r, &[], true);
        let limits = Limits { memory_bytes: Some(4096), ..Limits::default() };
        let cg = Cgroup::create(&layout, "envbox", "sb", &limits).unwrap();
        assert_eq!(cg.dirs(), vec![r.join("unified/envbox/sb"), r.join("memory/envbox/sb")]);
        assert!(files_in(&r.join("unified/envbox/sb")).is_empty());
        assert!(!r.join("unified/cgroup.subtree_control").exists());
        assert!(!r.join("cpu/envbox").exists() && !r.join("pids/envbox").exists());
        // open() finds the same directories from the filesystem.
        assert_eq!(Cgroup::open(&layout, "envbox", "sb").unwrap().dirs(), cg.dirs());
    }

    #[test]
    fn create_failure_half_way_removes_what_it_created() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        // memory on v2, cpu and pids on v1.
        let layout = fake_layout(r, &[Controller::Memory], true);
        // A plain file where the pids leaf must go: mkdir fails after the
        // unified leaf (with memory.max) and the cpu leaf were made.
        fs::create_dir_all(r.join("pids/envbox")).unwrap();
        fs::write(r.join("pids/envbox/sb"), "not a cgroup").unwrap();
        let err = Cgroup::create(&layout, "envbox", "sb", &all_limits()).unwrap_err();
        match &err {
            CgroupError::Mkdir { path, source } => {
                assert_eq!(path, &r.join("pids/envbox/sb"));
                assert_eq!(source.kind(), io::ErrorKind::AlreadyExists);
            }
            other => panic!("{other:?}"),
        }
        assert!(!r.join("unified/envbox/sb").exists());
        assert!(!r.join("cpu/envbox/sb").exists());
        assert_eq!(read(&r.join("pids/envbox/sb")), "not a cgroup");
        assert!(Cgroup::list(&layout, "envbox", "").is_empty());
    }

    #[test]
    fn create_write_error_names_path_and_value() {
        let root = tempfile::tempdir().unwrap();
        let u = root.path().join("unified");
        fs::create_dir_all(&u).unwrap();
        // The root's subtree_control reads as absent but cannot be written.
        std::os::unix::fs::symlink("missing/file", u.join("cgroup.subtree_control")).unwrap();
        let layout = fake_layout(root.path(), &Controller::ALL, true);
        let limits = Limits { memory_bytes: Some(1 << 20), ..Limits::default() };
        let err = Cgroup::create(&layout, "envbox", "sb", &limits).unwrap_err();
        match &err {
            CgroupError::WriteFile { path, value, .. } => {
                assert_eq!(path, &u.join("cgroup.subtree_control"));
                assert_eq!(value, "+memory");
            }
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("+memory"), "{err}");
        assert!(!u.join("envbox").exists());
    }

    #[test]
    fn kill_all_refuses_when_the_caller_is_inside() {
        let root = tempfile::tempdir().unwrap();
        let layout = fake_layout(root.path(), &[], true);
        let cg = Cgroup::create(&layout, "envbox", "sb", &all_limits()).unwrap();
        // Empty: nothing to signal, done at once.
        cg.kill_all().unwrap();
        let me = std::process::id();
        let procs = root.path().join("memory/envbox/sb/cgroup.procs");
        fs::write(&procs, format!("{me}\n")).unwrap();
        match cg.kill_all() {
            Err(CgroupError::SelfInside { path, pid }) => {
                assert_eq!(path, procs);
                assert_eq!(u32::try_from(pid).unwrap(), me);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn add_process_error_names_path_and_pid() {
        let root = tempfile::tempdir().unwrap();
        let layout = fake_layout(root.path(), &[], true);
        let cg = Cgroup::create(&layout, "envbox", "sb", &Limits::default()).unwrap();
        // A directory where cgroup.procs must be written.
        let procs = root.path().join("unified/envbox/sb/cgroup.procs");
        fs::create_dir(&procs).unwrap();
        match cg.add_process(77) {
            Err(CgroupError::AddProcess { path, pid, .. }) => {
                assert_eq!((path, pid), (procs, 77));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn create_refuses_a_leftover_cgroup_and_does_not_remove_it() {
        let root = tempfile::tempdir().unwrap();
        let layout = fake_layout(root.path(), &[], true);
        let leftover = root.path().join("unified/envbox/sb");
        fs::create_dir_all(&leftover).unwrap();
        fs::write(leftover.join("cgroup.procs"), "4242\n").unwrap();
        let err = Cgroup::create(&layout, "envbox", "sb", &Limits::default()).unwrap_err();
        assert!(matches!(err, CgroupError::Mkdir { .. }), "{err:?}");
        assert_eq!(read(&leftover.join("cgroup.procs")), "4242\n");
    }

    #[test]
    fn invalid_names_limits_and_pids_are_rejected() {
        let root = tempfile::tempdir().unwrap();
        let layout = fake_layout(root.path(), &[], true);
        for (parent, name) in [
            ("envbox", ".."),
            ("envbox", "."),
            ("envbox", ""),
            ("envbox", "a/b"),
            ("envbox", ".hidden"),
            ("envbox", "sp ace"),
            ("/abs", "sb"),
            ("a//b", "sb"),
            ("..", "sb"),
            ("envbox/", "sb"),
        ] {
            let err = Cgroup::create(&layout, parent, name, &Limits::default()).unwrap_err();
            assert!(matches!(err, CgroupError::InvalidName { .. }), "{parent:?} {name:?}: {err:?}");
            assert!(Cgroup::open(&layout, parent, name).is_err());
        }
        assert!(Cgroup::create(&layout, "", "x", &Limits::default()).is_ok());
        assert!(root.path().join("unified/x").is_dir());

        for millis in [0, 9, u64::MAX] {
            let limits = Limits { cpu_millis: Some(millis), ..Limits::default() };
            let err = Cgroup::create(&layout, "envbox", "c", &limits).unwrap_err();
            assert!(matches!(err, CgroupError::InvalidLimit { .. }), "{err:?}");
        }
        assert!(!root.path().join("unified/envbox").exists());

        let cg = Cgroup::open(&layout, "", "x").unwrap();
        for pid in [0, -1] {
            assert!(matches!(cg.add_process(pid), Err(CgroupError::InvalidPid { .. })));
        }
    }

    #[test]
    fn add_process_writes_every_dir() {
        let root = tempfile::tempdir().unwrap();
        let layout = fake_layout(root.path(), &[Controller::Pids], true);
        let cg = Cgroup::create(&layout, "envbox", "sb", &all_limits()).unwrap();
        assert_eq!(cg.dirs().len(), 3, "unified(+pids), memory, cpu");
        cg.add_process(4242).unwrap();
        for d in cg.dirs() {
            assert_eq!(read(&d.join("cgroup.procs")), "4242");
        }
        assert_eq!(cg.procs().unwrap(), [4242]);
    }

    #[test]
    fn parse_oom_kill_v1_and_v2() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(Cgroup::parse_oom_kill(v1), Some(3));
        let v2 = "low 0\nhigh 0\nmax 17\noom 2\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(Cgroup::parse_oom_kill(v2), Some(2));
        // Pre-4.13 v1 has no oom_kill line; oom_kill_disable must not match.
        assert_eq!(Cgroup::parse_oom_kill("oom_kill_disable 1\nunder_oom 0\n"), None);
        assert_eq!(Cgroup::parse_oom_kill(""), None);
    }

    #[test]
    fn oom_kills_reads_the_right_file() {
        let root = tempfile::tempdir().unwrap();
        let mem = Limits { memory_bytes: Some(1 << 20), ..Limits::default() };
        let layout = fake_layout(root.path(), &[], true);
        let cg = Cgroup::create(&layout, "v1", "sb", &mem).unwrap();
        assert_eq!(cg.oom_kills().unwrap(), None, "file missing");
        fs::write(cg.oom_events_path().unwrap(), "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n").unwrap();
        assert_eq!(cg.oom_kills().unwrap(), Some(3));
        assert_eq!(cg.stats().oom_kills, Some(3));

        let layout = fake_layout(root.path(), &[Controller::Memory], true);
        let cg = Cgroup::create(&layout, "v2", "sb", &mem).unwrap();
        fs::write(cg.oom_events_path().unwrap(), "low 0\nhigh 0\nmax 1\noom 1\noom_kill 1\n").unwrap();
        assert_eq!(cg.oom_kills().unwrap(), Some(1));

        let cg = Cgroup::create(&layout, "v2", "nomem", &Limits::default()).unwrap();
        assert_eq!(cg.oom_events_path(), None);
        assert_eq!(cg.oom_kills().unwrap(), None);
    }

    #[test]
    fn procs_union_and_is_populated() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let layout = fake_layout(r, &[], true);
        let cg = Cgroup::create(&layout, "envbox", "sb", &all_limits()).unwrap();
        assert!(cg.procs().unwrap().is_empty());
        assert!(!cg.is_populated().unwrap());

        fs::write(r.join("unified/envbox/sb/cgroup.procs"), "12\n11\n").unwrap();
        fs::write(r.join("memory/envbox/sb/cgroup.procs"), "11\n13\n").unwrap();
        fs::create_dir(r.join("pids/envbox/sb/cmd")).unwrap();
        fs::write(r.join("pids/envbox/sb/cmd/cgroup.procs"), "14\n").unwrap();
        assert_eq!(cg.procs().unwrap(), [11, 12, 13, 14]);
        // No cgroup.events: fall back to the member lists.
        assert!(cg.is_populated().unwrap());

        fs::write(r.join("unified/envbox/sb/cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        fs::write(r.join("unified/envbox/sb/cgroup.procs"), "").unwrap();
        fs::write(r.join("memory/envbox/sb/cgroup.procs"), "").unwrap();
        fs::write(r.join("pids/envbox/sb/cmd/cgroup.procs"), "").unwrap();
        assert!(cg.is_populated().unwrap(), "cgroup.events says populated");
        fs::write(r.join("unified/envbox/sb/cgroup.events"), "populated 0\nfrozen 0\n").unwrap();
        assert!(!cg.is_populated().unwrap());
        fs::write(r.join("memory/envbox/sb/cgroup.procs"), "15\n").unwrap();
        assert!(cg.is_populated().unwrap(), "a v1-only member counts");

        fs::write(r.join("cpu/envbox/sb/cgroup.procs"), "garbage\n").unwrap();
        assert!(matches!(cg.procs(), Err(CgroupError::ParseFile { .. })));

        // Nested child cgroups are removed first.
        cg.remove().unwrap();
        assert!(!r.join("pids/envbox/sb").exists());
        assert_eq!(cg.procs().unwrap(), Vec::<i32>::new(), "a removed cgroup has no members");
    }

    #[test]
    fn list_finds_prefixed_children_in_any_hierarchy() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let layout = fake_layout(r, &[], true);
        Cgroup::create(&layout, "envbox", "sb-1", &Limits::default()).unwrap();
        let mem = Limits { memory_bytes: Some(1 << 20), ..Limits::default() };
        Cgroup::create(&layout, "envbox", "sb-2", &mem).unwrap();
        // An orphan left only in a v1 hierarchy.
        fs::create_dir_all(r.join("pids/envbox/sb-3")).unwrap();
        fs::create_dir_all(r.join("pids/envbox/other")).unwrap();
        fs::write(r.join("unified/envbox/sb-file"), "").unwrap();
        assert_eq!(Cgroup::list(&layout, "envbox", "sb-"), ["sb-1", "sb-2", "sb-3"]);
        assert_eq!(Cgroup::list(&layout, "envbox", ""), ["other", "sb-1", "sb-2", "sb-3"]);
        assert!(Cgroup::list(&layout, "missing", "sb-").is_empty());
        assert!(Cgroup::list(&layout, "../etc", "").is_empty());

        let orphan = Cgroup::open(&layout, "envbox", "sb-3").unwrap();
        assert_eq!(orphan.dirs(), [r.join("pids/envbox/sb-3")]);
        orphan.remove().unwrap();
        assert_eq!(Cgroup::list(&layout, "envbox", "sb-"), ["sb-1", "sb-2"]);
    }

    #[test]
    fn stats_reads_v1_and_v2_files() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let layout = fake_layout(r, &[], true);
        let cg = Cgroup::create(&layout, "envbox", "sb", &all_limits()).unwrap();
        assert_eq!(cg.stats(), Stats::default());
        fs::write(r.join("memory/envbox/sb/memory.usage_in_bytes"), "4096\n").unwrap();
        fs::write(r.join("memory/envbox/sb/memory.max_usage_in_bytes"), "8192\n").unwrap();
        fs::write(r.join("pids/envbox/sb/pids.current"), "3\n").unwrap();
        fs::write(r.join("cpu/envbox/sb/cpu.stat"), "nr_periods 9\nnr_throttled 4\nthrottled_time 1\n").unwrap();
        fs::write(r.join("unified/envbox/sb/cpu.stat"), "usage_usec 777\nuser_usec 700\n").unwrap();
        let s = cg.stats();
        assert_eq!(s.memory_current_bytes, Some(4096));
        assert_eq!(s.memory_peak_bytes, Some(8192));
        assert_eq!(s.pids_current, Some(3));
        assert_eq!(s.cpu_usage_usec, Some(777));
        assert_eq!(s.cpu_nr_throttled, Some(4));

        let layout = fake_layout(r, &Controller::ALL, true);
        let cg = Cgroup::create(&layout, "v2", "sb", &all_limits()).unwrap();
        let leaf = r.join("unified/v2/sb");
        fs::write(leaf.join("memory.current"), "100\n").unwrap();
        fs::write(leaf.join("memory.peak"), "200\n").unwrap();
        fs::write(leaf.join("cpu.stat"), "usage_usec 5\nnr_periods 2\nnr_throttled 1\n").unwrap();
        let s = cg.stats();
        assert_eq!(
            (s.memory_current_bytes, s.memory_peak_bytes, s.cpu_usage_usec, s.cpu_nr_throttled),
            (Some(100), Some(200), Some(5), Some(1))
        );
    }

    // ---- root integration tests on this machine's real cgroups ----

    /// Root tests share the "envbox-test" parent, so they run one at a time.
    static ROOT_LOCK: Mutex<()> = Mutex::new(());
    const TEST_PARENT: &str = "envbox-test";

    macro_rules! require_root {
        ($name:expr) => {
            if !nix::unistd::geteuid().is_root() {
                if std::env::var("SANDBOX_TESTS_MUST_RUN").as_deref() == Ok("1") {
                    panic!("{} requires root and SANDBOX_TESTS_MUST_RUN=1", $name);
                }
                eprintln!("{} requires root. Skipping test.", $name);
                return;
            }
        };
    }

    fn unique_name(tag: &str) -> String {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        format!("{tag}-{}-{nanos:x}-{n}", std::process::id())
    }

    /// Kills (by pid) the children this test spawned and removes its cgroup
    /// and the shared test parent, even when an assertion failed.
    struct Guard {
        layout: Layout,
        cgroup: Option<Cgroup>,
        children: Vec<Child>,
        _lock: std::sync::MutexGuard<'static, ()>,
    }

    impl Guard {
        fn new() -> Guard {
            let lock = ROOT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            let layout = Layout::detect().unwrap();
            for c in Controller::ALL {
                assert!(layout.hierarchy(c).is_some(), "{c:?} missing: {}", layout.describe());
            }
            Guard { layout, cgroup: None, children: Vec::new(), _lock: lock }
        }

        fn create(&mut self, tag: &str, limits: &Limits) -> Cgroup {
            let cg = Cgroup::create(&self.layout, TEST_PARENT, &unique_name(tag), limits).unwrap();
            self.cgroup = Some(cg.clone());
            cg
        }

        /// Spawns `sh -c script` with a piped stdin; scripts start with
        /// `read x` so that they are in the cgroup before doing anything.
        fn spawn_sh(&mut self, script: &str) -> usize {
            let child = Command::new("sh")
                .arg("-c")
                .arg(script)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            self.children.push(child);
            self.children.len() - 1
        }

        fn pid(&self, idx: usize) -> i32 {
            i32::try_from(self.children[idx].id()).unwrap()
        }

        fn go(&mut self, idx: usize) {
            let stdin = self.children[idx].stdin.as_mut().unwrap();
            stdin.write_all(b"go\n").unwrap();
            stdin.flush().unwrap();
        }

        fn wait(&mut self, idx: usize, timeout: Duration) -> ExitStatus {
            let start = Instant::now();
            loop {
                if let Some(status) = self.children[idx].try_wait().unwrap() {
                    return status;
                }
                assert!(start.elapsed() < timeout, "child {idx} still running after {timeout:?}");
                thread::sleep(Duration::from_millis(10));
            }
        }

        fn stderr(&mut self, idx: usize) -> String {
            let mut s = String::new();
            if let Some(mut e) = self.children[idx].stderr.take() {
                e.read_to_string(&mut s).unwrap();
            }
            s
        }
    }

    impl Drop for Guard {
        fn drop(&mut self) {
            for child in &mut self.children {
                let _ = child.kill();
                let _ = child.wait();
            }
            if let Some(cg) = &self.cgroup {
                if let Err(e) = cg.kill_all() {
                    eprintln!("guard: kill_all: {e}");
                }
                if let Err(e) = cg.remove() {
                    eprintln!("guard: remove: {e}");
                }
            }
            for mount in self.layout.mounts() {
                let _ = fs::remove_dir(mount.join(TEST_PARENT));
            }
        }
    }

    fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
        let start = Instant::now();
        while !cond() {
            assert!(start.elapsed() < Duration::from_secs(10), "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn root_create_limits_membership_and_remove() {
        require_root!("root_create_limits_membership_and_remove");
        let mut g = Guard::new();
        let cg = g.create("basic", &all_limits());
        let rel = format!("/{TEST_PARENT}/{}", cg.dirs()[0].file_name().unwrap().to_str().unwrap());

        // The limits as the kernel holds them.
        let leaf = |c: Controller| {
            let h = g.layout.hierarchy(c).unwrap();
            (h.is_v2(), h.path().join(&rel[1..]))
        };
        match leaf(Controller::Memory) {
            (true, d) => {
                assert_eq!(read(&d.join("memory.max")).trim(), "67108864");
                if d.join("memory.swap.max").exists() {
                    assert_eq!(read(&d.join("memory.swap.max")).trim(), "0");
                }
            }
            (false, d) => {
                assert_eq!(read(&d.join("memory.limit_in_bytes")).trim(), "67108864");
                if d.join("memory.memsw.limit_in_bytes").exists() {
                    assert_eq!(read(&d.join("memory.memsw.limit_in_bytes")).trim(), "67108864");
                }
            }
        }
        match leaf(Controller::Cpu) {
            (true, d) => assert_eq!(read(&d.join("cpu.max")).trim(), "50000 100000"),
            (false, d) => {
                assert_eq!(read(&d.join("cpu.cfs_quota_us")).trim(), "50000");
                assert_eq!(read(&d.join("cpu.cfs_period_us")).trim(), "100000");
            }
        }
        assert_eq!(read(&leaf(Controller::Pids).1.join("pids.max")).trim(), "20");
        assert!(!cg.is_populated().unwrap());

        // A child moved in shows up in every hierarchy's /proc/<pid>/cgroup line.
        let idx = g.spawn_sh("read x; exec sleep 30");
        let pid = g.pid(idx);
        cg.add_process(pid).unwrap();
        let proc_cgroup = read(Path::new(&format!("/proc/{pid}/cgroup")));
        let path_of = |want: &str| {
            proc_cgroup.lines().find_map(|l| {
                let mut f = l.splitn(3, ':');
                let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
                let hit = if want.is_empty() { ctrls.is_empty() } else { ctrls.split(',').any(|c| c == want) };
                hit.then(|| path.to_owned())
            })
        };
        for c in Controller::ALL {
            let want = if g.layout.hierarchy(c).unwrap().is_v2() { "" } else { c.name() };
            assert_eq!(path_of(want).as_deref(), Some(rel.as_str()), "{c:?} in:\n{proc_cgroup}");
        }
        if g.layout.unified().is_some() {
            assert_eq!(path_of("").as_deref(), Some(rel.as_str()), "unified in:\n{proc_cgroup}");
        }
        assert_eq!(cg.procs().unwrap(), [pid]);
        assert!(cg.is_populated().unwrap());
        assert_eq!(cg.stats().pids_current, Some(1));
        assert_eq!(cg.oom_kills().unwrap(), Some(0));

        // Another process sees the same cgroup through open().
        let name = cg.dirs()[0].file_name().unwrap().to_str().unwrap().to_owned();
        let opened = Cgroup::open(&g.layout, TEST_PARENT, &name).unwrap();
        assert_eq!(opened.dirs(), cg.dirs());
        assert!(Cgroup::list(&g.layout, TEST_PARENT, "basic-").contains(&name));

        opened.kill_all().unwrap();
        let status = g.wait(idx, Duration::from_secs(5));
        assert_eq!(status.signal(), Some(9));
        assert!(!cg.is_populated().unwrap());
        opened.remove().unwrap();
        for d in cg.dirs() {
            assert!(!d.exists(), "{} left behind", d.display());
        }
        opened.remove().unwrap();
    }

    #[test]
    fn root_memory_hog_is_oom_killed_inside_the_cgroup() {
        require_root!("root_memory_hog_is_oom_killed_inside_the_cgroup");
        let mut g = Guard::new();
        let cg = g.create("oom", &Limits { memory_bytes: Some(32 << 20), ..Limits::default() });
        assert_eq!(cg.oom_kills().unwrap(), Some(0));
        let idx = g.spawn_sh("read x; x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived ${#x}");
        cg.add_process(g.pid(idx)).unwrap();
        g.go(idx);
        let status = g.wait(idx, Duration::from_secs(60));
        assert_eq!(status.signal(), Some(9), "{status:?}");
        let kills = cg.oom_kills().unwrap().unwrap();
        assert!(kills >= 1, "oom_kill {kills}");
        let stats = cg.stats();
        assert!(stats.memory_peak_bytes.unwrap() <= 32 << 20, "{stats:?}");
        cg.kill_all().unwrap();
        cg.remove().unwrap();
    }

    #[test]
    fn root_pids_limit_stops_forks() {
        require_root!("root_pids_limit_stops_forks");
        let mut g = Guard::new();
        let cg = g.create("pids", &Limits { pids_max: Some(5), ..Limits::default() });
        let idx = g.spawn_sh(
            "read x; i=0; while [ $i -lt 20 ]; do sleep 30 >/dev/null 2>&1 & i=$((i+1)); done; \
             echo all-started",
        );
        cg.add_process(g.pid(idx)).unwrap();
        g.go(idx);
        let status = g.wait(idx, Duration::from_secs(10));
        // The sleeps that did start (at most 4: the shell held the 5th slot) are still inside.
        let left = cg.procs().unwrap();
        assert!(!left.is_empty() && left.len() <= 4, "{left:?}");
        let stderr = g.stderr(idx);
        let mut stdout = String::new();
        g.children[idx].stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
        assert!(!status.success(), "{status:?} {stdout}");
        assert!(stderr.contains("fork"), "stderr: {stderr}");
        assert!(!stdout.contains("all-started"));
        let pids_dir = cg.dirs().into_iter().find(|d| d.join("pids.max").exists()).unwrap();
        let events = read(&pids_dir.join("pids.events"));
        assert!(keyed_value(&events, "max").unwrap() >= 1, "{events}");
        cg.kill_all().unwrap();
        assert!(cg.procs().unwrap().is_empty());
        cg.remove().unwrap();
    }

    #[test]
    fn root_kill_all_kills_a_term_ignoring_tree() {
        require_root!("root_kill_all_kills_a_term_ignoring_tree");
        let mut g = Guard::new();
        let cg = g.create("kill", &all_limits());
        let idx = g.spawn_sh(
            "read x; trap '' TERM HUP INT; \
             sh -c 'trap \"\" TERM; sleep 1000 & sleep 1000' & sleep 1000 & wait",
        );
        cg.add_process(g.pid(idx)).unwrap();
        g.go(idx);
        wait_until("the tree to start", || cg.procs().unwrap().len() >= 4);
        let members = cg.procs().unwrap();
        // SIGTERM alone does not get rid of it.
        for &pid in &members {
            let _ = signal::kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        thread::sleep(Duration::from_millis(50));
        assert!(cg.is_populated().unwrap());
        cg.kill_all().unwrap();
        assert!(!cg.is_populated().unwrap());
        assert!(cg.procs().unwrap().is_empty());
        for pid in members {
            // Gone (no /proc entry, or an empty read as it vanishes) or, for
            // our unreaped direct child, a zombie.
            let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            assert!(status.is_empty() || status.contains("State:\tZ"), "{pid} alive: {status}");
        }
        let status = g.wait(idx, Duration::from_secs(5));
        assert_eq!(status.signal(), Some(9));
        cg.remove().unwrap();
        for d in cg.dirs() {
            assert!(!d.exists());
        }
    }

    #[test]
    fn root_failed_write_removes_the_partial_cgroup() {
        require_root!("root_failed_write_removes_the_partial_cgroup");
        let mut g = Guard::new();
        let name = unique_name("fail");
        // pids.max above PID_MAX_LIMIT: the kernel rejects it after memory
        // and cpu were already written.
        let limits = Limits { pids_max: Some(u64::MAX), ..all_limits() };
        let err = Cgroup::create(&g.layout, TEST_PARENT, &name, &limits).unwrap_err();
        match &err {
            CgroupError::WriteFile { path, value, .. } => {
                assert!(path.ends_with("pids.max"), "{err}");
                assert_eq!(value, &u64::MAX.to_string());
            }
            other => panic!("{other:?}"),
        }
        assert!(Cgroup::list(&g.layout, TEST_PARENT, &name).is_empty());
        let opened = Cgroup::open(&g.layout, TEST_PARENT, &name).unwrap();
        assert!(opened.dirs().is_empty(), "{:?}", opened.dirs());
        g.cgroup = Some(opened);
    }
}
