//! The ingress gateway's cost: request latency and bulk throughput through the gateway (and
//! through a raw TCP tunnel) against a direct connection to the same kind of workload, in
//! the same run. The workload is `sa-web-helper` (tests crate) in a sandbox; the direct
//! path connects to its real (steered) port with the ingress mark, as the gateway does, so
//! that both paths cross the same kernel programs and only the gateway differs.
use std::{
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::fd::FromRawFd as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{
    bench_daemon::Daemon,
    bench_kit::{BenchEnv, cpu_times, median, percentile, print_grid, progress},
};

const LATENCY_ROUNDS: usize = 5;
/// Per route and round.
const LATENCY_REQUESTS: usize = 400;
const WARMUP_REQUESTS: usize = 100;
const SMALL_BODY: usize = 64;
const BULK_BYTES: u64 = 1 << 30;
const BULK_RUNS: usize = 3;
/// The mark the kernel requires on connections into a sandbox (`sandbox_common`).
const INGRESS_MARK: u32 = 0x5341_0001;

pub fn run(env: &mut BenchEnv, agent: &Path) -> Result<()> {
    progress("ingress: build the web helper")?;
    let helper = build_helper(env)?;
    progress("ingress: start")?;
    let daemon = Daemon::start(env, agent)?;
    let http_id = create(&daemon, &helper, "http")?;
    let tcp_id = create(&daemon, &helper, "tcp")?;
    let (status, token) =
        daemon.request("POST", &format!("/v1/sandboxes/{http_id}/tokens"), "{}")?;
    ensure!(status == 201, "token: {status} {token}");
    let token: serde_json::Value = serde_json::from_str(&token)?;
    let token = token["token"].as_str().context("token")?.to_owned();
    let direct = Route::Direct(real_port(&daemon, &http_id)?);
    let gateway = Route::Gateway {
        port: daemon.ingress_port,
        prefix: format!("/_sandbox/{http_id}/8080"),
        token,
    };
    let tunnel = Route::Tunnel(tunnel_address(&daemon, &tcp_id)?);
    // A peer proxy for scale: nginx's HTTP proxy in front of the same helper run on the host.
    let (host_direct, nginx) = match peer_proxy(env, &helper) {
        Ok((h, n)) => (Some(h), Some(n)),
        Err(e) => {
            progress(&format!("nginx rows not measured: {e}"))?;
            (None, None)
        }
    };
    let routes: Vec<&Route> = [Some(&direct), Some(&gateway), Some(&tunnel)]
        .into_iter()
        .chain([host_direct.as_ref(), nginx.as_ref()])
        .flatten()
        .collect();

    progress(&format!(
        "ingress: {LATENCY_ROUNDS} × {LATENCY_REQUESTS} requests per path"
    ))?;
    // Rounds across the routes, so that a noisy moment of the shared machine hits them all.
    let mut latency = vec![Vec::new(); routes.len()];
    for _ in 0..LATENCY_ROUNDS {
        for (i, path) in routes.iter().enumerate() {
            latency[i].extend(request_latencies(path)?);
        }
    }
    progress(&format!("ingress: {BULK_RUNS} × 1 GiB per path"))?;
    let mut bulk = vec![Vec::new(); routes.len()];
    // The agent's CPU per GiB moved (user + system ms).
    let mut agent_cpu = vec![Vec::new(); routes.len()];
    for _ in 0..BULK_RUNS {
        for (i, path) in routes.iter().enumerate() {
            let before = cpu_times(daemon.pid()).unwrap_or_default();
            bulk[i].push(bulk_mbps(path)?);
            let used = cpu_times(daemon.pid()).unwrap_or_default().minus(before);
            agent_cpu[i].push(used.user + used.system);
        }
    }
    drop(daemon);
    print_results(&latency, &bulk, &agent_cpu);
    Ok(())
}

/// The helper on the host (no sandbox) and nginx's HTTP proxy (keep-alive to it) in front:
/// routes to each.
fn peer_proxy(env: &mut BenchEnv, helper: &Path) -> Result<(Route, Route)> {
    crate::bench_domains::ensure_nginx()?;
    let free = || -> Result<u16> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    };
    let (helper_port, nginx_port) = (free()?, free()?);
    let server = Command::new("timeout")
        .args(["600"])
        .arg(helper)
        .arg(helper_port.to_string())
        .stdout(std::process::Stdio::null())
        .spawn()?;
    env.servers.push(server);
    let dir = env.dir.display().to_string();
    let conf = env.dir.join("nginx-http.conf");
    fs::write(
        &conf,
        format!(
            "daemon off;\nworker_processes auto;\npid {dir}/nginx-http.pid;\n\
             error_log {dir}/nginx-http-error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  keepalive_requests 100000;\n\
             \x20 upstream helper {{ server 127.0.0.1:{helper_port}; keepalive 16; }}\n\
             \x20 server {{\n    listen 127.0.0.1:{nginx_port};\n\
             \x20   location / {{\n      proxy_pass http://helper;\n\
             \x20     proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n\
             \x20   }}\n  }}\n}}\n"
        ),
    )?;
    let nginx = Command::new("timeout")
        .args(["600", crate::bench_domains::NGINX, "-p", &dir, "-c"])
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    env.servers.push(nginx);
    for port in [helper_port, nginx_port] {
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            ensure!(
                start.elapsed() < Duration::from_secs(10),
                "nothing on port {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok((Route::Host(helper_port), Route::Host(nginx_port)))
}

/// The helper binary, built and copied where the sandbox user can run it.
fn build_helper(env: &BenchEnv) -> Result<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "-p",
            "sandbox-tests",
            "--bin",
            "sa-web-helper",
        ])
        .output()?;
    crate::bench_kit::check(&out, "build sa-web-helper")?;
    let copy = env.dir.join("sa-web-helper");
    fs::copy(root.join("target/release/sa-web-helper"), &copy)?;
    Command::new("chmod").arg("755").arg(&copy).status()?;
    Ok(copy)
}

/// A sandbox running the helper on 8080, exposed as `protocol`; ready when it returns.
fn create(daemon: &Daemon, helper: &Path, protocol: &str) -> Result<String> {
    let body = serde_json::json!({
        "command": [helper.display().to_string(), "8080"],
        "ports": [{"port": 8080, "protocol": protocol}],
        "probe": {"tcp_port": 8080},
        "timeout": "10m",
    });
    let (id, _) = daemon.create(&body.to_string())?;
    let (status, answer) = daemon.request("GET", &format!("/v1/sandboxes/{id}/wait-ready"), "")?;
    ensure!(
        status == 200 || status == 204,
        "wait-ready: {status} {answer}"
    );
    Ok(id)
}

/// The loopback port the kernel gave the helper's listener (found by its pid).
fn real_port(daemon: &Daemon, id: &str) -> Result<u16> {
    let (_, view) = daemon.request("GET", &format!("/v1/sandboxes/{id}"), "")?;
    let view: serde_json::Value = serde_json::from_str(&view)?;
    let pid = view["pid"].as_i64().context("pid")?;
    let ss = Command::new("ss").args(["-Htlnp"]).output()?;
    let text = String::from_utf8_lossy(&ss.stdout);
    text.lines()
        .find(|l| l.contains(&format!("pid={pid},")))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|a| a.rsplit_once(':'))
        .and_then(|(_, p)| p.parse().ok())
        .with_context(|| format!("no listener of pid {pid}: {text}"))
}

fn tunnel_address(daemon: &Daemon, id: &str) -> Result<SocketAddr> {
    let (_, ports) = daemon.request("GET", &format!("/v1/sandboxes/{id}/tunnels"), "")?;
    let ports: serde_json::Value = serde_json::from_str(&ports)?;
    ports[0]["tunnel"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("no tunnel: {ports}"))
}

/// Where a request goes.
enum Route {
    /// The workload's real port, with the ingress mark (what the gateway itself does).
    Direct(u16),
    Gateway {
        port: u16,
        prefix: String,
        token: String,
    },
    Tunnel(SocketAddr),
    /// A plain loopback port (the host helper, nginx).
    Host(u16),
}

impl Route {
    fn connect(&self) -> Result<TcpStream> {
        let stream = match self {
            Self::Direct(port) => marked_connect(SocketAddr::from(([127, 0, 0, 1], *port)))?,
            Self::Gateway { port, .. } | Self::Host(port) => {
                TcpStream::connect(("127.0.0.1", *port))?
            }
            Self::Tunnel(addr) => TcpStream::connect(addr)?,
        };
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(stream)
    }

    fn request(&self, path: &str) -> String {
        match self {
            Self::Gateway { prefix, token, .. } => format!(
                "GET {prefix}{path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\r\n"
            ),
            _ => format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"),
        }
    }
}

/// A TCP connection with `SO_MARK` set (root only), as the agent's ingress connects.
fn marked_connect(addr: SocketAddr) -> Result<TcpStream> {
    // SAFETY: plain socket calls on a descriptor this function owns until it is wrapped.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        ensure!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let stream = TcpStream::from_raw_fd(fd);
        let mark = INGRESS_MARK;
        let set = libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_MARK,
            (&raw const mark).cast(),
            4,
        );
        ensure!(set == 0, "SO_MARK: {}", std::io::Error::last_os_error());
        let SocketAddr::V4(v4) = addr else {
            bail!("IPv4 only");
        };
        let sin = libc::sockaddr_in {
            sin_family: libc::sa_family_t::try_from(libc::AF_INET)?,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(v4.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        let rc = libc::connect(
            fd,
            (&raw const sin).cast(),
            u32::try_from(std::mem::size_of::<libc::sockaddr_in>()).unwrap_or(16),
        );
        ensure!(
            rc == 0,
            "connect {addr}: {}",
            std::io::Error::last_os_error()
        );
        Ok(stream)
    }
}

/// Sends one GET and reads the whole response; the body length.
fn get(reader: &mut BufReader<TcpStream>, request: &str) -> Result<u64> {
    reader.get_mut().write_all(request.as_bytes())?;
    let mut line = String::new();
    reader.read_line(&mut line)?;
    ensure!(line.starts_with("HTTP/1.1 200"), "answer: {line:?}");
    let mut length = None;
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().ok();
        }
    }
    let length: u64 = length.context("no Content-Length")?;
    let copied = std::io::copy(&mut reader.by_ref().take(length), &mut std::io::sink())?;
    ensure!(copied == length, "short body: {copied} of {length}");
    Ok(length)
}

/// Sequential requests on one keep-alive connection: each one's round trip in µs.
fn request_latencies(path: &Route) -> Result<Vec<f64>> {
    let mut reader = BufReader::with_capacity(64 * 1024, path.connect()?);
    let request = path.request(&format!("/bytes/{SMALL_BODY}"));
    for _ in 0..WARMUP_REQUESTS {
        get(&mut reader, &request)?;
    }
    let mut out = Vec::with_capacity(LATENCY_REQUESTS);
    for _ in 0..LATENCY_REQUESTS {
        let t = Instant::now();
        get(&mut reader, &request)?;
        out.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(out)
}

/// One 1 GiB response: MB/s.
fn bulk_mbps(path: &Route) -> Result<f64> {
    let mut reader = BufReader::with_capacity(1 << 20, path.connect()?);
    let t = Instant::now();
    let n = get(&mut reader, &path.request(&format!("/bytes/{BULK_BYTES}")))?;
    #[allow(clippy::cast_precision_loss)]
    Ok(n as f64 / 1e6 / t.elapsed().as_secs_f64())
}

fn print_results(latency: &[Vec<f64>], bulk: &[Vec<f64>], agent_cpu: &[Vec<f64>]) {
    let names = [
        "direct (marked, to the real port)",
        "gateway (HTTP/1.1)",
        "TCP tunnel",
        "host helper, direct",
        "nginx proxy → host helper",
    ];
    println!("\n## Ingress\n");
    let mut rows = Vec::new();
    for (i, name) in names.iter().enumerate().take(latency.len()) {
        // nginx is compared with the helper on the host, the agent's routes with the
        // sandboxed one.
        let base = if i >= 3 { 3 } else { 0 };
        rows.push(vec![
            (*name).to_owned(),
            format!("{:.0}", median(&latency[i])),
            format!("{:.0}", percentile(&latency[i], 99.0)),
            format!("{:+.0}", median(&latency[i]) - median(&latency[base])),
            format!("{:.0}", median(&bulk[i])),
            format!("{:.2}", median(&bulk[i]) / median(&bulk[base])),
            if i >= 3 {
                "-".into()
            } else {
                format!("{:.0}", median(&agent_cpu[i]))
            },
        ]);
    }
    print_grid(
        &[
            "path",
            "request p50 (µs)",
            "p99",
            "added p50",
            "bulk MB/s",
            "bulk ratio",
            "agent CPU ms/GiB",
        ],
        &rows,
        &[0],
    );
    println!(
        "\nRequests: {LATENCY_ROUNDS} rounds across the routes of {LATENCY_REQUESTS} sequential GETs of a \
         {SMALL_BODY}-byte body on one keep-alive connection (after {WARMUP_REQUESTS} warm-up). Bulk: one 1 GiB body per run, \
         median of {BULK_RUNS}; the agent's CPU (user + system) during it. The machine's CPUs \
         are shared by client, agent and workload. Targets: bulk ≥ 0.8× direct, < 200 µs added per request (p50)."
    );
}
