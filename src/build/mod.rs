//! `envbox build`: an image from a Dockerfile without Docker.
//!
//! Each step that changes files makes one layer, the way a container builder does, with
//! envbox's own parts:
//!
//! - **RUN** runs in a sandbox on the image so far (the host's network by default, so
//!   package installs work), as the image's user, in its workdir, with its ENV and the ARGs
//!   in scope. When the command succeeds the sandbox is stopped and its overlayfs upper
//!   directory — exactly what the command changed, deletions as whiteouts — becomes the
//!   layer (`Sandbox::finish_into`).
//! - **COPY/ADD** stage their sources from the build context (`.dockerignore` applied,
//!   nothing outside the context read, symlinks never followed), then copy them into a
//!   detached overlay mount of the image so far through the rooted file API, so a symlink in
//!   the image (`/bin -> usr/bin`) resolves inside the image, never on the host.
//! - The layer is written as a layer tar (`envbox_rootfs::write_layer_tar`) and committed to
//!   the store as an untagged step image (`Store::commit`), which the next step builds on.
//! - Every step has a cache key: the hash of the key before it and of the step as expanded
//!   (with the content of copied files and the ARG values in scope). A key already in the
//!   cache ([`cache`]) reuses its image; `--no-cache` builds every step again.
//!
//! Without a Dockerfile the environment directory is laid at /app over a base image
//! (`--base`, default [`DEFAULT_BASE`]) and its requirements.txt installed with pip.

pub mod cache;
pub mod context;
pub mod dockerfile;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use envbox_rootfs::digest::Hasher;
use envbox_rootfs::oci::RunConfig;
use envbox_rootfs::{Digest, Image, Lease, Reference, Store};

use crate::config::{Network, SandboxConfig};
use crate::error::{Error, Result};
use crate::Sandbox;
use dockerfile::{expand, Command, Instruction, Step};

/// The base of an environment directory without a Dockerfile.
pub const DEFAULT_BASE: &str = "python:3.12-slim";

/// Output of a RUN step shown per stream; the rest is drained.
const RUN_OUTPUT: u64 = 64 << 20;

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The state root (its image store receives the image).
    pub root: PathBuf,
    /// The build context: the environment directory.
    pub context: PathBuf,
    /// The Dockerfile; default `<context>/Dockerfile` if it exists, else the generated one.
    pub dockerfile: Option<PathBuf>,
    /// The reference to tag the image with.
    pub tag: String,
    /// `--build-arg K=V`.
    pub build_args: Vec<(String, String)>,
    /// Build every step again.
    pub no_cache: bool,
    /// The base image when there is no Dockerfile.
    pub base: Option<String>,
    /// The network of RUN steps (default: the host's).
    pub network: Network,
    /// Let FROM name images on this machine's filesystem (`dir:`, `oci:`,
    /// `docker-archive:`). Off by default: a Dockerfile from elsewhere could otherwise
    /// import any host path (`FROM dir:/`) into an image. `--base` of a directory without
    /// a Dockerfile is the caller's own choice and always allowed.
    pub local_sources: bool,
}

impl BuildOptions {
    pub fn new(root: impl Into<PathBuf>, context: impl Into<PathBuf>, tag: impl Into<String>) -> BuildOptions {
        BuildOptions {
            root: root.into(),
            context: context.into(),
            dockerfile: None,
            tag: tag.into(),
            build_args: Vec::new(),
            no_cache: false,
            base: None,
            network: Network::Host,
            local_sources: false,
        }
    }
}

/// What a build made.
#[derive(Debug, Clone)]
pub struct Built {
    pub image: Image,
    /// Steps that made a layer (RUN, COPY, ADD), and how many of them came from the cache.
    pub layer_steps: usize,
    pub cached_steps: usize,
}

fn build_error(line: usize, message: impl Into<String>) -> Error {
    Error::Image { spec: format!("Dockerfile line {line}"), message: message.into() }
}

fn store_error(what: &str, e: &(dyn std::error::Error + 'static)) -> Error {
    Error::Image { spec: what.to_string(), message: crate::error::chain(e) }
}

/// The Dockerfile envbox writes for an environment directory that has none.
pub fn generated_dockerfile(context: &Path, base: &str) -> String {
    let mut text = format!("FROM {base}\nWORKDIR /app\nCOPY . /app/\n");
    if context.join("requirements.txt").is_file() {
        text.push_str(
            "RUN if ! python3 -m pip --version >/dev/null 2>&1; then \
             echo 'envbox build: the base image has no pip (python3 -m pip): pick a --base with python3 and pip, or write a Dockerfile' >&2; exit 1; fi; \
             python3 -m pip install --no-cache-dir --disable-pip-version-check -r requirements.txt\n",
        );
    }
    text
}

/// Builds an image; progress goes to `log`.
pub fn build(opts: &BuildOptions, log: &mut dyn Write) -> Result<Built> {
    crate::sandbox::require_root()?;
    let context = fs::canonicalize(&opts.context).map_err(|source| Error::Io {
        step: "opening the build context",
        name: opts.context.display().to_string(),
        source,
    })?;
    if !context.is_dir() {
        return Err(Error::Image { spec: context.display().to_string(), message: "the build context must be a directory".into() });
    }
    let tag = Reference::parse(&opts.tag).map_err(|e| store_error(&opts.tag, &e))?;
    // The context's own Dockerfile must be a file of it (a link to /etc/shadow would be
    // read as root and quoted in a parse error); one given with -f is the caller's choice.
    let own = context.join("Dockerfile");
    let own_is_link = fs::symlink_metadata(&own).is_ok_and(|m| m.file_type().is_symlink());
    if own_is_link && opts.dockerfile.is_none() {
        return Err(Error::Image {
            spec: own.display().to_string(),
            message: "the Dockerfile is a symlink: give the file it points to with --file".into(),
        });
    }
    let dockerfile = opts.dockerfile.clone().or_else(|| Some(own).filter(|p| p.is_file()));
    let generated = dockerfile.is_none();
    let text = match &dockerfile {
        Some(p) => {
            let read = |p: &Path| -> std::io::Result<String> {
                use std::io::Read;
                let mut f = fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(p)?;
                if !f.metadata()?.is_file() {
                    return Err(std::io::Error::other("not a regular file"));
                }
                let mut text = String::new();
                Read::by_ref(&mut f).take(1 << 20).read_to_string(&mut text)?;
                Ok(text)
            };
            read(p).map_err(|source| Error::Io { step: "reading the Dockerfile", name: p.display().to_string(), source })?
        }
        None => {
            let base = opts.base.as_deref().unwrap_or(DEFAULT_BASE);
            let text = generated_dockerfile(&context, base);
            let _ = writeln!(log, "no Dockerfile in {}: building\n{}", context.display(), text.trim_end().replace('\n', "\n    "));
            text
        }
    };
    let df = dockerfile::parse(&text).map_err(|e| Error::Image {
        spec: dockerfile.as_ref().map_or_else(|| "the generated Dockerfile".into(), |p| p.display().to_string()),
        message: e.to_string(),
    })?;
    let store = crate::images::store(&opts.root)?;
    let work = WorkDir::new(&opts.root)?;
    let ignore = context::Ignore::load(&context).map_err(|source| Error::Io {
        step: "reading .dockerignore",
        name: context.display().to_string(),
        source,
    })?;
    let context = context::Context::open(&context).map_err(|source| Error::Io {
        step: "opening the build context",
        name: context.display().to_string(),
        source,
    })?;
    let mut b = Builder {
        opts,
        store,
        context,
        ignore,
        work,
        image: None,
        config: RunConfig::default(),
        args: BTreeMap::new(),
        global_args: BTreeMap::new(),
        seen_from: false,
        cmd_set: false,
        local_sources: opts.local_sources || generated,
        declared: Vec::new(),
        key: Digest::of(b"envbox-build-v1"),
        keys: Vec::new(),
        leases: Vec::new(),
        layer_steps: 0,
        cached_steps: 0,
        log,
    };
    let total = df.steps.len();
    for (i, step) in df.steps.iter().enumerate() {
        let _ = writeln!(b.log, "Step {}/{total} : {}", i + 1, step.text);
        b.step(step)?;
    }
    for (k, _) in &opts.build_args {
        if !b.declared.contains(k) {
            let _ = writeln!(b.log, "warning: --build-arg {k} was not used: the Dockerfile declares no ARG {k}");
        }
    }
    let (image, _lease) =
        b.store.commit(b.image.as_ref(), &[], &b.config, Some(&tag)).map_err(|e| store_error("committing the built image", &e))?;
    cache::mark_used(&opts.root, &b.keys, &image.id).map_err(|source| Error::Io {
        step: "updating the build cache",
        name: String::new(),
        source,
    })?;
    let _ = writeln!(b.log, "Successfully built {}\nSuccessfully tagged {}", image.id, tag.familiar());
    Ok(Built { image, layer_steps: b.layer_steps, cached_steps: b.cached_steps })
}

/// `<root>/.images/build-tmp/<pid>-<nonce>`: staged sources, upper layers and layer tars of
/// one build, removed when it ends; a crashed build's is collected by the next
/// [`collect`] (its pid is gone).
struct WorkDir {
    path: PathBuf,
    n: usize,
}

fn work_parent(root: &Path) -> PathBuf {
    crate::images::store_dir(root).join("build-tmp")
}

impl WorkDir {
    fn new(root: &Path) -> Result<WorkDir> {
        collect(root);
        let nonce = &crate::agent::shell::new_nonce()[..12];
        let path = work_parent(root).join(format!("{}-{nonce}", std::process::id()));
        fs::create_dir_all(&path).map_err(|source| Error::Io {
            step: "creating the build directory",
            name: path.display().to_string(),
            source,
        })?;
        Ok(WorkDir { path, n: 0 })
    }

    /// A fresh path for one step's files.
    fn next(&mut self, what: &str) -> PathBuf {
        self.n += 1;
        self.path.join(format!("{}-{what}", self.n))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Whether process `pid` exists (a build's, or a cache writer's).
fn alive(pid: i32) -> bool {
    pid > 0 && Path::new("/proc").join(pid.to_string()).exists()
}

/// Removes build directories whose build process is gone.
pub fn collect(root: &Path) {
    let Ok(rd) = fs::read_dir(work_parent(root)) else { return };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name.split('-').next().and_then(|p| p.parse::<i32>().ok());
        if !pid.is_some_and(alive) {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

struct Builder<'a> {
    opts: &'a BuildOptions,
    store: Store,
    context: context::Context,
    ignore: context::Ignore,
    work: WorkDir,
    /// The image so far (`None`: FROM scratch, nothing added yet).
    image: Option<Image>,
    config: RunConfig,
    /// ARGs in scope and their values.
    args: BTreeMap<String, String>,
    /// ARGs declared before FROM: usable in FROM, and after it only when declared again
    /// (`ARG NAME` then takes this value), as in Docker.
    global_args: BTreeMap<String, String>,
    seen_from: bool,
    /// CMD was set by this Dockerfile (a later ENTRYPOINT keeps it; an inherited one goes).
    cmd_set: bool,
    /// FROM may name local sources (see [`BuildOptions::local_sources`]).
    local_sources: bool,
    /// Every ARG name declared (for the unused --build-arg warning).
    declared: Vec<String>,
    key: Digest,
    /// Cache keys of the layer steps.
    keys: Vec<Digest>,
    /// Leases on every image this build stands on, until it ends.
    leases: Vec<Lease>,
    layer_steps: usize,
    cached_steps: usize,
    log: &'a mut dyn Write,
}

fn env_map(config: &RunConfig) -> Vec<(String, String)> {
    config
        .env
        .iter()
        .flatten()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv.clone(), String::new()),
        })
        .collect()
}

impl Builder<'_> {
    /// Variables for expansion: ARGs, overridden by ENV (as Docker does).
    fn vars(&self) -> BTreeMap<String, String> {
        if !self.seen_from {
            return self.global_args.clone();
        }
        let mut v = self.args.clone();
        v.extend(env_map(&self.config));
        v
    }

    fn expand(&self, line: usize, s: &str) -> Result<String> {
        expand(s, &self.vars()).map_err(|e| build_error(line, e.to_string()))
    }

    fn chain(&mut self, what: &str) {
        let mut h = Hasher::default();
        h.update(self.key.hex().as_bytes());
        h.update(b"\n");
        h.update(what.as_bytes());
        self.key = h.finish();
    }

    fn lease(&mut self, image: &Image) -> Result<()> {
        let l = self.store.lease(&image.id).map_err(|e| store_error("leasing an image for the build", &e))?;
        self.leases.push(l);
        Ok(())
    }

    fn workdir(&self) -> String {
        self.config.working_dir.clone().filter(|w| w.starts_with('/')).unwrap_or_else(|| "/".into())
    }

    fn step(&mut self, step: &Step) -> Result<()> {
        let line = step.line;
        match &step.instruction {
            Instruction::From { image } => self.from(line, image),
            Instruction::Arg { name, default } => {
                let value = match self.opts.build_args.iter().rev().find(|(k, _)| k == name) {
                    Some((_, v)) => Some(v.clone()),
                    None => match default.as_deref() {
                        Some(d) => Some(self.expand(line, d)?),
                        None if self.seen_from => self.global_args.get(name).cloned(),
                        None => None,
                    },
                };
                self.declared.push(name.clone());
                if let Some(v) = &value {
                    if self.seen_from {
                        self.args.insert(name.clone(), v.clone());
                    } else {
                        self.global_args.insert(name.clone(), v.clone());
                    }
                }
                // Not the value: like Docker, a build argument changes only the steps that
                // use it (RUN has the ARGs in scope in its key; others their expansion).
                self.chain(&format!("ARG {name}"));
                Ok(())
            }
            Instruction::Env(pairs) => {
                let mut env = env_map(&self.config);
                for (k, v) in pairs {
                    let v = self.expand(line, v)?;
                    env.retain(|(ek, _)| ek != k);
                    env.push((k.clone(), v));
                }
                self.config.env = Some(env.iter().map(|(k, v)| format!("{k}={v}")).collect());
                self.chain(&format!("ENV {:?}", self.config.env));
                Ok(())
            }
            Instruction::Label(pairs) => {
                for (k, v) in pairs {
                    let v = self.expand(line, v)?;
                    self.config.labels.get_or_insert_with(BTreeMap::new).insert(k.clone(), v);
                }
                self.chain(&format!("LABEL {:?}", self.config.labels));
                Ok(())
            }
            Instruction::Workdir(dir) => {
                let dir = self.expand(line, dir)?;
                let joined = if dir.starts_with('/') { dir } else { format!("{}/{dir}", self.workdir().trim_end_matches('/')) };
                self.config.working_dir = Some(joined);
                self.chain(&format!("WORKDIR {:?}", self.config.working_dir));
                Ok(())
            }
            Instruction::User(user) => {
                let user = self.expand(line, user)?;
                if user.contains(char::is_whitespace) || user.is_empty() {
                    return Err(build_error(line, format!("USER {user:?}: give one user[:group]")));
                }
                self.config.user = Some(user);
                self.chain(&format!("USER {:?}", self.config.user));
                Ok(())
            }
            Instruction::Cmd(cmd) => {
                self.config.cmd = Some(cmd.argv());
                self.cmd_set = true;
                self.chain(&format!("CMD {:?}", self.config.cmd));
                Ok(())
            }
            Instruction::Entrypoint(cmd) => {
                self.config.entrypoint = Some(cmd.argv());
                // Docker: a new ENTRYPOINT drops a CMD inherited from the base image (not
                // one this Dockerfile set).
                if !self.cmd_set {
                    self.config.cmd = None;
                }
                self.chain(&format!("ENTRYPOINT {:?}", self.config.entrypoint));
                Ok(())
            }
            Instruction::Expose => {
                let _ = writeln!(
                    self.log,
                    " ---> EXPOSE has no effect: an environment is reached through its socket, or the port given to --publish"
                );
                Ok(())
            }
            Instruction::Run(cmd) => self.run(line, cmd),
            Instruction::Copy { add, srcs, dest, chown, chmod } => self.copy(line, *add, srcs, dest, chown.as_deref(), *chmod),
        }
    }

    fn from(&mut self, line: usize, image: &str) -> Result<()> {
        let spec = expand(image, &self.global_args).map_err(|e| build_error(line, e.to_string()))?;
        self.seen_from = true;
        let local = ["dir:", "oci:", "docker-archive:"].iter().any(|p| spec.starts_with(p));
        if local && !self.local_sources {
            return Err(build_error(
                line,
                format!(
                    "FROM {spec}: a Dockerfile may not read images from this machine's filesystem unless the build allows it \
                     (--allow-local-sources): it could import any host path into the image"
                ),
            ));
        }
        if spec == "scratch" {
            self.image = None;
            self.config = RunConfig::default();
            self.chain("FROM scratch");
            return Ok(());
        }
        if crate::images::snapshot::find(&self.opts.root, &spec)?.is_some() {
            return Err(build_error(
                line,
                format!(
                    "FROM {spec}: a snapshot cannot be a build base (its layers are not in the store); push or build the image instead"
                ),
            ));
        }
        // As `--image` does: the store's copy, pulled or imported when missing.
        let resolved = crate::images::resolve(&self.opts.root, &spec).map_err(|e| build_error(line, e.to_string()))?;
        let id: Digest = resolved
            .image_id
            .as_deref()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| build_error(line, format!("FROM {spec}: not an image of the store")))?;
        let img = self
            .store
            .get_by_id(&id)
            .map_err(|e| store_error(&spec, &e))?
            .ok_or_else(|| build_error(line, format!("FROM {spec}: the image went away")))?;
        self.lease(&img)?;
        drop(resolved);
        self.config = img.config.to_run_config();
        let _ = writeln!(self.log, " ---> {}", short(&img.id));
        self.chain(&format!("FROM {}", img.id));
        self.image = Some(img);
        Ok(())
    }

    /// A cached step image for the current key, if the cache has one still in the store.
    fn cached(&mut self) -> Result<Option<Image>> {
        if self.opts.no_cache {
            return Ok(None);
        }
        let Some(id) = cache::get(&self.opts.root, &self.key) else { return Ok(None) };
        // A lease first: gc may be removing it right now.
        let Ok(lease) = self.store.lease(&id) else { return Ok(None) };
        match self.store.get_by_id(&id) {
            Ok(Some(img)) => {
                self.leases.push(lease);
                Ok(Some(img))
            }
            _ => Ok(None),
        }
    }

    /// Commits `tar` (if the step changed anything) over the image so far, with the
    /// current config, and records it under the current key.
    fn commit_layer(&mut self, upper: &Path) -> Result<()> {
        let tar_path = self.work.next("layer.tar");
        let f = fs::File::create(&tar_path).map_err(|source| Error::Io {
            step: "writing a layer tar",
            name: tar_path.display().to_string(),
            source,
        })?;
        let stats = envbox_rootfs::write_layer_tar(upper, std::io::BufWriter::new(f)).map_err(|source| Error::Io {
            step: "writing a layer tar",
            name: upper.display().to_string(),
            source,
        })?;
        let _ = fs::remove_dir_all(upper);
        let tars = if stats.is_empty() { Vec::new() } else { vec![tar_path.clone()] };
        let (img, lease) =
            self.store.commit(self.image.as_ref(), &tars, &self.config, None).map_err(|e| store_error("committing a build step", &e))?;
        self.leases.push(lease);
        let _ = fs::remove_file(&tar_path);
        cache::put(&self.opts.root, &self.key, &img.id).map_err(|source| Error::Io {
            step: "writing the build cache",
            name: String::new(),
            source,
        })?;
        let _ = writeln!(self.log, " ---> {}{}", short(&img.id), if stats.is_empty() { " (no change)" } else { "" });
        self.image = Some(img);
        Ok(())
    }

    fn use_cached(&mut self, img: Image) {
        let _ = writeln!(self.log, " ---> Using cache\n ---> {}", short(&img.id));
        self.cached_steps += 1;
        self.image = Some(img);
    }

    fn run(&mut self, line: usize, cmd: &Command) -> Result<()> {
        let argv = cmd.argv();
        // ARGs in scope are in RUN's environment (ENV wins), and in its cache key.
        let env_names: Vec<String> = env_map(&self.config).into_iter().map(|(k, _)| k).collect();
        let arg_env: Vec<(String, String)> =
            self.args.iter().filter(|(k, _)| !env_names.contains(k)).map(|(k, v)| (k.clone(), v.clone())).collect();
        self.chain(&format!(
            "RUN {argv:?} {arg_env:?} {:?} {:?} {:?} {:?}",
            self.config.env, self.config.working_dir, self.config.user, self.opts.network
        ));
        self.layer_steps += 1;
        self.keys.push(self.key.clone());
        if let Some(img) = self.cached()? {
            self.use_cached(img);
            return Ok(());
        }
        let Some(image) = &self.image else {
            return Err(build_error(line, "RUN needs a base image with a shell; FROM scratch has none"));
        };
        let mut env = env_map(&self.config);
        env.extend(arg_env);
        let config = SandboxConfig {
            image: crate::config::Image::Ref(format!("sha256:{}", image.id.hex())),
            workdir: self.workdir(),
            env,
            network: self.opts.network,
            root: self.opts.root.clone(),
            // The USER in effect now, which the image so far may not record yet.
            user: self.config.user.clone(),
            ..SandboxConfig::default()
        };
        let name = format!("envbox-build-{}", &crate::agent::shell::new_nonce()[..12]);
        let sb = Sandbox::create(&config, &name).map_err(|e| build_error(line, format!("starting the RUN sandbox: {e}")))?;
        let mut quoted = Vec::new();
        for a in &argv {
            quoted.extend(crate::agent::shell::quote(a.as_bytes()));
            quoted.push(b' ');
        }
        let log = &mut *self.log;
        let out = sb.run_streaming(
            &String::from_utf8_lossy(&quoted),
            &crate::config::RunOptions { timeout: None, max_output: RUN_OUTPUT },
            &mut |chunk| {
                let bytes = match chunk {
                    crate::Chunk::Stdout(b) | crate::Chunk::Stderr(b) => b,
                };
                let _ = log.write_all(bytes);
            },
        );
        let out = match out {
            Ok(o) if o.stdout_truncated || o.stderr_truncated => {
                let _ = writeln!(self.log, " ---> (output past {} MiB of a stream was not shown)", RUN_OUTPUT >> 20);
                o
            }
            Ok(o) => o,
            Err(e) => {
                let _ = sb.delete_and_wait();
                return Err(build_error(line, format!("RUN failed: {e}")));
            }
        };
        if !out.success() {
            let _ = sb.delete_and_wait();
            let oom = if out.oom_killed { " (out of memory)" } else { "" };
            return Err(build_error(line, format!("RUN {} exited with code {}{oom}", short_cmd(&argv), out.exit_code)));
        }
        let upper = self.work.next("upper");
        sb.finish_into(&upper).map_err(|e| build_error(line, format!("keeping the RUN layer: {e}")))?;
        self.commit_layer(&upper)
    }

    /// The image so far as a detached overlay mount with a fresh upper directory (or, for
    /// FROM scratch, the upper directory alone), for COPY and ADD. Dropping the returned
    /// `RootFs` unmounts it (it was never attached anywhere).
    fn mount_for_copy(&mut self, line: usize, word: &str) -> Result<(crate::sandbox::files::RootFs, PathBuf, PathBuf)> {
        let upper = self.work.next("upper");
        let work = self.work.next("ovl-work");
        for d in [&upper, &work] {
            fs::create_dir(d).map_err(|source| Error::Io { step: "creating a COPY layer", name: d.display().to_string(), source })?;
        }
        let lowers: Vec<String> = match &self.image {
            Some(img) => img.layers.iter().rev().map(|p| p.display().to_string()).collect(),
            None => Vec::new(),
        };
        let root_fd = if lowers.is_empty() {
            fs::File::open(&upper).map(std::os::fd::OwnedFd::from).map_err(|source| Error::Io {
                step: "opening a COPY layer",
                name: upper.display().to_string(),
                source,
            })?
        } else {
            crate::fs::overlay::detached_overlay(&lowers, &upper.display().to_string(), &work.display().to_string())
                .map_err(|e| build_error(line, format!("mounting the image for {word}: {e}")))?
        };
        Ok((crate::sandbox::files::RootFs::new(root_fd), upper, work))
    }

    #[allow(clippy::too_many_arguments)]
    fn copy(&mut self, line: usize, add: bool, srcs: &[String], dest: &str, chown: Option<&str>, chmod: Option<u32>) -> Result<()> {
        let word = if add { "ADD" } else { "COPY" };
        let dest = self.expand(line, dest)?;
        let mut found = Vec::new();
        for src in srcs {
            let src = self.expand(line, src)?;
            if add && (src.starts_with("http://") || src.starts_with("https://") || src.starts_with("git@")) {
                return Err(build_error(
                    line,
                    format!("ADD {src}: remote sources are not supported; download it in a RUN step (RUN has the network)"),
                ));
            }
            for f in context::find(&self.context, &self.ignore, &src).map_err(|e| build_error(line, e.to_string()))? {
                found.push((src.clone(), f));
            }
        }
        let dest_abs = if dest.starts_with('/') { dest.clone() } else { format!("{}/{dest}", self.workdir().trim_end_matches('/')) };
        let (rootfs, upper, work) = self.mount_for_copy(line, word)?;
        // Owner names are the image's as it is before this copy.
        let owner = chown.map(|c| self.owner(&rootfs, line, c)).transpose()?.unwrap_or((0, 0));
        let wildcard = srcs.iter().any(|s| s.contains(['*', '?', '[']));
        let named_dir = dest.ends_with('/') || dest == "." || dest == ".." || dest.ends_with("/.") || dest.ends_with("/..");
        // Resolved in the image, symlinks included (`/bin -> usr/bin` is a directory).
        let exists_as_dir = rootfs.open_path(&dest_abs).ok().and_then(|fd| fs::File::from(fd).metadata().ok()).is_some_and(|m| m.is_dir());
        if (found.len() > 1 || wildcard) && !named_dir && !exists_as_dir {
            return Err(build_error(
                line,
                format!("{word} with more than one source needs a directory destination ending in '/', not {dest:?}"),
            ));
        }
        // ADD extracts local tar archives into the destination, which is then a directory.
        let archive = |rel: &str| add && is_archive(&self.context, rel);
        let single_file = found.len() == 1 && !found[0].1.is_dir && !archive(&found[0].1.rel);
        let into_dir = !single_file || named_dir || exists_as_dir || wildcard;
        // Stage what lands in the destination directory, hashing it for the cache key.
        let stage = self.work.next("stage");
        fs::create_dir(&stage).map_err(|source| Error::Io { step: "staging COPY sources", name: stage.display().to_string(), source })?;
        let mut stager = context::Stager { context: &self.context, ignore: &self.ignore, hash: Hasher::default() };
        let stage_err = |e: context::ContextError| build_error(line, e.to_string());
        let target_dir = if into_dir {
            for (src, f) in &found {
                if f.is_dir {
                    // A directory's contents are copied, not the directory itself.
                    stager.stage(src, &f.rel, &stage).map_err(stage_err)?;
                } else {
                    let base = f.rel.rsplit('/').next().unwrap_or(&f.rel);
                    stager.stage(src, &f.rel, &stage.join(base)).map_err(stage_err)?;
                }
            }
            dest_abs.clone()
        } else {
            let (parent, base) = match dest_abs.trim_end_matches('/').rsplit_once('/') {
                Some((p, b)) if !b.is_empty() => (if p.is_empty() { "/".to_string() } else { p.to_string() }, b.to_string()),
                _ => return Err(build_error(line, format!("{word} destination {dest:?} names no file"))),
            };
            stager.stage(&found[0].0, &found[0].1.rel, &stage.join(&base)).map_err(stage_err)?;
            parent
        };
        let mut hash = stager.hash;
        // The names things land under (a file may be copied to another name) are part of
        // what the step does.
        for rel in walk_rel(&stage) {
            hash.update(rel.as_bytes());
            hash.update(b"\0");
        }
        if add {
            self.extract_archives(line, &stage)?;
        }
        let content = hash.finish();
        self.chain(&format!("{word} {content} -> {target_dir} {owner:?} {chmod:?}"));
        self.layer_steps += 1;
        self.keys.push(self.key.clone());
        if let Some(img) = self.cached()? {
            drop(rootfs);
            for d in [&stage, &upper, &work] {
                let _ = fs::remove_dir_all(d);
            }
            self.use_cached(img);
            return Ok(());
        }
        rootfs.copy_contents(&stage, &target_dir).map_err(|e| build_error(line, format!("{word}: {e}")))?;
        // Docker's ownership and modes: 0:0 (or --chown) and the source's mode bits, setuid
        // included (or --chmod), also for a file that replaced one of the image. Only
        // entries the copy made: a whiteout or FIFO in an ADD archive is skipped by the copy
        // and must not re-own the image's file of that name.
        for (rel, mode) in copied_entries(&stage) {
            let path = format!("{}/{rel}", target_dir.trim_end_matches('/'));
            rootfs
                .set_owner_mode(&path, Some(owner), mode.map(|m| chmod.unwrap_or(m)))
                .map_err(|e| build_error(line, format!("{word}: {e}")))?;
        }
        drop(rootfs);
        let _ = fs::remove_dir_all(&stage);
        let _ = fs::remove_dir_all(&work);
        self.commit_layer(&upper)
    }

    /// `--chown=user[:group]`, names looked up in the image's /etc/passwd and /etc/group.
    fn owner(&self, rootfs: &crate::sandbox::files::RootFs, line: usize, spec: &str) -> Result<(u32, u32)> {
        let (user, group) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        let lookup = |file: &str, name: &str, field: usize| -> Option<u32> {
            let text = rootfs.read_file(file, 4 << 20).ok()?;
            String::from_utf8_lossy(&text)
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.first() == Some(&name))?
                .get(field)?
                .parse()
                .ok()
        };
        let uid = match user.parse::<u32>() {
            Ok(u) => u,
            Err(_) => lookup("/etc/passwd", user, 2)
                .ok_or_else(|| build_error(line, format!("--chown={spec}: no user {user:?} in the image's /etc/passwd")))?,
        };
        let gid = match group {
            None => match user.parse::<u32>() {
                Ok(u) => u,
                Err(_) => lookup("/etc/passwd", user, 3).unwrap_or(uid),
            },
            Some(g) => match g.parse::<u32>() {
                Ok(g) => g,
                Err(_) => lookup("/etc/group", g, 2)
                    .ok_or_else(|| build_error(line, format!("--chown={spec}: no group {g:?} in the image's /etc/group")))?,
            },
        };
        Ok((uid, gid))
    }

    /// Replaces each staged regular file that is a tar archive by its extracted contents.
    fn extract_archives(&mut self, line: usize, stage: &Path) -> Result<()> {
        let Ok(rd) = fs::read_dir(stage) else { return Ok(()) };
        for e in rd.flatten() {
            let p = e.path();
            if !e.file_type().is_ok_and(|t| t.is_file()) || !is_archive_file(&p) {
                continue;
            }
            let io = |source| Error::Io { step: "extracting an ADD archive", name: p.display().to_string(), source };
            let out = self.work.next("unpacked");
            fs::create_dir(&out).map_err(io)?;
            let f = fs::File::open(&p).map_err(io)?;
            envbox_rootfs::unpack::unpack_blob(std::io::BufReader::new(f), &out, None, &envbox_rootfs::Limits::default())
                .map_err(|err| build_error(line, format!("ADD {}: {}", e.file_name().to_string_lossy(), crate::error::chain(&err))))?;
            fs::remove_file(&p).map_err(io)?;
            merge_into(&out, stage).map_err(io)?;
        }
        Ok(())
    }
}

/// Whether a context file is a tar (plain, gzip or zstd): ADD extracts those.
/// Opened through the context's descriptor, like every other read of the context.
fn is_archive(ctx: &context::Context, rel: &str) -> bool {
    ctx.open_file(rel).is_ok_and(is_tar)
}

/// A staged file that is a tar archive.
fn is_archive_file(p: &Path) -> bool {
    fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(p).is_ok_and(is_tar)
}

/// Whether an opened regular file is a tar (plain, gzip or zstd). xz and bzip2 archives are
/// not supported; ADD copies them as files like any other (the README says so).
fn is_tar(f: fs::File) -> bool {
    if !f.metadata().is_ok_and(|m| m.is_file()) {
        return false;
    }
    let head = envbox_rootfs::unpack::peek_decompressed(f).unwrap_or_default();
    head.len() >= 262 && &head[257..262] == b"ustar"
}

/// Moves the entries of `from` into `into` (merging directories), then removes `from`.
fn merge_into(from: &Path, into: &Path) -> std::io::Result<()> {
    for e in fs::read_dir(from)? {
        let e = e?;
        let dst = into.join(e.file_name());
        let is_dir = e.file_type()?.is_dir();
        match fs::symlink_metadata(&dst) {
            Ok(md) if md.is_dir() && is_dir => merge_into(&e.path(), &dst)?,
            Ok(md) if md.is_dir() => {
                fs::remove_dir_all(&dst)?;
                fs::rename(e.path(), &dst)?;
            }
            Ok(_) => {
                fs::remove_file(&dst)?;
                fs::rename(e.path(), &dst)?;
            }
            Err(_) => fs::rename(e.path(), &dst)?,
        }
    }
    fs::remove_dir_all(from)
}

/// The staged entries a copy recreates — directories, regular files, symlinks — relative,
/// parents first, with the mode to give them (`None` for a symlink: modes do not apply).
fn copied_entries(stage: &Path) -> Vec<(String, Option<u32>)> {
    use std::os::unix::fs::MetadataExt;
    walk_rel(stage)
        .into_iter()
        .filter_map(|rel| {
            let md = fs::symlink_metadata(stage.join(&rel)).ok()?;
            let ft = md.file_type();
            if ft.is_symlink() {
                Some((rel, None))
            } else if ft.is_dir() || ft.is_file() {
                Some((rel, Some(md.mode() & 0o7777)))
            } else {
                None
            }
        })
        .collect()
}

/// Every path under `dir`, relative, parents before children, sorted.
fn walk_rel(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((d, rel)) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let r = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push((e.path(), r.clone()));
            }
            out.push(r);
        }
    }
    // Sorted: deterministic for the cache key, and a parent sorts before what is in it.
    out.sort();
    out
}

fn short(id: &Digest) -> String {
    id.hex()[..12].to_string()
}

fn short_cmd(argv: &[String]) -> String {
    let s = match argv {
        [sh, c, line] if sh == "/bin/sh" && c == "-c" => line.clone(),
        _ => format!("{argv:?}"),
    };
    if s.chars().count() > 80 {
        format!("{}...", s.chars().take(77).collect::<String>())
    } else {
        s
    }
}
