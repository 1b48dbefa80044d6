//! Blocking wrappers of [`Env`](super::Env) and [`Pool`](super::Pool), for
//! programs that do not run tokio. Each owns a small runtime (one worker
//! thread, so a pool's health checks run between calls too).

use std::time::Duration;

use serde_json::{Map, Value};

use super::{CallError, CallOptions, LoadOptions, MethodInfo, PoolStats};

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).thread_name("envbox-client").enable_all().build()
}

/// A blocking [`super::Env`].
pub struct Env {
    rt: tokio::runtime::Runtime,
    inner: super::Env,
}

impl Env {
    pub fn new(inner: super::Env) -> std::io::Result<Env> {
        Ok(Env { rt: runtime()?, inner })
    }

    /// The environment of sandbox `name` under the default state root.
    pub fn connect(name: &str) -> Result<Env, crate::Error> {
        let inner = super::Env::connect(name)?;
        Env::new(inner).map_err(|e| crate::Error::Io { step: "starting the client runtime", name: name.to_string(), source: e })
    }

    pub fn call(&self, method: &str, args: Vec<Value>, kwargs: Map<String, Value>) -> Result<Value, CallError> {
        self.rt.block_on(self.inner.call(method, args, kwargs))
    }

    pub fn call_with(&self, method: &str, args: Vec<Value>, kwargs: Map<String, Value>, opts: CallOptions) -> Result<Value, CallError> {
        self.rt.block_on(self.inner.call_with(method, args, kwargs, opts))
    }

    pub fn list_methods(&self) -> Result<Vec<MethodInfo>, CallError> {
        self.rt.block_on(self.inner.list_methods())
    }

    pub fn is_ready(&self) -> bool {
        self.rt.block_on(self.inner.is_ready())
    }

    pub fn wait_ready(&self, timeout: Duration) -> Result<(), CallError> {
        self.rt.block_on(self.inner.wait_ready(timeout))
    }
}

/// A blocking [`super::Pool`]. Dropping it deletes its sandboxes.
pub struct Pool {
    // Declared first: dropped before the runtime it needs.
    inner: Option<super::Pool>,
    rt: tokio::runtime::Runtime,
}

impl Pool {
    pub fn load(opts: LoadOptions) -> Result<Pool, crate::Error> {
        let rt = runtime().map_err(|e| crate::Error::Io { step: "starting the client runtime", name: opts.name.clone(), source: e })?;
        let inner = rt.block_on(super::load_env(opts))?;
        Ok(Pool { inner: Some(inner), rt })
    }

    fn pool(&self) -> Result<&super::Pool, CallError> {
        self.inner.as_ref().ok_or_else(|| CallError::Unavailable { detail: "the pool was cleaned up".into() })
    }

    pub fn call(&self, method: &str, args: Vec<Value>, kwargs: Map<String, Value>) -> Result<Value, CallError> {
        let pool = self.pool()?;
        self.rt.block_on(pool.call(method, args, kwargs))
    }

    pub fn list_methods(&self) -> Result<Vec<MethodInfo>, CallError> {
        let pool = self.pool()?;
        self.rt.block_on(pool.list_methods())
    }

    pub fn stats(&self) -> Option<PoolStats> {
        self.inner.as_ref().map(super::Pool::stats)
    }

    pub fn names(&self) -> Vec<String> {
        self.inner.as_ref().map(super::Pool::names).unwrap_or_default()
    }

    /// Deletes every replica and waits until they are gone.
    pub fn cleanup(mut self) {
        if let Some(p) = self.inner.take() {
            self.rt.block_on(p.cleanup());
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if let Some(p) = self.inner.take() {
            self.rt.block_on(p.cleanup());
        }
    }
}
