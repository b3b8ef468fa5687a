//! What the resolver (`dns`) and the proxy (`proxy`) of one sandbox share: its policy
//! layers, its learned addresses, the proxy's resolutions, the maps, the upstreams and the
//! event sink. A leaf: the services stand on it, and `domains` (which starts them) builds it.
use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::{
    enforcement::AgentMaps,
    events::Events,
    policy::{self, CompiledPolicy},
};

/// Learned addresses stay reachable at least this long, whatever the record's TTL: clients
/// connect some time after the answer, and a TTL of 0 would otherwise make it useless.
pub const MIN_LEARNED_TTL: Duration = Duration::from_secs(30);
/// And at most this long: a record with a huge TTL must not open an address for days.
pub const MAX_LEARNED_TTL: Duration = Duration::from_hours(1);

/// Settings of the domain services.
pub struct DomainOptions {
    /// Where allowed names are resolved.
    pub upstream_dns: SocketAddr,
    /// The operator's proxy that the agent's own connections go through, if any.
    pub upstream_proxy: Option<crate::upstream_proxy::UpstreamProxy>,
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
    pub upstream_proxy: Option<crate::upstream_proxy::UpstreamProxy>,
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
    /// The state of a new sandbox's services: it refuses everything until [`Shared::bind`]
    /// tells it the sandbox's cgroup and policy id.
    pub fn new(
        sandbox_id: &str,
        layers: Vec<Arc<CompiledPolicy>>,
        options: DomainOptions,
        maps: AgentMaps,
    ) -> Self {
        Self {
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
        }
    }

    /// Tells the services the sandbox's cgroup and policy id once the kernel has its entry.
    pub fn bind(&self, bound: Bound) {
        if let Ok(mut b) = self.bound.lock() {
            *b = Some(bound);
        }
    }

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

    /// Drops learned addresses expired at `now` (boot-time ns) from the map and the share.
    pub fn prune_expired(&self, now: u64) {
        if let Some(bound) = self.bound()
            && let Ok(mut maps) = self.maps.lock()
        {
            maps.prune_learned(bound.policy_id, now);
        }
        self.learned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .prune(now);
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
