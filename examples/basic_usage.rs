//! Create a sandbox on the host's own system (nothing to download), run
//! commands in its persistent shell, move files, reset it, delete it.
//!
//!     cargo build --release && sudo ./target/release/examples/basic_usage

use std::time::Duration;

use envbox::{Error, Sandbox, SandboxConfig};

fn main() -> envbox::Result<()> {
    let mut cfg = SandboxConfig::default(); // the embedded default image
    cfg.limits.memory_bytes = Some(512 << 20);
    cfg.limits.pids = Some(256);
    let sb = Sandbox::create(&cfg, "example-basic")?;

    let out = sb.run("python3 -V && cd /tmp && export STEP=1")?;
    print!("{}", out.stdout_str());
    let out = sb.run("pwd; echo step=$STEP")?; // cwd and exports persist
    print!("{}", out.stdout_str());

    sb.write_file("/workspace/task.txt", b"solve me")?;
    println!("read back: {}", String::from_utf8_lossy(&sb.read_file("/workspace/task.txt")?));

    match sb.run_with_timeout("sleep 100", Duration::from_millis(200)) {
        Err(Error::Timeout { seconds, .. }) => println!("timed out after {seconds}s, sandbox still usable"),
        other => println!("unexpected: {other:?}"),
    }

    sb.reset()?; // every change is gone, a fresh shell is ready
    let out = sb.run("ls /workspace 2>&1; pwd")?;
    print!("after reset: {}", out.stdout_str());
    sb.delete() // dropping `sb` would do the same
}
