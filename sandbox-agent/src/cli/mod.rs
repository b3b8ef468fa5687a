//! One file per subcommand. Each returns the process exit code; agent errors are one line on
//! stderr and exit 125.
pub mod api;
pub mod daemon;
pub mod images;
pub mod run;
pub mod state;
pub mod teardown;
pub mod terminal;

/// Prints an agent error (with its causes on the same line) and returns 125.
pub fn fail(err: &dyn std::error::Error) -> i32 {
    eprintln!("sandbox-agent: {}", sandbox_agent::error_line(err));
    125
}
