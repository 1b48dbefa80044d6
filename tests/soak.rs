//! Soak: 10,000 create → exec → reset → delete cycles at 16-way
//! concurrency in this one long-lived process, then a reset storm while
//! commands run. Afterwards: no mount, cgroup, process or directory left,
//! and this process's fds, threads and resident memory are where they were
//! after the warm-up. Alone in its test binary, so nothing else is counted.
//! `ENVBOX_SOAK_CYCLES` changes the number of cycles.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::TestRoot;
use envbox::{Error, Sandbox};

/// The state root on a tmpfs, as RL loops should run it (the README says
/// why); unmounted when dropped, whatever happens.
struct TmpfsRoot(TestRoot);

impl TmpfsRoot {
    fn new(tag: &str) -> TmpfsRoot {
        let root = TestRoot::new(tag);
        nix::mount::mount(Some("tmpfs"), &root.path, Some("tmpfs"), nix::mount::MsFlags::empty(), Some("mode=0700")).unwrap();
        TmpfsRoot(root)
    }
}

impl Drop for TmpfsRoot {
    fn drop(&mut self) {
        let _ = envbox::collect_garbage(&self.0.path);
        let _ = nix::mount::umount2(&self.0.path, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).unwrap()
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(0)
}

/// `cycles` lifecycles spread over 16 threads; returns the failures.
fn churn(cfg: &envbox::SandboxConfig, tag: &str, cycles: u64) -> Vec<String> {
    let next = AtomicU64::new(0);
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..16 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= cycles {
                    return;
                }
                let step = || -> envbox::Result<()> {
                    let sb = Sandbox::create(cfg, &format!("{tag}{i}"))?;
                    sb.run("echo $RANDOM > /tmp/x; cat /tmp/x >/dev/null")?;
                    sb.reset()?;
                    sb.run("test ! -e /tmp/x")?;
                    sb.delete_and_wait()
                };
                if let Err(e) = step() {
                    failures.lock().unwrap().push(format!("cycle {i}: {}", envbox::error::chain(&e)));
                }
            });
        }
    });
    failures.into_inner().unwrap()
}

#[test]
fn ten_thousand_cycles_at_16_way_and_a_reset_storm_leak_nothing() {
    require_root!("ten_thousand_cycles_at_16_way_and_a_reset_storm_leak_nothing");
    let cycles: u64 = std::env::var("ENVBOX_SOAK_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let root = TmpfsRoot::new("soak");
    let mut cfg = root.0.config(common::debian());
    cfg.limits.pids = Some(256);
    // Warm-up: what is opened once and kept (cgroup layout, network
    // namespace pool, allocator arenas of 16 threads).
    assert!(churn(&cfg, "w", 320).is_empty());
    std::thread::sleep(Duration::from_millis(200));
    let (fds, tasks, rss) = (common::fds_but_spares(), threads(), rss_kib());

    let t0 = Instant::now();
    let failures = churn(&cfg, "s", cycles);
    let elapsed = t0.elapsed();
    assert!(failures.is_empty(), "{} of {cycles} cycles failed, first: {:?}", failures.len(), &failures[..failures.len().min(5)]);
    eprintln!("soak: {cycles} cycles in {:.1}s ({:.0}/s)", elapsed.as_secs_f64(), cycles as f64 / elapsed.as_secs_f64());

    // A reset storm while commands run in the same sandboxes: every command
    // either completes or is aborted by the reset, nothing hangs, and the
    // sandboxes work afterwards.
    let sandboxes: Vec<Sandbox> = (0..4).map(|i| Sandbox::create(&cfg, &format!("storm{i}")).unwrap()).collect();
    let aborted = AtomicU64::new(0);
    std::thread::scope(|s| {
        for sb in &sandboxes {
            let aborted = &aborted;
            let root = &root;
            s.spawn(move || {
                for _ in 0..200 {
                    match sb.run("for i in 1 2 3; do echo $i > /tmp/f$i; done; sleep 0.05") {
                        Ok(o) => assert_eq!(o.exit_code, 0, "{o:?}"),
                        Err(Error::AbortedByReset) => {
                            aborted.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => panic!("a command failed during the storm: {e}"),
                    }
                }
            });
            // A second handle: its own connection to the agent, so resets
            // arrive while commands run (one handle serializes its calls).
            let other = Sandbox::open(&root.0.path, sb.name()).unwrap();
            s.spawn(move || {
                for _ in 0..100 {
                    other.reset().unwrap();
                    std::thread::sleep(Duration::from_millis(3));
                }
            });
        }
    });
    eprintln!("reset storm: {} commands aborted by resets", aborted.load(Ordering::Relaxed));
    for sb in sandboxes {
        assert_eq!(sb.run("echo ok").unwrap().stdout_str(), "ok\n");
        sb.delete_and_wait().unwrap();
    }

    std::thread::sleep(Duration::from_millis(200));
    root.0.assert_clean();
    assert_eq!(common::fds_but_spares(), fds, "fds leaked");
    assert_eq!(threads(), tasks, "threads leaked");
    let grown = rss_kib().saturating_sub(rss);
    eprintln!("soak: RSS {rss} KiB after warm-up, grew by {grown} KiB");
    assert!(grown < 16 * 1024, "resident memory grew by {grown} KiB over {cycles} cycles");
    common::assert_no_child_but_the_zygote();
}
