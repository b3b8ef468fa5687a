//! One supervisor task per sandbox: it waits for the end (exit, kill, timeout, idle
//! timeout), then tears down what the sandbox had in the kernel and records how it ended;
//! one per exec; the readiness probe; and one trimmer for every sandbox's output.
use std::{
    fs,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use super::{
    Daemon,
    error::{Error, Result},
    logs,
    record::{ExecEnd, Readiness, Sandbox, lock},
    sockets::listening_in,
};
use crate::{
    api::{EndReason, ExecRequest, ExecState, ProbeSpec, SandboxState, WaitView},
    launch::{self, Child},
    lifecycle::KILL_TIMEOUT,
};

/// How often a supervisor looks at idleness (only sandboxes with an idle timeout).
const TICK: Duration = Duration::from_millis(250);
/// How often output files are checked against `log_limit_bytes` (one task for all).
const TRIM_EVERY: Duration = Duration::from_secs(2);

impl Daemon {
    /// Asks the supervisor to kill the sandbox; returns at once.
    pub fn kill(&self, sandbox: &Sandbox, reason: EndReason) {
        lock(&sandbox.kill_reason).get_or_insert(reason);
        sandbox.kill.notify_one();
    }

    /// Removes an ended sandbox's record and output (`force` kills a live one first).
    pub async fn remove(&self, sandbox: Arc<Sandbox>, force: bool) -> Result<()> {
        if sandbox.running() {
            if !force {
                return Err(Error::StillRunning(sandbox.id.clone()));
            }
            self.kill(&sandbox, EndReason::Killed);
            let mut ended = sandbox.ended_rx();
            let _ = ended.wait_for(|e| *e).await;
        }
        self.registry().remove(&sandbox.id);
        fs::remove_dir_all(&sandbox.dir).map_err(Error::io("remove", &sandbox.dir))?;
        Ok(())
    }
}

/// The supervisor of one sandbox: waits for its end (exit, kill, timeout, idle timeout),
/// trims its output, and tears down what it had in the kernel.
pub(super) async fn supervise(
    daemon: Arc<Daemon>,
    sandbox: Arc<Sandbox>,
    child: Option<Child>,
    timeout: Duration,
    idle_timeout: Option<Duration>,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    let cgroup = sandbox.cgroup.clone();
    let mut exited = Box::pin(async move {
        if let Some(c) = child {
            wait_child(c).await
        } else {
            // A re-adopted sandbox: not our child, so only its end can be seen.
            while cgroup.is_populated().unwrap_or(false) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            None
        }
    });
    let mut tick = tokio::time::interval(TICK);
    let mut reason: Option<EndReason> = None;
    let code = loop {
        tokio::select! {
            // An exit seen together with a kill or timeout is an exit.
            biased;
            code = &mut exited => break code,
            () = tokio::time::sleep_until(deadline), if reason.is_none() => {
                reason = Some(EndReason::Timeout);
                kill_cgroup(&sandbox).await;
            }
            () = sandbox.kill.notified(), if reason.is_none() => {
                reason = Some(lock(&sandbox.kill_reason).unwrap_or(EndReason::Killed));
                kill_cgroup(&sandbox).await;
            }
            _ = tick.tick(), if idle_timeout.is_some() => {
                if reason.is_none() && let Some(idle) = idle_timeout && idle_for(&sandbox) >= idle {
                    reason = Some(EndReason::IdleTimeout);
                    kill_cgroup(&sandbox).await;
                }
            }
        }
    };
    // The main process is gone: whatever it left behind goes with it.
    kill_cgroup(&sandbox).await;
    let reason = reason.or_else(|| oom_killed(&sandbox).then_some(EndReason::Oom));
    let (policy, policy_id, services, execs, lease) = {
        let mut inner = lock(&sandbox.inner);
        inner.closing = true;
        inner.stdin = None;
        inner.tunnels.clear();
        inner.init = None;
        (
            inner.policy.clone(),
            inner.policy_id,
            inner.services.take(),
            std::mem::take(&mut inner.execs),
            inner.lease.take(),
        )
    };
    // Nothing of it runs any more: its uid may go to another sandbox.
    drop(lease);
    drop(services);
    // Its connect and traffic tokens die with it.
    daemon.tokens.forget(&sandbox.id, &sandbox.dir);
    for (_, exec) in execs {
        drop(exec.services);
        if let Some(cg) = &exec.cgroup {
            daemon
                .enforcement()
                .remove(cg.id, exec.policy_id, exec.policy.as_deref());
        }
        exec.exit.send_replace(Some(ExecEnd(Some(137))));
    }
    let view = sandbox.view();
    // Execs it had before a restart (no longer ours to supervise) may have left entries.
    daemon.cleanup_kernel(&sandbox.cgroup, policy_id, Some(&policy), &view.execs);
    // Nothing of it is left in the kernel or the cgroup tree for the lock to guard.
    let _ = fs::remove_file(daemon.paths.sandbox_lock(&sandbox.id));
    // A re-adopted sandbox that we killed: not our child, but we know how it died.
    let code = code.or(reason.map(|_| 128 + libc::SIGKILL));
    let end_reason = match (reason, code) {
        (Some(r), _) => r,
        (None, Some(_)) => EndReason::Exited,
        (None, None) => EndReason::StatusUnknown,
    };
    sandbox.update(|v| {
        v.state = SandboxState::Exited;
        v.exit_code = code;
        v.end_reason = Some(end_reason);
        v.ended_at = Some(crate::api::now_rfc3339());
        for e in &mut v.execs {
            if e.state == ExecState::Running {
                e.state = ExecState::Exited;
                e.exit_code = Some(137);
            }
        }
    });
    sandbox.ready.send_if_modified(|r| {
        if *r == Readiness::Pending {
            *r = Readiness::Failed("the sandbox ended before it was ready".into());
            true
        } else {
            false
        }
    });
    sandbox.ended.send_replace(true);
    daemon.observe.sandbox_ended();
    tracing::info!(sandbox = %sandbox.id, reason = end_reason.as_str(), code, "ended");
}

/// Whether its memory limit's OOM killer ended it: recorded in the cgroup, read before the
/// cgroup goes.
fn oom_killed(sandbox: &Sandbox) -> bool {
    sandbox.view().resources.memory.is_some() && crate::limits::oom_killed(&sandbox.cgroup.path)
}

pub(super) async fn supervise_exec(
    daemon: Arc<Daemon>,
    sandbox: Arc<Sandbox>,
    exec_id: u32,
    child: Child,
) {
    let code = wait_child(child).await;
    let live = lock(&sandbox.inner).execs.remove(&exec_id);
    sandbox.touch();
    let Some(exec) = live else {
        // The sandbox ended first and cleaned up.
        return;
    };
    drop(exec.services);
    if let Some(cg) = &exec.cgroup {
        let _ = cg.kill_all(KILL_TIMEOUT);
        daemon
            .enforcement()
            .remove(cg.id, exec.policy_id, exec.policy.as_deref());
        let _ = cg.remove();
    }
    sandbox.update(|v| {
        if let Some(e) = v.execs.iter_mut().find(|e| e.id == exec_id) {
            e.state = ExecState::Exited;
            e.exit_code = code;
        }
    });
    exec.exit.send_replace(Some(ExecEnd(code)));
}

/// Waits for a child of ours through its pidfd; its status as the shell shows it.
async fn wait_child(child: Child) -> Option<i32> {
    // SAFETY: the AsyncFd owns the descriptor, which stays open until it is dropped.
    if let Ok(fd) = unsafe { tokio::io::unix::AsyncFd::register(child.pidfd.try_clone().ok()?) } {
        let _ = fd.readable().await;
    }
    let reaped = tokio::task::spawn_blocking(move || launch::reap(&child)).await;
    reaped
        .ok()
        .and_then(Result::ok)
        .map(launch::ExitStatus::code)
}

async fn kill_cgroup(sandbox: &Arc<Sandbox>) {
    let cgroup = sandbox.cgroup.clone();
    let killed = tokio::task::spawn_blocking(move || cgroup.kill_all(KILL_TIMEOUT)).await;
    if let Ok(Err(e)) = killed {
        tracing::warn!(sandbox = %sandbox.id, "{e}");
    }
}

/// How long the sandbox has been idle: no running exec, no stdin write, no open proxied
/// connection.
fn idle_for(sandbox: &Sandbox) -> Duration {
    let mut inner = lock(&sandbox.inner);
    let busy = !inner.execs.is_empty()
        || sandbox
            .open_ingress
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
        || inner.services.as_ref().is_some_and(|s| {
            s.shared
                .open_connections
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0
        });
    if busy {
        inner.last_activity = Instant::now();
    }
    inner.last_activity.elapsed()
}

/// Runs the readiness probe until it passes, the sandbox ends or the probe's time is up.
pub(super) async fn probe_task(daemon: Arc<Daemon>, sandbox: Arc<Sandbox>, probe: ProbeSpec) {
    let interval = probe
        .interval
        .as_deref()
        .and_then(|t| humantime::parse_duration(t).ok())
        .unwrap_or(Duration::from_millis(100));
    let give_up = probe
        .timeout
        .as_deref()
        .and_then(|t| humantime::parse_duration(t).ok())
        .unwrap_or(Duration::from_mins(5));
    let start = Instant::now();
    while sandbox.running() {
        let ok = match (&probe.tcp_port, &probe.exec) {
            (Some(port), _) => {
                // The kernel moved the listener to a port of its own (see `ingress`).
                match daemon.listeners.find(&sandbox.cgroup_ids(), *port) {
                    Some(at) => {
                        let path = sandbox.cgroup.path.clone();
                        tokio::task::spawn_blocking(move || listening_in(&path, at.addr.port()))
                            .await
                            .unwrap_or(false)
                    }
                    None => false,
                }
            }
            (None, Some(cmd)) => {
                let req = ExecRequest {
                    command: cmd.clone(),
                    ..ExecRequest::default()
                };
                match daemon.exec(&sandbox, &req) {
                    Ok(view) => match sandbox.exec_exit_rx(view.id) {
                        Some(mut rx) => rx
                            .wait_for(Option::is_some)
                            .await
                            .is_ok_and(|c| *c == Some(ExecEnd(Some(0)))),
                        None => lock(&sandbox.view)
                            .execs
                            .iter()
                            .any(|e| e.id == view.id && e.exit_code == Some(0)),
                    },
                    Err(_) => false,
                }
            }
            (None, None) => false,
        };
        if ok {
            sandbox.ready.send_replace(Readiness::Ready);
            sandbox.update(|v| v.ready = true);
            return;
        }
        if start.elapsed() >= give_up {
            sandbox.ready.send_replace(Readiness::Failed(format!(
                "not ready after {}",
                humantime::format_duration(give_up)
            )));
            return;
        }
        tokio::time::sleep(interval).await;
    }
}

impl Daemon {
    /// Waits until the sandbox is ready; errors if it has no probe, the probe gave up, or the
    /// sandbox ended first.
    pub async fn wait_ready(&self, sandbox: &Sandbox) -> Result<()> {
        let mut rx = sandbox.ready.subscribe();
        let state = rx
            .wait_for(|r| *r != Readiness::Pending)
            .await
            .map_err(|_| Error::Lost("probe state lost"))?
            .clone();
        match state {
            Readiness::Ready => Ok(()),
            Readiness::NoProbe => Err(Error::NoProbe(sandbox.id.clone())),
            Readiness::Failed(why) => Err(Error::NotReady {
                sandbox: sandbox.id.clone(),
                why,
            }),
            Readiness::Pending => unreachable!("waited for a change"),
        }
    }

    pub async fn wait(&self, sandbox: &Sandbox) -> WaitView {
        let mut rx = sandbox.ended_rx();
        let _ = rx.wait_for(|e| *e).await;
        let v = sandbox.view();
        WaitView {
            exit_code: v.exit_code,
            end_reason: v.end_reason,
        }
    }
}

/// Trims every live sandbox's output to `log_limit_bytes`, every `TRIM_EVERY`.
pub(super) fn spawn_trimmer(daemon: &Arc<Daemon>) {
    let trimmer = daemon.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TRIM_EVERY);
        loop {
            tick.tick().await;
            let dirs: Vec<PathBuf> = trimmer
                .all()
                .iter()
                .filter(|s| s.running())
                .map(|s| s.dir.clone())
                .collect();
            let limit = trimmer.config.log_limit_bytes;
            let _ = tokio::task::spawn_blocking(move || {
                for dir in dirs {
                    logs::trim_all(&dir, limit);
                }
            })
            .await;
        }
    });
}
