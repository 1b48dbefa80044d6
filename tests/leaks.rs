//! Leak check after many lifecycles: fds and threads of this (long-lived)
//! process, processes, mounts, cgroups and directories. Alone in its test
//! binary, so no other test's fds are counted.

mod common;

use common::TestRoot;
use envbox::Sandbox;

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(0)
}

#[test]
fn many_lifecycles_leak_nothing() {
    require_root!("many_lifecycles_leak_nothing");
    let root = TestRoot::new("leaks");
    let mut cfg = root.config(common::debian());
    // Warm-up: things opened once and kept (the cgroup layout, the image view).
    Sandbox::create(&cfg, "warm").unwrap().delete_and_wait().unwrap();
    let fds = common::fd_count();
    let mut tasks = 0;
    for round in 0..4 {
        // Threads are counted from after the first round: the runtime (and
        // the test harness) may start one lazily, once; a leak grows with
        // every cycle.
        if round == 1 {
            tasks = threads();
        }
        cfg.limits.pids = if round % 2 == 0 { Some(128) } else { None };
        std::thread::scope(|s| {
            for w in 0..8 {
                let cfg = &cfg;
                s.spawn(move || {
                    for i in 0..25 {
                        let sb = Sandbox::create(cfg, &format!("l{round}-{w}-{i}")).unwrap();
                        sb.run("echo x > /tmp/x; sleep 1000 &").unwrap();
                        sb.reset().unwrap();
                        sb.delete_and_wait().unwrap();
                    }
                });
            }
        });
    }
    root.assert_clean();
    assert_eq!(common::fd_count(), fds, "fds leaked");
    assert_eq!(threads(), tasks, "threads leaked");
    assert!(common::children(i32::try_from(std::process::id()).unwrap()).is_empty(), "child processes left");
}
