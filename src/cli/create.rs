//! `envbox create NAME [options]`

use std::path::Path;

use envbox::config::Image;
use envbox::{Result, Sandbox};

#[derive(clap::Args)]
pub struct Args {
    /// Sandbox name: [A-Za-z0-9][A-Za-z0-9_.-]{0,63}.
    name: String,
    /// Image: a registry reference (python:3.12-slim, pulled when missing), oci:PATH[:TAG],
    /// docker-archive:PATH, or a root filesystem directory; default: the host's system, read-only.
    #[arg(long)]
    image: Option<String>,
    /// Working directory inside the sandbox (created if missing).
    #[arg(long, default_value = "/")]
    workdir: String,
    #[command(flatten)]
    sandbox: super::sandbox_flags::SandboxFlags,
    /// Print {"name","pid"} as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(root: &Path, a: Args) -> Result<i32> {
    let cfg = a.sandbox.config(root, a.image.as_deref().map(Image::parse).unwrap_or(Image::Host), a.workdir);
    let sb = Sandbox::create(&cfg, &a.name)?;
    if a.json {
        super::print_json(&serde_json::json!({ "name": sb.name(), "pid": sb.pid() }));
    } else {
        println!("{}", sb.name());
    }
    Ok(0)
}
