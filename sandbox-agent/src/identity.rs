//! Each sandbox's own host uid and gid, leased from a range the operator reserves.
//!
//! Sandboxes that shared a uid (`nobody`) could signal, trace and read each other whenever
//! another layer failed; distinct uids make the kernel's own permission checks a second
//! wall. A uid is taken when two things hold: an exclusive `flock` on `<run_dir>/uids/<uid>`
//! (held by whoever keeps the sandbox, the embedded `run` process or the daemon), and the
//! cgroup recorded in that file by its last owner has no process left. The record outlives
//! its keeper: a sandbox whose daemon stopped, or whose `run` was killed, keeps its uid for as
//! long as anything of it runs. The files are never removed: a removal would let a second
//! agent lock a fresh file of the same name while the first still holds the old one.
use std::{fs, io, ops::RangeInclusive, path::Path};

use crate::{enforcement::FileLock, paths::Paths};

/// The default range: 65,536 ids at `0x6000_0000`, above every distribution's system and
/// login users and outside the usual `/etc/subuid` allocations (which start at 100,000 in
/// steps of 65,536 and would need 24,000 users to get here).
pub const DEFAULT_FIRST: u32 = 0x6000_0000;
pub const DEFAULT_COUNT: u32 = 65_536;
/// The name the sandbox's user has in its own view.
pub const SANDBOX_USER: &str = "sandbox";
pub const SANDBOX_HOME: &str = "/home/sandbox";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "uid range {first}-{last} is exhausted: {count} sandboxes hold its ids (raise uid_count in the config)"
    )]
    Exhausted { first: u32, last: u32, count: u32 },
    #[error("invalid uid range {first}+{count}: {why}")]
    BadRange { first: u32, count: u32, why: String },
    #[error("uid range {first}-{last} overlaps {what} in {file} (set uid_first in the config)")]
    Overlap {
        first: u32,
        last: u32,
        what: String,
        file: String,
    },
    #[error("uid lease {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// The ids sandboxes get their uid (and equal gid) from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UidRange {
    pub first: u32,
    pub count: u32,
}

impl Default for UidRange {
    fn default() -> Self {
        Self {
            first: DEFAULT_FIRST,
            count: DEFAULT_COUNT,
        }
    }
}

impl std::fmt::Display for UidRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last())
    }
}

impl UidRange {
    pub fn contains(self, id: u32) -> bool {
        self.ids().contains(&id)
    }

    fn ids(self) -> RangeInclusive<u32> {
        self.first..=self.last()
    }

    fn last(self) -> u32 {
        self.first + (self.count - 1)
    }

    /// Refuses a range that is empty, reaches root or the 32-bit edge, or overlaps a user
    /// or group of the host's files or a subordinate id range.
    pub fn check(self) -> Result<Self, IdentityError> {
        let bad = |why: &str| IdentityError::BadRange {
            first: self.first,
            count: self.count,
            why: why.into(),
        };
        if self.count == 0 {
            return Err(bad("the range is empty"));
        }
        if self.first < 1000 {
            return Err(bad("it must start at 1000 or above"));
        }
        // (uid_t)-1 means "unchanged" to set*id; 2^31 and above confuse tools that keep
        // ids in signed integers.
        if u64::from(self.first) + u64::from(self.count) > 1 << 31 {
            return Err(bad("it must end below 2^31"));
        }
        for (file, kind) in [("/etc/passwd", "user"), ("/etc/group", "group")] {
            let text = fs::read_to_string(file).unwrap_or_default();
            if let Some((name, id)) = overlapping_entry(&text, self) {
                return Err(IdentityError::Overlap {
                    first: self.first,
                    last: self.last(),
                    what: format!("{kind} {name} ({id})"),
                    file: file.into(),
                });
            }
        }
        for file in ["/etc/subuid", "/etc/subgid"] {
            let text = fs::read_to_string(file).unwrap_or_default();
            if let Some((owner, start, n)) = overlapping_subid(&text, self) {
                return Err(IdentityError::Overlap {
                    first: self.first,
                    last: self.last(),
                    what: format!("{owner}'s subordinate ids {start}+{n}"),
                    file: file.into(),
                });
            }
        }
        Ok(self)
    }
}

/// The first `name:x:id:...` entry whose id lies in `range`.
fn overlapping_entry(text: &str, range: UidRange) -> Option<(String, u32)> {
    text.lines().find_map(|line| {
        let mut f = line.split(':');
        let name = f.next()?;
        let id: u32 = f.nth(1)?.parse().ok()?;
        range.ids().contains(&id).then(|| (name.to_owned(), id))
    })
}

/// The first `owner:start:count` entry that meets `range`.
fn overlapping_subid(text: &str, range: UidRange) -> Option<(String, u32, u32)> {
    text.lines().find_map(|line| {
        let mut f = line.split(':');
        let owner = f.next()?;
        let start: u32 = f.next()?.parse().ok()?;
        let n: u32 = f.next()?.parse().ok()?;
        let end = u64::from(start) + u64::from(n);
        (n > 0 && u64::from(range.first) < end && start <= range.last())
            .then(|| (owner.to_owned(), start, n))
    })
}

/// A uid held for one sandbox; given back when dropped (and its cgroup is empty).
pub struct Lease {
    pub uid: u32,
    path: std::path::PathBuf,
    _lock: FileLock,
}

impl Lease {
    /// Records the sandbox's cgroup: the uid stays taken while it has processes, whatever
    /// happens to this lease's keeper.
    pub fn bind_cgroup(&self, cgroup: &Path) -> Result<(), IdentityError> {
        fs::write(&self.path, cgroup.as_os_str().as_encoded_bytes()).map_err(|source| {
            IdentityError::Io {
                path: self.path.display().to_string(),
                source,
            }
        })
    }
}

/// Whether the cgroup a lease file records still has processes.
fn still_running(lease: &Path) -> bool {
    let Ok(cgroup) = fs::read_to_string(lease) else {
        return false;
    };
    !cgroup.is_empty() && crate::cgroup::populated(Path::new(&cgroup)).unwrap_or(false)
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("uid", &self.uid)
            .finish_non_exhaustive()
    }
}

fn lease_path(paths: &Paths, uid: u32) -> std::path::PathBuf {
    paths.run_dir.join("uids").join(uid.to_string())
}

/// Leases a free uid of `range`: a random start, then the next free one.
pub fn lease(paths: &Paths, range: UidRange) -> Result<Lease, IdentityError> {
    let dir = paths.run_dir.join("uids");
    let io_err = |path: &Path| {
        let path = path.display().to_string();
        move |source| IdentityError::Io { path, source }
    };
    fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let mut seed = [0u8; 4];
    crate::enforcement::getrandom(&mut seed);
    let start = u32::from_ne_bytes(seed) % range.count;
    for i in 0..range.count {
        let uid = range.first + (start + i) % range.count;
        let path = lease_path(paths, uid);
        if let Some(lock) = FileLock::try_acquire(&path).map_err(io_err(&path))?
            && !still_running(&path)
        {
            return Ok(Lease {
                uid,
                path,
                _lock: lock,
            });
        }
    }
    Err(IdentityError::Exhausted {
        first: range.first,
        last: range.last(),
        count: range.count,
    })
}

/// Takes the lease of a uid a sandbox already has (a daemon re-adopting it); `None` if
/// another agent holds it (the sandbox's recorded cgroup keeps the uid taken meanwhile).
pub fn relet(paths: &Paths, uid: u32, cgroup: &Path) -> Result<Option<Lease>, IdentityError> {
    let dir = paths.run_dir.join("uids");
    let path = lease_path(paths, uid);
    let io_err = |source| IdentityError::Io {
        path: path.display().to_string(),
        source,
    };
    fs::create_dir_all(&dir).map_err(io_err)?;
    let Some(lock) = FileLock::try_acquire(&path).map_err(|source| IdentityError::Io {
        path: path.display().to_string(),
        source,
    })?
    else {
        return Ok(None);
    };
    let lease = Lease {
        uid,
        path,
        _lock: lock,
    };
    lease.bind_cgroup(cgroup)?;
    Ok(Some(lease))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_that_meet_host_ids_are_found() {
        let r = UidRange {
            first: 100_000,
            count: 65_536,
        };
        assert_eq!(
            overlapping_entry(
                "alice:x:1000:1000::/home/alice:/bin/sh\nbob:x:100001:5::/:/bin/sh\n",
                r
            ),
            Some(("bob".into(), 100_001))
        );
        assert_eq!(overlapping_entry("root:x:0:0::/root:/bin/sh\n", r), None);
        assert_eq!(
            overlapping_subid("alice:165536:65536\nbob:100000:65536\n", r),
            Some(("bob".into(), 100_000, 65_536))
        );
        assert_eq!(overlapping_subid("alice:165536:65536\n", r), None);
        // Touching at the edge is not an overlap.
        assert_eq!(overlapping_subid("alice:34464:65536\n", r), None);
    }

    #[test]
    fn bad_ranges_are_refused() {
        for (first, count) in [(0, 10), (500, 10), (0x7fff_ff00, 0x200), (5000, 0)] {
            assert!(
                UidRange { first, count }.check().is_err(),
                "{first}+{count}"
            );
        }
        assert!(UidRange::default().check().is_ok());
    }

    #[test]
    fn leases_are_exclusive_and_given_back() {
        let dir = std::env::temp_dir().join(format!("sa-uid-test-{}", std::process::id()));
        let paths = Paths {
            pin_dir: dir.join("pins"),
            run_dir: dir.clone(),
        };
        let range = UidRange {
            first: 5000,
            count: 2,
        };
        let a = lease(&paths, range).expect("first");
        let b = lease(&paths, range).expect("second");
        assert_ne!(a.uid, b.uid);
        assert!(matches!(
            lease(&paths, range),
            Err(IdentityError::Exhausted { .. })
        ));
        let freed = a.uid;
        // A lease whose recorded cgroup still has processes stays taken after its keeper
        // let go (a stand-in cgroup directory whose events say so).
        let cgroup = dir.join("cgroup");
        fs::create_dir_all(&cgroup).expect("cgroup dir");
        fs::write(cgroup.join("cgroup.events"), "populated 1\nfrozen 0\n").expect("events");
        a.bind_cgroup(&cgroup).expect("bind");
        drop(a);
        assert!(matches!(
            lease(&paths, range),
            Err(IdentityError::Exhausted { .. })
        ));
        // Its processes gone, the uid comes back.
        fs::write(cgroup.join("cgroup.events"), "populated 0\nfrozen 0\n").expect("events");
        assert_eq!(lease(&paths, range).expect("again").uid, freed);
        let _ = fs::remove_dir_all(dir);
    }
}
