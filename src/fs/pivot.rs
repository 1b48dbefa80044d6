//! pivot_root into the new root and drop the old one.
//!
//! Not chroot: after `pivot_root(".", ".")` and a detached unmount of the old
//! root, nothing of the host's mount tree is left above `/` (SECURITY.md F1,
//! F2). See pivot_root(2), "pivot_root(".", ".")".

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::unistd::{chdir, pivot_root};

use super::{io_err, FsError, Result};

/// Makes every mount in this (new) namespace private, so nothing we mount
/// propagates to the host and no host mount event propagates in (F4).
pub fn make_private() -> Result<()> {
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>).map_err(|e| FsError::MakePrivate(io_err(e)))
}

/// Switches this process's root to `new_root` (which must be a mount point)
/// and detaches the old root with everything mounted below it.
pub fn pivot_into(new_root: &str) -> Result<()> {
    let pivot_err = |e| FsError::PivotRoot { new_root: new_root.to_string(), source: io_err(e) };
    // Step 1: cwd = the new root, so "." names it in the next calls.
    chdir(new_root).map_err(pivot_err)?;
    // Step 2: stack the old root on top of the new one at "/"...
    pivot_root(".", ".").map_err(pivot_err)?;
    // Step 3: ...and detach it. MNT_DETACH: a busy old root (our own
    // open fds, other namespaces' references) must not fail the pivot.
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| FsError::DetachOldRoot(io_err(e)))?;
    // Step 4: cwd back to the (new) root, not to the detached old one.
    chdir("/").map_err(pivot_err)?;
    Ok(())
}
