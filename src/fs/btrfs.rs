//! The btrfs backend (`--fs btrfs`): an image is flattened once into a
//! read-only-by-convention base subvolume under `<root>/.images/btrfs/`;
//! each sandbox generation is a writable snapshot of it
//! (`<state>/gen/<g>/root`), bind-mounted as the sandbox's root. A reset
//! takes a new snapshot and destroys the old one with one ioctl each, so
//! its cost does not grow with what the sandbox wrote. The state root must
//! be on btrfs.

use std::ffi::CString;
use std::fs::{self, File};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{FsError, Result};
use crate::sys;

fn io_error(path: &Path, step: &'static str) -> impl FnOnce(std::io::Error) -> FsError {
    let path = path.display().to_string();
    move |source| FsError::Btrfs { path, step, source }
}

fn cname(name: &str) -> CString {
    CString::new(name).unwrap_or_default()
}

/// True when `path` is on a btrfs filesystem.
pub fn is_btrfs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).map(|s| s.filesystem_type() == nix::sys::statfs::BTRFS_SUPER_MAGIC).unwrap_or(false)
}

/// The base subvolume of an image whose layers are `layers` (bottom to
/// top; one directory for a rootfs image), made once: a temporary
/// subvolume filled by copying the merged view of the layers (reflinks
/// where the filesystem can), then renamed into place under a lock.
pub fn base(root: &Path, layers: &[PathBuf]) -> Result<PathBuf> {
    let dir = root.join(".images/btrfs");
    fs::create_dir_all(&dir).map_err(io_error(&dir, "creating the btrfs image directory"))?;
    let key = format!(
        "{:016x}",
        layers.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, l| {
            l.as_os_str().as_encoded_bytes().iter().chain(b"\0").fold(h, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
        })
    );
    let base = dir.join(&key);
    let done = dir.join(format!("{key}.done"));
    if done.exists() {
        return Ok(base);
    }
    let lock = File::create(dir.join(format!("{key}.lock"))).map_err(io_error(&dir, "locking the base subvolume"))?;
    sys::flock(lock.as_fd(), libc::LOCK_EX).map_err(io_error(&dir, "locking the base subvolume"))?;
    if done.exists() {
        return Ok(base);
    }
    let dir_fd = File::open(&dir).map_err(io_error(&dir, "opening the btrfs image directory"))?;
    let tmp_name = format!(".tmp-{key}-{}", std::process::id());
    let tmp = dir.join(&tmp_name);
    // Under the key's lock, any temporary of this key is a dead builder's.
    for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(&format!(".tmp-{key}-")) {
            let _ = sys::btrfs::subvol_destroy(dir_fd.as_fd(), &cname(&name));
        }
    }
    if base.exists() {
        // A half-made one of a builder that died before marking it done.
        let _ = sys::btrfs::subvol_destroy(dir_fd.as_fd(), &cname(&key));
    }
    sys::btrfs::subvol_create(dir_fd.as_fd(), &cname(&tmp_name)).map_err(io_error(&tmp, "creating a subvolume"))?;
    let filled = fill(&tmp, layers);
    if let Err(e) = filled {
        let _ = sys::btrfs::subvol_destroy(dir_fd.as_fd(), &cname(&tmp_name));
        return Err(e);
    }
    if let Err(e) = fs::rename(&tmp, &base) {
        let _ = sys::btrfs::subvol_destroy(dir_fd.as_fd(), &cname(&tmp_name));
        return Err(io_error(&base, "publishing the base subvolume")(e));
    }
    // The marker lists the layers, so `collect` knows when they are gone.
    let listed: Vec<String> = layers.iter().map(|l| l.display().to_string()).collect();
    fs::write(&done, listed.join("\n")).map_err(io_error(&done, "marking the base subvolume done"))?;
    Ok(base)
}

/// Destroys the base subvolumes whose image layers are gone (an image
/// removed from the store, a rootfs directory deleted). A sandbox still on
/// one keeps working: its snapshot does not depend on the base.
pub fn collect(root: &Path) {
    let dir = root.join(".images/btrfs");
    let Ok(dir_fd) = File::open(&dir) else { return };
    for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(key) = name.strip_suffix(".done") else { continue };
        let layers = fs::read_to_string(e.path()).unwrap_or_default();
        if layers.lines().all(|l| Path::new(l).exists()) {
            continue;
        }
        let _ = fs::remove_file(e.path());
        let _ = sys::btrfs::subvol_destroy(dir_fd.as_fd(), &cname(key));
        let _ = fs::remove_file(dir.join(format!("{key}.lock")));
    }
}

/// Copies the merged view of `layers` into `dest`. One layer is copied as
/// it is; several are mounted as a read-only overlay in a mount namespace
/// of the copying process alone, so no mount is ever left on the host.
fn fill(dest: &Path, layers: &[PathBuf]) -> Result<()> {
    let src = if layers.len() == 1 { layers[0].clone() } else { dest.with_extension("merged") };
    let mut cmd = Command::new("cp");
    cmd.arg("-a").arg("--reflink=auto").arg(format!("{}/.", src.display())).arg(dest);
    if layers.len() > 1 {
        fs::create_dir_all(&src).map_err(io_error(&src, "creating a mount point"))?;
        let lowers: Vec<String> = layers.iter().rev().map(|l| l.display().to_string()).collect();
        let target = src.display().to_string();
        let opts = format!("lowerdir={}", lowers.join(":"));
        sys::set_pre_exec(&mut cmd, move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(|e| std::io::Error::from_raw_os_error(e as i32))?;
            let private = nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE;
            nix::mount::mount(None::<&str>, "/", None::<&str>, private, None::<&str>)
                .map_err(|e| std::io::Error::from_raw_os_error(e as i32))?;
            nix::mount::mount(Some("overlay"), target.as_str(), Some("overlay"), nix::mount::MsFlags::MS_RDONLY, Some(opts.as_str()))
                .map_err(|e| std::io::Error::from_raw_os_error(e as i32))
        });
    }
    let out = cmd.output().map_err(io_error(dest, "running cp"))?;
    if layers.len() > 1 {
        let _ = fs::remove_dir(&src);
    }
    if !out.status.success() {
        return Err(FsError::Btrfs {
            path: dest.display().to_string(),
            step: "copying the image into its base subvolume",
            source: std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        });
    }
    Ok(())
}

/// Takes a writable snapshot of `base` as `<gen_dir>/root`.
pub fn snapshot(base: &Path, gen_dir: &Path) -> Result<PathBuf> {
    fs::create_dir_all(gen_dir).map_err(io_error(gen_dir, "creating a generation directory"))?;
    let src = File::open(base).map_err(io_error(base, "opening the base subvolume"))?;
    let parent = File::open(gen_dir).map_err(io_error(gen_dir, "opening a generation directory"))?;
    sys::btrfs::snapshot(src.as_fd(), parent.as_fd(), &cname("root")).map_err(io_error(gen_dir, "snapshotting the base subvolume"))?;
    Ok(gen_dir.join("root"))
}

/// Destroys the `root` subvolume of every generation under a sandbox's
/// `gen/` directory (one ioctl each); what remains is small and removed
/// by the caller.
pub fn destroy_generations(sandbox_dir: &Path) {
    for e in fs::read_dir(sandbox_dir.join("gen")).into_iter().flatten().flatten() {
        destroy_root(&e.path());
    }
}

/// Destroys `<gen_dir>/root` if it is a subvolume.
pub fn destroy_root(gen_dir: &Path) {
    if let Ok(parent) = File::open(gen_dir) {
        let _ = sys::btrfs::subvol_destroy(parent.as_fd(), &cname("root"));
    }
}
