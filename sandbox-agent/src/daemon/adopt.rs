//! Taking the recorded sandboxes back after a restart: a live one (its cgroup still has
//! processes) gets its resolver, proxy, tunnels and tokens again and a supervisor for what is
//! left of its timeout; one that ended meanwhile is recorded as such and its kernel state
//! goes.
use std::{
    fs,
    path::Path,
    sync::Arc,
    time::{Duration, SystemTime},
};

use super::{
    Daemon,
    error::Result,
    record::{Inner, Readiness, Sandbox},
    supervise::{probe_task, supervise},
};
use crate::{
    api::{EndReason, ExecState, ExecView, ExposedPort, SandboxState, SandboxView},
    cgroup::SandboxCgroup,
    domains::{Bound, DomainServices},
    enforcement::FileLock,
    ingress::tunnel::Tunnel,
    policy::{self, CompiledPolicy, Mode, PolicyFile},
};

impl Daemon {
    /// Re-adopts every recorded sandbox: live ones are supervised again, ended ones are
    /// recorded as such and their kernel state is cleaned.
    pub(super) fn adopt_all(self: &Arc<Self>, dir: &Path) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let record = path.join("record.json");
            let Some(view) = fs::read(&record)
                .ok()
                .and_then(|b| serde_json::from_slice::<SandboxView>(&b).ok())
            else {
                tracing::warn!("skipping unreadable record {}", record.display());
                continue;
            };
            if let Err(e) = self.adopt(&path, view) {
                tracing::warn!("cannot adopt {}: {}", path.display(), crate::error_line(&e));
            }
        }
    }

    fn adopt(self: &Arc<Self>, dir: &Path, mut view: SandboxView) -> Result<()> {
        let id = view.id.clone();
        let lock_path = self.paths.sandbox_lock(&id);
        let _ = fs::create_dir_all(self.paths.sandbox_locks());
        let was_running = view.state == SandboxState::Running;
        // Only a sandbox that may still have kernel state needs its lock.
        let file_lock = if was_running {
            Some(FileLock::acquire(&lock_path).map_err(super::Error::io("lock", &lock_path))?)
        } else {
            None
        };
        let parent = self.enforcement().parent_cgroup.clone();
        let cgroup_path = parent.join(&id);
        let cgroup = SandboxCgroup::open(cgroup_path.clone()).ok();
        let populated = cgroup
            .as_ref()
            .is_some_and(|c| c.is_populated().unwrap_or(false));
        let compiled = policy::compile(&view.policy.spec("policy.", Mode::Blocked)).map(Arc::new);
        let live = was_running && populated && compiled.is_ok();
        let cgroup = cgroup.unwrap_or(SandboxCgroup {
            path: cgroup_path,
            id: view.cgroup_id,
        });
        let mut services = None;
        // The kernel's entry is the truth about the policy id (the record may lag it by a
        // policy change if the daemon died in between).
        let kernel_policy_id = self
            .enforcement()
            .sandbox_entry(cgroup.id)
            .map(|e| e.policy_id);
        if live {
            let compiled = compiled.as_ref().ok().cloned().expect("checked");
            if let Some(id) = kernel_policy_id
                && id != view.policy_id
            {
                tracing::warn!(sandbox = %view.id, "the record's policy id lags the kernel's");
                view.policy_id = id;
            }
            services = self.readopt_services(&mut view, &cgroup, &compiled);
        } else if was_running {
            // It ended while no daemon watched: its status is lost.
            let policy_id = kernel_policy_id.unwrap_or(view.policy_id);
            self.cleanup_kernel(&cgroup, policy_id, None, &view.execs);
            let _ = fs::remove_file(&lock_path);
            view.state = SandboxState::Exited;
            view.end_reason = Some(EndReason::StatusUnknown);
            view.ended_at = Some(crate::api::now_rfc3339());
        }
        for exec in &mut view.execs {
            if exec.state == ExecState::Running {
                // Its process is no longer ours to wait for.
                exec.state = ExecState::Unknown;
            }
        }
        let tunnels = if live {
            self.readopt_ingress(dir, &mut view)
        } else {
            Vec::new()
        };
        // A probe that had not passed yet starts over (its time limit too).
        let readiness = match (&view.probe, view.ready) {
            (_, true) => Readiness::Ready,
            (Some(_), false) if live => Readiness::Pending,
            (Some(_), false) => Readiness::Failed("the sandbox ended before it was ready".into()),
            (None, false) => Readiness::NoProbe,
        };
        let next_exec = view.execs.iter().map(|e| e.id).max().unwrap_or(0) + 1;
        let policy = compiled.unwrap_or_else(|_| {
            Arc::new(
                policy::compile(&PolicyFile::default().spec("", Mode::Blocked))
                    .expect("blocked compiles"),
            )
        });
        let (lease, init) = self.readopt_identity(live, &view, &cgroup)?;
        let inner = Inner {
            closing: !live,
            services,
            next_exec,
            tunnels,
            lease,
            init,
            ..Inner::new(policy, view.policy_id)
        };
        let sandbox = Sandbox::new(
            view.clone(),
            dir,
            cgroup,
            inner,
            (live, readiness),
            file_lock.filter(|_| live),
        );
        sandbox.save();
        {
            let mut registry = self.registry();
            registry.own_cgroup(view.cgroup_id, &id);
            for exec in &view.execs {
                registry.own_cgroup(exec.cgroup_id, &id);
            }
            registry.publish(sandbox.clone());
        }
        if live {
            self.supervise_adopted(sandbox, &view);
        }
        Ok(())
    }

    /// A re-adopted sandbox's tokens, and its tunnels (at their old addresses if free).
    fn readopt_ingress(self: &Arc<Self>, dir: &Path, view: &mut SandboxView) -> Vec<Tunnel> {
        self.tokens.load(&view.id, dir);
        let exposed: Vec<ExposedPort> = view
            .ports
            .iter()
            .map(|p| ExposedPort {
                port: p.port,
                protocol: p.protocol,
            })
            .collect();
        match self.open_ports(&view.id, &exposed, &view.ports) {
            Ok((ports, tunnels)) => {
                view.ports = ports;
                tunnels
            }
            Err(e) => {
                tracing::error!(
                    sandbox = %view.id,
                    "ports not reachable after re-adoption: {}",
                    crate::error_line(&e)
                );
                Vec::new()
            }
        }
    }

    /// Supervises a re-adopted live sandbox for what is left of its timeout.
    fn supervise_adopted(self: &Arc<Self>, sandbox: Arc<Sandbox>, view: &SandboxView) {
        self.observe.sandbox_started();
        if let (Some(probe), false) = (view.probe.clone(), view.ready) {
            self.handle
                .spawn(probe_task(self.clone(), sandbox.clone(), probe));
        }
        let created = humantime::parse_rfc3339(&view.created_at).unwrap_or(SystemTime::now());
        let age = SystemTime::now()
            .duration_since(created)
            .unwrap_or_default();
        let timeout = Duration::from_millis(view.timeout_ms).saturating_sub(age);
        let idle = view.idle_timeout_ms.map(Duration::from_millis);
        let id = sandbox.id.clone();
        self.handle
            .spawn(supervise(self.clone(), sandbox, None, timeout, idle));
        tracing::info!(sandbox = %id, "re-adopted");
    }

    /// A re-adopted sandbox's resolver and proxy if it needs them, on its old ports when they
    /// are free, and its redirects pointed at them. Without them the sandbox stays confined:
    /// its redirects point at ports nobody serves, so names fail closed.
    fn readopt_services(
        &self,
        view: &mut SandboxView,
        cgroup: &SandboxCgroup,
        compiled: &Arc<CompiledPolicy>,
    ) -> Option<DomainServices> {
        if !self.needs_services(compiled, view.proxy_env) {
            return None;
        }
        let started = self
            .start_services(
                &view.id,
                self.layers(compiled),
                Some((view.dns_port, view.proxy_port)).filter(|p| p.0 != 0),
                view.max_learned_addresses,
            )
            .and_then(|s| {
                self.enforcement()
                    .set_ports(cgroup.id, (s.dns_port, s.proxy_port))?;
                Ok(s)
            });
        match started {
            Ok(s) => {
                s.bind(Bound {
                    cgroup_id: cgroup.id,
                    policy_id: view.policy_id,
                });
                view.dns_port = s.dns_port;
                view.proxy_port = s.proxy_port;
                Some(s)
            }
            Err(e) => {
                tracing::error!(
                    sandbox = %view.id,
                    "no resolver or proxy after re-adoption, its names fail: {}",
                    crate::error_line(&e)
                );
                None
            }
        }
    }

    /// Removes a sandbox's kernel entries (its own, its execs') and cgroups.
    pub(super) fn cleanup_kernel(
        &self,
        cgroup: &SandboxCgroup,
        policy_id: u32,
        policy: Option<&CompiledPolicy>,
        execs: &[ExecView],
    ) {
        let mut enforcement = self.enforcement();
        for exec in execs.iter().filter(|e| e.cgroup_id != cgroup.id) {
            if let Some(entry) = enforcement.sandbox_entry(exec.cgroup_id) {
                enforcement.remove(exec.cgroup_id, entry.policy_id, None);
            }
        }
        enforcement.remove(cgroup.id, policy_id, policy);
        drop(enforcement);
        if let Ok(children) = fs::read_dir(&cgroup.path) {
            for child in children.flatten() {
                if child.path().is_dir() {
                    let _ = fs::remove_dir(child.path());
                }
            }
        }
        let _ = cgroup.remove();
    }
}

impl Daemon {
    /// A live sandbox's own uid stays its own; its init is found again for execs.
    fn readopt_identity(
        &self,
        live: bool,
        view: &SandboxView,
        cgroup: &SandboxCgroup,
    ) -> Result<(Option<crate::identity::Lease>, Option<std::os::fd::OwnedFd>)> {
        if !live {
            return Ok((None, None));
        }
        let own = view.user == crate::identity::SANDBOX_USER || view.root;
        let lease = (own && view.uid != 0)
            .then(|| crate::identity::relet(&self.paths, view.uid, &cgroup.path))
            .transpose()?
            .flatten();
        Ok((lease, init_of(view.pid, cgroup)))
    }
}

/// A pidfd of the sandbox's init, if `pid` still is a process of `cgroup` (a pid reused by
/// another process is not taken for it).
fn init_of(pid: i32, cgroup: &SandboxCgroup) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    // SAFETY: pidfd_open returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: a fresh descriptor we own.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // Checked after the pidfd exists: it names this process whatever happens to the pid.
    let procs = fs::read_to_string(cgroup.path.join("cgroup.procs")).ok()?;
    procs
        .lines()
        .any(|l| l.trim() == pid.to_string())
        .then_some(fd)
}
