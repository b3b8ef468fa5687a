//! `sandbox-agent daemon`: one long-lived agent that owns the pinned programs, keeps sandbox
//! records in the state directory, and serves the API (`server`). One module per job:
//!
//! - `record`: a sandbox's record and live state, the registry of them;
//! - `create`: checking a create request and bringing a sandbox up (outside the registry's
//!   lock: reserve the name, build, publish);
//! - `live`: what changes a live sandbox: exec, policy, stdin, tokens (`sockets` reads and
//!   cuts its connections);
//! - `adopt`: taking the recorded sandboxes back after a restart;
//! - `supervise`: one task per sandbox (exit, timeouts, kill, probe) and the output trimmer;
//! - `serve`: the sockets, the gateway, the signal handling;
//! - `error`: the core's typed errors (`server` alone maps them to HTTP).
//!
//! Crash safety comes from the kernel side: programs, links and maps are pinned, so a dead
//! daemon leaves every sandbox confined (no redirect target answers: fail closed). A
//! restarted daemon re-adopts the records whose cgroups still have processes.
mod adopt;
mod create;
pub mod error;
mod event_share;
mod files;
mod live;
pub mod logs;
pub mod observe;
mod record;
mod serve;
pub mod server;
mod sockets;
mod supervise;

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
};

pub use error::{Error, Fault};
pub use record::{ExecEnd, Readiness, Sandbox, same_name};
pub use serve::serve;

use crate::{
    api::{CountersView, SandboxView},
    config::Config,
    domains,
    enforcement::{Enforcement, FileLock},
    ingress::directory::{Directory, Served},
    paths::Paths,
    policy::CompiledPolicy,
};
use record::{Registry, lock};

/// What the ingress needs from the daemon's start: TLS for the gateway and the tunnels.
struct IngressTls {
    gateway: Arc<rustls::ServerConfig>,
    tunnel: tokio_rustls::TlsAcceptor,
}

pub struct Daemon {
    pub config: Config,
    paths: Paths,
    enforcement: Mutex<Enforcement>,
    /// Taken briefly, never across a start: the gateway reads it on every request.
    registry: Mutex<Registry>,
    floor: Option<Arc<CompiledPolicy>>,
    upstream_dns: Option<SocketAddr>,
    upstream_proxy: Option<crate::upstream_proxy::UpstreamProxy>,
    pub observe: Arc<observe::Observe>,
    handle: tokio::runtime::Handle,
    /// Whether the floor has names only a resolver and proxy can enforce (from the config).
    floor_needs_services: bool,
    tokens: crate::ingress::tokens::Tokens,
    listeners: crate::enforcement::Listeners,
    ingress_tls: IngressTls,
    /// Where sandboxes' own uids come from (checked against the host's users at start).
    uid_range: crate::identity::UidRange,
    /// Size of each private tmpfs of a sandbox's view.
    tmp_bytes: u64,
    _daemon_lock: FileLock,
}

/// Why the daemon could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("another sandbox-agent daemon is running (it holds {0})")]
    AlreadyRunning(PathBuf),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Enforcement(#[from] crate::enforcement::EnforcementError),
    #[error("invalid config: {setting}: {source}")]
    Config {
        setting: &'static str,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The state directory is not the daemon's alone (`private_files`).
    #[error("{0}")]
    UnsafeStateDir(String),
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DaemonError {
    let path = path.to_owned();
    move |source| DaemonError::Io {
        action,
        path,
        source,
    }
}

fn config_err<E: std::error::Error + Send + Sync + 'static>(
    setting: &'static str,
) -> impl FnOnce(E) -> DaemonError {
    move |e| DaemonError::Config {
        setting,
        source: Box::new(e),
    }
}

impl Daemon {
    /// Takes the daemon lock, opens (or installs) the pinned programs, and re-adopts the
    /// sandboxes recorded in the state directory.
    pub fn start(config: Config, paths: Paths) -> Result<Arc<Self>, DaemonError> {
        crate::private_files::check_state_dir(&config.state_dir)
            .map_err(DaemonError::UnsafeStateDir)?;
        let sandboxes_dir = config.state_dir.join("sandboxes");
        crate::private_files::create_dir(&sandboxes_dir)
            .map_err(io_err("create", &sandboxes_dir))?;
        // Made above with `sandboxes`; what an older daemon left there is made private.
        crate::private_files::tighten(&config.state_dir)
            .map_err(io_err("make private", &config.state_dir))?;
        // One daemon per host: the kernel's event ring and the parent cgroup are the host's.
        fs::create_dir_all(&paths.run_dir).map_err(io_err("create", &paths.run_dir))?;
        let lock_path = paths.run_dir.join("daemon.lock");
        let daemon_lock = FileLock::try_acquire(&lock_path)
            .map_err(io_err("lock", &lock_path))?
            .ok_or_else(|| DaemonError::AlreadyRunning(lock_path.clone()))?;
        for gap in crate::scoping::host_gaps() {
            tracing::warn!("{gap}");
        }
        let floor = config.floor().map_err(config_err("floor_deny"))?;
        let upstream_dns = config
            .upstream_dns
            .as_deref()
            .map(domains::parse_upstream)
            .transpose()
            .map_err(config_err("upstream_dns"))?;
        let upstream_proxy = config
            .upstream_proxy
            .as_deref()
            .map(crate::upstream_proxy::parse)
            .transpose()
            .map_err(config_err("upstream_proxy"))?;
        let (mut enforcement, state) = Enforcement::open(&paths)?;
        enforcement.set_floor(floor.as_deref().cloned());
        tracing::info!(?state, "eBPF programs ready");
        let observe = Arc::new(observe::Observe::new(&paths)?);
        let listeners = crate::enforcement::Listeners::open(&paths)?;
        let ingress_tls = ingress_tls(&config)?;
        let floor_needs_services = config.floor_needs_domain_services();
        let uid_range = config
            .uid_range()
            .map_err(config_err("uid_first/uid_count"))?;
        let tmp_bytes = config
            .tmp_bytes()
            .map_err(|e| config_err("tmp_size")(std::io::Error::other(e)))?;
        let defaults = config
            .default_resources()
            .limits()
            .map_err(config_err("default_memory/default_cpus/default_pids"))?;
        // Default limits that no sandbox could get are refused now, not at every create.
        defaults
            .prepare(&enforcement.parent_cgroup)
            .map_err(config_err("default_memory/default_cpus/default_pids"))?;
        let daemon = Arc::new(Self {
            config,
            paths,
            enforcement: Mutex::new(enforcement),
            registry: Mutex::new(Registry::default()),
            floor,
            upstream_dns,
            upstream_proxy,
            observe,
            handle: tokio::runtime::Handle::current(),
            floor_needs_services,
            tokens: crate::ingress::tokens::Tokens::default(),
            listeners,
            ingress_tls,
            uid_range,
            tmp_bytes,
            _daemon_lock: daemon_lock,
        });
        daemon.adopt_all(&sandboxes_dir);
        // What is left of sandboxes nobody owns (no record, or an embedded run that died).
        crate::sandbox::collect_orphans(&daemon.paths, &mut daemon.enforcement());
        Ok(daemon)
    }

    pub fn tokens(&self) -> &crate::ingress::tokens::Tokens {
        &self.tokens
    }

    fn enforcement(&self) -> MutexGuard<'_, Enforcement> {
        lock(&self.enforcement)
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        lock(&self.registry)
    }

    /// Sandbox id by cgroup id (exec cgroups count as their sandbox), for kernel events.
    pub fn sandbox_of_cgroup(&self, cgroup_id: u64) -> Option<String> {
        self.registry().sandbox_of_cgroup(cgroup_id)
    }

    pub fn all(&self) -> Vec<Arc<Sandbox>> {
        self.registry().all().cloned().collect()
    }

    /// Looks a sandbox up by id or name (a live one first, else the latest of that name).
    pub fn find(&self, reference: &str) -> error::Result<Arc<Sandbox>> {
        self.registry().find(reference)
    }

    /// The view with live counters.
    pub fn view(&self, sandbox: &Sandbox) -> SandboxView {
        let mut view = sandbox.view();
        if sandbox.running() {
            view.counters = self
                .enforcement()
                .counters(view.cgroup_id)
                .map(CountersView::from);
        }
        view
    }

    /// Kernel counters of every live sandbox, by id, for metrics.
    pub fn live_counters(&self) -> Vec<(String, sandbox_common::Counters)> {
        let all = self.all();
        let enforcement = self.enforcement();
        all.iter()
            .filter(|s| s.running())
            .filter_map(|s| enforcement.counters(s.cgroup.id).map(|c| (s.id.clone(), c)))
            .collect()
    }
}

/// The gateway and the tunnels see the sandboxes through this, and nothing else of the daemon.
impl Directory for Daemon {
    fn live(&self, reference: &str) -> Option<Arc<dyn Served>> {
        self.find(reference)
            .ok()
            .filter(|s| s.running())
            .map(|s| s as Arc<dyn Served>)
    }

    fn tokens(&self) -> &crate::ingress::tokens::Tokens {
        &self.tokens
    }

    fn listeners(&self) -> &crate::enforcement::Listeners {
        &self.listeners
    }
}

fn ingress_tls(config: &Config) -> Result<IngressTls, DaemonError> {
    let dir = config.state_dir.join("ingress");
    let operator = config
        .ingress_tls_cert
        .as_deref()
        .zip(config.ingress_tls_key.as_deref());
    let (cert, key) =
        crate::ingress::tls::certificate_files(operator, &dir, &config.ingress_domain)
            .map_err(config_err("ingress TLS"))?;
    Ok(IngressTls {
        gateway: crate::ingress::tls::server_config(&cert, &key, &[b"h2", b"http/1.1"])
            .map_err(config_err("ingress TLS"))?,
        tunnel: tokio_rustls::TlsAcceptor::from(
            crate::ingress::tls::server_config(&cert, &key, &[])
                .map_err(config_err("ingress TLS"))?,
        ),
    })
}
