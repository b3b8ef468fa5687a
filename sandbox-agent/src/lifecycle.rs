//! One guard for a sandbox (or a narrowed exec) being brought up, in the embedded run and in
//! the daemon alike. What exists so far — lock file, cgroup, kernel entry, and any step the
//! caller registers — is undone in reverse order when the guard is dropped before
//! [`Starting::finish`]. The embedded run never finishes it: its clean-up is this same code on
//! every path out.
use std::{
    fs, io,
    path::{Path, PathBuf},
    sync::Mutex,
    time::Duration,
};

use sandbox_common::SandboxEntry;

use crate::{
    cgroup::{CgroupError, SandboxCgroup},
    enforcement::{Enforcement, EnforcementError, FileLock},
    paths::Paths,
    policy::CompiledPolicy,
};

/// How long killing a sandbox's processes may take before it is reported as stuck.
pub const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// How the guard reaches the kernel's tables: the embedded run owns them, the daemon shares
/// them behind a mutex (taken only for each step, never across the start).
pub trait EnforcementAccess {
    fn with<R>(&mut self, f: impl FnOnce(&mut Enforcement) -> R) -> R;
}

impl EnforcementAccess for &mut Enforcement {
    fn with<R>(&mut self, f: impl FnOnce(&mut Enforcement) -> R) -> R {
        f(self)
    }
}

impl EnforcementAccess for &Mutex<Enforcement> {
    fn with<R>(&mut self, f: impl FnOnce(&mut Enforcement) -> R) -> R {
        f(&mut self
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }
}

/// What a finished start hands over to whoever keeps the sandbox.
pub struct Started {
    pub cgroup: SandboxCgroup,
    pub policy_id: u32,
    pub lock: Option<FileLock>,
}

/// A start in progress.
pub struct Starting<'p, E: EnforcementAccess> {
    enforcement: E,
    lock: Option<(PathBuf, FileLock)>,
    cgroup: Option<SandboxCgroup>,
    entry: Option<(u32, &'p CompiledPolicy)>,
    undo: Vec<Box<dyn FnOnce() + Send + 'p>>,
    /// Where clean-up problems are told (stderr in the embedded run, the log in the daemon).
    warn: fn(&str),
}

impl<'p, E: EnforcementAccess> Starting<'p, E> {
    pub fn new(enforcement: E, warn: fn(&str)) -> Self {
        Self {
            enforcement,
            lock: None,
            cgroup: None,
            entry: None,
            undo: Vec::new(),
            warn,
        }
    }

    /// Takes the sandbox's lock (collectors of orphans leave a locked sandbox alone).
    pub fn lock(&mut self, paths: &Paths, id: &str) -> Result<(), (PathBuf, io::Error)> {
        let locks = paths.sandbox_locks();
        fs::create_dir_all(&locks).map_err(|e| (locks, e))?;
        let path = paths.sandbox_lock(id);
        let lock = FileLock::acquire(&path).map_err(|e| (path.clone(), e))?;
        self.lock = Some((path, lock));
        Ok(())
    }

    /// Makes the cgroup `name` below `parent`.
    pub fn cgroup(&mut self, parent: &Path, name: &str) -> Result<&SandboxCgroup, CgroupError> {
        Ok(self.cgroup.insert(SandboxCgroup::create(parent, name)?))
    }

    /// The cgroup made by [`Starting::cgroup`].
    pub fn made_cgroup(&self) -> &SandboxCgroup {
        self.cgroup.as_ref().expect("the cgroup is made first")
    }

    /// Gives the cgroup its kernel entry: `policy` with `ceiling`'s layers outside it.
    pub fn apply(
        &mut self,
        policy: &'p CompiledPolicy,
        ports: (u16, u16),
        ceiling: Option<&SandboxEntry>,
    ) -> Result<u32, EnforcementError> {
        let cgroup_id = self.made_cgroup().id;
        let policy_id = self
            .enforcement
            .with(|e| e.apply_layered(cgroup_id, policy, ports, ceiling))?;
        self.entry = Some((policy_id, policy));
        Ok(policy_id)
    }

    /// Another step to undo if the start fails (run before the kernel entry goes).
    pub fn on_failure(&mut self, undo: impl FnOnce() + Send + 'p) {
        self.undo.push(Box::new(undo));
    }

    pub fn enforcement(&mut self) -> &mut E {
        &mut self.enforcement
    }

    /// The start succeeded: nothing is undone, the caller keeps it all.
    pub fn finish(mut self) -> Started {
        self.undo.clear();
        Started {
            cgroup: self.cgroup.take().expect("the cgroup is made first"),
            policy_id: self.entry.take().map_or(0, |(id, _)| id),
            lock: self.lock.take().map(|(_, lock)| lock),
        }
    }
}

impl<E: EnforcementAccess> Drop for Starting<'_, E> {
    fn drop(&mut self) {
        if let Some(cgroup) = &self.cgroup
            && let Err(e) = cgroup.kill_all(KILL_TIMEOUT)
        {
            (self.warn)(&e.to_string());
        }
        while let Some(undo) = self.undo.pop() {
            undo();
        }
        if let (Some(cgroup), Some((policy_id, policy))) = (&self.cgroup, self.entry.take()) {
            let cgroup_id = cgroup.id;
            self.enforcement
                .with(|e| e.remove(cgroup_id, policy_id, Some(policy)));
        }
        if let Some(cgroup) = self.cgroup.take()
            && let Err(e) = cgroup.remove()
        {
            (self.warn)(&e.to_string());
        }
        if let Some((path, lock)) = self.lock.take() {
            drop(lock);
            let _ = fs::remove_file(path);
        }
    }
}
