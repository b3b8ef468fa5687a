//! The transparent proxy for TCP that needs a domain decision (ports 80 and 443 that no
//! address rule allows), in stages:
//!
//! 1. transport: the kernel redirected the connection here and recorded where it was going
//!    (`PROXY_CONNS`, keyed by the client's port); a connection without such a record did not
//!    come through the redirect and is refused, so the proxy is no open relay;
//! 2. detection (`detect`): the TLS `ClientHello`'s SNI on 443, the HTTP Host on 80;
//! 3. decision: the policy's domain rules;
//! 4. forwarding: the proxy resolves the name itself and connects to an address it resolved
//!    and the policy permits (never simply to the client's choice, so a forged SNI or Host
//!    reaches the named server or nothing), replays the bytes it read and splices the rest.
//!
//! Every refusal resets the client's connection at once and is reported as a flow event.
pub mod detect;
pub mod explicit;
pub mod splice;

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use sandbox_common::{FlowKind, HTTPS_PORT, OrigDst, ProxyKey};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    time::timeout,
};

use crate::{
    domain_state::Shared,
    enforcement::canonical,
    events::{FlowEvent, Source},
    upstream_proxy::{self as upstream, CONNECT_TIMEOUT, connect_with_timeout},
};
use detect::{HttpHost, TlsHello};

/// How long a client may take to send its `ClientHello` or request head.
const DETECT_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((client, peer)) = listener.accept().await else {
            // Out of descriptors and the like: back off briefly rather than spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let shared = shared.clone();
        // One span per proxied connection (debug level): its destination and name are
        // recorded once known, so a debug log follows the connection through.
        let span = tracing::debug_span!(
            "proxied",
            sandbox = %shared.sandbox_id,
            client = %peer,
            dst = tracing::field::Empty,
            name = tracing::field::Empty,
        );
        tokio::spawn(tracing::Instrument::instrument(
            async move { handle(client, peer, &shared).await },
            span,
        ));
    }
}

/// Whose fault a refusal is, for the event.
#[derive(Debug)]
pub(super) enum Refusal {
    Client(String),
    Policy(String),
    Upstream(String),
}

impl Refusal {
    fn text(self) -> String {
        match self {
            Self::Client(t) => format!("client: {t}"),
            Self::Policy(t) => format!("policy: {t}"),
            Self::Upstream(t) => format!("upstream: {t}"),
        }
    }
}

async fn handle(client: TcpStream, peer: SocketAddr, shared: &Shared) {
    let mut event = FlowEvent::new(&shared.sandbox_id, Source::Proxy);
    // Subscribed before the decision: a policy change while it is made is seen afterwards.
    let mut epoch = shared.policy_epoch.subscribe();
    let _open = OpenConnection::new(shared);
    let Some(orig) = original_destination(&client, peer, shared) else {
        reset(&client);
        shared
            .events
            .emit(&event.denied("client: connection did not come through the kernel's redirect"));
        return;
    };
    let mut client = client;
    let opened = if orig.kind == FlowKind::Explicit as u32 {
        // The request must arrive as promptly as a ClientHello; the connect that follows
        // has its own timeout.
        match timeout(
            DETECT_TIMEOUT + CONNECT_TIMEOUT,
            explicit::open(&mut client, shared, &mut event),
        )
        .await
        {
            Ok(opened) => opened,
            Err(_) => Err(Refusal::Client(format!(
                "no complete proxy request within {DETECT_TIMEOUT:?}"
            ))),
        }
    } else {
        let orig_addr = SocketAddr::new(canonical(IpAddr::from(orig.addr)), orig.port);
        event.original_dst = Some(orig_addr.to_string());
        open_transparent(&mut client, orig_addr, shared, &mut event).await
    };
    let span = tracing::Span::current();
    if let Some(dst) = &event.original_dst {
        span.record("dst", dst.as_str());
    }
    if let Some(name) = &event.name {
        span.record("name", name.as_str());
    }
    let (upstream, head) = match opened {
        Ok(v) => v,
        Err(refusal) => {
            tracing::debug!(?refusal, "refused");
            reset(&client);
            shared.events.emit(&event.denied(refusal.text()));
            return;
        }
    };
    shared
        .events
        .emit(&event.clone().allowed("name allowed by the policy"));
    let upstream_peer = upstream.peer_addr().ok();
    let name = event.name.clone();
    // A live policy change cuts the connection if the new policy denies its name or address.
    let still_allowed = |shared: &Shared| {
        name.as_deref().is_none_or(|n| shared.decide_name(n).allow)
            && upstream_peer.is_none_or(|p| shared.address_permitted(p.ip()).is_ok())
    };
    let cut = async {
        loop {
            if epoch.changed().await.is_err() || *epoch.borrow() == u64::MAX {
                return "the sandbox ended";
            }
            if !still_allowed(shared) {
                return "cut: the new policy denies it";
            }
        }
    };
    let (out, back, ended) = tokio::select! {
        (out, back) = forward(client, upstream, &head) => (out, back, None),
        why = cut => (0, 0, Some(why)),
    };
    event.bytes_out = Some(out);
    event.bytes_in = Some(back);
    // The decision was reported when the upstream connection opened; this closes it.
    match ended {
        None => event.reason = "connection closed".into(),
        Some(why) => event = event.denied(why),
    }
    shared.events.emit(&event);
}

/// Counts a proxied connection as open while it lives (idle timeouts look at the count).
struct OpenConnection<'a>(&'a Shared);

impl<'a> OpenConnection<'a> {
    fn new(shared: &'a Shared) -> Self {
        shared
            .open_connections
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(shared)
    }
}

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0
            .open_connections
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The redirect record of this connection, if it came through the kernel's redirect for
/// this proxy's sandbox.
fn original_destination(client: &TcpStream, peer: SocketAddr, shared: &Shared) -> Option<OrigDst> {
    let local = client.local_addr().ok()?;
    let key = ProxyKey {
        client_port: peer.port(),
        proxy_port: local.port(),
        family: if peer.is_ipv4() { 4 } else { 6 },
    };
    let orig = shared.maps.lock().ok()?.take_proxy_conn(key)?;
    let bound = shared.bound()?;
    (orig.cgroup_id == bound.cgroup_id).then_some(orig)
}

/// Detection and decision for a redirected connection: the upstream connection and the bytes
/// read from the client so far.
async fn open_transparent(
    client: &mut TcpStream,
    orig: SocketAddr,
    shared: &Shared,
    event: &mut FlowEvent,
) -> Result<(TcpStream, Vec<u8>), Refusal> {
    let (name, head) = detect_name(client, orig.port()).await?;
    event.name = Some(name.clone());
    let verdict = shared.decide_name(&name);
    if !verdict.allow {
        return Err(Refusal::Policy(verdict.reason.to_string()));
    }
    let upstream = connect_upstream(&name, orig, shared, event).await?;
    Ok((upstream, head))
}

/// Replays `head` upstream, then moves bytes both ways until both sides are done. Returns
/// bytes `(client → upstream, upstream → client)`.
async fn forward(mut client: TcpStream, mut upstream: TcpStream, head: &[u8]) -> (u64, u64) {
    if upstream.write_all(head).await.is_err() {
        reset(&client);
        return (0, 0);
    }
    let _ = upstream.set_nodelay(true);
    let _ = client.set_nodelay(true);
    let head_len = head.len() as u64;
    let copied = if userspace_copy() {
        tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, 4096, 4096).await
    } else {
        splice::bidirectional(&client, &upstream).await
    };
    match copied {
        Ok((out, back)) => (out + head_len, back),
        // A reset mid-stream is the end of an allowed connection, not a refusal.
        Err(_) => (head_len, 0),
    }
}

/// `SANDBOX_AGENT_PROXY_COPY=userspace` forwards with a 4 KiB userspace copy instead of
/// `splice(2)`: the baseline `cargo xtask bench` compares against.
fn userspace_copy() -> bool {
    static USERSPACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *USERSPACE.get_or_init(|| {
        std::env::var_os("SANDBOX_AGENT_PROXY_COPY").is_some_and(|v| v == "userspace")
    })
}

/// Reads until the SNI (443) or Host (80) is known. Returns the name and the bytes read.
async fn detect_name(client: &mut TcpStream, port: u16) -> Result<(String, Vec<u8>), Refusal> {
    let tls = port == HTTPS_PORT;
    let limit = if tls {
        detect::MAX_HELLO_BYTES
    } else {
        detect::MAX_HEADER_BYTES
    };
    let mut buf = Vec::with_capacity(2048);
    let read = async {
        loop {
            let outcome = if tls {
                match detect::parse_client_hello(&buf) {
                    TlsHello::Incomplete => None,
                    TlsHello::Sni(name) => Some(Ok(name)),
                    TlsHello::Refused(p) => Some(Err(Refusal::Client(p.to_string()))),
                }
            } else {
                match detect::parse_http_host(&buf) {
                    HttpHost::Incomplete => None,
                    HttpHost::Host(name) => Some(Ok(name)),
                    HttpHost::Refused(p) => Some(Err(Refusal::Client(p.to_string()))),
                }
            };
            if let Some(outcome) = outcome {
                return outcome;
            }
            if buf.len() >= limit {
                return Err(Refusal::Client(format!(
                    "sent {} bytes without a complete {}",
                    buf.len(),
                    if tls { "ClientHello" } else { "request head" }
                )));
            }
            let mut chunk = [0u8; 4096];
            let want = chunk.len().min(limit + 1 - buf.len());
            match client.read(&mut chunk[..want]).await {
                Ok(0) => {
                    return Err(Refusal::Client(
                        "closed the connection before naming a host".into(),
                    ));
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(Refusal::Client(format!("read failed: {e}"))),
            }
        }
    };
    match timeout(DETECT_TIMEOUT, read).await {
        Ok(Ok(name)) => Ok((name, buf)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(Refusal::Client(format!(
            "named no host within {DETECT_TIMEOUT:?}"
        ))),
    }
}

/// Resolves `name` upstream and connects to the first permitted address, preferring the
/// client's own choice when the name really has that address.
pub(super) async fn connect_upstream(
    name: &str,
    orig: SocketAddr,
    shared: &Shared,
    event: &mut FlowEvent,
) -> Result<TcpStream, Refusal> {
    if let Some(p) = shared
        .upstream_proxy
        .as_ref()
        .filter(|p| !p.resolves_locally())
    {
        // The operator's proxy resolves the name (and answers for where it leads).
        let stream = upstream::connect(p, upstream::Via::Name(name, orig.port()))
            .await
            .map_err(|e| Refusal::Upstream(format!("via {p}: {e}")))?;
        event.resolved = vec![format!("{name}:{} via {p}", orig.port())];
        return Ok(stream);
    }
    // The permitted addresses are what is cached: the policy and the address rules do not
    // change during a sandbox's life, so a cached name costs no lookup at all.
    let mut candidates = if let Some(c) = shared.cached_addresses(name) {
        c
    } else {
        let (addrs, ttl) = crate::dns::resolve(shared.upstream, name)
            .await
            .map_err(|e| Refusal::Upstream(format!("cannot resolve {name}: {e}")))?;
        if addrs.is_empty() {
            return Err(Refusal::Upstream(format!("{name} has no address")));
        }
        let mut candidates: Vec<IpAddr> = Vec::new();
        let mut refusals = Vec::new();
        for addr in addrs {
            let addr = canonical(addr);
            match shared.address_permitted(addr) {
                Ok(()) if !candidates.contains(&addr) => candidates.push(addr),
                Ok(()) => {}
                Err(r) => refusals.push(format!("{addr}: {r}")),
            }
        }
        if candidates.is_empty() {
            return Err(Refusal::Policy(format!(
                "no permitted address for {name} ({})",
                refusals.join("; ")
            )));
        }
        shared.remember_addresses(name, &candidates, ttl);
        candidates
    };
    if let Some(i) = candidates.iter().position(|a| *a == orig.ip()) {
        candidates.swap(0, i);
    }
    let mut errors = Vec::new();
    for addr in candidates {
        let target = SocketAddr::new(addr, orig.port());
        match dial(shared, target).await {
            Ok(stream) => {
                event.resolved = vec![target.to_string()];
                return Ok(stream);
            }
            Err(e) => errors.push(format!("{target}: {e}")),
        }
    }
    Err(Refusal::Upstream(format!(
        "cannot connect to {name}: {}",
        errors.join("; ")
    )))
}

/// Connects to an address the agent decided on: directly, or through the operator's proxy.
pub(super) async fn dial(shared: &Shared, target: SocketAddr) -> std::io::Result<TcpStream> {
    match &shared.upstream_proxy {
        Some(p) => upstream::connect(p, upstream::Via::Addr(target)).await,
        None => connect_with_timeout(target).await,
    }
}

/// Makes the close of `stream` (when it is dropped) an RST, so that the client sees the
/// refusal at once instead of an orderly end of stream.
fn reset(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}
