//! Records and state: one [`Sandbox`] per record (its view, saved to `record.json`, and what
//! only the running daemon holds), and the [`Registry`] of them with the names reserved by
//! creates in progress.
use std::{
    collections::{BTreeMap, HashMap},
    fs,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicUsize, Ordering},
    },
    time::Instant,
};

use tokio::sync::{Notify, watch};

use super::error::{Error, Result};
use crate::{
    api::{EndReason, SandboxView},
    cgroup::SandboxCgroup,
    domains::DomainServices,
    enforcement::FileLock,
    ingress::directory::{Activity, Exposure, Served},
    policy::CompiledPolicy,
};

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Readiness of a sandbox's probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    NoProbe,
    Pending,
    Ready,
    Failed(String),
}

/// One exec'd command that is still running.
pub(super) struct ExecLive {
    /// Its own cgroup when it has a narrower policy (else it runs in the sandbox's).
    pub cgroup: Option<SandboxCgroup>,
    pub policy_id: u32,
    pub policy: Option<Arc<CompiledPolicy>>,
    pub services: Option<DomainServices>,
    pub exit: watch::Sender<Option<ExecEnd>>,
}

/// How an exec ended: its status, `None` when unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecEnd(pub Option<i32>);

/// What only the running daemon holds for a sandbox.
pub(super) struct Inner {
    pub policy: Arc<CompiledPolicy>,
    /// The kernel id of `policy`; changes only under this lock.
    pub policy_id: u32,
    /// Set when the supervisor tears the sandbox down: no exec or policy change after that.
    pub closing: bool,
    pub services: Option<DomainServices>,
    pub stdin: Option<fs::File>,
    pub execs: HashMap<u32, ExecLive>,
    pub next_exec: u32,
    pub last_activity: Instant,
    /// Listeners of its exposed TLS and TCP ports.
    pub tunnels: Vec<crate::ingress::tunnel::Tunnel>,
    /// Its own uid, given back once its cgroup is empty.
    pub lease: Option<crate::identity::Lease>,
    /// Its init's pidfd: execs enter its namespaces through it.
    pub init: Option<std::os::fd::OwnedFd>,
}

impl Inner {
    pub fn new(policy: Arc<CompiledPolicy>, policy_id: u32) -> Self {
        Self {
            policy,
            policy_id,
            closing: false,
            services: None,
            stdin: None,
            execs: HashMap::new(),
            next_exec: 1,
            last_activity: Instant::now(),
            tunnels: Vec::new(),
            lease: None,
            init: None,
        }
    }
}

pub struct Sandbox {
    pub id: String,
    pub(super) dir: PathBuf,
    pub(super) cgroup: SandboxCgroup,
    pub(super) view: Mutex<SandboxView>,
    pub(super) inner: Mutex<Inner>,
    pub(super) ended: watch::Sender<bool>,
    pub(super) ready: watch::Sender<Readiness>,
    pub(super) kill: Notify,
    pub(super) kill_reason: Mutex<Option<EndReason>>,
    /// Requests and connections through the ingress now (activity for the idle timeout).
    pub(super) open_ingress: AtomicUsize,
    /// Held while the sandbox may have kernel state (not for a record of an ended one).
    _lock: Option<FileLock>,
}

impl Sandbox {
    /// `state`: whether it runs, and its readiness.
    pub(super) fn new(
        view: SandboxView,
        dir: &Path,
        cgroup: SandboxCgroup,
        inner: Inner,
        (running, readiness): (bool, Readiness),
        lock: Option<FileLock>,
    ) -> Arc<Self> {
        Arc::new(Self {
            id: view.id.clone(),
            dir: dir.to_owned(),
            cgroup,
            view: Mutex::new(view),
            inner: Mutex::new(inner),
            ended: watch::channel(!running).0,
            ready: watch::channel(readiness).0,
            kill: Notify::new(),
            kill_reason: Mutex::new(None),
            open_ingress: AtomicUsize::new(0),
            _lock: lock,
        })
    }

    pub fn view(&self) -> SandboxView {
        lock(&self.view).clone()
    }

    pub fn running(&self) -> bool {
        !*self.ended.borrow()
    }

    pub(super) fn save(&self) {
        let view = self.view();
        if let Err(e) = write_atomic(&self.dir.join("record.json"), &view) {
            tracing::warn!(sandbox = %self.id, "cannot save record: {e}");
        }
    }

    pub(super) fn update(&self, f: impl FnOnce(&mut SandboxView)) {
        f(&mut lock(&self.view));
        self.save();
    }

    pub(super) fn touch(&self) {
        lock(&self.inner).last_activity = Instant::now();
    }

    pub fn log_path(&self, stream: &str) -> PathBuf {
        self.dir.join(format!("{stream}.log"))
    }

    pub fn exec_log_path(&self, exec: u32, stream: &str) -> PathBuf {
        self.dir.join(format!("exec-{exec}.{stream}.log"))
    }

    pub fn ended_rx(&self) -> watch::Receiver<bool> {
        self.ended.subscribe()
    }

    /// Its cgroup and those of its narrowed execs (where its listeners may be).
    pub fn cgroup_ids(&self) -> Vec<u64> {
        std::iter::once(self.cgroup.id)
            .chain(
                lock(&self.inner)
                    .execs
                    .values()
                    .filter_map(|e| e.cgroup.as_ref().map(|c| c.id)),
            )
            .collect()
    }

    pub fn exec_exit_rx(&self, exec: u32) -> Option<watch::Receiver<Option<ExecEnd>>> {
        lock(&self.inner)
            .execs
            .get(&exec)
            .map(|e| e.exit.subscribe())
    }

    /// Refuses what only a live sandbox can do.
    pub(super) fn check_running(&self) -> Result<()> {
        if self.running() {
            Ok(())
        } else {
            Err(Error::Ended(self.id.clone()))
        }
    }
}

impl Served for Sandbox {
    fn id(&self) -> &str {
        &self.id
    }

    fn running(&self) -> bool {
        Self::running(self)
    }

    fn cgroup_ids(&self) -> Vec<u64> {
        Self::cgroup_ids(self)
    }

    fn exposure(&self) -> Exposure {
        let view = lock(&self.view);
        Exposure {
            ports: view.ports.clone(),
            private_ports: view.private_ports,
            mask_host: view.mask_host.clone(),
        }
    }

    fn activity(self: Arc<Self>) -> Activity {
        self.open_ingress.fetch_add(1, Ordering::Relaxed);
        self.touch();
        Activity::new(IngressActivity(self))
    }
}

/// A request or connection through the ingress, open while this lives.
struct IngressActivity(Arc<Sandbox>);

impl Drop for IngressActivity {
    fn drop(&mut self) {
        self.0.open_ingress.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// Every sandbox the daemon knows (live, and records of ended ones), the names that creates
/// in progress hold, and which sandbox each cgroup belongs to (for kernel events).
#[derive(Default)]
pub(super) struct Registry {
    sandboxes: BTreeMap<String, Arc<Sandbox>>,
    reserved: Vec<String>,
    cgroups: HashMap<u64, String>,
}

impl Registry {
    pub fn all(&self) -> impl Iterator<Item = &Arc<Sandbox>> {
        self.sandboxes.values()
    }

    /// By id, else the latest of that name (a live one first).
    pub fn find(&self, reference: &str) -> Result<Arc<Sandbox>> {
        if let Some(s) = self.sandboxes.get(reference) {
            return Ok(s.clone());
        }
        let mut named: Vec<&Arc<Sandbox>> = self
            .sandboxes
            .values()
            .filter(|s| {
                lock(&s.view)
                    .name
                    .as_deref()
                    .is_some_and(|n| same_name(n, reference))
            })
            .collect();
        named.sort_by_key(|s| (s.running(), lock(&s.view).created_at.clone()));
        named
            .last()
            .map(|s| (*s).clone())
            .ok_or_else(|| Error::NoSandbox(reference.to_owned()))
    }

    /// Holds `name` for a create in progress: no live sandbox and no other create has it.
    pub fn reserve(&mut self, name: &str) -> Result<()> {
        let live = self.sandboxes.values().find_map(|s| {
            let view = lock(&s.view);
            view.name
                .as_deref()
                .filter(|n| s.running() && same_name(n, name))
                .map(str::to_owned)
        });
        let pending = || self.reserved.iter().find(|n| same_name(n, name)).cloned();
        if let Some(taken) = live.or_else(pending) {
            return Err(Error::NameTaken {
                name: name.to_owned(),
                taken,
            });
        }
        self.reserved.push(name.to_owned());
        Ok(())
    }

    pub fn release(&mut self, name: &str) {
        self.reserved.retain(|n| n != name);
    }

    /// Makes the sandbox visible to every request.
    pub fn publish(&mut self, sandbox: Arc<Sandbox>) {
        self.sandboxes.insert(sandbox.id.clone(), sandbox);
    }

    /// Attributes a cgroup's kernel events to a sandbox (its own or a narrowed exec's).
    pub fn own_cgroup(&mut self, cgroup_id: u64, sandbox: &str) {
        self.cgroups.insert(cgroup_id, sandbox.to_owned());
    }

    pub fn disown_cgroup(&mut self, cgroup_id: u64) {
        self.cgroups.remove(&cgroup_id);
    }

    pub fn sandbox_of_cgroup(&self, cgroup_id: u64) -> Option<String> {
        self.cgroups.get(&cgroup_id).cloned()
    }

    pub fn remove(&mut self, id: &str) {
        self.sandboxes.remove(id);
        self.cgroups.retain(|_, s| s != id);
    }
}

/// Names are told apart without regard to case: host routes (DNS names) cannot tell `Web`
/// from `web`, so neither may anything else.
pub fn same_name(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

pub(super) fn write_atomic(path: &Path, view: &SandboxView) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(view).map_err(std::io::Error::other)?;
    crate::private_files::write(path, &bytes)
}
