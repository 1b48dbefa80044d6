//! Safe unpacking of one image layer (a tar stream) into its own directory, in the overlayfs
//! format, so that a list of layer directories can be stacked as overlay lower dirs as is:
//!
//! - a whiteout `dir/.wh.NAME` becomes a 0:0 character device `dir/NAME`;
//! - an opaque marker `dir/.wh..wh..opq` becomes the xattr `trusted.overlay.opaque=y` on `dir`
//!   (which hides only the *lower* layers' content of `dir`; this layer's entries stay).
//!
//! Hostile tars (SECURITY.md U1–U8) are handled like this:
//! - names are cleaned lexically; `..` that would climb above the layer root is refused
//!   ([`UnpackError::EscapesRoot`]); a leading `/` means the layer root;
//! - parent directories are resolved by the kernel *inside* the layer directory
//!   (`openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)`), so a symlink
//!   planted by an earlier entry (`evil -> /tmp`, `up -> ..`) resolves as if the layer were `/`:
//!   `evil/pwn` lands in `<layer>/tmp/pwn`, never in the host's `/tmp`;
//! - the last component is always created, replaced, chmod-ed and chown-ed relative to the
//!   parent's fd without following it (`O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`); a directory entry
//!   over an existing symlink replaces the symlink instead of chmod-ing its target;
//! - hardlink targets are resolved in the layer root the same way and must already exist there;
//! - character and block devices are skipped (counted in [`UnpackStats::skipped_devices`]);
//!   setuid/setgid bits are kept (the sandbox mounts are `nosuid` and its processes run with
//!   `no_new_privs`); ownership is applied only when running as root; of the PAX xattrs only
//!   `security.capability` and `user.*` are applied (never `trusted.*`, which would let an
//!   image forge overlay metadata);
//! - the decompressed stream, the number of entries, the path length and the path depth are
//!   capped ([`Limits`]); on any error the caller removes the partial directory.
//!
//! The sha256 of the decompressed stream (the layer's `diff_id`) is computed on the way and
//! checked against the expected one if given.

use std::cell::Cell;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::rc::Rc;

use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, ResolveFlags, Timespec, Timestamps, Uid, XattrFlags};
use rustix::io::Errno;

use crate::digest::{Digest, HashingReader};

/// Caps against decompression bombs and entry floods (SECURITY.md U8).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Bytes of the decompressed tar stream (headers included).
    pub max_bytes: u64,
    /// Tar entries, whiteouts and directories included.
    pub max_entries: u64,
    /// Path components of one entry name.
    pub max_depth: usize,
    /// Bytes of one entry name (or hardlink target).
    pub max_path_len: usize,
    /// Bytes of the headers and metadata (GNU long names, PAX records) before one entry:
    /// the `tar` crate holds those in memory, so a "long name" of gigabytes must stop here.
    pub max_metadata: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_bytes: 64 << 30, max_entries: 4_000_000, max_depth: 256, max_path_len: 4096, max_metadata: 4 << 20 }
    }
}

/// What one unpack did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackStats {
    /// sha256 of the decompressed tar stream: the layer's diff_id.
    pub diff_id: Digest,
    /// Bytes of the decompressed tar stream.
    pub tar_bytes: u64,
    pub entries: u64,
    pub whiteouts: u64,
    pub opaque_dirs: u64,
    /// Character and block device entries, which are never created.
    pub skipped_devices: u64,
}

/// Why a layer could not be unpacked. Paths are entry names as written in the tar.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("reading the layer's tar stream")]
    Read(#[source] io::Error),
    #[error("layer entry {path:?} points outside the layer ('..' above its root): the image is malformed or hostile")]
    EscapesRoot { path: String },
    #[error("layer entry {path:?} would replace the layer root itself")]
    EntryIsRoot { path: String },
    #[error("layer entry {path:?} is an invalid whiteout (it names '.', '..' or nothing)")]
    BadWhiteout { path: String },
    #[error("layer entry {path:?} is a hardlink to {target:?}, which is not an earlier file of this layer")]
    HardlinkTarget {
        path: String,
        target: String,
        #[source]
        source: io::Error,
    },
    #[error("layer has more than {limit} entries: refusing it (entry flood?); raise Limits::max_entries if it is legitimate")]
    TooManyEntries { limit: u64 },
    #[error(
        "layer decompresses to more than {limit} bytes: refusing it (decompression bomb?); raise Limits::max_bytes if it is legitimate"
    )]
    TooLarge { limit: u64 },
    #[error("layer has more than {limit} bytes of tar headers and metadata (long names, PAX records) before one entry: refusing it; raise Limits::max_metadata if it is legitimate")]
    MetadataTooLarge { limit: u64 },
    #[error("layer entry {path:?} is more than {limit} directories deep; raise Limits::max_depth if it is legitimate")]
    TooDeep { path: String, limit: usize },
    #[error("layer entry name is longer than {limit} bytes: {prefix:?}...")]
    PathTooLong { prefix: String, limit: usize },
    #[error("layer entry {path:?}: {step} failed")]
    Fs {
        path: String,
        step: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "layer content has digest {actual} but the image config says its diff_id is {expected}: the layer is corrupt or was tampered with"
    )]
    DiffIdMismatch { expected: Digest, actual: Digest },
}

type Result<T> = std::result::Result<T, UnpackError>;

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// The xattr overlayfs reads on a directory to hide the lower layers' content of it.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Compression of a layer blob, detected from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// Looks at the magic number without consuming it.
    pub fn detect<R: BufRead>(r: &mut R) -> io::Result<Compression> {
        let head = r.fill_buf()?;
        Ok(if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        })
    }
}

/// The first 512 bytes of a possibly compressed stream (gzip, zstd or plain), decompressed:
/// enough to tell a tar by its header. Short when the stream is.
pub fn peek_decompressed<R: Read>(blob: R) -> io::Result<Vec<u8>> {
    let mut r = BufReader::new(blob);
    let mut out = Vec::with_capacity(512);
    match Compression::detect(&mut r)? {
        Compression::Gzip => flate2::bufread::MultiGzDecoder::new(r).take(512).read_to_end(&mut out)?,
        Compression::Zstd => zstd::stream::read::Decoder::with_buffer(r)?.take(512).read_to_end(&mut out)?,
        Compression::None => r.take(512).read_to_end(&mut out)?,
    };
    Ok(out)
}

/// Unpacks a possibly compressed layer blob (gzip, zstd or plain tar, told apart by their
/// magic numbers) into `dest`, which must be an existing empty directory.
pub fn unpack_blob<R: Read>(blob: R, dest: &Path, expected_diff_id: Option<&Digest>, limits: &Limits) -> Result<UnpackStats> {
    let mut r = BufReader::with_capacity(256 << 10, blob);
    match Compression::detect(&mut r).map_err(UnpackError::Read)? {
        Compression::Gzip => unpack_tar(flate2::bufread::MultiGzDecoder::new(r), dest, expected_diff_id, limits),
        Compression::Zstd => {
            unpack_tar(zstd::stream::read::Decoder::with_buffer(r).map_err(UnpackError::Read)?, dest, expected_diff_id, limits)
        }
        Compression::None => unpack_tar(r, dest, expected_diff_id, limits),
    }
}

/// Unpacks an uncompressed tar stream into `dest` (an existing, empty directory).
pub fn unpack_tar<R: Read>(tar: R, dest: &Path, expected_diff_id: Option<&Digest>, limits: &Limits) -> Result<UnpackStats> {
    let root = rustix::fs::open(dest, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| fs_err(dest.as_os_str().as_bytes(), "open unpack dir", e))?;
    let gate = Rc::new(Gate::default());
    let limited = LimitReader { inner: tar, left: limits.max_bytes, gate: gate.clone() };
    let mut hashing = HashingReader::new(limited);
    let mut u = Unpacker {
        root,
        limits,
        as_root: rustix::process::geteuid().is_root(),
        parent_cache: None,
        gate: gate.clone(),
        stats: Counts::default(),
        buf: vec![0; 256 << 10],
        dir_times: Vec::new(),
    };
    let res = u.run(&mut hashing);
    if res.is_ok() {
        u.apply_dir_times();
    }
    let map_read = |e: io::Error| {
        if gate.over.get() {
            UnpackError::TooLarge { limit: limits.max_bytes }
        } else if gate.meta_over.get() {
            UnpackError::MetadataTooLarge { limit: limits.max_metadata }
        } else {
            UnpackError::Read(e)
        }
    };
    match res {
        Err(UnpackError::Read(e)) => return Err(map_read(e)),
        Err(e) => return Err(e),
        Ok(()) => {}
    }
    let (diff_id, tar_bytes) = hashing.finish().map_err(map_read)?;
    if let Some(expected) = expected_diff_id {
        if *expected != diff_id {
            return Err(UnpackError::DiffIdMismatch { expected: expected.clone(), actual: diff_id });
        }
    }
    let c = u.stats;
    Ok(UnpackStats { diff_id, tar_bytes, entries: c.entries, whiteouts: c.whiteouts, opaque_dirs: c.opaque, skipped_devices: c.devices })
}

/// Shared between the reader and the unpacker: which cap was hit, and the metadata budget
/// that is armed only while the `tar` crate reads between two entries.
#[derive(Default)]
struct Gate {
    over: Cell<bool>,
    meta_left: Cell<Option<u64>>,
    meta_over: Cell<bool>,
}

struct LimitReader<R> {
    inner: R,
    left: u64,
    gate: Rc<Gate>,
}

impl<R: Read> Read for LimitReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let buf = match self.gate.meta_left.get() {
            Some(0) => {
                self.gate.meta_over.set(true);
                return Err(io::Error::other("tar metadata limit reached"));
            }
            Some(m) => {
                let cap = usize::try_from(m).unwrap_or(usize::MAX).min(buf.len());
                &mut buf[..cap]
            }
            None => buf,
        };
        if self.left == 0 {
            // Only an error if there is more data.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => {
                    self.gate.over.set(true);
                    Err(io::Error::other("layer size limit reached"))
                }
            };
        }
        let cap = usize::try_from(self.left).unwrap_or(usize::MAX).min(buf.len());
        let n = self.inner.read(&mut buf[..cap])?;
        self.left -= n as u64;
        if let Some(m) = self.gate.meta_left.get() {
            self.gate.meta_left.set(Some(m - n as u64));
        }
        Ok(n)
    }
}

#[derive(Default, Clone, Copy)]
struct Counts {
    entries: u64,
    whiteouts: u64,
    opaque: u64,
    devices: u64,
}

struct Unpacker<'a> {
    root: OwnedFd,
    limits: &'a Limits,
    as_root: bool,
    /// The last parent directory resolved, by cleaned path: most entries share their parent.
    parent_cache: Option<(Vec<u8>, OwnedFd)>,
    gate: Rc<Gate>,
    stats: Counts,
    buf: Vec<u8>,
    /// Directories and their mtimes, applied when the layer is complete.
    dir_times: Vec<(Vec<u8>, u64)>,
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn fs_err(path: &[u8], step: &'static str, e: impl Into<io::Error>) -> UnpackError {
    UnpackError::Fs { path: lossy(path), step, source: e.into() }
}

/// Cleans an entry name: drops `/` prefixes, empty and `.` components; `..` pops one
/// component and is refused above the root.
fn clean<'p>(raw: &'p [u8], limits: &Limits) -> Result<Vec<&'p [u8]>> {
    clean_with(raw, limits, false)
}

/// [`clean`], or with `clamp` the kernel's in-root rule for symlink targets: `..` at the root
/// stays at the root.
fn clean_with<'p>(raw: &'p [u8], limits: &Limits, clamp: bool) -> Result<Vec<&'p [u8]>> {
    if raw.len() > limits.max_path_len {
        return Err(UnpackError::PathTooLong { prefix: lossy(&raw[..64.min(raw.len())]), limit: limits.max_path_len });
    }
    let mut out: Vec<&[u8]> = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                if out.pop().is_none() && !clamp {
                    return Err(UnpackError::EscapesRoot { path: lossy(raw) });
                }
            }
            c => {
                if c.contains(&0) {
                    return Err(UnpackError::Fs { path: lossy(raw), step: "entry name", source: io::ErrorKind::InvalidInput.into() });
                }
                out.push(c);
                if out.len() > limits.max_depth {
                    return Err(UnpackError::TooDeep { path: lossy(&raw[..256.min(raw.len())]), limit: limits.max_depth });
                }
            }
        }
    }
    Ok(out)
}

fn join(comps: &[&[u8]]) -> Vec<u8> {
    let mut p = Vec::with_capacity(comps.iter().map(|c| c.len() + 1).sum());
    for (i, c) in comps.iter().enumerate() {
        if i > 0 {
            p.push(b'/');
        }
        p.extend_from_slice(c);
    }
    p
}

fn os(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}

const IN_ROOT: ResolveFlags = ResolveFlags::IN_ROOT.union(ResolveFlags::NO_MAGICLINKS).union(ResolveFlags::NO_XDEV);
const DIR_FLAGS: OFlags = OFlags::RDONLY.union(OFlags::DIRECTORY).union(OFlags::CLOEXEC);

impl Unpacker<'_> {
    fn run<R: Read>(&mut self, stream: R) -> Result<()> {
        let mut archive = tar::Archive::new(stream);
        let mut entries = archive.entries().map_err(UnpackError::Read)?;
        loop {
            // Between entries the tar crate reads headers, GNU long names and PAX records
            // into memory: only then is the metadata budget armed.
            self.gate.meta_left.set(Some(self.limits.max_metadata));
            let next = entries.next();
            self.gate.meta_left.set(None);
            let Some(entry) = next else { return Ok(()) };
            let mut entry = entry.map_err(UnpackError::Read)?;
            self.stats.entries += 1;
            if self.stats.entries > self.limits.max_entries {
                return Err(UnpackError::TooManyEntries { limit: self.limits.max_entries });
            }
            self.entry(&mut entry)?;
            // Data the handler did not read (devices, links with a size...) is skipped here,
            // outside the metadata budget.
            io::copy(&mut entry, &mut io::sink()).map_err(UnpackError::Read)?;
        }
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        let raw = entry.path_bytes().into_owned();
        let comps = clean(&raw, self.limits)?;
        let kind = entry.header().entry_type();
        let Some((&name, parent)) = comps.split_last() else {
            // "./" itself: the layer root exists already; anything else may not replace it.
            return if kind.is_dir() { Ok(()) } else { Err(UnpackError::EntryIsRoot { path: lossy(&raw) }) };
        };
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            return self.whiteout(&raw, parent, name, hidden);
        }
        let mode = Mode::from_raw_mode(entry.header().mode().map_err(UnpackError::Read)? & 0o7777);
        // Some writers leave uid/gid blank: that is root.
        let owner = (entry.header().uid().unwrap_or(0), entry.header().gid().unwrap_or(0));
        let mtime = entry.header().mtime().unwrap_or(0);
        match kind {
            k if k.is_dir() => {
                let dir = self.parent(&raw, parent)?;
                self.make_dir(&raw, dir.as_fd(), name, mode, owner)?;
                // Set once the layer is complete: entries created inside would change it.
                self.dir_times.push((join(&comps), mtime));
                Ok(())
            }
            k if k.is_file() || k == tar::EntryType::GNUSparse => {
                let xattrs = wanted_xattrs(entry);
                let dir = self.parent(&raw, parent)?;
                self.make_file(&raw, dir.as_fd(), name, mode, owner, mtime, entry, &xattrs)
            }
            tar::EntryType::Symlink => {
                let target = entry.link_name_bytes().map(|t| t.into_owned()).unwrap_or_default();
                let dir = self.parent(&raw, parent)?;
                remove_at(dir.as_fd(), name).map_err(|e| fs_err(&raw, "remove old entry", e))?;
                rustix::fs::symlinkat(os(&target), dir.as_fd(), os(name)).map_err(|e| fs_err(&raw, "symlinkat", e))?;
                self.chown(&raw, dir.as_fd(), name, owner)?;
                set_mtime(dir.as_fd(), name, mtime);
                Ok(())
            }
            tar::EntryType::Link => {
                let target = entry.link_name_bytes().map(|t| t.into_owned()).unwrap_or_default();
                let dir = self.parent(&raw, parent)?;
                self.hardlink(&raw, dir.as_fd(), name, &target)
            }
            tar::EntryType::Fifo => {
                let dir = self.parent(&raw, parent)?;
                remove_at(dir.as_fd(), name).map_err(|e| fs_err(&raw, "remove old entry", e))?;
                rustix::fs::mknodat(dir.as_fd(), os(name), FileType::Fifo, mode, 0).map_err(|e| fs_err(&raw, "mknodat fifo", e))?;
                self.chown(&raw, dir.as_fd(), name, owner)?;
                rustix::fs::chmodat(dir.as_fd(), os(name), mode, AtFlags::empty()).map_err(|e| fs_err(&raw, "fchmodat", e))
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                // Never created: an image has no business shipping devices (the sandbox's /dev is
                // built by the runtime), and a 0:0 char device would act as a whiteout.
                self.stats.devices += 1;
                Ok(())
            }
            // PAX/GNU metadata entries are consumed by the tar crate; anything else is ignored.
            _ => Ok(()),
        }
    }

    /// Gives directories their mtimes from the tar, last-declared first. Best effort,
    /// like every timestamp: a directory replaced since is resolved inside the root anyway.
    fn apply_dir_times(&mut self) {
        let mut done = std::collections::HashSet::new();
        for (path, mtime) in std::mem::take(&mut self.dir_times).into_iter().rev() {
            // A directory declared twice keeps its last declaration's time.
            if !done.insert(path.clone()) {
                continue;
            }
            if let Ok(fd) = rustix::fs::openat2(&self.root, os(&path), DIR_FLAGS | OFlags::NOFOLLOW, Mode::empty(), IN_ROOT) {
                let _ = rustix::fs::futimens(&fd, &timestamps(mtime));
            }
        }
    }

    /// Resolves (creating as needed) the parent directory inside the layer root.
    fn parent(&mut self, raw: &[u8], comps: &[&[u8]]) -> Result<OwnedFd> {
        let key = join(comps);
        if let Some((k, fd)) = &self.parent_cache {
            if *k == key {
                return fd.try_clone().map_err(|e| fs_err(raw, "dup", e));
            }
        }
        let fd = self.ensure_dir(raw, comps)?;
        self.parent_cache = Some((key, fd.try_clone().map_err(|e| fs_err(raw, "dup", e))?));
        Ok(fd)
    }

    /// Opens `comps` as a directory inside the layer root, creating what is missing. A
    /// component that is a symlink whose target does not exist yet (`evil -> /tmp`) is
    /// followed the way the kernel would inside the root: its target is created in the layer.
    /// (A relative target is joined to the link's lexical parent path, which differs from the
    /// kernel only when that path itself went through a symlink; either way it stays inside.)
    /// No recursion: a hostile chain of links costs at most 40 restarts of the walk.
    fn ensure_dir(&self, raw: &[u8], comps: &[&[u8]]) -> Result<OwnedFd> {
        if comps.is_empty() {
            return self.root.try_clone().map_err(|e| fs_err(raw, "dup", e));
        }
        // Fast path: the whole path exists; the kernel resolves it inside the root.
        match rustix::fs::openat2(&self.root, os(&join(comps)), DIR_FLAGS, Mode::empty(), IN_ROOT) {
            Ok(fd) => return Ok(fd),
            // missing, or a whiteout of this layer in the way (handled below)
            Err(Errno::NOENT | Errno::NOTDIR) => {}
            Err(e) => return Err(fs_err(raw, "openat2 parent dir (RESOLVE_IN_ROOT)", e)),
        }
        // Slow path: walk from the root one component at a time, never following anything.
        let mut path: Vec<Vec<u8>> = comps.iter().map(|c| c.to_vec()).collect();
        let mut hops = 0;
        'walk: loop {
            let mut fd = self.root.try_clone().map_err(|e| fs_err(raw, "dup", e))?;
            for i in 0..path.len() {
                let c = os(&path[i]);
                match rustix::fs::mkdirat(&fd, c, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(fs_err(raw, "mkdirat parent dir", e)),
                }
                match rustix::fs::openat(&fd, c, DIR_FLAGS | OFlags::NOFOLLOW, Mode::empty()) {
                    Ok(next) => fd = next,
                    Err(e @ (Errno::NOTDIR | Errno::LOOP)) => {
                        let st = rustix::fs::statat(&fd, c, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| fs_err(raw, "fstatat", e))?;
                        if is_whiteout(&st) {
                            // `.wh.a` then `a/b` in one layer: `a` is a new directory that must
                            // hide the lower layers' `a`, i.e. an opaque one.
                            rustix::fs::unlinkat(&fd, c, AtFlags::empty()).map_err(|e| fs_err(raw, "unlinkat whiteout", e))?;
                            rustix::fs::mkdirat(&fd, c, Mode::from_raw_mode(0o755)).map_err(|e| fs_err(raw, "mkdirat", e))?;
                            self.mark_opaque(raw, fd.as_fd(), &path[i])?;
                            continue 'walk;
                        }
                        if FileType::from_raw_mode(st.st_mode) != FileType::Symlink || hops >= 40 {
                            return Err(fs_err(raw, "open parent dir (not a directory, or a symlink loop)", e));
                        }
                        hops += 1;
                        let target = rustix::fs::readlinkat(&fd, c, Vec::new()).map_err(|e| fs_err(raw, "readlinkat", e))?;
                        let target = target.as_bytes();
                        let mut full = if target.starts_with(b"/") {
                            Vec::new()
                        } else {
                            join(&path[..i].iter().map(Vec::as_slice).collect::<Vec<_>>())
                        };
                        full.push(b'/');
                        full.extend_from_slice(target);
                        let mut resolved: Vec<Vec<u8>> = clean_with(&full, self.limits, true)?.into_iter().map(<[u8]>::to_vec).collect();
                        resolved.extend(path[i + 1..].iter().cloned());
                        if resolved.len() > self.limits.max_depth {
                            return Err(UnpackError::TooDeep { path: lossy(&raw[..256.min(raw.len())]), limit: self.limits.max_depth });
                        }
                        path = resolved;
                        continue 'walk;
                    }
                    Err(e) => return Err(fs_err(raw, "open parent dir", e)),
                }
            }
            return Ok(fd);
        }
    }

    fn make_dir(&mut self, raw: &[u8], dir: BorrowedFd<'_>, name: &[u8], mode: Mode, owner: (u64, u64)) -> Result<()> {
        match rustix::fs::mkdirat(dir, os(name), Mode::from_raw_mode(0o700)) {
            Ok(()) => {}
            Err(Errno::EXIST) => {
                let st = rustix::fs::statat(dir, os(name), AtFlags::SYMLINK_NOFOLLOW).map_err(|e| fs_err(raw, "fstatat", e))?;
                if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
                    // e.g. `sub -> ../external` then dir `sub`: replace the link, never chmod its target.
                    remove_at(dir, name).map_err(|e| fs_err(raw, "remove old entry", e))?;
                    rustix::fs::mkdirat(dir, os(name), Mode::from_raw_mode(0o700)).map_err(|e| fs_err(raw, "mkdirat", e))?;
                    if is_whiteout(&st) {
                        self.mark_opaque(raw, dir, name)?;
                    }
                }
            }
            Err(e) => return Err(fs_err(raw, "mkdirat", e)),
        }
        let fd = rustix::fs::openat(dir, os(name), DIR_FLAGS | OFlags::NOFOLLOW, Mode::empty()).map_err(|e| fs_err(raw, "open dir", e))?;
        if self.as_root {
            rustix::fs::fchown(&fd, Some(uid(owner.0)), Some(gid(owner.1))).map_err(|e| fs_err(raw, "fchown", e))?;
        }
        rustix::fs::fchmod(&fd, mode).map_err(|e| fs_err(raw, "fchmod", e))?;
        // A directory re-declared later may have been the cached parent: it still is the same inode.
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn make_file<R: Read>(
        &mut self,
        raw: &[u8],
        dir: BorrowedFd<'_>,
        name: &[u8],
        mode: Mode,
        owner: (u64, u64),
        mtime: u64,
        data: &mut R,
        xattrs: &[(String, Vec<u8>)],
    ) -> Result<()> {
        remove_at(dir, name).map_err(|e| fs_err(raw, "remove old entry", e))?;
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd =
            rustix::fs::openat(dir, os(name), flags, Mode::from_raw_mode(0o600)).map_err(|e| fs_err(raw, "openat O_CREAT|O_EXCL", e))?;
        let mut file = File::from(fd);
        loop {
            let n = match data.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(UnpackError::Read(e)),
            };
            file.write_all(&self.buf[..n]).map_err(|e| fs_err(raw, "write", e))?;
        }
        if self.as_root {
            rustix::fs::fchown(&file, Some(uid(owner.0)), Some(gid(owner.1))).map_err(|e| fs_err(raw, "fchown", e))?;
        }
        for (k, v) in xattrs {
            // Best effort: the filesystem may not support them; the file is still usable.
            let _ = rustix::fs::fsetxattr(&file, k.as_str(), v, XattrFlags::empty());
        }
        // After fchown, which clears setuid bits.
        rustix::fs::fchmod(&file, mode).map_err(|e| fs_err(raw, "fchmod", e))?;
        let t = timestamps(mtime);
        let _ = rustix::fs::futimens(&file, &t);
        Ok(())
    }

    fn hardlink(&mut self, raw: &[u8], dir: BorrowedFd<'_>, name: &[u8], target: &[u8]) -> Result<()> {
        let bad = |source: io::Error| UnpackError::HardlinkTarget { path: lossy(raw), target: lossy(target), source };
        let tcomps =
            clean(target, self.limits).map_err(|_| bad(io::Error::new(io::ErrorKind::InvalidInput, "target is outside the layer")))?;
        let Some((&tname, tparent)) = tcomps.split_last() else {
            return Err(bad(io::Error::new(io::ErrorKind::InvalidInput, "target is the layer root")));
        };
        // The target's directory is resolved inside the layer root, never created.
        let tdir = rustix::fs::openat2(&self.root, os(&join(tparent)), DIR_FLAGS, Mode::empty(), IN_ROOT).map_err(|e| bad(e.into()))?;
        let st = rustix::fs::statat(&tdir, os(tname), AtFlags::SYMLINK_NOFOLLOW).map_err(|e| bad(e.into()))?;
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            return Err(bad(io::Error::new(io::ErrorKind::InvalidInput, "target is a directory")));
        }
        if let Ok(cur) = rustix::fs::statat(dir, os(name), AtFlags::SYMLINK_NOFOLLOW) {
            if cur.st_ino == st.st_ino && cur.st_dev == st.st_dev {
                return Ok(());
            }
        }
        remove_at(dir, name).map_err(|e| fs_err(raw, "remove old entry", e))?;
        // flags 0: a symlink target is linked itself, not followed.
        rustix::fs::linkat(&tdir, os(tname), dir, os(name), AtFlags::empty()).map_err(|e| fs_err(raw, "linkat", e))
    }

    fn whiteout(&mut self, raw: &[u8], parent: &[&[u8]], name: &[u8], hidden: &[u8]) -> Result<()> {
        if name == OPAQUE_MARKER {
            let dir = self.parent(raw, parent)?;
            // fsetxattr needs a real (not O_PATH) fd: DIR_FLAGS opens O_RDONLY.
            rustix::fs::fsetxattr(&dir, OPAQUE_XATTR, b"y", XattrFlags::empty())
                .map_err(|e| fs_err(raw, "fsetxattr trusted.overlay.opaque (needs root and a filesystem with trusted xattrs)", e))?;
            self.stats.opaque += 1;
            return Ok(());
        }
        if hidden.starts_with(WHITEOUT_PREFIX) {
            // Other AUFS metadata (.wh..wh.plnk, .wh..wh.aufs): not content.
            return Ok(());
        }
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(UnpackError::BadWhiteout { path: lossy(raw) });
        }
        let dir = self.parent(raw, parent)?;
        remove_at(dir.as_fd(), hidden).map_err(|e| fs_err(raw, "remove whited-out entry", e))?;
        // A 0:0 character device is overlayfs's whiteout (unprivileged mknod allows it since 5.8).
        rustix::fs::mknodat(dir.as_fd(), os(hidden), FileType::CharacterDevice, Mode::empty(), 0)
            .map_err(|e| fs_err(raw, "mknodat whiteout (0:0 char device)", e))?;
        self.stats.whiteouts += 1;
        Ok(())
    }

    fn mark_opaque(&self, raw: &[u8], dir: BorrowedFd<'_>, name: &[u8]) -> Result<()> {
        let fd = rustix::fs::openat(dir, os(name), DIR_FLAGS | OFlags::NOFOLLOW, Mode::empty()).map_err(|e| fs_err(raw, "open dir", e))?;
        rustix::fs::fsetxattr(&fd, OPAQUE_XATTR, b"y", XattrFlags::empty())
            .map_err(|e| fs_err(raw, "fsetxattr trusted.overlay.opaque (needs root and a filesystem with trusted xattrs)", e))
    }

    fn chown(&self, raw: &[u8], dir: BorrowedFd<'_>, name: &[u8], owner: (u64, u64)) -> Result<()> {
        if self.as_root {
            rustix::fs::chownat(dir, os(name), Some(uid(owner.0)), Some(gid(owner.1)), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| fs_err(raw, "fchownat", e))?;
        }
        Ok(())
    }
}

/// An overlayfs whiteout: a 0:0 character device.
fn is_whiteout(st: &rustix::fs::Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::CharacterDevice && st.st_rdev == 0
}

fn uid(id: u64) -> Uid {
    Uid::from_raw(u32::try_from(id).unwrap_or(65534))
}

fn gid(id: u64) -> Gid {
    Gid::from_raw(u32::try_from(id).unwrap_or(65534))
}

fn timestamps(mtime: u64) -> Timestamps {
    let t = Timespec { tv_sec: i64::try_from(mtime).unwrap_or(0), tv_nsec: 0 };
    Timestamps { last_access: t, last_modification: t }
}

fn set_mtime(dir: BorrowedFd<'_>, name: &[u8], mtime: u64) {
    let _ = rustix::fs::utimensat(dir, os(name), &timestamps(mtime), AtFlags::SYMLINK_NOFOLLOW);
}

fn wanted_xattrs<R: Read>(entry: &mut tar::Entry<'_, R>) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    if let Ok(Some(exts)) = entry.pax_extensions() {
        for ext in exts.flatten() {
            let Ok(key) = ext.key() else { continue };
            if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                if name == "security.capability" || name.starts_with("user.") {
                    out.push((name.to_owned(), ext.value_bytes().to_vec()));
                }
            }
        }
    }
    out
}

/// Removes `name` in `dir` whatever it is, without following symlinks; absent is fine.
fn remove_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    match rustix::fs::unlinkat(dir, os(name), AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(Errno::ISDIR) | Err(Errno::PERM) => {
            // Linux returns EISDIR for a directory.
            let sub = rustix::fs::openat(dir, os(name), DIR_FLAGS | OFlags::NOFOLLOW, Mode::empty())?;
            empty_dir(sub.as_fd())?;
            rustix::fs::unlinkat(dir, os(name), AtFlags::REMOVEDIR)?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

fn empty_dir(dir: BorrowedFd<'_>) -> io::Result<()> {
    let mut names = Vec::new();
    for ent in rustix::fs::Dir::read_from(dir)? {
        let ent = ent?;
        let n = ent.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(n.to_vec());
        }
    }
    for n in names {
        remove_at(dir, &n)?;
    }
    Ok(())
}
