//! `envbox logs NAME [--follow]`: what the environment (its worker or
//! server) printed.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use envbox::Result;

#[derive(clap::Args)]
pub struct Args {
    /// A sandbox, or a group (its first replica).
    name: String,
    /// Keep printing what is written, until the sandbox goes away.
    #[arg(long, short)]
    follow: bool,
}

pub fn run(root: &Path, a: Args) -> Result<i32> {
    let members = envbox::sandbox::members(root, &a.name)?;
    let Some(first) = members.first() else {
        eprintln!("envbox: no sandbox named {:?}; `envbox ps` lists the sandboxes", a.name);
        return Ok(super::EXIT_FAILURE);
    };
    let path = root.join(&first.name).join(envbox::sandbox::state::ENV_LOG_FILE);
    let io = |source| envbox::Error::Io { step: "reading the environment log", name: first.name.clone(), source };
    let mut file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("envbox: sandbox {:?} serves no environment, so it has no environment log", first.name);
            return Ok(super::EXIT_FAILURE);
        }
        Err(e) => return Err(io(e)),
    };
    let mut out = std::io::stdout().lock();
    let mut buf = vec![0u8; 64 * 1024];
    let mut pos = 0u64;
    loop {
        loop {
            let n = file.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            pos += n as u64;
            if out.write_all(&buf[..n]).is_err() {
                return Ok(0); // stdout closed (| head)
            }
        }
        let _ = out.flush();
        if !a.follow {
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(200));
        // Truncated at its cap: start again from the top.
        if file.metadata().map(|m| m.len() < pos).unwrap_or(false) {
            pos = file.seek(SeekFrom::Start(0)).map_err(io)?;
        }
        if !envbox::sandbox::members(root, &first.name)?.iter().any(|m| m.state == "running") {
            return Ok(0);
        }
    }
}
