//! The lifecycle benchmark behind `envbox bench`: create, exec (`true` and
//! `/bin/true`), reset (after a few files and after 10,000), delete, with N
//! concurrent workers; then throughput with 16 workers and the memory cost
//! of an idle sandbox.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::{Image, SandboxConfig};
use crate::error::Result;
use crate::sandbox::Sandbox;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub image: Image,
    pub workers: usize,
    pub iterations: usize,
    pub root: PathBuf,
    /// Seconds of each throughput phase.
    pub throughput_secs: f64,
    pub network: crate::config::Network,
    pub fs: crate::config::FsBackend,
}

/// Latency summary of one operation.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct OpStats {
    pub n: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub max_ms: f64,
}

/// Throughput with 16 concurrent workers.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Throughput {
    pub workers: usize,
    /// `true` round trips per second, one persistent sandbox per worker.
    pub commands_per_s: f64,
    /// create → run → delete cycles per second.
    pub lifecycles_per_s: f64,
    pub failures: u64,
}

/// Host memory an idle sandbox costs.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Memory {
    /// Proportional set size of one idle agent (PID 1), KiB.
    pub agent_pss_kib: u64,
    /// Proportional set size of one idle shell, KiB.
    pub shell_pss_kib: u64,
}

/// The whole report (`envbox bench --json` prints it).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct BenchReport {
    pub workers: usize,
    pub iterations: usize,
    pub image: String,
    pub ops: BTreeMap<String, OpStats>,
    pub throughput: Throughput,
    pub memory: Memory,
    pub failures: u64,
}

/// Summarises samples (milliseconds).
pub fn summarize(samples: &mut [f64]) -> OpStats {
    if samples.is_empty() {
        return OpStats::default();
    }
    samples.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
        let i = ((samples.len() - 1) as f64 * q).round() as usize;
        samples[i]
    };
    let round = |x: f64| (x * 1000.0).round() / 1000.0;
    OpStats { n: samples.len(), p50_ms: round(pick(0.5)), p95_ms: round(pick(0.95)), max_ms: round(pick(1.0)) }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

type Samples = Arc<Mutex<BTreeMap<&'static str, Vec<f64>>>>;

fn record(samples: &Samples, op: &'static str, d: Duration) {
    if let Ok(mut m) = samples.lock() {
        m.entry(op).or_default().push(ms(d));
    }
}

fn timed<T>(samples: &Samples, op: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let t = Instant::now();
    let r = f()?;
    record(samples, op, t.elapsed());
    Ok(r)
}

/// Runs the whole benchmark.
pub fn run(opts: &BenchOptions) -> Result<BenchReport> {
    crate::sandbox::require_root()?;
    let base =
        SandboxConfig { image: opts.image.clone(), root: opts.root.clone(), network: opts.network, fs: opts.fs, ..Default::default() };
    base.validate()?;
    let samples: Samples = Arc::new(Mutex::new(BTreeMap::new()));
    let failures = Arc::new(AtomicU64::new(0));
    let tag = std::process::id();

    // Phase 1: the lifecycle, N workers × M iterations.
    std::thread::scope(|s| {
        for w in 0..opts.workers {
            let (samples, failures, base) = (samples.clone(), failures.clone(), base.clone());
            s.spawn(move || {
                for i in 0..opts.iterations {
                    let name = format!("bench-{tag}-{w}-{i}");
                    if lifecycle(&base, &name, &samples).is_err() {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });

    // Phase 2: reset after changing 10,000 files.
    let rounds = opts.iterations.clamp(1, 5);
    if reset_10k(&base, &format!("bench-{tag}-10k"), rounds, &samples).is_err() {
        failures.fetch_add(1, Ordering::Relaxed);
    }

    // Phase 3: throughput with 16 workers, and idle memory.
    let throughput = throughput(&base, tag, 16, Duration::from_secs_f64(opts.throughput_secs));
    let memory = idle_memory(&base, tag).unwrap_or_default();

    let mut ops = BTreeMap::new();
    if let Ok(mut m) = samples.lock() {
        for (op, v) in m.iter_mut() {
            ops.insert((*op).to_string(), summarize(v));
        }
    }
    Ok(BenchReport {
        workers: opts.workers,
        iterations: opts.iterations,
        image: opts.image.describe(),
        ops,
        throughput,
        memory,
        failures: failures.load(Ordering::Relaxed),
    })
}

fn lifecycle(base: &SandboxConfig, name: &str, samples: &Samples) -> Result<()> {
    let sb = timed(samples, "create", || Sandbox::create(base, name))?;
    // The first command also waits for the shell to finish starting; it is
    // measured apart, so `exec` is the steady-state round trip.
    timed(samples, "first_exec", || sb.run("true"))?;
    for _ in 0..5 {
        timed(samples, "exec", || sb.run("true"))?;
    }
    timed(samples, "exec_bin_true", || sb.run("/bin/true"))?;
    sb.run("for i in 1 2 3 4 5 6 7 8 9 10; do echo $i > /tmp/f$i; done; mkdir -p /root/work && echo x > /root/work/y")?;
    timed(samples, "reset", || sb.reset())?;
    // The fresh shell starts after the reset's reply: the first command
    // after a reset pays for it, so it is measured too.
    timed(samples, "exec_after_reset", || sb.run("true"))?;
    timed(samples, "delete", || sb.delete())
}

fn reset_10k(base: &SandboxConfig, name: &str, rounds: usize, samples: &Samples) -> Result<()> {
    let sb = Sandbox::create(base, name)?;
    for _ in 0..rounds {
        let out = sb.run("mkdir -p /tmp/many && cd /tmp/many && i=0; while [ $i -lt 10000 ]; do : > f$i; i=$((i+1)); done; ls | wc -l")?;
        if out.stdout_str().trim() != "10000" {
            return Err(crate::Error::Agent { name: name.into(), message: format!("expected 10000 files, got {:?}", out.stdout_str()) });
        }
        timed(samples, "reset_10k", || sb.reset())?;
    }
    sb.delete()
}

fn throughput(base: &SandboxConfig, tag: u32, workers: usize, dur: Duration) -> Throughput {
    let commands = AtomicU64::new(0);
    let cycles = AtomicU64::new(0);
    let failures = AtomicU64::new(0);
    // Commands per second: one sandbox per worker, `true` in a loop.
    let t = Instant::now();
    std::thread::scope(|s| {
        for w in 0..workers {
            let (commands, failures) = (&commands, &failures);
            s.spawn(move || {
                let Ok(sb) = Sandbox::create(base, &format!("tput-{tag}-{w}")) else {
                    failures.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                let _ = sb.run("true");
                let start = Instant::now();
                while start.elapsed() < dur {
                    match sb.run("true") {
                        Ok(o) if o.success() => commands.fetch_add(1, Ordering::Relaxed),
                        _ => failures.fetch_add(1, Ordering::Relaxed),
                    };
                }
            });
        }
    });
    let cmd_secs = dur.as_secs_f64().min(t.elapsed().as_secs_f64());
    // Lifecycles per second.
    let t = Instant::now();
    std::thread::scope(|s| {
        for w in 0..workers {
            let (cycles, failures) = (&cycles, &failures);
            s.spawn(move || {
                let mut i = 0;
                while t.elapsed() < dur {
                    let r = Sandbox::create(base, &format!("cyc-{tag}-{w}-{i}")).and_then(|sb| {
                        sb.run("true")?;
                        sb.delete()
                    });
                    match r {
                        Ok(()) => cycles.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failures.fetch_add(1, Ordering::Relaxed),
                    };
                    i += 1;
                }
            });
        }
    });
    let cyc_secs = t.elapsed().as_secs_f64();
    #[allow(clippy::cast_precision_loss)]
    let per_s = |n: u64, secs: f64| ((n as f64 / secs.max(1e-9)) * 10.0).round() / 10.0;
    Throughput {
        workers,
        commands_per_s: per_s(commands.load(Ordering::Relaxed), cmd_secs),
        lifecycles_per_s: per_s(cycles.load(Ordering::Relaxed), cyc_secs),
        failures: failures.load(Ordering::Relaxed),
    }
}

/// PSS of a process, KiB (from /proc/<pid>/smaps_rollup).
pub fn pss_kib(pid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    text.lines().find_map(|l| l.strip_prefix("Pss:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn idle_memory(base: &SandboxConfig, tag: u32) -> Result<Memory> {
    let boxes: Vec<Sandbox> = (0..8).map(|i| Sandbox::create(base, &format!("mem-{tag}-{i}"))).collect::<Result<_>>()?;
    for b in &boxes {
        b.run("true")?;
    }
    let mut agent = Vec::new();
    let mut shell = Vec::new();
    for b in &boxes {
        agent.push(pss_kib(b.pid()).unwrap_or(0));
        let children = std::fs::read_to_string(format!("/proc/{}/task/{}/children", b.pid(), b.pid())).unwrap_or_default();
        if let Some(sh) = children.split_whitespace().next().and_then(|p| p.parse().ok()) {
            shell.push(pss_kib(sh).unwrap_or(0));
        }
    }
    let avg = |v: &[u64]| if v.is_empty() { 0 } else { v.iter().sum::<u64>() / v.len() as u64 };
    Ok(Memory { agent_pss_kib: avg(&agent), shell_pss_kib: avg(&shell) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_right_samples() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = summarize(&mut v);
        assert_eq!((s.n, s.p50_ms, s.p95_ms, s.max_ms), (100, 51.0, 95.0, 100.0));
        assert_eq!(summarize(&mut []), OpStats::default());
        let mut one = vec![2.5];
        assert_eq!(summarize(&mut one).p95_ms, 2.5);
    }
}
