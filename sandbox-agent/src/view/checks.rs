//! What a root directory or a `--mount` must be, checked before anything exists; and reading
//! a root directory's files without leaving it.
use std::{
    ffi::CString,
    fs,
    path::{Path, PathBuf},
};

use super::{BindMount, MAX_MOUNTS, PRIVATE_DIRS, RootDir, is_under};

/// Why a root directory or a `--mount` is refused; each names its flag and value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ViewError {
    #[error("invalid --mount \"{0}\": use SRC:DST or SRC:DST:ro")]
    MountSyntax(String),
    #[error("--mount \"{spec}\": {why}")]
    Mount { spec: String, why: String },
    #[error("--rootfs {dir}: {why}")]
    Root { dir: String, why: String },
    #[error("--image {image}: {why}")]
    Image { image: String, why: String },
}

/// Destinations no `--mount` may cover: the sandbox's own kernel file systems.
const PROTECTED: [&str; 3] = ["/proc", "/dev", "/sys"];

/// `SRC:DST` or `SRC:DST:ro` (paths without `:`), unchecked.
pub fn parse_mount(spec: &str) -> Result<(String, String, bool), ViewError> {
    let parts: Vec<&str> = spec.split(':').collect();
    match parts[..] {
        [src, dst] if !src.is_empty() && !dst.is_empty() => Ok((src.into(), dst.into(), false)),
        [src, dst, "ro"] if !src.is_empty() && !dst.is_empty() => {
            Ok((src.into(), dst.into(), true))
        }
        [src, dst, "rw"] if !src.is_empty() && !dst.is_empty() => {
            Ok((src.into(), dst.into(), false))
        }
        _ => Err(ViewError::MountSyntax(spec.into())),
    }
}

/// Checks the `--mount`s of a view: sources that exist and are not the agent's own,
/// destinations that are absolute, not protected, not twice, and can be made in the view.
pub fn check_mounts(
    specs: &[(String, String, bool)],
    hidden: &[PathBuf],
    own_root: bool,
) -> Result<Vec<BindMount>, ViewError> {
    let mut out: Vec<BindMount> = Vec::new();
    for (src, dst, read_only) in specs {
        let spec = format!("{src}:{dst}{}", if *read_only { ":ro" } else { "" });
        let refuse = |why: String| ViewError::Mount {
            spec: spec.clone(),
            why,
        };
        if out.len() == MAX_MOUNTS {
            return Err(refuse(format!("at most {MAX_MOUNTS} mounts")));
        }
        let source = fs::canonicalize(src)
            .map_err(|e| refuse(format!("source {src}: {}", io_reason(&e))))?;
        if let Some(h) = hidden
            .iter()
            .find(|h| is_under(&source, h) || is_under(h, &source))
        {
            return Err(refuse(format!(
                "source {} holds or is inside the agent's state ({})",
                source.display(),
                h.display()
            )));
        }
        if is_under(&source, Path::new("/proc")) {
            return Err(refuse("a source below /proc is refused".into()));
        }
        let target = PathBuf::from(dst);
        let normal = target.is_absolute()
            && target
                .components()
                .skip(1)
                .all(|c| matches!(c, std::path::Component::Normal(_)))
            && target != Path::new("/");
        if !normal {
            return Err(refuse(format!(
                "destination {dst}: use an absolute path below / without . or .."
            )));
        }
        if let Some(p) = PROTECTED.iter().find(|p| is_under(&target, Path::new(p))) {
            return Err(refuse(format!(
                "destination {dst} is below {p}, which the sandbox's view provides itself"
            )));
        }
        if out.iter().any(|m| m.target == target) {
            return Err(refuse(format!("destination {dst} is mounted twice")));
        }
        // On the host's read-only root, a mount point must exist already or be made in a
        // private directory.
        if !own_root
            && !PRIVATE_DIRS
                .iter()
                .any(|(d, ..)| is_under(&target, Path::new(d)))
        {
            match fs::metadata(&target) {
                Ok(m) if m.is_dir() != source.is_dir() => {
                    return Err(refuse(format!(
                        "destination {dst} is a {} and the source a {}",
                        kind(m.is_dir()),
                        kind(source.is_dir())
                    )));
                }
                Ok(_) => {}
                Err(_) => {
                    return Err(refuse(format!(
                        "destination {dst} does not exist, and the sandbox's root (the host's) is read-only: mount below /tmp, /home, /root or /run, or onto an existing path"
                    )));
                }
            }
        }
        out.push(BindMount {
            source,
            target,
            read_only: *read_only,
        });
    }
    Ok(out)
}

fn kind(dir: bool) -> &'static str {
    if dir { "directory" } else { "file" }
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "does not exist".into(),
        _ => e.to_string(),
    }
}

/// Checks a root directory: a directory, not the agent's, a path overlayfs can take.
pub fn check_root(dir: &str, hidden: &[PathBuf], staging: PathBuf) -> Result<RootDir, ViewError> {
    let refuse = |why: String| ViewError::Root {
        dir: dir.into(),
        why,
    };
    let canonical = fs::canonicalize(dir).map_err(|e| refuse(io_reason(&e)))?;
    if !canonical.is_dir() {
        return Err(refuse("not a directory".into()));
    }
    if canonical == Path::new("/") {
        return Err(refuse("the host's root is the default view already".into()));
    }
    if let Some(h) = hidden
        .iter()
        .find(|h| is_under(&canonical, h) || is_under(h, &canonical))
    {
        return Err(refuse(format!(
            "holds or is inside the agent's state ({})",
            h.display()
        )));
    }
    // overlayfs options are separated by ',' and its lower layers by ':'.
    if canonical.to_string_lossy().contains([',', ':', '\\']) {
        return Err(refuse(
            "a path with ',', ':' or '\\' cannot be an overlay layer".into(),
        ));
    }
    // The assembly point: one empty directory, private to each mount namespace that uses it.
    fs::create_dir_all(&staging).map_err(|e| refuse(format!("{}: {e}", staging.display())))?;
    let lookup = fs::File::open(&canonical).map_err(|e| refuse(io_reason(&e)))?;
    Ok(RootDir {
        label: format!("root directory {}", canonical.display()),
        layers: vec![canonical],
        staging,
        lookup: std::sync::Arc::new(lookup.into()),
        owner: (0, 0),
    })
}

/// Room for `lowerdir=` in one page of mount options (upperdir and workdir need some too).
const MAX_LOWERDIR_BYTES: usize = 3500;

/// An image's unpacked layers (bottom first) as a root: they must fit one overlayfs mount's
/// options, and are stacked once here (a read-only mount attached nowhere) so that the
/// command and users can be looked up as the sandbox will see them.
pub fn check_layers(
    image: &str,
    layers: Vec<PathBuf>,
    staging: PathBuf,
) -> Result<RootDir, ViewError> {
    let refuse = |why: String| ViewError::Image {
        image: image.into(),
        why,
    };
    if layers.is_empty() {
        return Err(refuse("an image without layers has no files to run".into()));
    }
    let options: usize = layers.iter().map(|l| l.as_os_str().len() + 1).sum();
    if options > MAX_LOWERDIR_BYTES {
        return Err(refuse(format!(
            "{} layers are more than one overlayfs mount takes here (about {} with this state directory)",
            layers.len(),
            MAX_LOWERDIR_BYTES / (options / layers.len())
        )));
    }
    fs::create_dir_all(&staging).map_err(|e| refuse(format!("{}: {e}", staging.display())))?;
    let lookup = if let [only] = &layers[..] {
        fs::File::open(only)
            .map_err(|e| refuse(format!("{}: {e}", only.display())))?
            .into()
    } else {
        stacked(&layers).map_err(|e| refuse(format!("cannot stack its layers: {e}")))?
    };
    Ok(RootDir {
        layers,
        label: format!("image {image}"),
        staging,
        lookup: std::sync::Arc::new(lookup),
        owner: (0, 0),
    })
}

/// `layers` (bottom first) stacked read-only by overlayfs, attached nowhere: the root of
/// the new mount.
fn stacked(layers: &[PathBuf]) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    const FSOPEN_CLOEXEC: libc::c_uint = 1;
    const FSCONFIG_SET_STRING: libc::c_uint = 1;
    const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
    use super::steps::{MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY};
    const FSMOUNT_CLOEXEC: libc::c_uint = 1;
    let check = |rc: libc::c_long| -> std::io::Result<libc::c_int> {
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            libc::c_int::try_from(rc).map_err(|_| std::io::Error::other("descriptor"))
        }
    };
    // SAFETY: fsopen with a valid C string; the descriptor is ours.
    let fs = unsafe {
        OwnedFd::from_raw_fd(check(libc::syscall(
            libc::SYS_fsopen,
            c"overlay".as_ptr(),
            FSOPEN_CLOEXEC,
        ))?)
    };
    let set = |key: &std::ffi::CStr, value: &[u8]| {
        let value = CString::new(value).map_err(|_| std::io::Error::other("a NUL in a path"))?;
        // SAFETY: fsconfig on our fs context with valid C strings.
        check(unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                FSCONFIG_SET_STRING,
                key.as_ptr(),
                value.as_ptr(),
                0,
            )
        })
    };
    // `lowerdir+` (Linux 6.8) takes one layer at a time, top first; before it, one
    // `lowerdir` string (which the layer paths' characters were checked for).
    let top_first: Vec<&PathBuf> = layers.iter().rev().collect();
    match set(c"lowerdir+", top_first[0].as_os_str().as_encoded_bytes()) {
        Ok(_) => {
            for layer in &top_first[1..] {
                set(c"lowerdir+", layer.as_os_str().as_encoded_bytes())?;
            }
        }
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            let joined: Vec<String> = top_first.iter().map(|l| l.display().to_string()).collect();
            set(c"lowerdir", joined.join(":").as_bytes())?;
        }
        Err(e) => return Err(e),
    }
    // SAFETY: fsconfig on our fs context.
    check(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    })?;
    // SAFETY: fsmount of the created context; the descriptor is ours.
    let mount = unsafe {
        OwnedFd::from_raw_fd(check(libc::syscall(
            libc::SYS_fsmount,
            fs.as_raw_fd(),
            FSMOUNT_CLOEXEC,
            MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC,
        ))?)
    };
    Ok(mount)
}

/// `openat2(root, path, RESOLVE_IN_ROOT)`: `..` and absolute links stay inside `root`.
pub fn open_in_root(
    root: &Path,
    path: &str,
    flags: libc::c_int,
) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::AsFd as _;
    let dir = fs::File::open(root)?;
    open_beneath(dir.as_fd(), path, flags, 0)
}

/// `path` opened below the directory `root` as if `root` were `/`: `..`, absolute links and
/// links swapped in meanwhile never leave it, and `/proc` magic links are not followed.
/// (The files API runs it on a sandbox's root; the view on a root directory.)
pub fn open_beneath(
    root: std::os::fd::BorrowedFd<'_>,
    path: &str,
    flags: libc::c_int,
    mode: u64,
) -> std::io::Result<std::os::fd::OwnedFd> {
    let path =
        CString::new(path).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    open_beneath_c(root, &path, flags, mode)
}

/// [`open_beneath`] for a path of any bytes (tar entries need not be UTF-8).
pub fn open_beneath_c(
    root: std::os::fd::BorrowedFd<'_>,
    path: &std::ffi::CStr,
    flags: libc::c_int,
    mode: u64,
) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _};
    let how = OpenHow {
        flags: u64::try_from(flags | libc::O_CLOEXEC).unwrap_or(0),
        mode,
        resolve: RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: openat2 with a valid dirfd, path and open_how.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            path.as_ptr(),
            &raw const how,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| std::io::Error::from(std::io::ErrorKind::Other))?;
    // SAFETY: a fresh descriptor we own.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// linux/openat2.h.
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}
const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_IN_ROOT: u64 = 0x10;
