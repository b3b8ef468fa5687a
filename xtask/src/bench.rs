//! `cargo xtask bench`: measures what a sandbox costs, baseline and sandboxed in one run.
//!
//! Needs root. All traffic stays on a veth pair into a network namespace that the bench
//! creates (addresses in 198.18.0.0/15, the benchmarking range of RFC 2544) and removes again,
//! together with its servers and temporary files, on every way out (see [`BenchEnv`]);
//! Ctrl-C or SIGTERM end the bench at the next step, through the same clean-up.
//! Prints ratios; never fails on a number.
use std::{
    collections::HashSet,
    fs,
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::Instant,
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::bench_kit::{
    BenchEnv, CpuTime, IPERF_PORT, IPERF3, LISTEN_PORT, PYTHON3, Row, SignalGuard, Stepper, check,
    cpu_times, interrupted, median, meminfo_kib, percentile, print_grid, progress,
};

/// Workloads run as `nobody` with a minimal PATH, so every tool is named by absolute path.
const TRUE: &str = "/bin/true";
const SH: &str = "/bin/sh";

/// Seconds an iperf3 client sends (plus one omitted warm-up second).
const IPERF_SECONDS: u32 = 3;
const IPERF_ROUNDS: usize = 8;
/// Connects per client; the clients take turns, one connect each.
const CONNECT_STEPS: usize = 4000;
/// Turns dropped at the start (ARP, caches, interpreter warm-up).
const CONNECT_WARMUP: usize = 100;
const STARTUP_RUNS: usize = 200;
const LOAD_ROUNDS: usize = 3;
const SMALL_POLICY: usize = 100_000;
const BIG_POLICY: usize = 1_000_000;
/// Where the agent pins its program links.
const PINNED_LINKS: &str = "/sys/fs/bpf/sandbox-agent/links";
/// Connects in the program-cost phase.
const COST_CONNECTS: usize = 2000;

/// One TCP connect+close (on CPU 0) per line read from stdin; prints each `connect()` time
/// in ns. Closes with RST (linger 0) so no `TIME_WAIT` piles up.
const CONNECT_CLIENT: &str = r#"
import os, socket, struct, sys, time
try:
    os.sched_setaffinity(0, {0})
except OSError:
    pass
host, port = sys.argv[1], int(sys.argv[2])
linger = struct.pack("ii", 1, 0)
pc = time.perf_counter_ns
while sys.stdin.readline():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
    t0 = pc()
    s.connect((host, port))
    t1 = pc()
    s.close()
    sys.stdout.write("%d\n" % (t1 - t0))
    sys.stdout.flush()
"#;

/// One connect, for the enforcement check.
const CONNECT_ONCE: &str =
    "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)";

/// `SANDBOX_AGENT_BENCH_ONLY=core` (or `domains`, `daemon`, `ingress`, `isolation`, `images`) runs only that section,
/// for repeating one without the others.
const ONLY_VAR: &str = "SANDBOX_AGENT_BENCH_ONLY";

/// Runs every measurement against the agent binary at `agent` and prints the results.
pub fn run(agent: &Path) -> Result<()> {
    preflight(agent)?;
    // Declared before the environment, so it is restored after the clean-up.
    let _signals = SignalGuard::install();
    let started = Instant::now();
    println!("{}", machine_description());

    let mut env = BenchEnv::create()?;
    progress(&format!(
        "netns {} ({}), veth {} ({}); temp dir {}",
        env.netns,
        env.ns_addr,
        env.host_if,
        env.host_addr,
        env.dir.display()
    ))?;
    // A private copy, so that a rebuild during the bench cannot mix two builds in one table.
    let agent = &env.copy_agent(agent)?;
    // The first run after a build loads and pins the eBPF programs; keep that out of the numbers.
    let warm = env
        .agent(agent)
        .args(["run", "--network", "blocked", "--", TRUE])
        .output()?;
    check(&warm, "sandbox-agent warm-up run")?;

    let only = std::env::var(ONLY_VAR).unwrap_or_default();
    match only.as_str() {
        "" => {
            run_core(&mut env, agent)?;
            println!();
            crate::bench_domains::run(&mut env, agent)?;
            crate::bench_daemon::run(&mut env, agent)?;
            crate::bench_ingress::run(&mut env, agent)?;
            println!();
            crate::bench_isolation::run(&mut env, agent)?;
            println!();
            crate::bench_images::run(&mut env, agent)?;
        }
        "core" => run_core(&mut env, agent)?,
        "domains" => crate::bench_domains::run(&mut env, agent)?,
        "daemon" => crate::bench_daemon::run(&mut env, agent)?,
        "ingress" => crate::bench_ingress::run(&mut env, agent)?,
        "isolation" => crate::bench_isolation::run(&mut env, agent)?,
        "images" => crate::bench_images::run(&mut env, agent)?,
        other => bail!(
            "{ONLY_VAR}={other:?}: \"core\", \"domains\", \"daemon\", \"ingress\", \"isolation\" or \"images\""
        ),
    }
    println!("\nbench took {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Enforcement cost: throughput, connect latency, start-up, policy load, program cost.
fn run_core(env: &mut BenchEnv, agent: &Path) -> Result<()> {
    let small = env.write_policy(
        "small.toml",
        &random_prefixes(SMALL_POLICY, 1),
        Some(&env.ns_addr),
    )?;
    let big = env.write_policy("big.toml", &random_prefixes(BIG_POLICY, 2), None)?;
    let empty = env.write_policy("empty.toml", &[], None)?;

    env.start_iperf_server()?;
    env.start_listener()?;
    check_enforced(env, agent)?;

    let startup = bench_startup(env, agent)?;
    let throughput = bench_throughput(env, agent, &small)?;
    let connect = bench_connect(env, agent, &small)?;
    // Optional: kernel bookkeeping that not every kernel allows; a failure is reported.
    let cost = program_cost(env, agent, &small);
    let load = bench_load(env, agent, &big, &empty)?;

    println!();
    print_table(&results_table(&throughput, &connect, &startup, &load));
    println!();
    print_notes(&throughput, &connect, &load);
    print_cost(&cost);
    Ok(())
}

fn preflight(agent: &Path) -> Result<()> {
    let status = fs::read_to_string("/proc/self/status").context("read /proc/self/status")?;
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("");
    ensure!(
        euid == "0",
        "the bench must run as root (it creates network namespaces and sandboxes)"
    );
    ensure!(
        agent.is_file(),
        "no sandbox-agent binary at {}",
        agent.display()
    );
    ensure!(
        Path::new(IPERF3).is_file(),
        "{IPERF3} is missing: the bench needs iperf3 (`cargo xtask setup` installs it, or `apt-get install iperf3`)"
    );
    ensure!(
        Path::new(PYTHON3).is_file(),
        "{PYTHON3} is missing: the bench needs python3 for its connect client"
    );
    for tool in ["ip", "ss", "timeout", "kill"] {
        let ok = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        ensure!(
            ok,
            "`{tool}` is not on PATH (iproute2 / coreutils / procps)"
        );
    }
    Ok(())
}

fn machine_description() -> String {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|(_, v)| v.trim())
        })
        .unwrap_or("unknown");
    let cpus = thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let mem_gib = meminfo_kib("MemTotal").map_or(0.0, |k| kib_to_mib(k) / 1024.0);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "machine: {cpus} CPUs ({model}), {mem_gib:.1} GiB RAM, Linux {}",
        kernel.trim()
    )
}

#[expect(clippy::cast_precision_loss, reason = "KiB counts are far below 2^52")]
fn kib_to_mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[expect(clippy::cast_precision_loss, reason = "byte counts are far below 2^52")]
fn bytes_to_mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Numbers from a sandbox that is not enforced would be meaningless: a sandbox with
/// `--network blocked` must fail to connect to the listener.
fn check_enforced(env: &BenchEnv, agent: &Path) -> Result<()> {
    let out = env
        .agent(agent)
        .args([
            "run",
            "--network",
            "blocked",
            "--",
            PYTHON3,
            "-c",
            CONNECT_ONCE,
            &env.ns_addr,
        ])
        .arg(LISTEN_PORT.to_string())
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success(),
        "enforcement is not active: a sandbox with --network blocked connected to {}; are the eBPF \
         programs attached (see /sys/fs/bpf/sandbox-agent/links)?",
        env.ns_addr
    );
    ensure!(
        stderr.contains("PermissionError"),
        "the enforcement check failed for another reason than a refused connect: {}",
        stderr.trim()
    );
    Ok(())
}

/// `SplitMix64`: a small deterministic PRNG, enough to scatter prefixes.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// `n` distinct IPv4 prefixes, half /24 networks and half /32 hosts, none with host bits set.
///
/// /24s have an even third octet and /32s an odd third and an even fourth octet, so no two
/// prefixes are siblings or nested: the agent's policy compiler (which merges adjacent and
/// nested prefixes) keeps all `n`, and the kernel gets exactly `n` entries. First octets
/// 0, 127, 198 (the bench network) and 224 and up are left out.
fn random_prefixes(n: usize, seed: u64) -> Vec<String> {
    let mut rng = SplitMix64(seed);
    let mut taken = HashSet::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n.saturating_mul(4) {
        if out.len() == n {
            break;
        }
        let [first, second, third, fourth, kind, ..] = rng.next().to_be_bytes();
        if matches!(first, 0 | 127 | 198) || first >= 224 {
            continue;
        }
        let is_host = kind & 1 == 1;
        let (third, fourth) = if is_host {
            (third | 1, fourth & !1)
        } else {
            (third & !1, 0)
        };
        let addr = std::net::Ipv4Addr::from([first, second, third, fourth]);
        if taken.insert(addr) {
            out.push(if is_host {
                addr.to_string()
            } else {
                format!("{addr}/24")
            });
        }
    }
    assert_eq!(out.len(), n, "the generator ran out of tries");
    out
}

// ---------------------------------------------------------------------------------------
// 1. Bulk TCP throughput
// ---------------------------------------------------------------------------------------

struct Throughput {
    baseline_bps: Vec<f64>,
    sandboxed_bps: Vec<f64>,
    /// From `--stats` of the last sandboxed run: proof that the traffic went through the
    /// eBPF programs.
    stats_line: String,
}

fn bench_throughput(env: &BenchEnv, agent: &Path, policy: &Path) -> Result<Throughput> {
    let secs = IPERF_SECONDS.to_string();
    let port = IPERF_PORT.to_string();
    let client = [
        IPERF3,
        "-c",
        &env.ns_addr,
        "-p",
        &port,
        "-t",
        &secs,
        "-O",
        "1",
        "-A",
        "0",
        "-J",
    ];
    let mut result = Throughput {
        baseline_bps: Vec::new(),
        sandboxed_bps: Vec::new(),
        stats_line: String::new(),
    };
    for round in 0..IPERF_ROUNDS {
        // Alternate which side goes first, so a drift in machine load hits both alike.
        for sandboxed in [round % 2 == 1, round % 2 == 0] {
            progress(&format!(
                "throughput round {}/{IPERF_ROUNDS}, {}",
                round + 1,
                if sandboxed { "sandboxed" } else { "baseline" }
            ))?;
            let out = if sandboxed {
                env.agent(agent)
                    .args(["run", "--network", "allowlist", "--stats", "--policy"])
                    .arg(policy)
                    .arg("--")
                    .args(client)
                    .output()?
            } else {
                Command::new(client[0])
                    .args(&client[1..])
                    .stdin(Stdio::null())
                    .output()?
            };
            check(&out, "iperf3 client")?;
            let bps = iperf_received_bps(&String::from_utf8_lossy(&out.stdout))?;
            if sandboxed {
                result.sandboxed_bps.push(bps);
                let stderr = String::from_utf8_lossy(&out.stderr);
                let line = stderr
                    .lines()
                    .find(|l| l.contains("allowed="))
                    .unwrap_or_default()
                    .trim();
                let allowed = line
                    .split_once("allowed=")
                    .and_then(|(_, rest)| rest.split_once(' '))
                    .and_then(|(n, _)| n.parse::<u64>().ok())
                    .unwrap_or(0);
                ensure!(
                    allowed > 0,
                    "the sandbox counted no allowed packets, so the eBPF programs did not see the traffic: {line}"
                );
                line.clone_into(&mut result.stats_line);
            } else {
                result.baseline_bps.push(bps);
            }
        }
    }
    Ok(result)
}

/// `end.sum_received.bits_per_second` from iperf3's JSON.
fn iperf_received_bps(json: &str) -> Result<f64> {
    let value = json
        .split_once("\"sum_received\"")
        .and_then(|(_, rest)| rest.split_once("\"bits_per_second\""))
        .and_then(|(_, rest)| rest.trim_start().strip_prefix(':'))
        .and_then(|rest| rest.split([',', '}', '\n']).next())
        .map(str::trim)
        .context("no end.sum_received.bits_per_second in iperf3's output")?;
    value
        .parse()
        .with_context(|| format!("bad bits_per_second {value:?} in iperf3's output"))
}

// ---------------------------------------------------------------------------------------
// 2. connect() latency
// ---------------------------------------------------------------------------------------

/// `connect()` times in µs; the i-th sample of each client comes from the same turn.
struct Connect {
    baseline: Vec<f64>,
    sandboxed: Vec<f64>,
    /// A second unsandboxed client: the A/A noise floor of the method.
    control: Vec<f64>,
    /// A sandbox with `--network open` and no rules: the programs' fixed cost.
    open: Vec<f64>,
}

/// The clients run side by side and take turns, one connect each, in an order that rotates
/// every turn: all see the same machine at (almost) the same moment.
fn bench_connect(env: &BenchEnv, agent: &Path, policy: &Path) -> Result<Connect> {
    progress(&format!(
        "connect latency, {CONNECT_STEPS} turns of 4 clients"
    ))?;
    let port = LISTEN_PORT.to_string();
    let client = [PYTHON3, "-c", CONNECT_CLIENT, &env.ns_addr, &port];
    let bare = || {
        let mut cmd = Command::new(client[0]);
        cmd.args(&client[1..]);
        cmd
    };
    let mut sandboxed = env.agent(agent);
    sandboxed
        .args(["run", "--network", "allowlist", "--policy"])
        .arg(policy)
        .arg("--")
        .args(client);
    let mut open = env.agent(agent);
    open.args(["run", "--network", "open", "--"]).args(client);
    // Spawned one by one, so that on an error the ones already running are dropped (and end).
    let mut clients = Vec::with_capacity(4);
    for cmd in [bare(), bare(), open, sandboxed] {
        clients.push(Stepper::spawn(cmd)?);
    }
    let mut samples: [Vec<f64>; 4] = Default::default();
    for turn in 0..CONNECT_WARMUP + CONNECT_STEPS {
        interrupted()?;
        let mut times = [0.0; 4];
        for k in 0..4 {
            let j = (turn + k) % 4;
            times[j] = clients[j].step()?;
        }
        if turn >= CONNECT_WARMUP {
            for (s, t) in samples.iter_mut().zip(times) {
                s.push(t);
            }
        }
    }
    for c in clients {
        c.finish()?;
    }
    let [baseline, control, open, sandboxed] = samples;
    Ok(Connect {
        baseline,
        sandboxed,
        control,
        open,
    })
}

// ---------------------------------------------------------------------------------------
// eBPF program cost, from the kernel's own run-time statistics
// ---------------------------------------------------------------------------------------

/// Invocations and run time of one program, summed over CPUs.
#[derive(Clone, Copy, Default)]
struct ProgStats {
    runs: u64,
    ns: u64,
}

struct ProgramCost {
    /// Per program: (name, during one sandboxed iperf3 run, during `COST_CONNECTS` connects).
    programs: Vec<(String, ProgStats, ProgStats)>,
    iperf_secs: f64,
    iperf_packets: u64,
}

/// `bpf(2)` with a zero-padded attribute block; returns the new fd.
fn bpf(cmd: libc::c_long, attr: &mut [u64; 8]) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    // SAFETY: `attr` is a valid, writable block of the size passed; the kernel reads the
    // fields of `cmd` from it and zero-checks the rest.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), size_of_val(attr)) };
    let fd = i32::try_from(ret).map_err(|_| std::io::Error::other("bad fd from bpf(2)"))?;
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_ENABLE_STATS: libc::c_long = 32;

/// A `key:` value from an fdinfo file of ours.
fn fdinfo_value(fd: &std::os::fd::OwnedFd, key: &str) -> Option<u64> {
    use std::os::fd::AsRawFd as _;
    let text = fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
}

/// Turns on the kernel's per-program run-time statistics (`BPF_ENABLE_STATS`; they go off
/// when the fd closes), runs one sandboxed iperf3 and `COST_CONNECTS` sandboxed connects, and
/// reads what each of the agent's programs cost. Run apart from the measurements above, since
/// the statistics add two clock reads to every program run. Counts cover every sandbox
/// running meanwhile.
fn program_cost(env: &BenchEnv, agent: &Path, policy: &Path) -> Result<ProgramCost> {
    use std::os::unix::ffi::OsStrExt as _;
    progress("eBPF program cost (kernel run-time statistics)")?;
    let mut attr = [0u64; 8];
    let _stats = bpf(BPF_ENABLE_STATS, &mut attr).context("BPF_ENABLE_STATS")?;
    let mut programs = Vec::new();
    let mut entries: Vec<_> = fs::read_dir(PINNED_LINKS)
        .with_context(|| format!("read {PINNED_LINKS}"))?
        .filter_map(Result::ok)
        .collect();
    entries.sort_by_key(fs::DirEntry::file_name);
    for entry in entries {
        let mut path = entry.path().as_os_str().as_bytes().to_vec();
        path.push(0);
        let mut attr = [0u64; 8];
        attr[0] = path.as_ptr() as u64;
        let link = bpf(BPF_OBJ_GET, &mut attr)
            .with_context(|| format!("open {}", entry.path().display()))?;
        let prog_id = fdinfo_value(&link, "prog_id").context("no prog_id in the link's fdinfo")?;
        let mut attr = [0u64; 8];
        attr[0] = prog_id;
        let prog = bpf(BPF_PROG_GET_FD_BY_ID, &mut attr).context("BPF_PROG_GET_FD_BY_ID")?;
        programs.push((entry.file_name().to_string_lossy().into_owned(), prog));
    }
    let snapshot = || -> Vec<ProgStats> {
        programs
            .iter()
            .map(|(_, fd)| ProgStats {
                runs: fdinfo_value(fd, "run_cnt").unwrap_or(0),
                ns: fdinfo_value(fd, "run_time_ns").unwrap_or(0),
            })
            .collect()
    };

    let secs = IPERF_SECONDS.to_string();
    let port = IPERF_PORT.to_string();
    let before = snapshot();
    let t = Instant::now();
    let out = env
        .agent(agent)
        .args(["run", "--network", "allowlist", "--stats", "--policy"])
        .arg(policy)
        .args([
            "--",
            IPERF3,
            "-c",
            &env.ns_addr,
            "-p",
            &port,
            "-t",
            &secs,
            "-A",
            "0",
            "-J",
        ])
        .output()?;
    let iperf_secs = t.elapsed().as_secs_f64();
    check(&out, "iperf3 client")?;
    let after_iperf = snapshot();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let iperf_packets = stderr
        .split_once("allowed=")
        .and_then(|(_, rest)| rest.split_once(' '))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or(0);

    let port = LISTEN_PORT.to_string();
    let mut cmd = env.agent(agent);
    cmd.args(["run", "--network", "allowlist", "--policy"])
        .arg(policy)
        .args(["--", PYTHON3, "-c", CONNECT_CLIENT, &env.ns_addr, &port]);
    let mut client = Stepper::spawn(cmd)?;
    // Snapshot once the sandbox runs: its start-up makes no connections, but a slow start
    // should not overlap the count of another sandbox's traffic longer than needed.
    client.step()?;
    let before_connects = snapshot();
    for _ in 0..COST_CONNECTS {
        interrupted()?;
        client.step()?;
    }
    let after_connects = snapshot();
    client.finish()?;

    let diff = |a: &ProgStats, b: &ProgStats| ProgStats {
        runs: a.runs.saturating_sub(b.runs),
        ns: a.ns.saturating_sub(b.ns),
    };
    let programs = programs
        .into_iter()
        .enumerate()
        .map(|(i, (name, _))| {
            (
                name,
                diff(&after_iperf[i], &before[i]),
                diff(&after_connects[i], &before_connects[i]),
            )
        })
        .collect();
    Ok(ProgramCost {
        programs,
        iperf_secs,
        iperf_packets,
    })
}

#[expect(
    clippy::cast_precision_loss,
    reason = "counts and nanoseconds are far below 2^52"
)]
fn print_cost(cost: &Result<ProgramCost>) {
    let cost = match cost {
        Ok(c) => c,
        Err(e) => {
            println!("  eBPF program cost: not measured ({e:#})");
            return;
        }
    };
    let per_run = |p: &ProgStats| {
        if p.runs == 0 {
            0.0
        } else {
            p.ns as f64 / p.runs as f64
        }
    };
    println!(
        "  eBPF program cost (kernel run-time statistics, measured apart from the numbers above): one sandboxed \
         iperf3 run ({:.1} s wall with start-up, {} packets counted by the sandbox) | {COST_CONNECTS} sandboxed connects",
        cost.iperf_secs, cost.iperf_packets
    );
    let (mut iperf_ns, mut connect_ns) = (0u64, 0u64);
    for (name, iperf, connects) in &cost.programs {
        if iperf.runs == 0 && connects.runs == 0 {
            continue;
        }
        println!(
            "    {name:<18} {:>9} runs x {:>5.0} ns | {:>6} runs x {:>5.0} ns",
            iperf.runs,
            per_run(iperf),
            connects.runs,
            per_run(connects)
        );
        iperf_ns += iperf.ns;
        connect_ns += connects.ns;
    }
    println!(
        "    total: {:.1} ms of program time during the {IPERF_SECONDS} s transfer ({:.1}% of one CPU); {:.2} us of \
         program time per connect",
        iperf_ns as f64 / 1e6,
        iperf_ns as f64 / 1e9 / f64::from(IPERF_SECONDS) * 100.0,
        connect_ns as f64 / 1e3 / COST_CONNECTS as f64
    );
}

// ---------------------------------------------------------------------------------------
// 3. Sandbox start-up: `run --network blocked -- /bin/true` vs fork/exec of /bin/true
// ---------------------------------------------------------------------------------------

struct Startup {
    bare_ms: Vec<f64>,
    run_ms: Vec<f64>,
}

fn bench_startup(env: &BenchEnv, agent: &Path) -> Result<Startup> {
    progress(&format!("start-up, {STARTUP_RUNS} runs each"))?;
    let mut result = Startup {
        bare_ms: Vec::new(),
        run_ms: Vec::new(),
    };
    for _ in 0..STARTUP_RUNS {
        interrupted()?;
        let t = Instant::now();
        let out = Command::new(TRUE).stdin(Stdio::null()).output()?;
        result.bare_ms.push(t.elapsed().as_secs_f64() * 1e3);
        check(&out, TRUE)?;

        let t = Instant::now();
        let out = env
            .agent(agent)
            .args(["run", "--network", "blocked", "--", TRUE])
            .output()?;
        result.run_ms.push(t.elapsed().as_secs_f64() * 1e3);
        check(&out, "sandbox-agent run -- /bin/true")?;
    }
    Ok(result)
}

// ---------------------------------------------------------------------------------------
// 4. Loading a 1M-prefix policy: time and memory
// ---------------------------------------------------------------------------------------

struct Load {
    /// Agent start to workload running (policy read, compiled and written to the kernel).
    empty_alive_ms: Vec<f64>,
    big_alive_ms: Vec<f64>,
    /// Whole run: start, workload, removal of the entries, exit.
    empty_total_ms: Vec<f64>,
    big_total_ms: Vec<f64>,
    /// Reading + parsing the file alone (the agent refuses allow entries in blocked mode
    /// right after parsing them, before compiling or touching the kernel).
    big_parse_ms: f64,
    /// Slab KiB delta while a sandbox is alive: (empty policy, 1M policy).
    slab_delta_kib: (i64, i64),
    /// Sum of `memlock` of the LPM tries, from the agent's fdinfo: (empty policy, 1M policy).
    trie_memlock: (u64, u64),
    /// The agent's CPU time with the 1M-prefix policy: parsing only, until the workload ran
    /// (parse, compile, kernel writes), and the whole run (plus removal).
    big_cpu_parse: CpuTime,
    big_cpu_alive: CpuTime,
    big_cpu_total: CpuTime,
}

/// CPU time of all waited-for children (and their waited-for descendants) so far.
#[expect(
    clippy::cast_precision_loss,
    reason = "seconds and microseconds are far below 2^52"
)]
fn children_cpu() -> CpuTime {
    // SAFETY: an all-zero rusage is valid; getrusage only writes into the struct passed.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_CHILDREN with a valid pointer cannot fail.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &raw mut usage) };
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
    CpuTime {
        user: ms(usage.ru_utime),
        system: ms(usage.ru_stime),
    }
}

/// Starts a sandbox whose workload prints a line, then (if `hold`) sleeps. Returns the time
/// until the line arrived, and the child to wait for.
fn start_marked(env: &BenchEnv, agent: &Path, policy: &Path, hold: bool) -> Result<(Child, f64)> {
    let script = if hold {
        "echo up; exec /bin/sleep 1"
    } else {
        "echo up"
    };
    let t = Instant::now();
    let mut child = env
        .agent(agent)
        .args(["run", "--network", "allowlist", "--policy"])
        .arg(policy)
        .args(["--", SH, "-c", script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    if let Some(out) = child.stdout.as_mut() {
        BufReader::new(out).read_line(&mut line)?;
    }
    let alive = t.elapsed().as_secs_f64() * 1e3;
    if line.trim() != "up" {
        let out = child.wait_with_output()?;
        bail!(
            "the sandbox with {} did not start: {}",
            policy.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok((child, alive))
}

fn bench_load(env: &BenchEnv, agent: &Path, big: &Path, empty: &Path) -> Result<Load> {
    let mut load = Load {
        empty_alive_ms: Vec::new(),
        big_alive_ms: Vec::new(),
        empty_total_ms: Vec::new(),
        big_total_ms: Vec::new(),
        big_parse_ms: 0.0,
        slab_delta_kib: (0, 0),
        trie_memlock: (0, 0),
        big_cpu_parse: CpuTime::default(),
        big_cpu_alive: CpuTime::default(),
        big_cpu_total: CpuTime::default(),
    };
    for round in 0..LOAD_ROUNDS {
        for is_big in [round % 2 == 1, round % 2 == 0] {
            progress(&format!(
                "policy load round {}/{LOAD_ROUNDS}, {}",
                round + 1,
                if is_big {
                    "1M prefixes"
                } else {
                    "empty policy"
                }
            ))?;
            let t = Instant::now();
            let (child, alive) = start_marked(env, agent, if is_big { big } else { empty }, false)?;
            let out = child.wait_with_output()?;
            let total = t.elapsed().as_secs_f64() * 1e3;
            check(&out, "sandbox-agent run --policy")?;
            if is_big {
                load.big_alive_ms.push(alive);
                load.big_total_ms.push(total);
            } else {
                load.empty_alive_ms.push(alive);
                load.empty_total_ms.push(total);
            }
        }
    }

    progress("policy parse only (1M prefixes)")?;
    let cpu_before = children_cpu();
    let t = Instant::now();
    let out = env
        .agent(agent)
        .args(["run", "--network", "blocked", "--policy"])
        .arg(big)
        .args(["--", TRUE])
        .output()?;
    load.big_parse_ms = t.elapsed().as_secs_f64() * 1e3;
    load.big_cpu_parse = children_cpu().minus(cpu_before);
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains("no effect with --network blocked"),
        "the parse-only run did not stop where expected: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );

    for is_big in [false, true] {
        progress(&format!(
            "memory, {}",
            if is_big {
                "1M prefixes"
            } else {
                "empty policy"
            }
        ))?;
        let before = meminfo_kib("Slab").context("no Slab in /proc/meminfo")?;
        let cpu_before = children_cpu();
        let (child, _) = start_marked(env, agent, if is_big { big } else { empty }, true)?;
        let during = meminfo_kib("Slab").context("no Slab in /proc/meminfo")?;
        let memlock = trie_memlock(child.id());
        let cpu = cpu_times(child.id());
        let out = child.wait_with_output()?;
        let cpu_total = children_cpu().minus(cpu_before);
        check(&out, "sandbox-agent run --policy")?;
        let delta =
            i64::try_from(during).unwrap_or(i64::MAX) - i64::try_from(before).unwrap_or(i64::MAX);
        if is_big {
            load.slab_delta_kib.1 = delta;
            load.trie_memlock.1 = memlock;
            load.big_cpu_alive = cpu.unwrap_or(CpuTime {
                user: f64::NAN,
                system: f64::NAN,
            });
            load.big_cpu_total = cpu_total;
        } else {
            load.slab_delta_kib.0 = delta;
            load.trie_memlock.0 = memlock;
        }
    }
    Ok(load)
}

/// Sum of `memlock:` over the LPM-trie maps (`map_type: 11`) the process has open.
fn trie_memlock(pid: u32) -> u64 {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return 0;
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| fs::read_to_string(e.path()).ok())
        .filter(|info| {
            info.lines()
                .any(|l| l.split_whitespace().eq(["map_type:", "11"]))
        })
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("memlock:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .sum()
}

/// A row comparing a baseline and a sandboxed value: ratio and difference computed here.
fn compare(
    metric: &str,
    baseline: f64,
    sandboxed: f64,
    decimals: usize,
    unit: &str,
    target: &str,
) -> Row {
    Row {
        metric: metric.into(),
        baseline: format!("{baseline:.decimals$}"),
        sandboxed: format!("{sandboxed:.decimals$}"),
        ratio: format!("{:.3}", sandboxed / baseline),
        added: format!("{:+.decimals$} {unit}", sandboxed - baseline),
        target: target.into(),
    }
}

#[expect(clippy::cast_precision_loss, reason = "KiB deltas are far below 2^52")]
fn results_table(t: &Throughput, c: &Connect, s: &Startup, l: &Load) -> Vec<Row> {
    let gbps = |v: &[f64]| median(v) / 1e9;
    let slab_mib = |kib: i64| kib as f64 / 1024.0;
    let (slab_empty, slab_big) = (slab_mib(l.slab_delta_kib.0), slab_mib(l.slab_delta_kib.1));
    let (lock_empty, lock_big) = (
        bytes_to_mib(l.trie_memlock.0),
        bytes_to_mib(l.trie_memlock.1),
    );
    vec![
        compare(
            "TCP throughput, Gbit/s (median)",
            gbps(&t.baseline_bps),
            gbps(&t.sandboxed_bps),
            2,
            "Gbit/s",
            "ratio >= 0.98",
        ),
        compare(
            "connect() p50, us",
            percentile(&c.baseline, 50.0),
            percentile(&c.sandboxed, 50.0),
            1,
            "us",
            "added < 2 us",
        ),
        compare(
            "connect() p99, us",
            percentile(&c.baseline, 99.0),
            percentile(&c.sandboxed, 99.0),
            1,
            "us",
            "-",
        ),
        compare(
            "run /bin/true p50, ms",
            percentile(&s.bare_ms, 50.0),
            percentile(&s.run_ms, 50.0),
            2,
            "ms",
            "run p50 < 5 ms",
        ),
        compare(
            "run /bin/true p99, ms",
            percentile(&s.bare_ms, 99.0),
            percentile(&s.run_ms, 99.0),
            2,
            "ms",
            "-",
        ),
        compare(
            "policy start to workload, ms (empty vs 1M)",
            median(&l.empty_alive_ms),
            median(&l.big_alive_ms),
            0,
            "ms",
            "added < 1000 ms",
        ),
        compare(
            "policy whole run, ms (empty vs 1M)",
            median(&l.empty_total_ms),
            median(&l.big_total_ms),
            0,
            "ms",
            "-",
        ),
        Row {
            metric: "Slab growth while alive, MiB (empty vs 1M)".into(),
            baseline: format!("{slab_empty:+.1}"),
            sandboxed: format!("{slab_big:+.1}"),
            ratio: "-".into(),
            added: format!("{:+.1} MiB", slab_big - slab_empty),
            target: "-".into(),
        },
        Row {
            metric: "LPM tries memlock, MiB (empty vs 1M)".into(),
            baseline: format!("{lock_empty:.1}"),
            sandboxed: format!("{lock_big:.1}"),
            ratio: "-".into(),
            added: format!("{:+.1} MiB", lock_big - lock_empty),
            target: "-".into(),
        },
    ]
}

fn print_table(rows: &[Row]) {
    let header = [
        "metric",
        "baseline",
        "sandboxed",
        "ratio",
        "added",
        "target",
    ];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.metric.clone(),
                r.baseline.clone(),
                r.sandboxed.clone(),
                r.ratio.clone(),
                r.added.clone(),
                r.target.clone(),
            ]
        })
        .collect();
    print_grid(&header, &cells, &[0, 5]);
}

fn print_notes(t: &Throughput, c: &Connect, l: &Load) {
    let gb = |v: &[f64]| {
        v.iter()
            .map(|b| format!("{:.2}", b / 1e9))
            .collect::<Vec<_>>()
            .join(" ")
    };
    // Runs with the same index ran back to back.
    let round_ratios: Vec<f64> = t
        .sandboxed_bps
        .iter()
        .zip(&t.baseline_bps)
        .map(|(s, b)| s / b)
        .collect();
    println!("notes (informational; the bench never fails on a number):");
    println!(
        "  throughput: iperf3 -t {IPERF_SECONDS} -O 1 over a veth into a netns, client on CPU 0, server on CPU 1; \
         runs (Gbit/s) baseline [{}] sandboxed [{}], median of the per-round ratios {:.3}; sandboxed policy: \
         {SMALL_POLICY} random prefixes + the server",
        gb(&t.baseline_bps),
        gb(&t.sandboxed_bps),
        median(&round_ratios)
    );
    if !t.stats_line.is_empty() {
        println!(
            "  last sandboxed iperf3 run: {}",
            t.stats_line.trim_start_matches("sandbox-agent: ")
        );
    }
    let paired = |other: &[f64]| {
        median(
            &other
                .iter()
                .zip(&c.baseline)
                .map(|(o, b)| o - b)
                .collect::<Vec<_>>(),
        )
    };
    let p50_added = |other: &[f64]| median(other) - median(&c.baseline);
    println!(
        "  connect: python3 perf_counter_ns around connect(); 4 clients on CPU 0 take turns (one connect each, \
         order rotating), listener on CPU 1; {} turns after {CONNECT_WARMUP} warm-up turns; sandboxed = \
         allowlist with the same {SMALL_POLICY}-prefix policy",
        c.baseline.len()
    );
    println!(
        "    added vs baseline (p50 difference / median per-turn difference): sandboxed {:+.1} / {:+.1} us; \
         open-mode sandbox, no rules {:+.1} / {:+.1} us; second unsandboxed client (noise floor) {:+.1} / {:+.1} us",
        p50_added(&c.sandboxed),
        paired(&c.sandboxed),
        p50_added(&c.open),
        paired(&c.open),
        p50_added(&c.control),
        paired(&c.control)
    );
    println!(
        "  policy load: median of {LOAD_ROUNDS}; start-to-workload = agent spawn until the workload's first line \
         (read + parse + compile + kernel writes); the whole run adds the removal of the entries"
    );
    println!(
        "    1M prefixes, agent CPU: parsing alone (wall {:.0} ms) {}; until the workload ran {}; whole run {}",
        l.big_parse_ms, l.big_cpu_parse, l.big_cpu_alive, l.big_cpu_total
    );
    println!(
        "  memory: Slab in /proc/meminfo before vs while the sandbox is alive (approximate: other kernel \
         activity shows up too; the empty-policy run is the noise reference); memlock = what the kernel \
         accounts for the LPM tries (fdinfo of the agent's map fds), excluding inner nodes and slab rounding"
    );
}
