//! Build steps: install the eBPF toolchain, build, test, demo and benchmark.
//!
//! Every command that needs the toolchain runs `setup` first; `setup` is idempotent and
//! takes well under a second when everything is in place.
use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

mod bench;
mod bench_daemon;
mod bench_domains;
mod bench_images;
mod bench_ingress;
mod bench_isolation;
mod bench_kit;
mod demo;
mod fuzz;
mod setup;

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the build and the tests need (nightly rust-src, bpf-linker, Debian packages).
    Setup,
    /// Build the agent with its embedded eBPF object.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Run the unit tests and the end-to-end tests (as root: real eBPF, cgroups, namespaces).
    Test {
        /// Only run end-to-end tests whose name contains this.
        filter: Option<String>,
    },
    /// Show a sandboxed command reaching one address and refused another.
    Demo,
    /// Measure the cost of enforcement against baselines in the same run.
    Bench,
    /// Fuzz the proxy's TLS hello and HTTP Host parsers (cargo-fuzz, nightly).
    Fuzz {
        /// How long to run each target.
        #[arg(long, default_value_t = 15)]
        seconds: u64,
    },
}

fn main() -> Result<()> {
    ensure_sbin_on_path();
    match Cli::parse().command {
        Cmd::Setup => setup::run(),
        Cmd::Build { release } => {
            setup::run()?;
            build(release).map(drop)
        }
        Cmd::Test { filter } => {
            setup::run()?;
            test(filter.as_deref())
        }
        Cmd::Demo => {
            setup::run()?;
            let agent = build(true)?;
            demo::run(&agent)
        }
        Cmd::Bench => {
            setup::run()?;
            // An A/B run measures another build (e.g. an older commit's) with this bench.
            let agent = match env::var_os("SANDBOX_AGENT_BENCH_AGENT") {
                Some(path) => PathBuf::from(path),
                None => build(true)?,
            };
            bench::run(&agent)
        }
        Cmd::Fuzz { seconds } => {
            setup::run()?;
            fuzz::run(seconds)
        }
    }
}

/// `ip` and friends live in the sbin directories, which a minimal environment (a CI runner,
/// `sudo` with a secure path) may not list; the tests, demo and bench need them.
fn ensure_sbin_on_path() {
    let path = env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = env::split_paths(&path).collect();
    for sbin in ["/usr/local/sbin", "/usr/sbin", "/sbin"] {
        if !dirs.iter().any(|d| d == Path::new(sbin)) {
            dirs.push(PathBuf::from(sbin));
        }
    }
    if let Ok(joined) = env::join_paths(dirs) {
        // SAFETY: called first thing in main, before any thread exists.
        unsafe { env::set_var("PATH", joined) };
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_path_buf()
}

/// Runs a command, failing with its command line if it does not succeed.
pub fn run_cmd(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// Builds the agent and returns the path of the binary.
fn build(release: bool) -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["build", "-p", "sandbox-agent"]);
    if release {
        cmd.arg("--release");
    }
    run_cmd(&mut cmd)?;
    Ok(workspace_root()
        .join("target")
        .join(if release { "release" } else { "debug" })
        .join("sandbox-agent"))
}

/// Seconds each fuzz target runs in `cargo xtask test`; `cargo xtask fuzz` runs longer.
const FUZZ_SECONDS_IN_TESTS: u64 = 10;

fn test(filter: Option<&str>) -> Result<()> {
    if !is_root() {
        bail!(
            "the end-to-end tests load eBPF programs and create cgroups and namespaces: run as root"
        );
    }
    let agent = build(true)?;
    let mut totals = TestTotals::default();
    // Pure logic first: fast, and no root needed.
    totals.run(cargo().args(["test", "-p", "sandbox-common", "-p", "sandbox-agent"]))?;
    // Every API response the end-to-end tests receive is recorded, then checked against the
    // agent's OpenAPI document below.
    let api_python = setup::api_checker_python()?;
    let responses = workspace_root().join("target/api-responses");
    let _ = fs::remove_dir_all(&responses);
    fs::create_dir_all(&responses).context("create target/api-responses")?;
    let mut e2e = cargo();
    e2e.args(["test", "--release", "-p", "sandbox-tests", "--"])
        .env("SANDBOX_AGENT_BIN", &agent)
        .env("SANDBOX_TESTS_API_RECORD", &responses);
    if let Some(f) = filter {
        e2e.arg(f);
    }
    let result = totals.run(&mut e2e);
    // The tests' helper scripts live where sandboxes see them (tests/src/lib.rs, HELPERS_ROOT).
    let _ = fs::remove_dir_all("/var/lib/sandbox-agent-tests");
    // The suite shares one install of the programs; remove it so nothing is left pinned.
    let teardown = Command::new(&agent).arg("teardown").status();
    result?;
    match teardown {
        Ok(s) if s.success() => {}
        Ok(s) => bail!("sandbox-agent teardown after the tests failed: {s}"),
        Err(e) => bail!("cannot run sandbox-agent teardown: {e}"),
    }
    check_api_responses(&agent, &api_python, &responses)?;
    // The whole suite only: a brief fuzz run of the proxy's parsers (a crash fails it).
    if filter.is_none() {
        fuzz::run(FUZZ_SECONDS_IN_TESTS)?;
    }
    // One closing line for the whole suite (unit and end-to-end), whatever ran last.
    println!("tests: {} passed, {} failed", totals.passed, totals.failed);
    if totals.passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}

/// The agent's `OpenAPI` document passes a validator, and every response the end-to-end
/// tests recorded matches the schema of its route and status.
fn check_api_responses(agent: &Path, python: &Path, responses: &Path) -> Result<()> {
    let document = responses.join("openapi.json");
    let out = Command::new(agent)
        .arg("openapi")
        .output()
        .context("run sandbox-agent openapi")?;
    if !out.status.success() {
        bail!("sandbox-agent openapi failed: {}", out.status);
    }
    fs::write(&document, &out.stdout).context("write the OpenAPI document")?;
    run_cmd(
        Command::new(python)
            .arg(workspace_root().join("tests/helpers/check_api.py"))
            .arg(&document)
            .arg(responses),
    )
}

/// Sums cargo's `test result:` lines while passing the output through.
#[derive(Default)]
struct TestTotals {
    passed: u64,
    failed: u64,
}

impl TestTotals {
    fn run(&mut self, cmd: &mut Command) -> Result<()> {
        use std::io::{BufRead as _, BufReader};
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {cmd:?}"))?;
        let stdout = child.stdout.take().context("test output")?;
        for line in BufReader::new(stdout).lines() {
            let line = line.context("read test output")?;
            println!("{line}");
            if let Some(rest) = line.strip_prefix("test result: ") {
                self.passed += count_before(rest, " passed");
                self.failed += count_before(rest, " failed");
            }
        }
        let status = child.wait().context("wait for cargo test")?;
        if !status.success() {
            bail!("{cmd:?} failed: {status}");
        }
        Ok(())
    }
}

/// In `ok. 12 passed; 0 failed; ...`, the number before `word`.
fn count_before(text: &str, word: &str) -> u64 {
    text.split(';')
        .find_map(|part| {
            part.trim()
                .trim_start_matches("ok. ")
                .trim_start_matches("FAILED. ")
                .strip_suffix(word.trim())
        })
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
