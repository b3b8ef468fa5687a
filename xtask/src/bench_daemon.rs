//! The daemon's costs: create→running through the API against an embedded `run`, 1 000
//! sandboxes with distinct policies alive at once, and how long a policy change takes until
//! a new connect in the sandbox sees it.
use std::{
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::Child,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::bench_kit::{BenchEnv, check, interrupted, median, percentile, print_grid, progress};

const CREATE_RUNS: usize = 200;
const EMBEDDED_RUNS: usize = 50;
const MANY: usize = 1000;
const UPDATE_RUNS: usize = 20;
const TRUE: &str = "/bin/true";

/// A daemon of the bench's own (socket and state under the bench's temp dir).
pub(crate) struct Daemon {
    socket: PathBuf,
    child: Child,
    /// Its ingress gateway's port on 127.0.0.1.
    pub(crate) ingress_port: u16,
}

impl Daemon {
    pub(crate) fn start(env: &BenchEnv, agent: &Path) -> Result<Self> {
        let config = env.dir.join("daemon.toml");
        let socket = env.dir.join("api.sock");
        let ingress_port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        fs::write(
            &config,
            format!(
                "state_dir = \"{}\"\nsocket = \"{}\"\ningress_address = \"127.0.0.1:{ingress_port}\"\n",
                env.dir.join("daemon-state").display(),
                socket.display()
            ),
        )?;
        let log = fs::File::create(env.dir.join("daemon.log"))?;
        let child = env
            .agent(agent)
            .args(["daemon", "--config"])
            .arg(&config)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start the daemon")?;
        let d = Self {
            socket,
            child,
            ingress_port,
        };
        let start = Instant::now();
        while d.request("GET", "/v1/health", "").map(|r| r.0).ok() != Some(200) {
            ensure!(
                start.elapsed() < Duration::from_secs(20),
                "the daemon did not answer"
            );
            thread::sleep(Duration::from_millis(20));
        }
        Ok(d)
    }

    /// One request on a fresh connection, as a client would make it: `(status, body)`.
    pub(crate) fn request(&self, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
        let mut s = UnixStream::connect(&self.socket)?;
        s.set_read_timeout(Some(Duration::from_mins(1)))?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        let status = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    }

    /// Creates a sandbox; its id and the request's round trip in ms.
    pub(crate) fn create(&self, body: &str) -> Result<(String, f64)> {
        let t = Instant::now();
        let (status, answer) = self.request("POST", "/v1/sandboxes", body)?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        ensure!(status == 201, "create failed: {status} {answer}");
        let v: serde_json::Value = serde_json::from_str(&answer)?;
        Ok((v["id"].as_str().context("id")?.to_owned(), ms))
    }

    fn remove(&self, id: &str) -> Result<()> {
        let (status, body) =
            self.request("DELETE", &format!("/v1/sandboxes/{id}?force=true"), "")?;
        ensure!(status == 204, "remove {id}: {status} {body}");
        Ok(())
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    fn rss_kib(&self) -> u64 {
        fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
            })
            .unwrap_or(0)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok((_, list)) = self.request("GET", "/v1/sandboxes", "")
            && let Ok(serde_json::Value::Array(all)) = serde_json::from_str(&list)
        {
            for s in all {
                if let Some(id) = s["id"].as_str() {
                    let _ = self.remove(id);
                }
            }
        }
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id().cast_signed(), libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into our timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// Connects to `127.0.0.1:PORT` every ~100 µs until it works, then prints the `CLOCK_MONOTONIC`
/// time of that first success (bounded: 20 s). Paced rather than spinning: on two CPUs a
/// spinning client would take a CPU from the daemon it is measuring.
const SPIN: &str = r"
import socket, sys, time
port = int(sys.argv[1])
printed = False
end = time.monotonic() + 20
while time.monotonic() < end:
    s = socket.socket()
    try:
        s.connect(('127.0.0.1', port))
        print('seen', time.clock_gettime_ns(time.CLOCK_MONOTONIC), flush=True)
        break
    except OSError:
        if not printed:
            print('denied', flush=True)
            printed = True
    finally:
        s.close()
    time.sleep(0.0001)
";

pub fn run(env: &mut BenchEnv, agent: &Path) -> Result<()> {
    progress("daemon: start")?;
    let daemon = Daemon::start(env, agent)?;
    let create = bench_create(env, agent, &daemon)?;
    let many = bench_many(&daemon)?;
    // With the 1 000 still alive.
    let update = bench_update(env, &daemon)?;
    progress("daemon: removing the sandboxes")?;
    let t = Instant::now();
    for id in &many.ids {
        daemon.remove(id)?;
    }
    let remove_total = t.elapsed().as_secs_f64();
    drop(daemon);
    print_results(&create, &many, &update, remove_total);
    Ok(())
}

struct Create {
    api_ms: Vec<f64>,
    embedded_ms: Vec<f64>,
}

/// create → running through the API, against a whole embedded run.
/// `runs` creates → running through the API of a daemon of the bench's own, each removed
/// before the next; their times in ms.
pub(crate) fn create_times(env: &BenchEnv, agent: &Path, runs: usize) -> Result<Vec<f64>> {
    create_loop(&Daemon::start(env, agent)?, runs)
}

fn create_loop(daemon: &Daemon, runs: usize) -> Result<Vec<f64>> {
    let sleeper = r#"{"command":["/bin/sleep","600"],"cwd":"/"}"#;
    let mut ms = Vec::with_capacity(runs);
    for _ in 0..runs {
        interrupted()?;
        let (id, t) = daemon.create(sleeper)?;
        ms.push(t);
        daemon.remove(&id)?;
    }
    Ok(ms)
}

fn bench_create(env: &BenchEnv, agent: &Path, daemon: &Daemon) -> Result<Create> {
    progress(&format!("daemon: {CREATE_RUNS} creates through the API"))?;
    let api_ms = create_loop(daemon, CREATE_RUNS)?;
    progress(&format!("daemon: {EMBEDDED_RUNS} embedded runs"))?;
    let mut embedded_ms = Vec::new();
    for _ in 0..EMBEDDED_RUNS {
        interrupted()?;
        let t = Instant::now();
        let out = env
            .agent(agent)
            .args(["run", "--embedded", "--network", "blocked", "--", TRUE])
            .output()?;
        embedded_ms.push(t.elapsed().as_secs_f64() * 1e3);
        check(&out, "sandbox-agent run --embedded -- /bin/true")?;
    }
    Ok(Create {
        api_ms,
        embedded_ms,
    })
}

struct Many {
    ids: Vec<String>,
    create_ms: Vec<f64>,
    total_s: f64,
    list_ms: f64,
    rss_kib: (u64, u64),
    slab_kib: (u64, u64),
}

/// 1 000 sandboxes, each with its own policy, alive at once.
fn bench_many(daemon: &Daemon) -> Result<Many> {
    progress(&format!("daemon: {MANY} sandboxes with distinct policies"))?;
    let rss_before = daemon.rss_kib();
    let slab_before = crate::bench_kit::meminfo_kib("Slab:").unwrap_or(0);
    let started = Instant::now();
    let mut create_ms = Vec::new();
    let mut ids = Vec::new();
    for i in 0..MANY {
        interrupted()?;
        let body = format!(
            r#"{{"command":["/bin/sleep","600"],"cwd":"/","policy":{{"network":"allowlist","allow_out":["10.{}.{}.0/24","fd00:{i:x}::/64"]}}}}"#,
            i / 256,
            i % 256
        );
        let (id, ms) = daemon.create(&body)?;
        create_ms.push(ms);
        ids.push(id);
    }
    let total_s = started.elapsed().as_secs_f64();
    let rss_after = daemon.rss_kib();
    let slab_after = crate::bench_kit::meminfo_kib("Slab:").unwrap_or(0);
    let t = Instant::now();
    let (status, list) = daemon.request("GET", "/v1/sandboxes?state=running", "")?;
    let list_ms = t.elapsed().as_secs_f64() * 1e3;
    ensure!(status == 200, "list: {status}");
    let listed = serde_json::from_str::<serde_json::Value>(&list)?
        .as_array()
        .map_or(0, Vec::len);
    ensure!(listed >= MANY, "only {listed} sandboxes listed as running");
    Ok(Many {
        ids,
        create_ms,
        total_s,
        list_ms,
        rss_kib: (rss_before, rss_after),
        slab_kib: (slab_before, slab_after),
    })
}

struct Update {
    seen_us: Vec<f64>,
    put_us: Vec<f64>,
}

/// Policy update until a new connect in the sandbox sees it.
fn bench_update(env: &BenchEnv, daemon: &Daemon) -> Result<Update> {
    progress(&format!("daemon: {UPDATE_RUNS} policy updates"))?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    thread::spawn(move || for _ in listener.incoming() {});
    let spin = env.dir.join("spin.py");
    fs::write(&spin, SPIN)?;
    let mut seen_us = Vec::new();
    let mut put_us = Vec::new();
    for _ in 0..UPDATE_RUNS {
        interrupted()?;
        let body = format!(
            r#"{{"command":["/usr/bin/python3","{}","{port}"],"cwd":"/","policy":{{"network":"allowlist","allow_out":["127.0.0.2"]}}}}"#,
            spin.display()
        );
        let (id, _) = daemon.create(&body)?;
        let out_path = env
            .dir
            .join(format!("daemon-state/sandboxes/{id}/stdout.log"));
        wait_line(&out_path, "denied")?;
        let t0 = monotonic_ns();
        let t = Instant::now();
        let (status, answer) = daemon.request(
            "PUT",
            &format!("/v1/sandboxes/{id}/policy"),
            r#"{"network":"allowlist","allow_out":["127.0.0.1"]}"#,
        )?;
        put_us.push(t.elapsed().as_secs_f64() * 1e6);
        ensure!(status == 200, "policy set: {status} {answer}");
        let line = wait_line(&out_path, "seen")?;
        let seen: u64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .context("seen time")?;
        #[expect(clippy::cast_precision_loss, reason = "microseconds")]
        seen_us.push(seen.saturating_sub(t0) as f64 / 1e3);
        daemon.remove(&id)?;
    }
    Ok(Update { seen_us, put_us })
}

fn print_results(create: &Create, many: &Many, update: &Update, remove_total: f64) {
    let (api_ms, embedded_ms) = (&create.api_ms, &create.embedded_ms);
    let first = &many.create_ms[..100];
    let last = &many.create_ms[MANY - 100..];
    println!("\n## Daemon\n");
    let f = |v: f64| format!("{v:.2}");
    let us = |v: f64| format!("{v:.0}");
    print_grid(
        &["measure", "p50", "p99", "baseline p50", "ratio"],
        &[
            vec![
                "create→running, API (ms)".into(),
                f(median(api_ms)),
                f(percentile(api_ms, 99.0)),
                f(median(embedded_ms)),
                f(median(api_ms) / median(embedded_ms)),
            ],
            vec![
                "embedded run /bin/true, whole (ms)".into(),
                f(median(embedded_ms)),
                f(percentile(embedded_ms, 99.0)),
                "-".into(),
                "-".into(),
            ],
            vec![
                "create, sandboxes 901-1000 (ms)".into(),
                f(median(last)),
                f(percentile(last, 99.0)),
                f(median(first)),
                f(median(last) / median(first)),
            ],
            vec![
                "policy update until a connect sees it (µs)".into(),
                us(median(&update.seen_us)),
                us(percentile(&update.seen_us, 99.0)),
                "-".into(),
                "-".into(),
            ],
            vec![
                "policy update request round trip (µs)".into(),
                us(median(&update.put_us)),
                us(percentile(&update.put_us, 99.0)),
                "-".into(),
                "-".into(),
            ],
        ],
        &[0],
    );
    println!(
        "\n{MANY} sandboxes with distinct policies: created in {:.1} s, listed in {:.0} ms, \
         removed in {remove_total:.1} s; daemon RSS {} → {} MiB; kernel slab +{} MiB",
        many.total_s,
        many.list_ms,
        many.rss_kib.0 / 1024,
        many.rss_kib.1 / 1024,
        many.slab_kib.1.saturating_sub(many.slab_kib.0) / 1024
    );
    println!(
        "The baseline of the first row is a whole embedded run (agent exec, open pins, cgroup, policy, \
         spawn, wait, clean-up); the API figure is request to running workload. The update row is \
         measured in the sandbox: CLOCK_MONOTONIC from just before the request to its first \
         connect that passed (connects paced every ~100 µs, so up to that much is the \
         probe's), with {MANY} other sandboxes alive."
    );
}

/// Waits (bounded) for a line starting with `prefix` in a sandbox's output file.
fn wait_line(path: &Path, prefix: &str) -> Result<String> {
    let start = Instant::now();
    loop {
        if let Ok(f) = fs::File::open(path) {
            for line in BufReader::new(f).lines().map_while(Result::ok) {
                if line.starts_with(prefix) {
                    return Ok(line);
                }
            }
        }
        if start.elapsed() > Duration::from_secs(20) {
            bail!("no \"{prefix}\" line in {}", path.display());
        }
        thread::sleep(Duration::from_micros(200));
    }
}
