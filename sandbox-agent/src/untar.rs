//! Tar streams written below a directory without ever leaving it: image layers into the
//! layer cache, directories copied into a sandbox or out of one.
//!
//! A `..` component is refused outright. Every entry's parent is opened with
//! `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` below the target directory, so a link
//! an earlier entry planted (absolute or relative) resolves as if the directory were `/`;
//! the entry itself is made with `*at` calls on that parent that never follow a link at the
//! last component (`O_NOFOLLOW`, `O_EXCL`, `AT_SYMLINK_NOFOLLOW`). Device nodes are never
//! made (an overlayfs whiteout, a 0/0 character device, is the one exception for layers).
use std::{
    ffi::{CStr, CString},
    io::{self, Read},
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
};

/// How entries are written.
pub struct Rules {
    /// An image layer: owners, modes (setuid bits too: the sandbox's mounts are `nosuid` and
    /// its processes `no_new_privs`) and whiteouts as overlayfs reads them. Otherwise files
    /// copied in: owned by whoever writes them (the thread's fsuid), permission bits only,
    /// `.wh.` names are plain names.
    pub layer: bool,
    /// At most this many bytes of file content.
    pub max_bytes: u64,
}

/// What an unpack wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    pub entries: u64,
    /// Bytes of file content.
    pub bytes: u64,
    /// Character and block devices not made (the sandbox has its own `/dev`).
    pub skipped_devices: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum UntarError {
    #[error("entry \"{0}\" leaves the directory (a \"..\" component)")]
    Escapes(String),
    #[error("entry \"{path}\": {why}")]
    Entry { path: String, why: String },
    #[error("not a valid tar stream: {0}")]
    Format(io::Error),
    #[error("more than {0} bytes of file content (the limit)")]
    TooLarge(u64),
    #[error("the file system is full")]
    Full,
}

/// The components of a tar path: leading `/` and `.` dropped; `None` if one is `..`.
pub fn components(path: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    for part in path.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return None,
            p => out.push(p),
        }
    }
    Some(out)
}

/// Writes the tar `stream` below the directory `root` (opened `O_DIRECTORY`).
pub fn unpack(
    stream: impl Read,
    root: BorrowedFd<'_>,
    rules: &Rules,
) -> Result<Summary, UntarError> {
    let mut archive = tar::Archive::new(stream);
    let mut summary = Summary::default();
    // Directory modes and times are set last: a read-only directory must still take the
    // entries that follow it.
    let mut dirs: Vec<(Vec<u8>, u32, i64)> = Vec::new();
    let mut cached: Option<(Vec<u8>, OwnedFd)> = None;
    for entry in archive.entries().map_err(UntarError::Format)? {
        let mut entry = entry.map_err(UntarError::Format)?;
        let raw = entry.path_bytes().into_owned();
        let shown = || String::from_utf8_lossy(&raw).into_owned();
        let parts = components(&raw).ok_or_else(|| UntarError::Escapes(shown()))?;
        let header = entry.header();
        let kind = header.entry_type();
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader
        ) {
            continue;
        }
        let Some((name, parent)) = parts.split_last() else {
            // The directory itself ("./"): it is there already.
            continue;
        };
        let fail = |e: io::Error| entry_error(&shown(), &e);
        let mode = header.mode().unwrap_or(0o644);
        let mode = if rules.layer {
            mode & 0o7777
        } else {
            mode & 0o777
        };
        let owner = if rules.layer {
            Some((
                u32::try_from(header.uid().unwrap_or(0)).unwrap_or(0),
                u32::try_from(header.gid().unwrap_or(0)).unwrap_or(0),
            ))
        } else {
            None
        };
        let mtime = header
            .mtime()
            .ok()
            .and_then(|t| i64::try_from(t).ok())
            .unwrap_or(0);
        let parent_path = parent.join(&b'/');
        let regular = matches!(kind, tar::EntryType::Regular | tar::EntryType::Continuous);
        // A parent stays open across the files of one directory; anything else may change
        // what a path names, so it is looked up again.
        let dir = match cached.take() {
            Some((path, fd)) if regular && path == parent_path => fd,
            _ => open_parent(root, parent, true).map_err(fail)?,
        };
        let cname = cstring(name).map_err(fail)?;
        summary.entries += 1;
        if rules.layer && name.starts_with(b".wh.") {
            whiteout(dir.as_fd(), &name[4..]).map_err(fail)?;
            continue;
        }
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = header.size().unwrap_or(0);
                summary.bytes = summary.bytes.saturating_add(size);
                if summary.bytes > rules.max_bytes {
                    return Err(UntarError::TooLarge(rules.max_bytes));
                }
                replace(dir.as_fd(), &cname, false).map_err(fail)?;
                let fd = openat(
                    dir.as_fd(),
                    &cname,
                    libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
                    0o600,
                )
                .map_err(fail)?;
                let mut file = std::fs::File::from(fd);
                io::copy(&mut entry, &mut file).map_err(fail)?;
                finish(file.as_fd(), owner, mode, mtime).map_err(fail)?;
            }
            tar::EntryType::Directory => {
                make_dir(dir.as_fd(), &cname).map_err(fail)?;
                if let Some((uid, gid)) = owner {
                    chown_at(dir.as_fd(), &cname, uid, gid).map_err(fail)?;
                }
                dirs.push((parts.join(&b'/'), mode, mtime));
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| entry_error(&shown(), &io::Error::other("no link target")))?;
                let target = cstring(&target).map_err(fail)?;
                replace(dir.as_fd(), &cname, false).map_err(fail)?;
                // SAFETY: valid C strings and directory descriptor.
                check(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), cname.as_ptr()) })
                    .map_err(fail)?;
                if let Some((uid, gid)) = owner {
                    chown_at(dir.as_fd(), &cname, uid, gid).map_err(fail)?;
                }
                set_times_at(dir.as_fd(), &cname, mtime).map_err(fail)?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| entry_error(&shown(), &io::Error::other("no link target")))?
                    .into_owned();
                let target_parts =
                    components(&target).ok_or_else(|| UntarError::Escapes(shown()))?;
                let Some((target_name, target_parent)) = target_parts.split_last() else {
                    return Err(entry_error(
                        &shown(),
                        &io::Error::other("a hard link to the directory itself"),
                    ));
                };
                if target_parts == parts {
                    continue;
                }
                let from = open_parent(root, target_parent, false).map_err(fail)?;
                let target_name = cstring(target_name).map_err(fail)?;
                replace(dir.as_fd(), &cname, false).map_err(fail)?;
                // SAFETY: valid C strings and directory descriptors; flags 0: a link at the
                // target's last component is linked itself, never followed.
                check(unsafe {
                    libc::linkat(
                        from.as_raw_fd(),
                        target_name.as_ptr(),
                        dir.as_raw_fd(),
                        cname.as_ptr(),
                        0,
                    )
                })
                .map_err(fail)?;
            }
            tar::EntryType::Fifo => {
                replace(dir.as_fd(), &cname, false).map_err(fail)?;
                // SAFETY: valid C string and directory descriptor.
                check(unsafe {
                    libc::mknodat(dir.as_raw_fd(), cname.as_ptr(), libc::S_IFIFO | 0o600, 0)
                })
                .map_err(fail)?;
                if let Some((uid, gid)) = owner {
                    chown_at(dir.as_fd(), &cname, uid, gid).map_err(fail)?;
                }
                let fd = openat(dir.as_fd(), &cname, libc::O_PATH | libc::O_NOFOLLOW, 0)
                    .map_err(fail)?;
                chmod_path(fd.as_fd(), mode).map_err(fail)?;
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                let whiteout_node = rules.layer
                    && kind == tar::EntryType::Char
                    && header.device_major().ok().flatten() == Some(0)
                    && header.device_minor().ok().flatten() == Some(0);
                if whiteout_node {
                    whiteout(dir.as_fd(), name).map_err(fail)?;
                } else {
                    summary.skipped_devices += 1;
                }
            }
            other => {
                return Err(entry_error(
                    &shown(),
                    &io::Error::other(format!("unsupported tar entry type {other:?}")),
                ));
            }
        }
        if regular {
            cached = Some((parent_path, dir));
        }
    }
    drop(cached);
    // Deepest first, so that a parent's time is set after its children are done.
    dirs.sort_by(|a, b| b.0.len().cmp(&a.0.len()));
    for (path, mode, mtime) in dirs {
        let shown = String::from_utf8_lossy(&path).into_owned();
        let parts = components(&path).unwrap_or_default();
        let fd = open_parent(root, &parts, false).map_err(|e| entry_error(&shown, &e))?;
        finish(fd.as_fd(), None, mode, mtime).map_err(|e| entry_error(&shown, &e))?;
    }
    Ok(summary)
}

fn entry_error(path: &str, e: &io::Error) -> UntarError {
    match e.raw_os_error() {
        Some(libc::ENOSPC | libc::EDQUOT) => UntarError::Full,
        Some(libc::EXDEV) => UntarError::Entry {
            path: path.into(),
            why: "a path that leaves the directory".into(),
        },
        _ => UntarError::Entry {
            path: path.into(),
            why: e.to_string(),
        },
    }
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::other("a NUL byte in a name"))
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn openat(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int, mode: u32) -> io::Result<OwnedFd> {
    // SAFETY: valid C string and directory descriptor.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode,
        )
    };
    check(fd)?;
    // SAFETY: a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Links followed while making missing directories, as the kernel's own limit.
const MAX_LINKS: usize = 40;

/// The directory `parts` below `root`, resolved in it; missing ones made (mode 0755) when
/// `create`, at the target of a link that points at a missing directory too (inside `root`).
fn open_parent(root: BorrowedFd<'_>, parts: &[&[u8]], create: bool) -> io::Result<OwnedFd> {
    open_parent_within(root, parts, create, MAX_LINKS)
}

fn open_parent_within(
    root: BorrowedFd<'_>,
    parts: &[&[u8]],
    create: bool,
    links: usize,
) -> io::Result<OwnedFd> {
    let open = |parts: &[&[u8]]| -> io::Result<OwnedFd> {
        let path = if parts.is_empty() {
            c".".to_owned()
        } else {
            cstring(&parts.join(&b'/'))?
        };
        crate::view::open_beneath_c(root, &path, libc::O_RDONLY | libc::O_DIRECTORY, 0)
    };
    match open(parts) {
        Err(e) if create && e.raw_os_error() == Some(libc::ENOENT) => {}
        other => return other,
    }
    let mut dir = open(&[])?;
    for i in 0..parts.len() {
        match open(&parts[..=i]) {
            Ok(fd) => dir = fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                let name = cstring(parts[i])?;
                // SAFETY: valid C string and directory descriptor.
                if unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o755) } != 0 {
                    let e = io::Error::last_os_error();
                    // A link to a directory not there yet: made where the link points, as
                    // resolving in `root` reads it.
                    let target = match (e.raw_os_error(), links) {
                        (Some(libc::EEXIST), 1..) => read_link(dir.as_fd(), &name)?,
                        (Some(libc::EEXIST), 0) => {
                            return Err(io::Error::from_raw_os_error(libc::ELOOP));
                        }
                        _ => return Err(e),
                    };
                    let mut at: Vec<Vec<u8>> = if target.starts_with(b"/") {
                        Vec::new()
                    } else {
                        parts[..i].iter().map(|p| p.to_vec()).collect()
                    };
                    for part in target.split(|&b| b == b'/') {
                        match part {
                            b"" | b"." => {}
                            // `..` stops at `root`, as RESOLVE_IN_ROOT has it.
                            b".." => {
                                at.pop();
                            }
                            p => at.push(p.to_vec()),
                        }
                    }
                    let at: Vec<&[u8]> = at.iter().map(Vec::as_slice).collect();
                    open_parent_within(root, &at, true, links - 1)?;
                }
                dir = open(&parts[..=i])?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(dir)
}

fn read_link(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: valid C string, directory descriptor and buffer of the length given.
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        // Not a link: something else is in the way.
        return Err(if e.raw_os_error() == Some(libc::EINVAL) {
            io::Error::from_raw_os_error(libc::ENOTDIR)
        } else {
            e
        });
    }
    buf.truncate(usize::try_from(n).unwrap_or(0));
    Ok(buf)
}

/// Clears the way for a new entry `name`: whatever is there goes (a directory with all it
/// holds), unless `keep_dir` and it is a directory.
fn replace(dir: BorrowedFd<'_>, name: &CStr, keep_dir: bool) -> io::Result<()> {
    // SAFETY: valid C string and directory descriptor.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENOENT) => Ok(()),
        Some(libc::EISDIR) if keep_dir => Ok(()),
        Some(libc::EISDIR) => remove_tree_at(dir, name),
        _ => Err(e),
    }
}

/// Removes the directory `name` below `dir` and everything in it, never following a link.
pub fn remove_tree_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    let fd = openat(
        dir,
        name,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    )?;
    let children: Vec<CString> = {
        let mut listing = nix::dir::Dir::from_fd(fd.try_clone()?).map_err(io::Error::from)?;
        listing
            .iter()
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_owned())
            .filter(|n| n.as_bytes() != b"." && n.as_bytes() != b"..")
            .collect()
    };
    for child in children {
        replace(fd.as_fd(), &child, false)?;
    }
    // SAFETY: valid C string and directory descriptor.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), libc::AT_REMOVEDIR) })
}

fn make_dir(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: valid C string and directory descriptor.
    if unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o755) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EEXIST) {
        return Err(e);
    }
    // Something is there: a directory stays (a later entry updates it), anything else goes.
    replace(dir, name, true)?;
    // SAFETY: as above.
    match check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o755) }) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        other => other,
    }
}

/// An overlayfs whiteout: `.wh..wh..opq` makes the directory opaque (lower layers' entries
/// in it are hidden); `.wh.NAME` hides NAME (a 0/0 character device in its place).
fn whiteout(dir: BorrowedFd<'_>, hidden: &[u8]) -> io::Result<()> {
    if hidden == b".wh..opq" {
        // SAFETY: a directory descriptor opened for reading, valid C strings and value.
        return check(unsafe {
            libc::fsetxattr(
                dir.as_raw_fd(),
                c"trusted.overlay.opaque".as_ptr(),
                b"y".as_ptr().cast(),
                1,
                0,
            )
        });
    }
    if hidden.starts_with(b".wh.") {
        // Other AUFS meta entries (`.wh..wh.plnk`...) mean nothing to overlayfs.
        return Ok(());
    }
    if matches!(hidden, b"" | b"." | b"..") || hidden.contains(&b'/') {
        return Err(io::Error::other("a whiteout without a name"));
    }
    let name = cstring(hidden)?;
    replace(dir, &name, false)?;
    // SAFETY: valid C string and directory descriptor; device 0/0 is overlayfs's whiteout.
    check(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), libc::S_IFCHR, 0) })
}

/// Owner, mode (after the owner: `chown` clears setuid bits) and modification time.
fn finish(fd: BorrowedFd<'_>, owner: Option<(u32, u32)>, mode: u32, mtime: i64) -> io::Result<()> {
    if let Some((uid, gid)) = owner {
        // SAFETY: a valid descriptor.
        check(unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) })?;
    }
    // SAFETY: a valid descriptor.
    check(unsafe { libc::fchmod(fd.as_raw_fd(), mode) })?;
    let times = [time(mtime), time(mtime)];
    // SAFETY: a valid descriptor and two timespecs.
    check(unsafe { libc::futimens(fd.as_raw_fd(), times.as_ptr()) })
}

fn chmod_path(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    // fchmod does not take an O_PATH descriptor; its /proc/self/fd link does (the FIFO is
    // never opened for reading or writing, which would block).
    let path = CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(|_| io::Error::other("fd path"))?;
    // SAFETY: a valid C string.
    check(unsafe { libc::chmod(path.as_ptr(), mode) })
}

fn chown_at(dir: BorrowedFd<'_>, name: &CStr, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: valid C string and directory descriptor.
    check(unsafe {
        libc::fchownat(
            dir.as_raw_fd(),
            name.as_ptr(),
            uid,
            gid,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

fn set_times_at(dir: BorrowedFd<'_>, name: &CStr, mtime: i64) -> io::Result<()> {
    let times = [time(mtime), time(mtime)];
    // SAFETY: valid C string, directory descriptor and two timespecs.
    check(unsafe {
        libc::utimensat(
            dir.as_raw_fd(),
            name.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

fn time(secs: i64) -> libc::timespec {
    libc::timespec {
        tv_sec: secs,
        tv_nsec: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::components;

    #[test]
    fn components_drop_roots_and_dots_and_refuse_parents() {
        assert_eq!(
            components(b"./a//b/./c"),
            Some(vec![&b"a"[..], &b"b"[..], &b"c"[..]])
        );
        assert_eq!(
            components(b"/etc/passwd"),
            Some(vec![&b"etc"[..], &b"passwd"[..]])
        );
        assert_eq!(components(b"a/../../etc"), None);
        assert_eq!(components(b"./"), Some(vec![]));
    }
}
