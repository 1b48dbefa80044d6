//! The posture of a sandbox's processes, read from the host (gVisor's
//! sandboxposture test in spirit; SECURITY.md §3.10): the agent (PID 1), the
//! persistent shell, the environment's python worker and a command the
//! shell started, each compared with what README's threat model promises.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use common::TestRoot;
use envbox::config::Seccomp;
use envbox::{Sandbox, SandboxConfig};

/// What /proc says about one process.
#[derive(Debug)]
struct Posture {
    pid: i32,
    status: BTreeMap<String, String>,
    /// Namespace links (mnt, pid, ipc, uts, net, cgroup).
    ns: BTreeMap<String, String>,
    /// (dev, ino) of its root and cwd.
    root: (u64, u64),
    cwd: (u64, u64),
    mounts: usize,
    /// fd number → (link target, open flags in octal).
    fds: BTreeMap<i32, (String, u32)>,
    environ: Vec<String>,
    limits: String,
}

const NAMESPACES: [&str; 6] = ["mnt", "pid", "ipc", "uts", "net", "cgroup"];

fn dev_ino(p: &str) -> (u64, u64) {
    let m = std::fs::metadata(p).unwrap();
    (m.dev(), m.ino())
}

fn posture(pid: i32) -> Posture {
    let proc = format!("/proc/{pid}");
    let status = std::fs::read_to_string(format!("{proc}/status"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(':').map(|(k, v)| (k.to_string(), v.trim().to_string())))
        .collect();
    let ns =
        NAMESPACES.iter().map(|n| (n.to_string(), std::fs::read_link(format!("{proc}/ns/{n}")).unwrap().display().to_string())).collect();
    let mut fds = BTreeMap::new();
    for e in std::fs::read_dir(format!("{proc}/fd")).unwrap().flatten() {
        let Ok(fd) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(target) = std::fs::read_link(e.path()) else { continue };
        let info = std::fs::read_to_string(format!("{proc}/fdinfo/{fd}")).unwrap_or_default();
        let flags = info.lines().find_map(|l| l.strip_prefix("flags:")).map_or(0, |v| u32::from_str_radix(v.trim(), 8).unwrap());
        fds.insert(fd, (target.display().to_string(), flags));
    }
    Posture {
        pid,
        status,
        ns,
        root: dev_ino(&format!("{proc}/root/")),
        cwd: dev_ino(&format!("{proc}/cwd/")),
        mounts: std::fs::read_to_string(format!("{proc}/mountinfo")).unwrap().lines().count(),
        fds,
        environ: std::fs::read(format!("{proc}/environ"))
            .unwrap()
            .split(|&b| b == 0)
            .filter(|v| !v.is_empty())
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect(),
        limits: std::fs::read_to_string(format!("{proc}/limits")).unwrap(),
    }
}

fn host_ns() -> BTreeMap<String, String> {
    NAMESPACES.iter().map(|n| (n.to_string(), std::fs::read_link(format!("/proc/self/ns/{n}")).unwrap().display().to_string())).collect()
}

fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The child of `parent` whose command line contains `part`, waiting for
/// it to appear.
fn child(parent: i32, part: &str) -> i32 {
    for _ in 0..500 {
        if let Some(p) = common::children(parent).into_iter().find(|&p| cmdline(p).contains(part)) {
            return p;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let seen: Vec<String> = common::children(parent).iter().map(|&p| cmdline(p).chars().take(60).collect()).collect();
    panic!("no child of {parent} runs {part:?}; children: {seen:?}")
}

const O_PATH: u32 = 0o10_000_000;
const O_CLOEXEC: u32 = 0o2_000_000;

/// A process the agent runs for the user: the allow-listed capabilities,
/// no_new_privs, the expected seccomp mode, the agent's namespaces and
/// root, no directory fds, and the variables `env` plus at most `extra`.
fn assert_confined(name: &str, p: &Posture, agent: &Posture, seccomp: &str, env: &[&str], extra: &[&str]) {
    let mask = format!("{:016x}", envbox::security::default_caps_mask());
    let zero = "0".repeat(16);
    for (set, want) in [("CapInh", &zero), ("CapPrm", &mask), ("CapEff", &mask), ("CapBnd", &mask), ("CapAmb", &zero)] {
        assert_eq!(&p.status[set], want, "{name}: {set}");
    }
    assert_eq!(p.status["NoNewPrivs"], "1", "{name}");
    assert_eq!(p.status["Seccomp"], seccomp, "{name}");
    assert!(p.status["Uid"].split_whitespace().all(|u| u == "0"), "{name}: {}", p.status["Uid"]);
    assert_eq!(p.ns, agent.ns, "{name}: namespaces differ from the agent's");
    assert_eq!(p.root, agent.root, "{name}: root");
    assert_eq!(p.mounts, agent.mounts, "{name}: mount table");
    // No directory fds (a cwd or root outside could be reached through
    // one); files can only be the sandbox's own: the process's root is the
    // sandbox (checked above) and the agent passes none down.
    for (fd, (target, _)) in &p.fds {
        let is_dir = std::fs::metadata(format!("/proc/{}/fd/{fd}", p.pid)).is_ok_and(|m| m.is_dir());
        assert!(!is_dir, "{name}: fd {fd} is the directory {target}");
    }
    let keys: Vec<&str> = p.environ.iter().map(|v| v.split_once('=').map_or(v.as_str(), |(k, _)| k)).collect();
    for k in env {
        assert!(keys.contains(k), "{name}: {k} missing from {:?}", p.environ);
    }
    for k in &keys {
        assert!(env.contains(k) || extra.contains(k), "{name}: unexpected variable {k} in {:?}", p.environ);
    }
    assert_eq!(p.limits, agent.limits, "{name}: rlimits");
}

#[test]
fn posture_of_the_agent_shell_worker_and_commands() {
    require_root!("posture_of_the_agent_shell_worker_and_commands");
    let root = TestRoot::new("posture");
    let mut cfg = common::env_config(&root, common::debian(), "actor");
    cfg.env.push(("CONFIGURED".into(), "1".into()));
    let sb = Sandbox::create(&cfg, "posture").unwrap();
    sb.run("sleep 1000 >/dev/null 2>&1 &").unwrap();
    let agent_pid = sb.pid();
    let shell_pid = child(agent_pid, "/bin/bash");
    let worker_pid = child(agent_pid, "python3 -u -c");
    let host = host_ns();
    let host_root = dev_ino("/");

    // The agent: every namespace of its own, a root that is not ours, all
    // capabilities (it mounts on reset), no filter; its directory fds are
    // close-on-exec O_PATH handles (state dir, layers) and nothing else.
    let agent = posture(agent_pid);
    for n in NAMESPACES {
        assert_ne!(agent.ns[n], host[n], "agent: {n} namespace is the host's");
    }
    assert_ne!(agent.root, host_root);
    assert_eq!(agent.status["Seccomp"], "0");
    for (fd, (target, flags)) in &agent.fds {
        if *fd <= 2 {
            // Its stdio: /dev/null and the host's agent.log (append only).
            // Never inherited: every child gets stdio of its own.
            assert!(target == "/dev/null" || target.ends_with("/agent.log"), "agent: fd {fd} is {target}");
            continue;
        }
        assert!(flags & O_CLOEXEC != 0, "agent: fd {fd} ({target}) would be inherited by children");
        if std::fs::metadata(format!("/proc/{agent_pid}/fd/{fd}")).is_ok_and(|m| m.is_dir()) {
            assert!(flags & O_PATH != 0, "agent: fd {fd} ({target}) is a directory opened for reading");
        }
    }

    let base = ["PATH", "HOME", "CONFIGURED"];
    let shell = posture(shell_pid);
    assert_confined("shell", &shell, &agent, "2", &base, &[]);
    assert_eq!(shell.cwd, dev_ino(&format!("/proc/{agent_pid}/root/app")), "shell: cwd is the workdir");
    let mut shell_fds: Vec<i32> = shell.fds.keys().copied().collect();
    for _ in 0..100 {
        if shell_fds == [0, 1, 2, 3] {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
        shell_fds = posture(shell_pid).fds.keys().copied().collect();
    }
    assert_eq!(shell_fds, [0, 1, 2, 3], "shell: stdio and the signal pipe");
    assert!(shell.fds.values().all(|(t, _)| t.starts_with("pipe:")), "shell: {:?}", shell.fds);

    let worker = posture(worker_pid);
    assert_confined("worker", &worker, &agent, "2", &["PATH", "HOME", "CONFIGURED", "PYTHONDONTWRITEBYTECODE"], &[]);
    assert_eq!(worker.cwd, dev_ino(&format!("/proc/{agent_pid}/root/app")), "worker: cwd is the app dir");

    // A command: the shell's posture, passed down (bash adds PWD, SHLVL, _).
    // (The background child may not have exec'd sleep yet: wait for it.)
    let sleep_pid = child(shell_pid, "sleep 1000");
    let cmd = posture(sleep_pid);
    assert_confined("command", &cmd, &agent, "2", &base, &["PWD", "SHLVL", "_", "OLDPWD"]);
    assert_eq!(cmd.fds.keys().copied().collect::<Vec<_>>(), [0, 1, 2]);
    sb.delete().unwrap();

    // Without a filter the mode is 0, the rest is the same.
    let off = Sandbox::create(&SandboxConfig { seccomp: Seccomp::Off, ..root.config(common::debian()) }, "posture-off").unwrap();
    off.run("true").unwrap();
    let shell = posture(child(off.pid(), "/bin/bash"));
    assert_confined("shell (seccomp off)", &shell, &posture(off.pid()), "0", &["PATH", "HOME"], &[]);
    off.delete().unwrap();
    root.assert_clean();
}
