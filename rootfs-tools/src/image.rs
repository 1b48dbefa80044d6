//! What the store hands out: an image as a stack of read-only layer directories plus the
//! run configuration from its image config.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

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

/// Why the image's `User` could not be turned into ids.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    #[error("image user {user:?} is not in the image's /etc/passwd: use a numeric uid[:gid]")]
    UnknownUser { user: String },
    #[error("image group {group:?} is not in the image's /etc/group: use a numeric gid")]
    UnknownGroup { group: String },
}

impl Image {
    /// Reads a regular file as the merged (overlay) view of the image would show it: the
    /// topmost layer that has the path wins; whiteouts and opaque directories hide lower
    /// layers. Symlinks are never followed (a path through one gives `None`). At most `max`
    /// bytes.
    pub fn read_file(&self, path: &str, max: u64) -> Option<Vec<u8>> {
        read_layered_file(&self.layers, path, max)
    }

    /// The image's `User` as (uid, gid), looking names up in the image's own /etc/passwd
    /// and /etc/group. `None` when the image names no user (run as root).
    pub fn user_ids(&self) -> Result<Option<(u32, u32)>, UserError> {
        let Some(spec) = self.config.user.as_deref() else { return Ok(None) };
        let (user, group) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        let passwd = || self.read_file("/etc/passwd", 4 << 20).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
        let (uid, default_gid) = match user.parse::<u32>() {
            Ok(uid) => {
                // a numeric user still takes its primary group from passwd if listed
                let gid = passwd()
                    .lines()
                    .map(|l| l.split(':').collect::<Vec<_>>())
                    .find(|f| f.len() > 3 && f[2].parse::<u32>().ok() == Some(uid))
                    .and_then(|f| f[3].parse().ok())
                    .unwrap_or(uid);
                (uid, gid)
            }
            Err(_) => passwd()
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() > 3 && f[0] == user)
                .and_then(|f| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                .ok_or_else(|| UserError::UnknownUser { user: user.to_owned() })?,
        };
        let gid = match group {
            None | Some("") => default_gid,
            Some(g) => match g.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => self
                    .read_file("/etc/group", 4 << 20)
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default()
                    .lines()
                    .map(|l| l.split(':').collect::<Vec<_>>())
                    .find(|f| f.len() > 2 && f[0] == g)
                    .and_then(|f| f[2].parse().ok())
                    .ok_or_else(|| UserError::UnknownGroup { group: g.to_owned() })?,
            },
        };
        Ok(Some((uid, gid)))
    }

    /// `lowerdir=` value for overlayfs: the layers top first, joined by `:`.
    /// (Layer paths in the store never contain `:` or `,`.)
    pub fn overlay_lowerdir(&self) -> String {
        let parts: Vec<String> = self.layers.iter().rev().map(|p| p.display().to_string()).collect();
        parts.join(":")
    }
}

/// [`Image::read_file`] over a stack of layer directories (bottom to top), e.g. a
/// snapshot's.
pub fn read_layered_file(layers: &[PathBuf], path: &str, max: u64) -> Option<Vec<u8>> {
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
    if comps.is_empty() || comps.contains(&"..") {
        return None;
    }
    for layer in layers.iter().rev() {
        let mut dir = layer.clone();
        // an opaque directory on the way hides the lower layers' version of the path
        let mut hidden_below = false;
        for (i, c) in comps.iter().enumerate() {
            let p = dir.join(c);
            let Ok(md) = fs::symlink_metadata(&p) else { break };
            let ft = md.file_type();
            if ft.is_char_device() && md.rdev() == 0 {
                return None; // whited out here
            }
            if i + 1 == comps.len() {
                if !ft.is_file() {
                    return None;
                }
                let mut out = Vec::new();
                fs::File::open(&p).ok()?.take(max).read_to_end(&mut out).ok()?;
                return Some(out);
            }
            if !ft.is_dir() {
                return None; // a symlink or file where a directory is needed
            }
            if is_opaque(&p) {
                hidden_below = true;
            }
            dir = p;
        }
        if hidden_below {
            return None;
        }
    }
    None
}

fn is_opaque(dir: &Path) -> bool {
    let mut buf = [0u8; 4];
    matches!(rustix::fs::lgetxattr(dir, crate::unpack::OPAQUE_XATTR, &mut buf), Ok(1) if buf[0] == b'y')
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

    /// Back to the image-config form (empty lists and maps left out), for an image made on
    /// top of this one.
    pub fn to_run_config(&self) -> RunConfig {
        let some_vec = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
        RunConfig {
            env: some_vec(&self.env),
            working_dir: self.working_dir.clone(),
            entrypoint: some_vec(&self.entrypoint),
            cmd: some_vec(&self.cmd),
            user: self.user.clone(),
            labels: (!self.labels.is_empty()).then(|| self.labels.clone()),
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
