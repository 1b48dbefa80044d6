//! The runtime's use of the image store (crate `envbox-rootfs`): images
//! named by registry reference or local source, pulled or imported into
//! `<state root>/.images` once and shared by every sandbox on them; and
//! snapshots of sandboxes (see [`snapshot`]).

pub mod snapshot;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use envbox_rootfs::{Image, Lease, Limits, PullOptions, Reference, Source, Store};

use crate::error::{Error, Result};

/// The store's directory under a state root (beside the host view).
pub fn store_dir(root: &Path) -> PathBuf {
    root.join(".images")
}

/// Opens the image store of a state root.
pub fn store(root: &Path) -> Result<Store> {
    Store::open(&store_dir(root)).map_err(|e| image_error("opening the image store", &e))
}

fn image_error(spec: &str, e: &(dyn std::error::Error + 'static)) -> Error {
    Error::Image { spec: spec.to_string(), message: crate::error::chain(e) }
}

/// What an image spec names.
enum Spec {
    Registry(Reference),
    Local(Source),
    /// `sha256:<64 hex>`: a store image by id (as `envbox images` shows it), tagged or not.
    Id(envbox_rootfs::Digest),
}

fn parse(spec: &str) -> std::result::Result<Spec, String> {
    if let Some(hex) = spec.strip_prefix("sha256:") {
        // Docker refuses 64-hex repository names for the same reason: never a registry name.
        return envbox_rootfs::Digest::from_hex(hex).map(Spec::Id).map_err(|e| format!("not an image id: {e}"));
    }
    if spec.starts_with("oci:") || spec.starts_with("docker-archive:") || spec.starts_with("dir:") {
        Source::parse(spec).map(Spec::Local).map_err(|e| e.to_string())
    } else {
        Reference::parse(spec).map(Spec::Registry).map_err(|e| e.to_string())
    }
}

/// Checks an image spec without touching the network or the store.
pub fn check_spec(spec: &str) -> std::result::Result<(), String> {
    parse(spec).map(|_| ())
}

/// Default pull options: a progress bar on a terminal, registries named
/// in `ENVBOX_INSECURE_REGISTRIES` (comma-separated host:port) over http.
pub fn pull_options() -> PullOptions {
    let mut o = PullOptions::default();
    if let Ok(list) = std::env::var("ENVBOX_INSECURE_REGISTRIES") {
        o.insecure_registries = list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect();
    }
    o
}

/// Pulls a registry image (even when it is cached: a tag may have moved)
/// or imports a local source.
pub fn pull(root: &Path, spec: &str) -> Result<Image> {
    let store = store(root)?;
    match parse(spec).map_err(|m| Error::Image { spec: spec.to_string(), message: m })? {
        Spec::Registry(r) => store.pull(&r, &pull_options()).map_err(|e| image_error(spec, &e)),
        Spec::Local(src) => store.import(&src, None, &Limits::default()).map(|(img, _)| img).map_err(|e| image_error(spec, &e)),
        Spec::Id(id) => by_id(&store, spec, &id),
    }
}

fn by_id(store: &Store, spec: &str, id: &envbox_rootfs::Digest) -> Result<Image> {
    store.get_by_id(id).map_err(|e| image_error(spec, &e))?.ok_or_else(|| Error::Image {
        spec: spec.to_string(),
        message: "no image with this id in the store (`envbox images` lists them)".into(),
    })
}

/// What a sandbox is created on: layers and config, from the store or a
/// snapshot.
pub struct Resolved {
    /// Layer directories, bottom to top.
    pub layers: Vec<PathBuf>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    /// Entrypoint followed by cmd.
    pub command: Vec<String>,
    /// The image's `User` (`USER[:GROUP]`), if it names one.
    pub user: Option<String>,
    /// The store image (of a snapshot: the one it was taken on), if any.
    pub image_id: Option<String>,
    /// A lease on the image or snapshot: a shared flock whose fd the
    /// sandbox's PID 1 holds, so garbage collection leaves the layers alone.
    pub lease: OwnedFd,
}

/// The image for a sandbox: a snapshot of that tag, else the store image
/// (pulled or imported when missing).
pub fn resolve(root: &Path, spec: &str) -> Result<Resolved> {
    if let Some(snap) = snapshot::find(root, spec)? {
        return snap.resolved(root);
    }
    let store = store(root)?;
    let image = match parse(spec).map_err(|m| Error::Image { spec: spec.to_string(), message: m })? {
        Spec::Registry(r) => match store.get(&r).map_err(|e| image_error(spec, &e))? {
            Some(img) => img,
            None => store.pull(&r, &pull_options()).map_err(|e| image_error(spec, &e))?,
        },
        Spec::Local(src) => store.import(&src, None, &Limits::default()).map(|(img, _)| img).map_err(|e| image_error(spec, &e))?,
        Spec::Id(id) => by_id(&store, spec, &id)?,
    };
    let lease = lease_fd(&store.lease(&image.id).map_err(|e| image_error(spec, &e))?).map_err(|e| image_error(spec, &e))?;
    Ok(Resolved {
        layers: image.layers.clone(),
        env: image.config.env_pairs(),
        working_dir: image.config.working_dir.clone(),
        command: image.config.command(),
        user: image.config.user.clone(),
        image_id: Some(image.id.to_string()),
        lease,
    })
}

fn lease_fd(lease: &Lease) -> std::io::Result<OwnedFd> {
    std::os::fd::AsFd::as_fd(lease).try_clone_to_owned()
}

/// A regular file of an image (pulled or imported when missing, like `--image`) as its
/// sandboxes would see it; `None` when it has no such file. At most 16 MiB.
pub fn read_file(root: &Path, spec: &str, path: &str) -> Result<Option<Vec<u8>>> {
    let r = resolve(root, spec)?;
    Ok(envbox_rootfs::image::read_layered_file(&r.layers, path, 16 << 20))
}

/// Untags `spec` and removes the layers nothing refers to any more (no
/// tag, and no lease: images of running sandboxes stay).
pub fn remove(root: &Path, spec: &str) -> Result<envbox_rootfs::GcReport> {
    let store = store(root)?;
    if !snapshot::untag(root, spec)? {
        let r = Reference::parse(spec).map_err(|e| image_error(spec, &e))?;
        store.remove(&r).map_err(|e| image_error(spec, &e))?;
    }
    gc(root)
}

/// Removes unused snapshots, then the store layers that no tag, lease or
/// remaining snapshot refers to.
pub fn gc(root: &Path) -> Result<envbox_rootfs::GcReport> {
    let keep = snapshot::collect(root)?;
    let mut keep: Vec<envbox_rootfs::Digest> = keep.iter().filter_map(|id| id.parse().ok()).collect();
    // Step images of the build cache, while an image built through them is tagged.
    let tagged = list(root)?.into_iter().map(|i| i.id).collect();
    keep.extend(crate::build::cache::keep(root, &tagged));
    crate::build::collect(root);
    let report = store(root)?.gc(&keep).map_err(|e| image_error("collecting unused layers", &e))?;
    // btrfs bases of images whose layers just went.
    crate::fs::btrfs::collect(root);
    Ok(report)
}

/// Every tagged image of the store.
pub fn list(root: &Path) -> Result<Vec<Image>> {
    store(root)?.list().map_err(|e| image_error("listing images", &e))
}

/// Pushes the store image `spec` names to `target`'s registry and repository under its
/// tag (`target` defaults to `spec`). Registries named in `ENVBOX_INSECURE_REGISTRIES`
/// (and loopback ones) may be plain http; credentials come from ~/.docker/config.json.
pub fn push(root: &Path, spec: &str, target: Option<&str>) -> Result<envbox_rootfs::PushReport> {
    let store = store(root)?;
    let image = match parse(spec).map_err(|m| Error::Image { spec: spec.to_string(), message: m })? {
        Spec::Registry(r) => store.get(&r).map_err(|e| image_error(spec, &e))?.ok_or_else(|| Error::Image {
            spec: spec.to_string(),
            message: "not in the store: build or pull it first (`envbox images` lists them)".into(),
        })?,
        Spec::Id(id) => by_id(&store, spec, &id)?,
        Spec::Local(_) => {
            return Err(Error::Image { spec: spec.to_string(), message: "push takes a store image (a reference or sha256:ID)".into() })
        }
    };
    let target_spec = target.unwrap_or(spec);
    let target = Reference::parse(target_spec).map_err(|e| image_error(target_spec, &e))?;
    store.push(&image, &target, &pull_options()).map_err(|e| image_error(target_spec, &e))
}
