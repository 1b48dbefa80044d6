//! `envbox bench --env DIR`: the environment benchmark. For one env.py it
//! measures run → first answered /call, reset → first answered /call, the
//! latency of a no-op /call on a kept-alive unix connection, and calls per
//! second across 8 replicas; and, in the same run, the same workload
//! against the reference server (uvicorn + FastAPI serving the same env.py
//! on loopback, from a venv with the reference framework), with the ratio.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Map;

use crate::bench::{summarize, OpStats};
use crate::client::Env;
use crate::config::{EnvKind, Image, Network, SandboxConfig, ServeConfig, Volume};
use crate::error::{Error, Result};
use crate::sandbox::Sandbox;

/// What to measure.
#[derive(Debug, Clone)]
pub struct EnvBenchOptions {
    pub env_dir: PathBuf,
    /// The method called (it must take no required argument).
    pub method: String,
    pub image: Image,
    pub root: PathBuf,
    /// Samples of the run and reset measurements.
    pub iterations: usize,
    /// Sequential calls of the latency measurement.
    pub calls: usize,
    pub replicas: usize,
    /// Concurrent clients per replica in the throughput phase.
    pub clients_per_replica: usize,
    pub throughput_secs: f64,
    /// A venv with affinetes, fastapi and uvicorn: the reference server is
    /// measured too.
    pub reference_venv: Option<PathBuf>,
}

/// One side's figures.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Side {
    pub ops: BTreeMap<String, OpStats>,
    pub calls_per_s: f64,
    pub failures: u64,
}

/// The report (`envbox bench --env DIR --json`).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct EnvBenchReport {
    pub env_dir: String,
    pub method: String,
    pub replicas: usize,
    pub envbox: Side,
    pub reference: Option<Side>,
    /// reference / envbox for latencies, envbox / reference for throughput.
    pub speedup: BTreeMap<String, f64>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn setup_error(message: String) -> Error {
    Error::Setup { name: "bench".into(), message }
}

fn env_config(o: &EnvBenchOptions, serve: bool) -> SandboxConfig {
    SandboxConfig {
        image: o.image.clone(),
        workdir: "/app".into(),
        volumes: vec![Volume { host: crate::config::absolute(&o.env_dir), container: "/app".into(), read_only: true }],
        root: o.root.clone(),
        serve: serve.then(|| ServeConfig { kind: EnvKind::Function, ..ServeConfig::default() }),
        ..SandboxConfig::default()
    }
}

async fn first_call(env: &Env, method: &str, deadline: Duration) -> Result<Duration> {
    let t0 = Instant::now();
    loop {
        match env.call(method, vec![], Map::new()).await {
            Ok(_) => return Ok(t0.elapsed()),
            Err(e) if e.is_infrastructure() && t0.elapsed() < deadline => tokio::time::sleep(Duration::from_micros(500)).await,
            Err(e) => return Err(setup_error(format!("calling {method} failed: {e}"))),
        }
    }
}

/// Sequential calls on one kept-alive connection.
async fn latency(env: &Env, method: &str, n: usize) -> (OpStats, u64) {
    let mut samples = Vec::with_capacity(n);
    let mut failures = 0;
    for _ in 0..n {
        let t = Instant::now();
        if env.call(method, vec![], Map::new()).await.is_err() {
            failures += 1;
        }
        samples.push(ms(t.elapsed()));
    }
    (summarize(&mut samples), failures)
}

/// Calls per second with `clients` concurrent callers per environment.
async fn throughput(envs: &[Arc<Env>], method: &str, clients: usize, secs: f64) -> (f64, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for env in envs {
        for _ in 0..clients {
            let (env, stop, done, failed, method) = (env.clone(), stop.clone(), done.clone(), failed.clone(), method.to_string());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match env.call(&method, vec![], Map::new()).await {
                        Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            }));
        }
    }
    let t0 = Instant::now();
    let before = done.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let calls = done.load(Ordering::Relaxed) - before;
    let elapsed = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    #[allow(clippy::cast_precision_loss)]
    let rate = (calls as f64 / elapsed).round();
    (rate, failed.load(Ordering::Relaxed))
}

async fn measure_envbox(o: &EnvBenchOptions) -> Result<Side> {
    let mut side = Side::default();
    let cfg = env_config(o, true);
    let tag = &crate::agent::shell::new_nonce()[..6];
    // run → first answered call.
    let mut samples = Vec::new();
    for i in 0..o.iterations {
        let t0 = Instant::now();
        let sb = Sandbox::create(&cfg, &format!("bench-env-{tag}-{i}"))?;
        let env = Env::unix(sb.env_socket().unwrap_or_default());
        first_call(&env, &o.method, Duration::from_secs(120)).await?;
        samples.push(ms(t0.elapsed()));
        tokio::task::spawn_blocking(move || sb.delete_and_wait()).await.map_err(|e| setup_error(e.to_string()))??;
    }
    side.ops.insert("run_to_first_call".into(), summarize(&mut samples));

    let sb = Sandbox::create(&cfg, &format!("bench-env-{tag}-lat"))?;
    let env = Env::unix(sb.env_socket().unwrap_or_default());
    first_call(&env, &o.method, Duration::from_secs(120)).await?;
    let (stats, failures) = latency(&env, &o.method, o.calls).await;
    side.ops.insert("call".into(), stats);
    side.failures += failures;
    let mut samples = Vec::new();
    for _ in 0..o.iterations {
        let t0 = Instant::now();
        sb.reset()?;
        first_call(&env, &o.method, Duration::from_secs(120)).await?;
        samples.push(ms(t0.elapsed()));
    }
    side.ops.insert("reset_to_first_call".into(), summarize(&mut samples));
    drop(sb);

    let mut sandboxes = Vec::new();
    let mut envs = Vec::new();
    for i in 0..o.replicas {
        let sb = Sandbox::create(&cfg, &format!("bench-env-{tag}-r{i}"))?;
        let env = Arc::new(Env::unix(sb.env_socket().unwrap_or_default()));
        first_call(&env, &o.method, Duration::from_secs(120)).await?;
        sandboxes.push(sb);
        envs.push(env);
    }
    let (rate, failures) = throughput(&envs, &o.method, o.clients_per_replica, o.throughput_secs).await;
    side.calls_per_s = rate;
    side.failures += failures;
    drop(sandboxes);
    Ok(side)
}

/// A loopback port nobody listens on right now.
fn free_port() -> Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| setup_error(format!("finding a free port: {e}")))
}

/// Starts the reference server for `env_dir` in a sandbox on the host's
/// network (so it binds the host's loopback); returns it and its URL.
fn start_reference(o: &EnvBenchOptions, venv: &Path, server_dir: &Path, name: &str) -> Result<(Sandbox, u16)> {
    let mut cfg = env_config(o, false);
    cfg.network = Network::Host;
    let venv_s = venv.display().to_string();
    cfg.volumes.push(Volume { host: venv.to_path_buf(), container: venv_s.clone(), read_only: true });
    cfg.volumes.push(Volume { host: server_dir.to_path_buf(), container: "/srv/reference".into(), read_only: true });
    let sb = Sandbox::create(&cfg, name)?;
    let port = free_port()?;
    let cmd = format!("cd /srv/reference && {venv_s}/bin/python -m uvicorn server:app --host 127.0.0.1 --port {port} --log-level warning >/tmp/server.log 2>&1 &");
    sb.run(&cmd)?;
    Ok((sb, port))
}

async fn measure_reference(o: &EnvBenchOptions, venv: &Path) -> Result<Side> {
    let mut side = Side::default();
    let template = std::fs::read_dir(venv.join("lib"))
        .ok()
        .and_then(|mut d| d.find_map(|e| e.ok().map(|e| e.path().join("site-packages/affinetes/templates/http_server.py"))))
        .filter(|p| p.exists())
        .ok_or_else(|| {
            setup_error(format!("no affinetes server template in {} (benches/make-reference-venv.sh builds it)", venv.display()))
        })?;
    let server_dir = tempfile_dir()?;
    std::fs::copy(&template, server_dir.join("server.py")).map_err(|e| setup_error(format!("copying the reference server: {e}")))?;
    let tag = &crate::agent::shell::new_nonce()[..6];
    let result = async {
        let mut samples = Vec::new();
        for i in 0..o.iterations.min(5) {
            let t0 = Instant::now();
            let (sb, port) = start_reference(o, venv, &server_dir, &format!("bench-ref-{tag}-{i}"))?;
            let env = Env::url(&format!("http://127.0.0.1:{port}")).map_err(|e| setup_error(e.to_string()))?;
            first_call(&env, &o.method, Duration::from_secs(120)).await?;
            samples.push(ms(t0.elapsed()));
            drop(sb);
        }
        side.ops.insert("run_to_first_call".into(), summarize(&mut samples));
        let mut sandboxes = Vec::new();
        let mut envs = Vec::new();
        for i in 0..o.replicas {
            let (sb, port) = start_reference(o, venv, &server_dir, &format!("bench-ref-{tag}-r{i}"))?;
            let env = Arc::new(Env::url(&format!("http://127.0.0.1:{port}")).map_err(|e| setup_error(e.to_string()))?);
            first_call(&env, &o.method, Duration::from_secs(120)).await?;
            sandboxes.push(sb);
            envs.push(env);
        }
        let (stats, failures) = latency(&envs[0], &o.method, o.calls).await;
        side.ops.insert("call".into(), stats);
        side.failures += failures;
        let (rate, failures) = throughput(&envs, &o.method, o.clients_per_replica, o.throughput_secs).await;
        side.calls_per_s = rate;
        side.failures += failures;
        Ok::<_, Error>(())
    }
    .await;
    let _ = std::fs::remove_dir_all(&server_dir);
    result.map(|()| side)
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("envbox-bench-ref-{}", crate::agent::shell::new_nonce()));
    std::fs::create_dir_all(&dir).map_err(|e| setup_error(format!("creating {}: {e}", dir.display())))?;
    Ok(dir)
}

/// Runs the benchmark.
pub fn run(o: &EnvBenchOptions) -> Result<EnvBenchReport> {
    if !o.env_dir.join("env.py").is_file() {
        return Err(setup_error(format!("{} has no env.py", o.env_dir.display())));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| setup_error(format!("starting the runtime: {e}")))?;
    let envbox = rt.block_on(measure_envbox(o))?;
    let reference = match &o.reference_venv {
        Some(v) => Some(rt.block_on(measure_reference(o, v))?),
        None => None,
    };
    let mut speedup = BTreeMap::new();
    if let Some(r) = &reference {
        for (op, s) in &envbox.ops {
            if let Some(rs) = r.ops.get(op) {
                if s.p50_ms > 0.0 {
                    speedup.insert(format!("{op}_p50"), (rs.p50_ms / s.p50_ms * 10.0).round() / 10.0);
                }
            }
        }
        if r.calls_per_s > 0.0 {
            speedup.insert("calls_per_s".into(), (envbox.calls_per_s / r.calls_per_s * 10.0).round() / 10.0);
        }
    }
    Ok(EnvBenchReport {
        env_dir: o.env_dir.display().to_string(),
        method: o.method.clone(),
        replicas: o.replicas,
        envbox,
        reference,
        speedup,
    })
}
