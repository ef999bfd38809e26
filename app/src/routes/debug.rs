//! `--debug-routes`: ways to make a worker misbehave on purpose, so tests (and curious
//! operators) can watch the primary's safety valves work. Only served when herd is bound to a
//! loopback address.

use std::{sync::Mutex, time::Duration};

use axum::{
    extract::{rejection::QueryRejection, Query},
    http::StatusCode,
    routing::get,
    Json, Router,
};
use serde::Deserialize;
use serde_json::{json, Value};

use super::AppState;
use crate::error::AppError;

/// Memory that `/debug/alloc` holds on purpose, so the worker's RSS really grows.
static HELD: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

#[derive(Deserialize)]
pub(super) struct Amount {
    ms: Option<u64>,
    mib: Option<usize>,
}

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/debug/block", get(block)).route("/debug/alloc", get(alloc)).route("/debug/crash", get(crash))
}

fn amount(query: Result<Query<Amount>, QueryRejection>) -> Result<Amount, AppError> {
    query.map(|Query(a)| a).map_err(|r| AppError::bad_request(StatusCode::BAD_REQUEST, r.body_text()))
}

/// Blocks every thread of the worker's async runtime for `ms` milliseconds (at most 10
/// minutes): the worker stops answering and stops sending heartbeats, like a hung worker.
async fn block(query: Result<Query<Amount>, QueryRejection>) -> Result<Json<Value>, AppError> {
    let ms = amount(query)?.ms.unwrap_or(1_000).min(600_000);
    let threads = tokio::runtime::Handle::current().metrics().num_workers();
    tracing::warn!(ms, threads, "blocking the runtime on request (/debug/block)");
    // One blocking sleep per runtime thread: each occupies a thread, so nothing else runs.
    let sleeps: Vec<_> =
        (0..threads).map(|_| tokio::spawn(async move { std::thread::sleep(Duration::from_millis(ms)) })).collect();
    for sleep in sleeps {
        let _ = sleep.await;
    }
    Ok(Json(json!({ "blocked_ms": ms })))
}

/// Allocates `mib` MiB (at most 4096) and keeps it, touching every page so it counts as RSS.
async fn alloc(query: Result<Query<Amount>, QueryRejection>) -> Result<Json<Value>, AppError> {
    let mib = amount(query)?.mib.unwrap_or(64).min(4096);
    let block = vec![1u8; mib << 20];
    let mut held = HELD.lock().map_err(|_| AppError::Internal("debug allocation lock poisoned".into()))?;
    held.push(block);
    let total: usize = held.iter().map(Vec::len).sum();
    tracing::warn!(mib, total_mib = total >> 20, "holding memory on request (/debug/alloc)");
    Ok(Json(json!({ "held_mib": total >> 20 })))
}

/// Aborts the worker process, like a crash.
async fn crash() -> Json<Value> {
    tracing::warn!("aborting on request (/debug/crash)");
    std::process::abort()
}
