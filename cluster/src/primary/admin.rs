//! The primary's admin listener (`--metrics-bind`): `GET /metrics` in the Prometheus text
//! format, served by the primary itself, so that it answers while workers restart.
//!
//! It is a thin HTTP front on the control socket's channel: each request becomes the same
//! [`Request`] `herd ctl` sends, answered by the supervisor loop. Connections go through the
//! same hardened connection loop as the workers' (`crate::conn`: header, body and keep-alive
//! timeouts) under a small cap of their own. With a token, every request must carry
//! `Authorization: Bearer <token>`, compared in constant time; without one the listener is
//! only allowed on a loopback address (`ClusterConfig::validate`).

use std::sync::Arc;

use axum::{
    extract::{Request as HttpRequest, State},
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
    control::{Command, Request},
    error::ClusterError,
};

/// Connections the admin listener holds open at once; beyond, a 503.
const MAX_ADMIN_CONNECTIONS: usize = 64;

/// Serves the admin listener until dropped.
pub(super) struct AdminListener {
    task: tokio::task::JoinHandle<()>,
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

/// Binds `config.bind` (an error stops the primary before any worker starts) and serves it.
pub(super) fn serve(config: &AdminConfig, commands: mpsc::Sender<Command>) -> Result<AdminListener, ClusterError> {
    let err = |source| ClusterError::AdminBind { addr: config.bind, source };
    let listener = std::net::TcpListener::bind(config.bind).map_err(err)?;
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
    Ok(AdminListener { task })
}

fn router(admin: Admin) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found: the admin listener serves GET /metrics\n") })
        .layer(middleware::from_fn_with_state(admin.clone(), authorize))
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
    let (reply, answer) = oneshot::channel();
    admin.commands.send((request, reply)).await.map_err(|_| "the primary is shutting down".to_owned())?;
    let response = answer.await.map_err(|_| "the primary is shutting down".to_owned())?;
    match response.metrics {
        Some(text) if response.ok => Ok(text),
        _ => Err(response.error.unwrap_or_else(|| "no metrics".to_owned())),
    }
}
