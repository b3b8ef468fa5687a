//! The `sandbox-agent` command line.
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;

#[derive(Parser)]
#[command(
    name = "sandbox-agent",
    version,
    about = "Run untrusted workloads with kernel-enforced network egress policy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a command in a new sandbox and wait for it.
    Run(Box<cli::run::RunArgs>),
    /// Print the enforcement state (installed programs, live sandboxes, counters) as JSON.
    State,
    /// Detach and unpin the eBPF programs and remove the parent cgroup (no sandbox may be live).
    Teardown,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help, --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // Bad usage is an agent error like any other: one line, exit 125.
            let text = e.to_string();
            let line = text.lines().next().unwrap_or("invalid usage");
            eprintln!("sandbox-agent: {}", line.trim_start_matches("error: "));
            return ExitCode::from(125);
        }
    };
    let code = match cli.command {
        Command::Run(args) => cli::run::main(*args),
        Command::State => cli::state::main(),
        Command::Teardown => cli::teardown::main(),
    };
    ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(125))
}
