//! `envbox exec NAME [--timeout SECS] 'command'`: output passes through as it
//! comes; the exit code is the command's.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use envbox::{Chunk, Error, Result, RunOptions, Sandbox};

#[derive(clap::Args)]
pub struct Args {
    name: String,
    /// Kill the command after this many seconds (exit code 124).
    #[arg(long, value_parser = super::parse_timeout)]
    timeout: Option<Duration>,
    /// The shell command.
    command: String,
}

/// Exit code of a command that timed out (as coreutils `timeout`).
const EXIT_TIMEOUT: i32 = 124;

pub fn run(root: &Path, a: Args) -> Result<i32> {
    let sb = Sandbox::open(root, &a.name)?;
    let timeout = a.timeout;
    let opts = RunOptions { timeout, ..Default::default() };
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let mut out = stdout.lock();
    let mut err = stderr.lock();
    let result = sb.run_streaming(&a.command, &opts, &mut |c| {
        let _ = match c {
            Chunk::Stdout(b) => out.write_all(b).and_then(|()| out.flush()),
            Chunk::Stderr(b) => err.write_all(b).and_then(|()| err.flush()),
        };
    });
    match result {
        Ok(o) => {
            if o.oom_killed {
                let limit = sb.config().limits.memory_bytes.map(|b| format!(" ({} MiB)", b >> 20)).unwrap_or_default();
                eprintln!("envbox: the command ran out of memory: the kernel killed it at the sandbox's memory limit{limit}");
            }
            Ok(o.exit_code)
        }
        Err(Error::Timeout { seconds, .. }) => {
            eprintln!("envbox: the command timed out after {seconds}s and was killed; the sandbox is still usable");
            Ok(EXIT_TIMEOUT)
        }
        Err(e) => Err(e),
    }
}
