//! The `envbox` command: the flow of the README, JSON output, exit codes,
//! and one clear line on stderr for every bad input.

mod common;

use std::process::{Command, Output};

use common::TestRoot;

fn envbox(root: &TestRoot, args: &[&str]) -> Output {
    Command::new(common::agent()).env("ENVBOX_ROOT", &root.path).args(args).output().unwrap()
}

fn image_arg() -> String {
    common::debian_dir()
}

#[test]
fn create_exec_cp_reset_ps_rm() {
    require_root!("create_exec_cp_reset_ps_rm");
    let root = TestRoot::new("cli");
    let img = image_arg();
    let o = envbox(&root, &["create", "demo", "--image", &img, "--memory", "256m", "--pids", "100", "--env", "A=1"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.stdout, b"demo\n");
    let o = envbox(&root, &["exec", "demo", "cd /tmp; echo $A; echo err >&2; (exit 5)"]);
    assert_eq!((o.status.code(), o.stdout.as_slice(), o.stderr.as_slice()), (Some(5), &b"1\n"[..], &b"err\n"[..]));
    // A later process reaches the same persistent shell.
    assert_eq!(envbox(&root, &["exec", "demo", "pwd"]).stdout, b"/tmp\n");
    let o = envbox(&root, &["exec", "demo", "--timeout", "0.3", "sleep 10"]);
    assert_eq!(o.status.code(), Some(124));
    assert!(String::from_utf8_lossy(&o.stderr).contains("timed out"));
    let o = envbox(&root, &["exec", "demo", "python3 -c 'bytearray(1 << 30)'"]);
    assert_eq!(o.status.code(), Some(137));
    assert!(String::from_utf8_lossy(&o.stderr).contains("out of memory"), "{}", String::from_utf8_lossy(&o.stderr));
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("in"), "payload").unwrap();
    assert!(envbox(&root, &["cp", &host.path().join("in").display().to_string(), "demo:/root/in"]).status.success());
    assert_eq!(envbox(&root, &["exec", "demo", "cat /root/in"]).stdout, b"payload");
    assert!(envbox(&root, &["cp", "demo:/root/in", &host.path().join("out").display().to_string()]).status.success());
    assert_eq!(std::fs::read(host.path().join("out")).unwrap(), b"payload");
    let o = envbox(&root, &["ps", "--json"]);
    let ps: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let row = &ps.as_array().unwrap()[0];
    assert_eq!(row["name"], "demo");
    assert_eq!(row["state"], "running");
    assert!(row["pid"].as_i64().unwrap() > 1);
    assert_eq!(row["image"], img.as_str());
    assert!(row["created"].as_str().unwrap().ends_with('Z'));
    assert!(envbox(&root, &["reset", "demo"]).status.success());
    assert_eq!(envbox(&root, &["exec", "demo", "ls /root; pwd"]).stdout, b"/\n");
    assert!(envbox(&root, &["rm", "demo"]).status.success());
    assert_eq!(envbox(&root, &["ps", "--json"]).stdout, b"[]\n");
    root.assert_clean();
}

#[test]
fn bad_input_is_one_clear_line_and_a_non_zero_exit() {
    require_root!("bad_input_is_one_clear_line_and_a_non_zero_exit");
    let root = TestRoot::new("clibad");
    let img = image_arg();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["exec", "nope", "true"], "no sandbox named \"nope\""),
        (vec!["reset", "nope"], "no sandbox named"),
        (vec!["rm", "nope"], "no sandbox named"),
        (vec!["create", "x", "--image", "/nonexistent/dir"], "does not exist"),
        (vec!["create", "x", "--memory", "12q"], "invalid size"),
        (vec!["create", "x", "--cpus", "zero"], "invalid cpu count"),
        (vec!["create", "x", "--pids", "0"], "invalid pids limit"),
        (vec!["create", "x", "--net", "bridge"], "invalid network mode"),
        (vec!["create", "x", "--env", "NOEQUALS"], "invalid environment variable"),
        (vec!["create", "x", "--volume", "relative:/x"], "invalid volume"),
        (vec!["create", "bad/name"], "invalid sandbox name"),
        (vec!["cp", "/a", "/b"], "NAME:/path"),
    ];
    for (args, expect) in cases {
        let o = envbox(&root, &args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} must fail");
        assert!(err.contains(expect), "{args:?}: {err}");
        assert!(err.trim().lines().count() <= 3, "{args:?}: one clear error, not a dump: {err}");
    }
    assert!(envbox(&root, &["create", "dup", "--image", &img]).status.success());
    let o = envbox(&root, &["create", "dup", "--image", &img]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("already exists"));
    assert!(envbox(&root, &["rm", "dup"]).status.success());
    assert!(envbox(&root, &["rm", "--force", "dup"]).status.success(), "--force: a missing sandbox is fine");
    root.assert_clean();
}
