//! Which overlays make up a sandbox's root, host side.
//!
//! A directory image is one overlay at `/`. The embedded default image (a
//! read-only view of the host's system) is an allow-list: a small skeleton
//! at `/` (empty /root, /home, /run, /tmp, /var without /var/lib), with
//! overlays of the host's /usr and /etc (secrets masked by whiteouts in a
//! mask layer) mounted on it. Nothing else of the host is visible: not /root,
//! /home, /run, /var/lib, /work, nor the envbox state root.

use std::fs;
use std::io;
use std::os::unix::fs::{symlink, DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use serde::{Deserialize, Serialize};

use super::{io_err, FsError, Result};
use crate::config::Image;

/// One overlay mount of a sandbox root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlaySpec {
    /// Where it is mounted, relative to the sandbox root ("/" first).
    pub target: String,
    /// Host directories, top-most layer first.
    pub lowers: Vec<PathBuf>,
}

/// Secrets of the host's /etc that the default image hides (whiteouts).
const ETC_SECRETS: &[&str] = &[
    "shadow",
    "shadow-",
    "gshadow",
    "gshadow-",
    "security/opasswd",
    "ssl/private",
    "krb5.keytab",
    "apt/auth.conf",
    "apt/auth.conf.d",
    "containers/auth.json",
    "NetworkManager/system-connections",
    "wpa_supplicant",
    "sudoers",
    "sudoers.d",
];

/// Bump when the layout of the host view changes, so old caches are rebuilt.
const HOST_VIEW_VERSION: &str = "1";

/// Top-level directories that may hold libraries/binaries and are real
/// directories on non-merged-/usr hosts.
const SYSTEM_TOP_DIRS: &[&str] = &["bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// The overlays for `image`. For the host view this builds (once, atomically)
/// the skeleton and mask layers under `<state_root>/.images/`.
pub fn plan(image: &Image, state_root: &Path) -> Result<Vec<OverlaySpec>> {
    match image {
        Image::Dir(dir) => Ok(vec![OverlaySpec { target: "/".into(), lowers: vec![dir.clone()] }]),
        Image::Host => host_plan(state_root),
        // Store images are resolved by the caller (`images::resolve`),
        // which holds their lease: see `layers_plan`.
        Image::Ref(r) => Err(FsError::Unresolved { image: r.clone() }),
    }
}

/// The overlay of an image's layers (given bottom to top).
pub fn layers_plan(layers: &[PathBuf]) -> Vec<OverlaySpec> {
    vec![OverlaySpec { target: "/".into(), lowers: layers.iter().rev().cloned().collect() }]
}

fn host_plan(state_root: &Path) -> Result<Vec<OverlaySpec>> {
    let view = ensure_host_view(state_root)?;
    let mut specs = vec![OverlaySpec { target: "/".into(), lowers: vec![view.join("skel")] }];
    specs.push(OverlaySpec { target: "/usr".into(), lowers: vec![PathBuf::from("/usr")] });
    for top in SYSTEM_TOP_DIRS {
        let host = Path::new("/").join(top);
        if fs::symlink_metadata(&host).map(|m| m.is_dir()).unwrap_or(false) {
            specs.push(OverlaySpec { target: format!("/{top}"), lowers: vec![host] });
        }
    }
    specs.push(OverlaySpec { target: "/etc".into(), lowers: vec![view.join("etc-mask"), PathBuf::from("/etc")] });
    Ok(specs)
}

/// Builds `<state_root>/.images/host-v<N>/{skel,etc-mask}` if missing and
/// returns its path. Built in a temp dir and renamed into place, so a
/// concurrent or interrupted build never leaves a half view in use.
pub fn ensure_host_view(state_root: &Path) -> Result<PathBuf> {
    let images = state_root.join(".images");
    let view = images.join(format!("host-v{HOST_VIEW_VERSION}"));
    if view.join("done").exists() {
        return Ok(view);
    }
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| FsError::HostImage { path, source }
    };
    fs::create_dir_all(&images).map_err(err(&images))?;
    remove_stale_builds(&images);
    // Unique per build: threads of one process may race here too.
    let tmp = images.join(format!(".tmp-host-{}-{}", std::process::id(), &crate::agent::shell::new_nonce()[..8]));
    build_host_view(&tmp, state_root).map_err(err(&tmp))?;
    match fs::rename(&tmp, &view) {
        Ok(()) => Ok(view),
        // Another process won the race; theirs is as good as ours.
        Err(_) if view.join("done").exists() => {
            let _ = fs::remove_dir_all(&tmp);
            Ok(view)
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            Err(err(&view)(e))
        }
    }
}

/// Removes the half-built views of processes that died while building.
fn remove_stale_builds(images: &Path) {
    let Ok(entries) = fs::read_dir(images) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(".tmp-host-").and_then(|r| r.split('-').next()).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

fn mkdir(path: &Path, mode: u32) -> io::Result<()> {
    fs::DirBuilder::new().recursive(true).mode(mode).create(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

/// An overlayfs whiteout: a 0/0 character device hides the same name in the
/// layers below.
fn whiteout(path: &Path) -> io::Result<()> {
    if let Some(parent) = path.parent() {
        mkdir(parent, 0o755)?;
    }
    mknod(path, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0)).map_err(io_err)
}

fn build_host_view(tmp: &Path, state_root: &Path) -> io::Result<()> {
    let skel = tmp.join("skel");
    mkdir(&skel, 0o755)?;
    for dir in ["proc", "dev", "sys", "usr", "etc", "home", "run", "mnt", "opt", "srv", "media", "var/cache", "var/log", "var/opt"] {
        mkdir(&skel.join(dir), 0o755)?;
    }
    mkdir(&skel.join("root"), 0o700)?;
    mkdir(&skel.join("tmp"), 0o1777)?;
    mkdir(&skel.join("var/tmp"), 0o1777)?;
    symlink("/run", skel.join("var/run"))?;
    // Merged-/usr hosts have /bin -> usr/bin etc.: mirror those links; real
    // directories become overlays of their own (see host_plan).
    for top in SYSTEM_TOP_DIRS {
        let host = Path::new("/").join(top);
        match fs::symlink_metadata(&host) {
            Ok(m) if m.file_type().is_symlink() => symlink(fs::read_link(&host)?, skel.join(top))?,
            Ok(m) if m.is_dir() => mkdir(&skel.join(top), 0o755)?,
            _ => {}
        }
    }
    let mask = tmp.join("etc-mask");
    mkdir(&mask, 0o755)?;
    for secret in ETC_SECRETS {
        if fs::symlink_metadata(Path::new("/etc").join(secret)).is_ok() {
            whiteout(&mask.join(secret))?;
        }
    }
    // SSH host private keys.
    if let Ok(entries) = fs::read_dir("/etc/ssh") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("ssh_host_") && name.ends_with("_key") {
                whiteout(&mask.join("ssh").join(&name))?;
            }
        }
    }
    // The state root must never be visible, wherever it was put.
    if let Ok(rel) = state_root.strip_prefix("/etc") {
        if !rel.as_os_str().is_empty() {
            whiteout(&mask.join(rel))?;
        }
    }
    fs::write(tmp.join("done"), HOST_VIEW_VERSION)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_image_is_one_overlay_at_root() {
        let p = plan(&Image::Dir("/img".into()), Path::new("/nonexistent")).unwrap();
        assert_eq!(p, vec![OverlaySpec { target: "/".into(), lowers: vec!["/img".into()] }]);
    }
}
