//! `envbox gc [--json]`

use std::path::Path;

use envbox::Result;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    json: bool,
}

pub fn run(root: &Path, a: Args) -> Result<i32> {
    let report = envbox::collect_garbage(root)?;
    if a.json {
        super::print_json(&report);
    } else {
        println!("removed {} dead sandbox(es), {} orphan cgroup(s)", report.sandboxes.len(), report.cgroups.len());
    }
    Ok(0)
}
