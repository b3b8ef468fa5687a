//! `sandbox-agent daemon [--config FILE]`
use std::path::PathBuf;

use clap::Args;
use sandbox_agent::config::Config;

#[derive(Args)]
pub struct DaemonArgs {
    /// Configuration file (default /etc/sandbox-agent/config.toml, if it exists).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Listen here instead of the configured socket.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Keep state here instead of the configured directory.
    #[arg(long = "state-dir", value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

pub fn main(args: DaemonArgs) -> i32 {
    let mut config = match Config::load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => return super::fail(&e),
    };
    if let Some(s) = args.socket {
        config.socket = s;
    }
    if let Some(d) = args.state_dir {
        config.state_dir = d;
    }
    init_tracing(&config.log_format);
    ensure_std_fds();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .thread_name("sandbox-agent")
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return super::fail(&e),
    };
    match runtime.block_on(sandbox_agent::daemon::serve(config)) {
        Ok(()) => {
            // Sandbox tasks must not hold the process: they are re-adopted on restart.
            runtime.shutdown_background();
            0
        }
        Err(e) => super::fail(&e),
    }
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SANDBOX_AGENT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Descriptors 0-2 must be open: files the daemon opens for workloads must never land on
/// them (the workload's stdio is set up with dup2 onto 0-2).
fn ensure_std_fds() {
    for fd in 0..3 {
        // SAFETY: F_GETFD only queries the descriptor.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
            // SAFETY: opening /dev/null; the lowest free descriptor is the missing one.
            unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
        }
    }
}
