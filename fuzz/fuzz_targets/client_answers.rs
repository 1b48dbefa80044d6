//! The `Env` client: `envbox::client::Endpoint::parse` on arbitrary URLs,
//! and how `Env::call` turns an arbitrary answer to `POST /call` into a
//! result or a `CallError`.
//!
//! The answer classification (`interpret` and `error_from` in
//! src/client/mod.rs) is private, so it is reached the way a user reaches
//! it: a real `Env::call` over a unix socket to an in-process fake server
//! that reads the request and sends the fuzzed answer, then closes.
//!
//! Invariants (besides no panic):
//! - `Endpoint::parse`: `unix:P` / `unix://P` give `Unix(P)`; an accepted
//!   `http://` URL has a non-empty host without `/`, and the endpoint
//!   prints (`Display`) to a URL that parses back to it;
//! - `Env::call` with a well-formed answer of status S and body B:
//!   `Ok` only for S = 200 with a JSON body, and then the value is B itself
//!   (no "status" field) or B's "result" (status "success");
//!   200 with a body that is not JSON is a `Transport` error;
//!   400/405/413/422/431 are `Rejected { status: S }`, 404 is `Rejected`
//!   or `MethodNotFound { method }` with the called method, 500 is `Died`
//!   with `x-envbox-error: infrastructure` and `Raised` without, 504 is a
//!   `Timeout`, any other status is `Unavailable`;
//!   `is_infrastructure()` is false exactly for Raised, MethodNotFound and
//!   Rejected; every error prints;
//! - an arbitrary byte stream as the answer: no panic, no hang.
#![no_main]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use arbitrary::Arbitrary;
use envbox::client::{CallError, Endpoint, Env};
use envbox::http::{response_head, Conn, Limits};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Map, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;

const STATUSES: [u16; 18] = [200, 200, 200, 201, 204, 301, 304, 400, 404, 405, 413, 422, 431, 500, 502, 503, 504, 999];

#[derive(Arbitrary, Debug)]
enum Body {
    Bytes(Vec<u8>),
    Json(String),
    Detail(String),
    Envelope { status: String, result: String, error: String },
    Error { detail: String, kind: String, message: String, traceback: Option<String> },
}

#[derive(Arbitrary, Debug)]
enum Answer {
    Shaped { status: u8, infra: bool, body: Body },
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    url: String,
    answer: Answer,
}

struct Server {
    rt: tokio::runtime::Runtime,
    listener: UnixListener,
    path: PathBuf,
}

thread_local! {
    static SERVER: Server = {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let path = std::env::temp_dir().join(format!("envbox-fuzz-client-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        remove_stale();
        let listener = {
            let _g = rt.enter();
            UnixListener::bind(&path).expect("bind the fake server's socket")
        };
        Server { rt, listener, path }
    };
}

/// Removes the sockets of fuzzer processes that are gone.
fn remove_stale() {
    let Ok(rd) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("envbox-fuzz-client-")?.strip_suffix(".sock")) else { continue };
        if pid.parse::<u32>().is_ok() && !std::path::Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

fn body_bytes(b: &Body) -> Vec<u8> {
    let text = |s: &str| serde_json::from_str::<Value>(s).unwrap_or_else(|_| Value::String(s.to_string()));
    match b {
        Body::Bytes(b) => b.clone(),
        Body::Json(s) => s.as_bytes().to_vec(),
        Body::Detail(d) => serde_json::to_vec(&json!({ "detail": d })).unwrap(),
        Body::Envelope { status, result, error } => {
            serde_json::to_vec(&json!({"status": status, "result": text(result), "error": text(error)})).unwrap()
        }
        Body::Error { detail, kind, message, traceback } => {
            let mut e = json!({"type": kind, "message": message});
            if let Some(tb) = traceback {
                e["traceback"] = Value::String(tb.clone());
            }
            serde_json::to_vec(&json!({"detail": detail, "status": "error", "error": e})).unwrap()
        }
    }
}

fn call(answer: &[u8]) -> Result<Value, CallError> {
    SERVER.with(|s| {
        s.rt.block_on(async {
            let server = async {
                let (stream, _) = s.listener.accept().await.expect("accept");
                let limits = Limits { max_body: 1 << 20, idle: Duration::from_secs(10), read: Duration::from_secs(10) };
                let mut conn = Conn::new(stream, limits);
                let req = conn.read_request().await.expect("the client's request parses");
                assert_eq!((req.method.as_str(), req.path.as_str()), ("POST", "/call"));
                let _ = conn.stream.write_all(answer).await;
                let _ = conn.stream.shutdown().await;
            };
            let env = Env::unix(&s.path);
            let (_, r) = tokio::join!(server, env.call("m", vec![json!(1)], Map::new()));
            r
        })
    })
}

fn check_endpoint(url: &str) {
    let Ok(ep) = Endpoint::parse(url) else { return };
    match &ep {
        Endpoint::Unix(p) => {
            let rest = url.strip_prefix("unix://").or_else(|| url.strip_prefix("unix:")).expect("unix endpoint from a unix: URL");
            assert_eq!(p.to_str(), Some(rest));
        }
        Endpoint::Tcp { host, .. } => {
            assert!(url.starts_with("http://"), "tcp endpoint from {url:?}");
            assert!(!host.contains('/'), "host {host:?} from {url:?}");
            if !common::skip_known() {
                assert!(!host.is_empty(), "{url:?} parsed to an empty host");
            }
        }
    }
    let printed = ep.to_string();
    if !common::skip_known() {
        assert_eq!(Endpoint::parse(&printed).ok().as_ref(), Some(&ep), "{url:?} -> {ep:?} prints as {printed:?}, which does not parse back");
    }
}

fn check_answer(status: u16, infra: bool, body: &[u8], r: &Result<Value, CallError>) {
    let data: Option<Value> = serde_json::from_slice(body).ok();
    if let Err(e) = r {
        let _ = e.to_string();
        let env_side = matches!(e, CallError::Raised { .. } | CallError::MethodNotFound { .. } | CallError::Rejected { .. });
        assert_eq!(e.is_infrastructure(), !env_side, "{e:?}");
    }
    match status {
        200 => match (&data, r) {
            (None, Err(CallError::Transport { .. })) => {}
            (None, other) => panic!("200 with a non-JSON body gave {other:?}"),
            (Some(d), Ok(v)) => match d.get("status") {
                None => assert_eq!(v, d),
                Some(Value::String(s)) if s == "success" => assert_eq!(Some(v), d.get("result").or(Some(&Value::Null))),
                Some(st) => panic!("status {st} answered Ok({v})"),
            },
            (Some(d), Err(e)) => {
                let st = d.get("status");
                assert!(st.is_some() && st != Some(&json!("success")), "{d} gave {e:?}");
                assert!(matches!(e, CallError::Timeout { .. } | CallError::Rejected { status: 200, .. }), "{d} gave {e:?}");
            }
        },
        _ => {
            let e = r.as_ref().expect_err("a non-200 answer gave Ok");
            let ok = match status {
                400 | 405 | 413 | 422 | 431 => matches!(e, CallError::Rejected { status: s, .. } if *s == status),
                404 => matches!(e, CallError::Rejected { status: 404, .. }) || matches!(e, CallError::MethodNotFound { method } if method == "m"),
                500 if infra => matches!(e, CallError::Died { .. }),
                500 => matches!(e, CallError::Raised { .. }),
                504 => matches!(e, CallError::Timeout { .. }),
                _ => matches!(e, CallError::Unavailable { .. }),
            };
            assert!(ok, "status {status} (infrastructure: {infra}) gave {e:?}");
        }
    }
}

fuzz_target!(|input: Input| {
    check_endpoint(&input.url);
    match &input.answer {
        Answer::Shaped { status, infra, body } => {
            let status = STATUSES[usize::from(*status) % STATUSES.len()];
            let body = body_bytes(body);
            let mut headers: Vec<(&str, &[u8])> = vec![("content-type", b"application/json")];
            if *infra {
                headers.push(("x-envbox-error", b"infrastructure"));
            }
            let mut answer = response_head(status, &headers, body.len(), true);
            if status != 204 && status != 304 {
                answer.extend_from_slice(&body);
            }
            let r = call(&answer);
            // 204 and 304 carry no body: the client sees an empty one.
            let seen: &[u8] = if status == 204 || status == 304 { b"" } else { &body };
            check_answer(status, *infra, seen, &r);
        }
        Answer::Raw(bytes) => {
            if let Err(e) = call(bytes) {
                let _ = e.to_string();
            }
        }
    }
});
