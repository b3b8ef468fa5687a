//! What a sandbox sees of the file system: its own mount namespace, built by the launch
//! child (as root, before it drops every privilege) from a plan made here beforehand.
//!
//! The default view is the host's root, read-only, `nosuid` and `nodev`, with:
//! - private, size-limited tmpfs on `/tmp`, `/var/tmp` and `/dev/shm`, and empty ones on
//!   `/home`, `/root` and `/run` (the agent's socket and locks, the host's service sockets);
//! - its own `/proc` (of its PID namespace; `/proc/sys` read-only), a minimal `/dev` (null,
//!   zero, full, random, urandom, tty, a private devpts) and `/sys` read-only;
//! - empty read-only tmpfs over cgroupfs, bpffs and the agent's state directories;
//! - `/dev/null` bound over every host unix socket path that is still visible;
//! - the name resolution and CA files kept where they point into a hidden directory (a
//!   detached copy of their mount, made before the cover and moved back after it);
//! - a passwd and group entry for the sandbox's own user, with a writable home.
//!
//! The plan is a list of raw operations on prepared strings, so that the child, which
//! shares the agent's memory until it execs, runs them without allocating. Images and
//! root directories (a later step) replace the first two operations with a new root.
use std::{
    ffi::CString,
    fs,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

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
    },
    /// Attaches stash slot `slot` at `target` (`move_mount`).
    Place {
        slot: usize,
        target: CString,
    },
}

impl Op {
    /// The path this step works on, for the launch error.
    pub fn subject(&self) -> String {
        let p = match self {
            Self::Mount { target, .. } | Self::Place { target, .. } => target,
            Self::SetAttr { path, .. }
            | Self::Mkdir { path, .. }
            | Self::Mknod { path, .. }
            | Self::Write { path, .. }
            | Self::Chown { path, .. }
            | Self::Unlink { path }
            | Self::Stash { path, .. } => path,
            Self::Symlink { link, .. } => link,
        };
        p.to_string_lossy().into_owned()
    }
}

/// The steps of one sandbox's view.
#[derive(Default)]
pub struct Plan {
    pub ops: Vec<Op>,
}

/// Most mounts one plan stashes (the child keeps them in a fixed array: it may not allocate).
pub const MAX_STASH: usize = 8;

/// The sandbox's own user, as its view shows it.
#[derive(Clone, Debug)]
pub struct Identity {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    /// Whether the view must list it in passwd and group (false for `--root`: root is).
    pub listed: bool,
}

/// What the default view is made of besides the fixed parts.
#[derive(Default)]
pub struct ViewOptions {
    /// Host directories the sandbox must not see (the agent's state): covered by an empty,
    /// read-only tmpfs.
    pub hide: Vec<PathBuf>,
    /// A passwd/group entry and home directory for a user the host does not list.
    pub identity: Option<Identity>,
    /// Size of `/tmp`, `/var/tmp` and `/home` each, in bytes.
    pub tmp_bytes: u64,
}

/// Default size of each private writable tmpfs.
pub const DEFAULT_TMP_BYTES: u64 = 512 << 20;

/// Directories replaced by private tmpfs: (path, mode, whether the size limit applies).
const PRIVATE_DIRS: [(&str, u32, bool); 5] = [
    ("/tmp", 0o1777, true),
    ("/var/tmp", 0o1777, true),
    ("/home", 0o755, true),
    ("/root", 0o700, false),
    ("/run", 0o755, false),
];
/// Host files a workload needs that may live in a hidden directory (`/etc/resolv.conf` is
/// often a link into `/run`): bound back at their real place.
const KEEP: [&str; 4] = [
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/ssl/certs",
    "/etc/localtime",
];
/// Kernel file systems that show the agent's machinery: covered.
const KERNEL_HIDDEN: [&str; 3] = ["/sys/fs/cgroup", "/sys/fs/bpf", "/sys/kernel/debug"];
/// Device nodes of the minimal `/dev`: (name, major, minor).
const DEVICES: [(&str, u32, u32); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

fn c(path: impl AsRef<Path>) -> CString {
    CString::new(path.as_ref().as_os_str().as_bytes()).expect("paths have no NUL")
}

fn is_under(path: &Path, dir: &Path) -> bool {
    path.starts_with(dir)
}

/// Builds the default view's plan.
pub fn default_plan(options: &ViewOptions) -> Plan {
    let mut plan = Plan::default();
    // Nothing we mount reaches the host, nothing the host mounts later reaches us (a host
    // mount propagated in would not be read-only).
    plan.ops.push(Op::Mount {
        source: None,
        target: c("/"),
        fstype: None,
        flags: libc::MS_REC | libc::MS_PRIVATE,
        data: None,
    });
    plan.ops.push(read_only("/"));
    let private: Vec<(&str, u32, bool)> = PRIVATE_DIRS
        .into_iter()
        .filter(|(dir, ..)| Path::new(dir).is_dir())
        .collect();
    let mut hidden: Vec<PathBuf> = private.iter().map(|(d, ..)| PathBuf::from(d)).collect();
    // Files the workload needs whose real place is about to be covered: copied aside first.
    let kept = kept_files(&hidden);
    for (slot, real) in kept.iter().enumerate() {
        plan.ops.push(Op::Stash {
            path: c(real),
            slot,
        });
    }
    for (dir, mode, sized) in private {
        let size = if sized { options.tmp_bytes } else { 16 << 20 };
        plan.ops.push(tmpfs(dir, mode, size, false));
    }
    place_kept(&mut plan.ops, &kept, &hidden);
    for dir in KERNEL_HIDDEN
        .iter()
        .map(PathBuf::from)
        .chain(options.hide.iter().cloned())
    {
        if hidden.iter().any(|h| is_under(&dir, h)) || !dir.is_dir() {
            continue;
        }
        plan.ops.push(tmpfs(&dir, 0o755, 4096, true));
        hidden.push(dir);
    }
    minimal_dev(&mut plan.ops);
    // Host unix sockets by path that no hidden directory covers.
    for socket in visible_unix_sockets(&hidden) {
        plan.ops.push(Op::Mount {
            source: Some(c("/dev/null")),
            target: c(&socket),
            fstype: None,
            flags: libc::MS_BIND,
            data: None,
        });
    }
    if let Some(id) = &options.identity {
        identity_ops(&mut plan.ops, id);
    }
    // Last: /proc of the new PID namespace.
    plan.ops.push(Op::Mount {
        source: Some(c("proc")),
        target: c("/proc"),
        fstype: Some(c("proc")),
        flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        data: None,
    });
    plan.ops.push(Op::Mount {
        source: Some(c("/proc/sys")),
        target: c("/proc/sys"),
        fstype: None,
        flags: libc::MS_BIND | libc::MS_REC,
        data: None,
    });
    plan.ops.push(read_only("/proc/sys"));
    plan
}

/// `path` and every mount below it read-only, `nosuid`, `nodev`.
fn read_only(path: impl AsRef<Path>) -> Op {
    Op::SetAttr {
        path: c(path),
        set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        clear: 0,
    }
}

/// The files of [`KEEP`] whose real place (after symbolic links) is below a directory the
/// view covers (`/etc/resolv.conf` is often a link into `/run`).
fn kept_files(hidden: &[PathBuf]) -> Vec<PathBuf> {
    KEEP.iter()
        .filter_map(|keep| fs::canonicalize(keep).ok())
        .filter(|real| hidden.iter().any(|h| is_under(real, h)))
        .take(MAX_STASH)
        .collect()
}

/// Puts the stashed files back at their real place, making the directories above them in
/// the tmpfs first.
fn place_kept(ops: &mut Vec<Op>, kept: &[PathBuf], hidden: &[PathBuf]) {
    for (slot, real) in kept.iter().enumerate() {
        let mut ancestors: Vec<&Path> = real.ancestors().skip(1).collect();
        ancestors.reverse();
        for dir in ancestors {
            if hidden.iter().any(|h| is_under(dir, h) && dir != h) {
                ops.push(Op::Mkdir {
                    path: c(dir),
                    mode: 0o755,
                });
            }
        }
        ops.push(if real.is_dir() {
            Op::Mkdir {
                path: c(real),
                mode: 0o755,
            }
        } else {
            Op::Write {
                path: c(real),
                content: Vec::new(),
                mode: 0o644,
            }
        });
        ops.push(Op::Place {
            slot,
            target: c(real),
        });
    }
}

/// A tmpfs `/dev` with the usual character devices, the `/proc/self/fd` links, a private
/// devpts and `/dev/shm`.
fn minimal_dev(ops: &mut Vec<Op>) {
    ops.push(Op::Mount {
        source: Some(c("tmpfs")),
        target: c("/dev"),
        fstype: Some(c("tmpfs")),
        flags: libc::MS_NOSUID | libc::MS_NOEXEC,
        data: Some(c("mode=755,size=65536")),
    });
    for (name, major, minor) in DEVICES {
        ops.push(Op::Mknod {
            path: c(format!("/dev/{name}")),
            mode: libc::S_IFCHR | 0o666,
            dev: libc::makedev(major, minor),
        });
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        ops.push(Op::Symlink {
            target: c(target),
            link: c(format!("/dev/{link}")),
        });
    }
    for dir in ["/dev/pts", "/dev/shm"] {
        ops.push(Op::Mkdir {
            path: c(dir),
            mode: 0o755,
        });
    }
    ops.push(Op::Mount {
        source: Some(c("devpts")),
        target: c("/dev/pts"),
        fstype: Some(c("devpts")),
        flags: libc::MS_NOSUID | libc::MS_NOEXEC,
        data: Some(c("newinstance,ptmxmode=0666,mode=620")),
    });
    ops.push(tmpfs("/dev/shm", 0o1777, 64 << 20, false));
}

/// Where a workload started from `dir` by default begins: `dir` itself where the view shows
/// the host's copy of it, else `/` (the private directories start empty).
pub fn start_dir(dir: &Path, hidden: &[PathBuf]) -> PathBuf {
    let hidden_here = PRIVATE_DIRS
        .iter()
        .map(|(d, ..)| Path::new(*d))
        .chain(KERNEL_HIDDEN.iter().map(Path::new))
        .chain(["/dev", "/proc"].iter().map(Path::new))
        .chain(hidden.iter().map(PathBuf::as_path))
        .any(|h| is_under(dir, h));
    if hidden_here {
        PathBuf::from("/")
    } else {
        dir.to_owned()
    }
}

fn tmpfs(dir: impl AsRef<Path>, mode: u32, size: u64, read_only: bool) -> Op {
    let mut flags = libc::MS_NOSUID | libc::MS_NODEV;
    if read_only {
        flags |= libc::MS_RDONLY | libc::MS_NOEXEC;
    }
    Op::Mount {
        source: Some(c("tmpfs")),
        target: c(dir),
        fstype: Some(c("tmpfs")),
        flags,
        data: Some(c(format!("mode={mode:o},size={size}"))),
    }
}

/// The host's passwd and group with the sandbox's user added, bound over `/etc`, and its
/// home directory.
fn identity_ops(ops: &mut Vec<Op>, id: &Identity) {
    if !id.listed {
        ops.push(Op::Chown {
            path: c(&id.home),
            uid: id.uid,
            gid: id.gid,
        });
        return;
    }
    let mut passwd = fs::read("/etc/passwd").unwrap_or_default();
    if !passwd.is_empty() && !passwd.ends_with(b"\n") {
        passwd.push(b'\n');
    }
    passwd.extend_from_slice(
        format!(
            "{}:x:{}:{}:sandbox:{}:/bin/sh\n",
            id.name,
            id.uid,
            id.gid,
            id.home.display()
        )
        .as_bytes(),
    );
    let mut group = fs::read("/etc/group").unwrap_or_default();
    if !group.is_empty() && !group.ends_with(b"\n") {
        group.push(b'\n');
    }
    group.extend_from_slice(format!("{}:x:{}:\n", id.name, id.gid).as_bytes());
    for (file, content) in [("passwd", passwd), ("group", group)] {
        let staged = c(format!("/run/.sandbox-{file}"));
        ops.push(Op::Write {
            path: staged.clone(),
            content,
            mode: 0o644,
        });
        ops.push(Op::Mount {
            source: Some(staged.clone()),
            target: c(format!("/etc/{file}")),
            fstype: None,
            flags: libc::MS_BIND,
            data: None,
        });
        // The bind holds the file; its name in /run goes.
        ops.push(Op::Unlink { path: staged });
    }
    ops.push(Op::Mkdir {
        path: c(&id.home),
        mode: 0o700,
    });
    ops.push(Op::Chown {
        path: c(&id.home),
        uid: id.uid,
        gid: id.gid,
    });
}

/// Paths of the host's unix sockets (this network namespace's, from `/proc/net/unix`) that
/// are not below a hidden directory and still exist as sockets.
fn visible_unix_sockets(hidden: &[PathBuf]) -> Vec<PathBuf> {
    use std::os::unix::fs::FileTypeExt as _;
    let Ok(text) = fs::read_to_string("/proc/net/unix") else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = text
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(7))
        .filter(|p| p.starts_with('/'))
        .map(PathBuf::from)
        .filter(|p| !hidden.iter().any(|h| is_under(p, h)))
        .filter(|p| fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket()))
        .collect();
    out.sort();
    out.dedup();
    out
}

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
const AT_RECURSIVE: libc::c_uint = 0x8000;
const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

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
            let ok = match op {
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
                    libc::mkdir(path.as_ptr(), *mode) == 0
                        || *libc::__errno_location() == libc::EEXIST
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
                Op::Stash { path, slot } => {
                    let fd = libc::syscall(
                        libc::SYS_open_tree,
                        libc::AT_FDCWD,
                        path.as_ptr(),
                        OPEN_TREE_CLONE | libc::O_CLOEXEC.cast_unsigned() | AT_RECURSIVE,
                    );
                    stash[*slot] = libc::c_int::try_from(fd).unwrap_or(-1);
                    fd >= 0
                }
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
            };
            if !ok {
                return Err(i);
            }
        }
        libc::umask(old_umask);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_plan_hides_private_dirs_and_the_agents_state() {
        let plan = default_plan(&ViewOptions {
            hide: vec![PathBuf::from("/etc")],
            identity: Some(Identity {
                name: "sandbox".into(),
                uid: 1_610_612_800,
                gid: 1_610_612_800,
                home: PathBuf::from("/home/sandbox"),
                listed: true,
            }),
            tmp_bytes: DEFAULT_TMP_BYTES,
        });
        let subjects: Vec<String> = plan.ops.iter().map(Op::subject).collect();
        for must in [
            "/",
            "/tmp",
            "/home",
            "/run",
            "/dev",
            "/dev/null",
            "/proc",
            "/etc",
        ] {
            assert!(
                subjects.iter().any(|s| s == must),
                "{must} missing: {subjects:?}"
            );
        }
        assert!(subjects.iter().any(|s| s == "/home/sandbox"));
        // The new /proc comes last but for its /proc/sys cover.
        let proc_at = subjects.iter().position(|s| s == "/proc").expect("proc");
        assert_eq!(proc_at, subjects.len() - 3, "{subjects:?}");
    }
}
