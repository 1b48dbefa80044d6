//! The btrfs backend on a btrfs filesystem this test makes in a file
//! (mkfs.btrfs on a sparse image, loop-mounted at the test's state root;
//! the machine's own disks are never touched): create from a rootfs
//! directory and from a store image, reset after many changes, isolation
//! between sandboxes on one base, delete, and the refusals.

mod common;

use std::process::Command;

use common::TestRoot;
use envbox::{FsBackend, Image, Sandbox};

/// A btrfs filesystem in a sparse file, mounted at a fresh test root;
/// unmounted (and its loop device released) on drop.
struct BtrfsRoot {
    root: TestRoot,
    image: std::path::PathBuf,
}

impl BtrfsRoot {
    fn new(tag: &str) -> Option<BtrfsRoot> {
        if Command::new("mkfs.btrfs").arg("--version").output().is_err() {
            return None;
        }
        let root = TestRoot::new(tag);
        let image = std::path::PathBuf::from(format!("{}.img", root.path.display()));
        std::fs::File::create(&image).unwrap().set_len(1 << 30).unwrap();
        let out = Command::new("mkfs.btrfs").arg("-q").arg(&image).output().unwrap();
        assert!(out.status.success(), "mkfs.btrfs: {}", String::from_utf8_lossy(&out.stderr));
        let out = Command::new("mount").arg("-o").arg("loop").arg(&image).arg(&root.path).output().unwrap();
        assert!(out.status.success(), "mount -o loop: {}", String::from_utf8_lossy(&out.stderr));
        Some(BtrfsRoot { root, image })
    }
}

impl Drop for BtrfsRoot {
    fn drop(&mut self) {
        let _ = envbox::collect_garbage(&self.root.path);
        for s in envbox::list(&self.root.path).unwrap_or_default() {
            if let Ok(sb) = Sandbox::open(&self.root.path, &s.name) {
                let _ = sb.delete_and_wait();
            }
        }
        // umount of a loop mount made by mount(8) releases the device.
        let _ = Command::new("umount").arg(&self.root.path).status();
        let _ = std::fs::remove_file(&self.image);
    }
}

#[test]
fn btrfs_sandboxes_create_reset_and_delete() {
    require_root!("btrfs_sandboxes_create_reset_and_delete");
    let Some(b) = BtrfsRoot::new("btrfs") else {
        if std::env::var("SANDBOX_TESTS_MUST_RUN").as_deref() == Ok("1") {
            panic!("btrfs_sandboxes_create_reset_and_delete needs mkfs.btrfs (apt install btrfs-progs)");
        }
        eprintln!("btrfs_sandboxes_create_reset_and_delete needs mkfs.btrfs. Skipping test.");
        return;
    };
    let mut cfg = b.root.config(common::debian());
    cfg.fs = FsBackend::Btrfs;
    let a = Sandbox::create(&cfg, "a").unwrap();
    let o = a.run("awk '$2 == \"/\" {print $3}' /proc/mounts; echo one > /root/f; rm /etc/hostname; mkdir /many; cd /many; for i in $(seq 10000); do : > f$i; done; ls | wc -l").unwrap();
    assert_eq!(o.stdout_str(), "btrfs\n10000\n", "{o:?}");
    // A second sandbox on the same base sees none of that.
    let other = Sandbox::create(&cfg, "other").unwrap();
    assert_eq!(other.run("test -e /root/f; echo $?; cat /etc/hostname >/dev/null; echo $?").unwrap().stdout_str(), "1\n0\n");
    // Reset: a fresh snapshot, the old one destroyed.
    a.reset().unwrap();
    assert_eq!(
        a.run("test -e /root/f; echo $?; test -d /many; echo $?; test -e /etc/hostname; echo $?").unwrap().stdout_str(),
        "1\n1\n0\n"
    );
    let gens = || std::fs::read_dir(b.root.path.join("a/gen")).unwrap().count();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while gens() > 1 {
        assert!(std::time::Instant::now() < deadline, "the old generation was not destroyed");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // The image directory was never written.
    let Image::Dir(img) = common::debian() else { unreachable!() };
    assert!(img.join("etc/hostname").exists() && !img.join("root/f").exists());
    // Refusals: snapshots of btrfs sandboxes, btrfs on the host view.
    assert!(a.snapshot(None).unwrap_err().to_string().contains("btrfs"));
    let host = envbox::SandboxConfig { image: Image::Host, ..cfg.clone() };
    assert!(Sandbox::create(&host, "host").err().unwrap().to_string().contains("needs an image"));
    a.delete_and_wait().unwrap();
    other.delete_and_wait().unwrap();
    b.root.assert_clean();
}

#[test]
fn btrfs_needs_a_btrfs_state_root() {
    require_root!("btrfs_needs_a_btrfs_state_root");
    let root = TestRoot::new("btrfs-no");
    let mut cfg = root.config(common::debian());
    cfg.fs = FsBackend::Btrfs;
    let e = Sandbox::create(&cfg, "x").err().unwrap().to_string();
    assert!(e.contains("btrfs filesystem"), "{e}");
    root.assert_clean();
}
