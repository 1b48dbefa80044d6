//! What the store hands out: an image as a stack of read-only layer directories plus the
//! run configuration from its image config.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::oci::RunConfig;
use crate::reference::Reference;

/// An image in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The image id: the digest of its config document (as `docker images --no-trunc` shows).
    pub id: Digest,
    /// The digest of the manifest it was pulled or imported with (`None` for a rootfs dir).
    pub manifest_digest: Option<Digest>,
    /// The references (tags) that name it in this store, sorted.
    pub references: Vec<Reference>,
    /// Unpacked layer directories, bottom → top: overlayfs wants them *reversed* in
    /// `lowerdir=` (top first). Read-only: never write into them.
    pub layers: Vec<PathBuf>,
    /// The layers' diff_ids (sha256 of the uncompressed tar), same order as `layers`.
    pub diff_ids: Vec<Digest>,
    pub config: ImageConfig,
    /// Bytes of the regular files in its layers (what it takes on disk, shared layers included).
    pub size: u64,
    pub created: Option<String>,
    pub architecture: String,
    pub os: String,
}

impl Image {
    /// `lowerdir=` value for overlayfs: the layers top first, joined by `:`.
    /// (Layer paths in the store never contain `:` or `,`.)
    pub fn overlay_lowerdir(&self) -> String {
        let parts: Vec<String> = self.layers.iter().rev().map(|p| p.display().to_string()).collect();
        parts.join(":")
    }
}

/// The parts of an image config that a sandbox created from the image takes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// `KEY=value` strings, in order.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `user`, `uid`, `user:group` or `uid:gid` as written in the image.
    pub user: Option<String>,
    pub labels: BTreeMap<String, String>,
}

impl ImageConfig {
    pub(crate) fn from_run_config(c: Option<&RunConfig>) -> ImageConfig {
        let Some(c) = c else { return ImageConfig::default() };
        ImageConfig {
            env: c.env.clone().unwrap_or_default(),
            working_dir: c.working_dir.clone().filter(|w| !w.is_empty()),
            entrypoint: c.entrypoint.clone().unwrap_or_default(),
            cmd: c.cmd.clone().unwrap_or_default(),
            user: c.user.clone().filter(|u| !u.is_empty()),
            labels: c.labels.clone().unwrap_or_default(),
        }
    }

    /// `env` split into (key, value); entries without `=` get an empty value.
    pub fn env_pairs(&self) -> Vec<(String, String)> {
        self.env
            .iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (kv.clone(), String::new()),
            })
            .collect()
    }

    /// What `docker run IMAGE` would execute: entrypoint followed by cmd.
    pub fn command(&self) -> Vec<String> {
        self.entrypoint.iter().chain(self.cmd.iter()).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_pairs_and_command() {
        let c = ImageConfig {
            env: vec!["PATH=/usr/bin:/bin".into(), "EMPTY=".into(), "BARE".into(), "EQ=a=b".into()],
            entrypoint: vec!["/bin/sh".into(), "-c".into()],
            cmd: vec!["echo hi".into()],
            ..ImageConfig::default()
        };
        assert_eq!(
            c.env_pairs(),
            vec![
                ("PATH".into(), "/usr/bin:/bin".into()),
                ("EMPTY".into(), String::new()),
                ("BARE".into(), String::new()),
                ("EQ".into(), "a=b".into())
            ]
        );
        assert_eq!(c.command(), vec!["/bin/sh", "-c", "echo hi"]);
    }
}
