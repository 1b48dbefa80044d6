//! `write_layer_tar`: an overlayfs-format directory (whiteout devices, opaque xattrs,
//! hardlinks, xattrs, odd modes and owners) written as a layer tar, unpacked again, and
//! written again must give the same bytes, so a layer keeps its diff_id through the store.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use envbox_rootfs::unpack::{unpack_tar, OPAQUE_XATTR};
use envbox_rootfs::{write_layer_tar, Digest, Limits};

fn is_root() -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    eprintln!("SKIPPED: layer tar tests need root (whiteout devices, trusted xattrs, chown)");
    false
}

fn tar_bytes(dir: &Path) -> (Vec<u8>, envbox_rootfs::LayerTarStats) {
    let mut out = Vec::new();
    let stats = write_layer_tar(dir, &mut out).unwrap();
    (out, stats)
}

/// An upper directory the way overlayfs leaves one after a build step.
fn make_upper(d: &Path) {
    fs::create_dir_all(d.join("app/sub")).unwrap();
    fs::write(d.join("app/main.py"), b"print('hi')\n").unwrap();
    fs::write(d.join("app/sub/data.bin"), vec![7u8; 70_000]).unwrap();
    fs::hard_link(d.join("app/main.py"), d.join("app/alias.py")).unwrap();
    std::os::unix::fs::symlink("../app/main.py", d.join("app/link")).unwrap();
    let long = "x".repeat(150);
    fs::write(d.join("app").join(&long), b"long name").unwrap();
    fs::set_permissions(d.join("app/main.py"), fs::Permissions::from_mode(0o4755)).unwrap();
    std::os::unix::fs::chown(d.join("app/sub/data.bin"), Some(1000), Some(1001)).unwrap();
    rustix::fs::setxattr(d.join("app/sub/data.bin").as_path(), "user.note", b"kept", rustix::fs::XattrFlags::empty()).unwrap();
    rustix::fs::setxattr(d.join("app/sub/data.bin").as_path(), "trusted.overlay.origin", b"x", rustix::fs::XattrFlags::empty()).unwrap();
    // a whiteout: 0:0 character device
    fs::create_dir_all(d.join("etc")).unwrap();
    rustix::fs::mknodat(rustix::fs::CWD, d.join("etc/removed").as_path(), rustix::fs::FileType::CharacterDevice, 0o000.into(), 0).unwrap();
    // an opaque directory
    fs::create_dir_all(d.join("var/cache")).unwrap();
    fs::write(d.join("var/cache/new"), b"n").unwrap();
    rustix::fs::setxattr(d.join("var/cache").as_path(), OPAQUE_XATTR, b"y", rustix::fs::XattrFlags::empty()).unwrap();
    rustix::fs::mknodat(rustix::fs::CWD, d.join("fifo").as_path(), rustix::fs::FileType::Fifo, 0o644.into(), 0).unwrap();
}

#[test]
fn a_layer_round_trips_to_the_same_bytes() {
    if !is_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let upper = t.path().join("upper");
    make_upper(&upper);
    let (first, stats) = tar_bytes(&upper);
    assert_eq!(stats.whiteouts, 1);
    assert_eq!(stats.opaque_dirs, 1);
    assert!(!stats.is_empty());

    // The tar is in the image-spec format.
    let mut names = Vec::new();
    let mut links = Vec::new();
    for e in tar::Archive::new(&first[..]).entries().unwrap() {
        let mut e = e.unwrap();
        let name = String::from_utf8(e.path_bytes().into_owned()).unwrap();
        if e.header().entry_type() == tar::EntryType::Link {
            links.push((name.clone(), String::from_utf8(e.link_name_bytes().unwrap().into_owned()).unwrap()));
        }
        if name == "app/sub/data.bin" {
            let x: Vec<String> = e.pax_extensions().unwrap().unwrap().map(|x| x.unwrap().key().unwrap().to_string()).collect();
            assert_eq!(x, vec!["SCHILY.xattr.user.note"], "trusted.* must never be written");
        }
        names.push(name);
    }
    assert!(names.contains(&"etc/.wh.removed".to_string()), "{names:?}");
    assert!(names.contains(&"var/cache/.wh..wh..opq".to_string()), "{names:?}");
    assert!(!names.iter().any(|n| n.starts_with('/') || n.starts_with("./")), "{names:?}");
    assert_eq!(links, vec![("app/main.py".to_string(), "app/alias.py".to_string())], "one file, one hardlink");
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "entries are sorted");

    // Unpacked by the store's unpacker, it is the same layer...
    let back = t.path().join("back");
    fs::create_dir(&back).unwrap();
    let st = unpack_tar(&first[..], &back, Some(&Digest::of(&first)), &Limits::default()).unwrap();
    assert_eq!(st.whiteouts, 1);
    let md = fs::symlink_metadata(back.join("app/sub/data.bin")).unwrap();
    assert_eq!((md.uid(), md.gid(), md.len()), (1000, 1001, 70_000));
    assert_eq!(fs::metadata(back.join("app/main.py")).unwrap().mode() & 0o7777, 0o4755);
    assert_eq!(fs::metadata(back.join("app/main.py")).unwrap().ino(), fs::metadata(back.join("app/alias.py")).unwrap().ino());
    assert_eq!(fs::metadata(back.join("app/sub")).unwrap().mtime(), fs::metadata(upper.join("app/sub")).unwrap().mtime());
    // ...and written again it gives the same bytes: the diff_id survives the store.
    let (second, _) = tar_bytes(&back);
    assert_eq!(Digest::of(&first), Digest::of(&second));
    assert_eq!(first, second);
}

#[test]
fn an_unchanged_upper_is_an_empty_layer_and_symlinks_are_not_followed() {
    if !is_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let upper = t.path().join("upper");
    fs::create_dir(&upper).unwrap();
    let (bytes, stats) = tar_bytes(&upper);
    assert!(stats.is_empty());
    assert_eq!(bytes.len(), 1024, "just the end-of-archive blocks");

    // A symlink to a host directory is written as a link, never as the host's files.
    std::os::unix::fs::symlink("/etc", upper.join("hostetc")).unwrap();
    let (bytes, stats) = tar_bytes(&upper);
    assert_eq!(stats.entries, 1);
    assert!(!String::from_utf8_lossy(&bytes).contains("root:x:0:0"));
}
