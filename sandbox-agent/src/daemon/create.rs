//! Creating a sandbox: everything about the request that can be refused is checked before
//! anything exists; then the name is reserved, the sandbox is built without the registry's
//! lock (one [`Starting`] guard undoes a failed build), and only a whole sandbox is published.
use std::{
    collections::BTreeMap,
    ffi::OsString,
    fs,
    os::fd::{AsRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use super::{
    Daemon,
    error::{Error, Result},
    logs,
    record::{Inner, Readiness, Registry, Sandbox, lock},
    supervise::{probe_task, supervise},
};
use crate::{
    api::{
        CreateRequest, ExposedPort, PortProtocol, PortView, ProbeSpec, SandboxState, SandboxView,
    },
    cgroup::SandboxCgroup,
    domains::{self, Bound, DomainOptions, DomainServices},
    enforcement::random_id,
    events::Events,
    ingress::{directory::Directory, tunnel::Tunnel},
    launch::{self, Child},
    lifecycle::Starting,
    policy::{self, CompiledPolicy, Mode},
    workload::{self, Workload},
};

/// Default and largest lifetime of a sandbox.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_mins(5);
pub const MAX_TIMEOUT: Duration = Duration::from_hours(24);
/// Most ports one sandbox exposes.
const MAX_EXPOSED_PORTS: usize = 64;

/// A name held by a create in progress; given back when this goes (published or not).
struct NameHold<'a> {
    registry: &'a Mutex<Registry>,
    name: Option<String>,
}

impl Drop for NameHold<'_> {
    fn drop(&mut self) {
        if let Some(name) = &self.name {
            lock(self.registry).release(name);
        }
    }
}

impl Daemon {
    pub fn create(self: &Arc<Self>, mut req: CreateRequest) -> Result<SandboxView> {
        // The config's default limits stand in for those the request leaves unset (and the
        // record shows what applies).
        req.resources = req.resources.or(&self.config.default_resources());
        let (lease, checked) = self.check(&req)?;
        let Checked {
            timeout,
            idle_timeout,
            policy: compiled,
            command,
            cwd,
            limits,
            mut spec,
            image,
            root,
        } = checked;
        let uid = spec.uid;
        let _hold = self.hold_name(req.name.as_deref())?;
        let Built {
            id,
            dir,
            started,
            services,
            stdin,
            tunnels,
            ports,
            child,
            policy_id,
            traffic_token,
        } = self.build(
            &req,
            &compiled,
            (&limits, lease.as_ref(), image.as_ref().map(|i| &i.hold)),
            &mut spec,
        )?;
        let cgroup_id = started.cgroup.id;
        let (dns_port, proxy_port) = domains::service_ports(services.as_ref());
        let view = SandboxView {
            id: id.clone(),
            name: req.name.clone(),
            tags: req.tags.clone(),
            state: SandboxState::Running,
            ready: req.probe.is_none(),
            command,
            cwd,
            user: user_name(&req),
            uid,
            resources: req.resources.clone(),
            root,
            rootfs: req.rootfs.clone(),
            image: req.image.clone(),
            image_digest: image.as_ref().map(|i| i.digest.to_string()),
            mounts: req.mounts.clone(),
            policy: req.policy.clone(),
            timeout_ms: millis(timeout),
            idle_timeout_ms: idle_timeout.map(millis),
            probe: req.probe.clone(),
            stdin: req.stdin,
            proxy_env: req.proxy_env,
            created_at: crate::api::now_rfc3339(),
            ended_at: None,
            exit_code: None,
            end_reason: None,
            pid: child.pid,
            cgroup_id,
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
        let readiness =
            [Readiness::NoProbe, Readiness::Pending][usize::from(req.probe.is_some())].clone();
        let inner = Inner {
            services,
            stdin,
            tunnels,
            lease,
            init: child.pidfd.try_clone().ok(),
            ..Inner::new(compiled, policy_id)
        };
        let sandbox = Sandbox::new(
            view.clone(),
            &dir,
            started.cgroup,
            inner,
            (true, readiness),
            started.lock,
        );
        self.publish(sandbox, child, (timeout, idle_timeout), req.probe);
        tracing::info!(sandbox = %id, "created");
        // The traffic token is in this answer only (the record keeps its hash).
        Ok(SandboxView {
            traffic_token,
            ..view
        })
    }

    /// A whole sandbox saved, listed and watched (its lifetime, its probe).
    fn publish(
        self: &Arc<Self>,
        sandbox: Arc<Sandbox>,
        child: Child,
        (timeout, idle_timeout): (Duration, Option<Duration>),
        probe: Option<ProbeSpec>,
    ) {
        sandbox.save();
        self.registry().publish(sandbox.clone());
        self.observe.sandbox_started();
        self.handle.spawn(supervise(
            self.clone(),
            sandbox.clone(),
            Some(child),
            timeout,
            idle_timeout,
        ));
        if let Some(probe) = probe {
            self.handle.spawn(probe_task(self.clone(), sandbox, probe));
        }
    }

    /// The request checked, with the sandbox's own uid leased for it (held until its cgroup
    /// is empty; an explicit user needs none).
    fn check(&self, req: &CreateRequest) -> Result<(Option<crate::identity::Lease>, Checked)> {
        let lease = match req.user {
            Some(_) => None,
            None => Some(crate::identity::lease(&self.paths, self.uid_range)?),
        };
        let (namespaces, image) = self.new_namespaces(req)?;
        let checked = check_create(
            req,
            lease.as_ref().map(|l| l.uid),
            (namespaces, self.uid_range),
            image,
        )?;
        Ok((lease, checked))
    }

    /// A new sandbox's view: the host's root, its root directory or its image (unpacked into
    /// the cache if need be), and its mounts.
    fn new_namespaces(
        &self,
        req: &CreateRequest,
    ) -> Result<(workload::Namespaces, Option<ImageUse>)> {
        let hide = self.config.hidden_dirs(&self.paths);
        let (root, image) = match (&req.rootfs, &req.image) {
            (Some(_), Some(_)) => {
                return Err(Error::invalid(
                    "image",
                    "rootfs and image cannot be combined: give one root",
                ));
            }
            (Some(dir), None) => (
                Some(crate::view::check_root(
                    dir,
                    &hide,
                    self.paths.root_staging(),
                )?),
                None,
            ),
            (None, Some(path)) => {
                let mut rooted = crate::image::open_root(
                    &crate::image::Store::new(&self.config.state_dir),
                    path,
                    self.paths.root_staging(),
                    &|line| tracing::info!(image = %path, "{line}"),
                )?;
                // `root` is root's: the files root owns in the image are its own.
                if req.root {
                    rooted.root.owner = (0, 0);
                }
                (
                    Some(rooted.root),
                    Some(ImageUse {
                        digest: rooted.digest,
                        defaults: rooted.defaults,
                        hold: rooted.hold,
                    }),
                )
            }
            (None, None) => (None, None),
        };
        let specs: Vec<_> = req
            .mounts
            .iter()
            .map(crate::api::MountSpec::parts)
            .collect();
        let mounts = crate::view::check_mounts(&specs, &hide, root.is_some())?;
        Ok((
            workload::Namespaces::New {
                hide,
                tmp_bytes: self.tmp_bytes,
                root,
                mounts,
            },
            image,
        ))
    }

    /// Holds `name` (if any) against other creates until the hold goes.
    fn hold_name(&self, name: Option<&str>) -> Result<NameHold<'_>> {
        if let Some(name) = name {
            self.registry().reserve(name)?;
        }
        Ok(NameHold {
            registry: &self.registry,
            name: name.map(str::to_owned),
        })
    }

    /// Everything a sandbox is made of, undone whole if any step fails.
    fn build(
        self: &Arc<Self>,
        req: &CreateRequest,
        compiled: &Arc<CompiledPolicy>,
        (limits, lease, image): (
            &crate::limits::Limits,
            Option<&crate::identity::Lease>,
            Option<&crate::image::Hold>,
        ),
        spec: &mut launch::LaunchSpec,
    ) -> Result<Built> {
        let id = random_id();
        let dir = self.config.state_dir.join("sandboxes").join(&id);
        let parent = self.enforcement().parent_cgroup.clone();

        let mut start = Starting::new(&self.enforcement, |w| tracing::warn!("{w}"));
        start
            .lock(&self.paths, &id)
            .map_err(|(path, source)| Error::Io {
                action: "lock",
                path,
                source,
            })?;
        crate::private_files::create_dir(&dir).map_err(Error::io("create", &dir))?;
        let undo_dir = dir.clone();
        start.on_failure(move || {
            let _ = fs::remove_dir_all(undo_dir);
        });
        let (ports, tunnels) = self.open_ports(&id, &req.ports, &[])?;
        let traffic_token = if req.private_ports {
            let token = self.tokens.issue_traffic(&id, &dir)?;
            let (tokens, id, dir) = (&self.tokens, id.clone(), dir.clone());
            start.on_failure(move || tokens.forget(&id, &dir));
            Some(token)
        } else {
            None
        };
        limits.prepare(&parent)?;
        let cgroup_id = start.cgroup(&parent, &id)?.id;
        limits.apply(&start.made_cgroup().path)?;
        if let Some(lease) = lease {
            lease.bind_cgroup(&start.made_cgroup().path)?;
        }
        if let Some(hold) = image {
            let path = &start.made_cgroup().path;
            hold.bind_cgroup(path)
                .map_err(Error::io("record the image layers of", path))?;
        }
        // Its kernel events are its own from the start, not only once it is published.
        self.registry().own_cgroup(cgroup_id, &id);
        let registry = &self.registry;
        start.on_failure(move || lock(registry).disown_cgroup(cgroup_id));
        // Dropped before `start` on an error: the services stop before the entry goes.
        let services =
            self.services_for(&id, compiled, req.proxy_env, req.max_learned_addresses)?;
        let policy_id = start.apply(compiled, domains::service_ports(services.as_ref()), None)?;
        if let Some(s) = &services {
            s.bind(Bound {
                cgroup_id,
                policy_id,
            });
            if req.proxy_env {
                crate::sandbox::set_proxy_env(spec, s.proxy_port);
            }
        }
        let (child, stdin) = spawn_workload(start.made_cgroup(), spec, &dir, req.stdin)?;
        Ok(Built {
            id,
            dir,
            started: start.finish(),
            services,
            stdin,
            tunnels,
            ports,
            child,
            policy_id,
            traffic_token,
        })
    }

    /// Where the exposed ports of a sandbox are reached, with new tunnels for its TLS and
    /// TCP ports (at `previous` addresses when re-adopted and free).
    pub(super) fn open_ports(
        self: &Arc<Self>,
        sandbox: &str,
        ports: &[ExposedPort],
        previous: &[PortView],
    ) -> Result<(Vec<PortView>, Vec<Tunnel>)> {
        let mut views = Vec::new();
        let mut tunnels = Vec::new();
        for p in ports {
            if p.protocol.is_http() {
                let gateway = self.config.ingress_address().ok_or_else(|| {
                    Error::invalid(
                        "ports",
                        format!(
                            "port {}: HTTP ports need the ingress gateway (ingress_address in the config)",
                            p.port
                        ),
                    )
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
                self.clone() as Arc<dyn Directory>,
                &self.handle,
                sandbox,
                p.port,
                tls,
                self.config.tunnel_host,
                preferred,
            )
            .map_err(|source| Error::Tunnel {
                port: p.port,
                source,
            })?;
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

    fn domain_options(&self, sandbox_id: &str, max_learned: Option<u64>) -> Result<DomainOptions> {
        let learned_limits = self
            .config
            .learned_limits(max_learned)
            .map_err(Error::LearnedLimit)?;
        let upstream_dns = match self.upstream_dns {
            Some(a) => a,
            None => domains::upstream_from_resolv_conf(Path::new("/etc/resolv.conf"))?,
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
    pub(super) fn needs_services(&self, policy: &CompiledPolicy, proxy_env: bool) -> bool {
        policy.has_names() || proxy_env || self.floor_needs_services
    }

    /// The name layers of a sandbox's own policy: own, then the floor.
    pub(super) fn layers(&self, own: &Arc<CompiledPolicy>) -> Vec<Arc<CompiledPolicy>> {
        std::iter::once(own.clone())
            .chain(self.floor.iter().cloned())
            .collect()
    }

    /// A new sandbox's resolver and proxy, if its policy or `proxy_env` needs them.
    pub(super) fn services_for(
        &self,
        id: &str,
        policy: &Arc<CompiledPolicy>,
        proxy_env: bool,
        max_learned: Option<u64>,
    ) -> Result<Option<DomainServices>> {
        if !self.needs_services(policy, proxy_env) {
            return Ok(None);
        }
        self.start_services(id, self.layers(policy), None, max_learned)
            .map(Some)
    }

    /// `max_learned`: the sandbox's own cap on learned addresses, if it set one.
    pub(super) fn start_services(
        &self,
        id: &str,
        layers: Vec<Arc<CompiledPolicy>>,
        preferred_ports: Option<(u16, u16)>,
        max_learned: Option<u64>,
    ) -> Result<DomainServices> {
        Ok(DomainServices::start_on(
            &self.handle,
            &self.paths,
            id,
            layers,
            self.domain_options(id, max_learned)?,
            preferred_ports,
        )?)
    }
}

/// The user a sandbox is shown to run as: the one asked for, or its own.
fn user_name(req: &CreateRequest) -> String {
    match (&req.user, req.root) {
        (Some(u), _) => u.clone(),
        (None, true) => "root".into(),
        (None, false) => crate::identity::SANDBOX_USER.into(),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Output files, stdin (a pipe kept by the daemon, or `/dev/null`) and the workload.
fn spawn_workload(
    cgroup: &SandboxCgroup,
    spec: &mut launch::LaunchSpec,
    dir: &Path,
    stdin: bool,
) -> Result<(Child, Option<fs::File>)> {
    let (stdin_read, stdin_write) = if stdin {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| Error::io("make the stdin pipe in", dir)(e.into()))?;
        (r, Some(fs::File::from(w)))
    } else {
        let null = fs::File::open("/dev/null").map_err(Error::io("open", "/dev/null"))?;
        (OwnedFd::from(null), None)
    };
    let output = |name: &str| {
        let path = dir.join(name);
        logs::create(&path).map_err(Error::io("create", path))
    };
    let (stdout, stderr) = (output("stdout.log")?, output("stderr.log")?);
    spec.stdio = Some([
        stdin_read.as_raw_fd(),
        stdout.as_raw_fd(),
        stderr.as_raw_fd(),
    ]);
    spec.new_session = true;
    let fd = cgroup.open_fd()?;
    let child = launch::spawn(spec, &fd).map_err(|e| Error::Workload {
        message: crate::error_line(&e),
        exit_code: e.exit_code(),
    })?;
    Ok((child, stdin_write))
}

/// A sandbox built and not yet published.
struct Built {
    id: String,
    dir: PathBuf,
    started: crate::lifecycle::Started,
    services: Option<DomainServices>,
    stdin: Option<fs::File>,
    tunnels: Vec<Tunnel>,
    ports: Vec<PortView>,
    child: Child,
    policy_id: u32,
    traffic_token: Option<String>,
}

/// A create request, checked and compiled.
struct Checked {
    timeout: Duration,
    idle_timeout: Option<Duration>,
    policy: Arc<CompiledPolicy>,
    command: Vec<String>,
    cwd: String,
    limits: crate::limits::Limits,
    spec: launch::LaunchSpec,
    image: Option<ImageUse>,
    /// Root of its own user namespace: asked for, or the image's `User`.
    root: bool,
}

/// The image a sandbox starts from: its defaults, and its layers held in the cache until the
/// sandbox's cgroup is bound to them.
struct ImageUse {
    digest: crate::image::Sha256,
    defaults: crate::image::Defaults,
    hold: crate::image::Hold,
}

/// Everything about a create request that can be refused before anything exists.
fn check_create(
    req: &CreateRequest,
    sandbox_uid: Option<u32>,
    (namespaces, reserved): (workload::Namespaces, crate::identity::UidRange),
    image: Option<ImageUse>,
) -> Result<Checked> {
    if let Some(name) = &req.name
        && !crate::api::valid_name(name)
    {
        return Err(Error::invalid(
            "name",
            format!("invalid name \"{name}\": use 1 to 63 of A-Z a-z 0-9 . _ -"),
        ));
    }
    let timeout = match &req.timeout {
        Some(t) => parse_duration("timeout", t)?,
        None => DEFAULT_TIMEOUT,
    };
    if timeout > MAX_TIMEOUT || timeout.is_zero() {
        return Err(Error::invalid(
            "timeout",
            format!(
                "invalid timeout \"{}\": must be more than 0 and at most 24h",
                req.timeout.as_deref().unwrap_or_default()
            ),
        ));
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
        crate::learned::Limits::checked(1, n).map_err(Error::LearnedLimit)?;
    }
    let policy = Arc::new(policy::compile(&req.policy.spec("policy.", Mode::Blocked))?);
    let defaults = image.as_ref().map(|i| &i.defaults);
    let command: Vec<String> = match defaults {
        Some(d) => d.command(
            (!req.entrypoint.is_empty()).then_some(&req.entrypoint[..]),
            &req.command,
        ),
        None => req
            .entrypoint
            .iter()
            .chain(req.command.iter())
            .cloned()
            .collect(),
    };
    if command.is_empty() {
        return Err(Error::invalid(
            "command",
            if image.is_some() {
                "no command: the image has no Entrypoint or Cmd; give command or entrypoint"
            } else {
                "no command: give command or entrypoint"
            },
        ));
    }
    let limits = req.resources.limits()?;
    // The image's Env, WorkingDir and User are defaults the request overrides.
    let mut env: BTreeMap<String, String> = defaults
        .map(|d| d.env_pairs().into_iter().collect())
        .unwrap_or_default();
    env.extend(req.env.clone());
    let cwd = req
        .cwd
        .clone()
        .or_else(|| defaults.and_then(|d| d.working_dir.clone()))
        .unwrap_or_else(|| "/".into());
    let root = req.root
        || (req.user.is_none() && defaults.is_some_and(crate::image::Defaults::runs_as_root));
    let spec = prepare_workload(
        &command,
        &env,
        &cwd,
        (req.user.as_deref(), sandbox_uid, root),
        (namespaces, reserved),
    )?;
    Ok(Checked {
        timeout,
        idle_timeout,
        policy,
        command,
        cwd,
        limits,
        spec,
        image,
        root,
    })
}

fn validate_ports(req: &CreateRequest) -> Result<()> {
    let invalid = |message: String| Err(Error::invalid("ports", message));
    if req.ports.len() > MAX_EXPOSED_PORTS {
        return invalid(format!("ports: at most {MAX_EXPOSED_PORTS}"));
    }
    for (i, p) in req.ports.iter().enumerate() {
        if p.port == 0 {
            return invalid("ports: port 0 cannot be exposed".into());
        }
        if req.ports[..i].iter().any(|q| q.port == p.port) {
            return invalid(format!("ports: port {} is exposed twice", p.port));
        }
    }
    if let Some(m) = &req.mask_host {
        let sample = crate::ingress::route::masked_host(m, 65535);
        if m.is_empty() || http::HeaderValue::from_str(&sample).is_err() || sample.contains(' ') {
            return Err(Error::invalid(
                "mask_host",
                format!("mask_host \"{m}\" is not a valid Host header (e.g. localhost:${{PORT}})"),
            ));
        }
    }
    Ok(())
}

fn validate_probe(p: &ProbeSpec) -> Result<()> {
    let invalid = |message: &str| Err(Error::invalid("probe", message));
    match (&p.tcp_port, &p.exec) {
        (Some(_), Some(_)) => return invalid("probe: give tcp_port or exec, not both"),
        (None, None) => return invalid("probe: give tcp_port or exec"),
        (None, Some(cmd)) if cmd.is_empty() => return invalid("probe: exec needs a command"),
        _ => {}
    }
    for (key, value) in [
        ("probe.interval", &p.interval),
        ("probe.timeout", &p.timeout),
    ] {
        if let Some(v) = value {
            parse_duration(key, v)?;
        }
    }
    Ok(())
}

fn parse_duration(field: &'static str, text: &str) -> Result<Duration> {
    humantime::parse_duration(text)
        .map_err(|e| Error::invalid(field, format!("invalid {field} \"{text}\": {e}")))
}

/// The launch spec of a command run as `user` in `cwd`; refusals carry `run`'s exit status.
pub(super) fn prepare_workload(
    command: &[String],
    env: &BTreeMap<String, String>,
    cwd: &str,
    (user, sandbox_uid, root): (Option<&str>, Option<u32>, bool),
    (namespaces, reserved): (workload::Namespaces, crate::identity::UidRange),
) -> Result<launch::LaunchSpec> {
    let command: Vec<OsString> = command.iter().map(OsString::from).collect();
    workload::prepare(Workload {
        command: &command,
        env: env
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect(),
        cwd: PathBuf::from(cwd),
        user,
        sandbox_uid,
        root,
        reserved,
        keep_caps: Vec::new(),
        namespaces,
    })
    .map_err(|e| Error::WorkloadRefused {
        message: e.message,
        exit_code: e.code,
    })
}
