//! Starts a workload inside its cgroup, as an unprivileged user, with no capabilities.
//!
//! `clone3(CLONE_INTO_CGROUP | CLONE_PIDFD)` puts the child in the sandbox cgroup atomically:
//! there is no moment at which it runs unconfined, and no write to `cgroup.procs` (whose RCU
//! wait costs 14-24 ms). Between clone and exec the child only makes raw syscalls on data
//! prepared beforehand (no allocation), so it is safe whatever the parent's state.
use std::{
    ffi::{CString, OsStr},
    io, mem,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
    ptr,
};

/// Everything the child needs, prepared before `clone3`.
pub struct LaunchSpec {
    /// Resolved path of the program.
    pub program: CString,
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
    pub cwd: CString,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    /// Capabilities kept (bounding, permitted, effective, inheritable, ambient); empty by default.
    pub keep_caps: Vec<u32>,
    /// Descriptors to become the child's stdin, stdout and stderr; `None` inherits the agent's.
    pub stdio: Option<[RawFd; 3]>,
    /// Start a new session: no workload shares the agent's process group or controlling
    /// terminal.
    pub new_session: bool,
    /// The namespaces the workload starts in.
    pub enter: Enter,
    /// `--root`: uid 0 of a user namespace that maps it to `uid` (new: the init creates it
    /// and installs the seccomp programs after; join: the exec enters the sandbox's).
    pub user_namespace: bool,
}

/// Where a workload's PID, mount and IPC namespaces come from.
pub enum Enter {
    /// New ones, with this file-system view built inside them.
    New(crate::view::Plan),
    /// A live sandbox's, through the pidfd of its init (an exec).
    Join(OwnedFd),
}

/// The namespaces a sandbox gets of its own (the network namespace stays the host's: the
/// wall is per cgroup, and the proxy and resolver listen on the host's loopback).
const NEW_NAMESPACES: u64 = (libc::CLONE_NEWPID | libc::CLONE_NEWNS | libc::CLONE_NEWIPC) as u64;

/// A started workload.
pub struct Child {
    pub pid: i32,
    pub pidfd: OwnedFd,
}

/// Where the child failed before its program started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Step {
    SignalMask = 1,
    Groups = 2,
    Gid = 3,
    CapBounding = 4,
    KeepCaps = 5,
    Uid = 6,
    Capset = 7,
    Ambient = 8,
    NoNewPrivs = 9,
    Cwd = 10,
    Exec = 11,
    CloseFds = 12,
    Seccomp = 13,
    Stdio = 14,
    Session = 15,
    Landlock = 16,
    Init = 17,
    View = 18,
    Join = 19,
    UserNamespace = 20,
}

impl Step {
    fn from_u32(v: u32) -> Option<Self> {
        [
            Step::SignalMask,
            Step::Groups,
            Step::Gid,
            Step::CapBounding,
            Step::KeepCaps,
            Step::Uid,
            Step::Capset,
            Step::Ambient,
            Step::NoNewPrivs,
            Step::Cwd,
            Step::Exec,
            Step::CloseFds,
            Step::Seccomp,
            Step::Stdio,
            Step::Session,
            Step::Landlock,
            Step::Init,
            Step::View,
            Step::Join,
            Step::UserNamespace,
        ]
        .into_iter()
        .find(|s| *s as u32 == v)
    }

    fn describe(self) -> &'static str {
        match self {
            Self::SignalMask => "reset the signal mask",
            Self::Groups => "set supplementary groups",
            Self::Gid => "set the group id",
            Self::CapBounding => "drop the capability bounding set",
            Self::KeepCaps => "keep capabilities across setuid",
            Self::Uid => "set the user id",
            Self::Capset => "set capabilities",
            Self::Ambient => "raise ambient capabilities",
            Self::NoNewPrivs => "set no_new_privs",
            Self::Cwd => "enter the working directory",
            Self::Exec => "execute",
            Self::CloseFds => "mark inherited descriptors close-on-exec",
            Self::Seccomp => "install the seccomp filter",
            Self::Stdio => "set up standard input and output",
            Self::Session => "start a new session",
            Self::Landlock => "enter the sandbox's Landlock domain",
            Self::Init => "start the sandbox's init",
            Self::View => "build the sandbox's file-system view at",
            Self::Join => "enter the sandbox's namespaces",
            Self::UserNamespace => "make the sandbox's user namespace (--root)",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("{step_text} {subject}: {source}", step_text = step.describe())]
    Child {
        step: Step,
        subject: String,
        source: io::Error,
    },
    #[error("clone3 into the sandbox cgroup failed: {0}")]
    Clone(#[source] io::Error),
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl LaunchError {
    /// Exit status as `docker run` reports it: 127 not found, 126 cannot execute, 125 ours.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Child {
                step: Step::Exec,
                source,
                ..
            } => match source.raw_os_error() {
                Some(libc::ENOENT) => 127,
                _ => 126,
            },
            _ => 125,
        }
    }
}

/// Finds `command` in `path` (a PATH value) unless it contains a slash.
pub fn resolve_program(command: &OsStr, path: Option<&OsStr>) -> Option<PathBuf> {
    if command.as_bytes().contains(&b'/') {
        return Some(PathBuf::from(command));
    }
    let path = path?;
    path.as_bytes()
        .split(|&b| b == b':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(OsStr::from_bytes(dir)).join(command))
        .find(|candidate| {
            use std::os::unix::fs::PermissionsExt as _;
            candidate
                .metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

// Linux capability ABI v3 (linux/capability.h); not exposed by libc.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
/// linux/sched.h; libc's constant is an overflowing `c_int`.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Highest capability number this kernel knows.
fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63)
}

/// Starts the workload in the cgroup given by `cgroup_fd`.
#[expect(
    clippy::too_many_lines,
    reason = "everything the child touches is prepared here, in one place"
)]
pub fn spawn(spec: &LaunchSpec, cgroup_fd: &OwnedFd) -> Result<Child, LaunchError> {
    // Everything the child touches is prepared here.
    let envp: Vec<*const libc::c_char> = spec
        .envp
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(ptr::null()))
        .collect();
    let last_cap = last_cap();
    let mut caps = [CapData::default(); 2];
    for &cap in &spec.keep_caps {
        let (word, bit) = ((cap / 32) as usize, 1u32 << (cap % 32));
        caps[word].effective |= bit;
        caps[word].permitted |= bit;
        caps[word].inheritable |= bit;
    }
    let keep_mask: u64 = spec.keep_caps.iter().fold(0, |m, &c| m | (1u64 << c));
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let filters = crate::seccomp::programs();
    let seccomp = filters.each_ref().map(|filter| libc::sock_fprog {
        len: u16::try_from(filter.len()).expect("short filter"),
        filter: filter.as_ptr().cast_mut(),
    });
    let ruleset = crate::scoping::ruleset()?;
    let ruleset_fd = ruleset.as_ref().map_or(-1, std::os::fd::AsRawFd::as_raw_fd);
    let init_fd = crate::init::executable()?;
    // A new user namespace is made by the init (the child shares our memory, which
    // unshare(CLONE_NEWUSER) refuses), which then installs the seccomp programs itself.
    let init_userns = spec.user_namespace && matches!(spec.enter, Enter::New(_));
    let seccomp_fd = if init_userns {
        crate::seccomp::programs_fd()?
    } else {
        -1
    };

    let mut pipe = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error().into());
    }
    // SAFETY: fresh fds from pipe2, owned from here on.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(pipe[0]), OwnedFd::from_raw_fd(pipe[1])) };

    // The init (the agent's own binary) runs the program; its arguments name the report
    // pipe, which it hands on to the workload until that execs.
    let init_strings: Vec<CString> = [
        CString::new(crate::init::INIT_NAME).expect("no NUL"),
        CString::new(write_end.as_raw_fd().to_string()).expect("no NUL"),
        CString::new(if init_userns {
            format!("{}:{}", spec.uid, spec.gid)
        } else {
            "-".into()
        })
        .expect("no NUL"),
        CString::new(if init_userns {
            seccomp_fd.to_string()
        } else {
            "-".into()
        })
        .expect("no NUL"),
        spec.program.clone(),
        CString::new("--").expect("no NUL"),
    ]
    .into_iter()
    .chain(spec.argv.iter().cloned())
    .collect();
    let init_argv: Vec<*const libc::c_char> = init_strings
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(ptr::null()))
        .collect();

    let mut pidfd: libc::c_int = -1;
    // The child runs on its own stack while sharing our memory (CLONE_VM), and we are
    // suspended until it has exec'd or exited (CLONE_VFORK): like posix_spawn, this skips
    // copying and tearing down our page tables, which was most of a sandbox's start time.
    let mut stack = vec![0u8; CHILD_STACK_BYTES];
    let stack_base = stack.as_mut_ptr() as u64;
    // SAFETY: zeroed clone_args is a valid "no options" value; fields set below.
    let mut clone_args: libc::clone_args = unsafe { mem::zeroed() };
    clone_args.flags =
        (libc::CLONE_PIDFD | libc::CLONE_VM | libc::CLONE_VFORK) as u64 | CLONE_INTO_CGROUP;
    if matches!(spec.enter, Enter::New(_)) {
        clone_args.flags |= NEW_NAMESPACES;
    }
    clone_args.pidfd = ptr::addr_of_mut!(pidfd) as u64;
    clone_args.exit_signal = libc::SIGCHLD as u64;
    clone_args.cgroup = u64::try_from(cgroup_fd.as_raw_fd()).expect("fd is non-negative");
    // The kernel starts the child with its stack pointer at stack + stack_size, which must
    // be 16-byte aligned for the call in the trampoline.
    let aligned_top = (stack_base + CHILD_STACK_BYTES as u64) & !15;
    clone_args.stack = stack_base;
    clone_args.stack_size = aligned_top - stack_base;
    let mut child_args = ChildArgs {
        spec,
        init_argv: &init_argv,
        init_fd,
        envp: &envp,
        last_cap,
        keep_mask,
        header: &mut header,
        caps: &mut caps,
        seccomp: &seccomp,
        ruleset_fd,
        report_fd: write_end.as_raw_fd(),
        seccomp_fd,
    };
    // SAFETY: the child only makes raw syscalls on memory prepared above (which outlives it:
    // we are suspended until it execs or exits) and never returns into our frames.
    let ret = unsafe { clone3_vfork(&raw mut clone_args, ptr::from_mut(&mut child_args).cast()) };
    drop(stack);
    if ret < 0 {
        return Err(LaunchError::Clone(io::Error::from_raw_os_error(
            i32::try_from(-ret).unwrap_or(libc::EINVAL),
        )));
    }
    drop(write_end);
    let pid = i32::try_from(ret).expect("pid fits i32");
    // SAFETY: CLONE_PIDFD stored a fresh fd that we now own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    let child = Child { pid, pidfd };

    // The pipe closes on a successful exec (EOF); otherwise the child reports step and errno.
    let Some((step, errno, detail)) = read_report(&read_end)? else {
        return Ok(child);
    };

    // Reap the failed child; its own status (125) says nothing the report does not.
    let _ = reap(&child);
    let step = Step::from_u32(step).unwrap_or(Step::Exec);
    let subject = match step {
        Step::Exec => spec.program.to_string_lossy().into_owned(),
        Step::Cwd => format!("{} as uid {}", spec.cwd.to_string_lossy(), spec.uid),
        Step::Uid => spec.uid.to_string(),
        Step::Gid => spec.gid.to_string(),
        Step::View => match &spec.enter {
            Enter::New(plan) => plan
                .ops
                .get(detail as usize)
                .map(crate::view::Op::subject)
                .unwrap_or_default(),
            Enter::Join(_) => String::new(),
        },
        _ => String::new(),
    };
    Err(LaunchError::Child {
        step,
        subject,
        source: io::Error::from_raw_os_error(errno),
    })
}

/// Bytes of a failure report: step, errno, detail (the view step that failed).
pub const REPORT_BYTES: usize = 12;

/// Reads the child's failure report: `None` at EOF (the exec succeeded and closed the pipe),
/// else the step that failed, its errno and a detail.
fn read_report(read_end: &OwnedFd) -> io::Result<Option<(u32, i32, u32)>> {
    let mut report = [0u8; REPORT_BYTES];
    let mut got = 0;
    while got < report.len() {
        // SAFETY: reading into our buffer.
        let n = unsafe {
            libc::read(
                read_end.as_raw_fd(),
                report[got..].as_mut_ptr().cast(),
                report.len() - got,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if n == 0 {
            break;
        }
        got += usize::try_from(n).expect("non-negative");
    }
    if got == 0 {
        return Ok(None);
    }
    let step = u32::from_ne_bytes(report[..4].try_into().expect("4 bytes"));
    let errno = i32::from_ne_bytes(report[4..8].try_into().expect("4 bytes"));
    let detail = u32::from_ne_bytes(report[8..].try_into().expect("4 bytes"));
    Ok(Some((step, errno, detail)))
}

/// Stack of the child between clone3 and execve.
const CHILD_STACK_BYTES: usize = 64 * 1024;

/// What the child needs, passed through the trampoline as one pointer.
struct ChildArgs<'a> {
    spec: &'a LaunchSpec,
    init_argv: &'a [*const libc::c_char],
    init_fd: RawFd,
    envp: &'a [*const libc::c_char],
    last_cap: u32,
    keep_mask: u64,
    header: &'a mut CapHeader,
    caps: &'a mut [CapData; 2],
    seccomp: &'a [libc::sock_fprog; 2],
    /// The workload's Landlock ruleset (`scoping`), -1 where Landlock is unavailable.
    ruleset_fd: RawFd,
    report_fd: RawFd,
    /// The seccomp programs for an init that installs them itself, else -1.
    seccomp_fd: RawFd,
}

/// Entry of the child on its own stack.
extern "C" fn child_entry(arg: *mut libc::c_void) -> ! {
    // SAFETY: `arg` is the `ChildArgs` of `spawn`, alive while the parent is suspended.
    let a = unsafe { &mut *arg.cast::<ChildArgs<'_>>() };
    // SAFETY: see `child_main`.
    unsafe {
        child_main(
            a.spec,
            a.init_argv,
            a.init_fd,
            a.envp,
            a.last_cap,
            a.keep_mask,
            a.header,
            a.caps,
            a.seccomp,
            a.ruleset_fd,
            a.report_fd,
            a.seccomp_fd,
        )
    }
}

/// `clone3` whose child calls `child_entry(arg)` on the stack given in `args`. A raw
/// trampoline is needed because with a new stack the child cannot return into Rust frames;
/// `fn` and `arg` travel in r12/r13, which the kernel copies into the child. Returns the
/// child's pid, or a negative errno.
#[cfg(target_arch = "x86_64")]
unsafe fn clone3_vfork(args: *mut libc::clone_args, arg: *mut libc::c_void) -> i64 {
    let ret: i64;
    // SAFETY: the caller provides valid clone_args with a stack; the child branch never
    // returns (child_entry execs or exits).
    unsafe {
        core::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            // Child: fresh stack, no frame to return to.
            "xor ebp, ebp",
            "mov rdi, r13",
            "call r12",
            "ud2",
            "2:",
            inlateout("rax") libc::SYS_clone3 => ret,
            in("rdi") args,
            in("rsi") mem::size_of::<libc::clone_args>(),
            in("r12") child_entry as extern "C" fn(*mut libc::c_void) -> !,
            in("r13") arg,
            lateout("rcx") _,
            lateout("r11") _,
        );
    }
    ret
}

/// The child between clone3 and execve: raw syscalls only. It shares the agent's memory
/// (`CLONE_VM`), so it writes nothing but its own stack and errno, and calls no libc function
/// that takes locks or keeps state (set*id go straight to the kernel: glibc's wrappers
/// would try to synchronise threads the child does not have).
#[allow(clippy::too_many_arguments)]
#[expect(
    clippy::too_many_lines,
    reason = "one straight sequence of raw syscalls between clone3 and execve"
)]
unsafe fn child_main(
    spec: &LaunchSpec,
    init_argv: &[*const libc::c_char],
    init_fd: RawFd,
    envp: &[*const libc::c_char],
    last_cap: u32,
    keep_mask: u64,
    header: &mut CapHeader,
    caps: &mut [CapData; 2],
    seccomp: &[libc::sock_fprog; 2],
    ruleset_fd: RawFd,
    report_fd: RawFd,
    seccomp_fd: RawFd,
) -> ! {
    unsafe {
        let fail_at = |step: Step, detail: u32| -> ! {
            let errno = *libc::__errno_location();
            let mut msg = [0u8; REPORT_BYTES];
            msg[..4].copy_from_slice(&(step as u32).to_ne_bytes());
            msg[4..8].copy_from_slice(&errno.to_ne_bytes());
            msg[8..].copy_from_slice(&detail.to_ne_bytes());
            libc::write(report_fd, msg.as_ptr().cast(), msg.len());
            libc::_exit(125);
        };
        let fail = |step: Step| -> ! { fail_at(step, 0) };
        // The agent's signal handlers are its code on its memory, which we share until the
        // exec: every signal goes back to its default before any is unblocked (as
        // posix_spawn does).
        for sig in 1..=64 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        // A crash of the workload starts no core dump helper (with `core_pattern` a pipe,
        // the host runs it as root on the workload's memory); 1 is the limit at which the
        // kernel skips even a pipe.
        let core = libc::rlimit {
            rlim_cur: 1,
            rlim_max: 1,
        };
        if libc::setrlimit(libc::RLIMIT_CORE, &raw const core) != 0 {
            fail(Step::SignalMask);
        }
        // The agent blocks signals to read them from a signalfd, and Rust ignores SIGPIPE;
        // the workload gets neither.
        let mut empty: libc::sigset_t = mem::zeroed();
        libc::sigemptyset(&raw mut empty);
        if libc::sigprocmask(libc::SIG_SETMASK, &raw const empty, ptr::null_mut()) != 0 {
            fail(Step::SignalMask);
        }
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        if spec.new_session && libc::setsid() < 0 {
            fail(Step::Session);
        }
        if let Some(stdio) = spec.stdio {
            // dup2 clears close-on-exec on the copies, so they survive the exec below.
            for (target, fd) in [0, 1, 2].into_iter().zip(stdio) {
                if libc::dup2(fd, target) < 0 {
                    fail(Step::Stdio);
                }
            }
        }
        // Descriptors the agent inherited without close-on-exec must not reach the workload.
        if libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        ) != 0
        {
            fail(Step::CloseFds);
        }
        // The report pipe goes on to the init, which hands it to the workload.
        if libc::fcntl(report_fd, libc::F_SETFD, 0) != 0 {
            fail(Step::CloseFds);
        }
        if seccomp_fd >= 0 && libc::fcntl(seccomp_fd, libc::F_SETFD, 0) != 0 {
            fail(Step::CloseFds);
        }
        // Still root: build the view in the new mount namespace, or enter the sandbox's.
        match &spec.enter {
            Enter::New(plan) => {
                if let Err(i) = crate::view::apply(plan) {
                    fail_at(Step::View, u32::try_from(i).unwrap_or(u32::MAX));
                }
            }
            Enter::Join(pidfd) => {
                if libc::setns(
                    pidfd.as_raw_fd(),
                    libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWIPC,
                ) != 0
                {
                    fail(Step::Join);
                }
            }
        }
        if libc::syscall(libc::SYS_setgroups, spec.groups.len(), spec.groups.as_ptr()) != 0 {
            fail(Step::Groups);
        }
        if libc::syscall(libc::SYS_setresgid, spec.gid, spec.gid, spec.gid) != 0 {
            fail(Step::Gid);
        }
        for cap in 0..=last_cap {
            if keep_mask & (1u64 << cap) == 0
                && libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) != 0
            {
                fail(Step::CapBounding);
            }
        }
        if keep_mask != 0 && libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0 {
            fail(Step::KeepCaps);
        }
        if libc::syscall(libc::SYS_setresuid, spec.uid, spec.uid, spec.uid) != 0 {
            fail(Step::Uid);
        }
        if libc::syscall(libc::SYS_capset, ptr::from_mut(header), caps.as_mut_ptr()) != 0 {
            fail(Step::Capset);
        }
        for cap in 0..=last_cap {
            if keep_mask & (1u64 << cap) != 0
                && libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::c_ulong::from(libc::PR_CAP_AMBIENT_RAISE.cast_unsigned()),
                    libc::c_ulong::from(cap),
                    0,
                    0,
                ) != 0
            {
                fail(Step::Ambient);
            }
        }
        // An exec into a --root sandbox enters its user namespace as the sandbox's uid, its
        // owner (which needs no capability of the host's).
        if spec.user_namespace
            && let Enter::Join(pidfd) = &spec.enter
            && libc::setns(pidfd.as_raw_fd(), libc::CLONE_NEWUSER) != 0
        {
            fail(Step::Join);
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            fail(Step::NoNewPrivs);
        }
        if ruleset_fd >= 0 && crate::scoping::restrict_self(ruleset_fd) != 0 {
            fail(Step::Landlock);
        }
        // (With a seccomp_fd, the init installs them after making the user namespace.)
        if seccomp_fd < 0 {
            for program in seccomp {
                if libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    ptr::from_ref(program),
                    0,
                    0,
                ) != 0
                {
                    fail(Step::Seccomp);
                }
            }
        }
        if libc::chdir(spec.cwd.as_ptr()) != 0 {
            fail(Step::Cwd);
        }
        libc::syscall(
            libc::SYS_execveat,
            init_fd,
            c"".as_ptr(),
            init_argv.as_ptr(),
            envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        );
        fail(Step::Init)
    }
}

/// How a child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    Signaled(i32),
}

impl ExitStatus {
    /// Shell convention: the exit code, or 128 + the signal number.
    pub fn code(self) -> i32 {
        match self {
            Self::Exited(c) => c,
            Self::Signaled(s) => 128 + s,
        }
    }
}

/// Reaps the child (it must have exited: its pidfd polled readable).
pub fn reap(child: &Child) -> io::Result<ExitStatus> {
    // SAFETY: zeroed siginfo is valid output space.
    let mut info: libc::siginfo_t = unsafe { mem::zeroed() };
    loop {
        // SAFETY: waitid on our own pidfd.
        let r = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                child.pidfd.as_raw_fd().cast_unsigned(),
                &raw mut info,
                libc::WEXITED,
            )
        };
        if r == 0 {
            break;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    // SAFETY: waitid filled a CLD_* record.
    let status = unsafe { info.si_status() };
    Ok(if info.si_code == libc::CLD_EXITED {
        ExitStatus::Exited(status)
    } else {
        ExitStatus::Signaled(status)
    })
}

/// Sends a signal through the pidfd (no pid reuse race).
/// Sends `sig` to the workload's process group (it leads one, in its own session), as a
/// terminal's Ctrl-C would have reached it and its children; to the workload alone if it
/// has no group of its own. The workload is not reaped yet, so its pid still names it.
pub fn signal_group(child: &Child, sig: i32) {
    // SAFETY: getpgid/killpg with our own unreaped child's pid.
    unsafe {
        if child.pid > 0 && libc::getpgid(child.pid) == child.pid {
            libc::killpg(child.pid, sig);
            return;
        }
    }
    signal(child, sig);
}

pub fn signal(child: &Child, sig: i32) {
    // SAFETY: pidfd_send_signal on our own pidfd.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            child.pidfd.as_raw_fd(),
            sig,
            ptr::null::<libc::siginfo_t>(),
            0u32,
        );
    }
}
