//! What a sandbox's isolation costs at start: `run -- /bin/true` with the default view (own
//! uid, PID, mount and IPC namespaces, read-only root, private tmpfs, minimal /dev, own /proc)
//! against bubblewrap building the same namespaces and mounts, and against a bare fork/exec;
//! and the daemon's create → running with the same isolation. Runs are interleaved so that
//! the machine's noise falls on every column alike.
use std::{
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result};

use crate::bench_kit::{BenchEnv, check, interrupted, percentile, print_grid, progress};

const RUNS: usize = 200;
const TRUE: &str = "/bin/true";

/// bubblewrap with the agent's default view: new PID and IPC namespaces (and mount), the
/// host's root read-only, tmpfs on the private directories, its own /proc and /dev.
fn bwrap() -> Command {
    let mut cmd = Command::new("bwrap");
    cmd.args(["--unshare-pid", "--unshare-ipc", "--die-with-parent"])
        .args(["--ro-bind", "/", "/"]);
    for dir in ["/tmp", "/var/tmp", "/home", "/root", "/run"] {
        cmd.args(["--tmpfs", dir]);
    }
    cmd.args(["--proc", "/proc", "--dev", "/dev", "--", TRUE]);
    cmd
}

pub fn run(env: &mut BenchEnv, agent: &Path) -> Result<()> {
    Command::new("bwrap")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .context("bubblewrap (bwrap) is missing: `cargo xtask setup` installs it")?;
    progress(&format!(
        "isolation: run /bin/true, bwrap and fork/exec, {RUNS} runs each, interleaved"
    ))?;
    let (mut bare, mut bw, mut run) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNS {
        interrupted()?;
        let t = Instant::now();
        let out = Command::new(TRUE).stdin(Stdio::null()).output()?;
        bare.push(t.elapsed().as_secs_f64() * 1e3);
        check(&out, TRUE)?;

        let t = Instant::now();
        let out = bwrap().stdin(Stdio::null()).output()?;
        bw.push(t.elapsed().as_secs_f64() * 1e3);
        check(&out, "bwrap -- /bin/true")?;

        let t = Instant::now();
        let out = env
            .agent(agent)
            .args(["run", "--embedded", "--network", "blocked", "--", TRUE])
            .output()?;
        run.push(t.elapsed().as_secs_f64() * 1e3);
        check(&out, "sandbox-agent run -- /bin/true")?;
    }
    let creates = crate::bench_daemon::create_times(env, agent, RUNS)?;
    let row = |name: &str, v: &[f64], target: &str| {
        vec![
            name.to_owned(),
            format!("{:.2}", percentile(v, 50.0)),
            format!("{:.2}", percentile(v, 99.0)),
            format!("{:.2}x", percentile(v, 50.0) / percentile(&bw, 50.0)),
            target.to_owned(),
        ]
    };
    println!();
    print_grid(
        &["start-up", "p50 ms", "p99 ms", "vs bwrap p50", "target"],
        &[
            row("fork/exec /bin/true", &bare, "-"),
            row("bwrap, same namespaces and mounts", &bw, "-"),
            row(
                "run --embedded -- /bin/true (isolated, eBPF policy)",
                &run,
                "<= 1.0x bwrap, p50 < 10 ms",
            ),
            row(
                "daemon create -> running (isolated)",
                &creates,
                "p50 < 5 ms",
            ),
        ],
        &[0, 4],
    );
    Ok(())
}
