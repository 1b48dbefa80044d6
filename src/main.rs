//! The `envbox` command.

#[allow(clippy::exit)]
fn main() {
    // The agent (a sandbox's PID 1) is this same binary with a hidden
    // subcommand; dispatch before any argument parsing.
    let mut args = std::env::args_os();
    if args.nth(1).is_some_and(|a| a == envbox::agent::AGENT_SUBCOMMAND) {
        std::process::exit(envbox::agent::main());
    }
    envbox::mark_current_exe_as_agent();
    // One create per process: spare network namespaces would be wasted.
    envbox::namespace::disable_pool();
    std::process::exit(cli::main());
}

mod cli;
