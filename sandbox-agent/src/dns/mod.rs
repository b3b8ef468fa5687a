//! The resolver that a sandbox's DNS is steered to (UDP and TCP, by `connect4|6` and
//! `sendmsg4|6`). It answers only names the policy allows and REFUSED for the rest, so DNS
//! cannot carry data out; it forwards allowed questions upstream rebuilt from the question
//! alone, drops ECH configurations from the answers, and records the addresses it hands out
//! (`LEARNED_*`) so that the sandbox may connect to them on any TCP port until they expire.
pub mod message;

use std::{
    io,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use hickory_proto::rr::RecordType;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream, UdpSocket},
    time::timeout,
};

use crate::{
    domain_state::{MAX_LEARNED_TTL, MIN_LEARNED_TTL, Shared, boot_time_ns},
    events::{FlowEvent, Source},
};
use message::Question;

/// How long one upstream attempt may take.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// UDP attempts before SERVFAIL.
const UPSTREAM_TRIES: usize = 2;
/// A TCP client that sends nothing for this long is dropped.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Largest DNS message over TCP.
const TCP_MAX: usize = 65_535;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

/// Queries answered at once per resolver socket; past it, datagrams are dropped (clients
/// retry), so a flood cannot exhaust the agent's descriptors.
const MAX_IN_FLIGHT: usize = 512;

pub async fn serve_udp(socket: Arc<UdpSocket>, shared: Arc<Shared>) {
    let mut buf = vec![0u8; 4096];
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
            // Transient (ICMP errors surfacing as ECONNREFUSED and the like): keep serving.
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        };
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            continue;
        };
        let query = buf[..n].to_vec();
        let (socket, shared) = (socket.clone(), shared.clone());
        let span = query_span(&shared, "udp", peer);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                if let Some(reply) = answer(&shared, &query, Transport::Udp).await {
                    let _ = socket.send_to(&reply, peer).await;
                }
                drop(permit);
            },
            span,
        ));
    }
}

pub async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let shared = shared.clone();
        let span = query_span(&shared, "tcp", peer);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let _ = serve_tcp_client(stream, &shared).await;
            },
            span,
        ));
    }
}

/// One span per resolver query (a TCP connection's queries share one), at debug level; the
/// name and type are recorded once parsed.
fn query_span(
    shared: &Shared,
    transport: &'static str,
    client: std::net::SocketAddr,
) -> tracing::Span {
    tracing::debug_span!(
        "dns_query",
        sandbox = %shared.sandbox_id,
        transport,
        client = %client,
        name = tracing::field::Empty,
        qtype = tracing::field::Empty,
    )
}

async fn serve_tcp_client(mut stream: TcpStream, shared: &Shared) -> io::Result<()> {
    loop {
        let Ok(len) = timeout(TCP_IDLE, stream.read_u16()).await else {
            return Ok(());
        };
        let mut query = vec![0u8; usize::from(len?)];
        timeout(TCP_IDLE, stream.read_exact(&mut query))
            .await
            .map_err(|_| io::ErrorKind::TimedOut)??;
        let Some(reply) = answer(shared, &query, Transport::Tcp).await else {
            return Ok(());
        };
        let len = u16::try_from(reply.len()).map_err(|_| io::ErrorKind::InvalidData)?;
        let mut framed = Vec::with_capacity(reply.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&reply);
        stream.write_all(&framed).await?;
    }
}

/// The reply to one query from the sandbox (`None`: nothing can be sent back).
async fn answer(shared: &Shared, bytes: &[u8], transport: Transport) -> Option<Vec<u8>> {
    let event = FlowEvent::new(&shared.sandbox_id, Source::Dns);
    let q = match message::parse_query(bytes) {
        Ok(q) => q,
        Err(e) => {
            shared.events.emit(&event.denied(format!("bad query: {e}")));
            return e
                .rcode()
                .and_then(|rcode| message::error_response(bytes, rcode));
        }
    };
    let mut event = event;
    event.name = Some(q.name.clone());
    event.qtype = Some(q.qtype.to_string());
    let span = tracing::Span::current();
    span.record("name", q.name.as_str());
    span.record("qtype", tracing::field::display(&q.qtype));
    let verdict = shared.decide_name(&q.name);
    if !verdict.allow {
        shared
            .events
            .emit(&event.denied(format!("name: {}", verdict.reason)));
        return Some(message::refused(&q));
    }
    let max_size = match transport {
        Transport::Udp => q.max_udp_size(),
        Transport::Tcp => TCP_MAX,
    };
    match lookup(
        shared.upstream,
        &q,
        max_size,
        shared.learned_limits.per_answer,
    )
    .await
    {
        Ok(filtered) => {
            let mut learned = Vec::new();
            let mut over_cap = None;
            for (addr, ttl) in &filtered.addresses {
                let outcome = shared
                    .address_permitted(*addr)
                    .map_err(NotLearned::Refused)
                    .and_then(|()| learn(shared, *addr, &q.name, *ttl));
                match outcome {
                    Ok(()) => learned.push(addr.to_string()),
                    Err(why) => {
                        learned.push(format!("{addr} (not learned: {why})"));
                        if let NotLearned::OverCap(refusal) = why {
                            over_cap = Some(refusal);
                        }
                    }
                }
            }
            if filtered.addresses_cut > 0 {
                learned.push(format!(
                    "{} more left out of the answer (at most {} addresses per answer)",
                    filtered.addresses_cut, shared.learned_limits.per_answer
                ));
            }
            event.resolved = learned;
            shared
                .events
                .emit(&event.clone().allowed(format!("name: {}", verdict.reason)));
            // Said once a minute, not once per question: the sandbox is flooding.
            if let Some(why) = over_cap
                && shared.cap_notice_due()
            {
                shared.events.emit(&event.denied(format!(
                    "addresses not learned: {why} (its connects to new addresses are refused)"
                )));
            }
            Some(filtered.bytes)
        }
        Err(e) => {
            shared
                .events
                .emit(&event.denied(format!("upstream DNS {}: {e}", shared.upstream)));
            Some(message::servfail(&q))
        }
    }
}

/// Why an address of an answer was not made reachable (it stays unreachable: fail closed).
#[derive(Debug, thiserror::Error)]
enum NotLearned {
    #[error("{0}")]
    Refused(crate::domain_state::AddressRefusal),
    #[error("{0}")]
    OverCap(crate::learned::Refusal),
    #[error("the sandbox is not bound yet")]
    Unbound,
    #[error("cannot record it: {0}")]
    Map(String),
}

/// Makes `addr` reachable for the sandbox for its TTL (within the learned bounds), inside
/// the sandbox's share of the kernel map.
fn learn(shared: &Shared, addr: IpAddr, name: &str, ttl: u32) -> Result<(), NotLearned> {
    let Some(bound) = shared.bound() else {
        return Err(NotLearned::Unbound);
    };
    let ttl = Duration::from_secs(u64::from(ttl)).clamp(MIN_LEARNED_TTL, MAX_LEARNED_TTL);
    let expiry = boot_time_ns().saturating_add(u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX));
    shared
        .admit_learned(addr, name, expiry)
        .map_err(NotLearned::OverCap)?;
    let written = shared
        .maps
        .lock()
        .map_err(|_| NotLearned::Map("the maps are poisoned".into()))
        .and_then(|mut maps| {
            maps.learn(bound.policy_id, addr, expiry)
                .map_err(|e| NotLearned::Map(e.to_string()))
        });
    if written.is_err() {
        shared.withdraw_learned(addr);
    }
    written
}

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("unusable answer: {0}")]
    Response(#[from] message::ResponseError),
}

/// Asks the upstream (UDP, then TCP if the answer was truncated) and filters the answer.
pub async fn lookup(
    upstream: SocketAddr,
    q: &Question,
    max_size: usize,
    max_addresses: usize,
) -> Result<message::Filtered, LookupError> {
    let id = random_id();
    let query = message::upstream_query(q, id);
    let mut reply = exchange_udp(upstream, &query, id).await?;
    if is_truncated(&reply) {
        reply = exchange_tcp(upstream, &query).await?;
    }
    Ok(message::filter_response(
        q,
        id,
        &reply,
        max_size,
        max_addresses,
    )?)
}

/// The addresses of `name` (A and AAAA), for the proxy's own connections, and the smallest
/// TTL among them.
pub async fn resolve(upstream: SocketAddr, name: &str) -> Result<(Vec<IpAddr>, u32), LookupError> {
    let (qa, qaaaa) = (
        Question::lookup(name, RecordType::A),
        Question::lookup(name, RecordType::AAAA),
    );
    let (a, aaaa) = tokio::join!(
        // Not learned: the proxy only picks one to connect to.
        lookup(upstream, &qa, TCP_MAX, usize::MAX),
        lookup(upstream, &qaaaa, TCP_MAX, usize::MAX)
    );
    let mut addrs = Vec::new();
    let mut ttl = u32::MAX;
    let mut first_err = None;
    for r in [a, aaaa] {
        match r {
            Ok(f) => {
                for (addr, t) in f.addresses {
                    addrs.push(addr);
                    ttl = ttl.min(t);
                }
            }
            Err(e) => first_err = first_err.or(Some(e)),
        }
    }
    match first_err {
        Some(e) if addrs.is_empty() => Err(e),
        _ => {
            let ttl = if addrs.is_empty() { 0 } else { ttl };
            Ok((addrs, ttl))
        }
    }
}

fn is_truncated(reply: &[u8]) -> bool {
    // TC is bit 1 of the third header byte.
    reply.len() > 2 && reply[2] & 0x02 != 0
}

async fn exchange_udp(upstream: SocketAddr, query: &[u8], id: u16) -> Result<Vec<u8>, LookupError> {
    let local: SocketAddr = if upstream.is_ipv4() {
        "0.0.0.0:0".parse().expect("valid")
    } else {
        "[::]:0".parse().expect("valid")
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(upstream).await?;
    // The agent advertises 1232 bytes upstream; a larger answer comes truncated (then TCP).
    let mut buf = [0u8; 4096];
    let mut last_error = None;
    for _ in 0..UPSTREAM_TRIES {
        if let Err(e) = socket.send(query).await {
            last_error = Some(e);
            continue;
        }
        let deadline = tokio::time::Instant::now() + UPSTREAM_TIMEOUT;
        // Skip stray datagrams (a late answer to an earlier try has the same id: fine).
        while let Ok(n) = tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
            match n {
                Ok(n) if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id => {
                    return Ok(buf[..n].to_vec());
                }
                Ok(_) => {}
                // An ICMP error (port unreachable while the upstream restarts): try again.
                Err(e) => {
                    last_error = Some(e);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    break;
                }
            }
        }
    }
    match last_error {
        Some(e) => Err(LookupError::Io(e)),
        None => Err(LookupError::Timeout(UPSTREAM_TIMEOUT * 2)),
    }
}

async fn exchange_tcp(upstream: SocketAddr, query: &[u8]) -> Result<Vec<u8>, LookupError> {
    let work = async {
        let mut stream = TcpStream::connect(upstream).await?;
        let len = u16::try_from(query.len()).map_err(|_| io::ErrorKind::InvalidInput)?;
        let mut framed = len.to_be_bytes().to_vec();
        framed.extend_from_slice(query);
        stream.write_all(&framed).await?;
        let n = stream.read_u16().await?;
        let mut reply = vec![0u8; usize::from(n)];
        stream.read_exact(&mut reply).await?;
        Ok::<_, io::Error>(reply)
    };
    timeout(UPSTREAM_TIMEOUT, work)
        .await
        .map_err(|_| LookupError::Timeout(UPSTREAM_TIMEOUT))?
        .map_err(LookupError::Io)
}

/// A random query id: upstream answers are matched by id, so it must not be guessable.
fn random_id() -> u16 {
    let mut b = [0u8; 2];
    // SAFETY: b is valid for 2 bytes of writes.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), 2, 0) };
    if n != 2 {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        b.copy_from_slice(&t.to_ne_bytes()[..2]);
    }
    u16::from_ne_bytes(b)
}

impl Question {
    /// A question of the agent's own: the proxy resolving a name it will connect to.
    pub fn lookup(name: &str, qtype: RecordType) -> Self {
        Self {
            id: 0,
            name: name.to_owned(),
            qtype,
            qclass: hickory_proto::rr::DNSClass::IN,
            recursion_desired: true,
            edns_payload: None,
            wire_name: hickory_proto::rr::Name::from_ascii(name).unwrap_or_default(),
        }
    }
}
