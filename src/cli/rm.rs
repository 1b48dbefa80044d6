//! `envbox rm NAME [--force]`

use std::path::Path;

use envbox::{Error, Result, Sandbox};

#[derive(clap::Args)]
pub struct Args {
    /// Sandboxes to delete.
    #[arg(required = true)]
    names: Vec<String>,
    /// Succeed when a sandbox does not exist, and remove what a dead one left.
    #[arg(long, short)]
    force: bool,
}

pub fn run(root: &Path, a: Args) -> Result<i32> {
    let mut code = 0;
    for name in &a.names {
        match Sandbox::open(root, name) {
            Ok(sb) => sb.delete_and_wait()?,
            Err(Error::NotFound { .. }) if a.force => {}
            Err(Error::Dead { .. }) => {
                // Garbage collection at start-up removes dead sandboxes; one
                // that is still here is locked by a process at work on it.
                envbox::collect_garbage(root)?;
            }
            Err(e) => {
                eprintln!("envbox: {}", envbox::error::chain(&e));
                code = super::EXIT_FAILURE;
            }
        }
    }
    Ok(code)
}
