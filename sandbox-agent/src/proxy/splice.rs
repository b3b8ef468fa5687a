//! Forwarding: bytes both ways between the sandbox's connection and the upstream one, with
//! `splice(2)` through a pipe so that payload never enters user space.
//!
//! Hand-rolled on tokio's readiness API because a userspace copy (`tokio::io::copy`) moves
//! every byte through a buffer twice; see BENCHMARKS.md for the measured difference.
use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
};

use tokio::{io::Interest, net::TcpStream};

/// Bytes moved per `splice` call at most; also the pipe size asked for.
const CHUNK: usize = 1 << 20;
const PIPE_SIZE: libc::c_int = 1 << 20;

/// Copies both ways until both directions have seen end-of-stream (each end is passed on as
/// a write shutdown) or one fails. Returns bytes moved `(a → b, b → a)`.
pub async fn bidirectional(a: &TcpStream, b: &TcpStream) -> io::Result<(u64, u64)> {
    let (ab, ba) = tokio::join!(one_way(a, b), one_way(b, a));
    match (ab, ba) {
        (Ok(x), Ok(y)) => Ok((x, y)),
        (Err(e), _) | (_, Err(e)) => Err(e),
    }
}

async fn one_way(from: &TcpStream, to: &TcpStream) -> io::Result<u64> {
    let (pipe_r, pipe_w) = pipe()?;
    let mut total = 0u64;
    loop {
        let n = from
            .async_io(Interest::READABLE, || {
                splice(from.as_raw_fd(), pipe_w.as_raw_fd(), CHUNK)
            })
            .await;
        let n = match n {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                // The other direction must not wait forever on a peer that is gone.
                shutdown_both(from, to);
                return Err(e);
            }
        };
        let mut left = n;
        while left > 0 {
            let m = to
                .async_io(Interest::WRITABLE, || {
                    splice(pipe_r.as_raw_fd(), to.as_raw_fd(), left)
                })
                .await;
            match m {
                Ok(0) => {
                    shutdown_both(from, to);
                    return Err(io::ErrorKind::WriteZero.into());
                }
                Ok(m) => left -= m,
                Err(e) => {
                    shutdown_both(from, to);
                    return Err(e);
                }
            }
        }
        total += n as u64;
    }
    // End of stream from `from`: pass it on, keep the other direction going.
    shutdown(to, libc::SHUT_WR);
    Ok(total)
}

fn shutdown(s: &TcpStream, how: libc::c_int) {
    // SAFETY: shutdown on a socket we hold; errors (already closed) do not matter here.
    unsafe { libc::shutdown(s.as_raw_fd(), how) };
}

fn shutdown_both(a: &TcpStream, b: &TcpStream) {
    shutdown(a, libc::SHUT_RDWR);
    shutdown(b, libc::SHUT_RDWR);
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: both fds are open for the duration of the call; null offsets for pipes/sockets.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both are fresh descriptors that we now own.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // A larger pipe means fewer syscalls per byte; the default 64 KiB is used if refused
    // (fs.pipe-max-size).
    // SAFETY: fcntl on a descriptor we own.
    unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
    Ok((r, w))
}
