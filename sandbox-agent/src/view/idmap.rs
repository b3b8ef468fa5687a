//! A user namespace that maps one id to the sandbox's own, for idmapped layers: a root
//! directory's or an image's files owned by uid/gid 0 show, in the sandbox's view, as owned by
//! the sandbox's own uid/gid (root of its user namespace with `--root`), so that its user may
//! change them in its private writable layer. Other owners show as `nobody`.
use std::{
    fs,
    io::{self, Write as _},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

/// linux/sched.h `struct clone_args` (the fields up to `tls`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
}

/// A user namespace where `0` is `uid` (and group `0` is `gid`), held by its descriptor: made
/// by a child born in it, which waits until the maps are written and the namespace opened.
pub fn mapping_userns(uid: u32, gid: u32) -> io::Result<OwnedFd> {
    let mut ends = [0; 2];
    // SAFETY: pipe2 into a two-element array.
    if unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh descriptors we own.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1])) };
    let args = CloneArgs {
        flags: libc::CLONE_NEWUSER as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 without CLONE_VM is a fork; the child only reads a pipe and exits
    // (async-signal-safe calls), whatever threads the agent has.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &raw const args,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: in the child: wait for the parent to be done (EOF), then leave.
        unsafe {
            let mut byte = 0u8;
            libc::close(write_end.as_raw_fd());
            libc::read(read_end.as_raw_fd(), (&raw mut byte).cast(), 1);
            libc::_exit(0);
        }
    }
    drop(read_end);
    let opened = (|| {
        let proc = format!("/proc/{pid}");
        fs::OpenOptions::new()
            .write(true)
            .open(format!("{proc}/uid_map"))?
            .write_all(format!("0 {uid} 1\n").as_bytes())?;
        fs::OpenOptions::new()
            .write(true)
            .open(format!("{proc}/gid_map"))?
            .write_all(format!("0 {gid} 1\n").as_bytes())?;
        Ok::<_, io::Error>(OwnedFd::from(fs::File::open(format!("{proc}/ns/user"))?))
    })();
    drop(write_end);
    let mut status = 0;
    // SAFETY: reaping our own child.
    unsafe { libc::waitpid(i32::try_from(pid).unwrap_or(-1), &raw mut status, 0) };
    opened
}
