//! `cargo xtask fuzz`: runs each fuzz target of the proxy's parsers for a while.
//!
//! The targets live in `sandbox-agent/fuzz`, a cargo-fuzz project outside the workspace
//! (libFuzzer needs nightly and sanitizer flags). Inputs that find new paths accumulate in
//! `fuzz/corpus/<target>`; the seeds (captured hellos and requests) are read, never written.
use std::{fs, path::PathBuf, process::Command};

use anyhow::{Context as _, Result};

use crate::{run_cmd, workspace_root};

/// Each target and the directory of its seed inputs, relative to `sandbox-agent/`.
const TARGETS: [(&str, &str); 2] = [
    ("client_hello", "src/proxy/fixtures"),
    ("http_host", "fuzz/seeds/http_host"),
];

pub fn run(seconds: u64) -> Result<()> {
    ensure_cargo_fuzz()?;
    let crate_dir = workspace_root().join("sandbox-agent");
    for (target, seeds) in TARGETS {
        let corpus: PathBuf = crate_dir.join("fuzz").join("corpus").join(target);
        fs::create_dir_all(&corpus).with_context(|| format!("create {}", corpus.display()))?;
        eprintln!("xtask: fuzzing {target} for {seconds} s");
        // cargo-fuzz finds the project as `fuzz/` next to the crate it is run from. The
        // first corpus directory receives the new inputs.
        run_cmd(
            Command::new("cargo")
                .current_dir(&crate_dir)
                .args(["+nightly", "fuzz", "run", target])
                .arg(&corpus)
                .arg(crate_dir.join(seeds))
                .arg("--")
                .arg(format!("-max_total_time={seconds}")),
        )?;
    }
    Ok(())
}

fn ensure_cargo_fuzz() -> Result<()> {
    let installed = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        eprintln!("xtask: installing cargo-fuzz");
        run_cmd(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    Ok(())
}
