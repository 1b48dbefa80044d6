//! The store with local sources: OCI layouts (dir and tar) and docker-archives built here in
//! Rust, and a rootfs dir. Layer sharing, atomic publish, concurrent installs (U10),
//! tampering (U9) and bombs (U8) leaving nothing behind, remove and gc.

use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use envbox_rootfs::fixtures::oci::{chain, gzip, names, put_gzip_layer, write_image};
use envbox_rootfs::oci::{ConfigFile, Manifest, RootFs, RunConfig};
use envbox_rootfs::{Digest, ImageError, Limits, Reference, Source, Store};
use tar::{EntryType, Header};

fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = Header::new_gnu();
        {
            let g = h.as_gnu_mut().unwrap();
            g.name[..name.len()].copy_from_slice(name.as_bytes());
        }
        let (kind, data, link): (EntryType, &[u8], &[u8]) = if let Some(t) = data.strip_prefix(b"->") {
            (EntryType::Symlink, b"", t)
        } else if name.ends_with('/') {
            (EntryType::Directory, b"", b"")
        } else {
            (EntryType::Regular, data, b"")
        };
        h.as_gnu_mut().unwrap().linkname[..link.len()].copy_from_slice(link);
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(if kind == EntryType::Directory { 0o755 } else { 0o644 });
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

fn run_config() -> RunConfig {
    RunConfig {
        env: Some(vec!["PATH=/bin".into(), "GREETING=hi there".into()]),
        working_dir: Some("/work".into()),
        entrypoint: Some(vec!["/bin/sh".into(), "-c".into()]),
        cmd: Some(vec!["echo $GREETING".into()]),
        user: Some("1000:1000".into()),
        labels: Some([("org.example.v".to_string(), "2".to_string())].into()),
    }
}

/// Writes an OCI layout with the given layer tars (gzipped) tagged `tag`. Returns the dir.
fn oci_layout(dir: &Path, layers: &[Vec<u8>], tag: &str) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for l in layers {
        let (desc, diff_id) = put_gzip_layer(dir, l);
        descs.push(desc);
        diff_ids.push(diff_id);
    }
    let config = ConfigFile {
        architecture: "amd64".into(),
        os: "linux".into(),
        created: Some("2026-01-01T00:00:00Z".into()),
        config: Some(run_config()),
        rootfs: RootFs { kind: "layers".into(), diff_ids },
    };
    write_image(dir, &config, descs, tag);
    dir.to_path_buf()
}

fn base_layer() -> Vec<u8> {
    tar_of(&[
        ("bin/", b""),
        ("bin/sh", b"#!shell"),
        ("etc/", b""),
        ("etc/passwd", b"root:x:0:0"),
        ("etc/motd", b"hello"),
        ("opt/", b""),
        ("opt/old", b"old"),
    ])
}

fn top_layer() -> Vec<u8> {
    tar_of(&[("etc/.wh.motd", b""), ("opt/.wh..wh..opq", b""), ("opt/new", b"new"), ("work/", b"")])
}

fn import_layout(
    store: &Store,
    dir: &Path,
    tag: &str,
    name: &str,
) -> Result<(envbox_rootfs::Image, envbox_rootfs::InstallReport), ImageError> {
    let src = Source::parse(&format!("oci:{}:{tag}", dir.display())).unwrap();
    store.import(&src, Some(&Reference::parse(name).unwrap()), &Limits::default())
}

/// The error and all its sources, as a CLI would print them.

#[test]
fn oci_layout_import_gives_overlay_ready_layers_and_config() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = oci_layout(&tmp.path().join("layout"), &[base_layer(), top_layer()], "v1");
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let (img, rep) = import_layout(&store, &layout, "v1", "localhost/test/env:v1").unwrap();
    assert_eq!(rep.layers_unpacked, 2);
    assert_eq!(img.layers.len(), 2);
    assert_eq!(fs::read(img.layers[0].join("etc/motd")).unwrap(), b"hello");
    let wh = fs::symlink_metadata(img.layers[1].join("etc/motd")).unwrap();
    assert!(wh.file_type().is_char_device(), "whiteout is a char device in the upper layer");
    assert_eq!(fs::read(img.layers[1].join("opt/new")).unwrap(), b"new");
    assert_eq!(img.config.env, vec!["PATH=/bin", "GREETING=hi there"]);
    assert_eq!(img.config.working_dir.as_deref(), Some("/work"));
    assert_eq!(img.config.command(), vec!["/bin/sh", "-c", "echo $GREETING"]);
    assert_eq!(img.config.user.as_deref(), Some("1000:1000"));
    assert_eq!(img.config.labels["org.example.v"], "2");
    assert_eq!(img.references, vec![Reference::parse("localhost/test/env:v1").unwrap()]);
    assert_eq!(img.overlay_lowerdir(), format!("{}:{}", img.layers[1].display(), img.layers[0].display()));
    assert!(img.manifest_digest.is_some());
    assert!(img.size > 0);

    let got = store.get(&Reference::parse("localhost/test/env:v1").unwrap()).unwrap().unwrap();
    assert_eq!(got, img);
    let by_digest = Reference::parse(&format!("localhost/test/env@{}", img.manifest_digest.as_ref().unwrap())).unwrap();
    assert_eq!(store.get(&by_digest).unwrap().unwrap().id, img.id);
    assert!(store.get(&Reference::parse("localhost/test/env:v2").unwrap()).unwrap().is_none());
    assert_eq!(store.list().unwrap().len(), 1);
    assert!(names(&store.root().join("tmp")).is_empty(), "no leftovers in tmp");

    // the same import again reuses every layer
    let (again, rep) = import_layout(&store, &layout, "v1", "localhost/test/env:v1").unwrap();
    assert_eq!((rep.layers_unpacked, rep.layers_reused), (0, 2));
    assert_eq!(again.id, img.id);
}

#[test]
fn images_share_layers_and_gc_removes_only_unreferenced_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let a = oci_layout(&tmp.path().join("a"), &[base_layer(), top_layer()], "a");
    let b = oci_layout(&tmp.path().join("b"), &[base_layer(), tar_of(&[("b-only", b"b")])], "b");
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let (ia, _) = import_layout(&store, &a, "a", "localhost/a").unwrap();
    let (ib, rep) = import_layout(&store, &b, "b", "localhost/b").unwrap();
    assert_eq!((rep.layers_unpacked, rep.layers_reused), (1, 1));
    assert_eq!(ia.layers[0], ib.layers[0], "the base layer directory is shared");
    assert_eq!(names(&store.root().join("layers")).len(), 3);

    // a second tag on the same image: removing one keeps the image
    import_layout(&store, &a, "a", "localhost/a:second").unwrap();
    store.remove(&Reference::parse("localhost/a:second").unwrap()).unwrap();
    assert!(store.get(&Reference::parse("localhost/a").unwrap()).unwrap().is_some());

    let removed = store.remove(&Reference::parse("localhost/a").unwrap()).unwrap();
    assert_eq!(removed.id, ia.id);
    assert!(store.get(&Reference::parse("localhost/a").unwrap()).unwrap().is_none());
    assert_eq!(store.list().unwrap().len(), 1, "untagged images are not listed");
    let err = store.remove(&Reference::parse("localhost/a").unwrap()).unwrap_err();
    assert!(err.to_string().contains("envbox images"), "{err}");

    // gc keeps what `keep` names even untagged
    let r = store.gc(std::slice::from_ref(&ia.id)).unwrap();
    assert_eq!(r.layers_removed, 0);
    assert!(store.get_by_id(&ia.id).unwrap().is_some());
    let r = store.gc(&[]).unwrap();
    assert_eq!(r.layers_removed, 1, "only a's top layer: the base is b's too");
    assert_eq!(r.images_removed, 1);
    assert!(store.get_by_id(&ia.id).unwrap().is_none());
    assert!(!ia.layers[1].exists());
    assert!(ib.layers.iter().all(|l| l.is_dir()));
    let still = store.get(&Reference::parse("localhost/b").unwrap()).unwrap().unwrap();
    assert_eq!(still.layers, ib.layers);
    assert_eq!(names(&store.root().join("layers")).len(), 2);
    assert_eq!(names(&store.root().join("locks")).len(), 2, "lock files of removed layers go too");
}

fn assert_nothing_stored(store: &Store) {
    for d in ["layers", "images", "tmp"] {
        assert!(names(&store.root().join(d)).is_empty(), "{d} should be empty: {:?}", names(&store.root().join(d)));
    }
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn u9_tampered_layer_or_config_is_rejected_and_nothing_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = oci_layout(&tmp.path().join("l"), &[base_layer()], "v1");
    let idx: serde_json::Value = serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let md: Digest = idx["manifests"][0]["digest"].as_str().unwrap().parse().unwrap();
    let m: Manifest = serde_json::from_slice(&fs::read(layout.join("blobs/sha256").join(md.hex())).unwrap()).unwrap();

    // one flipped byte in the (gzipped) layer blob
    let lp = layout.join("blobs/sha256").join(m.layers[0].digest.hex());
    let good = fs::read(&lp).unwrap();
    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 5] ^= 0x01; // inside the gzip trailer (CRC): decompresses, but the blob digest differs
    fs::write(&lp, &bad).unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let err = import_layout(&store, &layout, "v1", "localhost/x").unwrap_err();
    let msg = chain(&err);
    assert!(msg.contains("tampered") || msg.contains("corrupt"), "{msg}");
    assert_nothing_stored(&store);

    // the whole layer blob replaced by another valid gzip: decompresses fine, digests differ
    fs::write(&lp, gzip(&tar_of(&[("evil", b"x")]))).unwrap();
    let err = import_layout(&store, &layout, "v1", "localhost/x").unwrap_err();
    let msg = chain(&err);
    assert!(msg.contains("tampered"), "{msg}");
    assert_nothing_stored(&store);
    fs::write(&lp, &good).unwrap();

    // a flipped byte in the config
    let cp = layout.join("blobs/sha256").join(m.config.digest.hex());
    let mut c = fs::read(&cp).unwrap();
    c[3] ^= 0x20;
    fs::write(&cp, &c).unwrap();
    let err = import_layout(&store, &layout, "v1", "localhost/x").unwrap_err();
    assert!(err.to_string().contains("tampered"), "{err}");
    assert_nothing_stored(&store);
}

#[test]
fn u8_bomb_layer_is_refused_and_nothing_published() {
    let tmp = tempfile::tempdir().unwrap();
    let big = vec![0u8; 4 << 20];
    let layout = oci_layout(&tmp.path().join("l"), &[tar_of(&[("zeros", &big)])], "v1");
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let src = Source::parse(&format!("oci:{}", layout.display())).unwrap();
    let err = store.import(&src, None, &Limits { max_bytes: 1 << 20, ..Limits::default() }).unwrap_err();
    let msg = chain(&err);
    assert!(msg.contains("decompression bomb"), "{msg}");
    assert_nothing_stored(&store);
}

#[test]
fn u5_whiteout_through_a_symlink_of_a_lower_layer_stays_in_its_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = oci_layout(&tmp.path().join("l"), &[tar_of(&[("l", b"->/")]), tar_of(&[("l/.wh.etc", b""), ("l/.wh.victim", b"")])], "v1");
    let victim = tmp.path().join("victim");
    fs::write(&victim, b"keep").unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let (img, _) = import_layout(&store, &layout, "v1", "localhost/u5").unwrap();
    assert!(fs::symlink_metadata(img.layers[1].join("l/etc")).unwrap().file_type().is_char_device());
    assert!(Path::new("/etc/passwd").is_file());
    assert_eq!(fs::read(&victim).unwrap(), b"keep");
}

#[test]
fn u10_concurrent_imports_unpack_each_layer_once() {
    let tmp = tempfile::tempdir().unwrap();
    let layers: Vec<Vec<u8>> = (0..4).map(|i| tar_of(&[(&format!("f{i}"), &vec![b'x'; 1 << 20][..])])).collect();
    let layout = Arc::new(oci_layout(&tmp.path().join("l"), &layers, "v1"));
    let root = Arc::new(tmp.path().join("store"));
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let (layout, root) = (layout.clone(), root.clone());
            std::thread::spawn(move || {
                let store = Store::open(&root).unwrap(); // own fds: flock works between these as between processes
                import_layout(&store, &layout, "v1", "localhost/busy").unwrap()
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let unpacked: usize = results.iter().map(|(_, r)| r.layers_unpacked).sum();
    assert_eq!(unpacked, 4, "each layer unpacked exactly once across all importers");
    assert!(results.iter().all(|(i, _)| i.id == results[0].0.id && i.layers.iter().all(|l| l.is_dir())));
    let store = Store::open(&root).unwrap();
    assert_eq!(names(&store.root().join("layers")).len(), 4);
    assert!(names(&store.root().join("tmp")).is_empty());
}

#[test]
fn oci_layout_tar_and_untagged_layouts() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = oci_layout(&tmp.path().join("l"), &[base_layer()], "v1");
    // as a tar
    let tarp = tmp.path().join("layout.tar");
    let mut b = tar::Builder::new(fs::File::create(&tarp).unwrap());
    b.append_dir_all(".", &layout).unwrap();
    b.into_inner().unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let (img, _) = store.import(&Source::parse(&format!("oci:{}:v1", tarp.display())).unwrap(), None, &Limits::default()).unwrap();
    assert_eq!(img.references, vec![Reference::parse("localhost/layout:v1").unwrap()]);
    assert_eq!(fs::read(img.layers[0].join("bin/sh")).unwrap(), b"#!shell");
    // an unknown tag says which tags exist
    let err = store.import(&Source::parse(&format!("oci:{}:nope", tarp.display())).unwrap(), None, &Limits::default()).unwrap_err();
    assert!(err.to_string().contains("\"v1\""), "{err}");
}

#[test]
fn docker_archive_import() {
    let tmp = tempfile::tempdir().unwrap();
    let (l1, l2) = (base_layer(), top_layer());
    let config = ConfigFile {
        architecture: "amd64".into(),
        os: "linux".into(),
        created: None,
        config: Some(run_config()),
        rootfs: RootFs { kind: "layers".into(), diff_ids: vec![Digest::of(&l1), Digest::of(&l2)] },
    };
    let cb = serde_json::to_vec(&config).unwrap();
    let manifest = serde_json::json!([{"Config": format!("{}.json", Digest::of(&cb).hex()), "RepoTags": ["team/app:v3"],
                                        "Layers": ["aaa/layer.tar", "bbb/layer.tar"]}]);
    let arch = tmp.path().join("app.tar");
    let mut b = tar::Builder::new(fs::File::create(&arch).unwrap());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, data).unwrap();
    };
    add("manifest.json", &serde_json::to_vec(&manifest).unwrap());
    add(&format!("{}.json", Digest::of(&cb).hex()), &cb);
    add("aaa/layer.tar", &l1);
    add("bbb/layer.tar", &l2);
    b.into_inner().unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let (img, rep) =
        store.import(&Source::parse(&format!("docker-archive:{}", arch.display())).unwrap(), None, &Limits::default()).unwrap();
    assert_eq!(rep.layers_unpacked, 2);
    assert_eq!(img.references, vec![Reference::parse("team/app:v3").unwrap()]);
    assert_eq!(img.config.working_dir.as_deref(), Some("/work"));
    assert!(fs::symlink_metadata(img.layers[1].join("etc/motd")).unwrap().file_type().is_char_device());
}

#[test]
fn rootfs_dir_import() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = match envbox_rootfs::fixtures::cached(envbox_rootfs::fixtures::Fixture::Busybox) {
        Some(d) => d,
        None => {
            let d = tmp.path().join("rootfs");
            fs::create_dir_all(d.join("bin")).unwrap();
            fs::write(d.join("bin/busybox"), b"elf").unwrap();
            std::os::unix::fs::symlink("busybox", d.join("bin/sh")).unwrap();
            d
        }
    };
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let (img, _) = store
        .import(
            &Source::parse(&format!("dir:{}", dir.display())).unwrap(),
            Some(&Reference::parse("localhost/bb").unwrap()),
            &Limits::default(),
        )
        .unwrap();
    assert_eq!(img.layers.len(), 1);
    assert!(img.layers[0].join("bin/busybox").is_file());
    assert_eq!(fs::read_link(img.layers[0].join("bin/sh")).unwrap().to_string_lossy(), "busybox");
    assert!(img.config.env.iter().any(|e| e.starts_with("PATH=")));
    assert!(names(&store.root().join("tmp")).is_empty());
}

#[test]
fn layers_stack_as_overlay_lower_dirs() {
    if !rustix::process::geteuid().is_root() || !Path::new("/usr/bin/unshare").exists() {
        if std::env::var_os("SANDBOX_TESTS_MUST_RUN").is_some() {
            panic!("layers_stack_as_overlay_lower_dirs requires root and unshare");
        }
        eprintln!("layers_stack_as_overlay_lower_dirs requires root. Skipping test.");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let layout = oci_layout(&tmp.path().join("l"), &[base_layer(), top_layer()], "v1");
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let (img, _) = import_layout(&store, &layout, "v1", "localhost/ovl").unwrap();
    let merged = tmp.path().join("merged");
    fs::create_dir(&merged).unwrap();
    // In a private mount namespace (unshare -m), so nothing leaks into the host's mount table.
    let script = format!(
        "mount -t overlay overlay -o ro,lowerdir={lower} {m} && \
         test \"$(cat {m}/etc/passwd)\" = root:x:0:0 && \
         test ! -e {m}/etc/motd && \
         test \"$(cat {m}/opt/new)\" = new && test ! -e {m}/opt/old && \
         test -d {m}/work && test -f {m}/bin/sh",
        lower = img.overlay_lowerdir(),
        m = merged.display()
    );
    let out = std::process::Command::new("unshare").args(["-m", "--propagation", "private", "sh", "-ec", &script]).output().unwrap();
    assert!(
        out.status.success(),
        "overlay view of the image is wrong: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Run as a child process by `u10_concurrent_imports_from_separate_processes` (a no-op when
/// run normally): imports the layout named in the environment and prints what it unpacked.
#[test]
fn child_process_import_helper() {
    let (Ok(layout), Ok(root)) = (std::env::var("ENVBOX_TEST_CHILD_LAYOUT"), std::env::var("ENVBOX_TEST_CHILD_STORE")) else {
        return;
    };
    let store = Store::open(Path::new(&root)).unwrap();
    let (img, rep) = import_layout(&store, Path::new(&layout), "v1", "localhost/procs").unwrap();
    println!("CHILD unpacked={} id={}", rep.layers_unpacked, img.id);
}

#[test]
fn u10_concurrent_imports_from_separate_processes() {
    let tmp = tempfile::tempdir().unwrap();
    let layers: Vec<Vec<u8>> = (0..3).map(|i| tar_of(&[(&format!("p{i}"), &vec![b'y'; 2 << 20][..])])).collect();
    let layout = oci_layout(&tmp.path().join("l"), &layers, "v1");
    let root = tmp.path().join("store");
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..6)
        .map(|_| {
            std::process::Command::new(&exe)
                .args(["--exact", "child_process_import_helper", "--nocapture", "--test-threads=1"])
                .env("ENVBOX_TEST_CHILD_LAYOUT", &layout)
                .env("ENVBOX_TEST_CHILD_STORE", &root)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut unpacked = 0;
    let mut ids = std::collections::BTreeSet::new();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        // the harness prints "test ... " before the helper's output on the same line
        let line =
            text.lines().find_map(|l| l.split_once("CHILD ").map(|(_, r)| r)).unwrap_or_else(|| panic!("child printed no result: {text}"));
        let mut parts = line.split_whitespace();
        unpacked += parts.next().unwrap().trim_start_matches("unpacked=").parse::<usize>().unwrap();
        ids.insert(parts.next().unwrap().to_owned());
    }
    assert_eq!(unpacked, 3, "each layer unpacked by exactly one of the 6 processes");
    assert_eq!(ids.len(), 1);
    assert!(names(&root.join("tmp")).is_empty());
}

#[test]
fn files_and_users_are_read_through_the_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let l1 = tar_of(&[
        ("etc/", b""),
        ("etc/passwd", b"root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n"),
        ("etc/group", b"root:x:0:\nstaff:x:50:\n"),
        ("etc/gone", b"old"),
        ("etc/shadowed", b"lower"),
        ("opt/", b""),
        ("opt/lower-only", b"lower"),
        ("lnk", b"->/etc"),
    ]);
    let l2 = tar_of(&[("etc/.wh.gone", b""), ("etc/shadowed", b"upper"), ("opt/.wh..wh..opq", b"")]);
    let layout = oci_layout(&tmp.path().join("l"), &[l1, l2], "v1");
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let (mut img, _) = import_layout(&store, &layout, "v1", "localhost/users").unwrap();
    assert_eq!(img.read_file("/etc/shadowed", 100).unwrap(), b"upper");
    assert!(img.read_file("/etc/gone", 100).is_none(), "whited out");
    assert!(img.read_file("/lnk/passwd", 100).is_none(), "symlinks are not followed");
    assert!(img.read_file("/etc/../etc/passwd", 100).is_none());
    if rustix::process::geteuid().is_root() {
        assert!(img.read_file("/opt/lower-only", 100).is_none(), "hidden by the opaque dir");
    }
    let ids = |img: &envbox_rootfs::Image| img.user_ids();
    img.config.user = Some("1000:1000".into()); // as the test config says
    assert_eq!(ids(&img).unwrap(), Some((1000, 1000)));
    img.config.user = Some("app".into());
    assert_eq!(ids(&img).unwrap(), Some((1000, 1001)));
    img.config.user = Some("app:staff".into());
    assert_eq!(ids(&img).unwrap(), Some((1000, 50)));
    img.config.user = Some("1000".into());
    assert_eq!(ids(&img).unwrap(), Some((1000, 1001)));
    img.config.user = Some("4242".into());
    assert_eq!(ids(&img).unwrap(), Some((4242, 4242)));
    img.config.user = Some("nobody".into());
    assert!(ids(&img).unwrap_err().to_string().contains("numeric uid"));
    img.config.user = Some("app:wheel".into());
    assert!(ids(&img).is_err());
    img.config.user = None;
    assert_eq!(ids(&img).unwrap(), None);
}

#[test]
fn leased_images_survive_gc_until_released() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = oci_layout(&tmp.path().join("l"), &[base_layer(), top_layer()], "v1");
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let (img, _) = import_layout(&store, &layout, "v1", "localhost/leased").unwrap();
    let lease = store.lease(&img.id).unwrap();
    // a second holder (another sandbox) through its own descriptor
    let lease2 = Store::open(store.root()).unwrap().lease(&img.id).unwrap();
    store.remove(&Reference::parse("localhost/leased").unwrap()).unwrap();
    assert_eq!(store.gc(&[]).unwrap().layers_removed, 0, "leased: kept");
    drop(lease);
    assert_eq!(store.gc(&[]).unwrap().layers_removed, 0, "still leased by the second holder");
    assert!(img.layers.iter().all(|l| l.is_dir()));
    drop(lease2);
    let r = store.gc(&[]).unwrap();
    assert_eq!((r.images_removed, r.layers_removed), (1, 2));
    assert!(store.lease(&img.id).is_err(), "a removed image cannot be leased");
    assert!(names(&store.root().join("leases")).is_empty());
}
