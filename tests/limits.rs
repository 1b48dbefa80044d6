//! cgroup limits that bite hurt only the offending command.

mod common;

use common::TestRoot;
use envbox::Sandbox;

#[test]
fn out_of_memory_kills_the_command_not_the_sandbox() {
    require_root!("out_of_memory_kills_the_command_not_the_sandbox");
    let root = TestRoot::new("oom");
    let mut cfg = root.config(common::debian());
    cfg.limits.memory_bytes = Some(64 << 20);
    let sb = Sandbox::create(&cfg, "oom").unwrap();
    sb.run("cd /tmp; export KEEP=1").unwrap();
    let o = sb.run("python3 -c 'b = bytearray(512 << 20); print(len(b))'").unwrap();
    assert_eq!(o.exit_code, 137, "{o:?}");
    assert!(o.oom_killed, "the OOM kill must be reported");
    assert!(!o.shell_restarted, "only the offending command dies");
    let o = sb.run("pwd; echo $KEEP").unwrap();
    assert_eq!((o.stdout_str().as_ref(), o.oom_killed), ("/tmp\n1\n", false));
    sb.delete().unwrap();
    root.assert_clean();
}

#[test]
fn pids_limit_makes_fork_fail_and_the_sandbox_recovers() {
    require_root!("pids_limit_makes_fork_fail_and_the_sandbox_recovers");
    let root = TestRoot::new("pids");
    let mut cfg = root.config(common::debian());
    cfg.limits.pids = Some(16);
    let sb = Sandbox::create(&cfg, "pids").unwrap();
    // One python process forks until the kernel says no (bash would retry
    // for 15 s and then abort the whole command).
    let o = sb
        .run("python3 -c 'import os, time\nn = 0\nfor i in range(40):\n    try:\n        pid = os.fork()\n    except OSError:\n        break\n    if pid == 0:\n        time.sleep(30)\n        os._exit(0)\n    n += 1\nprint(n)'")
        .unwrap();
    let n: usize = o.stdout_str().trim().parse().unwrap_or(99);
    assert!((1..16).contains(&n), "forks must stop below the limit: {n}; {}", o.stderr_str());
    let events = sb.cgroup().unwrap().dirs().into_iter().map(|d| d.join("pids.events")).find(|p| p.exists()).unwrap();
    let text = std::fs::read_to_string(events).unwrap();
    assert!(!text.contains("max 0"), "pids.events must count the failed forks: {text}");
    // A reset kills them all and the sandbox works again.
    sb.reset().unwrap();
    assert_eq!(sb.run("echo ok").unwrap().stdout_str(), "ok\n");
    sb.delete().unwrap();
    root.assert_clean();
}

#[test]
fn cpu_limit_throttles() {
    require_root!("cpu_limit_throttles");
    let root = TestRoot::new("cpu");
    let mut cfg = root.config(common::debian());
    cfg.limits.cpu_millis = Some(200);
    let sb = Sandbox::create(&cfg, "cpu").unwrap();
    let t = std::time::Instant::now();
    // Two busy loops for one second of wall time under 0.2 CPU.
    sb.run("timeout 1 sh -c 'while :; do :; done' & timeout 1 sh -c 'while :; do :; done'; wait").unwrap();
    assert!(t.elapsed().as_secs_f64() < 5.0);
    let stats = sb.cgroup().unwrap().stats();
    let throttled = sb
        .cgroup()
        .unwrap()
        .dirs()
        .into_iter()
        .map(|d| d.join("cpu.stat"))
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|t| t.lines().filter_map(|l| l.strip_prefix("nr_throttled ").and_then(|n| n.parse::<u64>().ok())).collect::<Vec<_>>())
        .max()
        .unwrap_or(0);
    assert!(throttled > 0, "cpu.stat must show throttling ({stats:?})");
    sb.delete().unwrap();
    root.assert_clean();
}

#[test]
fn disk_limit_gives_enospc_and_reset_frees_it() {
    require_root!("disk_limit_gives_enospc_and_reset_frees_it");
    let root = TestRoot::new("disk");
    let mut cfg = root.config(common::debian());
    cfg.limits.disk_bytes = Some(32 << 20);
    let sb = Sandbox::create(&cfg, "disk").unwrap();
    let host_mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap().lines().count();
    // Filling the writable layer stops at its size with ENOSPC.
    let o = sb.run("dd if=/dev/zero of=/fill bs=1M count=100; echo rc=$?; stat -c %s /fill").unwrap();
    let out = o.stdout_str();
    assert!(o.stderr_str().contains("No space left on device"), "{o:?}");
    let size: u64 = out.lines().last().unwrap().trim().parse().unwrap();
    assert!(size <= 32 << 20 && size > 16 << 20, "wrote {size} bytes");
    // So does an inode flood, long before the host notices.
    let o = sb.run("mkdir /many && cd /many && i=0; while : > f$i 2>/dev/null; do i=$((i+1)); done; echo $i").unwrap();
    let files: u64 = o.stdout_str().trim().parse().unwrap();
    assert!(files < 20_000, "{files} files");
    // The sandbox is still usable, and a reset gives the space back.
    sb.reset().unwrap();
    let o = sb.run("test -e /fill; echo $?; dd if=/dev/zero of=/again bs=1M count=20 2>/dev/null; echo $?").unwrap();
    assert_eq!(o.stdout_str(), "1\n0\n");
    // The layer is a detached tmpfs: the host's mount table never sees it.
    assert_eq!(std::fs::read_to_string("/proc/self/mountinfo").unwrap().lines().count(), host_mounts);
    sb.delete().unwrap();
    root.assert_clean();
}
