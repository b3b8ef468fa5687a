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
//! Link-layer (`AF_PACKET`) sockets would bypass the IP hooks; they need CAP_NET_RAW and are
//! refused by the launcher's seccomp filter (`launch.rs`), since cgroup hooks do not see them.
//!
//! Anything unexpected (a cgroup below the sandbox root that has no entry, a packet that
//! cannot be read) is denied: the failure mode is closed.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_skb_cgroup_id},
    macros::{cgroup_skb, cgroup_sock_addr, map},
    maps::{Array, HashMap, LpmTrie, PerCpuHashMap, lpm_trie::Key},
    programs::{SkBuffContext, SockAddrContext},
};
use sandbox_common::{
    Counters, DEFAULT_MAX_PREFIXES, LOOPBACK_V4_MIN_PREFIX, LOOPBACK_V6_MIN_PREFIX, LpmDataV4,
    LpmDataV6, MAX_SANDBOXES, POLICY_ID_BITS, Reason, RuleValue, SandboxEntry, Verdict, decide,
    is_loopback_v4, is_loopback_v6, lpm_data_v4, lpm_data_v6, v4_mapped,
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

const PASS: i32 = 1;
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

fn decide_v4(cgroup_id: u64, addr: [u8; 4]) -> Verdict {
    // SAFETY: the value is copied out at once; entries are replaced whole by user space.
    let Some(entry) = (unsafe { SANDBOXES.get(cgroup_id) }) else {
        return Verdict::deny(Reason::UnknownSandbox);
    };
    let key = Key::new(POLICY_ID_BITS + 32, lpm_data_v4(entry.policy_id, addr));
    let allow = ALLOW_V4.get(&key).map(|v| v.prefix_len);
    let deny = DENY_V4.get(&key).map(|v| v.prefix_len);
    let loopback_min = if entry.guard_loopback != 0 && is_loopback_v4(addr) {
        LOOPBACK_V4_MIN_PREFIX
    } else {
        0
    };
    decide(entry, allow, deny, loopback_min)
}

fn decide_v6(cgroup_id: u64, addr: &[u8; 16]) -> Verdict {
    if let Some(v4) = v4_mapped(addr) {
        return decide_v4(cgroup_id, v4);
    }
    // SAFETY: as in `decide_v4`.
    let Some(entry) = (unsafe { SANDBOXES.get(cgroup_id) }) else {
        return Verdict::deny(Reason::UnknownSandbox);
    };
    let key = Key::new(POLICY_ID_BITS + 128, lpm_data_v6(entry.policy_id, addr));
    let allow = ALLOW_V6.get(&key).map(|v| v.prefix_len);
    let deny = DENY_V6.get(&key).map(|v| v.prefix_len);
    let loopback_min = if entry.guard_loopback != 0 && is_loopback_v6(addr) {
        LOOPBACK_V6_MIN_PREFIX
    } else {
        0
    };
    decide(entry, allow, deny, loopback_min)
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

fn count_call(cgroup_id: u64, call: Call) {
    if let Some(c) = COUNTERS.get_ptr_mut(cgroup_id) {
        // SAFETY: as in `count_packet`.
        let c = unsafe { &mut *c };
        match call {
            Call::Connect => c.denied_connects += 1,
            Call::Send => c.denied_sends += 1,
        }
    }
}

fn try_skb(ctx: &SkBuffContext, direction: Direction) -> Result<Verdict, i64> {
    // SAFETY: a helper without preconditions; the socket's cgroup, not the current task's,
    // since ingress runs in softirq context.
    let cgroup_id = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    let version = ctx.load::<u8>(0)? >> 4;
    let verdict = match version {
        4 => {
            let offset = match direction {
                Direction::Egress => IPV4_DST,
                Direction::Ingress => IPV4_SRC,
            };
            decide_v4(cgroup_id, ctx.load::<[u8; 4]>(offset)?)
        }
        6 => {
            let offset = match direction {
                Direction::Egress => IPV6_DST,
                Direction::Ingress => IPV6_SRC,
            };
            decide_v6(cgroup_id, &ctx.load::<[u8; 16]>(offset)?)
        }
        _ => Verdict::deny(Reason::Malformed),
    };
    count_packet(cgroup_id, verdict.allow, ctx.len());
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

fn sock_addr_v4(ctx: &SockAddrContext, call: Call) -> i32 {
    // SAFETY: helper without preconditions; sock_addr programs run in the caller's context.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: the context pointer is valid for the program's run; the field is readable in
    // connect4/sendmsg4. The u32 holds the address in network order, so its in-memory bytes
    // are the address bytes.
    let addr = unsafe { (*ctx.sock_addr).user_ip4 }.to_ne_bytes();
    finish_sock_addr(cgroup_id, decide_v4(cgroup_id, addr), call)
}

fn sock_addr_v6(ctx: &SockAddrContext, call: Call) -> i32 {
    // SAFETY: as in `sock_addr_v4`.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
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
    finish_sock_addr(cgroup_id, decide_v6(cgroup_id, &addr), call)
}

fn finish_sock_addr(cgroup_id: u64, verdict: Verdict, call: Call) -> i32 {
    if allowed(&verdict) {
        PASS
    } else {
        count_call(cgroup_id, call);
        // 0 makes the syscall fail with EPERM.
        DROP
    }
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
