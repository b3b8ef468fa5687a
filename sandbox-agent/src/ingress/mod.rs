//! Ingress: how callers reach a sandbox's exposed ports, and nothing else does.
//!
//! The kernel closes sandboxes to inbound connections: a sandbox's `bind()` of a fixed TCP
//! port is steered to loopback and a port of the kernel's choosing (so sandboxes never clash
//! with each other or the host over ports), and a SYN reaches a sandbox's socket only with
//! `INGRESS_MARK`, which only the agent can set (see the eBPF crate). This module is the
//! agent's side: the HTTP gateway (HTTP/1.1, HTTP/2, WebSocket upgrades, TLS; routing by
//! host name or path; connect tokens; the verified user data header) and the tunnels of raw
//! TCP and TLS ports.
pub mod directory;
pub mod pool;
pub mod route;
pub mod tls;
pub mod tokens;
pub mod tunnel;
pub mod upstream;

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::{api::PortProtocol, ingress::route::TokenSource};
use directory::{Activity, Directory, Served};

type Body = BoxBody<Bytes, hyper::Error>;

/// How long a new connection may take to send its first byte (TLS or HTTP is told apart by
/// it).
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections the gateway serves at once.
const MAX_CONNECTIONS: usize = 4096;
/// After a failed `accept()`.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// A request's head must arrive within this (slowloris); also HTTP/2 keep-alive pings.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// A TLS handshake must finish within this.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often an upgraded connection checks that its token and sandbox are still live.
const UPGRADE_RECHECK: Duration = Duration::from_secs(1);
/// How often pools of closed listeners and ended sandboxes are dropped.
const POOL_SWEEP: Duration = Duration::from_secs(1);
/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// The HTTP gateway: one listener for HTTP and HTTPS.
pub struct Gateway {
    sandboxes: Arc<dyn Directory>,
    domain: String,
    tls: TlsAcceptor,
    /// Pooled connections to workloads, per listener.
    pools: pool::Pools,
}

impl Gateway {
    pub fn new(
        sandboxes: Arc<dyn Directory>,
        domain: String,
        tls: Arc<rustls::ServerConfig>,
    ) -> Arc<Self> {
        Arc::new(Self {
            sandboxes,
            domain,
            tls: TlsAcceptor::from(tls),
            pools: pool::Pools::default(),
        })
    }

    /// Whether a pool's listener still is the sandbox's listener on that port.
    fn pool_live(&self, key: &pool::PoolKey) -> bool {
        self.sandboxes
            .live(&key.sandbox)
            .and_then(|s| self.sandboxes.listeners().find(&s.cgroup_ids(), key.port))
            .is_some_and(|l| l.cookie == key.listener)
    }

    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let sweeper = Arc::downgrade(&self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(POOL_SWEEP);
            loop {
                tick.tick().await;
                let Some(gateway) = sweeper.upgrade() else {
                    return;
                };
                gateway.pools.retain(|k| gateway.pool_live(k));
            }
        });
        let open = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors, most likely: wait instead of spinning.
                    tracing::warn!("ingress accept: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            // Past the limit a connection is closed at once: the daemon's descriptors also
            // serve every sandbox's resolver and proxy.
            let Ok(permit) = open.clone().try_acquire_owned() else {
                continue;
            };
            let gateway = self.clone();
            tokio::spawn(async move {
                gateway.connection(stream, peer).await;
                drop(permit);
            });
        }
    }

    async fn connection(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        let _ = stream.set_nodelay(true);
        let mut first = [0u8; 1];
        let tls = match tokio::time::timeout(FIRST_BYTE_TIMEOUT, stream.peek(&mut first)).await {
            Ok(Ok(1)) => first[0] == TLS_HANDSHAKE,
            _ => return,
        };
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT);
        builder
            .http2()
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(Some(HEADER_TIMEOUT));
        let gateway = self.clone();
        let service = hyper::service::service_fn(move |req| {
            let gateway = gateway.clone();
            async move { Ok::<_, Infallible>(gateway.handle(req, tls, peer).await) }
        });
        let served = if tls {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.tls.accept(stream))
                .await
                .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
            {
                Ok(s) => {
                    builder
                        .serve_connection_with_upgrades(TokioIo::new(s), service)
                        .await
                }
                Err(e) => {
                    tracing::debug!(%peer, "ingress TLS handshake: {e}");
                    return;
                }
            }
        } else {
            builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await
        };
        if let Err(e) = served {
            tracing::debug!(%peer, "ingress connection: {e}");
        }
    }

    async fn handle(&self, req: Request<Incoming>, tls: bool, peer: SocketAddr) -> Response<Body> {
        let Some(route) = route::find(req.uri(), req.headers(), &self.domain) else {
            return error(
                StatusCode::NOT_FOUND,
                &format!(
                    "no sandbox port here: use {{port}}-{{sandbox}}.{} or {}{{sandbox}}/{{port}}/",
                    self.domain,
                    route::PATH_PREFIX
                ),
            );
        };
        let Allowed {
            sandbox,
            secret,
            source,
            grant,
            protocol,
            mask,
            target,
        } = match self.authorize(&req, &route) {
            Ok(a) => a,
            Err(refused) => return *refused,
        };
        let upgrade = protocol == PortProtocol::Http && is_websocket_upgrade(&req);
        // The client's hop-by-hop fields go before the gateway sets its own, which no
        // `Connection` can then name; trailers are filtered as they arrive.
        let mut req = req.map(|inner| ClientBody { inner });
        strip_hop_by_hop(req.headers_mut());
        route::restrict_trailer_declaration(req.headers_mut());
        if upgrade {
            let headers = req.headers_mut();
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        }
        let activity = sandbox.clone().activity();
        let forwarded = Forwarded {
            route: &route,
            source,
            grant: &grant,
            mask: mask.as_deref(),
            peer,
            tls,
        };
        if let Err(refused) = forwarded.prepare(&mut req, target.addr) {
            return *refused;
        }
        let cookie = (source == TokenSource::Query)
            .then(|| route::token_cookie(&secret, &route, tls))
            .and_then(|c| HeaderValue::from_str(&c).ok());
        let response = if upgrade {
            let live = Liveness {
                sandboxes: self.sandboxes.clone(),
                sandbox: sandbox.clone(),
                secret: secret.clone(),
            };
            forward_upgrade(req, target.addr, activity, live).await
        } else {
            let clients = self.pools.get(&pool::PoolKey {
                sandbox: sandbox.id().to_owned(),
                port: route.port,
                listener: target.cookie,
            });
            let client = if protocol == PortProtocol::H2 {
                *req.version_mut() = Version::HTTP_2;
                clients.http2
            } else {
                *req.version_mut() = Version::HTTP_11;
                clients.http1
            };
            // The response's body keeps the sandbox busy until it is sent.
            client
                .request(req)
                .await
                .map(|r| {
                    r.map(|body| {
                        BodyExt::boxed(ActiveBody {
                            inner: body,
                            _activity: activity,
                        })
                    })
                })
                .map_err(|e| format!("the workload did not answer: {e}"))
        };
        match response {
            Ok(mut r) => {
                if !upgrade {
                    strip_hop_by_hop(r.headers_mut());
                }
                route::rewrite_response_headers(r.headers_mut());
                if let Some(c) = cookie {
                    r.headers_mut().append(header::SET_COOKIE, c);
                    // The page's URL holds the token: no Referer may carry it anywhere.
                    r.headers_mut().insert(
                        header::REFERRER_POLICY,
                        HeaderValue::from_static("no-referrer"),
                    );
                }
                r
            }
            Err(message) => error(StatusCode::BAD_GATEWAY, message.as_str()),
        }
    }
}

/// How a request the gateway lets through is rewritten for the workload.
struct Forwarded<'a> {
    route: &'a route::Route,
    source: TokenSource,
    grant: &'a tokens::Grant,
    mask: Option<&'a str>,
    peer: SocketAddr,
    tls: bool,
}

impl Forwarded<'_> {
    /// Headers (credentials out, verified user data and forwarding headers in, `Host`
    /// masked or kept) and the URI of the listener with the path the workload sees.
    fn prepare<B>(
        &self,
        req: &mut Request<B>,
        target: SocketAddr,
    ) -> Result<(), Box<Response<Body>>> {
        let original_host = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| {
                req.headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_owned)
            });
        let host = self
            .mask
            .map(|t| route::masked_host(t, self.route.port))
            .or(original_host.clone())
            .and_then(|h| HeaderValue::from_str(&h).ok());
        route::rewrite_headers(
            req.headers_mut(),
            self.source,
            self.grant.user_data.as_ref(),
            host,
        );
        forwarded_headers(req, self.peer, self.tls, original_host.as_deref());
        let path = route::upstream_path(req.uri(), self.route);
        let uri = Uri::builder()
            .scheme("http")
            .authority(target.to_string())
            .path_and_query(path)
            .build()
            .map_err(|_| {
                Box::new(error(
                    StatusCode::BAD_REQUEST,
                    "the request path cannot be forwarded",
                ))
            })?;
        *req.uri_mut() = uri;
        Ok(())
    }
}

/// A request the gateway lets through, and where to.
struct Allowed {
    sandbox: Arc<dyn Served>,
    secret: String,
    source: TokenSource,
    grant: tokens::Grant,
    protocol: PortProtocol,
    /// The sandbox's `mask_host`.
    mask: Option<String>,
    target: crate::enforcement::Listener,
}

impl Gateway {
    /// The checks, in order: a token (401), a known one (401), a live sandbox (404), the
    /// token's (403), its traffic token if it has private ports (403), an exposed HTTP port
    /// (404), a listener there (502).
    fn authorize(
        &self,
        req: &Request<Incoming>,
        route: &route::Route,
    ) -> Result<Allowed, Box<Response<Body>>> {
        let Some((secret, source)) = route::token(req.uri(), req.headers(), route) else {
            return Err(Box::new(error(
                StatusCode::UNAUTHORIZED,
                "a connect token is required: Authorization: Bearer, or the _sandbox_connect_token query parameter or cookie",
            )));
        };
        let Some(grant) = self.sandboxes.tokens().check(&secret) else {
            return Err(Box::new(error(
                StatusCode::UNAUTHORIZED,
                "unknown or revoked connect token",
            )));
        };
        let Some(sandbox) = self.sandboxes.live(&route.sandbox) else {
            return Err(Box::new(error(
                StatusCode::NOT_FOUND,
                &format!("no live sandbox {}", route.sandbox),
            )));
        };
        if grant.sandbox != sandbox.id() {
            return Err(Box::new(error(
                StatusCode::FORBIDDEN,
                "this connect token is for another sandbox",
            )));
        }
        // One copy of the record per request.
        let view = sandbox.exposure();
        let traffic = req
            .headers()
            .get(route::TRAFFIC_TOKEN)
            .and_then(|v| v.to_str().ok());
        if !self
            .sandboxes
            .tokens()
            .traffic_allows(sandbox.id(), view.private_ports, traffic)
        {
            return Err(Box::new(error(
                StatusCode::FORBIDDEN,
                "this sandbox's ports need its traffic token in X-Sandbox-Traffic-Token",
            )));
        }
        let Some(protocol) = view
            .ports
            .iter()
            .find(|p| p.port == route.port && p.protocol.is_http())
            .map(|p| p.protocol)
        else {
            return Err(Box::new(error(
                StatusCode::NOT_FOUND,
                &format!(
                    "port {} of sandbox {} is not exposed over HTTP",
                    route.port,
                    sandbox.id()
                ),
            )));
        };
        let Some(target) = self
            .sandboxes
            .listeners()
            .find(&sandbox.cgroup_ids(), route.port)
        else {
            return Err(Box::new(error(
                StatusCode::BAD_GATEWAY,
                &format!(
                    "nothing listens on port {} in sandbox {}",
                    route.port,
                    sandbox.id()
                ),
            )));
        };
        Ok(Allowed {
            sandbox,
            secret,
            source,
            grant,
            protocol,
            mask: view.mask_host,
            target,
        })
    }
}

/// What an upgraded connection needs to tell whether it may go on.
struct Liveness {
    sandboxes: Arc<dyn Directory>,
    sandbox: Arc<dyn Served>,
    secret: String,
}

impl Liveness {
    /// The token still opens the sandbox, and the sandbox runs.
    fn holds(&self) -> bool {
        self.sandbox.running()
            && self
                .sandboxes
                .tokens()
                .check(&self.secret)
                .is_some_and(|g| g.sandbox == self.sandbox.id())
    }
}

/// A WebSocket upgrade: on its own connection to the workload (in origin form); once both
/// sides switched, the bytes are copied until either closes, the token is revoked or the
/// sandbox ends.
async fn forward_upgrade(
    mut req: Request<ClientBody>,
    target: SocketAddr,
    activity: Activity,
    live: Liveness,
) -> Result<Response<Body>, String> {
    let client_side = hyper::upgrade::on(&mut req);
    if let Some(pq) = req.uri().path_and_query().cloned() {
        *req.uri_mut() = Uri::from(pq);
    }
    req.headers_mut().remove("http2-settings");
    let stream = upstream::connect(target)
        .await
        .map_err(|e| format!("cannot reach the workload: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("the workload did not answer: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let mut resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("the workload did not answer: {e}"))?;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let upstream_side = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            let _activity = activity;
            let (Ok(c), Ok(u)) = tokio::join!(client_side, upstream_side) else {
                return;
            };
            let copy = async {
                let _ =
                    tokio::io::copy_bidirectional(&mut TokioIo::new(c), &mut TokioIo::new(u)).await;
            };
            let revoked = async {
                let mut tick = tokio::time::interval(UPGRADE_RECHECK);
                loop {
                    tick.tick().await;
                    if !live.holds() {
                        return;
                    }
                }
            };
            tokio::select! {
                () = copy => {}
                () = revoked => {}
            }
        });
    }
    Ok(resp.map(BodyExt::boxed))
}

/// A client's request body on its way to the workload: its trailers lose the fields a client
/// may not send there (the gateway's own, hop-by-hop ones), in HTTP/1.1 and HTTP/2 alike.
pub struct ClientBody {
    inner: Incoming,
}

impl hyper::body::Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        std::pin::Pin::new(&mut self.inner)
            .poll_frame(cx)
            .map_ok(|frame| match frame.into_trailers() {
                Ok(mut trailers) => {
                    route::remove_fields(&mut trailers, |n| !route::trailer_allowed(n));
                    hyper::body::Frame::trailers(trailers)
                }
                Err(frame) => frame,
            })
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that keeps its sandbox busy (for the idle timeout) until it is done.
struct ActiveBody {
    inner: Incoming,
    _activity: Activity,
}

impl hyper::body::Body for ActiveBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Only WebSocket upgrades pass: another protocol (say `h2c`) would turn the gateway into a
/// pipe for requests it never checks, with headers it never strips.
fn is_websocket_upgrade(req: &Request<Incoming>) -> bool {
    req.version() == Version::HTTP_11
        && req
            .headers()
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
        && route::listed(req.headers(), header::CONNECTION)
            .any(|t| t.eq_ignore_ascii_case("upgrade"))
}

/// Headers that describe one connection, not the message (and those `Connection` names):
/// the next hop gets its own. `Connection` cannot name a field the gateway owns (identity,
/// forwarding, `Host`): those reach the workload as the gateway set them.
fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    let named: Vec<http::HeaderName> = route::listed(headers, header::CONNECTION)
        .filter(|n| !route::is_gateway_owned(n))
        .filter_map(|n| http::HeaderName::from_bytes(n.as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in route::HOP_BY_HOP {
        headers.remove(name);
    }
}

/// `X-Forwarded-For`/`-Proto`/`-Host`, which the gateway sets (a client's are replaced).
fn forwarded_headers<B>(req: &mut Request<B>, peer: SocketAddr, tls: bool, host: Option<&str>) {
    let headers = req.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&peer.ip().to_string()) {
        headers.insert("x-forwarded-for", v);
    }
    headers.insert(
        "x-forwarded-proto",
        HeaderValue::from_static(if tls { "https" } else { "http" }),
    );
    match host.and_then(|h| HeaderValue::from_str(h).ok()) {
        Some(v) => {
            headers.insert("x-forwarded-host", v);
        }
        None => {
            headers.remove("x-forwarded-host");
        }
    }
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::to_vec(&crate::api::ErrorBody {
        error: message.to_owned(),
        exit_code: None,
    })
    .unwrap_or_default();
    let mut r = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// URLs of a sandbox's exposed HTTP ports on the gateway.
pub fn port_urls(gateway: SocketAddr, domain: &str, sandbox: &str, port: u16) -> (String, String) {
    let gw_port = gateway.port();
    let ip = gateway.ip();
    let host = if ip.is_unspecified() {
        "127.0.0.1".to_owned()
    } else if ip.is_ipv6() {
        format!("[{ip}]")
    } else {
        ip.to_string()
    };
    (
        format!("http://{port}-{sandbox}.{domain}:{gw_port}/"),
        format!(
            "http://{host}:{gw_port}{}{sandbox}/{port}/",
            route::PATH_PREFIX
        ),
    )
}
