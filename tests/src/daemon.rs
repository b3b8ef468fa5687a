//! A `sandbox-agent daemon` of a test's own: its socket, state directory and metrics port,
//! the CLI pointed at it, raw HTTP on its socket, and clean-up (sandboxes killed and
//! removed, daemon stopped, directories gone) even when the test fails.
use std::{
    fs,
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{Run, agent, sh_quiet, wait_bounded};

/// One daemon per host (the agent refuses a second): daemon tests take turns.
static ONE_DAEMON: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub struct TestDaemon {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub metrics_port: u16,
    /// The ingress gateway's port (on 127.0.0.1).
    pub ingress_port: u16,
    child: Option<Child>,
    _turn: std::sync::MutexGuard<'static, ()>,
}

/// With `SANDBOX_TESTS_API_RECORD` set (by `cargo xtask test`), appends the response to a
/// file there, one JSON line each, for the check against the `OpenAPI` document.
fn record_response(method: &str, path: &str, status: u16, text: &str, body: &str) {
    let Some(dir) = std::env::var_os("SANDBOX_TESTS_API_RECORD") else {
        return;
    };
    let head = text.split_once("\r\n\r\n").map_or(text, |(h, _)| h);
    let content_type = head.lines().find_map(|l| {
        l.split_once(':')
            .filter(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            .map(|(_, v)| v.trim().to_owned())
    });
    let line = serde_json::json!({
        "method": method,
        "path": path,
        "status": status,
        "content_type": content_type,
        "body": body,
    });
    let file = PathBuf::from(dir).join(format!("{}.jsonl", std::process::id()));
    if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(file) {
        let _ = f.write_all(format!("{line}\n").as_bytes());
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

impl TestDaemon {
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// A daemon whose config file holds `extra` TOML on top of the test settings.
    pub fn start_with(extra: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let turn = ONE_DAEMON
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("sa-daemon-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("daemon dir");
        let metrics_port = free_port();
        let ingress_port = free_port();
        let config = dir.join("config.toml");
        fs::write(
            &config,
            format!(
                "state_dir = \"{}\"\nsocket = \"{}\"\nmetrics_address = \"127.0.0.1:{metrics_port}\"\ningress_address = \"127.0.0.1:{ingress_port}\"\n{extra}\n",
                dir.join("state").display(),
                dir.join("api.sock").display()
            ),
        )
        .expect("config");
        let mut d = Self {
            socket: dir.join("api.sock"),
            dir,
            metrics_port,
            ingress_port,
            child: None,
            _turn: turn,
        };
        d.spawn();
        d
    }

    /// Starts (or restarts) the daemon process and waits until it answers.
    pub fn spawn(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("daemon.log"))
            .expect("daemon log");
        let mut cmd = Command::new(agent());
        // Root's group as a supplementary group, as a daemon started under sudo has it: what
        // the daemon does as a sandbox's user must not keep it.
        // SAFETY: setgroups is async-signal-safe; it runs in the child before exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                let root_group: libc::gid_t = 0;
                if libc::setgroups(1, &raw const root_group) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let child = cmd
            .args(["daemon", "--config"])
            .arg(self.dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start daemon");
        self.child = Some(child);
        let start = Instant::now();
        while self.http("GET", "/v1/health", None).0 != 200 {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "daemon did not answer: {}",
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9` of the daemon (sandboxes stay).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// `sandbox-agent ARGS...` against this daemon.
    pub fn cli(&self, args: &[&str]) -> Run {
        let child = Command::new(agent())
            .args(args)
            .env("SANDBOX_AGENT_SOCKET", &self.socket)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sandbox-agent");
        wait_bounded(child)
    }

    /// As [`TestDaemon::cli`], asserting success; its stdout trimmed.
    pub fn ok(&self, args: &[&str]) -> String {
        let run = self.cli(args);
        assert_eq!(run.code, 0, "sandbox-agent {args:?} failed: {run:#?}");
        run.stdout.trim().to_owned()
    }

    /// One raw HTTP/1.1 request on the socket: `(status, body)`; status 0 if it failed.
    pub fn http(&self, method: &str, path: &str, body: Option<&[u8]>) -> (u16, String) {
        let Ok(mut s) = UnixStream::connect(&self.socket) else {
            return (0, String::new());
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
        let body = body.unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        // A server that refuses the body (413) may answer and close before reading it all:
        // the answer is read whatever the write did.
        let _ = s
            .write_all(head.as_bytes())
            .and_then(|()| s.write_all(body));
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        let body = dechunk(&text, body);
        record_response(method, path, status, &text, &body);
        (status, body)
    }

    pub fn json(&self, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
        let (status, text) = self.http(method, path, body.map(str::as_bytes));
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }

    pub fn inspect(&self, sandbox: &str) -> serde_json::Value {
        let (status, v) = self.json("GET", &format!("/v1/sandboxes/{sandbox}"), None);
        assert_eq!(status, 200, "inspect {sandbox}: {v}");
        v
    }

    /// Polls `inspect` until `pred` holds (bounded).
    pub fn wait_for(&self, sandbox: &str, what: &str, pred: impl Fn(&serde_json::Value) -> bool) {
        let start = Instant::now();
        loop {
            let v = self.inspect(sandbox);
            if pred(&v) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{sandbox}: {what} did not happen: {v:#}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// A sandbox's stdout so far.
    pub fn stdout(&self, sandbox: &str) -> String {
        self.http(
            "GET",
            &format!("/v1/sandboxes/{sandbox}/logs?stream=stdout"),
            None,
        )
        .1
    }

    /// A sandbox's stdout read from its file (works while the daemon is down).
    pub fn stdout_file(&self, sandbox: &str) -> String {
        fs::read_to_string(
            self.dir
                .join(format!("state/sandboxes/{sandbox}/stdout.log")),
        )
        .unwrap_or_default()
    }

    /// Polls the sandbox's stdout until it contains `needle` (bounded).
    pub fn wait_output(&self, sandbox: &str, needle: &str) -> String {
        let start = Instant::now();
        loop {
            let out = self.stdout(sandbox);
            if out.contains(needle) {
                return out;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{sandbox} never printed {needle:?}; stdout: {out}\nstderr: {}",
                self.http(
                    "GET",
                    &format!("/v1/sandboxes/{sandbox}/logs?stream=stderr"),
                    None
                )
                .1
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn metrics(&self) -> String {
        let mut s =
            std::net::TcpStream::connect(("127.0.0.1", self.metrics_port)).expect("metrics");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .expect("write");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }
}

/// The body of a chunked answer, unchunked (logs and events stream in chunks).
fn dechunk(whole: &str, body: String) -> String {
    let head = whole
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if !head.contains("transfer-encoding: chunked") {
        return body;
    }
    let mut out = String::new();
    let mut rest = body.as_str();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if self.child.is_none() && self.socket.exists() {
            // Killed by the test and not restarted: start it again to clean up.
            self.spawn();
        }
        let (_, list) = self.json("GET", "/v1/sandboxes", None);
        for s in list.as_array().into_iter().flatten() {
            if let Some(id) = s["id"].as_str() {
                let _ = self.http("DELETE", &format!("/v1/sandboxes/{id}?force=true"), None);
            }
        }
        if let Some(c) = &self.child {
            sh_quiet(&format!("kill -TERM {}", c.id()));
        }
        if let Some(mut c) = self.child.take() {
            let start = Instant::now();
            while c.try_wait().ok().flatten().is_none() && start.elapsed() < Duration::from_secs(10)
            {
                thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
