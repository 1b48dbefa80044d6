//! `envbox build`: real Dockerfiles built into the store with real sandboxes (RUN) and
//! detached overlays (COPY/ADD) over the Debian test rootfs, the build cache, bad
//! Dockerfiles and contexts, the generated Dockerfile of an environment directory, and a
//! push to a real registry on loopback pulled back into another state root.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use common::TestRoot;
use envbox::{Image, Sandbox};
use envbox_rootfs::fixtures::registry::TestRegistry;

fn envbox(root: &TestRoot, args: &[&str]) -> Output {
    Command::new(common::agent()).env("ENVBOX_ROOT", &root.path).args(args).output().unwrap()
}

/// `envbox build ARGS --allow-local-sources`: these tests build FROM the Debian test rootfs
/// directory, which a Dockerfile may name only with that flag.
fn build(root: &TestRoot, args: &[&str]) -> Output {
    let mut all = vec!["build"];
    all.extend_from_slice(args);
    all.push("--allow-local-sources");
    envbox(root, &all)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "exit {:?}\nstdout: {}\nstderr: {}", o.status.code(), text(&o.stdout), text(&o.stderr));
    text(&o.stderr)
}

fn base() -> String {
    format!("dir:{}", common::debian_dir())
}

/// A build context with a bit of everything.
fn context(dir: &Path) {
    fs::create_dir_all(dir.join("src/pkg")).unwrap();
    fs::write(dir.join("src/app.py"), "print('app')\n").unwrap();
    fs::write(dir.join("src/pkg/mod.py"), "X = 1\n").unwrap();
    fs::write(dir.join("src/skip.pyc"), "compiled").unwrap();
    fs::write(dir.join("secret.key"), "do not ship").unwrap();
    fs::write(dir.join("conf.txt"), "v1").unwrap();
    fs::write(dir.join(".dockerignore"), "secret.key\n**/*.pyc\n").unwrap();
    // A link to a host file: it must arrive as a link, never as the host's file.
    std::os::unix::fs::symlink("/etc/shadow", dir.join("src/hostlink")).unwrap();
    // A gzip tar for ADD to extract.
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(5);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append_data(&mut h, "inner/file.txt", &b"inner"[..]).unwrap();
    let tar = tar.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    fs::write(dir.join("bundle.tar.gz"), gz.finish().unwrap()).unwrap();
    fs::write(
        dir.join("Dockerfile"),
        format!(
            "# a Dockerfile like real ones\n\
             ARG BASE={base}\n\
             FROM ${{BASE}}\n\
             ARG FLAVOUR=plain\n\
             ENV APP_HOME=/srv/app \\\n    GREETING=\"hello world\"\n\
             WORKDIR $APP_HOME\n\
             COPY src/ ./\n\
             COPY --chown=1000:1000 --chmod=0600 conf.txt /etc/app/conf.txt\n\
             ADD bundle.tar.gz /opt/\n\
             RUN rm /etc/issue && echo \"$FLAVOUR $GREETING\" > /built.txt && pwd > /where.txt\n\
             LABEL org.example.name=\"demo env\" flavour=$FLAVOUR\n\
             USER 1000:1000\n\
             ENTRYPOINT [\"python3\"]\n\
             CMD [\"app.py\"]\n\
             EXPOSE 8000\n",
            base = base()
        ),
    )
    .unwrap();
}

fn images_json(root: &TestRoot) -> serde_json::Value {
    serde_json::from_slice(&envbox(root, &["images", "--json"]).stdout).unwrap()
}

#[test]
fn a_dockerfile_builds_layer_by_layer_and_runs() {
    require_root!("a_dockerfile_builds_layer_by_layer_and_runs");
    let root = TestRoot::new("build");
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    context(&ctx);
    let ctx_s = ctx.display().to_string();

    let first = ok(&build(&root, &[&ctx_s, "--tag", "demo:v1", "--build-arg", "FLAVOUR=mint"]));
    assert!(first.contains("(4 layer steps, 0 from the cache)"), "{first}");
    assert!(first.contains("EXPOSE has no effect"), "{first}");
    let list = images_json(&root);
    let demo = list.as_array().unwrap().iter().find(|i| i["references"][0] == "docker.io/library/demo:v1").expect("tagged");
    let id = demo["id"].as_str().unwrap().to_string();
    // base + COPY + COPY + ADD + RUN
    assert_eq!(demo["layers"], 5, "{demo}");

    // The image's files, whiteout and config reach a sandbox made from it.
    let mut cfg = root.config(Image::Ref("demo:v1".into()));
    cfg.workdir = "/".into();
    let sb = Sandbox::create(&cfg, "demo").unwrap();
    let o = sb
        .run(
            "pwd; cat /built.txt /where.txt; ls /srv/app | tr '\\n' ' '; echo; ls /srv/app/pkg; \
             readlink /srv/app/hostlink; test -e /etc/issue || echo issue-gone; cat /opt/inner/file.txt; echo; \
             stat -c '%u:%g %a' /etc/app/conf.txt; echo \"$GREETING\"",
        )
        .unwrap();
    assert_eq!(
        o.stdout_str(),
        "/srv/app\nmint hello world\n/srv/app\napp.py hostlink pkg \nmod.py\n/etc/shadow\nissue-gone\ninner\n1000:1000 600\nhello world\n",
        "{}",
        o.stderr_str()
    );
    // The link stayed a link (it resolves to the image's own /etc/shadow in there); the
    // ignored key and .pyc did not come in.
    let o = sb.run("stat -c %F /srv/app/hostlink; ls /srv/app/secret.key /srv/app/skip.pyc 2>/dev/null | wc -l").unwrap();
    assert_eq!(o.stdout_str(), "symbolic link\n0\n");
    sb.delete_and_wait().unwrap();

    // Everything again from the cache, to the same image.
    let again = ok(&build(&root, &[&ctx_s, "--tag", "demo:v1", "--build-arg", "FLAVOUR=mint"]));
    assert!(again.contains("4 from the cache"), "{again}");
    assert_eq!(text(&build(&root, &[&ctx_s, "-t", "demo:v1", "--build-arg", "FLAVOUR=mint"]).stdout).trim(), id);
    // A changed input rebuilds its step and the ones after it, not the ones before.
    fs::write(ctx.join("conf.txt"), "v2").unwrap();
    let changed = ok(&build(&root, &[&ctx_s, "--tag", "demo:v2", "--build-arg", "FLAVOUR=mint"]));
    assert!(changed.contains("(4 layer steps, 1 from the cache)"), "{changed}");
    // So does another build argument (RUN sees it), and --no-cache rebuilds everything.
    let other = ok(&build(&root, &[&ctx_s, "--tag", "demo:v3"]));
    assert!(other.contains("(4 layer steps, 3 from the cache)"), "{other}");
    let fresh = ok(&build(&root, &[&ctx_s, "--tag", "demo:v3", "--no-cache"]));
    assert!(fresh.contains("0 from the cache"), "{fresh}");

    // Untagging every image lets gc take the step images, the cache entries and layers.
    for t in ["demo:v1", "demo:v2", "demo:v3", "localhost/debian:latest"] {
        ok(&envbox(&root, &["rmi", t]));
    }
    let layers = fs::read_dir(root.path.join(".images/layers")).unwrap().count();
    assert_eq!(layers, 0, "layers left after rmi of every image");
    let cache = fs::read_dir(root.path.join(".images/build-cache")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(cache, 0, "build cache entries left");
    assert_eq!(fs::read_dir(root.path.join(".images/build-tmp")).map(|d| d.count()).unwrap_or(0), 0);
    root.assert_clean();
}

#[test]
fn run_steps_use_the_host_network_unless_told_otherwise() {
    require_root!("run_steps_use_the_host_network_unless_told_otherwise");
    let root = TestRoot::new("build-net");
    // A server on the host's loopback, made by this test.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        if let Ok((mut c, _)) = listener.accept() {
            let _ = c.write_all(b"from-the-host");
        }
    });
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    let df = format!(
        "FROM {}\nRUN python3 -c \"import socket; s=socket.create_connection(('127.0.0.1', {port})); open('/fetched','wb').write(s.recv(100))\"\n",
        base()
    );
    fs::write(ctx.join("Dockerfile"), &df).unwrap();
    let ctx_s = ctx.display().to_string();
    ok(&build(&root, &[&ctx_s, "--tag", "net:v1"]));
    server.join().unwrap();
    let sb = Sandbox::create(&root.config(Image::Ref("net:v1".into())), "net").unwrap();
    assert_eq!(sb.run("cat /fetched").unwrap().stdout_str(), "from-the-host");
    sb.delete_and_wait().unwrap();

    // --net none: the same step cannot connect, and the build says which step failed.
    let o = build(&root, &[&ctx_s, "--tag", "net:v2", "--net", "none", "--no-cache"]);
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(err.contains("Dockerfile line 2") && err.contains("exited with code 1"), "{err}");
    assert!(err.contains("ConnectionRefused") || err.contains("Connection refused"), "the step's output is shown: {err}");
    root.assert_clean();
}

#[test]
fn bad_dockerfiles_and_contexts_get_clear_errors_and_leave_nothing() {
    require_root!("bad_dockerfiles_and_contexts_get_clear_errors_and_leave_nothing");
    let root = TestRoot::new("build-bad");
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(ctx.join("a.txt"), "a").unwrap();
    let b = base();
    let cases: Vec<(String, &str)> = vec![
        (format!("FROM {b}\nRUN echo partial > /p && exit 3\n"), "exited with code 3"),
        (format!("FROM {b}\nVOLUME /data\n"), "VOLUME is not supported"),
        (format!("FROM {b}\nCOPY ../../etc/passwd /x\n"), "outside the build context"),
        (format!("FROM {b}\nCOPY missing.txt /x\n"), "matches nothing in the build context"),
        (format!("FROM {b}\nADD https://example.com/x.tar.gz /x\n"), "remote sources are not supported"),
        (format!("FROM {b}\nCOPY --from=builder /a /b\n"), "--from is not supported"),
        ("FROM scratch\nRUN true\n".to_string(), "FROM scratch has none"),
        ("FROM 127.0.0.1:1/nothing/here:v1\n".to_string(), "line 1"),
        (format!("FROM {b}\nUSER\n"), "USER needs a user"),
        (format!("FROM {b}\nENV A=${{B\n"), "missing '}'"),
    ];
    let ctx_s = ctx.display().to_string();
    for (df, want) in &cases {
        fs::write(ctx.join("Dockerfile"), df).unwrap();
        let o = build(&root, &[&ctx_s, "--tag", "bad:v1"]);
        assert_eq!(o.status.code(), Some(125), "{df}: {}", text(&o.stderr));
        let err = text(&o.stderr);
        assert!(err.contains(want), "{df:?}: expected {want:?} in\n{err}");
        assert!(!text(&envbox(&root, &["images"]).stdout).contains("bad"), "a failed build tags nothing");
        assert_eq!(fs::read_dir(root.path.join(".images/build-tmp")).map(|d| d.count()).unwrap_or(0), 0, "{df}");
        assert!(common::leftovers(&root.path).is_empty(), "{df}: {:?}", common::leftovers(&root.path));
    }
    // An unreadable context and a missing directory.
    let o = build(&root, &["/nonexistent/ctx", "--tag", "bad:v1"]);
    assert!(text(&o.stderr).contains("opening the build context"), "{}", text(&o.stderr));
    let o = build(&root, &[&ctx_s, "--tag", "Not A Tag"]);
    assert!(!o.status.success());
    root.assert_clean();
}

#[test]
fn an_environment_directory_without_dockerfile_is_served_from_its_image() {
    require_root!("an_environment_directory_without_dockerfile_is_served_from_its_image");
    let root = TestRoot::new("build-env");
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("env");
    fs::create_dir_all(&ctx).unwrap();
    for e in fs::read_dir(common::fixture_env("functions")).unwrap().flatten() {
        fs::copy(e.path(), ctx.join(e.file_name())).unwrap();
    }
    let ctx_s = ctx.display().to_string();
    let b = base();
    // `--base` is the caller's own choice: a local one needs no --allow-local-sources.
    let log = ok(&envbox(&root, &["build", &ctx_s, "--tag", "fenv:v1", "--base", &b]));
    assert!(log.contains("no Dockerfile") && log.contains("COPY . /app/"), "{log}");
    // `envbox run IMAGE` without --dir serves the image's /app.
    ok(&envbox(&root, &["run", "fenv:v1", "--name", "fenv"]));
    let o = envbox(&root, &["call", "fenv", "evaluate", "--arg", "task_id=3"]);
    ok(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["task_id"], 3, "{v}");
    ok(&envbox(&root, &["stop", "fenv"]));

    // With a requirements.txt and a base without pip, the build says what to do.
    fs::write(ctx.join("requirements.txt"), "six\n").unwrap();
    let o = envbox(&root, &["build", &ctx_s, "--tag", "fenv:v2", "--base", &b]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("the base image has no pip"), "{}", text(&o.stderr));
    root.assert_clean();
}

#[test]
fn a_built_image_is_pushed_and_pulled_back_elsewhere() {
    require_registry!("a_built_image_is_pushed_and_pulled_back_elsewhere");
    let reg = TestRegistry::start();
    let root = TestRoot::new("build-push");
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(ctx.join("tool.sh"), "#!/bin/sh\necho tool ran\n").unwrap();
    fs::set_permissions(ctx.join("tool.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {}\nCOPY tool.sh /usr/local/bin/tool\nRUN tool > /ran.txt\nENV MODE=pushed\nUSER nobody\nRUN id -un > /tmp/who\n",
            base()
        ),
    )
    .unwrap();
    let target = format!("{}/team/built:v1", reg.host());
    let log = ok(&build(&root, &[&ctx.display().to_string(), "--tag", &target, "--push"]));
    assert!(log.contains(&format!("pushed {target}")), "{log}");
    // Again: the registry has every blob.
    let again = ok(&envbox(&root, &["push", &target]));
    assert!(again.contains("0 layers uploaded"), "{again}");

    // Another state root (another machine) pulls it and runs it.
    let other = TestRoot::new("build-pull");
    ok(&envbox(&other, &["pull", &target]));
    let sb = Sandbox::create(&other.config(Image::Ref(target.clone())), "pulled").unwrap();
    // RUN after USER ran as that user, and so do the image's sandboxes.
    let o = sb.run("cat /ran.txt; tool; echo $MODE; cat /tmp/who; id -un; stat -c %U /tmp/who").unwrap();
    assert_eq!(o.stdout_str(), "tool ran\ntool ran\npushed\nnobody\nnobody\nnobody\n");
    sb.delete_and_wait().unwrap();
    // A push of something that is not in the store says so.
    let o = envbox(&other, &["push", "nothing:here"]);
    assert!(text(&o.stderr).contains("not in the store"), "{}", text(&o.stderr));
    root.assert_clean();
    other.assert_clean();
}

#[test]
fn a_build_killed_mid_run_leaves_nothing_after_the_next_start() {
    require_root!("a_build_killed_mid_run_leaves_nothing_after_the_next_start");
    let root = TestRoot::new("build-kill");
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(ctx.join("big.bin"), vec![1u8; 1 << 20]).unwrap();
    fs::write(ctx.join("Dockerfile"), format!("FROM {}\nCOPY big.bin /big.bin\nRUN touch /started && sleep 60\n", base())).unwrap();
    let mut child = Command::new(common::agent())
        .env("ENVBOX_ROOT", &root.path)
        .args(["build", &ctx.display().to_string(), "--tag", "killed:v1", "--allow-local-sources"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the RUN step's sandbox runs, then kill -9 the build.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !envbox::list(&root.path).unwrap_or_default().iter().any(|s| s.name.starts_with("envbox-build-")) {
        assert!(std::time::Instant::now() < deadline, "the RUN sandbox never appeared");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    child.kill().unwrap();
    child.wait().unwrap();
    // The RUN sandbox dies with the build (it is not detached); the next envbox start
    // collects its directories, and gc the dead build's work directory.
    ok(&envbox(&root, &["gc"]));
    ok(&envbox(&root, &["rmi", "localhost/debian:latest"]));
    assert_eq!(fs::read_dir(root.path.join(".images/build-tmp")).map(|d| d.count()).unwrap_or(0), 0, "build dir of the dead build");
    assert_eq!(fs::read_dir(root.path.join(".images/tmp")).map(|d| d.count()).unwrap_or(0), 0);
    // The COPY step finished before the kill: its step image stays cached (a day) for a rerun.
    fs::write(ctx.join("Dockerfile"), format!("FROM {}\nCOPY big.bin /big.bin\nRUN test -f /big.bin\n", base())).unwrap();
    let log = ok(&build(&root, &[&ctx.display().to_string(), "--tag", "killed:v1"]));
    assert!(log.contains("(2 layer steps, 1 from the cache)"), "{log}");
    root.assert_clean();
}

#[test]
fn hostile_contexts_and_dockerfiles_cannot_reach_the_host() {
    require_root!("hostile_contexts_and_dockerfiles_cannot_reach_the_host");
    let root = TestRoot::new("build-hostile");
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    fs::create_dir_all(ctx.join("a")).unwrap();
    fs::create_dir_all(ctx.join("b")).unwrap();
    let victim = tmp.path().join("victim");
    fs::write(&victim, "host file").unwrap();
    std::os::unix::fs::symlink("/etc", ctx.join("hostetc")).unwrap();
    std::os::unix::fs::symlink(&victim, ctx.join("a/x.txt")).unwrap();
    fs::write(ctx.join("b/x.txt"), "from b").unwrap();
    let ctx_s = ctx.display().to_string();
    let b = base();
    let cases: Vec<(String, &str)> = vec![
        // A source through a symlinked directory of the context.
        (format!("FROM {b}\nCOPY hostetc/shadow /stolen\n"), "goes through a symlink"),
        (format!("FROM {b}\nCOPY hostetc/* /stolen/\n"), "matches nothing"),
    ];
    for (df, want) in &cases {
        fs::write(ctx.join("Dockerfile"), df).unwrap();
        let o = build(&root, &[&ctx_s, "--tag", "bad:v1"]);
        assert!(!o.status.success() && text(&o.stderr).contains(want), "{df:?}: {}", text(&o.stderr));
    }
    // FROM a host path needs the build's permission.
    fs::write(ctx.join("Dockerfile"), "FROM dir:/etc\n").unwrap();
    let o = envbox(&root, &["build", &ctx_s, "--tag", "bad:v1"]);
    assert!(text(&o.stderr).contains("--allow-local-sources"), "{}", text(&o.stderr));
    // The context's Dockerfile may not be a link to a host file.
    fs::remove_file(ctx.join("Dockerfile")).unwrap();
    std::os::unix::fs::symlink("/etc/shadow", ctx.join("Dockerfile")).unwrap();
    let o = envbox(&root, &["build", &ctx_s, "--tag", "bad:v1"]);
    assert!(text(&o.stderr).contains("the Dockerfile is a symlink") && !text(&o.stderr).contains("root:"), "{}", text(&o.stderr));
    fs::remove_file(ctx.join("Dockerfile")).unwrap();

    // Two sources of one name: the later wins, and nothing is written through the link.
    fs::write(ctx.join("Dockerfile"), format!("FROM {b}\nCOPY a/x.txt b/x.txt /dst/\n")).unwrap();
    ok(&build(&root, &[&ctx_s, "--tag", "same:v1"]));
    assert_eq!(fs::read_to_string(&victim).unwrap(), "host file");
    assert_eq!(fs::read_to_string(ctx.join("b/x.txt")).unwrap(), "from b");
    let sb = Sandbox::create(&root.config(Image::Ref("same:v1".into())), "same").unwrap();
    assert_eq!(sb.run("cat /dst/x.txt").unwrap().stdout_str(), "from b");
    sb.delete_and_wait().unwrap();

    // ADD --chown of an archive holding a whiteout entry re-owns nothing of the image.
    let mut tar = tar::Builder::new(Vec::new());
    for (name, data) in [("etc/.wh.shadow", &b""[..]), ("etc/readme", &b"r"[..])] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, name, data).unwrap();
    }
    fs::write(ctx.join("evil.tar"), tar.into_inner().unwrap()).unwrap();
    fs::write(ctx.join("Dockerfile"), format!("FROM {b}\nADD --chown=1000:1000 --chmod=0666 evil.tar /\n")).unwrap();
    ok(&build(&root, &[&ctx_s, "--tag", "evil:v1"]));
    let sb = Sandbox::create(&root.config(Image::Ref("evil:v1".into())), "evil").unwrap();
    let o = sb.run("stat -c '%u %a' /etc/shadow /etc/readme").unwrap();
    assert_eq!(o.stdout_str(), "0 640\n1000 666\n", "{}", o.stderr_str());
    sb.delete_and_wait().unwrap();
    root.assert_clean();
}

#[test]
fn copy_and_arg_semantics_follow_docker() {
    require_root!("copy_and_arg_semantics_follow_docker");
    let root = TestRoot::new("build-docker");
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(ctx.join("a.txt"), "a").unwrap();
    fs::write(ctx.join("run.sh"), "#!/bin/sh\necho ran\n").unwrap();
    fs::set_permissions(ctx.join("run.sh"), fs::Permissions::from_mode(0o4755)).unwrap();
    let ctx_s = ctx.display().to_string();
    let b = base();
    fs::write(
        ctx.join("Dockerfile"),
        format!(
            "ARG V=outer\nFROM {b}\nRUN echo \"[$V]\" > /scoped\nARG V\nRUN echo \"[$V]\" > /redeclared\n\
             WORKDIR /w\nCOPY a.txt .\nCOPY a.txt /etc\nCOPY a.txt /bin\nCOPY run.sh /etc/debian_version\n\
             CMD [\"c\"]\nENTRYPOINT [\"e\"]\n"
        ),
    )
    .unwrap();
    ok(&build(&root, &[&ctx_s, "--tag", "sem:v1"]));
    let mut cfg = root.config(Image::Ref("sem:v1".into()));
    cfg.workdir = "/".into();
    let sb = Sandbox::create(&cfg, "sem").unwrap();
    let o = sb.run("cat /scoped /redeclared /w/a.txt /etc/a.txt /usr/bin/a.txt; echo; stat -c '%a %u' /etc/debian_version").unwrap();
    // An ARG before FROM is not seen after it unless declared again; `.`, an existing
    // directory and a symlink to one are directories; a copied file keeps its mode bits.
    assert_eq!(o.stdout_str(), "[]\n[outer]\naaa\n4755 0\n", "{}", o.stderr_str());
    sb.delete_and_wait().unwrap();
    // An ENTRYPOINT keeps the CMD this Dockerfile set (only an inherited one goes).
    let store = envbox_rootfs::Store::open(&root.path.join(".images")).unwrap();
    let img = store.get(&envbox_rootfs::Reference::parse("sem:v1").unwrap()).unwrap().unwrap();
    assert_eq!((img.config.entrypoint.clone(), img.config.cmd.clone()), (vec!["e".to_string()], vec!["c".to_string()]));

    // The name a file is copied to is part of the step's cache key.
    fs::write(ctx.join("Dockerfile"), format!("FROM {b}\nCOPY a.txt /x/b.txt\n")).unwrap();
    ok(&build(&root, &[&ctx_s, "--tag", "name:v1"]));
    fs::write(ctx.join("Dockerfile"), format!("FROM {b}\nCOPY a.txt /x/c.txt\n")).unwrap();
    let log = ok(&build(&root, &[&ctx_s, "--tag", "name:v2"]));
    assert!(log.contains("0 from the cache"), "{log}");
    let sb = Sandbox::create(&root.config(Image::Ref("name:v2".into())), "name").unwrap();
    assert_eq!(sb.run("ls /x").unwrap().stdout_str(), "c.txt\n");
    sb.delete_and_wait().unwrap();
    // More than one source needs a directory destination.
    fs::write(ctx.join("Dockerfile"), format!("FROM {b}\nCOPY a.txt run.sh /nodir\n")).unwrap();
    let o = build(&root, &[&ctx_s, "--tag", "multi:v1"]);
    assert!(text(&o.stderr).contains("needs a directory destination"), "{}", text(&o.stderr));
    root.assert_clean();
}
