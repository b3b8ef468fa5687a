//! `cargo xtask bench`, domain-rule section: the agent's transparent proxy and resolver
//! against a direct connection, against the proxy's own userspace-copy mode and against
//! nginx's `stream` proxy with `ssl_preread`, in one run.
//!
//! Everything stays in the bench's namespace and on loopback: a stream server and dnsmasq
//! (which maps `bench.test` to the server) run in the namespace, nginx on 127.0.0.1 of the
//! host; all of them are servers of [`BenchEnv`] and go with it on every way out. Every client
//! runs in a sandbox with a bounded `--timeout`, so all routes pay the same per-packet
//! program cost and differ only in what sits between the client and the server.
use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    net::TcpListener,
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::bench_kit::{
    BenchEnv, PYTHON3, Row, SERVER_LIFETIME_SECS, Stepper, check, host, interrupted, median,
    percentile, print_grid, progress,
};

/// The name the clients put in their SNI and dnsmasq maps to the server, with a TTL (dnsmasq's
/// own default for local records is 0) as real names have: the proxy caches resolutions for
/// their TTL, so this measures its steady state.
const NAME: &str = "bench.test";
const NAME_TTL_SECS: u32 = 300;
/// The same server under a name with TTL 0: the proxy resolves it for every connection (what a
/// first connection to a name costs).
const UNCACHED_NAME: &str = "uncached.test";
const WEB_PORT: u16 = 443;
const DNS_PORT: u16 = 53;
const DNSMASQ: &str = "/usr/sbin/dnsmasq";
pub(crate) const NGINX: &str = "/usr/sbin/nginx";
const NGINX_STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";
/// What the server streams from (page cache, `sendfile`), so the server costs little CPU.
const BLOB_BYTES: usize = 4 << 20;
/// Every sandbox of this section ends by then, whatever happens to the bench.
const SANDBOX_TIMEOUT: &str = "120s";
/// The agent's environment switch for the userspace-copy baseline.
const COPY_VAR: &str = "SANDBOX_AGENT_PROXY_COPY";

/// Bulk transfers per route; the order of the routes rotates every round.
const BULK_ROUNDS: usize = 7;
/// Seconds received before the measured window (slow start, page cache, scheduler).
const BULK_WARMUP_SECS: &str = "0.3";
const BULK_SECS: &str = "1.5";
/// Connections per route (connect + `ClientHello` + first byte), after the warm-up turns.
const PING_TURNS: usize = 2000;
const PING_WARMUP: usize = 100;
/// Sequential DNS queries per route, after the warm-up turns.
const DNS_TURNS: usize = 2000;
const DNS_WARMUP: usize = 100;
/// DNS throughput: queries kept in flight, and the measured window per run.
const DNS_WINDOW: &str = "32";
const DNS_RATE_WARMUP_SECS: &str = "0.2";
const DNS_RATE_SECS: &str = "1.0";
const DNS_RATE_ROUNDS: usize = 3;

/// The clients, run inside sandboxes (as `nobody`, hence `-c` and no file). Every mode takes
/// `HOST PORT NAME` first: where to connect, and the name for the SNI or the DNS question.
///
/// - `bulk ... WARM SECS`: one connection, a `ClientHello` tagged `BULK`, then receives
///   with `recv_into` a 1 MiB buffer (one C-level call per kernel read, so the interpreter
///   costs a few hundred ns per ~64-256 KiB); prints `start`, then `end BYTES SECS CPU` (its
///   own CPU seconds in the window), then waits for a line on stdin so the bench can read the
///   other processes' CPU time while the connection is still up;
/// - `ping ...`: per stdin line, connect, send a `ClientHello` tagged `PING`, read one
///   byte; prints the ns it took (closes with RST: no `TIME_WAIT` piles up on the client);
/// - `dns ...`: per stdin line, one A query for the name over a connected UDP socket;
///   prints the ns or `lost`;
/// - `dnsrate ... WINDOW WARM SECS`: keeps WINDOW queries in flight; `start`, then
///   `end ANSWERED SECS LOST BAD CPU`, then waits for stdin;
/// - `check ... STEP,... ADDR`: one-shot probes for the set-up check (see
///   [`check_routes`]); `denied` connects to port 9 of ADDR, which no rule allows.
const CLIENT: &str = r#"
import errno, os, random, resource, socket, struct, sys, time

mode, host, port, NAME = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].encode()
args = sys.argv[5:]
out = sys.stdout

def hello(tag):
    entry = b"\0" + struct.pack(">H", len(NAME)) + NAME
    sni = struct.pack(">H", len(entry)) + entry
    exts = struct.pack(">HH", 0, len(sni)) + sni
    exts += struct.pack(">HH", 43, 3) + b"\x02\x03\x04"
    exts += struct.pack(">HH", 10, 4) + b"\x00\x02\x00\x1d"
    body = b"\x03\x03" + tag + os.urandom(28) + b"\x00\x00\x02\x13\x01\x01\x00"
    body += struct.pack(">H", len(exts)) + exts
    hs = b"\x01" + struct.pack(">I", len(body))[1:] + body
    return b"\x16\x03\x01" + struct.pack(">H", len(hs)) + hs

def query(qid):
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in NAME.split(b"."):
        q += bytes([len(label)]) + label
    return q + b"\0\0\x01\0\x01"

def answered(r, q):
    return len(r) >= 12 and r[:2] == q[:2] and r[3] & 0x0F == 0 and r[6:8] != b"\0\0"

def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

def timeouts(s, secs):
    # Kernel timeouts keep the socket blocking: no extra poll() per call, unlike settimeout.
    tv = struct.pack("ll", int(secs), int((secs % 1) * 1e6))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)

def udp(host, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((host, port))
    timeouts(s, 2)
    return s

def rate(s, window, secs):
    tail = query(0)[2:]
    pack = struct.Struct(">H").pack
    send, recv, now = s.send, s.recv, time.monotonic
    qid = random.randrange(65536)
    inflight = ok = bad = lost = 0
    end = now() + secs
    while now() < end:
        while inflight < window:
            qid = (qid + 1) & 0xFFFF
            send(pack(qid) + tail)
            inflight += 1
        try:
            r = recv(4096)
        except BlockingIOError:
            lost += inflight
            inflight = 0
            continue
        inflight = max(inflight - 1, 0)
        if len(r) >= 12 and r[3] & 0x0F == 0 and r[6:8] != b"\0\0":
            ok += 1
        else:
            bad += 1
    for _ in range(inflight):
        try:
            recv(4096)
        except BlockingIOError:
            break
    return ok, bad, lost

if mode == "bulk":
    warm, secs = float(args[0]), float(args[1])
    s = socket.create_connection((host, port))
    timeouts(s, 10)
    s.sendall(hello(b"BULK"))
    buf = memoryview(bytearray(1 << 20))
    recv, now = s.recv_into, time.monotonic
    end = now() + warm
    while now() < end:
        if not recv(buf):
            sys.exit("the server closed the stream during the warm-up")
    out.write("start\n"); out.flush()
    c0, t0 = cpu(), now()
    end, total = t0 + secs, 0
    while True:
        n = recv(buf)
        if not n:
            sys.exit("the server closed the stream")
        total += n
        if now() >= end:
            break
    t1 = now()
    out.write("end %d %.6f %.6f\n" % (total, t1 - t0, cpu() - c0)); out.flush()
    sys.stdin.readline()
elif mode == "ping":
    h = hello(b"PING")
    linger = struct.pack("ii", 1, 0)
    pc = time.perf_counter_ns
    while sys.stdin.readline():
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        timeouts(s, 10)
        t0 = pc()
        s.connect((host, port))
        s.sendall(h)
        b = s.recv(1)
        t1 = pc()
        s.close()
        if not b:
            sys.exit("the connection closed before the first byte")
        out.write("%d\n" % (t1 - t0)); out.flush()
elif mode == "dns":
    s = udp(host, port)
    qid = random.randrange(65536)
    pc = time.perf_counter_ns
    while sys.stdin.readline():
        qid = (qid + 1) & 0xFFFF
        q = query(qid)
        t0 = pc()
        s.send(q)
        try:
            r = s.recv(4096)
            while r[:2] != q[:2]:
                r = s.recv(4096)
        except BlockingIOError:
            out.write("lost\n"); out.flush()
            continue
        t1 = pc()
        if not answered(r, q):
            sys.exit("bad DNS answer %r" % r)
        out.write("%d\n" % (t1 - t0)); out.flush()
elif mode == "dnsrate":
    window, warm, secs = int(args[0]), float(args[1]), float(args[2])
    s = udp(host, port)
    timeouts(s, 0.5)
    rate(s, window, warm)
    out.write("start\n"); out.flush()
    c0, t0 = cpu(), time.monotonic()
    ok, bad, lost = rate(s, window, secs)
    t1 = time.monotonic()
    out.write("end %d %.6f %d %d %.6f\n" % (ok, t1 - t0, lost, bad, cpu() - c0)); out.flush()
    sys.stdin.readline()
elif mode == "check":
    words = []
    for step in args[0].split(","):
        if step == "denied":
            try:
                socket.create_connection((args[1], 9), timeout=5).close()
                words.append("denied:connected")
            except OSError as e:
                words.append("denied:" + errno.errorcode.get(e.errno or 0, type(e).__name__))
        elif step == "hello":
            s = socket.create_connection((host, port), timeout=5)
            s.sendall(hello(b"PING"))
            words.append("hello:" + ("data" if s.recv(1) else "closed"))
            s.close()
        elif step == "dns":
            s = udp(host, 53)
            q = query(random.randrange(65536))
            s.send(q)
            words.append("dns:" + ("ok" if answered(s.recv(4096), q) else "bad"))
    print(" ".join(words))
else:
    sys.exit("unknown mode " + mode)
"#;

/// The server in the namespace: reads the first bytes of a connection (a `ClientHello`; the
/// 4 bytes at offset 11, the start of its `random`, say what the client wants), then either
/// streams the blob with `sendfile` until the client goes away (`BULK`, on a thread of its
/// own) or answers one byte and closes (`PING`, inline: the latency clients take turns).
const SERVER: &str = r#"
import os, socket, struct, sys, threading, time
addr, port, life, blob = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
fd = os.open(blob, os.O_RDONLY)
size = os.fstat(fd).st_size
end = time.monotonic() + life
ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind((addr, port))
ls.listen(4096)
ls.settimeout(0.5)
print("ready", flush=True)

def stream(c):
    try:
        c.setblocking(True)
        # A client that stops reading without closing times the send out.
        c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 5, 0))
        while time.monotonic() < end:
            os.sendfile(c.fileno(), fd, 0, size)
    except OSError:
        pass
    finally:
        c.close()

while time.monotonic() < end:
    try:
        c, _ = ls.accept()
    except OSError:
        continue
    try:
        c.settimeout(5)
        head = b""
        while len(head) < 15:
            d = c.recv(4096)
            if not d:
                break
            head += d
        if head[11:15] == b"BULK":
            threading.Thread(target=stream, args=(c,), daemon=True).start()
            continue
        if len(head) >= 15:
            c.sendall(b"x")
    except OSError:
        pass
    c.close()
"#;

/// What stands between a sandboxed client and the server.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    /// `--allow-out <server address>`: an address rule, no proxy.
    Direct,
    /// `--allow-out bench.test`: the kernel redirects port 443 to the agent's proxy (splice).
    Proxy,
    /// `--allow-out uncached.test` (TTL 0): the proxy resolves the name for every connection.
    /// Set-up latency only (a bulk transfer resolves once).
    Uncached,
    /// As `Proxy`, with `SANDBOX_AGENT_PROXY_COPY=userspace` in the agent's environment
    /// (4 KiB tokio copy instead of `splice`).
    Userspace,
    /// `--allow-out 127.0.0.1` to nginx's stream proxy (`ssl_preread`) on the host, with the
    /// stream module's defaults (16 KiB `proxy_buffer_size`).
    Nginx,
    /// The same nginx with `proxy_buffer_size 256k`: fewer, larger reads and writes, so the
    /// comparison does not rest on a default that is easy to change.
    NginxBig,
}

const ROUTES: [Route; 6] = [
    Route::Direct,
    Route::Proxy,
    Route::Uncached,
    Route::Userspace,
    Route::Nginx,
    Route::NginxBig,
];
/// A per-route array.
type PerRoute<T> = [T; 6];

impl Route {
    fn label(self) -> &'static str {
        match self {
            Self::Direct => "direct (address rule)",
            Self::Proxy => "agent proxy, splice",
            Self::Uncached => "agent proxy, TTL 0 name",
            Self::Userspace => "agent proxy, userspace copy",
            Self::Nginx => "nginx stream + ssl_preread",
            Self::NginxBig => "nginx, proxy_buffer_size 256k",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Direct => 0,
            Self::Proxy => 1,
            Self::Uncached => 2,
            Self::Userspace => 3,
            Self::Nginx => 4,
            Self::NginxBig => 5,
        }
    }

    fn proxied_by_agent(self) -> bool {
        matches!(self, Self::Proxy | Self::Uncached | Self::Userspace)
    }

    /// The name in the client's SNI.
    fn sni(self) -> &'static str {
        if self == Self::Uncached {
            UNCACHED_NAME
        } else {
            NAME
        }
    }

    fn nginx(self) -> bool {
        matches!(self, Self::Nginx | Self::NginxBig)
    }
}

/// The resolver a sandbox's DNS goes to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum DnsRoute {
    /// No domain rule, an address rule for dnsmasq: port 53 is not redirected.
    Direct,
    /// `--allow-out bench.test`: every DNS packet goes to the agent's resolver.
    Agent,
}

struct Nginx {
    /// Loopback ports: default buffer, 256 KiB buffer.
    ports: (u16, u16),
    pgid: u32,
}

/// The servers and what the sandboxes need to reach them.
struct World<'a> {
    env: &'a BenchEnv,
    agent: &'a Path,
    server_pgid: u32,
    dnsmasq_pgid: u32,
    /// nginx, or why it is not measured.
    nginx: Result<Nginx, String>,
}

/// Runs the domain-rule section and prints its tables. `env` gets the servers it starts, so
/// they go with it.
pub fn run(env: &mut BenchEnv, agent: &Path) -> Result<()> {
    let started = Instant::now();
    progress("domain rules: servers (stream server, dnsmasq, nginx)")?;
    if !Path::new(DNSMASQ).is_file() {
        install(&["dnsmasq-base"])
            .context("the domain benchmarks need dnsmasq as the upstream resolver")?;
    }
    let server_pgid = start_server(env)?;
    let dnsmasq_pgid = start_dnsmasq(env)?;
    // nginx is a comparison, not the subject: without it the other routes are still measured.
    let nginx = ensure_nginx()
        .and_then(|()| start_nginx(env))
        .map_err(|e| format!("{e:#}"));
    if let Err(e) = &nginx {
        progress(&format!("nginx routes not measured: {e}"))?;
    }
    let world = World {
        env,
        agent,
        server_pgid,
        dnsmasq_pgid,
        nginx,
    };
    check_routes(&world)?;
    // Other work on the host skews every number here (2 CPUs): say how much there was.
    let before = machine_ticks();
    thread::sleep(Duration::from_secs(1));
    let background = busy_cpus(before, machine_ticks());
    let bulk = bench_bulk(&world)?;
    let ping = bench_ping(&world)?;
    let dns = bench_dns(&world)?;
    println!();
    report(&world, &bulk, &ping, &dns);
    println!(
        "  background: {background:.2} CPUs busy during 1 s with nothing of the bench running \
         (other work on the host competes with every route)"
    );
    println!(
        "  domain section took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Servers
// ---------------------------------------------------------------------------------------

/// `apt-get install` of Debian packages; an `apt-get update` first only if that fails (stale
/// lists), as `cargo xtask setup` would.
fn install(packages: &[&str]) -> Result<()> {
    progress(&format!("installing {}", packages.join(" ")))?;
    let apt = |args: &[&str]| -> Result<()> {
        let out = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output()
            .context("run apt-get")?;
        check(&out, &format!("apt-get {}", args.join(" ")))
    };
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend_from_slice(packages);
    if apt(&args).is_ok() {
        return Ok(());
    }
    apt(&["update", "-q"])?;
    apt(&args)
}

/// nginx with the stream module (Debian builds it as a dynamic module, in its own package).
pub(crate) fn ensure_nginx() -> Result<()> {
    let mut missing = Vec::new();
    if !Path::new(NGINX).is_file() {
        missing.push("nginx-light");
    }
    if !Path::new(NGINX_STREAM_MODULE).is_file() {
        missing.push("libnginx-mod-stream");
    }
    if !missing.is_empty() {
        install(&missing)?;
    }
    ensure!(
        Path::new(NGINX).is_file() && Path::new(NGINX_STREAM_MODULE).is_file(),
        "no {NGINX} with {NGINX_STREAM_MODULE} after installing {}",
        missing.join(" ")
    );
    Ok(())
}

/// Polls `ss` (in the namespace, or on the host) until something listens on `port`.
fn wait_listening(netns: Option<&str>, proto: &str, port: u16, what: &str) -> Result<()> {
    let filter = format!("sport = :{port}");
    let flags = format!("-Hl{proto}n");
    let mut args = Vec::new();
    if let Some(ns) = netns {
        args.extend(["-N", ns]);
    }
    args.extend([flags.as_str(), filter.as_str()]);
    for _ in 0..100 {
        interrupted()?;
        if !host("ss", &args)?.trim().is_empty() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(50));
    }
    bail!("{what} did not start listening on port {port} within 5 s")
}

fn start_server(env: &mut BenchEnv) -> Result<u32> {
    let blob = env.dir.join("blob");
    fs::write(&blob, vec![0u8; BLOB_BYTES]).with_context(|| format!("write {}", blob.display()))?;
    let mut child = env
        .in_netns(
            PYTHON3,
            &[
                "-c",
                SERVER,
                &env.ns_addr,
                &WEB_PORT.to_string(),
                &SERVER_LIFETIME_SECS.to_string(),
            ],
        )
        .arg(&blob)
        .stdout(Stdio::piped())
        .spawn()
        .context("start the stream server")?;
    let stdout = child.stdout.take();
    let pgid = child.id();
    env.servers.push(child);
    let mut line = String::new();
    if let Some(out) = stdout {
        BufReader::new(out).read_line(&mut line)?;
    }
    ensure!(
        line.trim() == "ready",
        "the stream server did not start on {}:{WEB_PORT}",
        env.ns_addr
    );
    Ok(pgid)
}

/// dnsmasq in the namespace as the upstream resolver, answering `bench.test` from its own
/// configuration (no upstream of its own, no logging per query).
fn start_dnsmasq(env: &mut BenchEnv) -> Result<u32> {
    let log = env.dir.join("dnsmasq.log");
    let child = env
        .in_netns(
            DNSMASQ,
            &[
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--user=root",
                "--group=root",
                "--pid-file=",
                &format!("--port={DNS_PORT}"),
                &format!("--listen-address={}", env.ns_addr),
                &format!("--host-record={NAME},{},{NAME_TTL_SECS}", env.ns_addr),
                &format!("--host-record={UNCACHED_NAME},{}", env.ns_addr),
                &format!("--log-facility={}", log.display()),
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start dnsmasq")?;
    let pgid = child.id();
    env.servers.push(child);
    wait_listening(Some(&env.netns), "u", DNS_PORT, "dnsmasq").with_context(|| {
        format!(
            "dnsmasq's log: {}",
            fs::read_to_string(&log).unwrap_or_default().trim()
        )
    })?;
    Ok(pgid)
}

/// nginx on the host: `stream { server { listen 127.0.0.1:PORT; ssl_preread on; proxy_pass
/// <server>:443; } }`, as many workers as CPUs (the agent's runtime has two threads), the
/// stream module's defaults otherwise; a second server the same but with a 256 KiB buffer.
fn start_nginx(env: &mut BenchEnv) -> Result<Nginx> {
    // Ports the kernel just handed out are very likely still free a moment later.
    let free_port = || -> Result<(TcpListener, u16)> {
        let l = TcpListener::bind(("127.0.0.1", 0)).context("find a free loopback port")?;
        let port = l.local_addr().context("find a free loopback port")?.port();
        Ok((l, port))
    };
    let ((first, port), (second, big_port)) = (free_port()?, free_port()?);
    drop((first, second));
    let dir = env.dir.display().to_string();
    let conf = env.dir.join("nginx.conf");
    let error_log = env.dir.join("nginx-error.log");
    fs::write(
        &conf,
        format!(
            "load_module {NGINX_STREAM_MODULE};\n\
             daemon off;\n\
             worker_processes auto;\n\
             pid {dir}/nginx.pid;\n\
             error_log {dir}/nginx-error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             stream {{\n\
             \x20   server {{\n\
             \x20       listen 127.0.0.1:{port};\n\
             \x20       ssl_preread on;\n\
             \x20       proxy_pass {addr}:{WEB_PORT};\n\
             \x20   }}\n\
             \x20   server {{\n\
             \x20       listen 127.0.0.1:{big_port};\n\
             \x20       ssl_preread on;\n\
             \x20       proxy_buffer_size 256k;\n\
             \x20       proxy_pass {addr}:{WEB_PORT};\n\
             \x20   }}\n\
             }}\n",
            addr = env.ns_addr
        ),
    )
    .with_context(|| format!("write {}", conf.display()))?;
    let conf_arg = conf.display().to_string();
    let log_arg = error_log.display().to_string();
    let life = SERVER_LIFETIME_SECS.to_string();
    let child = Command::new("timeout")
        .args([
            life.as_str(),
            NGINX,
            "-e",
            &log_arg,
            "-p",
            &dir,
            "-c",
            &conf_arg,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .context("start nginx")?;
    let pgid = child.id();
    env.servers.push(child);
    for p in [port, big_port] {
        wait_listening(None, "t", p, "nginx").with_context(|| {
            format!(
                "nginx's error log: {}",
                fs::read_to_string(&error_log).unwrap_or_default().trim()
            )
        })?;
    }
    Ok(Nginx {
        ports: (port, big_port),
        pgid,
    })
}

// ---------------------------------------------------------------------------------------
// Sandboxes
// ---------------------------------------------------------------------------------------

impl World<'_> {
    /// Where the client connects on this route.
    fn target(&self, route: Route) -> Option<(String, u16)> {
        match route {
            Route::Nginx | Route::NginxBig => self.nginx.as_ref().ok().map(|n| {
                let port = if route == Route::Nginx {
                    n.ports.0
                } else {
                    n.ports.1
                };
                ("127.0.0.1".to_owned(), port)
            }),
            _ => Some((self.env.ns_addr.clone(), WEB_PORT)),
        }
    }

    fn routes(&self) -> Vec<Route> {
        ROUTES
            .into_iter()
            .filter(|r| self.target(*r).is_some())
            .collect()
    }

    /// `sandbox-agent run` with the route's policy, up to the `--`.
    fn sandbox(&self, route: Route, flow_log: Option<&Path>) -> Command {
        let mut cmd = self.env.agent(self.agent);
        // The bench's own environment must not pick the copy mode of the splice route.
        cmd.env_remove(COPY_VAR);
        cmd.args([
            "run",
            "--network",
            "allowlist",
            "--timeout",
            SANDBOX_TIMEOUT,
        ]);
        match route {
            Route::Direct => {
                cmd.args(["--allow-out", &self.env.ns_addr]);
            }
            Route::Proxy | Route::Uncached | Route::Userspace => {
                cmd.args([
                    "--allow-out",
                    route.sni(),
                    "--upstream-dns",
                    &self.env.ns_addr,
                ]);
                if route == Route::Userspace {
                    cmd.env(COPY_VAR, "userspace");
                }
            }
            Route::Nginx | Route::NginxBig => {
                cmd.args(["--allow-out", "127.0.0.1"]);
            }
        }
        if let Some(log) = flow_log {
            cmd.arg("--flow-log").arg(log);
        }
        cmd
    }

    /// A sandboxed client of [`CLIENT`] on `route`: `MODE HOST PORT NAME ARGS...`.
    fn client(&self, route: Route, mode: &str, args: &[&str]) -> Result<Command> {
        let (host, port) = self
            .target(route)
            .context("the route has no server (nginx is not running)")?;
        Ok(self.python_client(route, mode, &host, port, route.sni(), args))
    }

    fn dns_client(&self, route: DnsRoute, mode: &str, args: &[&str]) -> Command {
        let route = match route {
            DnsRoute::Direct => Route::Direct,
            DnsRoute::Agent => Route::Proxy,
        };
        self.python_client(route, mode, &self.env.ns_addr, DNS_PORT, NAME, args)
    }

    /// `sandbox-agent run ... -- python3 -c CLIENT MODE HOST PORT NAME ARGS...` on `route`.
    fn python_client(
        &self,
        route: Route,
        mode: &str,
        host: &str,
        port: u16,
        name: &str,
        args: &[&str],
    ) -> Command {
        let mut cmd = self.sandbox(route, None);
        cmd.args([
            "--",
            PYTHON3,
            "-c",
            CLIENT,
            mode,
            host,
            &port.to_string(),
            name,
        ])
        .args(args);
        cmd
    }

    /// UDP datagrams received in the namespace so far (`Udp: InDatagrams`): dnsmasq is the
    /// only UDP server there, so this counts upstream DNS queries.
    fn ns_udp_in(&self) -> Option<u64> {
        let snmp = host(
            "ip",
            &["netns", "exec", &self.env.netns, "cat", "/proc/net/snmp"],
        )
        .ok()?;
        let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
        let (names, values) = (udp.next()?, udp.next()?);
        let i = names.split_whitespace().position(|n| n == "InDatagrams")?;
        values.split_whitespace().nth(i)?.parse().ok()
    }
}

/// Before measuring: each route works, the sandboxes are enforced (a port no rule allows gets
/// EPERM), and the proxied routes really went through the agent (its flow log shows the
/// proxy's and the resolver's decisions for the route's name).
fn check_routes(w: &World) -> Result<()> {
    progress("domain rules: checking every route")?;
    for route in w.routes() {
        let (host, port) = w.target(route).context("route without a target")?;
        let (steps, expected) = match route {
            // The address rule allows every port of the server: no EPERM to probe for.
            Route::Direct => ("hello,dns", "hello:data dns:ok"),
            Route::Proxy => ("denied,hello,dns", "denied:EPERM hello:data dns:ok"),
            Route::Uncached | Route::Userspace | Route::Nginx | Route::NginxBig => {
                ("denied,hello", "denied:EPERM hello:data")
            }
        };
        let log = w.env.dir.join("flows-check.jsonl");
        let _ = fs::remove_file(&log);
        let out = w
            .sandbox(route, route.proxied_by_agent().then_some(log.as_path()))
            .args([
                "--",
                PYTHON3,
                "-c",
                CLIENT,
                "check",
                &host,
                &port.to_string(),
            ])
            .args([route.sni(), steps, &w.env.ns_addr])
            .output()
            .context("run the check client")?;
        check(
            &out,
            &format!("the check client on route {}", route.label()),
        )?;
        let got = String::from_utf8_lossy(&out.stdout);
        ensure!(
            got.trim() == expected,
            "route {}: expected `{expected}`, got `{}` (stderr: {})",
            route.label(),
            got.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        if route.proxied_by_agent() {
            let flows = fs::read_to_string(&log).unwrap_or_default();
            let saw = |source: &str| {
                flows.lines().any(|l| {
                    l.contains(&format!("\"source\":\"{source}\""))
                        && l.contains(&format!("\"name\":\"{}\"", route.sni()))
                        && l.contains("\"verdict\":\"allowed\"")
                })
            };
            ensure!(
                saw("proxy") && (route != Route::Proxy || saw("dns")),
                "route {}: the agent's flow log does not show the connection going through its \
                 proxy and resolver:\n{}",
                route.label(),
                flows.trim()
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// CPU accounting
// ---------------------------------------------------------------------------------------

/// Processes whose process group is `pgid` (a server started with `process_group(0)`).
fn group_pids(pgid: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    // Fields after the command name: state, ppid, pgrp.
                    s.rsplit_once(')')?
                        .1
                        .split_whitespace()
                        .nth(2)?
                        .parse::<u32>()
                        .ok()
                })
                == Some(pgid)
        })
        .collect()
}

/// On-CPU time of all threads of `pids`, ns (`/proc/<pid>/task/<tid>/schedstat`).
fn cpu_ns(pids: &[u32]) -> u64 {
    let mut total = 0;
    for pid in pids {
        let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.filter_map(Result::ok) {
            total += fs::read_to_string(task.path().join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total
}

/// Busy and total time of all CPUs so far, in clock ticks (`/proc/stat`).
fn machine_ticks() -> (u64, u64) {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let values: Vec<u64> = stat
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("cpu "))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let total: u64 = values.iter().sum();
    // idle and iowait are fields 4 and 5.
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// CPUs busy between two [`machine_ticks`] readings (1.0 = one CPU all the time).
fn busy_cpus(a: (u64, u64), b: (u64, u64)) -> f64 {
    let (busy, total) = (b.0.saturating_sub(a.0), b.1.saturating_sub(a.1));
    let ncpu = thread::available_parallelism().map_or(1, std::num::NonZero::get);
    if total == 0 {
        f64::NAN
    } else {
        as_f64(busy) / as_f64(total) * as_f64(ncpu as u64)
    }
}

#[expect(
    clippy::cast_precision_loss,
    reason = "counts and ns are far below 2^52"
)]
fn as_f64(v: u64) -> f64 {
    v as f64
}

/// One snapshot of the CPU time of the parties of a measurement.
struct CpuSnapshot {
    at: Instant,
    proxy_ns: u64,
    server_ns: u64,
    machine: (u64, u64),
}

impl CpuSnapshot {
    fn take(proxy: &[u32], server: &[u32]) -> Self {
        Self {
            at: Instant::now(),
            proxy_ns: cpu_ns(proxy),
            server_ns: cpu_ns(server),
            machine: machine_ticks(),
        }
    }
}

/// What a windowed client run (`bulk`, `dnsrate`) reported, with the CPU use of the others in
/// the same window, each in CPUs (1.0 = one CPU busy all the time).
struct Window {
    /// The client's `end` line, after the word.
    fields: Vec<String>,
    proxy_cpus: Option<f64>,
    server_cpus: f64,
    /// All CPUs of the machine, busy fraction summed over CPUs.
    machine_cpus: f64,
}

impl Window {
    fn field(&self, i: usize) -> Result<f64> {
        let text = self
            .fields
            .get(i)
            .with_context(|| format!("the client's end line has no field {i}"))?;
        text.parse()
            .with_context(|| format!("bad field {text:?} from the client"))
    }
}

/// A sandbox that the bench talks to; on drop its stdin closes (the client ends) and, should
/// it still run, the agent gets SIGTERM (it kills the workload and cleans up) before the wait.
struct Running {
    child: Child,
    input: Option<ChildStdin>,
    output: BufReader<ChildStdout>,
}

impl Running {
    fn spawn(mut cmd: Command) -> Result<Self> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("start a sandboxed client")?;
        let (Some(input), Some(output)) = (child.stdin.take(), child.stdout.take()) else {
            bail!("no pipes to the sandboxed client");
        };
        Ok(Self {
            child,
            input: Some(input),
            output: BufReader::new(output),
        })
    }

    /// The next line; on end of output, fails with the client's stderr.
    fn line(&mut self) -> Result<String> {
        let mut line = String::new();
        if self.output.read_line(&mut line)? == 0 {
            // A Ctrl-C reaches the clients too: report that rather than their failure.
            interrupted()?;
            self.input = None;
            let mut stderr = String::new();
            if let Some(mut e) = self.child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
            }
            let status = self.child.wait()?;
            bail!("the sandboxed client stopped ({status}): {}", stderr.trim());
        }
        Ok(line.trim().to_owned())
    }

    fn finish(mut self) -> Result<()> {
        if let Some(mut input) = self.input.take() {
            let _ = input.write_all(b"\n");
        }
        let status = self.child.wait()?;
        interrupted()?;
        ensure!(
            status.success(),
            "the sandboxed client exited with {status}"
        );
        Ok(())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.input = None;
        if matches!(self.child.try_wait(), Ok(None)) {
            thread::sleep(Duration::from_millis(200));
            if matches!(self.child.try_wait(), Ok(None))
                && let Ok(pid) = libc::pid_t::try_from(self.child.id())
            {
                // SAFETY: signals our own child, which has not been reaped yet.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
        let _ = self.child.wait();
    }
}

/// Runs a windowed client: snapshots CPU time at its `start` and `end` lines.
/// `proxy_group`: the proxy's process group if it is a server (nginx); `agent_is_proxy`: the
/// agent itself (the spawned process) is the proxy.
fn windowed(
    cmd: Command,
    agent_is_proxy: bool,
    proxy_group: Option<u32>,
    server_group: u32,
) -> Result<Window> {
    let server = group_pids(server_group);
    let mut proxy = proxy_group.map(group_pids).unwrap_or_default();
    let mut client = Running::spawn(cmd)?;
    if agent_is_proxy {
        proxy.push(client.child.id());
    }
    let line = client.line()?;
    ensure!(line == "start", "unexpected line {line:?} from the client");
    let a = CpuSnapshot::take(&proxy, &server);
    let line = client.line()?;
    let b = CpuSnapshot::take(&proxy, &server);
    let fields: Vec<String> = match line.strip_prefix("end ") {
        Some(rest) => rest.split_whitespace().map(str::to_owned).collect(),
        None => bail!("unexpected line {line:?} from the client"),
    };
    client.finish()?;
    let wall = (b.at - a.at).as_secs_f64();
    let cpus = |ns: u64| as_f64(ns) / 1e9 / wall;
    Ok(Window {
        fields,
        proxy_cpus: (!proxy.is_empty()).then(|| cpus(b.proxy_ns.saturating_sub(a.proxy_ns))),
        server_cpus: cpus(b.server_ns.saturating_sub(a.server_ns)),
        machine_cpus: busy_cpus(a.machine, b.machine),
    })
}

// ---------------------------------------------------------------------------------------
// 1. Bulk throughput
// ---------------------------------------------------------------------------------------

struct BulkRun {
    bps: f64,
    bytes: f64,
    secs: f64,
    /// CPUs busy in the window (1.0 = one CPU all the time).
    client_cpus: f64,
    proxy_cpus: Option<f64>,
    server_cpus: f64,
    machine_cpus: f64,
}

/// Per route (indexed by [`Route::index`]), the runs in round order.
type Bulk = PerRoute<Vec<BulkRun>>;

fn bench_bulk(w: &World) -> Result<Bulk> {
    // The TTL-0 route differs from the proxy route only at connection set-up.
    let routes: Vec<Route> = w
        .routes()
        .into_iter()
        .filter(|r| *r != Route::Uncached)
        .collect();
    let mut result: Bulk = Default::default();
    for round in 0..BULK_ROUNDS {
        // A different route goes first every round, so drift in machine load spreads out.
        for k in 0..routes.len() {
            let route = routes[(round + k) % routes.len()];
            progress(&format!(
                "domain bulk round {}/{BULK_ROUNDS}, {}",
                round + 1,
                route.label()
            ))?;
            let cmd = w.client(route, "bulk", &[BULK_WARMUP_SECS, BULK_SECS])?;
            let nginx = match (&w.nginx, route) {
                (Ok(n), r) if r.nginx() => Some(n.pgid),
                _ => None,
            };
            let win = windowed(cmd, route.proxied_by_agent(), nginx, w.server_pgid)
                .with_context(|| format!("bulk transfer on route {}", route.label()))?;
            let (bytes, secs, client_cpu) = (win.field(0)?, win.field(1)?, win.field(2)?);
            result[route.index()].push(BulkRun {
                bps: bytes * 8.0 / secs,
                bytes,
                secs,
                client_cpus: client_cpu / secs,
                proxy_cpus: win.proxy_cpus,
                server_cpus: win.server_cpus,
                machine_cpus: win.machine_cpus,
            });
        }
    }
    Ok(result)
}

// ---------------------------------------------------------------------------------------
// 2. Connection set-up latency
// ---------------------------------------------------------------------------------------

struct Ping {
    /// Per route, µs; the i-th sample of each route comes from the same turn.
    samples: PerRoute<Vec<f64>>,
    /// Per route, CPU time of its proxy (the agent, or nginx's processes) per measured
    /// connection, µs.
    proxy_cpu_us: PerRoute<Option<f64>>,
    /// Queries dnsmasq received during the measured turns (only the TTL-0 route should ask).
    upstream_queries: Option<u64>,
}

/// One long-lived client per route; they take turns, one connection each, in an order that
/// rotates every turn (as `bench::bench_connect` does).
fn bench_ping(w: &World) -> Result<Ping> {
    let routes = w.routes();
    progress(&format!(
        "domain connection latency, {PING_TURNS} turns of {} clients",
        routes.len()
    ))?;
    let mut clients = Vec::with_capacity(routes.len());
    for &route in &routes {
        clients.push(Stepper::spawn(w.client(route, "ping", &[])?)?);
    }
    // Whose CPU time is the proxy's on each route. One nginx serves both nginx routes: its
    // time is counted once, under `Route::Nginx`, and shared out below.
    let proxies: Vec<Vec<u32>> = routes
        .iter()
        .zip(&clients)
        .map(|(route, client)| match (route, &w.nginx) {
            (Route::Proxy | Route::Uncached | Route::Userspace, _) => vec![client.pid()],
            (Route::Nginx, Ok(n)) => group_pids(n.pgid),
            _ => Vec::new(),
        })
        .collect();
    let nginx_routes = routes.iter().filter(|r| r.nginx()).count();
    let mut cpu_start = Vec::new();
    let mut udp_start = None;
    let mut result = Ping {
        samples: Default::default(),
        proxy_cpu_us: Default::default(),
        upstream_queries: None,
    };
    for turn in 0..PING_WARMUP + PING_TURNS {
        interrupted()?;
        if turn == PING_WARMUP {
            cpu_start = proxies.iter().map(|p| cpu_ns(p)).collect();
            udp_start = w.ns_udp_in();
        }
        for k in 0..routes.len() {
            let j = (turn + k) % routes.len();
            let line = clients[j]
                .step_line()
                .with_context(|| format!("latency client on route {}", routes[j].label()))?;
            let ns: u64 = line
                .parse()
                .with_context(|| format!("bad output {line:?} from the latency client"))?;
            if turn >= PING_WARMUP {
                result.samples[routes[j].index()].push(as_f64(ns) / 1e3);
            }
        }
    }
    for (i, route) in routes.iter().enumerate() {
        if !proxies[i].is_empty() {
            let used = cpu_ns(&proxies[i]).saturating_sub(cpu_start[i]);
            let connections = PING_TURNS * if route.nginx() { nginx_routes } else { 1 };
            result.proxy_cpu_us[route.index()] =
                Some(as_f64(used) / 1e3 / as_f64(connections as u64));
        }
    }
    result.proxy_cpu_us[Route::NginxBig.index()] = result.proxy_cpu_us[Route::Nginx.index()];
    result.upstream_queries = udp_start
        .zip(w.ns_udp_in())
        .map(|(a, b)| b.saturating_sub(a));
    for c in clients {
        c.finish()?;
    }
    Ok(result)
}

// ---------------------------------------------------------------------------------------
// 3. DNS
// ---------------------------------------------------------------------------------------

struct DnsRate {
    qps: f64,
    lost: f64,
    bad: f64,
    client_cpus: f64,
    resolver_cpus: Option<f64>,
    dnsmasq_cpus: f64,
    machine_cpus: f64,
}

struct Dns {
    /// µs, paired by turn: (direct, agent).
    latency: (Vec<f64>, Vec<f64>),
    /// The agent's CPU time per query of the latency test, µs.
    agent_cpu_us: f64,
    lost: (usize, usize),
    rates: (Vec<DnsRate>, Vec<DnsRate>),
}

fn bench_dns(world: &World) -> Result<Dns> {
    progress(&format!(
        "domain DNS latency, {DNS_TURNS} turns of 2 clients"
    ))?;
    let mut direct = Stepper::spawn(world.dns_client(DnsRoute::Direct, "dns", &[]))?;
    let mut agent = Stepper::spawn(world.dns_client(DnsRoute::Agent, "dns", &[]))?;
    let agent_pid = [agent.pid()];
    let mut cpu_start = 0;
    let mut dns = Dns {
        latency: (Vec::new(), Vec::new()),
        agent_cpu_us: f64::NAN,
        lost: (0, 0),
        rates: (Vec::new(), Vec::new()),
    };
    for turn in 0..DNS_WARMUP + DNS_TURNS {
        interrupted()?;
        if turn == DNS_WARMUP {
            cpu_start = cpu_ns(&agent_pid);
        }
        let (first, second) = if turn % 2 == 0 {
            (&mut direct, &mut agent)
        } else {
            (&mut agent, &mut direct)
        };
        let one = first.step_line()?;
        let two = second.step_line()?;
        let (to_dnsmasq, to_agent) = if turn % 2 == 0 {
            (one, two)
        } else {
            (two, one)
        };
        if turn < DNS_WARMUP {
            continue;
        }
        // A lost query drops the turn from both lists, so they stay paired.
        if to_dnsmasq == "lost" || to_agent == "lost" {
            dns.lost.0 += usize::from(to_dnsmasq == "lost");
            dns.lost.1 += usize::from(to_agent == "lost");
            continue;
        }
        let us = |s: &str| -> Result<f64> {
            let ns: u64 = s
                .parse()
                .with_context(|| format!("bad output {s:?} from the DNS client"))?;
            Ok(as_f64(ns) / 1e3)
        };
        dns.latency.0.push(us(&to_dnsmasq)?);
        dns.latency.1.push(us(&to_agent)?);
    }
    dns.agent_cpu_us =
        as_f64(cpu_ns(&agent_pid).saturating_sub(cpu_start)) / 1e3 / as_f64(DNS_TURNS as u64);
    direct.finish()?;
    agent.finish()?;

    for round in 0..DNS_RATE_ROUNDS {
        for route in if round % 2 == 0 {
            [DnsRoute::Direct, DnsRoute::Agent]
        } else {
            [DnsRoute::Agent, DnsRoute::Direct]
        } {
            progress(&format!(
                "domain DNS throughput round {}/{DNS_RATE_ROUNDS}, {}",
                round + 1,
                if route == DnsRoute::Agent {
                    "through the agent"
                } else {
                    "direct to dnsmasq"
                }
            ))?;
            let cmd = world.dns_client(
                route,
                "dnsrate",
                &[DNS_WINDOW, DNS_RATE_WARMUP_SECS, DNS_RATE_SECS],
            );
            let win = windowed(cmd, route == DnsRoute::Agent, None, world.dnsmasq_pgid)
                .context("DNS throughput client")?;
            let secs = win.field(1)?;
            let rate = DnsRate {
                qps: win.field(0)? / secs,
                lost: win.field(2)?,
                bad: win.field(3)?,
                client_cpus: win.field(4)? / secs,
                resolver_cpus: win.proxy_cpus,
                dnsmasq_cpus: win.server_cpus,
                machine_cpus: win.machine_cpus,
            };
            if route == DnsRoute::Agent {
                dns.rates.1.push(rate);
            } else {
                dns.rates.0.push(rate);
            }
        }
    }
    Ok(dns)
}

// ---------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------

/// `median [min–max]` of `values` scaled by `scale`.
fn spread(values: &[f64], scale: f64, decimals: usize) -> String {
    if values.is_empty() {
        return "-".into();
    }
    let min = values.iter().copied().fold(f64::INFINITY, f64::min) * scale;
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max) * scale;
    format!(
        "{:.decimals$} [{min:.decimals$}-{max:.decimals$}]",
        median(values) * scale
    )
}

/// Median of per-run values, or `-` when there are none.
fn med(values: &[f64], scale: f64, decimals: usize) -> String {
    if values.is_empty() {
        "-".into()
    } else {
        format!("{:.decimals$}", median(values) * scale)
    }
}

/// Median of the per-sample differences `b - a` (samples paired by turn).
fn paired_diff(a: &[f64], b: &[f64]) -> f64 {
    median(&a.iter().zip(b).map(|(x, y)| y - x).collect::<Vec<_>>())
}

/// Median of the per-round ratios `b / a` (runs paired by round).
fn paired_ratio(a: &[BulkRun], b: &[BulkRun]) -> f64 {
    median(
        &a.iter()
            .zip(b)
            .map(|(x, y)| y.bps / x.bps)
            .collect::<Vec<_>>(),
    )
}

fn verdict(met: bool) -> &'static str {
    if met { "yes" } else { "NO" }
}

/// A ratio row: `measured / baseline`, the difference, and the target with whether it is met.
fn ratio_row(
    metric: &str,
    baseline: f64,
    measured: f64,
    unit: &str,
    decimals: usize,
    target: Option<(&str, bool)>,
) -> Row {
    let ok = baseline.is_finite() && measured.is_finite();
    Row {
        metric: metric.into(),
        baseline: format!("{baseline:.decimals$}"),
        sandboxed: format!("{measured:.decimals$}"),
        ratio: if ok {
            format!("{:.3}", measured / baseline)
        } else {
            "-".into()
        },
        added: format!("{:+.decimals$} {unit}", measured - baseline),
        target: match target {
            Some((text, met)) if ok => format!("{text}: {}", verdict(met)),
            Some((text, _)) => format!("{text}: not measured"),
            None => "-".into(),
        },
    }
}

fn missing_row(metric: &str, why: &str) -> Row {
    Row {
        metric: metric.into(),
        baseline: "-".into(),
        sandboxed: "-".into(),
        ratio: "-".into(),
        added: "-".into(),
        target: format!("not measured: {why}"),
    }
}

#[expect(
    clippy::too_many_lines,
    reason = "one report, printed top to bottom; splitting it would scatter the layout"
)]
fn report(w: &World, bulk: &Bulk, ping: &Ping, dns: &Dns) {
    let routes = w.routes();
    println!(
        "domain rules: client in a sandbox <- server {}:{WEB_PORT} in the bench namespace \
         (upstream DNS: dnsmasq at {}:{DNS_PORT}, {NAME} -> {})",
        w.env.ns_addr, w.env.ns_addr, w.env.ns_addr
    );
    let header = [
        "route",
        "bulk Gbit/s, median [min-max]",
        "client CPU",
        "proxy CPU",
        "server CPU",
        "machine CPU",
        "proxy CPU ms/GiB",
        "setup p50 us",
        "setup p99 us",
        "proxy CPU us/conn",
    ];
    let rows: Vec<Vec<String>> = routes
        .iter()
        .map(|&r| {
            let runs = &bulk[r.index()];
            let pick = |f: fn(&BulkRun) -> f64| runs.iter().map(f).collect::<Vec<_>>();
            let proxy: Vec<f64> = runs.iter().filter_map(|b| b.proxy_cpus).collect();
            // CPU time per GiB moved, per run: CPUs busy x seconds / GiB.
            let per_gib: Vec<f64> = runs
                .iter()
                .filter_map(|b| {
                    b.proxy_cpus
                        .map(|c| c * b.secs * 1e3 / (b.bytes / f64::from(1u32 << 30)))
                })
                .collect();
            let lat = &ping.samples[r.index()];
            vec![
                r.label().to_owned(),
                spread(&pick(|b| b.bps), 1e-9, 2),
                med(&pick(|b| b.client_cpus), 1.0, 2),
                med(&proxy, 1.0, 2),
                med(&pick(|b| b.server_cpus), 1.0, 2),
                med(&pick(|b| b.machine_cpus), 1.0, 2),
                med(&per_gib, 1.0, 0),
                med(lat, 1.0, 1),
                if lat.is_empty() {
                    "-".into()
                } else {
                    format!("{:.1}", percentile(lat, 99.0))
                },
                ping.proxy_cpu_us[r.index()].map_or("-".into(), |c| format!("{c:.1}")),
            ]
        })
        .collect();
    print_grid(&header, &rows, &[0]);
    if let Err(e) = &w.nginx {
        println!("  nginx: not measured ({e})");
    }

    let gbps = |r: Route| {
        let v: Vec<f64> = bulk[r.index()].iter().map(|b| b.bps / 1e9).collect();
        if v.is_empty() { f64::NAN } else { median(&v) }
    };
    let p = |r: Route, q: f64| {
        let v = &ping.samples[r.index()];
        if v.is_empty() {
            f64::NAN
        } else {
            percentile(v, q)
        }
    };
    let (direct, proxy, user, nginx, nginx_big) = (
        gbps(Route::Direct),
        gbps(Route::Proxy),
        gbps(Route::Userspace),
        gbps(Route::Nginx),
        gbps(Route::NginxBig),
    );
    let nginx_why = "nginx is not running (see above)";
    let mut table = vec![
        ratio_row(
            "bulk Gbit/s: proxy (splice) vs direct",
            direct,
            proxy,
            "Gbit/s",
            2,
            Some(("ratio >= 0.90", proxy / direct >= 0.90)),
        ),
        if nginx.is_finite() {
            ratio_row(
                "bulk Gbit/s: proxy (splice) vs nginx",
                nginx,
                proxy,
                "Gbit/s",
                2,
                Some(("ratio >= 1.5", proxy / nginx >= 1.5)),
            )
        } else {
            missing_row("bulk Gbit/s: proxy (splice) vs nginx", nginx_why)
        },
        if nginx_big.is_finite() {
            ratio_row(
                "bulk Gbit/s: proxy (splice) vs nginx 256k",
                nginx_big,
                proxy,
                "Gbit/s",
                2,
                None,
            )
        } else {
            missing_row("bulk Gbit/s: proxy (splice) vs nginx 256k", nginx_why)
        },
        ratio_row(
            "bulk Gbit/s: splice vs userspace copy",
            user,
            proxy,
            "Gbit/s",
            2,
            None,
        ),
    ];
    let (d50, d99) = (p(Route::Direct, 50.0), p(Route::Direct, 99.0));
    for (route, name) in [
        (Route::Proxy, "proxy (splice)"),
        (Route::Uncached, "proxy, TTL 0 name"),
        (Route::Userspace, "proxy (userspace)"),
        (Route::Nginx, "nginx"),
    ] {
        let v50 = p(route, 50.0);
        if !v50.is_finite() {
            table.push(missing_row(
                &format!("setup p50 us: {name} vs direct"),
                nginx_why,
            ));
            continue;
        }
        let target = (route == Route::Proxy).then_some(("added < 100 us", v50 - d50 < 100.0));
        table.push(ratio_row(
            &format!("setup p50 us: {name} vs direct"),
            d50,
            v50,
            "us",
            1,
            target,
        ));
        if route == Route::Proxy {
            table.push(ratio_row(
                "setup p99 us: proxy (splice) vs direct",
                d99,
                p(route, 99.0),
                "us",
                1,
                None,
            ));
        }
    }
    let (dl, al) = &dns.latency;
    let (dns_direct_p50, dns_agent_p50) = (percentile(dl, 50.0), percentile(al, 50.0));
    table.push(ratio_row(
        "DNS p50 us: agent resolver vs direct",
        dns_direct_p50,
        dns_agent_p50,
        "us",
        1,
        Some(("added < 100 us", dns_agent_p50 - dns_direct_p50 < 100.0)),
    ));
    table.push(ratio_row(
        "DNS p99 us: agent resolver vs direct",
        percentile(dl, 99.0),
        percentile(al, 99.0),
        "us",
        1,
        None,
    ));
    let qps = |v: &[DnsRate]| median(&v.iter().map(|r| r.qps).collect::<Vec<_>>());
    table.push(ratio_row(
        "DNS queries/s: agent resolver vs direct",
        qps(&dns.rates.0),
        qps(&dns.rates.1),
        "q/s",
        0,
        None,
    ));
    println!();
    let cells: Vec<Vec<String>> = table
        .into_iter()
        .map(|r| {
            vec![
                r.metric,
                r.baseline,
                r.sandboxed,
                r.ratio,
                r.added,
                r.target,
            ]
        })
        .collect();
    print_grid(
        &[
            "metric",
            "baseline",
            "measured",
            "ratio",
            "added",
            "target: met?",
        ],
        &cells,
        &[0, 5],
    );

    println!();
    println!("notes (informational; the bench never fails on a number):");
    println!(
        "  bulk: one connection per run, {BULK_WARMUP_SECS} s unmeasured then {BULK_SECS} s measured, \
         {BULK_ROUNDS} rounds with the route order rotating; client = python recv_into a 1 MiB \
         buffer, server = python sendfile; CPU columns are CPUs busy during the window (1.00 = \
         one CPU), from the client's getrusage and /proc/<pid>/task/*/schedstat of the agent, \
         nginx (master + workers) and the server; machine CPU = all CPUs from /proc/stat, out of {}",
        thread::available_parallelism().map_or(0, std::num::NonZero::get)
    );
    let per_round = |r: Route| {
        bulk[r.index()]
            .iter()
            .map(|b| format!("{:.2}", b.bps / 1e9))
            .collect::<Vec<_>>()
            .join(" ")
    };
    for &r in routes.iter().filter(|r| !bulk[r.index()].is_empty()) {
        println!("    {:<30} runs (Gbit/s): {}", r.label(), per_round(r));
    }
    let d = &bulk[Route::Direct.index()];
    let mut paired = format!(
        "    median of per-round ratios: proxy/direct {:.3}, splice/userspace {:.3}",
        paired_ratio(d, &bulk[Route::Proxy.index()]),
        paired_ratio(&bulk[Route::Userspace.index()], &bulk[Route::Proxy.index()])
    );
    for (route, name) in [(Route::Nginx, "nginx"), (Route::NginxBig, "nginx 256k")] {
        if !bulk[route.index()].is_empty() {
            let _ = std::fmt::Write::write_fmt(
                &mut paired,
                format_args!(
                    ", proxy/{name} {:.3}",
                    paired_ratio(&bulk[route.index()], &bulk[Route::Proxy.index()])
                ),
            );
        }
    }
    println!("{paired}");
    println!(
        "  connection set-up: connect + ClientHello (SNI {NAME}, TTL {NAME_TTL_SECS} s; \
         {UNCACHED_NAME}, TTL 0, on its route) + first byte back, python perf_counter_ns, {} turns \
         after {PING_WARMUP} warm-up turns, one connection per route per turn in rotating order; \
         the server answers inline; proxy CPU per connection: the agent's, or nginx's shared over \
         both nginx routes; upstream DNS queries during the turns: {}",
        ping.samples[Route::Direct.index()].len(),
        ping.upstream_queries
            .map_or_else(|| "not counted".to_owned(), |q| q.to_string())
    );
    let dping = &ping.samples[Route::Direct.index()];
    let (cached, uncached) = (
        &ping.samples[Route::Proxy.index()],
        &ping.samples[Route::Uncached.index()],
    );
    if !cached.is_empty() && !uncached.is_empty() {
        println!(
            "    resolving the name for every connection (TTL 0 vs cached): p50 difference {:+.1} us, \
             median per-turn difference {:+.1} us",
            percentile(uncached, 50.0) - percentile(cached, 50.0),
            paired_diff(cached, uncached)
        );
    }
    for route in [
        Route::Proxy,
        Route::Uncached,
        Route::Userspace,
        Route::Nginx,
        Route::NginxBig,
    ] {
        let v = &ping.samples[route.index()];
        if !v.is_empty() {
            println!(
                "    {:<30} added vs direct: p50 difference {:+.1} us, median per-turn difference {:+.1} us",
                route.label(),
                percentile(v, 50.0) - d50,
                paired_diff(dping, v)
            );
        }
    }
    println!(
        "  DNS latency: one A query for {NAME} at a time over a connected UDP socket, {} turns \
         after {DNS_WARMUP} warm-up turns, order alternating; median per-turn difference {:+.1} us; \
         agent CPU {:.1} us per query; lost queries (2 s timeout, turn dropped): direct {}, agent {}",
        dl.len(),
        paired_diff(dl, al),
        dns.agent_cpu_us,
        dns.lost.0,
        dns.lost.1
    );
    for (name, runs) in [("direct", &dns.rates.0), ("agent", &dns.rates.1)] {
        let pick = |f: fn(&DnsRate) -> f64| runs.iter().map(f).collect::<Vec<_>>();
        let resolver: Vec<f64> = runs.iter().filter_map(|r| r.resolver_cpus).collect();
        let per_query: Vec<f64> = runs
            .iter()
            .filter_map(|r| r.resolver_cpus.map(|c| c / r.qps * 1e6))
            .collect();
        println!(
            "  DNS throughput, {name:<6}: {} q/s (median [min-max] of {DNS_RATE_ROUNDS} runs of \
             {DNS_RATE_SECS} s, {DNS_WINDOW} in flight); CPUs busy: client {}, agent {} ({} us per \
             query), dnsmasq {}, machine {}; lost {}, not NOERROR {}",
            spread(&pick(|r| r.qps), 1.0, 0),
            med(&pick(|r| r.client_cpus), 1.0, 2),
            med(&resolver, 1.0, 2),
            med(&per_query, 1.0, 1),
            med(&pick(|r| r.dnsmasq_cpus), 1.0, 2),
            med(&pick(|r| r.machine_cpus), 1.0, 2),
            pick(|r| r.lost).iter().sum::<f64>(),
            pick(|r| r.bad).iter().sum::<f64>(),
        );
    }
}
