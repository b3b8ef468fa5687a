//! `sandbox-agent daemon`: one long-lived agent that owns the pinned programs, keeps sandbox
//! records in the state directory, and serves the API (`server`). Sandboxes are supervised
//! by one task each (`supervise`): exit, timeout, idle timeout, kill, output trimming.
//!
//! Crash safety comes from the kernel side: programs, links and maps are pinned, so a dead
//! daemon leaves every sandbox confined (no redirect target answers: fail closed). A
//! restarted daemon re-adopts the records whose cgroups still have processes.
mod event_share;
pub mod logs;
pub mod observe;
pub mod server;

use std::{
    collections::{BTreeMap, HashMap},
    ffi::OsString,
    fs,
    io::Write as _,
    net::SocketAddr,
    os::fd::{AsRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::{Notify, watch};

use crate::{
    api::{CountersView, CreateRequest, ExecRequest, ExecView, ProbeSpec, SandboxView, WaitView},
    cgroup::SandboxCgroup,
    config::Config,
    domains::{self, Bound, DomainOptions, DomainServices},
    enforcement::{Enforcement, FileLock, random_id},
    events::Events,
    launch::{self, Child},
    paths::Paths,
    policy::{self, CompiledPolicy, Mode, PolicyFile},
    workload::{self, Workload},
};

/// Default and largest lifetime of a sandbox.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_mins(5);
pub const MAX_TIMEOUT: Duration = Duration::from_hours(24);
/// How long killing a sandbox may take.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a supervisor looks at idleness (only sandboxes with an idle timeout).
const TICK: Duration = Duration::from_millis(250);
/// How long requests in flight may take to finish when the daemon stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// How often output files are checked against `log_limit_bytes` (one task for all).
const TRIM_EVERY: Duration = Duration::from_secs(2);

/// An API error: an HTTP status and a one-line message.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    /// For a workload that could not start: 127 not found, 126 cannot execute.
    pub exit_code: Option<i32>,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: 400,
            message: message.into(),
            exit_code: None,
        }
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: 404,
            message: message.into(),
            exit_code: None,
        }
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self {
            status: 409,
            message: message.into(),
            exit_code: None,
        }
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            status: 500,
            message: message.into(),
            exit_code: None,
        }
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Readiness of a sandbox's probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    NoProbe,
    Pending,
    Ready,
    Failed(String),
}

/// One exec'd command that is still running.
struct ExecLive {
    /// Its own cgroup when it has a narrower policy (else it runs in the sandbox's).
    cgroup: Option<SandboxCgroup>,
    policy_id: u32,
    policy: Option<Arc<CompiledPolicy>>,
    services: Option<DomainServices>,
    exit: watch::Sender<Option<ExecEnd>>,
}

/// How an exec ended: its status, `None` when unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecEnd(pub Option<i32>);

/// What only the running daemon holds for a sandbox.
struct Inner {
    policy: Arc<CompiledPolicy>,
    /// The kernel id of `policy`; changes only under this lock.
    policy_id: u32,
    /// Set when the supervisor tears the sandbox down: no exec or policy change after that.
    closing: bool,
    services: Option<DomainServices>,
    stdin: Option<fs::File>,
    execs: HashMap<u32, ExecLive>,
    next_exec: u32,
    last_activity: Instant,
    /// Listeners of its exposed TLS and TCP ports.
    tunnels: Vec<crate::ingress::tunnel::Tunnel>,
}

pub struct Sandbox {
    pub id: String,
    dir: PathBuf,
    cgroup: SandboxCgroup,
    view: Mutex<SandboxView>,
    inner: Mutex<Inner>,
    ended: watch::Sender<bool>,
    ready: watch::Sender<Readiness>,
    kill: Notify,
    kill_reason: Mutex<Option<&'static str>>,
    /// Requests and connections through the ingress now (activity for the idle timeout).
    open_ingress: std::sync::atomic::AtomicUsize,
    /// Held while the sandbox may have kernel state (not for a record of an ended one).
    _lock: Option<FileLock>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Sandbox {
    /// `state`: whether it runs, and its readiness.
    fn new(
        view: SandboxView,
        dir: &Path,
        cgroup: SandboxCgroup,
        inner: Inner,
        (running, readiness): (bool, Readiness),
        lock: Option<FileLock>,
    ) -> Arc<Self> {
        Arc::new(Self {
            id: view.id.clone(),
            dir: dir.to_owned(),
            cgroup,
            view: Mutex::new(view),
            inner: Mutex::new(inner),
            ended: watch::channel(!running).0,
            ready: watch::channel(readiness).0,
            kill: Notify::new(),
            kill_reason: Mutex::new(None),
            open_ingress: std::sync::atomic::AtomicUsize::new(0),
            _lock: lock,
        })
    }

    pub fn view(&self) -> SandboxView {
        lock(&self.view).clone()
    }

    pub fn running(&self) -> bool {
        !*self.ended.borrow()
    }

    fn save(&self) {
        let view = self.view();
        if let Err(e) = write_atomic(&self.dir.join("record.json"), &view) {
            tracing::warn!(sandbox = %self.id, "cannot save record: {e}");
        }
    }

    fn update(&self, f: impl FnOnce(&mut SandboxView)) {
        f(&mut lock(&self.view));
        self.save();
    }

    fn touch(&self) {
        lock(&self.inner).last_activity = Instant::now();
    }

    pub fn log_path(&self, stream: &str) -> PathBuf {
        self.dir.join(format!("{stream}.log"))
    }

    pub fn exec_log_path(&self, exec: u32, stream: &str) -> PathBuf {
        self.dir.join(format!("exec-{exec}.{stream}.log"))
    }

    pub fn ended_rx(&self) -> watch::Receiver<bool> {
        self.ended.subscribe()
    }

    /// Loopback ports of its resolver and proxy (0: none).
    fn service_ports(&self) -> (u16, u16) {
        domains::service_ports(lock(&self.inner).services.as_ref())
    }

    /// Its cgroup and those of its narrowed execs (where its listeners may be).
    pub fn cgroup_ids(&self) -> Vec<u64> {
        std::iter::once(self.cgroup.id)
            .chain(
                lock(&self.inner)
                    .execs
                    .values()
                    .filter_map(|e| e.cgroup.as_ref().map(|c| c.id)),
            )
            .collect()
    }

    /// Counts a request or connection through the ingress as activity while it lasts.
    pub fn ingress_activity(self: &Arc<Self>) -> IngressActivity {
        self.open_ingress
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.touch();
        IngressActivity(self.clone())
    }

    pub fn exec_exit_rx(&self, exec: u32) -> Option<watch::Receiver<Option<ExecEnd>>> {
        lock(&self.inner)
            .execs
            .get(&exec)
            .map(|e| e.exit.subscribe())
    }
}

/// A request or connection through the ingress, open while this lives.
pub struct IngressActivity(Arc<Sandbox>);

impl Drop for IngressActivity {
    fn drop(&mut self) {
        self.0
            .open_ingress
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        self.0.touch();
    }
}

/// What the ingress needs from the daemon's start: TLS for the gateway and the tunnels.
struct IngressTls {
    gateway: Arc<rustls::ServerConfig>,
    tunnel: tokio_rustls::TlsAcceptor,
}

pub struct Daemon {
    pub config: Config,
    paths: Paths,
    enforcement: Mutex<Enforcement>,
    sandboxes: Mutex<BTreeMap<String, Arc<Sandbox>>>,
    floor: Option<Arc<CompiledPolicy>>,
    upstream_dns: Option<SocketAddr>,
    upstream_proxy: Option<crate::proxy::upstream::UpstreamProxy>,
    pub observe: Arc<observe::Observe>,
    handle: tokio::runtime::Handle,
    /// Whether the floor has names only a resolver and proxy can enforce (from the config).
    floor_needs_services: bool,
    tokens: crate::ingress::tokens::Tokens,
    listeners: crate::enforcement::Listeners,
    ingress_tls: IngressTls,
    _daemon_lock: FileLock,
}

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
    #[error("invalid config: {0}")]
    Config(String),
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
        let floor = config
            .floor()
            .map_err(|e| DaemonError::Config(format!("floor_deny: {e}")))?;
        let upstream_dns = config
            .upstream_dns
            .as_deref()
            .map(domains::parse_upstream)
            .transpose()
            .map_err(|e| DaemonError::Config(format!("upstream_dns: {e}")))?;
        let upstream_proxy = config
            .upstream_proxy
            .as_deref()
            .map(crate::proxy::upstream::parse)
            .transpose()
            .map_err(|e| DaemonError::Config(format!("upstream_proxy: {e}")))?;
        let (mut enforcement, state) = Enforcement::open(&paths)?;
        enforcement.set_floor(floor.as_deref().cloned());
        tracing::info!(?state, "eBPF programs ready");
        let observe = Arc::new(observe::Observe::new(&paths)?);
        let listeners = crate::enforcement::Listeners::open(&paths)?;
        let ingress_tls = ingress_tls(&config)?;
        let floor_needs_services = config.floor_needs_domain_services();
        let daemon = Arc::new(Self {
            config,
            paths,
            enforcement: Mutex::new(enforcement),
            sandboxes: Mutex::new(BTreeMap::new()),
            floor,
            upstream_dns,
            upstream_proxy,
            observe,
            handle: tokio::runtime::Handle::current(),
            floor_needs_services,
            tokens: crate::ingress::tokens::Tokens::default(),
            listeners,
            ingress_tls,
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

    pub fn listeners(&self) -> &crate::enforcement::Listeners {
        &self.listeners
    }

    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }

    pub fn gateway_tls(&self) -> Arc<rustls::ServerConfig> {
        self.ingress_tls.gateway.clone()
    }

    /// Where the exposed ports of a sandbox are reached, with new tunnels for its TLS and
    /// TCP ports (at `previous` addresses when re-adopted and free).
    fn open_ports(
        self: &Arc<Self>,
        sandbox: &str,
        ports: &[crate::api::ExposedPort],
        previous: &[crate::api::PortView],
    ) -> ApiResult<(
        Vec<crate::api::PortView>,
        Vec<crate::ingress::tunnel::Tunnel>,
    )> {
        use crate::api::{PortProtocol, PortView};
        let mut views = Vec::new();
        let mut tunnels = Vec::new();
        for p in ports {
            if p.protocol.is_http() {
                let gateway = self.config.ingress_address().ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "port {}: HTTP ports need the ingress gateway (ingress_address in the config)",
                        p.port
                    ))
                })?;
                let (url, path_url) = crate::ingress::port_urls(
                    gateway,
                    &self.config.ingress_domain,
                    sandbox,
                    p.port,
                );
                views.push(PortView {
                    port: p.port,
                    protocol: p.protocol,
                    url,
                    path_url: Some(path_url),
                    tunnel: None,
                });
                continue;
            }
            let preferred = previous
                .iter()
                .find(|v| v.port == p.port && v.protocol == p.protocol)
                .and_then(|v| v.tunnel);
            let tls = (p.protocol == PortProtocol::Tls).then(|| self.ingress_tls.tunnel.clone());
            let tunnel = crate::ingress::tunnel::open(
                self,
                sandbox,
                p.port,
                tls,
                self.config.tunnel_host,
                preferred,
            )
            .map_err(|e| ApiError::internal(format!("tunnel for port {}: {e}", p.port)))?;
            views.push(PortView {
                port: p.port,
                protocol: p.protocol,
                url: format!("{}://{}", p.protocol.as_str(), tunnel.addr),
                path_url: None,
                tunnel: Some(tunnel.addr),
            });
            tunnels.push(tunnel);
        }
        Ok((views, tunnels))
    }

    fn enforcement(&self) -> MutexGuard<'_, Enforcement> {
        lock(&self.enforcement)
    }

    /// Sandbox id by cgroup id (exec cgroups count as their sandbox), for kernel events.
    pub fn sandbox_of_cgroup(&self, cgroup_id: u64) -> Option<String> {
        lock(&self.sandboxes).values().find_map(|s| {
            let v = lock(&s.view);
            (v.cgroup_id == cgroup_id || v.execs.iter().any(|e| e.cgroup_id == cgroup_id))
                .then(|| s.id.clone())
        })
    }

    pub fn all(&self) -> Vec<Arc<Sandbox>> {
        lock(&self.sandboxes).values().cloned().collect()
    }

    /// Looks a sandbox up by id or name (a live one first, else the latest of that name).
    pub fn find(&self, reference: &str) -> ApiResult<Arc<Sandbox>> {
        let all = lock(&self.sandboxes);
        if let Some(s) = all.get(reference) {
            return Ok(s.clone());
        }
        let mut named: Vec<&Arc<Sandbox>> = all
            .values()
            .filter(|s| {
                lock(&s.view)
                    .name
                    .as_deref()
                    .is_some_and(|n| same_name(n, reference))
            })
            .collect();
        named.sort_by_key(|s| (s.running(), lock(&s.view).created_at.clone()));
        named.last().map(|s| (*s).clone()).ok_or_else(|| {
            ApiError::not_found(format!("no sandbox with id or name \"{reference}\""))
        })
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

    fn domain_options(
        &self,
        sandbox_id: &str,
        max_learned: Option<u64>,
    ) -> ApiResult<DomainOptions> {
        let learned_limits = self
            .config
            .learned_limits(max_learned)
            .map_err(|e| ApiError::bad_request(format!("max_learned_addresses: {e}")))?;
        let upstream_dns = match self.upstream_dns {
            Some(a) => a,
            None => domains::upstream_from_resolv_conf(Path::new("/etc/resolv.conf"))
                .map_err(|e| ApiError::internal(format!("upstream DNS: {e}")))?,
        };
        let observe = self.observe.clone();
        let id = sandbox_id.to_owned();
        Ok(DomainOptions {
            upstream_dns,
            upstream_proxy: self.upstream_proxy.clone(),
            events: Arc::new(Events::hook(move |e| observe.flow_event(&id, e))),
            learned_limits,
        })
    }

    /// Whether a sandbox with this policy needs its own resolver and proxy.
    fn needs_services(&self, policy: &CompiledPolicy, proxy_env: bool) -> bool {
        policy.has_names() || proxy_env || self.floor_needs_services
    }

    /// The name layers of a sandbox's own policy: own, then the floor.
    fn layers(&self, own: &Arc<CompiledPolicy>) -> Vec<Arc<CompiledPolicy>> {
        std::iter::once(own.clone())
            .chain(self.floor.iter().cloned())
            .collect()
    }

    pub fn create(self: &Arc<Self>, req: CreateRequest) -> ApiResult<SandboxView> {
        let Checked {
            timeout,
            idle_timeout,
            policy: compiled,
            command,
            cwd,
            mut spec,
        } = check_create(&req)?;
        let user = req
            .user
            .clone()
            .unwrap_or_else(|| crate::user::DEFAULT_USER.into());

        // The name check and the insertion happen under one lock: no two live sandboxes
        // can take one name.
        let mut all = lock(&self.sandboxes);
        if let Some(name) = &req.name {
            name_free(&all, name)?;
        }
        let id = random_id();
        let (ports, tunnels) = self.open_ports(&id, &req.ports, &[])?;
        let dir = self.config.state_dir.join("sandboxes").join(&id);
        crate::private_files::create_dir(&dir)
            .map_err(|e| ApiError::internal(format!("create {}: {e}", dir.display())))?;
        let traffic_token = req
            .private_ports
            .then(|| self.tokens.issue_traffic(&id, &dir))
            .transpose()
            .map_err(|e| {
                let _ = fs::remove_dir_all(&dir);
                ApiError::internal(e.to_string())
            })?;
        let built = self.build_sandbox(&id, &dir, &compiled, &req, &mut spec);
        let (sandbox, child) = match built {
            Ok(v) => v,
            Err(e) => {
                self.tokens.forget(&id, &dir);
                let _ = fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        lock(&sandbox.inner).tunnels = tunnels;
        // Read before the literal: two guards of one mutex in one statement would deadlock.
        let policy_id = lock(&sandbox.view).policy_id;
        let (dns_port, proxy_port) = sandbox.service_ports();
        let view = SandboxView {
            id: id.clone(),
            name: req.name.clone(),
            tags: req.tags.clone(),
            state: "running".into(),
            ready: req.probe.is_none(),
            command,
            cwd,
            user,
            policy: req.policy.clone(),
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            idle_timeout_ms: idle_timeout.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
            probe: req.probe.clone(),
            stdin: req.stdin,
            proxy_env: req.proxy_env,
            created_at: now_rfc3339(),
            ended_at: None,
            exit_code: None,
            end_reason: None,
            pid: child.pid,
            cgroup_id: sandbox.cgroup.id,
            policy_id,
            dns_port,
            proxy_port,
            execs: Vec::new(),
            ports,
            private_ports: req.private_ports,
            mask_host: req.mask_host.clone(),
            max_learned_addresses: req.max_learned_addresses,
            traffic_token: None,
            counters: None,
        };
        *lock(&sandbox.view) = view.clone();
        sandbox.save();
        // The traffic token is in this answer only (the record keeps its hash).
        let view = SandboxView {
            traffic_token,
            ..view
        };
        all.insert(id.clone(), sandbox.clone());
        drop(all);
        self.observe.sandbox_started();
        self.handle.spawn(supervise(
            self.clone(),
            sandbox.clone(),
            Some(child),
            timeout,
            idle_timeout,
        ));
        if let Some(probe) = req.probe {
            self.handle.spawn(probe_task(self.clone(), sandbox, probe));
        }
        tracing::info!(sandbox = %id, "created");
        Ok(view)
    }

    /// Cgroup, kernel entries, domain services, output files and the workload; on error
    /// everything made so far is undone.
    fn build_sandbox(
        self: &Arc<Self>,
        id: &str,
        dir: &Path,
        compiled: &Arc<CompiledPolicy>,
        req: &CreateRequest,
        spec: &mut launch::LaunchSpec,
    ) -> ApiResult<(Arc<Sandbox>, Child)> {
        let locks = self.paths.sandbox_locks();
        fs::create_dir_all(&locks).map_err(|e| ApiError::internal(e.to_string()))?;
        let lock_path = self.paths.sandbox_lock(id);
        let file_lock =
            FileLock::acquire(&lock_path).map_err(|e| ApiError::internal(e.to_string()))?;
        let parent = self.enforcement().parent_cgroup.clone();
        // One way out on error: what `start_in` made is undone by it, the cgroup and the
        // lock here.
        let started = SandboxCgroup::create(&parent, id)
            .map_err(|e| ApiError::internal(e.to_string()))
            .and_then(
                |cgroup| match self.start_in(id, &cgroup, dir, compiled, req, spec) {
                    Ok(started) => Ok((cgroup, started)),
                    Err(e) => {
                        let _ = cgroup.remove();
                        Err(e)
                    }
                },
            );
        let (cgroup, (policy_id, services, child, stdin_write)) = match started {
            Ok(v) => v,
            Err(e) => {
                drop(file_lock);
                let _ = fs::remove_file(&lock_path);
                return Err(e);
            }
        };
        let readiness = if req.probe.is_some() {
            Readiness::Pending
        } else {
            Readiness::NoProbe
        };
        let inner = Inner {
            policy: compiled.clone(),
            policy_id,
            closing: false,
            services,
            stdin: stdin_write,
            execs: HashMap::new(),
            next_exec: 1,
            last_activity: Instant::now(),
            tunnels: Vec::new(),
        };
        let sandbox = Sandbox::new(
            placeholder_view(id, policy_id),
            dir,
            cgroup,
            inner,
            (true, readiness),
            Some(file_lock),
        );
        Ok((sandbox, child))
    }

    /// In a new sandbox's cgroup: its resolver and proxy (if needed), its kernel entry, the
    /// workload. On error, what was made here is undone (not the cgroup).
    fn start_in(
        self: &Arc<Self>,
        id: &str,
        cgroup: &SandboxCgroup,
        dir: &Path,
        compiled: &Arc<CompiledPolicy>,
        req: &CreateRequest,
        spec: &mut launch::LaunchSpec,
    ) -> ApiResult<(u32, Option<DomainServices>, Child, Option<fs::File>)> {
        let services = if self.needs_services(compiled, req.proxy_env) {
            Some(self.start_services(id, self.layers(compiled), None, req.max_learned_addresses)?)
        } else {
            None
        };
        let policy_id = self
            .enforcement()
            .apply(
                cgroup.id,
                compiled,
                domains::service_ports(services.as_ref()),
            )
            .map_err(|e| ApiError::internal(crate::error_line(&e)))?;
        if let Some(s) = &services {
            s.bind(Bound {
                cgroup_id: cgroup.id,
                policy_id,
            });
            if req.proxy_env {
                crate::sandbox::set_proxy_env(spec, s.proxy_port);
            }
        }
        match spawn_workload(cgroup, spec, dir, req.stdin) {
            Ok((child, stdin)) => Ok((policy_id, services, child, stdin)),
            Err(e) => {
                self.enforcement()
                    .remove(cgroup.id, policy_id, Some(compiled));
                let _ = cgroup.kill_all(KILL_TIMEOUT);
                Err(e)
            }
        }
    }

    /// `max_learned`: the sandbox's own cap on learned addresses, if it set one.
    fn start_services(
        &self,
        id: &str,
        layers: Vec<Arc<CompiledPolicy>>,
        preferred_ports: Option<(u16, u16)>,
        max_learned: Option<u64>,
    ) -> ApiResult<DomainServices> {
        DomainServices::start_on(
            &self.handle,
            &self.paths,
            id,
            layers,
            self.domain_options(id, max_learned)?,
            preferred_ports,
        )
        .map_err(|e| ApiError::internal(crate::error_line(&e)))
    }

    /// A connect token for a live sandbox's HTTP ports.
    pub fn issue_token(
        &self,
        sandbox: &Sandbox,
        req: crate::api::TokenRequest,
    ) -> ApiResult<crate::api::TokenView> {
        if !sandbox.running() {
            return Err(ApiError::conflict(format!(
                "sandbox {} has ended",
                sandbox.id
            )));
        }
        let mut view = self
            .tokens
            .issue(&sandbox.id, &sandbox.dir, req.user_metadata)
            .map_err(|e| match e {
                crate::ingress::tokens::TokenError::MetadataTooLarge(_)
                | crate::ingress::tokens::TokenError::MetadataNotAHeader => {
                    ApiError::bad_request(e.to_string())
                }
                _ => ApiError::internal(e.to_string()),
            })?;
        view.urls = sandbox
            .view()
            .ports
            .into_iter()
            .filter(|p| p.protocol.is_http())
            .collect();
        Ok(view)
    }

    pub fn revoke_token(&self, sandbox: &Sandbox, id: &str) -> ApiResult<()> {
        self.tokens
            .revoke(&sandbox.id, &sandbox.dir, id)
            .map_err(|e| match e {
                crate::ingress::tokens::TokenError::Unknown(_) => {
                    ApiError::not_found(e.to_string())
                }
                _ => ApiError::internal(e.to_string()),
            })
    }

    /// Asks the supervisor to kill the sandbox; returns at once.
    pub fn kill(&self, sandbox: &Sandbox, reason: &'static str) {
        lock(&sandbox.kill_reason).get_or_insert(reason);
        sandbox.kill.notify_one();
    }

    /// Removes an ended sandbox's record and output (`force` kills a live one first).
    pub async fn remove(&self, sandbox: Arc<Sandbox>, force: bool) -> ApiResult<()> {
        if sandbox.running() {
            if !force {
                return Err(ApiError::conflict(format!(
                    "sandbox {} is running: kill it first, or remove with force",
                    sandbox.id
                )));
            }
            self.kill(&sandbox, "killed");
            let mut ended = sandbox.ended_rx();
            let _ = ended.wait_for(|e| *e).await;
        }
        lock(&self.sandboxes).remove(&sandbox.id);
        fs::remove_dir_all(&sandbox.dir)
            .map_err(|e| ApiError::internal(format!("remove {}: {e}", sandbox.dir.display())))?;
        Ok(())
    }

    /// Writes to the workload's stdin; blocks while the pipe is full (call it off the
    /// runtime), without holding the sandbox's lock meanwhile.
    pub fn write_stdin(&self, sandbox: &Sandbox, data: &[u8]) -> ApiResult<()> {
        let stdin = {
            let mut inner = lock(&sandbox.inner);
            inner.last_activity = Instant::now();
            inner.stdin.as_ref().map(fs::File::try_clone)
        };
        let Some(stdin) = stdin else {
            return Err(ApiError::conflict(format!(
                "sandbox {} has no open stdin (create it with \"stdin\": true; a closed stdin stays closed)",
                sandbox.id
            )));
        };
        let result = stdin.and_then(|mut f| f.write_all(data));
        sandbox.touch();
        result.map_err(|e| ApiError::conflict(format!("stdin of sandbox {}: {e}", sandbox.id)))
    }

    pub fn close_stdin(&self, sandbox: &Sandbox) -> ApiResult<()> {
        let mut inner = lock(&sandbox.inner);
        inner.last_activity = Instant::now();
        match inner.stdin.take() {
            Some(_) => Ok(()),
            None => Err(ApiError::conflict(format!(
                "sandbox {} has no open stdin",
                sandbox.id
            ))),
        }
    }

    /// Runs a command in a live sandbox, under a narrower policy if one is given.
    pub fn exec(
        self: &Arc<Self>,
        sandbox: &Arc<Sandbox>,
        req: &ExecRequest,
    ) -> ApiResult<ExecView> {
        if !sandbox.running() {
            return Err(ApiError::conflict(format!(
                "sandbox {} has ended",
                sandbox.id
            )));
        }
        let view = sandbox.view();
        let cwd = req.cwd.clone().unwrap_or_else(|| view.cwd.clone());
        let user = req.user.clone().or(Some(view.user.clone()));
        let mut spec = prepare_workload(&req.command, &req.env, &cwd, user.as_deref())?;
        let narrowed = req
            .policy
            .as_ref()
            .map(|p| {
                policy::compile(&p.spec("policy.", Mode::Open))
                    .map(Arc::new)
                    .map_err(|e| ApiError::bad_request(e.to_string()))
            })
            .transpose()?;
        let mut inner = lock(&sandbox.inner);
        if inner.closing {
            return Err(ApiError::conflict(format!(
                "sandbox {} is ending",
                sandbox.id
            )));
        }
        let exec_id = inner.next_exec;
        inner.next_exec += 1;
        inner.last_activity = Instant::now();
        // A narrowed exec runs in a cgroup of its own below the sandbox's, whose kernel entry
        // has the sandbox's policy and the floor as outer layers.
        let (cgroup, policy_id, services) = match &narrowed {
            None => (None, inner.policy_id, None),
            Some(p) => {
                let (cg, id, services) =
                    self.narrowed_cgroup(sandbox, &inner.policy, exec_id, p)?;
                (Some(cg), id, services)
            }
        };
        let target = cgroup.as_ref().unwrap_or(&sandbox.cgroup);
        let spawned = (|| {
            let stdout = logs::create(&sandbox.exec_log_path(exec_id, "stdout"))?;
            let stderr = logs::create(&sandbox.exec_log_path(exec_id, "stderr"))?;
            let null = fs::File::open("/dev/null")?;
            spec.stdio = Some([null.as_raw_fd(), stdout.as_raw_fd(), stderr.as_raw_fd()]);
            spec.new_session = true;
            let fd = target
                .open_fd()
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            launch::spawn(&spec, &fd).map_err(|e| std::io::Error::other(crate::error_line(&e)))
        })();
        let child = match spawned {
            Ok(c) => c,
            Err(e) => {
                if let Some(cg) = &cgroup {
                    self.enforcement()
                        .remove(cg.id, policy_id, narrowed.as_deref());
                    let _ = cg.remove();
                }
                return Err(ApiError::bad_request(format!("exec: {e}")));
            }
        };
        let exec_view = ExecView {
            id: exec_id,
            command: req.command.clone(),
            state: "running".into(),
            exit_code: None,
            policy: req.policy.clone(),
            cgroup_id: cgroup.as_ref().map_or(sandbox.cgroup.id, |c| c.id),
        };
        let (exit, _) = watch::channel(None);
        inner.execs.insert(
            exec_id,
            ExecLive {
                cgroup,
                policy_id,
                policy: narrowed,
                services,
                exit,
            },
        );
        drop(inner);
        sandbox.update(|v| v.execs.push(exec_view.clone()));
        self.handle.spawn(supervise_exec(
            self.clone(),
            sandbox.clone(),
            exec_id,
            child,
        ));
        Ok(exec_view)
    }

    /// The cgroup of an exec narrowed below its sandbox: its own kernel entry with the
    /// sandbox's policy and the floor as outer layers, and its own resolver and proxy when
    /// names are involved (they check all three layers).
    fn narrowed_cgroup(
        &self,
        sandbox: &Sandbox,
        ceiling_policy: &Arc<CompiledPolicy>,
        exec_id: u32,
        policy: &Arc<CompiledPolicy>,
    ) -> ApiResult<(SandboxCgroup, u32, Option<DomainServices>)> {
        let cg = SandboxCgroup::create(&sandbox.cgroup.path, &format!("exec-{exec_id}"))
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let services = if self.needs_services(policy, false) || ceiling_policy.has_names() {
            let layers = std::iter::once(policy.clone())
                .chain(std::iter::once(ceiling_policy.clone()))
                .chain(self.floor.iter().cloned())
                .collect();
            let max_learned = sandbox.view().max_learned_addresses;
            match self.start_services(&sandbox.id, layers, None, max_learned) {
                Ok(s) => Some(s),
                Err(e) => {
                    let _ = cg.remove();
                    return Err(e);
                }
            }
        } else {
            None
        };
        let ports = domains::service_ports(services.as_ref());
        let mut enforcement = self.enforcement();
        let applied = enforcement
            .sandbox_entry(sandbox.cgroup.id)
            .ok_or_else(|| ApiError::internal("the sandbox has no kernel entry"))
            .and_then(|ceiling| {
                enforcement
                    .apply_layered(cg.id, policy, ports, Some(&ceiling))
                    .map_err(|e| ApiError::internal(crate::error_line(&e)))
            });
        drop(enforcement);
        match applied {
            Ok(id) => {
                if let Some(s) = &services {
                    s.bind(Bound {
                        cgroup_id: cg.id,
                        policy_id: id,
                    });
                }
                Ok((cg, id, services))
            }
            Err(e) => {
                let _ = cg.remove();
                Err(e)
            }
        }
    }

    /// Replaces a live sandbox's policy: new connections see the new policy whole at once;
    /// established connections it denies are cut (proxied ones by the proxy, direct ones by
    /// the kernel dropping their packets and a socket destroy).
    pub fn set_policy(&self, sandbox: &Arc<Sandbox>, body: &PolicyFile) -> ApiResult<SandboxView> {
        if !sandbox.running() {
            return Err(ApiError::conflict(format!(
                "sandbox {} has ended",
                sandbox.id
            )));
        }
        let t0 = Instant::now();
        let new = Arc::new(
            policy::compile(&body.spec("policy.", Mode::Blocked))
                .map_err(|e| ApiError::bad_request(e.to_string()))?,
        );
        let mut inner = lock(&sandbox.inner);
        if inner.closing {
            return Err(ApiError::conflict(format!(
                "sandbox {} is ending",
                sandbox.id
            )));
        }
        tracing::debug!(us = t0.elapsed().as_micros(), "policy compiled");
        // The explicit proxy of a `proxy_env` sandbox stays reachable whatever the policy.
        let proxy_env = sandbox.view().proxy_env;
        let needs_services = self.needs_services(&new, proxy_env);
        if inner.services.is_none() && needs_services {
            inner.services = Some(self.start_services(
                &sandbox.id,
                self.layers(&new),
                None,
                sandbox.view().max_learned_addresses,
            )?);
        }
        let ports = domains::service_ports(inner.services.as_ref().filter(|_| needs_services));
        // Narrowed execs: those of this daemon and those it re-adopted with the sandbox
        // (recorded; their entries may outlive a restart).
        let view = sandbox.view();
        let dependents: Vec<u64> = inner
            .execs
            .values()
            .filter_map(|e| e.cgroup.as_ref().map(|c| c.id))
            .chain(
                view.execs
                    .iter()
                    .filter(|e| e.cgroup_id != sandbox.cgroup.id)
                    .map(|e| e.cgroup_id),
            )
            .collect();
        let old_id = inner.policy_id;
        let new_layers = self.layers(&new);
        let shared = inner.services.as_ref().map(|s| s.shared.clone());
        let mut enforcement = self.enforcement();
        let (new_id, mut cut) = enforcement
            .replace_policy(
                sandbox.cgroup.id,
                (old_id, &inner.policy),
                &new,
                ports,
                &dependents,
                |a| {
                    shared
                        .as_ref()
                        .is_some_and(|s| s.learned_allowed_by(a, &new_layers))
                },
            )
            .map_err(|e| ApiError::internal(crate::error_line(&e)))?;
        tracing::debug!(us = t0.elapsed().as_micros(), "policy switched");
        inner.policy = new.clone();
        inner.policy_id = new_id;
        if let Some(s) = &shared {
            s.replace_layers(
                new_layers,
                Bound {
                    cgroup_id: sandbox.cgroup.id,
                    policy_id: new_id,
                },
            );
        }
        cut.extend(self.follow_new_ceiling(&inner, &new, &mut enforcement));
        let cgroups: Vec<(PathBuf, u64)> =
            std::iter::once((sandbox.cgroup.path.clone(), sandbox.cgroup.id))
                .chain(
                    inner
                        .execs
                        .values()
                        .filter_map(|e| e.cgroup.as_ref().map(|c| (c.path.clone(), c.id))),
                )
                .collect();
        let service_ports = domains::service_ports(inner.services.as_ref());
        drop(enforcement);
        // The record changes before the lock goes: the next policy change starts from it.
        sandbox.update(|v| {
            v.policy = body.clone();
            v.policy_id = new_id;
            (v.dns_port, v.proxy_port) = service_ports;
        });
        drop(inner);
        tracing::debug!(us = t0.elapsed().as_micros(), "learned carried");
        self.cut_denied(&cgroups, &cut, shared.as_deref());
        tracing::debug!(us = t0.elapsed().as_micros(), "sockets checked");
        tracing::info!(sandbox = %sandbox.id, "policy replaced");
        Ok(self.view(sandbox))
    }

    /// Execs with their own resolver: a sandbox's new policy is their ceiling for names, and
    /// their learned addresses it denies go. Returns the peers whose connections lost a mark.
    fn follow_new_ceiling(
        &self,
        inner: &Inner,
        new: &Arc<CompiledPolicy>,
        enforcement: &mut Enforcement,
    ) -> Vec<std::net::IpAddr> {
        let mut cut = Vec::new();
        for exec in inner.execs.values() {
            if let (Some(s), Some(p), Some(cg)) = (&exec.services, &exec.policy, &exec.cgroup) {
                let layers = std::iter::once(p.clone())
                    .chain(std::iter::once(new.clone()))
                    .chain(self.floor.iter().cloned())
                    .collect();
                s.shared.replace_layers(
                    layers,
                    Bound {
                        cgroup_id: cg.id,
                        policy_id: exec.policy_id,
                    },
                );
                let exec_shared = s.shared.clone();
                cut.extend(
                    enforcement.carry_learned(exec.policy_id, exec.policy_id, |a| {
                        exec_shared.learned_still_allowed(a)
                    }),
                );
            }
        }
        cut
    }

    /// Direct connections a new policy denies: their packets are dropped from the switch on;
    /// destroying the sockets tells the workload at once instead of after TCP timeouts.
    /// `cut` are the peers of learned connections that lost their mark.
    fn cut_denied(
        &self,
        cgroups: &[(PathBuf, u64)],
        cut: &[std::net::IpAddr],
        shared: Option<&domains::Shared>,
    ) {
        let maps = crate::enforcement::AgentMaps::open(&self.paths).ok();
        for (path, cgroup_id) in cgroups {
            destroy_denied_sockets(path, |peer| {
                cut.contains(&peer)
                    || (maps
                        .as_ref()
                        .is_some_and(|m| !m.address_verdict(*cgroup_id, peer).allow)
                        && !shared.is_some_and(|s| s.learned_still_allowed(peer)))
            });
        }
    }

    /// Re-adopts every recorded sandbox: live ones are supervised again, ended ones are
    /// recorded as such and their kernel state is cleaned.
    fn adopt_all(self: &Arc<Self>, dir: &Path) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let record = path.join("record.json");
            let Some(view) = fs::read(&record)
                .ok()
                .and_then(|b| serde_json::from_slice::<SandboxView>(&b).ok())
            else {
                tracing::warn!("skipping unreadable record {}", record.display());
                continue;
            };
            if let Err(e) = self.adopt(&path, view) {
                tracing::warn!("cannot adopt {}: {}", path.display(), e.message);
            }
        }
    }

    fn adopt(self: &Arc<Self>, dir: &Path, mut view: SandboxView) -> ApiResult<()> {
        let id = view.id.clone();
        let lock_path = self.paths.sandbox_lock(&id);
        let _ = fs::create_dir_all(self.paths.sandbox_locks());
        // Only a sandbox that may still have kernel state needs its lock.
        let file_lock = if view.state == "running" {
            Some(FileLock::acquire(&lock_path).map_err(|e| ApiError::internal(e.to_string()))?)
        } else {
            None
        };
        let parent = self.enforcement().parent_cgroup.clone();
        let cgroup_path = parent.join(&id);
        let cgroup = SandboxCgroup::open(cgroup_path.clone()).ok();
        let populated = cgroup
            .as_ref()
            .is_some_and(|c| c.is_populated().unwrap_or(false));
        let compiled = policy::compile(&view.policy.spec("policy.", Mode::Blocked))
            .map(Arc::new)
            .map_err(|e| ApiError::internal(e.to_string()));
        let live = view.state == "running" && populated && compiled.is_ok();
        let cgroup = cgroup.unwrap_or(SandboxCgroup {
            path: cgroup_path,
            id: view.cgroup_id,
        });
        let mut services = None;
        // The kernel's entry is the truth about the policy id (the record may lag it by a
        // policy change if the daemon died in between).
        let kernel_policy_id = self
            .enforcement()
            .sandbox_entry(cgroup.id)
            .map(|e| e.policy_id);
        if live {
            let compiled = compiled.as_ref().ok().cloned().expect("checked");
            if let Some(id) = kernel_policy_id
                && id != view.policy_id
            {
                tracing::warn!(sandbox = %view.id, "the record's policy id lags the kernel's");
                view.policy_id = id;
            }
            services = self.readopt_services(&mut view, &cgroup, &compiled);
        } else if view.state == "running" {
            // It ended while no daemon watched: its status is lost.
            let policy_id = kernel_policy_id.unwrap_or(view.policy_id);
            self.cleanup_kernel(&cgroup, policy_id, None, &view.execs);
            let _ = fs::remove_file(&lock_path);
            view.state = "exited".into();
            view.end_reason = Some("status-unknown".into());
            view.ended_at = Some(now_rfc3339());
        }
        for exec in &mut view.execs {
            if exec.state == "running" {
                // Its process is no longer ours to wait for.
                exec.state = "unknown".into();
            }
        }
        let tunnels = if live {
            self.readopt_ingress(dir, &mut view)
        } else {
            Vec::new()
        };
        // A probe that had not passed yet starts over (its time limit too).
        let readiness = match (&view.probe, view.ready) {
            (_, true) => Readiness::Ready,
            (Some(_), false) if live => Readiness::Pending,
            (Some(_), false) => Readiness::Failed("the sandbox ended before it was ready".into()),
            (None, false) => Readiness::NoProbe,
        };
        let next_exec = view.execs.iter().map(|e| e.id).max().unwrap_or(0) + 1;
        let inner = Inner {
            policy_id: view.policy_id,
            closing: !live,
            policy: compiled.unwrap_or_else(|_| {
                Arc::new(
                    policy::compile(&PolicyFile::default().spec("", Mode::Blocked))
                        .expect("blocked compiles"),
                )
            }),
            services,
            stdin: None,
            execs: HashMap::new(),
            next_exec,
            last_activity: Instant::now(),
            tunnels,
        };
        let sandbox = Sandbox::new(
            view.clone(),
            dir,
            cgroup,
            inner,
            (live, readiness),
            file_lock.filter(|_| live),
        );
        sandbox.save();
        lock(&self.sandboxes).insert(id.clone(), sandbox.clone());
        if live {
            self.supervise_adopted(sandbox, &view);
        }
        Ok(())
    }

    /// A re-adopted sandbox's tokens, and its tunnels (at their old addresses if free).
    fn readopt_ingress(
        self: &Arc<Self>,
        dir: &Path,
        view: &mut SandboxView,
    ) -> Vec<crate::ingress::tunnel::Tunnel> {
        self.tokens.load(&view.id, dir);
        let exposed: Vec<crate::api::ExposedPort> = view
            .ports
            .iter()
            .map(|p| crate::api::ExposedPort {
                port: p.port,
                protocol: p.protocol,
            })
            .collect();
        match self.open_ports(&view.id, &exposed, &view.ports) {
            Ok((ports, tunnels)) => {
                view.ports = ports;
                tunnels
            }
            Err(e) => {
                tracing::error!(
                    sandbox = %view.id,
                    "ports not reachable after re-adoption: {}",
                    e.message
                );
                Vec::new()
            }
        }
    }

    /// Supervises a re-adopted live sandbox for what is left of its timeout.
    fn supervise_adopted(self: &Arc<Self>, sandbox: Arc<Sandbox>, view: &SandboxView) {
        self.observe.sandbox_started();
        if let (Some(probe), false) = (view.probe.clone(), view.ready) {
            self.handle
                .spawn(probe_task(self.clone(), sandbox.clone(), probe));
        }
        let created = humantime::parse_rfc3339(&view.created_at).unwrap_or(SystemTime::now());
        let age = SystemTime::now()
            .duration_since(created)
            .unwrap_or_default();
        let timeout = Duration::from_millis(view.timeout_ms).saturating_sub(age);
        let idle = view.idle_timeout_ms.map(Duration::from_millis);
        let id = sandbox.id.clone();
        self.handle
            .spawn(supervise(self.clone(), sandbox, None, timeout, idle));
        tracing::info!(sandbox = %id, "re-adopted");
    }

    /// A re-adopted sandbox's resolver and proxy if it needs them, on its old ports when they
    /// are free, and its redirects pointed at them. Without them the sandbox stays confined:
    /// its redirects point at ports nobody serves, so names fail closed.
    fn readopt_services(
        &self,
        view: &mut SandboxView,
        cgroup: &SandboxCgroup,
        compiled: &Arc<CompiledPolicy>,
    ) -> Option<DomainServices> {
        if !self.needs_services(compiled, view.proxy_env) {
            return None;
        }
        let started = self
            .start_services(
                &view.id,
                self.layers(compiled),
                Some((view.dns_port, view.proxy_port)).filter(|p| p.0 != 0),
                view.max_learned_addresses,
            )
            .and_then(|s| {
                self.enforcement()
                    .set_ports(cgroup.id, (s.dns_port, s.proxy_port))
                    .map_err(|e| ApiError::internal(crate::error_line(&e)))?;
                Ok(s)
            });
        match started {
            Ok(s) => {
                s.bind(Bound {
                    cgroup_id: cgroup.id,
                    policy_id: view.policy_id,
                });
                view.dns_port = s.dns_port;
                view.proxy_port = s.proxy_port;
                Some(s)
            }
            Err(e) => {
                tracing::error!(
                    sandbox = %view.id,
                    "no resolver or proxy after re-adoption, its names fail: {}",
                    e.message
                );
                None
            }
        }
    }

    /// Removes a sandbox's kernel entries (its own, its execs') and cgroups.
    fn cleanup_kernel(
        &self,
        cgroup: &SandboxCgroup,
        policy_id: u32,
        policy: Option<&CompiledPolicy>,
        execs: &[ExecView],
    ) {
        let mut enforcement = self.enforcement();
        for exec in execs.iter().filter(|e| e.cgroup_id != cgroup.id) {
            if let Some(entry) = enforcement.sandbox_entry(exec.cgroup_id) {
                enforcement.remove(exec.cgroup_id, entry.policy_id, None);
            }
        }
        enforcement.remove(cgroup.id, policy_id, policy);
        drop(enforcement);
        if let Ok(children) = fs::read_dir(&cgroup.path) {
            for child in children.flatten() {
                if child.path().is_dir() {
                    let _ = fs::remove_dir(child.path());
                }
            }
        }
        let _ = cgroup.remove();
    }
}

/// The supervisor of one sandbox: waits for its end (exit, kill, timeout, idle timeout),
/// trims its output, and tears down what it had in the kernel.
async fn supervise(
    daemon: Arc<Daemon>,
    sandbox: Arc<Sandbox>,
    child: Option<Child>,
    timeout: Duration,
    idle_timeout: Option<Duration>,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    let cgroup = sandbox.cgroup.clone();
    let mut exited = Box::pin(async move {
        if let Some(c) = child {
            wait_child(c).await
        } else {
            // A re-adopted sandbox: not our child, so only its end can be seen.
            while cgroup.is_populated().unwrap_or(false) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            None
        }
    });
    let mut tick = tokio::time::interval(TICK);
    let mut reason: Option<&'static str> = None;
    let code = loop {
        tokio::select! {
            // An exit seen together with a kill or timeout is an exit.
            biased;
            code = &mut exited => break code,
            () = tokio::time::sleep_until(deadline), if reason.is_none() => {
                reason = Some("timeout");
                kill_cgroup(&sandbox).await;
            }
            () = sandbox.kill.notified(), if reason.is_none() => {
                reason = Some(lock(&sandbox.kill_reason).unwrap_or("killed"));
                kill_cgroup(&sandbox).await;
            }
            _ = tick.tick(), if idle_timeout.is_some() => {
                if reason.is_none() && let Some(idle) = idle_timeout && idle_for(&sandbox) >= idle {
                    reason = Some("idle-timeout");
                    kill_cgroup(&sandbox).await;
                }
            }
        }
    };
    // The main process is gone: whatever it left behind goes with it.
    kill_cgroup(&sandbox).await;
    let (policy, policy_id, services, execs) = {
        let mut inner = lock(&sandbox.inner);
        inner.closing = true;
        inner.stdin = None;
        inner.tunnels.clear();
        (
            inner.policy.clone(),
            inner.policy_id,
            inner.services.take(),
            std::mem::take(&mut inner.execs),
        )
    };
    drop(services);
    // Its connect and traffic tokens die with it.
    daemon.tokens.forget(&sandbox.id, &sandbox.dir);
    for (_, exec) in execs {
        drop(exec.services);
        if let Some(cg) = &exec.cgroup {
            daemon
                .enforcement()
                .remove(cg.id, exec.policy_id, exec.policy.as_deref());
        }
        exec.exit.send_replace(Some(ExecEnd(Some(137))));
    }
    let view = sandbox.view();
    // Execs it had before a restart (no longer ours to supervise) may have left entries.
    daemon.cleanup_kernel(&sandbox.cgroup, policy_id, Some(&policy), &view.execs);
    // Nothing of it is left in the kernel or the cgroup tree for the lock to guard.
    let _ = fs::remove_file(daemon.paths.sandbox_lock(&sandbox.id));
    // A re-adopted sandbox that we killed: not our child, but we know how it died.
    let code = code.or(reason.map(|_| 128 + libc::SIGKILL));
    let end_reason = match (reason, code) {
        (Some(r), _) => r,
        (None, Some(_)) => "exited",
        (None, None) => "status-unknown",
    };
    sandbox.update(|v| {
        v.state = "exited".into();
        v.exit_code = code;
        v.end_reason = Some(end_reason.into());
        v.ended_at = Some(now_rfc3339());
        for e in &mut v.execs {
            if e.state == "running" {
                e.state = "exited".into();
                e.exit_code = Some(137);
            }
        }
    });
    sandbox.ready.send_if_modified(|r| {
        if *r == Readiness::Pending {
            *r = Readiness::Failed("the sandbox ended before it was ready".into());
            true
        } else {
            false
        }
    });
    sandbox.ended.send_replace(true);
    daemon.observe.sandbox_ended();
    tracing::info!(sandbox = %sandbox.id, reason = end_reason, code, "ended");
}

async fn supervise_exec(daemon: Arc<Daemon>, sandbox: Arc<Sandbox>, exec_id: u32, child: Child) {
    let code = wait_child(child).await;
    let live = lock(&sandbox.inner).execs.remove(&exec_id);
    sandbox.touch();
    let Some(exec) = live else {
        // The sandbox ended first and cleaned up.
        return;
    };
    drop(exec.services);
    if let Some(cg) = &exec.cgroup {
        let _ = cg.kill_all(KILL_TIMEOUT);
        daemon
            .enforcement()
            .remove(cg.id, exec.policy_id, exec.policy.as_deref());
        let _ = cg.remove();
    }
    sandbox.update(|v| {
        if let Some(e) = v.execs.iter_mut().find(|e| e.id == exec_id) {
            e.state = "exited".into();
            e.exit_code = code;
        }
    });
    exec.exit.send_replace(Some(ExecEnd(code)));
}

/// Waits for a child of ours through its pidfd; its status as the shell shows it.
async fn wait_child(child: Child) -> Option<i32> {
    // SAFETY: the AsyncFd owns the descriptor, which stays open until it is dropped.
    if let Ok(fd) = unsafe { tokio::io::unix::AsyncFd::register(child.pidfd.try_clone().ok()?) } {
        let _ = fd.readable().await;
    }
    let reaped = tokio::task::spawn_blocking(move || launch::reap(&child)).await;
    reaped
        .ok()
        .and_then(Result::ok)
        .map(launch::ExitStatus::code)
}

async fn kill_cgroup(sandbox: &Arc<Sandbox>) {
    let cgroup = sandbox.cgroup.clone();
    let killed = tokio::task::spawn_blocking(move || cgroup.kill_all(KILL_TIMEOUT)).await;
    if let Ok(Err(e)) = killed {
        tracing::warn!(sandbox = %sandbox.id, "{e}");
    }
}

/// How long the sandbox has been idle: no running exec, no stdin write, no open proxied
/// connection.
fn idle_for(sandbox: &Sandbox) -> Duration {
    let mut inner = lock(&sandbox.inner);
    let busy = !inner.execs.is_empty()
        || sandbox
            .open_ingress
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
        || inner.services.as_ref().is_some_and(|s| {
            s.shared
                .open_connections
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0
        });
    if busy {
        inner.last_activity = Instant::now();
    }
    inner.last_activity.elapsed()
}

/// Runs the readiness probe until it passes, the sandbox ends or the probe's time is up.
async fn probe_task(daemon: Arc<Daemon>, sandbox: Arc<Sandbox>, probe: ProbeSpec) {
    let interval = probe
        .interval
        .as_deref()
        .and_then(|t| humantime::parse_duration(t).ok())
        .unwrap_or(Duration::from_millis(100));
    let give_up = probe
        .timeout
        .as_deref()
        .and_then(|t| humantime::parse_duration(t).ok())
        .unwrap_or(Duration::from_mins(5));
    let start = Instant::now();
    while sandbox.running() {
        let ok = match (&probe.tcp_port, &probe.exec) {
            (Some(port), _) => {
                // The kernel moved the listener to a port of its own (see `ingress`).
                match daemon.listeners.find(&sandbox.cgroup_ids(), *port) {
                    Some(at) => {
                        let path = sandbox.cgroup.path.clone();
                        tokio::task::spawn_blocking(move || listening_in(&path, at.addr.port()))
                            .await
                            .unwrap_or(false)
                    }
                    None => false,
                }
            }
            (None, Some(cmd)) => {
                let req = ExecRequest {
                    command: cmd.clone(),
                    ..ExecRequest::default()
                };
                match daemon.exec(&sandbox, &req) {
                    Ok(view) => match sandbox.exec_exit_rx(view.id) {
                        Some(mut rx) => rx
                            .wait_for(Option::is_some)
                            .await
                            .is_ok_and(|c| *c == Some(ExecEnd(Some(0)))),
                        None => lock(&sandbox.view)
                            .execs
                            .iter()
                            .any(|e| e.id == view.id && e.exit_code == Some(0)),
                    },
                    Err(_) => false,
                }
            }
            (None, None) => false,
        };
        if ok {
            sandbox.ready.send_replace(Readiness::Ready);
            sandbox.update(|v| v.ready = true);
            return;
        }
        if start.elapsed() >= give_up {
            sandbox.ready.send_replace(Readiness::Failed(format!(
                "not ready after {}",
                humantime::format_duration(give_up)
            )));
            return;
        }
        tokio::time::sleep(interval).await;
    }
}

impl Daemon {
    /// Waits until the sandbox is ready; errors if it has no probe, the probe gave up, or the
    /// sandbox ended first.
    pub async fn wait_ready(&self, sandbox: &Sandbox) -> ApiResult<()> {
        let mut rx = sandbox.ready.subscribe();
        let state = rx
            .wait_for(|r| *r != Readiness::Pending)
            .await
            .map_err(|_| ApiError::internal("probe state lost"))?
            .clone();
        match state {
            Readiness::Ready => Ok(()),
            Readiness::NoProbe => Err(ApiError::conflict(format!(
                "sandbox {} has no readiness probe",
                sandbox.id
            ))),
            Readiness::Failed(why) => Err(ApiError::conflict(format!(
                "sandbox {} is not ready: {why}",
                sandbox.id
            ))),
            Readiness::Pending => unreachable!("waited for a change"),
        }
    }

    pub async fn wait(&self, sandbox: &Sandbox) -> WaitView {
        let mut rx = sandbox.ended_rx();
        let _ = rx.wait_for(|e| *e).await;
        let v = sandbox.view();
        WaitView {
            exit_code: v.exit_code,
            end_reason: v.end_reason,
        }
    }
}

/// Output files, stdin (a pipe kept by the daemon, or `/dev/null`) and the workload.
fn spawn_workload(
    cgroup: &SandboxCgroup,
    spec: &mut launch::LaunchSpec,
    dir: &Path,
    stdin: bool,
) -> ApiResult<(Child, Option<fs::File>)> {
    let (stdin_read, stdin_write) = if stdin {
        let (r, w) = pipe().map_err(|e| ApiError::internal(format!("stdin pipe: {e}")))?;
        (r, Some(fs::File::from(w)))
    } else {
        let null = fs::File::open("/dev/null")
            .map_err(|e| ApiError::internal(format!("/dev/null: {e}")))?;
        (OwnedFd::from(null), None)
    };
    let output = |name: &str| {
        let path = dir.join(name);
        logs::create(&path)
            .map_err(|e| ApiError::internal(format!("create {}: {e}", path.display())))
    };
    let (stdout, stderr) = (output("stdout.log")?, output("stderr.log")?);
    spec.stdio = Some([
        stdin_read.as_raw_fd(),
        stdout.as_raw_fd(),
        stderr.as_raw_fd(),
    ]);
    spec.new_session = true;
    let fd = cgroup
        .open_fd()
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let child = launch::spawn(spec, &fd).map_err(|e| ApiError {
        status: if e.exit_code() == 125 { 500 } else { 400 },
        message: crate::error_line(&e),
        exit_code: Some(e.exit_code()),
    })?;
    Ok((child, stdin_write))
}

/// A create request, checked and compiled.
struct Checked {
    timeout: Duration,
    idle_timeout: Option<Duration>,
    policy: Arc<CompiledPolicy>,
    command: Vec<String>,
    cwd: String,
    spec: launch::LaunchSpec,
}

/// Everything about a create request that can be refused before anything exists.
fn check_create(req: &CreateRequest) -> ApiResult<Checked> {
    if let Some(name) = &req.name
        && !crate::api::valid_name(name)
    {
        return Err(ApiError::bad_request(format!(
            "invalid name \"{name}\": use 1 to 63 of A-Z a-z 0-9 . _ -"
        )));
    }
    let timeout = match &req.timeout {
        Some(t) => parse_duration("timeout", t)?,
        None => DEFAULT_TIMEOUT,
    };
    if timeout > MAX_TIMEOUT || timeout.is_zero() {
        return Err(ApiError::bad_request(format!(
            "invalid timeout \"{}\": must be more than 0 and at most 24h",
            req.timeout.as_deref().unwrap_or_default()
        )));
    }
    let idle_timeout = req
        .idle_timeout
        .as_deref()
        .map(|t| parse_duration("idle_timeout", t))
        .transpose()?;
    if let Some(p) = &req.probe {
        validate_probe(p)?;
    }
    validate_ports(req)?;
    if let Some(n) = req.max_learned_addresses {
        crate::learned::Limits::checked(1, n)
            .map_err(|e| ApiError::bad_request(format!("max_learned_addresses: {e}")))?;
    }
    let policy = Arc::new(
        policy::compile(&req.policy.spec("policy.", Mode::Blocked))
            .map_err(|e| ApiError::bad_request(e.to_string()))?,
    );
    let command: Vec<String> = req
        .entrypoint
        .iter()
        .chain(req.command.iter())
        .cloned()
        .collect();
    if command.is_empty() {
        return Err(ApiError::bad_request(
            "no command: give command or entrypoint",
        ));
    }
    let cwd = req.cwd.clone().unwrap_or_else(|| "/".into());
    let spec = prepare_workload(&command, &req.env, &cwd, req.user.as_deref())?;
    Ok(Checked {
        timeout,
        idle_timeout,
        policy,
        command,
        cwd,
        spec,
    })
}

/// Most ports one sandbox exposes.
const MAX_EXPOSED_PORTS: usize = 64;

fn validate_ports(req: &CreateRequest) -> ApiResult<()> {
    if req.ports.len() > MAX_EXPOSED_PORTS {
        return Err(ApiError::bad_request(format!(
            "ports: at most {MAX_EXPOSED_PORTS}"
        )));
    }
    for (i, p) in req.ports.iter().enumerate() {
        if p.port == 0 {
            return Err(ApiError::bad_request("ports: port 0 cannot be exposed"));
        }
        if req.ports[..i].iter().any(|q| q.port == p.port) {
            return Err(ApiError::bad_request(format!(
                "ports: port {} is exposed twice",
                p.port
            )));
        }
    }
    if let Some(m) = &req.mask_host {
        let sample = crate::ingress::route::masked_host(m, 65535);
        if m.is_empty() || http::HeaderValue::from_str(&sample).is_err() || sample.contains(' ') {
            return Err(ApiError::bad_request(format!(
                "mask_host \"{m}\" is not a valid Host header (e.g. localhost:${{PORT}})"
            )));
        }
    }
    Ok(())
}

fn validate_probe(p: &ProbeSpec) -> ApiResult<()> {
    match (&p.tcp_port, &p.exec) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "probe: give tcp_port or exec, not both",
            ));
        }
        (None, None) => return Err(ApiError::bad_request("probe: give tcp_port or exec")),
        (None, Some(cmd)) if cmd.is_empty() => {
            return Err(ApiError::bad_request("probe: exec needs a command"));
        }
        _ => {}
    }
    for (key, value) in [("interval", &p.interval), ("timeout", &p.timeout)] {
        if let Some(v) = value {
            parse_duration(&format!("probe.{key}"), v)?;
        }
    }
    Ok(())
}

fn parse_duration(key: &str, text: &str) -> ApiResult<Duration> {
    humantime::parse_duration(text)
        .map_err(|e| ApiError::bad_request(format!("invalid {key} \"{text}\": {e}")))
}

fn prepare_workload(
    command: &[String],
    env: &BTreeMap<String, String>,
    cwd: &str,
    user: Option<&str>,
) -> ApiResult<launch::LaunchSpec> {
    let command: Vec<OsString> = command.iter().map(OsString::from).collect();
    workload::prepare(Workload {
        command: &command,
        env: env
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect(),
        cwd: PathBuf::from(cwd),
        user,
        keep_caps: Vec::new(),
    })
    .map_err(|e| ApiError {
        exit_code: Some(e.code),
        ..ApiError::bad_request(e.message)
    })
}

fn ingress_tls(config: &Config) -> Result<IngressTls, DaemonError> {
    let dir = config.state_dir.join("ingress");
    let operator = config
        .ingress_tls_cert
        .as_deref()
        .zip(config.ingress_tls_key.as_deref());
    let tls_err =
        |e: crate::ingress::tls::TlsError| DaemonError::Config(format!("ingress TLS: {e}"));
    let (cert, key) =
        crate::ingress::tls::certificate_files(operator, &dir, &config.ingress_domain)
            .map_err(tls_err)?;
    Ok(IngressTls {
        gateway: crate::ingress::tls::server_config(&cert, &key, &[b"h2", b"http/1.1"])
            .map_err(tls_err)?,
        tunnel: tokio_rustls::TlsAcceptor::from(
            crate::ingress::tls::server_config(&cert, &key, &[]).map_err(tls_err)?,
        ),
    })
}

fn placeholder_view(id: &str, policy_id: u32) -> SandboxView {
    SandboxView {
        id: id.to_owned(),
        name: None,
        tags: BTreeMap::new(),
        state: "running".into(),
        ready: false,
        command: Vec::new(),
        cwd: String::new(),
        user: String::new(),
        policy: PolicyFile::default(),
        timeout_ms: 0,
        idle_timeout_ms: None,
        probe: None,
        stdin: false,
        proxy_env: false,
        created_at: now_rfc3339(),
        ended_at: None,
        exit_code: None,
        end_reason: None,
        pid: 0,
        cgroup_id: 0,
        policy_id,
        dns_port: 0,
        proxy_port: 0,
        execs: Vec::new(),
        ports: Vec::new(),
        private_ports: false,
        mask_host: None,
        max_learned_addresses: None,
        traffic_token: None,
        counters: None,
    }
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)?;
    Ok((r, w))
}

/// Refuses a name that a live sandbox has, in any case.
fn name_free(all: &BTreeMap<String, Arc<Sandbox>>, name: &str) -> ApiResult<()> {
    let Some(taken) = all.values().find_map(|s| {
        let view = lock(&s.view);
        view.name
            .as_deref()
            .filter(|n| s.running() && same_name(n, name))
            .map(str::to_owned)
    }) else {
        return Ok(());
    };
    Err(ApiError::conflict(if taken == name {
        format!("name \"{name}\" is taken by a live sandbox")
    } else {
        format!(
            "name \"{name}\" is taken by a live sandbox named \"{taken}\" (names are case-insensitive)"
        )
    }))
}

/// Names are told apart without regard to case: host routes (DNS names) cannot tell `Web`
/// from `web`, so neither may anything else.
fn same_name(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

fn write_atomic(path: &Path, view: &SandboxView) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(view).map_err(std::io::Error::other)?;
    crate::private_files::write(path, &bytes)
}

/// Whether a process in the sandbox's own cgroup listens on TCP `port`. Asked
/// of the kernel (`sock_diag`, through `ss`) rather than by connecting: the sandbox's own
/// policy may refuse loopback peers, and another process of the host may hold the same port
/// on another address.
fn listening_in(cgroup: &Path, port: u16) -> bool {
    std::process::Command::new("ss")
        .args(["-Htln", "cgroup"])
        .arg(cgroup)
        .args(["sport", "=", &format!(":{port}")])
        .output()
        .is_ok_and(|o| o.status.success() && !o.stdout.trim_ascii().is_empty())
}

/// Destroys (`SOCK_DESTROY` through `ss -K`) the TCP connections of the processes in
/// `cgroup` whose peer `denied` says the policy no longer allows. Best effort: the kernel
/// already drops their packets, this only makes the workload see the end at once. The
/// connections are found in `/proc` (no process started when there is nothing to cut).
fn destroy_denied_sockets(cgroup: &Path, denied: impl Fn(std::net::IpAddr) -> bool) {
    for (addr, port) in established_peers(cgroup) {
        if addr.is_loopback() || !denied(addr) {
            continue;
        }
        let _ = std::process::Command::new("ss")
            .args(["-HtnK", "state", "established", "cgroup"])
            .arg(cgroup)
            .args(["dst", &addr.to_string(), "dport", "=", &port.to_string()])
            .output();
    }
}

/// Peers of the established TCP connections held by the processes of `cgroup`: their
/// socket inodes (`/proc/PID/fd`) looked up in `/proc/net/tcp{,6}` (sandboxes share the
/// host's network namespace).
fn established_peers(cgroup: &Path) -> Vec<(std::net::IpAddr, u16)> {
    let Ok(procs) = fs::read_to_string(cgroup.join("cgroup.procs")) else {
        return Vec::new();
    };
    let mut inodes = std::collections::HashSet::new();
    for pid in procs.lines() {
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = fs::read_link(fd.path())
                && let Some(inode) = target
                    .to_str()
                    .and_then(|t| t.strip_prefix("socket:["))
                    .and_then(|t| t.strip_suffix(']'))
                    .and_then(|t| t.parse::<u64>().ok())
            {
                inodes.insert(inode);
            }
        }
    }
    if inodes.is_empty() {
        return Vec::new();
    }
    let mut peers = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            let (Some(rem), Some(st), Some(inode)) = (f.get(2), f.get(3), f.get(9)) else {
                continue;
            };
            if *st != "01" || !inode.parse::<u64>().is_ok_and(|i| inodes.contains(&i)) {
                continue;
            }
            if let Some(peer) = parse_proc_addr(rem) {
                peers.push(peer);
            }
        }
    }
    peers
}

/// `0100007F:1F90` (IPv4) or 32 hex digits `:PORT` (IPv6), each 32-bit word in host order.
fn parse_proc_addr(text: &str) -> Option<(std::net::IpAddr, u16)> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Vec<u32> = (0..addr.len() / 8)
        .map(|i| u32::from_str_radix(&addr[i * 8..i * 8 + 8], 16))
        .collect::<Result<_, _>>()
        .ok()?;
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let ip = match bytes.len() {
        4 => std::net::IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?),
        16 => {
            crate::enforcement::canonical(std::net::IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?))
        }
        _ => return None,
    };
    Some((ip, port))
}

impl Daemon {
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

/// Trims every live sandbox's output to `log_limit_bytes`, every `TRIM_EVERY`.
fn spawn_trimmer(daemon: &Arc<Daemon>) {
    let trimmer = daemon.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TRIM_EVERY);
        loop {
            tick.tick().await;
            let dirs: Vec<PathBuf> = trimmer
                .all()
                .iter()
                .filter(|s| s.running())
                .map(|s| s.dir.clone())
                .collect();
            let limit = trimmer.config.log_limit_bytes;
            let _ = tokio::task::spawn_blocking(move || {
                for dir in dirs {
                    logs::trim_all(&dir, limit);
                }
            })
            .await;
        }
    });
}

/// The ingress gateway on `ingress_address`, unless it is off.
async fn start_gateway(daemon: &Arc<Daemon>) -> Result<(), DaemonError> {
    let Some(addr) = daemon.config.ingress_address() else {
        return Ok(());
    };
    let tcp = tokio::net::TcpListener::bind(addr).await.map_err(io_err(
        "listen for ingress (ingress_address) on",
        Path::new(&addr.to_string()),
    ))?;
    let gateway = crate::ingress::Gateway::new(
        daemon.clone(),
        daemon.config.ingress_domain.clone(),
        daemon.gateway_tls(),
    );
    tokio::spawn(gateway.serve(tcp));
    tracing::info!(%addr, "ingress gateway");
    Ok(())
}

/// Runs the daemon until SIGTERM or SIGINT. Sandboxes outlive it: a restarted daemon
/// re-adopts them.
pub async fn serve(config: Config) -> Result<(), DaemonError> {
    let socket = config.socket.clone();
    let metrics_address = config.metrics_address;
    let daemon = Daemon::start(config, Paths::default())?;
    if let Some(dir) = socket.parent() {
        fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    }
    // The daemon lock is ours, so a socket file left here belongs to a dead daemon.
    match fs::remove_file(&socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("remove stale socket", &socket)(e)),
    }
    // Root-only from its first instant: created under a umask that leaves no bits for others
    // (the umask is the process's: whatever else is created meanwhile is only more private).
    let old_umask = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let listener = tokio::net::UnixListener::bind(&socket);
    nix::sys::stat::umask(old_umask);
    let listener = listener.map_err(io_err("listen on", &socket))?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(&socket, fs::Permissions::from_mode(0o600))
            .map_err(io_err("chmod", &socket))?;
    }
    spawn_trimmer(&daemon);
    let reader = daemon.clone();
    tokio::spawn(
        daemon
            .observe
            .clone()
            .read_kernel_events(move |cgroup| reader.sandbox_of_cgroup(cgroup)),
    );
    if let Some(addr) = metrics_address {
        let tcp = tokio::net::TcpListener::bind(addr).await.map_err(io_err(
            "listen for metrics on",
            Path::new(&addr.to_string()),
        ))?;
        let app = server::metrics_router(daemon.clone());
        tokio::spawn(async move {
            let _ = axum::serve(tcp, app).await;
        });
        tracing::info!(%addr, "metrics");
    }
    start_gateway(&daemon).await?;
    tracing::info!(socket = %socket.display(), "listening");
    let app = server::router(daemon.clone());
    let shutdown = async {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("stopping; sandboxes keep running and are re-adopted on restart");
    };
    // Requests that follow (logs, events, wait) would hold a graceful shutdown forever: the
    // ones in flight get a moment, then the daemon goes (sandboxes stay, see above).
    let stopping = Arc::new(Notify::new());
    let stopped = stopping.clone();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        stopped.notify_one();
    });
    let mut serving = tokio::spawn(async move { server.await });
    tokio::select! {
        () = stopping.notified() => {}
        ended = &mut serving => {
            let _ = fs::remove_file(&socket);
            return match ended {
                Ok(Err(e)) => Err(io_err("serve on", &socket)(e)),
                _ => Ok(()),
            };
        }
    }
    match tokio::time::timeout(SHUTDOWN_GRACE, serving).await {
        Ok(Ok(Err(e))) => return Err(io_err("serve on", &socket)(e)),
        Ok(_) => {}
        Err(_) => tracing::info!("requests still open after {SHUTDOWN_GRACE:?}: closing them"),
    }
    let _ = fs::remove_file(&socket);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_addresses() {
        assert_eq!(
            parse_proc_addr("0100007F:1F90"),
            Some(("127.0.0.1".parse().unwrap(), 8080))
        );
        assert_eq!(
            parse_proc_addr("0000000000000000FFFF00000201A8C0:0050"),
            Some(("192.168.1.2".parse().unwrap(), 80))
        );
        assert_eq!(
            parse_proc_addr("00000000000000000000000001000000:01BB"),
            Some(("::1".parse().unwrap(), 443))
        );
        assert_eq!(parse_proc_addr("zz:1"), None);
    }
}
