//! The sandbox's init (`init/main.rs`, built by `build.rs`): embedded in the agent and
//! started from a sealed memfd, so no path of the host need be visible in a sandbox's view
//! and an upgrade on disk does not change what runs.
use std::{
    io::Write as _,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
};

/// `argv[0]` of the init (what `ps` shows in a sandbox).
pub const INIT_NAME: &str = "sandbox-agent-init";

static INIT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/sandbox-init"));

// linux/memfd.h and fcntl.h; MFD_EXEC (6.3) makes the executable intent explicit where
// `vm.memfd_noexec` would otherwise refuse it.
const MFD_EXEC: libc::c_uint = 0x10;

/// The init's executable, made once per agent process: a descriptor for `execveat`.
pub fn executable() -> std::io::Result<RawFd> {
    static EXE: std::sync::OnceLock<OwnedFd> = std::sync::OnceLock::new();
    if let Some(fd) = EXE.get() {
        return Ok(fd.as_raw_fd());
    }
    let name = c"sandbox-agent-init";
    let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // SAFETY: memfd_create with a static name; a kernel without MFD_EXEC answers EINVAL.
    let mut fd = unsafe { libc::memfd_create(name.as_ptr(), flags | MFD_EXEC) };
    if fd < 0 {
        // SAFETY: as above.
        fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    }
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut file = std::fs::File::from(fd);
    file.write_all(INIT)?;
    // Sealed: nothing can change it between two sandboxes' starts.
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on our own descriptor.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(EXE.get_or_init(|| file.into()).as_raw_fd())
}
