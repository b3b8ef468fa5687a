//! Files into and out of a live sandbox (`cp`, `PUT`/`GET .../files`), whatever its network
//! policy: the agent reaches the sandbox's file system through its init's root
//! (`/proc/<init>/root`, in the sandbox's mount namespace) and resolves every path there with
//! `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`: `..`, absolute links and a link
//! swapped in during the copy all stay inside the sandbox's view. The thread acts with the
//! sandbox user's file-system ids (`setfsuid`), so the kernel checks the user's permissions
//! (no reading the host's `/etc/shadow` through a view that shows it) and new files are the
//! user's.
use std::{
    fs,
    io::{self, Read as _, Write as _},
    os::fd::{AsFd as _, OwnedFd},
};

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("invalid path \"{0}\": use an absolute path in the sandbox")]
    BadPath(String),
    #[error("{path}: {why}")]
    Access { path: String, why: String },
    #[error("{path}: larger than the limit of {limit} bytes (max_file_bytes)")]
    TooLarge { path: String, limit: u64 },
    #[error("{path}: the sandbox's file system is full")]
    Full { path: String },
    #[error("{0}: a directory (GET .../archive copies directories)")]
    IsDirectory(String),
    #[error("cannot reach the sandbox's file system: {0}")]
    Root(io::Error),
}

impl FilesError {
    /// Whether the caller asked for something wrong (else the agent failed).
    pub fn is_request(&self) -> bool {
        !matches!(self, Self::Root(_))
    }
}

/// A live sandbox's file system, as its user.
pub struct SandboxFs {
    root: OwnedFd,
    uid: u32,
    gid: u32,
}

impl SandboxFs {
    /// The file system that `init_pid` (the sandbox's first process) sees, as `uid`/`gid`.
    pub fn open(init_pid: i32, uid: u32, gid: u32) -> Result<Self, FilesError> {
        let root = fs::File::open(format!("/proc/{init_pid}/root"))
            .map_err(FilesError::Root)?
            .into();
        Ok(Self { root, uid, gid })
    }

    /// Writes `data` to `path` (created with mode 0644, or truncated).
    pub fn write(&self, path: &str, data: &[u8]) -> Result<(), FilesError> {
        let rel = relative(path)?;
        let _as_user = FsIds::assume(self.uid, self.gid);
        let fd = self
            .open_at(
                rel,
                libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_NOFOLLOW,
                0o644,
            )
            .map_err(|e| access(path, &e))?;
        let mut file = fs::File::from(fd);
        file.write_all(data)
            .and_then(|()| file.sync_data())
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENOSPC | libc::EDQUOT) => FilesError::Full { path: path.into() },
                _ => access(path, &e),
            })
    }

    /// The content of `path`, at most `limit` bytes.
    pub fn read(&self, path: &str, limit: u64) -> Result<Vec<u8>, FilesError> {
        let rel = relative(path)?;
        let _as_user = FsIds::assume(self.uid, self.gid);
        let fd = self
            .open_at(rel, libc::O_RDONLY, 0)
            .map_err(|e| access(path, &e))?;
        let file = fs::File::from(fd);
        let meta = file.metadata().map_err(|e| access(path, &e))?;
        if meta.is_dir() {
            return Err(FilesError::IsDirectory(path.into()));
        }
        if !meta.is_file() {
            return Err(FilesError::Access {
                path: path.into(),
                why: "not a regular file or directory".into(),
            });
        }
        let mut data = Vec::new();
        file.take(limit + 1)
            .read_to_end(&mut data)
            .map_err(|e| access(path, &e))?;
        if data.len() as u64 > limit {
            return Err(FilesError::TooLarge {
                path: path.into(),
                limit,
            });
        }
        Ok(data)
    }

    /// Unpacks the tar `data` as the new directory `path` (absent, or an empty directory),
    /// owned by the user; at most `limit` bytes of file content. Whole or not at all.
    pub fn write_tree(&self, path: &str, data: &[u8], limit: u64) -> Result<(), FilesError> {
        let rel = relative(path)?;
        let (parent, name) = match rel.rsplit_once('/') {
            Some((parent, name)) => (parent, name),
            None if rel == "." => return Err(FilesError::BadPath(path.into())),
            None => (".", rel),
        };
        let name = std::ffi::CString::new(name).map_err(|_| FilesError::BadPath(path.into()))?;
        let _as_user = FsIds::assume(self.uid, self.gid);
        let dir = self
            .open_at(parent, libc::O_RDONLY | libc::O_DIRECTORY, 0)
            .map_err(|e| access(path, &e))?;
        let rules = crate::tarball::Rules {
            layer: false,
            max_bytes: limit,
            mode_mask: 0o777,
        };
        crate::tarball::unpack_new(dir.as_fd(), &name, data, &rules)
            .map(drop)
            .map_err(|e| tar_error(path, limit, e))
    }

    /// The directory `path` as a tar, read as the user; at most `limit` bytes of content.
    pub fn read_tree(&self, path: &str, limit: u64) -> Result<Vec<u8>, FilesError> {
        let rel = relative(path)?;
        let _as_user = FsIds::assume(self.uid, self.gid);
        let dir = self
            .open_at(rel, libc::O_RDONLY | libc::O_DIRECTORY, 0)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENOTDIR) => FilesError::Access {
                    path: path.into(),
                    why: "not a directory (GET .../files copies files)".into(),
                },
                _ => access(path, &e),
            })?;
        crate::tarball::pack(dir.as_fd(), limit)
            .map(|(tar, _)| tar)
            .map_err(|e| tar_error(path, limit, e))
    }

    fn open_at(&self, rel: &str, flags: libc::c_int, mode: u64) -> io::Result<OwnedFd> {
        use std::os::fd::AsFd as _;
        crate::view::open_beneath(self.root.as_fd(), rel, flags, mode)
    }
}

/// The path below the sandbox's root; refuses relative paths and NUL bytes.
fn relative(path: &str) -> Result<&str, FilesError> {
    match path.strip_prefix('/') {
        Some(rest) if !path.contains('\0') => Ok(if rest.is_empty() { "." } else { rest }),
        _ => Err(FilesError::BadPath(path.into())),
    }
}

fn tar_error(path: &str, limit: u64, e: crate::tarball::TarError) -> FilesError {
    use crate::tarball::TarError;
    match e {
        TarError::TooLarge(_) => FilesError::TooLarge {
            path: path.into(),
            limit,
        },
        TarError::Full => FilesError::Full { path: path.into() },
        other => FilesError::Access {
            path: path.into(),
            why: other.to_string(),
        },
    }
}

fn access(path: &str, e: &io::Error) -> FilesError {
    let why = match e.raw_os_error() {
        Some(libc::ENOENT) => "no such file or directory in the sandbox".into(),
        Some(libc::EACCES | libc::EPERM) => "permission denied to the sandbox's user".into(),
        Some(libc::EROFS) => "read-only in the sandbox".into(),
        Some(libc::ELOOP) => "a link the copy does not follow (the last component)".into(),
        Some(libc::EXDEV) => "a path that leaves the sandbox".into(),
        _ => e.to_string(),
    };
    FilesError::Access {
        path: path.into(),
        why,
    }
}

/// This thread's file-system ids set to the sandbox user's until dropped (`setfsuid` is per
/// thread; with a non-zero fsuid the kernel drops the file capabilities from the effective
/// set, so the user's own permissions apply).
struct FsIds {
    uid: u32,
    gid: u32,
    groups: Vec<libc::gid_t>,
}

impl FsIds {
    fn assume(uid: u32, gid: u32) -> Self {
        // The agent's supplementary groups (root's group 0 under sudo) would still grant
        // group access: this thread has none while it acts as the user. The raw syscall
        // changes this thread alone (libc's wrapper changes every thread of the process).
        let mut groups = vec![0 as libc::gid_t; 256];
        // SAFETY: a buffer of the length given.
        let n = unsafe { libc::getgroups(256, groups.as_mut_ptr()) };
        groups.truncate(usize::try_from(n).unwrap_or(0));
        // SAFETY: setgroups of no groups, this thread only; setfsgid/setfsuid change this
        // thread's file-system ids only and return the previous ones.
        unsafe {
            libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>());
            let group_before = libc::setfsgid(gid);
            let user_before = libc::setfsuid(uid);
            Self {
                uid: u32::try_from(user_before).unwrap_or(0),
                gid: u32::try_from(group_before).unwrap_or(0),
                groups,
            }
        }
    }
}

impl Drop for FsIds {
    fn drop(&mut self) {
        // SAFETY: back to the ids and groups the thread had.
        unsafe {
            libc::setfsuid(self.uid);
            libc::setfsgid(self.gid);
            libc::syscall(libc::SYS_setgroups, self.groups.len(), self.groups.as_ptr());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_absolute_paths_are_taken() {
        assert_eq!(relative("/tmp/x").ok(), Some("tmp/x"));
        assert_eq!(relative("/").ok(), Some("."));
        assert!(relative("tmp/x").is_err());
        assert!(relative("").is_err());
    }
}
