//! The agent side of domain rules for one sandbox: its resolver (`dns`) and its transparent
//! proxy (`proxy`), served on loopback ports that the kernel redirects the sandbox's DNS and
//! web traffic to, and what both share: the policy, the maps, the upstream, the event sink.
//!
//! They run on a small tokio runtime of their own, next to the synchronous launcher. When the
//! agent dies, the ports close: the sandbox's redirected connects are refused (fail closed).
use std::{
    collections::HashMap,
    fs, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{
    net::{TcpListener, UdpSocket},
    runtime::Runtime,
};

use crate::{
    enforcement::{AgentMaps, EnforcementError},
    events::Events,
    paths::Paths,
    policy::{self, CompiledPolicy},
};

/// Learned addresses stay reachable at least this long, whatever the record's TTL: clients
/// connect some time after the answer, and a TTL of 0 would otherwise make it useless.
pub const MIN_LEARNED_TTL: Duration = Duration::from_secs(30);
/// And at most this long: a record with a huge TTL must not open an address for days.
pub const MAX_LEARNED_TTL: Duration = Duration::from_hours(1);

#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    #[error("cannot start the resolver and proxy threads: {0}")]
    Runtime(#[source] io::Error),
    #[error(transparent)]
    Maps(#[from] EnforcementError),
    #[error("cannot bind the sandbox's {what} on loopback: {source}")]
    Bind {
        what: &'static str,
        source: io::Error,
    },
    #[error(
        "no upstream DNS server: {path} lists no usable nameserver; give one with --upstream-dns"
    )]
    NoUpstream { path: PathBuf },
    #[error("the policy has domain rules but no resolver settings were given")]
    NotConfigured,
    #[error(
        "invalid upstream DNS server \"{text}\": expected ADDR or ADDR:PORT, like 10.0.0.2, 10.0.0.2:5353 or [2001:db8::1]:53"
    )]
    BadUpstream { text: String },
}

/// Settings of the domain services.
pub struct DomainOptions {
    /// Where allowed names are resolved.
    pub upstream_dns: SocketAddr,
    /// The operator's proxy that the agent's own connections go through, if any.
    pub upstream_proxy: Option<crate::proxy::upstream::UpstreamProxy>,
    pub events: Arc<Events>,
    /// How many addresses the resolver learns per answer and holds for the sandbox.
    pub learned_limits: crate::learned::Limits,
}

/// The sandbox as the services know it once its policy is in the kernel.
#[derive(Clone, Copy, Debug)]
pub struct Bound {
    pub cgroup_id: u64,
    pub policy_id: u32,
}

/// What the resolver and the proxy of one sandbox share.
pub struct Shared {
    pub sandbox_id: String,
    /// The policies a name must pass, innermost first: the sandbox's (or an exec's) own,
    /// then its ceiling and the host floor. Replaced whole on a live policy change.
    layers: std::sync::RwLock<Vec<Arc<CompiledPolicy>>>,
    /// Bumped on every policy change: open proxied connections re-check themselves.
    pub policy_epoch: tokio::sync::watch::Sender<u64>,
    /// Proxied connections open now (the sandbox is not idle while one is).
    pub open_connections: std::sync::atomic::AtomicUsize,
    /// The addresses the resolver learned for the sandbox, with the names each was handed
    /// out for (a policy change keeps exactly the addresses of names it still allows).
    learned: Mutex<crate::learned::Learned>,
    pub learned_limits: crate::learned::Limits,
    /// When the sandbox was last told it holds its cap of learned addresses.
    cap_noticed: Mutex<Option<Instant>>,
    pub upstream: SocketAddr,
    pub upstream_proxy: Option<crate::proxy::upstream::UpstreamProxy>,
    pub events: Arc<Events>,
    pub maps: Mutex<AgentMaps>,
    bound: Mutex<Option<Bound>>,
    /// The proxy's own resolutions (the addresses it may connect to), kept for their TTL (within [`MIN_CACHED_TTL`] and
    /// [`MAX_CACHED_TTL`]), so that
    /// a connection does not wait for the upstream resolver every time.
    resolved: Mutex<HashMap<String, (Vec<IpAddr>, Instant)>>,
    /// The host's own addresses when the services started: a name must not lead the sandbox
    /// to the host's services on its public addresses either.
    host_addresses: std::collections::HashSet<IpAddr>,
}

/// The longest the proxy reuses a resolution, whatever its TTL.
pub const MAX_CACHED_TTL: Duration = Duration::from_mins(1);
/// The shortest: names served with TTL 0 (common behind load balancers) would otherwise cost
/// two upstream queries per connection (~110 µs here, see BENCHMARKS.md).
pub const MIN_CACHED_TTL: Duration = Duration::from_secs(2);
/// Names the proxy keeps resolutions for; past it, expired ones go, then all.
const MAX_CACHED_NAMES: usize = 4096;

/// Why an address is not one the agent will hand out or connect to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddressRefusal {
    #[error("the address is denied by an address rule")]
    DenyRule,
    #[error("the address is loopback and no rule allows loopback")]
    Loopback,
    #[error(
        "the address is private, link-local, multicast or cloud metadata, and no address rule allows it"
    )]
    Internal,
    #[error("the address is one of this host's, and no address rule allows it")]
    HostAddress,
    #[error("the sandbox is not known to the kernel")]
    UnknownSandbox,
}

impl Shared {
    pub fn bound(&self) -> Option<Bound> {
        self.bound.lock().ok().and_then(|b| *b)
    }

    /// The name verdict of every layer: the first denial, else the innermost allow.
    pub fn decide_name(&self, name: &str) -> crate::policy::NameVerdict {
        let layers = self
            .layers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        decide_in_layers(&layers, name)
    }

    /// Takes `addr`, handed out for `name` until `expiry` (boot-time ns), into the sandbox's
    /// share of learned addresses, before the kernel map is written.
    pub fn admit_learned(
        &self,
        addr: IpAddr,
        name: &str,
        expiry: u64,
    ) -> Result<(), crate::learned::Refusal> {
        // A copy, so that the learned lock is never held while waiting for the layers.
        let layers = self
            .layers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let still_allowed = |names: &std::collections::BTreeSet<String>| {
            names.iter().any(|n| decide_in_layers(&layers, n).allow)
        };
        self.learned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .admit(
                crate::enforcement::canonical(addr),
                name,
                expiry,
                boot_time_ns(),
                still_allowed,
            )
    }

    /// Gives back an address the kernel map did not take.
    pub fn withdraw_learned(&self, addr: IpAddr) {
        self.learned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .withdraw(crate::enforcement::canonical(addr));
    }

    /// Whether to tell the sandbox (again) that it holds its cap: at most once a minute, so
    /// that a flood of questions does not become a flood of events.
    pub fn cap_notice_due(&self) -> bool {
        let mut last = self
            .cap_noticed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let due = last.is_none_or(|t| t.elapsed() >= Duration::from_mins(1));
        if due {
            *last = Some(Instant::now());
        }
        due
    }

    /// Whether some name `addr` was handed out for is still allowed.
    pub fn learned_still_allowed(&self, addr: IpAddr) -> bool {
        let layers = self
            .layers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.learned_allowed_by(addr, &layers)
    }

    /// Whether some name `addr` was handed out for is allowed by `layers` (before a switch).
    pub fn learned_allowed_by(&self, addr: IpAddr, layers: &[Arc<CompiledPolicy>]) -> bool {
        self.learned_names_of(addr)
            .iter()
            .any(|n| decide_in_layers(layers, n).allow)
    }

    fn learned_names_of(&self, addr: IpAddr) -> Vec<String> {
        self.learned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .names_of(crate::enforcement::canonical(addr))
    }

    /// Switches to new layers and a new policy id (after the kernel switched), forgets the
    /// proxy's resolutions, and tells open connections to re-check themselves.
    pub fn replace_layers(&self, layers: Vec<Arc<CompiledPolicy>>, bound: Bound) {
        *self
            .layers
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = layers;
        if let Ok(mut b) = self.bound.lock() {
            *b = Some(bound);
        }
        if let Ok(mut cache) = self.resolved.lock() {
            cache.clear();
        }
        self.policy_epoch.send_modify(|e| *e += 1);
    }

    /// The permitted addresses of `name` from a resolution by the proxy still within its TTL.
    pub fn cached_addresses(&self, name: &str) -> Option<Vec<IpAddr>> {
        let cache = self.resolved.lock().ok()?;
        let (addrs, expiry) = cache.get(name)?;
        (Instant::now() < *expiry).then(|| addrs.clone())
    }

    pub fn remember_addresses(&self, name: &str, addrs: &[IpAddr], ttl: u32) {
        let ttl = Duration::from_secs(u64::from(ttl)).clamp(MIN_CACHED_TTL, MAX_CACHED_TTL);
        if addrs.is_empty() {
            return;
        }
        let Ok(mut cache) = self.resolved.lock() else {
            return;
        };
        let now = Instant::now();
        if cache.len() >= MAX_CACHED_NAMES {
            cache.retain(|_, (_, expiry)| now < *expiry);
            if cache.len() >= MAX_CACHED_NAMES {
                cache.clear();
            }
        }
        cache.insert(name.to_owned(), (addrs.to_vec(), now + ttl));
    }

    /// Whether the agent may hand out or connect to `addr` for this sandbox: not denied by an
    /// address rule (with the sandbox's precedence, as the kernel decides), and, when it is
    /// internal (private, loopback, link-local, metadata...), allowed by an explicit rule, so
    /// that a name cannot be pointed at the host's own network (DNS rebinding).
    pub fn address_permitted(&self, addr: IpAddr) -> Result<(), AddressRefusal> {
        use sandbox_common::Reason;
        let Some(bound) = self.bound() else {
            return Err(AddressRefusal::UnknownSandbox);
        };
        let verdict = self
            .maps
            .lock()
            .map_err(|_| AddressRefusal::UnknownSandbox)?
            .address_verdict(bound.cgroup_id, addr);
        match verdict.reason {
            Reason::AllowRule => Ok(()),
            Reason::DenyRule | Reason::Tie => Err(AddressRefusal::DenyRule),
            Reason::LoopbackNotNamed => Err(AddressRefusal::Loopback),
            Reason::UnknownSandbox => Err(AddressRefusal::UnknownSandbox),
            _ if policy::is_internal(addr) => Err(AddressRefusal::Internal),
            _ if self
                .host_addresses
                .contains(&crate::enforcement::canonical(addr)) =>
            {
                Err(AddressRefusal::HostAddress)
            }
            _ => Ok(()),
        }
    }
}

/// The running resolver and proxy of one sandbox. Dropping it stops them.
pub struct DomainServices {
    /// Its own runtime in embedded `run`; `None` in the daemon, which shares one.
    runtime: Option<Runtime>,
    tasks: Vec<tokio::task::AbortHandle>,
    pub dns_port: u16,
    pub proxy_port: u16,
    pub shared: Arc<Shared>,
}

impl DomainServices {
    /// Binds the loopback ports and starts serving on a runtime of its own. The services
    /// refuse everything until [`DomainServices::bind`] tells them the sandbox's cgroup and
    /// policy id.
    pub fn start(
        paths: &Paths,
        sandbox_id: &str,
        policy: CompiledPolicy,
        floor: Option<Arc<CompiledPolicy>>,
        options: DomainOptions,
    ) -> Result<Self, DomainError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("sandbox-agent-net")
            .enable_all()
            .build()
            .map_err(DomainError::Runtime)?;
        let mut services = Self::start_on(
            runtime.handle(),
            paths,
            sandbox_id,
            std::iter::once(Arc::new(policy)).chain(floor).collect(),
            options,
            None,
        )?;
        services.runtime = Some(runtime);
        Ok(services)
    }

    /// As [`DomainServices::start`], on the caller's runtime, with the name policies as
    /// layers (own, then outer), on `preferred_ports` (resolver, proxy) if they are free.
    pub fn start_on(
        handle: &tokio::runtime::Handle,
        paths: &Paths,
        sandbox_id: &str,
        layers: Vec<Arc<CompiledPolicy>>,
        options: DomainOptions,
        preferred_ports: Option<(u16, u16)>,
    ) -> Result<Self, DomainError> {
        let maps = AgentMaps::open(paths)?;
        let shared = Arc::new(Shared {
            sandbox_id: sandbox_id.to_owned(),
            layers: std::sync::RwLock::new(layers),
            policy_epoch: tokio::sync::watch::Sender::new(0),
            open_connections: std::sync::atomic::AtomicUsize::new(0),
            learned: Mutex::new(crate::learned::Learned::new(
                options.learned_limits.per_sandbox,
            )),
            learned_limits: options.learned_limits,
            cap_noticed: Mutex::new(None),
            upstream: options.upstream_dns,
            upstream_proxy: options.upstream_proxy,
            events: options.events,
            maps: Mutex::new(maps),
            bound: Mutex::new(None),
            resolved: Mutex::new(HashMap::new()),
            host_addresses: host_addresses(),
        });
        let sockets = {
            let _context = handle.enter();
            bind_ports(preferred_ports)?
        };
        let (dns_port, proxy_port) = (sockets.dns_port, sockets.proxy_port);
        let mut tasks = Vec::new();
        for udp in sockets.dns_udp {
            tasks.push(handle.spawn(crate::dns::serve_udp(Arc::new(udp), shared.clone())));
        }
        for tcp in sockets.dns_tcp {
            tasks.push(handle.spawn(crate::dns::serve_tcp(tcp, shared.clone())));
        }
        for tcp in sockets.proxy {
            tasks.push(handle.spawn(crate::proxy::serve(tcp, shared.clone())));
        }
        tasks.push(handle.spawn(prune_learned(shared.clone())));
        Ok(Self {
            runtime: None,
            tasks: tasks
                .iter()
                .map(tokio::task::JoinHandle::abort_handle)
                .collect(),
            dns_port,
            proxy_port,
            shared,
        })
    }

    pub fn bind(&self, bound: Bound) {
        if let Ok(mut b) = self.shared.bound.lock() {
            *b = Some(bound);
        }
    }
}

impl Drop for DomainServices {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        // Open connections end with their sandbox.
        self.shared.policy_epoch.send_modify(|e| *e = u64::MAX);
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Drops expired learned addresses now and then (the kernel checks expiry itself; this only
/// keeps the map small).
async fn prune_learned(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(MIN_LEARNED_TTL);
    loop {
        tick.tick().await;
        let now = boot_time_ns();
        if let Some(bound) = shared.bound()
            && let Ok(mut maps) = shared.maps.lock()
        {
            maps.prune_learned(bound.policy_id, now);
        }
        shared
            .learned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .prune(now);
    }
}

/// The addresses of the host's interfaces (`getifaddrs`).
fn host_addresses() -> std::collections::HashSet<IpAddr> {
    let mut out = std::collections::HashSet::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list we free below.
    if unsafe { libc::getifaddrs(&raw mut list) } != 0 {
        return out;
    }
    let mut cur = list;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, valid until freeifaddrs.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points at a sockaddr whose family says its real type.
            match i32::from(unsafe { (*ifa.ifa_addr).sa_family }) {
                libc::AF_INET => {
                    // SAFETY: AF_INET: a sockaddr_in (read unaligned: the list only promises
                    // a sockaddr's alignment).
                    let sin = unsafe { ifa.ifa_addr.cast::<libc::sockaddr_in>().read_unaligned() };
                    out.insert(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                        sin.sin_addr.s_addr,
                    ))));
                }
                libc::AF_INET6 => {
                    // SAFETY: AF_INET6: a sockaddr_in6, read as above.
                    let sin6 =
                        unsafe { ifa.ifa_addr.cast::<libc::sockaddr_in6>().read_unaligned() };
                    out.insert(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
                }
                _ => {}
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: the list came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    out
}

/// `CLOCK_BOOTTIME` in nanoseconds, the clock of `bpf_ktime_get_boot_ns`.
pub fn boot_time_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write to.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &raw mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

struct Sockets {
    dns_port: u16,
    proxy_port: u16,
    dns_udp: Vec<UdpSocket>,
    dns_tcp: Vec<TcpListener>,
    proxy: Vec<TcpListener>,
}

const LOCALHOST_V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const LOCALHOST_V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

/// One port for the resolver (UDP and TCP) and one for the proxy, each on 127.0.0.1 and, if
/// the host has IPv6 loopback, on `::1` (IPv6-only sockets, so the two do not clash). Must run
/// inside the runtime's context: the sockets are registered with its reactor.
fn bind_ports(preferred: Option<(u16, u16)>) -> Result<Sockets, DomainError> {
    const TRIES: usize = 32;
    let ipv6 = std::net::UdpSocket::bind((Ipv6Addr::LOCALHOST, 0)).is_ok();
    let mut last = None;
    for attempt in 0..TRIES {
        // The preferred ports first (a restarted daemon takes its sandboxes' ports back, so
        // that proxy variables set at their start still work), then any.
        // Below the ephemeral range (see `port_outside_ephemeral`); the last tries let the
        // kernel pick, should every port tried there be taken.
        let (dns_port, proxy_port) = match preferred.filter(|_| attempt == 0) {
            Some(ports) => ports,
            None if attempt + 4 >= TRIES => (0, 0),
            None => (port_outside_ephemeral(), port_outside_ephemeral()),
        };
        let dns = bind_same_port(&[Kind::Udp, Kind::Tcp], ipv6, dns_port);
        let proxy = bind_same_port(&[Kind::Tcp], ipv6, proxy_port);
        match (dns, proxy) {
            (Ok(dns), Ok(proxy)) => {
                let mut sockets = Sockets {
                    dns_port: dns.port,
                    proxy_port: proxy.port,
                    dns_udp: Vec::new(),
                    dns_tcp: Vec::new(),
                    proxy: Vec::new(),
                };
                for s in dns.sockets {
                    match s {
                        Bound2::Udp(u) => sockets.dns_udp.push(into_tokio_udp(u)?),
                        Bound2::Tcp(t) => sockets.dns_tcp.push(into_tokio_tcp(t)?),
                    }
                }
                for s in proxy.sockets {
                    if let Bound2::Tcp(t) = s {
                        sockets.proxy.push(into_tokio_tcp(t)?);
                    }
                }
                return Ok(sockets);
            }
            (Err(e), _) | (_, Err(e)) => last = Some(e),
        }
    }
    Err(DomainError::Bind {
        what: "resolver and proxy ports",
        source: last.unwrap_or_else(|| io::Error::other("no free port")),
    })
}

/// Ports tried for the agent's services lie below the kernel's ephemeral range: sandboxes
/// hold ephemeral ports freely (every fixed-port TCP bind of theirs is steered to port 0, and
/// each redirected socket takes one), and a review used up 127.0.0.1's ephemeral ports so
/// that a new sandbox's resolver could not start. How many ports below the range are tried.
const SERVICE_PORT_SPAN: u32 = 16_384;

/// A random port in the `SERVICE_PORT_SPAN` ports below the ephemeral range, or 0 (let the
/// kernel pick) where the range leaves no room below it.
fn port_outside_ephemeral() -> u16 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let low = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let floor = 1024;
    if low <= floor + 1 {
        return 0;
    }
    let span = SERVICE_PORT_SPAN.min(low - floor - 1);
    // A fresh random seed per call; no cryptographic quality needed, just spread.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(low);
    let offset = u32::try_from(hasher.finish() % u64::from(span)).expect("below span");
    u16::try_from(low - 1 - offset).unwrap_or(0)
}

#[derive(Clone, Copy)]
enum Kind {
    Udp,
    Tcp,
}

enum Bound2 {
    Udp(std::net::UdpSocket),
    Tcp(std::net::TcpListener),
}

struct SamePort {
    port: u16,
    sockets: Vec<Bound2>,
}

/// Binds every kind on 127.0.0.1 and `::1` to one port: `port`, or (0) the one the first
/// socket picks.
fn bind_same_port(kinds: &[Kind], ipv6: bool, port: u16) -> io::Result<SamePort> {
    let mut port = port;
    let mut sockets = Vec::new();
    let hosts: &[IpAddr] = if ipv6 {
        &[LOCALHOST_V4, LOCALHOST_V6]
    } else {
        &[LOCALHOST_V4]
    };
    for &host in hosts {
        for &kind in kinds {
            let addr = SocketAddr::new(host, port);
            let s = match kind {
                Kind::Udp => Bound2::Udp(std::net::UdpSocket::bind(addr)?),
                Kind::Tcp => Bound2::Tcp(std::net::TcpListener::bind(addr)?),
            };
            if port == 0 {
                port = match &s {
                    Bound2::Udp(u) => u.local_addr()?.port(),
                    Bound2::Tcp(t) => t.local_addr()?.port(),
                };
            }
            sockets.push(s);
        }
    }
    Ok(SamePort { port, sockets })
}

fn into_tokio_udp(s: std::net::UdpSocket) -> Result<UdpSocket, DomainError> {
    let err = |source| DomainError::Bind {
        what: "resolver (UDP)",
        source,
    };
    s.set_nonblocking(true).map_err(err)?;
    UdpSocket::from_std(s).map_err(err)
}

fn into_tokio_tcp(s: std::net::TcpListener) -> Result<TcpListener, DomainError> {
    let err = |source| DomainError::Bind {
        what: "TCP listener",
        source,
    };
    s.set_nonblocking(true).map_err(err)?;
    TcpListener::from_std(s).map_err(err)
}

/// Parses `ADDR` or `ADDR:PORT` (IPv6 as `[ADDR]:PORT` or bare `ADDR`); port 53 by default.
pub fn parse_upstream(text: &str) -> Result<SocketAddr, DomainError> {
    let bad = || DomainError::BadUpstream { text: text.into() };
    if let Ok(sa) = text.parse::<SocketAddr>() {
        return Ok(sa);
    }
    text.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| bad())
}

/// The first usable `nameserver` of a resolv.conf.
pub fn upstream_from_resolv_conf(path: &Path) -> Result<SocketAddr, DomainError> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| {
            let addr = rest.trim();
            // Drop an IPv6 zone (`fe80::1%eth0`): a zone needs a scope id we do not track.
            let addr = addr.split('%').next().unwrap_or(addr);
            addr.parse::<IpAddr>().ok()
        })
        .map(|ip| SocketAddr::new(ip, 53))
        .next()
        .ok_or_else(|| DomainError::NoUpstream { path: path.into() })
}

/// Loopback ports of a sandbox's resolver and proxy, `(0, 0)` without them.
pub fn service_ports(services: Option<&DomainServices>) -> (u16, u16) {
    services.map_or((0, 0), |s| (s.dns_port, s.proxy_port))
}

/// A name's verdict under layered policies (own first, then ceilings and the floor): every
/// layer must allow, and the first denial stands.
fn decide_in_layers(layers: &[Arc<CompiledPolicy>], name: &str) -> crate::policy::NameVerdict {
    let mut verdict = layers
        .first()
        .map(|p| p.decide_name(name))
        .expect("a sandbox has its own policy");
    for outer in layers.iter().skip(1) {
        let v = outer.decide_name(name);
        if verdict.allow && !v.allow {
            verdict = v;
        }
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_ports_lie_below_the_ephemeral_range() {
        let low: u16 = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        for _ in 0..100 {
            let port = port_outside_ephemeral();
            assert!(port > 1024 && port < low, "{port} not below {low}");
        }
    }

    #[test]
    fn upstream_addresses() {
        assert_eq!(
            parse_upstream("10.0.0.2").unwrap(),
            "10.0.0.2:53".parse().unwrap()
        );
        assert_eq!(
            parse_upstream("10.0.0.2:5353").unwrap(),
            "10.0.0.2:5353".parse().unwrap()
        );
        assert_eq!(
            parse_upstream("2001:db8::1").unwrap(),
            "[2001:db8::1]:53".parse().unwrap()
        );
        assert_eq!(
            parse_upstream("[2001:db8::1]:54").unwrap(),
            "[2001:db8::1]:54".parse().unwrap()
        );
        for bad in ["", "dns.example", "10.0.0.2:x", "10.0.0.256"] {
            assert!(parse_upstream(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn resolv_conf() {
        let dir = std::env::temp_dir().join(format!("sa-resolv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("resolv.conf");
        std::fs::write(
            &path,
            "# comment\nsearch example\nnameserver fe80::1%eth0\nnameserver 10.0.0.2\n",
        )
        .unwrap();
        assert_eq!(
            upstream_from_resolv_conf(&path).unwrap(),
            "[fe80::1]:53".parse().unwrap()
        );
        std::fs::write(&path, "search example\n").unwrap();
        assert!(matches!(
            upstream_from_resolv_conf(&path),
            Err(DomainError::NoUpstream { .. })
        ));
        let _ = std::fs::remove_dir_all(dir);
    }
}
