//! The attack battery of SECURITY.md §3, run for real: each test is named
//! after its case id, runs the attack inside a sandbox (or against the file
//! and HTTP APIs) and asserts the outcome the battery expects. Root only.
//!
//! Not here: R4 (disk fill), L2 (runtime fd leak), L3 (crash of the
//! runtime), L4, A7 (fuzzing) — the lead's part of the hardening issue —
//! and the U cases (image unpacking), which live with rootfs-tools.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::TestRoot;
use envbox::config::Seccomp;
use envbox::{Error, RunOptions, Sandbox, SandboxConfig};

// ---------------------------------------------------------------- helpers

fn create(root: &TestRoot, name: &str, edit: impl FnOnce(&mut SandboxConfig)) -> Sandbox {
    let mut cfg = root.config(common::debian());
    edit(&mut cfg);
    Sandbox::create(&cfg, name).unwrap()
}

fn debian(root: &TestRoot, name: &str) -> Sandbox {
    create(root, name, |_| {})
}

/// Stdout of `cmd`, stderr appended.
fn sh(sb: &Sandbox, cmd: &str) -> String {
    let o = sb.run(cmd).unwrap();
    format!("{}{}", o.stdout_str(), o.stderr_str())
}

fn code(sb: &Sandbox, cmd: &str) -> i32 {
    sb.run(cmd).unwrap().exit_code
}

/// Python helpers every probe script starts with: `sc(nr, *args)` makes a
/// raw syscall and returns "ok" or the errno's name.
const PY_PRELUDE: &str = r#"
import ctypes, errno, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def sc(nr, *args):
    args = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    r = libc.syscall(ctypes.c_long(nr), *args)
    return "ok" if r >= 0 else errno.errorcode[ctypes.get_errno()]
def err(f):
    try:
        f()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
"#;

/// Runs a python probe in the sandbox; returns stdout and stderr.
fn py(sb: &Sandbox, script: &str) -> String {
    sb.write_file("/tmp/probe.py", format!("{PY_PRELUDE}\n{script}").as_bytes()).unwrap();
    sh(sb, "python3 /tmp/probe.py")
}

/// The first of `names` found in the sandbox's cgroup directories (v2, or
/// the v1 hierarchies of a hybrid host).
fn cgroup_file(sb: &Sandbox, names: &[&str]) -> String {
    for dir in sb.cgroup().unwrap().dirs() {
        for name in names {
            if let Ok(text) = std::fs::read_to_string(dir.join(name)) {
                return text;
            }
        }
    }
    panic!("none of {names:?} in the sandbox's cgroups")
}

fn cgroup_value(sb: &Sandbox, names: &[&str], key: &str) -> u64 {
    let text = cgroup_file(sb, names);
    text.lines().find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse().ok())).unwrap_or_else(|| panic!("no {key:?} in {text}"))
}

/// A copy of the busybox test rootfs to plant hostile content in.
fn busybox_copy(tag: &str) -> tempfile::TempDir {
    let envbox::Image::Dir(src) = common::busybox() else { unreachable!() };
    let dir = tempfile::Builder::new().prefix(&format!("envbox-img-{tag}-")).tempdir().unwrap();
    let st = std::process::Command::new("cp").arg("-a").arg(format!("{}/.", src.display())).arg(dir.path()).status().unwrap();
    assert!(st.success());
    dir
}

/// Host mounts that do not belong to any test's state root.
fn foreign_host_mounts() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| !l.contains("/tmp/envbox-test-") && !l.contains("envbox-img-"))
        .map(|l| l.split_whitespace().skip(3).take(2).collect::<Vec<_>>().join(" "))
        .collect()
}

// ------------------------------------------- F: filesystem and mounts

#[test]
fn f01_chroot_fails_and_dotdot_stays_at_the_root() {
    require_root!("f01_chroot_fails_and_dotdot_stays_at_the_root");
    let root = TestRoot::new("f01");
    let sb = debian(&root, "f01");
    let o = py(
        &sb,
        r#"
os.makedirs("/e", exist_ok=True)
print(err(lambda: os.chroot("/e")))
os.chdir("/tmp")
for _ in range(99): os.chdir("..")
print(os.getcwd(), sorted(os.listdir(".")) == sorted(os.listdir("/")), "bin" in os.listdir("."))
"#,
    );
    assert_eq!(o, "EPERM\n/ True True\n");
    // From the host: the agent's root is not the host's.
    use std::os::unix::fs::MetadataExt;
    let (theirs, ours) = (std::fs::metadata(format!("/proc/{}/root/", sb.pid())).unwrap(), std::fs::metadata("/").unwrap());
    assert_ne!((theirs.dev(), theirs.ino()), (ours.dev(), ours.ino()));
    drop(sb);
    root.assert_clean();
}

#[test]
fn f02_old_root_and_host_mounts_are_gone() {
    require_root!("f02_old_root_and_host_mounts_are_gone");
    let root = TestRoot::new("f02");
    let sb = debian(&root, "f02");
    assert_eq!(sh(&sb, "grep -c -e oldroot -e old_root /proc/self/mountinfo"), "0\n");
    assert_ne!(code(&sb, "ls -d /.oldroot /old_root"), 0);
    let mi = sh(&sb, "cat /proc/self/mountinfo");
    for line in mi.lines() {
        let target = line.split_whitespace().nth(4).unwrap();
        assert!(
            target == "/" || ["/dev", "/proc", "/sys"].iter().any(|p| target == *p || target.starts_with(&format!("{p}/"))),
            "unexpected mount {target} in the sandbox:\n{mi}"
        );
    }
    let envbox::Image::Dir(lower) = common::debian() else { unreachable!() };
    for host in [lower.display().to_string(), root.path.display().to_string()] {
        assert!(!mi.contains(&host), "mountinfo names the host path {host}:\n{mi}");
    }
    drop(sb);
    root.assert_clean();
}

#[test]
fn f03_mount_family_fails_from_inside() {
    require_root!("f03_mount_family_fails_from_inside");
    let root = TestRoot::new("f03");
    let sb = debian(&root, "f03");
    let before = sh(&sb, "cat /proc/self/mountinfo");
    for cmd in ["mount -t tmpfs t /mnt", "umount /proc", "mount -o remount,rw /", "mount --bind / /mnt", "umount -l /", "umount -l /sys"] {
        assert_ne!(code(&sb, cmd), 0, "{cmd} must fail");
    }
    // The new mount API and pivot_root, called directly (x86_64 numbers).
    let o = py(
        &sb,
        r#"
print(sc(430, b"tmpfs", 0), sc(428, -100, b"/", 0), sc(429, -100, b"/", -100, b"/mnt", 0),
      sc(432, 3, 0, 0), sc(433, -100, b"/", 0), sc(442, -100, b"/", 0, 0, 0), sc(155, b"/", b"/mnt"),
      sc(166, b"/proc", 2), sc(165, b"t", b"/mnt", b"tmpfs", 0, 0))
"#,
    );
    assert_eq!(o, "EPERM EPERM EPERM EPERM EPERM EPERM EPERM EPERM EPERM\n");
    assert_eq!(sh(&sb, "cat /proc/self/mountinfo"), before);
    drop(sb);
    root.assert_clean();
}

#[test]
fn f04_mounts_do_not_propagate_either_way() {
    require_root!("f04_mounts_do_not_propagate_either_way");
    let root = TestRoot::new("f04");
    let sb = debian(&root, "f04");
    let tag = root.path.display().to_string();
    let ours = || std::fs::read_to_string("/proc/self/mountinfo").unwrap().lines().filter(|l| l.contains(&tag)).count();
    // The rootfs is mounted in the sandbox's mount namespace only: the host
    // gains no mount at all.
    assert_eq!(ours(), 0, "host mounts of the sandbox");
    // A host mount made after create does not appear inside.
    let probe = PathBuf::from(format!("/tmp/envbox-f04-probe-{}", std::process::id()));
    std::fs::create_dir_all(&probe).unwrap();
    nix::mount::mount(Some("envbox-f04-probe"), &probe, Some("tmpfs"), nix::mount::MsFlags::empty(), None::<&str>).unwrap();
    let inside = sh(&sb, "grep -c envbox-f04-probe /proc/self/mountinfo; true");
    nix::mount::umount(&probe).unwrap();
    std::fs::remove_dir(&probe).unwrap();
    assert_eq!(inside, "0\n");
    // Nothing made inside shows on the host (mounting fails anyway, F3).
    let _ = sb.run("mount -t tmpfs envbox-f04-inside /mnt");
    assert!(!std::fs::read_to_string("/proc/self/mountinfo").unwrap().contains("envbox-f04-inside"));
    sb.delete().unwrap();
    assert_eq!(ours(), 0);
    root.assert_clean();
}

#[test]
fn f05_the_shared_lower_layer_is_never_written() {
    require_root!("f05_the_shared_lower_layer_is_never_written");
    let envbox::Image::Dir(lower) = common::debian() else { unreachable!() };
    let passwd = std::fs::read(lower.join("etc/passwd")).unwrap();
    let etc_mode = std::fs::metadata(lower.join("etc")).unwrap().permissions();
    let root = TestRoot::new("f05");
    let sb = debian(&root, "f05");
    sh(&sb, "echo pwn >/etc/passwd; rm -f /bin/ls; touch /usr/x; chmod 777 /etc");
    assert_eq!(sh(&sb, "cat /etc/passwd"), "pwn\n");
    assert_eq!(std::fs::read(lower.join("etc/passwd")).unwrap(), passwd);
    assert!(std::fs::symlink_metadata(lower.join("usr/bin/ls")).is_ok());
    assert!(std::fs::symlink_metadata(lower.join("usr/x")).is_err());
    assert_eq!(std::fs::metadata(lower.join("etc")).unwrap().permissions(), etc_mode);
    let other = debian(&root, "f05b");
    assert_eq!(code(&other, "ls /bin/ls >/dev/null && ! grep -q pwn /etc/passwd && ! test -e /usr/x"), 0);
    // The lower's host path means nothing inside.
    assert_ne!(code(&sb, &format!("test -e {}", lower.display())), 0);
    drop((sb, other));
    root.assert_clean();
}

#[test]
fn f06_proc_is_masked_and_read_only() {
    require_root!("f06_proc_is_masked_and_read_only");
    let root = TestRoot::new("f06");
    let sb = debian(&root, "f06");
    assert_eq!(sh(&sb, "head -c1 /proc/kcore 2>/dev/null | wc -c; cat /proc/keys /proc/timer_list 2>/dev/null | wc -c"), "0\n0\n");
    assert_ne!(code(&sb, "echo c >/proc/sysrq-trigger"), 0);
    assert_ne!(code(&sb, "echo 3 >/proc/sys/vm/drop_caches"), 0);
    assert_ne!(code(&sb, "echo 1 >/proc/sys/kernel/panic"), 0);
    assert_eq!(sh(&sb, "ls -A /proc/acpi /proc/scsi 2>/dev/null | grep -v '^/proc' | grep -c .; true"), "0\n");
    drop(sb);
    root.assert_clean();
}

#[test]
fn f07_only_sandbox_processes_are_visible() {
    require_root!("f07_only_sandbox_processes_are_visible");
    let root = TestRoot::new("f07");
    let sb = debian(&root, "f07");
    let n: usize = sh(&sb, "ls /proc | grep -c '^[0-9]'").trim().parse().unwrap();
    assert!(n <= 5, "{n} processes visible");
    assert_eq!(sh(&sb, "grep PPid /proc/1/status"), "PPid:\t0\n");
    assert!(sh(&sb, "tr '\\0' ' ' </proc/1/cmdline").starts_with("envbox __agent"));
    // Our own (host) pid is not nameable inside.
    let me = std::process::id();
    assert!(sh(&sb, &format!("kill -0 {me}")).contains("No such process"));
    drop(sb);
    root.assert_clean();
}

#[test]
fn f08_sys_and_cgroupfs_cannot_be_written() {
    require_root!("f08_sys_and_cgroupfs_cannot_be_written");
    let root = TestRoot::new("f08");
    let sb = create(&root, "f08", |c| c.limits.memory_bytes = Some(256 << 20));
    let limit = cgroup_file(&sb, &["memory.max", "memory.limit_in_bytes"]);
    for cmd in [
        "echo 1 >/sys/kernel/mm/ksm/run",
        "mkdir /sys/fs/cgroup/x",
        "echo $$ >/sys/fs/cgroup/cgroup.procs",
        "echo max >/sys/fs/cgroup/memory.max",
    ] {
        assert_ne!(code(&sb, cmd), 0, "{cmd} must fail");
    }
    // The cgroup namespace: every hierarchy shows the sandbox's cgroup as /.
    let cg = sh(&sb, "cat /proc/self/cgroup");
    assert!(cg.lines().all(|l| l.ends_with(":/")) && cg.contains("0::/\n"), "{cg}");
    assert_eq!(cgroup_file(&sb, &["memory.max", "memory.limit_in_bytes"]), limit);
    drop(sb);
    root.assert_clean();
}

#[test]
fn f09_dev_holds_only_safe_nodes_and_mounts_are_nodev() {
    require_root!("f09_dev_holds_only_safe_nodes_and_mounts_are_nodev");
    // An image that smuggles in a /dev/mem lookalike.
    let img = busybox_copy("f09");
    nix::sys::stat::mknod(
        &img.path().join("mem"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 1),
    )
    .unwrap();
    let root = TestRoot::new("f09");
    let sb = Sandbox::create(&root.config(envbox::Image::Dir(img.path().to_path_buf())), "f09").unwrap();
    assert_eq!(sh(&sb, "ls /dev | tr '\\n' ' '"), "fd full null ptmx pts random shm stderr stdin stdout tty urandom zero ");
    assert_ne!(code(&sb, "mknod /tmp/sda b 8 0"), 0);
    assert_ne!(code(&sb, "mknod /tmp/mem c 1 1"), 0);
    let o = sb.run("head -c 1 /mem").unwrap();
    assert_ne!(o.exit_code, 0);
    assert!(o.stderr_str().contains("Permission denied"), "{}", o.stderr_str());
    // Every mount but /dev and /dev/pts (which hold the allowed nodes) is nodev.
    for line in sh(&sb, "cat /proc/self/mountinfo").lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f[4] != "/dev" && f[4] != "/dev/pts" && !f[3].starts_with("/null") {
            assert!(f[5].split(',').any(|o| o == "nodev"), "{line}");
        }
    }
    drop(sb);
    root.assert_clean();
}

#[test]
fn f10_symlinked_mount_targets_in_the_image_stay_inside() {
    require_root!("f10_symlinked_mount_targets_in_the_image_stay_inside");
    let img = busybox_copy("f10");
    let p = img.path();
    for (link, target) in [("proc", "/"), ("dev", "/host/dev"), ("sys", "../../../../sys")] {
        let _ = std::fs::remove_dir_all(p.join(link));
        let _ = std::fs::remove_file(p.join(link));
        std::os::unix::fs::symlink(target, p.join(link)).unwrap();
    }
    let _ = std::fs::remove_file(p.join("etc/resolv.conf"));
    std::os::unix::fs::symlink("../../../etc/shadow", p.join("etc/resolv.conf")).unwrap();
    let host_before = foreign_host_mounts();
    let root = TestRoot::new("f10");
    match Sandbox::create(&root.config(envbox::Image::Dir(p.to_path_buf())), "f10") {
        Err(e) => eprintln!("create refused the image: {e}"),
        Ok(sb) => {
            // Whatever was mounted, it was mounted inside: the host's /proc
            // is the sandbox's own procfs, and no host file shows through.
            assert!(sh(&sb, "cat /proc/1/cmdline").starts_with("envbox"));
            assert_ne!(code(&sb, "grep -q '^root:' /etc/resolv.conf"), 0);
            sb.delete().unwrap();
        }
    }
    assert_eq!(foreign_host_mounts(), host_before, "the host's mount table changed");
    assert_eq!(std::fs::read_link(p.join("proc")).unwrap(), Path::new("/"), "the image was written through");
    root.assert_clean();
}

#[test]
fn f11_lexical_traversal_stays_in_the_root() {
    require_root!("f11_lexical_traversal_stays_in_the_root");
    let root = TestRoot::new("f11");
    let sb = debian(&root, "f11");
    sh(&sb, "echo sandbox-shadow >/etc/shadow; echo sandbox-host >/etc/hostname");
    assert_eq!(sb.read_file("../../../../etc/shadow").unwrap(), b"sandbox-shadow\n");
    assert_eq!(sb.read_file("/etc/../../../etc/hostname").unwrap(), b"sandbox-host\n");
    let pwn = format!("/tmp/envbox-f11-pwn-{}", std::process::id());
    sb.write_file(&format!("/../..{pwn}"), b"x").unwrap();
    assert!(!Path::new(&pwn).exists(), "a write escaped to the host");
    assert_eq!(sh(&sb, &format!("cat {pwn}")), "x");
    assert!(sb.read_file("/etc/\0shadow").is_err());
    assert!(sb.write_file("/tmp/a\0b", b"x").is_err());
    let long = format!("/{}", "a/".repeat(2500));
    assert!(sb.read_file(&long).is_err());
    assert!(sb.write_file(&long, b"x").is_err());
    drop(sb);
    root.assert_clean();
}

#[test]
fn f12_symlinks_resolve_inside_the_root() {
    require_root!("f12_symlinks_resolve_inside_the_root");
    let root = TestRoot::new("f12");
    let sb = debian(&root, "f12");
    sh(&sb, "echo sandbox-shadow >/etc/shadow; echo sandbox-passwd >/etc/passwd; ln -s / /tmp/h; ln -s /etc/shadow /tmp/s; ln -s ../../../../../../etc /tmp/e");
    assert_eq!(sb.read_file("/tmp/s").unwrap(), b"sandbox-shadow\n");
    assert_eq!(sb.read_file("/tmp/h/etc/passwd").unwrap(), b"sandbox-passwd\n");
    sb.write_file("/tmp/e/envbox-f12-pwn", b"x").unwrap();
    assert!(!Path::new("/etc/envbox-f12-pwn").exists(), "a write escaped to the host's /etc");
    assert_eq!(sh(&sb, "cat /etc/envbox-f12-pwn"), "x");
    let host = tempfile::tempdir().unwrap();
    sb.copy_from("/tmp/h/etc/passwd", host.path().join("passwd")).unwrap();
    assert_eq!(std::fs::read(host.path().join("passwd")).unwrap(), b"sandbox-passwd\n");
    sb.copy_to(host.path().join("passwd"), "/tmp/e/envbox-f12-copy").unwrap();
    assert!(!Path::new("/etc/envbox-f12-copy").exists());
    drop(sb);
    root.assert_clean();
}

#[test]
fn f13_a_symlink_swap_race_never_writes_outside() {
    require_root!("f13_a_symlink_swap_race_never_writes_outside");
    let root = TestRoot::new("f13");
    let sb = debian(&root, "f13");
    sh(&sb, "(while :; do mkdir -p /tmp/d; rm -rf /tmp/d; ln -s / /tmp/d; rm -f /tmp/d; done) >/dev/null 2>&1 &");
    let name = format!("envbox-f13-pwn-{}", std::process::id());
    let mut written = 0;
    for _ in 0..2000 {
        if sb.write_file(&format!("/tmp/d/{name}"), b"x").is_ok() {
            written += 1;
        }
    }
    assert!(!Path::new("/").join(&name).exists(), "a write escaped to the host's /");
    assert!(!Path::new("/tmp").join(&name).exists());
    eprintln!("{written} of 2000 writes landed inside the sandbox");
    drop(sb);
    root.assert_clean();
}

#[test]
fn f14_magic_links_are_refused_by_the_file_api_and_the_workdir() {
    require_root!("f14_magic_links_are_refused_by_the_file_api_and_the_workdir");
    let root = TestRoot::new("f14");
    let sb = debian(&root, "f14");
    for bad in ["/proc/self/root/etc/shadow", "/proc/1/fd/3", "/proc/self/environ", "/proc/self/cwd/etc/passwd"] {
        assert!(sb.read_file(bad).is_err(), "{bad} must be refused");
    }
    drop(sb);
    // A workdir through a magic link: the agent's fds include O_PATH
    // handles of host directories (CVE-2024-21626 pattern).
    for n in 3..=12 {
        let name = format!("f14-{n}");
        let sb = create(&root, &name, |c| c.workdir = format!("/proc/self/fd/{n}"));
        let o = sb.run("pwd; ls").unwrap();
        assert!(o.stdout_str().starts_with("/\n"), "fd {n}: {}{}", o.stdout_str(), o.stderr_str());
        assert!(!o.stdout_str().contains("state.json") && o.stdout_str().contains("bin"), "fd {n}: {}", o.stdout_str());
        sb.delete().unwrap();
    }
    root.assert_clean();
}

#[test]
fn f15_non_regular_files_are_refused_promptly() {
    require_root!("f15_non_regular_files_are_refused_promptly");
    let root = TestRoot::new("f15");
    let sb = debian(&root, "f15");
    sh(&sb, "mkfifo /tmp/f; ln -s /dev/zero /tmp/z");
    for bad in ["/tmp/f", "/tmp/z", "/dev/urandom", "/dev/zero", "/tmp"] {
        let t0 = Instant::now();
        assert!(sb.read_file(bad).is_err(), "{bad} must be refused");
        assert!(t0.elapsed() < Duration::from_secs(2), "{bad} took {:?}", t0.elapsed());
    }
    drop(sb);
    root.assert_clean();
}

// --------------------------------------------- P: privileges, syscalls

#[test]
fn p01_capabilities_are_the_allow_list() {
    require_root!("p01_capabilities_are_the_allow_list");
    let root = TestRoot::new("p01");
    let sb = debian(&root, "p01");
    let status = sh(&sb, "grep -E '^Cap' /proc/self/status");
    let mask = format!("{:016x}", envbox::security::default_caps_mask());
    assert_eq!(status, format!("CapInh:\t{z}\nCapPrm:\t{mask}\nCapEff:\t{mask}\nCapBnd:\t{mask}\nCapAmb:\t{z}\n", z = "0".repeat(16)));
    drop(sb);
    root.assert_clean();
}

#[test]
fn p02_setuid_binaries_gain_nothing() {
    require_root!("p02_setuid_binaries_gain_nothing");
    let root = TestRoot::new("p02");
    let sb = debian(&root, "p02");
    assert_eq!(sh(&sb, "grep NoNewPrivs /proc/self/status"), "NoNewPrivs:\t1\n");
    sh(&sb, "cp /usr/bin/id /tmp/id; chmod 4755 /tmp/id");
    let o = py(&sb, r#"os.setgid(65534); os.setuid(65534); os.execv("/tmp/id", ["id", "-u"])"#);
    assert_eq!(o, "65534\n");
    drop(sb);
    root.assert_clean();
}

#[test]
fn p03_file_capabilities_cannot_be_set() {
    require_root!("p03_file_capabilities_cannot_be_set");
    let root = TestRoot::new("p03");
    let sb = debian(&root, "p03");
    // A v2 security.capability xattr granting CAP_SYS_ADMIN (bit 21).
    let o = py(
        &sb,
        r#"
import struct
open("/tmp/bb", "w").close()
print(err(lambda: os.setxattr("/tmp/bb", "security.capability", struct.pack("<IIIII", 0x02000001, 1 << 21, 0, 0, 0))))
"#,
    );
    assert_eq!(o, "EPERM\n");
    drop(sb);
    root.assert_clean();
}

#[test]
fn p04_open_by_handle_at_is_denied() {
    require_root!("p04_open_by_handle_at_is_denied");
    let root = TestRoot::new("p04");
    let sb = debian(&root, "p04");
    // "shocker": a handle for inode 2 (the root of most filesystems).
    let o = py(
        &sb,
        r#"
import struct
fh = ctypes.create_string_buffer(struct.pack("<Ii", 8, 1) + struct.pack("<Q", 2))
mount_fd = os.open("/", os.O_RDONLY)
out = ctypes.create_string_buffer(128)
mid = ctypes.c_int(0)
print(sc(304, mount_fd, fh, os.O_RDONLY), sc(303, -100, b"/etc/passwd", out, ctypes.byref(mid), 0))
"#,
    );
    assert_eq!(o, "EPERM EPERM\n");
    drop(sb);
    root.assert_clean();
}

#[test]
fn p05_seccomp_denies_the_listed_syscalls() {
    require_root!("p05_seccomp_denies_the_listed_syscalls");
    let root = TestRoot::new("p05");
    let sb = debian(&root, "p05");
    assert_eq!(sh(&sb, "grep -E '^Seccomp:' /proc/self/status"), "Seccomp:\t2\n");
    assert_ne!(code(&sb, "unshare -Ur true"), 0, "nested user namespaces must be blocked");
    assert_ne!(code(&sb, "unshare -U true"), 0);
    // x86_64 syscall numbers.
    let o = py(
        &sb,
        r#"
CLONE_NEWUSER = 0x10000000
checks = [
  ("bpf", sc(321, 0, 0, 0)), ("kexec_load", sc(246, 0, 0, 0, 0)), ("kexec_file_load", sc(320, -1, -1, 0, 0, 0)),
  ("init_module", sc(175, 0, 0, b"")), ("finit_module", sc(313, -1, b"", 0)), ("delete_module", sc(176, b"x", 0)),
  ("add_key", sc(248, b"user", b"k", b"v", 1, -4)), ("keyctl", sc(250, 0, -4, 0)), ("request_key", sc(249, b"user", b"k", 0, 0)),
  ("userfaultfd", sc(323, 0)), ("io_uring_setup", sc(425, 1, 0)), ("perf_event_open", sc(298, 0, 0, -1, -1, 0)),
  ("personality", sc(135, 0x0400000)), ("unshare_user", sc(272, CLONE_NEWUSER)), ("setns", sc(308, -1, 0)),
  ("clone_user", sc(56, CLONE_NEWUSER | 17, 0, 0, 0, 0)), ("ptrace", sc(101, 0, 1, 0, 0)), ("syslog", sc(103, 3, 0, 0)),
  ("acct", sc(163, 0)), ("swapoff", sc(168, b"/x")), ("reboot", sc(169, 0, 0, 0, 0)), ("settimeofday", sc(164, 0, 0)),
  ("clock_settime", sc(227, 0, 0)), ("adjtimex", sc(159, 0)), ("iopl", sc(172, 3)), ("ioperm", sc(173, 0, 1, 1)),
  ("quotactl", sc(179, 0, 0, 0, 0)), ("vhangup", sc(153)), ("chroot", sc(161, b"/")), ("name_to_handle_at", sc(303, -100, b"/", 0, 0, 0)),
  ("process_vm_readv", sc(310, 1, 0, 0, 0, 0, 0)), ("pidfd_getfd", sc(438, -1, 0, 0)), ("kcmp", sc(312, 1, 1, 0, 0, 0)),
]
print(" ".join(n for n, r in checks if r != "EPERM") or "all EPERM")
print("clone3", sc(435, 0, 0), "x32", sc(0x40000000 | 39))
print("allowed", sc(135, 0xffffffff), sc(272, 0x400), sc(39))
import subprocess; print("fork", subprocess.run(["true"]).returncode)
"#,
    );
    assert_eq!(o, "all EPERM\nclone3 ENOSYS x32 ENOSYS\nallowed ok ok ok\nfork 0\n");
    // The command goes on after a denied call.
    assert_eq!(sh(&sb, "unshare -U true 2>/dev/null; echo still running"), "still running\n");
    drop(sb);
    root.assert_clean();
}

#[test]
fn p05_seccomp_can_be_off_or_a_policy_file() {
    require_root!("p05_seccomp_can_be_off_or_a_policy_file");
    let root = TestRoot::new("p05b");
    let off = create(&root, "p05-off", |c| c.seccomp = Seccomp::Off);
    assert_eq!(sh(&off, "grep -E '^Seccomp:' /proc/self/status"), "Seccomp:\t0\n");
    off.delete().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.json");
    std::fs::write(
        &policy,
        r#"{"no_mkdir": {"mismatch_action": "allow", "match_action": {"errno": 1},
            "filter": [{"syscall": "mkdir"}, {"syscall": "mkdirat"}]}}"#,
    )
    .unwrap();
    let sb = create(&root, "p05-file", |c| c.seccomp = Seccomp::File(policy.clone()));
    assert!(sh(&sb, "mkdir /tmp/x").contains("Operation not permitted"));
    assert_eq!(sh(&sb, "touch /tmp/y && echo ok"), "ok\n");
    sb.delete().unwrap();

    // A bad file is refused at create, naming the file, before anything starts.
    std::fs::write(&policy, r#"{"x": {"mismatch_action": "allow", "match_action": "allow", "filter": []}}"#).unwrap();
    for file in [policy.clone(), dir.path().join("nope.json")] {
        let cfg = SandboxConfig { seccomp: Seccomp::File(file.clone()), ..root.config(common::debian()) };
        let e = Sandbox::create(&cfg, "p05-bad").map(|_| ()).unwrap_err();
        let msg = envbox::error::chain(&e);
        assert!(matches!(e, Error::Seccomp(_)) && msg.contains(&file.display().to_string()), "{msg}");
    }
    root.assert_clean();
}

#[test]
fn p06_terminal_injection_fails() {
    require_root!("p06_terminal_injection_fails");
    let root = TestRoot::new("p06");
    let sb = debian(&root, "p06");
    let o = py(
        &sb,
        r#"
import fcntl, termios, pty
print(err(lambda: fcntl.ioctl(0, termios.TIOCSTI, b"x")))
m, s = pty.openpty()
print(err(lambda: fcntl.ioctl(s, termios.TIOCSTI, b"x")), err(lambda: fcntl.ioctl(s, 0x541C, b"\x00")))
"#,
    );
    let lines: Vec<&str> = o.lines().collect();
    assert_ne!(lines[0], "ok", "{o}");
    assert_eq!(lines[1], "EPERM EPERM", "{o}");
    drop(sb);
    root.assert_clean();
}

#[test]
fn p07_kill_reaches_only_the_sandbox() {
    require_root!("p07_kill_reaches_only_the_sandbox");
    let root = TestRoot::new("p07");
    let sb = debian(&root, "p07");
    let other = debian(&root, "p07b");
    other.run("sleep 1000 >/dev/null 2>&1 &").unwrap();
    let other_procs = common::children(other.pid()).len();
    sb.run("sleep 1000 >/dev/null 2>&1 &").unwrap();
    // bash's kill spares bash itself: everything but the agent and the
    // shell dies (README's recipe before grading).
    let _ = sb.run("kill -9 -1; wait");
    assert_eq!(sh(&sb, "echo alive"), "alive\n");
    let left = "for p in /proc/[0-9]*; do tr '\\0' ' ' <$p/cmdline; echo; done 2>/dev/null | grep -c '^sleep 1000'; true";
    assert_eq!(sh(&sb, left), "0\n");
    assert_eq!(sh(&other, "echo alive"), "alive\n");
    assert_eq!(common::children(other.pid()).len(), other_procs);
    let me = std::process::id();
    let o = sh(&sb, &format!("for p in 100 1000 {me}; do kill -0 $p; done"));
    assert_eq!(o.matches("No such process").count(), 3, "{o}");
    drop((sb, other));
    root.assert_clean();
}

#[test]
fn p08_the_shell_and_the_agent_are_closed_to_commands() {
    require_root!("p08_the_shell_and_the_agent_are_closed_to_commands");
    let root = TestRoot::new("p08");
    let sb = debian(&root, "p08");
    // $$ is the shell (commands run inside it), 1 is the agent; the reads
    // come from child processes.
    for f in ["/proc/1/environ", "/proc/1/mem", "/proc/$$/environ", "/proc/$$/mem", "/proc/$$/fd/0", "/proc/$$/fd/1"] {
        let o = sb.run(&format!("dd if={f} of=/dev/null bs=1 count=1 skip=4096")).unwrap();
        assert!(o.stderr_str().contains("Permission denied"), "{f}: {}", o.stderr_str());
    }
    let o = py(
        &sb,
        r#"
shell = os.getppid()
buf = ctypes.create_string_buffer(8)
print(sc(101, 16, shell, 0, 0), sc(101, 16, 1, 0, 0), sc(310, shell, 0, 0, 0, 0, 0))
"#,
    );
    assert_eq!(o, "EPERM EPERM EPERM\n");
    drop(sb);
    root.assert_clean();
}

#[test]
fn p09_kernel_log_and_keyrings_are_closed() {
    require_root!("p09_kernel_log_and_keyrings_are_closed");
    let root = TestRoot::new("p09");
    let sb = debian(&root, "p09");
    assert_ne!(code(&sb, "dmesg"), 0);
    assert_eq!(sh(&sb, "timeout 2 cat /proc/kmsg | wc -c"), "0\n");
    assert_eq!(py(&sb, r#"print(sc(103, 3, 0, 0), sc(250, 0, -3, 0), sc(248, b"user", b"k", b"v", 1, -3))"#), "EPERM EPERM EPERM\n");
    drop(sb);
    root.assert_clean();
}

#[test]
fn p10_the_environment_holds_only_configured_variables() {
    require_root!("p10_the_environment_holds_only_configured_variables");
    let root = TestRoot::new("p10");
    let sb = create(&root, "p10", |c| c.env.push(("CONFIGURED".into(), "yes".into())));
    let env = sh(&sb, "env");
    let keys: Vec<&str> = env.lines().filter_map(|l| l.split_once('=').map(|(k, _)| k)).collect();
    for k in &keys {
        assert!(["PATH", "HOME", "PWD", "SHLVL", "_", "OLDPWD", "CONFIGURED"].contains(k), "unexpected variable {k}:\n{env}");
    }
    assert!(env.contains("CONFIGURED=yes\n"));
    assert!(sh(&sb, "tr '\\0' '\\n' </proc/1/environ").contains("Permission denied"));
    drop(sb);
    root.assert_clean();
}

// ------------------------------------------------- N: namespaces, network

#[test]
fn n01_no_egress_without_a_network() {
    require_root!("n01_no_egress_without_a_network");
    let root = TestRoot::new("n01");
    let sb = debian(&root, "n01");
    let ifaces = sh(&sb, "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '");
    assert_eq!(ifaces, "lo\n");
    let o = py(
        &sb,
        r#"
import socket
def tcp(): socket.create_connection(("1.1.1.1", 53), timeout=3)
def udp(): s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendto(b"x", ("8.8.8.8", 53))
def dns():
    try: socket.getaddrinfo("example.com", 80)
    except socket.gaierror: raise OSError(errno.EHOSTUNREACH, "no dns")
print(err(tcp), err(udp), err(dns))
"#,
    );
    assert_eq!(o, "ENETUNREACH ENETUNREACH EHOSTUNREACH\n");
    drop(sb);
    root.assert_clean();
}

#[test]
fn n02_host_unix_sockets_are_out_of_reach() {
    require_root!("n02_host_unix_sockets_are_out_of_reach");
    use std::os::linux::net::SocketAddrExt;
    let name = format!("envbox-n02-probe-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let _listener = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
    let root = TestRoot::new("n02");
    let sb = debian(&root, "n02");
    assert_eq!(sh(&sb, &format!("grep -c {name} /proc/net/unix; true")), "0\n");
    let o = py(&sb, &format!("import socket\ns = socket.socket(socket.AF_UNIX)\nprint(err(lambda: s.connect('\\0{name}')))"));
    assert_eq!(o, "ECONNREFUSED\n");
    assert_eq!(sh(&sb, "find / -xdev -type s 2>/dev/null; ls /run/docker.sock /var/run/docker.sock 2>/dev/null; true"), "");
    drop(sb);
    root.assert_clean();
}

#[test]
fn n03_our_control_sockets_are_unreachable() {
    require_root!("n03_our_control_sockets_are_unreachable");
    let root = TestRoot::new("n03");
    let sb = debian(&root, "n03");
    let state = sb.state_dir().display().to_string();
    assert_eq!(sh(&sb, &format!("ls -d {state} {state}/agent.sock 2>/dev/null; find / -xdev -name '*.sock' 2>/dev/null; true")), "");
    drop(sb);
    root.assert_clean();
}

#[test]
fn n04_hostname_and_ipc_are_private() {
    require_root!("n04_hostname_and_ipc_are_private");
    let host_name = nix::unistd::gethostname().unwrap();
    let q = std::process::Command::new("ipcmk").arg("-Q").output().unwrap();
    let qid: String = String::from_utf8_lossy(&q.stdout).chars().filter(char::is_ascii_digit).collect();
    let root = TestRoot::new("n04");
    let sb = debian(&root, "n04");
    assert_ne!(code(&sb, "hostname pwn"), 0);
    assert_eq!(nix::unistd::gethostname().unwrap(), host_name);
    assert_eq!(sh(&sb, "hostname"), "n04\n");
    let queues = sh(&sb, "tail -n +2 /proc/sysvipc/msg | wc -l");
    let _ = std::process::Command::new("ipcrm").args(["-q", &qid]).status();
    assert_eq!(queues, "0\n", "a host message queue is visible");
    drop(sb);
    root.assert_clean();
}

// ---------------------------------------------------- R: resource limits

#[test]
fn r01_a_fork_bomb_stops_at_pids_max() {
    require_root!("r01_a_fork_bomb_stops_at_pids_max");
    let root = TestRoot::new("r01");
    let sb = create(&root, "r01", |c| c.limits.pids = Some(32));
    let o = sb.run_with_timeout("for i in $(seq 100); do sleep 30 & done; echo spawned", Duration::from_secs(30)).unwrap();
    assert!(o.stderr_str().contains("Resource temporarily unavailable") || o.stderr_str().contains("fork"), "{}", o.stderr_str());
    assert!(cgroup_value(&sb, &["pids.events"], "max ") > 0);
    sb.reset().unwrap();
    assert_eq!(sh(&sb, "echo ok"), "ok\n");
    drop(sb);
    root.assert_clean();
}

#[test]
fn r02_a_memory_bomb_is_oom_killed_inside_the_sandbox() {
    require_root!("r02_a_memory_bomb_is_oom_killed_inside_the_sandbox");
    let root = TestRoot::new("r02");
    let sb = create(&root, "r02", |c| c.limits.memory_bytes = Some(64 << 20));
    let o = sb.run("python3 -c 'b = bytearray(512 << 20); b[::4096] = b\"x\" * len(b[::4096])'").unwrap();
    assert_eq!(o.exit_code, 137, "{}", o.stderr_str());
    assert!(o.oom_killed);
    assert!(sb.cgroup().unwrap().oom_kills().unwrap().unwrap() >= 1);
    assert_eq!(sh(&sb, "echo ok"), "ok\n");
    assert!(sb.is_alive());
    drop(sb);
    root.assert_clean();
}

#[test]
fn r03_tmpfs_cannot_take_host_memory() {
    require_root!("r03_tmpfs_cannot_take_host_memory");
    let root = TestRoot::new("r03");
    let sb = create(&root, "r03", |c| c.limits.memory_bytes = Some(256 << 20));
    let o = sb.run("dd if=/dev/zero of=/dev/shm/x bs=1M count=100000").unwrap();
    assert_ne!(o.exit_code, 0);
    assert!(o.stderr_str().contains("No space left") || o.oom_killed, "{}", o.stderr_str());
    let used: u64 = sh(&sb, "du -m /dev/shm/x | cut -f1").trim().parse().unwrap();
    assert!(used <= 64, "/dev/shm took {used} MiB");
    assert_eq!(sh(&sb, "rm /dev/shm/x; echo ok"), "ok\n");
    drop(sb);
    root.assert_clean();
}

#[test]
fn r05_inode_exhaustion_of_tmpfs_is_bounded() {
    require_root!("r05_inode_exhaustion_of_tmpfs_is_bounded");
    // /dev/shm: nr_inodes, or the inode memory charged to the sandbox's
    // memory cgroup. The root filesystem's inodes are the disk quota's (R4).
    let root = TestRoot::new("r05");
    let sb = create(&root, "r05", |c| c.limits.memory_bytes = Some(64 << 20));
    let o = sb
        .run_with_timeout(
            "python3 -c '
import os, errno
os.mkdir(\"/dev/shm/d\")
i = 0
try:
    while True:
        os.close(os.open(\"/dev/shm/d/%d\" % i, os.O_CREAT | os.O_WRONLY)); i += 1
except OSError as e:
    print(errno.errorcode[e.errno], i > 1000)
'",
            Duration::from_secs(120),
        )
        .unwrap();
    let text = o.stdout_str();
    assert!(o.exit_code == 137 || text.starts_with("ENOSPC") || text.starts_with("ENOMEM"), "{text} {}", o.stderr_str());
    sb.reset().unwrap();
    assert_eq!(sh(&sb, "echo ok"), "ok\n");
    drop(sb);
    root.assert_clean();
}

#[test]
fn r06_a_cpu_hog_is_throttled_and_times_out() {
    require_root!("r06_a_cpu_hog_is_throttled_and_times_out");
    let root = TestRoot::new("r06");
    let sb = create(&root, "r06", |c| c.limits.cpu_millis = Some(200));
    let other = debian(&root, "r06b");
    let hog = std::thread::scope(|s| {
        let h = s.spawn(|| sb.run_with_timeout("for i in $(seq 8); do (while :; do :; done) & done; wait", Duration::from_secs(3)));
        std::thread::sleep(Duration::from_millis(500));
        let t0 = Instant::now();
        assert_eq!(sh(&other, "echo ok"), "ok\n");
        assert!(t0.elapsed() < Duration::from_secs(2), "a neighbour waited {:?}", t0.elapsed());
        h.join().unwrap()
    });
    assert!(matches!(hog, Err(Error::Timeout { .. })), "{hog:?}");
    assert!(sb.cgroup().unwrap().stats().cpu_nr_throttled.unwrap() > 0);
    assert_eq!(sh(&sb, "echo ok"), "ok\n");
    drop((sb, other));
    root.assert_clean();
}

#[test]
fn r07_fd_exhaustion_stops_at_rlimit_nofile() {
    require_root!("r07_fd_exhaustion_stops_at_rlimit_nofile");
    let root = TestRoot::new("r07");
    let sb = debian(&root, "r07");
    let ours = common::fd_count();
    let o = py(
        &sb,
        r#"
import resource
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
fds = []
try:
    while True: fds.append(os.open("/dev/null", os.O_RDONLY))
except OSError as e:
    print(errno.errorcode[e.errno], soft - len(fds) < 16)
"#,
    );
    assert_eq!(o, "EMFILE True\n");
    assert_eq!(sh(&sb, "echo ok"), "ok\n");
    assert!(common::fd_count() <= ours + 2);
    drop(sb);
    root.assert_clean();
}

// ------------------------------------------------ L: descriptors, lifecycle

#[test]
fn l01_commands_see_only_stdio() {
    require_root!("l01_commands_see_only_stdio");
    let root = TestRoot::new("l01");
    let sb = debian(&root, "l01");
    let o = py(&sb, r#"print(sorted(int(f) for f in os.listdir("/proc/self/fd")), os.readlink("/proc/self/fd/0"))"#);
    // 3 is the listing's own directory fd.
    assert_eq!(o, "[0, 1, 2, 3] /dev/null\n");
    // The shell: stdio and its signal pipe, all pipes or /dev/null.
    let shell = common::children(sb.pid())[0];
    // Right after a command the shell may still be writing its completion
    // record (fd 1 saved above 9 while redirected): wait until it is idle.
    let mut fds: Vec<(i32, String)> = Vec::new();
    for _ in 0..100 {
        fds = std::fs::read_dir(format!("/proc/{shell}/fd"))
            .unwrap()
            .flatten()
            .filter_map(|e| Some((e.file_name().to_string_lossy().parse().ok()?, std::fs::read_link(e.path()).ok()?.display().to_string())))
            .collect();
        fds.sort();
        if fds.len() == 4 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(fds.iter().map(|f| f.0).collect::<Vec<_>>(), vec![0, 1, 2, 3], "{fds:?}");
    assert!(fds.iter().all(|(_, t)| t.starts_with("pipe:")), "{fds:?}");
    drop(sb);
    root.assert_clean();
}

#[test]
fn l05_the_reclaim_sweep_touches_only_ours() {
    require_root!("l05_the_reclaim_sweep_touches_only_ours");
    let root = TestRoot::new("l05");
    let foreign_cg = PathBuf::from(format!("/sys/fs/cgroup/envbox-l05-foreign-{}", std::process::id()));
    std::fs::create_dir(&foreign_cg).unwrap();
    let foreign_dir = root.path.join("foreign");
    std::fs::create_dir(&foreign_dir).unwrap();
    std::fs::write(foreign_dir.join("data"), b"keep").unwrap();
    let mnt = PathBuf::from(format!("/tmp/envbox-l05-mnt-{}", std::process::id()));
    std::fs::create_dir_all(&mnt).unwrap();
    nix::mount::mount(Some("envbox-l05"), &mnt, Some("tmpfs"), nix::mount::MsFlags::empty(), None::<&str>).unwrap();
    // One of ours crashed: its agent is gone.
    let mut sb = debian(&root, "l05");
    sb.set_delete_on_drop(false);
    let pid = sb.pid();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    drop(sb);
    for _ in 0..200 {
        if !common::process_exists(pid) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let report = envbox::collect_garbage(&root.path).unwrap();
    let foreign_kept = (
        foreign_cg.exists(),
        std::fs::read(foreign_dir.join("data")).ok(),
        std::fs::read_to_string("/proc/self/mountinfo").unwrap().contains("envbox-l05"),
    );
    let _ = nix::mount::umount(&mnt);
    let _ = std::fs::remove_dir(&mnt);
    let _ = std::fs::remove_dir(&foreign_cg);
    let _ = std::fs::remove_dir_all(&foreign_dir);
    assert_eq!(report.sandboxes, vec!["l05".to_string()]);
    assert_eq!(foreign_kept, (true, Some(b"keep".to_vec()), true));
    root.assert_clean();
}

#[test]
fn l06_delete_stops_a_run_and_is_idempotent() {
    require_root!("l06_delete_stops_a_run_and_is_idempotent");
    let root = TestRoot::new("l06");
    let sb = debian(&root, "l06");
    let path = root.path.clone();
    let runner = std::thread::spawn(move || {
        let t0 = Instant::now();
        let r = Sandbox::open(&path, "l06").unwrap().run("sleep 1000");
        (r.is_err(), t0.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    sb.delete().unwrap();
    let (failed, took) = runner.join().unwrap();
    assert!(failed && took < Duration::from_secs(10), "the run ended after {took:?}");
    assert!(matches!(Sandbox::open(&root.path, "l06"), Err(Error::NotFound { .. })));
    assert!(matches!(Sandbox::open(&root.path, "nope"), Err(Error::NotFound { .. })));
    root.assert_clean();
}

#[test]
fn l07_stubborn_processes_do_not_block_delete() {
    require_root!("l07_stubborn_processes_do_not_block_delete");
    let root = TestRoot::new("l07");
    let sb = debian(&root, "l07");
    sh(&sb, "trap '' TERM HUP INT; (trap '' TERM HUP INT; sleep 1000) >/dev/null 2>&1 & sh -c \"trap '' TERM HUP; sleep 1000\" >/dev/null 2>&1 &");
    let dirs = sb.cgroup().unwrap().dirs();
    let t0 = Instant::now();
    sb.delete_and_wait().unwrap();
    assert!(t0.elapsed() < Duration::from_secs(10));
    while dirs.iter().any(|d| d.exists()) {
        assert!(t0.elapsed() < Duration::from_secs(10), "cgroups left: {dirs:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    root.assert_clean();
}

#[test]
fn l08_killing_pid_1_from_inside_changes_nothing() {
    require_root!("l08_killing_pid_1_from_inside_changes_nothing");
    let root = TestRoot::new("l08");
    let sb = debian(&root, "l08");
    let o = sb.run_with_timeout("kill -9 1; kill -TERM 1; kill -INT 1; echo sent", Duration::from_secs(10)).unwrap();
    assert_eq!(o.stdout_str(), "sent\n");
    assert_eq!(sh(&sb, "echo alive"), "alive\n");
    assert!(sb.is_alive());
    drop(sb);
    root.assert_clean();
}

#[test]
fn l09_orphans_are_reaped() {
    require_root!("l09_orphans_are_reaped");
    let root = TestRoot::new("l09");
    let sb = debian(&root, "l09");
    let o = sh(&sb, "for i in $(seq 500); do (sleep 0 &); done; sleep 1; grep -l ') Z ' /proc/[0-9]*/stat 2>/dev/null | wc -l");
    assert_eq!(o, "0\n");
    drop(sb);
    root.assert_clean();
}

// ------------------------------------------ S: the shell, exec and reset

#[test]
fn s01_a_dead_shell_is_reported_and_respawned() {
    require_root!("s01_a_dead_shell_is_reported_and_respawned");
    let root = TestRoot::new("s01");
    let sb = debian(&root, "s01");
    for cmd in ["kill -9 $$", "exit 3", "exec true"] {
        let t0 = Instant::now();
        let o = sb.run_with_timeout(cmd, Duration::from_secs(20)).unwrap();
        assert!(o.shell_restarted, "{cmd}");
        assert!(t0.elapsed() < Duration::from_secs(5), "{cmd} took {:?}", t0.elapsed());
        assert_eq!(sh(&sb, "echo next"), "next\n");
    }
    assert_eq!(sb.run("exit 3").unwrap().exit_code, 3);
    // Killed from the host in the middle of a command.
    sh(&sb, "true");
    let shell = common::children(sb.pid())[0];
    std::thread::scope(|s| {
        let h = s.spawn(|| {
            let t0 = Instant::now();
            let r = sb.run_with_timeout("sleep 100", Duration::from_secs(60));
            (r, t0.elapsed())
        });
        std::thread::sleep(Duration::from_millis(300));
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(shell), nix::sys::signal::Signal::SIGKILL).unwrap();
        let (r, took) = h.join().unwrap();
        assert!(took < Duration::from_secs(10), "{took:?}");
        assert!(r.map(|o| o.shell_restarted).unwrap_or(true));
    });
    assert_eq!(sh(&sb, "echo next"), "next\n");
    let zombies: Vec<i32> = common::children(sb.pid())
        .into_iter()
        .filter(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default().contains(") Z "))
        .collect();
    assert!(zombies.is_empty(), "{zombies:?}");
    drop(sb);
    root.assert_clean();
}

#[test]
fn s02_never_ending_commands_time_out() {
    require_root!("s02_never_ending_commands_time_out");
    let root = TestRoot::new("s02");
    let sb = debian(&root, "s02");
    for cmd in ["sleep infinity", "while :; do :; done", "sleep 1000 & sleep 1000"] {
        let t0 = Instant::now();
        let r = sb.run_with_timeout(cmd, Duration::from_secs(1));
        assert!(matches!(r, Err(Error::Timeout { .. })), "{cmd}: {r:?}");
        assert!(t0.elapsed() < Duration::from_secs(5));
        assert_eq!(sh(&sb, "echo ok"), "ok\n");
    }
    // stdin is /dev/null: these return at once.
    let o = sb.run_with_timeout("cat; read x; echo $?", Duration::from_secs(5)).unwrap();
    assert_eq!(o.stdout_str(), "1\n");
    drop(sb);
    root.assert_clean();
}

#[test]
fn s03_background_children_do_not_hold_completion() {
    require_root!("s03_background_children_do_not_hold_completion");
    let root = TestRoot::new("s03");
    let sb = debian(&root, "s03");
    for cmd in ["sleep 1000 & echo done", "(sleep 1000 >&1 &); echo done", "nohup sleep 1000 >/dev/null 2>&1 & echo done"] {
        let t0 = Instant::now();
        assert_eq!(sb.run_with_timeout(cmd, Duration::from_secs(10)).unwrap().stdout_str(), "done\n", "{cmd}");
        assert!(t0.elapsed() < Duration::from_secs(2), "{cmd} took {:?}", t0.elapsed());
    }
    // Stragglers live on until reset (documented), then they are gone.
    assert_eq!(sh(&sb, "for p in /proc/[0-9]*; do tr '\\0' ' ' <$p/cmdline; echo; done 2>/dev/null | grep -c '^sleep 1000'; true"), "3\n");
    sb.reset().unwrap();
    assert_eq!(sh(&sb, "for p in /proc/[0-9]*; do tr '\\0' ' ' <$p/cmdline; echo; done 2>/dev/null | grep -c '^sleep 1000'; true"), "0\n");
    drop(sb);
    root.assert_clean();
}

#[test]
fn s04_an_output_flood_is_capped() {
    require_root!("s04_an_output_flood_is_capped");
    let root = TestRoot::new("s04");
    let sb = debian(&root, "s04");
    let opts = RunOptions { timeout: Some(Duration::from_secs(20)), max_output: 1 << 20 };
    let o = sb.run_with("head -c 50000000 /dev/zero; head -c 50000000 /dev/zero >&2; echo end", &opts).unwrap();
    assert!(o.stdout_truncated && o.stderr_truncated);
    assert_eq!((o.stdout.len(), o.stderr.len()), (1 << 20, 1 << 20));
    let opts = RunOptions { timeout: Some(Duration::from_secs(2)), max_output: 1 << 20 };
    let r = sb.run_with("(yes >&2 &); yes", &opts);
    match r {
        Err(Error::Timeout { stdout, stderr, .. }) => assert!(stdout.len() <= 1 << 20 && stderr.len() <= 1 << 20),
        other => panic!("{other:?}"),
    }
    assert_eq!(sh(&sb, "echo ok"), "ok\n");
    drop(sb);
    root.assert_clean();
}

#[test]
fn s05_binary_output_round_trips() {
    require_root!("s05_binary_output_round_trips");
    let root = TestRoot::new("s05");
    let sb = debian(&root, "s05");
    assert_eq!(sb.run("printf '\\377\\376\\000abc\\n'").unwrap().stdout, b"\xff\xfe\x00abc\n");
    assert_eq!(sb.run("printf 'a\\rb\\033[2Jc'").unwrap().stdout, b"a\rb\x1b[2Jc");
    let o = sb.run("head -c 4096 /dev/urandom | tee /tmp/r").unwrap();
    assert_eq!(o.stdout, sb.read_file("/tmp/r").unwrap());
    assert_eq!(o.stdout.len(), 4096);
    drop(sb);
    root.assert_clean();
}

#[test]
fn s06_completion_cannot_be_forged() {
    require_root!("s06_completion_cannot_be_forged");
    let root = TestRoot::new("s06");
    let sb = debian(&root, "s06");
    let o =
        sb.run("for fd in $(ls /proc/self/fd) 3 4 5 6 7 8 9 10 11; do echo \"forged 0\" >&$fd; done 2>/dev/null; sh -c 'exit 7'").unwrap();
    assert_eq!(o.exit_code, 7);
    assert!(o.stdout_str().contains("forged 0"));
    // A process left behind tries to take the next command off the shell's
    // stdin and answer for it through the shell's signal pipe.
    sb.write_file(
        "/tmp/steal.py",
        br#"
import os, sys, time
shell = int(sys.argv[1])
with open("/tmp/steal.log", "w") as log:
    for f in ("fd/0", "fd/3", "fd/1", "mem"):
        try:
            os.close(os.open("/proc/%d/%s" % (shell, f), os.O_RDONLY | os.O_NONBLOCK)); log.write(f + " opened\n")
        except OSError as e:
            log.write("%s %s\n" % (f, e.strerror))
"#,
    )
    .unwrap();
    sh(&sb, "python3 /tmp/steal.py $$ &");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sb.run("false").unwrap().exit_code, 1);
    let log = String::from_utf8(sb.read_file("/tmp/steal.log").unwrap()).unwrap();
    assert_eq!(log.matches("Permission denied").count(), 4, "{log}");
    drop(sb);
    root.assert_clean();
}

#[test]
fn s07_commands_cannot_read_the_command_stream() {
    require_root!("s07_commands_cannot_read_the_command_stream");
    let root = TestRoot::new("s07");
    let sb = debian(&root, "s07");
    let o = sb.run_with_timeout("cat; head -c 100 /proc/self/fd/0; read l; echo \"[$l]\"", Duration::from_secs(5)).unwrap();
    assert_eq!(o.stdout_str(), "[]\n");
    assert_eq!(sh(&sb, "echo next"), "next\n");
    drop(sb);
    root.assert_clean();
}

#[test]
fn s08_shell_state_altering_commands() {
    require_root!("s08_shell_state_altering_commands");
    let root = TestRoot::new("s08");
    let sb = debian(&root, "s08");
    let _ = sb.run("set -e; false");
    assert_eq!(sh(&sb, "echo after-set-e"), "after-set-e\n");
    let _ = sb.run("trap 'echo x' EXIT");
    assert_eq!(sb.run("sh -c 'exit 4'").unwrap().exit_code, 4);
    assert_eq!(sh(&sb, "exec 9>/tmp/x; echo fd9"), "fd9\n");
    assert_eq!(sb.run("cd /nonexistent").unwrap().exit_code, 1);
    assert_eq!(sh(&sb, "pwd"), "/\n");
    let _ = sb.run("ulimit -n 1");
    let o = sb.run_with_timeout("echo after-ulimit", Duration::from_secs(10)).unwrap();
    let o = if o.stdout_str() == "after-ulimit\n" { o } else { sb.run_with_timeout("echo after-ulimit", Duration::from_secs(10)).unwrap() };
    assert_eq!(o.stdout_str(), "after-ulimit\n", "{}", o.stderr_str());
    drop(sb);
    root.assert_clean();
}

#[test]
fn s09_reset_aborts_a_running_command() {
    require_root!("s09_reset_aborts_a_running_command");
    let root = TestRoot::new("s09");
    let sb = debian(&root, "s09");
    let path = root.path.clone();
    let runner = std::thread::spawn(move || {
        Sandbox::open(&path, "s09").unwrap().run("dd if=/dev/zero of=/big bs=1M count=100000 2>/dev/null & sleep 1000")
    });
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    sb.reset().unwrap();
    assert!(t0.elapsed() < Duration::from_secs(5), "reset took {:?}", t0.elapsed());
    assert!(matches!(runner.join().unwrap(), Err(Error::AbortedByReset)));
    assert_eq!(code(&sb, "test ! -e /big"), 0);
    drop(sb);
    root.assert_clean();
}

#[test]
fn s10_reset_restores_the_tree() {
    require_root!("s10_reset_restores_the_tree");
    let root = TestRoot::new("s10");
    let sb = debian(&root, "s10");
    let tree =
        "find / -xdev \\( -path /proc -o -path /sys -o -path /dev \\) -prune -o -printf '%p %m %s %l\\n' 2>/dev/null | sort | md5sum";
    let fresh = sh(&sb, tree);
    sh(&sb, "touch /new /tmp/new /root/new; rm /bin/ls; mkfifo /p; python3 -c 'import os; os.setxattr(\"/etc/passwd\", \"user.x\", b\"1\")'; chmod 000 /etc");
    assert_ne!(sh(&sb, tree), fresh);
    sb.reset().unwrap();
    assert_eq!(sh(&sb, tree), fresh);
    assert_eq!(sh(&sb, "python3 -c 'import os; print(os.listxattr(\"/etc/passwd\"))'"), "[]\n");
    drop(sb);
    root.assert_clean();
}

#[test]
fn s11_hostile_exec_parameters() {
    require_root!("s11_hostile_exec_parameters");
    let root = TestRoot::new("s11");
    for bad in ["../../", "", "a\0b"] {
        let r = Sandbox::create(&SandboxConfig { workdir: bad.into(), ..root.config(common::debian()) }, "s11-bad");
        assert!(matches!(r, Err(Error::Config(_))), "workdir {bad:?}");
    }
    // A command replaces the workdir with a magic link and makes the shell
    // respawn: the new shell must still start inside.
    let sb = create(&root, "s11", |c| c.workdir = "/work".into());
    assert_eq!(sh(&sb, "pwd"), "/work\n");
    for n in 3..=12 {
        let _ = sb.run(&format!("cd /; rm -rf /work; ln -s /proc/self/fd/{n} /work; exit 0"));
        let o = sb.run("pwd; ls").unwrap();
        assert!(o.stdout_str().starts_with("/\n") && o.stdout_str().contains("bin"), "fd {n}: {}{}", o.stdout_str(), o.stderr_str());
        assert!(!o.stdout_str().contains("state.json"), "fd {n}: the shell started on the host");
    }
    // NUL in a command: refused, nothing runs.
    assert!(sb.run("touch /tmp/s11\0x").is_err());
    assert_eq!(code(&sb, "test ! -e /tmp/s11"), 0);
    // A 10 MiB command either runs or is refused; the sandbox stays usable.
    let big = format!(": {}; echo big-ok", "a".repeat(10 << 20));
    match sb.run_with_timeout(&big, Duration::from_secs(60)) {
        Ok(o) => assert_eq!(o.stdout_str(), "big-ok\n"),
        Err(e) => eprintln!("a 10 MiB command was refused: {e}"),
    }
    assert_eq!(sh(&sb, "echo ok"), "ok\n");
    drop(sb);
    root.assert_clean();
}

// ------------------------------------------------------ A: the HTTP API

fn env_sandbox(root: &TestRoot, name: &str) -> Sandbox {
    let mut cfg = common::env_config(root, common::debian(), "actor");
    cfg.serve.as_mut().unwrap().max_body = 64 << 10;
    let sb = Sandbox::create(&cfg, name).unwrap();
    let socket = sb.env_socket().unwrap();
    let t0 = Instant::now();
    while raw(&socket, b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n").0 != 200 {
        assert!(t0.elapsed() < Duration::from_secs(60), "the environment did not get ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    sb
}

/// One exchange on a fresh connection: (status, body text).
fn raw(socket: &Path, request: &[u8]) -> (u16, String) {
    let Ok(mut s) = UnixStream::connect(socket) else { return (0, String::new()) };
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

fn post(path: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!("POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    r.extend_from_slice(body);
    r
}

fn healthy(socket: &Path) -> bool {
    let (st, body) = raw(socket, &post("/call", br#"{"method":"add","args":[2,3]}"#));
    st == 200 && body.contains(r#""sum":5"#)
}

#[test]
fn a01_malformed_requests_get_a_json_error() {
    require_root!("a01_malformed_requests_get_a_json_error");
    let root = TestRoot::new("a01");
    let sb = env_sandbox(&root, "a01");
    let s = sb.env_socket().unwrap();
    for body in [&br#"{"cmd":"#[..], b"[]", br#"{"method":5}"#, br#"{"method":"add","args":"x"}"#, br#"{"method":"add","kwargs":[]}"#, b""]
    {
        let (st, b) = raw(&s, &post("/call", body));
        assert!((400..500).contains(&st), "{}: {st} {b}", String::from_utf8_lossy(body));
        assert!(serde_json::from_str::<serde_json::Value>(&b).is_ok(), "not JSON: {b}");
    }
    // Unknown fields are ignored, as in the reference.
    let (st, _) = raw(&s, &post("/call", br#"{"method":"add","args":[1,2],"bogus":1}"#));
    assert_eq!(st, 200);
    assert!(healthy(&s));
    drop(sb);
    root.assert_clean();
}

#[test]
fn a02_oversized_bodies_are_refused_before_buffering() {
    require_root!("a02_oversized_bodies_are_refused_before_buffering");
    let root = TestRoot::new("a02");
    let sb = env_sandbox(&root, "a02");
    let s = sb.env_socket().unwrap();
    let t0 = Instant::now();
    let (st, _) = raw(&s, b"POST /call HTTP/1.1\r\nContent-Length: 1000000000000\r\n\r\n");
    assert_eq!(st, 413);
    assert!(t0.elapsed() < Duration::from_secs(2));
    let rss = || -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", sb.pid())).unwrap();
        status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().trim().trim_end_matches(" kB").parse().unwrap()
    };
    let rss_before = rss();
    // 200 MB streamed: refused at the limit, the connection closed.
    let mut c = UnixStream::connect(&s).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"POST /call HTTP/1.1\r\nContent-Length: 200000000\r\n\r\n").unwrap();
    let zeros = vec![b'0'; 1 << 20];
    for _ in 0..200 {
        if c.write_all(&zeros).is_err() {
            break;
        }
    }
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 413"), "{}", String::from_utf8_lossy(&out[..out.len().min(200)]));
    // An endless chunked body.
    let mut c = UnixStream::connect(&s).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"POST /call HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
    let chunk = format!("{:x}\r\n{}\r\n", 4096, "a".repeat(4096));
    for _ in 0..1000 {
        if c.write_all(chunk.as_bytes()).is_err() {
            break;
        }
    }
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 413"));
    // The agent buffered none of it.
    assert!(rss() < rss_before + (32 << 10), "the agent grew from {rss_before} kB to {} kB", rss());
    assert!(healthy(&s));
    drop(sb);
    root.assert_clean();
}

#[test]
fn a03_idle_connections_do_not_starve_other_clients() {
    require_root!("a03_idle_connections_do_not_starve_other_clients");
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard.min(8192), hard).unwrap();
    let root = TestRoot::new("a03");
    let sb = env_sandbox(&root, "a03");
    let s = sb.env_socket().unwrap();
    // 1000 slowloris clients, each one byte into a request head.
    let mut idle: Vec<UnixStream> = (0..1000)
        .map(|_| {
            let mut c = UnixStream::connect(&s).unwrap();
            c.write_all(b"P").unwrap();
            c
        })
        .collect();
    let t0 = Instant::now();
    assert!(healthy(&s), "a client was not served beside 1000 idle ones");
    assert!(t0.elapsed() < Duration::from_secs(5));
    // Past the cap, connections are closed at once.
    let extra: Vec<UnixStream> = (0..100).map(|_| UnixStream::connect(&s).unwrap()).collect();
    let mut closed = 0;
    for mut c in extra {
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut b = [0u8; 1];
        if matches!(c.read(&mut b), Ok(0) | Err(_)) {
            closed += 1;
        }
    }
    assert!(closed >= 100 - (envbox::agent::dispatch::MAX_CONNECTIONS - 1000) - 2, "only {closed} of 100 were closed");
    idle.clear();
    let t0 = Instant::now();
    while !healthy(&s) {
        assert!(t0.elapsed() < Duration::from_secs(10), "the dispatcher did not recover");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(sb);
    root.assert_clean();
}

#[test]
fn a03_a_slowloris_head_is_cut_off() {
    require_root!("a03_a_slowloris_head_is_cut_off");
    let root = TestRoot::new("a03b");
    let sb = env_sandbox(&root, "a03b");
    let s = sb.env_socket().unwrap();
    let mut c = UnixStream::connect(&s).unwrap();
    c.set_nonblocking(true).unwrap();
    let t0 = Instant::now();
    let mut cut = None;
    // One byte every 2 s: within the 30 s per read, never a full head.
    for b in b"POST /call HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter().cycle().take(40) {
        let mut buf = [0u8; 256];
        match c.read(&mut buf) {
            Ok(_) => {
                cut = Some(t0.elapsed());
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => {
                cut = Some(t0.elapsed());
                break;
            }
        }
        if c.write_all(&[*b]).is_err() {
            cut = Some(t0.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    let cut = cut.expect("a slowloris head was never cut off");
    assert!(cut >= Duration::from_secs(28) && cut < Duration::from_secs(40), "cut after {cut:?}");
    drop(sb);
    root.assert_clean();
}

#[test]
fn a04_pathological_json_is_refused() {
    require_root!("a04_pathological_json_is_refused");
    let root = TestRoot::new("a04");
    let sb = env_sandbox(&root, "a04");
    let s = sb.env_socket().unwrap();
    let deep = format!(r#"{{"method":"add","args":{}{}}}"#, "[".repeat(100_000), "]".repeat(100_000));
    let (st, _) = raw(&s, &post("/call", deep.as_bytes()));
    assert!((400..500).contains(&st), "deep nesting: {st}");
    let (st, _) = raw(&s, &post("/call", br#"{"method":"add","args":[1e400,1]}"#));
    assert_ne!(st, 0, "1e400: no answer");
    let (st, _) = raw(&s, &post("/call", b"{\"method\":\"add\xff\xfe\",\"args\":[1,2]}"));
    assert!((400..500).contains(&st), "invalid UTF-8: {st}");
    let (st, b) = raw(&s, &post("/call", br#"{"method":"nope","method":"add","args":[1,2]}"#));
    assert!(st == 200 || (400..500).contains(&st), "duplicate keys: {st} {b}");
    assert!(healthy(&s), "the dispatcher died");
    assert!(sb.is_alive());
    drop(sb);
    root.assert_clean();
}

#[test]
fn a05_bad_sandbox_names_are_refused() {
    require_root!("a05_bad_sandbox_names_are_refused");
    let root = TestRoot::new("a05");
    let long = "a".repeat(65);
    for bad in ["../x", ".", "..", "", long.as_str(), "é", "a/b", "-x", "a\0b", "a b"] {
        let r = Sandbox::create(&root.config(common::busybox()), bad);
        assert!(matches!(r, Err(Error::Config(_))), "{bad:?}: {:?}", r.map(|_| ()));
        assert!(Sandbox::open(&root.path, bad).is_err(), "{bad:?}");
    }
    assert_eq!(common::leftovers(&root.path), Vec::<String>::new());
    root.assert_clean();
}

#[test]
fn a06_concurrent_runs_on_one_sandbox_do_not_interleave() {
    require_root!("a06_concurrent_runs_on_one_sandbox_do_not_interleave");
    let root = TestRoot::new("a06");
    let sb = debian(&root, "a06");
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..64)
            .map(|i| {
                let sb = &sb;
                s.spawn(move || {
                    let o = sb.run(&format!("echo start-{i}; sleep 0.0{}; echo end-{i}", i % 3)).unwrap();
                    assert_eq!(o.stdout_str(), format!("start-{i}\nend-{i}\n"));
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    });
    drop(sb);
    root.assert_clean();
}

#[test]
fn a08_error_bodies_hold_no_host_paths() {
    require_root!("a08_error_bodies_hold_no_host_paths");
    let root = TestRoot::new("a08");
    let sb = env_sandbox(&root, "a08");
    let s = sb.env_socket().unwrap();
    let envbox::Image::Dir(image) = common::debian() else { unreachable!() };
    let secrets =
        [root.path.display().to_string(), image.display().to_string(), env!("CARGO_MANIFEST_DIR").to_string(), "/run/envbox".into()];
    let requests: Vec<Vec<u8>> = vec![
        post("/call", b"{not json"),
        post("/call", br#"{"method":"nope"}"#),
        post("/call", br#"{"method":"boom"}"#),
        post("/call", br#"{"method":"add","args":["a",{}]}"#),
        post("/call", br#"{"method":"add","args":[1,2,3,4,5]}"#),
        post("/nowhere", b"{}"),
        b"GET /call HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec(),
        post("/call", &vec![b'x'; 100 << 10]),
        b"\x16\x03\x01 garbage\r\n\r\n".to_vec(),
        b"POST /call HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
    ];
    for req in &requests {
        let (st, body) = raw(&s, req);
        assert!(st >= 400, "{st}");
        for secret in &secrets {
            assert!(!body.contains(secret.as_str()), "an error body names {secret}: {body}");
        }
        assert!(!body.contains("RUST_BACKTRACE") && !body.contains("panicked"), "{body}");
    }
    drop(sb);
    root.assert_clean();
}

// ----------------------------------------------- C: concurrency at scale

#[test]
fn c01_concurrent_create_run_delete() {
    require_root!("c01_concurrent_create_run_delete");
    let root = TestRoot::new("c01");
    let fds = common::fd_count();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..32)
            .map(|i| {
                let root = &root;
                s.spawn(move || {
                    let sb = Sandbox::create(&root.config(common::busybox()), &format!("c01-{i}")).unwrap();
                    assert_eq!(sb.run(&format!("echo {i}")).unwrap().stdout_str(), format!("{i}\n"));
                    sb.delete().unwrap();
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    });
    root.assert_clean();
    assert!(common::fd_count() <= fds + 4, "fds: {fds} before, {} after", common::fd_count());
}

#[test]
fn c02_a_noisy_neighbour_does_not_stall_a_create_storm() {
    require_root!("c02_a_noisy_neighbour_does_not_stall_a_create_storm");
    let root = TestRoot::new("c02");
    let noisy = create(&root, "c02-noisy", |c| {
        c.limits = envbox::Limits { memory_bytes: Some(64 << 20), cpu_millis: Some(500), pids: Some(64), ..Default::default() };
    });
    std::thread::scope(|s| {
        let n = &noisy;
        let h = s.spawn(move || {
            n.run_with_timeout(
                "(while :; do :; done) & (python3 -c 'b = bytearray(512 << 20)') & for i in $(seq 200); do sleep 30 & done; wait",
                Duration::from_secs(15),
            )
        });
        std::thread::sleep(Duration::from_millis(500));
        let storm: Vec<_> = (0..8)
            .map(|i| {
                let root = &root;
                s.spawn(move || {
                    for round in 0..2 {
                        let t0 = Instant::now();
                        let sb = Sandbox::create(&root.config(common::busybox()), &format!("c02-{i}-{round}")).unwrap();
                        assert_eq!(sb.run("echo ok").unwrap().stdout_str(), "ok\n");
                        sb.delete().unwrap();
                        assert!(t0.elapsed() < Duration::from_secs(10), "a create/run/delete took {:?}", t0.elapsed());
                    }
                })
            })
            .collect();
        for h in storm {
            h.join().unwrap();
        }
        let _ = h.join().unwrap();
    });
    assert!(cgroup_value(&noisy, &["pids.events"], "max ") > 0);
    drop(noisy);
    root.assert_clean();
}

#[test]
fn c03_delete_racing_create_leaves_nothing() {
    require_root!("c03_delete_racing_create_leaves_nothing");
    let root = TestRoot::new("c03");
    for round in 0..5 {
        let name = format!("c03-{round}");
        std::thread::scope(|s| {
            let creator = s.spawn(|| Sandbox::create(&root.config(common::busybox()), &name));
            let deleter = s.spawn(|| {
                let t0 = Instant::now();
                while t0.elapsed() < Duration::from_secs(10) {
                    if let Ok(sb) = Sandbox::open(&root.path, &name) {
                        return sb.delete().is_ok();
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
                false
            });
            let created = creator.join().unwrap();
            let deleted = deleter.join().unwrap();
            match created {
                Ok(sb) => {
                    // Deleted under it, or not yet: either way it goes now.
                    let _ = sb.delete();
                }
                Err(e) => assert!(deleted, "create failed without a delete: {e}"),
            }
        });
    }
    root.assert_clean();
}
