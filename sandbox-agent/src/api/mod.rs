//! The daemon's HTTP/JSON API on a Unix socket: request and response bodies (`serde`), the
//! CLI's client (`client`). The routes, and the `OpenAPI` document generated from them and
//! these types, are the daemon's (`daemon::server`).
pub mod client;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::policy::PolicyFile;

/// API version prefix of every route.
pub const PREFIX: &str = "/v1";
/// Largest request body accepted (stdin writes included).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// `POST /v1/sandboxes`.
// Its flags are independent choices of the caller, not a state machine.
#[allow(clippy::struct_excessive_bools)]
#[derive(Clone, Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    /// Arguments after the entrypoint; the whole command when there is no entrypoint.
    #[serde(default)]
    pub command: Vec<String>,
    /// Program and leading arguments, run before `command`.
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory (default `/`).
    pub cwd: Option<String>,
    /// User name or uid (default: a host uid of the sandbox's own, leased from the
    /// daemon's `uid_first`/`uid_count` range, named `sandbox` in its view).
    pub user: Option<String>,
    /// Unique among live sandboxes: `[A-Za-z0-9._-]{1,63}`.
    pub name: Option<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub policy: PolicyFile,
    /// Maximum lifetime, e.g. `"30s"`, `"5m"` (default 5 min, at most 24 h).
    pub timeout: Option<String>,
    /// End the sandbox after this long without a running exec, a stdin write or an open
    /// proxied connection.
    pub idle_timeout: Option<String>,
    pub probe: Option<ProbeSpec>,
    /// Keep stdin open for `POST .../stdin` (otherwise it reads `/dev/null`).
    #[serde(default)]
    pub stdin: bool,
    /// Point `HTTP_PROXY`/`HTTPS_PROXY`/`ALL_PROXY` at the sandbox's explicit proxy.
    #[serde(default)]
    pub proxy_env: bool,
    /// Ports reachable from outside through the agent's ingress (nothing else is).
    #[serde(default)]
    pub ports: Vec<ExposedPort>,
    /// Every HTTP request to the sandbox's ports must also carry its traffic token in
    /// `X-Sandbox-Traffic-Token` (returned once, by this create).
    #[serde(default)]
    pub private_ports: bool,
    /// The `Host` header the workload sees on HTTP ports; `${PORT}` is the port.
    pub mask_host: Option<String>,
    /// Addresses the sandbox's resolver may hold learned at a time (default: the daemon's
    /// `learned_per_sandbox`).
    pub max_learned_addresses: Option<u64>,
    /// Memory, CPU and process limits (cgroup v2 controllers; refused where missing).
    #[serde(default, skip_serializing_if = "Resources::is_empty")]
    pub resources: Resources,
    /// Run as root of a user namespace of the sandbox's own, mapped to its own host uid (for
    /// package managers); no capability of the host's. Not with `user`.
    #[serde(default)]
    pub root: bool,
    /// A host directory to use as the sandbox's root (read-only, below a private writable
    /// layer), instead of the host's root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<String>,
    /// An OCI image layout directory or archive (or a `docker save` archive) on the daemon's
    /// host to use as the sandbox's root; its `Env`, `WorkingDir`, `Entrypoint`, `Cmd` and
    /// `User` are defaults for the fields here. Not with `rootfs`; never a registry pull.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Host paths bound into the sandbox.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<MountSpec>,
}

/// A host path bound into a sandbox (`--mount SRC:DST[:ro]`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MountSpec {
    /// The host path.
    pub source: String,
    /// Where the sandbox sees it (absolute; not below /proc, /dev or /sys).
    pub target: String,
    #[serde(default)]
    pub read_only: bool,
}

impl MountSpec {
    pub fn parts(&self) -> (String, String, bool) {
        (self.source.clone(), self.target.clone(), self.read_only)
    }
}

/// A sandbox's resource limits, as `--memory`, `--cpus` and `--pids` give them.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// `memory.max`, e.g. `"512m"`, `"2g"`; the sandbox is OOM-killed whole past it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// CPUs' worth of time, e.g. `"0.5"`, `"2"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<String>,
    /// Most processes and threads at once, e.g. `"256"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<String>,
}

impl Resources {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// These limits, with `defaults` for those not set.
    #[must_use]
    pub fn or(&self, defaults: &Self) -> Self {
        Self {
            memory: self.memory.clone().or_else(|| defaults.memory.clone()),
            cpus: self.cpus.clone().or_else(|| defaults.cpus.clone()),
            pids: self.pids.clone().or_else(|| defaults.pids.clone()),
        }
    }

    /// The limits, checked; errors name the command-line flag.
    pub fn limits(&self) -> Result<crate::limits::Limits, crate::limits::LimitError> {
        crate::limits::Limits::parse(
            self.memory.as_deref(),
            self.cpus.as_deref(),
            self.pids.as_deref(),
        )
    }
}

/// A port of the sandbox made reachable through the agent.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExposedPort {
    pub port: u16,
    pub protocol: PortProtocol,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PortProtocol {
    /// HTTP/1.1 (and WebSocket) to the workload, through the gateway, with a connect token.
    Http,
    /// HTTP/2 (cleartext, prior knowledge) to the workload, through the gateway (clients
    /// use HTTP/2 over TLS), with a connect token.
    H2,
    /// A tunnel: TLS ends at the agent, the workload gets the plain TCP stream.
    Tls,
    /// A tunnel of raw TCP; the workload authenticates its clients itself.
    Tcp,
}

impl PortProtocol {
    /// Reached through the HTTP gateway (token-checked), not a tunnel.
    pub const fn is_http(self) -> bool {
        matches!(self, Self::Http | Self::H2)
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::H2 => "h2",
            Self::Tls => "tls",
            Self::Tcp => "tcp",
        }
    }
}

/// An exposed port as the API shows it.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq, ToSchema)]
pub struct PortView {
    pub port: u16,
    pub protocol: PortProtocol,
    /// Where callers reach it: the gateway by host name (HTTP), or the tunnel.
    pub url: String,
    /// The gateway by path prefix (HTTP ports), for use without wildcard DNS.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub path_url: Option<String>,
    /// The tunnel's listening address (TLS and TCP ports).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    #[schema(value_type = Option<String>)]
    pub tunnel: Option<std::net::SocketAddr>,
}

/// `POST /v1/sandboxes/{id}/tokens`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// Passed to the workload in `X-Verified-User-Data` (JSON, under 512 bytes serialized).
    pub user_metadata: Option<serde_json::Value>,
}

/// A connect token. `token` (the secret) is only in the answer that made it.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct TokenView {
    pub id: String,
    pub sandbox: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub user_metadata: Option<serde_json::Value>,
    pub created_at: String,
    /// The sandbox's HTTP ports, where the token opens them.
    #[serde(default)]
    pub urls: Vec<PortView>,
}

/// A readiness probe: a TCP port on loopback that accepts, or a command that exits 0.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProbeSpec {
    pub tcp_port: Option<u16>,
    pub exec: Option<Vec<String>>,
    /// Between attempts (default `"100ms"`).
    pub interval: Option<String>,
    /// Give up after (default `"5m"`).
    pub timeout: Option<String>,
}

/// `POST /v1/sandboxes/{id}/execs`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    pub command: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub cwd: Option<String>,
    pub user: Option<String>,
    /// A narrower policy for this command: the kernel applies it and the sandbox's policy
    /// (and the host floor); `network` defaults to `open`, i.e. the sandbox's policy alone.
    pub policy: Option<PolicyFile>,
}

/// `PUT /v1/sandboxes/{id}/policy`: the whole new policy.
pub type PolicyRequest = PolicyFile;

/// A sandbox as the API shows it (and as the daemon keeps it on disk).
// Its flags are independent facts of the record, not a state machine.
#[allow(clippy::struct_excessive_bools)]
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct SandboxView {
    pub id: String,
    pub name: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub state: SandboxState,
    pub ready: bool,
    pub command: Vec<String>,
    pub cwd: String,
    pub user: String,
    /// The host uid the workload runs as (its own, unless `user` named another).
    #[serde(default)]
    pub uid: u32,
    #[serde(default, skip_serializing_if = "Resources::is_empty")]
    pub resources: Resources,
    /// Root of its own user namespace (`root` at create).
    #[serde(default)]
    pub root: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<String>,
    /// The image asked for, as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The digest of its manifest (`sha256:...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<MountSpec>,
    pub policy: PolicyFile,
    pub timeout_ms: u64,
    pub idle_timeout_ms: Option<u64>,
    pub probe: Option<ProbeSpec>,
    pub stdin: bool,
    /// The workload's proxy variables name the sandbox's explicit proxy.
    #[serde(default)]
    pub proxy_env: bool,
    /// RFC 3339.
    pub created_at: String,
    pub ended_at: Option<String>,
    /// 128 + signal when killed (137 for SIGKILL); `null` while running, or when the
    /// workload ended while no daemon was watching.
    pub exit_code: Option<i32>,
    pub end_reason: Option<EndReason>,
    pub pid: i32,
    pub cgroup_id: u64,
    pub policy_id: u32,
    /// Loopback ports of the sandbox's resolver and proxy (0: none).
    #[serde(default)]
    pub dns_port: u16,
    #[serde(default)]
    pub proxy_port: u16,
    pub execs: Vec<ExecView>,
    #[serde(default)]
    pub ports: Vec<PortView>,
    #[serde(default)]
    pub private_ports: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask_host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_learned_addresses: Option<u64>,
    /// The traffic token of a `private_ports` sandbox: only in the answer to its create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_token: Option<String>,
    /// Per-sandbox kernel counters at the time of the request (absent once it ended).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub counters: Option<CountersView>,
}

#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct ExecView {
    pub id: u32,
    pub command: Vec<String>,
    pub state: ExecState,
    pub exit_code: Option<i32>,
    pub policy: Option<PolicyFile>,
    pub cgroup_id: u64,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, ToSchema)]
pub struct CountersView {
    pub allowed_packets: u64,
    pub allowed_bytes: u64,
    pub denied_packets: u64,
    pub denied_bytes: u64,
    pub denied_connects: u64,
    pub denied_sends: u64,
    pub dns_redirects: u64,
    pub proxy_redirects: u64,
    pub learned_connects: u64,
}

impl From<sandbox_common::Counters> for CountersView {
    fn from(c: sandbox_common::Counters) -> Self {
        Self {
            allowed_packets: c.allowed_packets,
            allowed_bytes: c.allowed_bytes,
            denied_packets: c.denied_packets,
            denied_bytes: c.denied_bytes,
            denied_connects: c.denied_connects,
            denied_sends: c.denied_sends,
            dns_redirects: c.dns_redirects,
            proxy_redirects: c.proxy_redirects,
            learned_connects: c.learned_connects,
        }
    }
}

/// `GET .../wait`.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct WaitView {
    pub exit_code: Option<i32>,
    pub end_reason: Option<EndReason>,
}

/// Whether a sandbox runs.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SandboxState {
    Running,
    Exited,
}

impl SandboxState {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Exited => "exited",
        }
    }
}

impl std::str::FromStr for SandboxState {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "running" => Ok(Self::Running),
            "exited" => Ok(Self::Exited),
            _ => Err(format!("invalid state \"{text}\": running or exited")),
        }
    }
}

/// Whether an exec runs; `unknown` when a restarted daemon could no longer wait for it.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExecState {
    Running,
    Exited,
    Unknown,
}

/// Why a sandbox ended.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum EndReason {
    /// Its main process exited.
    Exited,
    /// Killed through the API.
    Killed,
    /// Its `timeout` passed.
    Timeout,
    /// Its `idle_timeout` passed without activity.
    IdleTimeout,
    /// Its memory limit was reached: the OOM killer ended it (exit code 137).
    Oom,
    /// It ended while no daemon was watching.
    StatusUnknown,
}

impl EndReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Exited => "exited",
            Self::Killed => "killed",
            Self::Timeout => "timeout",
            Self::IdleTimeout => "idle-timeout",
            Self::Oom => "oom",
            Self::StatusUnknown => "status-unknown",
        }
    }
}

/// `GET /v1/health`.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
}

/// `GET .../wait-ready`: the sandbox's probe passed.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct ReadyView {
    pub ready: bool,
}

/// `GET .../execs/{exec}/wait`.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct ExecWaitView {
    pub exit_code: Option<i32>,
    pub state: ExecState,
}

/// Every error: a status code and this body.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
    /// When the workload could not start: the status `run` exits with (127: not found,
    /// 126: cannot execute).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub exit_code: Option<i32>,
}

/// Now, as the API writes times (RFC 3339, milliseconds, UTC).
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// Whether `name` is a valid sandbox name.
pub fn valid_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("web-1.prod_a"));
        assert!(!valid_name(""));
        assert!(!valid_name("a b"));
        assert!(!valid_name(&"x".repeat(64)));
        assert!(valid_name(&"x".repeat(63)));
        assert!(!valid_name("é"));
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(
            serde_json::from_str::<CreateRequest>(r#"{"command":["true"],"comand":1}"#).is_err()
        );
        assert!(serde_json::from_str::<CreateRequest>(r#"{"policy":{"netwrk":"open"}}"#).is_err());
        let ok: CreateRequest =
            serde_json::from_str(r#"{"command":["true"],"policy":{"network":"open"}}"#).unwrap();
        assert_eq!(ok.command, vec!["true"]);
    }
}
