//! The special mounts of a sandbox: /proc (with masked and read-only paths),
//! a minimal /dev, a read-only /sys, and bind volumes.
//!
//! Called after pivot_root, so every path here is a sandbox path; still, a
//! mount target that the image made a symlink is refused (SECURITY.md F10).

use std::io;
use std::os::unix::fs::{symlink, DirBuilderExt};

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};

use super::{io_err, FsError, Result};

/// procfs files hidden behind /dev/null (kernel memory, keys, timers...).
const MASKED_PROC_FILES: &[&str] =
    &["/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/kmsg"];
/// procfs and sysfs directories hidden behind an empty read-only tmpfs.
const MASKED_DIRS: &[&str] = &["/proc/acpi", "/proc/asound", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap"];
/// procfs paths that stay readable but become read-only.
const READONLY_PROC: &[&str] = &["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

fn mount_err(fstype: &str, target: &str, options: &str) -> impl FnOnce(nix::Error) -> FsError {
    let (fstype, target, options) = (fstype.to_string(), target.to_string(), options.to_string());
    move |e| FsError::Mount { fstype, target, options, source: io_err(e) }
}

/// Makes sure `path` is a real directory (creating it if missing); a symlink
/// or a file planted by the image is refused.
pub fn ensure_dir(path: &str) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_dir() => Ok(()),
        Ok(_) => Err(FsError::UnsafeMountTarget { path: path.to_string() }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(path)
            .map_err(|source| FsError::Mkdir { path: path.to_string(), source }),
        Err(source) => Err(FsError::Mkdir { path: path.to_string(), source }),
    }
}

/// Mounts a fresh procfs for this PID namespace at /proc, then masks and
/// write-protects the dangerous parts (F6, F7).
pub fn mount_proc() -> Result<()> {
    ensure_dir("/proc")?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(Some("proc"), "/proc", Some("proc"), flags, None::<&str>).map_err(mount_err("proc", "/proc", ""))?;
    // Per IPC namespace, and only writable before /proc/sys goes read-only:
    // SysV shm segments die with their last user, so a reset leaves none.
    let _ = std::fs::write("/proc/sys/kernel/shm_rmid_forced", "1");
    for path in READONLY_PROC {
        match mount(Some(*path), *path, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>) {
            Ok(()) => remount_readonly(path)?,
            // Not in this kernel: nothing to protect. (No stat first: one
            // syscall per path on every create and reset.)
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(FsError::Bind { source_path: path.to_string(), target: path.to_string(), source: io_err(e) }),
        }
    }
    Ok(())
}

/// Masks the /proc and /sys paths that leak host kernel state. Needs /dev/null.
pub fn mask_paths() -> Result<()> {
    // A path this kernel lacks (ENOENT) needs no mask.
    for path in MASKED_PROC_FILES {
        match mount(Some("/dev/null"), *path, None::<&str>, MsFlags::MS_BIND, None::<&str>) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(FsError::Bind { source_path: "/dev/null".into(), target: path.to_string(), source: io_err(e) }),
        }
    }
    for path in MASKED_DIRS {
        let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        match mount(Some("tmpfs"), *path, Some("tmpfs"), flags, Some("size=0,mode=555")) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(mount_err("tmpfs", path, "size=0,mode=555")(e)),
        }
    }
    Ok(())
}

fn remount_readonly(path: &str) -> Result<()> {
    let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(None::<&str>, path, None::<&str>, flags, None::<&str>).map_err(|e| FsError::Remount { target: path.into(), source: io_err(e) })
}

/// A read-only sysfs (F8); in a private network namespace it shows only that
/// namespace's interfaces.
pub fn mount_sys() -> Result<()> {
    ensure_dir("/sys")?;
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(Some("sysfs"), "/sys", Some("sysfs"), flags, None::<&str>).map_err(mount_err("sysfs", "/sys", ""))
}

/// A minimal /dev on a small tmpfs: null, zero, full, random, urandom, tty,
/// a private devpts instance, /dev/shm, and the usual symlinks (F9).
pub fn mount_dev(root: &str) -> Result<()> {
    let dev = format!("{root}/dev");
    ensure_dir(&dev)?;
    // Not nodev (the nodes below must work) but nosuid and noexec.
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
    mount(Some("tmpfs"), dev.as_str(), Some("tmpfs"), flags, Some("mode=755,size=65536k")).map_err(mount_err(
        "tmpfs",
        &dev,
        "mode=755,size=65536k",
    ))?;
    for (name, major, minor) in [("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0)] {
        let path = format!("{dev}/{name}");
        mknod(path.as_str(), SFlag::S_IFCHR, Mode::from_bits_truncate(0o666), makedev(major, minor))
            .map_err(|e| FsError::Mknod { path: path.clone(), source: io_err(e) })?;
        // mknod is subject to the umask; the nodes must be world-usable.
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o666))
            .map_err(|source| FsError::Mknod { path: path.clone(), source })?;
    }
    for (name, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let path = format!("{dev}/{name}");
        symlink(target, &path).map_err(|source| FsError::Symlink { path, source })?;
    }
    let pts = format!("{dev}/pts");
    ensure_dir(&pts)?;
    let opts = "newinstance,ptmxmode=0666,mode=620";
    mount(Some("devpts"), pts.as_str(), Some("devpts"), MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC, Some(opts))
        .map_err(mount_err("devpts", &pts, opts))?;
    let shm = format!("{dev}/shm");
    ensure_dir(&shm)?;
    let opts = "mode=1777,size=65536k";
    mount(Some("shm"), shm.as_str(), Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC, Some(opts))
        .map_err(mount_err("tmpfs", &shm, opts))?;
    Ok(())
}

/// Bind-mounts a host path (`source`, usually `/proc/self/fd/N` of an fd the
/// caller resolved safely) on `target`.
pub fn bind(source: &str, target: &str) -> Result<()> {
    mount(Some(source), target, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>).map_err(|e| FsError::Bind {
        source_path: source.into(),
        target: target.into(),
        source: io_err(e),
    })
}

/// Sets the flags of the bind mount at `target` (an fd path of the mount's
/// root, opened after the bind): nosuid and nodev always, read-only on
/// request.
pub fn restrict_bind(target: &str, read_only: bool) -> Result<()> {
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    mount(None::<&str>, target, None::<&str>, flags, None::<&str>)
        .map_err(|e| FsError::Remount { target: target.into(), source: io_err(e) })
}

/// Moves a mount (with everything below it) to a new place.
pub fn move_mount(from: &str, to: &str) -> Result<()> {
    mount(Some(from), to, None::<&str>, MsFlags::MS_MOVE, None::<&str>).map_err(|e| FsError::Move {
        from: from.into(),
        to: to.into(),
        source: io_err(e),
    })
}

/// Sets the UTS hostname (the sandbox name).
pub fn set_hostname(name: &str) -> Result<()> {
    nix::unistd::sethostname(name).map_err(|e| FsError::Hostname { name: name.into(), source: io_err(e) })
}
