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
//! Arguments: `REPORT_FD PROGRAM -- ARGV0 ARGS...`; the environment is the workload's. A
//! failed exec is written to REPORT_FD as the launch child writes its own failures (step,
//! errno, detail), which is how `run` tells "command not found" (127) from the rest.
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
    fn prctl(option: c_int, arg2: *const c_char, arg3: usize, arg4: usize, arg5: usize) -> c_int;
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

#[unsafe(no_mangle)]
pub extern "C" fn main(argc: c_int, argv: *const *const c_char) -> c_int {
    // SAFETY: argv holds argc strings and a null, as the kernel laid them out.
    unsafe {
        if argc < 5 || !is_dashes(*argv.add(3)) {
            return 125;
        }
        let Some(report_fd) = parse_fd(*argv.add(1)) else {
            return 125;
        };
        let program = *argv.add(2);
        // `ps` shows this name, not the memfd's.
        prctl(PR_SET_NAME, c"sandbox-init".as_ptr(), 0, 0, 0);
        let workload_argv = argv.add(4);

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
            let mut msg = [0u8; 12];
            msg[..4].copy_from_slice(&STEP_EXEC.to_ne_bytes());
            msg[4..8].copy_from_slice(&errno.to_ne_bytes());
            write(report_fd, msg.as_ptr().cast(), msg.len());
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

unsafe fn is_dashes(arg: *const c_char) -> bool {
    // SAFETY: a NUL-terminated argument string.
    unsafe { *arg == b'-' as c_char && *arg.add(1) == b'-' as c_char && *arg.add(2) == 0 }
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
