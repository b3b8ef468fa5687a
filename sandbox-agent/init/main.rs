//! The first process of every sandbox (and of every exec into one): a small static program
//! that the agent embeds and starts from a sealed memfd, after the launch child entered the
//! sandbox's namespaces and dropped every privilege. Built by `build.rs` with `rustc` alone
//! (no crates): starting it costs a fraction of starting the agent's own 15 MB binary.
//!
//! A workload that is pid 1 of its PID namespace ignores every signal it has no handler
//! for (the kernel protects namespace inits), so a forwarded SIGTERM or Ctrl-C would do
//! nothing, and orphans it never waits for would pile up as zombies. This init starts the
//! workload as its only child in a process group of its own, passes every signal it gets on
//! to that group, reaps whatever is reparented to it, and exits with the workload's status
//! (128 + N for a signal: an init cannot die of its own signal) when the workload ends; the
//! kernel then kills what is left in the namespace.
//!
//! It runs with the workload's uid, seccomp filter and Landlock domain: it has nothing the
//! workload does not have.
//!
//! Arguments: `REPORT_FD USERNS SECCOMP_FD PROGRAM -- ARGV0 ARGS...`; the environment is the
//! workload's. A failed exec is written to REPORT_FD as the launch child writes its own
//! failures (step, errno, detail), which is how `run` tells "command not found" (127) from
//! the rest.
//!
//! `--root` sandboxes: USERNS is `UID:GID` (else `-`), and the init makes the sandbox's user
//! namespace, mapping root to those host ids alone, before anything else (the launch child
//! cannot: it shares the agent's memory, and `unshare(CLONE_NEWUSER)` refuses that). It then
//! installs the seccomp programs read from SECCOMP_FD (the launch child installs them itself
//! otherwise), which refuse every namespace from here on.
#![no_main]

use core::ffi::{c_char, c_int, c_void};

/// glibc's `sigset_t`: 1024 bits.
#[repr(C)]
struct SigSet([u64; 16]);
/// `siginfo_t`: 128 bytes; only the signal number (returned) is used.
#[repr(C)]
struct SigInfo([u64; 16]);

unsafe extern "C" {
    fn fork() -> c_int;
    fn execve(path: *const c_char, argv: *const *const c_char, envp: *const *const c_char)
    -> c_int;
    fn sigfillset(set: *mut SigSet) -> c_int;
    fn sigprocmask(how: c_int, set: *const SigSet, old: *mut SigSet) -> c_int;
    fn sigwaitinfo(set: *const SigSet, info: *mut SigInfo) -> c_int;
    fn waitpid(pid: c_int, status: *mut c_int, options: c_int) -> c_int;
    fn kill(pid: c_int, sig: c_int) -> c_int;
    fn setpgid(pid: c_int, pgid: c_int) -> c_int;
    fn fcntl(fd: c_int, cmd: c_int, arg: c_int) -> c_int;
    fn write(fd: c_int, buf: *const c_void, n: usize) -> isize;
    fn close(fd: c_int) -> c_int;
    fn _exit(code: c_int) -> !;
    fn __errno_location() -> *mut c_int;
    fn prctl(option: c_int, arg2: usize, arg3: usize, arg4: usize, arg5: usize) -> c_int;
    fn unshare(flags: c_int) -> c_int;
    fn open(path: *const c_char, flags: c_int, ...) -> c_int;
    fn pread(fd: c_int, buf: *mut c_void, n: usize, offset: i64) -> isize;
    static environ: *const *const c_char;
}

const SIG_SETMASK: c_int = 2;
const SIGCHLD: c_int = 17;
const WNOHANG: c_int = 1;
const F_SETFD: c_int = 2;
const FD_CLOEXEC: c_int = 1;
const ENOENT: c_int = 2;
/// The launch report's step for a failed exec (`launch::Step::Exec`).
const STEP_EXEC: u32 = 11;
const PR_SET_NAME: c_int = 15;
const PR_SET_SECCOMP: c_int = 22;
const SECCOMP_MODE_FILTER: usize = 2;
const CLONE_NEWUSER: c_int = 0x1000_0000;
const O_WRONLY: c_int = 1;
const O_CLOEXEC: c_int = 0o2_000_000;
/// Launch report steps of the init's own set-up (`launch::Step`).
const STEP_USERNS: u32 = 20;
const STEP_SECCOMP: u32 = 13;

/// `struct sock_fprog`.
#[repr(C)]
struct SockFprog {
    len: u16,
    filter: *const u64,
}

/// Room for both seccomp programs and their lengths (the kernel takes at most 4096
/// instructions each).
static mut PROGRAMS: [u64; 8200] = [0; 8200];

#[unsafe(no_mangle)]
pub extern "C" fn main(argc: c_int, argv: *const *const c_char) -> c_int {
    // SAFETY: argv holds argc strings and a null, as the kernel laid them out.
    unsafe {
        if argc < 7 || !is_dashes(*argv.add(5)) {
            return 125;
        }
        let Some(report_fd) = parse_fd(*argv.add(1)) else {
            return 125;
        };
        let program = *argv.add(4);
        // `ps` shows this name, not the memfd's.
        prctl(PR_SET_NAME, c"sandbox-init".as_ptr() as usize, 0, 0, 0);
        let workload_argv = argv.add(6);
        let userns = parse_ids(*argv.add(2));
        // The launch child leaves seccomp to the init only with a user namespace to make:
        // then a seccomp descriptor must come too (fail closed).
        if userns.is_some() && parse_fd(*argv.add(3)).is_none() {
            report(report_fd, STEP_SECCOMP);
            _exit(125);
        }
        if let Some(ids) = userns {
            if !enter_user_namespace(ids) {
                report(report_fd, STEP_USERNS);
                _exit(125);
            }
        }
        if let Some(fd) = parse_fd(*argv.add(3)) {
            let ok = install_seccomp(fd);
            close(fd);
            if !ok {
                report(report_fd, STEP_SECCOMP);
                _exit(125);
            }
        }

        let mut all = SigSet([0; 16]);
        sigfillset(&raw mut all);
        let mut old = SigSet([0; 16]);
        sigprocmask(SIG_SETMASK, &raw const all, &raw mut old);
        let workload = fork();
        if workload < 0 {
            return 125;
        }
        if workload == 0 {
            // Its own process group: signals go to the group, as a terminal sends them to
            // a job.
            setpgid(0, 0);
            sigprocmask(SIG_SETMASK, &raw const old, core::ptr::null_mut());
            fcntl(report_fd, F_SETFD, FD_CLOEXEC);
            execve(program, workload_argv, environ);
            let errno = *__errno_location();
            report(report_fd, STEP_EXEC);
            _exit(if errno == ENOENT { 127 } else { 126 });
        }
        // Both sides set the group, so a signal right after the fork finds it.
        setpgid(workload, workload);
        // The launcher reads the report pipe until every writer is gone: from here on the
        // workload's exec (close-on-exec) or its failure report ends it.
        close(report_fd);
        supervise(workload, &all)
    }
}

/// Forwards signals to the workload's group and reaps children until the workload ends.
unsafe fn supervise(workload: c_int, all: &SigSet) -> c_int {
    unsafe {
        loop {
            // Reap first: the workload may have ended before its SIGCHLD was waited for.
            loop {
                let mut status: c_int = 0;
                let pid = waitpid(-1, &raw mut status, WNOHANG);
                if pid <= 0 {
                    break;
                }
                if pid == workload {
                    let sig = status & 0x7f;
                    return if sig == 0 {
                        (status >> 8) & 0xff
                    } else {
                        128 + sig
                    };
                }
            }
            let mut info = SigInfo([0; 16]);
            let sig = sigwaitinfo(all, &raw mut info);
            if sig <= 0 || sig == SIGCHLD {
                continue;
            }
            if kill(-workload, sig) != 0 {
                kill(workload, sig);
            }
        }
    }
}

/// Writes a launch failure report (step, errno, detail 0).
unsafe fn report(fd: c_int, step: u32) {
    // SAFETY: errno of this thread; a write of our own buffer.
    unsafe {
        let errno = *__errno_location();
        let mut msg = [0u8; 12];
        msg[..4].copy_from_slice(&step.to_ne_bytes());
        msg[4..8].copy_from_slice(&errno.to_ne_bytes());
        write(fd, msg.as_ptr().cast(), msg.len());
    }
}

/// A user namespace of our own in which root is the host's `uid`/`gid` (ours) and nothing
/// else is mapped: a single mapping of one's own ids needs no capability of the host's.
unsafe fn enter_user_namespace((uid, gid): (u32, u32)) -> bool {
    // SAFETY: plain syscalls on our own process and buffers.
    unsafe {
        if unshare(CLONE_NEWUSER) != 0 {
            return false;
        }
        let mut line = [0u8; 32];
        write_file(c"/proc/self/setgroups", b"deny")
            && write_file(c"/proc/self/uid_map", map_line(&mut line, uid))
            && write_file(c"/proc/self/gid_map", map_line(&mut line, gid))
    }
}

/// `0 ID 1\n` in `buf`.
fn map_line(buf: &mut [u8; 32], id: u32) -> &[u8] {
    buf[..2].copy_from_slice(b"0 ");
    let mut digits = [0u8; 10];
    let (mut n, mut len) = (id, 0);
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        buf[2 + i] = digits[len - 1 - i];
    }
    buf[2 + len..2 + len + 3].copy_from_slice(b" 1\n");
    &buf[..2 + len + 3]
}

unsafe fn write_file(path: &core::ffi::CStr, content: &[u8]) -> bool {
    // SAFETY: open/write/close of a proc file.
    unsafe {
        let fd = open(path.as_ptr(), O_WRONLY | O_CLOEXEC);
        if fd < 0 {
            return false;
        }
        let n = write(fd, content.as_ptr().cast(), content.len());
        close(fd);
        n == content.len() as isize
    }
}

/// Reads `[u32 len0][u32 len1][instructions]` from `fd` and installs both programs.
unsafe fn install_seccomp(fd: c_int) -> bool {
    // SAFETY: the init is single-threaded; PROGRAMS is written here only, then read by the
    // kernel during prctl.
    unsafe {
        let buf = &raw mut PROGRAMS;
        let bytes = buf.cast::<u8>();
        let cap = core::mem::size_of::<[u64; 8200]>();
        let mut got = 0usize;
        loop {
            // At an offset of our own: the descriptor's is shared with every launch.
            let n = pread(fd, bytes.add(got).cast(), cap - got, got as i64);
            if n < 0 {
                return false;
            }
            if n == 0 {
                break;
            }
            got += n as usize;
            if got == cap {
                return false;
            }
        }
        if got < 8 {
            return false;
        }
        let words = buf.cast::<u32>();
        let lens = [*words as usize, *words.add(1) as usize];
        if 8 + (lens[0] + lens[1]) * 8 != got {
            return false;
        }
        // The instructions start after the two lengths, one u64 in.
        let mut at = (buf.cast::<u64>()).add(1);
        for len in lens {
            let program = SockFprog {
                len: len as u16,
                filter: at,
            };
            if prctl(
                PR_SET_SECCOMP,
                SECCOMP_MODE_FILTER,
                (&raw const program) as usize,
                0,
                0,
            ) != 0
            {
                return false;
            }
            at = at.add(len);
        }
        true
    }
}

unsafe fn is_dashes(arg: *const c_char) -> bool {
    // SAFETY: a NUL-terminated argument string.
    unsafe { *arg == b'-' as c_char && *arg.add(1) == b'-' as c_char && *arg.add(2) == 0 }
}

/// `UID:GID`, or `None` for `-`.
unsafe fn parse_ids(arg: *const c_char) -> Option<(u32, u32)> {
    let mut ids = [0u32; 2];
    let mut which = 0;
    let mut digits = 0;
    // SAFETY: a NUL-terminated argument string.
    unsafe {
        let mut i = 0;
        while *arg.add(i) != 0 {
            let d = *arg.add(i) as u8;
            if d == b':' && which == 0 && digits > 0 {
                which = 1;
                digits = 0;
            } else if d.is_ascii_digit() && digits < 10 {
                ids[which] = ids[which].checked_mul(10)?.checked_add(u32::from(d - b'0'))?;
                digits += 1;
            } else {
                return None;
            }
            i += 1;
        }
    }
    (which == 1 && digits > 0).then_some((ids[0], ids[1]))
}

unsafe fn parse_fd(arg: *const c_char) -> Option<c_int> {
    let mut fd: c_int = 0;
    let mut i = 0;
    // SAFETY: a NUL-terminated argument string.
    unsafe {
        while *arg.add(i) != 0 {
            let d = *arg.add(i) as u8;
            if !d.is_ascii_digit() || i > 8 {
                return None;
            }
            fd = fd * 10 + c_int::from(d - b'0');
            i += 1;
        }
    }
    (i > 0).then_some(fd)
}
