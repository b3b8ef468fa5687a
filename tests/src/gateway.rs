//! The gateway's clients in the ingress tests: sandboxes with exposed ports, connect
//! tokens, and curl with what it received.
use std::{
    fs,
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use crate::{daemon::TestDaemon, helpers, sh};

/// A copy of the test binary (`env!("CARGO_BIN_EXE_...")`) where sandboxes (user `nobody`)
/// can run it. One per test process: the tests use `sa-web-helper` only.
pub fn installed(binary: &str) -> String {
    static COPIED: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    COPIED
        .get_or_init(|| {
            let path = std::path::Path::new(binary);
            let dst = helpers().join(path.file_name().expect("a file name"));
            fs::copy(path, &dst).expect("copy the test binary");
            sh(&format!("chmod 755 {}", dst.display()));
            dst
        })
        .display()
        .to_string()
}

/// `create` with flags, then `--`, then the command; waits for the probe if one is given.
pub fn create(d: &TestDaemon, flags: &[&str], command: &[&str]) -> String {
    let mut args = vec!["create"];
    args.extend_from_slice(flags);
    args.push("--");
    args.extend_from_slice(command);
    let out = d.ok(&args);
    let id = out.lines().next().expect("an id").trim().to_owned();
    if flags.iter().any(|f| f.starts_with("--probe")) {
        d.ok(&["wait-ready", &id]);
    }
    id
}

/// A new connect token (and its id) for a sandbox, with optional user metadata.
pub fn token(d: &TestDaemon, sandbox: &str, metadata: Option<&str>) -> (String, String) {
    let mut args = vec!["token", sandbox];
    if let Some(m) = metadata {
        args.extend_from_slice(&["--user-metadata", m]);
    }
    let v: serde_json::Value = serde_json::from_str(&d.ok(&args)).expect("token JSON");
    (
        v["token"].as_str().expect("token").to_owned(),
        v["id"].as_str().expect("id").to_owned(),
    )
}

pub struct Answer {
    pub status: u16,
    pub version: String,
    pub headers: String,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }
}

/// curl with these arguments; status, HTTP version, response headers and body.
pub fn curl(args: &[&str]) -> Answer {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let base = std::env::temp_dir().join(format!("sa-curl-{}-{n}", std::process::id()));
    let (headers, body) = (base.with_extension("h"), base.with_extension("b"));
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-D"])
        .arg(&headers)
        .arg("-o")
        .arg(&body)
        .args(["-w", "%{http_code} %{http_version}"])
        .args(args)
        .output()
        .expect("run curl");
    let w = String::from_utf8_lossy(&out.stdout).into_owned();
    let (status, version) = w.split_once(' ').unwrap_or(("0", ""));
    let answer = Answer {
        status: status.parse().unwrap_or(0),
        version: version.to_owned(),
        headers: fs::read_to_string(&headers).unwrap_or_default(),
        body: fs::read_to_string(&body).unwrap_or_default(),
    };
    let _ = fs::remove_file(headers);
    let _ = fs::remove_file(body);
    answer
}

/// A route by path to a sandbox port.
pub fn path_url(d: &TestDaemon, sandbox: &str, port: u16, rest: &str) -> String {
    format!(
        "http://127.0.0.1:{}/_sandbox/{sandbox}/{port}/{rest}",
        d.ingress_port
    )
}
