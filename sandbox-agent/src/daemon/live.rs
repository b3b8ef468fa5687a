//! What changes a live sandbox: a command exec'd into it (under a narrower policy in a
//! cgroup of its own), a new policy (switched whole in the kernel, denied connections cut),
//! its stdin, its connect tokens.
use std::{io::Write as _, os::fd::AsRawFd as _, path::PathBuf, sync::Arc, time::Instant};

use tokio::sync::watch;

use super::{
    Daemon,
    create::prepare_workload,
    error::{Error, Result},
    logs,
    record::{ExecLive, Inner, Sandbox, lock},
    sockets::destroy_denied_sockets,
    supervise::supervise_exec,
};
use crate::{
    api::{ExecRequest, ExecState, ExecView, SandboxView, TokenRequest, TokenView},
    domains::{self, Bound, DomainServices},
    enforcement::Enforcement,
    launch,
    lifecycle::Starting,
    policy::{self, CompiledPolicy, Mode, PolicyFile},
};

impl Daemon {
    /// Runs a command in a live sandbox, under a narrower policy if one is given.
    pub fn exec(self: &Arc<Self>, sandbox: &Arc<Sandbox>, req: &ExecRequest) -> Result<ExecView> {
        sandbox.check_running()?;
        let view = sandbox.view();
        let cwd = req.cwd.clone().unwrap_or_else(|| view.cwd.clone());
        // An exec runs as the sandbox's own user unless it names another, in the sandbox's
        // namespaces (through its init's pidfd).
        let (own_uid, init) = {
            let inner = lock(&sandbox.inner);
            let init = inner.init.as_ref().map(std::os::fd::OwnedFd::try_clone);
            (inner.lease.as_ref().map(|l| l.uid), init)
        };
        let init = init
            .ok_or(Error::Lost("the sandbox's init is not known"))?
            .map_err(|e| Error::ExecStart(format!("cannot reach the sandbox's init: {e}")))?;
        if view.root && req.user.is_some() {
            return Err(Error::invalid(
                "user",
                "an exec into a --root sandbox runs as its root: user cannot be given",
            ));
        }
        let user = match (&req.user, own_uid) {
            (Some(u), _) => (Some(u.as_str()), None, false),
            (None, Some(uid)) => (None, Some(uid), view.root),
            (None, None) => (Some(view.user.as_str()), None, false),
        };
        let mut spec = prepare_workload(
            &req.command,
            &req.env,
            &cwd,
            user,
            (crate::workload::Namespaces::Join(init), self.uid_range),
        )?;
        let narrowed = req
            .policy
            .as_ref()
            .map(|p| policy::compile(&p.spec("policy.", Mode::Open)).map(Arc::new))
            .transpose()?;
        let mut inner = lock(&sandbox.inner);
        if inner.closing {
            return Err(Error::Ending(sandbox.id.clone()));
        }
        let exec_id = inner.next_exec;
        inner.next_exec += 1;
        inner.last_activity = Instant::now();
        let (cgroup, policy_id, services, child) = match &narrowed {
            None => {
                let child = spawn_exec(sandbox, exec_id, &mut spec, &sandbox.cgroup)?;
                (None, inner.policy_id, None, child)
            }
            // A narrowed exec runs in a cgroup of its own below the sandbox's, whose kernel
            // entry has the sandbox's policy and the floor as outer layers.
            Some(p) => {
                let mut start = Starting::new(&self.enforcement, |w| tracing::warn!("{w}"));
                let cgroup_id = start
                    .cgroup(&sandbox.cgroup.path, &format!("exec-{exec_id}"))?
                    .id;
                self.registry().own_cgroup(cgroup_id, &sandbox.id);
                let registry = &self.registry;
                start.on_failure(move || lock(registry).disown_cgroup(cgroup_id));
                let services = self.narrowed_services(sandbox, &inner.policy, p)?;
                let ceiling = self
                    .enforcement()
                    .sandbox_entry(sandbox.cgroup.id)
                    .ok_or(Error::Lost("the sandbox has no kernel entry"))?;
                let ports = domains::service_ports(services.as_ref());
                let policy_id = start.apply(p, ports, Some(&ceiling))?;
                if let Some(s) = &services {
                    s.bind(Bound {
                        cgroup_id,
                        policy_id,
                    });
                }
                let child = spawn_exec(sandbox, exec_id, &mut spec, start.made_cgroup())?;
                let started = start.finish();
                (Some(started.cgroup), policy_id, services, child)
            }
        };
        let exec_view = ExecView {
            id: exec_id,
            command: req.command.clone(),
            state: ExecState::Running,
            exit_code: None,
            policy: req.policy.clone(),
            cgroup_id: cgroup.as_ref().map_or(sandbox.cgroup.id, |c| c.id),
        };
        let (exit, _) = watch::channel(None);
        inner.execs.insert(
            exec_id,
            ExecLive {
                cgroup,
                policy_id,
                policy: narrowed,
                services,
                exit,
            },
        );
        drop(inner);
        sandbox.update(|v| v.execs.push(exec_view.clone()));
        self.handle.spawn(supervise_exec(
            self.clone(),
            sandbox.clone(),
            exec_id,
            child,
        ));
        Ok(exec_view)
    }

    /// A narrowed exec's own resolver and proxy when names are involved: they check its
    /// policy, the sandbox's and the floor.
    fn narrowed_services(
        &self,
        sandbox: &Sandbox,
        ceiling: &Arc<CompiledPolicy>,
        policy: &Arc<CompiledPolicy>,
    ) -> Result<Option<DomainServices>> {
        if !(self.needs_services(policy, false) || ceiling.has_names()) {
            return Ok(None);
        }
        let layers = std::iter::once(policy.clone())
            .chain(std::iter::once(ceiling.clone()))
            .chain(self.floor.iter().cloned())
            .collect();
        let max_learned = sandbox.view().max_learned_addresses;
        self.start_services(&sandbox.id, layers, None, max_learned)
            .map(Some)
    }

    /// Replaces a live sandbox's policy: new connections see the new policy whole at once;
    /// established connections it denies are cut (proxied ones by the proxy, direct ones by
    /// the kernel dropping their packets and a socket destroy).
    pub fn set_policy(&self, sandbox: &Arc<Sandbox>, body: &PolicyFile) -> Result<SandboxView> {
        sandbox.check_running()?;
        let t0 = Instant::now();
        let new = Arc::new(policy::compile(&body.spec("policy.", Mode::Blocked))?);
        let mut inner = lock(&sandbox.inner);
        if inner.closing {
            return Err(Error::Ending(sandbox.id.clone()));
        }
        tracing::debug!(us = t0.elapsed().as_micros(), "policy compiled");
        // The explicit proxy of a `proxy_env` sandbox stays reachable whatever the policy.
        let view = sandbox.view();
        let needs_services = self.needs_services(&new, view.proxy_env);
        if inner.services.is_none() && needs_services {
            inner.services = Some(self.start_services(
                &sandbox.id,
                self.layers(&new),
                None,
                view.max_learned_addresses,
            )?);
        }
        let ports = domains::service_ports(inner.services.as_ref().filter(|_| needs_services));
        // Narrowed execs: those of this daemon and those it re-adopted with the sandbox
        // (recorded; their entries may outlive a restart).
        let dependents: Vec<u64> = inner
            .execs
            .values()
            .filter_map(|e| e.cgroup.as_ref().map(|c| c.id))
            .chain(
                view.execs
                    .iter()
                    .filter(|e| e.cgroup_id != sandbox.cgroup.id)
                    .map(|e| e.cgroup_id),
            )
            .collect();
        let old_id = inner.policy_id;
        let new_layers = self.layers(&new);
        let shared = inner.services.as_ref().map(|s| s.shared.clone());
        let mut enforcement = self.enforcement();
        let (new_id, mut cut) = enforcement.replace_policy(
            sandbox.cgroup.id,
            (old_id, &inner.policy),
            &new,
            ports,
            &dependents,
            |a| {
                shared
                    .as_ref()
                    .is_some_and(|s| s.learned_allowed_by(a, &new_layers))
            },
        )?;
        tracing::debug!(us = t0.elapsed().as_micros(), "policy switched");
        inner.policy = new.clone();
        inner.policy_id = new_id;
        if let Some(s) = &shared {
            s.replace_layers(
                new_layers,
                Bound {
                    cgroup_id: sandbox.cgroup.id,
                    policy_id: new_id,
                },
            );
        }
        cut.extend(self.follow_new_ceiling(&inner, &new, &mut enforcement));
        let cgroups: Vec<(PathBuf, u64)> =
            std::iter::once((sandbox.cgroup.path.clone(), sandbox.cgroup.id))
                .chain(
                    inner
                        .execs
                        .values()
                        .filter_map(|e| e.cgroup.as_ref().map(|c| (c.path.clone(), c.id))),
                )
                .collect();
        let service_ports = domains::service_ports(inner.services.as_ref());
        drop(enforcement);
        // The record changes before the lock goes: the next policy change starts from it.
        sandbox.update(|v| {
            v.policy = body.clone();
            v.policy_id = new_id;
            (v.dns_port, v.proxy_port) = service_ports;
        });
        drop(inner);
        tracing::debug!(us = t0.elapsed().as_micros(), "learned carried");
        self.cut_denied(&cgroups, &cut, shared.as_deref());
        tracing::debug!(us = t0.elapsed().as_micros(), "sockets checked");
        tracing::info!(sandbox = %sandbox.id, "policy replaced");
        Ok(self.view(sandbox))
    }

    /// Execs with their own resolver: a sandbox's new policy is their ceiling for names, and
    /// their learned addresses it denies go. Returns the peers whose connections lost a mark.
    fn follow_new_ceiling(
        &self,
        inner: &Inner,
        new: &Arc<CompiledPolicy>,
        enforcement: &mut Enforcement,
    ) -> Vec<std::net::IpAddr> {
        let mut cut = Vec::new();
        for exec in inner.execs.values() {
            if let (Some(s), Some(p), Some(cg)) = (&exec.services, &exec.policy, &exec.cgroup) {
                let layers = std::iter::once(p.clone())
                    .chain(std::iter::once(new.clone()))
                    .chain(self.floor.iter().cloned())
                    .collect();
                s.shared.replace_layers(
                    layers,
                    Bound {
                        cgroup_id: cg.id,
                        policy_id: exec.policy_id,
                    },
                );
                let exec_shared = s.shared.clone();
                cut.extend(
                    enforcement.carry_learned(exec.policy_id, exec.policy_id, |a| {
                        exec_shared.learned_still_allowed(a)
                    }),
                );
            }
        }
        cut
    }

    /// Direct connections a new policy denies: their packets are dropped from the switch on;
    /// destroying the sockets tells the workload at once instead of after TCP timeouts.
    /// `cut` are the peers of learned connections that lost their mark.
    fn cut_denied(
        &self,
        cgroups: &[(PathBuf, u64)],
        cut: &[std::net::IpAddr],
        shared: Option<&domains::Shared>,
    ) {
        let maps = crate::enforcement::AgentMaps::open(&self.paths).ok();
        for (path, cgroup_id) in cgroups {
            destroy_denied_sockets(path, |peer| {
                cut.contains(&peer)
                    || (maps
                        .as_ref()
                        .is_some_and(|m| !m.address_verdict(*cgroup_id, peer).allow)
                        && !shared.is_some_and(|s| s.learned_still_allowed(peer)))
            });
        }
    }

    /// Writes to the workload's stdin; blocks while the pipe is full (call it off the
    /// runtime), without holding the sandbox's lock meanwhile.
    pub fn write_stdin(&self, sandbox: &Sandbox, data: &[u8]) -> Result<()> {
        let stdin = {
            let mut inner = lock(&sandbox.inner);
            inner.last_activity = Instant::now();
            inner.stdin.as_ref().map(std::fs::File::try_clone)
        };
        let Some(stdin) = stdin else {
            return Err(Error::NoStdin {
                sandbox: sandbox.id.clone(),
                writing: true,
            });
        };
        let result = stdin.and_then(|mut f| f.write_all(data));
        sandbox.touch();
        result.map_err(|source| Error::Stdin {
            sandbox: sandbox.id.clone(),
            source,
        })
    }

    pub fn close_stdin(&self, sandbox: &Sandbox) -> Result<()> {
        let mut inner = lock(&sandbox.inner);
        inner.last_activity = Instant::now();
        match inner.stdin.take() {
            Some(_) => Ok(()),
            None => Err(Error::NoStdin {
                sandbox: sandbox.id.clone(),
                writing: false,
            }),
        }
    }

    /// A connect token for a live sandbox's HTTP ports.
    pub fn issue_token(&self, sandbox: &Sandbox, req: TokenRequest) -> Result<TokenView> {
        sandbox.check_running()?;
        let mut view = self
            .tokens
            .issue(&sandbox.id, &sandbox.dir, req.user_metadata)?;
        view.urls = sandbox
            .view()
            .ports
            .into_iter()
            .filter(|p| p.protocol.is_http())
            .collect();
        Ok(view)
    }

    pub fn revoke_token(&self, sandbox: &Sandbox, id: &str) -> Result<()> {
        Ok(self.tokens.revoke(&sandbox.id, &sandbox.dir, id)?)
    }
}

/// An exec's output files and process, in `target` (the sandbox's cgroup or its own).
fn spawn_exec(
    sandbox: &Sandbox,
    exec_id: u32,
    spec: &mut launch::LaunchSpec,
    target: &crate::cgroup::SandboxCgroup,
) -> Result<launch::Child> {
    let spawned = (|| {
        let stdout = logs::create(&sandbox.exec_log_path(exec_id, "stdout"))?;
        let stderr = logs::create(&sandbox.exec_log_path(exec_id, "stderr"))?;
        let null = std::fs::File::open("/dev/null")?;
        spec.stdio = Some([null.as_raw_fd(), stdout.as_raw_fd(), stderr.as_raw_fd()]);
        spec.new_session = true;
        let fd = target
            .open_fd()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        launch::spawn(spec, &fd).map_err(|e| std::io::Error::other(crate::error_line(&e)))
    })();
    spawned.map_err(|e| Error::ExecStart(e.to_string()))
}
