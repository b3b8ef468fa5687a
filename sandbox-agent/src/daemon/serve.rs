//! Serving: the API on its Unix socket (root only), metrics on TCP, the ingress gateway,
//! the kernel's event reader, and the stop on SIGTERM/SIGINT (sandboxes stay).
use std::{fs, path::Path, sync::Arc, time::Duration};

use tokio::sync::Notify;

use super::{Daemon, DaemonError, io_err, server, supervise::spawn_trimmer};
use crate::{config::Config, ingress::directory::Directory, paths::Paths};

/// How long requests in flight may take to finish when the daemon stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The ingress gateway on `ingress_address`, unless it is off.
async fn start_gateway(daemon: &Arc<Daemon>) -> Result<(), DaemonError> {
    let Some(addr) = daemon.config.ingress_address() else {
        return Ok(());
    };
    let tcp = tokio::net::TcpListener::bind(addr).await.map_err(io_err(
        "listen for ingress (ingress_address) on",
        Path::new(&addr.to_string()),
    ))?;
    let gateway = crate::ingress::Gateway::new(
        daemon.clone() as Arc<dyn Directory>,
        daemon.config.ingress_domain.clone(),
        daemon.ingress_tls.gateway.clone(),
    );
    tokio::spawn(gateway.serve(tcp));
    tracing::info!(%addr, "ingress gateway");
    Ok(())
}

/// Runs the daemon until SIGTERM or SIGINT. Sandboxes outlive it: a restarted daemon
/// re-adopts them.
pub async fn serve(config: Config) -> Result<(), DaemonError> {
    let socket = config.socket.clone();
    let metrics_address = config.metrics_address;
    let daemon = Daemon::start(config, Paths::default())?;
    if let Some(dir) = socket.parent() {
        fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    }
    // The daemon lock is ours, so a socket file left here belongs to a dead daemon.
    match fs::remove_file(&socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("remove stale socket", &socket)(e)),
    }
    // Root-only from its first instant: created under a umask that leaves no bits for others
    // (the umask is the process's: whatever else is created meanwhile is only more private).
    let old_umask = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let listener = tokio::net::UnixListener::bind(&socket);
    nix::sys::stat::umask(old_umask);
    let listener = listener.map_err(io_err("listen on", &socket))?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(&socket, fs::Permissions::from_mode(0o600))
            .map_err(io_err("chmod", &socket))?;
    }
    spawn_trimmer(&daemon);
    let reader = daemon.clone();
    tokio::spawn(
        daemon
            .observe
            .clone()
            .read_kernel_events(move |cgroup| reader.sandbox_of_cgroup(cgroup)),
    );
    if let Some(addr) = metrics_address {
        let tcp = tokio::net::TcpListener::bind(addr).await.map_err(io_err(
            "listen for metrics on",
            Path::new(&addr.to_string()),
        ))?;
        let app = server::metrics_router(daemon.clone());
        tokio::spawn(async move {
            let _ = axum::serve(tcp, app).await;
        });
        tracing::info!(%addr, "metrics");
    }
    start_gateway(&daemon).await?;
    tracing::info!(socket = %socket.display(), "listening");
    let app = server::router(daemon.clone());
    let shutdown = async {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("stopping; sandboxes keep running and are re-adopted on restart");
    };
    // Requests that follow (logs, events, wait) would hold a graceful shutdown forever: the
    // ones in flight get a moment, then the daemon goes (sandboxes stay, see above).
    let stopping = Arc::new(Notify::new());
    let stopped = stopping.clone();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        stopped.notify_one();
    });
    let mut serving = tokio::spawn(async move { server.await });
    tokio::select! {
        () = stopping.notified() => {}
        ended = &mut serving => {
            let _ = fs::remove_file(&socket);
            return match ended {
                Ok(Err(e)) => Err(io_err("serve on", &socket)(e)),
                _ => Ok(()),
            };
        }
    }
    match tokio::time::timeout(SHUTDOWN_GRACE, serving).await {
        Ok(Ok(Err(e))) => return Err(io_err("serve on", &socket)(e)),
        Ok(_) => {}
        Err(_) => tracing::info!("requests still open after {SHUTDOWN_GRACE:?}: closing them"),
    }
    let _ = fs::remove_file(&socket);
    Ok(())
}
