//! One sandbox run, start to finish: lock, cgroup, policy in the kernel, workload, wait,
//! clean-up. Clean-up runs on every path out (normal exit, killed workload, SIGINT/SIGTERM/
//! SIGHUP to the agent, timeout, errors), through a guard.
use std::{
    fs,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use nix::{
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sys::{
        signal::{SigSet, Signal},
        signalfd::{SfdFlags, SignalFd},
    },
};
use sandbox_common::Counters;

use crate::{
    cgroup::{CgroupError, SandboxCgroup},
    domains::{Bound, DomainError, DomainOptions, DomainServices},
    enforcement::{Enforcement, EnforcementError, FileLock, random_id},
    launch::{self, LaunchError, LaunchSpec},
    lifecycle::{EnforcementAccess as _, KILL_TIMEOUT, Starting},
    paths::Paths,
    policy::CompiledPolicy,
};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Enforcement(#[from] EnforcementError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Launch(#[from] LaunchError),
    #[error("lock {path}: {source}")]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("signal handling: {0}")]
    Signals(#[source] nix::Error),
    #[error(transparent)]
    Domains(#[from] DomainError),
    #[error(transparent)]
    Limits(#[from] crate::limits::LimitError),
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl RunError {
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Launch(e) => e.exit_code(),
            _ => 125,
        }
    }
}

/// The sandbox's uid and image layers stay taken while its cgroup has processes.
fn bind_cgroup(opts: &RunOptions, cgroup: &std::path::Path) -> Result<(), RunError> {
    if let Some(lease) = &opts.lease {
        lease.bind_cgroup(cgroup)?;
    }
    if let Some(hold) = &opts.image {
        hold.bind_cgroup(cgroup).map_err(|source| RunError::Io {
            action: "record the image layers of",
            path: cgroup.to_path_buf(),
            source,
        })?;
    }
    Ok(())
}

pub struct RunOptions {
    pub policy: CompiledPolicy,
    pub launch: LaunchSpec,
    /// Kill the workload after this long (exit status 124).
    pub timeout: Option<Duration>,
    /// After forwarding SIGINT/SIGTERM/SIGHUP, how long the workload may take to exit.
    pub stop_grace: Duration,
    /// The resolver and proxy settings; required when the policy has domain rules or
    /// `proxy_env` is set.
    pub domains: Option<DomainOptions>,
    /// Give the workload `HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY` (and lower-case forms)
    /// naming the sandbox's explicit proxy.
    pub proxy_env: bool,
    /// The host floor (from the config): denied whatever the policy says.
    pub floor: Option<std::sync::Arc<CompiledPolicy>>,
    /// Memory, CPU and process limits (cgroup v2 controllers).
    pub limits: crate::limits::Limits,
    /// The sandbox's own uid, given back once its cgroup is empty.
    pub lease: Option<crate::identity::Lease>,
    /// The image's layers, held in the cache until the sandbox's cgroup is bound to them.
    pub image: Option<crate::image::Hold>,
}

/// What a run ended with.
#[derive(Debug)]
pub struct RunReport {
    pub id: String,
    pub exit_code: i32,
    pub timed_out: bool,
    /// The memory limit's OOM killer ended it.
    pub oom: bool,
    pub counters: Counters,
}

/// Runs one workload under `opts.policy` and cleans up.
pub fn run(paths: &Paths, mut opts: RunOptions) -> Result<RunReport, RunError> {
    for gap in crate::scoping::host_gaps() {
        eprintln!("sandbox-agent: warning: {gap}");
    }
    // Signals are blocked before anything exists, so a SIGTERM at any moment reaches the
    // signalfd and leads to an orderly clean-up instead of killing the agent half-way. The
    // workload has a session of its own: a terminal's SIGWINCH reaches the agent only and is
    // passed on; SIGTSTP (Ctrl-Z) is taken and dropped, since stopping the agent alone would
    // leave the workload reading the terminal beside the operator's shell.
    let mut mask = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGWINCH,
        Signal::SIGTSTP,
    ] {
        mask.add(s);
    }
    mask.thread_block().map_err(RunError::Signals)?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(RunError::Signals)?;

    let mut timing = Timing::from_env();
    let (mut enforcement, _) = Enforcement::open(paths)?;
    enforcement.set_floor(opts.floor.as_deref().cloned());
    timing.mark("open enforcement");
    collect_orphans(paths, &mut enforcement);
    timing.mark("collect orphans");

    let id = random_id();
    let parent = enforcement.parent_cgroup.clone();
    // Undone on every way out of this function, errors and the normal end alike.
    let mut sandbox = Starting::new(&mut enforcement, |w| {
        eprintln!("sandbox-agent: warning: {w}");
    });
    sandbox
        .lock(paths, &id)
        .map_err(|(path, source)| RunError::Lock { path, source })?;
    opts.limits.prepare(&parent)?;
    let cgroup_id = sandbox.cgroup(&parent, &id)?.id;
    opts.limits.apply(&sandbox.made_cgroup().path)?;
    bind_cgroup(&opts, &sandbox.made_cgroup().path)?;
    timing.mark("lock and cgroup");
    // Domain rules: the resolver and proxy listen before the kernel may redirect to them.
    // Started after the signal mask is set, so their threads inherit it.
    let services = start_domain_services(
        paths,
        &id,
        &opts.policy,
        opts.floor.clone(),
        opts.proxy_env,
        opts.domains.take(),
        &mut opts.launch,
    )?;
    let ports = crate::domains::service_ports(services.as_ref());
    timing.mark("domain services");
    let policy_id = sandbox.apply(&opts.policy, ports, None)?;
    if let Some(s) = &services {
        s.bind(Bound {
            cgroup_id,
            policy_id,
        });
    }
    timing.mark("apply policy");

    let fd = sandbox.made_cgroup().open_fd()?;
    let child = launch::spawn(&opts.launch, &fd)?;
    timing.mark("spawn");
    drop(fd);
    // Its cgroup has a process now: the in-use record keeps the layers from here on.
    drop(opts.image.take());

    let (status, timed_out) = wait(
        &child,
        &signals,
        sandbox.made_cgroup(),
        opts.timeout,
        opts.stop_grace,
    )?;
    let counters = sandbox
        .enforcement()
        .with(|e| e.counters(cgroup_id))
        .unwrap_or_default();
    let oom =
        opts.limits.memory.is_some() && crate::limits::oom_killed(&sandbox.made_cgroup().path);
    timing.mark("workload");
    // The resolver and proxy stop first, so that nothing is learned for a policy being removed.
    drop(services);
    drop(sandbox);
    // Nothing of the sandbox is left: its uid may go to another.
    drop(opts.lease);
    timing.mark("clean-up");
    let exit_code = if timed_out {
        124
    } else if oom {
        128 + libc::SIGKILL
    } else {
        status.code()
    };
    Ok(RunReport {
        id,
        exit_code,
        timed_out,
        oom,
        counters,
    })
}

/// Waits for the workload, forwarding stop signals, and kills the sandbox on timeout or when
/// a forwarded signal is not obeyed in time. Returns its status and whether it timed out.
fn wait(
    child: &launch::Child,
    signals: &SignalFd,
    cgroup: &SandboxCgroup,
    timeout: Option<Duration>,
    stop_grace: Duration,
) -> Result<(launch::ExitStatus, bool), RunError> {
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut stop_deadline: Option<Instant> = None;
    let mut timed_out = false;
    let status = loop {
        let now = Instant::now();
        let next = [deadline, stop_deadline].into_iter().flatten().min();
        let wait = match next {
            Some(t) if t <= now => {
                // Timeout, or the workload ignored a forwarded stop signal: kill everything.
                timed_out = Some(t) == deadline;
                cgroup.kill_all(KILL_TIMEOUT)?;
                break launch::reap(child).map_err(LaunchError::Io)?;
            }
            Some(t) => PollTimeout::try_from(t - now).unwrap_or(PollTimeout::MAX),
            None => PollTimeout::NONE,
        };
        let mut fds = [
            PollFd::new(child.pidfd.as_fd(), PollFlags::POLLIN),
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, wait) {
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(e) => return Err(RunError::Signals(e)),
        }
        if fds[0].revents().is_some_and(|r| !r.is_empty()) {
            break launch::reap(child).map_err(LaunchError::Io)?;
        }
        if fds[1].revents().is_some_and(|r| !r.is_empty()) {
            while let Ok(Some(info)) = signals.read_signal() {
                let sig = i32::try_from(info.ssi_signo).unwrap_or(libc::SIGTERM);
                if sig == libc::SIGWINCH {
                    launch::signal_group(child, sig);
                    continue;
                }
                if sig == libc::SIGTSTP {
                    continue;
                }
                if stop_deadline.is_some() {
                    // A second signal: stop waiting.
                    stop_deadline = Some(Instant::now());
                } else {
                    launch::signal_group(child, sig);
                    stop_deadline = Some(Instant::now() + stop_grace);
                }
            }
        }
    };
    Ok((status, timed_out))
}

/// Starts the sandbox's resolver and proxy when the policy has domain rules or the explicit
/// proxy is asked for, and points the workload's proxy variables at it if asked.
fn start_domain_services(
    paths: &Paths,
    id: &str,
    policy: &CompiledPolicy,
    floor: Option<std::sync::Arc<CompiledPolicy>>,
    proxy_env: bool,
    options: Option<DomainOptions>,
    launch: &mut LaunchSpec,
) -> Result<Option<DomainServices>, RunError> {
    if !(policy.has_names() || proxy_env) {
        return Ok(None);
    }
    let options = options.ok_or(DomainError::NotConfigured)?;
    let services = DomainServices::start(paths, id, policy.clone(), floor, options)?;
    if proxy_env {
        set_proxy_env(launch, services.proxy_port);
    }
    Ok(Some(services))
}

/// Points the usual proxy variables at the sandbox's explicit proxy, replacing any the caller
/// set (they could not work: the kernel lets the sandbox reach no other proxy).
pub fn set_proxy_env(launch: &mut LaunchSpec, port: u16) {
    let http = format!("http://127.0.0.1:{port}");
    let socks = format!("socks5h://127.0.0.1:{port}");
    let vars = [
        ("HTTP_PROXY", &http),
        ("HTTPS_PROXY", &http),
        ("ALL_PROXY", &socks),
        ("http_proxy", &http),
        ("https_proxy", &http),
        ("all_proxy", &socks),
    ];
    launch.envp.retain(|kv| {
        let bytes = kv.as_bytes();
        !vars
            .iter()
            .any(|(k, _)| bytes.starts_with(k.as_bytes()) && bytes.get(k.len()) == Some(&b'='))
    });
    for (k, v) in vars {
        launch
            .envp
            .push(std::ffi::CString::new(format!("{k}={v}")).expect("no NUL in proxy variables"));
    }
}

/// Removes what agents that died left behind: sandbox cgroups whose lock nobody holds and
/// that have no processes, and kernel entries whose cgroup is gone. A cgroup that still has
/// processes stays (and stays confined).
pub fn collect_orphans(paths: &Paths, enforcement: &mut Enforcement) {
    remove_stale_entries(enforcement);
    for path in crate::cgroup::child_cgroups(&enforcement.parent_cgroup) {
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
            continue;
        };
        let lock_path = paths.sandbox_lock(&name);
        let Ok(Some(_lock)) = FileLock::try_acquire(&lock_path) else {
            continue;
        };
        let Ok(cgroup) = SandboxCgroup::open(path) else {
            continue;
        };
        if cgroup.is_populated().unwrap_or(true) {
            continue;
        }
        // Cgroups of execs narrowed below it (a daemon's sandbox) go first.
        for child in crate::cgroup::child_cgroups(&cgroup.path) {
            if let Ok(child) = SandboxCgroup::open(child) {
                if let Some(entry) = enforcement.sandbox_entry(child.id) {
                    enforcement.remove(child.id, entry.policy_id, None);
                }
                let _ = child.remove();
            }
        }
        if let Some(entry) = enforcement.sandbox_entry(cgroup.id) {
            enforcement.remove(cgroup.id, entry.policy_id, None);
        }
        let _ = cgroup.remove();
        let _ = fs::remove_file(&lock_path);
    }
}

/// Kernel entries of cgroups that no longer exist (removed by hand, or by an agent that
/// died between the two steps): their policy goes too.
fn remove_stale_entries(enforcement: &mut Enforcement) {
    let mut existing = std::collections::HashSet::new();
    for path in crate::cgroup::child_cgroups(&enforcement.parent_cgroup) {
        for sub in crate::cgroup::child_cgroups(&path) {
            if let Ok(id) = crate::cgroup::cgroup_id(&sub) {
                existing.insert(id);
            }
        }
        if let Ok(id) = crate::cgroup::cgroup_id(&path) {
            existing.insert(id);
        }
    }
    for (cgroup_id, entry) in enforcement.sandboxes() {
        if !existing.contains(&cgroup_id) {
            enforcement.remove(cgroup_id, entry.policy_id, None);
        }
    }
}

/// The cgroup directory of a sandbox cgroup id, if it is below `parent`.
pub fn cgroup_path_of(parent: &Path, id: u64) -> Option<PathBuf> {
    crate::cgroup::child_cgroups(parent)
        .into_iter()
        .find(|p| crate::cgroup::cgroup_id(p).is_ok_and(|i| i == id))
}

/// Phase timings on stderr when `SANDBOX_AGENT_TIMING` is set: where a start goes.
struct Timing(Option<Instant>);

impl Timing {
    fn from_env() -> Self {
        Self(std::env::var_os("SANDBOX_AGENT_TIMING").map(|_| Instant::now()))
    }

    fn mark(&mut self, phase: &str) {
        if let Some(last) = self.0 {
            let now = Instant::now();
            eprintln!(
                "sandbox-agent: timing: {phase}: {} us",
                (now - last).as_micros()
            );
            self.0 = Some(now);
        }
    }
}
