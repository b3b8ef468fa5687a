//! The steps a view is built of, and the launch child's runner of them: raw syscalls on
//! strings prepared before `clone3`, so that a child sharing the agent's memory allocates
//! nothing.
use std::ffi::CString;

/// One step of building the view.
pub enum Op {
    Mount {
        source: Option<CString>,
        target: CString,
        fstype: Option<CString>,
        flags: libc::c_ulong,
        data: Option<CString>,
    },
    /// `mount_setattr(2)` on `path` and every mount below it.
    SetAttr {
        path: CString,
        set: u64,
        clear: u64,
    },
    Mkdir {
        path: CString,
        mode: u32,
    },
    Mknod {
        path: CString,
        mode: u32,
        dev: libc::dev_t,
    },
    Symlink {
        target: CString,
        link: CString,
    },
    /// Creates (or truncates) `path` with `content`.
    Write {
        path: CString,
        content: Vec<u8>,
        mode: u32,
    },
    Chown {
        path: CString,
        uid: u32,
        gid: u32,
    },
    Unlink {
        path: CString,
    },
    /// A detached copy of the mount at `path` (`open_tree(OPEN_TREE_CLONE)`), kept in stash
    /// slot `slot` until [`Op::Place`] attaches it: how a host file survives being covered.
    Stash {
        path: CString,
        slot: usize,
        /// A kept host file that may be gone since the plan was made (replaced by its
        /// service): then nothing is placed for it.
        optional: bool,
    },
    /// Attaches stash slot `slot` at `target` (`move_mount`).
    Place {
        slot: usize,
        target: CString,
    },
    /// Unlinks `path` if it is there (whatever it is but a directory); never fails.
    Remove {
        path: CString,
    },
    /// Makes `new_root` (a mount point) the root and lets go of the old one.
    PivotRoot {
        new_root: CString,
    },
    /// Binds `/dev/null` over the host socket at `target`; a socket gone meanwhile needs no
    /// cover.
    CoverSocket {
        target: CString,
    },
    /// Binds the directory `source` at `target`, read-only, with its owners seen through the
    /// user namespace `userns` (an idmapped mount: `open_tree`, `mount_setattr`,
    /// `move_mount`).
    IdmappedBind {
        source: CString,
        target: CString,
        userns: libc::c_int,
    },
}

impl Op {
    /// The path this step works on, for the launch error.
    pub fn subject(&self) -> String {
        let p = match self {
            Self::Mount { target, .. }
            | Self::Place { target, .. }
            | Self::CoverSocket { target }
            | Self::IdmappedBind { target, .. } => target,
            Self::SetAttr { path, .. }
            | Self::Mkdir { path, .. }
            | Self::Mknod { path, .. }
            | Self::Write { path, .. }
            | Self::Chown { path, .. }
            | Self::Unlink { path }
            | Self::Remove { path }
            | Self::Stash { path, .. } => path,
            Self::PivotRoot { new_root } => new_root,
            Self::Symlink { link, .. } => link,
        };
        p.to_string_lossy().into_owned()
    }
}

/// The steps of one sandbox's view.
#[derive(Default)]
pub struct Plan {
    pub ops: Vec<Op>,
    /// Descriptors the steps name (a user namespace for idmapped layers), open until the
    /// plan goes.
    pub keep: Vec<std::sync::Arc<std::os::fd::OwnedFd>>,
}

/// Most mounts one plan stashes (the child keeps them in a fixed array: it may not allocate).
pub const MAX_STASH: usize = 32;

/// Creates (or truncates) `path` with `content`: raw syscalls, for the launch child.
unsafe fn write_new(path: &CString, content: &[u8], mode: u32) -> bool {
    // SAFETY: open/write/close on prepared data.
    unsafe {
        let fd = libc::open(
            path.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
            mode,
        );
        if fd < 0 {
            return false;
        }
        let mut done = 0usize;
        let mut ok = true;
        while done < content.len() {
            let n = libc::write(fd, content[done..].as_ptr().cast(), content.len() - done);
            if n <= 0 {
                ok = false;
                break;
            }
            done += n.cast_unsigned();
        }
        libc::close(fd);
        ok
    }
}

// linux/mount.h; not in libc.
pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Runs the plan in the launch child: raw syscalls on prepared data only. Returns the index
/// of the step that failed (errno is left set).
///
/// # Safety
/// Called between `clone3` and `execve` in a child that owns a mount namespace of its own.
pub unsafe fn apply(plan: &Plan) -> Result<(), usize> {
    // SAFETY: raw syscalls on the plan's strings, which outlive the child's use of them.
    unsafe {
        let old_umask = libc::umask(0);
        let mut stash: [libc::c_int; MAX_STASH] = [-1; MAX_STASH];
        for (i, op) in plan.ops.iter().enumerate() {
            let ok = step(op, &mut stash);
            if !ok {
                return Err(i);
            }
        }
        libc::umask(old_umask);
        Ok(())
    }
}

/// [`Op::IdmappedBind`]; `false` with errno set if it failed.
///
/// # Safety
/// As [`apply`].
unsafe fn idmapped_bind(source: &CString, target: &CString, userns: libc::c_int) -> bool {
    // SAFETY: raw syscalls on the step's prepared strings and descriptor.
    unsafe {
        let fd = libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            source.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC.cast_unsigned(),
        );
        let Ok(fd) = libc::c_int::try_from(fd) else {
            return false;
        };
        if fd < 0 {
            return false;
        }
        // Read-only too: only overlayfs reads these (and they are gone from view
        // with the old root).
        let attr = MountAttr {
            attr_set: MOUNT_ATTR_IDMAP | MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
            attr_clr: 0,
            propagation: 0,
            userns_fd: u64::try_from(userns).unwrap_or(u64::MAX),
        };
        let done = libc::syscall(
            libc::SYS_mount_setattr,
            fd,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &raw const attr,
            std::mem::size_of::<MountAttr>(),
        ) == 0
            && libc::syscall(
                libc::SYS_move_mount,
                fd,
                c"".as_ptr(),
                libc::AT_FDCWD,
                target.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            ) == 0;
        let errno = *libc::__errno_location();
        libc::close(fd);
        *libc::__errno_location() = errno;
        done
    }
}

/// One step; `false` with errno set if it failed.
unsafe fn step(op: &Op, stash: &mut [libc::c_int; MAX_STASH]) -> bool {
    // SAFETY: raw syscalls on the step's prepared strings.
    unsafe {
        match op {
            Op::Mount {
                source,
                target,
                fstype,
                flags,
                data,
            } => {
                libc::mount(
                    source.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
                    target.as_ptr(),
                    fstype.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
                    *flags,
                    data.as_ref()
                        .map_or(std::ptr::null(), |s| s.as_ptr().cast()),
                ) == 0
            }
            Op::SetAttr { path, set, clear } => {
                let attr = MountAttr {
                    attr_set: *set,
                    attr_clr: *clear,
                    propagation: 0,
                    userns_fd: 0,
                };
                libc::syscall(
                    libc::SYS_mount_setattr,
                    libc::AT_FDCWD,
                    path.as_ptr(),
                    AT_RECURSIVE,
                    &raw const attr,
                    std::mem::size_of::<MountAttr>(),
                ) == 0
            }
            Op::Mkdir { path, mode } => {
                libc::mkdir(path.as_ptr(), *mode) == 0 || *libc::__errno_location() == libc::EEXIST
            }
            Op::Mknod { path, mode, dev } => libc::mknod(path.as_ptr(), *mode, *dev) == 0,
            Op::Symlink { target, link } => libc::symlink(target.as_ptr(), link.as_ptr()) == 0,
            Op::Write {
                path,
                content,
                mode,
            } => write_new(path, content, *mode),
            Op::Chown { path, uid, gid } => libc::chown(path.as_ptr(), *uid, *gid) == 0,
            Op::Unlink { path } => libc::unlink(path.as_ptr()) == 0,
            Op::CoverSocket { target } => {
                libc::mount(
                    c"/dev/null".as_ptr(),
                    target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ) == 0
                    || *libc::__errno_location() == libc::ENOENT
            }
            Op::Remove { path } => {
                libc::unlink(path.as_ptr());
                true
            }
            Op::PivotRoot { new_root } => {
                libc::chdir(new_root.as_ptr()) == 0
                    && libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) == 0
                    && libc::umount2(c".".as_ptr(), libc::MNT_DETACH) == 0
                    && libc::chdir(c"/".as_ptr()) == 0
            }
            Op::Stash {
                path,
                slot,
                optional,
            } => {
                let fd = libc::syscall(
                    libc::SYS_open_tree,
                    libc::AT_FDCWD,
                    path.as_ptr(),
                    OPEN_TREE_CLONE | libc::O_CLOEXEC.cast_unsigned() | AT_RECURSIVE,
                );
                stash[*slot] = libc::c_int::try_from(fd).unwrap_or(-1);
                fd >= 0 || (*optional && *libc::__errno_location() == libc::ENOENT)
            }
            Op::IdmappedBind {
                source,
                target,
                userns,
            } => idmapped_bind(source, target, *userns),
            // An optional stash that found nothing: nothing to place.
            Op::Place { slot, .. } if stash[*slot] < 0 => true,
            Op::Place { slot, target } => {
                let moved = libc::syscall(
                    libc::SYS_move_mount,
                    stash[*slot],
                    c"".as_ptr(),
                    libc::AT_FDCWD,
                    target.as_ptr(),
                    MOVE_MOUNT_F_EMPTY_PATH,
                ) == 0;
                libc::close(stash[*slot]);
                moved
            }
        }
    }
}
