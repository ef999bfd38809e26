//! Cluster-wide statistics, gathered on demand over the primary↔worker messaging, and a
//! broadcast that resets them on every worker.
//!
//! Each worker counts the requests it served (outside `/stats`) and answers the `stats`
//! question with its counters; `GET /stats` asks every ready worker at once. `POST
//! /stats/reset` (with `--admin-routes`) broadcasts a reset that every worker applies when it
//! arrives; the operator can send the same message with `herd ctl broadcast
//! '{"type":"reset-stats"}'`. Each answer is bounded ([`NOTES_BUDGET`]), and the gathered set
//! travels in parts, so `/stats` works with any notes and any number of workers.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc, Mutex,
};

use axum::{
    extract::{Request, State},
    http::StatusCode,
    middleware::Next,
    response::Response,
    Json,
};
use herd_cluster::Messenger;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::AppState;
use crate::error::AppError;

/// Notes a worker keeps from `note` messages, newest last (bounded).
const MAX_NOTES: usize = 100;
/// Most bytes of notes (as JSON) one worker puts in its `stats` answer, newest first: the
/// answer must fit in one IPC message (`herd_cluster::messaging::MAX_PAYLOAD`), whatever
/// operators sent; older notes are counted in `notes_dropped` instead.
const NOTES_BUDGET: usize = herd_cluster::messaging::MAX_PAYLOAD / 2;

/// One worker's counters.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    requests: AtomicU64,
    resets: AtomicU64,
    notes: Mutex<Vec<Value>>,
}

/// The messages workers exchange about stats.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
enum StatsMessage {
    /// The question `GET /stats` gathers.
    Stats,
    /// Zero the request counter.
    ResetStats,
    /// Remember this (operators and tests use it to watch delivery order).
    Note { note: Value },
}

#[derive(Debug, Serialize, Deserialize)]
struct WorkerStats {
    requests: u64,
    resets: u64,
    notes: Vec<Value>,
    /// Older notes left out to keep the answer within [`NOTES_BUDGET`].
    #[serde(default)]
    notes_dropped: usize,
}

impl Counters {
    fn snapshot(&self) -> WorkerStats {
        let all = self.notes.lock().map(|n| n.clone()).unwrap_or_default();
        let mut used = 0;
        let kept = all
            .iter()
            .rev()
            .take_while(|note| {
                used += serde_json::to_vec(note).map_or(usize::MAX / 2, |b| b.len() + 1);
                used <= NOTES_BUDGET
            })
            .count();
        WorkerStats {
            requests: self.requests.load(Ordering::Relaxed),
            resets: self.resets.load(Ordering::Relaxed),
            notes_dropped: all.len() - kept,
            notes: all[all.len() - kept..].to_vec(),
        }
    }
}

/// Wires this worker's counters to the messaging: answer `stats`, apply broadcasts.
pub(crate) fn serve_counters(messenger: &Messenger, counters: Arc<Counters>) {
    let answering = Arc::clone(&counters);
    messenger.on_query(move |question| match serde_json::from_value(question) {
        Ok(StatsMessage::Stats) => serde_json::to_value(answering.snapshot()).unwrap_or(Value::Null),
        _ => Value::Null,
    });
    let mut incoming = messenger.subscribe();
    tokio::spawn(async move {
        loop {
            let message = match incoming.recv().await {
                Ok(message) => message,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "missed cluster messages");
                    continue;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            match serde_json::from_value(message.payload) {
                Ok(StatsMessage::ResetStats) => {
                    counters.requests.store(0, Ordering::Relaxed);
                    counters.resets.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(from = ?message.from, "stats reset");
                }
                Ok(StatsMessage::Note { note }) => {
                    if let Ok(mut notes) = counters.notes.lock() {
                        notes.push(note);
                        let excess = notes.len().saturating_sub(MAX_NOTES);
                        notes.drain(..excess);
                    }
                }
                Ok(StatsMessage::Stats) | Err(_) => tracing::debug!("ignoring a cluster message"),
            }
        }
    });
}

/// Middleware: count every request except the stats routes themselves.
pub(super) async fn count(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if !request.uri().path().starts_with("/stats") {
        state.counters.requests.fetch_add(1, Ordering::Relaxed);
    }
    next.run(request).await
}

/// `{"requests": total, "workers": [{slot, pid, requests, resets, notes}]}` from every ready worker.
pub(super) async fn stats(State(state): State<AppState>) -> Result<Json<Value>, AppError> {
    let replies = state.worker.messenger.gather::<_, WorkerStats>(&StatsMessage::Stats).await.map_err(|e| {
        AppError::bad_request(StatusCode::SERVICE_UNAVAILABLE, format!("cannot gather the workers' stats: {e}"))
    })?;
    let total: u64 = replies.iter().map(|(_, s)| s.requests).sum();
    let workers: Vec<Value> = replies
        .into_iter()
        .map(|(reply, s)| {
            json!({ "slot": reply.slot, "pid": reply.pid, "requests": s.requests, "resets": s.resets, "notes": s.notes, "notes_dropped": s.notes_dropped })
        })
        .collect();
    Ok(Json(json!({ "requests": total, "workers": workers })))
}

/// Broadcasts a counter reset to every worker.
pub(super) async fn reset(State(state): State<AppState>) -> Result<(StatusCode, Json<Value>), AppError> {
    state.worker.messenger.broadcast(&StatsMessage::ResetStats).await.map_err(|e| {
        AppError::bad_request(StatusCode::SERVICE_UNAVAILABLE, format!("cannot broadcast the reset: {e}"))
    })?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "reset": "broadcast to every worker" }))))
}
