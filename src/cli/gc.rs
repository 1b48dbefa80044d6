//! `envbox gc [--json]`: dead sandboxes and orphan cgroups (also done at
//! every start), then unused snapshots and image layers.

use std::path::Path;

use envbox::Result;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    json: bool,
}

pub fn run(root: &Path, a: Args) -> Result<i32> {
    let report = envbox::collect_garbage(root)?;
    // Layers no tag, snapshot or running sandbox uses (the store's own
    // lock waits for pulls in progress).
    let images = if envbox::images::store_dir(root).exists() { Some(envbox::images::gc(root)?) } else { None };
    let (layers, blobs) = images.as_ref().map_or((0, 0), |r| (r.layers_removed, r.blobs_removed));
    if a.json {
        super::print_json(&serde_json::json!({
            "sandboxes": report.sandboxes,
            "cgroups": report.cgroups,
            "layers": layers,
            "blobs": blobs,
        }));
    } else {
        println!(
            "removed {} dead sandbox(es), {} orphan cgroup(s), {layers} unused layer(s), {blobs} blob(s)",
            report.sandboxes.len(),
            report.cgroups.len()
        );
    }
    Ok(0)
}
