//! `envbox snapshot NAME --tag T` and `envbox fork NAME --count K [--prefix P]`.

use std::path::Path;

use envbox::{Result, Sandbox};

#[derive(clap::Args)]
pub struct SnapshotArgs {
    name: String,
    /// The image name it gets (`envbox create --image T` starts from it).
    #[arg(long)]
    tag: String,
}

#[derive(clap::Args)]
pub struct ForkArgs {
    name: String,
    /// How many sandboxes to start from its current filesystem.
    #[arg(long, default_value_t = 1)]
    count: usize,
    /// Their names are PREFIX-0 ... PREFIX-(K-1); default: NAME-fork.
    #[arg(long)]
    prefix: Option<String>,
}

pub fn snapshot(root: &Path, a: SnapshotArgs) -> Result<i32> {
    let sb = Sandbox::open(root, &a.name)?;
    let t0 = std::time::Instant::now();
    let id = sb.snapshot(Some(&a.tag))?;
    println!("{} ({id}) in {:.2} ms", a.tag, t0.elapsed().as_secs_f64() * 1000.0);
    Ok(0)
}

pub fn fork(root: &Path, a: ForkArgs) -> Result<i32> {
    if a.count == 0 || a.count > 1024 {
        eprintln!("envbox: --count must be 1 to 1024");
        return Ok(super::EXIT_FAILURE);
    }
    let prefix = a.prefix.unwrap_or_else(|| format!("{}-fork", a.name));
    envbox::config::validate_name(&format!("{prefix}-{}", a.count - 1))?;
    let sb = Sandbox::open(root, &a.name)?;
    let t0 = std::time::Instant::now();
    let children = sb.fork(a.count, &prefix, true)?;
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    for c in &children {
        println!("{}", c.name());
    }
    eprintln!("forked {} sandboxes from {} in {ms:.1} ms", children.len(), a.name);
    Ok(0)
}
