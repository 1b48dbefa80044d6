//! The environment flow as users drive it: `envbox init → run → call →
//! methods → logs → stop` (with --publish and --replicas), the `Pool` of
//! `load_env` (balancing, stats, replacement of a dead replica), the
//! blocking client, an HTTP (FastAPI) environment behind the dispatcher,
//! and the reference framework's own client (affinetes 0.2.0 from PyPI)
//! driving an envbox environment in URL mode.

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::TestRoot;
use envbox::client::{blocking, Balance, LoadOptions};
use serde_json::{json, Map, Value};

fn envbox(root: &TestRoot, args: &[&str]) -> Output {
    Command::new(common::agent()).env("ENVBOX_ROOT", &root.path).args(args).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn init_run_call_methods_logs_stop() {
    require_root!("init_run_call_methods_logs_stop");
    let root = TestRoot::new("flow-cli");
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("demo");
    let d = dir.to_str().unwrap();
    // init needs no sandbox; its output runs as is.
    let o = envbox(&root, &["init", d]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(envbox(&root, &["init", d]).status.code() != Some(0), "init over an existing directory must fail");
    let port = free_port().to_string();
    let o = envbox(&root, &["run", "--dir", d, "--name", "demo", "--publish", &port, "--env", "GREETING=hi"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.contains("evaluate(") && out.contains("envbox call demo evaluate --arg task_id=1"), "{out}");

    let o = envbox(&root, &["call", "demo", "evaluate", "--arg", "task_id=1"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((r["task_id"].as_i64(), r["hostname"].as_str()), (Some(1), Some("demo")));
    // --arg values are JSON when they parse, strings otherwise; --json wins.
    let o = envbox(&root, &["call", "demo", "add", "--arg", "a=2", "--arg", "b=x", "--json", r#"{"b": 3.5}"#]);
    assert_eq!(serde_json::from_slice::<Value>(&o.stdout).unwrap(), json!({"sum": 5.5}), "{}", text(&o.stderr));
    let o = envbox(&root, &["call", "demo", "add", "--arg", "a=2", "--arg", "b=x"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("TypeError") || text(&o.stderr).contains("str"), "{}", text(&o.stderr));
    let o = envbox(&root, &["call", "demo", "nope"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("no method \"nope\""), "{}", text(&o.stderr));
    for bad in [&["call", "demo", "add", "--arg", "noequals"][..], &["call", "demo", "add", "--json", "[1]"], &["call", "ghost", "add"]] {
        let o = envbox(&root, bad);
        assert!(!o.status.success() && o.stdout.is_empty() && !o.stderr.is_empty(), "{bad:?}");
    }
    let o = envbox(&root, &["methods", "demo"]);
    assert!(text(&o.stdout).contains("evaluate") && text(&o.stdout).contains("add"), "{}", text(&o.stdout));

    // The published port answers with --net none (the host bound it).
    let addr = format!("127.0.0.1:{port}");
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    std::io::Write::write_all(&mut s, b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut resp = String::new();
    std::io::Read::read_to_string(&mut s, &mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200") && resp.ends_with(r#"{"status":"ok"}"#), "{resp}");

    // A second run with the same name is refused; stop removes everything.
    assert_eq!(envbox(&root, &["run", "--dir", d, "--name", "demo"]).status.code(), Some(125));
    let o = envbox(&root, &["logs", "demo"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(envbox(&root, &["stop", "demo"]).status.success());
    assert!(std::net::TcpStream::connect(&addr).is_err(), "the published port must close with the sandbox");
    root.assert_clean();
}

#[test]
fn replicas_answer_by_group_and_a_bad_env_py_fails_run() {
    require_root!("replicas_answer_by_group_and_a_bad_env_py_fails_run");
    let root = TestRoot::new("flow-rep");
    let actor = common::fixture_env("actor");
    let o = envbox(&root, &["run", "--dir", actor.to_str().unwrap(), "--name", "grp", "--replicas", "3"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let ps = text(&envbox(&root, &["ps"]).stdout);
    for i in 0..3 {
        assert!(ps.contains(&format!("grp-{i}")), "{ps}");
    }
    // Calls by group name spread over the replicas: each has its own
    // Actor counter, so no counter reaches the number of calls.
    let mut max = 0;
    for _ in 0..30 {
        let o = envbox(&root, &["call", "grp", "counter"]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        max = max.max(serde_json::from_slice::<i64>(&o.stdout).unwrap());
    }
    assert!(max < 30, "every call went to the same replica");
    let o = envbox(&root, &["stop", "grp"]);
    assert_eq!(text(&o.stdout).lines().count(), 3);

    // env.py that does not import: run says why and leaves nothing.
    let bad = common::fixture_env("loaderror");
    let o = envbox(&root, &["run", "--dir", bad.to_str().unwrap(), "--name", "bad"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(text(&o.stderr).contains("cannot load this env"), "{}", text(&o.stderr));
    let o = envbox(&root, &["run", "--dir", "/nonexistent/env", "--name", "bad"]);
    assert!(text(&o.stderr).contains("env.py"), "{}", text(&o.stderr));
    root.assert_clean();
}

#[test]
fn a_pool_balances_reports_and_replaces_dead_replicas() {
    require_root!("a_pool_balances_reports_and_replaces_dead_replicas");
    let root = TestRoot::new("flow-pool");
    let mut opts = LoadOptions::new(common::fixture_env("actor"));
    opts.root = root.path.clone();
    opts.replicas = 3;
    opts.balance = Balance::RoundRobin;
    opts.name = "pool".into();
    opts.health_interval = Duration::from_millis(200);
    let pool = blocking::Pool::load(opts).unwrap();
    for i in 0..30 {
        assert_eq!(pool.call("add", vec![json!(i), json!(1)], Map::new()).unwrap(), json!({"sum": i + 1}));
    }
    let stats = pool.stats().unwrap();
    assert_eq!((stats.total_instances, stats.healthy_instances, stats.total_requests), (3, 3, 30));
    assert!(stats.instances.iter().all(|i| i.requests == 10), "round robin spreads evenly: {stats:?}");

    // Kill one replica's PID 1: calls keep succeeding, and the health loop
    // brings the pool back to three healthy replicas.
    let victim = envbox::Sandbox::open(&root.path, "pool-1").unwrap();
    let pid = victim.pid();
    drop(victim);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    let mut ok = 0;
    for i in 0..30 {
        if pool.call("add", vec![json!(i), json!(1)], Map::new()).is_ok() {
            ok += 1;
        }
    }
    assert!(ok >= 20, "only {ok}/30 calls succeeded with one replica down");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = pool.stats().unwrap();
        let fresh = envbox::Sandbox::open(&root.path, "pool-1").map(|s| s.pid() != pid).unwrap_or(false);
        if s.healthy_instances == 3 && fresh {
            break;
        }
        assert!(Instant::now() < deadline, "the dead replica was not replaced: {s:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(pool.call("counter", vec![], Map::new()).unwrap().as_i64().map(|n| n >= 1), Some(true));
    pool.cleanup();
    root.assert_clean();
}

#[test]
fn an_http_environment_is_proxied() {
    require_root!("an_http_environment_is_proxied");
    let root = TestRoot::new("flow-http");
    let venv = common::test_venv();
    let mut cfg = common::env_config(&root, envbox::Image::Host, "fastapi");
    let venv_s = venv.display().to_string();
    cfg.volumes.push(envbox::Volume { host: venv.clone(), container: venv_s.clone(), read_only: true });
    let serve = cfg.serve.as_mut().unwrap();
    serve.kind = envbox::EnvKind::Http;
    serve.python = Some(format!("{venv_s}/bin/python"));
    let sb = envbox::Sandbox::create(&cfg, "http").unwrap();
    let env = envbox::Env::unix(sb.env_socket().unwrap());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        env.wait_ready(Duration::from_secs(60)).await.unwrap();
        // http environments take the JSON body as kwargs: POST /{method}.
        let r = env.call("add", vec![], Map::new()).await;
        assert!(r.is_err(), "the app has no /call: {r:?}");
    });
    let s = sb.env_socket().unwrap();
    let mut c = std::os::unix::net::UnixStream::connect(&s).unwrap();
    let body = r#"{"task_id": 3}"#;
    let req = format!(
        "POST /evaluate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    std::io::Write::write_all(&mut c, req.as_bytes()).unwrap();
    let mut resp = String::new();
    std::io::Read::read_to_string(&mut c, &mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains(r#""task_id":3"#), "{resp}");
    // The server is restarted after a reset, on the same socket.
    sb.reset().unwrap();
    rt.block_on(env.wait_ready(Duration::from_secs(60))).unwrap();
    drop(sb);
    root.assert_clean();
}

#[test]
fn the_reference_client_drives_an_envbox_environment() {
    require_root!("the_reference_client_drives_an_envbox_environment");
    let root = TestRoot::new("flow-compat");
    let venv = common::test_venv();
    let port = free_port();
    let actor = common::fixture_env("actor");
    let o = envbox(&root, &["run", "--dir", actor.to_str().unwrap(), "--name", "compat", "--publish", &port.to_string()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let script = r#"
import asyncio, json, sys
import affinetes

async def main(url):
    env = affinetes.load_env(mode="url", base_url=url)
    out = {}
    out["add"] = await env.add(a=2, b=3)
    out["positional"] = await env.add(4, 5)
    methods = await env.list_methods(print_info=False)
    out["methods"] = sorted({m["name"] if isinstance(m, dict) else str(m) for m in (methods.get("methods", methods) if isinstance(methods, dict) else methods)})
    try:
        await env.boom()
        out["boom"] = "no error"
    except Exception as e:
        out["boom"] = str(e)
    try:
        await env.aslow(seconds=30, timeout=-9.8)
        out["timeout"] = "no error"
    except Exception as e:
        out["timeout"] = str(e)
    try:
        await env.slow(seconds=30, _timeout=0.5)
        out["client_timeout"] = "no error"
    except BaseException as e:
        out["client_timeout"] = type(e).__name__ + ": " + str(e)
    print(json.dumps(out))

asyncio.run(main(sys.argv[1]))
"#;
    let o = Command::new(venv.join("bin/python")).arg("-c").arg(script).arg(format!("http://127.0.0.1:{port}")).output().unwrap();
    assert!(o.status.success(), "{}\n{}", text(&o.stdout), text(&o.stderr));
    let last = text(&o.stdout).lines().last().unwrap_or_default().to_string();
    let out: Value = serde_json::from_str(&last).unwrap_or_else(|e| panic!("{e}: {}", text(&o.stdout)));
    // The same results as `envbox call`.
    let cli: Value = serde_json::from_slice(&envbox(&root, &["call", "compat", "add", "--arg", "a=2", "--arg", "b=3"]).stdout).unwrap();
    assert_eq!(out["add"], cli);
    assert_eq!(out["positional"], json!({"sum": 9}));
    let methods: Vec<String> = serde_json::from_value(out["methods"].clone()).unwrap();
    assert!(methods.contains(&"add".to_string()) && methods.contains(&"boom".to_string()), "{methods:?}");
    let boom = out["boom"].as_str().unwrap();
    assert!(boom.contains("HTTP 500") && boom.contains("boom happened"), "{boom}");
    let timeout = out["timeout"].as_str().unwrap();
    assert!(timeout.contains("exceeded timeout of -9.8s"), "{timeout}");
    assert!(out["client_timeout"].as_str().unwrap().contains("timed out"), "{}", out["client_timeout"]);
    assert!(envbox(&root, &["stop", "compat"]).status.success());
    root.assert_clean();
}
