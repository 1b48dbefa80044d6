//! Clients of an environment's /health /methods /call API.
//!
//! - [`Env`]: one environment, reached by sandbox name, unix socket or URL
//!   (an envbox sandbox, or any server speaking the reference protocol).
//! - [`Pool`] (from [`load_env`]): replicas in sandboxes this process
//!   creates, with load balancing, health checks and replacement.
//! - [`blocking`]: the same for programs that do not run tokio.
//!
//! Errors separate what the environment did ([`CallError::Raised`]: the
//! method raised) from what the infrastructure did (timeouts, a dead or
//! OOM-killed environment process, an unreachable sandbox), so a trainer
//! can drop infrastructure failures instead of scoring them:
//! [`CallError::is_infrastructure`].

pub mod blocking;
mod pool;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::io::{AsyncRead, AsyncWrite};

pub use self::pool::{load_env, Balance, InstanceStats, LoadOptions, Pool, PoolStats};
use crate::http::{Conn, HttpError, Limits, Response};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The method raised (or was called with arguments it does not take).
    #[error("the environment raised {kind}: {message}")]
    Raised { kind: String, message: String, traceback: String },
    #[error("the environment has no method {method:?}")]
    MethodNotFound { method: String },
    /// The request was refused (malformed arguments, body too large, an
    /// invalid `timeout`).
    #[error("the request was refused ({status}): {detail}")]
    Rejected { status: u16, detail: String },
    /// The call took longer than allowed (client side, or the server's
    /// `timeout` plus grace).
    #[error("the call timed out: {detail}")]
    Timeout { detail: String },
    /// The environment's process died with the call in flight (it is
    /// restarted).
    #[error("{message}")]
    Died { message: String, oom: bool },
    /// The environment is not serving: still starting, env.py failed to
    /// load, or the sandbox is gone.
    #[error("the environment is unavailable: {detail}")]
    Unavailable { detail: String },
    /// The connection failed or the server broke the protocol.
    #[error("talking to the environment at {endpoint} failed: {detail}")]
    Transport { endpoint: String, detail: String },
}

impl CallError {
    /// True for failures that say nothing about the policy being evaluated
    /// (timeouts, dead processes, unreachable sandboxes); false when the
    /// environment itself raised or refused the request.
    pub fn is_infrastructure(&self) -> bool {
        !matches!(self, CallError::Raised { .. } | CallError::MethodNotFound { .. } | CallError::Rejected { .. })
    }
}

/// One entry of GET /methods.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodInfo {
    pub name: String,
    #[serde(default)]
    pub signature: String,
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub doc: Option<String>,
}

/// Where an environment answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp { host: String, port: u16 },
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::Tcp { host, port } => write!(f, "http://{host}:{port}"),
        }
    }
}

impl Endpoint {
    /// Parses `http://HOST[:PORT][/]` or `unix:PATH` / `unix://PATH`.
    pub fn parse(url: &str) -> Result<Endpoint, CallError> {
        let bad = |why: &str| CallError::Transport { endpoint: url.to_string(), detail: why.to_string() };
        if let Some(path) = url.strip_prefix("unix://").or_else(|| url.strip_prefix("unix:")) {
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        let rest = url.strip_prefix("http://").ok_or_else(|| bad("only http:// and unix: URLs are supported (no TLS)"))?;
        let hostport = rest.trim_end_matches('/');
        if hostport.contains('/') {
            return Err(bad("a base URL with a path is not supported"));
        }
        // `[v6]:port`, `[v6]`, `host:port` or `host`.
        let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
            let (h, after) = rest.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            match after {
                "" => (h, 80),
                p => (h, p.strip_prefix(':').and_then(|p| p.parse::<u16>().ok()).ok_or_else(|| bad("bad port"))?),
            }
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, p.parse::<u16>().map_err(|_| bad("bad port"))?),
                None => (hostport, 80),
            }
        };
        if host.is_empty() || host.contains(['[', ']']) {
            return Err(bad("no host"));
        }
        Ok(Endpoint::Tcp { host: host.to_string(), port })
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Largest response accepted.
const MAX_RESPONSE: u64 = 1 << 30;
/// Kept-alive connections kept per environment.
const MAX_IDLE: usize = 64;

/// A client of one environment. Cheap to share (`Arc`); connections are
/// kept alive and reused.
pub struct Env {
    endpoint: Endpoint,
    idle: Mutex<Vec<Conn<Box<dyn Io>>>>,
    /// Deadline of each call unless the call sets its own.
    pub default_timeout: Option<Duration>,
}

/// Options of one call.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallOptions {
    /// Client-side deadline (the reference client's `_timeout`).
    pub timeout: Option<Duration>,
}

impl Env {
    pub fn new(endpoint: Endpoint) -> Env {
        Env { endpoint, idle: Mutex::new(Vec::new()), default_timeout: None }
    }

    /// The environment served by sandbox `name` under the default state root.
    pub fn connect(name: &str) -> Result<Env, crate::Error> {
        Self::connect_in(&crate::config::default_root(), name)
    }

    /// The environment served by sandbox `name` under `root`.
    pub fn connect_in(root: &Path, name: &str) -> Result<Env, crate::Error> {
        crate::config::validate_name(name)?;
        let dir = root.join(name);
        let st = crate::sandbox::state::State::read(&dir)
            .map_err(|_| crate::Error::NotFound { name: name.to_string(), root: root.to_path_buf() })?;
        if st.config.serve.is_none() {
            return Err(crate::Error::Agent {
                name: name.to_string(),
                message: "it serves no environment (create it with `envbox run --dir ENV_DIR`)".into(),
            });
        }
        Ok(Env::unix(dir.join(crate::sandbox::state::ENV_SOCKET_FILE)))
    }

    pub fn unix(path: impl Into<PathBuf>) -> Env {
        Env::new(Endpoint::Unix(path.into()))
    }

    /// `http://HOST:PORT` (an envbox `--publish` port, or a reference server).
    pub fn url(url: &str) -> Result<Env, CallError> {
        Ok(Env::new(Endpoint::parse(url)?))
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn transport(&self, detail: impl std::fmt::Display) -> CallError {
        CallError::Transport { endpoint: self.endpoint.to_string(), detail: detail.to_string() }
    }

    async fn open(&self) -> Result<Conn<Box<dyn Io>>, CallError> {
        let stream: Box<dyn Io> = match &self.endpoint {
            Endpoint::Unix(p) => Box::new(tokio::net::UnixStream::connect(p).await.map_err(|e| self.transport(e))?),
            Endpoint::Tcp { host, port } => {
                let s = tokio::net::TcpStream::connect((host.as_str(), *port)).await.map_err(|e| self.transport(e))?;
                let _ = s.set_nodelay(true);
                Box::new(s)
            }
        };
        let limits =
            Limits { max_body: MAX_RESPONSE, idle: Duration::from_secs(365 * 24 * 3600), read: Duration::from_secs(365 * 24 * 3600) };
        Ok(Conn::new(stream, limits))
    }

    /// One request; a kept-alive connection that the server closed while
    /// idle is retried once on a fresh one.
    async fn request(&self, method: &str, path: &str, body: &[u8]) -> Result<Response, CallError> {
        let host: &[u8] = match &self.endpoint {
            Endpoint::Unix(_) => b"localhost",
            Endpoint::Tcp { host, .. } => host.as_bytes(),
        };
        let mut headers: Vec<(&str, &[u8])> = vec![("host", host)];
        if !body.is_empty() {
            headers.push(("content-type", b"application/json"));
        }
        loop {
            let pooled = self.idle.lock().ok().and_then(|mut v| v.pop());
            let reused = pooled.is_some();
            let mut conn = match pooled {
                Some(c) => c,
                None => self.open().await?,
            };
            let result = match conn.write_request(method, path, &headers, body).await {
                Ok(()) => conn.read_response(method).await,
                Err(e) => Err(HttpError::Io(e)),
            };
            match result {
                Ok(resp) => {
                    if resp.keep_alive {
                        if let Ok(mut idle) = self.idle.lock() {
                            if idle.len() < MAX_IDLE {
                                idle.push(conn);
                            }
                        }
                    }
                    return Ok(resp);
                }
                Err(HttpError::Closed | HttpError::Io(_)) if reused => continue,
                Err(e) => return Err(self.transport(e)),
            }
        }
    }

    async fn with_deadline<T>(
        &self,
        timeout: Option<Duration>,
        fut: impl std::future::Future<Output = Result<T, CallError>>,
    ) -> Result<T, CallError> {
        match timeout.or(self.default_timeout) {
            Some(t) => tokio::time::timeout(t, fut)
                .await
                .unwrap_or_else(|_| Err(CallError::Timeout { detail: format!("no answer within {:.3}s (client side)", t.as_secs_f64()) })),
            None => fut.await,
        }
    }

    /// Calls `method(*args, **kwargs)` and returns its result.
    pub async fn call(&self, method: &str, args: Vec<Value>, kwargs: Map<String, Value>) -> Result<Value, CallError> {
        self.call_with(method, args, kwargs, CallOptions::default()).await
    }

    /// [`Env::call`] with options (a client-side timeout).
    pub async fn call_with(
        &self,
        method: &str,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        opts: CallOptions,
    ) -> Result<Value, CallError> {
        let body = serde_json::to_vec(&serde_json::json!({"method": method, "args": args, "kwargs": kwargs}))
            .map_err(|e| self.transport(format!("arguments are not serializable: {e}")))?;
        let resp = self.with_deadline(opts.timeout, self.request("POST", "/call", &body)).await?;
        interpret(method, &resp)
    }

    /// GET /methods.
    pub async fn list_methods(&self) -> Result<Vec<MethodInfo>, CallError> {
        let resp = self.request("GET", "/methods", b"").await?;
        if resp.status != 200 {
            return Err(error_from(None, &resp));
        }
        #[derive(Deserialize)]
        struct Methods {
            methods: Vec<MethodInfo>,
        }
        serde_json::from_slice::<Methods>(&resp.body).map(|m| m.methods).map_err(|e| self.transport(format!("bad /methods answer: {e}")))
    }

    /// True when GET /health answers 200.
    pub async fn is_ready(&self) -> bool {
        matches!(tokio::time::timeout(Duration::from_secs(5), self.request("GET", "/health", b"")).await, Ok(Ok(r)) if r.status == 200)
    }

    /// Polls /health until it answers 200 or `timeout` passes; the last
    /// failure is returned (env.py's load error, say).
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), CallError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let last = match tokio::time::timeout(Duration::from_secs(5), self.request("GET", "/health", b"")).await {
                Ok(Ok(r)) if r.status == 200 => return Ok(()),
                Ok(Ok(r)) => error_from(None, &r),
                Ok(Err(e)) => e,
                Err(_) => CallError::Timeout { detail: "/health did not answer within 5s".into() },
            };
            // A load failure will not fix itself: report it at once.
            if let CallError::Unavailable { detail } = &last {
                if detail.contains("failed to load") || detail.contains("exited before loading") || detail.contains("cannot start") {
                    return Err(last);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(last);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn json_str(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_string)
}

/// Turns a /call answer into the result or a typed error.
fn interpret(method: &str, resp: &Response) -> Result<Value, CallError> {
    if resp.status == 200 {
        let mut data: Value = serde_json::from_slice(&resp.body)
            .map_err(|e| CallError::Transport { endpoint: String::new(), detail: format!("the answer is not JSON: {e}") })?;
        match data.get("status") {
            // Not the reference's envelope (an HTTP environment): the answer itself.
            None => return Ok(data),
            Some(Value::String(s)) if s == "success" => return Ok(data.get_mut("result").map(Value::take).unwrap_or(Value::Null)),
            Some(_) => {
                let message = data.pointer("/result/error").and_then(Value::as_str).unwrap_or("the call failed").to_string();
                return Err(if message.contains("exceeded timeout") {
                    CallError::Timeout { detail: message }
                } else {
                    CallError::Rejected { status: 200, detail: message }
                });
            }
        }
    }
    Err(error_from(Some(method), resp))
}

fn error_from(method: Option<&str>, resp: &Response) -> CallError {
    let data: Value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
    let detail = match data.get("detail") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::from_utf8_lossy(&resp.body).into_owned(),
    };
    let infra = resp.header("x-envbox-error").is_some_and(|v| v == b"infrastructure");
    let error = data.get("error").filter(|e| e.is_object());
    let kind = error.and_then(|e| json_str(e, "type"));
    match resp.status {
        404 if detail.starts_with("Method not found") => CallError::MethodNotFound {
            method: method.map_or_else(|| detail.trim_start_matches("Method not found: ").to_string(), str::to_string),
        },
        400 | 404 | 405 | 413 | 422 | 431 => CallError::Rejected { status: resp.status, detail },
        500 if infra => CallError::Died { message: detail, oom: kind.as_deref() == Some("OutOfMemory") },
        500 => {
            let (message, traceback) = match error {
                Some(e) => (json_str(e, "message").unwrap_or_default(), json_str(e, "traceback").unwrap_or_default()),
                // The reference: "<str(e)>\n<traceback>".
                None => match detail.split_once("\nTraceback") {
                    Some((m, tb)) => (m.to_string(), format!("Traceback{tb}")),
                    None => (detail.clone(), String::new()),
                },
            };
            let kind = kind.unwrap_or_else(|| {
                traceback.lines().rev().find_map(|l| l.split_once(':').map(|(k, _)| k.trim().to_string())).unwrap_or_default()
            });
            CallError::Raised { kind, message, traceback }
        }
        504 => CallError::Timeout { detail },
        _ => CallError::Unavailable { detail },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, body: &str, infra: bool) -> Response {
        let mut headers = Vec::new();
        if infra {
            headers.push(("x-envbox-error".to_string(), b"infrastructure".to_vec()));
        }
        Response { status, headers, body: body.as_bytes().to_vec(), keep_alive: true }
    }

    #[test]
    fn answers_are_classified() {
        assert_eq!(
            interpret("m", &resp(200, r#"{"status":"success","result":{"a":1},"error":null}"#, false)).unwrap(),
            serde_json::json!({"a":1})
        );
        let e = interpret(
            "m",
            &resp(
                200,
                r#"{"status":"failed","result":{"error":"Task execution exceeded timeout of 1.0s (+10s grace)"},"error":null}"#,
                false,
            ),
        )
        .unwrap_err();
        assert!(matches!(e, CallError::Timeout { .. }) && e.is_infrastructure());
        let e = interpret("nope", &resp(404, r#"{"detail":"Method not found: nope"}"#, false)).unwrap_err();
        assert!(matches!(&e, CallError::MethodNotFound { method } if method == "nope") && !e.is_infrastructure());
        // The reference server's raise: detail only.
        let e = interpret("boom", &resp(500, r#"{"detail":"boom\nTraceback (most recent call last):\n  x\nValueError: boom"}"#, false))
            .unwrap_err();
        match &e {
            CallError::Raised { kind, message, traceback } => {
                assert_eq!((kind.as_str(), message.as_str()), ("ValueError", "boom"));
                assert!(traceback.starts_with("Traceback"));
            }
            other => panic!("{other:?}"),
        }
        assert!(!e.is_infrastructure());
        let e = interpret(
            "m",
            &resp(500, r#"{"detail":"environment process died (killed by signal 9): out of memory","error":{"type":"OutOfMemory"}}"#, true),
        )
        .unwrap_err();
        assert!(matches!(e, CallError::Died { oom: true, .. }) && e.is_infrastructure());
        let e = interpret("m", &resp(422, r#"{"detail":[{"type":"missing"}]}"#, false)).unwrap_err();
        assert!(matches!(e, CallError::Rejected { status: 422, .. }));
        assert!(interpret("m", &resp(503, r#"{"detail":"starting"}"#, true)).unwrap_err().is_infrastructure());
    }

    #[test]
    fn endpoints_parse() {
        assert_eq!(Endpoint::parse("http://127.0.0.1:8000/").unwrap(), Endpoint::Tcp { host: "127.0.0.1".into(), port: 8000 });
        assert_eq!(Endpoint::parse("http://localhost").unwrap(), Endpoint::Tcp { host: "localhost".into(), port: 80 });
        assert_eq!(Endpoint::parse("http://[::1]:9").unwrap(), Endpoint::Tcp { host: "::1".into(), port: 9 });
        assert_eq!(Endpoint::parse("unix:/run/x.sock").unwrap(), Endpoint::Unix("/run/x.sock".into()));
        assert_eq!(Endpoint::parse("http://[::1]").unwrap(), Endpoint::Tcp { host: "::1".into(), port: 80 });
        for bad in
            ["https://x", "http://:80", "http://x:port", "http://x/a/b", "ftp://x", "http://[", "http://[:99", "http://[[[", "http://[]:1"]
        {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }
}
