//! The two ways an image gets into the store, each one straight sequence:
//! resolve the manifest and config from a source, then let the store install the layers.

use crate::error::Result;
use crate::image::Image;
use crate::oci::{self, Descriptor};
use crate::reference::Reference;
use crate::registry::{PullOptions, Registry};
use crate::source::{self, Source};
use crate::store::{InstallReport, ResolvedImage, Store};
use crate::unpack::Limits;

impl Store {
    /// Pulls `reference` from its registry (see [`PullOptions`]) unless the store has it
    /// already (a tag is re-resolved every time, a digest reference is not), and tags it.
    pub fn pull(&self, reference: &Reference, opts: &PullOptions) -> Result<Image> {
        self.pull_with_report(reference, opts).map(|(i, _)| i)
    }

    /// [`Store::pull`], also saying how many layers were unpacked or reused.
    pub fn pull_with_report(&self, reference: &Reference, opts: &PullOptions) -> Result<(Image, InstallReport)> {
        if reference.digest().is_some() {
            if let Some(img) = self.get(reference)? {
                let n = img.layers.len();
                return Ok((img, InstallReport { layers_reused: n, ..InstallReport::default() }));
            }
        }
        // 1. connect: scheme, credentials, auth handshake
        let reg = Registry::connect(reference, opts)?;
        // 2. manifest (platform picked from an index), verified
        let platform = opts.platform.clone().unwrap_or_else(oci::host_platform);
        let (manifest_digest, manifest_bytes, manifest) = reg.resolve(&platform)?;
        // 3. config, verified (small, so in memory)
        let config_bytes = reg.small_blob(&manifest.config)?;
        let locators = manifest.layers.iter().map(|l| format!("{}@{}", reference.repository(), l.digest)).collect();
        let resolved = ResolvedImage {
            manifest_digest: Some(manifest_digest),
            manifest_bytes: Some(manifest_bytes),
            config_digest: manifest.config.digest.clone(),
            config_bytes,
            layers: manifest.layers.into_iter().map(Some::<Descriptor>).collect(),
            locators,
        };
        // 4. layers: download (resumable, verified) and unpack, in parallel, each once
        self.install(Some(reference), resolved, &reg, &opts.limits, opts.parallel)
    }

    /// Imports a local source and tags it `tag` (default: the tag a docker-archive records,
    /// else [`Source::default_reference`]).
    pub fn import(&self, source: &Source, tag: Option<&Reference>, limits: &Limits) -> Result<(Image, InstallReport)> {
        let host = oci::host_platform();
        match source {
            Source::OciLayout { path, tag: t } => {
                let (img, blobs) = source::resolve_oci(path, t.as_deref(), &host)?;
                let name = tag.cloned().unwrap_or_else(|| source.default_reference());
                self.install(Some(&name), img, &blobs, limits, 4)
            }
            Source::DockerArchive { path } => {
                let (img, blobs, recorded) = source::resolve_docker_archive(path)?;
                let name = tag.cloned().or(recorded).unwrap_or_else(|| source.default_reference());
                self.install(Some(&name), img, &blobs, limits, 4)
            }
            Source::RootfsDir { path } => {
                let scratch = self.temp_dir("import")?;
                let res = source::resolve_rootfs_dir(path, &scratch).and_then(|(img, blobs)| {
                    let name = tag.cloned().unwrap_or_else(|| source.default_reference());
                    self.install(Some(&name), img, &blobs, limits, 1)
                });
                let _ = std::fs::remove_dir_all(&scratch);
                res
            }
        }
    }
}
