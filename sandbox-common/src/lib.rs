//! Types shared by the eBPF programs (`sandbox-ebpf`) and the agent (`sandbox-agent`).
//!
//! Everything here is `#[repr(C)]` with explicit padding, because the same bytes are written
//! by user space into BPF maps and read by the kernel programs. The verdict logic itself
//! ([`decide`]) also lives here, so that the exact function the kernel runs is unit-tested
//! in user space without root.
#![no_std]
#![expect(
    clippy::inline_always,
    reason = "these run per packet in the kernel; inlining avoids bpf-to-bpf calls there"
)]

/// Names of the maps in the eBPF object, used by the loader to find and pin them.
pub mod map_names {
    pub const SANDBOXES: &str = "SANDBOXES";
    pub const ALLOW_V4: &str = "ALLOW_V4";
    pub const DENY_V4: &str = "DENY_V4";
    pub const ALLOW_V6: &str = "ALLOW_V6";
    pub const DENY_V6: &str = "DENY_V6";
    pub const COUNTERS: &str = "COUNTERS";
    pub const POLICY_IDS: &str = "POLICY_IDS";
    pub const META: &str = "META";
    pub const FLOWS: &str = "FLOWS";
    pub const ORIG_DST: &str = "ORIG_DST";
    pub const PROXY_CONNS: &str = "PROXY_CONNS";
    pub const LEARNED_V4: &str = "LEARNED_V4";
    pub const LEARNED_V6: &str = "LEARNED_V6";
    pub const EVENTS: &str = "EVENTS";
    pub const EVENT_BUDGET: &str = "EVENT_BUDGET";
    pub const BIND_REQUESTS: &str = "BIND_REQUESTS";
    pub const LISTENING: &str = "LISTENING";
    pub const SERVER_PORTS: &str = "SERVER_PORTS";
    pub const LISTENER_SOCKETS: &str = "LISTENER_SOCKETS";
    pub const LISTEN_COUNTS: &str = "LISTEN_COUNTS";
    /// All maps but `META`, which is pinned last as the mark of a complete install.
    pub const ALL: [&str; 19] = [
        SANDBOXES,
        ALLOW_V4,
        DENY_V4,
        ALLOW_V6,
        DENY_V6,
        COUNTERS,
        POLICY_IDS,
        FLOWS,
        ORIG_DST,
        PROXY_CONNS,
        LEARNED_V4,
        LEARNED_V6,
        EVENTS,
        EVENT_BUDGET,
        BIND_REQUESTS,
        LISTENING,
        SERVER_PORTS,
        LISTENER_SOCKETS,
        LISTEN_COUNTS,
    ];
}

/// Names of the programs in the eBPF object.
pub mod program_names {
    pub const EGRESS: &str = "sandbox_egress";
    pub const INGRESS: &str = "sandbox_ingress";
    pub const CONNECT4: &str = "sandbox_connect4";
    pub const CONNECT6: &str = "sandbox_connect6";
    pub const SENDMSG4: &str = "sandbox_sendmsg4";
    pub const SENDMSG6: &str = "sandbox_sendmsg6";
    pub const RECVMSG4: &str = "sandbox_recvmsg4";
    pub const RECVMSG6: &str = "sandbox_recvmsg6";
    pub const SOCK_OPS: &str = "sandbox_sock_ops";
    pub const SOCK_RELEASE: &str = "sandbox_sock_release";
    pub const BIND4: &str = "sandbox_bind4";
    pub const BIND6: &str = "sandbox_bind6";
    pub const POST_BIND4: &str = "sandbox_post_bind4";
    pub const POST_BIND6: &str = "sandbox_post_bind6";
}

/// Capacity of the `SANDBOXES` and `COUNTERS` maps: sandboxes alive at once on one host.
pub const MAX_SANDBOXES: u32 = 65_536;
/// Default capacity of each LPM trie (all sandboxes' prefixes of one kind and family).
/// The tries are not preallocated, so a large capacity costs nothing until used.
pub const DEFAULT_MAX_PREFIXES: u32 = 4 * 1024 * 1024;
/// Capacity of `FLOWS` and `ORIG_DST`: sockets the agent let through by redirect or by a
/// learned address, alive at once on the host. Entries go when their socket is released.
pub const MAX_FLOWS: u32 = 262_144;
/// Capacity of `PROXY_CONNS`: redirected connections not yet accepted by the proxy.
pub const MAX_PROXY_CONNS: u32 = 65_536;
/// Capacity of each `LEARNED_*` map: (policy, address) pairs handed out by the resolvers.
pub const MAX_LEARNED: u32 = 262_144;
/// TCP ports whose connections need a domain decision by the proxy (HTTP and HTTPS).
pub const HTTP_PORT: u16 = 80;
pub const HTTPS_PORT: u16 = 443;
/// DNS, steered to the sandbox's resolver whatever the address.
pub const DNS_PORT: u16 = 53;
/// Capacity of `LISTENING` and `SERVER_PORTS`: TCP ports sandboxes bound, host-wide.
pub const MAX_LISTENING: u32 = 262_144;
/// TCP binds one sandbox may have recorded at once (`LISTEN_COUNTS`): one sandbox cannot
/// fill the host-wide maps and make every other sandbox's binds fail.
pub const MAX_LISTENING_PER_SANDBOX: u32 = 4096;
/// Entries one sandbox may hold in `FLOWS` (and so in `ORIG_DST`, whose entries are a subset):
/// sockets redirected to the agent or let through to a learned address or its own listener.
/// A sandbox over it gets EPERM (reason `Quota`); the others keep their share of `MAX_FLOWS`.
pub const MAX_FLOWS_PER_SANDBOX: u32 = 16_384;
/// The `SO_MARK` of the agent's ingress connections to sandboxes, the only inbound TCP
/// connections a sandbox accepts (an unmarked SYN is dropped). Setting a mark takes
/// `CAP_NET_ADMIN`, which sandboxes lack; the kernel sets it itself on a sandbox's connects to
/// its own listeners.
pub const INGRESS_MARK: u32 = 0x5341_0001;

/// A TCP port a sandbox asked to listen on (key of `LISTENING`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ListenKey {
    /// The cgroup of the process that bound it.
    pub cgroup_id: u64,
    /// The port it asked for, host byte order.
    pub port: u16,
    /// 4: reachable at 127.0.0.1, 6: at `::1`.
    pub family: u16,
    /// Explicit padding, always zero.
    pub pad: u32,
}

/// A port the kernel assigned instead (key of `SERVER_PORTS`), per sandbox: another
/// sandbox binding the same port number on another loopback address cannot touch it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServerKey {
    pub cgroup_id: u64,
    /// Host byte order.
    pub port: u16,
    /// 4 or 6, as in [`ListenKey`].
    pub family: u16,
    /// Explicit padding, always zero.
    pub pad: u32,
}

/// A steered listening socket: value of `LISTENING` and of `SERVER_PORTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerPort {
    /// The listening socket (entries go when it is released).
    pub cookie: u64,
    pub cgroup_id: u64,
    /// The port asked for, host byte order.
    pub requested: u16,
    /// The port it got on loopback, host byte order.
    pub assigned: u16,
    /// Explicit padding, always zero.
    pub pad: u32,
    /// Cookie of the network namespace the socket listens in: a connect is steered to it
    /// only from the same namespace (the port would name another socket elsewhere).
    pub netns: u64,
}

/// TCP flags of an inbound packet that opens a connection (SYN without ACK).
#[inline(always)]
pub const fn opens_connection(tcp_flags: u8) -> bool {
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    tcp_flags & SYN != 0 && tcp_flags & ACK == 0
}

/// LPM key data for IPv4: 4 bytes of policy id (big-endian), then the address (network order).
/// The trie key's `prefix_len` is `POLICY_ID_BITS + address prefix length`, so one trie holds
/// the rules of every policy without one policy's entries matching another's lookups.
pub type LpmDataV4 = [u8; 8];
/// LPM key data for IPv6: 4 bytes of policy id (big-endian), then the address (network order).
pub type LpmDataV6 = [u8; 20];
/// Bits of the LPM key taken by the policy id.
pub const POLICY_ID_BITS: u32 = 32;

/// Value of an LPM trie entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleValue {
    /// Prefix length of the rule's address part (0..=32 or 0..=128); the kernel needs it for
    /// `most-specific`, since an LPM lookup returns only the value of the longest match.
    pub prefix_len: u32,
}

/// What happens to traffic that no rule matches.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefaultVerdict {
    Deny = 0,
    Allow = 1,
}

/// How an allow rule and a deny rule that both match one address are settled.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precedence {
    /// Any matching deny rule wins.
    DenyWins = 0,
    /// Any matching allow rule wins.
    AllowWins = 1,
    /// The longer prefix wins; equal lengths deny.
    MostSpecific = 2,
}

/// Per-sandbox settings, keyed by the sandbox cgroup's id (`u64`, the cgroup directory's
/// inode number) in the `SANDBOXES` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SandboxEntry {
    /// Key prefix of this sandbox's rules in the LPM tries.
    pub policy_id: u32,
    /// A [`DefaultVerdict`] as `u32`.
    pub default_verdict: u32,
    /// A [`Precedence`] as `u32`.
    pub precedence: u32,
    /// Non-zero: loopback is reachable only through an allow rule that names it
    /// (see [`LOOPBACK_V4_MIN_PREFIX`]). Set in every mode but `open`.
    pub guard_loopback: u32,
    /// Loopback port (host byte order) of this sandbox's resolver; 0: none, and DNS is
    /// ordinary traffic. Non-zero: every TCP and UDP connect/send to port 53, to any address,
    /// is redirected there.
    pub dns_port: u32,
    /// Loopback port (host byte order) of this sandbox's transparent proxy; 0: the policy
    /// has no domain rules. Non-zero: TCP to ports 80/443 that no CIDR allow rule covers is
    /// redirected there, and addresses in `LEARNED_*` are reachable on any TCP port.
    pub proxy_port: u32,
    /// Further policies that must also allow a destination, checked after this one: the
    /// sandbox's policy when this entry is an exec narrowed below it (its ceiling), and the
    /// host floor. `policy_id` 0 marks an unused slot (ids are never 0).
    pub outer: [Layer; MAX_OUTER_LAYERS],
}

/// Outer policies a sandbox entry can carry: a ceiling and the host floor.
pub const MAX_OUTER_LAYERS: usize = 2;

/// One policy's part of a decision: where its rules are and how they combine.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Layer {
    pub policy_id: u32,
    /// A [`DefaultVerdict`] as `u32`.
    pub default_verdict: u32,
    /// A [`Precedence`] as `u32`.
    pub precedence: u32,
    /// As [`SandboxEntry::guard_loopback`].
    pub guard_loopback: u32,
}

impl Layer {
    /// Whether the allow trie cannot change what this layer contributes as an outer layer
    /// (an `open`, deny-wins layer such as the host floor: only its denials count, and
    /// only deny rules make them): the kernel then skips that lookup.
    #[inline(always)]
    pub const fn deny_only(&self) -> bool {
        self.default_verdict == DefaultVerdict::Allow as u32
            && self.precedence == Precedence::DenyWins as u32
            && self.guard_loopback == 0
    }
}

impl SandboxEntry {
    /// The entry's own policy as a layer.
    #[inline(always)]
    pub const fn own(&self) -> Layer {
        Layer {
            policy_id: self.policy_id,
            default_verdict: self.default_verdict,
            precedence: self.precedence,
            guard_loopback: self.guard_loopback,
        }
    }
}

/// The verdict of a layered entry, given the verdict so far and the next layer's. Every layer
/// must allow: the first denial stands. A `DefaultDeny` so far (which a learned address may
/// still turn into a pass) gives way to an outer layer's explicit denial, so that an address
/// a ceiling or the floor denies by rule is never reachable through a learned name.
#[inline(always)]
pub fn combine(so_far: Verdict, outer: Verdict) -> Verdict {
    if outer.allow {
        return so_far;
    }
    if so_far.allow
        || (matches!(so_far.reason, Reason::DefaultDeny)
            && !matches!(outer.reason, Reason::DefaultDeny))
    {
        return outer;
    }
    so_far
}

/// A denied verdict the kernel reports on the `EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerdictEvent {
    /// `CLOCK_BOOTTIME` nanoseconds.
    pub boot_ns: u64,
    pub cgroup_id: u64,
    /// The peer, IPv6 or IPv4-mapped, network order.
    pub peer: [u8; 16],
    /// Destination port (host order) for connects and sends; 0 for packets.
    pub port: u16,
    /// An [`EventKind`] as `u16`.
    pub kind: u16,
    /// A [`Reason`] as `u32`.
    pub reason: u32,
}

/// Where a denial happened.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// `connect()` refused with EPERM.
    Connect = 1,
    /// `sendto()`/`sendmsg()` refused with EPERM.
    Send = 2,
    /// An outgoing packet dropped.
    Egress = 3,
    /// An incoming packet dropped.
    Ingress = 4,
}

/// Per-CPU state of the event rate limit (`EVENT_BUDGET`): events sent in the current
/// one-second window, and events suppressed since load (a flood costs the host a counter
/// increment, not a ring-buffer record).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventBudget {
    pub window_start_ns: u64,
    pub sent_in_window: u64,
    pub suppressed: u64,
}

/// Events each CPU may send per second; past it they are counted in
/// [`EventBudget::suppressed`] only.
pub const EVENTS_PER_CPU_PER_SECOND: u64 = 1000;
/// Size of the `EVENTS` ring buffer (a power of two, a multiple of the page size).
pub const EVENTS_RING_BYTES: u32 = 256 * 1024;

/// Whether an event may be sent now, updating the budget: a fixed one-second window.
#[inline(always)]
pub fn spend_event_budget(budget: &mut EventBudget, now_ns: u64) -> bool {
    if now_ns.wrapping_sub(budget.window_start_ns) >= 1_000_000_000 {
        budget.window_start_ns = now_ns;
        budget.sent_in_window = 0;
    }
    if budget.sent_in_window < EVENTS_PER_CPU_PER_SECOND {
        budget.sent_in_window += 1;
        true
    } else {
        budget.suppressed += 1;
        false
    }
}

/// Why a socket is in `FLOWS`: the packet programs let its traffic through although the
/// peer address alone would be denied (the peer is the agent on loopback, or a learned one).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowKind {
    /// Redirected to the sandbox's resolver.
    Dns = 1,
    /// Redirected to the sandbox's transparent proxy.
    Proxy = 2,
    /// Connected to an address the resolver handed out for an allowed name.
    Learned = 3,
    /// Connected to the sandbox's proxy port on loopback itself: the explicit HTTP CONNECT /
    /// SOCKS5 proxy (`HTTP_PROXY`, `ALL_PROXY`).
    Explicit = 4,
    /// Connected to one of its own sandbox's listeners (steered to loopback, see
    /// `LISTENING`).
    OwnListener = 5,
    /// Accepted by one of the sandbox's listeners (only the ingress can open those): its
    /// loopback peer passes, also after the listener closed.
    Accepted = 6,
}

/// Value of `FLOWS`: why a socket passes and, for a learned address, the one peer it may
/// exchange packets with (a source-route option must not turn the mark into a way out).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowMark {
    /// A [`FlowKind`] as `u32`.
    pub kind: u32,
    /// [`FlowKind::Learned`]: the policy under which the address was learned, so that a
    /// policy change can find the connections it must cut. Zero otherwise.
    pub policy_id: u32,
    /// [`FlowKind::Learned`]: the peer, IPv6 or IPv4-mapped, network order. Zero otherwise
    /// (the other kinds pass only with loopback peers, the agent).
    pub peer: [u8; 16],
    /// The sandbox whose quota (`MAX_FLOWS_PER_SANDBOX`) the entry counts against; 0 for
    /// accepted connections, which only the agent's ingress opens.
    pub cgroup_id: u64,
}

/// The destination a sandboxed socket asked for before it was redirected, keyed by socket
/// cookie in `ORIG_DST` and, for proxied TCP, copied to `PROXY_CONNS` by local port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrigDst {
    /// IPv6 address, or IPv4-mapped (`::ffff:a.b.c.d`) for IPv4; network order.
    pub addr: [u8; 16],
    /// Destination port, host byte order.
    pub port: u16,
    /// 4 when the redirect went to 127.0.0.1 (the connection is IPv4 on the wire, also for an
    /// IPv6 socket with a mapped address), 6 when it went to `::1`.
    pub redirect_family: u16,
    /// A [`FlowKind`] as `u32`.
    pub kind: u32,
    /// The agent port it was redirected to, host byte order (low 16 bits).
    pub redirect_port: u32,
    /// Explicit padding, always zero.
    pub pad: u32,
    /// The sandbox's cgroup id.
    pub cgroup_id: u64,
}

/// Key of `PROXY_CONNS`: a redirected TCP connection as the proxy sees it on accept.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProxyKey {
    /// The client's local port = the peer port of the accepted socket (host byte order).
    pub client_port: u16,
    /// The proxy's port = the local port of the accepted socket (host byte order).
    pub proxy_port: u16,
    /// 4 or 6: the family of the accepted socket.
    pub family: u32,
}

/// Key of `LEARNED_V4`: an address a sandbox's resolver handed out, under its policy id.
/// The value is the expiry in `CLOCK_BOOTTIME` nanoseconds.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LearnedV4 {
    pub policy_id: u32,
    /// Network order.
    pub addr: [u8; 4],
}

/// Key of `LEARNED_V6`, as [`LearnedV4`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LearnedV6 {
    pub policy_id: u32,
    /// Network order.
    pub addr: [u8; 16],
}

/// Traffic counters per sandbox, in a per-CPU hash keyed by cgroup id; user space sums CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub allowed_packets: u64,
    pub allowed_bytes: u64,
    pub denied_packets: u64,
    pub denied_bytes: u64,
    /// `connect()` calls refused (TCP, connected UDP) with EPERM.
    pub denied_connects: u64,
    /// Unconnected `sendto()`/`sendmsg()` calls refused with EPERM.
    pub denied_sends: u64,
    /// DNS connects and sends steered to the sandbox's resolver.
    pub dns_redirects: u64,
    /// TCP connects steered to the sandbox's transparent proxy.
    pub proxy_redirects: u64,
    /// TCP connects allowed because the resolver handed out the address for an allowed name.
    pub learned_connects: u64,
}

/// Why a verdict was reached. Defined once here; the kernel, the agent's reports and the
/// tests use the same numbers.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    AllowRule = 1,
    DenyRule = 2,
    /// No rule matched and the mode (`open`) allows by default.
    DefaultAllow = 3,
    /// No rule matched and the mode (`blocked`, `allowlist`) denies by default.
    DefaultDeny = 4,
    /// Loopback or unspecified destination, and no allow rule names loopback.
    LoopbackNotNamed = 5,
    /// `most-specific` with an allow and a deny rule of the same length.
    Tie = 6,
    /// The socket's cgroup is below the sandbox root but has no sandbox entry.
    UnknownSandbox = 7,
    /// The packet could not be read.
    Malformed = 8,
    /// The socket is one the agent let through (redirected to it, or to a learned address).
    AgentFlow = 9,
    /// A TCP connect to an address the resolver handed out for an allowed name.
    LearnedAddress = 10,
    /// An inbound TCP connection that did not come from the agent's ingress.
    Inbound = 11,
    /// Traffic of a connection from the agent's ingress (or the sandbox's own clients) to a
    /// listener of the sandbox.
    Ingress = 12,
    /// The sandbox holds its quota of a shared kernel map (`MAX_FLOWS_PER_SANDBOX`).
    Quota = 13,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub allow: bool,
    pub reason: Reason,
}

impl Verdict {
    pub const fn allow(reason: Reason) -> Self {
        Self {
            allow: true,
            reason,
        }
    }
    pub const fn deny(reason: Reason) -> Self {
        Self {
            allow: false,
            reason,
        }
    }
}

/// An allow rule must be at least this long to open an IPv4 loopback or unspecified
/// destination when `guard_loopback` is set: `127.0.0.0/8` or longer names loopback, while
/// `0.0.0.0/0` (`@all`) does not.
pub const LOOPBACK_V4_MIN_PREFIX: u32 = 8;
/// The same for IPv6: only `::1/128` (or `::/128`) itself names loopback.
pub const LOOPBACK_V6_MIN_PREFIX: u32 = 128;

/// [`decide`]'s `loopback_min` for an IPv4 destination of a sandbox.
#[inline(always)]
pub const fn loopback_min_v4(entry: &Layer, addr: [u8; 4]) -> u32 {
    if entry.guard_loopback != 0 && is_loopback_v4(addr) {
        LOOPBACK_V4_MIN_PREFIX
    } else {
        0
    }
}

/// [`decide`]'s `loopback_min` for an IPv6 destination of a sandbox.
#[inline(always)]
pub const fn loopback_min_v6(entry: &Layer, addr: &[u8; 16]) -> u32 {
    if entry.guard_loopback != 0 && is_loopback_v6(addr) {
        LOOPBACK_V6_MIN_PREFIX
    } else {
        0
    }
}

/// `127.0.0.0/8` and `0.0.0.0/8`: connecting to 0.0.0.0 reaches the local host on Linux.
#[inline(always)]
pub const fn is_loopback_v4(addr: [u8; 4]) -> bool {
    addr[0] == 127 || addr[0] == 0
}

/// `::1` and `::` (which also reaches the local host).
#[inline(always)]
pub const fn is_loopback_v6(addr: &[u8; 16]) -> bool {
    let mut i = 0;
    while i < 15 {
        if addr[i] != 0 {
            return false;
        }
        i += 1;
    }
    addr[15] <= 1
}

/// If `addr` is IPv4-mapped (`::ffff:a.b.c.d`), the IPv4 address: such destinations are
/// decided by the IPv4 rules, since the packets on the wire are IPv4.
#[inline(always)]
pub const fn v4_mapped(addr: &[u8; 16]) -> Option<[u8; 4]> {
    let mut i = 0;
    while i < 10 {
        if addr[i] != 0 {
            return None;
        }
        i += 1;
    }
    if addr[10] == 0xff && addr[11] == 0xff {
        Some([addr[12], addr[13], addr[14], addr[15]])
    } else {
        None
    }
}

/// The verdict for one destination, given the longest matching allow and deny rules.
///
/// `allow_len`/`deny_len` are the address prefix lengths of the longest matching allow and
/// deny rules of the sandbox's policy (one LPM lookup each), `loopback_min` is non-zero when
/// the address is loopback and the sandbox guards loopback. The order, as enforced:
///
/// 1. An allow rule shorter than `loopback_min` does not count for a loopback address.
/// 2. No rule matches: the mode's default.
/// 3. Only one kind matches: that kind.
/// 4. Both match: `deny-wins` denies, `allow-wins` allows, `most-specific` takes the longer
///    prefix and denies on a tie.
#[inline(always)]
pub fn decide(
    entry: &Layer,
    allow_len: Option<u32>,
    deny_len: Option<u32>,
    loopback_min: u32,
) -> Verdict {
    let allow_len = match allow_len {
        Some(len) if len >= loopback_min => Some(len),
        _ => None,
    };
    match (allow_len, deny_len) {
        (None, None) => {
            if loopback_min != 0 {
                Verdict::deny(Reason::LoopbackNotNamed)
            } else if entry.default_verdict == DefaultVerdict::Allow as u32 {
                Verdict::allow(Reason::DefaultAllow)
            } else {
                Verdict::deny(Reason::DefaultDeny)
            }
        }
        (Some(_), None) => Verdict::allow(Reason::AllowRule),
        (None, Some(_)) => Verdict::deny(Reason::DenyRule),
        (Some(allow), Some(deny)) => {
            if entry.precedence == Precedence::AllowWins as u32 {
                Verdict::allow(Reason::AllowRule)
            } else if entry.precedence == Precedence::MostSpecific as u32 {
                match allow.cmp(&deny) {
                    core::cmp::Ordering::Greater => Verdict::allow(Reason::AllowRule),
                    core::cmp::Ordering::Less => Verdict::deny(Reason::DenyRule),
                    core::cmp::Ordering::Equal => Verdict::deny(Reason::Tie),
                }
            } else {
                // deny-wins, and any precedence value this build does not know: fail closed.
                Verdict::deny(Reason::DenyRule)
            }
        }
    }
}

/// What kind of socket a `connect()`/`sendmsg()` hook runs for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketKind {
    /// `connect()` on a TCP socket.
    TcpConnect,
    /// UDP: `connect()` or `sendmsg()`.
    Udp,
    /// Anything else (ICMP ping sockets...): never redirected, never a learned address.
    Other,
}

/// What a `connect()`/`sendmsg()` hook does with a destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SockAddrAction {
    Pass,
    /// EPERM.
    Deny,
    /// Pass, and mark the socket in `FLOWS` (a learned address).
    PassLearned,
    /// Rewrite the destination to the agent's loopback `port` and mark the socket.
    Redirect {
        port: u32,
        kind: FlowKind,
    },
}

/// The decision of the `connect4|6` / `sendmsg4|6` programs for one destination, given the
/// address verdict of [`decide`]. In this order:
///
/// 1. With a resolver (`dns_port`), DNS (port 53, TCP or UDP, any address) goes to it.
/// 2. With domain rules (`proxy_port`), a TCP connect to the proxy's own port on loopback is
///    the explicit proxy (HTTP CONNECT, SOCKS5): it passes, marked, so that the proxy knows
///    the sandbox. Other loopback ports stay closed unless an address rule opens them.
/// 3. With domain rules, a TCP connect to port 80 or 443 goes to the proxy
///    unless a CIDR allow rule decided it (the mode's default allow, in `open`, still goes
///    through the proxy so that denied names are refused) or the address is loopback.
/// 4. Otherwise the address verdict stands, except that a TCP connect that no rule matched
///    (`DefaultDeny`) passes when `learned()` says the sandbox's resolver handed the address
///    out for an allowed name. An explicit deny rule beats a learned address.
///
/// `learned` is only called when it matters: it costs a map lookup in the kernel.
#[inline(always)]
pub fn sock_addr_action(
    entry: &SandboxEntry,
    verdict: Verdict,
    port: u16,
    socket: SocketKind,
    loopback: bool,
    learned: impl FnOnce() -> bool,
) -> SockAddrAction {
    let tcp_connect = matches!(socket, SocketKind::TcpConnect);
    if entry.dns_port != 0 && port == DNS_PORT && !matches!(socket, SocketKind::Other) {
        return SockAddrAction::Redirect {
            port: entry.dns_port,
            kind: FlowKind::Dns,
        };
    }
    let domains = entry.proxy_port != 0 && tcp_connect;
    if domains && loopback && u32::from(port) == entry.proxy_port {
        return SockAddrAction::Redirect {
            port: entry.proxy_port,
            kind: FlowKind::Explicit,
        };
    }
    if domains
        && (port == HTTP_PORT || port == HTTPS_PORT)
        && !loopback
        && !matches!(verdict.reason, Reason::AllowRule)
    {
        return SockAddrAction::Redirect {
            port: entry.proxy_port,
            kind: FlowKind::Proxy,
        };
    }
    // QUIC to a name: with domain rules, UDP to 443 needs an address allow rule, also in
    // `open` mode, so that HTTP/3 cannot reach a denied name past the proxy.
    if entry.proxy_port != 0
        && port == HTTPS_PORT
        && matches!(socket, SocketKind::Udp)
        && !matches!(verdict.reason, Reason::AllowRule)
    {
        return SockAddrAction::Deny;
    }
    if verdict.allow {
        return SockAddrAction::Pass;
    }
    if domains && matches!(verdict.reason, Reason::DefaultDeny) && learned() {
        return SockAddrAction::PassLearned;
    }
    SockAddrAction::Deny
}

/// Builds the LPM key data for an IPv4 address under a policy id.
#[inline(always)]
pub const fn lpm_data_v4(policy_id: u32, addr: [u8; 4]) -> LpmDataV4 {
    let id = policy_id.to_be_bytes();
    [
        id[0], id[1], id[2], id[3], addr[0], addr[1], addr[2], addr[3],
    ]
}

/// Builds the LPM key data for an IPv6 address under a policy id.
#[inline(always)]
pub const fn lpm_data_v6(policy_id: u32, addr: &[u8; 16]) -> LpmDataV6 {
    let id = policy_id.to_be_bytes();
    let mut out = [0u8; 20];
    out[0] = id[0];
    out[1] = id[1];
    out[2] = id[2];
    out[3] = id[3];
    let mut i = 0;
    while i < 16 {
        out[4 + i] = addr[i];
        i += 1;
    }
    out
}

const _: () = assert!(core::mem::size_of::<SandboxEntry>() == 56);
const _: () = assert!(core::mem::size_of::<VerdictEvent>() == 40);
const _: () = assert!(core::mem::size_of::<EventBudget>() == 24);
const _: () = assert!(core::mem::size_of::<Counters>() == 72);
const _: () = assert!(core::mem::size_of::<OrigDst>() == 40);
const _: () = assert!(core::mem::size_of::<ProxyKey>() == 8);
const _: () = assert!(core::mem::size_of::<FlowMark>() == 32);
const _: () = assert!(core::mem::size_of::<LearnedV4>() == 8);
const _: () = assert!(core::mem::size_of::<LearnedV6>() == 20);
const _: () = assert!(core::mem::size_of::<RuleValue>() == 4);
const _: () = assert!(core::mem::size_of::<ListenKey>() == 16);
const _: () = assert!(core::mem::size_of::<ServerKey>() == 16);
const _: () = assert!(core::mem::size_of::<ServerPort>() == 32);

#[cfg(feature = "user")]
mod user {
    use super::{
        Counters, EventBudget, FlowMark, LearnedV4, LearnedV6, ListenKey, OrigDst, ProxyKey,
        RuleValue, SandboxEntry, ServerKey, ServerPort, VerdictEvent,
    };

    // SAFETY: plain `#[repr(C)]` structs of integers without padding.
    unsafe impl aya::Pod for EventBudget {}
    // SAFETY: as above.
    unsafe impl aya::Pod for VerdictEvent {}

    // SAFETY: plain `#[repr(C)]` structs of integers without padding.
    unsafe impl aya::Pod for SandboxEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Counters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for RuleValue {}
    // SAFETY: as above; `pad` makes the padding explicit.
    unsafe impl aya::Pod for OrigDst {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ProxyKey {}
    // SAFETY: as above; `pad` makes the padding explicit.
    unsafe impl aya::Pod for FlowMark {}
    // SAFETY: as above.
    unsafe impl aya::Pod for LearnedV4 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for LearnedV6 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ListenKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ServerKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ServerPort {}
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_a_bare_syn_opens_a_connection() {
        use super::opens_connection;
        assert!(opens_connection(0x02));
        // SYN+ACK answers our own connect; ACK, RST, FIN do not open anything.
        assert!(!opens_connection(0x12));
        assert!(!opens_connection(0x10));
        assert!(!opens_connection(0x04));
        assert!(!opens_connection(0x01));
        // SYN with ECN bits is still a SYN.
        assert!(opens_connection(0xc2));
    }

    use super::*;

    fn entry(default: DefaultVerdict, precedence: Precedence) -> SandboxEntry {
        SandboxEntry {
            policy_id: 7,
            default_verdict: default as u32,
            precedence: precedence as u32,
            guard_loopback: 1,
            dns_port: 0,
            proxy_port: 0,
            outer: [Layer::default(); MAX_OUTER_LAYERS],
        }
    }

    #[test]
    fn layers_combine_to_the_first_denial() {
        let allow = Verdict::allow(Reason::AllowRule);
        let default_deny = Verdict::deny(Reason::DefaultDeny);
        let rule_deny = Verdict::deny(Reason::DenyRule);
        // Every layer must allow; an allowing outer layer keeps the inner reason (the proxy
        // redirect depends on whether an allow rule decided).
        assert_eq!(combine(allow, Verdict::allow(Reason::DefaultAllow)), allow);
        assert_eq!(combine(allow, default_deny), default_deny);
        assert_eq!(combine(allow, rule_deny), rule_deny);
        // A default deny (still open to learned addresses) yields to an explicit outer deny,
        // which learned addresses cannot pass; other denials stand.
        assert_eq!(combine(default_deny, rule_deny), rule_deny);
        assert_eq!(combine(default_deny, default_deny), default_deny);
        assert_eq!(combine(rule_deny, default_deny), rule_deny);
        let tie = Verdict::deny(Reason::Tie);
        assert_eq!(combine(tie, rule_deny), tie);
    }

    #[test]
    fn event_budget_limits_each_window() {
        let mut b = EventBudget::default();
        let start = 5_000_000_000;
        let sent = (0..EVENTS_PER_CPU_PER_SECOND + 10)
            .filter(|_| spend_event_budget(&mut b, start))
            .count();
        assert_eq!(sent as u64, EVENTS_PER_CPU_PER_SECOND);
        assert_eq!(b.suppressed, 10);
        assert!(spend_event_budget(&mut b, start + 1_000_000_000));
        assert_eq!(b.sent_in_window, 1);
    }

    #[test]
    fn floor_layers_skip_the_allow_lookup() {
        let floor = Layer {
            policy_id: 3,
            default_verdict: DefaultVerdict::Allow as u32,
            precedence: Precedence::DenyWins as u32,
            guard_loopback: 0,
        };
        assert!(floor.deny_only());
        // The allow length cannot change what a deny-only outer layer contributes.
        let so_far = Verdict::allow(Reason::AllowRule);
        for deny in [None, Some(0), Some(32)] {
            assert_eq!(
                combine(so_far, decide(&floor, None, deny, 0)),
                combine(so_far, decide(&floor, Some(16), deny, 0))
            );
        }
        assert!(
            !entry(DefaultVerdict::Deny, Precedence::DenyWins)
                .own()
                .deny_only()
        );
    }

    #[test]
    fn no_match_takes_the_default() {
        let e = entry(DefaultVerdict::Deny, Precedence::DenyWins);
        assert_eq!(
            decide(&e.own(), None, None, 0),
            Verdict::deny(Reason::DefaultDeny)
        );
        let e = entry(DefaultVerdict::Allow, Precedence::DenyWins);
        assert_eq!(
            decide(&e.own(), None, None, 0),
            Verdict::allow(Reason::DefaultAllow)
        );
    }

    #[test]
    fn one_kind_matching_decides() {
        for p in [
            Precedence::DenyWins,
            Precedence::AllowWins,
            Precedence::MostSpecific,
        ] {
            let e = entry(DefaultVerdict::Deny, p);
            assert!(decide(&e.own(), Some(8), None, 0).allow);
            assert!(!decide(&e.own(), None, Some(8), 0).allow);
        }
    }

    #[test]
    fn precedence_settles_conflicts() {
        let deny_wins = entry(DefaultVerdict::Deny, Precedence::DenyWins);
        assert!(!decide(&deny_wins.own(), Some(32), Some(8), 0).allow);
        let allow_wins = entry(DefaultVerdict::Deny, Precedence::AllowWins);
        assert!(decide(&allow_wins.own(), Some(8), Some(32), 0).allow);
        let specific = entry(DefaultVerdict::Deny, Precedence::MostSpecific);
        assert!(decide(&specific.own(), Some(24), Some(16), 0).allow);
        assert!(!decide(&specific.own(), Some(16), Some(24), 0).allow);
        assert_eq!(
            decide(&specific.own(), Some(16), Some(16), 0),
            Verdict::deny(Reason::Tie)
        );
    }

    #[test]
    fn unknown_precedence_fails_closed() {
        let mut e = entry(DefaultVerdict::Allow, Precedence::AllowWins);
        e.precedence = 99;
        assert!(!decide(&e.own(), Some(32), Some(0), 0).allow);
    }

    #[test]
    fn loopback_needs_a_rule_that_names_it() {
        let e = entry(DefaultVerdict::Allow, Precedence::DenyWins);
        // `@all` (a /0 rule) does not open loopback...
        assert_eq!(
            decide(&e.own(), Some(0), None, LOOPBACK_V4_MIN_PREFIX),
            Verdict::deny(Reason::LoopbackNotNamed)
        );
        // ...127.0.0.0/8 or a longer rule does.
        assert!(decide(&e.own(), Some(8), None, LOOPBACK_V4_MIN_PREFIX).allow);
        assert!(!decide(&e.own(), Some(64), None, LOOPBACK_V6_MIN_PREFIX).allow);
        assert!(decide(&e.own(), Some(128), None, LOOPBACK_V6_MIN_PREFIX).allow);
    }

    #[test]
    fn address_classes() {
        assert!(is_loopback_v4([127, 0, 0, 1]));
        assert!(is_loopback_v4([0, 0, 0, 0]));
        assert!(!is_loopback_v4([128, 0, 0, 1]));
        let mut v6 = [0u8; 16];
        assert!(is_loopback_v6(&v6));
        v6[15] = 1;
        assert!(is_loopback_v6(&v6));
        v6[15] = 2;
        assert!(!is_loopback_v6(&v6));
        let mapped = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 2, 3];
        assert_eq!(v4_mapped(&mapped), Some([10, 1, 2, 3]));
        assert_eq!(v4_mapped(&v6), None);
    }

    fn domain_entry() -> SandboxEntry {
        SandboxEntry {
            dns_port: 5300,
            proxy_port: 5301,
            ..entry(DefaultVerdict::Deny, Precedence::DenyWins)
        }
    }

    #[test]
    fn dns_goes_to_the_resolver_whatever_the_address() {
        let e = domain_entry();
        for (verdict, socket) in [
            (Verdict::deny(Reason::DefaultDeny), SocketKind::Udp),
            (Verdict::allow(Reason::AllowRule), SocketKind::TcpConnect),
            (Verdict::deny(Reason::LoopbackNotNamed), SocketKind::Udp),
        ] {
            assert_eq!(
                sock_addr_action(&e, verdict, 53, socket, false, || true),
                SockAddrAction::Redirect {
                    port: 5300,
                    kind: FlowKind::Dns
                }
            );
        }
        // An ICMP ping socket "connected" to port 53 is not DNS: never redirected or marked.
        let no_rule = Verdict::deny(Reason::DefaultDeny);
        assert_eq!(
            sock_addr_action(&e, no_rule, 53, SocketKind::Other, false, || true),
            SockAddrAction::Deny
        );
        // Without a resolver, port 53 is ordinary traffic.
        let plain = entry(DefaultVerdict::Deny, Precedence::DenyWins);
        assert_eq!(
            sock_addr_action(&plain, no_rule, 53, SocketKind::Udp, false, || true),
            SockAddrAction::Deny
        );
    }

    #[test]
    fn web_ports_go_to_the_proxy_unless_a_cidr_rule_allows() {
        use SocketKind::{TcpConnect, Udp};
        let e = domain_entry();
        let proxy = SockAddrAction::Redirect {
            port: 5301,
            kind: FlowKind::Proxy,
        };
        let act = |v: Verdict, port, socket, loopback| {
            sock_addr_action(&e, v, port, socket, loopback, || true)
        };
        for port in [80, 443] {
            for reason in [Reason::DefaultDeny, Reason::DenyRule, Reason::Tie] {
                assert_eq!(act(Verdict::deny(reason), port, TcpConnect, false), proxy);
            }
            // open mode: the default allow still needs a name decision.
            let default_allow = Verdict::allow(Reason::DefaultAllow);
            assert_eq!(act(default_allow, port, TcpConnect, false), proxy);
            let rule = Verdict::allow(Reason::AllowRule);
            assert_eq!(act(rule, port, TcpConnect, false), SockAddrAction::Pass);
            // Loopback is never proxied; UDP never is.
            let loopback = Verdict::deny(Reason::LoopbackNotNamed);
            assert_eq!(act(loopback, port, TcpConnect, true), SockAddrAction::Deny);
            let no_rule = Verdict::deny(Reason::DefaultDeny);
            assert_eq!(act(no_rule, port, Udp, false), SockAddrAction::Deny);
        }
        // QUIC needs an address rule, also in open mode; other UDP follows the mode.
        let default_allow = Verdict::allow(Reason::DefaultAllow);
        assert_eq!(act(default_allow, 443, Udp, false), SockAddrAction::Deny);
        assert_eq!(act(default_allow, 4433, Udp, false), SockAddrAction::Pass);
        let rule = Verdict::allow(Reason::AllowRule);
        assert_eq!(act(rule, 443, Udp, false), SockAddrAction::Pass);
    }

    #[test]
    fn the_proxy_port_on_loopback_is_the_explicit_proxy() {
        let e = domain_entry();
        let loopback = Verdict::deny(Reason::LoopbackNotNamed);
        assert_eq!(
            sock_addr_action(&e, loopback, 5301, SocketKind::TcpConnect, true, || false),
            SockAddrAction::Redirect {
                port: 5301,
                kind: FlowKind::Explicit
            }
        );
        // Another loopback port, UDP, or a remote address on that port: not the proxy.
        assert_eq!(
            sock_addr_action(&e, loopback, 5302, SocketKind::TcpConnect, true, || false),
            SockAddrAction::Deny
        );
        assert_eq!(
            sock_addr_action(&e, loopback, 5301, SocketKind::Udp, true, || false),
            SockAddrAction::Deny
        );
        assert_eq!(
            sock_addr_action(
                &e,
                Verdict::deny(Reason::DefaultDeny),
                5301,
                SocketKind::TcpConnect,
                false,
                || false
            ),
            SockAddrAction::Deny
        );
    }

    #[test]
    fn learned_addresses_open_other_tcp_ports_only() {
        let e = domain_entry();
        let no_rule = Verdict::deny(Reason::DefaultDeny);
        assert_eq!(
            sock_addr_action(&e, no_rule, 22, SocketKind::TcpConnect, false, || true),
            SockAddrAction::PassLearned
        );
        assert_eq!(
            sock_addr_action(&e, no_rule, 22, SocketKind::TcpConnect, false, || false),
            SockAddrAction::Deny
        );
        // Not UDP, not past an explicit deny rule, not without domain rules.
        assert_eq!(
            sock_addr_action(&e, no_rule, 22, SocketKind::Udp, false, || true),
            SockAddrAction::Deny
        );
        assert_eq!(
            sock_addr_action(
                &e,
                Verdict::deny(Reason::DenyRule),
                22,
                SocketKind::TcpConnect,
                false,
                || { true }
            ),
            SockAddrAction::Deny
        );
        let plain = entry(DefaultVerdict::Deny, Precedence::DenyWins);
        assert_eq!(
            sock_addr_action(&plain, no_rule, 22, SocketKind::TcpConnect, false, || true),
            SockAddrAction::Deny
        );
    }

    #[test]
    fn lpm_keys_put_the_policy_first() {
        assert_eq!(
            lpm_data_v4(0x0102_0304, [10, 0, 0, 1]),
            [1, 2, 3, 4, 10, 0, 0, 1]
        );
        let data = lpm_data_v6(1, &[0xfe; 16]);
        assert_eq!(&data[..4], &[0, 0, 0, 1]);
        assert_eq!(&data[4..], &[0xfe; 16]);
    }
}
