//! The CLI's side of the API: HTTP/1.1 over the daemon's Unix socket (hyper), blocking.
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the daemon at {path}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("API request failed: {0}")]
    Http(String),
    /// The daemon answered with an error status; its message.
    #[error("{message}")]
    Status {
        status: u16,
        message: String,
        exit_code: Option<i32>,
    },
}

pub struct Client {
    socket: PathBuf,
    runtime: tokio::runtime::Runtime,
}

impl Client {
    pub fn new(socket: &Path) -> Self {
        Self {
            socket: socket.to_owned(),
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a current-thread runtime builds"),
        }
    }

    /// Whether a daemon answers on the socket.
    pub fn available(&self) -> bool {
        self.request(Method::GET, "/v1/health", None).is_ok()
    }

    /// One request; the body of a 2xx answer, else the daemon's message as an error.
    pub fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Vec<u8>, ClientError> {
        let mut out = Vec::new();
        self.stream(method, path, body, |chunk| {
            out.extend_from_slice(chunk);
            Ok(())
        })?;
        Ok(out)
    }

    /// JSON in, JSON out.
    pub fn json<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl serde::Serialize>,
    ) -> Result<T, ClientError> {
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let bytes = self.request(method, path, body)?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Http(format!("bad answer: {e}")))
    }

    /// A request whose answer is passed to `sink` chunk by chunk as it arrives (logs and
    /// events that follow).
    pub fn stream(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        mut sink: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<(), ClientError> {
        self.runtime.block_on(async {
            let stream = tokio::net::UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ClientError::Connect {
                    path: self.socket.clone(),
                    source,
                })?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| ClientError::Http(e.to_string()))?;
            tokio::spawn(conn);
            let req = Request::builder()
                .method(method)
                .uri(path)
                .header("host", "sandbox-agent")
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body.unwrap_or_default())))
                .map_err(|e| ClientError::Http(e.to_string()))?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| ClientError::Http(e.to_string()))?;
            let status = resp.status().as_u16();
            let mut body = resp.into_body();
            if !(200..300).contains(&status) {
                let bytes = body
                    .collect()
                    .await
                    .map_err(|e| ClientError::Http(e.to_string()))?
                    .to_bytes();
                let (message, exit_code) = serde_json::from_slice::<super::ErrorBody>(&bytes)
                    .map_or_else(
                        |_| (String::from_utf8_lossy(&bytes).into_owned(), None),
                        |e| (e.error, e.exit_code),
                    );
                return Err(ClientError::Status {
                    status,
                    message,
                    exit_code,
                });
            }
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| ClientError::Http(e.to_string()))?;
                if let Some(data) = frame.data_ref() {
                    sink(data).map_err(|e| ClientError::Http(e.to_string()))?;
                }
            }
            Ok(())
        })
    }
}
