//! Create, reset, delete, drop, re-attach, garbage collection after crashes,
//! concurrency, and bad input at create.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::TestRoot;
use envbox::{Error, Image, Sandbox, SandboxConfig};

fn tree_digest(sb: &Sandbox) -> String {
    // Every path with its type, mode, size and content hash, outside the
    // virtual filesystems.
    let cmd = "find / -xdev \\( -path /proc -o -path /sys -o -path /dev \\) -prune -o -printf '%p %y %m %s\\n' | sort | sha256sum; \
               find / -xdev -type f -not -path '/proc/*' -not -path '/sys/*' -exec sha256sum {} + | sort | sha256sum";
    let o = sb.run(cmd).unwrap();
    assert_eq!(o.exit_code, 0, "{}", o.stderr_str());
    o.stdout_str().into_owned()
}

#[test]
fn reset_restores_the_filesystem_exactly_and_never_touches_the_image() {
    require_root!("reset_restores_the_filesystem_exactly_and_never_touches_the_image");
    let root = TestRoot::new("reset");
    let image = common::debian();
    let Image::Dir(image_dir) = image.clone() else { unreachable!() };
    let before = Command::new("sh")
        .arg("-c")
        .arg(format!("cd {} && find . -printf '%p %m %s %T@\\n' | sort | sha256sum", image_dir.display()))
        .output()
        .unwrap();
    let sb = Sandbox::create(&root.config(image.clone()), "reset").unwrap();
    let fresh = tree_digest(&sb);
    let o = sb
        .run(
            "echo pwn > /etc/passwd; rm -f /bin/ls; touch /usr/x /root/y /tmp/z; chmod 000 /etc; mkfifo /p; \
              mkdir -p /a/b/c; ln -s / /a/loop; echo data > /dev/shm/s; cd /a/b",
        )
        .unwrap();
    assert_eq!(o.exit_code, 0, "{}", o.stderr_str());
    assert_ne!(tree_digest(&sb), fresh, "the writes must be visible before the reset");
    let gen_before = sb.ping().unwrap();
    sb.reset().unwrap();
    assert_ne!(sb.ping().unwrap(), gen_before);
    assert_eq!(tree_digest(&sb), fresh, "after reset the tree equals a fresh sandbox's");
    let o = sb.run("pwd; ls /dev/shm | wc -l; test -x /bin/ls && echo ls-back").unwrap();
    assert_eq!(o.stdout_str(), "/\n0\nls-back\n");
    // A second sandbox on the same image sees pristine files too.
    let other = Sandbox::create(&root.config(image), "other").unwrap();
    assert_eq!(tree_digest(&other), fresh);
    let after = Command::new("sh")
        .arg("-c")
        .arg(format!("cd {} && find . -printf '%p %m %s %T@\\n' | sort | sha256sum", image_dir.display()))
        .output()
        .unwrap();
    assert_eq!(before.stdout, after.stdout, "the image directory must be unchanged");
    sb.delete().unwrap();
    other.delete().unwrap();
    root.assert_clean();
}

#[test]
fn reset_after_ten_thousand_files_and_old_layers_are_reclaimed() {
    require_root!("reset_after_ten_thousand_files_and_old_layers_are_reclaimed");
    let root = TestRoot::new("reset10k");
    let sb = Sandbox::create(&root.config(common::debian()), "r10k").unwrap();
    for _ in 0..3 {
        let o = sb.run("mkdir -p /tmp/m && cd /tmp/m && seq 10000 | xargs touch && ls | wc -l").unwrap();
        assert_eq!(o.stdout_str().trim(), "10000");
        sb.reset().unwrap();
        assert_eq!(sb.run("ls /tmp | wc -l").unwrap().stdout_str().trim(), "0");
    }
    // Old generations are deleted in the background: only the current one stays.
    let gen_dir = sb.state_dir().join("gen");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_dir(&gen_dir).unwrap().count() > 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(std::fs::read_dir(&gen_dir).unwrap().count(), 1, "old upper layers must be removed");
    sb.delete().unwrap();
    root.assert_clean();
}

#[test]
fn reset_aborts_a_running_command() {
    require_root!("reset_aborts_a_running_command");
    let root = TestRoot::new("abort");
    let sb = Sandbox::create(&root.config(common::debian()), "abort").unwrap();
    let other = Sandbox::open(&root.path, "abort").unwrap();
    std::thread::scope(|s| {
        let h = s.spawn(|| sb.run("dd if=/dev/zero of=/big bs=1M count=100000 2>/dev/null & sleep 1000"));
        std::thread::sleep(Duration::from_millis(500));
        other.reset().unwrap();
        match h.join().unwrap() {
            Err(Error::AbortedByReset) => {}
            r => panic!("expected AbortedByReset, got {r:?}"),
        }
    });
    let o = sb.run("test -e /big && echo present; ps -e -o comm= | grep -cE 'dd|sleep' || true").unwrap();
    assert_eq!(o.stdout_str(), "0\n", "the file and the processes are gone");
    drop(other);
    sb.delete().unwrap();
    root.assert_clean();
}

#[test]
fn delete_removes_processes_cgroups_and_directories_and_drop_deletes() {
    require_root!("delete_removes_processes_cgroups_and_directories_and_drop_deletes");
    let root = TestRoot::new("delete");
    let mut cfg = root.config(common::debian());
    cfg.limits.memory_bytes = Some(256 << 20);
    cfg.limits.pids = Some(64);
    let sb = Sandbox::create(&cfg, "del").unwrap();
    let pid = sb.pid();
    sb.run("sleep 1000 & (trap '' TERM; sleep 1000) & true").unwrap();
    assert!(!common::cgroups_of(&root.path).is_empty());
    sb.delete().unwrap();
    assert!(!common::process_exists(pid));
    root.assert_clean();
    // Dropping an owned handle deletes too; an opened one does not.
    let sb = Sandbox::create(&cfg, "dropped").unwrap();
    let pid = sb.pid();
    drop(Sandbox::open(&root.path, "dropped").unwrap());
    assert!(common::process_exists(pid), "dropping an opened handle must not delete");
    drop(sb);
    assert!(!common::process_exists(pid));
    root.assert_clean();
    assert!(matches!(Sandbox::open(&root.path, "dropped"), Err(Error::NotFound { .. })));
}

#[test]
fn garbage_collection_cleans_up_after_kill_9_of_the_agent() {
    require_root!("garbage_collection_cleans_up_after_kill_9_of_the_agent");
    let root = TestRoot::new("gc");
    let mut cfg = root.config(common::debian());
    cfg.limits.pids = Some(64);
    let mut sb = Sandbox::create(&cfg, "victim").unwrap();
    sb.set_delete_on_drop(false);
    let keep = Sandbox::create(&cfg, "healthy").unwrap();
    let pid = sb.pid();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
    assert!(matches!(sb.run("true"), Err(Error::Dead { .. }) | Err(Error::Io { .. })));
    drop(sb);
    let report = envbox::collect_garbage(&root.path).unwrap();
    assert_eq!(report.sandboxes, vec!["victim".to_string()]);
    assert!(matches!(Sandbox::open(&root.path, "victim"), Err(Error::NotFound { .. })));
    // The healthy one is untouched and still works; the name is free again.
    assert_eq!(keep.run("echo ok").unwrap().stdout_str(), "ok\n");
    Sandbox::create(&cfg, "victim").unwrap().delete().unwrap();
    keep.delete().unwrap();
    root.assert_clean();
}

#[test]
fn sandboxes_die_with_their_creator_unless_detached() {
    require_root!("sandboxes_die_with_their_creator_unless_detached");
    let root = TestRoot::new("parent");
    // A creator process that is killed with SIGKILL: the example binary
    // stands in for any program embedding the library.
    for detached in [false, true] {
        let name = if detached { "det" } else { "att" };
        let mut child = Command::new(common::agent())
            .env("ENVBOX_ROOT", &root.path)
            .args(["create", name, "--image"])
            .arg(common::debian_dir())
            .spawn()
            .unwrap();
        assert!(child.wait().unwrap().success());
        // The CLI creates detached sandboxes: they outlive it.
        let sb = Sandbox::open(&root.path, name).unwrap();
        assert_eq!(sb.run("echo alive").unwrap().stdout_str(), "alive\n");
        sb.delete_and_wait().unwrap();
    }
    // A library creator that dies takes its sandbox along.
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "creator_helper", "--nocapture", "--include-ignored"])
        .env("ENVBOX_TEST_CREATOR_ROOT", &root.path)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&status.stdout).contains("created"), "{}", String::from_utf8_lossy(&status.stderr));
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && envbox::list(&root.path).unwrap().iter().any(|s| s.state == "running") {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(envbox::list(&root.path).unwrap().iter().all(|s| s.state == "dead"), "the sandbox outlived its creator");
    // And so does the zygote that forked its agent.
    let out = String::from_utf8_lossy(&status.stdout).into_owned();
    let zygote: i32 = out.split("zygote=").nth(1).and_then(|v| v.split_whitespace().next()).and_then(|v| v.parse().ok()).unwrap_or(0);
    assert!(zygote > 0, "the creator had no zygote: {out}");
    while Instant::now() < deadline + Duration::from_secs(5) && common::process_exists(zygote) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!common::process_exists(zygote), "the zygote outlived its creator");
    envbox::collect_garbage(&root.path).unwrap();
    root.assert_clean();
}

/// Not a test of its own: the creator process of the test above. It creates
/// an attached sandbox and then dies by SIGKILL without cleaning up.
#[test]
#[ignore = "helper process for sandboxes_die_with_their_creator_unless_detached"]
fn creator_helper() {
    let Some(root) = std::env::var_os("ENVBOX_TEST_CREATOR_ROOT") else { return };
    let cfg = SandboxConfig { image: common::debian(), root: root.into(), agent: Some(common::agent()), ..Default::default() };
    let sb = Sandbox::create(&cfg, "orphan").unwrap();
    sb.run("true").unwrap();
    println!("created zygote={}", envbox::sandbox::zygote::pid().unwrap_or(0));
    let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
}

#[test]
fn concurrent_creates_of_many_sandboxes_and_of_one_name() {
    require_root!("concurrent_creates_of_many_sandboxes_and_of_one_name");
    let root = TestRoot::new("concurrent");
    let cfg = root.config(common::debian());
    for round in 0..3 {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..16)
                .map(|i| {
                    let cfg = &cfg;
                    s.spawn(move || {
                        let sb = Sandbox::create(cfg, &format!("c{round}-{i}")).unwrap();
                        let o = sb.run(&format!("echo {i}; hostname")).unwrap();
                        assert_eq!(o.stdout_str(), format!("{i}\nc{round}-{i}\n"));
                        sb.reset().unwrap();
                        sb.delete().unwrap();
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap();
            }
        });
    }
    // Eight racing creates of one name: exactly one wins.
    let results: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8).map(|_| s.spawn(|| Sandbox::create(&cfg, "same"))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let wins = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(wins, 1);
    assert!(results.iter().filter_map(|r| r.as_ref().err()).all(|e| matches!(e, Error::AlreadyExists { .. })));
    drop(results);
    root.assert_clean();
}

#[test]
fn bad_input_at_create_gets_a_clear_error_and_leaves_nothing() {
    require_root!("bad_input_at_create_gets_a_clear_error_and_leaves_nothing");
    let root = TestRoot::new("badinput");
    let cfg = root.config(common::debian());
    let err = |r: envbox::Result<Sandbox>| envbox::error::chain(&r.err().expect("must fail"));
    assert!(err(Sandbox::create(&cfg, "../x")).contains("invalid sandbox name"));
    assert!(err(Sandbox::create(&cfg, "")).contains("empty"));
    let missing = SandboxConfig { image: Image::Dir("/nonexistent/img".into()), ..cfg.clone() };
    assert!(err(Sandbox::create(&missing, "m")).contains("/nonexistent/img"));
    let notroot = SandboxConfig { image: Image::Dir("/tmp".into()), ..cfg.clone() };
    assert!(err(Sandbox::create(&notroot, "m")).contains("does not look like a root filesystem"));
    let vol = SandboxConfig { volumes: vec!["/nonexistent/v:/v".parse().unwrap()], ..cfg.clone() };
    assert!(err(Sandbox::create(&vol, "m")).contains("/nonexistent/v"));
    let badagent = SandboxConfig { agent: Some("/nonexistent/envbox".into()), ..cfg.clone() };
    assert!(err(Sandbox::create(&badagent, "m")).contains("starting the sandbox agent"));
    let sb = Sandbox::create(&cfg, "dup").unwrap();
    assert!(err(Sandbox::create(&cfg, "dup")).contains("already exists"));
    sb.delete().unwrap();
    root.assert_clean();
}

#[test]
fn volumes_workdir_env_and_network_modes() {
    require_root!("volumes_workdir_env_and_network_modes");
    let root = TestRoot::new("config");
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("in.txt"), "from host\n").unwrap();
    let ro = tempfile::tempdir().unwrap();
    let mut cfg = root.config(common::debian());
    cfg.workdir = "/work/dir".into();
    cfg.env = vec![("GREETING".into(), "hi there".into())];
    cfg.volumes = vec![
        envbox::Volume { host: host.path().into(), container: "/mnt/rw".into(), read_only: false },
        envbox::Volume { host: ro.path().into(), container: "/mnt/ro".into(), read_only: true },
    ];
    let sb = Sandbox::create(&cfg, "cfg").unwrap();
    let o = sb.run("pwd; echo \"$GREETING\"; cat /mnt/rw/in.txt; echo out > /mnt/rw/out.txt; touch /mnt/ro/x 2>&1 | grep -c Read-only; cat /proc/net/dev | grep -c ':'").unwrap();
    assert_eq!(o.stdout_str(), "/work/dir\nhi there\nfrom host\n1\n1\n", "{}", o.stderr_str());
    assert_eq!(std::fs::read_to_string(host.path().join("out.txt")).unwrap(), "out\n");
    // Volumes survive a reset (they are the host's, not the sandbox's).
    sb.reset().unwrap();
    assert_eq!(sb.run("cat /mnt/rw/out.txt; pwd").unwrap().stdout_str(), "out\n/work/dir\n");
    sb.delete().unwrap();
    // --net host shares the host's interfaces.
    let host_ifaces = std::fs::read_to_string("/proc/net/dev").unwrap().matches(':').count();
    let cfg = SandboxConfig { network: envbox::Network::Host, ..root.config(common::debian()) };
    let sb = Sandbox::create(&cfg, "hostnet").unwrap();
    let n: usize = sb.run("cat /proc/net/dev | grep -c ':'").unwrap().stdout_str().trim().parse().unwrap();
    assert_eq!(n, host_ifaces);
    sb.delete().unwrap();
    root.assert_clean();
}

#[test]
fn the_default_image_is_the_hosts_system_without_its_secrets() {
    require_root!("the_default_image_is_the_hosts_system_without_its_secrets");
    let root = TestRoot::new("hostimg");
    let sb = Sandbox::create(&root.config(Image::Host), "hostimg").unwrap();
    let o = sb.run("python3 -V && ls /root /home /run | wc -l; test -e /etc/shadow || echo no-shadow; test -e /var/lib || echo no-varlib; test -e /work || echo no-work").unwrap();
    assert_eq!(o.exit_code, 0, "{}", o.stderr_str());
    assert!(o.stdout_str().starts_with("Python 3"), "{}", o.stdout_str());
    assert!(o.stdout_str().contains("no-shadow\nno-varlib\nno-work"), "{}", o.stdout_str());
    // Writes go to the sandbox's layer, never to the host's /usr or /etc.
    sb.run("echo x > /usr/envbox-test-file; echo y >> /etc/hostname").unwrap();
    assert!(!std::path::Path::new("/usr/envbox-test-file").exists());
    sb.reset().unwrap();
    assert_eq!(sb.run("test -e /usr/envbox-test-file || echo gone").unwrap().stdout_str(), "gone\n");
    sb.delete().unwrap();
    root.assert_clean();
}

#[test]
fn a_binary_that_cannot_be_a_zygote_falls_back_to_exec() {
    require_root!("a_binary_that_cannot_be_a_zygote_falls_back_to_exec");
    // In a process of its own: the fallback is for the rest of a process.
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "fallback_helper", "--nocapture", "--include-ignored"])
        .env("ENVBOX_TEST_FALLBACK", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("fallback ok"), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
}

/// Not a test of its own: the process of the test above. Its agent binary
/// is a script that runs envbox as an agent but refuses to be a zygote,
/// as an older envbox would.
#[test]
#[ignore = "helper process for a_binary_that_cannot_be_a_zygote_falls_back_to_exec"]
fn fallback_helper() {
    if std::env::var_os("ENVBOX_TEST_FALLBACK").is_none() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let bin = tempfile::tempdir().unwrap();
    let script = bin.path().join("envbox");
    let calls = bin.path().join("calls");
    let body = format!(
        "#!/bin/sh\necho \"$1\" >> {}\n[ \"$1\" = __agent ] && exec {} \"$@\"\nexit 2\n",
        calls.display(),
        common::agent().display()
    );
    std::fs::write(&script, body).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = TestRoot::new("fallback");
    let mut cfg = root.config(common::debian());
    cfg.agent = Some(script);
    let me = i32::try_from(std::process::id()).unwrap();
    for name in ["one", "two"] {
        let sb = Sandbox::create(&cfg, name).unwrap();
        assert_eq!(sb.run("echo ok").unwrap().stdout_str(), "ok\n");
        assert!(envbox::sandbox::zygote::pid().is_none(), "no zygote runs");
        assert!(common::child_processes(me).contains(&sb.pid()), "the agent was exec'd by this process");
        sb.delete_and_wait().unwrap();
    }
    root.assert_clean();
    assert_eq!(common::child_processes(me), Vec::<i32>::new(), "nothing left");
    // Two tries at a zygote in the first create, none after.
    let calls = std::fs::read_to_string(&calls).unwrap();
    assert_eq!(calls.lines().filter(|l| *l == "__zygote").count(), 2, "{calls}");
    assert_eq!(calls.lines().filter(|l| *l == "__agent").count(), 2, "{calls}");
    println!("fallback ok");
}
