//! overlayfs: the image's read-only layers below, the sandbox's upper above.

use nix::mount::{mount, MsFlags};

use super::{io_err, FsError, Result};

/// Largest option string the kernel accepts (one page).
const MAX_OPTIONS: usize = 4095;

/// Options that keep an upper directory in the plain layer format.
const PLAIN_UPPER: &str = "redirect_dir=off,metacopy=off";

/// Builds the option string. `lowers` are top-most first, as overlayfs wants.
pub fn options(lowers: &[String], upper: &str, work: &str) -> Result<String> {
    // `volatile`: no syncfs of the upper layer; an upper layer is never
    // reused after a crash (reset and gc throw it away), so durability buys
    // nothing and fsync-heavy workloads would pay for it.
    // `redirect_dir=off,metacopy=off`: whatever the host's overlay defaults, an upper layer
    // stays a plain layer (a renamed lower directory is copied, a chown copies the data),
    // because snapshots and build steps turn upper layers into image layers, which carry
    // no overlay metadata.
    let opts = format!("lowerdir={},upperdir={upper},workdir={work},volatile,{PLAIN_UPPER}", lowers.join(":"));
    if opts.len() > MAX_OPTIONS {
        return Err(FsError::OverlayOptionsTooLong { len: opts.len() });
    }
    Ok(opts)
}

/// Mounts an overlay at `target`: nosuid and nodev, so neither setuid binaries
/// nor device nodes smuggled in by an image have any power.
pub fn mount_overlay(target: &str, lowers: &[String], upper: &str, work: &str) -> Result<()> {
    let opts = options(lowers, upper, work)?;
    mount(Some("overlay"), target, Some("overlay"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some(opts.as_str()))
        .map_err(|e| FsError::Mount { fstype: "overlay".into(), target: target.into(), options: opts.clone(), source: io_err(e) })
}

/// Builds the same overlay as a detached mount (new mount API) and returns
/// its fd, for another process to attach in another mount namespace. The
/// layer paths are resolved here, in the caller's namespace.
pub fn detached_overlay(lowers: &[String], upper: &str, work: &str) -> Result<std::os::fd::OwnedFd> {
    use crate::sys::newmount;
    use std::os::fd::AsFd;
    // For error messages only: the layers go to the kernel by fd below, so
    // the mount(2) option length limit does not apply.
    let opts = format!("lowerdir={},upperdir={upper},workdir={work},volatile,{PLAIN_UPPER}", lowers.join(":"));
    let err = |source| FsError::Mount { fstype: "overlay".into(), target: "(detached)".into(), options: opts.clone(), source };
    // fsconfig takes strings of at most 256 bytes: name every layer by a
    // short /proc/self/fd path of an O_PATH handle, and add the lowers one
    // by one ("lowerdir+", Linux 6.8) where the kernel can.
    let open = |p: &str| {
        nix::fcntl::open(
            p,
            nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map(crate::sys::owned)
        .map_err(|e| err(std::io::Error::from_raw_os_error(e as i32)))
    };
    let lower_fds = lowers.iter().map(|l| open(l)).collect::<Result<Vec<_>>>()?;
    let (upper_fd, work_fd) = (open(upper)?, open(work)?);
    let path = |fd: &std::os::fd::OwnedFd| crate::sys::fd_path(fd.as_fd()).into_string().unwrap_or_default();
    let ctx = newmount::fsopen("overlay").map_err(err)?;
    let ctx_fd = ctx.as_fd();
    let mut one_by_one = true;
    for (i, fd) in lower_fds.iter().enumerate() {
        match newmount::set_string(ctx_fd, "lowerdir+", &path(fd)) {
            Ok(()) => {}
            Err(e) if i == 0 && e.raw_os_error() == Some(libc::EINVAL) => {
                one_by_one = false;
                break;
            }
            Err(e) => return Err(err(e)),
        }
    }
    if !one_by_one {
        let joined: Vec<String> = lower_fds.iter().map(path).collect();
        newmount::set_string(ctx_fd, "lowerdir", &joined.join(":")).map_err(err)?;
    }
    newmount::set_string(ctx_fd, "upperdir", &path(&upper_fd)).map_err(err)?;
    newmount::set_string(ctx_fd, "workdir", &path(&work_fd)).map_err(err)?;
    newmount::set_flag(ctx_fd, "volatile").map_err(err)?;
    newmount::set_string(ctx_fd, "redirect_dir", "off").map_err(err)?;
    newmount::set_string(ctx_fd, "metacopy", "off").map_err(err)?;
    newmount::create_and_mount(ctx_fd).map_err(err)
}

/// A tmpfs of `size` bytes as a detached mount (never attached to any
/// tree, so nothing can leak: it lives as long as an fd or an overlay
/// that uses it as its upper layer). Returns its fd; its root is
/// reachable as `/proc/self/fd/<fd>`.
pub fn detached_tmpfs(size: u64) -> Result<std::os::fd::OwnedFd> {
    use crate::sys::newmount;
    // One inode per 4 KiB of space, at least 4096: an inode flood hits
    // ENOSPC too, instead of the host's memory.
    let inodes = (size / 4096).max(4096);
    let opts = format!("size={size},nr_inodes={inodes},mode=0755");
    let err = |source| FsError::Mount { fstype: "tmpfs".into(), target: "(detached upper layer)".into(), options: opts.clone(), source };
    let ctx = newmount::fsopen("tmpfs").map_err(err)?;
    let ctx_fd = std::os::fd::AsFd::as_fd(&ctx);
    newmount::set_string(ctx_fd, "size", &size.to_string()).map_err(err)?;
    newmount::set_string(ctx_fd, "nr_inodes", &inodes.to_string()).map_err(err)?;
    newmount::set_string(ctx_fd, "mode", "0755").map_err(err)?;
    newmount::create_and_mount(ctx_fd).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_list_lowers_top_first_and_are_bounded() {
        let o = options(&["/a".into(), "/b".into()], "/u", "/w").unwrap();
        assert_eq!(o, "lowerdir=/a:/b,upperdir=/u,workdir=/w,volatile,redirect_dir=off,metacopy=off");
        let many: Vec<String> = (0..500).map(|i| format!("/proc/self/fd/{i}")).collect();
        assert!(matches!(options(&many, "/u", "/w"), Err(FsError::OverlayOptionsTooLong { .. })));
    }
}
