//! Flow events: one JSON line for every decision the resolver and the proxy make, so that a
//! refusal is never silent. Written to stderr or a file (`run --flow-log`).
use std::{
    fs,
    io::{self, Write as _},
    path::Path,
    sync::Mutex,
    time::{SystemTime, UNIX_EPOCH},
};

use serde::Serialize;

/// Which part of the agent decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    Dns,
    Proxy,
}

/// One decision.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FlowEvent {
    /// Milliseconds since the Unix epoch.
    pub ts_ms: u64,
    pub sandbox: String,
    pub source: Option<Source>,
    /// The name asked for (DNS question, SNI or Host), normalised.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// DNS record type asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qtype: Option<String>,
    /// Where the client wanted to go (`addr:port`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original_dst: Option<String>,
    /// Where the agent went (`addr:port`), or the addresses a DNS answer carried.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resolved: Vec<String>,
    /// `allowed` or `denied`.
    pub verdict: &'static str,
    /// Why, in a few words (a policy reason or the problem with the request).
    pub reason: String,
    /// Bytes copied client → upstream and back, when a proxied connection ends.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_out: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_in: Option<u64>,
}

impl FlowEvent {
    pub fn new(sandbox: &str, source: Source) -> Self {
        Self {
            ts_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            sandbox: sandbox.to_owned(),
            source: Some(source),
            verdict: "denied",
            ..Self::default()
        }
    }

    #[must_use]
    pub fn allowed(mut self, reason: impl Into<String>) -> Self {
        self.verdict = "allowed";
        self.reason = reason.into();
        self
    }

    #[must_use]
    pub fn denied(mut self, reason: impl Into<String>) -> Self {
        self.verdict = "denied";
        self.reason = reason.into();
        self
    }
}

type Hook = Box<dyn Fn(&FlowEvent) + Send + Sync>;

/// Where events go. Writes are whole lines under a lock, so lines never interleave.
pub struct Events {
    sink: Option<Mutex<Box<dyn io::Write + Send>>>,
    /// The daemon's event stream and metrics.
    hook: Option<Hook>,
}

impl Events {
    /// Events are dropped.
    pub fn none() -> Self {
        Self {
            sink: None,
            hook: None,
        }
    }

    pub fn stderr() -> Self {
        Self {
            sink: Some(Mutex::new(Box::new(io::stderr()))),
            hook: None,
        }
    }

    /// Events go to `f`.
    pub fn hook(f: impl Fn(&FlowEvent) + Send + Sync + 'static) -> Self {
        Self {
            sink: None,
            hook: Some(Box::new(f)),
        }
    }

    /// Appends to a file, creating it (mode 0600: events name what sandboxes visited).
    pub fn file(path: &Path) -> io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        Ok(Self {
            sink: Some(Mutex::new(Box::new(file))),
            hook: None,
        })
    }

    pub fn emit(&self, event: &FlowEvent) {
        if let Some(hook) = &self.hook {
            hook(event);
        }
        let Some(sink) = &self.sink else {
            return;
        };
        let Ok(mut line) = serde_json::to_vec(event) else {
            return;
        };
        line.push(b'\n');
        if let Ok(mut w) = sink.lock() {
            // An event that cannot be written must not stop the traffic decision it reports.
            let _ = w.write_all(&line);
            let _ = w.flush();
        }
    }
}
