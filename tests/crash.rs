//! Crash safety: kill -9 of every envbox process at random moments — the
//! CLI in the middle of create, a library process in the middle of create,
//! reset and delete, a sandbox's shell and its environment worker — and
//! then the next garbage collection leaves no mount, cgroup, process or
//! directory behind, while the sandboxes that were healthy keep working.
//!
//! This test binary makes itself a child subreaper, so processes orphaned
//! by the kills (agents above all) are re-parented to it and can be
//! counted.

mod common;

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::TestRoot;
use envbox::{Sandbox, SandboxConfig};

fn become_subreaper() {
    nix::sys::prctl::set_child_subreaper(true).unwrap();
}

/// A random number below `n` (the kill points).
fn below(n: u64) -> u64 {
    let mut b = [0u8; 8];
    getrandom::getrandom(&mut b).unwrap();
    u64::from_le_bytes(b) % n
}

fn kill9(child: &mut Child) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()), nix::sys::signal::Signal::SIGKILL);
    let _ = child.wait();
}

/// Reaps orphans re-parented to us, then waits until none of our children
/// (other than `keep`) is left.
fn wait_for_no_orphans(keep: &[i32]) {
    let me = i32::try_from(std::process::id()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        while let Ok(s) = nix::sys::wait::waitpid(None, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
            if s == nix::sys::wait::WaitStatus::StillAlive {
                break;
            }
        }
        // The zygote (it forks this process's agents) is no orphan.
        let zygote = envbox::sandbox::zygote::pid();
        let left: Vec<i32> = common::children(me).into_iter().filter(|p| !keep.contains(p) && Some(*p) != zygote).collect();
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "processes outlived the crashes: {left:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Removes every sandbox that is still running (a create that was killed
/// after it completed is a real sandbox), except `keep`.
fn remove_survivors(root: &TestRoot, keep: &str) {
    envbox::collect_garbage(&root.path).unwrap();
    for s in envbox::list(&root.path).unwrap() {
        if s.name != keep {
            if let Ok(sb) = Sandbox::open(&root.path, &s.name) {
                sb.delete_and_wait().unwrap();
            }
        }
    }
    envbox::collect_garbage(&root.path).unwrap();
}

#[test]
fn kill_9_of_the_cli_in_the_middle_of_create() {
    require_root!("kill_9_of_the_cli_in_the_middle_of_create");
    become_subreaper();
    let root = TestRoot::new("crash-cli");
    let img = common::debian_dir();
    let mut healthy = root.config(common::debian());
    healthy.detached = true;
    let keep = Sandbox::create(&healthy, "healthy").unwrap();
    keep.run("echo 1 > /tmp/state").unwrap();
    let keep_pid = keep.pid();
    for i in 0..40 {
        let name = format!("c{i}");
        // With limits (a cgroup) and an environment (sockets, a worker), so
        // every kind of resource is in play.
        let mut child = Command::new(common::agent())
            .env("ENVBOX_ROOT", &root.path)
            .args(["create", &name, "--image", &img, "--memory", "128m", "--pids", "64"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(below(12_000)));
        kill9(&mut child);
    }
    // Creates that completed before the kill made real sandboxes: remove
    // them; then nothing else may be left running.
    remove_survivors(&root, "healthy");
    wait_for_no_orphans(&[keep_pid]);
    // An agent whose create was never committed exits by itself once its creator is gone;
    // under load the last one may still have been exiting during `remove_survivors`. What
    // it leaves is the next start's to collect, as here.
    envbox::collect_garbage(&root.path).unwrap();
    assert_eq!(keep.run("cat /tmp/state").unwrap().stdout_str(), "1\n", "the healthy sandbox must keep working");
    assert_eq!(common::leftovers(&root.path), vec!["healthy".to_string()]);
    keep.delete_and_wait().unwrap();
    root.assert_clean();
}

#[test]
fn kill_9_of_a_library_process_in_the_middle_of_create_reset_and_delete() {
    require_root!("kill_9_of_a_library_process_in_the_middle_of_create_reset_and_delete");
    become_subreaper();
    let root = TestRoot::new("crash-lib");
    let mut healthy = root.config(common::debian());
    healthy.detached = true;
    let keep = Sandbox::create(&healthy, "healthy").unwrap();
    let keep_pid = keep.pid();
    for detached in ["0", "1"] {
        for _ in 0..12 {
            let mut child = Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "churn_helper", "--nocapture", "--include-ignored"])
                .env("ENVBOX_TEST_CHURN_ROOT", &root.path)
                .env("ENVBOX_TEST_CHURN_DETACHED", detached)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            // Let it get going (the test harness starts first), then kill
            // it somewhere in its create/reset/delete loop.
            std::thread::sleep(Duration::from_millis(150 + below(250)));
            kill9(&mut child);
        }
    }
    // Detached sandboxes whose create completed are real and still run;
    // the rest must be gone once they are removed.
    remove_survivors(&root, "healthy");
    wait_for_no_orphans(&[keep_pid]);
    assert_eq!(keep.run("echo ok").unwrap().stdout_str(), "ok\n");
    assert_eq!(common::leftovers(&root.path), vec!["healthy".to_string()]);
    keep.delete_and_wait().unwrap();
    root.assert_clean();
}

/// Not a test of its own: the process that `kill_9_of_a_library_process...`
/// kills. It creates, uses, resets and deletes sandboxes until it dies.
#[test]
#[ignore = "helper process for kill_9_of_a_library_process_in_the_middle_of_create_reset_and_delete"]
fn churn_helper() {
    let Some(root) = std::env::var_os("ENVBOX_TEST_CHURN_ROOT") else { return };
    let detached = std::env::var("ENVBOX_TEST_CHURN_DETACHED").as_deref() == Ok("1");
    let mut cfg =
        SandboxConfig { image: common::debian(), root: root.into(), agent: Some(common::agent()), detached, ..Default::default() };
    cfg.limits.pids = Some(64);
    for i in 0.. {
        let name = format!("churn-{}-{i}", std::process::id());
        let sb = Sandbox::create(&cfg, &name).unwrap();
        sb.run("for i in $(seq 50); do echo $i > /tmp/f$i; done").unwrap();
        sb.reset().unwrap();
        sb.delete_and_wait().unwrap();
    }
}

#[test]
fn kill_9_of_the_shell_and_of_the_environment_worker() {
    require_root!("kill_9_of_the_shell_and_of_the_environment_worker");
    let root = TestRoot::new("crash-proc");
    let sb = Sandbox::create(&common::env_config(&root, common::debian(), "actor"), "procs").unwrap();
    let env = envbox::Env::unix(sb.env_socket().unwrap());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(env.wait_ready(Duration::from_secs(60))).unwrap();
    sb.run("cd /tmp").unwrap();
    // The agent's children: the shell and the worker (python3).
    let kids = common::children(sb.pid());
    let cmdline = |p: i32| std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
    let shell = *kids.iter().find(|&&p| cmdline(p).starts_with(b"/bin/bash")).expect("the shell");
    let worker = *kids.iter().find(|&&p| String::from_utf8_lossy(&cmdline(p)).contains("python3")).expect("the worker");

    // The shell, killed in the middle of a command: the command ends (it
    // does not hang) and the next one gets a fresh shell.
    let victim = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(shell), nix::sys::signal::Signal::SIGKILL).unwrap();
    });
    let o = sb.run("sleep 30").unwrap();
    victim.join().unwrap();
    assert!(o.shell_restarted && o.exit_code == 137, "{o:?}");
    assert_eq!(sb.run("pwd").unwrap().stdout_str(), "/app\n", "a fresh shell starts in the workdir");

    // The worker, killed in the middle of a call: the call fails as an
    // infrastructure error, and the environment serves again.
    rt.block_on(async {
        let call = env.call("slow", vec![], serde_json::json!({"seconds": 30}).as_object().unwrap().clone());
        let kill = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(worker), nix::sys::signal::Signal::SIGKILL).unwrap();
        };
        let (r, ()) = tokio::join!(call, kill);
        let e = r.unwrap_err();
        assert!(e.is_infrastructure() && e.to_string().contains("signal 9"), "{e}");
        assert_eq!(env.call("noop", vec![], serde_json::Map::new()).await.unwrap(), serde_json::Value::Null);
    });
    // No zombie is left behind in the sandbox.
    let o = sb.run("ps -eo stat= | grep -c Z || true").unwrap();
    assert_eq!(o.stdout_str().trim(), "0");
    drop(sb);
    root.assert_clean();
}

#[test]
fn a_dead_claimers_half_made_directory_is_collected_at_once() {
    require_root!("a_dead_claimers_half_made_directory_is_collected_at_once");
    let root = TestRoot::new("crash-claim");
    // A claimer that died (no such pid) and one that lives (this process).
    let me = std::process::id();
    let start = envbox::sandbox::state::process_start_time(i32::try_from(me).unwrap()).unwrap();
    let dead = root.path.join(".claiming-999999999-1-abc");
    let live = root.path.join(format!(".claiming-{me}-{start}-def"));
    for d in [&dead, &live] {
        std::fs::create_dir(d).unwrap();
        std::fs::write(d.join("lock"), b"").unwrap();
    }
    envbox::collect_garbage(&root.path).unwrap();
    assert!(!dead.exists(), "a dead claimer's directory must go at once");
    assert!(live.exists(), "a live claimer's directory must stay");
    std::fs::remove_dir_all(&live).unwrap();
    root.assert_clean();
}
