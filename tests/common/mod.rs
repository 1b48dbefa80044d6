//! Shared helpers of the integration tests: the root check that skips
//! loudly (and fails under SANDBOX_TESTS_MUST_RUN=1), test rootfs fixtures,
//! a private state root per test, and leak checks.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use envbox::{Image, SandboxConfig};
use envbox_rootfs::fixtures::{self, Fixture};

/// Returns from the test (loudly) unless we are root; under
/// SANDBOX_TESTS_MUST_RUN=1 a skip is a failure.
#[macro_export]
macro_rules! require_root {
    ($name:expr) => {
        if !nix::unistd::geteuid().is_root() {
            if std::env::var("SANDBOX_TESTS_MUST_RUN").as_deref() == Ok("1") {
                panic!("{} requires root and SANDBOX_TESTS_MUST_RUN=1 forbids skipping", $name);
            }
            eprintln!("{} requires root. Skipping test.", $name);
            return;
        }
    };
}

/// Like `require_root!`, and also returns (loudly) unless the registry tests can run here
/// (Debian's docker-registry, umoci, skopeo and the busybox test rootfs).
#[macro_export]
macro_rules! require_registry {
    ($name:expr) => {
        require_root!($name);
        if let Some(why) = envbox_rootfs::fixtures::registry::missing_prereq() {
            if std::env::var("SANDBOX_TESTS_MUST_RUN").as_deref() == Ok("1") {
                panic!("{} needs {why} and SANDBOX_TESTS_MUST_RUN=1 forbids skipping", $name);
            }
            eprintln!("{} needs {why}. Skipping test.", $name);
            return;
        }
    };
}

/// A state root of its own for one test; removed (with a leak check) by
/// `TestRoot::finish`.
pub struct TestRoot {
    pub path: PathBuf,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl TestRoot {
    pub fn new(tag: &str) -> TestRoot {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let path = PathBuf::from(format!("/tmp/envbox-test-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create test root");
        TestRoot { path }
    }

    /// A config on `image` under this root, run by the envbox binary cargo
    /// built for this test run.
    pub fn config(&self, image: Image) -> SandboxConfig {
        SandboxConfig { image, root: self.path.clone(), agent: Some(agent()), ..Default::default() }
    }

    /// Asserts nothing of this root is left: no sandbox dirs, no cgroups, no
    /// host mounts mentioning it, no agent processes.
    pub fn assert_clean(&self) {
        // Deletion of directories may run on a background thread.
        for _ in 0..200 {
            if leftovers(&self.path).is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(leftovers(&self.path), Vec::<String>::new(), "sandbox directories left under {}", self.path.display());
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let root = self.path.display().to_string();
        // A test may mount the root itself (a tmpfs); nothing under it may stay.
        let ours: Vec<&str> = mountinfo.lines().filter(|l| l.contains(&root) && l.split(' ').nth(4) != Some(root.as_str())).collect();
        assert!(ours.is_empty(), "host mounts mention {root}:\n{}", ours.join("\n"));
        assert_eq!(cgroups_of(&self.path), Vec::<String>::new(), "cgroups left for {root}");
    }
}

impl Drop for TestRoot {
    fn drop(&mut self) {
        // Best effort: kill what a failed test left, then remove the root.
        let _ = envbox::collect_garbage(&self.path);
        for s in envbox::list(&self.path).unwrap_or_default() {
            if let Ok(sb) = envbox::Sandbox::open(&self.path, &s.name) {
                let _ = sb.delete_and_wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Entries of a state root other than the shared image cache and the trash.
pub fn leftovers(root: &Path) -> Vec<String> {
    let mut out: Vec<String> =
        std::fs::read_dir(root).map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()).unwrap_or_default();
    out.retain(|n| n != ".images" && n != ".trash");
    if let Ok(t) = std::fs::read_dir(root.join(".trash")) {
        out.extend(t.flatten().map(|e| format!(".trash/{}", e.file_name().to_string_lossy())));
    }
    out.sort();
    out
}

/// cgroup directories (any hierarchy) that belong to this state root.
pub fn cgroups_of(root: &Path) -> Vec<String> {
    let layout = envbox::cgroup::Layout::detect().expect("cgroup layout");
    let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    envbox::cgroup::Cgroup::list(&layout, "envbox", &format!("{}-", envbox::sandbox::root_tag(&root)))
}

/// The envbox binary of this build (it runs as every sandbox's PID 1).
pub fn agent() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_envbox"))
}

pub fn busybox() -> Image {
    Image::Dir(fixtures::ensure(Fixture::Busybox).expect("busybox test rootfs"))
}

pub fn debian() -> Image {
    Image::Dir(fixtures::ensure(Fixture::Debian).expect("debian test rootfs"))
}

/// Processes whose parent is `pid`.
pub fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Processes whose parent is any thread of process `pid` (`children`
/// lists those of its main thread only).
pub fn child_processes(pid: i32) -> Vec<i32> {
    let mut out: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.flatten().flat_map(|t| children_of_task(&t.path())).collect())
        .unwrap_or_default();
    out.sort_unstable();
    out
}

fn children_of_task(task: &Path) -> Vec<i32> {
    std::fs::read_to_string(task.join("children")).unwrap_or_default().split_whitespace().filter_map(|p| p.parse().ok()).collect()
}

/// Whether any thread of process `pid` is still running. A zombie leader
/// whose other threads are still exiting counts: they hold its fds (a
/// sandbox's lock) until the last one is gone.
pub fn process_exists(pid: i32) -> bool {
    let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.count()).unwrap_or(0);
    threads > 1 || (threads == 1 && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z "))
}

/// Open fds of this process.
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

/// Open fds of this process other than the spare network namespaces the
/// library keeps (their number follows the pool's refills, not leaks).
/// Counted once the pool is full: a refill in progress holds fds of the
/// namespace it is making.
pub fn fds_but_spares() -> usize {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while envbox::namespace::spares() < envbox::namespace::SPARES && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    fd_count() - envbox::namespace::spares()
}

/// Asserts that this process's only child is its zygote and that the
/// zygote has no child left (no agent outlived its sandbox).
pub fn assert_no_child_but_the_zygote() {
    let me = i32::try_from(std::process::id()).unwrap();
    let zygote = envbox::sandbox::zygote::pid().expect("the creates went through a zygote");
    assert_eq!(child_processes(me), vec![zygote], "child processes left");
    // A deleted sandbox's agent has exited; the zygote reaps it when its
    // SIGCHLD comes through, a moment later.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !child_processes(zygote).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(child_processes(zygote), Vec::<i32>::new(), "agents left");
}

/// A fixture environment directory under tests/fixtures/envs.
pub fn fixture_env(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/envs").join(name)
}

/// A sandbox config serving the fixture environment `name` at /app.
pub fn env_config(root: &TestRoot, image: Image, name: &str) -> SandboxConfig {
    let mut cfg = root.config(image);
    cfg.workdir = "/app".into();
    cfg.volumes.push(envbox::Volume { host: fixture_env(name), container: "/app".into(), read_only: true });
    cfg.serve = Some(envbox::ServeConfig::default());
    cfg
}

/// A python venv with the reference framework (affinetes 0.2.0), FastAPI
/// and uvicorn from PyPI, made with the host's /usr/bin/python3 so that
/// sandboxes on the host image can run it. Built once and cached
/// (`.ci/run` builds it; a test builds it when it is missing).
pub fn test_venv() -> PathBuf {
    let dir = PathBuf::from(std::env::var("ENVBOX_TEST_VENV").unwrap_or_else(|_| "/var/cache/envbox-test-venv".into()));
    let python = dir.join("bin/python");
    let ok = |p: &Path| {
        std::process::Command::new(p).args(["-c", "import affinetes, fastapi, uvicorn, httpx"]).status().is_ok_and(|s| s.success())
    };
    if !ok(&python) {
        let lock = std::fs::File::create("/tmp/envbox-test-venv.lock").unwrap();
        nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .map(|_g| {
                if !ok(&python) {
                    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/make-reference-venv.sh");
                    let st = std::process::Command::new("bash").arg(script).arg(&dir).status().unwrap();
                    assert!(st.success(), "building the test venv at {} failed", dir.display());
                }
            })
            .unwrap();
    }
    dir
}

/// The Debian test rootfs's directory, as the CLI's `--image` takes it.
pub fn debian_dir() -> String {
    fixtures::ensure(Fixture::Debian).expect("debian test rootfs").display().to_string()
}
