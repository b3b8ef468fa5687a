//! A small, fast HTTP server for the ingress tests and benchmark, run inside sandboxes:
//! HTTP/1.1 and cleartext HTTP/2 (prior knowledge) on `0.0.0.0:PORT`
//! (`sa-web-helper PORT [NAME]`).
//!
//! - `GET /bytes/N`: N bytes, streamed in 64 KiB chunks (bulk transfers).
//! - anything else: a JSON object with the method, path, HTTP version and headers the
//!   server received (what the gateway forwarded); for a `POST`, also the body's length and
//!   its trailer fields.
use std::{convert::Infallible, net::SocketAddr};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{Request, Response, body::Frame};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};

type Body = BoxBody<Bytes, Infallible>;

const CHUNK: usize = 64 * 1024;
/// The NAME argument, echoed back so that a test knows which server answered.
static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn fields(map: &hyper::HeaderMap) -> serde_json::Map<String, serde_json::Value> {
    map.iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
            )
        })
        .collect()
}

async fn respond(req: Request<hyper::body::Incoming>) -> Response<Body> {
    if let Some(n) = req
        .uri()
        .path()
        .strip_prefix("/bytes/")
        .and_then(|n| n.parse::<usize>().ok())
    {
        return Response::builder()
            .header("content-length", n)
            .body(BodyExt::boxed(Repeat {
                left: n,
                chunk: Bytes::from(vec![b'x'; CHUNK]),
            }))
            .expect("response");
    }
    let headers = fields(req.headers());
    let (method, path, version) = (
        req.method().clone(),
        req.uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned(),
        req.version(),
    );
    let (mut body_len, mut trailers) = (0, serde_json::Map::new());
    if method == hyper::Method::POST
        && let Ok(collected) = req.into_body().collect().await
    {
        if let Some(t) = collected.trailers() {
            trailers = fields(t);
        }
        body_len = collected.to_bytes().len();
    }
    let body = serde_json::json!({
        "server": NAME.get().map_or("", String::as_str),
        "method": method.as_str(),
        "path": path,
        "version": format!("{version:?}"),
        "headers": headers,
        "body_len": body_len,
        "trailers": trailers,
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .expect("response")
}

/// `left` bytes of `x`, a chunk at a time.
struct Repeat {
    left: usize,
    chunk: Bytes,
}

impl hyper::body::Body for Repeat {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        let len = self.left.min(self.chunk.len());
        self.left -= len;
        std::task::Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..len)))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.left as u64)
    }
}

#[tokio::main]
async fn main() {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("usage: sa-web-helper PORT [NAME]");
    let _ = NAME.set(std::env::args().nth(2).unwrap_or_default());
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port)))
        .await
        .expect("bind");
    println!("listening on {port}");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(
                    |req| async move { Ok::<_, Infallible>(respond(req).await) },
                );
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
