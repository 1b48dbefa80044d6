//! The zygote that forks this process's agents. Alone in its test binary:
//! it kills the zygote, which a create running beside it in the same
//! process would see fail.

mod common;

use common::TestRoot;
use envbox::Sandbox;

#[test]
fn agents_are_forked_by_a_zygote_that_a_crash_replaces() {
    require_root!("agents_are_forked_by_a_zygote_that_a_crash_replaces");
    let root = TestRoot::new("zygote");
    let cfg = root.config(common::debian());
    let me = i32::try_from(std::process::id()).unwrap();
    let ppid = |pid: i32| -> i32 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        stat.rsplit(") ").next().unwrap().split(' ').nth(1).unwrap().parse().unwrap()
    };
    let a = Sandbox::create(&cfg, "a").unwrap();
    let b = Sandbox::create(&cfg, "b").unwrap();
    let zygote = envbox::sandbox::zygote::pid().expect("a library create starts a zygote");
    assert_eq!(ppid(zygote), me, "the zygote is this process's child");
    assert_eq!((ppid(a.pid()), ppid(b.pid())), (zygote, zygote), "agents are the zygote's children");
    // The zygote runs at a higher priority; its agents (and so the
    // sandboxes' processes) at ours.
    let nice = |pid: i32| -> i32 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        stat.rsplit(") ").next().unwrap().split(' ').nth(16).unwrap().parse().unwrap()
    };
    assert_eq!(nice(zygote), (nice(me) - 10).max(-20));
    a.run("true").unwrap();
    assert_eq!((nice(a.pid()), nice(common::children(a.pid())[0])), (nice(me), nice(me)));
    // A forked agent holds exactly the fds an exec'd one does: none of the
    // zygote's (its socket, its signalfd, its namespace handle).
    let fds = |pid: i32| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .map(|t| t.display().to_string())
            .collect();
        v.sort();
        v
    };
    assert!(!fds(a.pid()).iter().any(|t| t.contains("signalfd") || t.contains("pid:[")), "{:?}", fds(a.pid()));
    // Each agent is PID 1 of its own PID namespace, and the zygote's
    // children after it are not nested inside it.
    let pidns = |pid: i32| std::fs::read_link(format!("/proc/{pid}/ns/pid")).unwrap();
    assert_ne!(pidns(a.pid()), pidns(b.pid()));
    assert_eq!(pidns(zygote), pidns(me));
    // The agent is PID 1 there, and its shell lives in that namespace too.
    assert_eq!(a.run("cut -d' ' -f1 /proc/1/stat").unwrap().stdout_str(), "1\n");
    let shell = common::children(a.pid())[0];
    assert_eq!(pidns(shell), pidns(a.pid()), "the shell must be in the agent's PID namespace");
    // kill -9 of the zygote (our own child, by pid): running sandboxes do
    // not notice, and the next create starts a new zygote.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(zygote), nix::sys::signal::Signal::SIGKILL).unwrap();
    let c = Sandbox::create(&cfg, "c").unwrap();
    let second = envbox::sandbox::zygote::pid().unwrap();
    assert_ne!(second, zygote);
    assert_eq!(ppid(c.pid()), second);
    for sb in [&a, &b, &c] {
        assert_eq!(sb.run("echo ok").unwrap().stdout_str(), "ok\n");
    }
    for sb in [a, b, c] {
        sb.delete_and_wait().unwrap();
    }
    root.assert_clean();
    // The old zygote was reaped, and the new one keeps no agent.
    common::assert_no_child_but_the_zygote();
}
