//! Filesystem setup: the copy-on-write root (overlayfs), pivot_root, and the
//! special mounts (/proc, /dev, /sys, masked and read-only paths).
//!
//! These functions run inside the sandbox's fresh mount namespace (in the
//! agent), except `rootfs`, which prepares host-side directories.

pub mod btrfs;
pub mod mounts;
pub mod overlay;
pub mod pivot;
pub mod rootfs;

use std::io;
use std::path::PathBuf;

pub type Result<T> = std::result::Result<T, FsError>;

/// A filesystem setup step that failed, with its arguments.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("btrfs: {step} at {path} failed")]
    Btrfs {
        path: String,
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("image {image} must be resolved through the image store first")]
    Unresolved { image: String },
    #[error("mount {fstype} on {target} (options {options:?}) failed")]
    Mount {
        fstype: String,
        target: String,
        options: String,
        #[source]
        source: io::Error,
    },
    #[error("bind mount {source_path} on {target} failed")]
    Bind {
        source_path: String,
        target: String,
        #[source]
        source: io::Error,
    },
    #[error("making {target} read-only failed")]
    Remount {
        target: String,
        #[source]
        source: io::Error,
    },
    #[error("moving mount {from} to {to} failed")]
    Move {
        from: String,
        to: String,
        #[source]
        source: io::Error,
    },
    #[error("making the mount tree private failed")]
    MakePrivate(#[source] io::Error),
    #[error("pivot_root into {new_root} failed")]
    PivotRoot {
        new_root: String,
        #[source]
        source: io::Error,
    },
    #[error("detaching the old root failed")]
    DetachOldRoot(#[source] io::Error),
    #[error("mount target {path} in the image is a symlink or not a directory; refusing to mount through it")]
    UnsafeMountTarget { path: String },
    #[error("creating {path} failed")]
    Mkdir {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("creating device node {path} failed")]
    Mknod {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("creating symlink {path} failed")]
    Symlink {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("setting the hostname to {name:?} failed")]
    Hostname {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("bringing up loopback failed")]
    Loopback(#[source] io::Error),
    #[error("preparing the host image view at {path} failed")]
    HostImage {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("overlay mount options are {len} bytes, over the kernel's page-size limit; the image has too many layers")]
    OverlayOptionsTooLong { len: usize },
}

/// Converts a nix errno into `io::Error` for our `#[source]`s.
pub(crate) fn io_err(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}
