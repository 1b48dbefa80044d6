//! `envbox bench [--image DIR] [--workers N] [--iterations M] [--json]`

use std::path::{Path, PathBuf};

use envbox::bench::{self, BenchOptions};
use envbox::config::{self, Image};
use envbox::Result;

#[derive(clap::Args)]
pub struct Args {
    /// Root filesystem directory; default: the host's system directories.
    #[arg(long)]
    image: Option<PathBuf>,
    /// Concurrent workers in the lifecycle phase (32 is the reference load).
    #[arg(long, default_value_t = 32)]
    workers: usize,
    /// Lifecycles per worker.
    #[arg(long, default_value_t = 10)]
    iterations: usize,
    /// Seconds of each throughput phase.
    #[arg(long, default_value_t = 3.0)]
    throughput_secs: f64,
    /// Network of the sandboxes: none (a private namespace) or host.
    #[arg(long, default_value = "none")]
    net: envbox::Network,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(root: &Path, a: Args) -> Result<i32> {
    let opts = BenchOptions {
        image: a.image.map(|p| Image::Dir(config::absolute(&p))).unwrap_or(Image::Host),
        workers: a.workers.max(1),
        iterations: a.iterations.max(1),
        root: root.to_path_buf(),
        throughput_secs: a.throughput_secs.clamp(0.1, 600.0),
        network: a.net,
    };
    let r = bench::run(&opts)?;
    if a.json {
        super::print_json(&r);
        return Ok(if r.failures == 0 && r.throughput.failures == 0 { 0 } else { 1 });
    }
    println!("envbox bench: image {}, {} workers x {} iterations", r.image, r.workers, r.iterations);
    println!("{:<14} {:>6} {:>10} {:>10} {:>10}", "op", "n", "p50 ms", "p95 ms", "max ms");
    for (op, s) in &r.ops {
        println!("{:<14} {:>6} {:>10.3} {:>10.3} {:>10.3}", op, s.n, s.p50_ms, s.p95_ms, s.max_ms);
    }
    println!(
        "throughput ({} workers): {} commands/s, {} lifecycles/s, {} failures",
        r.throughput.workers, r.throughput.commands_per_s, r.throughput.lifecycles_per_s, r.throughput.failures
    );
    println!("idle sandbox: agent PSS {} KiB, shell PSS {} KiB", r.memory.agent_pss_kib, r.memory.shell_pss_kib);
    if r.failures > 0 {
        println!("FAILURES: {}", r.failures);
        return Ok(1);
    }
    Ok(0)
}
