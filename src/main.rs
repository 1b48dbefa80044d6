//! The `envbox` command.

#[allow(clippy::exit)]
fn main() {
    // The agent (a sandbox's PID 1) and the zygote that forks agents are
    // this same binary with hidden subcommands; dispatch before any
    // argument parsing.
    let first = std::env::args_os().nth(1);
    if first.as_deref().is_some_and(|a| a == envbox::agent::AGENT_SUBCOMMAND) {
        std::process::exit(envbox::agent::main());
    }
    if first.as_deref().is_some_and(|a| a == envbox::sandbox::zygote::ZYGOTE_SUBCOMMAND) {
        std::process::exit(envbox::sandbox::zygote::main());
    }
    envbox::mark_current_exe_as_agent();
    std::process::exit(cli::main());
}

mod cli;
