use axum::{extract::State, http::StatusCode, Json};
use fred::interfaces::ClientLike;
use serde_json::{json, Value};

use super::AppState;
use crate::error::AppError;

/// The process is alive and serving.
pub(super) async fn healthz(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "status": "ok", "pid": state.worker.pid, "worker": state.worker.slot }))
}

/// The process can do real work: Redis answers (within the pool's command timeout).
pub(super) async fn readyz(State(state): State<AppState>) -> Result<(StatusCode, Json<Value>), AppError> {
    let _: String = state.pool.ping(None).await.map_err(|e| AppError::Unavailable(e.to_string()))?;
    Ok((StatusCode::OK, Json(json!({ "status": "ready", "redis": "ok" }))))
}
