//! Sandboxes on store images: pulled from a real registry on loopback
//! (Debian's docker-registry, started by the test; the image is the
//! busybox rootfs plus a layer with a whiteout and a config with env,
//! workdir, entrypoint and user, built with umoci and pushed with skopeo),
//! imported from an OCI layout, listed, and removed while in use.

mod common;

use std::process::{Command, Output};

use common::TestRoot;
use envbox::{Image, Sandbox};
use envbox_rootfs::fixtures::registry::{layout, TestRegistry};

fn envbox(root: &TestRoot, args: &[&str]) -> Output {
    Command::new(common::agent()).env("ENVBOX_ROOT", &root.path).args(args).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn layer_count(root: &TestRoot) -> usize {
    std::fs::read_dir(root.path.join(".images/layers"))
        .map(|d| d.flatten().filter(|e| !e.file_name().to_string_lossy().starts_with('.')).count())
        .unwrap_or(0)
}

#[test]
fn registry_images_pull_run_reset_and_rmi() {
    require_registry!("registry_images_pull_run_reset_and_rmi");
    let root = TestRoot::new("img-reg");
    let reg = TestRegistry::start();
    reg.push("team/env:v1");
    let reference = format!("{}/team/env:v1", reg.host());

    let o = envbox(&root, &["pull", &reference]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = envbox(&root, &["images", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(list[0]["references"][0], reference.as_str(), "{list}");
    assert_eq!(list[0]["layers"], 2);

    // The image's layers, whiteout and config reach the sandbox. As root:
    // the changes below must be possible for the reset to undo them (the
    // image's User, 1000:1000, applies otherwise: see tests/user.rs).
    let mut cfg = root.config(Image::Ref(reference.clone()));
    cfg.user = Some("root".into());
    let sb = Sandbox::create(&cfg, "reg").unwrap();
    let o = sb.run("pwd; echo $GREETING; cat hello; test -e /etc/group; echo $?; busybox true && echo busybox").unwrap();
    assert_eq!(o.stdout_str(), "/work\nhello\nhello from layer 2\n1\nbusybox\n", "{o:?}");
    sb.run("echo changed > /work/hello; rm /bin/busybox").unwrap();
    sb.reset().unwrap();
    assert_eq!(sb.run("cat /work/hello").unwrap().stdout_str(), "hello from layer 2\n");

    // rmi while the sandbox runs: the tag goes, the layers stay (the
    // agent's lease), and the sandbox keeps working, resets included.
    let layers = layer_count(&root);
    assert_eq!(layers, 2);
    let o = envbox(&root, &["rmi", &reference]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(layer_count(&root), 2, "layers of a running sandbox's image were removed");
    sb.reset().unwrap();
    assert_eq!(sb.run("cat /work/hello").unwrap().stdout_str(), "hello from layer 2\n");
    let o = envbox(&root, &["images", "--json"]);
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap(), serde_json::json!([]));
    // Once the sandbox is gone, the next collection frees the layers.
    sb.delete_and_wait().unwrap();
    envbox::images::store(&root.path).unwrap().gc(&[]).unwrap();
    assert_eq!(layer_count(&root), 0);
    root.assert_clean();
}

#[test]
fn create_pulls_missing_images_and_imports_oci_layouts() {
    require_registry!("create_pulls_missing_images_and_imports_oci_layouts");
    let root = TestRoot::new("img-src");
    let reg = TestRegistry::start();
    reg.push("lib/app:v1");
    // Not pulled before: create pulls it. The CLI takes references as --image.
    let reference = format!("{}/lib/app:v1", reg.host());
    let o = envbox(&root, &["create", "a", "--image", &reference, "--env", "GREETING=override"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = envbox(&root, &["exec", "a", "echo $GREETING; pwd; id -u"]);
    assert_eq!(text(&o.stdout), "override\n/work\n1000\n", "the caller's env wins over the image's; its User applies");
    // An OCI layout on disk, as a local source; its layers are the same
    // content, so nothing new is unpacked.
    let layers = layer_count(&root);
    let oci = format!("oci:{}:v1", layout().display());
    let sb = Sandbox::create(&root.config(Image::parse(&oci)), "b").unwrap();
    assert_eq!(sb.run("cat /work/hello").unwrap().stdout_str(), "hello from layer 2\n");
    assert_eq!(layer_count(&root), layers, "layers are shared between images");
    drop(sb);
    assert!(envbox(&root, &["rm", "a"]).status.success());

    // Bad input: one clear line, nothing left behind.
    for (image, needle) in [
        (format!("{}/lib/nope:v1", reg.host()), "nope"),
        ("Bad Reference!".to_string(), "invalid image"),
        ("oci:/nonexistent/layout".to_string(), "/nonexistent/layout"),
    ] {
        let o = envbox(&root, &["create", "x", "--image", &image]);
        assert_eq!(o.status.code(), Some(125), "{image}");
        assert!(text(&o.stderr).contains(needle), "{image}: {}", text(&o.stderr));
    }
    root.assert_clean();
}
