//! Builds the eBPF programs (nightly, bpfel-unknown-none, bpf-linker) and leaves the object in
//! `OUT_DIR`, where `enforcement` embeds it. `cargo xtask setup` installs that toolchain.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    build_init(std::path::Path::new(&manifest_dir))?;
    let ebpf_dir = std::path::Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("no workspace root above {manifest_dir}"))?
        .join("sandbox-ebpf");
    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    aya_build::build_ebpf(
        [Package {
            name: "sandbox-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        Toolchain::default(),
    )
}

/// The sandboxes' init (`init/main.rs`): one file, no crates, linked statically so that it
/// starts without the dynamic loader; `init.rs` embeds it.
fn build_init(manifest_dir: &std::path::Path) -> anyhow::Result<()> {
    let source = manifest_dir.join("init/main.rs");
    println!("cargo:rerun-if-changed={}", source.display());
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").context("OUT_DIR")?);
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let status = std::process::Command::new(&rustc)
        .args([
            "--edition",
            "2024",
            "--crate-type",
            "bin",
            "--crate-name",
            "sandbox_init",
        ])
        .args([
            "-C",
            "opt-level=2",
            "-C",
            "panic=abort",
            "-C",
            "debuginfo=0",
        ])
        .args(["-C", "strip=symbols", "-C", "target-feature=+crt-static"])
        .arg("-o")
        .arg(out.join("sandbox-init"))
        .arg(&source)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .with_context(|| format!("run {}", rustc.to_string_lossy()))?;
    anyhow::ensure!(
        status.success(),
        "building the sandbox init failed: {status}"
    );
    Ok(())
}
