//! `envbox reset NAME`

use std::path::Path;

use envbox::{Result, Sandbox};

#[derive(clap::Args)]
pub struct Args {
    name: String,
}

pub fn run(root: &Path, a: Args) -> Result<i32> {
    Sandbox::open(root, &a.name)?.reset()?;
    Ok(0)
}
