//! Host-side access to a sandbox's filesystem, confined to the sandbox root.
//!
//! The runtime reads, writes and copies files of a live sandbox from the host (the runtime
//! runs as host root). The sandbox is hostile: it can plant symlinks that point anywhere,
//! swap directories for symlinks while we work, and create FIFOs, device nodes or very deep
//! trees. Every path therefore goes through one rule (SECURITY.md invariant 6, cases F11–F15):
//!
//! * **Paths are sandbox paths.** `"/etc/passwd"`, `"etc/passwd"` and `"../../etc/passwd"`
//!   all name the sandbox's `/etc/passwd`. A caller-supplied path is resolved in **one kernel
//!   call**, `openat2(root, path, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`, so symlinks and
//!   `..` resolve as if the process were chrooted into the sandbox and no check-then-open
//!   window exists. `RESOLVE_NO_XDEV` is deliberately not used: volumes are bind mounts
//!   inside the root and must work.
//! * **Inside a tree copy, nothing is resolved by path.** Each entry is opened relative to
//!   the descriptor of its parent directory with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS` and
//!   `O_NOFOLLOW`, one component at a time. A sandbox process that swaps a directory for a
//!   symlink mid-copy gets us an `ELOOP` error, never a write outside the root. Symlinks are
//!   recreated with `symlinkat`, never followed.
//! * **Regular files only.** Files are opened with `O_NONBLOCK | O_NOCTTY` (a FIFO cannot
//!   block us, a tty cannot become our controlling terminal) and `fstat`ed before any byte
//!   is read or written. Writes open without `O_TRUNC` and truncate only after that check.
//!   Device nodes are refused by the `S_IFREG` check; their `open` is refused earlier by the
//!   kernel because sandbox mounts are `nodev` (invariant 2).
//! * **No kernel pseudo-filesystems.** After opening, `fstatfs` refuses procfs, sysfs,
//!   cgroupfs, debugfs and similar ([`FilesError::PseudoFilesystem`]). Their files look
//!   regular, but reading or writing them as host root is a confused deputy: the sandbox can
//!   bind-mount its own procfs files (for example a sysctl under `/proc/sys`) wherever it
//!   likes, and a host-root write there changes the host kernel. Inside a copied tree, such
//!   subtrees are skipped instead.
//! * **Bounded.** [`RootFs::read_file`] takes a byte limit; tree copies stop at
//!   [`MAX_COPY_DEPTH`] levels (each level holds two descriptors open); a file is copied up
//!   to the size it had when it was opened, so a file that keeps growing cannot make a copy
//!   run forever.
//!
//! Errors carry the sandbox path as the caller gave it (for entries inside a copied tree,
//! that path followed by the entry's relative path) and never a host path of the sandbox
//! root, which this module does not know.
//!
//! Files that the API creates are owned by the runtime's credentials. Ownership is never
//! copied.

use std::ffi::{CStr, CString, OsStr};
use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{readlinkat, AtFlags};
use nix::sys::stat::{fstatat, mkdirat, Mode};
use nix::sys::statfs::fstatfs;
use nix::unistd::{symlinkat, unlinkat, UnlinkatFlags};

use crate::sys::openat2::{openat2, RESOLVE_BENEATH, RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS, RESOLVE_NO_SYMLINKS};

/// Result type of this module.
pub type Result<T> = std::result::Result<T, FilesError>;

/// Longest sandbox path accepted, in bytes (`PATH_MAX` minus the terminating NUL).
pub const MAX_PATH_LEN: usize = 4095;

/// Longest single path component accepted, in bytes (`NAME_MAX`).
pub const MAX_NAME_LEN: usize = 255;

/// Deepest directory nesting that [`RootFs::copy_to`] and [`RootFs::copy_from`] will copy.
///
/// The walk holds two descriptors per level (source and destination directory), so this
/// bounds descriptor use at about `2 * MAX_COPY_DEPTH` per copy, and bounds recursion depth.
pub const MAX_COPY_DEPTH: usize = 128;

/// Resolution of a caller path: scoped to the root, `/proc` magic links refused.
const IN_ROOT: u64 = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;

/// Resolution of one component relative to a directory we already hold: no symlinks at all.
const CHILD: u64 = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;

/// How often a lookup is retried after `EAGAIN`/`EINTR`. A scoped lookup of `..` fails with
/// `EAGAIN` when any rename or mount happened on the system during the walk.
const LOOKUP_RETRIES: usize = 16;

/// Mode of directories that [`RootFs::write_file`] and [`RootFs::copy_to`] create as
/// missing parents (before the umask).
const PARENT_DIR_MODE: u32 = 0o755;

/// `f_type` values (from `linux/magic.h`) of kernel interface filesystems whose files the
/// API refuses to read or write.
const PSEUDO_FILESYSTEMS: &[u64] = &[
    0x9fa0,      // PROC_SUPER_MAGIC
    0x6265_6572, // SYSFS_MAGIC
    0x0027_e0eb, // CGROUP_SUPER_MAGIC
    0x6367_7270, // CGROUP2_SUPER_MAGIC
    0x6462_6720, // DEBUGFS_MAGIC
    0x7472_6163, // TRACEFS_MAGIC
    0x7363_6673, // SECURITYFS_MAGIC
    0xcafe_4a11, // BPF_FS_MAGIC
    0xf97c_ff8c, // SELINUX_MAGIC
    0x4341_5d53, // SMACK_MAGIC
    0x6e73_6673, // NSFS_MAGIC
    0xde5e_81e4, // EFIVARFS_MAGIC
    0x6265_6570, // CONFIGFS_MAGIC
    0x6165_676c, // PSTOREFS_MAGIC
    0x4249_4e4d, // BINFMTFS_MAGIC
    0x6573_5543, // FUSE_CTL_SUPER_MAGIC
    0x0765_5821, // RDTGROUP_SUPER_MAGIC
];

/// Errors of the sandbox file API, named after the step that failed.
///
/// `path` is always the sandbox path as the caller gave it (inside a copied tree, followed by
/// the entry's relative path). `host` fields are caller-supplied host paths.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// The sandbox path is empty, contains a NUL byte, or is too long.
    #[error("invalid sandbox path {path:?}: {reason}")]
    InvalidPath {
        /// The path as given.
        path: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A caller-supplied host path cannot be used.
    #[error("invalid host path {host:?}: {reason}")]
    InvalidHostPath {
        /// The host path as given.
        host: PathBuf,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// The path, or one of its parents, does not exist in the sandbox.
    #[error("{path:?} does not exist in the sandbox")]
    NotFound {
        /// Sandbox path.
        path: String,
    },
    /// The path names something other than a regular file: a directory, symlink (where
    /// symlinks are not followed), FIFO, socket or device.
    #[error("{path:?} in the sandbox is not a regular file")]
    NotRegularFile {
        /// Sandbox path.
        path: String,
    },
    /// A host path that must be a regular file or directory is something else.
    #[error("host path {host:?} is not a regular file or directory")]
    HostNotRegularFile {
        /// Host path.
        host: PathBuf,
        /// Sandbox path of the copy.
        path: String,
    },
    /// A component of the path that must be a directory is not one.
    #[error("a component of {path:?} in the sandbox is not a directory")]
    NotADirectory {
        /// Sandbox path.
        path: String,
    },
    /// The file is larger than the caller's limit.
    #[error("{path:?} in the sandbox is larger than the limit of {limit} bytes")]
    TooLarge {
        /// Sandbox path.
        path: String,
        /// The limit in bytes.
        limit: u64,
    },
    /// A copied tree is nested deeper than [`MAX_COPY_DEPTH`].
    #[error("{path:?}: directory tree is deeper than {limit} levels")]
    TooDeep {
        /// Sandbox path of the directory that was one level too deep.
        path: String,
        /// The depth limit.
        limit: usize,
    },
    /// The path resolves into a kernel pseudo-filesystem (procfs, sysfs, cgroupfs, ...).
    #[error("{path:?} is on a kernel pseudo-filesystem (procfs, sysfs, ...); refused")]
    PseudoFilesystem {
        /// Sandbox path.
        path: String,
    },
    /// `openat2` failed for a reason not covered by a more specific variant (for example
    /// `ELOOP` for a refused magic link or a symlink loop, `EACCES`, `ENAMETOOLONG`).
    #[error("open {path:?} in the sandbox")]
    Open {
        /// Sandbox path.
        path: String,
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// `fstat`, `fstatat` or `fstatfs` failed.
    #[error("stat {path:?} in the sandbox")]
    Stat {
        /// Sandbox path.
        path: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Reading file contents from the sandbox failed.
    #[error("read {path:?} in the sandbox")]
    Read {
        /// Sandbox path.
        path: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Writing (or truncating) a file in the sandbox failed.
    #[error("write {path:?} in the sandbox")]
    Write {
        /// Sandbox path.
        path: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// `mkdirat` failed.
    #[error("mkdir {path:?} in the sandbox")]
    Mkdir {
        /// Sandbox path.
        path: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// `readlinkat` or `symlinkat` failed.
    #[error("symlink {path:?} in the sandbox")]
    Symlink {
        /// Sandbox path.
        path: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Listing a directory in the sandbox failed.
    #[error("read directory {path:?} in the sandbox")]
    ReadDir {
        /// Sandbox path.
        path: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Setting permission bits in the sandbox failed.
    #[error("chmod {path:?} in the sandbox")]
    Chmod {
        /// Sandbox path.
        path: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A host-side step of [`RootFs::copy_to`] or [`RootFs::copy_from`] failed.
    #[error("copy between host {host:?} and sandbox {path:?}")]
    Copy {
        /// Host path of the entry.
        host: PathBuf,
        /// Sandbox path of the entry.
        path: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// What kind of object a sandbox path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// Regular file.
    File,
    /// Directory.
    Directory,
    /// Symbolic link (only reported for the last component, see [`RootFs::metadata`]).
    Symlink,
    /// FIFO, socket, character or block device.
    Other,
}

impl From<std::fs::FileType> for FileKind {
    fn from(ft: std::fs::FileType) -> Self {
        if ft.is_file() {
            FileKind::File
        } else if ft.is_dir() {
            FileKind::Directory
        } else if ft.is_symlink() {
            FileKind::Symlink
        } else {
            FileKind::Other
        }
    }
}

/// Metadata of a sandbox path, as returned by [`RootFs::metadata`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStat {
    /// Object kind.
    pub kind: FileKind,
    /// Size in bytes (for a symlink, the length of its target).
    pub size: u64,
    /// Permission bits, including setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
}

/// A sandbox's root filesystem, held as a directory descriptor.
///
/// All methods resolve their sandbox path inside this root; see the module documentation
/// for the rules.
#[derive(Debug)]
pub struct RootFs {
    root: OwnedFd,
}

impl RootFs {
    /// Wraps a descriptor of the sandbox root.
    ///
    /// `root` should be opened `O_PATH | O_DIRECTORY | O_CLOEXEC`; in production it comes from
    /// `/proc/<sandbox init pid>/root`, so it is the merged root as the sandbox's own mount
    /// namespace sees it (masks and volumes included).
    pub fn new(root: OwnedFd) -> Self {
        Self { root }
    }

    /// Opens `host_path` with `O_PATH | O_DIRECTORY | O_CLOEXEC` and wraps it.
    ///
    /// `host_path` is trusted (it is chosen by the runtime) and is resolved normally.
    pub fn open_dir(host_path: &Path) -> io::Result<Self> {
        let dir = OpenOptions::new().read(true).custom_flags(libc::O_PATH | libc::O_DIRECTORY).open(host_path)?;
        Ok(Self::new(dir.into()))
    }

    /// Reads a whole regular file of at most `limit` bytes.
    ///
    /// The last component follows symlinks (inside the root). Fails with
    /// [`FilesError::NotRegularFile`] for directories, FIFOs, sockets and devices (promptly:
    /// the open is non-blocking), with [`FilesError::TooLarge`] if the file is, or grows to,
    /// more than `limit` bytes, and with [`FilesError::PseudoFilesystem`] for procfs, sysfs
    /// and the like.
    pub fn read_file(&self, path: &str, limit: u64) -> Result<Vec<u8>> {
        let cpath = sandbox_path(path)?;
        // One scoped lookup; O_NONBLOCK so a FIFO cannot block the open, O_NOCTTY so a tty
        // cannot become our controlling terminal.
        let fd = self.resolve(&cpath, libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY).map_err(|e| open_error(path, e))?;
        let file = File::from(fd);
        // Refuse anything but a regular file on a real filesystem before reading a byte.
        let size = check_sandbox_file(&file, path)?;
        if size > limit {
            return Err(FilesError::TooLarge { path: path.to_owned(), limit });
        }
        // Read at most limit + 1 bytes: the file may grow after the fstat.
        let mut data = Vec::new();
        // Preallocation is an optimisation only; a failed reservation is not an error.
        let _ = data.try_reserve_exact(usize::try_from(size).unwrap_or(0));
        (&file)
            .take(limit.saturating_add(1))
            .read_to_end(&mut data)
            .map_err(|source| FilesError::Read { path: path.to_owned(), source })?;
        if u64::try_from(data.len()).map_or(true, |n| n > limit) {
            return Err(FilesError::TooLarge { path: path.to_owned(), limit });
        }
        Ok(data)
    }

    /// Writes `data` to a regular file, creating it and any missing parent directories.
    ///
    /// Parents are resolved and created as by [`RootFs::mkdir_all`] (following symlinks
    /// inside the root, new ones with mode `0o755` minus the umask). The last component is
    /// never followed: if it is a symlink, directory, FIFO, socket or device, the call fails
    /// with [`FilesError::NotRegularFile`] and nothing is written. An existing regular file
    /// is truncated and rewritten in place and keeps its mode; a new file gets exactly
    /// `mode & 0o1777` (setuid and setgid are dropped; the umask does not apply).
    pub fn write_file(&self, path: &str, data: &[u8], mode: u32) -> Result<()> {
        sandbox_path(path)?;
        let (parent, name) = split_parent(path).ok_or_else(|| FilesError::InvalidPath {
            path: path.to_owned(),
            reason: "path does not name a file (it ends in '/', '.' or '..')",
        })?;
        let cname = component(path, OsStr::new(name))?;
        // Step 1: an O_PATH descriptor of the parent directory, resolved inside the root.
        let dir = self.mkdir_all_inner(path, parent, PARENT_DIR_MODE)?;
        // Step 2: create or open the last component relative to that descriptor, never
        // following a symlink (single component, RESOLVE_NO_SYMLINKS and O_NOFOLLOW).
        let (fd, created) = create_file(dir.as_fd(), &cname).map_err(|e| create_error(path, e))?;
        let file = File::from(fd);
        // Step 3: only a regular file on a real filesystem may be written.
        check_sandbox_file(&file, path)?;
        // Step 4: truncate now, after the checks, rather than with O_TRUNC at open time.
        let write_err = |source| FilesError::Write { path: path.to_owned(), source };
        file.set_len(0).map_err(write_err)?;
        (&file).write_all(data).map_err(write_err)?;
        // Step 5: a new file gets the requested mode independent of the umask.
        if created {
            set_mode(&file, mode).map_err(|source| FilesError::Chmod { path: path.to_owned(), source })?;
        }
        Ok(())
    }

    /// Creates the directory `path` and any missing parents, like `mkdir -p`, and returns an
    /// `O_PATH` descriptor of it.
    ///
    /// Existing components may be symlinks; they are followed inside the root. Each missing
    /// component is created with `mkdirat` on the descriptor of its parent, and the path is
    /// then resolved again with one scoped lookup, so a racing sandbox process can change
    /// *which* in-root directory is used but never make it leave the root. New directories
    /// get `mode & 0o1777` minus the umask. A component that exists as a non-directory
    /// (including a dangling symlink) fails with [`FilesError::NotADirectory`] or
    /// [`FilesError::NotFound`].
    pub fn mkdir_all(&self, path: &str, mode: u32) -> Result<OwnedFd> {
        sandbox_path(path)?;
        self.mkdir_all_inner(path, path, mode)
    }

    /// Resolves `path` inside the root and returns an `O_PATH` descriptor of it.
    ///
    /// The last component follows symlinks (inside the root); magic links are refused. The
    /// runtime uses this for mount targets, so a mount always lands inside the root.
    pub fn open_path(&self, path: &str) -> Result<OwnedFd> {
        let cpath = sandbox_path(path)?;
        self.resolve(&cpath, libc::O_PATH).map_err(|e| open_error(path, e))
    }

    /// Returns the kind, size and permission bits of `path`, like `lstat`.
    ///
    /// Parent components follow symlinks inside the root; the last component is not
    /// followed, so a symlink is reported as [`FileKind::Symlink`]. This matches
    /// [`RootFs::write_file`], which never writes through a final symlink.
    pub fn metadata(&self, path: &str) -> Result<FileStat> {
        let cpath = sandbox_path(path)?;
        // O_PATH | O_NOFOLLOW yields a handle on the symlink itself rather than ELOOP.
        let fd = self.resolve(&cpath, libc::O_PATH | libc::O_NOFOLLOW).map_err(|e| open_error(path, e))?;
        let meta = File::from(fd).metadata().map_err(|source| FilesError::Stat { path: path.to_owned(), source })?;
        Ok(FileStat { kind: meta.file_type().into(), size: meta.len(), mode: meta.mode() & 0o7777 })
    }

    /// Copies a host file or directory tree into the sandbox, like `cp -r HOST_SRC PATH`.
    ///
    /// * If `path` resolves (inside the root) to an existing directory, the source is copied
    ///   into it as `path/<basename of host_src>`. Otherwise the copy is created at `path`
    ///   itself, and missing parents of `path` are created as by [`RootFs::write_file`].
    /// * `host_src` is trusted and resolved normally (a top-level symlink is followed).
    ///   Inside a copied tree, symlinks are recreated as symlinks with the same target,
    ///   FIFOs, sockets and devices are skipped, and hard links become separate files.
    /// * Files and directories that the copy creates get the source's permission bits minus
    ///   setuid/setgid (the umask does not apply). Existing files are overwritten in place
    ///   and keep their mode; existing directories are merged into; an existing symlink is
    ///   replaced only by a symlink. Ownership is not copied.
    /// * The sandbox side is walked with descriptor-relative calls only; a sandbox process
    ///   racing the copy can make it fail but cannot redirect it outside the root.
    pub fn copy_to(&self, host_src: &Path, path: &str) -> Result<()> {
        let cpath = sandbox_path(path)?;
        let host_err = |source| FilesError::Copy { host: host_src.to_owned(), path: path.to_owned(), source };
        // Step 1: open the host source. O_NONBLOCK so a host FIFO cannot block us.
        let src = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY).open(host_src).map_err(host_err)?;
        let src_meta = src.metadata().map_err(host_err)?;
        if !src_meta.is_file() && !src_meta.is_dir() {
            return Err(FilesError::HostNotRegularFile { host: host_src.to_owned(), path: path.to_owned() });
        }
        // Step 2: choose the destination directory and name, cp-style. The directory is
        // resolved inside the root; everything below it is descriptor-relative.
        let (dst_dir, name, shown) = match self.resolve(&cpath, libc::O_PATH | libc::O_DIRECTORY) {
            Ok(dir) => {
                let base = host_src.file_name().ok_or_else(|| FilesError::InvalidHostPath {
                    host: host_src.to_owned(),
                    reason: "has no final component to name the copy",
                })?;
                let shown = child_path(path, base);
                (dir, component(&shown, base)?, shown)
            }
            Err(Errno::ENOENT | Errno::ENOTDIR) => {
                let (parent, name) = split_parent(path).ok_or_else(|| FilesError::InvalidPath {
                    path: path.to_owned(),
                    reason: "path does not name a destination (it ends in '/', '.' or '..')",
                })?;
                let dir = self.mkdir_all_inner(path, parent, PARENT_DIR_MODE)?;
                (dir, component(path, OsStr::new(name))?, path.to_owned())
            }
            Err(e) => return Err(open_error(path, e)),
        };
        // Step 3: never write into a pseudo-filesystem.
        refuse_pseudo_fs(dst_dir.as_fd(), path)?;
        // Step 4: copy.
        let copier = Copier { direction: Direction::ToSandbox };
        let loc = Loc { path: shown, host: host_src.to_owned() };
        if src_meta.is_dir() {
            copier.copy_dir(src.into(), src_meta.mode(), dst_dir.as_fd(), &name, &loc, 1)
        } else {
            copier.copy_file(&src, &src_meta, dst_dir.as_fd(), &name, &loc)
        }
    }

    /// Merges the contents of the host directory `host_dir` into the directory `path`
    /// (created with its parents when missing), like `cp -r HOST_DIR/. PATH`, with the
    /// rules of [`RootFs::copy_to`] for every entry (a top-level entry that is a symlink is
    /// recreated as a symlink too: nothing of `host_dir` is followed). `envbox build` copies
    /// a staged COPY source this way.
    pub fn copy_contents(&self, host_dir: &Path, path: &str) -> Result<()> {
        sandbox_path(path)?;
        let host_err = |source| FilesError::Copy { host: host_dir.to_owned(), path: path.to_owned(), source };
        let src = OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW).open(host_dir).map_err(host_err)?;
        let dst = self.mkdir_all_inner(path, path, PARENT_DIR_MODE)?;
        refuse_pseudo_fs(dst.as_fd(), path)?;
        let copier = Copier { direction: Direction::ToSandbox };
        let loc = Loc { path: path.to_owned(), host: host_dir.to_owned() };
        for entry in list_dir(src.as_fd()).map_err(|e| host_err(e.into()))? {
            let child = loc.child(OsStr::from_bytes(entry.to_bytes()));
            copier.copy_entry(src.as_fd(), dst.as_fd(), &entry, &child, 1)?;
        }
        Ok(())
    }

    /// Sets the owner of `path` (not following a final symlink) and, unless it is a
    /// symlink, its permission bits.
    pub fn set_owner_mode(&self, path: &str, owner: Option<(u32, u32)>, mode: Option<u32>) -> Result<()> {
        let cpath = sandbox_path(path)?;
        let fd = self.resolve(&cpath, libc::O_PATH | libc::O_NOFOLLOW).map_err(|e| open_error(path, e))?;
        if let Some((uid, gid)) = owner {
            nix::unistd::fchownat(
                Some(fd.as_raw_fd()),
                "",
                Some(nix::unistd::Uid::from_raw(uid)),
                Some(nix::unistd::Gid::from_raw(gid)),
                nix::unistd::FchownatFlags::AT_EMPTY_PATH,
            )
            .map_err(|e| FilesError::Chmod { path: path.to_owned(), source: e.into() })?;
        }
        if let Some(mode) = mode {
            let meta = File::from(fd.try_clone().map_err(|source| FilesError::Stat { path: path.to_owned(), source })?)
                .metadata()
                .map_err(|source| FilesError::Stat { path: path.to_owned(), source })?;
            if !meta.file_type().is_symlink() {
                // An O_PATH handle cannot be fchmod-ed; its /proc/self/fd link reopens the
                // very inode (never a path lookup in the sandbox).
                let proc_path = format!("/proc/self/fd/{}", fd.as_raw_fd());
                std::fs::set_permissions(proc_path, Permissions::from_mode(mode & 0o7777))
                    .map_err(|source| FilesError::Chmod { path: path.to_owned(), source })?;
            }
        }
        Ok(())
    }

    /// Copies a sandbox file or directory tree to the host, like `cp -r PATH HOST_DST`.
    ///
    /// * `path` is resolved inside the root (a top-level symlink is followed inside the
    ///   root). It must be a regular file or a directory, else [`FilesError::NotRegularFile`];
    ///   a pseudo-filesystem is refused with [`FilesError::PseudoFilesystem`].
    /// * If `host_dst` is an existing directory, the copy goes into it as
    ///   `host_dst/<basename of path>`; otherwise it is created at `host_dst`, whose parent
    ///   must exist. An existing destination entry that is a symlink is never written through.
    /// * Inside the tree, sandbox symlinks are recreated as symlinks on the host (never
    ///   followed on either side), FIFOs, sockets, devices and pseudo-filesystem mounts are
    ///   skipped, entries that vanish during the copy are skipped, and each file is copied up
    ///   to the size it had when opened. Modes are preserved as for [`RootFs::copy_to`].
    ///
    /// There is no total byte budget: a sandbox can make this copy as much data as its disk
    /// quota allows (sparse files included).
    pub fn copy_from(&self, path: &str, host_dst: &Path) -> Result<()> {
        let cpath = sandbox_path(path)?;
        // Step 1: open the sandbox source with one scoped lookup.
        let src = self.resolve(&cpath, libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY).map_err(|e| open_error(path, e))?;
        let src = File::from(src);
        let src_meta = src.metadata().map_err(|source| FilesError::Stat { path: path.to_owned(), source })?;
        if !src_meta.is_file() && !src_meta.is_dir() {
            return Err(FilesError::NotRegularFile { path: path.to_owned() });
        }
        refuse_pseudo_fs(src.as_fd(), path)?;
        // Step 2: choose the host destination directory and name, cp-style. Host paths are
        // trusted; below the chosen directory everything is descriptor-relative.
        let host_err = |source| FilesError::Copy { host: host_dst.to_owned(), path: path.to_owned(), source };
        let (dst_dir, name, shown) = match std::fs::metadata(host_dst) {
            Ok(meta) if meta.is_dir() => {
                let base = basename(path).ok_or_else(|| FilesError::InvalidPath {
                    path: path.to_owned(),
                    reason: "has no final component to name the copy; \
                             give a host destination that does not exist yet",
                })?;
                let dir = open_host_dir(host_dst).map_err(host_err)?;
                // Display only; nothing is opened by this joined path.
                let shown = host_dst.join(base);
                (dir, component(path, OsStr::new(base))?, shown)
            }
            Ok(_) => self.host_parent(host_dst, path)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => self.host_parent(host_dst, path)?,
            Err(e) => return Err(host_err(e)),
        };
        // Step 3: copy.
        let copier = Copier { direction: Direction::FromSandbox };
        let loc = Loc { path: path.to_owned(), host: shown };
        if src_meta.is_dir() {
            copier.copy_dir(src.into(), src_meta.mode(), dst_dir.as_fd(), &name, &loc, 1)
        } else {
            copier.copy_file(&src, &src_meta, dst_dir.as_fd(), &name, &loc)
        }
    }

    /// Parent directory descriptor and final name of a host destination created at
    /// `host_dst` itself.
    fn host_parent(&self, host_dst: &Path, path: &str) -> Result<(OwnedFd, CString, PathBuf)> {
        let name = host_dst
            .file_name()
            .ok_or_else(|| FilesError::InvalidHostPath { host: host_dst.to_owned(), reason: "has no final component to name the copy" })?;
        let parent = match host_dst.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let dir = open_host_dir(parent).map_err(|source| FilesError::Copy { host: host_dst.to_owned(), path: path.to_owned(), source })?;
        let cname = CString::new(name.as_bytes())
            .map_err(|_| FilesError::InvalidHostPath { host: host_dst.to_owned(), reason: "contains a NUL byte" })?;
        Ok((dir, cname, host_dst.to_owned()))
    }

    /// One scoped lookup of a caller path, retried on `EAGAIN`/`EINTR`.
    fn resolve(&self, path: &CStr, flags: i32) -> nix::Result<OwnedFd> {
        retry(|| openat2(self.root.as_fd(), path, flags, 0, IN_ROOT))
    }

    /// `mkdir -p` of `target`, reporting errors against the caller's `path`.
    fn mkdir_all_inner(&self, path: &str, target: &str, mode: u32) -> Result<OwnedFd> {
        let dir_flags = libc::O_PATH | libc::O_DIRECTORY;
        // Fast path: the whole directory already exists.
        match self.resolve(&cstring(path, target)?, dir_flags) {
            Ok(dir) => return Ok(dir),
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(open_error(path, e)),
        }
        // Slow path: walk the components. `prefix` always names the directory `dir` should
        // be; it is resolved in one scoped lookup from the root each time, so symlinks and
        // `..` behave exactly as the kernel resolves them inside the root.
        let mut dir = self.resolve(c"/", dir_flags).map_err(|e| open_error(path, e))?;
        let mut prefix = String::with_capacity(target.len() + 1);
        for comp in target.split('/').filter(|c| !c.is_empty()) {
            prefix.push('/');
            prefix.push_str(comp);
            let cprefix = cstring(path, &prefix)?;
            dir = match self.resolve(&cprefix, dir_flags) {
                Ok(next) => next,
                Err(Errno::ENOENT) => {
                    // Missing: create it relative to the parent we hold (EEXIST means another
                    // process was faster, or a dangling symlink is in the way), then resolve
                    // the prefix again inside the root.
                    let ccomp = cstring(path, comp)?;
                    match mkdirat(Some(dir.as_raw_fd()), ccomp.as_c_str(), Mode::from_bits_truncate(mode & 0o1777)) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(FilesError::Mkdir { path: path.to_owned(), source: e.into() }),
                    }
                    self.resolve(&cprefix, dir_flags).map_err(|e| open_error(path, e))?
                }
                Err(e) => return Err(open_error(path, e)),
            };
        }
        Ok(dir)
    }
}

/// Which way a tree copy goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    ToSandbox,
    FromSandbox,
}

/// One side of a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Host,
    Sandbox,
}

/// The operation that failed, for error reporting.
#[derive(Debug, Clone, Copy)]
enum Step {
    Stat,
    Read,
    Write,
    Mkdir,
    Symlink,
    ReadDir,
    Chmod,
}

/// Display names of the entry being copied, for error messages only: nothing is ever
/// opened by these paths.
#[derive(Debug)]
struct Loc {
    path: String,
    host: PathBuf,
}

impl Loc {
    fn child(&self, name: &OsStr) -> Loc {
        Loc { path: child_path(&self.path, name), host: self.host.join(name) }
    }

    /// Error for a failed `step` on `side`.
    fn fail(&self, side: Side, step: Step, source: io::Error) -> FilesError {
        let path = self.path.clone();
        match (side, step) {
            (Side::Host, _) => FilesError::Copy { host: self.host.clone(), path, source },
            (Side::Sandbox, Step::Stat) => FilesError::Stat { path, source },
            (Side::Sandbox, Step::Read) => FilesError::Read { path, source },
            (Side::Sandbox, Step::Write) => FilesError::Write { path, source },
            (Side::Sandbox, Step::Mkdir) => FilesError::Mkdir { path, source },
            (Side::Sandbox, Step::Symlink) => FilesError::Symlink { path, source },
            (Side::Sandbox, Step::ReadDir) => FilesError::ReadDir { path, source },
            (Side::Sandbox, Step::Chmod) => FilesError::Chmod { path, source },
        }
    }

    /// Error for a failed open on `side`.
    fn fail_open(&self, side: Side, e: Errno) -> FilesError {
        match side {
            Side::Host => self.fail(side, Step::Stat, e.into()),
            Side::Sandbox => open_error(&self.path, e),
        }
    }

    /// Error for a failed create-or-open of a destination file on `side`.
    fn fail_create(&self, side: Side, e: Errno) -> FilesError {
        match side {
            Side::Host if is_not_regular_errno(e) => FilesError::HostNotRegularFile { host: self.host.clone(), path: self.path.clone() },
            Side::Host => self.fail(side, Step::Write, e.into()),
            Side::Sandbox => create_error(&self.path, e),
        }
    }
}

/// Descriptor-relative tree copier shared by [`RootFs::copy_to`] and [`RootFs::copy_from`].
#[derive(Debug)]
struct Copier {
    direction: Direction,
}

impl Copier {
    fn src_side(&self) -> Side {
        match self.direction {
            Direction::ToSandbox => Side::Host,
            Direction::FromSandbox => Side::Sandbox,
        }
    }

    fn dst_side(&self) -> Side {
        match self.direction {
            Direction::ToSandbox => Side::Sandbox,
            Direction::FromSandbox => Side::Host,
        }
    }

    /// Whether a source object opened from the sandbox is on a pseudo-filesystem (and so is
    /// skipped).
    fn skip_source(&self, fd: BorrowedFd<'_>, loc: &Loc) -> Result<bool> {
        if self.src_side() == Side::Host {
            return Ok(false);
        }
        on_pseudo_fs(fd).map_err(|e| loc.fail(Side::Sandbox, Step::Stat, e.into()))
    }

    /// Refuses a destination object created in the sandbox on a pseudo-filesystem.
    fn check_destination(&self, fd: BorrowedFd<'_>, loc: &Loc) -> Result<()> {
        if self.dst_side() == Side::Sandbox {
            refuse_pseudo_fs(fd, &loc.path)?;
        }
        Ok(())
    }

    /// Copies the entry `name` of `src_dir` to `dst_dir`, without following symlinks.
    fn copy_entry(&self, src_dir: BorrowedFd<'_>, dst_dir: BorrowedFd<'_>, name: &CStr, loc: &Loc, depth: usize) -> Result<()> {
        let src_side = self.src_side();
        // The type decides what to do; the object is re-checked after it is opened, because
        // it may have been swapped in between.
        let st = match fstatat(Some(src_dir.as_raw_fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            // Vanished while we were copying.
            Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(loc.fail(src_side, Step::Stat, e.into())),
        };
        match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => {
                let src = match open_child(src_dir, name, libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY, 0) {
                    Ok(fd) => File::from(fd),
                    Err(Errno::ENOENT) => return Ok(()),
                    Err(e) => return Err(loc.fail_open(src_side, e)),
                };
                let meta = src.metadata().map_err(|e| loc.fail(src_side, Step::Stat, e))?;
                // Swapped for a FIFO or device after the fstatat: skip it like one.
                if !meta.is_file() || self.skip_source(src.as_fd(), loc)? {
                    return Ok(());
                }
                self.copy_file(&src, &meta, dst_dir, name, loc)
            }
            libc::S_IFDIR => {
                let src = match open_child(src_dir, name, libc::O_RDONLY | libc::O_DIRECTORY, 0) {
                    Ok(fd) => fd,
                    Err(Errno::ENOENT) => return Ok(()),
                    Err(e) => return Err(loc.fail_open(src_side, e)),
                };
                if self.skip_source(src.as_fd(), loc)? {
                    return Ok(());
                }
                self.copy_dir(src, st.st_mode, dst_dir, name, loc, depth)
            }
            libc::S_IFLNK => {
                let target = match readlinkat(Some(src_dir.as_raw_fd()), name) {
                    Ok(target) => target,
                    Err(Errno::ENOENT) => return Ok(()),
                    Err(e) => return Err(loc.fail(src_side, Step::Symlink, e.into())),
                };
                make_symlink(&target, dst_dir, name).map_err(|e| loc.fail(self.dst_side(), Step::Symlink, e.into()))
            }
            // FIFOs, sockets and devices are not copied.
            _ => Ok(()),
        }
    }

    /// Copies the open regular file `src` to `name` in `dst_dir`.
    fn copy_file(&self, src: &File, src_meta: &std::fs::Metadata, dst_dir: BorrowedFd<'_>, name: &CStr, loc: &Loc) -> Result<()> {
        let (src_side, dst_side) = (self.src_side(), self.dst_side());
        // Create or open the destination without following a symlink, then check it.
        let (fd, created) = create_file(dst_dir, name).map_err(|e| loc.fail_create(dst_side, e))?;
        let dst = File::from(fd);
        let dst_meta = dst.metadata().map_err(|e| loc.fail(dst_side, Step::Stat, e))?;
        if !dst_meta.is_file() {
            return Err(match dst_side {
                Side::Sandbox => FilesError::NotRegularFile { path: loc.path.clone() },
                Side::Host => FilesError::HostNotRegularFile { host: loc.host.clone(), path: loc.path.clone() },
            });
        }
        self.check_destination(dst.as_fd(), loc)?;
        dst.set_len(0).map_err(|e| loc.fail(dst_side, Step::Write, e))?;
        // Copy at most the size seen at open time, so a growing file cannot keep us busy.
        let mut reader = src.take(src_meta.len());
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(loc.fail(src_side, Step::Read, e)),
            };
            (&dst).write_all(&buf[..n]).map_err(|e| loc.fail(dst_side, Step::Write, e))?;
        }
        if created {
            set_mode(&dst, src_meta.mode()).map_err(|e| loc.fail(dst_side, Step::Chmod, e))?;
        }
        Ok(())
    }

    /// Copies the open directory `src` (with permission bits `mode`) to `name` in
    /// `dst_dir`. `depth` is the nesting level of `src`, starting at 1.
    fn copy_dir(&self, src: OwnedFd, mode: u32, dst_dir: BorrowedFd<'_>, name: &CStr, loc: &Loc, depth: usize) -> Result<()> {
        let (src_side, dst_side) = (self.src_side(), self.dst_side());
        if depth > MAX_COPY_DEPTH {
            return Err(FilesError::TooDeep { path: loc.path.clone(), limit: MAX_COPY_DEPTH });
        }
        // Create the directory (private until its contents are in) and open it relative to
        // its parent, refusing a symlink in its place.
        let created = match mkdirat(Some(dst_dir.as_raw_fd()), name, Mode::S_IRWXU) {
            Ok(()) => true,
            Err(Errno::EEXIST) => false,
            Err(e) => return Err(loc.fail(dst_side, Step::Mkdir, e.into())),
        };
        let dst = open_child(dst_dir, name, libc::O_RDONLY | libc::O_DIRECTORY, 0).map_err(|e| match (dst_side, e) {
            (Side::Sandbox, Errno::ELOOP) => FilesError::NotADirectory { path: loc.path.clone() },
            _ => loc.fail_open(dst_side, e),
        })?;
        self.check_destination(dst.as_fd(), loc)?;
        // Copy each entry, descriptor-relative on both sides.
        for entry in list_dir(src.as_fd()).map_err(|e| loc.fail(src_side, Step::ReadDir, e.into()))? {
            let child = loc.child(OsStr::from_bytes(entry.to_bytes()));
            self.copy_entry(src.as_fd(), dst.as_fd(), &entry, &child, depth + 1)?;
        }
        // Set the mode last, so a read-only source directory does not block its own copy.
        if created {
            set_mode(&File::from(dst), mode).map_err(|e| loc.fail(dst_side, Step::Chmod, e))?;
        }
        Ok(())
    }
}

/// Validates a caller's sandbox path and converts it for the kernel.
fn sandbox_path(path: &str) -> Result<CString> {
    let invalid = |reason| FilesError::InvalidPath { path: path.to_owned(), reason };
    if path.is_empty() {
        return Err(invalid("path is empty"));
    }
    if path.len() > MAX_PATH_LEN {
        return Err(invalid("path is longer than 4095 bytes"));
    }
    if path.split('/').any(|c| c.len() > MAX_NAME_LEN) {
        return Err(invalid("a path component is longer than 255 bytes"));
    }
    CString::new(path).map_err(|_| invalid("path contains a NUL byte"))
}

/// Converts part of an already validated path.
fn cstring(path: &str, part: &str) -> Result<CString> {
    CString::new(part).map_err(|_| FilesError::InvalidPath { path: path.to_owned(), reason: "path contains a NUL byte" })
}

/// Converts a single path component.
fn component(path: &str, name: &OsStr) -> Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| FilesError::InvalidPath { path: path.to_owned(), reason: "path contains a NUL byte" })
}

/// Splits `path` into its parent (`"/"` if none) and final component. `None` if the final
/// component is empty (trailing `/`), `.` or `..`.
fn split_parent(path: &str) -> Option<(&str, &str)> {
    let (parent, name) = match path.rfind('/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => ("", path),
    };
    if name.is_empty() || name == "." || name == ".." {
        return None;
    }
    Some((if parent.is_empty() { "/" } else { parent }, name))
}

/// The last component of `path`, ignoring trailing slashes; `None` for `/`, `.` or `..`.
fn basename(path: &str) -> Option<&str> {
    let name = path.trim_end_matches('/').rsplit('/').next()?;
    (!name.is_empty() && name != "." && name != "..").then_some(name)
}

/// `parent/name` for display.
fn child_path(parent: &str, name: &OsStr) -> String {
    format!("{}/{}", parent.trim_end_matches('/'), name.to_string_lossy())
}

/// Retries `f` on `EAGAIN` (a scoped `..` lookup raced a rename or mount) and `EINTR`.
fn retry<T>(mut f: impl FnMut() -> nix::Result<T>) -> nix::Result<T> {
    let mut attempts = 0;
    loop {
        match f() {
            Err(Errno::EAGAIN | Errno::EINTR) if attempts < LOOKUP_RETRIES => attempts += 1,
            other => return other,
        }
    }
}

/// Opens the single component `name` of `dir`, refusing symlinks and `..`.
fn open_child(dir: BorrowedFd<'_>, name: &CStr, flags: i32, mode: u32) -> nix::Result<OwnedFd> {
    retry(|| openat2(dir, name, flags | libc::O_NOFOLLOW, mode, CHILD))
}

/// Creates `name` in `dir` (mode `0o600`) or opens the existing one for writing, never
/// following a symlink and never truncating. Returns whether it was created.
fn create_file(dir: BorrowedFd<'_>, name: &CStr) -> nix::Result<(OwnedFd, bool)> {
    let flags = libc::O_WRONLY | libc::O_NONBLOCK | libc::O_NOCTTY;
    // Two attempts cover an entry that disappears between the exclusive create and the open.
    for _ in 0..2 {
        match open_child(dir, name, flags | libc::O_CREAT | libc::O_EXCL, 0o600) {
            Ok(fd) => return Ok((fd, true)),
            Err(Errno::EEXIST) => {}
            Err(e) => return Err(e),
        }
        match open_child(dir, name, flags, 0) {
            Ok(fd) => return Ok((fd, false)),
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(e),
        }
    }
    Err(Errno::ENOENT)
}

/// Errnos from [`create_file`] that mean "exists and is not a regular file": a symlink
/// (`ELOOP`), a directory (`EISDIR`), or a FIFO without a reader (`ENXIO`).
fn is_not_regular_errno(e: Errno) -> bool {
    matches!(e, Errno::ELOOP | Errno::EISDIR | Errno::ENXIO)
}

/// Creates `name` as a symlink to `target` in `dir`, replacing an existing symlink (so that
/// a tree can be copied twice) but nothing else.
fn make_symlink(target: &OsStr, dir: BorrowedFd<'_>, name: &CStr) -> nix::Result<()> {
    match symlinkat(target, Some(dir.as_raw_fd()), name) {
        Err(Errno::EEXIST) => {
            let st = fstatat(Some(dir.as_raw_fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW)?;
            if st.st_mode & libc::S_IFMT != libc::S_IFLNK {
                return Err(Errno::EEXIST);
            }
            unlinkat(Some(dir.as_raw_fd()), name, UnlinkatFlags::NoRemoveDir)?;
            symlinkat(target, Some(dir.as_raw_fd()), name)
        }
        other => other,
    }
}

/// Names in the directory `dir`, without `.` and `..`.
/// The names in a directory (without `.` and `..`), from its descriptor.
pub(crate) fn list_dir(dir: BorrowedFd<'_>) -> nix::Result<Vec<CString>> {
    // A fresh open file description of the same directory, so the listing has its own offset.
    let fd = open_child(dir, c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    let mut listing = Dir::from(fd)?;
    let mut names = Vec::new();
    for entry in listing.iter() {
        let entry = entry?;
        let name = entry.file_name();
        if name != c"." && name != c".." {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

/// Opens a trusted host directory for descriptor-relative work below it.
fn open_host_dir(path: &Path) -> io::Result<OwnedFd> {
    let dir = OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY).open(path)?;
    Ok(dir.into())
}

/// Maps an `openat2` errno for a caller path to an error.
fn open_error(path: &str, e: Errno) -> FilesError {
    let path = path.to_owned();
    match e {
        Errno::ENOENT => FilesError::NotFound { path },
        Errno::ENOTDIR => FilesError::NotADirectory { path },
        _ => FilesError::Open { path, source: e },
    }
}

/// Maps a [`create_file`] errno to an error.
fn create_error(path: &str, e: Errno) -> FilesError {
    if is_not_regular_errno(e) {
        FilesError::NotRegularFile { path: path.to_owned() }
    } else {
        open_error(path, e)
    }
}

/// Whether `fd` lives on a kernel pseudo-filesystem.
fn on_pseudo_fs(fd: BorrowedFd<'_>) -> nix::Result<bool> {
    let fs_type = fstatfs(fd)?.filesystem_type().0;
    Ok(u64::try_from(fs_type).is_ok_and(|t| PSEUDO_FILESYSTEMS.contains(&t)))
}

/// Fails with [`FilesError::PseudoFilesystem`] if `fd` lives on a kernel pseudo-filesystem.
fn refuse_pseudo_fs(fd: BorrowedFd<'_>, path: &str) -> Result<()> {
    match on_pseudo_fs(fd) {
        Ok(false) => Ok(()),
        Ok(true) => Err(FilesError::PseudoFilesystem { path: path.to_owned() }),
        Err(e) => Err(FilesError::Stat { path: path.to_owned(), source: e.into() }),
    }
}

/// Checks that an opened sandbox file is a regular file on a real filesystem; returns its
/// size.
fn check_sandbox_file(file: &File, path: &str) -> Result<u64> {
    let meta = file.metadata().map_err(|source| FilesError::Stat { path: path.to_owned(), source })?;
    if !meta.is_file() {
        return Err(FilesError::NotRegularFile { path: path.to_owned() });
    }
    refuse_pseudo_fs(file.as_fd(), path)?;
    Ok(meta.len())
}

/// Sets the permission bits of `file` to `mode & 0o1777` (setuid and setgid dropped).
fn set_mode(file: &File, mode: u32) -> io::Result<()> {
    file.set_permissions(Permissions::from_mode(mode & 0o1777))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::fs;
    use std::os::unix::fs::symlink;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{mpsc, Arc};
    use std::thread;
    use std::time::Duration;

    use nix::unistd::mkfifo;

    use super::*;

    const SECRET: &[u8] = b"TOP-SECRET host data";
    const SANDBOX_HOSTNAME: &[u8] = b"sandbox-hostname\n";
    const SANDBOX_PASSWD: &[u8] = b"sandbox:x:0:0::/:/bin/sh\n";
    const MIB: u64 = 1 << 20;

    /// A temp dir holding a fake sandbox root (`sandbox/`) and, outside it, `host/secret`.
    struct Fixture {
        tmp: tempfile::TempDir,
        root: PathBuf,
        host: PathBuf,
        secret: PathBuf,
        rootfs: RootFs,
    }

    impl Fixture {
        fn new() -> Self {
            let tmp = tempfile::tempdir().unwrap();
            let root = tmp.path().join("sandbox");
            for dir in ["etc", "tmp", "usr/bin"] {
                fs::create_dir_all(root.join(dir)).unwrap();
            }
            fs::write(root.join("etc/hostname"), SANDBOX_HOSTNAME).unwrap();
            fs::write(root.join("etc/passwd"), SANDBOX_PASSWD).unwrap();
            let host = tmp.path().join("host");
            fs::create_dir(&host).unwrap();
            let secret = host.join("secret");
            fs::write(&secret, SECRET).unwrap();
            let rootfs = RootFs::open_dir(&root).unwrap();
            Fixture { tmp, root, host, secret, rootfs }
        }

        /// Everything in the temp dir outside the sandbox root.
        fn outside(&self) -> BTreeSet<PathBuf> {
            listing(self.tmp.path(), &self.root)
        }

        /// Host path of a sandbox path, for assertions only.
        fn at(&self, sandbox_path: &str) -> PathBuf {
            self.root.join(sandbox_path.trim_start_matches('/'))
        }

        fn read(&self, path: &str) -> Result<Vec<u8>> {
            self.rootfs.read_file(path, MIB)
        }
    }

    /// All paths under `dir` except the subtree `skip`, without following symlinks.
    fn listing(dir: &Path, skip: &Path) -> BTreeSet<PathBuf> {
        let mut out = BTreeSet::new();
        let mut stack = vec![dir.to_owned()];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path == skip {
                    continue;
                }
                if path.symlink_metadata().unwrap().is_dir() {
                    stack.push(path.clone());
                }
                out.insert(path);
            }
        }
        out
    }

    /// Runs `f` on another thread and fails the test if it does not return within 10 s,
    /// so a blocking open fails the test instead of hanging it.
    fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let _ = tx.send(f());
        });
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(v) => v,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what} did not return within 10 s"),
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what} panicked"),
        }
    }

    /// Deterministic pseudo-random bytes (xorshift), with plenty of NULs.
    fn noise(len: usize) -> Vec<u8> {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        (0..len)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if i % 7 == 0 {
                    0
                } else {
                    x.to_le_bytes()[0]
                }
            })
            .collect()
    }

    fn mode_of(path: &Path) -> u32 {
        path.symlink_metadata().unwrap().mode() & 0o7777
    }

    fn host_root() -> RootFs {
        RootFs::open_dir(Path::new("/")).unwrap()
    }

    #[test]
    fn f11_lexical_traversal_stays_in_root() {
        let f = Fixture::new();
        let before = f.outside();
        let escapes = ["../../../../host/secret", "/etc/../../../host/secret", "/../host/secret", "host/../../host/secret"];
        for path in escapes {
            let r = f.read(path);
            assert!(matches!(r, Err(FilesError::NotFound { .. })), "{path}: {r:?}");
        }
        // The same paths name the sandbox's /host/secret once it exists.
        fs::create_dir(f.at("/host")).unwrap();
        fs::write(f.at("/host/secret"), b"decoy").unwrap();
        for path in escapes {
            assert_eq!(f.read(path).unwrap(), b"decoy", "{path}");
        }
        for path in ["/etc/hostname", "etc/hostname", "../../../../etc/hostname", "/etc/../../../etc/hostname", "//etc/./hostname"] {
            assert_eq!(f.read(path).unwrap(), SANDBOX_HOSTNAME, "{path}");
        }
        f.rootfs.write_file("/../../host/pwn", b"pwned", 0o644).unwrap();
        f.rootfs.write_file("../../../pwn", b"pwned", 0o644).unwrap();
        assert_eq!(fs::read(f.at("/host/pwn")).unwrap(), b"pwned");
        assert_eq!(fs::read(f.at("/pwn")).unwrap(), b"pwned");
        assert!(!f.host.join("pwn").exists());
        assert_eq!(f.outside(), before);
    }

    #[test]
    fn f11_invalid_paths_are_rejected() {
        let f = Fixture::new();
        let long = "a/".repeat(2500);
        let long_name = "x".repeat(MAX_NAME_LEN + 1);
        for path in ["", "etc/\0passwd", "/tmp/a\0b", long.as_str(), long_name.as_str()] {
            let r = f.read(path);
            assert!(matches!(r, Err(FilesError::InvalidPath { .. })), "{r:?}");
            let r = f.rootfs.write_file(path, b"x", 0o644);
            assert!(matches!(r, Err(FilesError::InvalidPath { .. })), "{r:?}");
            let r = f.rootfs.mkdir_all(path, 0o755);
            assert!(matches!(r, Err(FilesError::InvalidPath { .. })), "{r:?}");
            let r = f.rootfs.open_path(path);
            assert!(matches!(r, Err(FilesError::InvalidPath { .. })), "{r:?}");
            let r = f.rootfs.metadata(path);
            assert!(matches!(r, Err(FilesError::InvalidPath { .. })), "{r:?}");
            let r = f.rootfs.copy_to(&f.secret, path);
            assert!(matches!(r, Err(FilesError::InvalidPath { .. })), "{r:?}");
            let r = f.rootfs.copy_from(path, &f.host.join("out"));
            assert!(matches!(r, Err(FilesError::InvalidPath { .. })), "{r:?}");
        }
        // Nothing was created by the rejected writes.
        assert_eq!(fs::read_dir(f.at("/tmp")).unwrap().count(), 0);
        assert!(!f.at("/a").exists());
        // The limit is exactly PATH_MAX - 1 bytes.
        let max = format!("/{}", "b/".repeat(2047));
        assert_eq!(max.len(), MAX_PATH_LEN);
        assert!(matches!(f.read(&max), Err(FilesError::NotFound { .. })));
        let over = format!("{max}b");
        assert!(matches!(f.read(&over), Err(FilesError::InvalidPath { .. })));
        // Names that cannot be a file.
        for path in ["/tmp/", "/tmp/.", "/tmp/..", "/"] {
            let r = f.rootfs.write_file(path, b"x", 0o644);
            assert!(matches!(r, Err(FilesError::InvalidPath { .. } | FilesError::NotRegularFile { .. })), "{path}: {r:?}");
        }
    }

    #[test]
    fn f12_symlinks_pointing_outside_resolve_as_if_chrooted() {
        let f = Fixture::new();
        let out = tempfile::tempdir().unwrap();
        symlink("/", f.at("/h")).unwrap();
        symlink(&f.secret, f.at("/s")).unwrap();
        symlink("../../../../../..", f.at("/e")).unwrap();
        symlink("/", f.at("/tmp/h")).unwrap();
        symlink(&f.secret, f.at("/tmp/s")).unwrap();
        symlink("../../../../../../etc", f.at("/tmp/e")).unwrap();
        let before = f.outside();
        let pwn_at_host_root = Path::new("/pwn").exists();

        for path in ["/s", "/tmp/s", "/h/../s", "/tmp/h/s"] {
            let r = f.read(path);
            assert!(matches!(r, Err(FilesError::NotFound { .. }) | Err(FilesError::Open { .. })), "{path}: {r:?}");
        }
        assert_eq!(f.read("/h/etc/hostname").unwrap(), SANDBOX_HOSTNAME);
        assert_eq!(f.read("/tmp/h/etc/hostname").unwrap(), SANDBOX_HOSTNAME);
        assert_eq!(f.read("/e/etc/passwd").unwrap(), SANDBOX_PASSWD);

        f.rootfs.write_file("/e/pwn", b"pwned", 0o644).unwrap();
        assert_eq!(fs::read(f.at("/pwn")).unwrap(), b"pwned");
        f.rootfs.write_file("/tmp/e/pwn", b"pwned", 0o644).unwrap();
        assert_eq!(fs::read(f.at("/etc/pwn")).unwrap(), b"pwned");
        f.rootfs.write_file("/h/tmp/pwn", b"pwned", 0o644).unwrap();
        assert_eq!(fs::read(f.at("/tmp/pwn")).unwrap(), b"pwned");

        f.rootfs.copy_from("/tmp/h/etc/passwd", &out.path().join("x")).unwrap();
        assert_eq!(fs::read(out.path().join("x")).unwrap(), SANDBOX_PASSWD);
        let r = f.rootfs.copy_from("/s", &out.path().join("y"));
        assert!(matches!(r, Err(FilesError::NotFound { .. })), "{r:?}");
        assert!(!out.path().join("y").exists());

        assert_eq!(f.rootfs.metadata("/s").unwrap().kind, FileKind::Symlink);
        assert_eq!(f.rootfs.metadata("/h").unwrap().kind, FileKind::Symlink);
        assert_eq!(f.rootfs.metadata("/h/etc").unwrap().kind, FileKind::Directory);

        // With an in-root file at the secret's host path, the link reads that file.
        let decoy = f.root.join(f.secret.strip_prefix("/").unwrap());
        fs::create_dir_all(decoy.parent().unwrap()).unwrap();
        fs::write(&decoy, b"decoy").unwrap();
        assert_eq!(f.read("/s").unwrap(), b"decoy");

        assert_eq!(fs::read(&f.secret).unwrap(), SECRET);
        assert!(!f.host.join("pwn").exists());
        assert_eq!(Path::new("/pwn").exists(), pwn_at_host_root);
        assert_eq!(f.outside(), before);
    }

    /// Swaps `link` between a real directory and symlinks to each of `targets` until `stop`.
    fn swapper(link: PathBuf, targets: Vec<PathBuf>, stop: Arc<AtomicBool>) -> thread::JoinHandle<u64> {
        thread::spawn(move || {
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for target in &targets {
                    let _ = fs::create_dir(&link);
                    let _ = fs::remove_dir_all(&link);
                    let _ = symlink(target, &link);
                    let _ = fs::remove_file(&link);
                    swaps += 1;
                }
            }
            swaps
        })
    }

    #[test]
    fn f13_symlink_race_against_write_file() {
        let f = Fixture::new();
        let before = f.outside();
        let stop = Arc::new(AtomicBool::new(false));
        // Absolute and relative links to the outside dir (root/tmp/d/../../../host).
        let targets = vec![f.host.clone(), PathBuf::from("../../../host")];
        let racer = swapper(f.at("/tmp/d"), targets, Arc::clone(&stop));
        let (mut ok, mut failed) = (0u32, 0u32);
        for _ in 0..10_000 {
            match f.rootfs.write_file("/tmp/d/pwn", b"pwned", 0o644) {
                Ok(()) => ok += 1,
                Err(_) => failed += 1,
            }
        }
        stop.store(true, Ordering::Relaxed);
        let swaps = racer.join().unwrap();
        eprintln!("f13 write_file: {ok} ok, {failed} failed, {swaps} swaps");
        assert!(!f.host.join("pwn").exists());
        assert_eq!(fs::read_dir(&f.host).unwrap().count(), 1);
        assert_eq!(f.outside(), before);
    }

    #[test]
    fn f13_symlink_race_against_copy_to() {
        let f = Fixture::new();
        let src = tempfile::tempdir().unwrap();
        let tree = src.path().join("t");
        fs::create_dir_all(tree.join("sub/deeper")).unwrap();
        fs::write(tree.join("a"), b"a").unwrap();
        fs::write(tree.join("sub/b"), b"b").unwrap();
        fs::write(tree.join("sub/deeper/c"), b"c").unwrap();
        symlink("../a", tree.join("sub/l")).unwrap();
        fs::create_dir(f.at("/dst")).unwrap();
        let before = f.outside();

        let stop = Arc::new(AtomicBool::new(false));
        let targets = vec![f.host.clone(), PathBuf::from("../../host")];
        let parent_racer = swapper(f.at("/dst/p"), targets.clone(), Arc::clone(&stop));
        // Also race a directory inside the copied tree, created by the copy itself.
        let inner_racer = swapper(f.at("/dst/p/t/sub"), vec![f.host.clone(), PathBuf::from("../../../../host")], Arc::clone(&stop));
        let (mut ok, mut failed) = (0u32, 0u32);
        for _ in 0..300 {
            match f.rootfs.copy_to(&tree, "/dst/p/t") {
                Ok(()) => ok += 1,
                Err(_) => failed += 1,
            }
        }
        stop.store(true, Ordering::Relaxed);
        let swaps = parent_racer.join().unwrap() + inner_racer.join().unwrap();
        eprintln!("f13 copy_to: {ok} ok, {failed} failed, {swaps} swaps");
        assert_eq!(fs::read_dir(&f.host).unwrap().count(), 1);
        assert_eq!(f.outside(), before);
    }

    #[test]
    fn f14_magic_links_are_refused() {
        // A sandbox whose /proc is a symlink to /proc: resolution stays in the root (and
        // loops there), so the host's /etc/passwd is never read.
        let f = Fixture::new();
        symlink("/proc", f.at("/proc")).unwrap();
        let host_passwd = fs::read("/etc/passwd").unwrap();
        for path in ["/proc/self/root/etc/passwd", "/proc/1/root/etc/passwd"] {
            let r = f.read(path);
            assert!(r.is_err(), "{path}: {r:?}");
        }

        // A real procfs (the host root as the "sandbox"): magic links are refused.
        let host = host_root();
        let r = host.read_file("/proc/self/root/etc/passwd", MIB);
        assert!(matches!(r, Err(FilesError::Open { source: Errno::ELOOP, .. })), "{r:?}");
        // Control: an unscoped lookup does reach the file through the magic link, so the
        // assertion above can fail. (A scoped lookup without RESOLVE_NO_MAGICLINKS is refused
        // too, with EXDEV: the kernel never lets a RESOLVE_IN_ROOT walk jump through a magic
        // link. RESOLVE_NO_MAGICLINKS makes the refusal explicit and independent of that.)
        let fd = openat2(host.root.as_fd(), c"proc/self/root/etc/passwd", libc::O_RDONLY, 0, 0).unwrap();
        let mut via_magic = Vec::new();
        File::from(fd).read_to_end(&mut via_magic).unwrap();
        assert_eq!(via_magic, host_passwd);
        assert_eq!(
            openat2(host.root.as_fd(), c"/proc/self/root/etc/passwd", libc::O_RDONLY, 0, RESOLVE_IN_ROOT,).unwrap_err(),
            Errno::EXDEV
        );

        let held = File::open("/etc/passwd").unwrap();
        let fd_link = format!("/proc/self/fd/{}", held.as_raw_fd());
        let r = host.read_file(&fd_link, MIB);
        assert!(matches!(r, Err(FilesError::Open { source: Errno::ELOOP, .. })), "{r:?}");
        let r = host.open_path("/proc/self/cwd");
        assert!(matches!(r, Err(FilesError::Open { source: Errno::ELOOP, .. })), "{r:?}");
        let out = tempfile::tempdir().unwrap();
        let r = host.copy_from("/proc/self/root/etc/passwd", &out.path().join("x"));
        assert!(r.is_err(), "{r:?}");
        assert!(!out.path().join("x").exists());
    }

    #[test]
    fn pseudo_filesystems_are_refused() {
        let host = host_root();
        let r = host.read_file("/proc/self/status", MIB).map(|d| d.len());
        assert!(matches!(r, Err(FilesError::PseudoFilesystem { .. })), "{r:?}");
        let comm = fs::read("/proc/self/comm").unwrap();
        let r = host.write_file("/proc/self/comm", b"pwned", 0o644);
        assert!(matches!(r, Err(FilesError::PseudoFilesystem { .. })), "{r:?}");
        assert_eq!(fs::read("/proc/self/comm").unwrap(), comm);
        let out = tempfile::tempdir().unwrap();
        let r = host.copy_from("/proc/self/status", &out.path().join("status"));
        assert!(matches!(r, Err(FilesError::PseudoFilesystem { .. })), "{r:?}");
        if Path::new("/sys/kernel").is_dir() {
            let r = host.copy_from("/sys/kernel", &out.path().join("kernel"));
            assert!(matches!(r, Err(FilesError::PseudoFilesystem { .. })), "{r:?}");
        }
        let src = tempfile::tempdir().unwrap();
        fs::write(src.path().join("comm"), b"pwned").unwrap();
        let r = host.copy_to(&src.path().join("comm"), "/proc/self");
        assert!(matches!(r, Err(FilesError::PseudoFilesystem { .. })), "{r:?}");
        assert_eq!(fs::read("/proc/self/comm").unwrap(), comm);
        assert_eq!(fs::read_dir(out.path()).unwrap().count(), 0);
    }

    #[test]
    fn f15_fifos_and_devices_are_refused_promptly() {
        let f = Fixture::new();
        mkfifo(&f.at("/tmp/f"), Mode::from_bits_truncate(0o666)).unwrap();
        symlink("/dev/zero", f.at("/tmp/z")).unwrap();
        let out = tempfile::tempdir().unwrap();
        let src = out.path().join("src");
        fs::write(&src, b"data").unwrap();

        let root = f.root.clone();
        let r = within("read_file on a FIFO", move || RootFs::open_dir(&root).unwrap().read_file("/tmp/f", MIB));
        assert!(matches!(r, Err(FilesError::NotRegularFile { .. })), "{r:?}");
        let root = f.root.clone();
        let r = within("write_file on a FIFO", move || RootFs::open_dir(&root).unwrap().write_file("/tmp/f", b"x", 0o644));
        assert!(matches!(r, Err(FilesError::NotRegularFile { .. })), "{r:?}");
        let (root, dst) = (f.root.clone(), out.path().join("fifo"));
        let r = within("copy_from of a FIFO", move || RootFs::open_dir(&root).unwrap().copy_from("/tmp/f", &dst));
        assert!(matches!(r, Err(FilesError::NotRegularFile { .. })), "{r:?}");
        let root = f.root.clone();
        let r = within("copy_to onto a FIFO", move || RootFs::open_dir(&root).unwrap().copy_to(&src, "/tmp/f"));
        assert!(matches!(r, Err(FilesError::NotRegularFile { .. })), "{r:?}");
        // A FIFO that has a reader (so the O_WRONLY open succeeds) is still refused before
        // any byte is written.
        let reader = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(f.at("/tmp/f")).unwrap();
        let root = f.root.clone();
        let r = within("write_file on a FIFO with a reader", move || RootFs::open_dir(&root).unwrap().write_file("/tmp/f", b"x", 0o644));
        assert!(matches!(r, Err(FilesError::NotRegularFile { .. })), "{r:?}");
        let mut buf = [0u8; 8];
        let n = (&reader).read(&mut buf);
        assert!(matches!(n, Ok(0)) || n.is_err(), "{n:?}");

        // The /dev/zero link resolves inside the root, where there is no /dev/zero.
        let r = f.read("/tmp/z");
        assert!(matches!(r, Err(FilesError::NotFound { .. })), "{r:?}");

        // Real device nodes (the host root as the "sandbox").
        for dev in ["/dev/zero", "/dev/urandom", "/dev/null"] {
            let r = within("read_file on a device", move || host_root().read_file(dev, MIB));
            assert!(matches!(r, Err(FilesError::NotRegularFile { .. })), "{dev}: {r:?}");
        }
        let r = within("copy_from of a device", || {
            let out = tempfile::tempdir().unwrap();
            host_root().copy_from("/dev/zero", &out.path().join("zero"))
        });
        assert!(matches!(r, Err(FilesError::NotRegularFile { .. })), "{r:?}");
        assert_eq!(fs::read_dir(out.path()).unwrap().count(), 1);
    }

    #[test]
    fn binary_round_trip_and_modes() {
        let f = Fixture::new();
        let data = noise(1 << 20);
        assert!(data.contains(&0));
        f.rootfs.write_file("/data/bin/blob", &data, 0o640).unwrap();
        assert_eq!(f.read("/data/bin/blob").unwrap(), data);
        assert_eq!(fs::read(f.at("/data/bin/blob")).unwrap(), data);
        // A new file gets exactly the requested mode (no umask), minus setuid/setgid.
        assert_eq!(mode_of(&f.at("/data/bin/blob")), 0o640);
        f.rootfs.write_file("/data/suid", b"x", 0o6777).unwrap();
        assert_eq!(mode_of(&f.at("/data/suid")), 0o777);
        // Overwriting truncates and keeps the existing mode.
        f.rootfs.write_file("/data/bin/blob", b"short", 0o777).unwrap();
        assert_eq!(f.read("/data/bin/blob").unwrap(), b"short");
        assert_eq!(mode_of(&f.at("/data/bin/blob")), 0o640);
        // Empty files.
        f.rootfs.write_file("/data/empty", b"", 0o644).unwrap();
        assert_eq!(f.rootfs.read_file("/data/empty", 0).unwrap(), b"");
    }

    #[test]
    fn read_limit_gives_too_large() {
        let f = Fixture::new();
        f.rootfs.write_file("/f", &[7u8; 100], 0o644).unwrap();
        let r = f.rootfs.read_file("/f", 99);
        assert!(matches!(r, Err(FilesError::TooLarge { limit: 99, .. })), "{r:?}");
        assert_eq!(f.rootfs.read_file("/f", 100).unwrap().len(), 100);
        let r = f.rootfs.read_file("/etc", MIB);
        assert!(matches!(r, Err(FilesError::NotRegularFile { .. })), "{r:?}");
    }

    #[test]
    fn write_file_never_writes_through_the_last_component() {
        let f = Fixture::new();
        symlink("/etc/hostname", f.at("/tmp/link")).unwrap();
        symlink("/tmp/nowhere", f.at("/tmp/dangling")).unwrap();
        for path in ["/tmp/link", "/tmp/dangling", "/etc", "/tmp/h/.."] {
            let r = f.rootfs.write_file(path, b"pwned", 0o644);
            assert!(matches!(r, Err(FilesError::NotRegularFile { .. } | FilesError::InvalidPath { .. })), "{path}: {r:?}");
        }
        assert_eq!(f.read("/etc/hostname").unwrap(), SANDBOX_HOSTNAME);
        assert!(!f.at("/tmp/nowhere").exists());
        let r = f.rootfs.write_file("/etc/hostname/x", b"x", 0o644);
        assert!(matches!(r, Err(FilesError::NotADirectory { .. })), "{r:?}");
    }

    #[test]
    fn mkdir_all_open_path_and_metadata() {
        let f = Fixture::new();
        let fd = f.rootfs.mkdir_all("/a/b/c", 0o755).unwrap();
        let made = File::from(fd).metadata().unwrap();
        assert_eq!(made.ino(), fs::metadata(f.at("/a/b/c")).unwrap().ino());
        // Existing in-root symlinks are followed; `..` is resolved by the kernel.
        symlink("/a", f.at("/l")).unwrap();
        f.rootfs.mkdir_all("/l/x/y", 0o755).unwrap();
        assert!(f.at("/a/x/y").is_dir());
        f.rootfs.mkdir_all("/a/../z", 0o755).unwrap();
        assert!(f.at("/z").is_dir());
        f.rootfs.mkdir_all("/a/b/c", 0o755).unwrap();
        let r = f.rootfs.mkdir_all("/etc/hostname/x", 0o755);
        assert!(matches!(r, Err(FilesError::NotADirectory { .. })), "{r:?}");
        symlink("/nope", f.at("/dl")).unwrap();
        let r = f.rootfs.mkdir_all("/dl/x", 0o755);
        assert!(matches!(r, Err(FilesError::NotFound { .. })), "{r:?}");
        assert!(!f.at("/nope").exists());

        let opened = File::from(f.rootfs.open_path("/l").unwrap()).metadata().unwrap();
        assert_eq!(opened.ino(), fs::metadata(f.at("/a")).unwrap().ino());
        let r = f.rootfs.open_path("/missing");
        assert!(matches!(r, Err(FilesError::NotFound { .. })), "{r:?}");

        mkfifo(&f.at("/tmp/fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        fs::set_permissions(f.at("/etc/hostname"), Permissions::from_mode(0o4751)).unwrap();
        let st = f.rootfs.metadata("/etc/hostname").unwrap();
        assert_eq!(st, FileStat { kind: FileKind::File, size: 17, mode: 0o4751 });
        assert_eq!(f.rootfs.metadata("/l").unwrap().kind, FileKind::Symlink);
        assert_eq!(f.rootfs.metadata("/l").unwrap().size, 2);
        assert_eq!(f.rootfs.metadata("/l/").unwrap().kind, FileKind::Directory);
        assert_eq!(f.rootfs.metadata("/a").unwrap().kind, FileKind::Directory);
        assert_eq!(f.rootfs.metadata("/tmp/fifo").unwrap().kind, FileKind::Other);
    }

    /// Builds a host tree covering every entry kind.
    fn sample_tree(dir: &Path) {
        fs::create_dir_all(dir.join("nested/deeper/deepest")).unwrap();
        fs::create_dir_all(dir.join("bin")).unwrap();
        fs::write(dir.join("a.txt"), b"hello").unwrap();
        fs::write(dir.join("empty"), b"").unwrap();
        fs::write(dir.join("bin/run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
        fs::set_permissions(dir.join("bin/run.sh"), Permissions::from_mode(0o755)).unwrap();
        fs::write(dir.join("nested/deeper/deepest/x.bin"), noise(100_000)).unwrap();
        fs::write(dir.join("suid"), b"s").unwrap();
        fs::set_permissions(dir.join("suid"), Permissions::from_mode(0o4755)).unwrap();
        fs::set_permissions(dir.join("nested"), Permissions::from_mode(0o750)).unwrap();
        symlink("a.txt", dir.join("link")).unwrap();
        symlink("/etc/passwd", dir.join("abs")).unwrap();
        symlink("nope", dir.join("dangling")).unwrap();
        symlink("nested", dir.join("dir_link")).unwrap();
        mkfifo(&dir.join("fifo"), Mode::from_bits_truncate(0o644)).unwrap();
    }

    /// Checks that `copy` holds the sample tree (FIFO skipped, setuid dropped).
    fn assert_sample_tree(copy: &Path) {
        assert_eq!(fs::read(copy.join("a.txt")).unwrap(), b"hello");
        assert_eq!(fs::read(copy.join("empty")).unwrap(), b"");
        assert_eq!(fs::read(copy.join("nested/deeper/deepest/x.bin")).unwrap(), noise(100_000));
        assert_eq!(mode_of(&copy.join("bin/run.sh")), 0o755);
        assert_eq!(mode_of(&copy.join("suid")), 0o755);
        assert_eq!(mode_of(&copy.join("nested")), 0o750);
        for (link, target) in [("link", "a.txt"), ("abs", "/etc/passwd"), ("dangling", "nope"), ("dir_link", "nested")] {
            let path = copy.join(link);
            assert!(path.symlink_metadata().unwrap().is_symlink(), "{link}");
            assert_eq!(fs::read_link(&path).unwrap(), Path::new(target), "{link}");
        }
        assert!(copy.join("fifo").symlink_metadata().is_err());
    }

    #[test]
    fn tree_round_trip() {
        let f = Fixture::new();
        let host = tempfile::tempdir().unwrap();
        let src = host.path().join("src");
        sample_tree(&src);

        // Destination does not exist: the tree is created at the path (parents too).
        f.rootfs.copy_to(&src, "/work/copy").unwrap();
        assert_sample_tree(&f.at("/work/copy"));
        // Destination is a directory: the tree goes inside, under its basename.
        f.rootfs.copy_to(&src, "/work/copy").unwrap();
        assert_sample_tree(&f.at("/work/copy/src"));
        // Copying over an existing copy overwrites files and replaces symlinks.
        fs::write(f.at("/work/copy/src/a.txt"), b"changed in the sandbox").unwrap();
        fs::remove_file(f.at("/work/copy/src/link")).unwrap();
        symlink("elsewhere", f.at("/work/copy/src/link")).unwrap();
        f.rootfs.copy_to(&src, "/work/copy/src/..").unwrap();
        assert_sample_tree(&f.at("/work/copy/src"));
        assert_sample_tree(&f.at("/work/copy"));
        // Single files.
        f.rootfs.copy_to(&src.join("bin/run.sh"), "/single").unwrap();
        assert_eq!(mode_of(&f.at("/single")), 0o755);
        f.rootfs.copy_to(&src.join("a.txt"), "/work").unwrap();
        assert_eq!(fs::read(f.at("/work/a.txt")).unwrap(), b"hello");
        // A FIFO inside a sandbox tree is skipped on the way out.
        mkfifo(&f.at("/work/copy/fifo"), Mode::from_bits_truncate(0o644)).unwrap();

        // Back to the host: at a new path, then into an existing directory.
        let back = host.path().join("back");
        f.rootfs.copy_from("/work/copy", &back).unwrap();
        assert_sample_tree(&back);
        assert_sample_tree(&back.join("src"));
        f.rootfs.copy_from("/work/copy/", host.path()).unwrap();
        assert_sample_tree(&host.path().join("copy"));
        f.rootfs.copy_from("/work/copy", &back).unwrap();
        assert_sample_tree(&back.join("copy"));
        f.rootfs.copy_from("/single", &host.path().join("single")).unwrap();
        assert_eq!(mode_of(&host.path().join("single")), 0o755);
        // A top-level symlink is followed inside the root.
        f.rootfs.copy_from("/work/copy/link", &host.path().join("followed")).unwrap();
        assert_eq!(fs::read(host.path().join("followed")).unwrap(), b"hello");
        let r = f.rootfs.copy_from("/", host.path());
        assert!(matches!(r, Err(FilesError::InvalidPath { .. })), "{r:?}");
    }

    #[test]
    fn copy_from_recreates_links_without_following_them() {
        let f = Fixture::new();
        let out = tempfile::tempdir().unwrap();
        fs::create_dir(f.at("/tree")).unwrap();
        symlink("/etc/passwd", f.at("/tree/pw")).unwrap();
        symlink(&f.secret, f.at("/tree/secret")).unwrap();
        symlink("../../../../host", f.at("/tree/up")).unwrap();
        f.rootfs.copy_from("/tree", &out.path().join("t")).unwrap();
        for (name, target) in
            [("pw", PathBuf::from("/etc/passwd")), ("secret", f.secret.clone()), ("up", PathBuf::from("../../../../host"))]
        {
            let link = out.path().join("t").join(name);
            assert!(link.symlink_metadata().unwrap().is_symlink(), "{name}");
            assert_eq!(fs::read_link(&link).unwrap(), target);
        }
        assert_eq!(fs::read_dir(out.path().join("t")).unwrap().count(), 3);
        // The host copy holds links now; copying regular files onto them never writes
        // through them (the victim is a temp file, never a real host file).
        let victim = out.path().join("victim");
        fs::write(&victim, b"victim").unwrap();
        fs::create_dir(out.path().join("tree2")).unwrap();
        symlink(&victim, out.path().join("tree2/pw")).unwrap();
        symlink(&victim, out.path().join("t/file")).unwrap();
        fs::create_dir(f.at("/tree2")).unwrap();
        fs::write(f.at("/tree2/pw"), b"overwrite?").unwrap();
        fs::write(f.at("/tree/file"), b"overwrite?").unwrap();
        // Into an existing host dir: /tree2 merges into out/tree2, whose pw is a link.
        let r = f.rootfs.copy_from("/tree2", out.path());
        assert!(matches!(r, Err(FilesError::HostNotRegularFile { .. })), "{r:?}");
        let r = f.rootfs.copy_from("/tree/file", &out.path().join("t/file"));
        assert!(matches!(r, Err(FilesError::HostNotRegularFile { .. })), "{r:?}");
        assert_eq!(fs::read(&victim).unwrap(), b"victim");
        assert_eq!(fs::read(&f.secret).unwrap(), SECRET);
        // The top-level path follows the link inside the root: the sandbox's passwd.
        symlink("/etc/passwd", f.at("/pwlink")).unwrap();
        f.rootfs.copy_from("/pwlink", &out.path().join("pw")).unwrap();
        assert_eq!(fs::read(out.path().join("pw")).unwrap(), SANDBOX_PASSWD);
    }

    #[test]
    fn copies_stop_at_max_depth() {
        let f = Fixture::new();
        let out = tempfile::tempdir().unwrap();
        let mut deep = f.at("/deep");
        for _ in 0..MAX_COPY_DEPTH {
            deep.push("d");
        }
        fs::create_dir_all(&deep).unwrap();
        // Exactly MAX_COPY_DEPTH levels copy...
        f.rootfs.copy_from("/deep/d", &out.path().join("ok")).unwrap();
        // ...one more does not.
        let r = f.rootfs.copy_from("/deep", &out.path().join("too"));
        assert!(matches!(r, Err(FilesError::TooDeep { limit: MAX_COPY_DEPTH, .. })), "{r:?}");
        let r = f.rootfs.copy_to(&f.root.join("deep"), "/deep2");
        assert!(matches!(r, Err(FilesError::TooDeep { .. })), "{r:?}");
    }

    #[test]
    fn error_messages_do_not_contain_the_root() {
        let f = Fixture::new();
        let out = tempfile::tempdir().unwrap();
        mkfifo(&f.at("/tmp/f"), Mode::from_bits_truncate(0o600)).unwrap();
        symlink("/proc", f.at("/proc")).unwrap();
        let errors = [
            f.read("/missing").unwrap_err(),
            f.read("/tmp/f").unwrap_err(),
            f.read("/etc/hostname/x").unwrap_err(),
            f.read("/proc/self/root").unwrap_err(),
            f.rootfs.read_file("/etc/passwd", 1).unwrap_err(),
            f.rootfs.write_file("/etc", b"", 0o644).unwrap_err(),
            f.rootfs.mkdir_all("/etc/passwd", 0o755).unwrap_err(),
            f.rootfs.copy_from("/tmp/f", &out.path().join("x")).unwrap_err(),
            f.rootfs.copy_to(&out.path().join("missing"), "/x").unwrap_err(),
        ];
        let root = f.root.to_string_lossy().into_owned();
        for e in errors {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            assert!(!text.contains(&root), "{text}");
            assert!(!text.contains("sandbox/"), "{text}");
        }
    }
}
