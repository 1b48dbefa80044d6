//! Sandboxes that run as a user (`--user`, `SandboxConfig::user`, or the
//! image's `User`): the ids and groups from the sandbox's own /etc/passwd
//! and /etc/group, no capabilities, HOME/USER/LOGNAME, the stdio and
//! signal pipes still working, the shell still not dumpable, and the same
//! user after a reset, a timeout, a snapshot and in the env worker.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::TestRoot;
use envbox::{Env, Image, Sandbox};
use serde_json::{json, Map};

/// /proc/<pid>/status as key → value.
fn status(pid: i32) -> BTreeMap<String, String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(':').map(|(k, v)| (k.to_string(), v.trim().to_string())))
        .collect()
}

fn cmdline(pid: i32) -> String {
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default()).replace('\0', " ")
}

/// The child of `parent` whose command line contains `part`.
fn child(parent: i32, part: &str) -> i32 {
    for _ in 0..500 {
        if let Some(p) = common::children(parent).into_iter().find(|&p| cmdline(p).contains(part)) {
            return p;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("no child of {parent} runs {part:?}")
}

/// (uid, gid, home) of `name` in a root filesystem's /etc/passwd.
fn passwd_entry(rootfs: &Path, name: &str) -> (u32, u32, String) {
    let text = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
    let f: Vec<&str> = text.lines().map(|l| l.split(':').collect::<Vec<_>>()).find(|f| f[0] == name).unwrap_or_else(|| {
        panic!("{name} is not in {}/etc/passwd", rootfs.display());
    });
    (f[2].parse().unwrap(), f[3].parse().unwrap(), f[5].to_string())
}

fn debian_dir() -> std::path::PathBuf {
    let Image::Dir(dir) = common::debian() else { unreachable!() };
    dir
}

/// A process run for a non-root user: that uid and gid in every slot, no
/// capability left in any set but the bounding one, no_new_privs and the
/// filter.
fn assert_unprivileged(what: &str, pid: i32, uid: u32, gid: u32) {
    let s = status(pid);
    let all = |v: &str, id: u32| v.split_whitespace().all(|x| x == id.to_string());
    assert!(all(&s["Uid"], uid), "{what}: Uid {}", s["Uid"]);
    assert!(all(&s["Gid"], gid), "{what}: Gid {}", s["Gid"]);
    let zero = "0".repeat(16);
    for set in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
        assert_eq!(s[set], zero, "{what}: {set}: setuid to a non-zero uid must clear it");
    }
    assert_eq!(s["CapBnd"], format!("{:016x}", envbox::security::default_caps_mask()), "{what}: CapBnd");
    assert_eq!(s["NoNewPrivs"], "1", "{what}");
    assert_eq!(s["Seccomp"], "2", "{what}");
}

/// The AT_SECURE entry of a process's auxiliary vector.
fn at_secure(pid: i32) -> u64 {
    const AT_SECURE: u64 = 23;
    let auxv = std::fs::read(format!("/proc/{pid}/auxv")).unwrap();
    let words: Vec<u64> = auxv.chunks_exact(8).map(|c| u64::from_ne_bytes(c.try_into().unwrap())).collect();
    words.chunks_exact(2).find(|kv| kv[0] == AT_SECURE).map(|kv| kv[1]).expect("AT_SECURE in auxv")
}

/// [`assert_unprivileged`], for a process the agent started (the shell, the
/// worker): also not dumpable, so the commands of the same uid cannot open
/// its fds or memory (/proc/<pid> itself always shows the euid; the
/// private files show root when the process is not dumpable), and yet not
/// started in secure-exec mode (AT_SECURE would make libc drop
/// LD_LIBRARY_PATH, TMPDIR and friends).
fn assert_unprivileged_and_closed(what: &str, pid: i32, uid: u32, gid: u32) {
    assert_unprivileged(what, pid, uid, gid);
    let meta = std::fs::metadata(format!("/proc/{pid}/environ")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (0, 0), "{what}: dumpable (its /proc/{pid}/environ belongs to {uid})");
    assert_eq!(at_secure(pid), 0, "{what}: AT_SECURE");
}

#[test]
fn nobody_runs_without_privileges_through_resets_and_timeouts() {
    require_root!("nobody_runs_without_privileges_through_resets_and_timeouts");
    let root = TestRoot::new("user-nobody");
    let (uid, gid, home) = passwd_entry(&debian_dir(), "nobody");
    let mut cfg = root.config(common::debian());
    cfg.user = Some("nobody".into());
    cfg.workdir = "/work".into();
    let sb = Sandbox::create(&cfg, "nobody").unwrap();

    let o = sb.run("id -u; id -g; id -G; echo $HOME $USER $LOGNAME; pwd").unwrap();
    assert_eq!(o.stdout_str(), format!("{uid}\n{gid}\n{gid}\n{home} nobody nobody\n/work\n"), "{o:?}");
    // The kernel's view of a command: every capability gone.
    let o = sb.run("grep -E '^Cap(Prm|Eff|Amb)' /proc/self/status").unwrap();
    assert_eq!(o.stdout_str(), "CapPrm:\t0000000000000000\nCapEff:\t0000000000000000\nCapAmb:\t0000000000000000\n");

    // Root's files are out of reach; the workdir the agent made stays root's
    // (as Docker leaves it), but it is the cwd and /tmp is writable.
    let o = sb.run("echo x >> /etc/passwd").unwrap();
    assert_ne!(o.exit_code, 0);
    assert!(o.stderr_str().contains("Permission denied"), "{o:?}");
    let o = sb.run("stat -c %u .; touch here; echo $?; touch /tmp/mine && stat -c %u /tmp/mine").unwrap();
    assert!(o.stdout_str().starts_with("0\n1\n") && o.stdout_str().ends_with(&format!("\n{uid}\n")), "{o:?}");
    for cmd in ["chown nobody /etc/hostname", "chroot / true", "cat /etc/shadow", "mount -t tmpfs x /mnt"] {
        assert_ne!(sb.run(cmd).unwrap().exit_code, 0, "{cmd} must fail as nobody");
    }

    // The pipes still work: output reopened by path, the signal pipe (every
    // completion above), and the shell is still closed to its commands.
    let o = sb.run("echo out > /dev/stdout; echo err > /dev/stderr").unwrap();
    assert_eq!((o.stdout_str().as_ref(), o.stderr_str().as_ref()), ("out\n", "err\n"));
    let o = sb.run("ls /proc/$$/fd; cat /proc/$$/environ; sh -c 'echo forged > /proc/$PPID/fd/0'").unwrap();
    assert_eq!(o.stdout_str(), "", "{o:?}");
    assert_eq!(o.stderr_str().matches("Permission denied").count(), 3, "{o:?}");

    // From the host: the shell and a command it runs.
    sb.run("sleep 1000 >/dev/null 2>&1 &").unwrap();
    let shell = child(sb.pid(), "/bin/bash");
    assert_unprivileged_and_closed("shell", shell, uid, gid);
    assert_unprivileged("command", child(shell, "sleep 1000"), uid, gid);
    assert_eq!(status(shell)["Groups"], gid.to_string());
    let environ = std::fs::read(format!("/proc/{shell}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(environ.contains(&format!("HOME={home}\0")) && environ.contains("USER=nobody\0"), "{environ}");

    // A timed-out command takes the shell along; the next one is the same user.
    assert!(matches!(sb.run_with_timeout("sleep 100", Duration::from_millis(300)), Err(envbox::Error::Timeout { .. })));
    assert_eq!(sb.run("id -un").unwrap().stdout_str(), "nobody\n");
    // So is the fresh shell of a reset.
    sb.reset().unwrap();
    assert_eq!(sb.run("id -u; test -e /tmp/mine; echo $?").unwrap().stdout_str(), format!("{uid}\n1\n"));
    assert_unprivileged_and_closed("shell after reset", child(sb.pid(), "/bin/bash"), uid, gid);

    // A snapshot remembers the user: sandboxes made from it run as nobody.
    sb.snapshot(Some("team/nobody:v1")).unwrap();
    let from_tag = Sandbox::create(&root.config(Image::Ref("team/nobody:v1".into())), "from-tag").unwrap();
    assert_eq!(from_tag.run("id -un").unwrap().stdout_str(), "nobody\n");
    from_tag.delete().unwrap();
    sb.delete().unwrap();
    root.assert_clean();
}

#[test]
fn numeric_ids_need_no_passwd_entry() {
    require_root!("numeric_ids_need_no_passwd_entry");
    let root = TestRoot::new("user-numeric");
    let mut cfg = root.config(common::debian());
    cfg.user = Some("1234:5678".into());
    let sb = Sandbox::create(&cfg, "numeric").unwrap();
    let o = sb.run("id -u; id -g; id -G; echo $HOME ${USER-unset}; cd /tmp && touch f && stat -c '%u %g' f").unwrap();
    assert_eq!(o.stdout_str(), "1234\n5678\n5678\n/ unset\n1234 5678\n", "{o:?}");
    assert_unprivileged_and_closed("shell", child(sb.pid(), "/bin/bash"), 1234, 5678);
    // A listed uid without a group takes its passwd entry's.
    drop(sb);
    let (uid, gid, home) = passwd_entry(&debian_dir(), "nobody");
    cfg.user = Some(uid.to_string());
    let sb = Sandbox::create(&cfg, "listed").unwrap();
    assert_eq!(sb.run("id -g; echo $HOME $USER").unwrap().stdout_str(), format!("{gid}\n{home} nobody\n"));
    // And a name with an explicit group.
    drop(sb);
    cfg.user = Some("nobody:0".into());
    let sb = Sandbox::create(&cfg, "with-group").unwrap();
    assert_eq!(sb.run("id -u; id -g; id -G").unwrap().stdout_str(), format!("{uid}\n0\n0\n"));
    drop(sb);
    root.assert_clean();
}

fn envbox(root: &TestRoot, args: &[&str]) -> Output {
    Command::new(common::agent()).env("ENVBOX_ROOT", &root.path).args(args).output().unwrap()
}

#[test]
fn unknown_users_and_bad_specs_fail_create_clearly() {
    require_root!("unknown_users_and_bad_specs_fail_create_clearly");
    let root = TestRoot::new("user-unknown");
    let mut cfg = root.config(common::debian());
    cfg.user = Some("ghost".into());
    let t0 = std::time::Instant::now();
    let msg = Sandbox::create(&cfg, "ghost").err().expect("an unknown user must fail create").to_string();
    assert!(msg.contains("\"ghost\"") && msg.contains("not in the image's /etc/passwd"), "{msg}");
    assert!(t0.elapsed() < Duration::from_secs(10), "failing took {:?}", t0.elapsed());
    cfg.user = Some("nobody:ghosts".into());
    let msg = Sandbox::create(&cfg, "ghosts").err().expect("an unknown group must fail create").to_string();
    assert!(msg.contains("\"ghosts\"") && msg.contains("/etc/group"), "{msg}");

    // The CLI: the syntax is checked before anything is made, names inside.
    let img = common::debian_dir();
    for (user, needle) in [("a:b:c", "more than one ':'"), ("app:", "group after ':' is empty"), ("", "user is empty")] {
        let o = envbox(&root, &["create", "x", "--image", &img, "--user", user]);
        assert!(!o.status.success(), "--user {user:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(needle) && err.contains("USER[:GROUP]"), "--user {user:?}: {err}");
    }
    let o = envbox(&root, &["create", "x", "--image", &img, "--user", "ghost"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not in the image's /etc/passwd"), "{}", String::from_utf8_lossy(&o.stderr));
    // --user reaches the shell through the CLI too.
    let o = envbox(&root, &["create", "cli", "--image", &img, "--user", "nobody"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(envbox(&root, &["exec", "cli", "id -un"]).stdout, b"nobody\n");
    assert!(envbox(&root, &["rm", "cli"]).status.success());
    root.assert_clean();
}

#[test]
fn the_images_user_applies_unless_overridden() {
    require_root!("the_images_user_applies_unless_overridden");
    if !Path::new("/usr/bin/umoci").exists() || envbox_rootfs::fixtures::ensure(envbox_rootfs::fixtures::Fixture::Busybox).is_err() {
        if std::env::var("SANDBOX_TESTS_MUST_RUN").as_deref() == Ok("1") {
            panic!("the_images_user_applies_unless_overridden needs umoci and the busybox rootfs");
        }
        eprintln!("the_images_user_applies_unless_overridden needs /usr/bin/umoci and the busybox rootfs. Skipping test.");
        return;
    }
    let root = TestRoot::new("user-image");
    // busybox plus a layer; its config says User 1000:1000.
    let image = Image::parse(&format!("oci:{}:v1", envbox_rootfs::fixtures::registry::layout().display()));
    let sb = Sandbox::create(&root.config(image.clone()), "image-user").unwrap();
    assert_eq!(sb.run("id -u; id -g; echo $HOME; pwd").unwrap().stdout_str(), "1000\n1000\n/\n/work\n");
    assert_unprivileged_and_closed("shell", child(sb.pid(), "/bin/sh"), 1000, 1000);
    sb.reset().unwrap();
    assert_eq!(sb.run("id -u").unwrap().stdout_str(), "1000\n");
    // A fork keeps it.
    let kids = sb.fork(1, "kid", false).unwrap();
    assert_eq!(kids[0].run("id -u").unwrap().stdout_str(), "1000\n");
    drop(kids);
    drop(sb);

    // The caller's user wins, by name or number; root keeps root's posture.
    for user in ["root", "0", "0:0"] {
        let mut cfg = root.config(image.clone());
        cfg.user = Some(user.into());
        let sb = Sandbox::create(&cfg, "as-root").unwrap();
        assert_eq!(sb.run("id -u; id -g").unwrap().stdout_str(), "0\n0\n", "--user {user}");
        let shell = child(sb.pid(), "/bin/sh");
        assert_eq!(status(shell)["CapEff"], format!("{:016x}", envbox::security::default_caps_mask()), "--user {user}");
        assert_eq!(std::fs::metadata(format!("/proc/{shell}/environ")).unwrap().uid(), 0);
        assert_eq!(sb.run("echo hi > /dev/stdout").unwrap().stdout_str(), "hi\n");
        drop(sb);
    }
    let mut cfg = root.config(image);
    cfg.user = Some("4242".into());
    let sb = Sandbox::create(&cfg, "other").unwrap();
    assert_eq!(sb.run("id -u; id -g").unwrap().stdout_str(), "4242\n4242\n");
    drop(sb);
    root.assert_clean();
}

#[test]
fn the_env_worker_runs_as_the_user() {
    require_root!("the_env_worker_runs_as_the_user");
    let root = TestRoot::new("user-env");
    let (uid, gid, home) = passwd_entry(&debian_dir(), "nobody");
    let mut cfg = common::env_config(&root, common::debian(), "whoami");
    cfg.user = Some("nobody".into());
    let sb = Sandbox::create(&cfg, "env").unwrap();
    let env = Env::unix(sb.env_socket().unwrap());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let want = json!({
        "uid": uid, "euid": uid, "gid": gid, "groups": [gid], "home": home, "user": "nobody",
        "cap_prm": "0000000000000000", "cap_eff": "0000000000000000", "cwd": "/app",
    });
    rt.block_on(async {
        env.wait_ready(Duration::from_secs(60)).await.unwrap();
        assert_eq!(env.call("whoami", vec![], Map::new()).await.unwrap(), want);
    });
    assert_unprivileged_and_closed("worker", child(sb.pid(), "python3 -u -c"), uid, gid);
    // The worker of the next generation too.
    sb.reset().unwrap();
    rt.block_on(async {
        env.wait_ready(Duration::from_secs(60)).await.unwrap();
        assert_eq!(env.call("whoami", vec![], Map::new()).await.unwrap(), want);
    });
    sb.delete().unwrap();
    root.assert_clean();
}
