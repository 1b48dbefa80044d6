//! Environments served in sandboxes: the /health /methods /call API of the
//! dispatcher (shapes of the reference framework), the python worker's
//! behaviour (sync, async, concurrency, errors, crashes, OOM, reset), bad
//! input over raw HTTP, and the `Env` client.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use common::{env_config, TestRoot};
use envbox::client::{CallError, CallOptions};
use envbox::{Env, Sandbox};
use serde_json::{json, Map, Value};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn kw(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

/// One raw HTTP exchange on a fresh connection: (status, body).
fn raw(socket: &Path, request: &[u8]) -> (u16, Value) {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn post(path: &str, body: &str) -> Vec<u8> {
    format!("POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
}

fn start(root: &TestRoot, fixture: &str, name: &str, edit: impl FnOnce(&mut envbox::SandboxConfig)) -> (Sandbox, Env) {
    let mut cfg = env_config(root, common::debian(), fixture);
    edit(&mut cfg);
    let sb = Sandbox::create(&cfg, name).unwrap();
    let env = Env::unix(sb.env_socket().unwrap());
    (sb, env)
}

#[test]
fn actor_methods_results_and_errors_match_the_reference() {
    require_root!("actor_methods_results_and_errors_match_the_reference");
    let root = TestRoot::new("env-actor");
    let (sb, env) = start(&root, "actor", "actor", |_| {});
    let rt = rt();
    rt.block_on(async {
        env.wait_ready(Duration::from_secs(60)).await.unwrap();
        // /methods: Actor methods first (with self), then module functions,
        // imported ones included, classes excluded.
        let methods = env.list_methods().await.unwrap();
        let names: Vec<(&str, &str)> = methods.iter().map(|m| (m.source.as_str(), m.name.as_str())).collect();
        let first_module = names.iter().position(|(s, _)| *s == "module").unwrap();
        assert!(names[..first_module].iter().all(|(s, _)| *s == "Actor"), "{names:?}");
        assert!(names.contains(&("Actor", "add")) && names.contains(&("module", "join")) && names.contains(&("module", "helper_fn")));
        assert!(!names.iter().any(|(_, n)| *n == "Actor" || n.starts_with('_')), "{names:?}");
        let add = methods.iter().find(|m| m.name == "add").unwrap();
        assert_eq!(add.signature, "(self, a: float, b: float = 1) -> dict");

        assert_eq!(env.call("add", vec![json!(1), json!(2)], Map::new()).await.unwrap(), json!({"sum": 3}));
        assert_eq!(env.call("add", vec![], kw(json!({"a": 1, "b": 2}))).await.unwrap(), json!({"sum": 3}));
        assert_eq!(env.call("aadd", vec![json!(2), json!(5)], Map::new()).await.unwrap(), json!({"sum": 7}));
        assert_eq!(env.call("noop", vec![], Map::new()).await.unwrap(), Value::Null);
        // No underscore filter on /call, as in the reference.
        assert_eq!(env.call("_hidden", vec![], Map::new()).await.unwrap(), json!("hidden"));
        // A dataclass with a tuple comes back as an object with a list.
        let dc = env.call("dc", vec![], Map::new()).await.unwrap();
        assert!(dc.as_object().unwrap().values().any(Value::is_array), "{dc}");
        // The Actor persists between calls.
        let a = env.call("counter", vec![], Map::new()).await.unwrap().as_i64().unwrap();
        let b = env.call("counter", vec![], Map::new()).await.unwrap().as_i64().unwrap();
        assert_eq!(b, a + 1);

        match env.call("boom", vec![], Map::new()).await.unwrap_err() {
            CallError::Raised { kind, message, traceback } => {
                assert_eq!((kind.as_str(), message.as_str()), ("ValueError", "boom happened"));
                assert!(traceback.contains("boom"), "{traceback}");
            }
            other => panic!("{other:?}"),
        }
        // A raised TimeoutError is the method's error, not a timeout.
        let e = env.call("raise_timeout", vec![], Map::new()).await.unwrap_err();
        assert!(matches!(&e, CallError::Raised { kind, .. } if kind == "TimeoutError"), "{e:?}");
        assert!(!e.is_infrastructure());
        // Wrong arguments are the caller's error, reported like a raise.
        let e = env.call("add", vec![], kw(json!({"a": 1, "zz": 2}))).await.unwrap_err();
        assert!(matches!(&e, CallError::Raised { message, .. } if message.contains("zz")), "{e:?}");
        let e = env.call("nope", vec![], Map::new()).await.unwrap_err();
        assert!(matches!(&e, CallError::MethodNotFound { method } if method == "nope"), "{e:?}");
        for bad in ["nan", "unserializable"] {
            match env.call(bad, vec![], Map::new()).await.unwrap_err() {
                CallError::Raised { message, .. } => assert!(message.contains("JSON"), "{bad}: {message}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        // A large result arrives intact.
        let big = env.call("big", vec![], kw(json!({"mb": 20}))).await.unwrap();
        assert_eq!(big.as_str().unwrap().len(), 20 << 20);
        // The server-side timeout (timeout + 10 s grace, as the reference):
        // a negative timeout makes the deadline short enough for a test.
        let t0 = std::time::Instant::now();
        let e = env.call("aslow", vec![], kw(json!({"seconds": 30, "timeout": -9.7}))).await.unwrap_err();
        assert!(matches!(&e, CallError::Timeout { detail } if detail.contains("exceeded timeout of -9.7s")), "{e:?}");
        assert!(t0.elapsed() < Duration::from_secs(20));
        let e = env.call("add", vec![json!(1)], kw(json!({"timeout": "soon"}))).await.unwrap_err();
        assert!(matches!(&e, CallError::Rejected { detail, .. } if detail.contains("Invalid timeout")), "{e:?}");
        // The client-side deadline.
        let e = env.call_with("slow", vec![], kw(json!({"seconds": 30})), CallOptions { timeout: Some(Duration::from_millis(200)) }).await;
        assert!(matches!(e, Err(CallError::Timeout { .. })), "{e:?}");
        // The environment keeps serving after all of that.
        assert_eq!(env.call("add", vec![json!(40), json!(2)], Map::new()).await.unwrap(), json!({"sum": 42}));
    });
    sb.delete_and_wait().unwrap();
    root.assert_clean();
}

#[test]
fn calls_run_concurrently_sync_and_async() {
    require_root!("calls_run_concurrently_sync_and_async");
    let root = TestRoot::new("env-conc");
    let (sb, env) = start(&root, "actor", "conc", |_| {});
    let env = std::sync::Arc::new(env);
    rt().block_on(async {
        env.wait_ready(Duration::from_secs(60)).await.unwrap();
        // Each call waits at a barrier for all 8: they only return if they
        // all run at the same time.
        for method in ["rendezvous", "arendezvous"] {
            let calls: Vec<_> = (0..8)
                .map(|_| {
                    let env = env.clone();
                    tokio::spawn(async move { env.call(method, vec![], kw(json!({"n": 8}))).await })
                })
                .collect();
            for c in calls {
                assert_eq!(c.await.unwrap().unwrap(), json!(8), "{method}");
            }
        }
        // Hundreds of concurrent clients, each on its own connection.
        let calls: Vec<_> = (0..300)
            .map(|i| {
                let socket = env.endpoint().clone();
                tokio::spawn(async move { Env::new(socket).call("add", vec![json!(i), json!(1)], Map::new()).await })
            })
            .collect();
        for (i, c) in calls.into_iter().enumerate() {
            assert_eq!(c.await.unwrap().unwrap(), json!({"sum": i + 1}));
        }
    });
    drop(sb);
    root.assert_clean();
}

#[test]
fn a_dead_worker_fails_its_calls_and_is_replaced() {
    require_root!("a_dead_worker_fails_its_calls_and_is_replaced");
    let root = TestRoot::new("env-crash");
    let (sb, env) = start(&root, "actor", "crash", |c| c.limits.memory_bytes = Some(256 << 20));
    rt().block_on(async {
        env.wait_ready(Duration::from_secs(60)).await.unwrap();
        env.call("counter", vec![], Map::new()).await.unwrap();
        env.call("counter", vec![], Map::new()).await.unwrap();
        let e = env.call("crash", vec![], Map::new()).await.unwrap_err();
        assert!(matches!(&e, CallError::Died { message, oom: false } if message.contains("environment process died")), "{e:?}");
        assert!(e.is_infrastructure());
        // A fresh worker, so a fresh Actor.
        assert_eq!(env.call("counter", vec![], Map::new()).await.unwrap(), json!(1));
        let e = env.call("hog", vec![], kw(json!({"mb": 2048}))).await.unwrap_err();
        assert!(matches!(&e, CallError::Died { message, oom: true } if message.contains("out of memory")), "{e:?}");
        assert_eq!(env.call("add", vec![json!(1), json!(1)], Map::new()).await.unwrap(), json!({"sum": 2}));
    });
    // The shell is unaffected by all of that.
    assert_eq!(sb.run("echo ok").unwrap().stdout, b"ok\n");
    drop(sb);
    root.assert_clean();
}

#[test]
fn reset_restarts_the_worker_on_the_same_endpoint() {
    require_root!("reset_restarts_the_worker_on_the_same_endpoint");
    let root = TestRoot::new("env-reset");
    let (sb, env) = start(&root, "actor", "reset", |_| {});
    let socket = sb.env_socket().unwrap();
    rt().block_on(async {
        env.wait_ready(Duration::from_secs(60)).await.unwrap();
        env.call("counter", vec![], Map::new()).await.unwrap();
        assert_eq!(env.call("counter", vec![], Map::new()).await.unwrap(), json!(2));
    });
    // A call in flight during the reset fails (it does not hang).
    let pending = {
        let socket = socket.clone();
        std::thread::spawn(move || raw(&socket, &post("/call", r#"{"method":"slow","kwargs":{"seconds":30}}"#)))
    };
    std::thread::sleep(Duration::from_millis(300));
    sb.run("touch /tmp/marker").unwrap();
    sb.reset().unwrap();
    let (status, body) = pending.join().unwrap();
    assert_eq!(status, 500, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("reset"), "{body}");
    assert_eq!(sb.env_socket().unwrap(), socket);
    rt().block_on(async {
        // The first call after a reset waits for the fresh worker.
        assert_eq!(env.call("counter", vec![], Map::new()).await.unwrap(), json!(1));
    });
    assert_eq!(sb.run("test -e /tmp/marker; echo $?").unwrap().stdout, b"1\n");
    drop(sb);
    root.assert_clean();
}

#[test]
fn bad_http_input_gets_the_reference_shapes_and_harms_nothing() {
    require_root!("bad_http_input_gets_the_reference_shapes_and_harms_nothing");
    let root = TestRoot::new("env-bad");
    let (sb, env) = start(&root, "actor", "bad", |c| c.serve.as_mut().unwrap().max_body = 64 << 10);
    let s = sb.env_socket().unwrap();
    rt().block_on(env.wait_ready(Duration::from_secs(60))).unwrap();

    let (st, b) = raw(&s, &post("/call", "{not json"));
    assert_eq!((st, b["detail"][0]["type"].as_str()), (422, Some("json_invalid")));
    let (st, b) = raw(&s, &post("/call", r#"{"args":[]}"#));
    assert_eq!(st, 422);
    assert_eq!(b["detail"][0], json!({"type":"missing","loc":["body","method"],"msg":"Field required","input":{"args":[]}}));
    let (st, b) = raw(&s, &post("/call", r#"{"method":"nope"}"#));
    assert_eq!((st, b["detail"].as_str()), (404, Some("Method not found: nope")));
    let (st, b) = raw(&s, b"GET /call HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert_eq!((st, b["detail"].as_str()), (405, Some("Method Not Allowed")));
    let (st, b) = raw(&s, &post("/call", r#"{"method":"boom"}"#));
    assert_eq!(st, 500);
    assert!(b["detail"].as_str().unwrap().starts_with("boom happened\n"), "{b}");
    let (st, b) = raw(&s, &post("/add", r#"{"a":5,"b":6}"#));
    assert_eq!((st, &b), (200, &json!({"status":"success","result":{"sum":11},"error":null})));
    let (st, b) = raw(&s, &post("/add", r#"{"args":[5],"kwargs":{"b":1}}"#));
    assert_eq!((st, &b["result"]), (200, &json!({"sum":6})));
    let (st, _) = raw(&s, &post("/not_a_method", "{}"));
    assert_eq!(st, 404);
    let big = format!(r#"{{"method":"add","args":["{}"]}}"#, "a".repeat(100 << 10));
    let (st, b) = raw(&s, &post("/call", &big));
    assert_eq!(st, 413, "{b}");
    let (st, _) = raw(&s, b"POST /call HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert_eq!(st, 400);
    let (st, _) = raw(&s, b"\x16\x03\x01 garbage\r\n\r\n");
    assert_eq!(st, 400);

    // A client that sends half a request and stalls, and one that leaves in
    // the middle of a call, harm nobody.
    let mut stalled = UnixStream::connect(&s).unwrap();
    stalled.write_all(b"POST /call HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"method\":").unwrap();
    let mut leaver = UnixStream::connect(&s).unwrap();
    leaver.write_all(&post("/call", r#"{"method":"aslow","kwargs":{"seconds":30}}"#)).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    drop(leaver);
    let (st, b) = raw(&s, &post("/call", r#"{"method":"add","args":[2,3]}"#));
    assert_eq!((st, &b["result"]), (200, &json!({"sum":5})));
    // Keep-alive: several requests on one connection, pipelined.
    let mut ka = UnixStream::connect(&s).unwrap();
    let one = r#"{"method":"add","args":[1,1]}"#;
    let req = format!("POST /call HTTP/1.1\r\nContent-Length: {}\r\n\r\n{one}", one.len());
    ka.write_all(format!("{req}{req}GET /health HTTP/1.1\r\nConnection: close\r\n\r\n").as_bytes()).unwrap();
    let mut out = String::new();
    ka.read_to_string(&mut out).unwrap();
    assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 3, "{out}");
    drop(stalled);
    drop(sb);
    root.assert_clean();
}

#[test]
fn module_functions_openenv_episodes_and_actor_init_failures() {
    require_root!("module_functions_openenv_episodes_and_actor_init_failures");
    let root = TestRoot::new("env-fn");
    let rt = rt();
    let (fsb, fenv) = start(&root, "functions", "fns", |_| {});
    let (osb, oenv) = start(&root, "openenv", "open", |_| {});
    let (isb, ienv) = start(&root, "actor", "init", |c| c.env.push(("FAIL_INIT".into(), "1".into())));
    rt.block_on(async {
        fenv.wait_ready(Duration::from_secs(60)).await.unwrap();
        let r = fenv.call("evaluate", vec![], kw(json!({"task_id": 7}))).await.unwrap();
        assert_eq!(r["task_id"], 7);
        assert_eq!(r, fenv.call("evaluate", vec![json!(7)], Map::new()).await.unwrap(), "deterministic per task");
        let r = fenv.call("modfunc", vec![json!(1), json!(2), json!(3)], kw(json!({"z": 9}))).await.unwrap();
        assert_eq!(r, json!([1, [2, 3], 2, {"z": 9}]));
        assert_eq!(fenv.call("aecho", vec![json!("hi")], Map::new()).await.unwrap(), json!("hi"));

        // OpenEnv episodes through plain calls: two at once, by episode_id.
        oenv.wait_ready(Duration::from_secs(60)).await.unwrap();
        let a = oenv.call("reset", vec![], kw(json!({"task_id": 1}))).await.unwrap();
        let b = oenv.call("reset", vec![], kw(json!({"task_id": 2}))).await.unwrap();
        let (ea, eb) = (a["episode_id"].clone(), b["episode_id"].clone());
        assert!(ea.is_string() && ea != eb, "{a} {b}");
        assert_eq!(a["done"], false);
        let st = oenv.call("state", vec![], kw(json!({"episode_id": ea}))).await.unwrap();
        assert_eq!(st["episode_id"], ea);
        let mut done = false;
        for guess in 0..=100 {
            let r = oenv.call("step", vec![], kw(json!({"action": guess.to_string(), "episode_id": ea}))).await.unwrap();
            if r["done"] == true {
                assert_eq!(r["reward"], 1.0);
                done = true;
                break;
            }
        }
        assert!(done, "the guessing game never ended");
        oenv.call("stop", vec![], kw(json!({"episode_id": eb}))).await.unwrap();

        // Actor() fails: every call says so, /health stays up (lazy Actor).
        ienv.wait_ready(Duration::from_secs(60)).await.unwrap();
        for _ in 0..2 {
            match ienv.call("add", vec![json!(1)], Map::new()).await.unwrap_err() {
                CallError::Raised { message, .. } => assert!(message.contains("init failed on purpose"), "{message}"),
                other => panic!("{other:?}"),
            }
        }
        let (st, b) = raw(&isb.env_socket().unwrap(), &post("/call", r#"{"method":"add","args":[1]}"#));
        assert_eq!(st, 500);
        assert!(b["detail"].as_str().unwrap().starts_with("Failed to initialize Actor: init failed on purpose"), "{b}");
    });
    drop((fsb, osb, isb));
    root.assert_clean();
}

#[test]
fn an_env_that_does_not_load_reports_why() {
    require_root!("an_env_that_does_not_load_reports_why");
    let root = TestRoot::new("env-load");
    let rt = rt();
    for (fixture, needle) in [("loaderror", "cannot load this env"), ("syntaxerror", "SyntaxError")] {
        let (sb, env) = start(&root, fixture, fixture, |_| {});
        let e = rt.block_on(env.wait_ready(Duration::from_secs(60))).unwrap_err();
        assert!(matches!(&e, CallError::Unavailable { detail } if detail.contains(needle)), "{fixture}: {e:?}");
        let e = rt.block_on(env.call("x", vec![], Map::new())).unwrap_err();
        assert!(e.to_string().contains(needle), "{fixture}: {e}");
        drop(sb);
    }
    // No python3 in the image: a clear error, not a hang.
    let mut cfg = env_config(&root, common::busybox(), "functions");
    cfg.serve.as_mut().unwrap().python = Some("/usr/bin/python3".into());
    let sb = Sandbox::create(&cfg, "nopython").unwrap();
    let e = rt.block_on(Env::unix(sb.env_socket().unwrap()).wait_ready(Duration::from_secs(30))).unwrap_err();
    assert!(e.to_string().contains("python"), "{e}");
    drop(sb);
    root.assert_clean();
}
