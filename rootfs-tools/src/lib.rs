//! Images for envbox, without a Docker daemon: references, a registry v2 client, local
//! sources (OCI layout, docker-archive, rootfs dir), safe layer unpacking, and the
//! content-addressed store whose layer directories overlayfs stacks as lower dirs.
//!
//! # API for the runtime
//!
//! ```no_run
//! use std::path::Path;
//! use envbox_rootfs::{Reference, Source, Store, PullOptions, Limits};
//!
//! # fn main() -> envbox_rootfs::Result<()> {
//! // The store lives under the state root, e.g. <root>/.images (shared by all sandboxes).
//! let store = Store::open(Path::new("/run/envbox/.images"))?;
//!
//! // Pull (anonymous or bearer-token auth; credentials from ~/.docker/config.json if any).
//! let r = Reference::parse("python:3.12-slim")?;
//! let img = store.pull(&r, &PullOptions::default())?;
//!
//! // Or import a local source: oci:PATH[:TAG], docker-archive:PATH, dir:PATH.
//! let src = Source::parse("oci:/srv/layouts/env:v1")?;
//! let (img2, _report) = store.import(&src, None, &Limits::default())?;
//!
//! // Use: layers bottom -> top, ready as overlay lower dirs (img.overlay_lowerdir()),
//! // and the config to apply: env, working_dir, entrypoint/cmd, user, labels.
//! for layer in &img.layers { println!("{}", layer.display()); }
//! let _ = (&img.config.env, &img.config.working_dir, img.config.command(), &img.config.user);
//! let _uid_gid = img.user_ids()?; // `User` resolved through the image's /etc/passwd, /etc/group
//!
//! // Push an image of the store to a registry (same options as a pull; a tag is needed).
//! let report = store.push(&img, &Reference::parse("registry.example:5000/team/env:v1")?, &PullOptions::default())?;
//! println!("pushed {} ({} layers uploaded)", report.manifest_digest, report.layers_uploaded);
//!
//! // A lease keeps an image's layers from gc while a sandbox uses them.
//! let _lease = store.lease(&img.id)?;
//!
//! // Look up without pulling, list, untag, reclaim space (also keeping the ids in `keep`).
//! let _maybe = store.get(&r)?;
//! let _all = store.list()?;
//! store.remove(&r)?;
//! store.gc(&[img2.id.clone()])?;
//! # Ok(()) }
//! ```
//!
//! Concurrency: any number of threads and processes may pull and import into one store at
//! once: each layer is unpacked exactly once under a per-layer `flock` and published by
//! `rename`; `gc` takes the store lock exclusively and waits for running pulls.
//!
//! Modules: [`reference`](mod@reference) (names), [`registry`] (HTTP API v2, pull and push), [`source`] (local sources),
//! [`unpack`] (hostile-tar-safe unpacking), [`store`] (layout, locking, gc), [`image`]
//! (what callers get), [`oci`] (spec documents), [`fixtures`] (test root filesystems).

pub mod digest;
pub mod error;
pub mod fixtures;
pub mod image;
pub mod layer;
pub mod oci;
mod pull;
mod push;
pub mod reference;
pub mod registry;
pub mod source;
pub mod store;
pub mod unpack;
mod work;

pub use digest::Digest;
pub use error::{ImageError, Result};
pub use image::{Image, ImageConfig};
pub use layer::{write_layer_tar, LayerTarStats};
pub use oci::Platform;
pub use push::{PushError, PushReport};
pub use reference::{Reference, ReferenceError};
pub use registry::PullOptions;
pub use source::Source;
pub use store::{GcReport, InstallReport, Lease, Store};
pub use unpack::Limits;
