//! The explicit proxy, on the same loopback port as the transparent one: HTTP (`CONNECT`, and
//! absolute-form requests for `http://` URLs) and SOCKS5 (`CONNECT` only, no authentication),
//! for clients given `HTTP_PROXY`/`HTTPS_PROXY`/`ALL_PROXY` (`run --proxy-env`).
//!
//! The kernel lets a sandbox reach this port and records the connection like a redirected
//! one, so only that sandbox is served. The rules are the transparent proxy's: a name must be
//! allowed by the domain rules and is resolved by the agent, which connects only to permitted
//! addresses; an address target must be one the sandbox could reach directly. The kernel wall
//! stays in force either way: a client that ignores the proxy variables gets no more.
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use sandbox_common::{HTTP_PORT, HTTPS_PORT};

use super::{Refusal, connect_upstream};
use crate::{domain_state::Shared, enforcement::canonical, events::FlowEvent, policy};

/// Largest HTTP request head the explicit proxy reads.
const MAX_HEAD: usize = 16 * 1024;

/// Where a client asked to go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Name(String),
    Addr(IpAddr),
}

impl Target {
    fn parse(host: &str) -> Option<Self> {
        let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
        if let Some(v6) = bare {
            return v6.parse().ok().map(Self::Addr);
        }
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Some(Self::Addr(ip));
        }
        policy::normalize_name(host).map(Self::Name)
    }
}

/// What the client speaks.
enum Protocol {
    Socks5,
    /// An HTTP `CONNECT`: answered with a status line, then a tunnel.
    HttpConnect,
    /// An absolute-form request (`GET http://host/ HTTP/1.1`): forwarded in origin form with
    /// `Connection: close`, so that the connection carries this request only.
    HttpForward(Vec<u8>),
}

/// Serves one explicit-proxy connection; returns the upstream connection and the bytes to send
/// it first, or why not (the client has been answered).
pub(super) async fn open(
    client: &mut TcpStream,
    shared: &Shared,
    event: &mut FlowEvent,
) -> Result<(TcpStream, Vec<u8>), Refusal> {
    let mut first = [0u8; 1];
    match client.peek(&mut first).await {
        Ok(1) => {}
        _ => return Err(Refusal::Client("closed before sending a request".into())),
    }
    let (protocol, target, port) = if first[0] == 5 {
        let (t, p) = socks5_request(client).await?;
        (Protocol::Socks5, t, p)
    } else {
        http_request(client).await?
    };
    event.name = Some(match &target {
        Target::Name(n) => n.clone(),
        Target::Addr(a) => a.to_string(),
    });
    event.original_dst = Some(format!("{}:{port}", event.name.as_deref().unwrap_or("")));
    let result = connect_target(&target, port, shared, event).await;
    let upstream = match result {
        Ok(u) => u,
        Err(refusal) => {
            let _ = refuse(client, &protocol, &refusal).await;
            return Err(refusal);
        }
    };
    let head = match protocol {
        Protocol::Socks5 => {
            // Succeeded; the bound address is not meaningful here.
            client
                .write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0])
                .await
                .map_err(|e| Refusal::Client(format!("write failed: {e}")))?;
            Vec::new()
        }
        Protocol::HttpConnect => {
            client
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await
                .map_err(|e| Refusal::Client(format!("write failed: {e}")))?;
            Vec::new()
        }
        Protocol::HttpForward(head) => head,
    };
    Ok((upstream, head))
}

async fn connect_target(
    target: &Target,
    port: u16,
    shared: &Shared,
    event: &mut FlowEvent,
) -> Result<TcpStream, Refusal> {
    match target {
        Target::Name(name) => {
            let verdict = shared.decide_name(name);
            if !verdict.allow {
                return Err(Refusal::Policy(verdict.reason.to_string()));
            }
            let any = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
            connect_upstream(name, any, shared, event).await
        }
        Target::Addr(addr) => {
            // As if the sandbox connected itself: the kernel's verdict for the address.
            let addr = canonical(*addr);
            let bound = shared
                .bound()
                .ok_or_else(|| Refusal::Policy("the sandbox is not known yet".into()))?;
            let verdict = shared
                .maps
                .lock()
                .map_err(|_| Refusal::Policy("internal state unavailable".into()))?
                .address_verdict(bound.cgroup_id, addr);
            if !verdict.allow {
                return Err(Refusal::Policy(format!(
                    "{addr} is not allowed by an address rule"
                )));
            }
            // Web ports need a name decision unless an address rule allows the address (as
            // in the kernel, where such a connect goes to the transparent proxy): in `open`
            // mode an address target must not skip the domain rules.
            if matches!(port, HTTP_PORT | HTTPS_PORT)
                && !matches!(verdict.reason, sandbox_common::Reason::AllowRule)
            {
                return Err(Refusal::Policy(format!(
                    "{addr}:{port} needs a host name (the domain rules decide ports 80 and 443)"
                )));
            }
            let target = SocketAddr::new(addr, port);
            let stream = super::dial(shared, target)
                .await
                .map_err(|e| Refusal::Upstream(format!("cannot connect to {target}: {e}")))?;
            event.resolved = vec![target.to_string()];
            Ok(stream)
        }
    }
}

/// Answers a refused request in the client's protocol.
async fn refuse(
    client: &mut TcpStream,
    protocol: &Protocol,
    refusal: &Refusal,
) -> std::io::Result<()> {
    match protocol {
        Protocol::Socks5 => {
            // 0x02: not allowed by ruleset; 0x04: host unreachable.
            let code = match refusal {
                Refusal::Policy(_) => 2,
                Refusal::Upstream(_) => 4,
                Refusal::Client(_) => 1,
            };
            client.write_all(&[5, code, 0, 1, 0, 0, 0, 0, 0, 0]).await
        }
        Protocol::HttpConnect | Protocol::HttpForward(_) => {
            let (status, text) = match refusal {
                Refusal::Policy(t) => ("403 Forbidden", t),
                Refusal::Upstream(t) => ("502 Bad Gateway", t),
                Refusal::Client(t) => ("400 Bad Request", t),
            };
            let body = format!("sandbox-agent: {text}\n");
            let reply = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            client.write_all(reply.as_bytes()).await
        }
    }
}

/// RFC 1928: greeting (no authentication only), then one CONNECT request.
async fn socks5_request(client: &mut TcpStream) -> Result<(Target, u16), Refusal> {
    let bad = |what: &str| Refusal::Client(format!("SOCKS5: {what}"));
    let io = |e: std::io::Error| Refusal::Client(format!("SOCKS5: {e}"));
    let mut head = [0u8; 2];
    client.read_exact(&mut head).await.map_err(io)?;
    let mut methods = vec![0u8; usize::from(head[1])];
    client.read_exact(&mut methods).await.map_err(io)?;
    if !methods.contains(&0) {
        let _ = client.write_all(&[5, 0xff]).await;
        return Err(bad("the client offers no method without authentication"));
    }
    client.write_all(&[5, 0]).await.map_err(io)?;
    let mut req = [0u8; 4];
    client.read_exact(&mut req).await.map_err(io)?;
    if req[0] != 5 {
        return Err(bad("wrong version in the request"));
    }
    if req[1] != 1 {
        // 0x07: command not supported (BIND, UDP ASSOCIATE).
        let _ = client.write_all(&[5, 7, 0, 1, 0, 0, 0, 0, 0, 0]).await;
        return Err(bad("only CONNECT is supported"));
    }
    let target = match req[3] {
        1 => {
            let mut a = [0u8; 4];
            client.read_exact(&mut a).await.map_err(io)?;
            Target::Addr(IpAddr::from(a))
        }
        4 => {
            let mut a = [0u8; 16];
            client.read_exact(&mut a).await.map_err(io)?;
            Target::Addr(IpAddr::from(a))
        }
        3 => {
            let len = client.read_u8().await.map_err(io)?;
            let mut name = vec![0u8; usize::from(len)];
            client.read_exact(&mut name).await.map_err(io)?;
            let name = String::from_utf8(name).map_err(|_| bad("the host name is not UTF-8"))?;
            let Some(n) = policy::normalize_name(&name) else {
                let _ = client.write_all(&[5, 2, 0, 1, 0, 0, 0, 0, 0, 0]).await;
                return Err(bad(&format!("{name:?} is not a valid host name")));
            };
            Target::Name(n)
        }
        _ => {
            let _ = client.write_all(&[5, 8, 0, 1, 0, 0, 0, 0, 0, 0]).await;
            return Err(bad("unknown address type"));
        }
    };
    let port = client.read_u16().await.map_err(io)?;
    Ok((target, port))
}

/// Reads an HTTP/1.x proxy request head: `CONNECT host:port` or an absolute-form request.
async fn http_request(client: &mut TcpStream) -> Result<(Protocol, Target, u16), Refusal> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let result = http_target(&req, &buf[..len], &buf[len..]);
                if let Err(r) = &result {
                    let _ = refuse(client, &Protocol::HttpConnect, r).await;
                }
                return result;
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => {
                let r = Refusal::Client(format!("not an HTTP request: {e}"));
                let _ = refuse(client, &Protocol::HttpConnect, &r).await;
                return Err(r);
            }
        }
        if buf.len() >= MAX_HEAD {
            return Err(Refusal::Client("request head too large".into()));
        }
        let mut chunk = [0u8; 4096];
        match client.read(&mut chunk).await {
            Ok(0) => {
                return Err(Refusal::Client(
                    "closed before the request head ended".into(),
                ));
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(Refusal::Client(format!("read failed: {e}"))),
        }
    }
}

fn http_target(
    req: &httparse::Request<'_, '_>,
    head: &[u8],
    rest: &[u8],
) -> Result<(Protocol, Target, u16), Refusal> {
    let method = req.method.unwrap_or_default();
    let path = req.path.unwrap_or_default();
    if method.eq_ignore_ascii_case("CONNECT") {
        let (host, port) = split_authority(path, None)
            .ok_or_else(|| Refusal::Client(format!("bad CONNECT target {path:?}")))?;
        let target = Target::parse(host)
            .ok_or_else(|| Refusal::Client(format!("bad CONNECT host {host:?}")))?;
        return Ok((Protocol::HttpConnect, target, port));
    }
    let Some(after) = path
        .get(..7)
        .filter(|s| s.eq_ignore_ascii_case("http://"))
        .map(|_| &path[7..])
    else {
        return Err(Refusal::Client(format!(
            "{method} {path}: a proxy request needs CONNECT or an http:// URL"
        )));
    };
    let (authority, origin) = match after.find('/') {
        Some(i) => (&after[..i], &after[i..]),
        None => (after, "/"),
    };
    let (host, port) = split_authority(authority, Some(80))
        .ok_or_else(|| Refusal::Client(format!("bad URL authority {authority:?}")))?;
    let target =
        Target::parse(host).ok_or_else(|| Refusal::Client(format!("bad URL host {host:?}")))?;
    // Origin form, the proxy's own headers dropped, one request per connection.
    let mut out = format!("{method} {origin} HTTP/1.1\r\n").into_bytes();
    for h in req.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        if name.starts_with("proxy-") || name == "connection" || name == "keep-alive" {
            continue;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out.extend_from_slice(rest);
    let _ = head;
    Ok((Protocol::HttpForward(out), target, port))
}

/// `host:port` (`[v6]:port`); the port may be missing when `default` is given.
fn split_authority(text: &str, default: Option<u16>) -> Option<(&str, u16)> {
    let (host, port) = if text.starts_with('[') {
        let end = text.find(']')?;
        let host = &text[..=end];
        match &text[end + 1..] {
            "" => (host, None),
            p => (host, Some(p.strip_prefix(':')?)),
        }
    } else {
        match text.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (text, None),
        }
    };
    let port = match port {
        Some(p) => p.parse().ok().filter(|p| *p != 0)?,
        None => default?,
    };
    (!host.is_empty()).then_some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities() {
        assert_eq!(split_authority("a.test:443", None), Some(("a.test", 443)));
        assert_eq!(split_authority("[::1]:8080", None), Some(("[::1]", 8080)));
        assert_eq!(split_authority("a.test", Some(80)), Some(("a.test", 80)));
        assert_eq!(split_authority("a.test", None), None);
        assert_eq!(split_authority("a.test:0", None), None);
        assert_eq!(split_authority("a.test:x", None), None);
        assert_eq!(split_authority(":80", None), None);
    }

    #[test]
    fn targets() {
        assert_eq!(
            Target::parse("A.Test."),
            Some(Target::Name("a.test".into()))
        );
        assert_eq!(
            Target::parse("[2001:db8::1]"),
            Some(Target::Addr("2001:db8::1".parse().unwrap()))
        );
        assert_eq!(
            Target::parse("10.0.0.1"),
            Some(Target::Addr("10.0.0.1".parse().unwrap()))
        );
        assert_eq!(Target::parse("bad host"), None);
    }

    fn parse(head: &str) -> Result<(Protocol, Target, u16), Refusal> {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut req = httparse::Request::new(&mut headers);
        let len = match req.parse(head.as_bytes()).unwrap() {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => panic!("partial"),
        };
        http_target(&req, &head.as_bytes()[..len], &head.as_bytes()[len..])
    }

    #[test]
    fn http_requests() {
        let Ok((Protocol::HttpConnect, t, 443)) =
            parse("CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n")
        else {
            panic!("CONNECT")
        };
        assert_eq!(t, Target::Name("a.test".into()));
        let Ok((Protocol::HttpForward(out), t, 8080)) = parse(
            "GET http://A.test:8080/x?y HTTP/1.1\r\nHost: a.test:8080\r\nProxy-Connection: keep-alive\r\nConnection: keep-alive\r\n\r\nbody",
        ) else {
            panic!("forward")
        };
        assert_eq!(t, Target::Name("a.test".into()));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /x?y HTTP/1.1\r\nHost: a.test:8080\r\nConnection: close\r\n\r\nbody"
        );
        assert!(parse("GET /x HTTP/1.1\r\nHost: a.test\r\n\r\n").is_err());
        assert!(parse("CONNECT a.test HTTP/1.1\r\n\r\n").is_err());
    }
}
