//! `envbox bench [--image DIR] [--workers N] [--iterations M] [--json]`

use std::path::{Path, PathBuf};

use envbox::bench::{self, BenchOptions};
use envbox::config::{self, Image};
use envbox::Result;

#[derive(clap::Args)]
pub struct Args {
    /// Image: a registry reference, oci:PATH[:TAG], docker-archive:PATH or a rootfs directory;
    /// default: the host's system directories.
    #[arg(long)]
    image: Option<String>,
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
    /// How the writable root is made: overlayfs, or btrfs (the state root must be on btrfs).
    #[arg(long, default_value = "overlayfs")]
    fs: envbox::FsBackend,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Benchmark an environment directory (env.py) instead of the sandbox lifecycle.
    #[arg(long = "env")]
    env_dir: Option<PathBuf>,
    /// --env: the method called (it must take no required argument).
    #[arg(long, default_value = "noop")]
    method: String,
    /// --env: replicas of the throughput phase.
    #[arg(long, default_value_t = 8)]
    replicas: usize,
    /// --env: sequential calls of the latency phase.
    #[arg(long, default_value_t = 2000)]
    calls: usize,
    /// --env: a venv with the reference framework (benches/make-reference-venv.sh);
    /// default /var/cache/envbox-test-venv when it exists; "none" skips the reference.
    #[arg(long = "reference-venv", env = "ENVBOX_REFERENCE_VENV")]
    reference_venv: Option<String>,
}

pub fn run(root: &Path, a: Args) -> Result<i32> {
    if let Some(dir) = a.env_dir.clone() {
        return run_env(root, dir, a);
    }
    let opts = BenchOptions {
        image: a.image.as_deref().map(Image::parse).unwrap_or(Image::Host),
        workers: a.workers.max(1),
        iterations: a.iterations.max(1),
        root: root.to_path_buf(),
        throughput_secs: a.throughput_secs.clamp(0.1, 600.0),
        network: a.net,
        fs: a.fs,
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

fn run_env(root: &Path, dir: PathBuf, a: Args) -> Result<i32> {
    let reference_venv = match a.reference_venv.as_deref() {
        Some("none") => None,
        Some(v) => Some(PathBuf::from(v)),
        None => Some(PathBuf::from("/var/cache/envbox-test-venv")).filter(|p| p.join("bin/python").exists()),
    };
    let opts = envbox::bench_env::EnvBenchOptions {
        env_dir: config::absolute(&dir),
        method: a.method,
        image: a.image.as_deref().map(Image::parse).unwrap_or(Image::Host),
        root: root.to_path_buf(),
        iterations: a.iterations.max(1),
        calls: a.calls.max(1),
        replicas: a.replicas.max(1),
        clients_per_replica: 4,
        throughput_secs: a.throughput_secs.clamp(0.1, 600.0),
        reference_venv,
    };
    let r = envbox::bench_env::run(&opts)?;
    if a.json {
        super::print_json(&r);
        return Ok(if r.envbox.failures == 0 { 0 } else { 1 });
    }
    println!("envbox bench --env {} (method {}, {} replicas)", r.env_dir, r.method, r.replicas);
    println!("{:<22} {:>12} {:>12} {:>14} {:>8}", "p50 ms", "envbox", "p95", "reference", "ratio");
    for (op, s) in &r.envbox.ops {
        let reference = r.reference.as_ref().and_then(|x| x.ops.get(op));
        let ratio = r.speedup.get(&format!("{op}_p50")).map(|x| format!("{x}x")).unwrap_or_default();
        let rs = reference.map(|x| format!("{:.3}", x.p50_ms)).unwrap_or_else(|| "-".into());
        println!("{:<22} {:>12.3} {:>12.3} {:>14} {:>8}", op, s.p50_ms, s.p95_ms, rs, ratio);
    }
    let rref = r.reference.as_ref().map(|x| x.calls_per_s.to_string()).unwrap_or_else(|| "-".into());
    let ratio = r.speedup.get("calls_per_s").map(|x| format!("{x}x")).unwrap_or_default();
    println!("{:<22} {:>12} {:>12} {:>14} {:>8}", "calls/s", r.envbox.calls_per_s, "", rref, ratio);
    if r.envbox.failures > 0 {
        println!("FAILURES: {}", r.envbox.failures);
        return Ok(1);
    }
    Ok(0)
}
