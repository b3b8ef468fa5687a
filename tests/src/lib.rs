//! Fixtures for the end-to-end tests: real eBPF programs, real cgroups, real packets.
//!
//! Each test makes its own network namespace (a "remote host") joined to the host by a veth
//! pair, with several addresses on the far side, and a server (`helpers/netserver.py`) that
//! logs which address every TCP connection and UDP datagram reached. Sandboxed clients run
//! `helpers/client.py`. Everything is removed on drop, also when the test panics.
//!
//! Addresses are in `198.18.0.0/15` and `fd5a:5a::/32` and exist only inside namespaces these
//! tests create. Tests panic with context rather than return errors; a missing kernel feature
//! is a failure, not a skip.
use std::{
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

pub const PORT: u16 = 8080;
/// Port of the test server's long-lived connections (`hold`/`data` log lines).
pub const HOLD_PORT: u16 = 8081;
/// Upper bound for one sandboxed command in a test.
pub const RUN_LIMIT: Duration = Duration::from_mins(1);

/// The agent binary under test (`cargo xtask test` sets `SANDBOX_AGENT_BIN`).
pub fn agent() -> PathBuf {
    let path = std::env::var_os("SANDBOX_AGENT_BIN").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/sandbox-agent"),
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "agent binary {} is missing: run the tests with `cargo xtask test`",
        path.display()
    );
    path
}

/// Where the helper directories of test processes live: a place sandboxes see (their `/tmp`
/// is their own). `cargo xtask test` removes it at the end.
pub const HELPERS_ROOT: &str = "/var/lib/sandbox-agent-tests";

/// A world-readable directory with the helper scripts: sandboxes run as their own user.
pub fn helpers() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(HELPERS_ROOT).join(std::process::id().to_string());
        fs::create_dir_all(HELPERS_ROOT).expect("create helpers root");
        sh(&format!("chmod 755 {HELPERS_ROOT}"));
        fs::create_dir_all(&dir).expect("create helper dir");
        fs::write(dir.join("client.py"), include_str!("../helpers/client.py"))
            .expect("write client.py");
        fs::write(
            dir.join("netserver.py"),
            include_str!("../helpers/netserver.py"),
        )
        .expect("write netserver.py");
        fs::write(
            dir.join("webserver.py"),
            include_str!("../helpers/webserver.py"),
        )
        .expect("write webserver.py");
        fs::write(
            dir.join("webclient.py"),
            include_str!("../helpers/webclient.py"),
        )
        .expect("write webclient.py");
        fs::write(dir.join("ws.py"), include_str!("../helpers/ws.py")).expect("write ws.py");
        fs::write(
            dir.join("synprobe.py"),
            include_str!("../helpers/synprobe.py"),
        )
        .expect("write synprobe.py");
        fs::write(
            dir.join("adversary.py"),
            include_str!("../helpers/adversary.py"),
        )
        .expect("write adversary.py");
        fs::write(dir.join("udplog.py"), include_str!("../helpers/udplog.py"))
            .expect("write udplog.py");
        fs::write(
            dir.join("rawhttp.py"),
            include_str!("../helpers/rawhttp.py"),
        )
        .expect("write rawhttp.py");
        fs::write(
            dir.join("flooddns.py"),
            include_str!("../helpers/flooddns.py"),
        )
        .expect("write flooddns.py");
        sh(&format!(
            "chmod 755 {0} && chmod 644 {0}/*.py",
            dir.display()
        ));
        dir
    })
}

/// Runs a shell command as part of a fixture; panics with its output if it fails.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", cmd])
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn sh_quiet(cmd: &str) {
    let _ = Command::new("sh")
        .args(["-c", cmd])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

pub mod daemon;
pub mod gateway;
pub mod oci;
pub mod web;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A fresh index for a test network: 512 /24s in 198.18.0.0/15, unique within the process.
/// Returns `(n, "198.B.C")`.
pub fn allocate_subnet() -> (u32, String) {
    let n = (std::process::id() * 37 + NEXT.fetch_add(1, Ordering::SeqCst)) % 512;
    (n, format!("198.{}.{}", 18 + n / 256, n % 256))
}

/// A network namespace with a server on several addresses, reachable from the host.
pub struct RemoteHost {
    pub netns: String,
    host_if: String,
    /// IPv4 addresses of the remote host: `.2` to `.5` of its /24.
    pub v4: Vec<String>,
    /// IPv6 addresses: `::2` to `::5` of its /64.
    pub v6: Vec<String>,
    /// A link-local address (inside `@private` and `@cloud-metadata`).
    pub link_local: String,
    /// The host's own IPv6 address on the link to the namespace.
    pub host_v6: String,
    log: PathBuf,
    server: Option<Child>,
}

impl RemoteHost {
    pub fn new() -> Self {
        // The index picks the subnet and names the interfaces, so a leftover of a crashed
        // run with the same index is recognised and removed first.
        let (n, _) = allocate_subnet();
        let (b, c) = (18 + n / 256, n % 256);
        let netns = format!("sa-test-{n}");
        let host_if = format!("sa{n}h");
        let ns_if = format!("sa{n}n");
        sh_quiet(&format!("ip netns del {netns}; ip link del {host_if}"));
        let ll = format!("169.254.{}.2", 100 + n % 100);
        let v4: Vec<String> = (2..=5).map(|i| format!("198.{b}.{c}.{i}")).collect();
        let v6: Vec<String> = (2..=5).map(|i| format!("fd5a:5a:{n:x}::{i}")).collect();
        let log = helpers().join(format!("server-{n}.log"));
        let _ = fs::remove_file(&log);
        let mut host = Self {
            netns: netns.clone(),
            host_if: host_if.clone(),
            v4: v4.clone(),
            v6: v6.clone(),
            link_local: ll.clone(),
            host_v6: format!("fd5a:5a:{n:x}::1"),
            log: log.clone(),
            server: None,
        };
        let mut script = format!(
            "set -e
ip netns add {netns}
ip link add {host_if} type veth peer name {ns_if} netns {netns}
ip addr add 198.{b}.{c}.1/24 dev {host_if}
ip addr add fd5a:5a:{n:x}::1/64 dev {host_if} nodad
ip addr add {ll_host}/32 dev {host_if}
ip link set {host_if} up
ip route add {ll}/32 dev {host_if}
ip -n {netns} link set lo up
ip -n {netns} link set {ns_if} up
ip -n {netns} route add {ll_host}/32 dev {ns_if}
ip -n {netns} addr add {ll}/32 dev {ns_if}
",
            ll_host = format!("169.254.{}.1", 100 + n % 100),
        );
        for a in &v4 {
            let _ = writeln!(script, "ip -n {netns} addr add {a}/24 dev {ns_if}");
        }
        for a in &v6 {
            let _ = writeln!(script, "ip -n {netns} addr add {a}/64 dev {ns_if} nodad");
        }
        sh(&script);
        let mut addrs: Vec<String> = v4.iter().chain(v6.iter()).cloned().collect();
        addrs.push(ll);
        let server = Command::new("ip")
            .args(["netns", "exec", &netns, "python3"])
            .arg(helpers().join("netserver.py"))
            .args(["--log"])
            .arg(&log)
            .args(["--port", &PORT.to_string(), "--lifetime", "600"])
            .args(["--hold-port", &HOLD_PORT.to_string()])
            .args(&addrs)
            .stdout(Stdio::null())
            .spawn()
            .expect("start netserver");
        host.server = Some(server);
        let start = Instant::now();
        while !fs::read_to_string(&log).is_ok_and(|l| l.contains("ready")) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "netserver in {netns} did not start"
            );
            thread::sleep(Duration::from_millis(20));
        }
        host
    }

    /// The host's end of the veth pair to the namespace.
    pub fn host_if(&self) -> &str {
        &self.host_if
    }

    /// What the server saw so far (lines `tcp ADDR` / `udp ADDR PAYLOAD`).
    pub fn seen(&self) -> Vec<String> {
        server_log(&self.log)
    }

    /// Whether the server saw a TCP connection to `addr`.
    pub fn saw_tcp(&self, addr: &str) -> bool {
        self.seen().iter().any(|l| *l == format!("tcp {addr}"))
    }

    /// Whether the server saw a datagram to `addr` carrying `payload`.
    pub fn saw_udp(&self, addr: &str, payload: &str) -> bool {
        self.seen()
            .iter()
            .any(|l| *l == format!("udp {addr} {payload}"))
    }
}

impl Default for RemoteHost {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for RemoteHost {
    fn drop(&mut self) {
        if let Some(mut s) = self.server.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
        sh_quiet(&format!(
            "ip netns del {}; ip link del {}",
            self.netns, self.host_if
        ));
        let _ = fs::remove_file(&self.log);
    }
}

/// The event lines of a test server's log, without its `ready` line.
pub fn server_log(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| *l != "ready")
        .map(str::to_owned)
        .collect()
}

/// The result of one `sandbox-agent` invocation.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// `target -> outcome` from client.py's output.
    pub fn outcome(&self, target: &str) -> String {
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{target} ")).map(str::to_owned))
            .unwrap_or_else(|| panic!("no result for {target} in {self:#?}"))
    }
}

pub fn to_run(out: &Output) -> Run {
    Run {
        code: out.status.code().unwrap_or_else(|| {
            use std::os::unix::process::ExitStatusExt as _;
            128 + out.status.signal().unwrap_or(0)
        }),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `sandbox-agent ARGS...`, bounded by [`RUN_LIMIT`] (killed after it).
pub fn agent_cmd(args: &[&str]) -> Run {
    agent_cmd_with_stdin(args, None)
}

pub fn agent_cmd_with_stdin(args: &[&str], stdin: Option<&str>) -> Run {
    let mut child = Command::new(agent())
        .args(args)
        .current_dir("/")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sandbox-agent");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(input.as_bytes()).expect("write stdin");
    }
    wait_bounded(child)
}

/// Waits for a child with the [`RUN_LIMIT`] bound, killing it past that.
pub fn wait_bounded(child: Child) -> Run {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = thread::spawn(move || {
        let out = child.wait_with_output();
        let _ = tx.send(());
        out
    });
    if rx.recv_timeout(RUN_LIMIT).is_err() {
        sh_quiet(&format!("kill -9 {pid}"));
        let out = waiter.join().expect("waiter").expect("wait");
        panic!(
            "sandbox-agent did not finish within {RUN_LIMIT:?}: {:#?}",
            to_run(&out)
        );
    }
    to_run(&waiter.join().expect("waiter").expect("wait"))
}

/// `sandbox-agent run POLICY... -- python3 client.py CLIENT...`
pub fn run_client(policy: &[&str], client: &[&str]) -> Run {
    let script = helpers().join("client.py");
    let mut args = vec!["run"];
    args.extend_from_slice(policy);
    args.extend_from_slice(&[
        "--",
        "/usr/bin/python3",
        script.to_str().expect("utf-8 path"),
    ]);
    args.extend_from_slice(client);
    let run = agent_cmd(&args);
    assert_eq!(run.code, 0, "client failed: {run:#?}");
    run
}

/// TCP from a sandbox with `policy` to each of `targets`; returns each outcome.
pub fn tcp_outcomes(policy: &[&str], targets: &[&str]) -> Vec<String> {
    let port = PORT.to_string();
    let mut client = vec!["tcp", port.as_str()];
    client.extend_from_slice(targets);
    let run = run_client(policy, &client);
    targets.iter().map(|t| run.outcome(t)).collect()
}

/// `sandbox-agent state` as JSON.
pub fn state() -> serde_json::Value {
    let run = agent_cmd(&["state"]);
    assert_eq!(run.code, 0, "state failed: {run:#?}");
    serde_json::from_str(&run.stdout).expect("state is JSON")
}

/// Mount point of the cgroup v2 hierarchy, found as the agent finds it.
pub fn cgroup2_mount() -> PathBuf {
    let text = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let mounts: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mount_point = left.split_whitespace().nth(4)?;
            (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .collect();
    for p in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        if let Some(m) = mounts.iter().find(|m| m.as_os_str() == p) {
            return m.clone();
        }
    }
    mounts.into_iter().next().expect("cgroup2 is mounted")
}

/// A TCP listener on loopback in the host namespace (a "host service"), answering like the
/// netserver. Returns its port; the thread ends with the process.
pub fn loopback_service() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let port = listener.local_addr().expect("addr").port();
    thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
            let mut buf = [0u8; 1024];
            let _ = std::io::Read::read(&mut conn, &mut buf);
            let _ = conn.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nhi\n");
        }
    });
    port
}

/// A pseudo-terminal: the master (the test reads what the terminal shows) and the slave's
/// path.
pub fn open_pty() -> (fs::File, PathBuf) {
    // SAFETY: plain libc calls on a descriptor we own; ptsname_r writes into the buffer.
    unsafe {
        let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
        assert!(master >= 0, "posix_openpt");
        let master = <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(master);
        assert_eq!(
            libc::grantpt(std::os::fd::AsRawFd::as_raw_fd(&master)),
            0,
            "grantpt"
        );
        assert_eq!(
            libc::unlockpt(std::os::fd::AsRawFd::as_raw_fd(&master)),
            0,
            "unlockpt"
        );
        let mut name = [0 as libc::c_char; 128];
        assert_eq!(
            libc::ptsname_r(
                std::os::fd::AsRawFd::as_raw_fd(&master),
                name.as_mut_ptr(),
                name.len()
            ),
            0,
            "ptsname_r"
        );
        let path = std::ffi::CStr::from_ptr(name.as_ptr())
            .to_str()
            .expect("utf-8")
            .to_owned();
        (fs::File::from(master), PathBuf::from(path))
    }
}

/// What a pty's master shows until every descriptor of its slave is closed (then reading
/// ends with EIO).
pub fn read_terminal(master: &mut fs::File) -> Vec<u8> {
    use std::io::Read as _;
    let mut shown = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = master.read(&mut buf) {
        if n == 0 {
            break;
        }
        shown.extend_from_slice(&buf[..n]);
    }
    shown
}

/// A process the test holds (it waits on its stdin): its stdin closed, killed and reaped
/// when dropped.
pub struct Reap(pub Child);

impl Drop for Reap {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A sandbox started by a `run` of its own, kept alive until its stdin closes.
pub struct Holder {
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
}

impl Holder {
    pub fn start(args: &[&str]) -> Self {
        let mut child = Command::new(agent())
            .args(args)
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sandbox-agent");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child: Some(child),
            lines,
        }
    }

    /// The first stdout line starting with `prefix` (bounded).
    pub fn line(&self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return l,
                Ok(_) => {}
                Err(e) => panic!("no {prefix:?} line from the sandbox: {e}"),
            }
        }
    }

    /// The agent's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Closes its stdin and waits for the agent (bounded); its exit status.
    pub fn finish(&mut self) -> Run {
        let mut child = self.child.take().expect("running");
        drop(child.stdin.take());
        wait_bounded(child)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            drop(c.stdin.take());
            sh_quiet(&format!("kill -TERM {}", c.id()));
            let start = Instant::now();
            while c.try_wait().ok().flatten().is_none() && start.elapsed() < Duration::from_secs(15)
            {
                thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
