//! Safe wrapper over the `openat2(2)` system call.
//!
//! `openat2` is the scoped path resolver that the sandbox file API is built on: with
//! [`RESOLVE_IN_ROOT`] the kernel resolves the whole path, symlinks and `..` included, as if
//! `dirfd` were `/`, in one call and without a check-then-open window (see
//! <https://man7.org/linux/man-pages/man2/openat2.2.html>). It needs Linux 5.6 or newer;
//! older kernels return `ENOSYS`.
//!
//! This file holds the `unsafe` code for it; callers get a safe function that returns an
//! [`OwnedFd`].

use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

/// `RESOLVE_*` flags for the `resolve` argument of [`openat2`], re-exported from `libc`.
///
/// * [`RESOLVE_IN_ROOT`]: treat `dirfd` as the root (`/`, absolute symlinks and `..` all stay
///   at or below it).
/// * [`RESOLVE_BENEATH`]: fail with `EXDEV` instead of leaving `dirfd`.
/// * [`RESOLVE_NO_MAGICLINKS`]: fail with `ELOOP` on procfs magic links (`/proc/*/root`,
///   `/proc/*/fd/*`, `/proc/*/exe`, ...).
/// * [`RESOLVE_NO_SYMLINKS`]: fail with `ELOOP` on any symlink.
/// * [`RESOLVE_NO_XDEV`]: fail with `EXDEV` on any mount crossing.
/// * [`RESOLVE_CACHED`]: fail with `EAGAIN` unless the lookup can be done from the dcache.
pub use libc::{RESOLVE_BENEATH, RESOLVE_CACHED, RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS, RESOLVE_NO_SYMLINKS, RESOLVE_NO_XDEV};

/// Opens `path` relative to `dirfd` with `openat2(2)`.
///
/// * `flags` are the usual `O_*` open flags. `O_CLOEXEC` is always added, so no descriptor
///   opened here can leak across an `exec`.
/// * `mode` is the creation mode. The kernel rejects a non-zero `mode` with `EINVAL` unless
///   `flags` contains `O_CREAT` or `O_TMPFILE`, so pass `0` otherwise.
/// * `resolve` is a bitwise OR of the `RESOLVE_*` constants re-exported here. Unknown bits
///   give `EINVAL`.
///
/// Errors are returned as the raw errno. Notable ones: `EAGAIN` when a `RESOLVE_IN_ROOT` or
/// `RESOLVE_BENEATH` lookup of `..` raced with a rename or mount elsewhere on the system
/// (callers retry), `ELOOP` for refused symlinks or magic links, and `ENOSYS` on kernels
/// older than 5.6.
pub fn openat2(dirfd: BorrowedFd<'_>, path: &CStr, flags: i32, mode: u32, resolve: u64) -> nix::Result<OwnedFd> {
    // open_how.flags is a u64. A negative i32 would sign-extend into the upper bits, which the
    // kernel rejects anyway, so refuse it here instead of casting.
    let flags = u64::try_from(flags | libc::O_CLOEXEC).map_err(|_| Errno::EINVAL)?;
    // `open_how` is an extensible struct (`#[non_exhaustive]` in libc): fields that later
    // kernels add must be zero, which means "default behaviour", so start from all zeroes.
    // SAFETY: `open_how` consists only of integer fields, for which the all-zero bit pattern
    // is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = flags;
    how.mode = u64::from(mode);
    how.resolve = resolve;
    // SAFETY: all arguments are valid for the duration of the call: `dirfd` is a live
    // descriptor borrowed for this call, `path` is a NUL-terminated C string, and `&how` is a
    // fully initialised `open_how` whose exact size is passed as the last argument, so the
    // kernel reads no more than `size_of::<open_how>()` bytes from it. The kernel keeps no
    // pointer past the return, and the call touches no memory owned by Rust.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dirfd.as_raw_fd(),
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    let ret = Errno::result(ret)?;
    // A descriptor always fits in an int; the conversion cannot fail in practice.
    let fd = RawFd::try_from(ret).map_err(|_| Errno::EOVERFLOW)?;
    // SAFETY: on success openat2 returns a new descriptor that no other object in this
    // process owns, so handing it to `OwnedFd` (which closes it exactly once) is sound.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::fd::AsFd;

    use nix::fcntl::{fcntl, FcntlArg, FdFlag};

    use super::*;

    fn open_dir(path: &std::path::Path) -> OwnedFd {
        fs::File::open(path).expect("open test dir").into()
    }

    #[test]
    fn in_root_clamps_dotdot_and_absolute_paths() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("etc/name"), b"inside").unwrap();
        fs::write(tmp.path().join("outside"), b"outside").unwrap();
        let dir = open_dir(&root);

        let fd = openat2(dir.as_fd(), c"../../../../etc/name", libc::O_RDONLY, 0, RESOLVE_IN_ROOT).unwrap();
        assert_eq!(fs::read_to_string(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap(), "inside");
        // The same path without RESOLVE_IN_ROOT and with RESOLVE_BENEATH is refused.
        assert_eq!(openat2(dir.as_fd(), c"../outside", libc::O_RDONLY, 0, RESOLVE_BENEATH).unwrap_err(), Errno::EXDEV);
        assert_eq!(openat2(dir.as_fd(), c"/outside", libc::O_RDONLY, 0, RESOLVE_IN_ROOT).unwrap_err(), Errno::ENOENT);
    }

    #[test]
    fn cloexec_is_always_set() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = open_dir(tmp.path());
        let fd = openat2(dir.as_fd(), c".", libc::O_PATH, 0, 0).unwrap();
        let fl = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFD).unwrap();
        assert!(FdFlag::from_bits_truncate(fl).contains(FdFlag::FD_CLOEXEC));
    }

    #[test]
    fn bad_arguments_are_einval() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = open_dir(tmp.path());
        // Negative flags never reach the kernel.
        assert_eq!(openat2(dir.as_fd(), c".", -1, 0, 0).unwrap_err(), Errno::EINVAL);
        // Unknown resolve bits and a mode without O_CREAT are rejected by the kernel.
        assert_eq!(openat2(dir.as_fd(), c".", libc::O_PATH, 0, 1 << 40).unwrap_err(), Errno::EINVAL);
        assert_eq!(openat2(dir.as_fd(), c".", libc::O_RDONLY, 0o644, 0).unwrap_err(), Errno::EINVAL);
    }

    #[test]
    fn creates_with_mode() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = open_dir(tmp.path());
        let fd = openat2(dir.as_fd(), c"new", libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, 0o600, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)
            .unwrap();
        drop(fd);
        assert!(tmp.path().join("new").is_file());
    }
}
