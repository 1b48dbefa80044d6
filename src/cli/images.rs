//! `envbox pull REF`, `envbox images [--json]`, `envbox rmi REF`: the image
//! store under the state root.

use std::path::Path;

use envbox::Result;

#[derive(clap::Args)]
pub struct PullArgs {
    /// A registry reference (python:3.12-slim, registry.example:5000/team/env:v2),
    /// oci:PATH[:TAG] or docker-archive:PATH.
    reference: String,
}

#[derive(clap::Args)]
pub struct ImagesArgs {
    /// A JSON list of {"id","references","layers","size","created"}.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct PushArgs {
    /// The store image to push: a reference (its registry and repository are the target)
    /// or sha256:ID.
    image: String,
    /// Push it under this reference instead (REGISTRY/REPOSITORY:TAG).
    target: Option<String>,
}

#[derive(clap::Args)]
pub struct RmiArgs {
    /// Image references to untag; layers no other image or running sandbox uses are deleted.
    #[arg(required = true)]
    references: Vec<String>,
}

fn short(id: &impl std::fmt::Display) -> String {
    let s = id.to_string();
    s.trim_start_matches("sha256:").chars().take(12).collect()
}

fn mib(bytes: u64) -> String {
    #[allow(clippy::cast_precision_loss)]
    let m = bytes as f64 / (1 << 20) as f64;
    format!("{m:.1} MiB")
}

pub fn pull(root: &Path, a: PullArgs) -> Result<i32> {
    let t0 = std::time::Instant::now();
    let img = envbox::images::pull(root, &a.reference)?;
    println!("{} {} ({} layers, {}) in {:.2}s", a.reference, short(&img.id), img.layers.len(), mib(img.size), t0.elapsed().as_secs_f64());
    Ok(0)
}

pub fn push(root: &Path, a: PushArgs) -> Result<i32> {
    let target = a.target.as_deref().unwrap_or(&a.image);
    print_push(target, &envbox::images::push(root, &a.image, a.target.as_deref())?);
    Ok(0)
}

/// One line on what a push did; the pushed reference with its digest on stdout.
pub fn print_push(target: &str, r: &envbox_rootfs::PushReport) {
    eprintln!(
        "pushed {target}: {} layers uploaded ({}), {} already there{}",
        r.layers_uploaded,
        mib(r.bytes_uploaded),
        r.layers_present,
        if r.config_rewritten { "; some layers were re-serialised, so the pushed image id differs from the local one" } else { "" }
    );
    println!("{target}@{}", r.manifest_digest);
}

pub fn list(root: &Path, a: ImagesArgs) -> Result<i32> {
    let images = envbox::images::list(root)?;
    if a.json {
        let rows: Vec<_> = images
            .iter()
            .map(|i| {
                serde_json::json!({
                    "id": i.id.to_string(),
                    "references": i.references.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "layers": i.layers.len(),
                    "size": i.size,
                    "created": i.created,
                })
            })
            .collect();
        super::print_json(&rows);
        return Ok(0);
    }
    println!("{:<48} {:<14} {:>6} {:>12}", "REFERENCE", "ID", "LAYERS", "SIZE");
    for i in images {
        for r in &i.references {
            println!("{:<48} {:<14} {:>6} {:>12}", r.to_string(), short(&i.id), i.layers.len(), mib(i.size));
        }
    }
    for (snap, tags) in envbox::images::snapshot::list(root) {
        for t in tags {
            println!("{:<48} {:<14} {:>6} {:>12}", t, format!("snap:{}", &snap.id[..8]), snap.layers.len(), format!("of {}", snap.source));
        }
    }
    Ok(0)
}

pub fn rmi(root: &Path, a: RmiArgs) -> Result<i32> {
    for r in &a.references {
        let report = envbox::images::remove(root, r)?;
        println!("{r}: untagged; removed {} layers and {} blobs no image or sandbox uses", report.layers_removed, report.blobs_removed);
    }
    Ok(0)
}
