//! `load_env`: an environment in N replica sandboxes behind one handle, with
//! load balancing that respects health, background health checks, and
//! replacement of dead replicas.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value};

use super::{CallError, CallOptions, Env, MethodInfo};
use crate::config::{EnvKind, Image, Limits, Network, SandboxConfig, ServeConfig, Volume};
use crate::Sandbox;

/// How a call picks its replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    #[default]
    Random,
    RoundRobin,
    /// The replica with the fewest calls in flight.
    LeastLoaded,
}

impl std::str::FromStr for Balance {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "random" => Ok(Balance::Random),
            "round_robin" | "round-robin" => Ok(Balance::RoundRobin),
            "least_loaded" | "least-loaded" => Ok(Balance::LeastLoaded),
            _ => Err(format!("unknown load balancing {s:?}: expected random, round_robin or least_loaded")),
        }
    }
}

/// What [`load_env`] starts.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The sandboxes' image (default: the host's system directories).
    pub image: Image,
    /// The environment directory (env.py), served read-only at /app.
    pub env_dir: PathBuf,
    /// `None`: detected from env.py like the reference does.
    pub kind: Option<EnvKind>,
    pub env_vars: Vec<(String, String)>,
    pub limits: Limits,
    pub network: Network,
    pub replicas: usize,
    pub balance: Balance,
    /// Replica names are `{name}-{i}`.
    pub name: String,
    pub root: PathBuf,
    /// How often replicas are checked; a replica that fails twice in a row
    /// is replaced.
    pub health_interval: Duration,
    /// How long a replica may take to answer /health after its creation.
    pub ready_timeout: Duration,
}

impl LoadOptions {
    pub fn new(env_dir: impl Into<PathBuf>) -> Self {
        let env_dir = env_dir.into();
        let name = env_dir
            .file_name()
            .map(|n| n.to_string_lossy().chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')).collect::<String>())
            .filter(|n| !n.is_empty() && n.len() <= 40)
            .unwrap_or_else(|| "env".into());
        LoadOptions {
            image: Image::Host,
            env_dir,
            kind: None,
            env_vars: Vec::new(),
            limits: Limits::default(),
            network: Network::None,
            replicas: 1,
            balance: Balance::Random,
            name: format!("{name}-{}", &crate::agent::shell::new_nonce()[..6]),
            root: crate::config::default_root(),
            health_interval: Duration::from_secs(2),
            ready_timeout: Duration::from_secs(120),
        }
    }

    fn sandbox_config(&self) -> Result<SandboxConfig, crate::Error> {
        let env_dir = crate::config::absolute(&self.env_dir);
        let env_py = std::fs::read_to_string(env_dir.join("env.py")).map_err(|e| crate::Error::Io {
            step: "reading env.py of the environment directory",
            name: env_dir.display().to_string(),
            source: e,
        })?;
        let kind = self.kind.unwrap_or_else(|| EnvKind::detect(&env_py));
        Ok(SandboxConfig {
            image: self.image.clone(),
            workdir: "/app".into(),
            env: self.env_vars.clone(),
            volumes: vec![Volume { host: env_dir, container: "/app".into(), read_only: true }],
            limits: self.limits,
            network: self.network,
            root: self.root.clone(),
            serve: Some(ServeConfig { kind, ..ServeConfig::default() }),
            group: Some(self.name.clone()),
            ..SandboxConfig::default()
        })
    }
}

/// Per-replica figures of [`PoolStats`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct InstanceStats {
    pub name: String,
    pub healthy: bool,
    pub requests: u64,
}

/// What [`Pool::stats`] reports (the reference's shape, with health).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PoolStats {
    pub total_instances: usize,
    pub healthy_instances: usize,
    pub total_requests: u64,
    pub instances: Vec<InstanceStats>,
}

struct Replica {
    name: String,
    env: Env,
    healthy: AtomicBool,
    failures: AtomicUsize,
    requests: AtomicU64,
    inflight: AtomicUsize,
    /// Owned: dropping it deletes the sandbox.
    sandbox: Mutex<Option<Sandbox>>,
}

struct Inner {
    opts: LoadOptions,
    config: SandboxConfig,
    replicas: Mutex<Vec<Arc<Replica>>>,
    next: AtomicUsize,
    closed: AtomicBool,
}

/// Replicas of one environment behind one handle.
pub struct Pool {
    inner: Arc<Inner>,
    health: Option<tokio::task::JoinHandle<()>>,
}

async fn start_replica(config: SandboxConfig, name: String, ready_timeout: Duration) -> Result<Arc<Replica>, crate::Error> {
    let sandbox = {
        let name = name.clone();
        tokio::task::spawn_blocking(move || Sandbox::create(&config, &name))
            .await
            .map_err(|e| crate::Error::Setup { name: String::new(), message: format!("the creating task failed: {e}") })??
    };
    let socket = sandbox.env_socket().unwrap_or_default();
    let env = Env::unix(socket);
    if let Err(e) = env.wait_ready(ready_timeout).await {
        let message = format!("the environment did not become ready: {e}");
        tokio::task::spawn_blocking(move || drop(sandbox));
        return Err(crate::Error::Setup { name, message });
    }
    Ok(Arc::new(Replica {
        name,
        env,
        healthy: AtomicBool::new(true),
        failures: AtomicUsize::new(0),
        requests: AtomicU64::new(0),
        inflight: AtomicUsize::new(0),
        sandbox: Mutex::new(Some(sandbox)),
    }))
}

/// Starts `opts.replicas` sandboxes serving the environment, concurrently,
/// and returns when all answer /health. If any fails, the others are
/// removed and the first error is returned.
pub async fn load_env(opts: LoadOptions) -> Result<Pool, crate::Error> {
    if opts.replicas == 0 {
        return Err(crate::Error::Setup { name: opts.name.clone(), message: "replicas must be at least 1".into() });
    }
    crate::config::validate_name(&opts.name)?;
    let config = opts.sandbox_config()?;
    config.validate()?;
    let mut tasks = Vec::new();
    for i in 0..opts.replicas {
        tasks.push(tokio::spawn(start_replica(config.clone(), format!("{}-{i}", opts.name), opts.ready_timeout)));
    }
    let mut replicas = Vec::new();
    let mut first_err = None;
    for t in tasks {
        match t.await {
            Ok(Ok(r)) => replicas.push(r),
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(e) => {
                first_err.get_or_insert(crate::Error::Setup { name: opts.name.clone(), message: format!("a replica task failed: {e}") });
            }
        }
    }
    if let Some(e) = first_err {
        let _ = tokio::task::spawn_blocking(move || drop(replicas)).await;
        return Err(e);
    }
    let inner = Arc::new(Inner { opts, config, replicas: Mutex::new(replicas), next: AtomicUsize::new(0), closed: AtomicBool::new(false) });
    let health = tokio::spawn(health_loop(Arc::downgrade(&inner)));
    Ok(Pool { inner, health: Some(health) })
}

async fn health_loop(inner: std::sync::Weak<Inner>) {
    loop {
        let Some(interval) = inner.upgrade().map(|i| i.opts.health_interval) else { return };
        tokio::time::sleep(interval).await;
        let Some(pool) = inner.upgrade() else { return };
        if pool.closed.load(Ordering::SeqCst) {
            return;
        }
        let replicas: Vec<_> = pool.replicas.lock().map(|r| r.clone()).unwrap_or_default();
        for (i, r) in replicas.iter().enumerate() {
            let alive = r.sandbox.lock().ok().is_some_and(|s| s.as_ref().is_some_and(Sandbox::is_alive));
            let ok = alive && r.env.is_ready().await;
            if ok {
                r.failures.store(0, Ordering::SeqCst);
                r.healthy.store(true, Ordering::SeqCst);
                continue;
            }
            r.healthy.store(false, Ordering::SeqCst);
            if !alive || r.failures.fetch_add(1, Ordering::SeqCst) + 1 >= 2 {
                replace(&pool, i, r).await;
            }
        }
    }
}

/// Replaces a dead replica by a fresh sandbox with the same name.
async fn replace(pool: &Arc<Inner>, index: usize, old: &Arc<Replica>) {
    let sandbox = old.sandbox.lock().ok().and_then(|mut s| s.take());
    let _ = tokio::task::spawn_blocking(move || sandbox.map(Sandbox::delete_and_wait)).await;
    if pool.closed.load(Ordering::SeqCst) {
        return;
    }
    if let Ok(fresh) = start_replica(pool.config.clone(), old.name.clone(), pool.opts.ready_timeout).await {
        fresh.requests.store(old.requests.load(Ordering::SeqCst), Ordering::SeqCst);
        let stale = pool.replicas.lock().ok().and_then(|mut r| r.get_mut(index).map(|slot| std::mem::replace(slot, fresh)));
        drop(stale);
    }
}

impl Pool {
    fn pick(&self) -> Result<Arc<Replica>, CallError> {
        let replicas = self.inner.replicas.lock().map_err(|_| CallError::Unavailable { detail: "the pool is poisoned".into() })?;
        let healthy: Vec<&Arc<Replica>> = replicas.iter().filter(|r| r.healthy.load(Ordering::Relaxed)).collect();
        // Health first; with none healthy, try them all rather than fail.
        let candidates: Vec<&Arc<Replica>> = if healthy.is_empty() { replicas.iter().collect() } else { healthy };
        if candidates.is_empty() {
            return Err(CallError::Unavailable { detail: "the pool has no replicas".into() });
        }
        let n = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let chosen = match self.inner.opts.balance {
            Balance::RoundRobin => candidates[n % candidates.len()],
            Balance::Random => candidates[random_index(candidates.len())],
            Balance::LeastLoaded => {
                // Ties are broken round-robin, so an idle pool spreads calls.
                let start = n % candidates.len();
                (0..candidates.len())
                    .map(|k| candidates[(start + k) % candidates.len()])
                    .min_by_key(|r| r.inflight.load(Ordering::Relaxed))
                    .unwrap_or(candidates[0])
            }
        };
        Ok(chosen.clone())
    }

    /// Calls `method` on one replica. A replica whose process died or that
    /// cannot be reached is marked unhealthy (the health loop replaces it).
    pub async fn call(&self, method: &str, args: Vec<Value>, kwargs: Map<String, Value>) -> Result<Value, CallError> {
        self.call_with(method, args, kwargs, CallOptions::default()).await
    }

    pub async fn call_with(
        &self,
        method: &str,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        opts: CallOptions,
    ) -> Result<Value, CallError> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(CallError::Unavailable { detail: "the pool was cleaned up".into() });
        }
        let r = self.pick()?;
        r.inflight.fetch_add(1, Ordering::Relaxed);
        let out = r.env.call_with(method, args, kwargs, opts).await;
        r.inflight.fetch_sub(1, Ordering::Relaxed);
        match &out {
            Ok(_) => {
                r.requests.fetch_add(1, Ordering::Relaxed);
            }
            Err(CallError::Transport { .. } | CallError::Unavailable { .. }) => r.healthy.store(false, Ordering::SeqCst),
            Err(_) => {}
        }
        out
    }

    pub async fn list_methods(&self) -> Result<Vec<MethodInfo>, CallError> {
        self.pick()?.env.list_methods().await
    }

    /// True when at least one replica answers /health.
    pub async fn is_ready(&self) -> bool {
        let replicas: Vec<_> = self.inner.replicas.lock().map(|r| r.clone()).unwrap_or_default();
        for r in replicas {
            if r.env.is_ready().await {
                return true;
            }
        }
        false
    }

    pub fn stats(&self) -> PoolStats {
        let replicas: Vec<_> = self.inner.replicas.lock().map(|r| r.clone()).unwrap_or_default();
        let instances: Vec<InstanceStats> = replicas
            .iter()
            .map(|r| InstanceStats {
                name: r.name.clone(),
                healthy: r.healthy.load(Ordering::Relaxed),
                requests: r.requests.load(Ordering::Relaxed),
            })
            .collect();
        PoolStats {
            total_instances: instances.len(),
            healthy_instances: instances.iter().filter(|i| i.healthy).count(),
            total_requests: instances.iter().map(|i| i.requests).sum(),
            instances,
        }
    }

    /// The replicas' sandbox names.
    pub fn names(&self) -> Vec<String> {
        self.inner.replicas.lock().map(|r| r.iter().map(|x| x.name.clone()).collect()).unwrap_or_default()
    }

    /// Stops the health checks and deletes every replica, waiting until
    /// they are gone.
    pub async fn cleanup(mut self) {
        self.shutdown_tasks();
        let replicas: Vec<_> = self.inner.replicas.lock().map(|mut r| std::mem::take(&mut *r)).unwrap_or_default();
        let sandboxes: Vec<Sandbox> = replicas.iter().filter_map(|r| r.sandbox.lock().ok().and_then(|mut s| s.take())).collect();
        let _ = tokio::task::spawn_blocking(move || {
            for sb in sandboxes {
                let _ = sb.delete_and_wait();
            }
        })
        .await;
    }

    fn shutdown_tasks(&mut self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        if let Some(h) = self.health.take() {
            h.abort();
        }
    }
}

impl Drop for Pool {
    /// Dropping the pool deletes its sandboxes (in the background; use
    /// [`Pool::cleanup`] to wait).
    fn drop(&mut self) {
        self.shutdown_tasks();
        if let Ok(mut r) = self.inner.replicas.lock() {
            r.clear();
        }
    }
}

fn random_index(n: usize) -> usize {
    let mut b = [0u8; 8];
    let _ = getrandom::getrandom(&mut b);
    usize::try_from(u64::from_le_bytes(b) % n as u64).unwrap_or(0)
}
