//! Pulls from a real registry on loopback: Debian's `docker-registry` (the reference
//! registry server), started per test on a free 127.0.0.1 port with a temp storage dir.
//! The test image is built from the busybox test rootfs with `umoci` (two layers, the
//! second with a whiteout, and an image config) and pushed with `skopeo`.
//! Needs root (umoci unpack) and the three packages; .ci/run installs them.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileTypeExt;
use std::process::Command;
use std::sync::{Arc, Mutex};

use envbox_rootfs::registry::{PullOptions, RegistryError};
use envbox_rootfs::{ImageError, Platform, Reference, Store};

macro_rules! require_tools {
    ($name:expr) => {
        if let Some(why) = missing_prereq() {
            if std::env::var_os("SANDBOX_TESTS_MUST_RUN").is_some() {
                panic!("{}: {why} (SANDBOX_TESTS_MUST_RUN is set)", $name);
            }
            eprintln!("{} requires {why}. Skipping test.", $name);
            return;
        }
    };
}

fn missing_prereq() -> Option<String> {
    envbox_rootfs::fixtures::registry::missing_prereq()
}

use envbox_rootfs::fixtures::oci::{chain, names};
use envbox_rootfs::fixtures::registry::{layout, run, TestRegistry};

fn opts() -> PullOptions {
    PullOptions { progress: false, retries: 1, ..PullOptions::default() }
}

#[test]
fn pull_multi_layer_image_with_whiteout_and_config() {
    require_tools!("pull_multi_layer_image_with_whiteout_and_config");
    let reg = TestRegistry::start();
    reg.push("test/busybox:v1");
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let r = Reference::parse(&format!("{}/test/busybox:v1", reg.host())).unwrap();
    let (img, rep) = store.pull_with_report(&r, &opts()).unwrap();
    assert_eq!(rep.layers_unpacked, 2);
    assert_eq!(img.layers.len(), 2);
    let busybox = envbox_rootfs::fixtures::cached(envbox_rootfs::fixtures::Fixture::Busybox).unwrap();
    assert_eq!(fs::read(img.layers[0].join("bin/busybox")).unwrap(), fs::read(busybox.join("bin/busybox")).unwrap());
    assert!(fs::symlink_metadata(img.layers[1].join("etc/group")).unwrap().file_type().is_char_device(), "whiteout");
    assert_eq!(fs::read(img.layers[1].join("work/hello")).unwrap(), b"hello from layer 2\n");
    assert!(img.config.env.contains(&"GREETING=hello".to_string()));
    assert_eq!(img.config.working_dir.as_deref(), Some("/work"));
    assert_eq!(img.config.command(), vec!["/bin/sh", "-c", "echo $GREETING"]);
    assert_eq!(img.config.user.as_deref(), Some("1000:1000"));
    assert_eq!(img.config.labels["org.example"], "1");
    assert_eq!(img.manifest_digest.as_ref().unwrap().to_string(), reg.manifest_digest("test/busybox", "v1"));
    assert_eq!(store.list().unwrap().len(), 1);

    // again: the tag is re-resolved, every layer reused
    let (again, rep) = store.pull_with_report(&r, &opts()).unwrap();
    assert_eq!((rep.layers_unpacked, rep.layers_reused), (0, 2));
    assert_eq!(again.id, img.id);

    // by digest, under another name in the same registry
    reg.push("other/name:x");
    let by_digest = Reference::parse(&format!("{}/other/name@{}", reg.host(), reg.manifest_digest("other/name", "x"))).unwrap();
    let (pinned, rep) = store.pull_with_report(&by_digest, &opts()).unwrap();
    assert_eq!(pinned.id, img.id);
    assert_eq!(rep.layers_unpacked, 0);
    // a digest reference already in the store needs no registry at all
    drop(reg);
    assert_eq!(store.pull(&by_digest, &opts()).unwrap().id, img.id);
}

#[test]
fn manifest_list_picks_the_platform() {
    require_tools!("manifest_list_picks_the_platform");
    let reg = TestRegistry::start();
    reg.push("test/multi:single");
    let digest = reg.manifest_digest("test/multi", "single");
    let size = fs::metadata(reg.blob_path(digest.trim_start_matches("sha256:"))).unwrap().len();
    // A second manifest (same blobs, an annotation more) for the arm64 entry.
    let mut other: serde_json::Value =
        serde_json::from_slice(&fs::read(reg.blob_path(digest.trim_start_matches("sha256:"))).unwrap()).unwrap();
    other["annotations"] = serde_json::json!({"note": "arm64 stand-in"});
    let other = serde_json::to_vec(&other).unwrap();
    let other_digest = envbox_rootfs::Digest::of(&other);
    ureq::put(&format!("http://{}/v2/test/multi/manifests/arm", reg.host()))
        .set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .send_bytes(&other)
        .unwrap_or_else(|e| panic!("PUT manifest: {e}"));
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": other.len(),
             "digest": other_digest.to_string(),
             "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": size, "digest": digest,
             "platform": {"architecture": "amd64", "os": "linux"}}
        ]
    });
    let url = format!("http://{}/v2/test/multi/manifests/multi", reg.host());
    ureq::put(&url)
        .set("Content-Type", "application/vnd.oci.image.index.v1+json")
        .send_bytes(&serde_json::to_vec(&index).unwrap())
        .unwrap_or_else(|e| panic!("PUT index: {e}"));
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let r = Reference::parse(&format!("{}/test/multi:multi", reg.host())).unwrap();
    let img = store
        .pull(&r, &PullOptions { platform: Some(Platform { architecture: "amd64".into(), os: "linux".into(), variant: None }), ..opts() })
        .unwrap();
    assert_eq!(img.manifest_digest.unwrap().to_string(), digest);
    let arm =
        PullOptions { platform: Some(Platform { architecture: "arm64".into(), os: "linux".into(), variant: Some("v8".into()) }), ..opts() };
    assert_eq!(store.pull(&r, &arm).unwrap().manifest_digest.unwrap(), other_digest);
    let want = PullOptions { platform: Some(Platform { architecture: "s390x".into(), os: "linux".into(), variant: None }), ..opts() };
    let err = store.pull(&r, &want).unwrap_err();
    assert!(matches!(err, ImageError::Registry(RegistryError::NoPlatform { .. })), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("linux/s390x") && msg.contains("linux/arm64/v8") && msg.contains("linux/amd64"), "{msg}");
}

#[test]
fn u9_tampered_blob_or_manifest_gives_a_digest_error_and_stores_nothing() {
    require_tools!("u9_tampered_blob_or_manifest_gives_a_digest_error_and_stores_nothing");
    let reg = TestRegistry::start();
    reg.push("test/tamper:v1");
    let mdigest = reg.manifest_digest("test/tamper", "v1");
    let mpath = reg.blob_path(mdigest.trim_start_matches("sha256:"));
    let manifest: serde_json::Value = serde_json::from_slice(&fs::read(&mpath).unwrap()).unwrap();
    let top = manifest["layers"][1]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_owned();
    let r = Reference::parse(&format!("{}/test/tamper:v1", reg.host())).unwrap();

    // one flipped byte in the top layer's blob
    let lpath = reg.blob_path(&top);
    let mut blob = fs::read(&lpath).unwrap();
    let mid = blob.len() / 2;
    blob[mid] ^= 0x40;
    fs::write(&lpath, &blob).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let err = store.pull(&r, &opts()).unwrap_err();
    assert!(matches!(err, ImageError::Registry(RegistryError::BlobDigest { .. })), "{}", chain(&err));
    let msg = err.to_string();
    assert!(msg.contains("tampered") && msg.contains(&top), "{msg}");
    assert!(store.list().unwrap().is_empty() && store.get(&r).unwrap().is_none());
    assert!(names(&store.root().join("images")).is_empty());
    assert!(names(&store.root().join("tmp")).is_empty(), "the download was removed");
    assert!(names(&store.root().join("layers")).len() <= 1, "at most the untouched base layer, verified");
    blob[mid] ^= 0x40;
    fs::write(&lpath, &blob).unwrap();

    // one byte more in the manifest (still valid JSON, so the registry serves it): its digest
    // no longer matches the one the registry announces
    let mut m = fs::read(&mpath).unwrap();
    m.insert(1, b' ');
    fs::write(&mpath, &m).unwrap();
    let store = Store::open(&tmp.path().join("store2")).unwrap();
    let err = store.pull(&r, &opts()).unwrap_err();
    assert!(matches!(err, ImageError::Registry(RegistryError::ManifestDigest { .. })), "{}", chain(&err));
    assert!(names(&store.root().join("layers")).is_empty());
}

#[test]
fn missing_image_and_unreachable_registry_give_clear_errors() {
    require_tools!("missing_image_and_unreachable_registry_give_clear_errors");
    let reg = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let err = store.pull(&Reference::parse(&format!("{}/no/such:tag", reg.host())).unwrap(), &opts()).unwrap_err();
    assert!(err.to_string().contains("404") && err.to_string().contains("check the image name"), "{err}");
    let port = reg.port;
    drop(reg);
    let err = store.pull(&Reference::parse(&format!("127.0.0.1:{port}/x:y")).unwrap(), &opts()).unwrap_err();
    assert!(err.to_string().contains("cannot reach"), "{err}");
}

/// A stand-in for a public registry's auth: answers 401 with a Bearer challenge, issues a
/// token at /token (asking for basic credentials if `basic` is set), and redirects
/// authorised requests to the real registry (as registries redirect blobs to storage).
fn start_token_proxy(upstream: u16, basic: Option<&'static str>) -> u16 {
    start_auth_proxy(upstream, basic, false)
}

/// With `basic_only`, the proxy asks for HTTP basic auth on every request instead (as a
/// registry behind htpasswd does).
fn start_auth_proxy(upstream: u16, basic: Option<&'static str>, basic_only: bool) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            std::thread::spawn(move || serve_token_proxy(s, port, upstream, basic, basic_only));
        }
    });
    port
}

fn serve_token_proxy(mut s: TcpStream, port: u16, upstream: u16, basic: Option<&str>, basic_only: bool) {
    let mut first = [0u8; 1];
    if s.peek(&mut first).is_err() || first[0] == 0x16 {
        return; // a TLS ClientHello: this server only speaks http, as the probe expects
    }
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let mut auth = String::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("authorization") {
                auth = v.trim().to_owned();
            }
        }
    }
    let reply = if basic_only {
        if basic.is_some_and(|b| auth == format!("Basic {b}")) {
            format!("HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1:{upstream}{path}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        } else {
            "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"test registry\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                .to_owned()
        }
    } else if path.starts_with("/token") {
        let scope_ok = path.contains("scope=repository%3Atest%2Fbusybox%3Apull") && path.contains("service=envbox-test");
        let basic_ok = basic.map_or(true, |b| auth == format!("Basic {b}"));
        if scope_ok && basic_ok {
            let body = r#"{"token":"tok-123","expires_in":300}"#;
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
        } else {
            "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned()
        }
    } else if auth != "Bearer tok-123" {
        format!(
            "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"envbox-test\",scope=\"repository:test/busybox:pull\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
    } else {
        format!("HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1:{upstream}{path}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    };
    let _ = s.write_all(reply.as_bytes());
    let _ = s.read(&mut [0u8; 1]);
}

#[test]
fn bearer_token_handshake_with_and_without_credentials() {
    require_tools!("bearer_token_handshake_with_and_without_credentials");
    let reg = TestRegistry::start();
    reg.push("test/busybox:v1");
    let tmp = tempfile::tempdir().unwrap();

    // anonymous token
    let anon = start_token_proxy(reg.port, None);
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let img = store.pull(&Reference::parse(&format!("127.0.0.1:{anon}/test/busybox:v1")).unwrap(), &opts()).unwrap();
    assert_eq!(img.layers.len(), 2);

    // the token endpoint wants basic credentials: without them, a clear error naming the file
    let creds = "YWxpY2U6czNjcmV0"; // alice:s3cret
    let locked = start_token_proxy(reg.port, Some(creds));
    let r = Reference::parse(&format!("127.0.0.1:{locked}/test/busybox:v1")).unwrap();
    let empty = tmp.path().join("empty.json");
    fs::write(&empty, b"{}").unwrap();
    let store = Store::open(&tmp.path().join("store2")).unwrap();
    let err = store.pull(&r, &PullOptions { credentials_file: Some(empty.clone()), ..opts() }).unwrap_err();
    assert!(err.to_string().contains("requires authentication") && err.to_string().contains("empty.json"), "{err}");
    // with them, from a docker-style credentials file
    let file = tmp.path().join("auth.json");
    fs::write(&file, format!(r#"{{"auths":{{"127.0.0.1:{locked}":{{"auth":"{creds}"}}}}}}"#)).unwrap();
    let img2 = store.pull(&r, &PullOptions { credentials_file: Some(file), ..opts() }).unwrap();
    assert_eq!(img2.id, img.id);

    // a registry that asks for HTTP basic auth itself (htpasswd style)
    let basic = start_auth_proxy(reg.port, Some(creds), true);
    let r = Reference::parse(&format!("127.0.0.1:{basic}/test/busybox:v1")).unwrap();
    let store = Store::open(&tmp.path().join("store3")).unwrap();
    let err = store.pull(&r, &PullOptions { credentials_file: Some(empty), ..opts() }).unwrap_err();
    assert!(err.to_string().contains("requires authentication"), "{err}");
    let file = tmp.path().join("auth-basic.json");
    fs::write(&file, format!(r#"{{"auths":{{"127.0.0.1:{basic}":{{"username":"alice","password":"s3cret"}}}}}}"#)).unwrap();
    assert_eq!(store.pull(&r, &PullOptions { credentials_file: Some(file), ..opts() }).unwrap().id, img.id);
}

#[test]
fn u10_concurrent_pulls_of_one_image_unpack_each_layer_once() {
    require_tools!("u10_concurrent_pulls_of_one_image_unpack_each_layer_once");
    let reg = TestRegistry::start();
    reg.push("test/busybox:v1");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let r = Reference::parse(&format!("{}/test/busybox:v1", reg.host())).unwrap();
    let results: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    let store = Store::open(&root).unwrap();
                    store.pull_with_report(&r, &opts()).unwrap()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let unpacked: usize = results.iter().map(|(_, rep)| rep.layers_unpacked).sum();
    assert_eq!(unpacked, 2, "each of the 2 layers unpacked exactly once");
    assert!(results.iter().all(|(i, _)| i.id == results[0].0.id));
    assert!(names(&root.join("tmp")).is_empty());
}

/// A forwarding proxy in front of the registry that fails on purpose: the first manifest
/// request gets a 503, and the first download of each blob larger than 4 KiB is cut off
/// half way (full Content-Length announced, connection closed). Logs every request.
fn start_flaky_proxy(upstream: u16) -> (u16, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::new(Mutex::new(std::collections::HashSet::new()));
    let log2 = log.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            let (log, seen) = (log2.clone(), seen.clone());
            std::thread::spawn(move || serve_flaky(s, upstream, &log, &seen));
        }
    });
    (port, log)
}

fn serve_flaky(mut s: TcpStream, upstream: u16, log: &Mutex<Vec<String>>, seen: &Mutex<std::collections::HashSet<String>>) {
    let mut first = [0u8; 1];
    if s.peek(&mut first).is_err() || first[0] == 0x16 {
        return;
    }
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let (mut range, mut accept) = (None, None);
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("range") {
                range = Some(v.trim().to_owned());
            } else if k.eq_ignore_ascii_case("accept") {
                accept = Some(v.trim().to_owned());
            }
        }
    }
    let first_time = seen.lock().unwrap().insert(path.clone());
    if path.contains("/manifests/") && first_time {
        log.lock().unwrap().push(format!("503 {path}"));
        let _ = s.write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    }
    let mut req = ureq::get(&format!("http://127.0.0.1:{upstream}{path}"));
    if let Some(a) = &accept {
        req = req.set("Accept", a);
    }
    if let Some(rg) = &range {
        req = req.set("Range", rg);
    }
    let resp = match req.call() {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(_) => return,
    };
    let status = resp.status();
    let mut head = format!("HTTP/1.1 {status} X\r\nConnection: close\r\n");
    for h in ["content-type", "docker-content-digest", "content-range", "www-authenticate"] {
        if let Some(v) = resp.header(h) {
            head.push_str(&format!("{h}: {v}\r\n"));
        }
    }
    let mut body = Vec::new();
    resp.into_reader().read_to_end(&mut body).unwrap();
    let cut = path.contains("/blobs/") && range.is_none() && body.len() > 4096 && first_time;
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    log.lock().unwrap().push(format!("{status} {path} range={range:?} cut={cut}"));
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(if cut { &body[..body.len() / 2] } else { &body });
    let _ = s.shutdown(std::net::Shutdown::Both);
}

#[test]
fn pull_retries_a_503_and_resumes_a_broken_blob_download() {
    require_tools!("pull_retries_a_503_and_resumes_a_broken_blob_download");
    let reg = TestRegistry::start();
    reg.push("test/busybox:v1");
    let (port, log) = start_flaky_proxy(reg.port);
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let r = Reference::parse(&format!("127.0.0.1:{port}/test/busybox:v1")).unwrap();
    let img = store.pull(&r, &PullOptions { retries: 3, ..opts() }).unwrap();
    let busybox = envbox_rootfs::fixtures::cached(envbox_rootfs::fixtures::Fixture::Busybox).unwrap();
    assert_eq!(fs::read(img.layers[0].join("bin/busybox")).unwrap(), fs::read(busybox.join("bin/busybox")).unwrap());
    let log = log.lock().unwrap().clone();
    assert!(log.iter().any(|l| l.starts_with("503 ")), "{log:#?}");
    assert!(log.iter().any(|l| l.contains("cut=true")), "{log:#?}");
    assert!(log.iter().any(|l| l.starts_with("206 ") && l.contains("range=Some(\"bytes=")), "resumed with Range: {log:#?}");
}

#[test]
fn plain_http_only_for_loopback_or_insecure_registries() {
    require_tools!("plain_http_only_for_loopback_or_insecure_registries");
    let out = Command::new("hostname").arg("-I").output().unwrap();
    let Some(addr) = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find(|a| a.parse::<std::net::Ipv4Addr>().is_ok_and(|a| !a.is_loopback()))
        .map(str::to_owned)
    else {
        eprintln!("plain_http_only_for_loopback_or_insecure_registries: no non-loopback IPv4 address. Skipping test.");
        return;
    };
    let reg = TestRegistry::start_on("0.0.0.0");
    reg.push("test/busybox:v1");
    let host = format!("{addr}:{}", reg.port);
    let r = Reference::parse(&format!("{host}/test/busybox:v1")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let err = store.pull(&r, &opts()).unwrap_err();
    assert!(matches!(err, ImageError::Registry(RegistryError::HttpsRequired { .. })), "{}", chain(&err));
    assert!(err.to_string().contains("insecure"), "{err}");
    let img = store.pull(&r, &PullOptions { insecure_registries: vec![host], ..opts() }).unwrap();
    assert_eq!(img.layers.len(), 2);
}

#[test]
fn pull_zstd_compressed_layers() {
    require_tools!("pull_zstd_compressed_layers");
    let reg = TestRegistry::start();
    reg.push_with("test/zstd:v1", &["--dest-compress-format", "zstd", "--dest-compress"]);
    let mdigest = reg.manifest_digest("test/zstd", "v1");
    let m: serde_json::Value = serde_json::from_slice(&fs::read(reg.blob_path(mdigest.trim_start_matches("sha256:"))).unwrap()).unwrap();
    assert!(m["layers"][0]["mediaType"].as_str().unwrap().ends_with("+zstd"), "skopeo pushed zstd layers: {m}");
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let img = store.pull(&Reference::parse(&format!("{}/test/zstd:v1", reg.host())).unwrap(), &opts()).unwrap();
    assert!(fs::symlink_metadata(img.layers[1].join("etc/group")).unwrap().file_type().is_char_device());
    assert_eq!(fs::read(img.layers[1].join("work/hello")).unwrap(), b"hello from layer 2\n");
}

/// Pushes the test image to `name:v1` with its layers decompressed (media type `...tar`),
/// through the registry's own upload API (skopeo always compresses for a registry).
fn push_uncompressed_copy(reg: &TestRegistry, name: &str) {
    let img = layout();
    let index: serde_json::Value = serde_json::from_slice(&fs::read(img.join("index.json")).unwrap()).unwrap();
    let blob = |d: &str| fs::read(img.join("blobs/sha256").join(d.trim_start_matches("sha256:"))).unwrap();
    let mut m: serde_json::Value = serde_json::from_slice(&blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap();
    let upload = |bytes: &[u8]| {
        let d = envbox_rootfs::Digest::of(bytes);
        // start an upload session, then finish it with the whole blob (a "monolithic" PUT)
        let started = ureq::post(&format!("http://{}/v2/{name}/blobs/uploads/", reg.host())).call().unwrap();
        let loc = started.header("location").unwrap().to_owned();
        let loc = if loc.starts_with("http") { loc } else { format!("http://{}{loc}", reg.host()) };
        let sep = if loc.contains('?') { '&' } else { '?' };
        ureq::put(&format!("{loc}{sep}digest={d}"))
            .set("Content-Type", "application/octet-stream")
            .send_bytes(bytes)
            .unwrap_or_else(|e| panic!("upload: {e}"));
        d
    };
    for layer in m["layers"].as_array_mut().unwrap() {
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(&blob(layer["digest"].as_str().unwrap())[..]).read_to_end(&mut tar).unwrap();
        let d = upload(&tar);
        layer["mediaType"] = "application/vnd.oci.image.layer.v1.tar".into();
        layer["digest"] = d.to_string().into();
        layer["size"] = tar.len().into();
    }
    upload(&blob(m["config"]["digest"].as_str().unwrap()));
    ureq::put(&format!("http://{}/v2/{name}/manifests/v1", reg.host()))
        .set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .send_bytes(&serde_json::to_vec(&m).unwrap())
        .unwrap_or_else(|e| panic!("PUT manifest: {e}"));
}

#[test]
fn pull_docker_schema2_and_uncompressed_layers() {
    require_tools!("pull_docker_schema2_and_uncompressed_layers");
    let reg = TestRegistry::start();
    reg.push_with("test/v2s2:v1", &["--format", "v2s2"]);
    push_uncompressed_copy(&reg, "test/plain");
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    for (name, media) in [("test/v2s2", "application/vnd.docker.image.rootfs.diff.tar.gzip"), ("test/plain", "tar")] {
        let m: serde_json::Value =
            serde_json::from_slice(&fs::read(reg.blob_path(reg.manifest_digest(name, "v1").trim_start_matches("sha256:"))).unwrap())
                .unwrap();
        let mt = m["layers"][0]["mediaType"].as_str().unwrap().to_owned();
        assert!(mt.ends_with(media), "{name}: {mt}");
        let img = store.pull(&Reference::parse(&format!("{}/{name}:v1", reg.host())).unwrap(), &opts()).unwrap();
        assert!(fs::symlink_metadata(img.layers[1].join("etc/group")).unwrap().file_type().is_char_device(), "{name}");
        assert_eq!(img.config.working_dir.as_deref(), Some("/work"), "{name}");
    }
}

#[test]
fn import_what_skopeo_writes_as_docker_archive_and_oci_archive() {
    require_tools!("import_what_skopeo_writes_as_docker_archive_and_oci_archive");
    let tmp = tempfile::tempdir().unwrap();
    let darch = tmp.path().join("bb-docker.tar");
    let oarch = tmp.path().join("bb-oci.tar");
    run(Command::new("skopeo")
        .args(["copy", "--quiet", "--insecure-policy"])
        .arg(format!("oci:{}:v1", layout().display()))
        .arg(format!("docker-archive:{}:team/bb:v1", darch.display())));
    run(Command::new("skopeo")
        .args(["copy", "--quiet", "--insecure-policy"])
        .arg(format!("oci:{}:v1", layout().display()))
        .arg(format!("oci-archive:{}:v1", oarch.display())));
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let limits = envbox_rootfs::Limits::default();
    let (d, _) =
        store.import(&envbox_rootfs::Source::parse(&format!("docker-archive:{}", darch.display())).unwrap(), None, &limits).unwrap();
    assert_eq!(d.references, vec![Reference::parse("team/bb:v1").unwrap()]);
    let (o, _) = store.import(&envbox_rootfs::Source::parse(&format!("oci:{}:v1", oarch.display())).unwrap(), None, &limits).unwrap();
    let (l, _) = store.import(&envbox_rootfs::Source::parse(&format!("oci:{}:v1", layout().display())).unwrap(), None, &limits).unwrap();
    for img in [&d, &o, &l] {
        assert_eq!(img.diff_ids, l.diff_ids, "same layers whatever the container format");
        assert_eq!(img.config.user.as_deref(), Some("1000:1000"));
        assert!(fs::symlink_metadata(img.layers[1].join("etc/group")).unwrap().file_type().is_char_device());
    }
    assert_eq!(names(&store.root().join("layers")).len(), 2, "the three imports share two layer dirs");
}
