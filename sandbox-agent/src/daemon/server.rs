//! The API routes (axum) on the daemon's Unix socket, and `/metrics` on TCP.
use std::{path::PathBuf, sync::Arc};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{DefaultBodyLimit, Path, Query, State, rejection::JsonRejection},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use futures_util::StreamExt as _;
use serde::Deserialize;

use super::{Daemon, Error, Fault, logs};
use crate::{
    api::{
        CreateRequest, EndReason, ErrorBody, ExecRequest, ExecView, ExecWaitView, Health,
        MAX_BODY_BYTES, PolicyRequest, PortView, ReadyView, SandboxState, SandboxView,
        TokenRequest, TokenView, WaitView,
    },
    policy::PolicyFile,
};

type AppState = Arc<Daemon>;

/// What a handler fails with: the core's typed errors, and the edge's own.
#[derive(Debug)]
pub enum ApiError {
    Core(Error),
    /// A JSON body that does not parse (axum's status: 400, 415 or 422).
    Body(JsonRejection),
    NoRoute,
    /// The blocking task that served the request died.
    Task(tokio::task::JoinError),
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        Self::Core(e)
    }
}

/// The one place a fault becomes an HTTP status.
pub fn status_of(fault: Fault) -> StatusCode {
    match fault {
        Fault::Request => StatusCode::BAD_REQUEST,
        Fault::Missing => StatusCode::NOT_FOUND,
        Fault::State => StatusCode::CONFLICT,
        Fault::Agent => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, error, exit_code) = match self {
            Self::Core(e) => (status_of(e.fault()), crate::error_line(&e), e.exit_code()),
            Self::Body(r) => (r.status(), r.body_text(), None),
            Self::NoRoute => (StatusCode::NOT_FOUND, "no such route".into(), None),
            Self::Task(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None),
        };
        if status.is_server_error() {
            tracing::warn!(%status, "{error}");
        }
        (status, Json(ErrorBody { error, exit_code })).into_response()
    }
}

/// A JSON body, or a 4xx naming what is wrong with it.
fn body<T>(parsed: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    parsed.map(|Json(v)| v).map_err(ApiError::Body)
}

/// Runs a blocking core call off the runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, ApiError> {
    Ok(tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::Task)??)
}

pub fn router(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .route("/openapi.json", get(openapi))
        .route("/v1/health", get(health))
        .route("/v1/sandboxes", get(list).post(create))
        .route("/v1/sandboxes/{id}", get(inspect).delete(remove))
        .route("/v1/sandboxes/{id}/kill", post(kill))
        .route("/v1/sandboxes/{id}/wait", get(wait))
        .route("/v1/sandboxes/{id}/wait-ready", get(wait_ready))
        .route("/v1/sandboxes/{id}/logs", get(sandbox_logs))
        .route("/v1/sandboxes/{id}/stdin", post(stdin_write))
        .route("/v1/sandboxes/{id}/stdin/close", post(stdin_close))
        .route("/v1/sandboxes/{id}/policy", axum::routing::put(set_policy))
        .route("/v1/sandboxes/{id}/execs", post(exec))
        .route("/v1/sandboxes/{id}/execs/{exec}/wait", get(exec_wait))
        .route("/v1/sandboxes/{id}/execs/{exec}/logs", get(exec_logs))
        .route("/v1/sandboxes/{id}/tunnels", get(tunnels))
        .route(
            "/v1/sandboxes/{id}/files",
            get(file_get).put(file_put).layer(DefaultBodyLimit::max(
                usize::try_from(daemon.config.max_file_bytes).unwrap_or(usize::MAX),
            )),
        )
        .route(
            "/v1/sandboxes/{id}/archive",
            get(archive_get)
                .put(archive_put)
                .layer(DefaultBodyLimit::max(
                    // The tar's headers and padding on top of the files' bytes.
                    usize::try_from(daemon.config.max_file_bytes.saturating_mul(2))
                        .unwrap_or(usize::MAX),
                )),
        )
        .route(
            "/v1/sandboxes/{id}/tokens",
            get(list_tokens).post(issue_token),
        )
        .route(
            "/v1/sandboxes/{id}/tokens/{token}",
            axum::routing::delete(revoke_token),
        )
        .route("/v1/events", get(events))
        .fallback(|| async { ApiError::NoRoute })
        .layer(axum::middleware::from_fn(request_span))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(daemon)
}

/// One span per API request (debug level): method, path, and the answer's status.
async fn request_span(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let span = tracing::debug_span!(
        "api",
        method = %req.method(),
        path = %req.uri().path(),
        status = tracing::field::Empty,
    );
    let response = tracing::Instrument::instrument(next.run(req), span.clone()).await;
    span.record("status", response.status().as_u16());
    tracing::debug!(parent: &span, "answered");
    response
}

pub fn metrics_router(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(daemon)
}

#[utoipa::path(get, path = "/openapi.json", operation_id = "openapi", summary = "This document", responses((status = 200, description = "OpenAPI document.", content_type = "application/json", body = Object)))]
async fn openapi() -> impl IntoResponse {
    static DOCUMENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.get_or_init(document).as_str(),
    )
}

/// The `OpenAPI` document, generated from the routes above and the types of `api`.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "sandbox-agent",
        version = "1",
        description = "The sandbox-agent daemon's HTTP/JSON API, served on a Unix socket (default /run/sandbox-agent/api.sock, mode 0600: root only). Errors are a 4xx/5xx status with a JSON `ErrorBody` (except a query string or path parameter that does not parse, and an over-1 MiB stdin write: text/plain). Unknown JSON fields and query keys are refused. Durations are humantime strings such as \"30s\" or \"5m\".\n\nPrometheus metrics are not part of this API: when the config sets `metrics_address`, the daemon serves `GET /metrics` (OpenMetrics text) on that TCP address.\n\nIngress: sandboxes with exposed ports are reached through the daemon's gateway (config `ingress_address`, HTTP and HTTPS on one port) at `{port}-{sandbox}.{ingress_domain}` or `/_sandbox/{sandbox}/{port}/`, with a connect token (see `issueToken`), or through per-port tunnels (TLS, TCP)."
    ),
    servers((url = "http://localhost", description = "Over the daemon's Unix socket (the host name is ignored).")),
    paths(
        openapi, health, list, create, inspect, remove, kill, wait, wait_ready, sandbox_logs,
        stdin_write, stdin_close, file_put, file_get, archive_put, archive_get, set_policy, exec, exec_wait, exec_logs, tunnels, issue_token,
        list_tokens, revoke_token, events
    )
)]
struct ApiDoc;

/// The document as served (and printed by `sandbox-agent openapi`).
pub fn document() -> String {
    use utoipa::OpenApi as _;
    ApiDoc::openapi()
        .to_pretty_json()
        .expect("the generated document serializes")
}

#[utoipa::path(get, path = "/v1/health", operation_id = "health", summary = "Liveness", responses((status = 200, body = Health)))]
async fn health() -> impl IntoResponse {
    Json(Health {
        status: "ok".into(),
    })
}

#[utoipa::path(get, path = "/v1/sandboxes", operation_id = "listSandboxes", summary = "List sandboxes", description = "Filters combine with AND; any other query key is a 400.", params(("name" = Option<String>, Query, description = "Case-insensitive name."), ("state" = Option<SandboxState>, Query), ("tag" = Option<String>, Query, description = "key=value (repeatable).")), responses((status = 200, body = Vec<SandboxView>), (status = "4XX", description = "Refused: the message names the culprit.", body = ErrorBody)))]
async fn list(
    State(d): State<AppState>,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<impl IntoResponse, ApiError> {
    let mut tags = Vec::new();
    let (mut name, mut state) = (None, None);
    for (k, v) in query {
        match k.as_str() {
            "name" => name = Some(v),
            "state" => {
                state = Some(
                    v.parse::<SandboxState>()
                        .map_err(|m| Error::invalid("state", m))?,
                );
            }
            "tag" => match v.split_once('=') {
                Some((k, v)) => tags.push((k.to_owned(), v.to_owned())),
                None => {
                    return Err(Error::invalid(
                        "tag",
                        format!("invalid tag filter \"{v}\": use key=value"),
                    )
                    .into());
                }
            },
            other => {
                return Err(Error::invalid(
                    "query",
                    format!("unknown filter \"{other}\": name, state, tag"),
                )
                .into());
            }
        }
    }
    let views: Vec<_> = d
        .all()
        .iter()
        .map(|s| d.view(s))
        .filter(|v| {
            name.as_ref()
                .is_none_or(|n| v.name.as_ref().is_some_and(|m| super::same_name(m, n)))
        })
        .filter(|v| state.is_none_or(|s| v.state == s))
        .filter(|v| tags.iter().all(|(k, val)| v.tags.get(k) == Some(val)))
        .collect();
    Ok(Json(views))
}

#[utoipa::path(post, path = "/v1/sandboxes", operation_id = "createSandbox", summary = "Create and start a sandbox", description = "400 also when the workload cannot start (`exit_code` 127 or 126); 500 with `exit_code` 125 on other launch failures. 409 when the name is taken by a live sandbox.", request_body = CreateRequest, responses((status = 201, body = SandboxView), (status = "4XX", description = "Refused: the message names the culprit.", body = ErrorBody), (status = "5XX", description = "The agent or the host failed.", body = ErrorBody)))]
async fn create(
    State(d): State<AppState>,
    req: Result<Json<CreateRequest>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let req = body(req)?;
    let view = blocking(move || d.create(req)).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

#[utoipa::path(get, path = "/v1/sandboxes/{id}", operation_id = "inspectSandbox", summary = "Inspect a sandbox", params(("id" = String, Path, description = "Sandbox id or name.")), responses((status = 200, body = SandboxView), (status = "4XX", description = "Refused: the message names the culprit.", body = ErrorBody)))]
async fn inspect(
    State(d): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let s = d.find(&id)?;
    Ok(Json(d.view(&s)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveQuery {
    #[serde(default)]
    force: bool,
}

#[utoipa::path(delete, path = "/v1/sandboxes/{id}", operation_id = "removeSandbox", summary = "Remove an ended sandbox's record and output", params(("id" = String, Path, description = "Sandbox id or name."), ("force" = Option<bool>, Query, description = "Kill a running one first.")), responses((status = 204, description = "Removed."), (status = "4XX", description = "Refused: the message names the culprit.", body = ErrorBody), (status = "5XX", description = "The agent or the host failed.", body = ErrorBody)))]
async fn remove(
    State(d): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<RemoveQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let s = d.find(&id)?;
    d.remove(s, q.force).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/sandboxes/{id}/kill", operation_id = "killSandbox", summary = "Kill a running sandbox", description = "Returns once it has ended.", params(("id" = String, Path, description = "Sandbox id or name.")), responses((status = 200, body = WaitView), (status = "4XX", description = "Refused: the message names the culprit.", body = ErrorBody)))]
async fn kill(
    State(d): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let s = d.find(&id)?;
    if !s.running() {
        return Err(Error::Ended(s.id.clone()).into());
    }
    d.kill(&s, EndReason::Killed);
    Ok(Json(d.wait(&s).await))
}

#[utoipa::path(get, path = "/v1/sandboxes/{id}/wait", operation_id = "waitSandbox", summary = "Wait for the sandbox to end", params(("id" = String, Path, description = "Sandbox id or name.")), responses((status = 200, body = WaitView), (status = "4XX", description = "Refused: the message names the culprit.", body = ErrorBody)))]
async fn wait(
    State(d): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let s = d.find(&id)?;
    Ok(Json(d.wait(&s).await))
}

#[utoipa::path(get, path = "/v1/sandboxes/{id}/wait-ready", operation_id = "waitReady", summary = "Wait until the readiness probe passes", params(("id" = String, Path, description = "Sandbox id or name.")), responses((status = 200, body = ReadyView), (status = "4XX", description = "Refused: the message names the culprit.", body = ErrorBody), (status = "5XX", description = "The agent or the host failed.", body = ErrorBody)))]
async fn wait_ready(
    State(d): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let s = d.find(&id)?;
    d.wait_ready(&s).await?;
    Ok(Json(ReadyView { ready: true }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogQuery {
    #[serde(default = "stdout")]
    stream: String,
    #[serde(default)]
    follow: bool,
}

fn stdout() -> String {
    "stdout".into()
}

#[utoipa::path(get, path = "/v1/sandboxes/{id}/logs", operation_id = "sandboxLogs", summary = "The workload's output", params(("id" = String, Path, description = "Sandbox id or name."), ("stream" = Option<String>, Query, description = "stdout (default) or stderr."), ("follow" = Option<bool>, Query, description = "Keep streaming until the writer ends.")), responses((status = 200, description = "The output bytes.", content_type = "application/octet-stream", body = String), (status = "4XX", description = "Refused: the message names the culprit.", body = ErrorBody)))]
async fn sandbox_logs(
    State(d): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> Result<Response, ApiError> {
    let s = d.find(&id)?;
    check_stream(&q.stream)?;
    let ended = s.ended_rx();
    Ok(stream_log(s.log_path(&q.stream), q.follow, move || {
        *ended.borrow()
    }))
}

#[utoipa::path(get, path = "/v1/sandboxes/{id}/execs/{exec}/logs", operation_id = "execLogs", summary = "An exec's output", params(("id" = String, Path, description = "Sandbox id or name."), ("exec" = u32, Path, description = "Exec number."), ("stream" = Option<String>, Query, description = "stdout (default) or stderr."), ("follow" = Option<bool>, Query, description = "Keep streaming until the writer ends.")), responses((status = 200, description = "The output bytes.", content_type = "application/octet-stream", body = String), (status = "4XX", description = "Refused: the message names the culprit.", body = ErrorBody)))]
async fn exec_logs(
    State(d): State<AppState>,
    Path((id, exec)): Path<(String, u32)>,
    Query(q): Query<LogQuery>,
) -> Result<Response, ApiError> {
    let s = d.find(&id)?;
    check_stream(&q.stream)?;
    if !s.view().execs.iter().any(|e| e.id == exec) {
        return Err(Error::NoExec {
            sandbox: s.id.clone(),
            exec,
        }
        .into());
    }
    let rx = s.exec_exit_rx(exec);
    let done = move || rx.as_ref().is_none_or(|r| r.borrow().is_some());
    Ok(stream_log(s.exec_log_path(exec, &q.stream), q.follow, done))
}

fn check_stream(stream: &str) -> Result<(), ApiError> {
    if matches!(stream, "stdout" | "stderr") {
        Ok(())
    } else {
        Err(Error::invalid(
            "stream",
            format!("invalid stream \"{stream}\": stdout or stderr"),
        )
        .into())
    }
}

/// The output file as a body; with `follow`, until `done()` and the file has no more.
fn stream_log(path: PathBuf, follow: bool, done: impl Fn() -> bool + Send + 'static) -> Response {
    const CHUNK: usize = 64 * 1024;
    let state = (path, 0u64, done, false);
    let stream =
        futures_util::stream::unfold(state, move |(path, offset, done, finished)| async move {
            if finished {
                return None;
            }
            loop {
                // Whether the writer had ended before this read: then an empty read is the end.
                let was_done = done();
                match logs::read_from(&path, offset, CHUNK) {
                    Ok((bytes, next)) if !bytes.is_empty() => {
                        return Some((
                            Ok::<_, std::io::Error>(Bytes::from(bytes)),
                            (path, next, done, false),
                        ));
                    }
                    Ok(_) if !follow || was_done => return None,
                    Ok(_) => tokio::time::sleep(logs::FOLLOW_POLL).await,
                    Err(e) => return Some((Err(e), (path, offset, done, true))),
                }
            }
        });
    (
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::from_stream(stream),
    )
        .into_response()
}

#[utoipa::path(post, path = "/v1/sandboxes/{id}/stdin", operation_id = "writeStdin", summary = "Write to the workload's stdin", description = "The sandbox must have been created with `\"stdin\": true`. Counts as activity for `idle_timeout`.", params(("id" = String, Path, description = "Sandbox id or name.")), request_body(content = String, content_type = "application/octet-stream"), responses((status = 204, description = "Written."), (status = "4XX", description = "Refused: the message names the culprit.", body = ErrorBody)))]
async fn stdin_write(
    State(d): State<AppState>,
    Path(id): Path<String>,
    data: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let s = d.find(&id)?;
    blocking(move || d.write_stdin(&s, &data)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `?path=` of the files routes (a missing one is refused as an empty path, in the API's
/// own error format).
#[derive(serde::Deserialize)]
struct FileQuery {
    #[serde(default)]
    path: String,
}

#[utoipa::path(put, path = "/v1/sandboxes/{id}/files", operation_id = "putFile", summary = "Write a file into a running sandbox", description = "Resolved inside the sandbox's own view (`..` and links never leave it), written as its user (mode 0644, created or truncated), whatever its network policy. At most the daemon's `max_file_bytes`.", params(("id" = String, Path, description = "Sandbox id or name."), ("path" = String, Query, description = "Absolute path in the sandbox.")), request_body(content = String, content_type = "application/octet-stream"), responses((status = 204, description = "Written."), (status = "4XX", description = "Refused: the message names the culprit.", body = ErrorBody), (status = "5XX", description = "The agent or the host failed.", body = ErrorBody)))]
async fn file_put(
    State(d): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<FileQuery>,
    data: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let s = d.find(&id)?;
    blocking(move || d.write_file(&s, &q.path, &data)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/sandboxes/{id}/files", operation_id = "getFile", summary = "Read a file of a running sandbox", description = "Resolved inside the sandbox's own view, read as its user. A regular file of at most `max_file_bytes`.", params(("id" = String, Path, description = "Sandbox id or name."), ("path" = String, Query, description = "Absolute path in the sandbox.")), responses((status = 200, description = "The file's bytes.", content_type = "application/octet-stream", body = String), (status = "4XX", description = "Refused: the message names the culprit.", body = ErrorBody), (status = "5XX", description = "The agent or the host failed.", body = ErrorBody)))]
async fn file_get(
    State(d): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<FileQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let s = d.find(&id)?;
    let data = blocking(move || d.read_file(&s, &q.path)).await?;
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::from(data),
    ))
}

#[utoipa::path(put, path = "/v1/sandboxes/{id}/archive", operation_id = "putArchive", summary = "Copy a directory into a running sandbox", description = "The body is a tar; its entries become the new directory `path` (absent, or an empty directory; its parent must exist), resolved inside the sandbox's own view (`..` entries refused, links never followed out), written as its user (permission bits only; device nodes not made), whole or not at all. At most the daemon's `max_file_bytes` of file content.", params(("id" = String, Path, description = "Sandbox id or name."), ("path" = String, Query, description = "Absolute path in the sandbox.")), request_body(content = String, content_type = "application/x-tar"), responses((status = 204, description = "Written."), (status = "4XX", description = "Refused: the message names the culprit.", body = ErrorBody), (status = "5XX", description = "The agent or the host failed.", body = ErrorBody)))]
async fn archive_put(
    State(d): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<FileQuery>,
    data: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let s = d.find(&id)?;
    blocking(move || d.write_tree(&s, &q.path, &data)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/sandboxes/{id}/archive", operation_id = "getArchive", summary = "Copy a directory out of a running sandbox", description = "A tar of the directory `path` (names relative to it; links as links, never followed; sockets, FIFOs and devices left out), read as the sandbox's user in its own view. At most `max_file_bytes` of file content.", params(("id" = String, Path, description = "Sandbox id or name."), ("path" = String, Query, description = "Absolute path in the sandbox.")), responses((status = 200, description = "The tar.", content_type = "application/x-tar", body = String), (status = "4XX", description = "Refused: the message names the culprit.", body = ErrorBody), (status = "5XX", description = "The agent or the host failed.", body = ErrorBody)))]
async fn archive_get(
    State(d): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<FileQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let s = d.find(&id)?;
    let data = blocking(move || d.read_tree(&s, &q.path)).await?;
    Ok((
        [(header::CONTENT_TYPE, "application/x-tar")],
        Body::from(data),
    ))
}

#[utoipa::path(post, path = "/v1/sandboxes/{id}/stdin/close", operation_id = "closeStdin", summary = "Close the workload's stdin (EOF)", params(("id" = String, Path, description = "Sandbox id or name.")), responses((status = 204, description = "Closed."), (status = "4XX", description = "Refused: the message names the culprit.", body = ErrorBody)))]
async fn stdin_close(
    State(d): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let s = d.find(&id)?;
    d.close_stdin(&s)?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/sandboxes/{id}/tunnels", operation_id = "tunnels", summary = "Where the sandbox's exposed ports are reached", description = "HTTP and h2 ports: gateway URLs by host name and by path. TLS and TCP ports: the tunnel's address.", params(("id" = String, Path, description = "Sandbox id or name.")), responses((status = 200, body = Vec<PortView>), (status = "4XX", description = "Refused: the message names the culprit.", body = ErrorBody)))]
async fn tunnels(
    State(d): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let s = d.find(&id)?;
    Ok(Json(s.view().ports))
}

#[utoipa::path(post, path = "/v1/sandboxes/{id}/tokens", operation_id = "issueToken", summary = "A connect token for the sandbox's HTTP ports", description = "Random, stored hashed, scoped to this sandbox, revocable, and gone when the sandbox ends. The secret (`token`) appears in this answer only. Callers present it as `Authorization: Bearer`, the `_sandbox_connect_token` query parameter (the answer then sets it as a cookie) or that cookie. `user_metadata` reaches the workload in `X-Verified-User-Data`.", params(("id" = String, Path, description = "Sandbox id or name.")), request_body = TokenRequest, responses((status = 201, body = TokenView), (status = "4XX", description = "Refused: the message names the culprit.", body = ErrorBody), (status = "5XX", description = "The agent or the host failed.", body = ErrorBody)))]
async fn issue_token(
    State(d): State<AppState>,
    Path(id): Path<String>,
    req: Result<Json<TokenRequest>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let req = body(req)?;
    let s = d.find(&id)?;
    let view = d.issue_token(&s, req)?;
    Ok((StatusCode::CREATED, Json(view)))
}

#[utoipa::path(get, path = "/v1/sandboxes/{id}/tokens", operation_id = "listTokens", summary = "The sandbox's live tokens, without their secrets", params(("id" = String, Path, description = "Sandbox id or name.")), responses((status = 200, body = Vec<TokenView>), (status = "4XX", description = "Refused: the message names the culprit.", body = ErrorBody)))]
async fn list_tokens(
    State(d): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let s = d.find(&id)?;
    Ok(Json(d.tokens().list(&s.id)))
}

#[utoipa::path(delete, path = "/v1/sandboxes/{id}/tokens/{token}", operation_id = "revokeToken", summary = "Revoke a connect token", params(("id" = String, Path, description = "Sandbox id or name."), ("token" = String, Path, description = "The token's id.")), responses((status = 204, description = "Revoked."), (status = "4XX", description = "Refused: the message names the culprit.", body = ErrorBody), (status = "5XX", description = "The agent or the host failed.", body = ErrorBody)))]
async fn revoke_token(
    State(d): State<AppState>,
    Path((id, token)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let s = d.find(&id)?;
    d.revoke_token(&s, &token)?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(put, path = "/v1/sandboxes/{id}/policy", operation_id = "setPolicy", summary = "Replace a running sandbox's policy", description = "New connections see the new policy whole at once; established connections it denies are cut. `network` defaults to `blocked`.", params(("id" = String, Path, description = "Sandbox id or name.")), request_body = PolicyFile, responses((status = 200, body = SandboxView), (status = "4XX", description = "Refused: the message names the culprit.", body = ErrorBody), (status = "5XX", description = "The agent or the host failed.", body = ErrorBody)))]
async fn set_policy(
    State(d): State<AppState>,
    Path(id): Path<String>,
    req: Result<Json<PolicyRequest>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let policy = body(req)?;
    let s = d.find(&id)?;
    let view = blocking(move || d.set_policy(&s, &policy)).await?;
    Ok(Json(view))
}

#[utoipa::path(post, path = "/v1/sandboxes/{id}/execs", operation_id = "exec", summary = "Run a command in a running sandbox", description = "`policy` narrows the sandbox's: its `network` defaults to `open` (the sandbox's policy alone).", params(("id" = String, Path, description = "Sandbox id or name.")), request_body = ExecRequest, responses((status = 201, body = ExecView), (status = "4XX", description = "Refused: the message names the culprit.", body = ErrorBody), (status = "5XX", description = "The agent or the host failed.", body = ErrorBody)))]
async fn exec(
    State(d): State<AppState>,
    Path(id): Path<String>,
    req: Result<Json<ExecRequest>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let req = body(req)?;
    let s = d.find(&id)?;
    let view = blocking(move || d.exec(&s, &req)).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

#[utoipa::path(get, path = "/v1/sandboxes/{id}/execs/{exec}/wait", operation_id = "waitExec", summary = "Wait for an exec to end", params(("id" = String, Path, description = "Sandbox id or name."), ("exec" = u32, Path, description = "Exec number.")), responses((status = 200, body = ExecWaitView), (status = "4XX", description = "Refused: the message names the culprit.", body = ErrorBody)))]
async fn exec_wait(
    State(d): State<AppState>,
    Path((id, exec)): Path<(String, u32)>,
) -> Result<impl IntoResponse, ApiError> {
    let s = d.find(&id)?;
    if let Some(mut rx) = s.exec_exit_rx(exec) {
        let _ = rx.wait_for(Option::is_some).await;
    }
    let view = s.view();
    let e = view
        .execs
        .iter()
        .find(|e| e.id == exec)
        .ok_or_else(|| Error::NoExec {
            sandbox: s.id.clone(),
            exec,
        })?;
    Ok(Json(ExecWaitView {
        exit_code: e.exit_code,
        state: e.state,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventQuery {
    #[serde(default)]
    follow: bool,
    sandbox: Option<String>,
    verdict: Option<String>,
}

#[utoipa::path(get, path = "/v1/events", operation_id = "events", summary = "Verdict events", description = "The kept history, then with `follow` every new event until the daemon stops. Each line is one JSON object (sandbox, verdict, reason, destination...).", params(("follow" = Option<bool>, Query), ("sandbox" = Option<String>, Query, description = "Only this sandbox (id or name)."), ("verdict" = Option<String>, Query, description = "allowed or denied.")), responses((status = 200, description = "Newline-delimited JSON events.", content_type = "application/x-ndjson", body = String), (status = "4XX", description = "Refused: the message names the culprit.", body = ErrorBody)))]
async fn events(
    State(d): State<AppState>,
    Query(q): Query<EventQuery>,
) -> Result<Response, ApiError> {
    let denied_only = match q.verdict.as_deref() {
        None => None,
        Some("denied") => Some(true),
        Some("allowed") => Some(false),
        Some(other) => {
            return Err(Error::invalid(
                "verdict",
                format!("invalid verdict \"{other}\": allowed or denied"),
            )
            .into());
        }
    };
    // A name resolves to the sandbox's id, as everywhere else.
    let sandbox = match &q.sandbox {
        Some(r) => Some(d.find(r)?.id.clone()),
        None => None,
    };
    let keep = move |l: &super::observe::Line| {
        sandbox
            .as_ref()
            .is_none_or(|s| l.sandbox.as_ref() == Some(s))
            && denied_only.is_none_or(|d| l.denied == d)
    };
    let (history, rx) = d.observe.subscribe();
    let mut text = String::new();
    for line in history.iter().filter(|l| keep(l)) {
        text.push_str(&line.text);
        text.push('\n');
    }
    if !q.follow {
        return Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], text).into_response());
    }
    let first =
        futures_util::stream::once(async move { Ok::<_, std::io::Error>(Bytes::from(text)) });
    let rest = futures_util::stream::unfold((rx, keep), |(mut rx, keep)| async move {
        loop {
            match rx.recv().await {
                Ok(line) if keep(&line) => {
                    let mut b = line.text.as_bytes().to_vec();
                    b.push(b'\n');
                    return Some((Ok(Bytes::from(b)), (rx, keep)));
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(first.chain(rest)),
    )
        .into_response())
}

async fn metrics(State(d): State<AppState>) -> impl IntoResponse {
    let counters = d.live_counters();
    d.observe.refresh_kernel(&counters);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        d.observe.encode(),
    )
}
