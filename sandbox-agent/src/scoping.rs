//! A Landlock domain per workload, so that a sandbox cannot act through what lies outside it.
//!
//! - Landlock's own ptrace rule: a process in a domain cannot trace, `pidfd_getfd`,
//!   `process_vm_readv|writev` or read `/proc/<pid>/environ` of a process outside its domain
//!   (another sandbox running as the same uid included): the packet programs judge a socket
//!   by the cgroup that made it, so a borrowed socket would carry its owner's egress.
//! - `LANDLOCK_SCOPE_SIGNAL` (ABI 6, Linux 6.12): no signals to processes outside.
//! - `LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET` (ABI 6): no connecting to abstract unix sockets
//!   made outside; they live in the network namespace the sandbox shares with the host.
//!
//! The ruleset is made in the agent before `clone3` and the child only calls
//! `landlock_restrict_self` (it may not allocate between clone and exec, which rules out the
//! `landlock` crate there): two syscalls, written by hand. The domain handles one file-system
//! right, making block and character devices (which a sandbox cannot do anyway), because a
//! ruleset needs something to handle before ABI 6 and the ptrace rule comes with any domain.
use std::{
    io,
    os::fd::{FromRawFd as _, OwnedFd},
    sync::OnceLock,
};

/// `struct landlock_ruleset_attr` (linux/landlock.h), ABI 6 layout.
#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
    handled_access_net: u64,
    scoped: u64,
}

const LANDLOCK_CREATE_RULESET_VERSION: u32 = 1;
const ACCESS_FS_MAKE_CHAR: u64 = 1 << 6;
const ACCESS_FS_MAKE_BLOCK: u64 = 1 << 11;
const SCOPE_ABSTRACT_UNIX_SOCKET: u64 = 1 << 0;
const SCOPE_SIGNAL: u64 = 1 << 1;
/// The first ABI with scopes.
const SCOPES_ABI: i64 = 6;

/// What this kernel's Landlock gives a sandbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Support {
    /// Landlock's ABI version, 0 when it is not available (not built, or not in `lsm=`).
    pub abi: i64,
}

impl Support {
    /// Tracing, `pidfd_getfd`, `process_vm_*` and `/proc/<pid>/environ` across sandboxes.
    pub fn ptrace_scoped(self) -> bool {
        self.abi >= 1
    }

    /// Signals and abstract unix sockets outside the sandbox.
    pub fn signals_and_abstract_sockets_scoped(self) -> bool {
        self.abi >= SCOPES_ABI
    }

    /// What the host lacks, one line, or `None` when every scope is in force.
    pub fn missing(self) -> Option<String> {
        if self.signals_and_abstract_sockets_scoped() {
            return None;
        }
        let what = if self.ptrace_scoped() {
            "signals and abstract unix sockets outside a sandbox are not refused"
        } else {
            "sandboxes can trace, signal and take sockets of each other, and reach host abstract unix sockets"
        };
        Some(format!(
            "this kernel's Landlock ABI is {} (scopes need 6, Linux 6.12): {what}",
            self.abi
        ))
    }
}

/// Probed once per process.
pub fn support() -> Support {
    static SUPPORT: OnceLock<Support> = OnceLock::new();
    *SUPPORT.get_or_init(|| {
        // SAFETY: the version query reads no memory.
        let abi = unsafe {
            libc::syscall(
                libc::SYS_landlock_create_ruleset,
                std::ptr::null::<RulesetAttr>(),
                0usize,
                LANDLOCK_CREATE_RULESET_VERSION,
            )
        };
        Support { abi: abi.max(0) }
    })
}

/// A ruleset for one workload (close-on-exec), or `None` where Landlock is unavailable
/// (`support().missing()` says so at start).
pub fn ruleset() -> io::Result<Option<OwnedFd>> {
    let support = support();
    if !support.ptrace_scoped() {
        return Ok(None);
    }
    let attr = RulesetAttr {
        handled_access_fs: ACCESS_FS_MAKE_CHAR | ACCESS_FS_MAKE_BLOCK,
        handled_access_net: 0,
        scoped: if support.signals_and_abstract_sockets_scoped() {
            SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
        } else {
            0
        },
    };
    // Older ABIs read only the fields they know.
    let size = if support.signals_and_abstract_sockets_scoped() {
        size_of::<RulesetAttr>()
    } else if support.abi >= 4 {
        2 * size_of::<u64>()
    } else {
        size_of::<u64>()
    };
    // SAFETY: `attr` is a valid ruleset attribute of `size` bytes.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            &raw const attr,
            size,
            0u32,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own (Landlock makes it close-on-exec).
    Ok(Some(unsafe {
        OwnedFd::from_raw_fd(i32::try_from(fd).expect("fd fits i32"))
    }))
}

/// Enters the ruleset's domain: raw syscall, for the child between clone and exec (it needs
/// `no_new_privs`, set before). Returns the syscall's result.
///
/// # Safety
/// Only a raw syscall; safe to call in the vfork child.
pub unsafe fn restrict_self(ruleset: libc::c_int) -> libc::c_long {
    // SAFETY: a raw syscall on a descriptor.
    unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset, 0u32) }
}

/// What this host leaves open around the wall, one line each: said at start by `run` and
/// the daemon (README "Bypass classes" lists the same).
pub fn host_gaps() -> Vec<String> {
    let mut gaps: Vec<String> = support().missing().into_iter().collect();
    // With non-local binds allowed host-wide, any socket may take a source address the host
    // does not own (no FREEBIND needed, which seccomp refuses): reflection stays possible.
    for (sysctl, path) in [
        (
            "net.ipv4.ip_nonlocal_bind",
            "/proc/sys/net/ipv4/ip_nonlocal_bind",
        ),
        (
            "net.ipv6.ip_nonlocal_bind",
            "/proc/sys/net/ipv6/ip_nonlocal_bind",
        ),
    ] {
        if std::fs::read_to_string(path).is_ok_and(|v| v.trim() != "0") {
            gaps.push(format!(
                "{sysctl} is on: sandboxes can send with source addresses the host does not own"
            ));
        }
    }
    gaps
}
