//! Chaining the agent's own egress through an operator's proxy (`run --upstream-proxy`):
//! `http://HOST:PORT` (HTTP CONNECT) and `socks5h://HOST:PORT` pass the host name on and let
//! that proxy resolve it; `socks5://HOST:PORT` passes the address the agent resolved and
//! checked itself. A leaf under the proxy and the shared domain state (both name it).
use std::{
    fmt,
    net::{SocketAddr, ToSocketAddrs as _},
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::TcpStream,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// HTTP CONNECT with the host name.
    Http,
    /// SOCKS5 with the address the agent resolved.
    Socks5,
    /// SOCKS5 with the host name (the proxy resolves).
    Socks5h,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamProxy {
    pub kind: Kind,
    pub addr: SocketAddr,
    /// As given, for messages and events.
    pub url: String,
}

impl fmt::Display for UpstreamProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

impl UpstreamProxy {
    /// Whether the agent resolves names itself before using this proxy.
    pub fn resolves_locally(&self) -> bool {
        self.kind == Kind::Socks5
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid --upstream-proxy \"{text}\": {why}")]
pub struct UpstreamProxyError {
    text: String,
    why: String,
}

/// Parses `http://HOST:PORT`, `socks5://HOST:PORT` or `socks5h://HOST:PORT`; HOST may be a
/// name, resolved once now with the system resolver.
pub fn parse(text: &str) -> Result<UpstreamProxy, UpstreamProxyError> {
    let err = |why: &str| UpstreamProxyError {
        text: text.into(),
        why: why.into(),
    };
    let (scheme, rest) = text.split_once("://").ok_or_else(|| {
        err("expected http://HOST:PORT, socks5://HOST:PORT or socks5h://HOST:PORT")
    })?;
    let kind = match scheme.to_ascii_lowercase().as_str() {
        "http" => Kind::Http,
        "socks5" => Kind::Socks5,
        "socks5h" => Kind::Socks5h,
        _ => return Err(err("the scheme must be http, socks5 or socks5h")),
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '@']) {
        return Err(err("give only HOST:PORT (no path, no credentials)"));
    }
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| err("a port is required"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| err("the port must be 1..=65535"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addr = (host, port)
        .to_socket_addrs()
        .map_err(|e| err(&format!("cannot resolve {host}: {e}")))?
        .next()
        .ok_or_else(|| err(&format!("{host} has no address")))?;
    Ok(UpstreamProxy {
        kind,
        addr,
        url: text.into(),
    })
}

/// What to ask the upstream proxy for.
#[derive(Clone, Copy, Debug)]
pub enum Via<'a> {
    Name(&'a str, u16),
    Addr(SocketAddr),
}

/// Opens a tunnel to `target` through the proxy.
pub async fn connect(proxy: &UpstreamProxy, target: Via<'_>) -> std::io::Result<TcpStream> {
    let mut stream = connect_with_timeout(proxy.addr).await?;
    let _ = stream.set_nodelay(true);
    match proxy.kind {
        Kind::Http => http_connect(&mut stream, target).await?,
        Kind::Socks5 | Kind::Socks5h => socks5_connect(&mut stream, target).await?,
    }
    Ok(stream)
}

fn refused(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::ConnectionRefused, what)
}

async fn http_connect(stream: &mut TcpStream, target: Via<'_>) -> std::io::Result<()> {
    let authority = match target {
        Via::Name(name, port) => format!("{name}:{port}"),
        Via::Addr(addr) => addr.to_string(),
    };
    stream
        .write_all(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await?;
    // Read the reply head byte-wise up to its end, so no tunnelled byte is consumed.
    let mut reader = BufReader::with_capacity(1, &mut *stream);
    let mut status = String::new();
    reader.read_line(&mut status).await?;
    let ok = status
        .split_whitespace()
        .nth(1)
        .is_some_and(|code| code.starts_with('2'));
    let mut total = status.len();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            return Err(refused("the upstream proxy closed the connection".into()));
        }
        total += line.len();
        if line == "\r\n" || line == "\n" {
            break;
        }
        if total > 16 * 1024 {
            return Err(refused(
                "the upstream proxy's reply head is too large".into(),
            ));
        }
    }
    if ok {
        Ok(())
    } else {
        Err(refused(format!(
            "the upstream proxy refused CONNECT {authority}: {}",
            status.trim()
        )))
    }
}

async fn socks5_connect(stream: &mut TcpStream, target: Via<'_>) -> std::io::Result<()> {
    stream.write_all(&[5, 1, 0]).await?;
    let mut choice = [0u8; 2];
    stream.read_exact(&mut choice).await?;
    if choice != [5, 0] {
        return Err(refused(
            "the upstream SOCKS5 proxy requires authentication".into(),
        ));
    }
    let mut req = vec![5, 1, 0];
    let port = match target {
        Via::Name(name, port) => {
            let len = u8::try_from(name.len())
                .map_err(|_| refused(format!("{name} is too long for SOCKS5")))?;
            req.push(3);
            req.push(len);
            req.extend_from_slice(name.as_bytes());
            port
        }
        Via::Addr(SocketAddr::V4(a)) => {
            req.push(1);
            req.extend_from_slice(&a.ip().octets());
            a.port()
        }
        Via::Addr(SocketAddr::V6(a)) => {
            req.push(4);
            req.extend_from_slice(&a.ip().octets());
            a.port()
        }
    };
    req.extend_from_slice(&port.to_be_bytes());
    stream.write_all(&req).await?;
    let mut head = [0u8; 4];
    stream.read_exact(&mut head).await?;
    if head[1] != 0 {
        return Err(refused(format!(
            "the upstream SOCKS5 proxy refused the connection (reply {})",
            head[1]
        )));
    }
    // Skip the bound address.
    let skip = match head[3] {
        1 => 4 + 2,
        4 => 16 + 2,
        3 => usize::from(stream.read_u8().await?) + 2,
        _ => return Err(refused("malformed SOCKS5 reply".into())),
    };
    let mut rest = vec![0u8; skip];
    stream.read_exact(&mut rest).await?;
    Ok(())
}

/// How long one upstream connect may take (the proxy's own connects too).
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A TCP connect that gives up after [`CONNECT_TIMEOUT`].
pub async fn connect_with_timeout(target: SocketAddr) -> std::io::Result<TcpStream> {
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {CONNECT_TIMEOUT:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proxy_urls() {
        let p = parse("http://127.0.0.1:3128").unwrap();
        assert_eq!(
            (p.kind, p.addr),
            (Kind::Http, "127.0.0.1:3128".parse().unwrap())
        );
        let p = parse("SOCKS5h://[::1]:1080/").unwrap();
        assert_eq!(
            (p.kind, p.addr),
            (Kind::Socks5h, "[::1]:1080".parse().unwrap())
        );
        assert!(parse("socks5://127.0.0.1:1080").unwrap().resolves_locally());
        for (bad, why) in [
            ("127.0.0.1:3128", "expected http://"),
            ("ftp://127.0.0.1:21", "scheme must be"),
            ("http://127.0.0.1", "a port is required"),
            ("http://127.0.0.1:0", "1..=65535"),
            ("http://user:pw@127.0.0.1:3128", "no credentials"),
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(
                e.starts_with(&format!("invalid --upstream-proxy \"{bad}\"")),
                "{e}"
            );
        }
    }
}
