//! cgroup v2: find the hierarchy, make the parent of all sandboxes, and create, kill and
//! remove one sandbox's cgroup.
use std::{
    fs, io,
    os::{fd::OwnedFd, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use crate::paths;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "cgroup v2 is not mounted (no cgroup2 entry in /proc/self/mountinfo); mount it with \
         `mount -t cgroup2 none /sys/fs/cgroup`"
    )]
    NoCgroup2,
    #[error("cannot read /proc/self/mountinfo: {0}")]
    Mountinfo(#[source] io::Error),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cgroup {path} still has processes after {waited:?}")]
    StillPopulated { path: PathBuf, waited: Duration },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CgroupError {
    let path = path.to_path_buf();
    move |source| CgroupError::Io {
        action,
        path,
        source,
    }
}

/// The cgroup v2 mount point. Prefers `/sys/fs/cgroup` (unified hosts), then
/// `/sys/fs/cgroup/unified` (hybrid hosts), then any other cgroup2 mount.
pub fn find_cgroup2_mount() -> Result<PathBuf, CgroupError> {
    // /proc files report size 0, so read_to_string would grow its buffer from 32 bytes.
    let mut text = String::with_capacity(16 * 1024);
    fs::File::open("/proc/self/mountinfo")
        .and_then(|mut f| std::io::Read::read_to_string(&mut f, &mut text))
        .map_err(CgroupError::Mountinfo)?;
    let mounts = cgroup2_mounts(&text);
    for preferred in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        if let Some(m) = mounts.iter().find(|m| m.as_os_str() == preferred) {
            return Ok(m.clone());
        }
    }
    mounts.into_iter().next().ok_or(CgroupError::NoCgroup2)
}

/// Mount points of fstype `cgroup2` in a mountinfo text.
fn cgroup2_mounts(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            let mount_point = left.split_whitespace().nth(4)?;
            (fstype == "cgroup2").then(|| PathBuf::from(unescape_mountinfo(mount_point)))
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(char::from(v));
            i += 4;
            continue;
        }
        out.push(bytes[i] as char);
        i += 1;
    }
    out
}

/// The cgroup id the kernel reports for a cgroup directory: its inode number.
pub fn cgroup_id(path: &Path) -> Result<u64, CgroupError> {
    fs::metadata(path)
        .map(|m| m.ino())
        .map_err(io_err("stat", path))
}

/// The child cgroups (directories) of `parent`, from the directory listing alone: the
/// control files beside them are not stat'ed one by one.
pub fn child_cgroups(parent: &Path) -> Vec<PathBuf> {
    let Ok(dir) = fs::read_dir(parent) else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect()
}

/// The parent cgroup of all sandboxes, `<cgroup2>/sandbox-agent`, created if missing.
pub fn ensure_parent(mount: &Path) -> Result<PathBuf, CgroupError> {
    let parent = mount.join(paths::NAME);
    match fs::create_dir(&parent) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err("create cgroup", &parent)(e)),
    }
    Ok(parent)
}

/// One sandbox's cgroup.
#[derive(Clone, Debug)]
pub struct SandboxCgroup {
    pub path: PathBuf,
    pub id: u64,
}

/// Whether the cgroup at `path` has processes (its `cgroup.events`).
pub fn populated(path: &Path) -> io::Result<bool> {
    let text = fs::read_to_string(path.join("cgroup.events"))?;
    Ok(text.lines().any(|l| l == "populated 1"))
}

impl SandboxCgroup {
    pub fn create(parent: &Path, name: &str) -> Result<Self, CgroupError> {
        let path = parent.join(name);
        fs::create_dir(&path).map_err(io_err("create cgroup", &path))?;
        let id = cgroup_id(&path)?;
        Ok(Self { path, id })
    }

    /// An existing cgroup (for clean-up of a sandbox whose agent died).
    pub fn open(path: PathBuf) -> Result<Self, CgroupError> {
        let id = cgroup_id(&path)?;
        Ok(Self { path, id })
    }

    /// A directory fd for `clone3(CLONE_INTO_CGROUP)`.
    pub fn open_fd(&self) -> Result<OwnedFd, CgroupError> {
        let dir = fs::File::open(&self.path).map_err(io_err("open cgroup", &self.path))?;
        Ok(dir.into())
    }

    pub fn is_populated(&self) -> Result<bool, CgroupError> {
        populated(&self.path).map_err(io_err("read", &self.path.join("cgroup.events")))
    }

    /// Kills every process in the cgroup (descendants that forked away included) and waits
    /// until it is empty.
    pub fn kill_all(&self, timeout: Duration) -> Result<(), CgroupError> {
        if !self.is_populated()? {
            return Ok(());
        }
        let kill = self.path.join("cgroup.kill");
        if let Err(e) = fs::write(&kill, "1") {
            // cgroup.kill exists from Linux 5.14; before that, signal each process.
            if e.kind() != io::ErrorKind::NotFound {
                return Err(io_err("write", &kill)(e));
            }
            self.kill_each()?;
        }
        self.wait_empty(timeout)
    }

    fn kill_each(&self) -> Result<(), CgroupError> {
        let procs = self.path.join("cgroup.procs");
        let text = fs::read_to_string(&procs).map_err(io_err("read", &procs))?;
        for pid in text.lines().filter_map(|l| l.parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        Ok(())
    }

    pub fn wait_empty(&self, timeout: Duration) -> Result<(), CgroupError> {
        let start = Instant::now();
        let mut pause = Duration::from_micros(50);
        while self.is_populated()? {
            if start.elapsed() > timeout {
                return Err(CgroupError::StillPopulated {
                    path: self.path.clone(),
                    waited: timeout,
                });
            }
            thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Removes the (empty) cgroup. `rmdir` can briefly fail with EBUSY right after the last
    /// process is reaped, so it is retried for a bounded time.
    pub fn remove(&self) -> Result<(), CgroupError> {
        let start = Instant::now();
        loop {
            match fs::remove_dir(&self.path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e)
                    if e.raw_os_error() == Some(libc::EBUSY)
                        && start.elapsed() < Duration::from_secs(5) =>
                {
                    thread::sleep(Duration::from_millis(1));
                }
                Err(e) => return Err(io_err("remove cgroup", &self.path)(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_mounts_in_mountinfo() {
        let text = "\
25 30 0:22 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
27 25 0:24 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
28 30 0:25 / /mnt/with\\040space rw shared:1 - cgroup2 none rw";
        assert_eq!(
            cgroup2_mounts(text),
            vec![
                PathBuf::from("/sys/fs/cgroup/unified"),
                PathBuf::from("/mnt/with space")
            ]
        );
    }
}
