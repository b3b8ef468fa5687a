//! Connections from the agent to a sandbox's listener: marked with `INGRESS_MARK`, the only
//! mark a sandbox's listeners accept connections with.
use std::{
    future::Future,
    net::SocketAddr,
    os::fd::AsFd as _,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use hyper::Uri;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpSocket, TcpStream};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A TCP connection to `addr` (a sandbox's listener on loopback) with the ingress mark.
pub async fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    nix::sys::socket::setsockopt(
        &socket.as_fd(),
        nix::sys::socket::sockopt::Mark,
        &sandbox_common::INGRESS_MARK,
    )
    .map_err(std::io::Error::from)?;
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// hyper's connector for the gateway's pooled clients: the URI's authority is the
/// listener's loopback address (unique to that listener while it lives).
#[derive(Clone, Copy, Default)]
pub struct MarkedConnector;

impl tower_service::Service<Uri> for MarkedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(async move {
            let addr: SocketAddr = uri
                .authority()
                .and_then(|a| a.as_str().parse().ok())
                .ok_or_else(|| std::io::Error::other(format!("not a listener address: {uri}")))?;
            connect(addr).await.map(TokioIo::new)
        })
    }
}
