//! The `envbox` command line: one module per subcommand. Plain output for
//! people, `--json` for programs; every failure is one clear line on stderr
//! and a non-zero exit.

mod bench;
mod build;
mod call;
mod cp;
mod create;
mod exec;
mod gc;
mod images;
mod init;
mod logs;
mod ps;
mod reset;
mod rm;
mod run;
mod sandbox_flags;
mod snapshot;
mod stop;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Exit code for a failure of envbox itself (not of a command in a sandbox).
pub const EXIT_FAILURE: i32 = 125;

#[derive(Parser)]
#[command(name = "envbox", version, about = "Millisecond Linux sandboxes for RL and agent-evaluation environments")]
struct Cli {
    /// State root (sandboxes, sockets, upper layers).
    #[arg(long, global = true, env = "ENVBOX_ROOT", default_value = envbox::config::DEFAULT_ROOT)]
    root: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a sandbox (detached: it lives until `envbox rm`).
    Create(create::Args),
    /// Run a shell command in a sandbox's persistent shell.
    Exec(exec::Args),
    /// Copy files between the host and a sandbox (NAME:/path on one side).
    Cp(cp::Args),
    /// Throw away every filesystem change of a sandbox and restart its shell.
    Reset(reset::Args),
    /// Delete a sandbox: processes, mounts, cgroups, directories.
    Rm(rm::Args),
    /// List sandboxes.
    Ps(ps::Args),
    /// Measure create, exec, reset and delete latencies and throughput.
    Bench(bench::Args),
    /// Remove what crashed sandboxes left behind (also done at every start).
    Gc(gc::Args),
    /// Pull an image from a registry (or import oci:PATH / docker-archive:PATH) into the store.
    Pull(images::PullArgs),
    /// List the images of the store.
    Images(images::ImagesArgs),
    /// Push a store image to a registry (blob uploads, then the manifest).
    Push(images::PushArgs),
    /// Build an image from a Dockerfile (or an environment directory), without Docker.
    Build(build::Args),
    /// Untag images and delete the layers nothing uses any more.
    Rmi(images::RmiArgs),
    /// Turn a sandbox's current filesystem into an image, without copying (its processes restart).
    Snapshot(snapshot::SnapshotArgs),
    /// Start K sandboxes from a sandbox's current filesystem.
    Fork(snapshot::ForkArgs),
    /// Make a new environment directory (env.py) from a template.
    Init(init::Args),
    /// Serve an environment (env.py) in detached sandboxes.
    Run(run::Args),
    /// Call a method of a running environment; prints the result as JSON.
    Call(call::Args),
    /// List the methods of a running environment.
    Methods(call::MethodsArgs),
    /// Print what a running environment wrote to stdout and stderr.
    Logs(logs::Args),
    /// Stop an environment: delete its sandboxes (all replicas).
    Stop(stop::Args),
}

pub fn main() -> i32 {
    let cli = Cli::parse();
    let root = envbox::config::absolute(&cli.root);
    // Writing a template needs no privileges.
    let cli = match cli.command {
        Command::Init(a) => return report(init::run(&root, a)),
        command => Cli { command, ..cli },
    };
    // Commands that create many sandboxes keep what makes the next create
    // cheaper (spare network namespaces, the zygote); the others would only
    // pay for it.
    let creates_many = match &cli.command {
        Command::Bench(_) | Command::Fork(_) | Command::Build(_) => true,
        Command::Run(a) => a.creates_many(),
        _ => false,
    };
    if !creates_many {
        envbox::one_shot_process();
    }
    if let Err(e) = envbox::sandbox::require_root() {
        eprintln!("envbox: {e}");
        return EXIT_FAILURE;
    }
    // Every start collects the garbage of crashed sandboxes first.
    if !matches!(cli.command, Command::Gc(_)) && root.exists() {
        if let Err(e) = envbox::collect_garbage(&root) {
            eprintln!("envbox: warning: garbage collection: {}", envbox::error::chain(&e));
        }
    }
    let result = match cli.command {
        Command::Create(a) => create::run(&root, a),
        Command::Exec(a) => exec::run(&root, a),
        Command::Cp(a) => cp::run(&root, a),
        Command::Reset(a) => reset::run(&root, a),
        Command::Rm(a) => rm::run(&root, a),
        Command::Ps(a) => ps::run(&root, a),
        Command::Bench(a) => bench::run(&root, a),
        Command::Gc(a) => gc::run(&root, a),
        Command::Init(_) => Ok(0),
        Command::Pull(a) => images::pull(&root, a),
        Command::Snapshot(a) => snapshot::snapshot(&root, a),
        Command::Fork(a) => snapshot::fork(&root, a),
        Command::Images(a) => images::list(&root, a),
        Command::Build(a) => build::run(&root, a),
        Command::Push(a) => images::push(&root, a),
        Command::Rmi(a) => images::rmi(&root, a),
        Command::Run(a) => run::run(&root, a),
        Command::Call(a) => call::run(&root, a),
        Command::Methods(a) => call::methods(&root, a),
        Command::Logs(a) => logs::run(&root, a),
        Command::Stop(a) => stop::run(&root, a),
    };
    report(result)
}

fn report(result: envbox::Result<i32>) -> i32 {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("envbox: {}", envbox::error::chain(&e));
            EXIT_FAILURE
        }
    }
}

/// Parses `--timeout SECS`: a positive number of seconds.
pub fn parse_timeout(s: &str) -> Result<std::time::Duration, String> {
    match s.trim().parse::<f64>() {
        Ok(t) if t.is_finite() && t > 0.0 && t < 1e9 => Ok(std::time::Duration::from_secs_f64(t)),
        _ => Err(format!("--timeout must be a positive number of seconds, got {s:?}")),
    }
}

/// Prints a value as one line of JSON.
pub fn print_json(v: &impl serde::Serialize) {
    println!("{}", serde_json::to_string(v).unwrap_or_default());
}
