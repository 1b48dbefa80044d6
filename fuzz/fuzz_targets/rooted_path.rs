//! The host-side file API of a sandbox (`envbox::sandbox::files::RootFs`,
//! openat2 with RESOLVE_IN_ROOT) on arbitrary sandbox paths, in a hostile
//! root full of escaping symlinks.
//!
//! The fixture, built once per process under `$TMPDIR/envbox-fuzz-rooted-PID/`:
//!
//! ```text
//! outside/marker       "HOST-ONLY-MARKER ..." (must never be read or changed)
//! hostsrc/             a host tree for copy_to (a file, a symlink to /etc/passwd)
//! ro/x/root/           the read-only sandbox root
//! rw/x/root/           a writable sandbox root, rebuilt for every write input
//! ```
//!
//! Each root holds files with known contents (`etc/passwd`, `etc/shadow`,
//! `a/b/c.txt`, ...), a FIFO, and the symlinks `tmp/h -> /`,
//! `s -> /etc/shadow`, `up -> ../../..` (from the root: the fixture's
//! directory), `up2 -> ../..`, `rel_out -> ../outside/marker`, `abs_out`
//! and `abs_dir` (absolute host paths of the marker and its directory),
//! `loop -> loop`, `dangling -> /nope`, `a/b/back -> /a`, and
//! `pself -> /proc/self/root`. When the fuzzer runs as root, the process
//! first enters a private mount namespace and bind-mounts the host's /proc
//! at `<root>/proc` (magic links and a pseudo-filesystem to refuse).
//!
//! Invariants, for any path (raw strings, or built from the fixture's names):
//! - no panic, no hang (a FIFO must not block an open);
//! - `read_file`: data read is the content of one of the root's own files
//!   (never the marker or any host file) and at most the limit;
//! - `open_path` / `mkdir_all`: the descriptor's `/proc/self/fd` link is the
//!   root or below it;
//! - `metadata`: no panic;
//! - `write_file` Ok: reading the same path gives the data written;
//! - `copy_from` to a fresh host directory: every regular file copied has
//!   the content of one of the root's files;
//! - after any operation: the marker's directory, the fixture directory and
//!   the host's `/` have exactly the entries they had (no escape wrote).
#![no_main]

use std::collections::BTreeSet;
use std::ffi::{CString, OsString};
use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use envbox::sandbox::files::RootFs;
use libfuzzer_sys::fuzz_target;

const MARKER: &[u8] = b"HOST-ONLY-MARKER: a file outside every sandbox root\n";

/// Files of a sandbox root and their contents.
const FILES: &[(&str, &[u8])] = &[
    ("etc/passwd", b"INSIDE etc/passwd\n"),
    ("etc/shadow", b"INSIDE etc/shadow\n"),
    ("a/b/c.txt", b"INSIDE a/b/c.txt\n"),
    ("a/f", b"INSIDE a/f\n"),
    ("outside/marker", b"INSIDE outside/marker (a decoy inside the root)\n"),
    ("empty.txt", b""),
];

/// Contents the write and copy operations put into a root.
const WRITTEN: &[u8] = b"FUZZ-WRITE";
const HOST_FILE: &[u8] = b"HOST-SOURCE file for copy_to\n";

const TOKENS: &[&str] = &[
    "a", "b", "c.txt", "..", ".", "tmp", "h", "s", "up", "up2", "etc", "shadow", "passwd", "rel_out", "abs_out", "abs_dir",
    "outside", "marker", "loop", "dangling", "fifo", "empty", "proc", "self", "root", "fd", "0", "status", "new", "", "back", "f",
    "pself", "empty.txt", "x", "ro", "rw",
];

#[derive(Arbitrary, Debug)]
enum PathSpec {
    Raw(String),
    Tokens { absolute: bool, parts: Vec<u8> },
}

#[derive(Arbitrary, Debug)]
enum Op {
    Read { limit: u8 },
    OpenPath,
    Metadata,
    Write { data: Vec<u8>, mode: u16 },
    MkdirAll { mode: u16 },
    CopyFrom,
    CopyTo,
}

#[derive(Arbitrary, Debug)]
struct Input {
    op: Op,
    path: PathSpec,
}

struct Fixture {
    base: PathBuf,
    ro_root: PathBuf,
    ro: RootFs,
    rw_root: PathBuf,
    proc_mounted: bool,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();
static COUNTER: AtomicU64 = AtomicU64::new(0);

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// Private mount namespace with the host's /proc bound at `<root>/proc`;
/// false when that is not possible (not root).
fn mount_proc(root: &Path) -> bool {
    // SAFETY: plain syscalls with valid NUL-terminated strings.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return false;
        }
        // Nothing mounted here may propagate back to the host.
        if libc::mount(std::ptr::null(), c"/".as_ptr(), std::ptr::null(), libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()) != 0 {
            return false;
        }
        let target = cpath(&root.join("proc"));
        libc::mount(c"/proc".as_ptr(), target.as_ptr(), std::ptr::null(), libc::MS_BIND | libc::MS_REC, std::ptr::null()) == 0
    }
}

fn build_root(root: &Path, base: &Path) {
    for d in ["etc", "a/b", "a/empty", "tmp", "proc", "outside"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    for (p, c) in FILES {
        fs::write(root.join(p), c).unwrap();
    }
    let links: &[(&str, PathBuf)] = &[
        ("tmp/h", "/".into()),
        ("s", "/etc/shadow".into()),
        ("up", "../../..".into()),
        ("up2", "../..".into()),
        ("rel_out", "../outside/marker".into()),
        ("abs_out", base.join("outside/marker")),
        ("abs_dir", base.join("outside")),
        ("loop", "loop".into()),
        ("dangling", "/nope".into()),
        ("a/b/back", "/a".into()),
        ("pself", "/proc/self/root".into()),
    ];
    for (name, target) in links {
        symlink(target, root.join(name)).unwrap();
    }
    let fifo = cpath(&root.join("fifo"));
    // SAFETY: a valid path string.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0, "mkfifo");
}

extern "C" fn cleanup() {
    if let Some(f) = FIXTURE.get() {
        if f.proc_mounted {
            let p = cpath(&f.ro_root.join("proc"));
            // SAFETY: a valid path string.
            unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = fs::remove_dir_all(&f.base);
    }
}

/// Removes the fixtures of fuzzer processes that are gone (a crash skips
/// the atexit cleanup; their /proc bind mount died with their namespace).
fn remove_stale() {
    let Ok(rd) = fs::read_dir(std::env::temp_dir()) else { return };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("envbox-fuzz-rooted-")) else { continue };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

fn fixture() -> &'static Fixture {
    FIXTURE.get_or_init(|| {
        remove_stale();
        let base = std::env::temp_dir().join(format!("envbox-fuzz-rooted-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        fs::create_dir_all(base.join("outside/sub")).unwrap();
        fs::write(base.join("outside/marker"), MARKER).unwrap();
        fs::create_dir_all(base.join("hostsrc/d")).unwrap();
        fs::write(base.join("hostsrc/file"), HOST_FILE).unwrap();
        fs::write(base.join("hostsrc/d/file"), HOST_FILE).unwrap();
        symlink("/etc/passwd", base.join("hostsrc/passwd-link")).unwrap();
        symlink("../../outside", base.join("hostsrc/d/out-link")).unwrap();
        fs::create_dir_all(base.join("dl")).unwrap();
        let ro_root = base.join("ro/x/root");
        build_root(&ro_root, &base);
        let rw_root = base.join("rw/x/root");
        let proc_mounted = mount_proc(&ro_root);
        let ro = RootFs::open_dir(&ro_root).unwrap();
        // SAFETY: registers a function without arguments.
        unsafe { libc::atexit(cleanup) };
        Fixture { base, ro_root, ro, rw_root, proc_mounted }
    })
}

fn names(dir: &Path) -> BTreeSet<OsString> {
    fs::read_dir(dir).map(|rd| rd.filter_map(|e| e.ok().map(|e| e.file_name())).collect()).unwrap_or_default()
}

/// Everything below `dir` (not following symlinks): path, and content or
/// link target.
fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(meta) = p.symlink_metadata() else { continue };
            if meta.is_dir() {
                stack.push(p.clone());
                out.push((p, b"<dir>".to_vec()));
            } else if meta.is_symlink() {
                out.push((p.clone(), fs::read_link(&p).map(|t| t.as_os_str().as_bytes().to_vec()).unwrap_or_default()));
            } else if meta.is_file() {
                out.push((p.clone(), fs::read(&p).unwrap_or_default()));
            } else {
                out.push((p, b"<other>".to_vec()));
            }
        }
    }
    out.sort();
    out
}

fn fd_path(fd: &OwnedFd) -> PathBuf {
    fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("readlink of an open descriptor")
}

fn assert_inside(fd: &OwnedFd, root: &Path, what: &str) {
    let p = fd_path(fd);
    assert!(p == root || p.starts_with(root), "{what}: descriptor of {p:?} is outside the root {root:?}");
}

fn is_root_content(data: &[u8]) -> bool {
    FILES.iter().any(|(_, c)| *c == data) || data == WRITTEN || data == HOST_FILE
}

fn make_path(spec: &PathSpec) -> String {
    match spec {
        PathSpec::Raw(s) => s.clone(),
        PathSpec::Tokens { absolute, parts } => {
            let mut s = String::from(if *absolute { "/" } else { "" });
            for (i, b) in parts.iter().take(24).enumerate() {
                if i > 0 {
                    s.push('/');
                }
                s.push_str(TOKENS[usize::from(*b) % TOKENS.len()]);
            }
            s
        }
    }
}

struct Snapshot {
    outside: Vec<(PathBuf, Vec<u8>)>,
    base: BTreeSet<OsString>,
    host_root: BTreeSet<OsString>,
    rw_parents: (BTreeSet<OsString>, BTreeSet<OsString>),
}

fn snapshot(f: &Fixture) -> Snapshot {
    Snapshot {
        outside: tree(&f.base.join("outside")),
        base: names(&f.base),
        host_root: names(Path::new("/")),
        rw_parents: (names(&f.base.join("rw/x")), names(&f.base.join("rw"))),
    }
}

fn check_unchanged(f: &Fixture, before: &Snapshot, what: &str) {
    let after = snapshot(f);
    assert!(after.outside == before.outside, "{what}: the host directory outside the root changed: {:?}", after.outside);
    assert_eq!(after.base, before.base, "{what}: the fixture directory changed");
    assert_eq!(after.host_root, before.host_root, "{what}: the host's / changed");
    assert_eq!(after.rw_parents, before.rw_parents, "{what}: a parent of the writable root changed");
}

fuzz_target!(|input: Input| {
    let f = fixture();
    let path = make_path(&input.path);
    let what = format!("{:?} {path:?}", input.op);
    match &input.op {
        Op::Read { limit } => {
            let limit = u64::from(*limit);
            if let Ok(data) = f.ro.read_file(&path, limit) {
                assert!(data.len() as u64 <= limit, "{what}: read {} bytes over the limit", data.len());
                assert!(is_root_content(&data), "{what}: read {:?}, not a file of the root", String::from_utf8_lossy(&data));
            }
        }
        Op::OpenPath => {
            if let Ok(fd) = f.ro.open_path(&path) {
                assert_inside(&fd, &f.ro_root, &what);
            }
        }
        Op::Metadata => {
            let _ = f.ro.metadata(&path);
        }
        Op::Write { .. } | Op::MkdirAll { .. } | Op::CopyFrom | Op::CopyTo => {
            if !matches!(input.op, Op::CopyFrom) {
                let _ = fs::remove_dir_all(&f.rw_root);
                build_root(&f.rw_root, &f.base);
            }
            let before = snapshot(f);
            match &input.op {
                Op::CopyFrom => {
                    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
                    let dst = f.base.join("dl").join(n.to_string());
                    fs::create_dir(&dst).unwrap();
                    // Into an existing directory, or as a new name (so "/" copies the whole root).
                    let _ = f.ro.copy_from(&path, &if n % 2 == 0 { dst.clone() } else { dst.join("new") });
                    for (p, content) in tree(&dst) {
                        let meta = p.symlink_metadata().unwrap();
                        if meta.is_file() {
                            assert!(is_root_content(&content), "{what}: copied {p:?} with {:?}", String::from_utf8_lossy(&content));
                        }
                    }
                    fs::remove_dir_all(&dst).unwrap();
                }
                _ => {
                    let rw = RootFs::open_dir(&f.rw_root).unwrap();
                    match &input.op {
                        Op::Write { data, mode } => {
                            let data = if data.is_empty() { WRITTEN.to_vec() } else { data.iter().copied().take(64).collect() };
                            if rw.write_file(&path, &data, u32::from(*mode)).is_ok() {
                                let back = rw.read_file(&path, 1 << 20).unwrap_or_else(|e| panic!("{what}: written, then unreadable: {e}"));
                                assert_eq!(back, data, "{what}: read back differs");
                            }
                        }
                        Op::MkdirAll { mode } => {
                            if let Ok(fd) = rw.mkdir_all(&path, u32::from(*mode)) {
                                assert_inside(&fd, &f.rw_root, &what);
                                let st = fs::metadata(fd_path(&fd)).unwrap();
                                assert!(st.is_dir(), "{what}: not a directory");
                            }
                        }
                        Op::CopyTo => {
                            let _ = rw.copy_to(&f.base.join("hostsrc"), &path);
                            let _ = rw.copy_to(&f.base.join("hostsrc/file"), &path);
                        }
                        _ => unreachable!(),
                    }
                }
            }
            check_unchanged(f, &before, &what);
        }
    }
});
