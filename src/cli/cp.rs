//! `envbox cp SRC DST`, with `NAME:/path` naming a path in a sandbox.

use std::path::{Path, PathBuf};

use envbox::config::validate_name;
use envbox::{Result, Sandbox};

#[derive(clap::Args)]
pub struct Args {
    /// Source: a host path or NAME:/path.
    src: String,
    /// Destination: a host path or NAME:/path.
    dst: String,
}

/// `NAME:/path` → (NAME, /path); anything else is a host path.
fn split(arg: &str) -> Option<(&str, &str)> {
    let (name, path) = arg.split_once(':')?;
    (validate_name(name).is_ok() && path.starts_with('/')).then_some((name, path))
}

pub fn run(root: &Path, a: Args) -> Result<i32> {
    match (split(&a.src), split(&a.dst)) {
        (Some((name, path)), None) => Sandbox::open(root, name)?.copy_from(path, PathBuf::from(&a.dst))?,
        (None, Some((name, path))) => Sandbox::open(root, name)?.copy_to(PathBuf::from(&a.src), path)?,
        (Some(_), Some(_)) => {
            eprintln!("envbox: copying between two sandboxes is not supported; copy to the host first");
            return Ok(super::EXIT_FAILURE);
        }
        (None, None) => {
            eprintln!("envbox: one side of cp must be NAME:/path (a sandbox path)");
            return Ok(super::EXIT_FAILURE);
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn sandbox_paths_are_recognised() {
        assert_eq!(split("demo:/etc/hosts"), Some(("demo", "/etc/hosts")));
        assert_eq!(split("/tmp/x"), None);
        assert_eq!(split("./a:b"), None);
        assert_eq!(split("demo:relative"), None);
    }
}
