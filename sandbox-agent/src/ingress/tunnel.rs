//! Tunnels of raw TCP and TLS ports: a listener on the host per exposed port, each
//! connection forwarded to the sandbox's listener (TLS ends here for `tls` ports).
use std::{net::SocketAddr, sync::Arc};

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::{directory::Directory, upstream};

/// A tunnel's listener; dropping it closes the listener (open connections finish).
pub struct Tunnel {
    pub addr: SocketAddr,
    task: tokio::task::AbortHandle,
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Opens a tunnel to `port` of `sandbox` on `host`, at `preferred`'s port if it is free
/// (a re-adopted sandbox keeps its address), else on a port the kernel picks.
pub fn open(
    sandboxes: Arc<dyn Directory>,
    handle: &tokio::runtime::Handle,
    sandbox: &str,
    port: u16,
    tls: Option<TlsAcceptor>,
    host: std::net::IpAddr,
    preferred: Option<SocketAddr>,
) -> std::io::Result<Tunnel> {
    let listener = preferred
        .and_then(|p| std::net::TcpListener::bind(p).ok())
        .map_or_else(|| std::net::TcpListener::bind(SocketAddr::new(host, 0)), Ok)?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let listener = TcpListener::from_std(listener)?;
    let sandbox = sandbox.to_owned();
    let task = handle
        .spawn(async move {
            loop {
                let stream = match listener.accept().await {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!(sandbox, port, "tunnel accept: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (sandboxes, sandbox, tls) = (sandboxes.clone(), sandbox.clone(), tls.clone());
                tokio::spawn(async move {
                    if let Err(e) = forward(&*sandboxes, &sandbox, port, tls, stream).await {
                        tracing::debug!(sandbox, port, "tunnel connection: {e}");
                    }
                });
            }
        })
        .abort_handle();
    Ok(Tunnel { addr, task })
}

async fn forward(
    sandboxes: &dyn Directory,
    sandbox: &str,
    port: u16,
    tls: Option<TlsAcceptor>,
    stream: tokio::net::TcpStream,
) -> std::io::Result<()> {
    let sb = sandboxes
        .live(sandbox)
        .ok_or_else(|| std::io::Error::other("the sandbox ended"))?;
    let target = sandboxes
        .listeners()
        .find(&sb.cgroup_ids(), port)
        .map(|l| l.addr)
        .ok_or_else(|| std::io::Error::other(format!("nothing listens on port {port}")))?;
    stream.set_nodelay(true)?;
    if let Some(acceptor) = tls {
        // The workload sees (and the sandbox counts as busy) only finished handshakes.
        let mut client = tokio::time::timeout(super::HANDSHAKE_TIMEOUT, acceptor.accept(stream))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        let _active = sb.clone().activity();
        let mut upstream = upstream::connect(target).await?;
        tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    } else {
        // Plain TCP both ways: spliced in the kernel, as the proxy does.
        let _active = sb.clone().activity();
        let upstream = upstream::connect(target).await?;
        crate::proxy::splice::bidirectional(&stream, &upstream).await?;
    }
    Ok(())
}
