//! Directory trees as tar streams, both ways, never leaving the directory: image layers into
//! the layer cache, directories copied into a sandbox or out of one (`cp`).
//!
//! Unpacking: a `..` component is refused outright. Every entry's parent is opened with
//! `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` below the target directory, so a link
//! an earlier entry planted (absolute or relative) resolves as if the directory were `/`;
//! the entry itself is made with `*at` calls on that parent that never follow a link at the
//! last component (`O_NOFOLLOW`, `O_EXCL`, `AT_SYMLINK_NOFOLLOW`). Device nodes are never
//! made (an overlayfs whiteout, a 0/0 character device, is the one exception for layers).
//!
//! Packing walks the tree by descriptors (`openat` with `O_NOFOLLOW` one name at a time):
//! links are archived as links, never followed.
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
    /// Permission bits kept of what the tar says (layers: all twelve; a copy into a sandbox
    /// `0o777`; a copy from one onto the host `0o755`, nothing others may write).
    pub mode_mask: u32,
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
pub enum TarError {
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
    #[error("it exists (and is not an empty directory): a directory is copied to a new path")]
    Exists,
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
pub fn unpack(stream: impl Read, root: BorrowedFd<'_>, rules: &Rules) -> Result<Summary, TarError> {
    let mut archive = tar::Archive::new(stream);
    let mut summary = Summary::default();
    // Directory modes and times are set last: a read-only directory must still take the
    // entries that follow it.
    let mut dirs: Vec<(Vec<u8>, u32, i64)> = Vec::new();
    let mut cached: Option<(Vec<u8>, OwnedFd)> = None;
    // Long names and PAX records for the entry that follows, read here with a cap (the tar
    // crate would read one of any size into memory).
    let mut extended = Extended::default();
    let entries = archive.entries().map_err(TarError::Format)?.raw(true);
    for entry in entries {
        let mut entry = entry.map_err(TarError::Format)?;
        if extended.take_in(&mut entry)? {
            continue;
        }
        let (raw, link) = extended.apply(&entry)?;
        let header = entry.header();
        let kind = header.entry_type();
        let shown = || String::from_utf8_lossy(&raw).into_owned();
        let parts = components(&raw).ok_or_else(|| TarError::Escapes(shown()))?;
        let Some((name, parent)) = parts.split_last() else {
            // The directory itself ("./"): it is there already.
            continue;
        };
        let fail = |e: io::Error| entry_error(&shown(), &e);
        let meta = Meta::of(header, rules);
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
        if let Some(later) = write_entry(
            (&mut entry, link.as_deref()),
            (root, dir.as_fd()),
            (&parts, name, &cname),
            &meta,
            &mut summary,
            rules,
        )? {
            dirs.push(later);
        }
        if regular {
            cached = Some((parent_path, dir));
        }
    }
    drop(cached);
    // Deepest first, so that a parent's time is set after its children are done.
    dirs.sort_by_key(|d| std::cmp::Reverse(d.0.len()));
    for (path, mode, mtime) in dirs {
        let shown = String::from_utf8_lossy(&path).into_owned();
        let parts = components(&path).unwrap_or_default();
        let fd = open_parent(root, &parts, false).map_err(|e| entry_error(&shown, &e))?;
        finish(fd.as_fd(), None, mode, mtime).map_err(|e| entry_error(&shown, &e))?;
    }
    Ok(summary)
}

/// Unpacks `stream` as a new directory `name` of `parent` (absent, or an empty directory):
/// into a hidden directory beside it first, renamed into place once whole, removed if not.
pub fn unpack_new(
    parent: BorrowedFd<'_>,
    name: &CStr,
    stream: impl Read,
    rules: &Rules,
) -> Result<Summary, TarError> {
    let fail = |e: io::Error| entry_error(&name.to_string_lossy(), &e);
    match openat(
        parent,
        name,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    ) {
        Ok(dir) => {
            if !is_empty(&dir).map_err(fail)? {
                return Err(TarError::Exists);
            }
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
        Err(e)
            if e.raw_os_error() == Some(libc::ENOTDIR) || e.raw_os_error() == Some(libc::ELOOP) =>
        {
            return Err(TarError::Exists);
        }
        Err(e) => return Err(fail(e)),
    }
    let partial = cstring(format!(".sa-partial-{}-{}", std::process::id(), unique()).as_bytes())
        .map_err(fail)?;
    // SAFETY: valid C string and directory descriptor.
    check(unsafe { libc::mkdirat(parent.as_raw_fd(), partial.as_ptr(), 0o755) }).map_err(fail)?;
    let written = openat(
        parent,
        &partial,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    )
    .map_err(fail)
    .and_then(|dir| unpack(stream, dir.as_fd(), rules))
    .and_then(|summary| {
        // SAFETY: valid C strings and directory descriptor; an empty directory at
        // `name` is replaced, anything else refuses.
        check(unsafe {
            libc::renameat(
                parent.as_raw_fd(),
                partial.as_ptr(),
                parent.as_raw_fd(),
                name.as_ptr(),
            )
        })
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENOTEMPTY | libc::EEXIST | libc::ENOTDIR | libc::EISDIR) => TarError::Exists,
            _ => fail(e),
        })?;
        Ok(summary)
    });
    match written {
        Err(e) => match remove_tree_at(parent, &partial) {
            Ok(()) => Err(e),
            Err(left) => Err(TarError::Entry {
                path: partial.to_string_lossy().into_owned(),
                why: format!("{e}; this partial copy is left: {left}"),
            }),
        },
        ok => ok,
    }
}

fn is_empty(dir: &OwnedFd) -> io::Result<bool> {
    Ok(names(dir)?.is_empty())
}

/// The names in the directory `dir` but `.` and `..`.
fn names(dir: &OwnedFd) -> io::Result<Vec<CString>> {
    let mut listing = nix::dir::Dir::from_fd(dir.try_clone()?).map_err(io::Error::from)?;
    Ok(listing
        .iter()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_owned())
        .filter(|n| !matches!(n.as_bytes(), b"." | b".."))
        .collect())
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Deepest directory a pack descends into.
const MAX_DEPTH: usize = 256;

/// The tree below the directory `dir` as a tar (names relative to it; permission bits,
/// times; no owners), with at most `max_bytes` of file content. Links are archived as
/// links; sockets, FIFOs and devices are left out (counted in `skipped_devices`).
pub fn pack(dir: BorrowedFd<'_>, max_bytes: u64) -> Result<(Vec<u8>, Summary), TarError> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut summary = Summary::default();
    let root = dir.try_clone_to_owned().map_err(|e| entry_error(".", &e))?;
    pack_dir(&mut builder, &root, b"", &mut summary, max_bytes, 0)?;
    let tar = builder.into_inner().map_err(|e| entry_error(".", &e))?;
    Ok((tar, summary))
}

fn pack_dir(
    builder: &mut tar::Builder<Vec<u8>>,
    dir: &OwnedFd,
    prefix: &[u8],
    summary: &mut Summary,
    max_bytes: u64,
    depth: usize,
) -> Result<(), TarError> {
    use std::{ffi::OsStr, os::unix::ffi::OsStrExt as _};
    let shown = |name: &[u8]| String::from_utf8_lossy(name).into_owned();
    if depth > MAX_DEPTH {
        return Err(entry_error(
            &shown(prefix),
            &io::Error::other("directories nested too deep"),
        ));
    }
    let mut listed = names(dir).map_err(|e| entry_error(&shown(prefix), &e))?;
    listed.sort();
    for name in listed {
        let mut path = prefix.to_vec();
        path.extend_from_slice(name.as_bytes());
        let fail = |e: io::Error| entry_error(&shown(&path), &e);
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: valid C string, directory descriptor and stat buffer.
        check(unsafe {
            libc::fstatat(
                dir.as_raw_fd(),
                name.as_ptr(),
                st.as_mut_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })
        .map_err(fail)?;
        // SAFETY: fstatat succeeded and filled it.
        let st = unsafe { st.assume_init() };
        let mut header = tar::Header::new_gnu();
        header.set_mode(st.st_mode & 0o777);
        header.set_mtime(u64::try_from(st.st_mtime).unwrap_or(0));
        let at = std::path::Path::new(OsStr::from_bytes(&path));
        summary.entries += 1;
        match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => {
                pack_file(
                    builder,
                    (dir, &name, &st),
                    (&mut header, at),
                    summary,
                    max_bytes,
                )?;
            }
            libc::S_IFDIR => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                builder
                    .append_data(&mut header, at, io::empty())
                    .map_err(fail)?;
                let child = openat(
                    dir.as_fd(),
                    &name,
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                    0,
                )
                .map_err(fail)?;
                let mut prefix = path.clone();
                prefix.push(b'/');
                pack_dir(builder, &child, &prefix, summary, max_bytes, depth + 1)?;
            }
            libc::S_IFLNK => {
                let target = read_link(dir.as_fd(), &name).map_err(fail)?;
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                builder
                    .append_link(
                        &mut header,
                        at,
                        std::path::Path::new(OsStr::from_bytes(&target)),
                    )
                    .map_err(fail)?;
            }
            _ => summary.skipped_devices += 1,
        }
        within_tar_limit(builder, max_bytes)?;
    }
    Ok(())
}

/// The regular file `name` of `dir` (as `st` saw it) into the archive.
fn pack_file(
    builder: &mut tar::Builder<Vec<u8>>,
    (dir, name, st): (&OwnedFd, &CStr, &libc::stat),
    (header, at): (&mut tar::Header, &std::path::Path),
    summary: &mut Summary,
    max_bytes: u64,
) -> Result<(), TarError> {
    use std::os::unix::fs::MetadataExt as _;
    let fail = |e: io::Error| entry_error(&at.to_string_lossy(), &e);
    let size = u64::try_from(st.st_size).unwrap_or(0);
    summary.bytes = summary.bytes.saturating_add(size);
    if summary.bytes > max_bytes {
        return Err(TarError::TooLarge(max_bytes));
    }
    // Non-blocking, and checked to be the file just looked at: a FIFO swapped in
    // meanwhile would block the open (and the agent) forever.
    let file = std::fs::File::from(
        openat(
            dir.as_fd(),
            name,
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK,
            0,
        )
        .map_err(fail)?,
    );
    let opened = file.metadata().map_err(fail)?;
    if !opened.is_file() || opened.dev() != st.st_dev || opened.ino() != st.st_ino {
        return Err(fail(io::Error::other("replaced while being copied")));
    }
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(size);
    // Exactly `size` bytes whatever the file does meanwhile (zeros if it shrank).
    let data = file.take(size).chain(io::repeat(0)).take(size);
    builder.append_data(header, at, data).map_err(fail)
}

/// Headers and long names count too: a tree of many long, empty names must not grow the
/// archive without bound. Twice the content limit (the API's body limit for a tar).
fn within_tar_limit(builder: &tar::Builder<Vec<u8>>, max_bytes: u64) -> Result<(), TarError> {
    if builder.get_ref().len() as u64 > max_bytes.saturating_mul(2) {
        return Err(TarError::TooLarge(max_bytes));
    }
    Ok(())
}

/// Longest GNU long name or PAX record block taken (`PATH_MAX` is 4096).
const MAX_EXTENDED_BYTES: u64 = 64 << 10;

/// GNU long names and PAX records waiting for the entry they describe.
#[derive(Default)]
struct Extended {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    size: Option<u64>,
}

impl Extended {
    /// Takes in `entry` if it describes the next one (or is a PAX global header, which
    /// nothing here needs); `false` for an entry of its own.
    fn take_in<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<bool, TarError> {
        let kind = entry.header().entry_type();
        if !matches!(
            kind,
            tar::EntryType::GNULongName
                | tar::EntryType::GNULongLink
                | tar::EntryType::XHeader
                | tar::EntryType::XGlobalHeader
        ) {
            return Ok(false);
        }
        if kind == tar::EntryType::XGlobalHeader {
            return Ok(true);
        }
        let size = entry.header().size().unwrap_or(u64::MAX);
        if size > MAX_EXTENDED_BYTES {
            return Err(TarError::Format(io::Error::other(format!(
                "a long name or PAX block of {size} bytes (at most {MAX_EXTENDED_BYTES})"
            ))));
        }
        let mut data = Vec::new();
        entry
            .take(MAX_EXTENDED_BYTES)
            .read_to_end(&mut data)
            .map_err(TarError::Format)?;
        match kind {
            tar::EntryType::GNULongName => self.path = Some(trim_nul(data)),
            tar::EntryType::GNULongLink => self.link = Some(trim_nul(data)),
            _ => {
                for record in tar::PaxExtensions::new(&data) {
                    let record = record.map_err(TarError::Format)?;
                    match record.key_bytes() {
                        b"path" => self.path = Some(record.value_bytes().to_vec()),
                        b"linkpath" => self.link = Some(record.value_bytes().to_vec()),
                        b"size" => {
                            self.size = std::str::from_utf8(record.value_bytes())
                                .ok()
                                .and_then(|v| v.parse().ok());
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(true)
    }

    /// The path and link target of `entry`, with what came before it applied.
    fn apply<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
    ) -> Result<(Vec<u8>, Option<Vec<u8>>), TarError> {
        let path = self
            .path
            .take()
            .unwrap_or_else(|| entry.path_bytes().into_owned());
        let link = self
            .link
            .take()
            .or_else(|| entry.link_name_bytes().map(std::borrow::Cow::into_owned));
        // Its data is read by the header's size: a PAX size that differs cannot be followed.
        if let Some(size) = self.size.take()
            && Some(size) != entry.header().size().ok()
        {
            return Err(TarError::Format(io::Error::other(format!(
                "entry \"{}\": a PAX size the header does not carry",
                String::from_utf8_lossy(&path)
            ))));
        }
        Ok((path, link))
    }
}

fn trim_nul(mut data: Vec<u8>) -> Vec<u8> {
    while data.last() == Some(&0) {
        data.pop();
    }
    data
}

/// An entry's mode, owner and time as the rules keep them.
struct Meta {
    mode: u32,
    owner: Option<(u32, u32)>,
    mtime: i64,
    kind: tar::EntryType,
    size: u64,
}

impl Meta {
    fn of(header: &tar::Header, rules: &Rules) -> Self {
        let mode = header.mode().unwrap_or(0o644);
        Self {
            mode: mode & rules.mode_mask & 0o7777,
            owner: rules.layer.then(|| {
                (
                    u32::try_from(header.uid().unwrap_or(0)).unwrap_or(0),
                    u32::try_from(header.gid().unwrap_or(0)).unwrap_or(0),
                )
            }),
            mtime: header
                .mtime()
                .ok()
                .and_then(|t| i64::try_from(t).ok())
                .unwrap_or(0),
            kind: header.entry_type(),
            size: header.size().unwrap_or(0),
        }
    }
}

/// Writes one entry `name` in `dir` (its parent, resolved below `root`); a directory's mode
/// and time are returned to be set last.
fn write_entry<R: Read>(
    (entry, link): (&mut tar::Entry<'_, R>, Option<&[u8]>),
    (root, dir): (BorrowedFd<'_>, BorrowedFd<'_>),
    (parts, name, cname): (&[&[u8]], &[u8], &CStr),
    meta: &Meta,
    summary: &mut Summary,
    rules: &Rules,
) -> Result<Option<(Vec<u8>, u32, i64)>, TarError> {
    let shown = || String::from_utf8_lossy(&parts.join(&b'/')).into_owned();
    let fail = |e: io::Error| entry_error(&shown(), &e);
    let (owner, mode, mtime) = (meta.owner, meta.mode, meta.mtime);
    let header = entry.header().clone();
    let kind = meta.kind;
    match kind {
        tar::EntryType::Regular | tar::EntryType::Continuous => {
            let size = meta.size;
            summary.bytes = summary.bytes.saturating_add(size);
            if summary.bytes > rules.max_bytes {
                return Err(TarError::TooLarge(rules.max_bytes));
            }
            replace(dir.as_fd(), cname, false).map_err(fail)?;
            let fd = openat(
                dir.as_fd(),
                cname,
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
                0o600,
            )
            .map_err(fail)?;
            let mut file = std::fs::File::from(fd);
            io::copy(entry, &mut file).map_err(fail)?;
            finish(file.as_fd(), owner, mode, mtime).map_err(fail)?;
        }
        tar::EntryType::Directory => {
            make_dir(dir.as_fd(), cname).map_err(fail)?;
            if let Some((uid, gid)) = owner {
                chown_at(dir.as_fd(), cname, uid, gid).map_err(fail)?;
            }
            return Ok(Some((parts.join(&b'/'), mode, mtime)));
        }
        tar::EntryType::Symlink => {
            let target =
                link.ok_or_else(|| entry_error(&shown(), &io::Error::other("no link target")))?;
            let target = cstring(target).map_err(fail)?;
            replace(dir.as_fd(), cname, false).map_err(fail)?;
            // SAFETY: valid C strings and directory descriptor.
            check(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), cname.as_ptr()) })
                .map_err(fail)?;
            if let Some((uid, gid)) = owner {
                chown_at(dir.as_fd(), cname, uid, gid).map_err(fail)?;
            }
            set_times_at(dir.as_fd(), cname, mtime).map_err(fail)?;
        }
        tar::EntryType::Link => {
            let target =
                link.ok_or_else(|| entry_error(&shown(), &io::Error::other("no link target")))?;
            hard_link(root, dir, (parts, cname), target)?;
        }
        // A copied tree gets no FIFO (one would block whoever opens it, the agent too).
        tar::EntryType::Fifo if !rules.layer => summary.skipped_devices += 1,
        tar::EntryType::Fifo => {
            replace(dir.as_fd(), cname, false).map_err(fail)?;
            // SAFETY: valid C string and directory descriptor.
            check(unsafe {
                libc::mknodat(dir.as_raw_fd(), cname.as_ptr(), libc::S_IFIFO | 0o600, 0)
            })
            .map_err(fail)?;
            if let Some((uid, gid)) = owner {
                chown_at(dir.as_fd(), cname, uid, gid).map_err(fail)?;
            }
            let fd =
                openat(dir.as_fd(), cname, libc::O_PATH | libc::O_NOFOLLOW, 0).map_err(fail)?;
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
    Ok(None)
}

/// The hard link `cname` in `dir` to `target`, a path below `root` (never `..`).
fn hard_link(
    root: BorrowedFd<'_>,
    dir: BorrowedFd<'_>,
    (parts, cname): (&[&[u8]], &CStr),
    target: &[u8],
) -> Result<(), TarError> {
    let shown = || String::from_utf8_lossy(&parts.join(&b'/')).into_owned();
    let fail = |e: io::Error| entry_error(&shown(), &e);
    let target_parts = components(target).ok_or_else(|| TarError::Escapes(shown()))?;
    let Some((target_name, target_parent)) = target_parts.split_last() else {
        return Err(entry_error(
            &shown(),
            &io::Error::other("a hard link to the directory itself"),
        ));
    };
    if target_parts == parts {
        return Ok(());
    }
    let from = open_parent(root, target_parent, false).map_err(fail)?;
    let target_name = cstring(target_name).map_err(fail)?;
    replace(dir, cname, false).map_err(fail)?;
    // SAFETY: valid C strings and directory descriptors; flags 0: a link at the target's
    // last component is linked itself, never followed.
    check(unsafe {
        libc::linkat(
            from.as_raw_fd(),
            target_name.as_ptr(),
            dir.as_raw_fd(),
            cname.as_ptr(),
            0,
        )
    })
    .map_err(fail)
}

fn entry_error(path: &str, e: &io::Error) -> TarError {
    match e.raw_os_error() {
        Some(libc::ENOSPC | libc::EDQUOT) => TarError::Full,
        Some(libc::EXDEV) => TarError::Entry {
            path: path.into(),
            why: "a path that leaves the directory".into(),
        },
        _ => TarError::Entry {
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
    clear(dir, name, keep_dir, MAX_DEPTH)
}

/// [`replace`], a directory removed at most `depth` levels down.
fn clear(dir: BorrowedFd<'_>, name: &CStr, keep_dir: bool, depth: usize) -> io::Result<()> {
    // SAFETY: valid C string and directory descriptor.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENOENT) => Ok(()),
        Some(libc::EISDIR) if keep_dir => Ok(()),
        Some(libc::EISDIR) => remove_tree(dir, name, depth),
        _ => Err(e),
    }
}

/// Removes the directory `name` below `dir` and everything in it, never following a link.
pub fn remove_tree_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    remove_tree(dir, name, MAX_DEPTH)
}

/// [`remove_tree_at`], at most `depth` levels down (one descriptor each).
fn remove_tree(dir: BorrowedFd<'_>, name: &CStr, depth: usize) -> io::Result<()> {
    if depth == 0 {
        return Err(io::Error::other("directories nested too deep to remove"));
    }
    let fd = openat(
        dir,
        name,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    )?;
    // A directory made read-only (by a tar's modes) still gives up its entries.
    // SAFETY: a valid descriptor.
    let _ = unsafe { libc::fchmod(fd.as_raw_fd(), 0o700) };
    for child in names(&fd)? {
        clear(fd.as_fd(), &child, false, depth - 1)?;
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
    use std::{fs, os::unix::fs::PermissionsExt as _, path::PathBuf};

    use super::{Rules, TarError, components, remove_tree_at, unpack};

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sa-tarball-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    /// A tar of raw entries: (type, name, data).
    fn tar_of(entries: &[(tar::EntryType, &str, &[u8], u32)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (kind, name, data, mode) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_mode(*mode);
            let raw = header.as_old_mut();
            raw.name[..name.len()].copy_from_slice(name.as_bytes());
            header.set_size(data.len() as u64);
            header.set_cksum();
            builder.append(&header, *data).expect("append");
        }
        builder.into_inner().expect("tar")
    }

    fn copy_rules(mask: u32) -> Rules {
        Rules {
            layer: false,
            max_bytes: 1 << 20,
            mode_mask: mask,
        }
    }

    #[test]
    fn long_names_past_the_cap_are_refused_before_they_are_read_whole() {
        let dir = scratch("longname");
        let huge = vec![b'a'; 100 << 10];
        let tar = tar_of(&[
            (tar::EntryType::GNULongName, "././@LongLink", &huge, 0o644),
            (tar::EntryType::Regular, "short", b"x", 0o644),
        ]);
        let root = fs::File::open(&dir).expect("dir");
        let err = unpack(
            &tar[..],
            std::os::fd::AsFd::as_fd(&root),
            &copy_rules(0o777),
        )
        .expect_err("a 100 KiB long name");
        assert!(matches!(err, TarError::Format(_)), "{err}");
        assert!(err.to_string().contains("long name or PAX block"), "{err}");
        // A long name within the cap names the next entry.
        let long = format!("{}/file", "d".repeat(200));
        let tar = tar_of(&[
            (
                tar::EntryType::GNULongName,
                "././@LongLink",
                long.as_bytes(),
                0o644,
            ),
            (tar::EntryType::Regular, "short", b"x", 0o644),
        ]);
        unpack(
            &tar[..],
            std::os::fd::AsFd::as_fd(&root),
            &copy_rules(0o777),
        )
        .expect("unpack");
        assert_eq!(fs::read(dir.join(&long)).expect("long-named file"), b"x");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn copies_get_no_fifos_and_no_mode_bits_past_the_mask() {
        let dir = scratch("copy");
        let tar = tar_of(&[
            (tar::EntryType::Fifo, "pipe", b"", 0o666),
            (tar::EntryType::Regular, "open", b"x", 0o4777),
            (tar::EntryType::Directory, "ro", b"", 0o500),
            (tar::EntryType::Regular, "ro/inside", b"y", 0o644),
        ]);
        let root = fs::File::open(&dir).expect("dir");
        let summary = unpack(
            &tar[..],
            std::os::fd::AsFd::as_fd(&root),
            &copy_rules(0o755),
        )
        .expect("unpack");
        assert_eq!(summary.skipped_devices, 1);
        assert!(!dir.join("pipe").exists());
        let mode = fs::metadata(dir.join("open"))
            .expect("open")
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o755);
        // A read-only directory still took its entry, and a tree with one still goes.
        assert_eq!(fs::read(dir.join("ro/inside")).expect("inside"), b"y");
        let parent = fs::File::open(std::env::temp_dir()).expect("tmp");
        let name = std::ffi::CString::new(dir.file_name().unwrap().as_encoded_bytes()).unwrap();
        remove_tree_at(std::os::fd::AsFd::as_fd(&parent), &name).expect("removed");
        assert!(!dir.exists());
    }

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
