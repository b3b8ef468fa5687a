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

mod checks;
mod idmap;
mod steps;

pub use checks::{
    ViewError, check_layers, check_mounts, check_root, open_beneath, open_beneath_c, open_in_root,
    parse_mount,
};
pub use idmap::mapping_userns;
pub use steps::{MAX_STASH, Op, Plan, apply};
use steps::{MOUNT_ATTR_NODEV, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY};

/// Most `--mount`s of one sandbox.
pub const MAX_MOUNTS: usize = 16;

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
    /// Size of `/tmp`, `/var/tmp` and `/home` each, in bytes (with a root directory: of its
    /// writable layer).
    pub tmp_bytes: u64,
    /// A root directory in place of the host's, read-only below a private writable layer.
    pub root: Option<RootDir>,
    /// Host paths bound into the view (`--mount`), checked by [`check_mounts`].
    pub mounts: Vec<BindMount>,
    /// With a root directory or image: a user namespace ([`mapping_userns`]) through which
    /// its layers are mounted (idmapped), so that what uid 0 owns there is the sandbox's.
    pub idmap: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
}

/// A root directory (`--rootfs`) or an image's layers (`--image`), and where its view is
/// assembled.
#[derive(Clone, Debug)]
pub struct RootDir {
    /// The read-only layers, bottom first: the directory (canonical), or the image's
    /// unpacked layers.
    pub layers: Vec<PathBuf>,
    /// How messages name it: `root directory /srv/x`, `image /srv/app.tar`.
    pub label: String,
    /// An empty host directory the new root is built on (in the mount namespace's own copy
    /// of it); the agent's runtime directory has one.
    pub staging: PathBuf,
    /// The layers as the sandbox will see them, for finding its command and users before
    /// it starts: the directory itself, or the layers stacked in a read-only overlayfs
    /// mount attached nowhere (gone with the last descriptor).
    pub lookup: std::sync::Arc<std::os::fd::OwnedFd>,
    /// The uid and gid inside the layers that are the sandbox's own in its view (idmapped):
    /// `0` (root's files), or a non-root image `User`'s.
    pub owner: (u32, u32),
}

impl RootDir {
    /// `path` opened inside the root as the sandbox will see it (links resolved there).
    pub fn open(&self, path: &str, flags: libc::c_int) -> std::io::Result<std::os::fd::OwnedFd> {
        use std::os::fd::AsFd as _;
        open_beneath(self.lookup.as_fd(), path, flags, 0)
    }

    /// A small regular file of the root (passwd, group), empty if it is not there or is
    /// something else: a FIFO an image planted must not block the agent, nor a huge file
    /// fill its memory.
    pub fn read(&self, path: &str) -> Vec<u8> {
        const MAX_BYTES: u64 = 1 << 20;
        let Ok(fd) = self.open(path, libc::O_RDONLY | libc::O_NONBLOCK) else {
            return Vec::new();
        };
        let file = fs::File::from(fd);
        if !file.metadata().is_ok_and(|m| m.is_file()) {
            return Vec::new();
        }
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::Read::take(file, MAX_BYTES), &mut buf);
        buf
    }

    /// The overlayfs `lowerdir=` value: top layer first.
    fn lowerdir(&self) -> String {
        self.layers
            .iter()
            .rev()
            .map(|l| l.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }
}

/// `--mount SRC:DST[:ro]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindMount {
    /// Canonical host path.
    pub source: PathBuf,
    /// Absolute path in the sandbox, without `.` or `..`.
    pub target: PathBuf,
    pub read_only: bool,
}

/// Directories replaced by private tmpfs: (path, mode, whether the size limit applies).
pub(crate) const PRIVATE_DIRS: [(&str, u32, bool); 5] = [
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

/// Builds the plan of a sandbox's view: the host's root (the default) or a root directory.
pub fn default_plan(options: &ViewOptions) -> Plan {
    match &options.root {
        Some(root) => root_dir_plan(options, root),
        None => host_root_plan(options),
    }
}

/// The first steps of every view: nothing we mount reaches the host, nothing the host mounts
/// later reaches us (a host mount propagated in would not be read-only); the `--mount`
/// sources are copied aside (writable ones before the tree turns read-only).
fn begin(ops: &mut Vec<Op>, mounts: &[BindMount], first_slot: usize) {
    ops.push(Op::Mount {
        source: None,
        target: c("/"),
        fstype: None,
        flags: libc::MS_REC | libc::MS_PRIVATE,
        data: None,
    });
    for (i, m) in mounts.iter().enumerate() {
        ops.push(Op::Stash {
            path: c(&m.source),
            slot: first_slot + i,
            optional: false,
        });
    }
    ops.push(read_only("/"));
}

/// A mount point at `target` for a directory or a file (`dir`), with the directories above
/// it that are below `base` (made where missing; existing ones are left as they are).
fn mount_point(ops: &mut Vec<Op>, target: &Path, dir: bool, base: &Path) {
    let mut ancestors: Vec<&Path> = target
        .ancestors()
        .skip(1)
        .filter(|d| d.starts_with(base) && *d != base)
        .collect();
    ancestors.reverse();
    for parent in ancestors {
        ops.push(Op::Mkdir {
            path: c(parent),
            mode: 0o755,
        });
    }
    ops.push(if dir {
        Op::Mkdir {
            path: c(target),
            mode: 0o755,
        }
    } else {
        Op::Write {
            path: c(target),
            content: Vec::new(),
            mode: 0o644,
        }
    });
}

/// Attaches the `--mount`s at their targets below `prefix` (`/` or the new root), making the
/// mount points, and covers the host unix sockets (`sockets`) inside their sources.
fn place_mounts(
    ops: &mut Vec<Op>,
    mounts: &[BindMount],
    first_slot: usize,
    prefix: &Path,
    sockets: &[PathBuf],
) {
    for (i, m) in mounts.iter().enumerate() {
        let target = under(prefix, &m.target);
        mount_point(ops, &target, m.source.is_dir(), prefix);
        ops.push(Op::Place {
            slot: first_slot + i,
            target: c(&target),
        });
        ops.push(Op::SetAttr {
            path: c(&target),
            set: MOUNT_ATTR_NOSUID
                | MOUNT_ATTR_NODEV
                | if m.read_only { MOUNT_ATTR_RDONLY } else { 0 },
            clear: if m.read_only { 0 } else { MOUNT_ATTR_RDONLY },
        });
    }
    for socket in sockets {
        for m in mounts {
            if let Ok(rest) = socket.strip_prefix(&m.source) {
                ops.push(cover_socket(&under(prefix, &m.target.join(rest))));
            }
        }
    }
}

/// `path` (absolute) below `prefix`.
fn under(prefix: &Path, path: &Path) -> PathBuf {
    prefix.join(path.strip_prefix("/").unwrap_or(path))
}

fn cover_socket(path: &Path) -> Op {
    Op::CoverSocket { target: c(path) }
}

/// The default view: the host's root, read-only, with private directories.
fn host_root_plan(options: &ViewOptions) -> Plan {
    let mut plan = Plan::default();
    begin(&mut plan.ops, &options.mounts, KEEP.len());
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
            optional: true,
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
    minimal_dev(&mut plan.ops, Path::new("/"));
    // Host unix sockets by path that no hidden directory covers (read once: the mounts'
    // sources are looked at in the same list).
    let sockets = host_unix_sockets();
    for socket in sockets
        .iter()
        .filter(|s| !hidden.iter().any(|h| is_under(s, h)))
    {
        plan.ops.push(cover_socket(socket));
    }
    if let Some(id) = &options.identity {
        let (passwd, group) = (
            fs::read("/etc/passwd").unwrap_or_default(),
            fs::read("/etc/group").unwrap_or_default(),
        );
        identity_ops(&mut plan.ops, id, (passwd, group), None);
    }
    place_mounts(
        &mut plan.ops,
        &options.mounts,
        KEEP.len(),
        Path::new("/"),
        &sockets,
    );
    new_proc(&mut plan.ops, Path::new("/"));
    plan
}

/// A view on a root directory: the directory read-only below a private writable layer
/// (overlayfs, upper and work directories in a size-limited tmpfs that goes with the mount
/// namespace), the host's name resolution and CA files, `/sys` read-only, its own `/proc` and
/// `/dev`; then `pivot_root` into it, letting go of the host's root.
fn root_dir_plan(options: &ViewOptions, root: &RootDir) -> Plan {
    let mut plan = Plan::default();
    plan.keep.extend(options.idmap.iter().cloned());
    let ops = &mut plan.ops;
    // Slots: the kept files, /sys, then the mounts.
    let sys_slot = KEEP.len();
    begin(ops, &options.mounts, sys_slot + 1);
    let kept: Vec<(usize, &str, PathBuf)> = KEEP
        .iter()
        .enumerate()
        .filter_map(|(slot, name)| fs::canonicalize(name).ok().map(|real| (slot, *name, real)))
        .collect();
    for (slot, _, real) in &kept {
        ops.push(Op::Stash {
            path: c(real),
            slot: *slot,
            optional: true,
        });
    }
    ops.push(Op::Stash {
        path: c("/sys"),
        slot: sys_slot,
        optional: false,
    });
    let staging = &root.staging;
    ops.push(tmpfs(staging, 0o755, options.tmp_bytes, false));
    let (upper, work, new_root) = (
        staging.join("upper"),
        staging.join("work"),
        staging.join("root"),
    );
    for dir in [&upper, &work, &new_root] {
        ops.push(Op::Mkdir {
            path: c(dir),
            mode: 0o755,
        });
    }
    let lowerdir = lower_layers(ops, options, root);
    ops.push(Op::Mount {
        source: Some(c("overlay")),
        target: c(&new_root),
        fstype: Some(c("overlay")),
        flags: libc::MS_NOSUID | libc::MS_NODEV,
        data: Some(c(format!(
            "lowerdir={},upperdir={},workdir={}",
            lowerdir,
            upper.display(),
            work.display()
        ))),
    });
    for dir in ["/proc", "/dev", "/sys", "/tmp", "/etc", "/run"] {
        ops.push(Op::Mkdir {
            path: c(under(&new_root, Path::new(dir))),
            mode: if dir == "/tmp" { 0o1777 } else { 0o755 },
        });
    }
    ops.push(tmpfs(
        under(&new_root, Path::new("/run")),
        0o755,
        16 << 20,
        false,
    ));
    // A private /tmp as in the default view (the directory's own may not be writable).
    ops.push(tmpfs(
        under(&new_root, Path::new("/tmp")),
        0o1777,
        options.tmp_bytes,
        false,
    ));
    place_host_files(ops, &kept, &new_root);
    let sys = under(&new_root, Path::new("/sys"));
    ops.push(Op::Place {
        slot: sys_slot,
        target: c(&sys),
    });
    for dir in KERNEL_HIDDEN {
        if Path::new(dir).is_dir() {
            ops.push(tmpfs(under(&new_root, Path::new(dir)), 0o755, 4096, true));
        }
    }
    minimal_dev(ops, &new_root);
    if let Some(id) = &options.identity {
        let files = (root.read("etc/passwd"), root.read("etc/group"));
        identity_ops(ops, id, files, Some(&new_root));
    }
    place_mounts(
        ops,
        &options.mounts,
        sys_slot + 1,
        &new_root,
        &host_unix_sockets(),
    );
    new_proc(ops, &new_root);
    ops.push(Op::PivotRoot {
        new_root: c(&new_root),
    });
    plan
}

/// The overlayfs `lowerdir=` of a root: its layers, or with an idmap each layer bound
/// idmapped below the staging tmpfs (steps added to `ops`).
fn lower_layers(ops: &mut Vec<Op>, options: &ViewOptions, root: &RootDir) -> String {
    let staging = &root.staging;
    match &options.idmap {
        // Each layer bound idmapped below the staging tmpfs, and those stacked.
        Some(userns) => {
            let mut bound = Vec::new();
            for (i, layer) in root.layers.iter().enumerate() {
                let at = staging.join(format!("l{i}"));
                ops.push(Op::Mkdir {
                    path: c(&at),
                    mode: 0o755,
                });
                ops.push(Op::IdmappedBind {
                    source: c(layer),
                    target: c(&at),
                    userns: std::os::fd::AsRawFd::as_raw_fd(userns.as_ref()),
                });
                bound.push(at.display().to_string());
            }
            bound.reverse();
            bound.join(":")
        }
        None => root.lowerdir(),
    }
}

/// The host's name resolution and CA files, stashed in `kept` as (slot, name, real path),
/// put where the root directory has its own (which give way: often links into `/run`).
fn place_host_files(ops: &mut Vec<Op>, kept: &[(usize, &str, PathBuf)], new_root: &Path) {
    for (slot, name, real) in kept {
        let target = under(new_root, Path::new(name));
        // Whatever the image has there (often a link into /run) gives way to the host's.
        ops.push(Op::Remove { path: c(&target) });
        mount_point(ops, &target, real.is_dir(), new_root);
        ops.push(Op::Place {
            slot: *slot,
            target: c(&target),
        });
    }
}

/// `/proc` of the new PID namespace, `/proc/sys` read-only.
fn new_proc(ops: &mut Vec<Op>, prefix: &Path) {
    let proc_dir = under(prefix, Path::new("/proc"));
    let sys = proc_dir.join("sys");
    ops.push(Op::Mount {
        source: Some(c("proc")),
        target: c(&proc_dir),
        fstype: Some(c("proc")),
        flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        data: None,
    });
    ops.push(Op::Mount {
        source: Some(c(&sys)),
        target: c(&sys),
        fstype: None,
        flags: libc::MS_BIND | libc::MS_REC,
        data: None,
    });
    ops.push(read_only(&sys));
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
        // The covering tmpfs is empty: the directories between it and the file are made.
        let covering = hidden
            .iter()
            .find(|h| is_under(real, h))
            .map_or(Path::new("/"), PathBuf::as_path);
        mount_point(ops, real, real.is_dir(), covering);
        ops.push(Op::Place {
            slot,
            target: c(real),
        });
    }
}

/// A tmpfs `/dev` with the usual character devices, the `/proc/self/fd` links, a private
/// devpts and `/dev/shm`.
fn minimal_dev(ops: &mut Vec<Op>, prefix: &Path) {
    let dev = under(prefix, Path::new("/dev"));
    ops.push(Op::Mount {
        source: Some(c("tmpfs")),
        target: c(&dev),
        fstype: Some(c("tmpfs")),
        flags: libc::MS_NOSUID | libc::MS_NOEXEC,
        data: Some(c("mode=755,size=65536")),
    });
    for (name, major, minor) in DEVICES {
        ops.push(Op::Mknod {
            path: c(dev.join(name)),
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
            link: c(dev.join(link)),
        });
    }
    for dir in ["pts", "shm"] {
        ops.push(Op::Mkdir {
            path: c(dev.join(dir)),
            mode: 0o755,
        });
    }
    ops.push(Op::Mount {
        source: Some(c("devpts")),
        target: c(dev.join("pts")),
        fstype: Some(c("devpts")),
        flags: libc::MS_NOSUID | libc::MS_NOEXEC,
        // At most 256 ptys, so that one sandbox cannot take the host's share of them.
        data: Some(c("newinstance,ptmxmode=0666,mode=620,max=256")),
    });
    ops.push(tmpfs(dev.join("shm"), 0o1777, 64 << 20, false));
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
/// `files`: the passwd and group the view has; `new_root`: the writable root directory's
/// assembly point (its files are written in place), `None` for the host's root (bound over).
fn identity_ops(
    ops: &mut Vec<Op>,
    id: &Identity,
    (mut passwd, mut group): (Vec<u8>, Vec<u8>),
    new_root: Option<&Path>,
) {
    let home = under(new_root.unwrap_or(Path::new("/")), &id.home);
    if !id.listed {
        ops.push(Op::Mkdir {
            path: c(&home),
            mode: 0o700,
        });
        ops.push(Op::Chown {
            path: c(&home),
            uid: id.uid,
            gid: id.gid,
        });
        return;
    }
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
    if !group.is_empty() && !group.ends_with(b"\n") {
        group.push(b'\n');
    }
    group.extend_from_slice(format!("{}:x:{}:\n", id.name, id.gid).as_bytes());
    for (file, content) in [("passwd", passwd), ("group", group)] {
        if let Some(new_root) = new_root {
            // The writable layer takes the new files.
            let target = new_root.join("etc").join(file);
            ops.push(Op::Remove { path: c(&target) });
            ops.push(Op::Write {
                path: c(&target),
                content,
                mode: 0o644,
            });
            continue;
        }
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
    if let Some(parent) = home.parent() {
        ops.push(Op::Mkdir {
            path: c(parent),
            mode: 0o755,
        });
    }
    ops.push(Op::Mkdir {
        path: c(&home),
        mode: 0o700,
    });
    ops.push(Op::Chown {
        path: c(&home),
        uid: id.uid,
        gid: id.gid,
    });
}

/// Paths of the host's unix sockets (this network namespace's, from `/proc/net/unix`), with
/// their links resolved (`/var/run` is often `/run`), that are not below a kernel file
/// system the view replaces, and still exist as sockets.
fn host_unix_sockets() -> Vec<PathBuf> {
    use std::os::unix::fs::FileTypeExt as _;
    let Ok(text) = fs::read_to_string("/proc/net/unix") else {
        return Vec::new();
    };
    let replaced = [Path::new("/dev"), Path::new("/proc"), Path::new("/sys")];
    let mut out: Vec<PathBuf> = text
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(7))
        .filter(|p| p.starts_with('/'))
        .filter_map(|p| fs::canonicalize(p).ok())
        .filter(|p| !replaced.iter().any(|r| is_under(p, r)))
        .filter(|p| fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket()))
        .collect();
    out.sort();
    out.dedup();
    out
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
            tmp_bytes: 64 << 20,
            root: None,
            mounts: Vec::new(),
            idmap: None,
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
