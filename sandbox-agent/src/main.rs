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
    #[expect(
        clippy::doc_markdown,
        reason = "clap shows this text as help, where backticks would be noise"
    )]
    /// The daemon's API socket (default /run/sandbox-agent/api.sock, or $SANDBOX_AGENT_SOCKET).
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a command in a new sandbox and wait for it (through the daemon when one runs).
    Run(Box<cli::run::RunArgs>),
    /// Serve the API: own the eBPF programs, supervise sandboxes, report events and metrics.
    Daemon(cli::daemon::DaemonArgs),
    /// Create a sandbox through the daemon and print its id.
    Create(Box<cli::api::CreateArgs>),
    /// Run a command in a live sandbox (optionally under a narrower policy) and wait for it.
    Exec(Box<cli::api::ExecArgs>),
    /// List sandboxes.
    Ls(cli::api::LsArgs),
    /// Show a sandbox as JSON.
    Inspect(cli::api::RefArgs),
    /// Print a sandbox's output.
    Logs(cli::api::LogsArgs),
    /// Wait for a sandbox to end; exits with its status.
    Wait(cli::api::RefArgs),
    /// Wait until a sandbox's readiness probe passes.
    WaitReady(cli::api::RefArgs),
    /// Kill a sandbox (exit status 137).
    Kill(cli::api::RefArgs),
    /// Remove an ended sandbox's record and output.
    Rm(cli::api::RmArgs),
    /// Write this command's stdin to a sandbox's stdin.
    Stdin(cli::api::StdinArgs),
    /// Change a live sandbox's policy.
    #[command(subcommand)]
    Policy(cli::api::PolicyCommand),
    /// Print verdict events (kernel denials, resolver and proxy decisions) as JSON lines.
    Events(cli::api::EventsArgs),
    /// List where a sandbox's exposed ports are reached (gateway URLs and tunnels).
    Tunnels(cli::api::RefArgs),
    /// Copy a file or directory into or out of a running sandbox (cp PATH SANDBOX:PATH, cp SANDBOX:PATH PATH).
    Cp(cli::api::CpArgs),
    /// Make a connect token for a sandbox's HTTP ports (or list or revoke them).
    Token(cli::api::TokenArgs),
    /// List the image layer cache (images prune: remove layers no live sandbox uses).
    Images(cli::images::ImagesArgs),
    /// Print the enforcement state (installed programs, live sandboxes, counters) as JSON.
    State,
    /// Print the daemon API's `OpenAPI` document (the one served at /openapi.json).
    Openapi,
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
    let socket = cli::api::socket_path(cli.socket.as_deref());
    cli::api::set_socket(socket.clone());
    let client = || sandbox_agent::api::client::Client::new(&socket);
    let code = match cli.command {
        Command::Run(args) => cli::run::main(&args, &socket),
        Command::Daemon(args) => cli::daemon::main(args),
        Command::Create(args) => cli::api::create(&client(), &args),
        Command::Exec(args) => cli::api::exec(&client(), &args),
        Command::Ls(args) => cli::api::ls(&client(), &args),
        Command::Inspect(args) => cli::api::inspect(&client(), &args),
        Command::Logs(args) => cli::api::logs(&client(), &args),
        Command::Wait(args) => cli::api::wait(&client(), &args, "/wait", hyper::Method::GET),
        Command::WaitReady(args) => cli::api::wait_ready(&client(), &args),
        Command::Kill(args) => cli::api::wait(&client(), &args, "/kill", hyper::Method::POST),
        Command::Rm(args) => cli::api::rm(&client(), &args),
        Command::Stdin(args) => cli::api::stdin(&client(), &args),
        Command::Policy(cmd) => cli::api::policy(&client(), &cmd),
        Command::Events(args) => cli::api::events(&client(), &args),
        Command::Tunnels(args) => cli::api::tunnels(&client(), &args),
        Command::Cp(args) => cli::api::cp(&client(), &args),
        Command::Token(args) => cli::api::token(&client(), &args),
        Command::Images(args) => cli::images::main(&args),
        Command::State => cli::state::main(),
        Command::Openapi => {
            println!("{}", sandbox_agent::daemon::server::document());
            0
        }
        Command::Teardown => cli::teardown::main(),
    };
    ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(125))
}
