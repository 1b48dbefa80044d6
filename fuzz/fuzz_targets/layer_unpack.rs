//! The layer unpacker (`envbox_rootfs::unpack::unpack_blob`) on arbitrary
//! blobs (plain tar, gzip or zstd, told apart by magic): hostile tars must
//! never write outside the layer directory.
//!
//! Set-up, once: a sandbox directory holding `outside/` (a sentinel file
//! and a symlink target) and `layer-N/` dirs the unpacker writes into.
//! Invariants (besides no panic, and termination within the limits):
//! - after every input, `outside/` has exactly its sentinel, unchanged;
//!   nothing else appeared next to the layer directory;
//! - nothing under the layer is a device node (they are skipped).
#![no_main]

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use envbox_rootfs::unpack::{unpack_blob, Limits};
use libfuzzer_sys::fuzz_target;

fn base() -> &'static Path {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        let b = std::env::temp_dir().join(format!("envbox-fuzz-unpack-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&b);
        std::fs::create_dir_all(b.join("outside")).unwrap();
        std::fs::write(b.join("outside/sentinel"), b"untouched").unwrap();
        b
    })
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir).map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()).unwrap_or_default();
    v.sort();
    v
}

fn no_devices(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            no_devices(&e.path());
        } else if ft.is_block_device() {
            panic!("a block device was unpacked: {}", e.path().display());
        } else if ft.is_char_device() {
            // 0:0 char devices are overlayfs whiteouts, which are allowed.
            let rdev = std::os::unix::fs::MetadataExt::rdev(&e.metadata().unwrap());
            assert_eq!(rdev, 0, "a device node was unpacked: {}", e.path().display());
        }
    }
}

static N: AtomicU64 = AtomicU64::new(0);

fuzz_target!(|data: &[u8]| {
    let base = base();
    let layer = base.join(format!("layer-{}", N.fetch_add(1, Ordering::Relaxed)));
    std::fs::create_dir(&layer).unwrap();
    let limits = Limits { max_bytes: 4 << 20, max_entries: 2000, ..Limits::default() };
    let _ = unpack_blob(data, &layer, None, &limits);
    assert_eq!(names(&base.join("outside")), vec!["sentinel".to_string()]);
    assert_eq!(std::fs::read(base.join("outside/sentinel")).unwrap(), b"untouched");
    let mut top = names(base);
    top.retain(|n| !n.starts_with("layer-"));
    assert_eq!(top, vec!["outside".to_string()], "something was written beside the layer");
    no_devices(&layer);
    let _ = std::fs::remove_dir_all(&layer);
});
