//! The kernel side of sandbox-agent: small and boring on purpose.
//!
//! All programs are attached once, to the parent cgroup of every sandbox. Each looks up the
//! sandbox by the cgroup id of the socket (`cgroup_skb`) or of the calling task (`sock_addr`),
//! then decides with two LPM lookups (longest allow rule, longest deny rule) and
//! `sandbox_common::decide`. There is no loop over rules.
//!
//! - `cgroup_skb` egress/ingress is the wall: every IP packet of a sandboxed socket, raw
//!   sockets and ICMP included, is checked against its peer address and dropped if denied.
//! - `cgroup/connect4|6` and `cgroup/sendmsg4|6` decide the same question before any packet
//!   exists, so that a denied `connect()`/`sendto()` fails at once with EPERM instead of
//!   hanging in SYN retransmits.
//!
//!
//! - With domain rules (`SandboxEntry::proxy_port`/`dns_port` set), `connect*`/`sendmsg*`
//!   steer DNS to the sandbox's resolver and TCP 80/443 to its proxy on loopback, recording
//!   the original destination by socket cookie (`ORIG_DST`); `sock_ops` re-keys proxied
//!   connections by local port (`PROXY_CONNS`) for the proxy, `recvmsg*` makes DNS answers
//!   appear to come from the server the client asked, and the packet programs let the
//!   sockets so marked (`FLOWS`) through. `sock_release` forgets them.
//!
//! - Ingress: `bind4|6` steer a sandbox's TCP listener on a fixed port to loopback and a
//!   port of the kernel's choosing, `post_bind4|6` record where it went (`LISTENING`,
//!   `SERVER_PORTS`), and `cgroup_skb` ingress drops every SYN, and every packet for a
//!   listening socket, that does not carry `INGRESS_MARK` (only the agent can set it). A
//!   sandbox's connects to its own listeners are steered and marked in `connect4|6`. See
//!   DESIGN-NOTES.md.
//!
//! Link-layer (`AF_PACKET`) sockets would bypass the IP hooks; they need CAP_NET_RAW and are
//! refused by the launcher's seccomp filter (`launch.rs`), since cgroup hooks do not see them.
//!
//! Anything unexpected (a cgroup below the sandbox root that has no entry, a packet that
//! cannot be read) is denied: the failure mode is closed.
#![no_std]
#![no_main]
// `atomic_xadd`: the BPF target has no `AtomicU64::fetch_add`, only the `XADD` instruction.
#![feature(core_intrinsics)]
#![allow(internal_features)]

use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST, BPF_SOCK_OPS_TCP_CONNECT_CB},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_netns_cookie, bpf_get_socket_cookie,
        bpf_ktime_get_boot_ns, bpf_setsockopt, bpf_sk_fullsock, bpf_skb_cgroup_id,
    },
    macros::{cgroup_skb, cgroup_sock, cgroup_sock_addr, map, sock_ops},
    maps::{
        Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf, lpm_trie::Key,
    },
    programs::{SkBuffContext, SockAddrContext, SockContext, SockOpsContext},
};
use sandbox_common::{
    Counters, DEFAULT_MAX_PREFIXES, EVENTS_RING_BYTES, EventBudget, EventKind, FlowKind, FlowMark,
    INGRESS_MARK, Layer, LearnedV4, LearnedV6, ListenKey, LpmDataV4, LpmDataV6, MAX_FLOWS,
    MAX_FLOWS_PER_SANDBOX, MAX_LEARNED, MAX_LISTENING, MAX_LISTENING_PER_SANDBOX, MAX_PROXY_CONNS,
    MAX_SANDBOXES, OrigDst, POLICY_ID_BITS, ProxyKey, Reason, RuleValue, SandboxEntry, ServerKey,
    ServerPort, SockAddrAction, SocketKind, Verdict, VerdictEvent, combine, decide, is_loopback_v4,
    is_loopback_v6, loopback_min_v4, loopback_min_v6, lpm_data_v4, lpm_data_v6, opens_connection,
    sock_addr_action, spend_event_budget, v4_mapped,
};

#[map]
static SANDBOXES: HashMap<u64, SandboxEntry> = HashMap::with_max_entries(MAX_SANDBOXES, 0);
#[map]
static ALLOW_V4: LpmTrie<LpmDataV4, RuleValue> = LpmTrie::with_max_entries(DEFAULT_MAX_PREFIXES, 0);
#[map]
static DENY_V4: LpmTrie<LpmDataV4, RuleValue> = LpmTrie::with_max_entries(DEFAULT_MAX_PREFIXES, 0);
#[map]
static ALLOW_V6: LpmTrie<LpmDataV6, RuleValue> = LpmTrie::with_max_entries(DEFAULT_MAX_PREFIXES, 0);
#[map]
static DENY_V6: LpmTrie<LpmDataV6, RuleValue> = LpmTrie::with_max_entries(DEFAULT_MAX_PREFIXES, 0);
#[map]
static COUNTERS: PerCpuHashMap<u64, Counters> = PerCpuHashMap::with_max_entries(MAX_SANDBOXES, 0);
/// Policy id → owning cgroup id. Only user space uses it: inserting with `BPF_NOEXIST`
/// hands out policy ids without a race between agents.
#[map]
static POLICY_IDS: HashMap<u32, u64> = HashMap::with_max_entries(MAX_SANDBOXES * 2, 0);
/// Install record, user space only: `[object hash, id of the cgroup the programs are
/// attached to]`. Pinned last, so its presence means the install completed.
#[map]
static META: Array<u64> = Array::with_max_entries(2, 0);

/// Sockets whose traffic passes although their peer address alone would be denied (see
/// `FlowKind`), by socket cookie. Removed by `sandbox_sock_release`.
#[map]
static FLOWS: HashMap<u64, FlowMark> = HashMap::with_max_entries(MAX_FLOWS, BPF_F_NO_PREALLOC);
/// Original destination of redirected sockets, by socket cookie. Removed on release.
#[map]
static ORIG_DST: HashMap<u64, OrigDst> = HashMap::with_max_entries(MAX_FLOWS, BPF_F_NO_PREALLOC);
/// Proxied connections by (client port, proxy port, family), for the proxy to read on
/// accept (it deletes what it reads; LRU so that connections never accepted age out).
#[map]
static PROXY_CONNS: LruHashMap<ProxyKey, OrigDst> =
    LruHashMap::with_max_entries(MAX_PROXY_CONNS, 0);
/// Addresses a sandbox's resolver handed out for allowed names → expiry (boot-time ns).
#[map]
static LEARNED_V4: HashMap<LearnedV4, u64> =
    HashMap::with_max_entries(MAX_LEARNED, BPF_F_NO_PREALLOC);
#[map]
static LEARNED_V6: HashMap<LearnedV6, u64> =
    HashMap::with_max_entries(MAX_LEARNED, BPF_F_NO_PREALLOC);

/// The port a TCP socket asked for in `bind4|6`, by socket cookie, until `post_bind4|6` sees
/// the port it got instead.
#[map]
static BIND_REQUESTS: LruHashMap<u64, u32> = LruHashMap::with_max_entries(MAX_LISTENING, 0);
/// Ports sandboxes listen on (as asked) → where they really are, for the agent's ingress and
/// for the sandbox's own connects. Removed when the socket is released.
#[map]
static LISTENING: HashMap<ListenKey, ServerPort> =
    HashMap::with_max_entries(MAX_LISTENING, BPF_F_NO_PREALLOC);
/// The same by the port the kernel assigned, for the packet programs.
#[map]
static SERVER_PORTS: HashMap<ServerKey, ServerPort> =
    HashMap::with_max_entries(MAX_LISTENING, BPF_F_NO_PREALLOC);
/// The same by socket cookie, for `sock_release` (which cannot read a socket's port).
#[map]
static LISTENER_SOCKETS: HashMap<u64, ServerKey> =
    HashMap::with_max_entries(MAX_LISTENING, BPF_F_NO_PREALLOC);
/// Records in `LISTENING` per sandbox, capped at `MAX_LISTENING_PER_SANDBOX`.
#[map]
static LISTEN_COUNTS: HashMap<u64, u64> =
    HashMap::with_max_entries(MAX_SANDBOXES, BPF_F_NO_PREALLOC);

/// Entries in `FLOWS` per sandbox, capped at `MAX_FLOWS_PER_SANDBOX`.
#[map]
static FLOW_COUNTS: HashMap<u64, u64> = HashMap::with_max_entries(MAX_SANDBOXES, BPF_F_NO_PREALLOC);

/// Denied verdicts for the agent's event stream, rate-limited per CPU (`EVENT_BUDGET`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);
#[map]
static EVENT_BUDGET: PerCpuArray<EventBudget> = PerCpuArray::with_max_entries(1, 0);

const PASS: i32 = 1;
/// No matching rule (prefix lengths are at most 128).
const NO_RULE: u32 = u32::MAX;

/// The value through the stack, so that the compiler cannot fold the sentinel back into an
/// `Option` whose payload register is unset on one path (the verifier refuses to read it).
#[inline(always)]
fn defined(v: u32) -> u32 {
    // SAFETY: reading a valid local.
    unsafe { core::ptr::read_volatile(&raw const v) }
}
const DROP: i32 = 0;

const IPV4_SRC: usize = 12;
const IPV4_DST: usize = 16;
const IPV6_SRC: usize = 8;
const IPV6_DST: usize = 24;

#[derive(Clone, Copy)]
enum Direction {
    Egress,
    Ingress,
}

#[derive(Clone, Copy)]
enum Call {
    Connect,
    Send,
}

fn sandbox(cgroup_id: u64) -> Option<SandboxEntry> {
    // SAFETY: the value is copied out at once; entries are replaced whole by user space.
    unsafe { SANDBOXES.get(cgroup_id) }.copied()
}

fn decide_v4(cgroup_id: u64, addr: [u8; 4]) -> Verdict {
    match sandbox(cgroup_id) {
        Some(entry) => decide_v4_for(&entry, addr),
        None => Verdict::deny(Reason::UnknownSandbox),
    }
}

fn decide_v4_for(entry: &SandboxEntry, addr: [u8; 4]) -> Verdict {
    let mut verdict = layer_v4(&entry.own(), addr, false);
    // Outer layers (a ceiling, the host floor): every one must allow too.
    for layer in &entry.outer {
        if layer.policy_id != 0 {
            verdict = combine(verdict, layer_v4(layer, addr, layer.deny_only()));
        }
    }
    verdict
}

fn layer_v4(layer: &Layer, addr: [u8; 4], deny_only: bool) -> Verdict {
    let key = Key::new(POLICY_ID_BITS + 32, lpm_data_v4(layer.policy_id, addr));
    let allow = if deny_only {
        NO_RULE
    } else {
        ALLOW_V4.get(&key).map_or(NO_RULE, |v| v.prefix_len)
    };
    let allow = defined(allow);
    let allow = (allow != NO_RULE).then_some(allow);
    let deny = DENY_V4.get(&key).map(|v| v.prefix_len);
    decide(layer, allow, deny, loopback_min_v4(layer, addr))
}

fn decide_v6(cgroup_id: u64, addr: &[u8; 16]) -> Verdict {
    match sandbox(cgroup_id) {
        Some(entry) => decide_v6_for(&entry, addr),
        None => Verdict::deny(Reason::UnknownSandbox),
    }
}

/// IPv6, with IPv4-mapped addresses decided by the IPv4 rules.
fn decide_v6_for(entry: &SandboxEntry, addr: &[u8; 16]) -> Verdict {
    if let Some(v4) = v4_mapped(addr) {
        return decide_v4_for(entry, v4);
    }
    let mut verdict = layer_v6(&entry.own(), addr, false);
    for layer in &entry.outer {
        if layer.policy_id != 0 {
            verdict = combine(verdict, layer_v6(layer, addr, layer.deny_only()));
        }
    }
    verdict
}

fn layer_v6(layer: &Layer, addr: &[u8; 16], deny_only: bool) -> Verdict {
    let key = Key::new(POLICY_ID_BITS + 128, lpm_data_v6(layer.policy_id, addr));
    let allow = if deny_only {
        NO_RULE
    } else {
        ALLOW_V6.get(&key).map_or(NO_RULE, |v| v.prefix_len)
    };
    let allow = defined(allow);
    let allow = (allow != NO_RULE).then_some(allow);
    let deny = DENY_V6.get(&key).map(|v| v.prefix_len);
    decide(layer, allow, deny, loopback_min_v6(layer, addr))
}

/// Reports a denial on the ring buffer, within the CPU's budget. Off the allow path, and
/// without formatting: a flood of denials costs a counter increment each.
fn report(cgroup_id: u64, kind: EventKind, peer: [u8; 16], port: u16, reason: Reason) {
    let Some(budget) = EVENT_BUDGET.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a helper without preconditions.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    // SAFETY: this CPU's value; no other writer while the program runs.
    if !spend_event_budget(unsafe { &mut *budget }, now) {
        return;
    }
    let event = VerdictEvent {
        boot_ns: now,
        cgroup_id,
        peer,
        port,
        kind: kind as u16,
        reason: reason as u32,
    };
    // A full ring drops the event: the agent is slow or gone, and the host comes first.
    let _ = EVENTS.output::<VerdictEvent>(&event, 0);
}

fn count_packet(cgroup_id: u64, allowed: bool, bytes: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(cgroup_id) {
        // SAFETY: per-CPU value of this CPU; no other writer while the program runs.
        let c = unsafe { &mut *c };
        if allowed {
            c.allowed_packets += 1;
            c.allowed_bytes += u64::from(bytes);
        } else {
            c.denied_packets += 1;
            c.denied_bytes += u64::from(bytes);
        }
    }
}

#[derive(Clone, Copy)]
enum Event {
    DeniedConnect,
    DeniedSend,
    DnsRedirect,
    ProxyRedirect,
    LearnedConnect,
}

fn count(cgroup_id: u64, event: Event) {
    if let Some(c) = COUNTERS.get_ptr_mut(cgroup_id) {
        // SAFETY: as in `count_packet`.
        let c = unsafe { &mut *c };
        match event {
            Event::DeniedConnect => c.denied_connects += 1,
            Event::DeniedSend => c.denied_sends += 1,
            Event::DnsRedirect => c.dns_redirects += 1,
            Event::ProxyRedirect => c.proxy_redirects += 1,
            Event::LearnedConnect => c.learned_connects += 1,
        }
    }
}

/// Whether the agent let this socket through to this peer. A socket redirected to the agent
/// (DNS, proxy) passes only with a loopback peer, the agent: an unconnected UDP socket marked
/// by a DNS redirect must not receive from, or reach, anyone else through its mark. A
/// connection to a learned address (TCP, connected) passes with its peer.
fn agent_flow_allows(cookie: u64, peer: &[u8; 16], peer_loopback: bool) -> bool {
    // SAFETY: the value is copied out at once.
    match unsafe { FLOWS.get(cookie) } {
        Some(mark) if mark.kind == FlowKind::Learned as u32 => mark.peer == *peer,
        Some(_) => peer_loopback,
        None => false,
    }
}

/// Offset of the TCP flags byte in the TCP header.
const TCP_FLAGS: usize = 13;

/// Where the TCP header starts, if the packet is TCP and carries its header (not a later
/// IPv4 fragment). IPv6 extension headers are not walked: a SYN behind them is caught by
/// `to_listener` instead. Read only where needed, off the common allow path of egress.
fn tcp_header(ctx: &SkBuffContext, version: u8) -> Result<Option<usize>, i64> {
    match version {
        4 => {
            if ctx.load::<u8>(9)? != IPPROTO_TCP as u8 {
                return Ok(None);
            }
            let fragment = u16::from_be_bytes(ctx.load::<[u8; 2]>(6)?) & 0x1fff;
            if fragment != 0 {
                return Ok(None);
            }
            Ok(Some(usize::from(ctx.load::<u8>(0)? & 0x0f) * 4))
        }
        6 => Ok((ctx.load::<u8>(6)? == IPPROTO_TCP as u8).then_some(40)),
        _ => Ok(None),
    }
}

/// Whether `port` (the packet's source port, network order) is a listener of this sandbox.
fn serves_ingress(cgroup_id: u64, port: [u8; 2], family: u16) -> bool {
    let key = ServerKey {
        cgroup_id,
        port: u16::from_be_bytes(port),
        family,
        pad: 0,
    };
    // SAFETY: only presence is read.
    unsafe { SERVER_PORTS.get(key) }.is_some()
}

/// `BPF_TCP_LISTEN`.
const TCP_LISTEN: u32 = 10;

/// Whether the packet is for a listening socket.
fn to_listener(ctx: &SkBuffContext) -> bool {
    // SAFETY: the skb context is valid; `sk` may be null and is checked by the helper, whose
    // result is checked before it is read.
    unsafe {
        let sk = (*ctx.skb.skb).__bindgen_anon_2.sk;
        if sk.is_null() {
            return false;
        }
        let full = bpf_sk_fullsock(sk);
        !full.is_null() && (*full).state == TCP_LISTEN
    }
}

fn try_skb(ctx: &SkBuffContext, direction: Direction) -> Result<Verdict, i64> {
    // SAFETY: a helper without preconditions; the socket's cgroup, not the current task's,
    // since ingress runs in softirq context.
    let cgroup_id = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    let version = ctx.load::<u8>(0)? >> 4;
    let family = u16::from(version);
    let (mut verdict, peer, peer_loopback) = match version {
        4 => {
            let offset = match direction {
                Direction::Egress => IPV4_DST,
                Direction::Ingress => IPV4_SRC,
            };
            let peer = ctx.load::<[u8; 4]>(offset)?;
            (
                decide_v4(cgroup_id, peer),
                mapped(peer),
                is_loopback_v4(peer),
            )
        }
        6 => {
            let offset = match direction {
                Direction::Egress => IPV6_DST,
                Direction::Ingress => IPV6_SRC,
            };
            let peer = ctx.load::<[u8; 16]>(offset)?;
            (decide_v6(cgroup_id, &peer), peer, is_loopback_v6(&peer))
        }
        _ => (Verdict::deny(Reason::Malformed), [0; 16], false),
    };
    if let Direction::Ingress = direction {
        // Inbound connections come only from the agent's ingress (marked, on loopback): a
        // SYN from anyone else is dropped whatever the policy says of its sender.
        // SAFETY: the skb context pointer is valid for the program's run.
        let mark = unsafe { (*ctx.skb.skb).mark };
        if mark == INGRESS_MARK && peer_loopback {
            verdict = Verdict::allow(Reason::Ingress);
        } else if to_listener(ctx) {
            // Anything for a listening socket (also a SYN behind IPv6 extension headers, or
            // a SYN cookie's ACK): only the ingress opens connections.
            verdict = Verdict::deny(Reason::Inbound);
        } else if let Some(offset) = tcp_header(ctx, version)?
            && opens_connection(ctx.load::<u8>(offset + TCP_FLAGS)?)
        {
            verdict = Verdict::deny(Reason::Inbound);
        }
    }
    // A socket the agent redirected or let through at connect time: its peer is the agent
    // on loopback or a learned address, which the rules alone would deny. Looked up only
    // on the deny path, so ordinary allowed traffic pays nothing for it.
    if !verdict.allow
        && !matches!(
            verdict.reason,
            Reason::Malformed | Reason::UnknownSandbox | Reason::Inbound
        )
    {
        // SAFETY: the skb context pointer is valid for the program's run.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        if agent_flow_allows(cookie, &peer, peer_loopback) {
            verdict = Verdict::allow(Reason::AgentFlow);
        } else if let (Direction::Egress, true) = (direction, peer_loopback)
            && let Some(offset) = tcp_header(ctx, version)?
            && serves_ingress(cgroup_id, ctx.load::<[u8; 2]>(offset)?, family)
        {
            // The answers of a listener to the connections it accepted (which only the
            // ingress could open).
            verdict = Verdict::allow(Reason::Ingress);
        }
    }
    count_packet(cgroup_id, verdict.allow, ctx.len());
    if !verdict.allow {
        let kind = match direction {
            Direction::Egress => EventKind::Egress,
            Direction::Ingress => EventKind::Ingress,
        };
        report(cgroup_id, kind, peer, 0, verdict.reason);
    }
    Ok(verdict)
}

/// Reads `allow` as a plain byte. The compiler may otherwise return the bool's byte as the
/// program's result, which the verifier cannot bound to 0..=1 after a stack round-trip.
#[inline(always)]
fn allowed(v: &Verdict) -> bool {
    // SAFETY: reading a valid bool's byte.
    unsafe { core::ptr::read_volatile(core::ptr::from_ref(&v.allow).cast::<u8>()) != 0 }
}

fn skb_verdict(ctx: &SkBuffContext, direction: Direction) -> i32 {
    match try_skb(ctx, direction) {
        Ok(v) if allowed(&v) => PASS,
        // Denied, or the packet could not be read: drop (fail closed).
        _ => DROP,
    }
}

#[cgroup_skb(egress)]
pub fn sandbox_egress(ctx: SkBuffContext) -> i32 {
    skb_verdict(&ctx, Direction::Egress)
}

#[cgroup_skb(ingress)]
pub fn sandbox_ingress(ctx: SkBuffContext) -> i32 {
    skb_verdict(&ctx, Direction::Ingress)
}

const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;
/// `BPF_TCP_CLOSE`, the TCP state after which a socket sends nothing more.
const TCP_CLOSE: u32 = 7;
const BPF_SOCK_OPS_STATE_CB: u32 = 10;
const BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB: u32 = 5;
const BPF_SOCK_OPS_STATE_CB_FLAG: i32 = 4;
const LOCALHOST_V4: [u8; 4] = [127, 0, 0, 1];
const LOCALHOST_V6: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// `a.b.c.d` as `::ffff:a.b.c.d`.
#[inline(always)]
fn mapped(v4: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
    ]
}

fn learned_v4(policy_id: u32, addr: [u8; 4]) -> bool {
    // SAFETY: the value is copied out at once.
    match unsafe { LEARNED_V4.get(LearnedV4 { policy_id, addr }) } {
        // SAFETY: a helper without preconditions.
        Some(&expiry) => (unsafe { bpf_ktime_get_boot_ns() }) < expiry,
        None => false,
    }
}

fn learned_v6(policy_id: u32, addr: [u8; 16]) -> bool {
    // SAFETY: as in `learned_v4`.
    match unsafe { LEARNED_V6.get(LearnedV6 { policy_id, addr }) } {
        // SAFETY: a helper without preconditions.
        Some(&expiry) => (unsafe { bpf_ktime_get_boot_ns() }) < expiry,
        None => false,
    }
}

/// Marks a socket in `FLOWS`, counted against `cgroup_id`'s quota (0: not counted). An
/// entry the socket already has is replaced without counting again. Errors say why.
fn mark_flow(
    cookie: u64,
    kind: FlowKind,
    policy_id: u32,
    peer: [u8; 16],
    cgroup_id: u64,
) -> Result<(), Reason> {
    let mark = FlowMark {
        kind: kind as u32,
        policy_id,
        peer,
        cgroup_id,
    };
    // SAFETY: only presence is read.
    let counted = cgroup_id != 0 && unsafe { FLOWS.get(cookie) }.is_none();
    if counted && !take_slot(&FLOW_COUNTS, cgroup_id, MAX_FLOWS_PER_SANDBOX) {
        return Err(Reason::Quota);
    }
    if FLOWS.insert(cookie, mark, 0).is_err() {
        if counted {
            release_slot(&FLOW_COUNTS, cgroup_id);
        }
        return Err(Reason::AgentFlow);
    }
    Ok(())
}

/// Records where a redirected socket wanted to go and marks it; an error if the maps or the
/// sandbox's quota are full (then the connect is refused: without the record the agent could
/// not serve it).
fn record_redirect(
    ctx: &SockAddrContext,
    cgroup_id: u64,
    orig: [u8; 16],
    port: u16,
    to: u32,
    kind: FlowKind,
    family: u16,
) -> Result<(), Reason> {
    // SAFETY: the context pointer is valid for the program's run.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let dst = OrigDst {
        addr: orig,
        port,
        redirect_family: family,
        kind: kind as u32,
        redirect_port: to,
        pad: 0,
        cgroup_id,
    };
    if ORIG_DST.insert(cookie, dst, 0).is_err() {
        return Err(Reason::AgentFlow);
    }
    mark_flow(cookie, kind, 0, [0; 16], cgroup_id).inspect_err(|_| {
        let _ = ORIG_DST.remove(cookie);
    })
}

fn refuse(cgroup_id: u64, call: Call, peer: [u8; 16], port: u16, reason: Reason) -> i32 {
    let (event, kind) = match call {
        Call::Connect => (Event::DeniedConnect, EventKind::Connect),
        Call::Send => (Event::DeniedSend, EventKind::Send),
    };
    count(cgroup_id, event);
    report(cgroup_id, kind, peer, port, reason);
    // 0 makes the syscall fail with EPERM.
    DROP
}

/// Lets a TCP connect to a learned address through, marking the socket with that one peer.
fn pass_learned(
    ctx: &SockAddrContext,
    cgroup_id: u64,
    policy_id: u32,
    call: Call,
    peer: [u8; 16],
    port: u16,
) -> i32 {
    // SAFETY: as in `record_redirect`.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    match mark_flow(cookie, FlowKind::Learned, policy_id, peer, cgroup_id) {
        Ok(()) => {
            count(cgroup_id, Event::LearnedConnect);
            PASS
        }
        Err(Reason::Quota) => refuse(cgroup_id, call, peer, port, Reason::Quota),
        Err(_) => refuse(cgroup_id, call, peer, port, Reason::LearnedAddress),
    }
}

fn redirect_event(kind: FlowKind) -> Event {
    match kind {
        FlowKind::Dns => Event::DnsRedirect,
        _ => Event::ProxyRedirect,
    }
}

/// Reads the destination port (`user_port` holds it in network order in its low bytes).
#[inline(always)]
fn user_port(ctx: &SockAddrContext) -> u16 {
    // SAFETY: the context pointer is valid; the field is read whole.
    u16::from_be(unsafe { (*ctx.sock_addr).user_port } as u16)
}

/// TCP connect, UDP, or anything else (ping sockets, UDP-Lite...), which is never redirected.
#[inline(always)]
fn socket_kind(ctx: &SockAddrContext, call: Call) -> SocketKind {
    // SAFETY: as in `user_port`.
    let (kind, protocol) = unsafe { ((*ctx.sock_addr).type_, (*ctx.sock_addr).protocol) };
    if kind == SOCK_STREAM && protocol == IPPROTO_TCP && matches!(call, Call::Connect) {
        SocketKind::TcpConnect
    } else if kind == SOCK_DGRAM && protocol == IPPROTO_UDP {
        SocketKind::Udp
    } else {
        SocketKind::Other
    }
}

fn sock_addr_v4(ctx: &SockAddrContext, call: Call) -> i32 {
    // SAFETY: helper without preconditions; sock_addr programs run in the caller's context.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: the context pointer is valid for the program's run; the field is readable in
    // connect4/sendmsg4. The u32 holds the address in network order, so its in-memory bytes
    // are the address bytes.
    let addr = unsafe { (*ctx.sock_addr).user_ip4 }.to_ne_bytes();
    let port = user_port(ctx);
    let Some(entry) = sandbox(cgroup_id) else {
        return refuse(cgroup_id, call, mapped(addr), port, Reason::UnknownSandbox);
    };
    // The socket kind is read again where needed rather than kept: a value held across the
    // decision multiplies the paths the verifier walks (connect6 went from 82k to 142k).
    if is_loopback_v4(addr)
        && let SocketKind::TcpConnect = socket_kind(ctx, call)
        && let Some(listener) = own_listener(ctx, cgroup_id, port, 4)
    {
        if !mark_own_listener_connect(ctx, cgroup_id, &listener, mapped(addr)) {
            return DROP;
        }
        // SAFETY: writable fields of connect4, each written whole.
        unsafe {
            (*ctx.sock_addr).user_ip4 = u32::from_ne_bytes(LOCALHOST_V4);
            (*ctx.sock_addr).user_port = u32::from(listener.assigned.to_be());
        }
        return PASS;
    }
    if let SocketKind::TcpConnect = socket_kind(ctx, call)
        && !clear_mark(ctx)
    {
        return refuse(cgroup_id, call, mapped(addr), port, Reason::AgentFlow);
    }
    let verdict = decide_v4_for(&entry, addr);
    let action = sock_addr_action(
        &entry,
        verdict,
        port,
        socket_kind(ctx, call),
        is_loopback_v4(addr),
        || learned_v4(entry.policy_id, addr),
    );
    match action {
        SockAddrAction::Pass => PASS,
        SockAddrAction::Deny => refuse(cgroup_id, call, mapped(addr), port, verdict.reason),
        SockAddrAction::PassLearned => {
            pass_learned(ctx, cgroup_id, entry.policy_id, call, mapped(addr), port)
        }
        SockAddrAction::Redirect { port: to, kind } => {
            if let Err(reason) = record_redirect(ctx, cgroup_id, mapped(addr), port, to, kind, 4) {
                return refuse(cgroup_id, call, mapped(addr), port, reason);
            }
            // SAFETY: writable fields of connect4/sendmsg4, each written whole.
            unsafe {
                (*ctx.sock_addr).user_ip4 = u32::from_ne_bytes(LOCALHOST_V4);
                (*ctx.sock_addr).user_port = u32::from((to as u16).to_be());
            }
            count(cgroup_id, redirect_event(kind));
            PASS
        }
    }
}

#[inline(always)]
fn read_ip6(ctx: &SockAddrContext) -> [u8; 16] {
    // SAFETY: as in `sock_addr_v4`; each word is read whole, as the verifier requires.
    let words = unsafe {
        let sa = ctx.sock_addr;
        [
            (*sa).user_ip6[0],
            (*sa).user_ip6[1],
            (*sa).user_ip6[2],
            (*sa).user_ip6[3],
        ]
    };
    let mut addr = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = words[i].to_ne_bytes();
        addr[i * 4] = b[0];
        addr[i * 4 + 1] = b[1];
        addr[i * 4 + 2] = b[2];
        addr[i * 4 + 3] = b[3];
        i += 1;
    }
    addr
}

#[inline(always)]
fn write_ip6(ctx: &SockAddrContext, addr: &[u8; 16]) {
    // SAFETY: writable fields of connect6/sendmsg6/recvmsg6, each word written whole.
    unsafe {
        let sa = ctx.sock_addr;
        (*sa).user_ip6[0] = u32::from_ne_bytes([addr[0], addr[1], addr[2], addr[3]]);
        (*sa).user_ip6[1] = u32::from_ne_bytes([addr[4], addr[5], addr[6], addr[7]]);
        (*sa).user_ip6[2] = u32::from_ne_bytes([addr[8], addr[9], addr[10], addr[11]]);
        (*sa).user_ip6[3] = u32::from_ne_bytes([addr[12], addr[13], addr[14], addr[15]]);
    }
}

fn sock_addr_v6(ctx: &SockAddrContext, call: Call) -> i32 {
    // SAFETY: as in `sock_addr_v4`.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let addr = read_ip6(ctx);
    let port = user_port(ctx);
    let Some(entry) = sandbox(cgroup_id) else {
        return refuse(cgroup_id, call, addr, port, Reason::UnknownSandbox);
    };
    let v4 = v4_mapped(&addr);
    let loopback = match v4 {
        Some(a) => is_loopback_v4(a),
        None => is_loopback_v6(&addr),
    };
    // Read again where needed, as in `sock_addr_v4`.
    if loopback && let SocketKind::TcpConnect = socket_kind(ctx, call) {
        let (family, target) = match v4 {
            Some(_) => (4, mapped(LOCALHOST_V4)),
            None => (6, LOCALHOST_V6),
        };
        if let Some(listener) = own_listener(ctx, cgroup_id, port, family) {
            if !mark_own_listener_connect(ctx, cgroup_id, &listener, addr) {
                return DROP;
            }
            write_ip6(ctx, &target);
            // SAFETY: writable field of connect6, written whole.
            unsafe { (*ctx.sock_addr).user_port = u32::from(listener.assigned.to_be()) };
            return PASS;
        }
    }
    if let SocketKind::TcpConnect = socket_kind(ctx, call)
        && !clear_mark(ctx)
    {
        return refuse(cgroup_id, call, addr, port, Reason::AgentFlow);
    }
    let verdict = decide_v6_for(&entry, &addr);
    let action = sock_addr_action(
        &entry,
        verdict,
        port,
        socket_kind(ctx, call),
        loopback,
        || match v4 {
            Some(a) => learned_v4(entry.policy_id, a),
            None => learned_v6(entry.policy_id, addr),
        },
    );
    match action {
        SockAddrAction::Pass => PASS,
        SockAddrAction::Deny => refuse(cgroup_id, call, addr, port, verdict.reason),
        SockAddrAction::PassLearned => {
            pass_learned(ctx, cgroup_id, entry.policy_id, call, addr, port)
        }
        SockAddrAction::Redirect { port: to, kind } => {
            // A mapped destination is IPv4 on the wire: redirect to ::ffff:127.0.0.1.
            let (target, family) = match v4 {
                Some(_) => (mapped(LOCALHOST_V4), 4),
                None => (LOCALHOST_V6, 6),
            };
            if let Err(reason) = record_redirect(ctx, cgroup_id, addr, port, to, kind, family) {
                return refuse(cgroup_id, call, addr, port, reason);
            }
            write_ip6(ctx, &target);
            // SAFETY: as in `sock_addr_v4`.
            unsafe { (*ctx.sock_addr).user_port = u32::from((to as u16).to_be()) };
            count(cgroup_id, redirect_event(kind));
            PASS
        }
    }
}

/// A listener of this sandbox on `port` (as the workload asked for it), in the network
/// namespace of the socket connecting.
fn own_listener(
    ctx: &SockAddrContext,
    cgroup_id: u64,
    port: u16,
    family: u16,
) -> Option<ServerPort> {
    let key = ListenKey {
        cgroup_id,
        port,
        family,
        pad: 0,
    };
    // SAFETY: the value is copied out at once.
    let listener = unsafe { LISTENING.get(key) }.copied()?;
    // SAFETY: the context is a socket; the helper reads its namespace.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    (listener.netns == netns).then_some(listener)
}

/// Takes the ingress mark off a socket connecting anywhere but to its sandbox's own
/// listener: a socket that reached one (and got the mark) may be disconnected
/// (`connect(AF_UNSPEC)`) and pointed at another sandbox's listener. False if it cannot be
/// done (the connect is then refused).
fn clear_mark(ctx: &SockAddrContext) -> bool {
    // SAFETY: `sk` of a sock_addr context is the (full) socket being connected; its `mark`
    // is readable. Most sockets carry no mark: the helper call is skipped for them.
    let current = unsafe { (*(*ctx.sock_addr).__bindgen_anon_1.sk).mark };
    if current != INGRESS_MARK {
        return true;
    }
    set_mark(ctx, 0)
}

/// `setsockopt(SO_MARK)` on the socket being connected; false if the kernel refused.
fn set_mark(ctx: &SockAddrContext, mut mark: u32) -> bool {
    // SAFETY: the context is a socket the helper may configure in connect hooks; the
    // option value is a valid u32 on the stack.
    let set = unsafe {
        bpf_setsockopt(
            ctx.sock_addr.cast(),
            SOL_SOCKET,
            SO_MARK,
            (&raw mut mark).cast(),
            4,
        )
    };
    set == 0
}

const SOL_SOCKET: i32 = 1;
const SO_MARK: i32 = 36;

/// A sandbox's connect to its own listener, which the caller steers to where the listener
/// really is: marked like the ingress's connections so that the listener accepts it, and
/// let through the packet programs. False (and refused) if that cannot be done.
fn mark_own_listener_connect(
    ctx: &SockAddrContext,
    cgroup_id: u64,
    listener: &ServerPort,
    peer: [u8; 16],
) -> bool {
    let set = set_mark(ctx, INGRESS_MARK);
    // SAFETY: as in `record_redirect`.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let marked = if set {
        mark_flow(cookie, FlowKind::OwnListener, 0, [0; 16], cgroup_id)
    } else {
        Err(Reason::AgentFlow)
    };
    if let Err(reason) = marked {
        refuse(cgroup_id, Call::Connect, peer, listener.requested, reason);
        return false;
    }
    true
}

#[cgroup_sock_addr(connect4)]
pub fn sandbox_connect4(ctx: SockAddrContext) -> i32 {
    sock_addr_v4(&ctx, Call::Connect)
}

#[cgroup_sock_addr(connect6)]
pub fn sandbox_connect6(ctx: SockAddrContext) -> i32 {
    sock_addr_v6(&ctx, Call::Connect)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sandbox_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock_addr_v4(&ctx, Call::Send)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sandbox_sendmsg6(ctx: SockAddrContext) -> i32 {
    sock_addr_v6(&ctx, Call::Send)
}

/// What a sandbox's `bind()` of a TCP socket becomes.
enum Bind {
    /// Not a sandbox's TCP socket: untouched.
    Untouched,
    /// Port 0: the kernel picks the port; only recorded (see `sandbox_post_bind4`), so that
    /// the sandbox's own connects to it are let in.
    Record,
    /// A fixed port: steered to loopback and port 0, so that sandboxes (and the host) never
    /// clash over ports and nothing but loopback reaches it; the port asked for is recorded.
    Steer,
    /// The record could not be kept: the bind fails (EPERM).
    Refuse,
}

fn bind_action(ctx: &SockAddrContext) -> Bind {
    // SAFETY: readable fields of bind4/bind6, read whole.
    let (kind, protocol) = unsafe { ((*ctx.sock_addr).type_, (*ctx.sock_addr).protocol) };
    if kind != SOCK_STREAM || protocol != IPPROTO_TCP {
        return Bind::Untouched;
    }
    // SAFETY: helper without preconditions.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    if sandbox(cgroup_id).is_none() {
        return Bind::Untouched;
    }
    let port = user_port(ctx);
    // SAFETY: as in `record_redirect`.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if BIND_REQUESTS.insert(cookie, u32::from(port), 0).is_err() {
        return Bind::Refuse;
    }
    if port == 0 { Bind::Record } else { Bind::Steer }
}

#[cgroup_sock_addr(bind4)]
pub fn sandbox_bind4(ctx: SockAddrContext) -> i32 {
    match bind_action(&ctx) {
        Bind::Untouched | Bind::Record => PASS,
        Bind::Refuse => DROP,
        Bind::Steer => {
            // SAFETY: writable fields of bind4, each written whole.
            unsafe {
                (*ctx.sock_addr).user_ip4 = u32::from_ne_bytes(LOCALHOST_V4);
                (*ctx.sock_addr).user_port = 0;
            }
            PASS
        }
    }
}

#[cgroup_sock_addr(bind6)]
pub fn sandbox_bind6(ctx: SockAddrContext) -> i32 {
    match bind_action(&ctx) {
        Bind::Untouched | Bind::Record => PASS,
        Bind::Refuse => DROP,
        Bind::Steer => {
            // An IPv4-mapped bind stays IPv4 on the wire.
            let target = match v4_mapped(&read_ip6(&ctx)) {
                Some(_) => mapped(LOCALHOST_V4),
                None => LOCALHOST_V6,
            };
            write_ip6(&ctx, &target);
            // SAFETY: writable field of bind6, written whole.
            unsafe { (*ctx.sock_addr).user_port = 0 };
            PASS
        }
    }
}

/// Records where a socket seen by `bind_action` is bound: `LISTENING` by the port it asked
/// for, `SERVER_PORTS` by the port it got. A bind whose record cannot be kept fails.
///
/// Only a socket that a connect to the sandbox's loopback address would reach is recorded
/// (`reachable`: bound to 127.0.0.1/`::1` or the wildcard), with its network namespace: a
/// record of a port-0 bind to 127.0.0.2, or of a bind in another namespace, would name a
/// port where some other socket listens (a review narrowed `IP_LOCAL_PORT_RANGE` to pick
/// that port, and reached host services through the steered connect).
fn record_listener(ctx: &SockContext, family: u16, reachable: bool) -> i32 {
    // SAFETY: the context pointer is valid for the program's run.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the value is copied out at once.
    let Some(requested) = (unsafe { BIND_REQUESTS.get(cookie) }).copied() else {
        return PASS;
    };
    let _ = BIND_REQUESTS.remove(cookie);
    if !reachable {
        return PASS;
    }
    // SAFETY: the context is a socket; the helper reads its namespace.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    // SAFETY: helper without preconditions.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: readable in post_bind, host byte order.
    let assigned = unsafe { (*ctx.sock).src_port } as u16;
    // Port 0 asked: the sandbox's own connects name the port it got.
    let requested = if requested == 0 {
        assigned
    } else {
        requested as u16
    };
    let value = ServerPort {
        cookie,
        cgroup_id,
        requested,
        assigned,
        pad: 0,
        netns,
    };
    let listen = ListenKey {
        cgroup_id,
        port: requested,
        family,
        pad: 0,
    };
    let server = ServerKey {
        cgroup_id,
        port: assigned,
        family,
        pad: 0,
    };
    if !take_slot(&LISTEN_COUNTS, cgroup_id, MAX_LISTENING_PER_SANDBOX) {
        return DROP;
    }
    if LISTENING.insert(listen, value, 0).is_err() {
        release_slot(&LISTEN_COUNTS, cgroup_id);
        return DROP;
    }
    if SERVER_PORTS.insert(server, value, 0).is_err()
        || LISTENER_SOCKETS.insert(cookie, server, 0).is_err()
    {
        let _ = LISTENING.remove(listen);
        let _ = SERVER_PORTS.remove(server);
        release_slot(&LISTEN_COUNTS, cgroup_id);
        return DROP;
    }
    PASS
}

/// Counts a record against the sandbox's cap; false when it is full. The check and the
/// add are not one atomic step (BPF has no 32/64-bit compare-and-swap for us here): binds
/// racing on several CPUs may overshoot the cap by a few, never drift it, since the add
/// and the subtraction are atomic.
fn take_slot(counts: &HashMap<u64, u64>, cgroup_id: u64, cap: u32) -> bool {
    if counts.get_ptr_mut(cgroup_id).is_none() {
        let _ = counts.insert(cgroup_id, 0, u64::from(BPF_NOEXIST));
    }
    let Some(count) = counts.get_ptr_mut(cgroup_id) else {
        return false;
    };
    // SAFETY: a map value that stays valid while the program runs.
    if unsafe { core::ptr::read_volatile(count) } >= u64::from(cap) {
        return false;
    }
    atomic_add(count, 1);
    true
}

fn release_slot(counts: &HashMap<u64, u64>, cgroup_id: u64) {
    if let Some(count) = counts.get_ptr_mut(cgroup_id) {
        atomic_add(count, u64::MAX);
    }
}

/// `*value += delta` (wrapping) as one atomic add whose result is unused: BPF `XADD`.
#[inline(always)]
fn atomic_add(value: *mut u64, delta: u64) {
    // SAFETY: `value` points at a live map value; the add is atomic.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            value, delta,
        );
    }
}

#[cgroup_sock(post_bind4)]
pub fn sandbox_post_bind4(ctx: SockContext) -> i32 {
    // SAFETY: readable in post_bind4, network order.
    let addr = unsafe { (*ctx.sock).src_ip4 };
    record_listener(&ctx, 4, reachable_v4(addr))
}

/// 127.0.0.1 or 0.0.0.0 (network order): where a connect to 127.0.0.1 lands.
#[inline(always)]
fn reachable_v4(addr: u32) -> bool {
    addr == 0 || addr == u32::from_ne_bytes(LOCALHOST_V4)
}

#[cgroup_sock(post_bind6)]
pub fn sandbox_post_bind6(ctx: SockContext) -> i32 {
    // SAFETY: readable in post_bind6, each word read whole.
    let words = unsafe { (*ctx.sock).src_ip6 };
    let v4_mapped = words[0] == 0 && words[1] == 0 && words[2] == 0xffff_u32.to_be();
    let reachable = if v4_mapped {
        reachable_v4(words[3])
    } else {
        // `::1` or `::`
        words[0] == 0
            && words[1] == 0
            && words[2] == 0
            && (words[3] == 0 || words[3] == 1_u32.to_be())
    };
    record_listener(&ctx, if v4_mapped { 4 } else { 6 }, reachable)
}

/// Forgets a released listener's records: each only if it is still this socket's (a newer
/// socket on the same port keeps its own; an accepted connection shares the port, not the
/// cookie).
fn forget_listener(cookie: u64) {
    // SAFETY: the value is copied out at once.
    let Some(key) = (unsafe { LISTENER_SOCKETS.get(cookie) }).copied() else {
        return;
    };
    let _ = LISTENER_SOCKETS.remove(cookie);
    release_slot(&LISTEN_COUNTS, key.cgroup_id);
    // SAFETY: as above.
    let Some(s) = (unsafe { SERVER_PORTS.get(key) }).copied() else {
        return;
    };
    if s.cookie == cookie {
        let _ = SERVER_PORTS.remove(key);
    }
    let listen = ListenKey {
        cgroup_id: s.cgroup_id,
        port: s.requested,
        family: key.family,
        pad: 0,
    };
    // SAFETY: as above.
    if unsafe { LISTENING.get(listen) }.is_some_and(|l| l.cookie == cookie) {
        let _ = LISTENING.remove(listen);
    }
}

/// The original server of a DNS answer read from the sandbox's resolver, if this socket's
/// DNS was redirected.
fn dns_origin(ctx: &SockAddrContext, from: &[u8; 16], from_port: u16) -> Option<OrigDst> {
    // SAFETY: helper without preconditions.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let entry = sandbox(cgroup_id)?;
    if entry.dns_port == 0 || u32::from(from_port) != entry.dns_port {
        return None;
    }
    let local = *from == LOCALHOST_V6 || *from == mapped(LOCALHOST_V4);
    if !local {
        return None;
    }
    // SAFETY: the context pointer is valid for the program's run.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the value is copied out at once.
    let orig = unsafe { ORIG_DST.get(cookie) }.copied()?;
    (orig.kind == FlowKind::Dns as u32).then_some(orig)
}

/// Answers from the resolver appear to come from the server the client asked: resolver
/// libraries drop answers from any other address.
#[cgroup_sock_addr(recvmsg4)]
pub fn sandbox_recvmsg4(ctx: SockAddrContext) -> i32 {
    // SAFETY: as in `sock_addr_v4`.
    let from = mapped(unsafe { (*ctx.sock_addr).user_ip4 }.to_ne_bytes());
    if let Some(orig) = dns_origin(&ctx, &from, user_port(&ctx))
        && let Some(v4) = v4_mapped(&orig.addr)
    {
        // SAFETY: writable fields of recvmsg4, each written whole.
        unsafe {
            (*ctx.sock_addr).user_ip4 = u32::from_ne_bytes(v4);
            (*ctx.sock_addr).user_port = u32::from(orig.port.to_be());
        }
    }
    // recvmsg programs must return 1.
    PASS
}

#[cgroup_sock_addr(recvmsg6)]
pub fn sandbox_recvmsg6(ctx: SockAddrContext) -> i32 {
    let from = read_ip6(&ctx);
    if let Some(orig) = dns_origin(&ctx, &from, user_port(&ctx)) {
        write_ip6(&ctx, &orig.addr);
        // SAFETY: as in `sandbox_recvmsg4`.
        unsafe { (*ctx.sock_addr).user_port = u32::from(orig.port.to_be()) };
    }
    PASS
}

fn forget(cookie: u64) {
    // SAFETY: the value is copied out at once.
    let owner = unsafe { FLOWS.get(cookie) }.map_or(0, |mark| mark.cgroup_id);
    // Only the call that removed the entry gives its slot back (release and the TCP close
    // callback may both come here).
    if FLOWS.remove(cookie).is_ok() && owner != 0 {
        release_slot(&FLOW_COUNTS, owner);
    }
    let _ = ORIG_DST.remove(cookie);
}

/// Re-keys proxied connections by local port, which the proxy sees as the peer port (the
/// port exists only from here on), and forgets marked TCP sockets when they close.
#[sock_ops]
pub fn sandbox_sock_ops(ctx: SockOpsContext) -> u32 {
    let op = ctx.op();
    if op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB {
        // An accepted connection (only the ingress's SYNs get this far): its answers to the
        // loopback peer pass, also once the listener is gone. Forgotten when it closes.
        // SAFETY: the context pointer is valid for the program's run.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        if mark_flow(cookie, FlowKind::Accepted, 0, [0; 16], 0).is_ok() {
            let _ = ctx.set_cb_flags(ctx.cb_flags() as i32 | BPF_SOCK_OPS_STATE_CB_FLAG);
        }
    } else if op == BPF_SOCK_OPS_TCP_CONNECT_CB {
        // SAFETY: the context pointer is valid for the program's run.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        // SAFETY: only presence is read.
        if unsafe { FLOWS.get(cookie) }.is_none() {
            return 1;
        }
        // Ask for state changes, to forget the socket when it is closed for good (not at
        // release: a released TCP socket still sends its FIN).
        let _ = ctx.set_cb_flags(ctx.cb_flags() as i32 | BPF_SOCK_OPS_STATE_CB_FLAG);
        // SAFETY: the value is copied out at once.
        if let Some(orig) = unsafe { ORIG_DST.get(cookie) }.copied()
            && (orig.kind == FlowKind::Proxy as u32 || orig.kind == FlowKind::Explicit as u32)
        {
            let key = ProxyKey {
                client_port: ctx.local_port() as u16,
                proxy_port: orig.redirect_port as u16,
                family: u32::from(orig.redirect_family),
            };
            let _ = PROXY_CONNS.insert(key, orig, 0);
        }
    } else if op == BPF_SOCK_OPS_STATE_CB && ctx.arg(1) == TCP_CLOSE {
        // SAFETY: as above.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        forget_proxy_conn(&ctx, cookie);
        forget(cookie);
    }
    1
}

/// Removes a proxied connection's `PROXY_CONNS` entry when it closes before the proxy took
/// it: stale entries would otherwise stay until the LRU evicted them, and one sandbox
/// opening and dropping proxied connects could evict its neighbours' pending ones.
fn forget_proxy_conn(ctx: &SockOpsContext, cookie: u64) {
    // SAFETY: the value is copied out at once.
    let Some(orig) = (unsafe { ORIG_DST.get(cookie) }).copied() else {
        return;
    };
    if orig.kind != FlowKind::Proxy as u32 && orig.kind != FlowKind::Explicit as u32 {
        return;
    }
    let key = ProxyKey {
        client_port: ctx.local_port() as u16,
        proxy_port: orig.redirect_port as u16,
        family: u32::from(orig.redirect_family),
    };
    // Only this connection's entry (the same record), never a newer one on the same key.
    // SAFETY: the value is copied out at once.
    if unsafe { PROXY_CONNS.get(&key) }.copied() == Some(orig) {
        let _ = PROXY_CONNS.remove(&key);
    }
}

/// Forgets released sockets, except TCP connections that will still send (a FIN) after
/// their release: those are forgotten when they reach `TCP_CLOSE` (see `sandbox_sock_ops`,
/// which asked for that callback when they connected). Every other state (never connected,
/// connecting, listening) ends at release.
#[cgroup_sock(sock_release)]
pub fn sandbox_sock_release(ctx: SockContext) -> i32 {
    // SAFETY: the context pointer is valid for the program's run; fields are read whole.
    let (kind, state) = unsafe { ((*ctx.sock).type_, (*ctx.sock).state) };
    // SAFETY: as above.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if kind != SOCK_STREAM || !still_sends_after_release(state) {
        forget(cookie);
    }
    if kind == SOCK_STREAM {
        forget_listener(cookie);
    }
    PASS
}

/// TCP states (`BPF_TCP_*`) of a connection that sends more after `close()`: ESTABLISHED,
/// SYN_RECV, FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, LAST_ACK, CLOSING.
#[inline(always)]
fn still_sends_after_release(state: u32) -> bool {
    matches!(state, 1 | 3 | 4 | 5 | 8 | 9 | 11)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
