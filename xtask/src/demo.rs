//! `cargo xtask demo`: a throwaway network namespace with a web server on two addresses, and
//! a sandboxed curl that may reach one of them and is refused the other. Works without
//! internet; removes everything it made, also on failure.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::run_cmd;

const NETNS: &str = "sa-demo";
const HOST_IF: &str = "sa-demo-h";
const NS_IF: &str = "sa-demo-n";
const HOST_ADDR: &str = "198.18.200.1/24";
const ALLOWED: &str = "198.18.200.2";
const REFUSED: &str = "198.18.200.3";

/// Removes the namespace (and with it the veth pair), the server and the web root.
struct Testbed {
    server: Option<Child>,
    webroot: PathBuf,
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if let Some(mut s) = self.server.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
        remove_namespace();
        let _ = fs::remove_dir_all(&self.webroot);
    }
}

/// Deletes the namespace (and with it the veth pair) and the host end, if present.
fn remove_namespace() {
    for args in [["netns", "del", NETNS], ["link", "del", HOST_IF]] {
        let _ = Command::new("ip").args(args).stderr(Stdio::null()).status();
    }
}

fn ip(args: &[&str]) -> Result<()> {
    run_cmd(Command::new("ip").args(args))
}

fn setup() -> Result<Testbed> {
    // Leftovers of an interrupted demo.
    remove_namespace();
    let webroot = std::env::temp_dir().join("sandbox-agent-demo");
    let mut bed = Testbed {
        server: None,
        webroot: webroot.clone(),
    };
    ip(&["netns", "add", NETNS])?;
    ip(&[
        "link", "add", HOST_IF, "type", "veth", "peer", "name", NS_IF, "netns", NETNS,
    ])?;
    ip(&["addr", "add", HOST_ADDR, "dev", HOST_IF])?;
    ip(&["link", "set", HOST_IF, "up"])?;
    for addr in [ALLOWED, REFUSED] {
        ip(&[
            "-n",
            NETNS,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            NS_IF,
        ])?;
    }
    ip(&["-n", NETNS, "link", "set", NS_IF, "up"])?;
    ip(&["-n", NETNS, "link", "set", "lo", "up"])?;
    fs::create_dir_all(&webroot)?;
    fs::write(webroot.join("index.html"), "hello from the demo server\n")?;
    let server = Command::new("ip")
        .args([
            "netns",
            "exec",
            NETNS,
            "python3",
            "-m",
            "http.server",
            "8080",
            "--bind",
            "0.0.0.0",
            "--directory",
        ])
        .arg(&webroot)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start the demo web server")?;
    bed.server = Some(server);
    // Wait (bounded) until the server answers.
    let start = Instant::now();
    while !Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-m",
            "1",
            &format!("http://{ALLOWED}:8080/"),
        ])
        .status()
        .is_ok_and(|s| s.success())
    {
        if start.elapsed() > Duration::from_secs(10) {
            bail!("the demo web server did not start");
        }
        thread::sleep(Duration::from_millis(100));
    }
    Ok(bed)
}

fn show(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    for line in String::from_utf8_lossy(&out.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&out.stderr).lines())
    {
        println!("    | {line}");
    }
    Ok(out)
}

fn sandboxed_curl(agent: &Path, target: &str) -> Result<Output> {
    println!(
        "\n$ sandbox-agent run --network allowlist --allow-out {ALLOWED} --stats -- curl -sS -m 5 http://{target}:8080/"
    );
    show(
        Command::new(agent)
            .args([
                "run",
                "--network",
                "allowlist",
                "--allow-out",
                ALLOWED,
                "--stats",
                "--cwd",
                "/",
                "--",
            ])
            .args(["curl", "-sS", "-m", "5", &format!("http://{target}:8080/")]),
    )
}

pub fn run(agent: &Path) -> Result<()> {
    if !crate::is_root() {
        bail!("the demo loads eBPF programs and creates a network namespace: run it as root");
    }
    println!("sandbox-agent demo");
    println!("A throwaway network namespace plays the internet: one web server answering on");
    println!("{ALLOWED} and {REFUSED}. The sandbox's policy allows only {ALLOWED}.");
    let _bed = setup()?;

    println!("\nOutside any sandbox, curl reaches both addresses (the control):");
    for target in [ALLOWED, REFUSED] {
        println!("\n$ curl -sS -m 5 http://{target}:8080/");
        show(Command::new("curl").args(["-sS", "-m", "5", &format!("http://{target}:8080/")]))?;
    }

    println!("\nInside a sandbox:");
    let allowed = sandboxed_curl(agent, ALLOWED)?;
    let refused = sandboxed_curl(agent, REFUSED)?;
    let allowed_ok = allowed.status.success();
    let refused_ok =
        !refused.status.success() && String::from_utf8_lossy(&refused.stdout).trim().is_empty();
    println!();
    if allowed_ok {
        println!(
            "ALLOWED  {ALLOWED}: the policy lists it, so the kernel let the connection through."
        );
    } else {
        println!(
            "UNEXPECTED: the sandbox could not reach {ALLOWED} ({})",
            allowed.status
        );
    }
    if refused_ok {
        println!(
            "REFUSED  {REFUSED}: not in the policy. The eBPF program on the sandbox's cgroup\n\
             \x20        (cgroup/connect4) failed connect() with EPERM at once, and the cgroup_skb\n\
             \x20        programs would drop any packet to it (raw sockets, UDP, ICMP alike)."
        );
    } else {
        println!("UNEXPECTED: the sandbox reached {REFUSED}");
    }
    if !(allowed_ok && refused_ok) {
        bail!("the demo did not behave as expected");
    }
    println!("\nThe namespace, the server and the sandbox cgroups are removed on exit.");
    Ok(())
}
