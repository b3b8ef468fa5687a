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
    /// All maps but `META`, which is pinned last as the mark of a complete install.
    pub const ALL: [&str; 7] = [
        SANDBOXES, ALLOW_V4, DENY_V4, ALLOW_V6, DENY_V6, COUNTERS, POLICY_IDS,
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
}

/// Capacity of the `SANDBOXES` and `COUNTERS` maps: sandboxes alive at once on one host.
pub const MAX_SANDBOXES: u32 = 65_536;
/// Default capacity of each LPM trie (all sandboxes' prefixes of one kind and family).
/// The tries are not preallocated, so a large capacity costs nothing until used.
pub const DEFAULT_MAX_PREFIXES: u32 = 4 * 1024 * 1024;

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
    entry: &SandboxEntry,
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

const _: () = assert!(core::mem::size_of::<SandboxEntry>() == 16);
const _: () = assert!(core::mem::size_of::<Counters>() == 48);
const _: () = assert!(core::mem::size_of::<RuleValue>() == 4);

#[cfg(feature = "user")]
mod user {
    use super::{Counters, RuleValue, SandboxEntry};

    // SAFETY: plain `#[repr(C)]` structs of integers without padding.
    unsafe impl aya::Pod for SandboxEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Counters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for RuleValue {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(default: DefaultVerdict, precedence: Precedence) -> SandboxEntry {
        SandboxEntry {
            policy_id: 7,
            default_verdict: default as u32,
            precedence: precedence as u32,
            guard_loopback: 1,
        }
    }

    #[test]
    fn no_match_takes_the_default() {
        let e = entry(DefaultVerdict::Deny, Precedence::DenyWins);
        assert_eq!(
            decide(&e, None, None, 0),
            Verdict::deny(Reason::DefaultDeny)
        );
        let e = entry(DefaultVerdict::Allow, Precedence::DenyWins);
        assert_eq!(
            decide(&e, None, None, 0),
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
            assert!(decide(&e, Some(8), None, 0).allow);
            assert!(!decide(&e, None, Some(8), 0).allow);
        }
    }

    #[test]
    fn precedence_settles_conflicts() {
        let deny_wins = entry(DefaultVerdict::Deny, Precedence::DenyWins);
        assert!(!decide(&deny_wins, Some(32), Some(8), 0).allow);
        let allow_wins = entry(DefaultVerdict::Deny, Precedence::AllowWins);
        assert!(decide(&allow_wins, Some(8), Some(32), 0).allow);
        let specific = entry(DefaultVerdict::Deny, Precedence::MostSpecific);
        assert!(decide(&specific, Some(24), Some(16), 0).allow);
        assert!(!decide(&specific, Some(16), Some(24), 0).allow);
        assert_eq!(
            decide(&specific, Some(16), Some(16), 0),
            Verdict::deny(Reason::Tie)
        );
    }

    #[test]
    fn unknown_precedence_fails_closed() {
        let mut e = entry(DefaultVerdict::Allow, Precedence::AllowWins);
        e.precedence = 99;
        assert!(!decide(&e, Some(32), Some(0), 0).allow);
    }

    #[test]
    fn loopback_needs_a_rule_that_names_it() {
        let e = entry(DefaultVerdict::Allow, Precedence::DenyWins);
        // `@all` (a /0 rule) does not open loopback...
        assert_eq!(
            decide(&e, Some(0), None, LOOPBACK_V4_MIN_PREFIX),
            Verdict::deny(Reason::LoopbackNotNamed)
        );
        // ...127.0.0.0/8 or a longer rule does.
        assert!(decide(&e, Some(8), None, LOOPBACK_V4_MIN_PREFIX).allow);
        assert!(!decide(&e, Some(64), None, LOOPBACK_V6_MIN_PREFIX).allow);
        assert!(decide(&e, Some(128), None, LOOPBACK_V6_MIN_PREFIX).allow);
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
