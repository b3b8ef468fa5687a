//! The agent side of domain rules for one sandbox: its resolver (`dns`) and its transparent
//! proxy (`proxy`), served on loopback ports that the kernel redirects the sandbox's DNS and
//! web traffic to. What both share is `domain_state` (a leaf the services stand on).
//!
//! They run on a small tokio runtime of their own, next to the synchronous launcher. When the
//! agent dies, the ports close: the sandbox's redirected connects are refused (fail closed).
use std::{
    fs, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
};

use tokio::{
    net::{TcpListener, UdpSocket},
    runtime::Runtime,
};

pub use crate::domain_state::{Bound, DomainOptions, Shared};
use crate::{
    domain_state::{MIN_LEARNED_TTL, boot_time_ns},
    enforcement::{AgentMaps, EnforcementError},
    paths::Paths,
    policy::CompiledPolicy,
};

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
        let shared = Arc::new(Shared::new(sandbox_id, layers, options, maps));
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
        self.shared.bind(bound);
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
        shared.prune_expired(boot_time_ns());
    }
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
