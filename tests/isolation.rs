//! Baseline isolation, checked from inside and from the host (a first cut
//! of SECURITY.md's battery; the hardening issue completes it).

mod common;

use common::TestRoot;
use envbox::Sandbox;

#[test]
fn posture_of_the_shell_and_the_agent() {
    require_root!("posture_of_the_shell_and_the_agent");
    let root = TestRoot::new("posture");
    let sb = Sandbox::create(&root.config(common::debian()), "posture").unwrap();
    sb.run("true").unwrap();
    let agent = sb.pid();
    let shell = common::children(agent)[0];
    let status = std::fs::read_to_string(format!("/proc/{shell}/status")).unwrap();
    let mask = format!("{:016x}", envbox::security::default_caps_mask());
    for set in ["CapPrm", "CapEff", "CapBnd"] {
        assert!(status.contains(&format!("{set}:\t{mask}")), "{set} of the shell must be the allow-list:\n{status}");
    }
    assert!(status.contains("CapInh:\t0000000000000000") && status.contains("CapAmb:\t0000000000000000"));
    assert!(status.contains("NoNewPrivs:\t1"));
    // Namespaces differ from ours (all but user, and cgroup for the agent).
    for ns in ["mnt", "pid", "ipc", "uts", "net"] {
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        let theirs = std::fs::read_link(format!("/proc/{agent}/ns/{ns}")).unwrap();
        assert_ne!(ours, theirs, "{ns} namespace must be private");
    }
    // The agent is not dumpable: its /proc files belong to root only, and
    // it holds no fd of a directory the sandbox could use to get out.
    let o = sb.run("cat /proc/1/environ /proc/1/mem 2>&1 | head -c 300; ls /proc/1/fd 2>&1 | head -3").unwrap();
    assert!(o.stdout_str().contains("Permission denied"), "{}", o.stdout_str());
    // Only fds 0, 1, 2 (+ the ls's own dir fd) in commands.
    let o = sb.run("ls /proc/self/fd | tr '\\n' ' '").unwrap();
    assert_eq!(o.stdout_str(), "0 1 2 3 ");
    sb.delete().unwrap();
}

#[test]
fn host_processes_files_and_mounts_are_invisible() {
    require_root!("host_processes_files_and_mounts_are_invisible");
    let root = TestRoot::new("invisible");
    let sb = Sandbox::create(&root.config(common::debian()), "inv").unwrap();
    let o = sb.run("ls /proc | grep -c '^[0-9]'; grep PPid /proc/1/status; cat /proc/1/cmdline | tr '\\0' ' '; echo").unwrap();
    let text = o.stdout_str().into_owned();
    let lines: Vec<&str> = text.lines().collect();
    let n: usize = lines[0].parse().unwrap();
    assert!(n <= 5, "only sandbox processes are visible, saw {n}");
    assert_eq!(lines[1], "PPid:\t0");
    assert!(lines[2].starts_with("envbox __agent"));
    let o = sb.run("cat /proc/self/mountinfo").unwrap();
    let mi = o.stdout_str();
    for host_path in ["/work", "/tmp/envbox-test", "old_root", "oldroot", "/var/cache"] {
        assert!(!mi.contains(host_path), "mountinfo shows {host_path}:\n{mi}");
    }
    assert!(sb.run("test -e /.oldroot || test -e /old_root").unwrap().exit_code != 0);
    let o = sb.run("cat /proc/self/cgroup").unwrap();
    assert!(o.stdout_str().lines().all(|l| l.ends_with(":/")), "cgroup namespace: {}", o.stdout_str());
    sb.delete().unwrap();
}

#[test]
fn kernel_interfaces_are_read_only_or_masked() {
    require_root!("kernel_interfaces_are_read_only_or_masked");
    let root = TestRoot::new("kernel");
    let sb = Sandbox::create(&root.config(common::debian()), "kern").unwrap();
    let checks = [
        ("echo 1 > /proc/sys/vm/drop_caches", false),
        ("echo c > /proc/sysrq-trigger", false),
        ("echo 1 > /sys/kernel/mm/ksm/run", false),
        ("mount -t tmpfs t /mnt", false),
        ("umount /proc", false),
        ("mount -o remount,rw /sys", false),
        ("mknod /tmp/mem c 1 1", false),
        ("chroot / true", false),
        ("hostname pwned", false),
        ("test $(head -c 16 /proc/kcore | wc -c) -eq 0", true),
        ("test ! -s /proc/keys", true),
        // Firmware tables (ACPI, the memory map) are the host's: masked
        // like Docker does, also after a reset moved /sys.
        ("test -d /sys/firmware && test -z \"$(ls -A /sys/firmware)\"", true),
        ("touch /sys/firmware/x", false),
        ("echo ok > /tmp/ok", true),
    ];
    for round in ["create", "reset"] {
        if round == "reset" {
            sb.reset().unwrap();
        }
        for (cmd, should_succeed) in checks {
            let o = sb.run(cmd).unwrap();
            assert_eq!(o.exit_code == 0, should_succeed, "after {round}: {cmd}: exit {} {}", o.exit_code, o.stderr_str());
        }
    }
    assert_eq!(sb.run("hostname").unwrap().stdout_str(), "kern\n");
    let o = sb.run("ls /dev | tr '\\n' ' '").unwrap();
    assert_eq!(o.stdout_str(), "fd full null ptmx pts random shm stderr stdin stdout tty urandom zero ");
    sb.delete().unwrap();
}

#[test]
fn the_file_api_stays_inside_the_sandbox() {
    require_root!("the_file_api_stays_inside_the_sandbox");
    let root = TestRoot::new("files");
    let sb = Sandbox::create(&root.config(common::debian()), "files").unwrap();
    sb.run(
        "echo sandbox-secret > /etc/shadow; ln -s /etc/shadow /tmp/s; ln -s / /tmp/h; ln -s ../../../../../../etc /tmp/e; mkfifo /tmp/fifo",
    )
    .unwrap();
    assert_eq!(sb.read_file("/tmp/s").unwrap(), b"sandbox-secret\n");
    assert_eq!(sb.read_file("../../../../etc/shadow").unwrap(), b"sandbox-secret\n");
    assert_eq!(sb.read_file("/tmp/h/etc/hostname").unwrap(), sb.run("cat /etc/hostname").unwrap().stdout);
    let host_pwn = std::path::Path::new("/etc/envbox-pwn");
    sb.write_file("/tmp/e/envbox-pwn", b"x").unwrap();
    assert!(!host_pwn.exists(), "a write escaped to the host");
    assert_eq!(sb.run("cat /etc/envbox-pwn").unwrap().stdout, b"x");
    for bad in ["/proc/self/root/etc/passwd", "/proc/1/environ", "/tmp/fifo", "/dev/zero", "a\0b"] {
        assert!(sb.read_file(bad).is_err(), "{bad:?} must be refused");
    }
    // Copies both ways, trees included.
    let host = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(host.path().join("tree/sub")).unwrap();
    std::fs::write(host.path().join("tree/sub/f"), b"\x00\xffdata").unwrap();
    sb.copy_to(host.path().join("tree"), "/opt/tree").unwrap();
    assert_eq!(sb.run("cat /opt/tree/sub/f | od -An -c | tr -s ' '").unwrap().exit_code, 0);
    sb.copy_from("/opt/tree", host.path().join("back")).unwrap();
    assert_eq!(std::fs::read(host.path().join("back/sub/f")).unwrap(), b"\x00\xffdata");
    sb.delete().unwrap();
}
