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

use super::{ApiError, Daemon, logs};
use crate::api::{CreateRequest, ErrorBody, ExecRequest, MAX_BODY_BYTES, PolicyRequest};

type AppState = Arc<Daemon>;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (
            status,
            Json(ErrorBody {
                error: self.message,
                exit_code: self.exit_code,
            }),
        )
            .into_response()
    }
}

/// A JSON body, or a 4xx naming what is wrong with it.
fn body<T>(parsed: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    parsed.map(|Json(v)| v).map_err(|r| ApiError {
        status: r.status().as_u16(),
        message: r.body_text(),
        exit_code: None,
    })
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
            "/v1/sandboxes/{id}/tokens",
            get(list_tokens).post(issue_token),
        )
        .route(
            "/v1/sandboxes/{id}/tokens/{token}",
            axum::routing::delete(revoke_token),
        )
        .route("/v1/events", get(events))
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(daemon)
}

pub fn metrics_router(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(daemon)
}

async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::api::openapi::DOCUMENT,
    )
}

async fn health() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

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
                if !matches!(v.as_str(), "running" | "exited") {
                    return Err(ApiError::bad_request(format!(
                        "invalid state \"{v}\": running or exited"
                    )));
                }
                state = Some(v);
            }
            "tag" => match v.split_once('=') {
                Some((k, v)) => tags.push((k.to_owned(), v.to_owned())),
                None => {
                    return Err(ApiError::bad_request(format!(
                        "invalid tag filter \"{v}\": use key=value"
                    )));
                }
            },
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown filter \"{other}\": name, state, tag"
                )));
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
        .filter(|v| state.as_ref().is_none_or(|s| v.state == *s))
        .filter(|v| tags.iter().all(|(k, val)| v.tags.get(k) == Some(val)))
        .collect();
    Ok(Json(views))
}

async fn create(
    State(d): State<AppState>,
    req: Result<Json<CreateRequest>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let req = body(req)?;
    let view = tokio::task::spawn_blocking(move || d.create(req))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok((StatusCode::CREATED, Json(view)))
}

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

async fn remove(
    State(d): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<RemoveQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let s = d.find(&id)?;
    d.remove(s, q.force).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn kill(
    State(d): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let s = d.find(&id)?;
    if !s.running() {
        return Err(ApiError::conflict(format!("sandbox {} has ended", s.id)));
    }
    d.kill(&s, "killed");
    Ok(Json(d.wait(&s).await))
}

async fn wait(
    State(d): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let s = d.find(&id)?;
    Ok(Json(d.wait(&s).await))
}

async fn wait_ready(
    State(d): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let s = d.find(&id)?;
    d.wait_ready(&s).await?;
    Ok(Json(serde_json::json!({ "ready": true })))
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

async fn exec_logs(
    State(d): State<AppState>,
    Path((id, exec)): Path<(String, u32)>,
    Query(q): Query<LogQuery>,
) -> Result<Response, ApiError> {
    let s = d.find(&id)?;
    check_stream(&q.stream)?;
    if !s.view().execs.iter().any(|e| e.id == exec) {
        return Err(ApiError::not_found(format!(
            "sandbox {} has no exec {exec}",
            s.id
        )));
    }
    let rx = s.exec_exit_rx(exec);
    let done = move || rx.as_ref().is_none_or(|r| r.borrow().is_some());
    Ok(stream_log(s.exec_log_path(exec, &q.stream), q.follow, done))
}

fn check_stream(stream: &str) -> Result<(), ApiError> {
    if matches!(stream, "stdout" | "stderr") {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "invalid stream \"{stream}\": stdout or stderr"
        )))
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

async fn stdin_write(
    State(d): State<AppState>,
    Path(id): Path<String>,
    data: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let s = d.find(&id)?;
    tokio::task::spawn_blocking(move || d.write_stdin(&s, &data))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(StatusCode::NO_CONTENT)
}

async fn stdin_close(
    State(d): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let s = d.find(&id)?;
    d.close_stdin(&s)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn tunnels(
    State(d): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let s = d.find(&id)?;
    Ok(Json(s.view().ports))
}

async fn issue_token(
    State(d): State<AppState>,
    Path(id): Path<String>,
    req: Result<Json<crate::api::TokenRequest>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let req = body(req)?;
    let s = d.find(&id)?;
    let view = d.issue_token(&s, req)?;
    Ok((StatusCode::CREATED, Json(view)))
}

async fn list_tokens(
    State(d): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let s = d.find(&id)?;
    Ok(Json(d.tokens().list(&s.id)))
}

async fn revoke_token(
    State(d): State<AppState>,
    Path((id, token)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let s = d.find(&id)?;
    d.revoke_token(&s, &token)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn set_policy(
    State(d): State<AppState>,
    Path(id): Path<String>,
    req: Result<Json<PolicyRequest>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let policy = body(req)?;
    let s = d.find(&id)?;
    let view = tokio::task::spawn_blocking(move || d.set_policy(&s, &policy))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(Json(view))
}

async fn exec(
    State(d): State<AppState>,
    Path(id): Path<String>,
    req: Result<Json<ExecRequest>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let req = body(req)?;
    let s = d.find(&id)?;
    let view = tokio::task::spawn_blocking(move || d.exec(&s, &req))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok((StatusCode::CREATED, Json(view)))
}

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
        .ok_or_else(|| ApiError::not_found(format!("sandbox {} has no exec {exec}", s.id)))?;
    Ok(Json(
        serde_json::json!({ "exit_code": e.exit_code, "state": e.state }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventQuery {
    #[serde(default)]
    follow: bool,
    sandbox: Option<String>,
    verdict: Option<String>,
}

async fn events(
    State(d): State<AppState>,
    Query(q): Query<EventQuery>,
) -> Result<Response, ApiError> {
    let denied_only = match q.verdict.as_deref() {
        None => None,
        Some("denied") => Some(true),
        Some("allowed") => Some(false),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "invalid verdict \"{other}\": allowed or denied"
            )));
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
