//! The launcher: exit statuses, stdio, privileges, timeouts, and clean-up of cgroups and map
//! entries after every way a sandbox can end.
use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use sandbox_tests::{agent, agent_cmd, agent_cmd_with_stdin, cgroup2_mount, state, wait_bounded};

#[test]
fn exit_statuses_follow_docker_run() {
    assert_eq!(agent_cmd(&["run", "--", "sh", "-c", "exit 7"]).code, 7);
    assert_eq!(agent_cmd(&["run", "--", "true"]).code, 0);
    assert_eq!(
        agent_cmd(&["run", "--", "sh", "-c", "kill -9 $$"]).code,
        137
    );
    assert_eq!(
        agent_cmd(&["run", "--", "sh", "-c", "kill -15 $$"]).code,
        143
    );
    let missing = agent_cmd(&["run", "--", "no-such-command-here"]);
    assert_eq!(missing.code, 127, "{missing:#?}");
    assert!(missing.stderr.contains("command not found"), "{missing:#?}");
    let not_exec = agent_cmd(&["run", "--", "/etc/hostname"]);
    assert_eq!(not_exec.code, 126, "{not_exec:#?}");
    let bad = agent_cmd(&["run", "--allow-out", "nope/", "--", "true"]);
    assert_eq!(bad.code, 125, "{bad:#?}");
}

#[test]
fn timeout_kills_the_workload() {
    let start = Instant::now();
    let run = agent_cmd(&["run", "--timeout", "1s", "--", "sleep", "30"]);
    assert_eq!(run.code, 124, "{run:#?}");
    assert!(run.stderr.contains("timed out"), "{run:#?}");
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "timeout did not fire"
    );
}

#[test]
fn stdio_is_streamed() {
    let run = agent_cmd_with_stdin(
        &["run", "--", "sh", "-c", "cat; echo done; echo oops >&2"],
        Some("hello\n"),
    );
    assert_eq!(run.code, 0, "{run:#?}");
    assert_eq!(run.stdout, "hello\ndone\n");
    assert_eq!(run.stderr, "oops\n");
}

#[test]
fn workload_is_unprivileged_and_confined() {
    let run = agent_cmd(&[
        "run",
        "--env",
        "GREETING=hi",
        "--cwd",
        "/tmp",
        "--",
        "sh",
        "-c",
        "grep -E '^(Uid|CapEff|CapPrm|CapBnd|CapAmb|NoNewPrivs)' /proc/self/status; cat /proc/self/cgroup; pwd; echo $GREETING; env | sort",
    ]);
    assert_eq!(run.code, 0, "{run:#?}");
    let out = &run.stdout;
    // Its own uid, from the range no host user has (identity.rs).
    let uid = out
        .lines()
        .find_map(|l| l.strip_prefix("Uid:\t"))
        .and_then(|ids| ids.split('\t').next())
        .and_then(|u| u.parse::<u32>().ok())
        .unwrap_or_else(|| panic!("no uid: {out}"));
    assert!(
        (0x6000_0000..0x6001_0000).contains(&uid)
            && out.contains(&format!("Uid:\t{uid}\t{uid}\t{uid}\t{uid}")),
        "not the sandbox's own uid: {out}"
    );
    for cap in ["CapEff", "CapPrm", "CapBnd", "CapAmb"] {
        assert!(
            out.contains(&format!("{cap}:\t0000000000000000")),
            "{cap} not empty: {out}"
        );
    }
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(
        out.contains("0::/sandbox-agent/"),
        "not in a sandbox cgroup: {out}"
    );
    assert!(out.contains("/tmp\nhi\n"), "{out}");
    // The agent's own environment does not leak in.
    assert!(!out.contains("SANDBOX_AGENT_BIN"), "{out}");
    // With --cap-add, exactly that capability (NET_RAW = bit 13) is kept.
    let run = agent_cmd(&[
        "run",
        "--cap-add",
        "NET_RAW",
        "--",
        "grep",
        "CapEff",
        "/proc/self/status",
    ]);
    assert_eq!(run.stdout.trim(), "CapEff:\t0000000000002000", "{run:#?}");
}

/// A sandbox's kernel and cgroup state while it runs and after it ends.
struct Observed {
    cgroup: std::path::PathBuf,
    cgroup_id: u64,
    policy_id: u64,
}

/// Starts `run --network allowlist --allow-out 198.18.250.0/24 -- sh -c SCRIPT` where SCRIPT
/// prints its cgroup and pid first, waits for that line, and looks the sandbox up in the
/// kernel state.
fn start_observed(script: &str) -> (KillOnDrop, Observed, u32) {
    let full = format!("echo $$ $(grep '^0::' /proc/self/cgroup | cut -d: -f3); {script}");
    let mut child = Command::new(agent())
        .args([
            "run",
            "--network",
            "allowlist",
            "--allow-out",
            "198.18.250.0/24",
            "--allow-out",
            "fd5a:ffff::/64",
        ])
        .args(["--", "sh", "-c", &full])
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start agent");
    let mut first = String::new();
    let stdout = child.stdout.take().expect("stdout");
    let mut reader = BufReader::new(stdout);
    reader.read_line(&mut first).expect("read first line");
    // Keep draining so the workload never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    let mut parts = first.split_whitespace();
    // The shell's pid in the sandbox's PID namespace.
    let ns_pid: u32 = parts
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {first:?}"));
    let rel = parts
        .next()
        .unwrap_or_else(|| panic!("no cgroup in {first:?}"));
    let cgroup = cgroup2_mount().join(rel.trim_start_matches('/'));
    let cgroup_id = std::os::unix::fs::MetadataExt::ino(
        &std::fs::metadata(&cgroup).expect("sandbox cgroup exists"),
    );
    let st = state();
    let entry = st["sandboxes"]
        .as_array()
        .expect("sandboxes")
        .iter()
        .find(|s| s["cgroup_id"] == cgroup_id)
        .unwrap_or_else(|| panic!("sandbox {cgroup_id} not in kernel state: {st:#}"))
        .clone();
    assert_eq!(entry["rules"]["allow_v4"], 1, "{entry:#}");
    assert_eq!(entry["rules"]["allow_v6"], 1, "{entry:#}");
    let policy_id = entry["policy_id"].as_u64().expect("policy id");
    let pid = host_pid(&cgroup, ns_pid);
    (
        KillOnDrop(Some(child)),
        Observed {
            cgroup,
            cgroup_id,
            policy_id,
        },
        pid,
    )
}

/// The host pid of the process of `cgroup` whose pid in its own namespace is `ns_pid` (the
/// last field of `NSpid`).
fn host_pid(cgroup: &std::path::Path, ns_pid: u32) -> u32 {
    let procs = std::fs::read_to_string(cgroup.join("cgroup.procs")).expect("cgroup.procs");
    procs
        .lines()
        .filter_map(|p| p.trim().parse::<u32>().ok())
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/status")).is_ok_and(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("NSpid:"))
                    .and_then(|ids| ids.split_whitespace().last())
                    == Some(&ns_pid.to_string())
            })
        })
        .unwrap_or_else(|| panic!("no process {ns_pid} in {}: {procs}", cgroup.display()))
}

/// The agent of an observed sandbox; killed if the test fails before waiting for it.
struct KillOnDrop(Option<std::process::Child>);

impl KillOnDrop {
    fn id(&self) -> u32 {
        self.0.as_ref().expect("child").id()
    }
    fn wait(mut self) -> sandbox_tests::Run {
        wait_bounded(self.0.take().expect("child"))
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn assert_cleaned(o: &Observed) {
    assert!(
        !o.cgroup.exists(),
        "cgroup {} was left behind",
        o.cgroup.display()
    );
    let st = state();
    let sandboxes = st["sandboxes"].as_array().expect("sandboxes");
    assert!(
        !sandboxes
            .iter()
            .any(|s| s["cgroup_id"] == o.cgroup_id || s["policy_id"] == o.policy_id),
        "kernel entry left behind: {st:#}"
    );
    let rules = &st["rules_by_policy"][o.policy_id.to_string()];
    assert!(
        rules.is_null(),
        "rules of policy {} left behind: {rules}",
        o.policy_id
    );
}

#[test]
fn cleanup_after_normal_exit() {
    let (child, observed, _) = start_observed("sleep 1");
    let run = child.wait();
    assert_eq!(run.code, 0, "{run:#?}");
    assert_cleaned(&observed);
}

#[test]
fn cleanup_after_the_workload_is_killed() {
    let (child, observed, pid) = start_observed("sleep 30");
    nix_kill(pid, 9);
    let run = child.wait();
    assert_eq!(run.code, 137, "{run:#?}");
    assert_cleaned(&observed);
}

#[test]
fn cleanup_after_sigterm_to_the_agent() {
    let (child, observed, _) = start_observed("sleep 30");
    nix_kill(child.id(), 15);
    let run = child.wait();
    // The agent forwards SIGTERM; sleep dies of it.
    assert_eq!(run.code, 143, "{run:#?}");
    assert_cleaned(&observed);
}

#[test]
fn cleanup_kills_processes_left_in_the_background() {
    let (child, observed, _) = start_observed("sleep 300 & sleep 1");
    let run = child.wait();
    assert_eq!(run.code, 0, "{run:#?}");
    assert_cleaned(&observed);
}

fn nix_kill(pid: u32, sig: i32) {
    let status = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{sig} {pid} failed");
}

/// Every program is loaded and verified, and its verifier cost is printed so that growth
/// shows in review (cilium's complexity tests do the same). The bound is far below the
/// kernel's 1M limit, to catch an accidental loop over rules. The outer layers (a ceiling and
/// the host floor, each a fixed number of lookups) took the packet programs from under 20k
/// to ~40k.
#[test]
fn verifier_budget() {
    let st = state();
    let programs = st["programs"].as_array().expect("programs");
    // egress, ingress, connect4/6, sendmsg4/6, recvmsg4/6, sock_ops, sock_release, bind4/6,
    // post_bind4/6 (names cut to 15 characters by the kernel).
    assert!(programs.len() >= 14, "not every program is loaded: {st:#}");
    for p in programs {
        let insns = p["verified_instructions"]
            .as_u64()
            .expect("verified instruction count");
        println!(
            "verifier: {} processed {insns} instructions, {} bytes",
            p["name"], p["translated_bytes"]
        );
        assert!(
            insns < 100_000,
            "{} needs {insns} verified instructions",
            p["name"]
        );
    }
}
