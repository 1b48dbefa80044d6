//! The persistent shell: state that carries over, exit codes, syntax
//! errors, `exit`, timeouts, binary and large output, streaming, stdin,
//! forged completion records.

mod common;

use std::time::{Duration, Instant};

use common::TestRoot;
use envbox::{Chunk, Error, RunOptions, Sandbox};

#[test]
fn state_persists_and_exit_codes_are_separate_from_output() {
    require_root!("state_persists_and_exit_codes_are_separate_from_output");
    let root = TestRoot::new("persist");
    let sb = Sandbox::create(&root.config(common::debian()), "persist").unwrap();
    let o = sb.run("cd /tmp && export FOO=bar && echo out && echo err >&2; (exit 3)").unwrap();
    assert_eq!((o.stdout.as_slice(), o.stderr.as_slice(), o.exit_code), (&b"out\n"[..], &b"err\n"[..], 3));
    let o = sb.run("pwd; echo $FOO; false").unwrap();
    assert_eq!(o.stdout_str(), "/tmp\nbar\n");
    assert_eq!(o.exit_code, 1);
    assert!(!o.shell_restarted);
    sb.delete().unwrap();
    root.assert_clean();
}

#[test]
fn syntax_errors_return_2_and_the_shell_keeps_working() {
    require_root!("syntax_errors_return_2_and_the_shell_keeps_working");
    let root = TestRoot::new("syntax");
    let sb = Sandbox::create(&root.config(common::debian()), "syntax").unwrap();
    sb.run("cd /var").unwrap();
    for bad in ["echo 'unterminated", "if then fi", "(", "echo \"x", "}"] {
        let o = sb.run_with_timeout(bad, Duration::from_secs(10)).unwrap();
        assert_eq!(o.exit_code, 2, "{bad:?}: {o:?}");
        // The next command runs normally, in the same shell.
        let o = sb.run("echo ok; pwd").unwrap();
        assert_eq!(o.stdout_str(), "ok\n/var\n", "after {bad:?}");
    }
    sb.delete().unwrap();
}

#[test]
fn exit_returns_its_code_and_the_next_command_gets_a_fresh_shell() {
    require_root!("exit_returns_its_code_and_the_next_command_gets_a_fresh_shell");
    let root = TestRoot::new("exit");
    let mut cfg = root.config(common::debian());
    cfg.workdir = "/srv/work".into();
    let sb = Sandbox::create(&cfg, "exit").unwrap();
    sb.run("cd /tmp; export X=1").unwrap();
    let o = sb.run("echo bye; exit 42").unwrap();
    assert_eq!((o.exit_code, o.stdout_str().as_ref(), o.shell_restarted), (42, "bye\n", true));
    let o = sb.run("pwd; echo \"[$X]\"").unwrap();
    assert_eq!(o.stdout_str(), "/srv/work\n[]\n", "a fresh shell starts in the workdir without the old exports");
    // exec replaces the shell; set -e kills it on the first failure.
    assert_eq!(sb.run("exec true").unwrap().exit_code, 0);
    assert_eq!(sb.run("set -e; false; echo unreachable").unwrap().exit_code, 1);
    assert_eq!(sb.run("echo still here").unwrap().stdout_str(), "still here\n");
    sb.delete().unwrap();
}

#[test]
fn timeout_kills_the_command_and_the_sandbox_stays_usable() {
    require_root!("timeout_kills_the_command_and_the_sandbox_stays_usable");
    let root = TestRoot::new("timeout");
    let sb = Sandbox::create(&root.config(common::debian()), "timeout").unwrap();
    for cmd in ["echo partial; sleep 30; echo never", "while :; do :; done", "sleep 1000 & sleep 1000; echo never"] {
        let t = Instant::now();
        match sb.run_with_timeout(cmd, Duration::from_millis(300)) {
            Err(Error::Timeout { stdout, .. }) => {
                assert!(!String::from_utf8_lossy(&stdout).contains("never"), "{cmd}: the rest of the list must not run");
                if cmd.starts_with("echo partial") {
                    assert_eq!(stdout, b"partial\n", "partial output is kept");
                }
            }
            other => panic!("{cmd}: expected a timeout, got {other:?}"),
        }
        assert!(t.elapsed() < Duration::from_secs(5), "{cmd}: the timeout must fire promptly");
        // Nothing of the command survives, and the next command works.
        let o = sb.run("ps -e -o comm= | grep -c sleep || true").unwrap();
        assert_eq!(o.stdout_str().trim(), "0", "{cmd}: processes left");
    }
    sb.delete().unwrap();
}

#[test]
fn binary_and_large_output_arrive_intact() {
    require_root!("binary_and_large_output_arrive_intact");
    let root = TestRoot::new("binary");
    let sb = Sandbox::create(&root.config(common::debian()), "binary").unwrap();
    let o = sb.run(r"printf '\377\376\000abc\r\033[2J\n'").unwrap();
    assert_eq!(o.stdout, b"\xff\xfe\x00abc\r\x1b[2J\n");
    // 40 MB on stdout and 8 MB on stderr at once: no pipe deadlock.
    let o = sb
        .run("head -c 8000000 /dev/zero | tr '\\0' e >&2 & head -c 40000000 /dev/urandom > /tmp/r; cat /tmp/r; wait; sha256sum /tmp/r")
        .unwrap();
    assert_eq!(o.stderr.len(), 8_000_000);
    assert!(o.stdout.len() > 40_000_000);
    let (data, sum_line) = o.stdout.split_at(40_000_000);
    let expect = String::from_utf8_lossy(sum_line).split_whitespace().next().unwrap().to_string();
    let check = sb.run("sha256sum /tmp/r | cut -d' ' -f1").unwrap();
    assert_eq!(check.stdout_str().trim(), expect);
    assert_eq!(sb.read_file("/tmp/r").unwrap(), data, "what came over the pipe equals the file");
    sb.delete().unwrap();
}

#[test]
fn output_is_capped_and_the_command_still_completes() {
    require_root!("output_is_capped_and_the_command_still_completes");
    let root = TestRoot::new("cap");
    let sb = Sandbox::create(&root.config(common::debian()), "cap").unwrap();
    let opts = RunOptions { max_output: 1 << 20, ..Default::default() };
    let o = sb.run_with("head -c 50000000 /dev/zero; echo done >&2", &opts).unwrap();
    assert_eq!(o.stdout.len(), 1 << 20);
    assert!(o.stdout_truncated && !o.stderr_truncated);
    assert_eq!(o.stderr, b"done\n");
    sb.delete().unwrap();
}

#[test]
fn streaming_delivers_output_before_the_command_ends() {
    require_root!("streaming_delivers_output_before_the_command_ends");
    let root = TestRoot::new("stream");
    let sb = Sandbox::create(&root.config(common::debian()), "stream").unwrap();
    let start = Instant::now();
    let mut first_chunk_at = None;
    let mut text = Vec::new();
    let o = sb
        .run_streaming("echo first; sleep 1; echo second", &RunOptions::default(), &mut |c| {
            if let Chunk::Stdout(b) = c {
                first_chunk_at.get_or_insert(start.elapsed());
                text.extend_from_slice(b);
            }
        })
        .unwrap();
    assert_eq!(o.exit_code, 0);
    assert_eq!(text, b"first\nsecond\n");
    assert!(first_chunk_at.unwrap() < Duration::from_millis(900), "first chunk came at {first_chunk_at:?}");
    sb.delete().unwrap();
}

#[test]
fn commands_cannot_read_later_input_nor_forge_completion() {
    require_root!("commands_cannot_read_later_input_nor_forge_completion");
    let root = TestRoot::new("forge");
    let sb = Sandbox::create(&root.config(common::debian()), "forge").unwrap();
    // stdin is /dev/null: these return at once instead of eating commands.
    for cmd in ["cat", "read l; echo \"[$l]\"", "head -c 100 /proc/self/fd/0"] {
        let o = sb.run_with_timeout(cmd, Duration::from_secs(5)).unwrap();
        assert!(o.stdout.len() < 10, "{cmd}: {:?}", o.stdout_str());
    }
    // Fake records on every fd a child process has; the real exit code wins.
    let forge = "for fd in $(ls /proc/self/fd); do echo \"forged 0\" >&$fd 2>/dev/null; done; \
                 python3 -c 'import os\nfor fd in range(3, 64):\n  try: os.write(fd, b\"x 0\\n\")\n  except OSError: pass'; \
                 echo '0123456789abcdef0123456789abcdef 0'; sleep 0.2; exit 7";
    let o = sb.run(forge).unwrap();
    assert_eq!(o.exit_code, 7, "{o:?}");
    assert!(o.stdout_str().contains("forged 0"), "forged text comes back as output");
    // The signal fd is not open in commands; the agent's fds are not reachable.
    let o = sb.run("ls /proc/self/fd | sort -n | tr '\\n' ' '; cat /proc/1/environ 2>&1 | head -c 200").unwrap();
    assert!(o.stdout_str().starts_with("0 1 2 3 "), "{}", o.stdout_str());
    assert!(!o.stdout_str().contains("4 5"), "{}", o.stdout_str());
    sb.delete().unwrap();
}

#[test]
fn busybox_images_get_sh() {
    require_root!("busybox_images_get_sh");
    let root = TestRoot::new("busybox");
    let sb = Sandbox::create(&root.config(common::busybox()), "bb").unwrap();
    let o = sb.run("cd /tmp && X=5 && echo $((X*2))").unwrap();
    assert_eq!(o.stdout_str(), "10\n");
    // The shell is busybox's sh. Seen from the host: the shell is not
    // dumpable, so its /proc/<pid>/exe is closed to the commands it runs.
    let shell = common::children(sb.pid())[0];
    assert_eq!(std::fs::read_link(format!("/proc/{shell}/exe")).unwrap(), std::path::Path::new("/bin/busybox"));
    assert!(sb.run("readlink /proc/$$/exe").unwrap().stdout.is_empty());
    assert_eq!(sb.run("pwd").unwrap().stdout_str(), "/tmp\n");
    assert_eq!(sb.run("exit 9").unwrap().exit_code, 9);
    sb.delete().unwrap();
    root.assert_clean();
}
