//! The bench's toolkit, shared by every section (core, domains, daemon, ingress): the test
//! network and its servers (`BenchEnv`), progress on a terminal, interruption, running host
//! commands, statistics, CPU accounting and the printed grids. The sections depend on it;
//! it depends on none of them.
use std::{
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader, BufWriter, Write as _},
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, bail, ensure};

/// Workloads run as `nobody` with a minimal PATH, so every tool is named by absolute path.
pub(crate) const IPERF3: &str = "/usr/bin/iperf3";
pub(crate) const IPERF_PORT: u16 = 5201;
pub(crate) const LISTEN_PORT: u16 = 5202;
/// Accepts and closes connections on CPU 1 until its deadline.
pub(crate) const LISTENER: &str = r#"
import os, socket, sys, time
try:
    os.sched_setaffinity(0, {1})
except OSError:
    pass
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(4096)
s.settimeout(0.5)
print("ready", flush=True)
deadline = time.monotonic() + float(sys.argv[3])
while time.monotonic() < deadline:
    try:
        c, _ = s.accept()
    except OSError:
        continue
    c.close()
"#;

pub(crate) const PYTHON3: &str = "/usr/bin/python3";
/// Upper bound on the life of the servers in the namespace, should the bench be killed.
pub(crate) const SERVER_LIFETIME_SECS: u32 = 300;
/// Prints a progress line; fails if the bench was interrupted.
pub(crate) fn progress(msg: &str) -> Result<()> {
    interrupted()?;
    eprintln!("bench: {msg}");
    Ok(())
}
pub(crate) static INTERRUPTED: AtomicBool = AtomicBool::new(false);
extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

pub(crate) fn interrupted() -> Result<()> {
    ensure!(!INTERRUPTED.load(Ordering::Relaxed), "interrupted");
    Ok(())
}
/// While alive, SIGINT/SIGTERM/SIGHUP only set [`INTERRUPTED`] (children, which get the
/// default disposition back at exec, still die of them), so the bench ends through its
/// error path and `BenchEnv`'s clean-up instead of dying with a namespace left behind.
pub(crate) struct SignalGuard {
    pub(crate) previous: Vec<(libc::c_int, libc::sighandler_t)>,
}
impl SignalGuard {
    pub(crate) fn install() -> Self {
        let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        let previous = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP]
            .into_iter()
            // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
            .map(|sig| (sig, unsafe { libc::signal(sig, handler) }))
            .collect();
        Self { previous }
    }
}
impl Drop for SignalGuard {
    fn drop(&mut self) {
        for &(sig, old) in &self.previous {
            if old != libc::SIG_ERR {
                // SAFETY: restores the disposition that was in place before.
                unsafe { libc::signal(sig, old) };
            }
        }
    }
}
pub(crate) fn meminfo_kib(key: &str) -> Option<u64> {
    let text = fs::read_to_string("/proc/meminfo").ok()?;
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}
/// Fails with the command's stderr unless it exited with status 0.
pub(crate) fn check(out: &Output, what: &str) -> Result<()> {
    // A Ctrl-C reaches the children too: report that rather than their failure.
    interrupted()?;
    if out.status.success() {
        return Ok(());
    }
    bail!(
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    )
}
/// Runs a host tool (not sandboxed) and returns its stdout.
pub(crate) fn host(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {program}"))?;
    check(&out, &format!("`{program} {}`", args.join(" ")))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
/// Everything the bench creates outside its own process; `Drop` removes whatever of it exists.
pub(crate) struct BenchEnv {
    pub(crate) dir: PathBuf,
    pub(crate) netns: String,
    pub(crate) host_if: String,
    pub(crate) host_addr: String,
    pub(crate) ns_addr: String,
    pub(crate) netns_created: bool,
    pub(crate) veth_created: bool,
    /// Servers (in the namespace, or on the host for the domain section's nginx), each the
    /// leader of its own process group.
    pub(crate) servers: Vec<Child>,
}
impl BenchEnv {
    pub(crate) fn create() -> Result<Self> {
        let pid = std::process::id();
        // A /24 per bench process, so two benches (or a test using 198.18.x) do not collide.
        let net = format!("198.19.{}", pid % 250 + 1);
        let mut env = Self {
            // Not below /tmp: sandboxes have a private /tmp, and they run the bench's scripts.
            dir: PathBuf::from(format!("/var/lib/sa-bench-{pid}")),
            netns: format!("sa-bench-{pid}"),
            host_if: format!("sabh{}", pid % 1000),
            host_addr: format!("{net}.1"),
            ns_addr: format!("{net}.2"),
            netns_created: false,
            veth_created: false,
            servers: Vec::new(),
        };
        let in_use = host(
            "ip",
            &["-4", "-o", "addr", "show", "to", &format!("{net}.0/24")],
        )?;
        ensure!(
            in_use.trim().is_empty(),
            "{net}.0/24 is already in use on this host: {}",
            in_use.trim()
        );

        fs::create_dir(&env.dir).with_context(|| format!("create {}", env.dir.display()))?;
        // The workload runs as its own uid and must read the scripts and enter the directory.
        fs::set_permissions(&env.dir, fs::Permissions::from_mode(0o755))?;

        let ns = env.netns.clone();
        let (host_if, ns_if) = (env.host_if.clone(), format!("sabn{}", pid % 1000));
        host("ip", &["netns", "add", &ns])?;
        env.netns_created = true;
        host(
            "ip",
            &[
                "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if, "netns", &ns,
            ],
        )?;
        env.veth_created = true;
        host(
            "ip",
            &[
                "addr",
                "add",
                &format!("{}/24", env.host_addr),
                "dev",
                &host_if,
            ],
        )?;
        host("ip", &["link", "set", &host_if, "up"])?;
        host(
            "ip",
            &[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", env.ns_addr),
                "dev",
                &ns_if,
            ],
        )?;
        host("ip", &["-n", &ns, "link", "set", &ns_if, "up"])?;
        host("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(env)
    }

    /// A command in the namespace, with a bounded life, in its own process group.
    pub(crate) fn in_netns(&self, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &self.netns,
            "timeout",
            &SERVER_LIFETIME_SECS.to_string(),
            program,
        ])
        .args(args)
        .stdin(Stdio::null())
        .process_group(0);
        cmd
    }

    pub(crate) fn start_iperf_server(&mut self) -> Result<()> {
        let port = IPERF_PORT.to_string();
        let child = self
            .in_netns(IPERF3, &["-s", "-B", &self.ns_addr, "-p", &port, "-A", "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start the iperf3 server")?;
        self.servers.push(child);
        let filter = format!("sport = :{port}");
        for _ in 0..100 {
            if host("ss", &["-N", &self.netns, "-Hltn", &filter])?.contains(&port) {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "the iperf3 server in {} did not start listening within 5 s",
            self.netns
        )
    }

    pub(crate) fn start_listener(&mut self) -> Result<()> {
        let mut child = self
            .in_netns(
                PYTHON3,
                &[
                    "-c",
                    LISTENER,
                    &self.ns_addr,
                    &LISTEN_PORT.to_string(),
                    &SERVER_LIFETIME_SECS.to_string(),
                ],
            )
            .stdout(Stdio::piped())
            .spawn()
            .context("start the connect listener")?;
        let stdout = child.stdout.take();
        self.servers.push(child);
        let mut line = String::new();
        if let Some(out) = stdout {
            BufReader::new(out).read_line(&mut line)?;
        }
        ensure!(line.trim() == "ready", "the connect listener did not start");
        Ok(())
    }

    /// The agent, run from the (world-readable) temp dir so the workload can enter its cwd.
    pub(crate) fn agent(&self, agent: &Path) -> Command {
        let mut cmd = Command::new(agent);
        cmd.current_dir(&self.dir).stdin(Stdio::null());
        cmd
    }

    pub(crate) fn copy_agent(&self, agent: &Path) -> Result<PathBuf> {
        let copy = self.dir.join("sandbox-agent");
        fs::copy(agent, &copy)
            .with_context(|| format!("copy {} to {}", agent.display(), copy.display()))?;
        fs::set_permissions(&copy, fs::Permissions::from_mode(0o755))?;
        Ok(copy)
    }

    /// Writes an allowlist policy file (mode 644) and returns its path.
    pub(crate) fn write_policy(
        &self,
        name: &str,
        prefixes: &[String],
        extra: Option<&str>,
    ) -> Result<PathBuf> {
        let path = self.dir.join(name);
        let file = fs::File::create(&path).with_context(|| format!("create {}", path.display()))?;
        let mut w = BufWriter::new(file);
        writeln!(
            w,
            "network = \"allowlist\"\nprecedence = \"deny-wins\"\nallow_out = ["
        )?;
        for p in extra.into_iter().chain(prefixes.iter().map(String::as_str)) {
            writeln!(w, "  \"{p}\",")?;
        }
        writeln!(w, "]")?;
        w.into_inner()
            .map_err(std::io::IntoInnerError::into_error)?
            .sync_all()?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644))?;
        Ok(path)
    }
}
impl Drop for BenchEnv {
    fn drop(&mut self) {
        for child in &mut self.servers {
            // The group holds `timeout` and the server it started (process_group(0) above).
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .stderr(Stdio::null())
                .status();
            let _ = child.wait();
        }
        if self.veth_created {
            let _ = Command::new("ip")
                .args(["link", "del", &self.host_if])
                .stderr(Stdio::null())
                .status();
        }
        if self.netns_created {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.netns])
                .stderr(Stdio::null())
                .status();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
pub(crate) fn median(values: &[f64]) -> f64 {
    percentile(values, 50.0)
}
/// Nearest-rank percentile.
#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss,
    reason = "sample counts are small and the rank is clamped to the slice"
)]
pub(crate) fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}
/// A connect client driven one connect at a time through its stdin.
pub(crate) struct Stepper {
    pub(crate) child: Child,
    pub(crate) input: Option<ChildStdin>,
    pub(crate) output: BufReader<ChildStdout>,
}
impl Stepper {
    pub(crate) fn spawn(mut cmd: Command) -> Result<Self> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let (Some(input), Some(output)) = (child.stdin.take(), child.stdout.take()) else {
            bail!("no pipes to the connect client");
        };
        Ok(Self {
            child,
            input: Some(input),
            output: BufReader::new(output),
        })
    }

    /// One connect; its time in µs.
    pub(crate) fn step(&mut self) -> Result<f64> {
        let line = self.step_line()?;
        let ns: u32 = line
            .parse()
            .with_context(|| format!("bad output {line:?} from the connect client"))?;
        Ok(f64::from(ns) / 1000.0)
    }

    /// The spawned process (for a sandboxed client: the agent).
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// One step: writes a line to the client and returns the line it answers, trimmed.
    pub(crate) fn step_line(&mut self) -> Result<String> {
        let input = self.input.as_mut().context("the client was closed")?;
        input.write_all(b"\n")?;
        input.flush()?;
        let mut line = String::new();
        if self.output.read_line(&mut line)? == 0 {
            // The client died: report why (a Ctrl-C reaches the clients too).
            interrupted()?;
            self.input = None;
            let mut stderr = String::new();
            if let Some(mut e) = self.child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
            }
            bail!("the client stopped: {}", stderr.trim());
        }
        Ok(line.trim().to_owned())
    }

    /// Closes stdin (the client exits) and checks the exit status.
    pub(crate) fn finish(mut self) -> Result<()> {
        self.input = None;
        let status = self.child.wait()?;
        ensure!(status.success(), "the connect client exited with {status}");
        Ok(())
    }
}
impl Drop for Stepper {
    fn drop(&mut self) {
        // EOF on stdin ends the client (and so the sandbox) within one connect.
        self.input = None;
        let _ = self.child.wait();
    }
}
/// User and system CPU time, ms.
#[derive(Clone, Copy, Default)]
pub(crate) struct CpuTime {
    pub(crate) user: f64,
    pub(crate) system: f64,
}
impl CpuTime {
    pub(crate) fn minus(self, earlier: Self) -> Self {
        Self {
            user: self.user - earlier.user,
            system: self.system - earlier.system,
        }
    }
}
impl std::fmt::Display for CpuTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "user {:.0} ms + system {:.0} ms", self.user, self.system)
    }
}
/// CPU time of a running process so far (`/proc/<pid>/stat` fields 14 and 15).
pub(crate) fn cpu_times(pid: u32) -> Option<CpuTime> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // `fields[0]` is field 3 (state); utime and stime are fields 14 and 15.
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u32>().ok());
    let hz = clock_ticks_per_second()?;
    Some(CpuTime {
        user: f64::from(ticks(11)?) * 1e3 / hz,
        system: f64::from(ticks(12)?) * 1e3 / hz,
    })
}
/// `getconf CLK_TCK` (100 on every Linux ABI in practice).
pub(crate) fn clock_ticks_per_second() -> Option<f64> {
    let out = Command::new("getconf").arg("CLK_TCK").output().ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}
// ---------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------

pub(crate) struct Row {
    pub(crate) metric: String,
    pub(crate) baseline: String,
    pub(crate) sandboxed: String,
    pub(crate) ratio: String,
    pub(crate) added: String,
    pub(crate) target: String,
}
/// Prints a table: a header, a rule and the rows; columns listed in `left` are left-aligned
/// (text), the others right-aligned (numbers).
pub(crate) fn print_grid(header: &[&str], rows: &[Vec<String>], left: &[usize]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cols: &[String]| {
        let mut s = String::new();
        for (i, (c, w)) in cols.iter().zip(&widths).enumerate() {
            let _ = if left.contains(&i) {
                write!(s, "{c:<w$}  ")
            } else {
                write!(s, "{c:>w$}  ")
            };
        }
        println!("{}", s.trim_end());
    };
    line(&header.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>());
    println!(
        "{}",
        "-".repeat(widths.iter().sum::<usize>() + 2 * (widths.len() - 1))
    );
    for r in rows {
        line(r);
    }
}
