//! The primary's admin listener (`--metrics-bind`): `GET /metrics` in the Prometheus text
//! format, served by the primary itself, so that it answers while workers restart; and a live
//! dashboard: `GET /` (one HTML page, inline script, no external assets) that polls
//! `GET /status.json` every second and posts `/actions/reload`, `/actions/scale?by=±1` and
//! `/actions/restart?slot=N`.
//!
//! The page itself holds no data and is served without the token (a browser cannot add a
//! header to a navigation); its script sends the token it was given in the URL's fragment
//! (`/#token=…`, never sent to a server) on every request. Actions also require an
//! `X-Herd-Action` header, which a page of another site cannot send without a CORS preflight
//! that this listener never approves: without a token (loopback only), a malicious page in the
//! operator's browser still cannot reload or scale the cluster.
//!
//! It is a thin HTTP front on the control socket's channel: each request becomes the same
//! [`Request`] `herd ctl` sends, answered by the supervisor loop. Connections go through the
//! same hardened connection loop as the workers' (`crate::conn`: header, body and keep-alive
//! timeouts) under a small cap of their own. With a token, every request must carry
//! `Authorization: Bearer <token>`, compared in constant time; without one the listener is
//! only allowed on a loopback address (`ClusterConfig::validate`).

use std::sync::Arc;

use axum::{
    extract::{Query, Request as HttpRequest, State},
    http::{header, HeaderValue, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response as HttpResponse},
    routing::get,
    Router,
};
use subtle::ConstantTimeEq;
use tokio::sync::{mpsc, oneshot};

use crate::{
    config::{AdminConfig, ConnectionLimits},
    conn::{self, ConnectionCap},
    control::{Command, Request, Response},
    error::ClusterError,
};

/// Connections the admin listener holds open at once; beyond, a 503.
const MAX_ADMIN_CONNECTIONS: usize = 64;

/// Serves the admin listener until dropped.
pub(super) struct AdminListener {
    task: tokio::task::JoinHandle<()>,
    /// The socket, for a new primary taking over (`crate::upgrade`).
    pub(super) socket: std::net::TcpListener,
}

impl Drop for AdminListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone)]
struct Admin {
    commands: mpsc::Sender<Command>,
    token: Option<Arc<[u8]>>,
}

/// Binds `config.bind` (an error stops the primary before any worker starts), or takes the
/// socket an old primary passed (`inherited`), and serves it.
pub(super) fn serve(
    config: &AdminConfig,
    inherited: Option<std::net::TcpListener>,
    commands: mpsc::Sender<Command>,
) -> Result<AdminListener, ClusterError> {
    let err = |source| ClusterError::AdminBind { addr: config.bind, source };
    let listener = match inherited {
        Some(listener) => listener,
        None => std::net::TcpListener::bind(config.bind).map_err(err)?,
    };
    let socket = listener.try_clone().map_err(err)?;
    listener.set_nonblocking(true).map_err(err)?;
    let listener = tokio::net::TcpListener::from_std(listener).map_err(err)?;
    let local = listener.local_addr().map_err(err)?;
    tracing::info!(auth = config.token.is_some(), "admin listener on http://{local}/metrics");
    let admin = Admin { commands, token: config.token.as_ref().map(|t| Arc::from(t.as_bytes())) };
    let app = router(admin);
    let task = tokio::spawn(async move {
        let cap = ConnectionCap::new(MAX_ADMIN_CONNECTIONS);
        conn::serve(listener, app, &ConnectionLimits::default(), cap, None, std::future::pending()).await;
    });
    Ok(AdminListener { task, socket })
}

/// The dashboard page.
const DASHBOARD: &str = include_str!("dashboard.html");

fn router(admin: Admin) -> Router {
    let protected = Router::new()
        .route("/metrics", get(metrics))
        .route("/status.json", get(status))
        .route("/actions/reload", axum::routing::post(reload))
        .route("/actions/scale", axum::routing::post(scale))
        .route("/actions/restart", axum::routing::post(restart))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found: the admin listener serves GET /metrics and GET /\n") })
        .layer(middleware::from_fn_with_state(admin.clone(), authorize));
    Router::new()
        .route("/", get(|| async { ([(header::CACHE_CONTROL, "no-store")], axum::response::Html(DASHBOARD)) }))
        .merge(protected)
        .with_state(admin)
}

/// Lets the request through when no token is configured or it carries the right one.
async fn authorize(State(admin): State<Admin>, request: HttpRequest, next: Next) -> HttpResponse {
    let Some(token) = &admin.token else { return next.run(request).await };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .unwrap_or_default();
    // Constant time over the token's length: how much of a guess matched does not show in
    // how long the answer takes.
    if bool::from(presented.ct_eq(token)) {
        return next.run(request).await;
    }
    let mut response =
        (StatusCode::UNAUTHORIZED, "unauthorized: send Authorization: Bearer <--metrics-token>\n").into_response();
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

async fn metrics(State(admin): State<Admin>) -> HttpResponse {
    match ask(&admin, Request::Metrics).await {
        Ok(text) => ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response(),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")).into_response(),
    }
}

/// Sends `request` to the supervisor loop; the metrics text, or why not.
async fn ask(admin: &Admin, request: Request) -> Result<String, String> {
    let response = command(admin, request).await;
    match response.metrics {
        Some(text) if response.ok => Ok(text),
        _ => Err(response.error.unwrap_or_else(|| "no metrics".to_owned())),
    }
}

/// Sends `request` to the supervisor loop and waits for its answer.
async fn command(admin: &Admin, request: Request) -> Response {
    let (reply, answer) = oneshot::channel();
    if admin.commands.send((request, reply)).await.is_err() {
        return Response::error("the primary is shutting down");
    }
    answer.await.unwrap_or_else(|_| Response::error("the primary is shutting down"))
}

/// A control answer as JSON: 200 when it succeeded, 409 when the supervisor refused.
fn json(response: Response) -> HttpResponse {
    let code = if response.ok { StatusCode::OK } else { StatusCode::CONFLICT };
    (code, axum::Json(response)).into_response()
}

async fn status(State(admin): State<Admin>) -> HttpResponse {
    json(command(&admin, Request::Status).await)
}

/// Refuses an action without `X-Herd-Action` (see the module documentation).
fn forged(headers: &axum::http::HeaderMap) -> Option<HttpResponse> {
    let refusal = Response::error("actions need an X-Herd-Action header (sent by the dashboard's script)");
    (!headers.contains_key("x-herd-action")).then(|| (StatusCode::FORBIDDEN, axum::Json(refusal)).into_response())
}

async fn reload(State(admin): State<Admin>, headers: axum::http::HeaderMap) -> HttpResponse {
    if let Some(refusal) = forged(&headers) {
        return refusal;
    }
    json(command(&admin, Request::Reload).await)
}

#[derive(serde::Deserialize)]
struct ScaleBy {
    by: i64,
}

async fn scale(State(admin): State<Admin>, headers: axum::http::HeaderMap, by: Query<ScaleBy>) -> HttpResponse {
    if let Some(refusal) = forged(&headers) {
        return refusal;
    }
    json(command(&admin, Request::Scale { to: None, by: Some(by.by) }).await)
}

#[derive(serde::Deserialize)]
struct Slot {
    slot: usize,
}

async fn restart(State(admin): State<Admin>, headers: axum::http::HeaderMap, slot: Query<Slot>) -> HttpResponse {
    if let Some(refusal) = forged(&headers) {
        return refusal;
    }
    json(command(&admin, Request::Restart { slot: slot.slot }).await)
}
