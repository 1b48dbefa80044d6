//! Leak check after many lifecycles: fds and threads of this (long-lived)
//! process, processes, mounts, cgroups and directories. Alone in its test
//! binary, so no other test's fds are counted.

mod common;

use common::TestRoot;
use envbox::Sandbox;

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(0)
}

fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.flatten().map(|e| std::fs::read_to_string(e.path().join("comm")).unwrap_or_default().trim().to_string()).collect())
        .unwrap_or_default()
}

#[test]
fn many_lifecycles_leak_nothing() {
    require_root!("many_lifecycles_leak_nothing");
    let root = TestRoot::new("leaks");
    let mut cfg = root.config(common::debian());
    // Warm-up: things opened once and kept (the cgroup layout, the image view).
    Sandbox::create(&cfg, "warm").unwrap().delete_and_wait().unwrap();
    let (fds, tasks) = (common::fds_but_spares(), threads());
    for round in 0..4 {
        cfg.limits.pids = if round % 2 == 0 { Some(128) } else { None };
        std::thread::scope(|s| {
            for w in 0..8 {
                let cfg = &cfg;
                let worker = std::thread::Builder::new().name("leak-worker".into());
                worker
                    .spawn_scoped(s, move || {
                        for i in 0..25 {
                            let sb = Sandbox::create(cfg, &format!("l{round}-{w}-{i}")).unwrap();
                            sb.run("echo x > /tmp/x; sleep 1000 &").unwrap();
                            sb.reset().unwrap();
                            sb.delete_and_wait().unwrap();
                        }
                    })
                    .unwrap();
            }
        });
    }
    // A scope returns when the workers' closures have returned; the OS
    // threads may still be exiting for a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while thread_names().iter().any(|n| n == "leak-worker") && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    root.assert_clean();
    assert_eq!(common::fds_but_spares(), fds, "fds leaked");
    assert_eq!(threads(), tasks, "threads leaked: {:?}", thread_names());
    common::assert_no_child_but_the_zygote();
}
