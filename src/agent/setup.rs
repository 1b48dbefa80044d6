//! The in-sandbox setup sequence, run by the agent (PID 1 of the new PID
//! namespace, already in its new mount/UTS/IPC/net namespaces), in kernel
//! order: private mounts → overlays → volumes → pivot_root → /dev, /proc,
//! masks, /sys → hostname → workdir. Also the in-place reset.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::fcntl::{open, OFlag};
use nix::sys::stat::Mode;

use super::AgentConfig;
use crate::fs::{mounts, overlay, pivot, FsError};
use crate::sandbox::files::RootFs;
use crate::sys;

/// A step of the setup that failed.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("opening {path} failed")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("preparing the volume target {target} failed")]
    VolumeTarget {
        target: String,
        #[source]
        source: crate::sandbox::files::FilesError,
    },
    #[error("creating the upper layer directory {path} failed")]
    Upper {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("a reset must bring {expected} overlay mounts, it brought {got}")]
    ResetMounts { expected: usize, got: usize },
}

pub type Result<T> = std::result::Result<T, SetupError>;

/// Handles on host objects the agent keeps after pivot_root, so that a
/// reset can mount new overlays without seeing the host's tree. They are
/// close-on-exec and the agent is not dumpable, so no sandbox process can
/// reach them (not through /proc/1/fd either).
pub struct HostHandles {
    /// O_PATH fd of the sandbox's state directory (its `gen/` holds uppers).
    pub state_dir: OwnedFd,
    /// O_PATH fds of every overlay's lower layers, in config order.
    pub lowers: Vec<Vec<OwnedFd>>,
    /// Whether each volume's source is a directory (else a file).
    pub volume_is_dir: Vec<bool>,
}

fn open_path(path: &Path) -> Result<OwnedFd> {
    open(path, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
        .map(sys::owned)
        .map_err(|e| SetupError::Open { path: path.display().to_string(), source: std::io::Error::from_raw_os_error(e as i32) })
}

fn fd_str(fd: &OwnedFd) -> String {
    sys::fd_path(fd.as_fd()).into_string().unwrap_or_default()
}

/// `/proc/self/fd/<state_dir>/gen/<g>` — the upper/work dirs of generation g.
pub fn gen_dir(h: &HostHandles, generation: &str) -> String {
    format!("{}/gen/{generation}", fd_str(&h.state_dir))
}

/// Creates the upper and work directories of a generation (idempotent).
pub fn prepare_generation(h: &HostHandles, overlays: usize, generation: &str) -> Result<()> {
    make_layer_dirs(&gen_dir(h, generation), overlays)
}

/// Creates `u<i>` and `w<i>` under `base` for every overlay.
fn make_layer_dirs(base: &str, overlays: usize) -> Result<()> {
    for i in 0..overlays {
        for kind in ["u", "w"] {
            let path = format!("{base}/{kind}{i}");
            std::fs::create_dir_all(&path).map_err(|source| SetupError::Upper { path: format!("{kind}{i}"), source })?;
        }
    }
    Ok(())
}

/// Mounts every overlay under `root`, with their upper and work
/// directories under `base`.
fn mount_overlays(cfg: &AgentConfig, h: &HostHandles, root: &str, base: &str) -> Result<()> {
    for (i, spec) in cfg.overlays.iter().enumerate() {
        let target = if spec.target == "/" { root.to_string() } else { format!("{root}{}", spec.target) };
        if spec.target != "/" {
            mounts::ensure_dir(&target)?;
        }
        let lowers: Vec<String> = h.lowers[i].iter().map(fd_str).collect();
        overlay::mount_overlay(&target, &lowers, &format!("{base}/u{i}"), &format!("{base}/w{i}"))?;
    }
    Ok(())
}

/// Creates (inside the new root, confined to it) the mount point of a
/// volume: a directory, or an empty file when the source is a file.
fn volume_target(root: &RootFs, target: &str, source_is_dir: bool) -> Result<OwnedFd> {
    let err = |source| SetupError::VolumeTarget { target: target.to_string(), source };
    if source_is_dir {
        root.mkdir_all(target, 0o755).map_err(err)
    } else {
        if root.open_path(target).is_err() {
            root.write_file(target, b"", 0o644).map_err(err)?;
        }
        root.open_path(target).map_err(err)
    }
}

/// The first setup: returns the handles the agent keeps for resets.
pub fn setup(cfg: &AgentConfig) -> Result<HostHandles> {
    // Step 0: the host has put us in our cgroups by now; a cgroup namespace
    // rooted there makes /proc/self/cgroup show "/" (SECURITY.md F8).
    let _ = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP);
    // Step 1: nothing we mount may propagate to the host, and no host mount
    // event may propagate in.
    pivot::make_private()?;
    // Step 2: hold the state dir and every lower layer by fd; after the pivot
    // they are reachable only through these.
    let handles = HostHandles {
        state_dir: open_path(&cfg.state_dir)?,
        lowers: cfg
            .overlays
            .iter()
            .map(|o| o.lowers.iter().map(|l| open_path(l)).collect::<Result<Vec<_>>>())
            .collect::<Result<Vec<_>>>()?,
        volume_is_dir: cfg.volumes.iter().map(|v| v.host.is_dir()).collect(),
    };
    // Step 3 (network) is done: with --net none the host made our network
    // namespace ahead of time, loopback up, and we joined it at start.
    // Step 4: the copy-on-write root, at the state dir's mount point (which
    // only this mount namespace sees).
    let rootfs = cfg.state_dir.join("rootfs").display().to_string();
    mounts::ensure_dir(&rootfs)?;
    // With --disk, the upper layers live on a tmpfs of that size, held
    // only by the overlays (a detached mount: nothing to clean up).
    if cfg.fs == crate::config::FsBackend::Btrfs {
        let snap = format!("{}/root", gen_dir(&handles, &cfg.generation));
        mounts::bind(&snap, &rootfs)?;
        mounts::restrict_bind(&rootfs, false)?;
    }
    let disk = match cfg.disk_bytes {
        Some(size) => Some(overlay::detached_tmpfs(size)?),
        None => None,
    };
    let base = match &disk {
        Some(fd) => fd_str(fd),
        None => {
            prepare_generation(&handles, cfg.overlays.len(), &cfg.generation)?;
            gen_dir(&handles, &cfg.generation)
        }
    };
    if disk.is_some() {
        make_layer_dirs(&base, cfg.overlays.len())?;
    }
    if cfg.fs != crate::config::FsBackend::Btrfs {
        mount_overlays(cfg, &handles, &rootfs, &base)?;
    }
    drop(disk);
    // Step 5: volumes. The target is resolved inside the new root with
    // openat2(RESOLVE_IN_ROOT), so an image symlink cannot point the bind
    // at a host path (F10); the mount acts on the fds, not on path strings.
    if !cfg.volumes.is_empty() {
        let root = RootFs::open_dir(Path::new(&rootfs)).map_err(|source| SetupError::Open { path: rootfs.clone(), source })?;
        for v in &cfg.volumes {
            let src = open(&v.host, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty()).map(sys::owned).map_err(|e| SetupError::Open {
                path: v.host.display().to_string(),
                source: std::io::Error::from_raw_os_error(e as i32),
            })?;
            let dst = volume_target(&root, &v.container, v.host.is_dir())?;
            mounts::bind(&fd_str(&src), &fd_str(&dst))?;
            // `dst` still names the directory under the new mount; resolve
            // again to get the bind mount itself.
            let top = root.open_path(&v.container).map_err(|source| SetupError::VolumeTarget { target: v.container.clone(), source })?;
            mounts::restrict_bind(&fd_str(&top), v.read_only)?;
        }
    }
    // Step 6: pivot_root, then detach the host's tree.
    pivot::pivot_into(&rootfs)?;
    // Step 7: /dev first (the /proc masks bind /dev/null), then /proc,
    // /sys, the masks.
    mounts::mount_dev("")?;
    mounts::mount_proc()?;
    // /sys before the masks: some of them are inside it.
    mounts::mount_sys()?;
    mounts::mask_paths()?;
    mounts::set_hostname(&cfg.name)?;
    // Step 8: the working directory (created in the upper layer if missing).
    ensure_workdir(&cfg.workdir);
    Ok(handles)
}

fn ensure_workdir(workdir: &str) {
    // Inside the sandbox now: resolution cannot leave its root.
    let _ = std::fs::create_dir_all(workdir);
}

/// Resets the filesystem in place: attaches the new overlays (detached
/// mounts the host built over a fresh upper layer: only a process in the
/// host's mount namespace can name the layers) on a fresh mount point, moves
/// the volumes, /proc and /sys over, makes a new /dev, and pivots into it.
/// The caller has killed every other process.
///
/// Returns an fd that pins the old root: dropping it tears the old overlay
/// down (evicting every inode the sandbox touched), so the caller drops it
/// off the hot path.
pub fn reset(cfg: &AgentConfig, h: &HostHandles, generation: &str, overlays: &[OwnedFd]) -> Result<OwnedFd> {
    if overlays.len() != cfg.overlays.len() {
        return Err(SetupError::ResetMounts { expected: cfg.overlays.len(), got: overlays.len() });
    }
    // The old /dev is a tmpfs that is thrown away with the old root: a safe
    // place for the new root's mount point, whatever the image looks like.
    let next = format!("/dev/.envbox-next-{generation}");
    std::fs::create_dir(&next).map_err(|source| FsError::Mkdir { path: next.clone(), source })?;
    for (spec, mount) in cfg.overlays.iter().zip(overlays) {
        let target = if spec.target == "/" { next.clone() } else { format!("{next}{}", spec.target) };
        if spec.target != "/" {
            mounts::ensure_dir(&target)?;
        }
        sys::newmount::attach(mount.as_fd(), &target).map_err(|source| FsError::Move {
            from: "(detached overlay)".into(),
            to: target.clone(),
            source,
        })?;
    }
    if !cfg.volumes.is_empty() {
        let root = RootFs::open_dir(Path::new(&next)).map_err(|source| SetupError::Open { path: next.clone(), source })?;
        for (v, &is_dir) in cfg.volumes.iter().zip(&h.volume_is_dir) {
            drop(volume_target(&root, &v.container, is_dir)?);
            mounts::move_mount(&v.container, &format!("{next}{}", v.container))?;
        }
    }
    for special in ["/proc", "/sys"] {
        let target = format!("{next}{special}");
        mounts::ensure_dir(&target)?;
        mounts::move_mount(special, &target)?;
    }
    mounts::mount_dev(&next)?;
    let old_root = open_path(Path::new("/"))?;
    pivot::pivot_into(&next)?;
    ensure_workdir(&cfg.workdir);
    Ok(old_root)
}
