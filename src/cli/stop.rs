//! `envbox stop NAME`: delete an environment's sandboxes (every replica).

use std::path::Path;

use envbox::{Result, Sandbox};

#[derive(clap::Args)]
pub struct Args {
    /// A sandbox or a group of replicas (the NAME given to `envbox run`).
    name: String,
}

pub fn run(root: &Path, a: Args) -> Result<i32> {
    let members = envbox::sandbox::members(root, &a.name)?;
    if members.is_empty() {
        eprintln!("envbox: no environment named {:?} is running; `envbox ps` lists the sandboxes", a.name);
        return Ok(super::EXIT_FAILURE);
    }
    for m in members {
        match Sandbox::open(root, &m.name) {
            Ok(sb) => sb.delete_and_wait()?,
            // Dead: the garbage collection at start-up removed it already.
            Err(envbox::Error::Dead { .. } | envbox::Error::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        println!("{}", m.name);
    }
    Ok(0)
}
