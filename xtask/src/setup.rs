//! `cargo xtask setup`: the eBPF toolchain and the test tools, from nothing, idempotently.
//!
//! - nightly with `rust-src` (the eBPF crate builds `core` for bpfel-unknown-none);
//! - `bpf-linker`, built against the nightly's own LLVM, since no prebuilt one can be fetched
//!   here: a prefix directory whose `lib/` links to the nightly's libLLVM, kept under
//!   `$CARGO_HOME/bpf-linker-llvm/<nightly commit>` because the linker's RUNPATH points there;
//! - Debian packages used by the tests, the demo and the benchmarks;
//! - for the API check of `cargo xtask test`, `openapi-spec-validator` (with `jsonschema`)
//!   from the Python package index in a virtualenv of the workspace's own (`target/xtask-tools/openapi`).
use std::{
    env, fs,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::run_cmd;

const BPF_LINKER_VERSION: &str = "0.13.0";
/// Debian packages: `ip` (namespaces, veth), ping, nc, curl, python3 (test servers and
/// clients), iperf3 (benchmark), dnsmasq (the fake upstream DNS in tests), openssl (makes
/// test certificates and is the TLS client of tunnel tests), python3-requests (a real client
/// of the explicit proxy in tests), python3-websockets (WebSocket server and client through
/// the ingress gateway in tests), python3-venv (the API checker's virtualenv), bubblewrap
/// (the benchmark's baseline for a sandbox's namespaces and mounts), procps (`ps` inside
/// sandboxes in the isolation tests), busybox-static (the root directories and images the
/// tests build), buildah and umoci (images built by real tools in the image tests).
const PACKAGES: [&str; 16] = [
    "iproute2",
    "iputils-ping",
    "netcat-openbsd",
    "curl",
    "python3",
    "iperf3",
    "dnsmasq-base",
    "openssl",
    "python3-requests",
    "python3-websockets",
    "python3-venv",
    "bubblewrap",
    "procps",
    "busybox-static",
    "buildah",
    "umoci",
];

/// The Python package (from the package index) that validates the `OpenAPI` document (it brings `jsonschema`, which
/// checks the recorded responses).
const OPENAPI_VALIDATOR: &str = "openapi-spec-validator==0.7.2";

pub fn run() -> Result<()> {
    debian_packages()?;
    nightly_rust_src()?;
    bpf_linker()?;
    Ok(())
}

/// The Python of the API checker's virtualenv, made and filled on first use.
pub fn api_checker_python() -> Result<PathBuf> {
    let venv = crate::workspace_root().join("target/xtask-tools/openapi");
    let python = venv.join("bin/python");
    let ready = || {
        Command::new(&python)
            .args(["-c", "import openapi_spec_validator, jsonschema"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if ready() {
        return Ok(python);
    }
    eprintln!(
        "xtask: installing {OPENAPI_VALIDATOR} into {}",
        venv.display()
    );
    run_cmd(
        Command::new("/usr/bin/python3")
            .args(["-m", "venv"])
            .arg(&venv),
    )?;
    run_cmd(
        Command::new(&python)
            .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
            .arg(OPENAPI_VALIDATOR),
    )?;
    if !ready() {
        bail!(
            "{OPENAPI_VALIDATOR} did not install into {}",
            venv.display()
        );
    }
    Ok(python)
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn debian_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .into_iter()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !crate::is_root() {
        bail!(
            "Debian packages {} are missing; run `cargo xtask setup` as root",
            missing.join(", ")
        );
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    run_cmd(Command::new("apt-get").args(["update", "-q"]))?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn nightly_rust_src() -> Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        eprintln!("xtask: installing the nightly toolchain");
        run_cmd(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("xtask: adding rust-src to nightly");
        run_cmd(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

struct Nightly {
    sysroot: PathBuf,
    commit: String,
    llvm_major: String,
}

fn nightly() -> Result<Nightly> {
    let version = output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let field = |name: &str| {
        version
            .lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
            .with_context(|| format!("no `{name}` in `rustc +nightly -vV`"))
    };
    let commit: String = field("commit-hash:")?.chars().take(12).collect();
    let llvm = field("LLVM version:")?;
    let llvm_major = llvm.split('.').next().unwrap_or_default().to_owned();
    let sysroot = PathBuf::from(
        output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?.trim(),
    );
    Ok(Nightly {
        sysroot,
        commit,
        llvm_major,
    })
}

fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

fn bpf_linker() -> Result<()> {
    let nightly = nightly()?;
    let prefix = cargo_home().join("bpf-linker-llvm").join(&nightly.commit);
    let stamp = prefix.join("built-bpf-linker");
    let want = format!(
        "bpf-linker {BPF_LINKER_VERSION} llvm-{}",
        nightly.llvm_major
    );
    let works = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)
        });
    if works && fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == want) {
        return Ok(());
    }
    eprintln!("xtask: building {want} against the nightly's LLVM (about a minute)");
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("create {}", lib.display()))?;
    let sys_lib = nightly.sysroot.join("lib");
    let mut linked = 0;
    for entry in fs::read_dir(&sys_lib).with_context(|| format!("read {}", sys_lib.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        // libLLVM-22-rust-<version>.so is the library; link it as libLLVM.so for the build,
        // and libLLVM.so.22.1-rust-<version> under its own name for the runtime loader.
        let target = if name.starts_with(&format!("libLLVM-{}-rust-", nightly.llvm_major))
            && std::path::Path::new(&name)
                .extension()
                .is_some_and(|e| e == "so")
        {
            Some("libLLVM.so".to_owned())
        } else if name.starts_with(&format!("libLLVM.so.{}.", nightly.llvm_major)) {
            Some(name.clone())
        } else {
            None
        };
        if let Some(target) = target {
            let link = lib.join(target);
            let _ = fs::remove_file(&link);
            std::os::unix::fs::symlink(sys_lib.join(&name), &link)
                .with_context(|| format!("link {}", link.display()))?;
            linked += 1;
        }
    }
    if linked == 0 {
        bail!(
            "no libLLVM-{} in {}: is the nightly toolchain complete?",
            nightly.llvm_major,
            sys_lib.display()
        );
    }
    run_cmd(
        Command::new("cargo")
            .args([
                "+nightly",
                "install",
                "bpf-linker",
                "--locked",
                "--force",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{}", nightly.llvm_major),
            ])
            .env("LLVM_PREFIX", &prefix),
    )?;
    fs::write(&stamp, format!("{want}\n")).with_context(|| format!("write {}", stamp.display()))?;
    Ok(())
}
