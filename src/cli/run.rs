//! `envbox run [IMAGE] --dir ENV_DIR [--name N] ...`: serve an environment
//! in detached sandboxes and print how to call it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use envbox::config::{self, EnvKind, Image, SandboxConfig, ServeConfig, Volume};
use envbox::{Env, Result, Sandbox};

#[derive(clap::Args)]
pub struct Args {
    /// Image: a registry reference (pulled when missing), oci:PATH[:TAG], docker-archive:PATH
    /// or a root filesystem directory; default: the host's system directories.
    image: Option<String>,
    /// The environment directory (env.py), served read-only at /app. Without
    /// it, the image's own /app is served.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Name of the environment (with --replicas N, of its group; replicas are NAME-0 ... NAME-(N-1)).
    #[arg(long)]
    name: Option<String>,
    /// function or http; default: detected from env.py like the reference framework does.
    #[arg(long = "type")]
    kind: Option<EnvKind>,
    /// Each replica's settings (--memory/--mem-limit, --cpus, --disk and --pids per replica).
    #[command(flatten)]
    sandbox: super::sandbox_flags::SandboxFlags,
    /// Also serve the API on TCP (IP:PORT, or PORT for 127.0.0.1); replica i gets PORT+i.
    #[arg(long, value_parser = config::parse_publish)]
    publish: Option<std::net::SocketAddr>,
    /// Number of sandboxes serving the environment.
    #[arg(long, default_value_t = 1)]
    replicas: u16,
    /// The python interpreter inside the sandbox (default: python3).
    #[arg(long)]
    python: Option<String>,
    /// http environments: the server command, run in /app (default: uvicorn serving env:app).
    #[arg(long = "server-cmd", num_args = 1.., allow_hyphen_values = true)]
    server_cmd: Option<Vec<String>>,
    /// http environments: the port the server listens on inside the sandbox.
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Largest request body, e.g. 64m.
    #[arg(long = "max-body", value_parser = config::parse_size)]
    max_body: Option<u64>,
    /// How long to wait for the environment to answer /health.
    #[arg(long = "ready-timeout", default_value_t = 120.0)]
    ready_timeout: f64,
    /// Print {"name","replicas","socket","methods"} as JSON.
    #[arg(long)]
    json: bool,
}

fn default_name(dir: Option<&Path>) -> String {
    let base = dir.and_then(|d| std::fs::canonicalize(d).ok()).and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()));
    let clean: String =
        base.unwrap_or_default().chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')).take(40).collect();
    if clean.is_empty() || !clean.as_bytes()[0].is_ascii_alphanumeric() {
        "env".to_string()
    } else {
        clean
    }
}

impl Args {
    /// Whether this run creates more than one sandbox.
    pub fn creates_many(&self) -> bool {
        self.replicas > 1
    }
}

pub fn run(root: &Path, mut a: Args) -> Result<i32> {
    let name = a.name.clone().unwrap_or_else(|| default_name(a.dir.as_deref()));
    config::validate_name(&name)?;
    if a.replicas == 0 {
        eprintln!("envbox: --replicas must be at least 1");
        return Ok(super::EXIT_FAILURE);
    }
    let kind = match (&a.dir, a.kind) {
        (_, Some(k)) => k,
        (Some(dir), None) => {
            let env_py = dir.join("env.py");
            match std::fs::read_to_string(&env_py) {
                Ok(text) => EnvKind::detect(&text),
                Err(e) => {
                    eprintln!(
                        "envbox: cannot read {}: {e}; --dir must be an environment directory with env.py (`envbox init NAME` makes one)",
                        env_py.display()
                    );
                    return Ok(super::EXIT_FAILURE);
                }
            }
        }
        // The image's own /app/env.py decides, as the reference's build does.
        (None, None) => match a.image.as_deref().map(Image::parse) {
            Some(Image::Ref(spec)) => {
                let env_py = envbox::images::read_file(root, &spec, "/app/env.py")?;
                env_py.map_or(EnvKind::Function, |b| EnvKind::detect(&String::from_utf8_lossy(&b)))
            }
            Some(Image::Dir(dir)) => std::fs::read_to_string(dir.join("app/env.py")).map_or(EnvKind::Function, |t| EnvKind::detect(&t)),
            _ => EnvKind::Function,
        },
    };
    if let Some(dir) = &a.dir {
        a.sandbox.volumes.push(Volume { host: config::absolute(dir), container: "/app".into(), read_only: true });
    }
    let members = envbox::sandbox::members(root, &name)?;
    if !members.is_empty() {
        eprintln!("envbox: an environment named {name:?} is already running; stop it with `envbox stop {name}` or pick another --name");
        return Ok(super::EXIT_FAILURE);
    }
    let mut created: Vec<Sandbox> = Vec::new();
    let names: Vec<String> = if a.replicas == 1 { vec![name.clone()] } else { (0..a.replicas).map(|i| format!("{name}-{i}")).collect() };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| envbox::Error::Io {
        step: "starting the client runtime",
        name: name.clone(),
        source: e,
    })?;
    let image = a.image.as_deref().map(Image::parse).unwrap_or(Image::Host);
    // An HTTP environment without --server-cmd runs its image's own
    // entrypoint and command when it has one.
    let mut server_cmd = a.server_cmd.clone();
    if let (EnvKind::Http, None, Image::Ref(spec)) = (kind, &server_cmd, &image) {
        let cmd = envbox::images::resolve(root, spec)?.command;
        if !cmd.is_empty() {
            server_cmd = Some(cmd);
        }
    }
    let mut sockets = Vec::new();
    for (i, sb_name) in names.iter().enumerate() {
        let publish = match a.publish {
            Some(mut addr) => {
                let port = addr.port().checked_add(u16::try_from(i).unwrap_or(u16::MAX));
                let Some(port) = port else {
                    eprintln!("envbox: --publish port + replicas passes 65535");
                    return Ok(super::EXIT_FAILURE);
                };
                addr.set_port(port);
                Some(addr)
            }
            None => None,
        };
        let cfg = SandboxConfig {
            serve: Some(ServeConfig {
                kind,
                python: a.python.clone(),
                command: server_cmd.clone(),
                upstream_port: a.port,
                publish,
                max_body: a.max_body.unwrap_or(config::DEFAULT_MAX_BODY),
                ..ServeConfig::default()
            }),
            group: Some(name.clone()),
            ..a.sandbox.config(root, image.clone(), "/app".into())
        };
        match Sandbox::create(&cfg, sb_name) {
            Ok(sb) => {
                sockets.push((sb.env_socket().unwrap_or_default(), publish));
                created.push(sb);
            }
            Err(e) => {
                remove_all(created);
                return Err(e);
            }
        }
    }
    // Every replica must answer /health; the first failure (env.py that
    // does not import, no python3 in the image) is reported with its log.
    let wait = Duration::from_secs_f64(a.ready_timeout.clamp(0.1, 86_400.0));
    let mut methods = Vec::new();
    for (sb, (socket, _)) in created.iter().zip(&sockets) {
        let env = Env::unix(socket);
        let ready = rt.block_on(env.wait_ready(wait)).and_then(|()| rt.block_on(env.list_methods()));
        match ready {
            Ok(m) => methods = m,
            Err(e) => {
                eprintln!("envbox: environment {} did not become ready: {e}", sb.name());
                let log = std::fs::read(sb.state_dir().join(envbox::sandbox::state::ENV_LOG_FILE)).unwrap_or_default();
                let tail = String::from_utf8_lossy(&log[log.len().saturating_sub(4096)..]).into_owned();
                if !tail.trim().is_empty() {
                    eprintln!("--- its log ---\n{}", tail.trim_end());
                }
                remove_all(created);
                return Ok(super::EXIT_FAILURE);
            }
        }
    }
    if a.json {
        super::print_json(&serde_json::json!({
            "name": name,
            "replicas": names,
            "sockets": sockets.iter().map(|(s, _)| s.display().to_string()).collect::<Vec<_>>(),
            "published": sockets.iter().filter_map(|(_, p)| p.map(|p| p.to_string())).collect::<Vec<_>>(),
            "methods": methods,
        }));
        return Ok(0);
    }
    let what = if kind == EnvKind::Http { "an HTTP environment" } else { "env.py" };
    println!("{name}: serving {what} in {} sandbox{}", names.len(), if names.len() == 1 { "" } else { "es" });
    for (n, (socket, publish)) in names.iter().zip(&sockets) {
        let tcp = publish.map(|p| format!(" and http://{p}")).unwrap_or_default();
        println!("  {n}: unix:{}{tcp}", socket.display());
    }
    if !methods.is_empty() {
        println!("methods:");
        for m in &methods {
            let sig = m.signature.strip_prefix("(self, ").map(|s| format!("({s}")).unwrap_or_else(|| m.signature.replace("(self)", "()"));
            println!("  {}{sig}", m.name);
        }
    }
    let example =
        methods.iter().find(|m| m.name == "evaluate").or(methods.first()).map(|m| m.name.clone()).unwrap_or_else(|| "evaluate".into());
    let arg = if example == "evaluate" { " --arg task_id=1" } else { "" };
    println!("try:    envbox call {name} {example}{arg}");
    println!("stop:   envbox stop {name}");
    Ok(0)
}

fn remove_all(created: Vec<Sandbox>) {
    for sb in created {
        let _ = sb.delete_and_wait();
    }
}
