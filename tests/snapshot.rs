//! Snapshot and fork: a sandbox's filesystem becomes an image without a
//! copy, sandboxes start from it (deletions included), the source goes on
//! from the same files, its reset goes back to its own image, and unused
//! snapshots are collected.

mod common;

use std::time::Instant;

use common::TestRoot;
use envbox::{Image, Sandbox};

#[test]
fn snapshot_fork_reset_and_collection() {
    require_root!("snapshot_fork_reset_and_collection");
    let root = TestRoot::new("snap");
    let src = Sandbox::create(&root.config(common::debian()), "src").unwrap();
    src.run("mkdir -p /work && echo one > /work/state && rm /etc/hostname && dd if=/dev/urandom of=/work/blob bs=1M count=8 2>/dev/null")
        .unwrap();
    let digest = src.run("sha256sum /work/blob | cut -c1-64").unwrap().stdout_str().to_string();

    let t0 = Instant::now();
    let id = src.snapshot(Some("team/state:v1")).unwrap();
    eprintln!("snapshot with 8 MiB of changes: {:.2} ms", t0.elapsed().as_secs_f64() * 1000.0);
    // Nothing was copied: the snapshot's layer is the very directory.
    let layer = root.path.join(".images/snapshots").join(&id).join("layer");
    assert_eq!(std::fs::metadata(layer.join("work/blob")).unwrap().len(), 8 << 20);

    // The source goes on from the same files, on a fresh upper layer.
    let o = src.run("cat /work/state; test -e /etc/hostname; echo $?; echo two > /work/state").unwrap();
    assert_eq!(o.stdout_str(), "one\n1\n");
    assert_eq!(std::fs::read_to_string(layer.join("work/state")).unwrap(), "one\n", "the snapshot is frozen");

    // A sandbox created from the tag sees the snapshot, deletions included.
    let from_tag = Sandbox::create(&root.config(Image::Ref("team/state:v1".into())), "from-tag").unwrap();
    let o = from_tag.run("cat /work/state; test -e /etc/hostname; echo $?; sha256sum /work/blob | cut -c1-64").unwrap();
    assert_eq!(o.stdout_str(), format!("one\n1\n{digest}"));
    // A reset of it goes back to the snapshot, not further.
    from_tag.run("rm /work/state").unwrap();
    from_tag.reset().unwrap();
    assert_eq!(from_tag.run("cat /work/state").unwrap().stdout_str(), "one\n");

    // Fork: eight sandboxes from the source's current state.
    let t0 = Instant::now();
    let kids = src.fork(8, "kid", false).unwrap();
    eprintln!("fork of 8: {:.1} ms", t0.elapsed().as_secs_f64() * 1000.0);
    assert_eq!(kids.len(), 8);
    for (i, k) in kids.iter().enumerate() {
        assert_eq!(k.name(), format!("kid-{i}"));
        assert_eq!(k.run("cat /work/state").unwrap().stdout_str(), "two\n");
        k.run(&format!("echo {i} > /work/state")).unwrap();
    }
    assert_eq!(kids[3].run("cat /work/state").unwrap().stdout_str(), "3\n", "children diverge independently");
    assert_eq!(src.run("cat /work/state").unwrap().stdout_str(), "two\n");

    // The source's reset returns to its own image.
    src.reset().unwrap();
    assert_eq!(src.run("test -e /work/state; echo $?; test -e /etc/hostname; echo $?").unwrap().stdout_str(), "1\n0\n");

    // Collection: in use, nothing goes; untagged and unused, it all goes.
    envbox::images::remove(&root.path, "team/state:v1").unwrap();
    assert!(layer.exists(), "a snapshot in use was collected");
    for k in kids {
        k.delete_and_wait().unwrap();
    }
    from_tag.delete_and_wait().unwrap();
    src.delete_and_wait().unwrap();
    envbox::images::gc(&root.path).unwrap();
    let left: Vec<_> = std::fs::read_dir(root.path.join(".images/snapshots"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "tags")
        .collect();
    assert!(left.is_empty(), "snapshots left: {left:?}");
    root.assert_clean();
}

#[test]
fn snapshot_refuses_what_it_cannot_do() {
    require_root!("snapshot_refuses_what_it_cannot_do");
    let root = TestRoot::new("snap-bad");
    let host = Sandbox::create(&root.config(Image::Host), "host").unwrap();
    let e = host.snapshot(Some("x:v1")).unwrap_err().to_string();
    assert!(e.contains("one layer stack"), "{e}");
    let mut cfg = root.config(common::debian());
    cfg.limits.disk_bytes = Some(64 << 20);
    let disk = Sandbox::create(&cfg, "disk").unwrap();
    let e = disk.snapshot(None).unwrap_err().to_string();
    assert!(e.contains("--disk"), "{e}");
    let plain = Sandbox::create(&root.config(common::debian()), "plain").unwrap();
    let e = plain.snapshot(Some("Not A Tag!")).unwrap_err().to_string();
    assert!(e.contains("Not A Tag!"), "{e}");
    assert_eq!(plain.run("echo still fine").unwrap().stdout_str(), "still fine\n");
    drop((host, disk, plain));
    root.assert_clean();
}
