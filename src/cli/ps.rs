//! `envbox ps [--json]`

use std::path::Path;

use envbox::Result;

#[derive(clap::Args)]
pub struct Args {
    /// A JSON list of {"name","state","pid","image","created"}.
    #[arg(long)]
    json: bool,
}

pub fn run(root: &Path, a: Args) -> Result<i32> {
    let rows = envbox::list(root)?;
    if a.json {
        super::print_json(&rows);
        return Ok(0);
    }
    println!("{:<24} {:<8} {:>8}  {:<20}  IMAGE", "NAME", "STATE", "PID", "CREATED");
    for r in rows {
        println!("{:<24} {:<8} {:>8}  {:<20}  {}", r.name, r.state, r.pid, r.created, r.image);
    }
    Ok(0)
}
