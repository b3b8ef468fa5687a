//! The seccomp filter every workload gets: what a sandbox may not ask the kernel for, because
//! it would step around the cgroup programs (see the adversarial table in README.md).
//!
//! Built with `seccompiler` (rust-vmm) rather than by hand: jump offsets are its job. Two
//! programs are installed, since one seccomp program has one action on a match:
//! - `refused()`: EPERM for the calls and arguments listed below;
//! - `clone3_unavailable()`: ENOSYS for `clone3`, whose flags live in memory that a filter
//!   cannot read. libc then falls back to `clone`, whose flags the first program checks.
//!
//! Socket families are an allow-list (`AF_UNIX`, `AF_INET`, `AF_INET6`, and `AF_NETLINK` for
//! `NETLINK_ROUTE` only, the route and address queries libc makes), so a family the kernel
//! grows later is refused by default. Every integer argument is compared on its low 32 bits
//! (`Dword`), as the kernel reads it: `ioctl(fd, 0x1_0000_5412)` is still `TIOCSTI`.
use std::collections::BTreeMap;

use seccompiler::{
    SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition as Cond,
    SeccompFilter, SeccompRule, TargetArch,
};

const AF_UNIX: u64 = 1;
const AF_INET: u64 = 2;
const AF_INET6: u64 = 10;
const AF_NETLINK: u64 = 16;
const NETLINK_ROUTE: u64 = 0;

/// Socket types (without `SOCK_NONBLOCK`/`SOCK_CLOEXEC`) that inet sockets may not have:
/// `SOCK_RDM`, `SOCK_SEQPACKET` and `SOCK_DCCP` select SCTP/DCCP with protocol 0, and
/// `SOCK_PACKET` is the old spelling of a link-layer packet socket.
const REFUSED_INET_TYPES: [u64; 4] = [4, 5, 6, 10];
/// Protocols refused for inet sockets: DCCP, SCTP and MPTCP (ingress steers and guards TCP
/// listeners only, DESIGN-NOTES.md), and `IPPROTO_RAW`, which implies `IP_HDRINCL`: the
/// workload would write its own IP header, source address included.
const REFUSED_INET_PROTOCOLS: [u64; 4] = [33, 132, 262, 255];

const SOL_IP: u64 = 0;
const SOL_SOCKET: u64 = 1;
const SOL_IPV6: u64 = 41;
/// `(level, option)` pairs a workload may not set:
/// - `SO_MARK`: the mark is what opens a sandbox's listeners (`CAP_NET_RAW` would allow it);
/// - `IP_HDRINCL`, `IPV6_HDRINCL`: a raw socket writing its own header forges its source;
/// - `IP_FREEBIND`, `IP_TRANSPARENT`, `IPV6_FREEBIND`, `IPV6_TRANSPARENT`: binding an address
///   the host does not own, which makes answers (ICMP errors quoting the payload) travel to
///   it: reflection to a denied destination;
/// - `IP_OPTIONS`, `IPV6_RTHDR`, `IPV6_2292RTHDR`, `IPV6_2292PKTOPTIONS`: source routes (IPv4
///   LSRR/SSRR, an IPv6 segment routing header, which needs no capability) list hops the
///   packet visits on its way; the kernel's hooks see only the first hop and the final
///   destination.
const REFUSED_OPTIONS: [(u64, u64); 11] = [
    (SOL_SOCKET, 36),
    (SOL_IP, 3),
    (SOL_IP, 4),
    (SOL_IP, 15),
    (SOL_IP, 19),
    (SOL_IPV6, 5),
    (SOL_IPV6, 6),
    (SOL_IPV6, 36),
    (SOL_IPV6, 57),
    (SOL_IPV6, 75),
    (SOL_IPV6, 78),
];

/// `TIOCSTI` pushes input into a terminal (the operator's shell, if the workload holds it);
/// `TIOCLINUX` can do the same on a virtual console.
const REFUSED_IOCTLS: [u64; 2] = [0x5412, 0x541C];

/// Namespace flags of `clone` and `unshare`. A nested user namespace gives the workload
/// capabilities over namespaces the cgroup hooks cannot tell apart (a network namespace of
/// its own, with its own port range and loopback). `CLONE_NEWTIME` shares its bit with the
/// exit signal in `clone`, so it is checked for `unshare` only.
const NAMESPACE_FLAGS: [u64; 7] = [
    0x0002_0000, // CLONE_NEWNS
    0x0200_0000, // CLONE_NEWCGROUP
    0x0400_0000, // CLONE_NEWUTS
    0x0800_0000, // CLONE_NEWIPC
    0x1000_0000, // CLONE_NEWUSER
    0x2000_0000, // CLONE_NEWPID
    0x4000_0000, // CLONE_NEWNET
];
const CLONE_NEWTIME: u64 = 0x80;

/// Calls refused whatever their arguments:
/// - `io_uring_setup`: `io_uring` creates sockets and sets options without the syscalls this
///   filter sees;
/// - `setns`: entering another namespace;
/// - `keyctl`, `add_key`, `request_key`: the kernel's keyrings are per uid and outlive the
///   processes of a sandbox (a later owner of the same uid would find them), and
///   `request_key` starts host helpers as root outside the sandbox (the `dns_resolver` key
///   type resolves names through the host's resolver, around the agent's);
/// - the `socketcall` and x32 forms are refused by ABI in `programs` (they would skip the
///   argument checks).
const REFUSED_CALLS: [i64; 5] = [
    libc::SYS_io_uring_setup,
    libc::SYS_setns,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
];

fn cond(arg: u8, op: Op, value: u64) -> Cond {
    Cond::new(arg, Len::Dword, op, value).expect("argument index below 6")
}

fn rule(conditions: Vec<Cond>) -> SeccompRule {
    SeccompRule::new(conditions).expect("a rule has conditions")
}

/// Rules under which a call is refused (EPERM); an empty list refuses it unconditionally.
fn refused_rules() -> BTreeMap<i64, Vec<SeccompRule>> {
    let mut socket = vec![
        // Any family but the four allowed.
        rule(
            [AF_UNIX, AF_INET, AF_INET6, AF_NETLINK]
                .iter()
                .map(|&family| cond(0, Op::Ne, family))
                .collect(),
        ),
        // Netlink for anything but routes and addresses.
        rule(vec![
            cond(0, Op::Eq, AF_NETLINK),
            cond(2, Op::Ne, NETLINK_ROUTE),
        ]),
    ];
    for family in [AF_INET, AF_INET6] {
        for kind in REFUSED_INET_TYPES {
            socket.push(rule(vec![
                cond(0, Op::Eq, family),
                cond(1, Op::MaskedEq(0xf), kind),
            ]));
        }
        for protocol in REFUSED_INET_PROTOCOLS {
            socket.push(rule(vec![
                cond(0, Op::Eq, family),
                cond(2, Op::Eq, protocol),
            ]));
        }
    }
    let options = REFUSED_OPTIONS
        .iter()
        .map(|&(level, name)| rule(vec![cond(1, Op::Eq, level), cond(2, Op::Eq, name)]))
        .collect();
    let ioctls = REFUSED_IOCTLS
        .iter()
        .map(|&request| rule(vec![cond(1, Op::Eq, request)]))
        .collect();
    let namespaces = |flags: &mut dyn Iterator<Item = u64>| -> Vec<SeccompRule> {
        // clone/unshare flags are an unsigned long: all 64 bits count.
        flags
            .map(|flag| {
                rule(vec![
                    Cond::new(0, Len::Qword, Op::MaskedEq(flag), flag).expect("argument 0"),
                ])
            })
            .collect()
    };
    let mut rules = BTreeMap::from([
        (libc::SYS_socket, socket),
        // socketpair makes connected pairs of a family; only unix ones are of any use.
        (
            libc::SYS_socketpair,
            vec![rule(vec![cond(0, Op::Ne, AF_UNIX)])],
        ),
        (libc::SYS_setsockopt, options),
        (libc::SYS_ioctl, ioctls),
        (
            libc::SYS_clone,
            namespaces(&mut NAMESPACE_FLAGS.iter().copied()),
        ),
        (
            libc::SYS_unshare,
            namespaces(
                &mut NAMESPACE_FLAGS
                    .iter()
                    .copied()
                    .chain(std::iter::once(CLONE_NEWTIME)),
            ),
        ),
    ]);
    for call in REFUSED_CALLS {
        rules.insert(call, Vec::new());
    }
    rules
}

/// Refuses the x32 ABI (syscall numbers with bit 30 set, which the rules keyed by `x86_64`
/// numbers would not match) before a seccompiler program, which checks the architecture.
fn refuse_x32(program: Vec<seccompiler::sock_filter>) -> Vec<libc::sock_filter> {
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    let op = |code: u32| u16::try_from(code).expect("BPF opcodes fit 16 bits");
    let deny = libc::SECCOMP_RET_ERRNO | libc::EPERM.cast_unsigned();
    let head = [
        // A = seccomp_data.nr
        libc::sock_filter {
            code: op(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS),
            jt: 0,
            jf: 0,
            k: 0,
        },
        // if A >= X32_SYSCALL_BIT: deny, else skip it
        libc::sock_filter {
            code: op(libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K),
            jt: 0,
            jf: 1,
            k: X32_SYSCALL_BIT,
        },
        libc::sock_filter {
            code: op(libc::BPF_RET | libc::BPF_K),
            jt: 0,
            jf: 0,
            k: deny,
        },
    ];
    head.into_iter()
        .chain(program.into_iter().map(|i| libc::sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        }))
        .collect()
}

fn compile(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    on_match: SeccompAction,
) -> Vec<libc::sock_filter> {
    // Another architecture's calls are refused as a whole (seccompiler's check kills the
    // process: the i386 ABI has `socketcall`, whose arguments no filter can read).
    let filter = SeccompFilter::new(rules, SeccompAction::Allow, on_match, TargetArch::x86_64)
        .expect("the rules are valid");
    let program: seccompiler::BpfProgram = filter.try_into().expect("the filter compiles");
    refuse_x32(program)
}

/// The programs to install, in order: the refusals (EPERM), then `clone3` (ENOSYS).
/// Compiled once per process.
pub fn programs() -> &'static [Vec<libc::sock_filter>; 2] {
    static PROGRAMS: std::sync::OnceLock<[Vec<libc::sock_filter>; 2]> = std::sync::OnceLock::new();
    PROGRAMS.get_or_init(|| {
        let clone3 = BTreeMap::from([(libc::SYS_clone3, Vec::new())]);
        [
            compile(
                refused_rules(),
                SeccompAction::Errno(libc::EPERM.cast_unsigned()),
            ),
            compile(clone3, SeccompAction::Errno(libc::ENOSYS.cast_unsigned())),
        ]
    })
}

/// The programs for an init that installs them itself (`--root`: it must create the
/// sandbox's user namespace first, which the programs refuse): a sealed memfd made once per
/// process, holding `[u32 len0][u32 len1]` and then the instructions of both.
pub fn programs_fd() -> std::io::Result<std::os::fd::RawFd> {
    use std::{
        io::Write as _,
        os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    };
    static FD: std::sync::OnceLock<OwnedFd> = std::sync::OnceLock::new();
    if let Some(fd) = FD.get() {
        return Ok(fd.as_raw_fd());
    }
    let mut bytes = Vec::new();
    for program in programs() {
        bytes.extend_from_slice(&u32::try_from(program.len()).expect("short").to_ne_bytes());
    }
    for program in programs() {
        for insn in program {
            bytes.extend_from_slice(&insn.code.to_ne_bytes());
            bytes.push(insn.jt);
            bytes.push(insn.jf);
            bytes.extend_from_slice(&insn.k.to_ne_bytes());
        }
    }
    // SAFETY: memfd_create with a static name.
    let fd = unsafe {
        libc::memfd_create(
            c"sandbox-seccomp".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own.
    let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.write_all(&bytes)?;
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on our own descriptor.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(FD.get_or_init(|| file.into()).as_raw_fd())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_compile_within_the_kernel_limit() {
        for program in programs() {
            assert!(!program.is_empty() && program.len() < 4096);
        }
    }
}
