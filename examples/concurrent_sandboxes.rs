//! 32 workers, each with its own sandbox: an RL-style loop of step (run a
//! command) and reset.
//!
//!     cargo build --release && sudo ./target/release/examples/concurrent_sandboxes

use std::time::Instant;

use envbox::{Sandbox, SandboxConfig};

const WORKERS: usize = 32;
const EPISODES: usize = 20;

fn main() -> envbox::Result<()> {
    let cfg = SandboxConfig::default();
    let start = Instant::now();
    let results: Vec<envbox::Result<usize>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..WORKERS)
            .map(|w| {
                let cfg = &cfg;
                s.spawn(move || -> envbox::Result<usize> {
                    let sb = Sandbox::create(cfg, &format!("example-worker-{w}"))?;
                    let mut steps = 0;
                    for episode in 0..EPISODES {
                        let out = sb.run(&format!("echo {episode} > /tmp/state && cat /tmp/state"))?;
                        assert_eq!(out.stdout_str().trim(), episode.to_string());
                        sb.reset()?;
                        steps += 1;
                    }
                    sb.delete()?;
                    Ok(steps)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("worker panicked")).collect()
    });
    let steps: usize = results.into_iter().collect::<envbox::Result<Vec<_>>>()?.iter().sum();
    let secs = start.elapsed().as_secs_f64();
    println!("{WORKERS} workers, {steps} episodes (step + reset) in {secs:.2}s: {:.0} episodes/s", steps as f64 / secs);
    Ok(())
}
