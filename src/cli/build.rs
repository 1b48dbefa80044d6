//! `envbox build ENV_DIR --tag T [--build-arg K=V]... [--no-cache] [--push]`: an image
//! from a Dockerfile (or from an environment directory without one), without Docker.

use std::path::{Path, PathBuf};

use envbox::build::{BuildOptions, DEFAULT_BASE};
use envbox::config::{self, Network};
use envbox::Result;

#[derive(clap::Args)]
pub struct Args {
    /// The build context: an environment directory, with a Dockerfile or without one
    /// (then it is laid at /app over --base and its requirements.txt installed).
    dir: PathBuf,
    /// The reference to tag the image with, e.g. my-env:v1 or 127.0.0.1:5000/team/env:v1.
    #[arg(long, short = 't')]
    tag: String,
    /// The Dockerfile (default: DIR/Dockerfile).
    #[arg(long, short = 'f')]
    file: Option<PathBuf>,
    /// A value for an ARG of the Dockerfile (repeatable).
    #[arg(long = "build-arg", value_parser = config::parse_env)]
    build_args: Vec<(String, String)>,
    /// Build every step again instead of reusing cached steps.
    #[arg(long)]
    no_cache: bool,
    /// Push the image to its registry when built.
    #[arg(long)]
    push: bool,
    /// The base image of a directory without a Dockerfile.
    #[arg(long, default_value = DEFAULT_BASE)]
    base: String,
    /// The network of RUN steps: host (default, so package installs work), none or egress
    /// (a NAT route out that cannot reach the host's own services).
    #[arg(long, default_value = "host")]
    net: Network,
    /// Let FROM name images on this machine (dir:PATH, oci:PATH, docker-archive:PATH). Off by
    /// default: a Dockerfile from elsewhere could import any host path into its image.
    #[arg(long)]
    allow_local_sources: bool,
}

pub fn run(root: &Path, a: Args) -> Result<i32> {
    let mut opts = BuildOptions::new(root, &a.dir, &a.tag);
    opts.dockerfile = a.file.map(|f| config::absolute(&f));
    opts.build_args = a.build_args;
    opts.no_cache = a.no_cache;
    opts.base = Some(a.base);
    opts.network = a.net;
    opts.local_sources = a.allow_local_sources;
    let t0 = std::time::Instant::now();
    let built = envbox::build::build(&opts, &mut std::io::stderr())?;
    eprintln!(
        "built {} in {:.2}s ({} layer steps, {} from the cache)",
        a.tag,
        t0.elapsed().as_secs_f64(),
        built.layer_steps,
        built.cached_steps
    );
    if a.push {
        super::images::print_push(&a.tag, &envbox::images::push(root, &a.tag, None)?);
    }
    println!("{}", built.image.id);
    Ok(0)
}
