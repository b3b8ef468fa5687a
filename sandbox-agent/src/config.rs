//! The daemon's configuration file (`/etc/sandbox-agent/config.toml`). Every key is optional;
//! unknown keys are errors, so that a typo is not silently ignored.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::Deserialize;

use crate::policy::{self, CompiledPolicy, Mode, PolicySpec, Precedence, RawEntry};

pub const DEFAULT_CONFIG: &str = "/etc/sandbox-agent/config.toml";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/sandbox-agent";
pub const DEFAULT_SOCKET: &str = "/run/sandbox-agent/api.sock";

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Sandbox records and their output.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// The API's Unix socket (mode 0600: root only).
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// Where Prometheus scrapes `/metrics` (TCP); none by default.
    pub metrics_address: Option<SocketAddr>,
    /// Denied for every sandbox whatever its policy says: addresses, CIDRs, names, presets.
    #[serde(default = "default_floor")]
    pub floor_deny: Vec<String>,
    /// The resolver allowed names are looked up at; `/etc/resolv.conf`'s first by default.
    pub upstream_dns: Option<String>,
    /// An operator proxy the agent's own connections go through.
    pub upstream_proxy: Option<String>,
    /// Bytes of each output stream a sandbox keeps (older output is dropped).
    #[serde(default = "default_log_limit")]
    pub log_limit_bytes: u64,
    /// `text` or `json`.
    #[serde(default = "default_log_format")]
    pub log_format: String,
    /// The ingress gateway (HTTP and HTTPS on one port); `""` turns it off.
    #[serde(default = "default_ingress_address")]
    pub ingress_address: String,
    /// Host names `{port}-{sandbox}.{ingress_domain}` route to sandboxes' exposed ports.
    #[serde(default = "default_ingress_domain")]
    pub ingress_domain: String,
    /// The gateway's certificate chain and key (PEM); a self-signed pair for
    /// `*.{ingress_domain}` is made at first start when unset.
    pub ingress_tls_cert: Option<PathBuf>,
    pub ingress_tls_key: Option<PathBuf>,
    /// Where tunnels of raw TCP and TLS ports listen (each on a port the kernel picks).
    #[serde(default = "default_tunnel_host")]
    pub tunnel_host: std::net::IpAddr,
    /// Addresses of one DNS answer a sandbox's resolver passes on and learns.
    #[serde(default = "default_learned_per_answer")]
    pub learned_per_answer: u64,
    /// Learned addresses one sandbox may hold (a create's `max_learned_addresses` overrides
    /// it); the kernel's map is shared by every sandbox.
    #[serde(default = "default_learned_per_sandbox")]
    pub learned_per_sandbox: u64,
    /// First of the host uids (and gids) sandboxes get one each of; in no passwd file.
    #[serde(default = "default_uid_first")]
    pub uid_first: u32,
    /// How many ids the range holds: at most that many sandboxes with their own user at once.
    #[serde(default = "default_uid_count")]
    pub uid_count: u32,
    /// Size of a sandbox's private `/tmp`, `/var/tmp` and `/home` each (`512m`, `2g`).
    #[serde(default = "default_tmp_size")]
    pub tmp_size: String,
    /// Limits of every sandbox that does not set its own (`--memory`, `--cpus`, `--pids`);
    /// the daemon refuses to start where the cgroup v2 controller is missing.
    pub default_memory: Option<String>,
    pub default_cpus: Option<String>,
    pub default_pids: Option<String>,
    /// Largest file `cp` (the files API) moves into or out of a sandbox.
    #[serde(default = "default_max_file_bytes")]
    pub max_file_bytes: u64,
}

fn default_state_dir() -> PathBuf {
    DEFAULT_STATE_DIR.into()
}
fn default_socket() -> PathBuf {
    DEFAULT_SOCKET.into()
}
fn default_floor() -> Vec<String> {
    vec!["@cloud-metadata".into()]
}
fn default_log_limit() -> u64 {
    16 * 1024 * 1024
}
fn default_log_format() -> String {
    "text".into()
}
fn default_ingress_address() -> String {
    "127.0.0.1:7480".into()
}
fn default_ingress_domain() -> String {
    "sandbox.localhost".into()
}
fn default_learned_per_answer() -> u64 {
    crate::learned::DEFAULT_PER_ANSWER as u64
}
fn default_learned_per_sandbox() -> u64 {
    crate::learned::DEFAULT_PER_SANDBOX as u64
}
fn default_uid_first() -> u32 {
    crate::identity::DEFAULT_FIRST
}
fn default_uid_count() -> u32 {
    crate::identity::DEFAULT_COUNT
}
fn default_max_file_bytes() -> u64 {
    256 << 20
}
fn default_tmp_size() -> String {
    "512m".into()
}
fn default_tunnel_host() -> std::net::IpAddr {
    std::net::Ipv4Addr::LOCALHOST.into()
}

impl Default for Config {
    fn default() -> Self {
        toml::from_str("").expect("the empty config is valid")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config {path}: floor_deny: {source}")]
    Floor {
        path: PathBuf,
        source: Box<policy::PolicyError>,
    },
}

impl Config {
    /// The learned-address caps of a sandbox: the configured ones, its own per-sandbox cap
    /// if it gave one.
    pub fn learned_limits(
        &self,
        per_sandbox: Option<u64>,
    ) -> Result<crate::learned::Limits, crate::learned::LimitError> {
        crate::learned::Limits::checked(
            self.learned_per_answer,
            per_sandbox.unwrap_or(self.learned_per_sandbox),
        )
    }

    /// The range sandboxes' own uids come from, checked against the host's users.
    pub fn uid_range(&self) -> Result<crate::identity::UidRange, crate::identity::IdentityError> {
        crate::identity::UidRange {
            first: self.uid_first,
            count: self.uid_count,
        }
        .check()
    }

    /// The default limits, as a create request gives limits.
    pub fn default_resources(&self) -> crate::api::Resources {
        crate::api::Resources {
            memory: self.default_memory.clone(),
            cpus: self.default_cpus.clone(),
            pids: self.default_pids.clone(),
        }
    }

    /// `tmp_size` in bytes.
    pub fn tmp_bytes(&self) -> Result<u64, String> {
        crate::limits::parse_bytes(&self.tmp_size)
            .map_err(|e| format!("invalid tmp_size \"{}\": {e}", self.tmp_size))
    }

    /// Host directories no sandbox may see besides the fixed ones: the daemon's state and
    /// the agent's runtime directories. (The API socket, wherever it is, is covered with the
    /// host's other unix sockets: `view` covers every one the host listens on.)
    pub fn hidden_dirs(&self, paths: &crate::paths::Paths) -> Vec<PathBuf> {
        vec![
            self.state_dir.clone(),
            paths.run_dir.clone(),
            paths.pin_dir.clone(),
        ]
    }

    /// Reads `path`; a missing file at the default location means the defaults.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let (path, required) = match path {
            Some(p) => (p, true),
            None => (Path::new(DEFAULT_CONFIG), false),
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.into(),
                    source,
                });
            }
        };
        let config: Self = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.message().trim().replace('\n', " "),
        })?;
        config
            .learned_limits(None)
            .map_err(|e| ConfigError::Parse {
                path: path.into(),
                message: format!("learned_per_answer/learned_per_sandbox: {e}"),
            })?;
        if !matches!(config.log_format.as_str(), "text" | "json") {
            return Err(ConfigError::Parse {
                path: path.into(),
                message: format!(
                    "log_format must be \"text\" or \"json\", not \"{}\"",
                    config.log_format
                ),
            });
        }
        if !config.ingress_address.is_empty() && config.ingress_address().is_none() {
            return Err(ConfigError::Parse {
                path: path.into(),
                message: format!(
                    "ingress_address must be ADDRESS:PORT or \"\", not \"{}\"",
                    config.ingress_address
                ),
            });
        }
        if !matches!(
            crate::policy::parse_entry(&config.ingress_domain),
            Ok(crate::policy::Entry::Domain(_))
        ) {
            return Err(ConfigError::Parse {
                path: path.into(),
                message: format!(
                    "ingress_domain must be a domain name, not \"{}\"",
                    config.ingress_domain
                ),
            });
        }
        if config.ingress_tls_cert.is_some() != config.ingress_tls_key.is_some() {
            return Err(ConfigError::Parse {
                path: path.into(),
                message: "ingress_tls_cert and ingress_tls_key go together".into(),
            });
        }
        config.floor().map_err(|source| ConfigError::Floor {
            path: path.into(),
            source: Box::new(source),
        })?;
        Ok(config)
    }

    /// The gateway's address, `None` when it is off.
    pub fn ingress_address(&self) -> Option<SocketAddr> {
        self.ingress_address.parse().ok()
    }

    /// The host floor as a policy (`open` minus `floor_deny`), `None` when it is empty.
    pub fn floor(&self) -> Result<Option<Arc<CompiledPolicy>>, policy::PolicyError> {
        floor_policy(&self.floor_deny)
    }

    /// Whether the floor denies names that only the resolver and proxy can enforce, so that
    /// every sandbox needs them. `@cloud-metadata`'s name resolves only to the preset's own
    /// addresses, which the floor denies in the kernel anyway: the default floor needs none.
    pub fn floor_needs_domain_services(&self) -> bool {
        self.floor_deny
            .iter()
            .filter_map(|e| policy::parse_entry(e).ok())
            .any(|e| match e {
                policy::Entry::Domain(_) | policy::Entry::Wildcard(_) => true,
                policy::Entry::Preset(p) => {
                    p != policy::Preset::CloudMetadata && !p.names().is_empty()
                }
                policy::Entry::Net(_) => false,
            })
    }
}

/// The host floor for these entries: a policy that allows everything but them.
pub fn floor_policy(deny: &[String]) -> Result<Option<Arc<CompiledPolicy>>, policy::PolicyError> {
    if deny.is_empty() {
        return Ok(None);
    }
    let origin: Arc<str> = "floor_deny".into();
    let spec = PolicySpec {
        mode: Mode::Open,
        precedence: Precedence::DenyWins,
        allow_out: Vec::new(),
        deny_out: deny
            .iter()
            .map(|text| RawEntry {
                text: text.clone(),
                origin: origin.clone(),
                file: None,
            })
            .collect(),
    };
    policy::compile(&spec).map(|p| Some(Arc::new(p)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_deny_cloud_metadata() {
        let c = Config::default();
        assert_eq!(c.floor_deny, vec!["@cloud-metadata".to_string()]);
        let floor = c.floor().unwrap().unwrap();
        assert!(!floor.decide_name("metadata.google.internal").allow);
        assert!(floor.decide_name("example.com").allow);
        assert!(!c.floor_needs_domain_services());
        let named = Config {
            floor_deny: vec!["@cloud-metadata".into(), "*.evil.example".into()],
            ..c.clone()
        };
        assert!(named.floor_needs_domain_services());
    }

    #[test]
    fn the_shipped_example_parses() {
        let c: Config = toml::from_str(include_str!("../../dist/config.toml")).unwrap();
        assert_eq!(c.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(c.log_limit_bytes, 16 * 1024 * 1024);
    }

    #[test]
    fn unknown_keys_and_bad_floors_are_refused() {
        assert!(toml::from_str::<Config>("sockets = \"/x\"").is_err());
        assert!(floor_policy(&["10.0.0.0/33".into()]).is_err());
        assert!(floor_policy(&[]).unwrap().is_none());
    }
}
