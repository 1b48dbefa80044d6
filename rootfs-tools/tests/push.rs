//! Pushes to a real registry on loopback (Debian's `docker-registry`, started per test on a
//! free 127.0.0.1 port), pulled back into a fresh store and read with skopeo. The test image
//! is the fixture OCI layout (busybox layer, then a layer with a whiteout; a config with env,
//! workdir, entrypoint, cmd, user and a label). Needs root and the three packages.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use envbox_rootfs::fixtures::oci::{chain, names};
use envbox_rootfs::fixtures::registry::{layout, TestRegistry};
use envbox_rootfs::registry::{PullOptions, RegistryError};
use envbox_rootfs::{Digest, Image, ImageError, Limits, PushError, Reference, Source, Store};

macro_rules! require_tools {
    ($name:expr) => {
        if let Some(why) = envbox_rootfs::fixtures::registry::missing_prereq() {
            if std::env::var_os("SANDBOX_TESTS_MUST_RUN").is_some() {
                panic!("{}: {why} (SANDBOX_TESTS_MUST_RUN is set)", $name);
            }
            eprintln!("SKIPPED: {} requires {why}", $name);
            return;
        }
    };
}

fn opts() -> PullOptions {
    PullOptions { progress: false, retries: 1, ..PullOptions::default() }
}

fn import_fixture(store: &Store) -> Image {
    let src = Source::parse(&format!("oci:{}:v1", layout().display())).unwrap();
    store.import(&src, None, &Limits::default()).unwrap().0
}

fn config_json(store: &Store, id: &Digest) -> serde_json::Value {
    serde_json::from_slice(&fs::read(store.root().join("blobs/sha256").join(id.hex())).unwrap()).unwrap()
}

fn skopeo(args: &[&str]) -> Vec<u8> {
    let out = Command::new("skopeo").args(args).output().unwrap();
    assert!(out.status.success(), "skopeo {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

#[test]
fn push_then_pull_into_a_fresh_store_gives_the_same_image() {
    require_tools!("push_then_pull_into_a_fresh_store_gives_the_same_image");
    let reg = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let local = Store::open(&tmp.path().join("local")).unwrap();
    let img = import_fixture(&local);
    let target = Reference::parse(&format!("{}/team/pushed:v1", reg.host())).unwrap();
    let report = local.push(&img, &target, &opts()).unwrap();
    assert_eq!((report.layers_uploaded, report.layers_present), (2, 0));
    assert!(report.bytes_uploaded > 500_000, "busybox went up compressed: {report:?}");
    // The fixture's layer tars were written by umoci (PAX headers, user and group names, its
    // own entry order), not by write_layer_tar, so the tars regenerated from the store differ
    // and so do their diff_ids: the config must go up with the new diff_ids, and the pushed
    // image gets a new id. Everything else in the config is kept.
    assert!(report.config_rewritten, "{report:?}");
    assert_eq!(report.diff_ids.len(), 2);
    assert!(report.diff_ids.iter().zip(&img.diff_ids).all(|(new, old)| new != old), "{report:?}");
    assert_ne!(report.config_digest, img.id);
    assert!(names(&local.root().join("tmp")).is_empty(), "the push's temp files are gone");

    // pulled back into a fresh store: the pushed diff_ids and id, the same files and config
    let fresh = Store::open(&tmp.path().join("fresh")).unwrap();
    let pulled = fresh.pull(&target, &opts()).unwrap();
    assert_eq!(pulled.diff_ids, report.diff_ids);
    assert_eq!(pulled.id, report.config_digest);
    assert_eq!(pulled.manifest_digest.as_ref(), Some(&report.manifest_digest));
    assert_eq!(pulled.manifest_digest.as_ref().unwrap().to_string(), reg.manifest_digest("team/pushed", "v1"));
    assert_eq!(pulled.config, img.config);
    assert_eq!((&pulled.architecture, &pulled.os, &pulled.created), (&img.architecture, &img.os, &img.created));
    let mut want = config_json(&local, &img.id);
    want["rootfs"]["diff_ids"] = serde_json::to_value(&report.diff_ids).unwrap();
    assert_eq!(config_json(&fresh, &pulled.id), want, "only rootfs.diff_ids changed");
    assert_eq!(pulled.read_file("/work/hello", 1 << 20).as_deref(), Some(&b"hello from layer 2\n"[..]));
    assert_eq!(pulled.read_file("/etc/group", 1 << 20), None, "the whiteout of layer 2 hides etc/group");
    assert!(img.layers[0].join("etc/group").exists() && pulled.layers[0].join("etc/group").exists(), "layer 1 has it");
    for f in ["/bin/busybox", "/etc/passwd"] {
        let a = img.read_file(f, 64 << 20).unwrap();
        assert_eq!(pulled.read_file(f, 64 << 20).unwrap(), a, "{f}");
    }

    // a third-party tool reads what was pushed
    let url = format!("docker://{}/team/pushed:v1", reg.host());
    let raw = skopeo(&["inspect", "--tls-verify=false", "--raw", &url]);
    assert_eq!(Digest::of(&raw), report.manifest_digest);
    let m: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(m["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(m["config"]["mediaType"], "application/vnd.oci.image.config.v1+json");
    assert_eq!(m["layers"][1]["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip");
    let info: serde_json::Value = serde_json::from_slice(&skopeo(&["inspect", "--tls-verify=false", &url])).unwrap();
    assert_eq!(info["Digest"], report.manifest_digest.to_string());
    assert_eq!(info["Layers"].as_array().unwrap().len(), 2);
    assert_eq!(info["Env"][0], "GREETING=hello");
    // and can copy it out, fetching and checking every blob
    let out = tmp.path().join("skopeo-copy");
    skopeo(&["copy", "--quiet", "--insecure-policy", "--src-tls-verify=false", &url, &format!("oci:{}:v1", out.display())]);

    // The pulled image's layers came from our own writer, so pushing it again is byte for
    // byte: the stored config as is, the same manifest, nothing to upload.
    let again = fresh.push(&pulled, &Reference::parse(&format!("{}/team/pushed:v2", reg.host())).unwrap(), &opts()).unwrap();
    assert!(!again.config_rewritten, "{again:?}");
    assert_eq!(again.config_digest, pulled.id);
    assert_eq!(again.diff_ids, pulled.diff_ids);
    assert_eq!(again.manifest_digest, report.manifest_digest);
    assert_eq!((again.layers_uploaded, again.layers_present, again.bytes_uploaded), (0, 2, 0));
}

#[test]
fn pushing_twice_uploads_nothing_the_second_time() {
    require_tools!("pushing_twice_uploads_nothing_the_second_time");
    let reg = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let img = import_fixture(&store);
    let target = Reference::parse(&format!("{}/team/twice:v1", reg.host())).unwrap();
    let first = store.push(&img, &target, &opts()).unwrap();
    assert_eq!((first.layers_uploaded, first.layers_present), (2, 0));
    let second = store.push(&img, &target, &opts()).unwrap();
    assert_eq!((second.layers_uploaded, second.layers_present, second.bytes_uploaded), (0, 2, 0));
    assert_eq!(second.manifest_digest, first.manifest_digest, "the same bytes, so the same manifest");
    assert_eq!(second.config_digest, first.config_digest);
    // under another name in the same registry the blobs are uploaded again (no cross-repo
    // mount), and the manifest is the same
    let other = store.push(&img, &Reference::parse(&format!("{}/team/other:v1", reg.host())).unwrap(), &opts()).unwrap();
    assert_eq!((other.layers_uploaded, other.manifest_digest), (2, first.manifest_digest));
    assert!(names(&store.root().join("tmp")).is_empty());
}

/// A small root filesystem: files, a subdirectory, a symlink, odd modes.
fn make_rootfs(d: &Path) {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(d.join("etc")).unwrap();
    fs::create_dir_all(d.join("usr/bin")).unwrap();
    fs::write(d.join("etc/os-release"), b"ID=envbox-test\n").unwrap();
    fs::write(d.join("usr/bin/tool"), b"#!/bin/sh\necho tool\n").unwrap();
    fs::set_permissions(d.join("usr/bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(d.join("usr/big"), vec![42u8; 300_000]).unwrap();
    std::os::unix::fs::symlink("usr/bin", d.join("bin")).unwrap();
}

#[test]
fn a_rootfs_dir_import_round_trips() {
    require_tools!("a_rootfs_dir_import_round_trips");
    let reg = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = tmp.path().join("rootfs");
    make_rootfs(&rootfs);
    let local = Store::open(&tmp.path().join("local")).unwrap();
    let (img, _) = local.import(&Source::RootfsDir { path: rootfs.clone() }, None, &Limits::default()).unwrap();
    let target = Reference::parse(&format!("{}/team/dir:v1", reg.host())).unwrap();
    let report = local.push(&img, &target, &opts()).unwrap();
    // A dir import is tarred by tar::Builder (entries "./"-prefixed, in directory order, with
    // the root entry and full headers), not by write_layer_tar, so the regenerated layer has
    // another diff_id and the config is rewritten, exactly as for a foreign image.
    assert!(report.config_rewritten, "{report:?}");
    assert_ne!(report.diff_ids, img.diff_ids);
    assert_ne!(report.config_digest, img.id);
    assert_eq!((report.layers_uploaded, report.layers_present), (1, 0));

    let fresh = Store::open(&tmp.path().join("fresh")).unwrap();
    let pulled = fresh.pull(&target, &opts()).unwrap();
    assert_eq!(pulled.diff_ids, report.diff_ids, "the pulled image has the regenerated diff_ids");
    assert_eq!(pulled.id, report.config_digest);
    assert_eq!(pulled.config, img.config);
    for f in ["/etc/os-release", "/usr/bin/tool", "/usr/big"] {
        assert_eq!(pulled.read_file(f, 1 << 20).unwrap(), fs::read(rootfs.join(&f[1..])).unwrap(), "{f}");
    }
    assert_eq!(fs::read_link(pulled.layers[0].join("bin")).unwrap(), Path::new("usr/bin"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(fs::metadata(pulled.layers[0].join("usr/bin/tool")).unwrap().permissions().mode() & 0o7777, 0o755);
    // and from there on it is stable
    let again = fresh.push(&pulled, &target, &opts()).unwrap();
    assert!(!again.config_rewritten);
    assert_eq!((again.manifest_digest, again.layers_uploaded), (report.manifest_digest, 0));
}

#[test]
fn push_errors_are_clear_and_quick() {
    require_tools!("push_errors_are_clear_and_quick");
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = tmp.path().join("rootfs");
    make_rootfs(&rootfs);
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let (img, _) = store.import(&Source::RootfsDir { path: rootfs }, None, &Limits::default()).unwrap();
    let d = Digest::of(b"some manifest");

    // no tag: refused before anything is sent
    let err = store.push(&img, &Reference::parse(&format!("127.0.0.1:1/team/x@{d}")).unwrap(), &opts()).unwrap_err();
    assert!(matches!(err, ImageError::Push(PushError::NeedsTag { .. })), "{}", chain(&err));
    assert!(err.to_string().contains("needs a tag") && err.to_string().contains("127.0.0.1:1/team/x:latest"), "{err}");
    let err = store.push(&img, &Reference::parse(&format!("127.0.0.1:1/team/x:v1@{d}")).unwrap(), &opts()).unwrap_err();
    assert!(matches!(err, ImageError::Push(PushError::DigestGiven { .. })), "{}", chain(&err));

    // an image this store does not have
    let other = Store::open(&tmp.path().join("other")).unwrap();
    let err = other.push(&img, &Reference::parse("127.0.0.1:1/team/x:v1").unwrap(), &opts()).unwrap_err();
    assert!(err.to_string().contains("no image") && err.to_string().contains(&img.id.to_string()), "{err}");

    // a registry that is not loopback, not named insecure: https only, and the attempt is
    // bounded by the connect timeout
    let quick = PullOptions { connect_timeout: Duration::from_millis(500), retries: 0, ..opts() };
    let t0 = Instant::now();
    let err = store.push(&img, &Reference::parse("10.255.255.1:5000/x:y").unwrap(), &quick).unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(5), "took {:?}", t0.elapsed());
    assert!(matches!(err, ImageError::Registry(RegistryError::HttpsRequired { .. })), "{}", chain(&err));
    assert!(err.to_string().contains("10.255.255.1:5000") && err.to_string().contains("insecure"), "{err}");

    // a loopback port where nothing listens
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let t0 = Instant::now();
    let err = store.push(&img, &Reference::parse(&format!("127.0.0.1:{port}/team/x:v1")).unwrap(), &opts()).unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(5), "took {:?}", t0.elapsed());
    assert!(matches!(err, ImageError::Registry(RegistryError::Transport { .. })), "{}", chain(&err));
    assert!(err.to_string().contains("cannot reach") && err.to_string().contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(names(&store.root().join("tmp")).is_empty());
}

/// A registry behind bearer-token auth, as public registries are: a proxy in front of the
/// test registry that answers 401 with a challenge until a request carries a token, issues
/// tokens at /token (one with push access only if the scope asks for it and `grant_push`),
/// demands a push token for POST/PUT, and forwards the rest. Logs token requests and 401s.
fn start_token_registry(upstream: u16, grant_push: bool) -> (u16, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            let log = log2.clone();
            std::thread::spawn(move || serve_token_registry(s, port, upstream, grant_push, &log));
        }
    });
    (port, log)
}

fn serve_token_registry(mut s: TcpStream, port: u16, upstream: u16, grant_push: bool, log: &Mutex<Vec<String>>) {
    let mut first = [0u8; 1];
    if s.peek(&mut first).is_err() || first[0] == 0x16 {
        return; // a TLS ClientHello: this server speaks http only, as the probe expects
    }
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or("GET").to_owned(), parts.next().unwrap_or("/").to_owned());
    let (mut auth, mut ctype, mut len) = (String::new(), None, 0usize);
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            match k.to_ascii_lowercase().as_str() {
                "authorization" => auth = v.trim().to_owned(),
                "content-type" => ctype = Some(v.trim().to_owned()),
                "content-length" => len = v.trim().parse().unwrap(),
                _ => {}
            }
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).unwrap();
    let write = !matches!(method.as_str(), "GET" | "HEAD");
    let reply = |s: &mut TcpStream, head: String, body: &[u8]| {
        let _ = s.write_all(head.as_bytes());
        let _ = s.write_all(body);
        let _ = s.shutdown(std::net::Shutdown::Both);
    };
    if path.starts_with("/token") {
        log.lock().unwrap().push(format!("token {path}"));
        let push = grant_push && path.contains("scope=repository%3Ateam%2Fauthed%3Apull%2Cpush");
        let b = format!(r#"{{"token":"{}"}}"#, if push { "tok-push" } else { "tok-pull" });
        return reply(
            &mut s,
            format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", b.len()),
            b.as_bytes(),
        );
    }
    let ok = auth == "Bearer tok-push" || (!write && auth == "Bearer tok-pull");
    if !ok {
        log.lock().unwrap().push(format!("401 {method} {path}"));
        let actions = if write { "pull,push" } else { "pull" };
        let scope = if path == "/v2/" { String::new() } else { format!(",scope=\"repository:team/authed:{actions}\"") };
        return reply(&mut s, format!("HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"envbox-test\"{scope}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"), b"");
    }
    let mut req = ureq::request(&method, &format!("http://127.0.0.1:{upstream}{path}"));
    if let Some(c) = &ctype {
        req = req.set("Content-Type", c);
    }
    let resp = match if write { req.send_bytes(&body) } else { req.call() } {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(_) => return,
    };
    let mut head = format!("HTTP/1.1 {} X\r\nConnection: close\r\n", resp.status());
    for h in ["content-type", "docker-content-digest", "location"] {
        if let Some(v) = resp.header(h) {
            // the registry's absolute upload URLs name itself: point them at the proxy
            let v = v.replace(&format!("127.0.0.1:{upstream}"), &format!("127.0.0.1:{port}"));
            head.push_str(&format!("{h}: {v}\r\n"));
        }
    }
    let head_len = resp.header("content-length").unwrap_or("0").to_owned();
    let mut out = Vec::new();
    resp.into_reader().read_to_end(&mut out).unwrap();
    head.push_str(&format!("Content-Length: {}\r\n\r\n", if method == "HEAD" { head_len } else { out.len().to_string() }));
    reply(&mut s, head, &out);
}

#[test]
fn push_asks_the_token_service_for_push_access() {
    require_tools!("push_asks_the_token_service_for_push_access");
    let reg = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let img = import_fixture(&store);

    let (port, log) = start_token_registry(reg.port, true);
    let report = store.push(&img, &Reference::parse(&format!("127.0.0.1:{port}/team/authed:v1")).unwrap(), &opts()).unwrap();
    let log = log.lock().unwrap().clone();
    let tokens: Vec<&String> = log.iter().filter(|l| l.starts_with("token ")).collect();
    assert!(!tokens.is_empty(), "{log:#?}");
    assert!(tokens.iter().all(|l| l.contains("scope=repository%3Ateam%2Fauthed%3Apull%2Cpush")), "{log:#?}");
    assert!(!log.iter().any(|l| l.starts_with("401 POST") || l.starts_with("401 PUT")), "one token did for all: {log:#?}");
    // it arrived: pull it from the registry itself
    let fresh = Store::open(&tmp.path().join("fresh")).unwrap();
    let pulled = fresh.pull(&Reference::parse(&format!("{}/team/authed:v1", reg.host())).unwrap(), &opts()).unwrap();
    assert_eq!(pulled.id, report.config_digest);

    // a token service that grants pull only (anonymous on a public registry), in front of an
    // empty registry: the first upload is refused, clearly
    let empty = TestRegistry::start();
    let (port, log) = start_token_registry(empty.port, false);
    let target = format!("127.0.0.1:{port}/team/authed:v2");
    let err = store.push(&img, &Reference::parse(&target).unwrap(), &opts()).unwrap_err();
    assert!(matches!(err, ImageError::Registry(RegistryError::PushDenied { status: 401, .. })), "{}", chain(&err));
    let msg = err.to_string();
    assert!(msg.contains(&format!("not authorized to push to 127.0.0.1:{port}/team/authed")) && msg.contains("credentials"), "{msg}");
    assert!(msg.contains("/blobs/uploads/"), "refused at the upload: {msg}");
    assert!(log.lock().unwrap().iter().any(|l| l.starts_with("401 POST")));
    assert!(names(&store.root().join("tmp")).is_empty());
}
