//! Test root filesystems, cached under `$ENVBOX_TEST_ROOTFS_DIR` (default
//! `/var/cache/envbox-test-rootfs`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The test root filesystems the build script knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fixture {
    /// busybox-static with every applet linked: sh, no bash, no python.
    Busybox,
    /// Debian minbase with bash and python3.
    Debian,
}

impl Fixture {
    pub fn name(self) -> &'static str {
        match self {
            Fixture::Busybox => "busybox",
            Fixture::Debian => "debian",
        }
    }
}

/// Where fixtures are cached.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("ENVBOX_TEST_ROOTFS_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/envbox-test-rootfs"))
}

/// The build script shipped with this crate.
pub fn build_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-test-rootfs.sh")
}

/// Returns the fixture's directory if it has been built completely.
pub fn cached(f: Fixture) -> Option<PathBuf> {
    let dir = cache_dir().join(f.name());
    dir.join("bin").exists().then_some(dir)
}

/// Returns the fixture's directory, building it first if needed (needs
/// root and the apt mirror; debootstrap takes a few minutes).
pub fn ensure(f: Fixture) -> Result<PathBuf, String> {
    if let Some(dir) = cached(f) {
        return Ok(dir);
    }
    let status = Command::new("bash")
        .arg(build_script())
        .arg(f.name())
        .status()
        .map_err(|e| format!("running {}: {e}", build_script().display()))?;
    if !status.success() {
        return Err(format!("{} {} failed with {status}", build_script().display(), f.name()));
    }
    cached(f).ok_or_else(|| format!("{} {} succeeded but left no rootfs in {}", build_script().display(), f.name(), cache_dir().display()))
}

pub mod oci;
pub mod registry;
