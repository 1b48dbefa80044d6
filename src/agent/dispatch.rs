//! The dispatcher: the /health /methods /call HTTP API of an environment,
//! served by the agent on the sandbox's environment socket (and on a
//! published TCP port when asked).
//!
//! Wire-compatible with the reference evaluation framework (see
//! PROTOCOL.md): the same paths, status codes and JSON shapes, so its
//! clients work unchanged. Where the reference is weak, envbox does better
//! without changing the wire: error bodies carry a structured `error`
//! object beside `detail`, a header `x-envbox-error` tells environment
//! errors from infrastructure failures, a dead worker fails its calls at
//! once instead of hanging them, a timed-out async call is cancelled, and
//! `POST /{method}` honours `timeout` too.

use std::rc::Rc;
use std::time::Duration;

use serde_json::value::RawValue;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};

use super::worker::{error_body, Outcome, Status, Upstream, Worker};
use crate::config::{EnvKind, ServeConfig};
use crate::http::{Conn, HttpError, Limits, Request};

/// The grace the reference adds to a call's `timeout`.
const TIMEOUT_GRACE: f64 = 10.0;
/// How long a request waits for a starting worker before it gets a 503.
const READY_WAIT: Duration = Duration::from_secs(120);
/// How long /health waits for a starting worker.
const HEALTH_WAIT: Duration = Duration::from_secs(2);

/// `x-envbox-error` values.
const ENV_ERROR: &[u8] = b"environment";
const INFRA_ERROR: &[u8] = b"infrastructure";

/// What serves the requests.
pub enum Backend {
    Function(Rc<Worker>),
    Http(Rc<Upstream>),
}

pub struct Dispatcher {
    pub cfg: ServeConfig,
    pub backend: Backend,
    /// Connections being served (unix socket and TCP together).
    open: std::cell::Cell<usize>,
}

/// Most connections served at once per sandbox (SECURITY.md A3). One more is
/// closed as soon as it is accepted: idle or slow clients cannot make the
/// agent run out of fds or memory. Together with the deadline on a request
/// head (`http::Limits::read`, for the whole head), a slowloris client holds
/// a slot for at most that long once it has started a request.
pub const MAX_CONNECTIONS: usize = 1024;

/// Counts a connection as open until dropped.
struct Slot(Rc<Dispatcher>);

impl Slot {
    fn take(d: &Rc<Dispatcher>) -> Option<Slot> {
        let n = d.open.get();
        if n >= MAX_CONNECTIONS {
            return None;
        }
        d.open.set(n + 1);
        Some(Slot(d.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.set(self.0.open.get().saturating_sub(1));
    }
}

/// One answer: status, the `x-envbox-error` class, JSON body.
pub struct Reply {
    pub status: u16,
    pub error: Option<&'static [u8]>,
    pub body: Vec<u8>,
}

impl Reply {
    fn json(status: u16, body: Vec<u8>) -> Self {
        Reply { status, error: None, body }
    }

    fn detail(status: u16, detail: &str) -> Self {
        Reply::json(status, serde_json::to_vec(&serde_json::json!({ "detail": detail })).unwrap_or_default())
    }
}

impl Dispatcher {
    pub fn new(cfg: ServeConfig, backend: Backend) -> Rc<Self> {
        Rc::new(Dispatcher { cfg, backend, open: std::cell::Cell::new(0) })
    }

    fn limits(&self) -> Limits {
        Limits { max_body: self.cfg.max_body, idle: Duration::from_secs(300), read: Duration::from_secs(30) }
    }

    /// Serves one client connection until it closes.
    pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(self: Rc<Self>, stream: S) {
        let mut conn = Conn::new(stream, self.limits());
        loop {
            let req = match conn.read_request().await {
                Ok(r) => r,
                Err(HttpError::Bad { status, message }) => {
                    let body = Reply::detail(status, &message).body;
                    let _ = conn.write_response(status, &[("content-type", b"application/json")], &body, false).await;
                    return;
                }
                Err(_) => return,
            };
            let keep_alive = req.keep_alive;
            // A HEAD answer has no body: a kept-alive client would read it
            // as the start of the next response.
            let head_only = req.method == "HEAD";
            let reply = match &self.backend {
                Backend::Function(w) => self.route(w, req, &mut conn).await,
                Backend::Http(up) => match proxy(up, &req, self.limits()).await {
                    Ok(resp) => {
                        let headers: Vec<(&str, &[u8])> = resp
                            .headers
                            .iter()
                            .filter(|(n, _)| !is_hop_by_hop(n) && n != "content-length")
                            .map(|(n, v)| (n.as_str(), v.as_slice()))
                            .collect();
                        if conn.write_response(resp.status, &headers, &resp.body, keep_alive).await.is_err() || !keep_alive {
                            return;
                        }
                        continue;
                    }
                    Err(reply) => Some(reply),
                },
            };
            // None: the client went away during the call.
            let Some(reply) = reply else { return };
            let mut headers: Vec<(&str, &[u8])> = vec![("content-type", b"application/json")];
            if let Some(kind) = reply.error {
                headers.push(("x-envbox-error", kind));
            }
            let body: &[u8] = if head_only { &[] } else { &reply.body };
            if conn.write_response(reply.status, &headers, body, keep_alive).await.is_err() || !keep_alive {
                return;
            }
        }
    }

    async fn route<S: AsyncRead + AsyncWrite + Unpin>(&self, worker: &Rc<Worker>, req: Request, conn: &mut Conn<S>) -> Option<Reply> {
        let path = req.path.as_str();
        let method = req.method.as_str();
        match (method, path) {
            ("GET" | "HEAD", "/health") => Some(match worker.settled(HEALTH_WAIT).await {
                Status::Ready(_) => Reply::json(200, br#"{"status":"ok"}"#.to_vec()),
                Status::Starting => Reply::json(503, br#"{"status":"starting","detail":"the environment is starting"}"#.to_vec()),
                Status::Failed(body) => Reply { status: 503, error: Some(ENV_ERROR), body: body.to_vec() },
                Status::Stopped => Reply::detail(503, "the environment is stopped"),
            }),
            ("GET" | "HEAD", "/methods") => Some(match ready(worker).await {
                Ok(r) => Reply::json(200, r.methods.clone()),
                Err(reply) => reply,
            }),
            ("POST", "/call") => {
                let call = match parse_call(&req.body) {
                    Ok(c) => c,
                    Err(reply) => return Some(reply),
                };
                self.call(worker, call, conn).await
            }
            (_, "/health" | "/methods" | "/call") => Some(Reply::detail(405, "Method Not Allowed")),
            ("POST", _) => {
                let name = path.trim_start_matches('/');
                let routes = match ready(worker).await {
                    Ok(r) => r,
                    Err(reply) => return Some(reply),
                };
                if name.is_empty() || !routes.routes.contains(name) {
                    return Some(Reply::detail(404, "Not Found"));
                }
                let call = match restful_call(name, &req.body) {
                    Ok(c) => c,
                    Err(reply) => return Some(reply),
                };
                self.call(worker, call, conn).await
            }
            _ => Some(Reply::detail(404, "Not Found")),
        }
    }

    async fn call<S: AsyncRead + AsyncWrite + Unpin>(&self, worker: &Rc<Worker>, call: Call, conn: &mut Conn<S>) -> Option<Reply> {
        if let Err(reply) = ready(worker).await {
            return Some(reply);
        }
        let timeout = match call.timeout {
            Ok(t) => t,
            Err(()) => return Some(failed("Invalid timeout; expected a number of seconds.")),
        };
        let (id, rx) = worker.call(&call.method, &call.args, &call.kwargs);
        let deadline = timeout.map(|t| tokio::time::Instant::now() + Duration::from_secs_f64((t + TIMEOUT_GRACE).clamp(0.0, 1e9)));
        let outcome = tokio::select! {
            r = rx => r.ok(),
            () = conn.closed() => {
                worker.cancel(id);
                return None;
            }
            () = sleep_until(deadline) => {
                worker.cancel(id);
                let t = timeout.unwrap_or_default();
                let mut reply = failed(&format!("Task execution exceeded timeout of {}s (+10s grace)", py_float(t)));
                reply.error = Some(INFRA_ERROR);
                return Some(reply);
            }
        };
        Some(match outcome {
            Some(Outcome::Ok(result)) => {
                let mut body = Vec::with_capacity(result.get().len() + 48);
                body.extend_from_slice(br#"{"status":"success","result":"#);
                body.extend_from_slice(result.get().as_bytes());
                body.extend_from_slice(br#","error":null}"#);
                Reply::json(200, body)
            }
            Some(Outcome::Failed { status, body }) => Reply { status, error: Some(ENV_ERROR), body },
            Some(Outcome::Died { message, oom }) => {
                let kind = if oom { "OutOfMemory" } else { "EnvironmentDied" };
                Reply { status: 500, error: Some(INFRA_ERROR), body: error_body(&message, kind, &message) }
            }
            None => Reply { status: 500, error: Some(INFRA_ERROR), body: error_body("the call was lost", "EnvironmentDied", "lost") },
        })
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Waits for the worker; a reply when it is not serving.
async fn ready(worker: &Rc<Worker>) -> Result<Rc<super::worker::Ready>, Reply> {
    match worker.settled(READY_WAIT).await {
        Status::Ready(r) => Ok(r),
        Status::Starting => Err(Reply {
            status: 503,
            error: Some(INFRA_ERROR),
            body: error_body("the environment is still starting", "Starting", "still starting"),
        }),
        Status::Failed(body) => Err(Reply { status: 503, error: Some(ENV_ERROR), body: body.to_vec() }),
        Status::Stopped => {
            Err(Reply { status: 503, error: Some(INFRA_ERROR), body: error_body("the environment is stopped", "Stopped", "stopped") })
        }
    }
}

/// The reference's "failed" answer: status 200, the message in `result.error`.
fn failed(message: &str) -> Reply {
    Reply::json(
        200,
        serde_json::to_vec(&serde_json::json!({"status": "failed", "result": {"error": message}, "error": null})).unwrap_or_default(),
    )
}

/// Python's repr of a float, as the reference prints the timeout.
fn py_float(f: f64) -> String {
    if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e16 {
        format!("{f:.1}")
    } else if f.is_nan() {
        "nan".into()
    } else if f.is_infinite() {
        if f > 0.0 { "inf" } else { "-inf" }.into()
    } else {
        format!("{f}")
    }
}

/// A validated call.
pub struct Call {
    pub method: String,
    pub args: Box<RawValue>,
    pub kwargs: Box<RawValue>,
    /// The `timeout` kwarg: `Ok(None)` when absent or null, `Err` when it is
    /// not a number of seconds.
    pub timeout: Result<Option<f64>, ()>,
}

/// One entry of a 422 answer, in pydantic's shape.
fn invalid(kind: &str, loc: &[Value], msg: &str, input: &Value) -> Value {
    serde_json::json!({"type": kind, "loc": loc, "msg": msg, "input": input})
}

fn unprocessable(errors: Vec<Value>) -> Reply {
    Reply::json(422, serde_json::to_vec(&serde_json::json!({ "detail": errors })).unwrap_or_default())
}

/// Parses a `POST /call` body: `{"method": str, "args": list = [], "kwargs": dict = {}}`.
pub fn parse_call(body: &[u8]) -> Result<Call, Reply> {
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            let pos = if e.column() > 0 { e.column() - 1 } else { 0 };
            let err = serde_json::json!({
                "type": "json_invalid", "loc": ["body", pos], "msg": "JSON decode error",
                "input": {}, "ctx": {"error": e.to_string()}
            });
            return Err(unprocessable(vec![err]));
        }
    };
    let Value::Object(obj) = &value else {
        return Err(unprocessable(vec![invalid(
            "model_attributes_type",
            &["body".into()],
            "Input should be a valid dictionary or object to extract fields from",
            &value,
        )]));
    };
    let mut errors = Vec::new();
    let method = match obj.get("method") {
        Some(Value::String(m)) => Some(m.clone()),
        Some(other) => {
            errors.push(invalid("string_type", &["body".into(), "method".into()], "Input should be a valid string", other));
            None
        }
        None => {
            errors.push(invalid("missing", &["body".into(), "method".into()], "Field required", &value));
            None
        }
    };
    let args = match obj.get("args") {
        None => Some(Value::Array(Vec::new())),
        Some(v @ Value::Array(_)) => Some(v.clone()),
        Some(other) => {
            errors.push(invalid("list_type", &["body".into(), "args".into()], "Input should be a valid list", other));
            None
        }
    };
    let kwargs = match obj.get("kwargs") {
        None => Some(Value::Object(serde_json::Map::new())),
        Some(v @ Value::Object(_)) => Some(v.clone()),
        Some(other) => {
            errors.push(invalid("dict_type", &["body".into(), "kwargs".into()], "Input should be a valid dictionary", other));
            None
        }
    };
    match (method, args, kwargs) {
        (Some(method), Some(args), Some(kwargs)) if errors.is_empty() => Ok(make_call(method, &args, &kwargs)),
        _ => Err(unprocessable(errors)),
    }
}

/// Parses a `POST /{method}` body: an object with `args`/`kwargs`, or the
/// kwargs themselves; anything else (empty, not JSON, not an object) means
/// no arguments.
pub fn restful_call(method: &str, body: &[u8]) -> Result<Call, Reply> {
    let empty_args = Value::Array(Vec::new());
    let empty_kwargs = Value::Object(serde_json::Map::new());
    let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let Value::Object(obj) = &value else { return Ok(make_call(method.to_string(), &empty_args, &empty_kwargs)) };
    if obj.contains_key("args") || obj.contains_key("kwargs") {
        let args = obj.get("args").unwrap_or(&empty_args);
        let kwargs = obj.get("kwargs").unwrap_or(&empty_kwargs);
        if !args.is_array() || !kwargs.is_object() {
            return Err(Reply::detail(500, "args must be a list and kwargs an object"));
        }
        Ok(make_call(method.to_string(), args, kwargs))
    } else {
        Ok(make_call(method.to_string(), &empty_args, &value))
    }
}

fn make_call(method: String, args: &Value, kwargs: &Value) -> Call {
    let timeout = match kwargs.get("timeout") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_f64().filter(|f| !f.is_nan()).map(Some).ok_or(()),
        Some(Value::Bool(b)) => Ok(Some(if *b { 1.0 } else { 0.0 })),
        // NaN is refused: no deadline can be made of it.
        Some(Value::String(s)) => python_float(s).filter(|f| !f.is_nan()).map(Some).ok_or(()),
        Some(_) => Err(()),
    };
    let raw = |v: &Value| serde_json::value::to_raw_value(v).unwrap_or_else(|_| RawValue::from_string("null".into()).unwrap_or_default());
    Call { method, args: raw(args), kwargs: raw(kwargs), timeout }
}

/// `float(s)` as Python parses a string (surrounding whitespace, `_`
/// between digits, inf/nan spellings).
fn python_float(s: &str) -> Option<f64> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    // One sign at most; Rust parses inf, infinity and nan with it.
    let unsigned = lower.strip_prefix(['+', '-']).unwrap_or(&lower);
    if matches!(unsigned, "inf" | "infinity" | "nan") {
        return lower.parse::<f64>().ok();
    }
    if t.contains("__") || t.starts_with('_') || t.ends_with('_') {
        return None;
    }
    t.replace('_', "").parse::<f64>().ok()
}

fn is_hop_by_hop(name: &str) -> bool {
    matches!(name, "connection" | "keep-alive" | "transfer-encoding" | "te" | "trailer" | "upgrade" | "proxy-connection")
}

/// Forwards a request to the environment's own server on the sandbox's
/// loopback and returns its answer.
async fn proxy(up: &Rc<Upstream>, req: &Request, limits: Limits) -> Result<crate::http::Response, Reply> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], up.port));
    // A server that is (re)starting gets a moment, except for /health,
    // which must answer at once.
    let patience = if req.path == "/health" { Duration::ZERO } else { Duration::from_secs(30) };
    let deadline = tokio::time::Instant::now() + patience;
    let stream = loop {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => break s,
            Err(_) if tokio::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => {
                let msg = format!("the environment's server is not answering on {addr}: {e}; see `envbox logs`");
                return Err(Reply { status: 502, error: Some(INFRA_ERROR), body: error_body(&msg, "Unavailable", &msg) });
            }
        }
    };
    let _ = stream.set_nodelay(true);
    let mut upstream = Conn::new(stream, Limits { max_body: 1 << 30, idle: Duration::from_secs(24 * 3600), ..limits });
    let headers: Vec<(&str, &[u8])> = req
        .headers
        .iter()
        .filter(|(n, _)| !is_hop_by_hop(n) && n != "content-length" && n != "expect")
        .map(|(n, v)| (n.as_str(), v.as_slice()))
        .chain(std::iter::once(("connection", &b"close"[..])))
        .collect();
    let bad_gateway = |e: &dyn std::fmt::Display| {
        let msg = format!("the environment's server failed to answer: {e}");
        Reply { status: 502, error: Some(INFRA_ERROR), body: error_body(&msg, "BadGateway", &msg) }
    };
    upstream.write_request(&req.method, &req.target, &headers, &req.body).await.map_err(|e| bad_gateway(&e))?;
    upstream.read_response(&req.method).await.map_err(|e| bad_gateway(&e))
}

/// Serves every connection accepted on `listener`.
pub async fn accept_unix(d: Rc<Dispatcher>, listener: tokio::net::UnixListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                // Over the cap, the stream is dropped: closed at once.
                if let Some(slot) = Slot::take(&d) {
                    tokio::task::spawn_local(async move { slot.0.clone().serve(stream).await });
                }
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Serves every connection accepted on a published TCP port.
pub async fn accept_tcp(d: Rc<Dispatcher>, listener: tokio::net::TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                if let Some(slot) = Slot::take(&d) {
                    let _ = stream.set_nodelay(true);
                    tokio::task::spawn_local(async move { slot.0.clone().serve(stream).await });
                }
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Whether a kind needs the python worker.
pub fn uses_worker(kind: EnvKind) -> bool {
    kind == EnvKind::Function
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(r: &Reply) -> Value {
        serde_json::from_slice(&r.body).unwrap()
    }

    #[test]
    fn call_bodies_validate_like_the_reference() {
        let c = parse_call(br#"{"method":"add","args":[1,2]}"#).ok().unwrap();
        assert_eq!((c.method.as_str(), c.args.get(), c.kwargs.get()), ("add", "[1,2]", "{}"));
        assert_eq!(c.timeout, Ok(None));

        let r = parse_call(br#"{"args":[]}"#).err().unwrap();
        assert_eq!(r.status, 422);
        let b = body(&r);
        assert_eq!(b["detail"][0]["type"], "missing");
        assert_eq!(b["detail"][0]["loc"], serde_json::json!(["body", "method"]));
        assert_eq!(b["detail"][0]["msg"], "Field required");

        let r = parse_call(b"{not json").err().unwrap();
        assert_eq!((r.status, body(&r)["detail"][0]["type"].as_str()), (422, Some("json_invalid")));

        let r = parse_call(br#"{"method":1,"args":{},"kwargs":[]}"#).err().unwrap();
        let types: Vec<_> = body(&r)["detail"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap().to_string()).collect();
        assert_eq!(types, ["string_type", "list_type", "dict_type"]);

        let r = parse_call(b"[1]").err().unwrap();
        assert_eq!(body(&r)["detail"][0]["type"], "model_attributes_type");
    }

    #[test]
    fn timeouts_parse_like_python_float() {
        let t = |kw: &str| parse_call(format!(r#"{{"method":"m","kwargs":{kw}}}"#).as_bytes()).ok().unwrap().timeout;
        assert_eq!(t(r#"{"timeout":1.5}"#), Ok(Some(1.5)));
        assert_eq!(t(r#"{"timeout":" 2 "}"#), Ok(Some(2.0)));
        assert_eq!(t(r#"{"timeout":"1_000"}"#), Ok(Some(1000.0)));
        assert_eq!(t(r#"{"timeout":null}"#), Ok(None));
        assert_eq!(t(r#"{"timeout":"soon"}"#), Err(()));
        // Found by fuzz/call_body: NaN made Duration::from_secs_f64 panic;
        // Python's float() takes one sign at most.
        for bad in [r#""nan""#, r#""NaN""#, r#""-nan""#, r#""+-inf""#, r#""--nan""#, r#""++1""#] {
            assert_eq!(t(&format!(r#"{{"timeout":{bad}}}"#)), Err(()), "{bad}");
        }
        assert_eq!(t(r#"{"timeout":"-inf"}"#), Ok(Some(f64::NEG_INFINITY)));
        assert_eq!(t(r#"{"timeout":"+Infinity"}"#), Ok(Some(f64::INFINITY)));
        assert_eq!(t(r#"{"timeout":[1]}"#), Err(()));
        assert_eq!(py_float(60.0), "60.0");
        assert_eq!(py_float(0.5), "0.5");
    }

    #[test]
    fn numbers_reach_the_environment_exactly() {
        // Found by fuzz/call_body: parsing and writing numbers back lost
        // digits (Python writes the shortest repr; big ints are exact).
        let body =
            br#"{"method":"m","args":[2.7777777677777778e29,-3000000000000000000000000000000000000000000000000000001],"kwargs":{"x":0.1}}"#;
        let c = parse_call(body).ok().unwrap();
        assert_eq!(c.args.get().replace("e+", "e"), "[2.7777777677777778e29,-3000000000000000000000000000000000000000000000000000001]");
        assert_eq!(c.kwargs.get(), r#"{"x":0.1}"#);
    }

    #[test]
    fn restful_bodies() {
        let c = restful_call("add", br#"{"a":5,"b":6}"#).ok().unwrap();
        assert_eq!((c.args.get(), c.kwargs.get()), ("[]", r#"{"a":5,"b":6}"#));
        let c = restful_call("add", br#"{"args":[5],"kwargs":{"b":1}}"#).ok().unwrap();
        assert_eq!((c.args.get(), c.kwargs.get()), ("[5]", r#"{"b":1}"#));
        for empty in [&b""[..], b"not json", b"[1,2]", b"3"] {
            let c = restful_call("f", empty).ok().unwrap();
            assert_eq!((c.args.get(), c.kwargs.get()), ("[]", "{}"));
        }
        assert_eq!(restful_call("f", br#"{"args":3}"#).err().unwrap().status, 500);
    }
}
