//! btrfs subvolume ioctls (create, snapshot, destroy): one syscall each,
//! no btrfs-progs process on the hot path of create and reset.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

const BTRFS_IOCTL_MAGIC: u8 = 0x94;
const NAME_MAX_V1: usize = 4088;
const NAME_MAX_V2: usize = 4040;

/// `struct btrfs_ioctl_vol_args`.
#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; NAME_MAX_V1],
}

/// `struct btrfs_ioctl_vol_args_v2`.
#[repr(C)]
struct VolArgsV2 {
    fd: i64,
    transid: u64,
    flags: u64,
    unused: [u64; 4],
    name: [u8; NAME_MAX_V2],
}

nix::ioctl_write_ptr!(ioc_subvol_create, BTRFS_IOCTL_MAGIC, 14, VolArgs);
nix::ioctl_write_ptr!(ioc_snap_destroy, BTRFS_IOCTL_MAGIC, 15, VolArgs);
nix::ioctl_write_ptr!(ioc_snap_create_v2, BTRFS_IOCTL_MAGIC, 23, VolArgsV2);

fn copy_name(dst: &mut [u8], name: &CStr) -> io::Result<()> {
    let bytes = name.to_bytes();
    if bytes.is_empty() || bytes.len() >= dst.len() || bytes.contains(&b'/') {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    dst[..bytes.len()].copy_from_slice(bytes);
    Ok(())
}

fn errno(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// Creates the empty subvolume `name` in the directory `parent`.
pub fn subvol_create(parent: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    let mut args = VolArgs { fd: 0, name: [0; NAME_MAX_V1] };
    copy_name(&mut args.name, name)?;
    // SAFETY: the argument is a fully initialised vol_args that lives for
    // the call; the kernel only reads it.
    unsafe { ioc_subvol_create(parent.as_raw_fd(), &args) }.map(drop).map_err(errno)
}

/// Snapshots the subvolume open at `source` as `name` in `parent`
/// (writable).
pub fn snapshot(source: BorrowedFd<'_>, parent: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    let mut args = VolArgsV2 { fd: i64::from(source.as_raw_fd()), transid: 0, flags: 0, unused: [0; 4], name: [0; NAME_MAX_V2] };
    copy_name(&mut args.name, name)?;
    // SAFETY: as above; `fd` names a descriptor we borrow for the call.
    unsafe { ioc_snap_create_v2(parent.as_raw_fd(), &args) }.map(drop).map_err(errno)
}

/// Deletes the subvolume `name` in `parent`, contents and all, at once
/// (the space is reclaimed by the filesystem in the background).
pub fn subvol_destroy(parent: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    let mut args = VolArgs { fd: 0, name: [0; NAME_MAX_V1] };
    copy_name(&mut args.name, name)?;
    // SAFETY: as above.
    unsafe { ioc_snap_destroy(parent.as_raw_fd(), &args) }.map(drop).map_err(errno)
}
