//! A user namespace that maps one id to the sandbox's own, for idmapped layers: a root
//! directory's or an image's files owned by uid/gid 0 (or by a non-root image `User`) show, in
//! the sandbox's view, as owned by the sandbox's own uid/gid (root of its user namespace with
//! `--root`), so that its user may change them in its private writable layer. Other owners
//! show as `nobody`.
use std::{
    fs,
    io::{self, Write as _},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

/// `inside` as `outside`; a non-root `inside` keeps root as root (the agent still makes the
/// view's files in root's directories, and the sandbox's user may not change them).
fn map(inside: u32, outside: u32) -> String {
    if inside == 0 {
        format!("0 {outside} 1\n")
    } else {
        format!("0 0 1\n{inside} {outside} 1\n")
    }
}

/// A user namespace where `inside` (uid, gid) is `uid` and `gid`, held by its descriptor:
/// made by a child born in it, which waits until the maps are written and the namespace
/// opened.
pub fn mapping_userns(inside: (u32, u32), uid: u32, gid: u32) -> io::Result<OwnedFd> {
    let mut ends = [0; 2];
    // SAFETY: pipe2 into a two-element array.
    if unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh descriptors we own.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1])) };
    // SAFETY: zeroed clone_args is a valid "no options" value; fields set below.
    let mut args: libc::clone_args = unsafe { std::mem::zeroed() };
    args.flags = libc::CLONE_NEWUSER as u64;
    args.exit_signal = libc::SIGCHLD as u64;
    // SAFETY: clone3 without CLONE_VM is a fork; the child only reads a pipe and exits
    // (async-signal-safe calls), whatever threads the agent has.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &raw const args,
            std::mem::size_of::<libc::clone_args>(),
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
            .write_all(map(inside.0, uid).as_bytes())?;
        fs::OpenOptions::new()
            .write(true)
            .open(format!("{proc}/gid_map"))?
            .write_all(map(inside.1, gid).as_bytes())?;
        Ok::<_, io::Error>(OwnedFd::from(fs::File::open(format!("{proc}/ns/user"))?))
    })();
    drop(write_end);
    let mut status = 0;
    // SAFETY: reaping our own child.
    unsafe { libc::waitpid(i32::try_from(pid).unwrap_or(-1), &raw mut status, 0) };
    opened
}
